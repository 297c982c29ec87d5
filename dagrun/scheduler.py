"""Runs a Plan through an Executor: ready queue, slots, leases, failure policy, events.

The loop, as in Ninja's Builder::Build: start as many ready tasks as the
limits allow, then wait for one to end and account for it; repeat until
nothing runs.  Ready tasks are ordered by critical path: a task's priority is
its own expected duration (from the log) plus the longest chain of work that
waits on it, so long chains start first.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .clock import Clock
from .errors import Interrupted
from .events import BuildFinished, BuildStarted, Event, TaskFinished, TaskSkipped, TaskStarted
from .executors import Executor, Job, Outcome
from .graph import BuildGraph
from .plan import Plan


class Reporter(Protocol):
    def handle(self, event: Event) -> None: ...


class Lease(Protocol):
    @property
    def cores(self) -> tuple[int, ...]: ...

    @property
    def node(self) -> int | None: ...  # read-only, so frozen records (numa.Lease) fit


class Leases(Protocol):
    def try_grant(self, n: int, node: int | None = None) -> Lease | None: ...

    def release(self, lease: Lease) -> None: ...


@dataclass(frozen=True)
class BuildResult:
    """What a build did.  ``order`` lists tasks in the order they were started."""

    succeeded: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    up_to_date: tuple[str, ...] = ()
    not_run: tuple[str, ...] = ()
    order: tuple[str, ...] = ()
    interrupted: bool = False
    elapsed: float = 0.0
    reasons: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_run and not self.interrupted

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if self.ok else 1


_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+@\[\]-]")


def run_dir_name(task: str) -> str:
    """A file-system-safe folder name for a task, unique per task name."""
    safe = _UNSAFE.sub("_", task)
    if safe != task or safe in (".", ".."):
        import zlib

        safe = f"{safe}-{zlib.crc32(task.encode()):08x}"
    return safe


# called when a task exits 0; a returned string turns the success into a failure with that error
SuccessHook = Callable[[int, Outcome], str | None]


class Scheduler:
    """Runs ``plan.to_run`` on ``executor`` within ``jobs`` slots (a task takes ``threads``)."""

    def __init__(
        self,
        graph: BuildGraph,
        plan: Plan,
        keys: list[str | None],
        executor: Executor,
        *,
        jobs: int,
        failures_allowed: int,
        clock: Clock,
        reporter: Reporter,
        base_env: Mapping[str, str],
        runs_dir: str,
        on_success: SuccessHook | None = None,
        durations: Mapping[str, float] | None = None,
        leases: Leases | None = None,
        resources: Mapping[str, int] | None = None,
        explain: bool = False,
        schedule: str = "critical-path",
    ) -> None:
        self.graph = graph
        self.plan = plan
        self.keys = keys
        self.executor = executor
        self.jobs = max(1, jobs)
        self.failures_allowed = failures_allowed
        self.clock = clock
        self.reporter = reporter
        self.base_env = base_env
        self.runs_dir = runs_dir
        self.on_success = on_success
        self.durations = durations or {}
        self.leases = leases
        self.free_resources = dict(resources or {})
        self.explain = explain
        self.schedule = schedule  # "critical-path", or "unweighted" / "fifo" for comparisons

    # -- the loop

    def run(self) -> BuildResult:
        g, plan = self.graph, self.plan
        n = len(g.specs)
        self.in_plan = bytearray(n)
        for i in plan.to_run:
            self.in_plan[i] = 1
        self.waiting = [0] * n
        for i in plan.to_run:
            self.waiting[i] = sum(1 for d in g.deps[i] if self.in_plan[d])
        self.priority = self._priorities()
        self.ready: list[tuple[float, int, int]] = []
        for pos, i in enumerate(plan.to_run):
            if self.waiting[i] == 0:
                self.ready.append((-self.priority[i], pos, i))
        heapq.heapify(self.ready)
        self.pos = {i: pos for pos, i in enumerate(plan.to_run)}
        self.free = self.jobs
        self.running: dict[
            int, tuple[int, int, Lease | None]
        ] = {}  # job id -> (task, slots, lease)
        self.attempts = [0] * n
        self.status: dict[int, str] = {}
        self.blocked_by: dict[int, str] = {}
        self.order: list[str] = []
        self.failures = 0
        self.stopping = False
        self.done = 0
        self.next_id = 0
        started = self.clock.now()
        self.reporter.handle(BuildStarted(len(plan.to_run), len(plan.up_to_date), self.jobs))
        interrupted = False
        try:
            while True:
                self._start_ready()
                if not self.running:
                    break
                for outcome in self.executor.wait():
                    self._finished(outcome)
        except KeyboardInterrupt:
            interrupted = True
            self.stopping = True
            for outcome in self.executor.cancel():
                self._finished(outcome, interrupted=True)
        return self._result(self.clock.now() - started, interrupted)

    def _priorities(self) -> list[float]:
        """Critical path by recorded durations; ``unweighted`` counts tasks; ``fifo``: none."""
        g = self.graph
        prio = [0.0] * len(g.specs)
        if self.schedule == "fifo":  # ready tasks start in topological (manifest) order
            return prio
        durations = {} if self.schedule == "unweighted" else self.durations
        known = [
            durations[g.specs[i].name] for i in self.plan.to_run if g.specs[i].name in durations
        ]
        default = sum(known) / len(known) if known else 1.0
        dependents = g.dependents
        for i in reversed(self.plan.to_run):
            below = 0.0
            for j in dependents[i]:
                if self.in_plan[j] and prio[j] > below:
                    below = prio[j]
            prio[i] = durations.get(g.specs[i].name, default) + below
        return prio

    def _start_ready(self) -> None:
        if self.stopping:
            return
        deferred = []
        while self.ready and self.free > 0:
            item = heapq.heappop(self.ready)
            if not self._try_start(item[2]):
                deferred.append(item)
        for item in deferred:
            heapq.heappush(self.ready, item)

    def _try_start(self, i: int) -> bool:
        spec = self.graph.specs[i]
        slots = min(spec.threads, self.jobs)
        if slots > self.free:
            return False
        for name, count in spec.resources:
            if self.free_resources.get(name, 0) < count:
                return False
        lease = None
        if self.leases is not None:
            lease = self.leases.try_grant(spec.threads, spec.numa_node)
            if lease is None:
                return False
        for name, count in spec.resources:
            self.free_resources[name] -= count
        self.free -= slots
        self.attempts[i] += 1
        job = self._job(i, lease)
        self.running[job.id] = (i, slots, lease)
        self.order.append(spec.name)
        self.reporter.handle(
            TaskStarted(
                spec.name,
                spec.label,
                self.attempts[i],
                lease.cores if lease else (),
                self.plan.reasons.get(i, ()) if self.explain else (),
            )
        )
        self.executor.submit(job)
        return True

    def _job(self, i: int, lease: Lease | None) -> Job:
        g = self.graph
        spec = g.specs[i]
        env = dict(self.base_env)
        if spec.env:
            env.update(spec.env)
        env["DAGRUN_TASK"] = spec.name
        env["DAGRUN_KEY"] = self.keys[i] or ""
        env["DAGRUN_EXECUTOR"] = spec.executor
        cores: tuple[int, ...] = ()
        node = None
        if lease is not None:
            cores, node = lease.cores, lease.node
            env["DAGRUN_CORES"] = ",".join(map(str, cores))
            if node is not None:
                env["DAGRUN_NUMA_NODE"] = str(node)
        self.next_id += 1
        cwd = g.root if spec.cwd == "." else os.path.join(g.root, spec.cwd)
        return Job(
            id=self.next_id,
            task=spec.name,
            cmd=spec.cmd,
            cwd=cwd,
            env=env,
            run_dir=os.path.join(self.runs_dir, run_dir_name(spec.name)),
            timeout=spec.timeout,
            outputs=tuple(os.path.join(g.root, o) for o in spec.outputs),
            cores=cores,
            numa_node=node,
        )

    def _finished(self, outcome: Outcome, interrupted: bool = False) -> None:
        i, slots, lease = self.running.pop(outcome.job_id)
        self.free += slots
        spec = self.graph.specs[i]
        for name, count in spec.resources:
            self.free_resources[name] += count
        if lease is not None and self.leases is not None:
            self.leases.release(lease)
        # an end seen after Ctrl-C may be a task's trap exiting 0 half-way: never log it as done
        ok = outcome.ok and not interrupted
        error = outcome.error
        if ok and self.on_success is not None:
            problem = self.on_success(i, outcome)
            if problem is not None:
                ok, error = False, problem
        retry = False
        if ok:
            self.status[i] = "succeeded"
            for j in self.graph.dependents[i]:
                if self.in_plan[j]:
                    self.waiting[j] -= 1
                    if self.waiting[j] == 0 and j not in self.blocked_by:
                        heapq.heappush(self.ready, (-self.priority[j], self.pos[j], j))
        elif not interrupted and not self.stopping and self.attempts[i] <= spec.retries:
            retry = True
            heapq.heappush(self.ready, (-self.priority[i], self.pos[i], i))
        else:
            self.status[i] = "failed"
            self.failures += 1
            self._block_dependents(i)
            if self.failures_allowed and self.failures >= self.failures_allowed:
                self.stopping = True
        if not retry:
            self.done += 1
        if interrupted and not ok:
            error = "interrupted"
        self.reporter.handle(
            TaskFinished(
                task=spec.name,
                label=spec.label,
                cmd=spec.cmd,
                ok=ok,
                exit_code=outcome.exit_code,
                duration=outcome.duration,
                stdout=outcome.stdout,
                stderr=outcome.stderr,
                timed_out=outcome.timed_out,
                error=error,
                will_retry=retry,
                done=self.done,
                total=len(self.plan.to_run),
            )
        )

    def _block_dependents(self, failed: int) -> None:
        name = self.graph.specs[failed].name
        stack = [failed]
        dependents = self.graph.dependents
        while stack:
            for j in dependents[stack.pop()]:
                if self.in_plan[j] and j not in self.blocked_by:
                    self.blocked_by[j] = name
                    stack.append(j)

    def _result(self, elapsed: float, interrupted: bool) -> BuildResult:
        specs = self.graph.specs
        succeeded = [specs[i].name for i in self.plan.to_run if self.status.get(i) == "succeeded"]
        failed = [specs[i].name for i in self.plan.to_run if self.status.get(i) == "failed"]
        not_run = []
        for i in self.plan.to_run:
            if i in self.status:
                continue
            not_run.append(specs[i].name)
            why = (
                f"dependency failed: {self.blocked_by[i]}"
                if i in self.blocked_by
                else "build stopped"
            )
            self.reporter.handle(TaskSkipped(specs[i].name, specs[i].label, why))
        self.reporter.handle(
            BuildFinished(
                len(succeeded),
                len(self.plan.up_to_date),
                len(failed),
                len(not_run),
                elapsed,
                interrupted,
            )
        )
        result = BuildResult(
            succeeded=tuple(succeeded),
            failed=tuple(failed),
            up_to_date=tuple(specs[i].name for i in self.plan.up_to_date),
            not_run=tuple(not_run),
            order=tuple(self.order),
            interrupted=interrupted,
            elapsed=elapsed,
            reasons={specs[i].name: r for i, r in self.plan.reasons.items()},
        )
        if interrupted:
            raise Interrupted("interrupted", result)
        return result
