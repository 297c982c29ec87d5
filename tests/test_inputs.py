"""Inputs tracked whatever their form: trailing **, folders, any spelling, symlink loops.

Issue 8, items 6-10 and 17: each test here failed on the main of that day.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dagrun import globs
from dagrun.graph import compile
from dagrun.manifest import parse


def names_ran(project) -> list[str]:
    path = project.root / "tally"
    if not path.exists():
        return []
    names = path.read_text().split()
    path.unlink()
    return sorted(names)


def test_item6_trailing_double_star_means_every_file_below(project):
    project.manifest(
        """
        [tasks.t]
        cmd = "cat src/a.txt src/sub/b.txt > out.txt && echo t >> tally"
        inputs = ["src/**"]
        outputs = ["out.txt"]
        """
    )
    project.write("src/a.txt", "a\n")
    project.write("src/sub/b.txt", "b\n")
    assert project.run("build").code == 0
    assert names_ran(project) == ["t"]
    project.write("src/sub/b.txt", "changed\n")
    r = project.run("build", "--explain")
    assert r.code == 0, r.err
    assert names_ran(project) == ["t"]
    assert project.read("out.txt") == "a\nchanged\n"
    assert globs.expand("src/**", str(project.root)) == ["src/a.txt", "src/sub/b.txt"]


FOLDER = """
[tasks.t]
cmd = "ls -R data > out.txt && echo t >> tally"
inputs = ["data"]
outputs = ["out.txt"]
"""


def test_item7_a_folder_input_means_its_whole_tree(project):
    project.manifest(FOLDER)
    project.write("data/a.txt", "a\n")
    project.write("data/deep/b.txt", "b\n")
    assert project.run("build").code == 0
    assert names_ran(project) == ["t"]
    assert project.run("build").code == 0
    assert names_ran(project) == []

    project.write("data/deep/b.txt", "changed\n")  # a file changed deep inside
    r = project.run("build", "--explain")
    assert names_ran(project) == ["t"]
    assert "input data/deep/b.txt changed" in r.out

    project.write("data/deep/new.txt", "new\n")  # a file added
    r = project.run("build", "--explain")
    assert names_ran(project) == ["t"]
    assert "input data/deep/new.txt added" in r.out

    (project.root / "data" / "a.txt").unlink()  # a file removed
    r = project.run("build", "--explain")
    assert names_ran(project) == ["t"]
    assert "input data/a.txt removed" in r.out


def test_item7_a_folder_input_depends_on_tasks_writing_into_it(tmp_path):
    m = parse(
        """
        [tasks.gen]
        cmd = "echo > data/gen.txt"
        outputs = ["data/gen.txt"]
        [tasks.use]
        cmd = "ls data"
        inputs = ["data"]
        """.replace("\n        ", "\n"),
        root=str(tmp_path),
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "src.txt").write_text("x")
    (tmp_path / "data" / "gen.txt").write_text("stale")
    g = compile(m)
    use = g.index["use"]
    assert g.deps[use] == (g.index["gen"],)
    assert g.sources[use] == ("data/src.txt",)  # the produced file is not a source


@pytest.mark.parametrize(
    "spelling", ["{root}/gen/x.txt", "./gen/x.txt", "gen/../gen/x.txt", "../{name}/gen/x.txt"]
)
def test_item8_an_input_depends_on_its_producer_however_it_is_spelled(tmp_path, spelling):
    text = f"""
[tasks.consume]
cmd = "cat gen/x.txt > out.txt"
inputs = ["{spelling.format(root=tmp_path, name=tmp_path.name)}"]
outputs = ["out.txt"]

[tasks.produce]
cmd = "echo hi > gen/x.txt"
outputs = ["{tmp_path}/gen/x.txt"]
"""
    g = compile(parse(text, root=str(tmp_path)))
    assert g.specs[g.index["consume"]].inputs == ("gen/x.txt",)
    assert g.specs[g.index["produce"]].outputs == ("gen/x.txt",)
    assert g.deps[g.index["consume"]] == (g.index["produce"],)
    assert g.resolve([str(tmp_path / "gen" / "x.txt")]) == [g.index["produce"]]


def test_item8_build_with_an_absolute_input_runs_the_producer_first(project):
    project.manifest(
        f"""
        [tasks.consume]
        cmd = "cat gen/x.txt > out.txt"
        inputs = ["{project.root}/gen/x.txt"]
        outputs = ["out.txt"]

        [tasks.produce]
        cmd = "echo fresh > gen/x.txt"
        outputs = ["gen/x.txt"]
        """
    )
    r = project.run("build")
    assert r.code == 0, r.err
    assert project.read("out.txt") == "fresh\n"


@pytest.mark.parametrize("output", ["gen", "gen/a.txt"])
def test_item9_a_glob_over_what_another_task_outputs_depends_on_it(project, output):
    project.manifest(
        f"""
        [tasks.consume]
        cmd = "cat gen/*.txt > out.txt"
        inputs = ["gen/*.txt"]
        outputs = ["out.txt"]

        [tasks.produce]
        cmd = "mkdir -p gen && echo new > gen/a.txt"
        outputs = ["{output}"]
        """
    )
    project.write("gen/a.txt", "stale\n")
    r = project.run("build")
    assert r.code == 0, r.err
    assert r.out.index("produce") < r.out.index("consume")
    assert project.read("out.txt") == "new\n"


def test_item9_may_match_below():
    assert globs.may_match_below("gen/*.txt", "gen")
    assert globs.may_match_below("**/*.txt", "a/b")
    assert globs.may_match_below("g*/sub/*.c", "gen/sub")
    assert not globs.may_match_below("gen/*.txt", "other")
    assert not globs.may_match_below("gen/*.txt", "gen/a.txt/deeper")


def _expand_in_child(root: str, pattern: str) -> list[str]:
    """globs.expand in a child process with a deadline: a loop fails the test, not hangs it."""
    code = "import sys; from dagrun import globs; print(globs.expand(sys.argv[1], sys.argv[2]))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-c", code, pattern, root],
        capture_output=True, text=True, timeout=30, env=env, check=True,
    ).stdout
    result: list[str] = eval(out)  # a printed list of str
    return result


@pytest.mark.slow
def test_item10_symlink_loops_under_double_star_end_and_count_each_file_once(tmp_path):
    (tmp_path / "src" / "deep").mkdir(parents=True)
    (tmp_path / "src" / "a.c").write_text("a")
    (tmp_path / "src" / "deep" / "b.c").write_text("b")
    os.symlink(".", tmp_path / "one")  # two links to the root: 2^40 paths if followed
    os.symlink(".", tmp_path / "two")
    os.symlink(".", tmp_path / "src" / "self")  # a self-link: the same file 41 times
    os.symlink("..", tmp_path / "src" / "deep" / "up")
    assert _expand_in_child(str(tmp_path), "**/*.c") == ["src/a.c", "src/deep/b.c"]
    assert _expand_in_child(str(tmp_path), "src/**") == ["src/a.c", "src/deep/b.c"]
    assert globs.tree("src", str(tmp_path)) == ["src/a.c", "src/deep/b.c"]


def test_item10_a_link_to_a_folder_outside_the_walk_is_followed(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.c").write_text("x")
    (tmp_path / "src").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "src" / "link")
    assert globs.expand("src/**/*.c", str(tmp_path)) == ["src/link/x.c"]


@pytest.mark.parametrize("pattern", ["**", ".*/**", ".*/*", ".d*/**"])
def test_item17_a_glob_never_reaches_the_state_folder(project, pattern):
    project.manifest(
        f"""
        [tasks.t]
        cmd = "echo t >> tally; echo > out.txt"
        inputs = ["{pattern}"]
        outputs = ["out.txt"]
        """
    )
    project.write("in.txt", "x")
    assert project.run("build").code == 0
    assert names_ran(project) == ["t"]
    r = project.run("build", "--explain")
    assert r.code == 0, r.err
    assert names_ran(project) == [], r.out
    assert not any(p.startswith(".dagrun") for p in globs.expand(pattern, str(project.root)))


def test_item17_a_literal_input_in_the_state_folder_is_refused(tmp_path):
    from dagrun.errors import ManifestError

    with pytest.raises(ManifestError, match=r"input '.dagrun/log' is in .dagrun/"):
        parse('[tasks.t]\ncmd = "x"\ninputs = [".dagrun/log"]\n', root=str(tmp_path))


def test_item9_a_file_inside_a_produced_folder_depends_on_its_producer(tmp_path):
    m = parse(
        '[tasks.use]\ncmd = "cat gen/a.txt"\ninputs = ["gen/a.txt"]\n'
        '[tasks.gen]\ncmd = "mkdir -p gen && echo > gen/a.txt"\noutputs = ["gen"]\n',
        root=str(tmp_path),
    )
    g = compile(m)
    assert g.deps[g.index["use"]] == (g.index["gen"],)
    assert g.sources[g.index["use"]] == ()
