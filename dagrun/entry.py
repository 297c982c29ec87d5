"""The ``dagrun`` command: a no-op build is answered before the CLI is even imported.

A plain build -- ``dagrun [GLOBAL...] [build] [TARGET...] [-j N] [-k]
[--failures-allowed N]``, where GLOBAL (``-C DIR``, ``-f FILE``, ``--progress
MODE``, ``--color WHEN``, ``-q``, ``-v``) may also stand after ``build``, and
argv without a command is a build -- is first offered to the no-op fast path
(dagrun/fresh.py), which needs neither argparse nor typing nor the build
machinery (together ~14 ms of CPU, a third of a 10k-task no-op).  The manifest
is found as the CLI finds it (dagrun/locate.py: upward from the folder).
Everything else (other commands, other options, anything this recogniser is
unsure of) goes to ``cli.main`` unchanged, which parses and reports errors as
usual.

SIGTERM and SIGHUP become KeyboardInterrupt (exit 130) from main's first line,
not only once the build runs (dagrun.interrupts takes over from there), so a
signal in the first milliseconds of a build does not kill dagrun outright.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

# the CLI's commands (tests/test_entry.py checks this against the parser): argv without any of
# them is a build, so `dagrun`, `dagrun -q` and `dagrun TARGET` all build
COMMANDS = (
    "build", "watch", "graph", "list", "show", "clean", "status", "trace", "completion", "worker",
    "tree", "tail", "cancel", "report", "server",
)

_CHOICES = {
    "--progress": ("auto", "rich", "plain"),
    "--color": ("auto", "always", "never"),
    "-C": None,
    "-f": None,
}
_FLAGS = {"-q": "q", "--quiet": "q", "-v": "v", "--verbose": "v"}


class SignalInterrupt(KeyboardInterrupt):
    """A signal turned into KeyboardInterrupt.  Not KeyboardInterrupt itself: CPython 3.11
    kills itself with SIGINT at exit if that exact type ever escaped code run by ``exec``
    (dataclasses does), even when it was caught later."""


_pending = False  # a signal came; set also when its exception was swallowed (see main)
_answered = False  # the no-op fast path answered, or a plain build ended: only memory is left


def interrupt_early(signum: int, frame: object) -> None:
    global _pending
    _pending = True
    raise SignalInterrupt


def pending() -> bool:
    """Whether an early signal came (dagrun.interrupts honours it when the build starts)."""
    return _pending


def _from_signal(exc: BaseException | None) -> bool:
    """Whether ``exc`` is, or was caused by, an early signal's SignalInterrupt."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, SignalInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _unraisable(hook: Any) -> Any:
    """``sys.unraisablehook`` that keeps quiet about a SignalInterrupt raised where Python could
    not raise it (a weakref callback in the import system): ``_pending`` remembers it."""

    def quiet(args: Any) -> None:
        if not isinstance(args.exc_value, SignalInterrupt):
            hook(args)

    return quiet


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; a signal at any moment before it is done exits 130."""
    import _signal  # type: ignore[import-not-found]  # loaded at start-up; `signal`: +0.6 ms

    if sys.stdout is None or sys.stderr is None or sys.stdin is None:  # `dagrun >&-`
        from .stdio import reopen_closed

        reopen_closed()
    taken = []
    for sig in (_signal.SIGTERM, _signal.SIGHUP):
        if _signal.getsignal(sig) == _signal.SIG_DFL:  # not ignored (nohup) nor taken
            _signal.signal(sig, interrupt_early)
            taken.append(sig)
    hook = sys.unraisablehook
    sys.unraisablehook = _unraisable(hook)
    try:
        code = _main(argv)
        if _pending:  # swallowed where it landed, and no build honoured it since
            raise SignalInterrupt
        return code
    except KeyboardInterrupt:
        sys.stderr.write("dagrun: interrupted\n")
        return 130
    except Exception as exc:
        if not _from_signal(exc):
            raise
        sys.stderr.write("dagrun: interrupted\n")  # Python wrapped it (a __set_name__ call)
        return 130
    finally:
        sys.unraisablehook = hook
        for sig in taken:
            _signal.signal(sig, _signal.SIG_DFL)


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
        except OSError:  # as _say: a report cut short
            code = code or 1
        os._exit(code)
    sys.exit(code)


def _main(argv: Sequence[str] | None) -> int:
    global _answered, _pending
    args = list(sys.argv[1:] if argv is None else argv)
    server = os.environ.get("DAGRUN_SERVER")  # "0": never; "1": also under CI
    if server != "0" and (server == "1" or "CI" not in os.environ) and "--no-server" not in args:
        from .client import forward  # the build server (client.py), if one serves this project

        code = forward(args)
        if code is not None:  # a signal meanwhile went to the server's build, which honoured it
            _answered, _pending = True, False
            return code
    plain = plain_build(args)
    delta = None
    if plain is not None:
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


def answer_noop(directory: str, file: str | None, targets: Sequence[str]) -> Any:
    """The no-op fast path (dagrun/fresh.py): the exit status (int) when it proved, and said,
    that nothing needs to run; else the fresh.Delta of what changed since the proof, for the
    build to start from, or None when the full build must decide.  cli.py asks it too."""
    from .locate import find

    path = find(directory, file)
    if path is None or (targets and not _at_root(path, directory)):
        return None  # a target path from a subfolder is relative to it: the proof's are not
    from .fresh import examine, no_work_line

    found = examine(path, targets, os.environ)
    return _say(no_work_line(found) + "\n") if isinstance(found, int) else found


def _at_root(manifest: str, directory: str) -> bool:
    """Whether ``directory`` is the manifest's folder."""
    return os.path.dirname(os.path.abspath(manifest)) == os.path.abspath(directory)


def _say(line: str) -> int:
    try:
        sys.stdout.write(line)
        sys.stdout.flush()
    except OSError as exc:  # as cli.main: a closed pipe exits 1; a full disk is an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        if isinstance(exc, BrokenPipeError):
            return 1
        sys.stderr.write(f"dagrun: error: cannot write to stdout: {exc.strerror or exc}\n")
        return 2
    return 0


def plain_build(argv: Sequence[str]) -> tuple[str, str | None, list[str]] | None:
    """(-C dir, -f file, targets) when argv is a build the fast path may answer as argparse does."""
    if not any(word in COMMANDS for word in argv):
        argv = ["build", *argv]
    values: dict[str, str] = {"-C": ".", "-f": ""}
    flags: set[str] = set()
    targets: list[str] = []
    building = after_targets = False  # argparse refuses targets on both sides of an option
    i, n = 0, len(argv)
    while i < n:
        used = _global_option(argv, i, values, flags)
        if not used and building:
            used = _build_option(argv, i)
        if used:
            after_targets = bool(targets)
            i += used
        elif not building and argv[i] == "build":
            building = True
            i += 1
        elif not building or argv[i].startswith("-") or after_targets or assignment(argv[i]):
            return None
        else:
            targets.append(argv[i])
            i += 1
    if flags == {"q", "v"}:
        return None  # a usage error: argparse says so
    return values["-C"], values["-f"] or None, targets


def _global_option(argv: Sequence[str], i: int, values: dict[str, str], flags: set[str]) -> int:
    """How many words the global option at ``argv[i]`` takes (0: not one we know), noting it."""
    word = argv[i]
    if word in _FLAGS:
        flags.add(_FLAGS[word])
        return 1
    if word not in _CHOICES or i + 1 >= len(argv) or not _value(argv[i + 1]):
        return 0
    choices = _CHOICES[word]
    if choices is not None and argv[i + 1] not in choices:
        return 0
    if word in values:
        values[word] = argv[i + 1]
    return 2
def _build_option(argv: Sequence[str], i: int) -> int:
    """How many words the neutral build option at ``argv[i]`` takes (0: not one we know)."""
    word = argv[i]
    if word in ("-k", "--keep-going", "--no-server"):
        return 1
    if word in ("-j", "--jobs", "--failures-allowed"):
        ok = i + 1 < len(argv) and _number(argv[i + 1], 0 if word == "--failures-allowed" else 1)
        return 2 if ok else 0
    if word.startswith("-j") and _number(word[2:], 1):
        return 1
    name, eq, value = word.partition("=")
    if eq and name in ("--jobs", "--failures-allowed"):
        return 1 if _number(value, 1 if name == "--jobs" else 0) else 0
    return 0


def assignment(word: str) -> bool:
    """Whether a target word is ``NAME=value``: a [vars] value for this build (Make's
    ``CFLAGS=-O0``), not a target (a matrix task's name has its ``=`` inside brackets)."""
    name, eq, _ = word.partition("=")
    return bool(eq) and name.isidentifier() and name.isascii()


def _number(text: str, minimum: int) -> bool:
    return text.isascii() and text.isdigit() and int(text) >= minimum


def _value(text: str) -> bool:
    return bool(text) and not text.startswith("-")
