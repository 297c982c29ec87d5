"""The command line: parse arguments, call the API, print, exit.  The only sys.exit.

Exit status: 0 every selected task succeeded or was up to date; 1 a task
failed; 2 a usage or manifest error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .errors import DagrunError, Interrupted

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


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


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="dagrun",
        description="A declarative build tool: dagrun.toml -> tasks run when their inputs change.",
    )
    p.add_argument("--version", action="version", version=f"dagrun {__version__}")
    p.add_argument("-C", dest="directory", default=".", metavar="DIR", help="change to DIR first")
    p.add_argument("-f", dest="file", metavar="FILE", help="manifest file (default: dagrun.toml)")
    p.add_argument(
        "--progress",
        choices=("auto", "rich", "plain"),
        default="auto",
        help="console output: a live display on a terminal (auto), or plain lines",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    b = sub.add_parser("build", help="build targets (default: the default targets)")
    b.add_argument("targets", nargs="*", metavar="TARGET")
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

    g = sub.add_parser("graph", help="print the dependency graph")
    g.add_argument("targets", nargs="*", metavar="TARGET")
    fmt = g.add_mutually_exclusive_group()
    fmt.add_argument(
        "--dot", action="store_const", dest="format", const="dot", help="Graphviz DOT (default)"
    )
    fmt.add_argument("--json", action="store_const", dest="format", const="json", help="JSON")

    sub.add_parser("list", help="list tasks and whether they are up to date")

    c = sub.add_parser("clean", help="remove declared outputs and forget their keys")
    c.add_argument("targets", nargs="*", metavar="TARGET")

    w = sub.add_parser("watch", help="build, then rebuild what changed whenever inputs change")
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

    st = sub.add_parser("status", help="each executor's pool: cores, free cores, running jobs")
    st.add_argument("--executors", action="store_true", help="each executor's pool (the default)")
    return p


def main(argv: Sequence[str] | None = None, *, noop_checked: bool = False) -> int:
    """``noop_checked``: dagrun.entry already asked the no-op fast path; do not ask twice."""
    args = parser().parse_args(argv)
    args.noop_checked = noop_checked
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
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED if args.command == "build" else EXIT_OK


def _session(args: argparse.Namespace) -> Any:
    from .session import Session, find_manifest

    path = find_manifest(".", args.file)

    def on_wait(message: str) -> None:
        sys.stderr.write(f"dagrun: {message}\n")
        sys.stderr.flush()

    return Session(manifest_path=path, on_wait=on_wait)


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
    }
)


def _nothing_to_do(args: argparse.Namespace) -> bool:
    """The no-op fast path (dagrun/fresh.py): True when it proved, and said, that nothing runs."""
    if args.noop_checked:
        return False
    if any(v for name, v in vars(args).items() if name not in _NOOP_NEUTRAL | {"noop_checked"}):
        return False
    path = os.path.join(".", args.file) if args.file else "dagrun.toml"
    if not os.path.isfile(path):
        return False
    from .fresh import check, no_work_line

    count = check(path, args.targets, os.environ)
    if count is None:
        return False
    sys.stdout.write(no_work_line(count) + "\n")
    return True


def cmd_build(args: argparse.Namespace) -> int:
    if _nothing_to_do(args):
        return EXIT_OK
    session = _session(args)
    if args.dry_run:
        prep = session.plan(args.targets, explain=True)
        _warn(session)
        print_plan(prep)
        return EXIT_OK
    from .report import make_reporter

    reporter = make_reporter(args.progress, explain=args.explain)
    failures = 0 if args.keep_going else args.failures_allowed
    try:
        result = session.build(
            args.targets,
            reporter=reporter,
            jobs=args.jobs,
            failures_allowed=failures,
            explain=args.explain,
        )
    finally:
        _warn(session)
    return int(result.exit_code)


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
            from .numa import describe_placement, uses_core_pool

            if uses_core_pool(g.manifest, spec):
                out.write(f"    leases {describe_placement(spec, prep.pool)}\n")
    out.write(f"dagrun: {len(plan.to_run)} would run, {len(plan.up_to_date)} up to date\n")


def cmd_list(args: argparse.Namespace) -> int:
    session = _session(args)
    prep = session.plan(None, explain=True)
    _warn(session)
    g, plan = prep.graph, prep.plan
    fresh = set(plan.up_to_date)
    width = max((len(s.name) for s in g.specs), default=4)
    for i in g.order:
        spec = g.specs[i]
        if i in fresh:
            state = "up to date"
        elif i in plan.reasons:
            state = "will run: " + "; ".join(plan.reasons[i])
        else:
            state = "not selected"
        shown = f"  [{spec.display}]" if spec.display else ""
        sys.stdout.write(f"{spec.name:<{width}}  {state}{shown}\n")
    return EXIT_OK


def cmd_graph(args: argparse.Namespace) -> int:
    session = _session(args)
    prep = session.plan(args.targets or None, explain=False)
    if args.format == "json":
        sys.stdout.write(json.dumps(graph_json(prep), indent=2) + "\n")
    else:
        sys.stdout.write(graph_dot(prep))
    return EXIT_OK


def graph_json(prep: Any) -> dict[str, Any]:
    g, plan = prep.graph, prep.plan
    fresh = set(plan.up_to_date)
    tasks = []
    for i in plan.selected:
        s = g.specs[i]
        tasks.append(
            {
                "name": s.name,
                "display": s.display or None,
                "cmd": s.cmd,
                "inputs": list(s.inputs),
                "outputs": list(s.outputs),
                "deps": [g.specs[d].name for d in g.deps[i]],
                "up_to_date": i in fresh,
                "key": prep.keys.keys[i],
            }
        )
    edges = [[g.specs[d].name, g.specs[i].name] for i in plan.selected for d in g.deps[i]]
    return {"tasks": tasks, "edges": edges}


def graph_dot(prep: Any) -> str:
    g, plan = prep.graph, prep.plan
    fresh = set(plan.up_to_date)
    lines = ["digraph dagrun {", "  rankdir=LR;", '  node [shape=box, fontname="monospace"];']
    for i in plan.selected:
        s = g.specs[i]
        style = (
            'style=filled, fillcolor="#d9f2d9", color="#5a9a5a"'
            if i in fresh
            else 'style=bold, color="#b03030"'
        )
        tip = "up to date" if i in fresh else "will run"
        lines.append(f"  {_q(s.name)} [label={_q(s.label)}, tooltip={_q(tip)}, {style}];")
    for i in plan.selected:
        for d in g.deps[i]:
            lines.append(f"  {_q(g.specs[d].name)} -> {_q(g.specs[i].name)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cmd_clean(args: argparse.Namespace) -> int:
    session = _session(args)
    removed = session.clean(args.targets or None)
    _warn(session)
    sys.stdout.write(f"dagrun: removed {len(removed)} output(s)\n")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    session = _session(args)
    pools = session.executor_pools()
    _warn(session)
    sys.stdout.write("".join(executor_pool_text(p) for p in pools))
    return EXIT_OK


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
    if p.type == "dask":
        rows.extend(_cluster_rows(p))
    running = str(len(p.running))
    if p.slots is not None:
        running += f" of {p.slots} slots"
    running += f" (build pid {p.build_pid})" if p.build_pid else " (no build running)"
    rows.append(("running jobs", running))
    for u in p.nodes:
        free = format_cpulist(u.free) or "-"
        rows.append((f"node {u.node}", f"cores {format_cpulist(u.cores)}, free {free}"))
    for j in p.running:
        pinned = f"cores {format_cpulist(j.cores)}" if j.cores else "not pinned"
        rows.append((f"  {j.task}", pinned))
    width = max(len(k) for k, _ in rows)
    lines = [f"{p.name} ({p.type})"] + [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines) + "\n"


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
    from .session import find_manifest
    from .watch import Watcher

    watcher = Watcher(
        find_manifest(".", args.file),
        args.targets,
        jobs=args.jobs,
        restart=args.restart,
        debounce_ms=args.debounce,
        progress=args.progress,
    )
    return watcher.run()


_COMMANDS = {
    "build": cmd_build,
    "watch": cmd_watch,
    "graph": cmd_graph,
    "list": cmd_list,
    "clean": cmd_clean,
    "status": cmd_status,
}
