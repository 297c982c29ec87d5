"""A hit's files written into the project: every blob checked, every output written atomically.

All of a task's blobs are fetched and checked (size and sha256) before any
output is touched: a damaged, truncated or missing blob leaves the project as
it was (the task then runs).  Each output goes to a temporary file beside it,
renamed into place once whole, with the mode its run left.  Paths are the
manifest's, never the store's; every folder on the way is opened without
following symlinks (``O_NOFOLLOW``), so a restore never writes outside the
project nor through a link planted in it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import NamedTuple

from .entry import Blob, Entry
from .store import Store

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Damaged(Exception):
    """A blob is not what its entry says (or is gone): the task runs instead."""


class Restored(NamedTuple):
    stdout: str
    stderr: str
    result: bytes | None


class _Pending(NamedTuple):
    dir_fd: int
    tmp: str
    name: str


def fetch(store: Store, blob: Blob) -> bytes:
    """A small blob's bytes (printed output, a result), checked."""
    data = b"".join(_checked(store, blob, None))
    return data


def _checked(store: Store, blob: Blob, fd: int | None) -> Iterator[bytes]:
    chunks = store.get("cas", blob.sha256) if blob.data is None else _once(blob.data)
    if chunks is None:
        raise Damaged(f"blob {blob.sha256[:12]} is missing from the store")
    h, size = hashlib.sha256(), 0
    try:
        for chunk in chunks:
            size += len(chunk)
            if size > blob.size:
                raise Damaged(f"blob {blob.sha256[:12]} is longer than its entry says")
            h.update(chunk)
            if fd is None:
                yield chunk
            else:
                _write_all(fd, chunk)
    finally:
        chunks.close()  # type: ignore[attr-defined]  # a generator (a file, a response): done
    if size != blob.size:
        raise Damaged(f"blob {blob.sha256[:12]} is truncated ({size} of {blob.size} bytes)")
    if h.hexdigest() != blob.sha256:
        raise Damaged(f"blob {blob.sha256[:12]} does not have its digest (damaged)")


def _once(data: bytes) -> Iterator[bytes]:
    yield data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def restore(
    store: Store, entry: Entry, root: str, outputs: tuple[str, ...], depfile: str = ""
) -> Restored:
    """Write ``entry``'s outputs at ``outputs`` (root-relative, the manifest's), and its
    depfile at ``depfile``; Damaged or OSError when it cannot, with nothing changed."""
    if tuple(o.path for o in entry.outputs) != outputs:
        raise Damaged("its entry names other outputs")
    small = [entry.stdout, entry.stderr, entry.result]
    got = [None if b is None else fetch(store, b) for b in small]
    files = [(o.path, o.blob, o.mode) for o in entry.outputs]
    if depfile and entry.depfile is not None:
        files.append((depfile, entry.depfile, 0o644))
    pending: list[_Pending] = []
    try:
        for path, blob, mode in files:
            pending.append(_download(store, root, path, blob, mode))
        for p in pending:
            os.replace(p.tmp, p.name, src_dir_fd=p.dir_fd, dst_dir_fd=p.dir_fd)
    finally:
        for p in pending:
            try:
                os.unlink(p.tmp, dir_fd=p.dir_fd)
            except OSError:
                pass  # renamed into place
            os.close(p.dir_fd)
    text = [b.decode("utf-8", "replace") if b is not None else "" for b in got[:2]]
    return Restored(text[0], text[1], got[2])


def _download(store: Store, root: str, path: str, blob: Blob, mode: int) -> _Pending:
    dir_fd, name = open_parent(root, path)
    tmp = f".{name[:200]}.dagrun-restore-{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
    except OSError:
        os.close(dir_fd)
        raise
    pending = _Pending(dir_fd, tmp, name)
    try:
        for _ in _checked(store, blob, fd):
            pass
        os.fchmod(fd, mode & 0o777)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        raise
    os.close(fd)
    return pending


def open_parent(root: str, path: str) -> tuple[int, str]:
    """The folder ``path`` (root-relative) lies in, opened without following a symlink (made
    where missing), and its last name; OSError / Damaged when it cannot be."""
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise Damaged(f"output {path} is not a plain path inside the project")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                sub = os.open(part, _DIR, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass  # another restore made it meanwhile
                sub = os.open(part, _DIR, dir_fd=fd)
            except OSError as exc:
                raise Damaged(f"output {path}: {part} is a symlink or not a folder") from exc
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]
