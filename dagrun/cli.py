"""The command line: parse arguments, call the API, print, exit.  The only sys.exit.

Exit status: 0 every selected task succeeded or was up to date; 1 a task
failed; 2 a usage or manifest error; 130 interrupted.
"""

from __future__ import annotations

import os
import sys

from . import __version__
from .errors import DagrunError, Interrupted, UnknownTargetError

TYPE_CHECKING = False  # argparse, typing, json, difflib: imported where used (see plain_args)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _parser_class() -> type[argparse.ArgumentParser]:
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> Any:  # usage errors exit 2 with our prefix
            self.print_usage(sys.stderr)
            sys.stderr.write(f"dagrun: error: {message}\n")
            raise SystemExit(EXIT_USAGE)

    return _Parser


def _at_least(minimum: int, what: str) -> Any:
    """An argparse type: a whole number of at least ``minimum``."""

    def convert(text: str) -> int:
        import argparse

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


# the global options: accepted before or after the command (SUPPRESS: a subparser does not
# overwrite what the main parser read with its default); GLOBAL_DEFAULTS fills what is unset
GLOBAL_DEFAULTS: dict[str, Any] = {
    "directory": ".",
    "file": None,
    "progress": "auto",
    "color": "auto",
    "quiet": False,
    "verbose": False,
}


def _global_options(parser_class: type[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    import argparse

    g = parser_class(add_help=False)
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
    import argparse

    _Parser = _parser_class()
    common = _global_options(_Parser)
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

    g = command("graph", "print the dependency graph")
    g.add_argument("targets", nargs="*", metavar="TARGET")
    fmt = g.add_mutually_exclusive_group()
    fmt.add_argument(
        "--dot", action="store_const", dest="format", const="dot", help="Graphviz DOT (default)"
    )
    fmt.add_argument("--json", action="store_const", dest="format", const="json", help="JSON")

    t = command("tree", "print the dependency tree as indented text, marking what would run")
    t.add_argument(
        "targets", nargs="*", metavar="TARGET", help="default: every task nothing depends on"
    )

    ls = command("list", "list tasks and whether they are up to date")
    ls.add_argument("--json", action="store_true", help="as JSON")
    ls.add_argument("--names", action="store_true", help=argparse.SUPPRESS)  # shell completion

    sh = command("show", "a task's command, key parts, last run and where its output is")
    sh.add_argument("task", metavar="TASK")
    sh.add_argument("--json", action="store_true", help="as JSON")

    c = command("clean", "remove declared outputs and forget their keys")
    c.add_argument("targets", nargs="*", metavar="TARGET")
    c.add_argument(
        "--dead",
        action="store_true",
        help="remove instead the outputs that the log records for tasks no longer in the manifest",
    )

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

    st = command("status", "the running or last build, and each executor's pool")
    st.add_argument("--executors", action="store_true", help="each executor's pool only")
    st.add_argument("--json", action="store_true", help="as JSON")

    _steering_commands(command)

    sv = command("server", "the project's build server: start, stop or show it")
    sv.add_argument("action", choices=("start", "stop", "status"))

    tr = command("trace", "write the last build's Chrome trace (Perfetto, chrome://tracing)")
    tr.add_argument("output", nargs="?", default="-", metavar="FILE", help="default: stdout")

    comp = command("completion", "print a shell completion script")
    comp.add_argument("shell", choices=("bash", "zsh", "fish"))

    wk = command("worker", "run tasks served by a build's http executor at URL")
    wk.add_argument("url", metavar="URL")
    wk.add_argument("-j", "--jobs", type=_positive, default=1, metavar="N", help="tasks at once")
    wk.add_argument("--token-file", metavar="F", help="the token (default: $DAGRUN_TOKEN)")
    wk.add_argument("--cafile", metavar="F", help="CA certificate to verify an https server")
    wk.add_argument("--dir", metavar="DIR", help="run folders here (default: a temp folder)")
    wk.add_argument("--grace", type=float, default=60.0, metavar="S",
                    help="exit once the server has not answered for S seconds (default 60)")
    return p


def _steering_commands(command: Any) -> None:
    """`report`, and `tail` and `cancel`: the running build's tasks (live.py)."""
    r = command("report", "write a self-contained HTML page of the last build")
    r.add_argument("--html", metavar="FILE", required=True, help="the page to write")
    t = command("tail", "follow a task of the running build: its output until it ends")
    t.add_argument("task", metavar="TASK")
    t.add_argument("-n", "--lines", type=_count, default=10, metavar="N",
                   help="first show the last N lines of each stream (default 10)")
    c = command("cancel", "kill tasks of the running build (their dependents do not run)")
    c.add_argument("tasks", nargs="+", metavar="TASK", help="a task, group or glob")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse like argparse, plus: without a command (``dagrun``, ``dagrun -q``, ``dagrun all``,
    ``dagrun -j4``), ``build`` is meant, as a bare ``make`` or ``ninja`` builds."""
    from .entry import COMMANDS

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
    from .entry import assignment

    words = getattr(args, "targets", None) or []
    args.overrides = dict(w.split("=", 1) for w in words if assignment(w))
    if args.overrides:
        args.targets = [w for w in words if not assignment(w)]
        if args.command == "watch":
            p.error("NAME=value is for build, graph, tree and clean, not watch")


# a plain build's options (dagrun.entry.plain_build) that take a value, and that are flags
_PLAIN_VALUES = {
    "-C": "directory", "-f": "file", "--progress": "progress", "--color": "color",
    "-j": "jobs", "--jobs": "jobs", "--failures-allowed": "failures_allowed",
}
_PLAIN_FLAGS = {
    "-q": "quiet", "--quiet": "quiet", "-v": "verbose", "--verbose": "verbose",
    "-k": "keep_going", "--keep-going": "keep_going", "--no-server": "no_server",
}
_NUMBERS = ("jobs", "failures_allowed")


def plain_args(argv: Sequence[str]) -> Any:
    """What ``parse(argv)`` returns (as a types.SimpleNamespace), for a plain build (the words
    dagrun.entry.plain_build accepts, as argparse reads them); else None.  A plain build then
    imports neither argparse nor what it brings (gettext, locale, shutil): ~8 ms of CPU."""
    from types import SimpleNamespace

    from .entry import COMMANDS, plain_build

    plain = plain_build(argv)
    if plain is None:
        return None
    found: dict[str, Any] = dict(GLOBAL_DEFAULTS)
    found.update(command="build", jobs=None, keep_going=False, failures_allowed=None,
                 dry_run=False, explain=False, junit=None, events=None, trace=None,
                 force=False, touch=False, overrides={}, html=None, cache="auto",
                 no_server=False)
    implicit = not any(word in COMMANDS for word in argv)
    command = implicit  # whether argparse's first pass finds the command (see parse)
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
    for name in _NUMBERS:
        if found[name] is not None:
            found[name] = int(found[name])
    found["targets"] = plain[2]
    if command:  # else parse() parses again, with "build" added, and says nothing of it
        found["implicit"] = implicit
    return SimpleNamespace(**found)


def main(
    argv: Sequence[str] | None = None, *, noop_checked: bool = False, delta: Any = None
) -> int:
    """``noop_checked``: dagrun.entry already asked the no-op fast path; do not ask twice.
    ``delta``: what it found changed (fresh.Delta), for the build to start from."""
    words = sys.argv[1:] if argv is None else argv
    args = plain_args(words)
    if args is None:
        args = parse(words)
    args.noop_checked = noop_checked
    args.delta = delta
    from . import stdio

    stdout = sys.stdout
    stdio.guard_stdout()  # a failed write: OutputError (exit 2) or BrokenPipeError, below
    try:
        if args.directory != ".":
            try:
                os.chdir(args.directory)
            except OSError as exc:
                raise DagrunError(f"cannot change to {args.directory}: {exc.strerror}") from None
        return _COMMANDS[args.command](args)
    except Interrupted:
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        sys.stderr.write("dagrun: interrupted\n")
        return EXIT_INTERRUPTED
    except DagrunError as exc:
        sys.stderr.write(f"dagrun: error: {exc}\n")
        return exc.exit_code
    except BrokenPipeError:  # e.g. `dagrun graph | head`: fine; a build cut short is not
        return EXIT_FAILED if args.command == "build" else EXIT_OK
    finally:
        sys.stdout = stdout


def manifest_path(args: argparse.Namespace) -> str:
    """-f FILE, else dagrun.toml here or in the nearest folder above (locate.py)."""
    from .locate import find

    path = find(".", args.file)
    if path is None:
        if args.file:
            raise DagrunError(f"no such manifest: {args.file}")
        here = os.path.abspath(".")
        raise DagrunError(
            f"no dagrun.toml in {here} or any folder above it (use -C DIR or -f FILE)"
        )
    return path


RESIDENT: Any = None  # set by the build server (server.py) while it runs a request


def _session(args: argparse.Namespace) -> Any:
    from .session import Session

    path = manifest_path(args)

    def on_wait(message: str) -> None:
        sys.stderr.write(f"dagrun: {message}\n")
        sys.stderr.flush()

    overrides = getattr(args, "overrides", None)
    if RESIDENT is not None:  # in the build server: its kept Session (server.py)
        return RESIDENT.session(path, overrides, on_wait, args)
    return Session(manifest_path=path, on_wait=on_wait, overrides=overrides, cwd=os.getcwd())


def _warn(session: Any) -> None:
    for w in session.warnings:
        sys.stderr.write(f"dagrun: warning: {w}\n")


# build options that cannot change whether anything needs doing: any other one that is set
# (-n, --explain, or an option added later) turns the no-op fast path off
_NOOP_NEUTRAL = frozenset(
    {
        "command",
        "directory",
        "file",
        "progress",
        "targets",
        "jobs",
        "keep_going",
        "failures_allowed",
        "color",
        "quiet",
        "verbose",
        "implicit",
        "cache",  # up to date is up to date, whatever the shared cache says
        "no_server",
    }
)


_NOOP_OWN = frozenset({"noop_checked", "delta"})  # set by main, not options


def _nothing_to_do(args: argparse.Namespace) -> int | None:
    """The no-op fast path's answer (exit status), unless dagrun.entry asked it already or an
    option that may change what runs is set; what it found changed goes to ``args.delta``."""
    if args.noop_checked:
        return None
    if any(v for name, v in vars(args).items() if name not in _NOOP_NEUTRAL | _NOOP_OWN):
        return None
    from .entry import answer_noop

    found = answer_noop(".", args.file, args.targets)
    if isinstance(found, int):
        return found
    args.delta = found
    return None


_KEPT: list[Any] = []  # what a build leaves to free: the process exit frees it all at once


def cmd_build(args: argparse.Namespace) -> int:
    answered = _nothing_to_do(args)
    if answered is not None:
        return answered
    session = _session(args)
    _KEPT.append(session)  # freed by the exit, not one object at a time (entry.run)
    session.keep_last = True
    if args.dry_run:
        prep = session.plan(args.targets, explain=True, force=args.force)
        _warn(session)
        print_plan(prep)
        return EXIT_OK
    if args.touch:
        return _touch(args, session)
    reporter = _build_reporter(args, session)
    failures = 0 if args.keep_going else args.failures_allowed
    try:
        result = _command_typo(args, session.build)(
            args.targets,
            reporter=reporter,
            jobs=args.jobs,
            failures_allowed=failures,
            explain=args.explain or bool(args.events or args.html),  # the reasons in full
            delta=args.delta,
            force=args.force,
            cache=args.cache,
        )
    finally:
        _warn(session)
    return int(result.exit_code)


def _touch(args: argparse.Namespace, session: Any) -> int:
    """``build --touch``: what would run is recorded as done, and named."""
    try:
        touched = _command_typo(args, session.touch)(args.targets)
    finally:
        _warn(session)
    if not args.quiet:
        sys.stdout.write("".join(f"touched: {name}\n" for name in touched))
    sys.stdout.write(f"dagrun: touched {len(touched)} task(s), ran nothing\n")
    return EXIT_OK


def _command_typo(args: argparse.Namespace, build: Any) -> Any:
    """``dagrun biuld`` builds a target 'biuld': if there is none, say which command was meant."""

    def call(*a: Any, **kw: Any) -> Any:
        try:
            return build(*a, **kw)
        except UnknownTargetError as exc:
            import difflib

            from .entry import COMMANDS

            words = [t for t in args.targets if getattr(args, "implicit", False)]
            close = [c for w in words for c in difflib.get_close_matches(w, COMMANDS, n=1)]
            if not close:
                raise
            raise UnknownTargetError(f"{exc} (or the command '{close[0]}'?)") from None

    return call


def _options(args: argparse.Namespace, session: Any = None, runs: str = ".dagrun/runs") -> Any:
    """How the console reports (report.Options): -q, -v, colour, GitHub Actions, --explain."""
    from .report import Options, color_wanted

    if session is not None:
        runs = os.path.relpath(os.path.join(session.state_dir, "runs"))
    return Options(
        explain=bool(getattr(args, "explain", False)),
        quiet=args.quiet,
        verbose=args.verbose,
        color=color_wanted(args.color, sys.stdout, os.environ),
        github=os.environ.get("GITHUB_ACTIONS") == "true",
        runs_dir=runs,
    )


def _build_reporter(args: argparse.Namespace, session: Any) -> Any:
    """The console, plus the records: .dagrun/last-build.jsonl and any --events/--junit/--trace."""
    from . import record
    from .report import Tee, make_reporter

    sinks: list[Any] = [
        record.JsonLines(
            os.path.join(session.state_dir, record.LAST_BUILD),
            wants_fresh=False, only_if_work=True, tolerant=True,
        )
    ]
    if args.events:
        record.check_writable(args.events, "events")
        sinks.append(record.JsonLines(args.events, wants_fresh=True, only_if_work=False))
    if args.junit:
        from .junit import to_xml

        record.check_writable(args.junit, "JUnit report")
        suite = session.manifest_name or "dagrun"
        sinks.append(record.Collected(
            lambda rs: record.write_text(args.junit, to_xml(rs, suite)), wants_fresh=True
        ))
    if args.trace:
        from .trace import dumps

        record.check_writable(args.trace, "trace")
        sinks.append(record.Collected(
            lambda rs: record.write_text(args.trace, dumps(rs)), wants_fresh=False
        ))
    if getattr(args, "html", None):
        record.check_writable(args.html, "HTML report")
        sinks.append(record.Collected(
            lambda rs: record.write_text(args.html, _html(session, rs)), wants_fresh=False
        ))
    console = make_reporter(args.progress, options=_options(args, session))
    return Tee([record.Records(sinks), console])


def print_plan(prep: Any) -> None:
    g, plan = prep.graph, prep.plan
    out = sys.stdout
    for i in plan.to_run:
        spec = g.specs[i]
        label = f"{spec.name}" + (f"  ({spec.display})" if spec.display else "")
        out.write(f"would run: {label}\n")
        for reason in plan.reasons.get(i, ()):
            out.write(f"    {reason}\n")
        if prep.pool is not None:
            from .executors.local_pool import uses_core_pool
            from .numa import describe_placement

            if uses_core_pool(g.manifest, spec):
                out.write(f"    leases {describe_placement(spec, prep.pool)}\n")
    out.write(f"dagrun: {len(plan.to_run)} would run, {len(plan.up_to_date)} up to date\n")


def cmd_list(args: argparse.Namespace) -> int:
    from . import views

    session = _session(args)
    if args.names:  # for shell completion: no planning, no hashing
        sys.stdout.write("".join(n + "\n" for n in views.names(session.load_graph())))
        return EXIT_OK
    prep = session.plan(None, explain=True)
    _warn(session)
    data = views.task_list(prep)
    if args.json:
        import json

        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        from .report import Style

        sys.stdout.write(views.list_text(data, Style(_options(args).color).dim))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from . import record, views

    session = _session(args)
    graph = session.load_graph()
    i = views.one_task(graph, args.task, session.cwd)
    prep = session.plan([graph.specs[i].name], explain=True)
    _warn(session)
    data = views.show(prep, i, session.state_dir, _last_build(session, record))
    if args.json:
        import json

        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(views.show_text(data))
    return EXIT_OK


def _last_build(session: Any, record: Any) -> list[Any]:
    try:
        return list(record.read(os.path.join(session.state_dir, record.LAST_BUILD)))
    except OSError:
        return []


def cmd_graph(args: argparse.Namespace) -> int:
    from .graph import to_dot, to_json

    session = _session(args)
    prep = session.plan(args.targets or None, explain=False)
    g, plan = prep.graph, prep.plan
    if args.format == "json":
        data = to_json(g, plan.selected, plan.up_to_date, prep.keys.keys)
        import json

        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(to_dot(g, plan.selected, plan.up_to_date))
    return EXIT_OK


def cmd_tree(args: argparse.Namespace) -> int:
    from . import tree

    session = _session(args)
    prep = session.plan(args.targets or None, explain=True)
    _warn(session)
    g, plan = prep.graph, prep.plan
    named = g.resolve(args.targets, session.cwd) if args.targets else None
    lines = tree.lines(g, tree.roots(g, plan.selected, named), plan.reasons)
    sys.stdout.write("".join(line + "\n" for line in lines))
    return EXIT_OK


def _html(session: Any, records: list[Any]) -> str:
    """The report page of ``records``; the critical path needs the graph (if it still loads)."""
    from .html_report import render

    try:
        g = session.load_graph()
        deps = {s.name: [g.specs[d].name for d in g.deps[i]] for i, s in enumerate(g.specs)}
    except DagrunError:
        deps = None
    title = f"dagrun build: {os.path.basename(session.root)}"
    return render(records, deps=deps, runs_dir=os.path.join(session.state_dir, "runs"),
                  title=title)


def cmd_report(args: argparse.Namespace) -> int:
    from . import record

    session = _session(args)
    records = _last_build(session, record)
    if not records:
        raise DagrunError("no build to report yet: run `dagrun build` (a build that runs a task)")
    record.check_writable(args.html, "HTML report")
    record.write_text(args.html, _html(session, records))
    sys.stderr.write(f"dagrun: wrote {args.html}\n")
    return EXIT_OK


def cmd_trace(args: argparse.Namespace) -> int:
    from . import record
    from .trace import dumps

    session = _session(args)
    records = _last_build(session, record)
    if not records:
        raise DagrunError("no build to trace yet: run `dagrun build` (a build that runs a task)")
    record.write_text(args.output, dumps(records))
    if args.output != "-":
        sys.stderr.write(f"dagrun: wrote {args.output}\n")
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    from .completion import script

    sys.stdout.write(script(args.shell, parser()))
    return EXIT_OK


def cmd_clean(args: argparse.Namespace) -> int:
    if args.dead and args.targets:
        raise DagrunError("clean --dead takes no targets: it removes what no task declares now")
    session = _session(args)
    removed = session.clean(args.targets or None, dead=args.dead)
    _warn(session)
    sys.stdout.write(f"dagrun: removed {len(removed)} output(s)\n")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from . import live as live_status

    if not args.json and not args.executors:  # a running build answers: nothing else to load
        running = live_status.running(_state_dir(args))
        if running is not None:
            sys.stdout.write(live_status.running_text(running))
            return EXIT_OK
    return _status_in_full(args)


def _status_in_full(args: argparse.Namespace) -> int:
    from . import live as live_status
    from . import record, views

    session = _session(args)
    pools = session.executor_pools()
    _warn(session)
    if args.executors and not args.json:
        sys.stdout.write("".join(executor_pool_text(p) for p in pools))
        return EXIT_OK
    try:
        graph = session.load_graph()
    except DagrunError:
        graph = None
    running = live_status.running(session.state_dir)
    live = running is not None or any(p.build_pid for p in pools)
    records = _last_build(session, record)
    build = views.build_status(graph, records, live)
    tasks = [] if running is not None else live_status.task_table(records)
    if args.json:
        import json

        data = views.status(build, pools) | {"live": running, "tasks": tasks}
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return EXIT_OK
    text = views.build_status_text(build)
    text += live_status.running_text(running) if running else live_status.table_text(tasks)
    sys.stdout.write(text + "".join(executor_pool_text(p) for p in pools))
    return EXIT_OK


def _state_dir(args: argparse.Namespace) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(manifest_path(args))), ".dagrun")


def cmd_tail(args: argparse.Namespace) -> int:
    from .live import tail

    return tail(_state_dir(args), args.task, args.lines)


def cmd_cancel(args: argparse.Namespace) -> int:
    from .live import cancel

    return cancel(_state_dir(args), args.tasks)


def executor_pool_text(p: Any) -> str:
    """One executor's pool as ``dagrun status --executors`` prints it."""
    from .numa import format_cpulist

    def cores(c: tuple[int, ...]) -> str:
        return f"{format_cpulist(c) or '-'} ({len(c)})"

    rows = []
    if p.type == "local":
        rows.append(("logical cores", str(p.logical_cores)))
        if p.configured is None:
            rows.append(("configured cores", "none (no core_pool: tasks are not pinned)"))
        else:
            rows.append(("configured cores", cores(p.configured)))
            rows.append(("free cores", cores(p.free)))
    if p.host is not None:
        reach = {True: "yes", False: "no", None: "not checked"}[p.reachable]
        rows.append(("host", p.host))
        rows.append(("reachable", reach))
    if p.type == "dask":
        rows.extend(_cluster_rows(p))
    queued = _queued(p)
    if p.type == "http" and p.cluster is not None:
        rows.append(("workers", f"{p.cluster.get('workers')} connected"))
    running = str(len(p.running) - len(queued))
    if p.slots is not None:
        running += f" of {p.slots} slots"
    running += f" (build pid {p.build_pid})" if p.build_pid else " (no build running)"
    rows.append(("running jobs", running))
    for u in p.nodes:
        free = format_cpulist(u.free) or "-"
        rows.append((f"node {u.node}", f"cores {format_cpulist(u.cores)}, free {free}"))
    for j in p.running:
        pinned = f"cores {format_cpulist(j.cores)}" if j.cores else "not pinned"
        if j.task in queued:
            pinned = "queued (no worker has it yet)"
        pinned = f"job {j.job}" if j.job else pinned
        rows.append((f"  {j.task}", pinned))
    width = max(len(k) for k, _ in rows)
    lines = [f"{p.name} ({p.type})"] + [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines) + "\n"


def _queued(p: Any) -> set[str]:
    """An http executor's submitted tasks that no worker has leased yet (not running)."""
    if p.type != "http" or p.cluster is None:
        return set()
    leased = set(p.cluster.get("leased", ()))
    return {j.task for j in p.running if j.task not in leased}


def _cluster_rows(p: Any) -> list[tuple[str, str]]:
    """A dask executor's cluster: where it is, and its workers while a build uses it."""
    c = p.cluster
    if c is None:
        return []
    rows = [("cluster", f"{c.get('cluster')} at {c.get('address') or '?'}")]
    if c.get("workers") is not None:
        rows.append(("workers", f"{c['workers']} ({c.get('threads')} threads)"))
    return rows


def cmd_watch(args: argparse.Namespace) -> int:
    from .report import make_reporter
    from .watch import Watcher

    path = manifest_path(args)
    runs = os.path.join(os.path.dirname(path), ".dagrun", "runs")
    options = _options(args, runs=os.path.normpath(runs))
    watcher = Watcher(
        path,
        args.targets,
        jobs=args.jobs,
        restart=args.restart,
        debounce_ms=args.debounce,
        progress=args.progress,
        reporter_factory=lambda: make_reporter(args.progress, options=options),
    )
    return watcher.run()


def cmd_server(args: argparse.Namespace) -> int:
    from .client import command

    return command(args.action, manifest_path(args))


def cmd_worker(args: argparse.Namespace) -> int:
    from .worker import main as worker_main

    return worker_main(args.url, jobs=args.jobs, token_file=args.token_file, cafile=args.cafile,
                       directory=args.dir, grace=args.grace)


_COMMANDS = {
    "worker": cmd_worker,
    "build": cmd_build,
    "watch": cmd_watch,
    "graph": cmd_graph,
    "list": cmd_list,
    "clean": cmd_clean,
    "status": cmd_status,
    "tail": cmd_tail,
    "report": cmd_report,
    "cancel": cmd_cancel,
    "show": cmd_show,
    "trace": cmd_trace,
    "tree": cmd_tree,
    "completion": cmd_completion,
    "server": cmd_server,
}
