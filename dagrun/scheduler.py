"""Runs a Plan through its executors: ready queue, slots, leases, failure policy, events.

The loop, as in Ninja's Builder::Build: start as many ready tasks as the
limits allow, then wait for one to end and account for it; repeat until
nothing runs.  Every executor has its own slots (``-j`` is the local one's);
local cores are leased for local tasks only; ``[dagrun.resources]`` pools are
global.  The wait is one epoll over every executor's ``fileno()`` (and a stop
flag's), with a timeout at the earliest executor deadline or retry back-off.
Outcomes are accounted for here: the loop writes each success to the ledger
(ledger.py, as Ninja's FinishCommand writes its log) and reports it, so the log
and the reporters stay on this thread.

A failed attempt is retried (``retries``, at most MAX_RETRIES) after an
exponential back-off with jitter; a *lost* attempt (connection dropped) runs
again at once without using a retry, up to ``max_lost`` times; it is never
logged.  An executor whose ``submit`` raises stops the build: running jobs are
cancelled, the summary is reported, and ExecutorError is raised.  Ready tasks
are ordered by critical path (scheduling.critical_path): long chains first.
What the scheduler is given and gives back is in scheduling.py.
"""

from __future__ import annotations

import heapq
import os
import select
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from . import events
from .clock import Clock
from .errors import ExecutorError, Interrupted, LogError
from .events import (
    BuildFinished,
    BuildStarted,
    TaskCutOff,
    TaskFinished,
    TaskPlaced,
    TaskSkipped,
    TaskStarted,
)
from .executors import Executor, Job, Outcome, cancel_all
from .graph import BuildGraph
from .ledger import Ledger
from .plan import Plan
from .pycall import RESULTS, make_call
from .records import FUNCTION_POOL
from .runs import run_dir_name  # its home is runs.py; imported from here too
from .scheduling import (  # the scheduler's vocabulary, named from here by its users too
    CACHE,
    MAX_LOST,
    MAX_RETRIES,
    Backoff,
    BuildResult,
    Hooks,
    Lease,
    Leases,
    Limits,
    Lookups,
    Policy,
    Reporter,
    Running,
    Steering,
    StopFlag,
    TaskState,
    Unrecorded,
    Waitable,
    critical_path,
    executor_of,
    job_env,
    job_of,
    pool_of,
)

__all__ = [
    "FUNCTION_POOL", "MAX_LOST", "MAX_RETRIES", "BuildResult", "Hooks", "Lease", "Leases",
    "Ledger", "Limits", "Lookups", "Policy", "Reporter", "Scheduler", "Steering", "StopFlag",
    "TaskState", "Unrecorded", "Waitable", "executor_of", "run_dir_name",
]


class Scheduler:
    """Runs ``plan.to_run`` on the executors named by its tasks, each within its slots.

    ``executors`` maps executor names to executors; one Executor alone serves every
    task (tests).  The loop waits on every executor's ``fileno()`` in one epoll.
    """

    def __init__(
        self,
        graph: BuildGraph,
        plan: Plan,
        keys: list[str | None],
        executors: Executor | Mapping[str, Executor],
        *,
        limits: Limits,
        hooks: Hooks,
        clock: Clock,
        ledger: Ledger | Unrecorded | None = None,
        policy: Policy | None = None,
        base_env: Mapping[str, str] | None = None,  # the declared [env]; executors add their own
        runs_dir: str,
        started: float | None = None,  # the clock when the build began (executors' start-up)
    ) -> None:
        self.graph = graph
        self.started = started
        self.plan = plan
        self.keys = keys
        if isinstance(executors, Mapping):
            self.executors: dict[str, Executor] = dict(executors)
            self._only: Executor | None = None
        else:
            self.executors = {"local": executors}
            self._only = executors
        self.limits = limits
        self.jobs = max(1, limits.jobs)
        self.policy = policy or Policy()
        self.hooks = hooks
        self.ledger = ledger if ledger is not None else Unrecorded()
        self.reporter = hooks.reporter
        self.clock = clock
        self.base_env = base_env or {}
        self.runs_dir = runs_dir
        self.leases = limits.leases
        self.free_resources = dict(limits.resources)
        self._backoff = Backoff(self.policy)  # a retry's delay

    # -- the loop

    def run(self) -> BuildResult:
        self._setup()
        started = self.clock.now() if self.started is None else self.started  # wall time
        plan = self.plan
        planned = events.Planned(self.graph.specs, plan.to_run, plan.up_to_date, self.keys,
                                 plan.reasons)
        self.reporter.handle(
            BuildStarted(len(plan.to_run), len(plan.up_to_date), self.jobs, planned)
        )
        interrupted = False
        failure: Exception | None = None
        try:
            with self._poller() as poll:
                while True:
                    failure = self._start_ready()
                    if failure is not None:
                        self._cancel_everything(str(failure))
                        break
                    if not self.running and not self.backoff:
                        break
                    if self._wait(poll):
                        interrupted = True
                        self._cancel_everything("interrupted", interrupted=True)
                        break
        except (KeyboardInterrupt, SystemExit):  # a library's sys.exit() too: never a success
            interrupted = True
            self._cancel_everything("interrupted", interrupted=True)
        result = self._result(self.clock.now() - started, interrupted)
        if failure is not None:
            raise failure
        return result

    def _setup(self) -> None:
        n = len(self.graph.specs)
        self._link_plan(n)
        self._queue_first()
        # the function pool ("python") shares the local slots: one -j for commands and functions
        self.free = {pool_of(name): self._slots_of(pool_of(name)) for name in self.executors}
        self.has_io = any(self.graph.specs[i].io_bound for i in self.plan.to_run)
        self.running: dict[int, Running] = {}  # job id -> what it holds
        self.attempts = [0] * n
        self.lost = [0] * n
        self.backoff: list[tuple[float, int]] = []  # (due on the clock, task): retries waiting
        self.status: dict[int, TaskState] = {}
        self.cut_off: list[int] = []  # found up to date when ready (early cutoff), not yet counted
        self.blocked_by: dict[int, str] = {}
        self.cancelled: dict[int, str] = {}  # job id -> why: `dagrun cancel` asked (cancel())
        self.withdrawn: set[int] = set()  # tasks cancelled before they started
        self.order: list[str] = []
        self.failures = 0
        self.stopping = False
        self.done = 0
        self.cut = 0  # tasks planned to run that early cutoff found up to date
        self.next_id = 0
        self.looked = bytearray(n)  # looked up in the shared cache already
        if self.hooks.cache is not None:
            self._look_up_first()

    def _link_plan(self, n: int) -> None:
        """Each task of the plan: how many of its dependencies it waits for, the plan's tasks
        below it (graph.dependents, within the plan: a partial build's plan is a few tasks of a
        large graph), and its priority."""
        g, to_run = self.graph, self.plan.to_run
        self.in_plan = bytearray(n)
        for i in to_run:
            self.in_plan[i] = 1
        self.waiting = [0] * n
        self.below: dict[int, list[int]] = {i: [] for i in to_run}
        for i in to_run:
            above = [d for d in g.deps[i] if self.in_plan[d]]
            self.waiting[i] = len(above)
            for d in above:
                self.below[d].append(i)
        self.priority = critical_path(g, to_run, self.below, self.policy)
        self.pos = {i: pos for pos, i in enumerate(to_run)}

    def _queue_first(self) -> None:
        """One ready queue per executor (and group), so a full one never holds up another's
        tasks; the tasks that wait for nothing go in."""
        self.groups = {} if self._only is not None else dict(self.limits.groups)
        self.ran_on: dict[int, str] = {}  # task -> the group member it succeeded on
        self.ready: dict[str, list[tuple[float, int, int]]] = {
            n: [] for n in (*self.executors, *self.groups)
        }
        for pos, i in enumerate(self.plan.to_run):
            if self.waiting[i] == 0:
                self.ready[self._executor_of(i)].append((-self.priority[i], pos, i))
        for heap in self.ready.values():
            heapq.heapify(heap)

    def _look_up_first(self) -> None:
        """The tasks ready at the start go to the shared cache first: a hit takes no slot."""
        first = sorted(item for heap in self.ready.values() for item in heap)
        for heap in self.ready.values():
            heap.clear()
        for item in first:
            self._ready(item[2])

    def _slots_of(self, name: str) -> int:
        if name == "local" or self._only is not None:
            return self.jobs
        return max(1, self.limits.slots.get(name, self.executors[name].slots))

    @contextmanager
    def _poller(self) -> Iterator[select.epoll]:
        """One epoll over every executor's descriptor (and the stop flag's)."""
        poll = select.epoll()
        self._by_fd: dict[int, Waitable] = {}
        waited: list[Waitable] = list({id(e): e for e in self.executors.values()}.values())
        if self.hooks.cache is not None:
            waited.append(self.hooks.cache)
        try:
            for ex in waited:
                fd = ex.fileno()
                self._by_fd[fd] = ex
                poll.register(fd, select.EPOLLIN)
            for stop in self.hooks.stops:
                poll.register(stop.fileno(), select.EPOLLIN)
            self._steering_fd = -1
            if self.hooks.steering is not None:
                self._steering_fd = self.hooks.steering.fileno()
                poll.register(self._steering_fd, select.EPOLLIN)
            yield poll
        finally:
            poll.close()

    def _wait(self, poll: select.epoll) -> bool:
        """Wait for an end, a deadline or a retry's time; account for it.  True: stop asked."""
        if self.hooks.before_wait is not None:
            self.hooks.before_wait()
        deadlines = [(fd, ex, ex.deadline()) for fd, ex in self._by_fd.items()]
        wake = self._wake(deadlines)
        if wake is None:
            events = poll.poll()
        else:  # ask the clock only when nothing is ready (a fake clock jumps to ``wake``)
            # at most an hour at once: epoll refuses a timeout past ~24 days (a year's timeout)
            events = poll.poll(0) or poll.poll(min(self.clock.wait_time(wake), 3600.0))
        if any(stop.is_set() for stop in self.hooks.stops):
            return True
        ready = {fd for fd, _ in events}
        if self._steering_fd in ready and self.hooks.steering is not None:
            self.hooks.steering.serve(self)
        now = self.clock.now() if wake is not None else 0.0
        for fd, ex, due in deadlines:
            if fd in ready or (due is not None and due <= now):
                self._account(ex.collect())
        while self.backoff and self.backoff[0][0] <= now:
            _, i = heapq.heappop(self.backoff)
            self._ready(i)
        return False

    def _wake(self, deadlines: list[tuple[int, Waitable, float | None]]) -> float | None:
        """The earliest executor deadline or retry time, if any (the wait's timeout)."""
        wake = self.backoff[0][0] if self.backoff else None
        for _, _, due in deadlines:
            if due is not None and (wake is None or due < wake):
                wake = due
        return wake

    def _account(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if self.cancelled and outcome.job_id in self.cancelled:
                self._finished(outcome, cancelled=self.cancelled.pop(outcome.job_id))
            else:
                self._finished(outcome)

    def _cancel_everything(self, why: str, *, interrupted: bool = False) -> None:
        """Kill every running job on every executor; their ends count as failures (``why``)."""
        self.stopping = True
        self.backoff.clear()
        waited: list[Waitable] = list({id(e): e for e in self.executors.values()}.values())
        if self.hooks.cache is not None:
            waited.append(self.hooks.cache)
        force = False
        for ex in waited:
            outcomes, force = cancel_all(ex, force)
            for outcome in outcomes:
                if outcome.job_id in self.running:
                    self._finished(outcome, cancelled=why, interrupted=interrupted)

    def _start_ready(self) -> Exception | None:
        """Start what the limits allow; an executor's failure to take a job is returned."""
        if self.stopping:
            return None
        deferred = []
        failure = None
        for name, ready in self.ready.items():
            while ready and self._has_room(name) and failure is None:
                item = heapq.heappop(ready)
                started = self._try_start(item[2])
                if started is False:
                    deferred.append(item)
                elif started is not True:
                    failure = started
            for item in deferred:
                heapq.heappush(ready, item)
            deferred.clear()
            if failure is None and self.has_io and ready and not self._has_room(name):
                failure = self._start_io_bound(name)
        return failure

    def _has_room(self, name: str) -> bool:
        group = self.groups.get(name)
        return group.has_room(self.free) if group is not None else self.free[pool_of(name)] > 0

    def _member_for(self, i: int, name: str) -> str | None:
        """The member of group ``name`` that takes task ``i`` now (executors/group.py)."""
        spec = self.graph.specs[i]
        room = {m: self.free[m] for m in self.groups[name].members
                if self.free[m] >= min(spec.threads, self._slots_of(m))}
        near = [self.ran_on.get(d) for d in self.graph.deps[i]]
        member: str | None = self.groups[name].choose(room, 1, near)
        return member

    def _start_io_bound(self, name: str) -> Exception | None:
        """io_bound tasks take no slot: they start even when every slot is taken."""
        specs = self.graph.specs
        ready = self.ready[name]
        io = [item for item in ready if specs[item[2]].io_bound]
        if not io:
            return None
        ready[:] = [item for item in ready if not specs[item[2]].io_bound]
        heapq.heapify(ready)
        for item in io:
            started = self._try_start(item[2])
            if started is False:  # waiting for a resource
                heapq.heappush(ready, item)
            elif started is not True:
                return started
        return None

    def _executor_of(self, i: int) -> str:
        """The executor that runs task ``i``: a function task of a local executor runs in the
        function pool ("python"); in a test with one executor, that one."""
        return "local" if self._only is not None else executor_of(self.graph.specs[i])

    def _ready(self, i: int) -> None:
        cache = self.hooks.cache
        if cache is not None and not self.looked[i]:
            self.looked[i] = 1
            if cache.wants(i) and cache.lookup(self.next_id + 1, i):
                self.next_id += 1
                self.running[self.next_id] = Running(i, CACHE, 0, None, self.clock.now())
                return
        heapq.heappush(self.ready[self._executor_of(i)], (-self.priority[i], self.pos[i], i))

    def _try_start(self, i: int) -> bool | Exception:
        spec = self.graph.specs[i]
        name = self._executor_of(i)
        if name in self.groups:  # a member with room takes it, or it waits
            name = self._member_for(i, name) or ""
            if not name:
                return False
        free = self.free[pool_of(name)]
        # io_bound function tasks wait on I/O on the pool's event loop: no slot, no cores
        slots = 0 if spec.io_bound else min(spec.threads, self._slots_of(pool_of(name)))
        if slots > free:
            return False
        for resource, count in spec.resources:
            if self.free_resources.get(resource, 0) < count:
                return False
        lease = None
        if self.leases is not None and pool_of(name) == "local" and not spec.io_bound:
            lease = self.leases.try_grant(spec.threads, spec.numa_node)
            if lease is None:
                return False
        for resource, count in spec.resources:
            self.free_resources[resource] -= count
        self.free[pool_of(name)] = free - slots
        self.attempts[i] += 1
        job = self._job(i, lease, name)
        self.running[job.id] = Running(i, name, slots, lease, self.clock.now())
        self.order.append(spec.name)
        self.reporter.handle(
            TaskStarted(
                spec.name,
                spec.label,
                self.attempts[i],
                lease.cores if lease else (),
                self.plan.reasons.get(i, ()) if self.policy.explain else (),
                executor=name,
            )
        )
        return self._submit(i, job, name)

    def _submit(self, i: int, job: Job, name: str) -> bool | Exception:
        """Hand the job to its executor; one that refuses it stops the build (a group's member:
        the job is lost, and another member takes it)."""
        try:
            self.ledger.started(i)
            self.executors[name].submit(job)
        except Exception as exc:  # noqa: BLE001 - reported as an error, never a traceback
            if self._executor_of(i) in self.groups:
                self._finished(Outcome(job.id, None, 0.0, error=str(exc), lost=True))
                return True
            return self._submit_failed(job, name, exc)
        self._placed(job, name)
        steering = self.hooks.steering
        if steering is not None and steering.awaited:  # a `tail` waits for this task?
            steering.job_started(self, i)
        return True

    def _placed(self, job: Job, name: str) -> None:
        """An executor that names its jobs (a Slurm job id) says so: a TaskPlaced event."""
        job_ref = getattr(self.executors[name], "job_ref", None)
        ref = job_ref(job.id) if job_ref is not None else None
        if ref:
            self.reporter.handle(TaskPlaced(job.task, name, ref))

    def _submit_failed(self, job: Job, name: str, exc: Exception) -> Exception:
        """The executor could not take the job: it fails, and the build stops with an error."""
        message = f"executor '{name}' could not start task '{job.task}': {exc}"
        self.stopping = True
        self._finished(Outcome(job.id, None, 0.0, error=str(exc)))
        return exc if isinstance(exc, LogError) else ExecutorError(message)  # the log: as it is

    def _job(self, i: int, lease: Lease | None, where: str) -> Job:
        spec = self.graph.specs[i]
        env = job_env(spec, self.base_env, self.groups.get(spec.executor), where, self.keys[i],
                      lease)
        self.next_id += 1
        call = None
        if spec.call:  # its target, args and the keys of the results it receives
            results = os.path.join(os.path.dirname(self.runs_dir), RESULTS)  # .dagrun/results
            call = make_call(self.graph, i, self.keys, results, self.ledger.result)
        return job_of(self.graph, i, self.next_id, env, lease, self.runs_dir, self.attempts[i],
                      call)

    def _finished(
        self, outcome: Outcome, *, cancelled: str | None = None, interrupted: bool = False
    ) -> None:
        """A job ended: free what it held, record a success in the ledger (as Ninja's
        FinishCommand writes its log), decide the next step, report it."""
        run = self.running.pop(outcome.job_id)
        i = run.task
        if run.executor == CACHE:
            self._looked_up(i, outcome, cancelled)
            return
        self._release(run)
        ok, error = self._recorded(i, outcome, cancelled)
        if self.graph.specs[i].executor in self.groups:
            self._group_saw(i, run.executor, ok, outcome.lost and cancelled is None)
        retry, error = self._next_step(i, outcome, ok, error, cancelled)
        if not retry:
            self.done += 1
        if cancelled is not None and not ok:
            error = cancelled if interrupted or outcome.error is None else outcome.error
        if self.hooks.steering is not None:
            state = "succeeded" if ok else "retry" if retry else cancelled or "failed"
            self.hooks.steering.job_ended(outcome.job_id, state)
        self.reporter.handle(self._task_finished(run, outcome, ok, error, retry, interrupted))
        self._drain_cut_off()

    def _release(self, run: Running) -> None:
        """Give back a job's slots, resources and cores."""
        self.free[pool_of(run.executor)] += run.slots
        for resource, count in self.graph.specs[run.task].resources:
            self.free_resources[resource] += count
        if run.lease is not None and self.leases is not None:
            self.leases.release(run.lease)

    def _recorded(self, i: int, outcome: Outcome, cancelled: str | None) -> tuple[bool, str | None]:
        """(ok, error) of an attempt, its success written to the ledger: a success the ledger
        refuses (an output not written, a full disk) fails with its reason."""
        # an end seen after Ctrl-C may be a task's trap exiting 0 half-way: never log it as done
        if not outcome.ok or cancelled is not None:
            return False, outcome.error
        reason = self.ledger.succeeded(i, outcome)
        return (True, outcome.error) if reason is None else (False, reason)

    def _task_finished(
        self, run: Running, outcome: Outcome, ok: bool, error: str | None, retry: bool,
        interrupted: bool,
    ) -> TaskFinished:
        spec = self.graph.specs[run.task]
        return TaskFinished(
            task=spec.name, label=spec.label, cmd=spec.cmd, ok=ok, exit_code=outcome.exit_code,
            duration=outcome.duration, stdout=outcome.stdout, stderr=outcome.stderr,
            timed_out=outcome.timed_out, error=error, will_retry=retry, done=self.done,
            total=len(self.plan.to_run) - self.cut, maxrss_kb=outcome.maxrss_kb,
            attempt=self.attempts[run.task], max_attempts=spec.retries + 1,
            interrupted=interrupted and not ok, executor=run.executor,
            cores=run.lease.cores if run.lease is not None else (),
        )

    def _group_saw(self, i: int, member: str, ok: bool, lost: bool) -> None:
        """A group's task ended on ``member``: where it ran (its dependents' inputs are there),
        or that the member lost it (no new task of the group goes there)."""
        if ok:
            self.ran_on[i] = member
        elif lost:
            self.groups[self.graph.specs[i].executor].lost(member)

    def _next_step(
        self, i: int, outcome: Outcome, ok: bool, error: str | None, cancelled: str | None
    ) -> tuple[bool, str | None]:
        """After an attempt: done, run again (lost, or a retry later), or failed.  (retry, error)

        A task cancelled by `dagrun cancel` fails without counting towards
        ``failures_allowed``: the rest of the build goes on.
        """
        if ok:
            self._succeeded(i)
        elif outcome.lost and cancelled is None and not self.stopping:
            return self._lost(i, outcome)
        elif cancelled is None and not self.stopping and self._retries_left(i):
            self._retry_later(i)
            return True, error
        else:
            self._failed(i, counted=cancelled is None or self.stopping)
        return False, error

    def cancel(self, i: int, why: str = "cancelled") -> str:
        """Cancel task ``i`` (`dagrun cancel`): kill its running job, or withdraw it before it
        starts.  It fails (``why``), its dependents are not run, the rest goes on.  What
        happened, in words."""
        name = self.graph.specs[i].name
        if not self.in_plan[i]:
            return f"{name}: not part of this build"
        if i in self.status or i in self.withdrawn:
            return f"{name}: already {self.status.get(i, TaskState.FAILED).value}"
        for job_id, run in self.running.items():
            if run.task == i:
                if job_id not in self.cancelled:
                    self.cancelled[job_id] = why
                    if run.executor != CACHE:  # a lookup ends by itself; then it fails
                        self.executors[run.executor].cancel(job_id)
                return f"{name}: cancelled (killing it)"
        self.withdrawn.add(i)
        ready = self.ready[self._executor_of(i)]
        if any(item[2] == i for item in ready):
            ready[:] = [item for item in ready if item[2] != i]
            heapq.heapify(ready)
        if any(item[1] == i for item in self.backoff):
            self.backoff[:] = [item for item in self.backoff if item[1] != i]
            heapq.heapify(self.backoff)
        self.blocked_by.setdefault(i, why)  # never made ready
        self._block_dependents(i)
        return f"{name}: cancelled before it started"
    def _looked_up(self, i: int, outcome: Outcome, cancelled: str | None) -> None:
        """A lookup in the shared cache ended: a hit is done (restored), a miss runs."""
        if outcome.exit_code is None and cancelled is None:
            self._ready(i)
            return
        ok = outcome.ok and cancelled is None
        if ok and self.ledger.succeeded(i, outcome) is not None:
            self._ready(i)  # restored, but the ledger would not take it: it runs
            return
        self.done += 1
        spec = self.graph.specs[i]
        if ok:
            self._succeeded(i, TaskState.RESTORED)
        else:
            self._failed(i, counted=cancelled is None)  # `dagrun cancel`: the rest goes on
        self.reporter.handle(
            TaskFinished(
                spec.name, spec.label, spec.cmd, ok, outcome.exit_code, outcome.duration,
                outcome.stdout, outcome.stderr, error=cancelled or outcome.error, done=self.done,
                total=len(self.plan.to_run), executor=CACHE, restored=ok,
            )
        )
        self._drain_cut_off()

    def _succeeded(self, i: int, state: TaskState = TaskState.SUCCEEDED) -> None:
        self.status[i] = state
        for j in self.below[i]:
            self.waiting[j] -= 1
            if self.waiting[j] == 0 and j not in self.blocked_by:
                self._now_ready(j)

    def _now_ready(self, j: int) -> None:
        """A task whose dependencies are done: queued, unless the ledger finds it up to date."""
        if self.ledger.still_needed(j):
            self._ready(j)
        else:
            self.cut_off.append(j)  # reported after the task that released it

    def _drain_cut_off(self) -> None:
        """Take the tasks found up to date when they became ready out of the total (as Ninja
        does for a restat edge: ``[k/N]`` then counts only what runs), and release their
        dependents."""
        while self.cut_off:
            j = self.cut_off.pop()
            spec = self.graph.specs[j]
            self.cut += 1
            total = len(self.plan.to_run) - self.cut
            self.reporter.handle(TaskCutOff(spec.name, spec.label, self.done, total))
            self._succeeded(j, TaskState.UP_TO_DATE)

    def _failed(self, i: int, counted: bool = True) -> None:
        self.status[i] = TaskState.FAILED
        self.failures += counted
        self._block_dependents(i)
        allowed = self.policy.failures_allowed
        if allowed and self.failures >= allowed:
            self.stopping = True

    def _lost(self, i: int, outcome: Outcome) -> tuple[bool, str]:
        """A lost attempt runs again at once, without using a retry, up to ``max_lost`` times."""
        self.lost[i] += 1
        why = outcome.error or "the executor lost the job"
        if self.lost[i] >= self.policy.max_lost:
            self._failed(i)
            return False, f"lost {self.lost[i]} times, last: {why}"
        self._ready(i)
        return True, f"lost: {why}"

    def _retries_left(self, i: int) -> bool:
        retries = min(self.graph.specs[i].retries, MAX_RETRIES)
        return self.attempts[i] - self.lost[i] <= retries

    def _retry_later(self, i: int) -> None:
        delay = self._backoff.delay(self.attempts[i] - self.lost[i])
        if delay <= 0:
            self._ready(i)
        else:
            heapq.heappush(self.backoff, (self.clock.now() + delay, i))

    def _block_dependents(self, failed: int) -> None:
        name = self.graph.specs[failed].name
        stack = [failed]
        while stack:
            for j in self.below[stack.pop()]:
                if j not in self.blocked_by:
                    self.blocked_by[j] = name
                    stack.append(j)

    def _result(self, elapsed: float, interrupted: bool) -> BuildResult:
        """Report the tasks that did not run and the summary; the result (Interrupted, holding
        it, after Ctrl-C)."""
        specs, status, to_run = self.graph.specs, self.status, self.plan.to_run

        def named(state: TaskState) -> tuple[str, ...]:
            return tuple(specs[i].name for i in to_run if status.get(i) is state)

        succeeded, restored, failed = (named(TaskState.SUCCEEDED), named(TaskState.RESTORED),
                                       named(TaskState.FAILED))
        cut = [i for i in to_run if status.get(i) is TaskState.UP_TO_DATE]
        up_to_date = self.graph.names_of((*self.plan.up_to_date, *cut))
        not_run = self._not_run()
        self.reporter.handle(BuildFinished(len(succeeded), len(up_to_date), len(failed),
                                           len(not_run), elapsed, interrupted, len(restored)))
        result = BuildResult(
            succeeded=succeeded, failed=failed, up_to_date=up_to_date, not_run=not_run,
            restored=restored, order=tuple(self.order), interrupted=interrupted,
            elapsed=elapsed, reasons={specs[i].name: r for i, r in self.plan.reasons.items()},
        )
        if interrupted:
            raise Interrupted("interrupted", result)
        return result

    def _not_run(self) -> tuple[str, ...]:
        """The tasks of the plan that never ended, each reported with why (TaskSkipped)."""
        specs, not_run = self.graph.specs, []
        for i in self.plan.to_run:
            if i in self.status:
                continue
            not_run.append(specs[i].name)
            why = (
                self.blocked_by[i]
                if i in self.withdrawn
                else f"dependency failed: {self.blocked_by[i]}"
                if i in self.blocked_by
                else "build stopped"
            )
            self.reporter.handle(TaskSkipped(specs[i].name, specs[i].label, why))
        return tuple(not_run)
