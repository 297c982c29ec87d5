"""Ctrl-C and SIGTERM during a build, as KeyboardInterrupt, but never where it would lose a process.

Python raises KeyboardInterrupt at whatever bytecode runs when the signal
lands.  Most of a busy build's time is spent inside ``posix_spawn``, so the
next bytecode is often the one that would have recorded the new child: the
child is lost, never killed, and outlives dagrun.  Code that must finish once
begun runs under ``HOLD``; a signal arriving meanwhile is raised as soon as
the block ends.  (Blocking the signal with ``pthread_sigmask`` would not do:
another thread, such as rich's refresh thread, would take it instead.)

    with interrupts.raised():     # while building: SIGINT and SIGTERM raise
        ...
        with interrupts.HOLD:     # but not in here
            pid = spawn(); record(pid)
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType


class _Hold:
    """A re-entrant critical section for the signal handler installed by ``raised``."""

    __slots__ = ("depth", "pending")

    def __init__(self) -> None:
        self.depth = 0
        self.pending = False

    def __enter__(self) -> None:
        self.depth += 1

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.depth -= 1
        if self.depth == 0 and self.pending:
            self.pending = False
            if kind is None:
                raise KeyboardInterrupt


HOLD = _Hold()


def _handler(signum: int, frame: FrameType | None) -> None:
    if HOLD.depth:
        HOLD.pending = True
        return
    raise KeyboardInterrupt


@contextmanager
def raised() -> Iterator[None]:
    """SIGTERM, and SIGINT unless someone set their own handler, raise KeyboardInterrupt (held)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only ever handled on the main thread
        return
    old_term = signal.signal(signal.SIGTERM, _handler)
    old_int = signal.getsignal(signal.SIGINT)
    mine = old_int is signal.default_int_handler
    if mine:
        signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if mine:
            signal.signal(signal.SIGINT, old_int)
        HOLD.pending = False
