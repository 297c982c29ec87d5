"""Folder changes from Linux inotify as they happen: what ``dagrun watch`` listens to on Linux.

``watch(folders, stop)`` has the contract of ``watch.watch_folders`` (the
watchfiles one): it yields sets of ``(change, absolute path)`` -- change 1
added, 2 modified, 3 deleted, 0 "events were lost, check everything" (the
kernel's queue overflowed) -- and an empty set first (the watches are in
place) and after each ``tick_ms`` without changes.  Unlike watchfiles it does
not sleep in steps: it blocks in ``select`` and yields a change set as soon
as every file written in it is closed again (or ``settle_ms`` after the last
event while one is still open), so the caller sees a save within a
millisecond and can time its debounce from the real last event.

Non-recursive, like the watchfiles watcher: a watch per folder.  A watched
folder that is deleted or moved away ends the iteration with an OSError (the
caller watches again).
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import sys
import threading
from collections.abc import Collection, Iterator, Sequence

LOST, ADDED, MODIFIED, DELETED = 0, 1, 2, 3

_MODIFY, _ATTRIB, _CLOSE_WRITE = 0x2, 0x4, 0x8
_MOVED_FROM, _MOVED_TO, _CREATE, _DELETE = 0x40, 0x80, 0x100, 0x200
_DELETE_SELF, _MOVE_SELF = 0x400, 0x800
_UNMOUNT, _Q_OVERFLOW, _IGNORED, _ONLYDIR, _ISDIR = 0x2000, 0x4000, 0x8000, 0x01000000, 0x40000000
_MASK = (_MODIFY | _ATTRIB | _CLOSE_WRITE | _MOVED_FROM | _MOVED_TO | _CREATE | _DELETE
         | _DELETE_SELF | _MOVE_SELF | _ONLYDIR)
_GONE = _DELETE_SELF | _MOVE_SELF | _UNMOUNT | _IGNORED  # the watched folder itself went away
_NONBLOCK, _CLOEXEC = os.O_NONBLOCK, 0o2000000
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name

ChangeSet = set[tuple[int, str]]


def available() -> bool:
    return sys.platform.startswith("linux")


def watch(
    folders: Sequence[str],
    stop: threading.Event,
    *,
    settle_ms: int = 20,
    tick_ms: int = 100,
    marks: Collection[str] = (),
) -> Iterator[ChangeSet]:
    """Change sets in ``folders`` (non-recursive) until ``stop`` is set.

    A change to a path in ``marks`` ends its set: the set holds what happened
    before it, the next one what came after (sets have no order of their own).
    """
    fd, paths = _open(folders)
    try:
        yield set()
        yield from _changes(fd, paths, stop, (settle_ms / 1000, tick_ms / 1000), marks)
    finally:
        os.close(fd)


def _open(folders: Sequence[str]) -> tuple[int, dict[int, str]]:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(_NONBLOCK | _CLOEXEC)
    if fd < 0:
        raise _error("inotify_init1", "")
    paths: dict[int, str] = {}
    for folder in folders:
        wd = libc.inotify_add_watch(fd, os.fsencode(folder), _MASK)
        if wd < 0:
            os.close(fd)
            raise _error("inotify_add_watch", folder)
        paths[wd] = folder
    return fd, paths


def _error(call: str, path: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{call}: {os.strerror(code)}", path or None)


def _changes(
    fd: int,
    paths: dict[int, str],
    stop: threading.Event,
    waits: tuple[float, float],
    marks: Collection[str],
) -> Iterator[ChangeSet]:
    """Batches: yielded once no file in them is still open for writing (or ``settle`` passed)."""
    settle, tick = waits
    batch: dict[str, int] = {}
    writing: set[str] = set()  # written since their last close
    gone: list[str] = []  # watched folders that went away
    while not stop.is_set():
        open_ = not writing.isdisjoint(batch)
        if not select.select([fd], [], [], settle if open_ else tick)[0]:
            yield _flush(batch)  # quiet that long: what there is, or a tick
            continue
        for change, path in _read(fd, paths, writing, gone):
            if change != MODIFIED or path not in batch:  # a new file stays new while written
                batch[path] = change
            if path in marks:
                yield _flush(batch)
        if batch and (gone or writing.isdisjoint(batch)):
            yield _flush(batch)
        if gone:
            raise OSError(errno.ENOENT, "a watched folder went away", gone[0])


def _flush(batch: dict[str, int]) -> ChangeSet:
    out = {(c, p) for p, c in batch.items()}
    batch.clear()
    return out


def _read(
    fd: int, paths: dict[int, str], writing: set[str], gone: list[str]
) -> Iterator[tuple[int, str]]:
    try:
        data = os.read(fd, 1 << 16)
    except BlockingIOError:
        return
    pos = 0
    while pos < len(data):
        wd, mask, _cookie, size = _HEADER.unpack_from(data, pos)
        name = data[pos + _HEADER.size : pos + _HEADER.size + size].rstrip(b"\0")
        pos += _HEADER.size + size
        if mask & _Q_OVERFLOW:
            yield LOST, ""
            continue
        folder = paths.get(wd)
        if folder is None:
            continue
        if not name:
            if mask & _GONE:
                gone.append(folder)
            continue
        path = os.path.join(folder, os.fsdecode(name))
        change = _change(mask)
        if mask & (_MODIFY | _CREATE) and not mask & _ISDIR:
            writing.add(path)
        elif mask & (_CLOSE_WRITE | _DELETE | _MOVED_FROM):
            writing.discard(path)
        yield change, path


def _change(mask: int) -> int:
    if mask & (_CREATE | _MOVED_TO):
        return ADDED
    if mask & (_DELETE | _MOVED_FROM):
        return DELETED
    return MODIFIED
