"""Build wiring: the executors a plan needs, their limits, the status reporter, the scheduler.

Session (session.py) owns the state on disk (lock, cache, log, no-op proof) and
hands a prepared plan here.  This module creates, through the registry
(``executors.create``), only the executors the plan has tasks for, and starts
all of them before the first task runs: an executor that cannot start (host
unreachable, key refused) stops the build with ExecutorError, exit 2, before
any task of any executor ran.  Every executor is closed when the build ends.

Limits: the local executor's slots are the smallest of ``-j``, its
``max_jobs`` and its core pool; every other executor's are its own
(``max_jobs``).  Core leases apply to local tasks only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from . import interrupts
from .clock import Clock
from .errors import ExecutorError
from .executors import Context, Executor, create
from .graph import BuildGraph
from .placement import GROUP
from .plan import Plan
from .records import FUNCTION_POOL
from .scheduler import (
    BuildResult,
    Hooks,
    Limits,
    Policy,
    Reporter,
    Scheduler,
    StopFlag,
    executor_of,
)

if TYPE_CHECKING:
    from .control import ControlServer
    from .numa import CorePool
    from .steering import Mailbox

# tests: one executor for every task, or executors by name
ExecutorFactory = Callable[[BuildGraph], "Executor | Mapping[str, Executor]"]


class BuildSetup(NamedTuple):  # not a dataclass: ~0.7 ms less per start (bench/IMPORTS.md)
    """Everything a build needs beyond the plan."""

    state_dir: str
    environ: Mapping[str, str]
    clock: Clock
    jobs: int  # -j, already resolved (flag, manifest, or the default)
    failures_allowed: int
    explain: bool = False
    pool: CorePool | None = None
    factory: ExecutorFactory | None = None
    stops: tuple[StopFlag, ...] = ()
    say: Callable[[str], None] | None = None
    started: float | None = None  # the clock when the build began: the summary's time is wall time


def local_slots(graph: BuildGraph, jobs: int, pool: CorePool | None) -> int:
    """The local limit: the smallest of -j, [executors.local] max_jobs and the core pool."""
    slots = jobs
    max_jobs = graph.manifest.executors["local"].max_jobs
    if max_jobs is not None:
        slots = min(slots, max_jobs)
    if pool is not None:
        slots = min(slots, len(pool.cores))  # no more tasks than cores: none waits in vain
    return max(1, slots)


def needed(graph: BuildGraph, plan: Plan) -> list[str]:
    """The executors the plan has tasks for (a group's: its members), local first."""
    names: set[str] = set()
    for name in {executor_of(graph.specs[i]) for i in plan.to_run}:
        spec = graph.manifest.executors.get(name)
        names.update(spec.options["members"] if spec and spec.type == GROUP else (name,))
    return sorted(names, key=lambda n: (n != "local", n))


def groups(
    graph: BuildGraph, plan: Plan, opened: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The executor groups the plan has tasks for (executors/group.py), by name; with
    ``opened``, only their members that started (ExecutorError if a group has none)."""
    specs = graph.manifest.executors
    used = {graph.specs[i].executor for i in plan.to_run}
    named = sorted(n for n in used if n in specs and specs[n].type == GROUP)
    if not named:
        return {}
    from .executors.group import Group

    out = {}
    for n in named:
        members = [m for m in specs[n].options["members"] if opened is None or m in opened]
        if not members:
            raise ExecutorError(f"no member of group '{n}' could start")
        out[n] = Group(n, members, {m: specs[m].options.get("env") or {} for m in members})
    return out


def open_executors(graph: BuildGraph, plan: Plan, setup: BuildSetup) -> dict[str, Executor]:
    """Create and start every executor the plan needs; ExecutorError if one cannot start."""
    context = Context(
        graph.root, setup.state_dir, setup.environ, local_slots(graph, setup.jobs, setup.pool),
        setup.say,
    )
    opened: dict[str, Executor] = {}
    spare = _group_only(graph, plan)
    try:
        with interrupts.kept():  # dask_jobqueue's import sets SIGINT to sys.exit()
            _open(graph, plan, context, opened, spare, setup.say)
    except BaseException:
        close_all(opened.values())
        raise
    return opened


def _group_only(graph: BuildGraph, plan: Plan) -> set[str]:
    """Executors the plan reaches only through groups: a group can do without one of them."""
    direct = {executor_of(graph.specs[i]) for i in plan.to_run}
    return {m for g in groups(graph, plan).values() for m in g.members} - direct


def _open(
    graph: BuildGraph, plan: Plan, context: Context, opened: dict[str, Executor],
    spare: set[str], say: Callable[[str], None] | None,
) -> None:
    for name in needed(graph, plan):
        if name == FUNCTION_POOL:
            opened[name] = create(FUNCTION_POOL, name, {}, context)
            opened[name].start()
            continue
        spec = graph.manifest.executors[name]
        opened[name] = create(spec.type, name, spec.options, context)
        try:
            opened[name].start()
        except ExecutorError as exc:
            if name not in spare:
                raise
            opened.pop(name).close()  # its groups go on with the other members
            if say is not None:
                say(f"warning: {exc}; its groups run their tasks on the others")


def close_all(executors: Any) -> None:
    for ex in executors:
        try:
            ex.close()
        except OSError:
            pass


def run(
    graph: BuildGraph,
    plan: Plan,
    keys: list[str | None],
    reporter: Reporter,
    setup: BuildSetup,
    on_success: Any,
    durations: Mapping[str, float],
    on_start: Callable[[int], None] | None = None,
    still_needed: Callable[[int], bool] | None = None,
    result_digest: Callable[[str], str] | None = None,
    cache: Any = None,
) -> BuildResult:
    """Run the plan on its executors; every executor is closed when it ends."""
    from .pool_status import SNAPSHOT, StatusReporter, Tee

    m = graph.manifest
    slots = local_slots(graph, setup.jobs, setup.pool)
    leases = None
    if setup.pool is not None:
        from .numa import CoreLeases

        leases = CoreLeases(setup.pool)
    executors = _executors(graph, plan, setup)
    by_name = executors if isinstance(executors, dict) else {"local": executors}
    distinct = list({id(e): e for e in by_name.values()}.values())
    try:
        grouped = groups(graph, plan, by_name if setup.factory is None else None)
    except ExecutorError:
        close_all(distinct)
        raise
    limits = {name: (slots if name == "local" else ex.slots) for name, ex in by_name.items()}
    status = StatusReporter(
        os.path.join(setup.state_dir, SNAPSHOT), setup.pool, limits,
        {name: True for name in by_name if name != "local"},
        {name: ex.describe for name, ex in by_name.items() if hasattr(ex, "describe")},
    )
    mailbox, control = _control(graph, plan, setup)
    scheduler = Scheduler(
        graph,
        plan,
        keys,
        executors,
        limits=Limits(slots, dict(m.resources), leases, limits, grouped),
        policy=Policy(
            setup.failures_allowed,
            setup.environ.get("DAGRUN_SCHEDULE", "critical-path"),  # see bench/RESULTS.md
            durations,
            setup.explain,
        ),
        hooks=Hooks(
            Tee(status, reporter), on_success, status.flush, setup.stops, on_start, still_needed,
            result_digest, cache,
            mailbox,
        ),
        clock=setup.clock,
        base_env=dict(m.env),
        runs_dir=os.path.join(setup.state_dir, "runs"),
        started=setup.started,
    )
    try:
        with interrupts.raised():  # SIGTERM stops the build like Ctrl-C does
            return scheduler.run()
    finally:
        close_all(distinct)
        status.close()
        mailbox.close()  # first: a `tail` waiting for a job's end wakes and sends it
        control.close()


def _control(graph: BuildGraph, plan: Plan, setup: BuildSetup) -> tuple[Mailbox, ControlServer]:
    """The build's control channel (`dagrun status`, `tail`, `cancel`) and the stall check,
    ticked every tenth of the shortest ``stall_warning`` (at most every 10 s)."""
    from .control import ControlServer
    from .steering import Mailbox

    limits = [graph.specs[i].stall_warning for i in plan.to_run]
    shortest = min((x for x in limits if x), default=None)
    every = None if shortest is None else max(0.05, min(10.0, shortest / 10))
    mailbox = Mailbox()
    return mailbox, ControlServer(setup.state_dir, mailbox, every)


def _executors(
    graph: BuildGraph, plan: Plan, setup: BuildSetup
) -> Executor | dict[str, Executor]:
    if setup.factory is None:
        return open_executors(graph, plan, setup)
    made = setup.factory(graph)
    return dict(made) if isinstance(made, Mapping) else made


def probe(graph: BuildGraph, state_dir: str, environ: Mapping[str, str]) -> dict[str, bool]:
    """Whether each remote executor that can be checked cheaply (ssh) is reachable now."""
    context = Context(graph.root, state_dir, environ, 1)
    out = {}
    for name, spec in graph.manifest.executors.items():
        if spec.type != "ssh":
            continue
        ex = create(spec.type, name, spec.options, context)
        try:
            ex.start()
            out[name] = True
        except ExecutorError:
            out[name] = False
        finally:
            ex.close()
    return out
