"""dagrun.inotify: change sets from Linux inotify, over real folders and files."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagrun import inotify

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
