"""The command line: parse arguments, call the API, print, exit.  The only sys.exit.

Exit status: 0 every selected task succeeded or was up to date; 1 a task
failed; 2 a usage or manifest error; 130 interrupted.

The words are read by dagrun/argv.py (a plain build, without argparse) or
dagrun/arguments.py (argparse: every command's options; a usage error exits 2
from there); each command is one ``cmd_*`` function here (``_COMMANDS``).
"""

from __future__ import annotations

import os
import sys

from .argv import COMMANDS, plain_args
from .errors import DagrunError, Interrupted, UnknownTargetError
from .state import STATE_DIR

TYPE_CHECKING = False  # argparse, typing, json, difflib: imported where used (argv.plain_args)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def __getattr__(name: str) -> Any:
    """``parser`` and ``parse`` (dagrun/arguments.py), imported only when asked: a plain build
    never needs argparse (argv.plain_args reads it)."""
    if name in ("parser", "parse"):
        from . import arguments

        return getattr(arguments, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(
    argv: Sequence[str] | None = None, *, noop_checked: bool = False, delta: Any = None
) -> int:
    """``noop_checked``: dagrun.entry already asked the no-op fast path; do not ask twice.
    ``delta``: what it found changed (fresh.Delta), for the build to start from."""
    words = sys.argv[1:] if argv is None else argv
    args = plain_args(words)
    if args is None:
        from .arguments import parse

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
    from .noop import answer_noop

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
    from .arguments import parser
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

    # asked once: in a build's first moments the question waits for its socket (control.py)
    running = live_status.running(_state_dir(args))
    if running is not None and not args.json and not args.executors:
        sys.stdout.write(live_status.running_text(running))  # a running build answered:
        return EXIT_OK  # nothing else to load
    return _status_in_full(args, running)


def _status_in_full(args: argparse.Namespace, running: dict[str, Any] | None) -> int:
    from . import live as live_status
    from . import record, views

    session = _session(args)
    pools = session.executor_pools()
    _warn(session)
    if args.executors and not args.json:
        sys.stdout.write("".join(views.executor_pool_text(p) for p in pools))
        return EXIT_OK
    try:
        graph = session.load_graph()
    except DagrunError:
        graph = None
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
    sys.stdout.write(text + "".join(views.executor_pool_text(p) for p in pools))
    return EXIT_OK


def _state_dir(args: argparse.Namespace) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(manifest_path(args))), STATE_DIR)


def cmd_tail(args: argparse.Namespace) -> int:
    from .live import tail

    return tail(_state_dir(args), args.task, args.lines)


def cmd_cancel(args: argparse.Namespace) -> int:
    from .live import cancel

    return cancel(_state_dir(args), args.tasks)


def cmd_watch(args: argparse.Namespace) -> int:
    from .report import make_reporter
    from .watch import Watcher

    path = manifest_path(args)
    runs = os.path.join(os.path.dirname(path), STATE_DIR, "runs")
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
    from . import interrupts
    from .worker import main as worker_main

    with interrupts.raised():  # SIGTERM, SIGHUP, Ctrl-C: kill the tasks, exit 130 (signals.py)
        return worker_main(args.url, jobs=args.jobs, token_file=args.token_file,
                           cafile=args.cafile, directory=args.dir, grace=args.grace)


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
