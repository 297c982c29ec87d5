"""The command line for argparse: every command's options and help, and ``parse``.

One function per command adds its arguments (``_COMMAND_ARGUMENTS``, in the
order ``dagrun --help`` lists them); the global options (``-C``, ``-f``,
``--progress``, ``--color``, ``-q``, ``-v``) are accepted before or after the
command.  A plain build never comes here (dagrun/argv.py reads it without
argparse); anything else does, and a usage error exits 2 with dagrun's prefix.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .argv import COMMANDS, GLOBAL_DEFAULTS, assignment

EXIT_USAGE = 2

Command = Callable[[str, str], argparse.ArgumentParser]  # (name, help) -> its subparser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # usage errors exit 2 with our prefix
        self.print_usage(sys.stderr)
        sys.stderr.write(f"dagrun: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _at_least(minimum: int, what: str) -> Any:
    """An argparse type: a whole number of at least ``minimum``."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}: {value}")
        return value

    return convert


_positive = _at_least(1, "at least 1")
_count = _at_least(0, "0 or more")


def _global_options() -> _Parser:
    """The global options (SUPPRESS: a subparser does not overwrite what the main parser read
    with its default; argv.GLOBAL_DEFAULTS fills what is unset)."""
    g = _Parser(add_help=False)
    s = argparse.SUPPRESS
    g.add_argument("-C", dest="directory", default=s, metavar="DIR", help="change to DIR first")
    g.add_argument(
        "-f", dest="file", default=s, metavar="FILE",
        help="manifest file (default: dagrun.toml here or in the nearest folder above)",
    )
    g.add_argument(
        "--progress", choices=("auto", "rich", "plain"), default=s,
        help="a live display on a terminal (auto), always (rich), or plain lines",
    )
    g.add_argument(
        "--color", choices=("auto", "always", "never"), default=s,
        help="colour on a terminal (auto; off with NO_COLOR, on with FORCE_COLOR)",
    )
    g.add_argument(
        "-q", "--quiet", action="store_true", default=s, help="print failures and the summary only"
    )
    g.add_argument(
        "-v", "--verbose", action="store_true", default=s,
        help="print each task's command instead of its display",
    )
    return g


def parser() -> argparse.ArgumentParser:
    common = _global_options()
    p = _Parser(
        prog="dagrun",
        description="A declarative build tool: dagrun.toml -> tasks run when their inputs change.",
        epilog="Without a command, dagrun builds: `dagrun -j4 all` is `dagrun build -j4 all`.",
        parents=[common],
    )
    p.add_argument("--version", action="version", version=f"dagrun {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    for add in _COMMAND_ARGUMENTS:
        add(command)
    return p


def _build(command: Command) -> None:
    b = command("build", "build targets (default: the default targets)")
    b.add_argument(
        "targets", nargs="*", metavar="TARGET", help="a task, group, glob or output; NAME=value "
        "sets a [vars] value for this build"
    )
    b.add_argument("-j", "--jobs", type=_positive, metavar="N", help="run N tasks at once")
    b.add_argument("-k", "--keep-going", action="store_true", help="do not stop after failures")
    b.add_argument(
        "--failures-allowed",
        type=_count,
        metavar="N",
        help="stop starting tasks after N failures (0: never)",
    )
    b.add_argument(
        "-n", "--dry-run", action="store_true", help="print what would run and why; run nothing"
    )
    b.add_argument("--explain", action="store_true", help="print why each task runs")
    b.add_argument(
        "-B", "--force", action="store_true",
        help="run the named targets (every task without targets) even when up to date",
    )
    b.add_argument(
        "--touch", action="store_true",
        help="record what would run as done, without running it (its outputs must exist)",
    )
    _build_records(b)


def _build_records(b: argparse.ArgumentParser) -> None:
    """A build's reports (--junit, --events, --trace, --html) and the shared cache's mode."""
    b.add_argument("--junit", metavar="FILE", help="write a JUnit XML report (a testcase per task)")
    b.add_argument("--events", metavar="FILE", help="write the build's events as JSON lines")
    b.add_argument("--trace", metavar="FILE", help="write a Chrome trace (open it in Perfetto)")
    b.add_argument("--html", metavar="FILE", help="write a report page (timeline, tasks, failures)")
    b.add_argument(
        "--cache", choices=("auto", "required", "read-only", "off"), default="auto",
        help="the shared cache ([cache]): a failure of it is a warning (auto), an error "
        "(required); read-only: look up, never send (untrusted jobs); off: not used",
    )
    b.add_argument("--no-server", action="store_true",
                   help="build in this process, not through the build server (dagrun server)")


def _graph(command: Command) -> None:
    g = command("graph", "print the dependency graph")
    g.add_argument("targets", nargs="*", metavar="TARGET")
    fmt = g.add_mutually_exclusive_group()
    fmt.add_argument(
        "--dot", action="store_const", dest="format", const="dot", help="Graphviz DOT (default)"
    )
    fmt.add_argument("--json", action="store_const", dest="format", const="json", help="JSON")


def _tree(command: Command) -> None:
    t = command("tree", "print the dependency tree as indented text, marking what would run")
    t.add_argument(
        "targets", nargs="*", metavar="TARGET", help="default: every task nothing depends on"
    )


def _list(command: Command) -> None:
    ls = command("list", "list tasks and whether they are up to date")
    ls.add_argument("--json", action="store_true", help="as JSON")
    ls.add_argument("--names", action="store_true", help=argparse.SUPPRESS)  # shell completion


def _show(command: Command) -> None:
    sh = command("show", "a task's command, key parts, last run and where its output is")
    sh.add_argument("task", metavar="TASK")
    sh.add_argument("--json", action="store_true", help="as JSON")


def _clean(command: Command) -> None:
    c = command("clean", "remove declared outputs and forget their keys")
    c.add_argument("targets", nargs="*", metavar="TARGET")
    c.add_argument(
        "--dead",
        action="store_true",
        help="remove instead the outputs that the log records for tasks no longer in the manifest",
    )


def _watch(command: Command) -> None:
    w = command("watch", "build, then rebuild what changed whenever inputs change")
    w.add_argument("targets", nargs="*", metavar="TARGET")
    w.add_argument("-j", "--jobs", type=_positive, metavar="N", help="run N tasks at once")
    w.add_argument(
        "--restart", action="store_true", help="a change cancels the running build and restarts it"
    )
    w.add_argument(
        "--debounce",
        type=_count,
        metavar="MS",
        help="rebuild once changes stop for MS ms (default: [dagrun] watch_debounce_ms, 200)",
    )


def _status(command: Command) -> None:
    st = command("status", "the running or last build, and each executor's pool")
    st.add_argument("--executors", action="store_true", help="each executor's pool only")
    st.add_argument("--json", action="store_true", help="as JSON")


def _report(command: Command) -> None:
    r = command("report", "write a self-contained HTML page of the last build")
    r.add_argument("--html", metavar="FILE", required=True, help="the page to write")


def _tail(command: Command) -> None:
    t = command("tail", "follow a task of the running build: its output until it ends")
    t.add_argument("task", metavar="TASK")
    t.add_argument("-n", "--lines", type=_count, default=10, metavar="N",
                   help="first show the last N lines of each stream (default 10)")


def _cancel(command: Command) -> None:
    c = command("cancel", "kill tasks of the running build (their dependents do not run)")
    c.add_argument("tasks", nargs="+", metavar="TASK", help="a task, group or glob")


def _trace(command: Command) -> None:
    tr = command("trace", "write the last build's Chrome trace (Perfetto, chrome://tracing)")
    tr.add_argument("output", nargs="?", default="-", metavar="FILE", help="default: stdout")


def _completion(command: Command) -> None:
    comp = command("completion", "print a shell completion script")
    comp.add_argument("shell", choices=("bash", "zsh", "fish"))


def _worker(command: Command) -> None:
    wk = command("worker", "run tasks served by a build's http executor at URL")
    wk.add_argument("url", metavar="URL")
    wk.add_argument("-j", "--jobs", type=_positive, default=1, metavar="N", help="tasks at once")
    wk.add_argument("--token-file", metavar="F", help="the token (default: $DAGRUN_TOKEN)")
    wk.add_argument("--cafile", metavar="F", help="CA certificate to verify an https server")
    wk.add_argument("--dir", metavar="DIR", help="run folders here (default: a temp folder)")
    wk.add_argument("--grace", type=float, default=60.0, metavar="S",
                    help="exit once the server has not answered for S seconds (default 60)")


def _server(command: Command) -> None:
    sv = command("server", "the project's build server: start, stop or show it")
    sv.add_argument("action", choices=("start", "stop", "status"))


# each command's arguments, in the order `dagrun --help` lists the commands
_COMMAND_ARGUMENTS: tuple[Callable[[Command], None], ...] = (
    _build, _graph, _tree, _list, _show, _clean, _watch, _status,
    _report, _tail, _cancel, _trace, _completion, _worker, _server,
)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse like argparse, plus: without a command (``dagrun``, ``dagrun -q``, ``dagrun all``,
    ``dagrun -j4``), ``build`` is meant, as a bare ``make`` or ``ninja`` builds."""
    p = parser()
    helping = any(w in ("-h", "--help", "--version") for w in argv)
    implicit = not helping and not any(w in COMMANDS for w in argv)
    if implicit:
        argv = ["build", *argv]
    args = p.parse_args(argv)
    args.implicit = implicit
    if args.command is None:
        args = p.parse_args([*argv, "build"])
    for name, value in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    if args.quiet and args.verbose:
        p.error("-q and -v cannot be used together")
    _split_overrides(p, args)
    if getattr(args, "force", False) and args.touch:
        p.error("--force and --touch cannot be used together")
    return args


def _split_overrides(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``NAME=value`` words among the targets go to ``args.overrides`` ([vars] values)."""
    words = getattr(args, "targets", None) or []
    args.overrides = dict(w.split("=", 1) for w in words if assignment(w))
    if args.overrides:
        args.targets = [w for w in words if not assignment(w)]
        if args.command == "watch":
            p.error("NAME=value is for build, graph, tree and clean, not watch")
