"""The ``dagrun`` command: a no-op build is answered before the CLI is even imported.

A plain ``dagrun [-C DIR] [-f FILE] [--progress MODE] build [-j N] [-k]
[--failures-allowed N] [TARGET...]`` is first offered to the no-op fast path
(dagrun/fresh.py), which needs neither argparse nor typing nor the build
machinery (together ~14 ms of CPU, a third of a 10k-task no-op).  Everything
else (other commands, other options, anything this recogniser is unsure of)
goes to ``cli.main`` unchanged, which parses and reports errors as usual.

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

_PROGRESS = ("auto", "rich", "plain")


class SignalInterrupt(KeyboardInterrupt):
    """A signal turned into KeyboardInterrupt.  Not KeyboardInterrupt itself: CPython 3.11
    kills itself with SIGINT at exit if that exact type ever escaped code run by ``exec``
    (dataclasses does), even when it was caught later."""


def interrupt_early(signum: int, frame: object) -> None:
    raise SignalInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; a signal at any moment before it is done exits 130."""
    import _signal  # type: ignore[import-not-found]  # loaded at start-up; `signal`: +0.6 ms

    taken = []
    for sig in (_signal.SIGTERM, _signal.SIGHUP):
        if _signal.getsignal(sig) == _signal.SIG_DFL:  # not ignored (nohup) nor taken
            _signal.signal(sig, interrupt_early)
            taken.append(sig)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        sys.stderr.write("dagrun: interrupted\n")
        return 130
    finally:
        for sig in taken:
            _signal.signal(sig, _signal.SIG_DFL)


def _main(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    plain = plain_build(args)
    if plain is not None:
        path, targets = plain
        if os.path.isfile(path):
            from .fresh import check, no_work_line

            count = check(path, targets, os.environ)
            if count is not None:
                return _say(no_work_line(count) + "\n")
    from .cli import main as cli_main

    return cli_main(args, noop_checked=plain is not None)


def _say(line: str) -> int:
    try:
        sys.stdout.write(line)
        sys.stdout.flush()
    except BrokenPipeError:  # as cli.main: a build whose report is cut short exits 1
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 0


def plain_build(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """(manifest path, targets) when argv is a build the fast path may answer as argparse would."""
    directory, file = ".", None
    i, n = 0, len(argv)
    while i < n and argv[i] != "build":
        if argv[i] not in ("-C", "-f", "--progress") or i + 1 >= n or not _value(argv[i + 1]):
            return None
        if argv[i] == "-C":
            directory = argv[i + 1]
        elif argv[i] == "-f":
            file = argv[i + 1]
        elif argv[i + 1] not in _PROGRESS:
            return None
        i += 2
    if i >= n:
        return None
    targets: list[str] = []
    after_targets = False  # argparse refuses targets on both sides of an option
    i += 1
    while i < n:
        used = _build_option(argv, i)
        if used:
            after_targets = bool(targets)
            i += used
        elif argv[i].startswith("-") or after_targets:
            return None
        else:
            targets.append(argv[i])
            i += 1
    return os.path.join(directory, file or "dagrun.toml"), targets


def _build_option(argv: Sequence[str], i: int) -> int:
    """How many words the neutral build option at ``argv[i]`` takes (0: not one we know)."""
    word = argv[i]
    if word in ("-k", "--keep-going"):
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


def _number(text: str, minimum: int) -> bool:
    return text.isascii() and text.isdigit() and int(text) >= minimum


def _value(text: str) -> bool:
    return bool(text) and not text.startswith("-")
