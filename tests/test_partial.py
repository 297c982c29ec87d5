"""Partial builds: after a proven build, only the tasks the changes reach are re-keyed and decided.

The no-op check (fresh.examine) names the sources and outputs that changed since the proof; the
build then decides only the tasks reading a changed source, the tasks below them and the
producers of changed outputs (session.Session._partial).  Its plan must always be the full
check's plan: each test below compares the two on the same state, then builds.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from dagrun.errors import ManifestError
from dagrun.report import RecordingReporter
from dagrun.session import Prepared, Session
from dagrun.state import proof as fresh

# a diamond with a depfile task, a restat task and a task outside the default targets
MANIFEST = """
[dagrun]
default = ["top", "c"]

[tasks.a]
cmd = "cat src/a.txt > out/a"
inputs = ["src/a.txt"]
outputs = ["out/a"]

[tasks.b]
cmd = "cat src/b.txt src/shared.txt > out/b"
inputs = ["src/b.txt", "src/shared.txt"]
outputs = ["out/b"]
restat = true

[tasks.c]
cmd = "cat src/c.h > out/c && printf 'out/c: src/c.h src/extra.h\\n' > out/c.d"
inputs = ["src/c.h"]
outputs = ["out/c"]
depfile = "out/c.d"

[tasks.mid]
cmd = "cat out/a out/b > out/mid"
deps = ["a", "b"]
outputs = ["out/mid"]

[tasks.top]
cmd = "cat out/mid src/shared.txt > out/top"
inputs = ["src/shared.txt"]
deps = ["mid"]
outputs = ["out/top"]

[tasks.aside]
cmd = "cat src/shared.txt > out/aside"
inputs = ["src/shared.txt"]
outputs = ["out/aside"]
"""

SOURCES = ("src/a.txt", "src/b.txt", "src/shared.txt", "src/c.h", "src/extra.h")
OUTPUTS = ("out/a", "out/b", "out/c", "out/mid", "out/top")


def _age(path: Path) -> None:
    """An mtime in the past: the stat cache trusts the digest (not racily clean)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))


@pytest.fixture
def built(project):
    project.manifest(MANIFEST)
    (project.root / "out").mkdir()
    for name in SOURCES:
        _age(project.write(name, f"{name}\n"))
    first = project.run("build")
    assert first.code == 0, first.err
    assert _examine(project) == 5
    return project


def _examine(project, targets: tuple[str, ...] = ()) -> int | fresh.Delta | None:
    return fresh.examine(str(project.root / "dagrun.toml"), targets, os.environ)


def _prepare(project, delta: fresh.Delta | None, targets: tuple[str, ...] = ()) -> Prepared:
    session = Session(manifest_path=str(project.root / "dagrun.toml"))
    with session.lock():
        prep = session._prepare(targets or None, explain=True, delta=delta)
        prep.log.close()
    return prep


def _names(prep: Prepared, tasks: tuple[int, ...]) -> set[str]:
    return {prep.graph.specs[i].name for i in tasks}


def _same_plans(project, targets: tuple[str, ...] = ()) -> tuple[fresh.Delta, Prepared]:
    """The partial plan for the state now, after checking it is the full check's plan."""
    delta = _examine(project, targets)
    assert isinstance(delta, fresh.Delta), delta
    partial = _prepare(project, delta, targets)
    full = _prepare(project, None, targets)
    assert partial.delta is delta  # it was taken, not dropped for the full check
    assert _names(partial, partial.plan.to_run) == _names(full, full.plan.to_run)
    assert _names(partial, partial.plan.up_to_date) == _names(full, full.plan.up_to_date)
    assert partial.plan.selected == full.plan.selected
    for i in partial.plan.to_run:
        why = partial.plan.reasons[i]
        # the one difference: below a restat task that runs to restore a tampered output, the
        # full check keys the task now (over the tampered file) and runs it; the partial plan
        # leaves it pending, decided when that task is done (as for any other pending task)
        if why != full.plan.reasons[i]:
            assert why[0].startswith("may run: depends on "), (why, full.plan.reasons[i])
    return delta, partial


def test_one_changed_source_decides_only_its_readers_and_the_tasks_below(built):
    built.write("src/a.txt", "changed\n")
    delta, prep = _same_plans(built)
    assert delta.sources == {"src/a.txt"} and delta.outputs == set()
    assert _names(prep, prep.decided) == {"a", "mid", "top"}
    assert _names(prep, prep.plan.to_run) == {"a", "mid", "top"}
    run = built.run("build")
    assert run.code == 0, run.err
    assert "3 succeeded, 2 up to date" in run.out
    assert built.read("out/top") == "changed\nsrc/b.txt\nsrc/shared.txt\nsrc/shared.txt\n"


def test_a_source_rewritten_with_the_same_content_runs_nothing(built):
    built.write("src/shared.txt", "src/shared.txt\n")
    delta, prep = _same_plans(built)
    assert delta.sources == {"src/shared.txt"}
    assert prep.plan.to_run == ()
    assert built.run("build").out == "dagrun: no work to do (5 up to date)\n"


def test_an_edited_output_reruns_only_its_producer(built):
    (built.root / "out/mid").write_text("edited\n")
    delta, prep = _same_plans(built)
    assert (delta.sources, delta.outputs) == (set(), {"out/mid"})
    assert _names(prep, prep.plan.to_run) == {"mid", "top"}  # top: if mid makes other bytes
    assert prep.plan.reasons[prep.plan.to_run[0]] == ("output out/mid changed since it was built",)
    assert prep.plan.reasons[prep.plan.to_run[1]] == ("may run: depends on mid",)
    run = built.run("build")
    assert "1 succeeded, 4 up to date" in run.out
    assert built.read("out/mid") == "src/a.txt\nsrc/b.txt\nsrc/shared.txt\n"


def test_a_file_a_depfile_listed_counts_as_a_source(built):
    built.write("src/extra.h", "changed\n")
    delta, prep = _same_plans(built)
    assert delta.sources == {"src/extra.h"}
    assert _names(prep, prep.plan.to_run) == {"c"}
    assert "input src/extra.h changed (from depfile)" in prep.plan.reasons[prep.plan.to_run[0]]


def test_a_restat_task_that_writes_the_same_output_stops_the_rebuild_below_it(built):
    built.write("src/b.txt", "src/b.txt\n")  # same content: b is not even re-keyed
    _, prep = _same_plans(built)
    assert prep.plan.to_run == ()
    built.write("src/shared.txt", "more\n")  # b, top, aside read it; aside is not selected
    _, prep = _same_plans(built)
    assert _names(prep, prep.plan.to_run) == {"b", "mid", "top"}  # mid may run: after b
    run = built.run("build")
    assert run.code == 0, run.err
    assert _examine(built) is not None


def test_a_deleted_source_is_the_same_error_as_in_a_full_build(built):
    (built.root / "src/a.txt").unlink()
    delta = _examine(built)
    assert isinstance(delta, fresh.Delta) and delta.sources == {"src/a.txt"}
    with pytest.raises(ManifestError, match="input 'src/a.txt' does not exist"):
        _prepare(built, delta)
    with pytest.raises(ManifestError, match="input 'src/a.txt' does not exist"):
        _prepare(built, None)
    assert built.run("build").code == 2


def test_a_delta_from_before_another_build_is_not_used(built):
    built.write("src/a.txt", "changed\n")
    delta = _examine(built)
    assert isinstance(delta, fresh.Delta)
    assert built.run("build").code == 0  # another dagrun built in between
    built.write("src/c.h", "changed\n")
    session = Session(manifest_path=str(built.root / "dagrun.toml"))
    with session.lock():
        assert session._usable_delta(delta, None) is None  # its proof is gone
    run = built.run("build")
    assert "1 succeeded, 4 up to date" in run.out


def test_targets_must_be_the_proven_ones(built):
    built.write("src/a.txt", "changed\n")
    assert _examine(built, ("mid",)) is None  # the proof is for the default targets
    assert "2 succeeded, 1 up to date" in built.run("build", "mid").out


def test_watch_s_changed_paths_build_like_a_check(built):
    session = Session(manifest_path=str(built.root / "dagrun.toml"))
    session.keep_last = True
    assert session.build(reporter=RecordingReporter()).ok
    assert session._proof is not None  # the proof it wrote, kept for the next round
    built.write("src/c.h", "changed\n")
    result = session.build(reporter=RecordingReporter(), changed={"src/c.h"})
    assert result.succeeded == ("c",)
    assert built.read("out/c") == "changed\n"
    last = session._last
    assert last is not None and last.delta is not None  # a partial build
    assert _names(last, last.decided) == {"c"}
    assert session._proof is not None
    built.write("src/a.txt", "changed\n")  # a change the caller does not name is not seen
    result = session.build(reporter=RecordingReporter(), changed=set())
    assert result.succeeded == () and len(result.up_to_date) == 5
    assert isinstance(_examine(built), fresh.Delta)  # but the next check sees it


@pytest.mark.slow
def test_random_edits_always_plan_as_the_full_check_does(built):
    """Seeded random histories of edits, deletions and rewrites: partial == full, every step."""
    rng = random.Random(12)
    for step in range(40):
        for _ in range(rng.randint(1, 3)):
            kind = rng.random()
            if kind < 0.5:
                name = rng.choice(SOURCES)
                built.write(name, rng.choice(("x\n", "y\n", f"{name}\n")))
                if rng.random() < 0.7:
                    _age(built.root / name)
            elif kind < 0.8:
                out = built.root / rng.choice(OUTPUTS)
                out.write_text("tampered\n")
            else:
                out = built.root / rng.choice(OUTPUTS)
                out.unlink(missing_ok=True)
        found = _examine(built)
        if isinstance(found, fresh.Delta):
            _same_plans(built)
        run = built.run("build")
        assert run.code == 0, (step, run.err)
        again = built.run("build")
        assert "succeeded" not in again.out, (step, again.out)


# -- the cache's journal: a partial build appends its few changes instead of rewriting the cache

CHAIN = """
[tasks.t]
cmd = "cat s.txt > t.out"
inputs = ["s.txt"]
outputs = ["t.out"]

[tasks.u]
cmd = "cat t.out u.txt > u.out"
inputs = ["u.txt"]
deps = ["t"]
outputs = ["u.out"]
"""


@pytest.fixture
def chain(project):
    project.manifest(CHAIN)
    for name in ("s.txt", "u.txt"):
        _age(project.write(name, "one\n"))
    assert project.run("build").code == 0
    assert _examine(project) == 2
    return project


def _state(project, name: str) -> Path:
    return project.root / ".dagrun" / name


def test_a_partial_build_writes_a_journal_not_the_cache(chain):
    cache = _state(chain, "cache").stat()
    chain.write("s.txt", "two\n")
    assert "2 succeeded" in chain.run("build").out
    after = _state(chain, "cache").stat()
    assert (after.st_ino, after.st_mtime_ns) == (cache.st_ino, cache.st_mtime_ns)
    assert _state(chain, "cache.journal").exists()
    _age(chain.root / "s.txt")
    assert chain.run("build").out == "dagrun: no work to do (2 up to date)\n"
    assert _examine(chain) == 2
    # the journal is the cache's: a full check (a new session, no delta) agrees
    full = _prepare(chain, None)
    assert full.plan.to_run == () and full.keys.recomputed == 0


def test_a_damaged_journal_turns_partial_builds_off_and_the_build_stays_right(chain):
    chain.write("s.txt", "two\n")
    assert "2 succeeded" in chain.run("build").out  # the journal has t's and u's new keys
    journal = _state(chain, "cache.journal")
    raw = bytearray(journal.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    journal.write_bytes(bytes(raw))
    chain.write("u.txt", "two\n")
    delta = _examine(chain)
    assert isinstance(delta, fresh.Delta) and delta.sources >= {"u.txt"}
    prep = _prepare(chain, delta)
    assert prep.delta is None  # the cache alone is older than the proof: check every task
    chain.write("s.txt", "one\n")  # back to the first content: t's first key again
    run = chain.run("build")
    assert run.code == 0, run.err
    assert chain.read("u.out") == "one\ntwo\n"
    assert not journal.exists()  # the full build wrote the cache whole


def test_a_journal_over_another_cache_is_not_applied(chain):
    chain.write("s.txt", "two\n")
    assert chain.run("build").code == 0
    stale = _state(chain, "cache.journal").read_bytes()
    (chain.root / "dagrun.toml").write_text(CHAIN + "\n")  # a new manifest: the cache is rewritten
    assert chain.run("build").code == 0
    _state(chain, "cache.journal").write_bytes(stale)
    chain.write("u.txt", "three\n")
    assert "1 succeeded" in chain.run("build").out
    assert chain.read("u.out") == "two\nthree\n"


def test_the_journal_is_folded_into_the_cache_when_it_grows(chain, monkeypatch):
    from dagrun.state import cache as session_module

    monkeypatch.setattr(session_module, "JOURNAL_MIN", 2)
    chain.write("s.txt", "two\n")
    assert chain.run("build").code == 0  # t's and u's keys, s.txt's entry: 3 > 2
    assert not _state(chain, "cache.journal").exists()
    full = _prepare(chain, None)
    assert full.plan.to_run == ()


def _expected(root: Path) -> dict[str, str]:
    """What each output of MANIFEST must hold, from the sources now."""
    src = {name: (root / name).read_text() for name in SOURCES}
    mid = src["src/a.txt"] + src["src/b.txt"] + src["src/shared.txt"]
    return {"out/a": src["src/a.txt"], "out/b": src["src/b.txt"] + src["src/shared.txt"],
            "out/c": src["src/c.h"], "out/mid": mid, "out/top": mid + src["src/shared.txt"]}


@pytest.mark.slow
def test_a_watch_s_rounds_told_what_changed_stay_right(built):
    """One session, many rounds told the edited paths (the index of readers and the last keys
    are reused from round to round): after each, every output is what the sources make, and a
    full check in another session finds nothing to run."""
    session = Session(manifest_path=str(built.root / "dagrun.toml"))
    session.keep_last = True
    assert session.build(reporter=RecordingReporter()).ok
    rng = random.Random(7)
    partial = 0
    for step in range(30):
        edited = set(rng.sample(SOURCES, rng.randint(1, 2)))
        for name in edited:
            built.write(name, rng.choice(("x\n", "y\n", "zz\n", f"{name}\n")))
        result = session.build(reporter=RecordingReporter(), changed=edited)
        assert result.ok, step
        partial += session._last is not None and session._last.delta is not None
        got = {out: (built.root / out).read_text() for out in OUTPUTS}
        assert got == _expected(built.root), step
        assert _prepare(built, None).plan.to_run == (), step
    assert partial >= 25  # nearly every round was partial (a racy first hash is checked again)
