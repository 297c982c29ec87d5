"""The state folder's one lock: ``.dagrun/lock``, an flock, so two builds never run one task.

A build, ``clean`` and ``touch`` hold it exclusively (``StateLock``), waiting for
another dagrun unless told not to; the holder's pid is written in the file.  When
``.dagrun`` cannot be written, ``read_only`` says why and the lock is shared, taken
through a read-only descriptor (none when there is no lock file): what needs no
write (a no-op, ``-n``) still works, the rest refuses.  The no-op check takes it
without waiting (``try_exclusive``): when another dagrun holds it, the full path
waits for that one.  The no-op check imports this module before anything else, and
needs only ``os``, ``fcntl`` and ``errno``: ``StateLock`` imports errors.py and
regular.py when a build takes the lock (``_error``, ``_open_regular``).
"""

from __future__ import annotations

import errno
import fcntl
import os

TYPE_CHECKING = False  # typing stays out of a no-op's imports
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..errors import LogError

LOCK = "lock"


def try_exclusive(state_dir: str) -> int | None:
    """The lock taken at once, exclusively (through a read-only descriptor when .dagrun
    cannot be written: a no-op writes nothing): its descriptor, to close to release it;
    None when there is no lock file or another dagrun holds it."""
    path = os.path.join(state_dir, LOCK)
    return try_flock(path) or try_flock(path, os.O_RDONLY)


def try_flock(path: str, flags: int = os.O_RDWR) -> int | None:
    """``path`` opened with ``flags`` and locked exclusively at once: its descriptor, to close
    to release it; None when it cannot be opened or another process holds it.  The one way
    dagrun takes a lock without waiting (the build lock, the build server's lock)."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def write_pid(fd: int) -> None:
    """Write this process's pid into the lock file ``fd`` holds, as 16 bytes (padded with
    spaces): rewritten in place, never truncated.  Truncating a file on ext4 writes its old
    blocks out first (~0.2 ms, each build); readers strip what they read."""
    mine = f"{os.getpid():<15}\n".encode()
    if os.pread(fd, 17, 0) != mine:
        os.pwrite(fd, mine, 0)
        if os.fstat(fd).st_size > len(mine):
            os.ftruncate(fd, len(mine))


def read_pid(path: str) -> int | None:
    """The pid ``write_pid`` left in the lock file ``path``, or None."""
    try:
        with open(path, "rb") as f:
            pid = int(f.read(32).strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


class StateLock:
    """The build lock of one state folder, as a context manager (``with lock: ...``).

    ``wait``: wait for another dagrun holding it (``on_wait`` is told so), else LogError.
    ``reading()``: the lock for a command that only reads -- none where .dagrun does not
    exist yet, so ``list``, ``show``, ``graph``, ``tree`` and ``-n`` create nothing.
    """

    def __init__(
        self, state_dir: str, root: str, *, wait: bool = True,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.root = root
        self.wait = wait
        self.on_wait = on_wait
        self.read_only: str | None = None  # why .dagrun cannot be written, else None
        self._fds: list[int] = []  # held (-1: nothing to hold), innermost last

    def __enter__(self) -> None:
        path = os.path.join(self.state_dir, LOCK)
        fd = self._open(path)
        if fd is None:
            self._fds.append(self._shared(path))
            return
        try:
            self._exclusive(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fds.append(fd)

    def __exit__(self, *exc: object) -> None:
        fd = self._fds.pop()
        if fd >= 0:
            os.close(fd)  # closing releases the lock

    def reading(self) -> StateLock | _Unlocked:
        if os.path.isdir(self.state_dir):
            return self
        self.read_only = "not created by a command that only reads"
        return _Unlocked()

    def _exclusive(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            msg = f"another dagrun (pid {holder}) is running in {self.root}"
            if not self.wait:
                raise _error(msg) from None
            if self.on_wait is not None:
                self.on_wait(msg + "; waiting for it to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        write_pid(fd)

    def _open(self, path: str) -> int | None:
        """The lock file, open to write; None (``read_only`` says why) if .dagrun is read-only."""
        self.read_only = None
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            fd = _open_regular(path, os.O_RDWR | os.O_CREAT)  # a FIFO there: an error, below
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                where = path if exc.errno == errno.EINVAL else self.state_dir  # a FIFO
                raise _error(f"cannot use {where}: {exc.strerror}") from None
            self.read_only = exc.strerror or str(exc)
            return None
        if not os.access(self.state_dir, os.W_OK | os.X_OK):  # the lock file alone is writable
            os.close(fd)
            self.read_only = os.strerror(errno.EACCES)
            return None
        return fd

    def _shared(self, path: str) -> int:
        """A shared lock through a read-only descriptor; -1 when there is no lock file in a
        folder nobody may write to (then no build can run either)."""
        try:
            fd = _open_regular(path, os.O_RDONLY)
        except FileNotFoundError:
            return -1
        except OSError as exc:
            raise _error(f"cannot use {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        return fd


class _Unlocked:
    """No lock: a command that only reads, in a tree without .dagrun."""

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass


def _error(message: str) -> LogError:
    from ..errors import LogError  # not at the top: see the module's doc (the no-op check)

    return LogError(message)


def _open_regular(path: str, flags: int) -> int:
    from ..regular import open_regular  # not at the top: see the module's doc

    return open_regular(path, flags)
