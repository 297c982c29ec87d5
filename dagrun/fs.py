"""The FileSystem seam: what the core asks of files, a real one and an in-memory fake.

The core (hashing, plan) only needs to stat, read and remove files; paths are
relative to a root folder (or absolute).
"""

from __future__ import annotations

import os
from typing import NamedTuple, Protocol

# fs's own names too, as before regular.py
from .regular import open_regular as open_regular
from .regular import read_regular as read_regular
from .regular import unlink_quietly as unlink_quietly


class Stat(NamedTuple):
    """The parts of a stat that say whether a file may have changed."""

    mtime_ns: int
    ctime_ns: int
    size: int
    ino: int


class FileSystem(Protocol):
    root: str

    def stat(self, path: str) -> Stat | None:
        """The file's Stat, or None when it does not exist; OSError when it cannot be looked at."""

    def read_chunks(self, path: str) -> "list[bytes] | None":
        """The file's content in chunks, or None when it is gone; OSError when it cannot be read."""

    def exists(self, path: str) -> bool: ...

    def remove(self, path: str) -> bool:
        """Remove a file (or an empty folder); True when something was removed."""

    def now_ns(self) -> int:
        """The file system's clock, to tell racily-clean stats (see hashing.StatCache)."""


class LocalFileSystem:
    """Files on disk, relative to ``root``."""

    CHUNK = 1 << 20

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._prefix = self.root.rstrip("/") + "/"

    def path(self, path: str) -> str:
        return path if path.startswith("/") else self._prefix + path

    def stat(self, path: str) -> Stat | None:
        try:
            st = os.stat(self.path(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Stat(st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

    def read_chunks(self, path: str) -> list[bytes] | None:
        try:
            with os.fdopen(open_regular(self.path(path)), "rb") as f:
                chunks = []
                while chunk := f.read(self.CHUNK):
                    chunks.append(chunk)
                return chunks
        except IsADirectoryError:
            return [b"<directory>"]
        except (FileNotFoundError, NotADirectoryError):
            return None

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.path(path))

    def remove(self, path: str) -> bool:
        p = self.path(path)
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                import shutil

                shutil.rmtree(p)
            else:
                os.unlink(p)
            return True
        except FileNotFoundError:
            return False

    def now_ns(self) -> int:
        import time

        return time.time_ns()


class MemoryFileSystem:
    """A dict of path -> bytes with a fake clock; records every read for tests."""

    def __init__(self, files: dict[str, bytes] | None = None, root: str = "/mem") -> None:
        self.root = root
        self.files: dict[str, bytes] = {}
        self.meta: dict[str, Stat] = {}
        self.reads: list[str] = []
        self.clock_ns = 1_000_000_000_000
        self._ino = 1
        for path, data in (files or {}).items():
            self.write(path, data)

    def write(self, path: str, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.clock_ns += 1_000_000_000
        self._ino += 1
        self.files[path] = data
        self.meta[path] = Stat(self.clock_ns, self.clock_ns, len(data), self._ino)

    def touch(self, path: str) -> None:
        """A new mtime, same content (like `touch`)."""
        self.clock_ns += 1_000_000_000
        old = self.meta[path]
        self.meta[path] = Stat(self.clock_ns, self.clock_ns, old.size, old.ino)

    def stat(self, path: str) -> Stat | None:
        return self.meta.get(path)

    def read_chunks(self, path: str) -> list[bytes] | None:
        self.reads.append(path)
        data = self.files.get(path)
        return None if data is None else [data]

    def exists(self, path: str) -> bool:
        return path in self.files

    def remove(self, path: str) -> bool:
        self.meta.pop(path, None)
        return self.files.pop(path, None) is not None

    def now_ns(self) -> int:
        return self.clock_ns
