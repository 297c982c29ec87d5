"""Ctrl-C, SIGTERM and SIGHUP during a build: KeyboardInterrupt, but never where it loses a process.

Python raises KeyboardInterrupt at whatever bytecode runs when the signal
lands.  Most of a busy build's time is spent inside ``posix_spawn``, so the
next bytecode is often the one that would have recorded the new child: the
child is lost, never killed, and outlives dagrun.  Code that must finish once
begun runs under ``HOLD``; a signal arriving meanwhile is raised as soon as
the block ends.  (Blocking the signal with ``pthread_sigmask`` would not do:
another thread, such as rich's refresh thread, would take it instead.)
Which signals dagrun takes, and what they mean, is dagrun/signals.py's one
rule (``may_take``); before a build, its early handler (installed by
dagrun.entry) already turns SIGTERM and SIGHUP into an interrupt; ``raised``
takes over from it and gives it back.  ``watch`` and ``worker`` run under
``raised`` too.

    with interrupts.raised():     # while building: SIGINT, SIGTERM, SIGHUP raise
        ...
        with interrupts.HOLD:     # but not in here
            pid = spawn(); record(pid)

A library imported while executors start may take a signal over for itself
(``dask_jobqueue`` sets SIGINT to ``sys.exit()``, which ended a build with
status 0 and no summary): executors start under ``kept()``, which puts the
handlers back; a ``SystemExit`` that still lands inside a build is an
interrupt (the scheduler's concern), never a success.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

from .signals import SignalInterrupt, may_take, pending  # why not KeyboardInterrupt: signals


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
                raise SignalInterrupt


HOLD = _Hold()


def _handler(signum: int, frame: FrameType | None) -> None:
    if HOLD.depth:
        HOLD.pending = True
        return
    raise SignalInterrupt


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def kept() -> Iterator[None]:
    """The signal handlers as they were before the block, whatever it installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            if handler is not None and signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)


@contextmanager
def raised() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt (held), unless ignored or taken.

    SIGHUP matters: tasks lead sessions of their own, so a closed terminal
    reaches only dagrun, which by default would die and leave them running.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only ever handled on the main thread
        return
    taken = {}
    for sig in _SIGNALS:
        old = signal.getsignal(sig)
        if may_take(sig, old):
            signal.signal(sig, _handler)
            taken[sig] = old
    try:
        if pending():  # a signal caught before the build (signals.interrupt_early), not raised
            raise KeyboardInterrupt
        yield
    finally:
        for sig, old in taken.items():
            signal.signal(sig, old)
        HOLD.pending = False
