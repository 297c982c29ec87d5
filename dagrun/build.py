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

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from . import interrupts
from .clock import Clock
from .errors import ExecutorError
from .executors import Context, Executor, create
from .graph import BuildGraph
from .outputs import combine
from .placement import GROUP
from .plan import Plan
from .pool_status import SNAPSHOT, StatusReporter, Tee
from .pycall import Results, results_of
from .records import FUNCTION_POOL
from .scheduler import (
    BuildResult,
    Hooks,
    Ledger,
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
    from .pipeline import Prepared
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
    ledger: Ledger,
    durations: Mapping[str, float],
    cache: Any = None,
) -> BuildResult:
    """Run the plan on its executors, recording through ``ledger``; every executor is closed
    when it ends."""
    executors = _executors(graph, plan, setup)
    by_name = executors if isinstance(executors, dict) else {"local": executors}
    distinct = list({id(e): e for e in by_name.values()}.values())
    try:
        limits = _limits(graph, plan, setup, by_name)
    except ExecutorError:
        close_all(distinct)
        raise
    status = _status(setup, by_name, limits.slots)
    mailbox, control = _control(graph, plan, setup)
    schedule = setup.environ.get("DAGRUN_SCHEDULE", "critical-path")  # see bench/RESULTS.md
    scheduler = Scheduler(
        graph, plan, keys, executors, limits=limits,
        policy=Policy(setup.failures_allowed, schedule, durations, setup.explain),
        hooks=Hooks(Tee(status, reporter), status.flush, setup.stops, cache, mailbox),
        clock=setup.clock, ledger=ledger, base_env=dict(graph.manifest.env),
        runs_dir=os.path.join(setup.state_dir, "runs"), started=setup.started,
    )
    try:
        with interrupts.raised():  # SIGTERM stops the build like Ctrl-C does
            return scheduler.run()
    finally:
        close_all(distinct)
        status.close()
        mailbox.close()  # first: a `tail` waiting for a job's end wakes and sends it
        control.close()


def _limits(
    graph: BuildGraph, plan: Plan, setup: BuildSetup, by_name: Mapping[str, Executor]
) -> Limits:
    """How much may run at once: slots per executor, resources, cores, groups (ExecutorError
    when a group has no member that started)."""
    slots = local_slots(graph, setup.jobs, setup.pool)
    leases = None
    if setup.pool is not None:
        from .numa import CoreLeases  # only where a core pool is configured

        leases = CoreLeases(setup.pool)
    grouped = groups(graph, plan, by_name if setup.factory is None else None)
    limits = {name: (slots if name == "local" else ex.slots) for name, ex in by_name.items()}
    return Limits(slots, dict(graph.manifest.resources), leases, limits, grouped)


def _status(
    setup: BuildSetup, by_name: Mapping[str, Executor], limits: Mapping[str, int]
) -> StatusReporter:
    """The snapshot `dagrun status` reads while the build runs."""
    return StatusReporter(
        os.path.join(setup.state_dir, SNAPSHOT), setup.pool, limits,
        {name: True for name in by_name if name != "local"},
        {name: ex.describe for name, ex in by_name.items() if hasattr(ex, "describe")},
    )


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


def run_prepared(
    prep: Prepared, reporter: Reporter, setup: BuildSetup, *, cache_mode: str,
    environ: Mapping[str, str], on_result: Callable[[str, Any], None] | None,
    warn: Callable[[str], None],
) -> BuildResult:
    """Run a prepared plan (pipeline.py) with its ledger: the shared cache looked up and
    written (``cache_mode``; ``environ`` is dagrun's, with the store's token, which the
    tasks' ``setup.environ`` has not), function tasks' results streamed to ``on_result``;
    the result holds the function tasks' values."""
    graph, keys, log, ledger = prep.graph, prep.keys, prep.log, prep.ledger
    assert ledger is not None
    shared = ledger.shared = _shared_cache(prep, setup, cache_mode, environ, warn)
    results = results_of(graph, keys.keys, setup.state_dir)
    if on_result is not None:
        ledger.stream_to(on_result, results)
        for i in prep.plan.up_to_date if results else ():
            ledger.stream(i)
    try:
        result = run(graph, prep.plan, keys.keys, reporter, setup, ledger, log.index.durations,
                     shared)
    except BaseException:
        if shared is not None:
            shared.close(wait=False)  # interrupted: the queued uploads are dropped
        raise
    if shared is not None:
        shared.close()
        if shared.required and shared.problems:
            from .cache import CacheError  # only where [cache] is configured

            raise CacheError(f"the shared cache failed (--cache=required): {shared.problems[0]}")
    values = {}
    if results:  # function tasks' values: of those that ran or were up to date
        done = {*result.succeeded, *result.restored, *result.up_to_date}
        values = {t: p for t, p in results.items() if t in done}
    return dataclasses.replace(result, values=Results(values, log.result))


def _shared_cache(
    prep: Prepared, setup: BuildSetup, mode: str, environ: Mapping[str, str],
    warn: Callable[[str], None],
) -> Any:
    """This build's SharedCache (cache/), or None: no [cache], --cache=off, nothing to run."""
    settings = prep.graph.manifest.cache
    if settings is None or mode == "off" or not prep.plan.to_run:
        return None
    from .cache import SharedCache  # only where [cache] is configured

    if mode == "read-only":
        settings = settings._replace(write=False)
    ledger = prep.ledger
    assert ledger is not None
    return SharedCache(settings, prep.graph, prep.keys, environ, setup.state_dir,
                       setup.say or warn, seen=lambda i: combine(ledger.upstream(i).items()),
                       required=mode == "required")


def without_token(environ: Mapping[str, str], cache: Any) -> Mapping[str, str]:
    """dagrun's environment for its tasks: without the shared cache's token (it is dagrun's,
    and a task printing its environment would put it in a run file, and in the store)."""
    if cache is None or not cache.token_env or cache.token_env not in environ:
        return environ
    return {k: v for k, v in environ.items() if k != cache.token_env}


def default_jobs() -> int:
    return (os.cpu_count() or 1) + 2
