"""The command line's words, read without argparse: which commands exist, what a plain build is.

A plain build -- ``dagrun [GLOBAL...] [build] [TARGET...] [-j N] [-k]
[--failures-allowed N]``, where GLOBAL (``-C DIR``, ``-f FILE``, ``--progress
MODE``, ``--color WHEN``, ``-q``, ``-v``) may also stand after ``build``, and
argv without a command is a build -- is recognised here (``plain_build``) for
the no-op fast path, and read here (``plain_args``) as argparse would read it,
so a plain build imports neither argparse nor what it brings (gettext, locale,
shutil: ~8 ms of CPU).  Anything this reader is unsure of goes to argparse
(dagrun/arguments.py), which parses and reports errors as usual.

No imports: dagrun.entry reads argv with it before anything else loads.
"""

from __future__ import annotations

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

# the global options: accepted before or after the command; what is unset takes these values
GLOBAL_DEFAULTS: dict[str, Any] = {
    "directory": ".",
    "file": None,
    "progress": "auto",
    "color": "auto",
    "quiet": False,
    "verbose": False,
}

_CHOICES = {
    "--progress": ("auto", "rich", "plain"),
    "--color": ("auto", "always", "never"),
    "-C": None,
    "-f": None,
}
_FLAGS = {"-q": "q", "--quiet": "q", "-v": "v", "--verbose": "v"}


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


# a plain build's options (plain_build) that take a value, and that are flags
_PLAIN_VALUES = {
    "-C": "directory", "-f": "file", "--progress": "progress", "--color": "color",
    "-j": "jobs", "--jobs": "jobs", "--failures-allowed": "failures_allowed",
}
_PLAIN_FLAGS = {
    "-q": "quiet", "--quiet": "quiet", "-v": "verbose", "--verbose": "verbose",
    "-k": "keep_going", "--keep-going": "keep_going", "--no-server": "no_server",
}
_NUMBERS = ("jobs", "failures_allowed")
# what argparse gives a build's options that a plain build does not set
_BUILD_DEFAULTS: dict[str, Any] = {
    "command": "build", "jobs": None, "keep_going": False, "failures_allowed": None,
    "dry_run": False, "explain": False, "junit": None, "events": None, "trace": None,
    "force": False, "touch": False, "overrides": {}, "html": None, "cache": "auto",
    "no_server": False,
}


def plain_args(argv: Sequence[str]) -> Any:
    """What ``arguments.parse(argv)`` returns (as a types.SimpleNamespace), for a plain build
    (the words ``plain_build`` accepts, as argparse reads them); else None."""
    from types import SimpleNamespace

    plain = plain_build(argv)
    if plain is None:
        return None
    found: dict[str, Any] = dict(GLOBAL_DEFAULTS)
    found.update(_BUILD_DEFAULTS, overrides={})
    command = _read_plain(argv, found)
    if command is None:
        return None
    for name in _NUMBERS:
        if found[name] is not None:
            found[name] = int(found[name])
    found["targets"] = plain[2]
    if command:  # else parse() parses again, with "build" added, and says nothing of it
        found["implicit"] = not any(word in COMMANDS for word in argv)
    return SimpleNamespace(**found)


def _read_plain(argv: Sequence[str], found: dict[str, Any]) -> bool | None:
    """Note each option of a plain build's ``argv`` in ``found``; returns whether argparse's
    first pass finds the command (see arguments.parse), or None for an option this reader does
    not know (argparse reads it)."""
    command = not any(word in COMMANDS for word in argv)  # implicit: "build" is added first
    i = 0
    while i < len(argv):  # plain_build checked every word: known options, "build", targets
        word = argv[i]
        if word == "build":
            command = True
        elif word in _PLAIN_VALUES:  # -C DIR, -j N, --jobs N, ...
            i += 1
            found[_PLAIN_VALUES[word]] = argv[i]
        elif word in _PLAIN_FLAGS:
            found[_PLAIN_FLAGS[word]] = True
        elif word.startswith("--") and word.partition("=")[0] in _PLAIN_VALUES:  # --jobs=N
            name, _, value = word.partition("=")
            found[_PLAIN_VALUES[name]] = value
        elif word.startswith("-j") and word[2:].isdigit():  # -jN
            found["jobs"] = word[2:]
        elif word.startswith("-"):  # an option this reader does not know: argparse reads it
            return None
        i += 1
    return command
