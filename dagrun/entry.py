"""The ``dagrun`` command: a no-op build is answered before the CLI is even imported.

A plain build (dagrun/argv.py: ``dagrun [GLOBAL...] [build] [TARGET...] [-j N]
[-k] [--failures-allowed N]``) is first offered to the no-op fast path
(dagrun/noop.py, dagrun/state/proof.py), which needs neither argparse nor typing nor
the build machinery (together ~14 ms of CPU, a third of a 10k-task no-op).
Everything else (other commands, other options, anything the recogniser is
unsure of) goes to ``cli.main`` unchanged, which parses and reports errors as
usual.

SIGTERM and SIGHUP become KeyboardInterrupt (exit 130) from main's first line,
not only once the build runs (dagrun/signals.py holds the rule;
dagrun.interrupts takes over while building), so a signal in the first
milliseconds of a build does not kill dagrun outright.
"""

from __future__ import annotations

import os
import sys

from . import signals
from .argv import COMMANDS, plain_build  # noqa: F401  # COMMANDS: tests/test_entry.py

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

_answered = False  # the no-op fast path answered, or a plain build ended: only memory is left


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; a signal at any moment before it is done exits 130."""
    if sys.stdout is None or sys.stderr is None or sys.stdin is None:  # `dagrun >&-`
        from .stdio import reopen_closed

        reopen_closed()
    taken = signals.take_early()
    hook = sys.unraisablehook
    sys.unraisablehook = signals.quiet_unraisable(hook)
    try:
        code = _main(argv)
        if signals.pending():  # swallowed where it landed, and no build honoured it since
            raise signals.SignalInterrupt
        return code
    except KeyboardInterrupt:
        sys.stderr.write("dagrun: interrupted\n")
        return 130
    except Exception as exc:
        if not signals.from_signal(exc):
            raise
        sys.stderr.write("dagrun: interrupted\n")  # Python wrapped it (a __set_name__ call)
        return 130
    finally:
        sys.unraisablehook = hook
        signals.give_back(taken)


def run() -> None:
    """The console script (pyproject's ``[project.scripts]``): ``main()``, and when the no-op fast
    path answered (or a plain build ended, see ``_main``), an exit without the interpreter's
    teardown (freeing every module and object:
    ~2 ms of CPU in a 1k-task no-op of ~19 ms), as mypy's ``hard_exit`` does.  The fast path opened
    nothing to write, holds no lock after ``check`` and registers no atexit handler, so only
    the standard streams need flushing.  ``python -m dagrun`` and callers of ``main`` exit as
    usual (main returns)."""
    code = main()
    if _answered:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:  # as noop._say: a report cut short
            code = code or 1
        os._exit(code)
    sys.exit(code)


def _main(argv: Sequence[str] | None) -> int:
    global _answered
    args = list(sys.argv[1:] if argv is None else argv)
    server = os.environ.get("DAGRUN_SERVER")  # "0": never; "1": also under CI
    if server != "0" and (server == "1" or "CI" not in os.environ) and "--no-server" not in args:
        from .client import forward  # the build server (client.py), if one serves this project

        code = forward(args)
        if code is not None:
            signals.honoured()  # a signal meanwhile went to the server's build, which acted
            _answered = True
            return code
    plain = plain_build(args)
    delta = None
    if plain is not None:
        from .noop import answer_noop  # after the server's turn: a served build needs it not

        answered = answer_noop(*plain)
        if isinstance(answered, int):
            _answered = True
            return answered
        delta = answered
    from .cli import main as cli_main

    code = cli_main(args, noop_checked=plain is not None, delta=delta)
    # a plain build has closed its executors, log, lock and reports: what is left to free (its
    # graph and state, kept alive by cli until now) is only memory, ~7 ms at 10k tasks
    _answered = plain is not None
    return code
