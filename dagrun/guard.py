"""A process that outlives ``dagrun worker`` by a moment: it kills the worker's tasks when it dies.

The worker's tasks lead sessions of their own, so nothing in the kernel ends
them when the worker is killed (``kill -9``, the OOM killer, a crash): they
would run on, unwatched, while the server gives their tasks to another worker
(two attempts writing the same files).  So before it starts any task, the
worker forks a *guard*: a process in a session of its own that holds the read
end of a pipe whose write end only the worker holds.  When the worker ends, for
whatever reason, the kernel closes that write end; the guard reads EOF and
SIGKILLs every process that carries the worker's job mark in its environment
(``sweep``: the tasks' groups and whatever left them), then exits.

A worker that ends normally has killed its tasks already; the guard then finds
nothing.  What it cannot catch is what ``sweep`` cannot: a process started with
a clean environment (``env -i``).
"""

from __future__ import annotations

import os
import signal

from .executors import sweep


class Guard:
    """The worker's side: the write end of the pipe and the guard's pid."""

    def __init__(self, mark_prefix: str) -> None:
        read, self._write = os.pipe()
        os.set_inheritable(self._write, False)  # tasks must not hold it: only the worker
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child; covered by tests/test_worker_guard.py
            _guard(read, self._write, mark_prefix)
        os.close(read)

    def close(self) -> None:
        """The worker ends normally: the guard sweeps (finding nothing, as a rule) and exits."""
        if self._write >= 0:
            os.close(self._write)
            self._write = -1
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass


def _guard(read: int, write: int, mark_prefix: str) -> None:  # pragma: no cover - the child
    """Wait for the worker's end, then kill what is left of its tasks.  Never returns."""
    try:
        os.close(write)
        os.setsid()  # a signal to the worker's process group (a terminal's Ctrl-C) spares it
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # let go of the worker's terminal and pipes
            os.dup2(null, fd)
        os.closerange(3, read)
        os.closerange(read + 1, 1 << 16)
        while True:
            try:
                if not os.read(read, 4096):
                    break
            except InterruptedError:
                continue
        sweep.sweep(mark_prefix)
    finally:
        os._exit(0)
