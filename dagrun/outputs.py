"""What a run made: its outputs' content digests and the fingerprints built from them.

An output's identity (size, ctime_ns, inode, kind: fresh.identity) is the fast
check that it is what its run left; when the identity differs, its content
digest decides.  So a tree copied, restored from a CI cache or checked out
again (new inodes and times, same bytes) is up to date, and an output edited in
place with its mtime put back is not (its ctime moved, then its bytes differ).

A task's *fingerprint* stands for what it made: its outputs' digests (and a
function task's result digest); a task that makes nothing passes on what it
saw.  A task records the fingerprints of its dependencies when it ran
(``seen``): a dependency that ran again with the same key but made something
else (a download, a timestamp) changes its fingerprint, and so reruns the task;
one that made the same bytes stops there (early cutoff).

Digests are taken right after a task exits 0, while its outputs are still in
the page cache; only regular files are read (a FIFO or a device is never
opened: its digest is its kind).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from .digest import DIGEST_BYTES, _hasher, digest_bytes

CHUNK = 1 << 20


def digest(path: str) -> str | None:
    """The content digest of ``path`` (absolute): a file's bytes, a symlink's target, a
    folder's tree (names, kinds and contents); None when it does not exist."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    h = _hasher()
    _feed(h, path, st)
    return str(h.hexdigest(length=DIGEST_BYTES))


def _feed(h: object, path: str, st: os.stat_result) -> None:
    update = h.update  # type: ignore[attr-defined]
    mode = st.st_mode
    if stat.S_ISREG(mode):
        update(b"f%d\0" % (1 if mode & 0o111 else 0))
        _file(update, path, st.st_size)
    elif stat.S_ISLNK(mode):
        update(b"l\0" + os.fsencode(os.readlink(path)))
    elif stat.S_ISDIR(mode):
        update(b"d\0")
        try:
            names = sorted(os.listdir(path))
        except OSError:
            names = []
        for name in names:
            sub = os.path.join(path, name)
            try:
                sst = os.lstat(sub)
            except OSError:
                continue
            update(b"\0n" + os.fsencode(name) + b"\0")
            _feed(h, sub, sst)
    else:  # a FIFO, socket or device: never opened
        update(b"s%o\0" % stat.S_IFMT(mode))


def _file(update: object, path: str, size: int) -> None:
    """Feed the file's bytes: a small file in one read, a large one through one buffer."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        update(b"\0unreadable")  # type: ignore[operator]
        return
    try:
        if size < CHUNK:
            while data := os.read(fd, CHUNK):  # one read, and one more that finds the end
                update(data)  # type: ignore[operator]
            return
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := os.readv(fd, [buf]):
            update(view[:n])  # type: ignore[operator]
    except OSError:
        update(b"\0unreadable")  # type: ignore[operator]
    finally:
        os.close(fd)


def digests(root: str, paths: Iterable[str]) -> tuple[str, ...]:
    """Each output's digest ("" for one that does not exist), relative to ``root``."""
    prefix = root.rstrip("/") + "/"
    return tuple(digest(p if p.startswith("/") else prefix + p) or "" for p in paths)


def fingerprint(made: tuple[str, ...], result: str, seen: str) -> str:
    """What a task made: its outputs' and result's digests; a task that makes nothing
    passes on what it saw (an aggregate stands for its dependencies)."""
    if not made and not result:
        return seen
    return digest_bytes("\0".join((*made, result)).encode())


def combine(upstream: Iterable[tuple[str, str | None]]) -> str:
    """``seen``: the (dependency, fingerprint) pairs as one digest ("" for none)."""
    pairs = sorted(upstream)
    if not pairs:
        return ""
    return digest_bytes("\0".join(f"{n}\0{f or ''}" for n, f in pairs).encode())
