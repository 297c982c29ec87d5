"""dagrun watch tells each build what changed (Session.build's ``changed=``) only when it knows.

A round passes the changed paths only after a round that succeeded, with the
same watches, no events lost and no output changed by anything but the build;
otherwise None ("check everything").  Real watcher, real files, as in
test_watch.py.
"""

from __future__ import annotations

import gc
import io
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from test_watch import Watching, make_project, tally

from dagrun.watch import Change, ChangeSet, Round, Watcher

# three independent tasks; t2 fails while its source says "fail"
THREE = "\n".join(
    f"""
    [tasks.t{n}]
    cmd = "! grep -q fail src/t{n}.txt && cp src/t{n}.txt out/t{n} && echo t{n} >> tally.log"
    inputs = ["src/t{n}.txt"]
    outputs = ["out/t{n}"]
    """
    for n in (1, 2, 3)
)
SOURCES = {f"src/t{n}.txt": f"{n}\n" for n in (1, 2, 3)} | {"out/.keep": ""}


def start(started: list[Watching], root: Path) -> Watching:
    w = Watching(make_project(root, THREE, SOURCES))
    started.append(w)
    first = w.next_round()
    assert first.delta is None  # nothing is known before the first build
    assert first.result is not None and first.result.ok
    (tmp := root / "src/t1.txt").write_text("one\n")
    warm = w.next_round()
    assert warm.delta is None  # the build made .dagrun/: watched since, so nothing was seen
    assert warm.result is not None and warm.result.succeeded == ("t1",)
    assert tmp.read_text() == (root / "out/t1").read_text()
    return w


def succeeded(r: Round) -> tuple[str, ...]:
    assert r.result is not None
    return r.result.succeeded


@pytest.mark.slow
def test_one_edited_source_rebuilds_exactly_its_task_and_the_build_is_told_so(
    tmp_path: Path, watching: list[Watching]
) -> None:
    w = start(watching, tmp_path)
    ws = w.watcher._ws

    (tmp_path / "src/t2.txt").write_text("two\n")
    r = w.next_round()
    assert r.delta == ("src/t2.txt",)
    assert succeeded(r) == ("t2",)
    assert (tmp_path / "out/t2").read_text() == "two\n"

    (tmp_path / "src/t3.txt").write_text("three\n")  # out/t2, written by the build, is no reason
    r = w.next_round()
    assert r.delta == ("src/t3.txt",)
    assert succeeded(r) == ("t3",)
    runs = tally(tmp_path)
    assert sorted(runs[:3]) == ["t1", "t2", "t3"] and runs[3:] == ["t1", "t2", "t3"]
    assert w.watcher._ws is ws  # the watch set was not worked out again


@pytest.mark.slow
def test_an_output_changed_outside_the_build_makes_the_next_round_check_everything(
    tmp_path: Path, watching: list[Watching]
) -> None:
    w = start(watching, tmp_path)
    (tmp_path / "out/t1").write_text("tampered")  # no round of its own
    (tmp_path / "src/t2.txt").write_text("two\n")
    r = w.next_round()
    assert r.changed == ("src/t2.txt",) and r.delta is None
    assert sorted(succeeded(r)) == ["t1", "t2"]
    assert (tmp_path / "out/t1").read_text() == "one\n"

    (tmp_path / "src/t3.txt").write_text("three\n")  # known exactly again
    assert w.next_round().delta == ("src/t3.txt",)


@pytest.mark.slow
def test_after_a_failed_round_the_next_checks_everything(
    tmp_path: Path, watching: list[Watching]
) -> None:
    w = start(watching, tmp_path)
    (tmp_path / "src/t2.txt").write_text("fail\n")
    failed = w.next_round()
    assert failed.delta == ("src/t2.txt",)
    assert failed.result is not None and failed.result.failed == ("t2",)

    (tmp_path / "src/t2.txt").write_text("fixed\n")
    fixed = w.next_round()
    assert fixed.delta is None
    assert succeeded(fixed) == ("t2",)
    (tmp_path / "src/t1.txt").write_text("uno\n")
    assert w.next_round().delta == ("src/t1.txt",)


@pytest.mark.slow
def test_a_manifest_change_makes_the_round_check_everything(
    tmp_path: Path, watching: list[Watching]
) -> None:
    w = start(watching, tmp_path)
    manifest = tmp_path / "dagrun.toml"
    manifest.write_text(manifest.read_text().replace("echo t3 >>", "echo t3 again >>"))
    r = w.next_round()
    assert r.changed == ("dagrun.toml",) and r.delta is None
    assert succeeded(r) == ("t3",)
    (tmp_path / "src/t1.txt").write_text("uno\n")
    assert w.next_round().delta == ("src/t1.txt",)


def test_lost_events_make_the_round_check_everything(tmp_path: Path) -> None:
    manifest = make_project(tmp_path, THREE, SOURCES)
    (tmp_path / ".dagrun").mkdir()  # else watched once the first build makes it: a new watch
    root = str(tmp_path)
    calls: list[int] = []
    script: list[ChangeSet] = [
        set(),
        {(Change.MODIFIED, f"{root}/src/t1.txt")},
        {(Change.LOST, "")},  # inotify's queue overflowed
    ]

    def fake_watch(folders: Sequence[str], stop: threading.Event) -> Iterator[ChangeSet]:
        calls.append(1)
        if len(calls) == 1:
            yield from script
        while not stop.wait(0.01):
            yield set()

    stop = threading.Event()
    rounds: list[Round] = []

    def on_round(r: Round) -> None:
        rounds.append(r)
        if len(rounds) == 3:
            stop.set()

    out = io.StringIO()
    w = Watcher(str(manifest), debounce_ms=0, progress="plain", out=out, err=out,
                watch_fn=fake_watch, on_round=on_round)
    assert w.run(stop) == 0
    assert gc.isenabled()  # off only from each round's start to its first task's spawn
    assert len(calls) == 1
    assert [r.delta for r in rounds] == [None, ("src/t1.txt",), None]
    assert "changed: (changes may have been missed: checking everything)" in out.getvalue()
