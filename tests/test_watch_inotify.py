"""dagrun.inotify: change sets from Linux inotify, over real folders and files; and dagrun watch
when its watches move to new folders after a round (changes made before they are armed)."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_watch import Watching, make_project

from dagrun import inotify
from dagrun.watch import Round

pytestmark = pytest.mark.skipif(not inotify.available(), reason="inotify is Linux only")


class Listening:
    """inotify.watch in a thread; ``next()`` is its next non-empty change set."""

    def __init__(
        self, folders: list[Path], settle_ms: int = 20, marks: tuple[str, ...] = ()
    ) -> None:
        self.stop = threading.Event()
        self.sets: queue.Queue[set[tuple[int, str]] | BaseException] = queue.Queue()
        self.ready = threading.Event()
        self._args = ([str(f) for f in folders], settle_ms, marks)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(5)

    def _run(self) -> None:
        try:
            folders, settle_ms, marks = self._args
            for changes in inotify.watch(folders, self.stop, settle_ms=settle_ms, tick_ms=20,
                                         marks=marks):
                self.ready.set()
                if changes:
                    self.sets.put(changes)
        except OSError as exc:
            self.sets.put(exc)
        finally:
            self.ready.set()

    def next(self) -> set[tuple[int, str]] | BaseException:
        return self.sets.get(timeout=5)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()


@pytest.fixture
def listen() -> Iterator[list[Listening]]:
    started: list[Listening] = []
    yield started
    for x in started:
        x.close()


def test_saves_new_files_deletes_and_renames(tmp_path: Path, listen: list[Listening]) -> None:
    (tmp_path / "a.txt").write_text("a")
    w = Listening([tmp_path], settle_ms=2000)  # only what stays open waits that long
    listen.append(w)

    (tmp_path / "a.txt").write_text("a2")  # truncate, write, close: one change, once closed
    assert w.next() == {(inotify.MODIFIED, f"{tmp_path}/a.txt")}
    (tmp_path / "b.txt").write_text("b")  # created, then written: still new
    assert w.next() == {(inotify.ADDED, f"{tmp_path}/b.txt")}
    os.replace(tmp_path / "b.txt", tmp_path / "a.txt")  # an editor's atomic save
    moved = {(inotify.DELETED, f"{tmp_path}/b.txt"), (inotify.ADDED, f"{tmp_path}/a.txt")}
    assert w.next() == moved
    (tmp_path / "sub").mkdir()
    assert w.next() == {(inotify.ADDED, f"{tmp_path}/sub")}
    (tmp_path / "a.txt").unlink()
    assert w.next() == {(inotify.DELETED, f"{tmp_path}/a.txt")}
    (tmp_path / "sub" / "deeper.txt").write_text("x")  # not recursive
    (tmp_path / "c.txt").write_text("c")
    assert w.next() == {(inotify.ADDED, f"{tmp_path}/c.txt")}


def test_a_file_still_open_for_writing_is_reported_once_quiet(
    tmp_path: Path, listen: list[Listening]
) -> None:
    w = Listening([tmp_path], settle_ms=10)
    listen.append(w)
    with open(tmp_path / "log.txt", "w") as f:
        f.write("x")
        f.flush()
        assert w.next() == {(inotify.ADDED, f"{tmp_path}/log.txt")}  # not held until closed
        f.write("y")
        f.flush()
        assert w.next() == {(inotify.MODIFIED, f"{tmp_path}/log.txt")}


def test_a_watched_folder_that_goes_away_ends_the_watch(
    tmp_path: Path, listen: list[Listening]
) -> None:
    (tmp_path / "src").mkdir()
    w = Listening([tmp_path / "src", tmp_path])
    listen.append(w)
    (tmp_path / "src").rmdir()
    got = [w.next(), w.next()]
    assert got[0] == {(inotify.DELETED, f"{tmp_path}/src")}  # seen from the parent
    assert isinstance(got[1], OSError) and got[1].filename == f"{tmp_path}/src"


def test_a_missing_folder_cannot_be_watched(tmp_path: Path) -> None:
    with pytest.raises(OSError) as err:
        next(inotify.watch([str(tmp_path / "nope")], threading.Event()))
    assert err.value.filename == str(tmp_path / "nope")


def test_a_mark_ends_its_change_set(tmp_path: Path, listen: list[Listening]) -> None:
    mark = f"{tmp_path}/mark"
    open(mark, "w").close()
    w = Listening([tmp_path], settle_ms=3000, marks=(mark,))
    listen.append(w)
    with open(tmp_path / "a.txt", "w") as f:  # held open: its set waits for the close
        f.write("a")
        f.flush()
        open(mark, "a").close()  # ... but the mark ends it (as Watcher._sync touches it)
        (tmp_path / "b.txt").write_text("b")
        assert w.next() == {(inotify.ADDED, f"{tmp_path}/a.txt"), (inotify.MODIFIED, mark)}
    after = {(inotify.ADDED, f"{tmp_path}/b.txt"), (inotify.MODIFIED, f"{tmp_path}/a.txt")}
    seen = w.next()
    assert isinstance(seen, set)
    if seen == {(inotify.ADDED, f"{tmp_path}/b.txt")}:  # read before a.txt was closed
        seen |= w.next()  # type: ignore[arg-type]
    assert seen == after


# ---------------------------------------------------------------- dagrun watch: watches that move

# c's depfile names inc/x.h: inc/ is watched only once the first build has read the depfile
DEPFILE = """
    [tasks.c]
    cmd = "cat src/main.c inc/x.h > out.txt && echo 'out.txt: src/main.c inc/x.h' > c.d"
    inputs = ["src/main.c"]
    outputs = ["out.txt"]
    depfile = "c.d"
"""


def rounds_within(w: Watching, seconds: float) -> list[Round]:
    """The rounds that come within ``seconds``."""
    got: list[Round] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            got.append(w.next_round(timeout=left))
        except AssertionError:
            break
    return got


@pytest.mark.slow
def test_a_source_changed_in_a_new_folder_before_it_is_watched_is_rebuilt(
    tmp_path: Path, watching: list[Watching]
) -> None:
    manifest = make_project(tmp_path, DEPFILE, {"src/main.c": "main\n", "inc/x.h": "x1\n"})
    inc = str(tmp_path / "inc")
    watched: list[tuple[str, ...]] = []

    def edit_before_the_new_watch(r: Round) -> None:  # the build ended; inc/ is not watched
        if r.number == 1:
            watched.extend(f.ws.folders for f in w.watcher._feeds)
            (tmp_path / "inc/x.h").write_text("x2 edited\n")

    w = Watching(manifest, hook=edit_before_the_new_watch)
    watching.append(w)
    first = w.next_round()
    assert first.result is not None and first.result.succeeded == ("c",)
    assert watched and all(inc not in folders for folders in watched)
    assert inc in w.watcher._ws.folders  # watched from now on: the edit came before

    second = w.next_round(timeout=5)  # without a check after the move: no round, ever
    assert second.changed == ("inc/x.h",) and second.delta is None
    assert second.result is not None and second.result.succeeded == ("c",)
    assert (tmp_path / "out.txt").read_text() == "main\nx2 edited\n"
    assert rounds_within(w, 1.5) == []  # and that is all


@pytest.mark.slow
@pytest.mark.parametrize("where", ["inc", "gen/$(date +%s%N)"], ids=["same", "new-each-build"])
def test_an_always_task_whose_watches_move_does_not_rebuild_forever(
    tmp_path: Path, watching: list[Watching], where: str
) -> None:
    # no proof is written after a build with an ``always`` task, so what changed before the new
    # watches were armed cannot be checked: one round checks everything, and no more (even when
    # each build names a folder never watched before)
    manifest = make_project(
        tmp_path,
        f"""
        [tasks.t]
        always = true
        cmd = '''d={where}; mkdir -p $d gen; [ -e $d/x.h ] || echo x > $d/x.h
          echo t: $d/x.h > t.d; touch gen/t'''
        outputs = ["gen/t"]
        depfile = "t.d"
        """,
        {"inc/x.h": "x"},  # not written by t: a task that writes what it reads rebuilds forever
    )
    w = Watching(manifest)
    watching.append(w)
    rounds = [w.next_round(), *rounds_within(w, 3.0)]
    assert [r.number for r in rounds] == [1, 2]
    assert rounds[1].delta is None and all(r.result and r.result.ok for r in rounds)
    assert "changed: (files may have changed while the watches moved: checking everything)" in (
        w.out.getvalue()
    )
