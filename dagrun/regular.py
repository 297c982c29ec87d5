"""Regular files: opened without blocking on a FIFO or reading a device forever.

Import-free but for ``os``, ``stat`` and ``errno`` (the no-op check's lock uses it
before anything else is imported); fs.py hands these on as its own.
"""

from __future__ import annotations

import errno
import os
import stat

_KINDS = {
    stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def open_regular(path: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """``os.open`` for a file dagrun reads or keeps: never blocks (a FIFO), never reads forever
    (``/dev/zero``): anything but a regular file is an OSError saying what it is (a folder:
    IsADirectoryError)."""
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, mode)
    try:
        kind = stat.S_IFMT(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if kind == stat.S_IFREG:
        return fd  # O_NONBLOCK does nothing to a regular file
    os.close(fd)
    if kind == stat.S_IFDIR:
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    what = _KINDS.get(kind, "not a file")
    raise OSError(errno.EINVAL, f"is {what}, not a regular file", path)


def read_regular(path: str) -> bytes:
    """The bytes of a regular file (open_regular's rules)."""
    with os.fdopen(open_regular(path), "rb") as f:
        return f.read()


def unlink_quietly(path: str) -> None:
    """Remove a file if it can be removed; a file already gone (or not removable) is no error."""
    try:
        os.unlink(path)
    except OSError:
        pass
