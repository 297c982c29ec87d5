"""Issue 19: correct across processes, machines and histories.

Output digests decide when an output's identity differs (a restored or copied tree is up to
date, an output edited in place with its mtime put back is not); a rerun with an unchanged
key that makes other bytes reruns what is below it (forced, cleaned, ``always``), one that
makes the same bytes stops there; outputs of tasks gone from the manifest are removed when
untouched and never feed a glob.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest


def _with(text: str, line: str) -> str:
    """The manifest with ``line`` added to its first task."""
    head, sep, rest = text.partition("\n\n[tasks.")
    return f"{head}\n{line}{sep}{rest}"


NONDET = """
[tasks.fetch]
cmd = "python3 -c 'import time; print(time.time_ns())' > stamp.txt"
outputs = ["stamp.txt"]

[tasks.combine]
cmd = "cp stamp.txt combined.txt"
inputs = ["stamp.txt"]
outputs = ["combined.txt"]
"""

DET = """
[tasks.gen]
cmd = "echo same > gen.txt"
outputs = ["gen.txt"]

[tasks.use]
cmd = "cp gen.txt use.txt; echo ran >> runs.log"
inputs = ["gen.txt"]
outputs = ["use.txt"]
"""


def dagrun(root: Path, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    """The real CLI in a new process (as a user runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "dagrun", "-C", str(root), "--progress", "plain", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120,
    )


# -- a forced, cleaned or always rerun of a producer


def test_a_cleaned_non_deterministic_producer_reruns_its_dependents(project):
    project.manifest(NONDET)
    assert project.run("build").code == 0
    first = project.read("combined.txt")
    assert project.run("clean", "fetch").code == 0
    run = project.run("build")
    assert run.code == 0, run.err
    assert project.read("stamp.txt") != first
    assert project.read("combined.txt") == project.read("stamp.txt")  # not the old value
    assert "2 succeeded" in run.out


def test_a_cleaned_deterministic_producer_stops_there(project):
    project.manifest(DET)
    assert project.run("build").code == 0
    assert project.run("clean", "gen").code == 0
    plan = project.run("build", "-n")
    assert "may run: depends on gen" in plan.out
    run = project.run("build")
    assert run.code == 0, run.err
    assert "1 succeeded, 1 up to date" in run.out
    assert project.read("runs.log") == "ran\n"


def test_an_always_task_reruns_its_dependents_only_when_it_makes_other_bytes(project):
    project.manifest(_with(NONDET, "always = true"))
    assert project.run("build").code == 0
    for _ in range(2):
        run = project.run("build")
        assert run.code == 0 and "2 succeeded" in run.out, run.out
        assert project.read("combined.txt") == project.read("stamp.txt")
    project.manifest(_with(DET, "always = true"))
    assert project.run("build").code == 0
    run = project.run("build")
    assert "1 succeeded, 1 up to date" in run.out
    assert project.read("runs.log") == "ran\n"


def test_a_producer_rebuilt_alone_reruns_its_dependent_at_the_next_build(project):
    """clean fetch; build fetch (only); build: combine saw the old stamp, so it reruns."""
    project.manifest(NONDET)
    assert project.run("build").code == 0
    assert project.run("clean", "fetch").code == 0
    assert project.run("build", "fetch").code == 0
    run = project.run("build", "--explain")
    assert run.code == 0
    assert "output of dependency fetch changed since it ran" in run.out + run.err
    assert project.read("combined.txt") == project.read("stamp.txt")
    assert "no work to do" in project.run("build").out


def test_a_deleted_output_of_a_non_deterministic_producer_reruns_what_is_below(project):
    project.manifest(NONDET)
    assert project.run("build").code == 0
    os.unlink(project.root / "stamp.txt")
    run = project.run("build")
    assert run.code == 0 and "2 succeeded" in run.out, run.out
    assert project.read("combined.txt") == project.read("stamp.txt")


def test_a_restat_producer_forced_by_clean_reruns_what_is_below(project):
    project.manifest(_with(NONDET, "restat = true"))
    assert project.run("build").code == 0
    assert project.run("clean", "fetch").code == 0
    assert project.run("build").code == 0
    assert project.read("combined.txt") == project.read("stamp.txt")


FUNCS = '''
import random


def fetch():
    return random.random()


def combine(fetch):
    return fetch * 2
'''


def test_a_cleaned_non_deterministic_function_task_reruns_its_dependents(project):
    project.write("pipeline.py", FUNCS)
    project.manifest("""
        [tasks.fetch]
        call = "pipeline:fetch"

        [tasks.combine]
        call = "pipeline:combine"
        deps = ["fetch"]
    """)
    assert project.run("build").code == 0
    assert project.run("clean", "fetch").code == 0
    run = project.run("build")
    assert run.code == 0 and "2 succeeded" in run.out, run.out + run.err
    from dagrun.api import load

    values = load(str(project.root / "dagrun.toml")).build().values
    assert values["combine"] == values["fetch"] * 2


# -- output identities and digests


def test_an_output_edited_in_place_with_its_mtime_put_back_reruns(project):
    project.manifest(DET)
    assert project.run("build").code == 0
    out = project.root / "use.txt"
    st = out.stat()
    out.write_text("SAME\n")  # the same size, the mtime put back: only ctime tells
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    run = project.run("build", "--explain")
    assert run.code == 0
    assert "output use.txt changed since it was built" in run.out + run.err
    assert project.read("use.txt") == "same\n"


def test_an_output_rewritten_with_the_same_bytes_is_up_to_date(project):
    project.manifest(DET)
    assert project.run("build").code == 0
    (project.root / "use.txt").unlink()
    (project.root / "use.txt").write_text("same\n")
    assert "no work to do" in project.run("build").out
    assert project.read("runs.log") == "ran\n"


def _tar(src: Path, dest: Path, paths: list[str] | None = None) -> None:
    """Copy a project the way a CI cache or a backup does: through a tarball."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    ball = dest.parent / f"{dest.name}.tar"
    with tarfile.open(ball, "w") as t:
        for p in paths or [str(q.relative_to(src)) for q in src.iterdir()]:
            t.add(src / p, arcname=p)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(ball) as t:
        t.extractall(dest, filter="tar")


C_LIKE = """
[tasks.gen]
cmd = "date +%s%N > build/stamp.txt; cat src/a.txt >> build/stamp.txt"
inputs = ["src/a.txt"]
outputs = ["build/stamp.txt"]

[tasks.compile]
matrix = { f = { glob = "src/*.txt" } }
cmd = "cat {f} build/stamp.txt > build/{f.stem}.o"
inputs = ["{f}", "build/stamp.txt"]
outputs = ["build/{f.stem}.o"]

[tasks.link]
cmd = "cat build/*.o > build/app"
inputs = ["build/*.o"]
outputs = ["build/app"]
"""


def _c_like(root: Path) -> None:
    (root / "src").mkdir(parents=True)
    (root / "build").mkdir()
    for n in ("a", "b", "c"):
        (root / "src" / f"{n}.txt").write_text(f"{n}\n")
    (root / "dagrun.toml").write_text(C_LIKE)


def test_a_tree_restored_elsewhere_runs_nothing(tmp_path):
    one, two = tmp_path / "one", tmp_path / "elsewhere" / "two"
    _c_like(one)
    assert dagrun(one, "build").returncode == 0
    _tar(one, two)
    plan = dagrun(two, "build", "-n", env={"PYTHONHASHSEED": "7"})
    assert plan.returncode == 0, plan.stderr
    assert "dagrun: 0 would run, 5 up to date" in plan.stdout, plan.stdout
    assert "changed since it was built" not in plan.stdout
    run = dagrun(two, "build", env={"PYTHONHASHSEED": "11"})
    assert run.returncode == 0 and "no work to do" in run.stdout, run.stdout
    assert (two / "build/app").read_text() == (one / "build/app").read_text()
    # the records were written again with the new identities: the fast check passes now
    assert "no work to do" in dagrun(two, "build").stdout


def test_a_restored_tree_with_an_edited_source_reruns_only_what_it_reaches(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _c_like(one)
    assert dagrun(one, "build").returncode == 0
    _tar(one, two)
    (two / "src/b.txt").write_text("b, edited\n")
    run = dagrun(two, "build")
    assert run.returncode == 0, run.stderr
    assert "2 succeeded, 3 up to date" in run.stdout, run.stdout  # compile[b], link


def _ci_cache_paths(doc: str) -> list[str]:
    """The `path:` list of docs/ci.md's actions/cache step."""
    import yaml

    text = doc.split("```yaml", 1)[1].split("```", 1)[0]
    steps = yaml.safe_load(text)["jobs"]["build"]["steps"]
    cache = next(s for s in steps if str(s.get("uses", "")).startswith("actions/cache"))
    return [p for p in cache["with"]["path"].split("\n") if p.strip()]


def test_the_ci_cache_recipe_of_docs_ci_md_restores_a_build_that_runs_nothing(tmp_path):
    """docs/ci.md as written: a fresh checkout (new inodes and times), then the cached paths
    (`.dagrun` but `.dagrun/runs`, and `build`) restored over it: nothing runs."""
    doc = (Path(__file__).parent.parent / "docs/ci.md").read_text()
    paths = _ci_cache_paths(doc)
    assert ".dagrun" in paths and "build" in paths, paths
    runner1, runner2 = tmp_path / "runner1", tmp_path / "runner2" / "checkout"
    _c_like(runner1)
    assert dagrun(runner1, "build").returncode == 0
    # the checkout: the sources only, written anew
    (runner2 / "src").mkdir(parents=True)
    for f in (runner1 / "src").iterdir():
        (runner2 / "src" / f.name).write_text(f.read_text())
    (runner2 / "dagrun.toml").write_text((runner1 / "dagrun.toml").read_text())
    # the cache step: the listed paths, less the excluded ones
    keep = [p for p in paths if not p.startswith("!")]
    drop = [p[1:] for p in paths if p.startswith("!")]
    staged = tmp_path / "cache-staging"
    shutil.copytree(runner1, staged, ignore=lambda d, names: [
        n for n in names if os.path.relpath(os.path.join(d, n), runner1) in drop
    ])
    _tar(staged, runner2, keep)
    run = dagrun(runner2, "build", "-k")
    assert run.returncode == 0, run.stderr
    assert "no work to do" in run.stdout, run.stdout


# -- outputs of tasks gone from the manifest


MATRIX = """
[tasks.count]
matrix = { f = { glob = "data/*.csv" } }
cmd = "wc -l < {f} > build/{f.stem}.count"
inputs = ["{f}"]
outputs = ["build/{f.stem}.count"]

[tasks.report]
cmd = "cat {inputs} > report.txt"
inputs = ["build/*.count"]
outputs = ["report.txt"]
"""


def _matrix(project) -> None:
    project.manifest(MATRIX)
    project.write("data/a.csv", "1\n")
    project.write("data/b.csv", "1\n2\n")
    (project.root / "build").mkdir()
    assert project.run("build").code == 0
    assert project.read("report.txt") == "1\n2\n"


def test_the_output_of_a_removed_matrix_input_is_removed_and_never_read(project):
    _matrix(project)
    os.unlink(project.root / "data/b.csv")
    run = project.run("build")
    assert run.code == 0, run.err
    assert not (project.root / "build/b.count").exists()
    assert "removed build/b.count" in run.out + run.err
    assert project.read("report.txt") == "1\n"
    assert "no work to do" in project.run("build").out


def test_an_edited_output_of_a_removed_task_is_kept_with_a_warning_and_not_read(project):
    _matrix(project)
    os.unlink(project.root / "data/b.csv")
    (project.root / "build/b.count").write_text("mine\n")
    run = project.run("build")
    assert run.code == 0, run.err
    assert project.read("build/b.count") == "mine\n"
    assert "kept build/b.count" in run.err, run.err
    assert project.read("report.txt") == "1\n"  # never matched by the glob


def test_a_renamed_source_does_not_leave_its_old_object_in_the_link(project):
    """mv lzio.c lzio2.c: the old object would define the same symbols twice."""
    _matrix(project)
    os.rename(project.root / "data/b.csv", project.root / "data/b2.csv")
    run = project.run("build")
    assert run.code == 0, run.err
    assert sorted(os.listdir(project.root / "build")) == ["a.count", "b2.count"]
    assert project.read("report.txt") == "1\n2\n"


@pytest.mark.parametrize("dry", [True, False])
def test_dry_run_and_list_remove_nothing(project, dry):
    _matrix(project)
    os.unlink(project.root / "data/b.csv")
    run = project.run("build", "-n") if dry else project.run("list")
    assert run.code == 0
    assert (project.root / "build/b.count").exists()


# -- function results are checked against their success record before they are loaded


STEPS = '''
def produce():
    return list(range(50))


def total(produce):
    return sum(produce)
'''

STEPS_TOML = """
[tasks.produce]
call = "steps:produce"

[tasks.total]
call = "steps:total"
deps = ["produce"]
"""


def _results(project) -> dict[str, Path]:
    """Task -> its result file, from the log's latest records."""
    import json

    out = {}
    for line in (project.root / ".dagrun/log").read_text().splitlines()[1:]:
        record = json.loads(line)
        if "key" in record:
            out[record["task"]] = project.root / ".dagrun/results" / record["key"]
    return out


@pytest.mark.parametrize("offset", [3, 20, -2])
def test_a_flipped_bit_in_a_result_reruns_its_producer(project, offset):
    project.write("steps.py", STEPS)
    project.manifest(STEPS_TOML)
    assert project.run("build").code == 0
    path = _results(project)["produce"]
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    run = project.run("build", "--explain")
    assert run.code == 0, run.out + run.err
    assert "produce" in run.out and "1 succeeded" in run.out, run.out  # total: same bytes
    from dagrun.api import load

    values = load(str(project.root / "dagrun.toml")).build().values
    assert values["total"] == sum(range(50)) and values["produce"] == list(range(50))


class _Plant:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_in_results_never_runs_and_its_producer_reruns(project):
    import pickle

    project.write("steps.py", STEPS)
    project.manifest(STEPS_TOML)
    assert project.run("build").code == 0
    marker = project.root / "PWNED"
    for path in _results(project).values():  # a results/ restored from an untrusted cache
        path.write_bytes(pickle.dumps(_Plant(str(marker))))
    run = project.run("build")
    assert run.code == 0, run.out + run.err
    from dagrun.api import load

    values = load(str(project.root / "dagrun.toml")).build().values
    assert values["total"] == sum(range(50))
    assert not marker.exists()


def test_a_result_replaced_while_the_build_runs_is_not_loaded_by_its_dependent(project):
    """Between the plan and the dependent's start: the dependent fails clearly, runs no code,
    and the next build reruns the producer."""
    import pickle

    project.write("steps.py", STEPS.replace("def total(produce):", (
        "def total(produce):\n    import time\n    time.sleep(0)\n    return sum(produce)\n\n\n"
        "def total_unused(produce):")))
    project.write("plant.py", "")
    project.manifest(STEPS_TOML.replace('deps = ["produce"]', 'deps = ["produce", "swap"]')
                     + '\n[tasks.swap]\ncmd = "python3 plant.py"\ninputs = ["plant.py"]\n'
                     'deps = ["produce"]\n')
    marker = project.root / "PWNED"
    assert project.run("build").code == 0
    path = _results(project)["produce"]
    (project.root / "plant.py").write_text(
        "import pickle, os\n"
        f"open({str(path)!r}, 'wb').write({pickle.dumps(_Plant(str(marker)))!r})\n"
    )
    run = project.run("build")  # swap's command changed: it runs, then total
    assert run.code == 1
    assert "not the one its run left" in run.out + run.err
    assert not marker.exists()
    (project.root / "plant.py").write_text("")
    assert project.run("build").code == 0
    assert not marker.exists()


def test_a_forced_non_deterministic_producer_reruns_its_dependents(project):
    project.manifest(NONDET)
    assert project.run("build").code == 0
    run = project.run("build", "--force", "fetch")  # the target fetch alone
    assert run.code == 0 and "1 succeeded" in run.out, run.out
    run = project.run("build", "--explain")  # combine saw the old stamp
    assert run.code == 0 and "1 succeeded, 1 up to date" in run.out, run.out
    assert "output of dependency fetch changed since it ran" in run.out + run.err
    assert project.read("combined.txt") == project.read("stamp.txt")
    run = project.run("build", "--force")  # every task: fetch first, then combine after it
    assert run.code == 0 and "2 succeeded" in run.out, run.out
    assert project.read("combined.txt") == project.read("stamp.txt")
    project.manifest(DET)
    assert project.run("build").code == 0
    run = project.run("build", "-B", "gen")
    assert run.code == 0 and "1 succeeded" in run.out, run.out
    assert "no work to do" in project.run("build").out
    assert project.read("runs.log") == "ran\n"


def test_a_dead_output_in_a_tree_moved_elsewhere_is_removed_by_its_digest(tmp_path):
    """Moved through a tarball, a removed matrix input's output has a new identity but the
    bytes its run left: it is removed, not kept as if edited."""
    one, two = tmp_path / "one", tmp_path / "two"
    (one / "data").mkdir(parents=True)
    (one / "build").mkdir()
    (one / "dagrun.toml").write_text(MATRIX)
    (one / "data/a.csv").write_text("1\n")
    (one / "data/b.csv").write_text("1\n2\n")
    assert dagrun(one, "build").returncode == 0
    _tar(one, two)
    (two / "data/b.csv").unlink()
    run = dagrun(two, "build")
    assert run.returncode == 0, run.stderr
    assert "removed build/b.count" in run.stderr and "kept" not in run.stderr, run.stderr
    assert not (two / "build/b.count").exists()
    assert (two / "report.txt").read_text() == "1\n"
