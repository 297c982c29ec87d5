"""What a signal means to a dagrun process: SIGTERM and SIGHUP stop it as Ctrl-C does (exit 130).

The one rule, for every dagrun process (a build, ``watch``, ``worker``): SIGINT,
SIGTERM and SIGHUP raise ``SignalInterrupt``, a KeyboardInterrupt, so the
command kills its tasks' process groups, records nothing false and exits 130
(SPEC section 3 and 4).  dagrun leaves a signal alone when it is not its to take
(``may_take``): one the parent ignored (SIGHUP under ``nohup``, SIGTERM set to
SIG_IGN), one handled outside Python, or SIGINT taken over by someone else.

The phases of one process, each of which asks ``may_take``:

    entry.main            from its first line: SIGTERM and SIGHUP -> ``interrupt_early``
    interrupts.raised     while building, watching or serving: SIGINT, SIGTERM, SIGHUP
                          -> a handler held back while a child is being recorded

No imports: dagrun.entry installs ``interrupt_early`` before anything else loads
(the ``signal`` module alone costs ~0.6 ms of a 20 ms no-op build).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class SignalInterrupt(KeyboardInterrupt):
    """A signal turned into KeyboardInterrupt.  Not KeyboardInterrupt itself: CPython 3.11
    kills itself with SIGINT at exit if that exact type ever escaped code run by ``exec``
    (dataclasses does), even when it was caught later."""


_pending = False  # an early signal came; set also when its exception was swallowed (entry.main)


def interrupt_early(signum: int, frame: object) -> None:
    """The handler from entry.main's first line until a build takes over (interrupts.raised)."""
    global _pending
    _pending = True
    raise SignalInterrupt


def honoured() -> None:
    """An early signal was passed on and acted upon (the build server's build was interrupted):
    entry.main need not raise it again."""
    global _pending
    _pending = False


def pending() -> bool:
    """Whether an early signal came (interrupts.raised honours it when the build starts)."""
    return _pending


def may_take(sig: int, handler: object) -> bool:
    """Whether dagrun may make ``sig`` stop it, ``handler`` being what handles it now."""
    import _signal  # type: ignore[import-not-found]  # loaded at start-up, unlike `signal`

    if handler is None:  # installed outside Python: cannot be restored from here
        return False
    if handler is interrupt_early:  # dagrun's own, until a build takes over
        return True
    if sig == _signal.SIGINT:
        return handler is _signal.default_int_handler
    if sig == _signal.SIGTERM:
        return bool(handler != _signal.SIG_IGN)  # SIGTERM stops dagrun unless it was ignored
    return bool(handler == _signal.SIG_DFL)  # SIGHUP under nohup stays ignored


def take_early() -> list[tuple[int, Any]]:
    """Install ``interrupt_early`` for SIGTERM and SIGHUP where ``may_take`` allows; returns
    what to give back (``give_back``)."""
    import _signal

    taken = []
    for sig in (_signal.SIGTERM, _signal.SIGHUP):
        old = _signal.getsignal(sig)
        if old == _signal.SIG_DFL:  # at start-up: not ignored (nohup) nor taken by a caller
            _signal.signal(sig, interrupt_early)
            taken.append((sig, old))
    return taken


def give_back(taken: list[tuple[int, Any]]) -> None:
    import _signal

    for sig, old in taken:
        _signal.signal(sig, old)


def from_signal(exc: BaseException | None) -> bool:
    """Whether ``exc`` is, or was caused by, an early signal's SignalInterrupt."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, SignalInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def quiet_unraisable(hook: Any) -> Any:
    """``sys.unraisablehook`` that keeps quiet about a SignalInterrupt raised where Python could
    not raise it (a weakref callback in the import system): ``_pending`` remembers it."""

    def quiet(args: Any) -> None:
        if not isinstance(args.exc_value, SignalInterrupt):
            hook(args)

    return quiet
