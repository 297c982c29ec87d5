"""The scheduler's vocabulary: what it is given and gives back, and the pure parts of its loop.

Given: ``Limits`` (slots, resources, leases, groups), ``Policy`` (failures,
order, retries), ``Hooks`` (the reporter, stop flags, the shared cache's
lookups, steering) and the ledger it records through (ledger.py; ``Unrecorded`` in tests).  Given
back: a ``BuildResult``.  Pure helpers: the executor a task runs on, its run
folder's name (runs.py), its Job and environment, and critical-path priorities.
NamedTuples rather than dataclasses where each start pays for them
(bench/IMPORTS.md).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from .events import Event
from .executors import Job, Outcome
from .graph import BuildGraph
from .records import FUNCTION_POOL, TaskSpec
from .runs import run_dir_name

if TYPE_CHECKING:
    import random


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


class Waitable(Protocol):
    """What the loop waits on: an executor, or the shared cache's lookups (cache/)."""

    def fileno(self) -> int: ...

    def deadline(self) -> float | None: ...

    def collect(self) -> list[Outcome]: ...

    def cancel_all(self, *, force: bool = False) -> list[Outcome]: ...


class Lookups(Waitable, Protocol):
    """The shared cache as the scheduler sees it (cache.SharedCache)."""

    def wants(self, i: int) -> bool: ...

    def lookup(self, job_id: int, i: int) -> bool:
        """Start looking task ``i`` up; False when it is a miss known at once (it runs)."""


CACHE = "cache"  # the "executor" of a lookup in the shared cache


class Running(NamedTuple):
    """What a running job holds until it ends."""

    task: int
    executor: str
    slots: int
    lease: Lease | None
    started: float  # on the build's clock (``dagrun status``: elapsed)


@dataclass(frozen=True)
class BuildResult:
    """What a build did.  ``order`` lists tasks in the order they were started."""

    succeeded: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    up_to_date: tuple[str, ...] = ()
    not_run: tuple[str, ...] = ()
    restored: tuple[str, ...] = ()  # from the shared cache, not run
    order: tuple[str, ...] = ()
    interrupted: bool = False
    elapsed: float = 0.0
    reasons: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)  # function task -> its result

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_run and not self.interrupted

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if self.ok else 1


def executor_of(spec: TaskSpec) -> str:
    """The executor that runs a task (decided once: TaskSpec.runs_on)."""
    return spec.runs_on


def pool_of(executor: str) -> str:
    """The slots an executor's jobs take: the function pool's are the local ones."""
    return "local" if executor == FUNCTION_POOL else executor


MAX_LOST = 3  # a job lost this many times (connection, worker) fails instead of running again
MAX_RETRIES = 100  # the manifest refuses more; the scheduler bounds it too


class TaskState(Enum):
    """How a task of the plan ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UP_TO_DATE = "up to date"  # planned as "may run", found up to date when it became ready
    RESTORED = "restored"  # found in the shared cache


class StopFlag(threading.Event):
    """A threading.Event whose ``set()`` (from any thread) also wakes the scheduler's wait.

    The build stops as on Ctrl-C: running jobs are cancelled, Interrupted is raised.
    """

    def __init__(self) -> None:
        super().__init__()
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def set(self) -> None:
        super().set()
        if self._fd >= 0:
            os.eventfd_write(self._fd, 1)

    def clear(self) -> None:
        super().clear()
        try:
            os.eventfd_read(self._fd)
        except (BlockingIOError, OSError):
            pass

    def fileno(self) -> int:
        return self._fd

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1


class Limits(NamedTuple):  # not a dataclass: ~0.5 ms less per start (bench/IMPORTS.md)
    """How much may run at once.  ``jobs`` is the local limit (-j); other executors: their slots."""

    jobs: int
    resources: Mapping[str, int] = MappingProxyType({})  # [dagrun.resources]: global
    leases: Leases | None = None  # local cores; used by tasks of the executor named "local"
    slots: Mapping[str, int] = MappingProxyType({})  # per executor name, but "local"
    groups: Mapping[str, Any] = MappingProxyType({})  # name -> executors.group.Group


class Policy(NamedTuple):  # not a dataclass: ~0.5 ms less per start (bench/IMPORTS.md)
    """What to do when tasks fail, and in which order to start them."""

    failures_allowed: int = 1  # 0: keep going
    schedule: str = "critical-path"  # or "unweighted" / "fifo" for comparisons
    durations: Mapping[str, float] = MappingProxyType({})  # from the log: priorities
    explain: bool = False
    retry_backoff: float = 0.5  # seconds before the first retry; doubles, with jitter
    retry_backoff_max: float = 30.0
    max_lost: int = MAX_LOST


class Hooks(NamedTuple):  # not a dataclass: ~0.7 ms less per start (bench/IMPORTS.md)
    """Where the scheduler reports, and who may stop it."""

    reporter: Reporter
    before_wait: Callable[[], None] | None = None  # e.g. the status snapshot's flush
    stops: tuple[StopFlag, ...] = ()  # any of them set: stop as on Ctrl-C
    # the shared cache: a task is looked up there when it becomes ready (cache/)
    cache: Lookups | None = None
    steering: Steering | None = None  # requests from `dagrun status/tail/cancel` (steering.py)


class Unrecorded:
    """A ledger that records nothing (tests of the scheduler alone): what the scheduler asks of
    ledger.Ledger, from its loop (as Ninja's FinishCommand writes its log): ``started``
    before each attempt; ``succeeded`` after one exited 0 (None, or why it did not succeed
    after all: it then fails with that error); ``still_needed`` when a pending task becomes
    ready (False: up to date after all, early cutoff); ``result`` a function task's result
    digest as its success record holds it."""

    def started(self, i: int) -> None:
        pass

    def succeeded(self, i: int, outcome: Outcome) -> str | None:
        return None

    def still_needed(self, i: int) -> bool:
        return True

    def result(self, task: str) -> str:
        return ""


class Steering(Protocol):
    """Requests from outside (another thread): readable ``fileno()`` means ``serve`` has some.

    ``serve`` runs on the scheduler's thread, between two waits; ``job_ended`` is told
    of every job's end (a ``tail`` follows a job until then).
    """

    def fileno(self) -> int: ...

    def serve(self, scheduler: Any) -> None: ...  # the Scheduler (scheduler.py)

    def job_ended(self, job_id: int, state: str) -> None: ...

    @property
    def awaited(self) -> Mapping[int, Any]: ...  # tasks whose start someone waits for

    def job_started(self, scheduler: Any, i: int) -> None: ...


def job_env(
    spec: TaskSpec, base_env: Mapping[str, str], group: Any, where: str, key: str | None,
    lease: Lease | None,
) -> dict[str, str]:
    """A job's environment: the declared [env], a group member's, the task's, and DAGRUN_*."""
    env = dict(base_env)
    if group is not None:  # a member's env: where it runs, not part of the key
        env.update(group.env(where))
    if spec.env:
        env.update(spec.env)
    env["DAGRUN_TASK"] = spec.name
    env["DAGRUN_KEY"] = key or ""
    env["DAGRUN_EXECUTOR"] = spec.executor if group is None else where
    if lease is not None:
        env["DAGRUN_CORES"] = ",".join(map(str, lease.cores))
        if lease.node is not None:
            env["DAGRUN_NUMA_NODE"] = str(lease.node)
    return env


def job_of(
    g: BuildGraph, i: int, job_id: int, env: dict[str, str], lease: Lease | None,
    runs_dir: str, attempt: int, call: Any,
) -> Job:
    """The Job of one attempt at task ``i``."""
    spec = g.specs[i]
    return Job(
        id=job_id,
        task=spec.name,
        cmd=spec.cmd,
        root=g.root,
        cwd=spec.cwd,
        env=env,
        run_dir=os.path.join(runs_dir, run_dir_name(spec.name)),
        timeout=spec.timeout,
        inputs=g.sources[i] + tuple(o for d in g.deps[i] for o in g.specs[d].outputs),
        outputs=spec.outputs,
        threads=spec.threads,
        cores=lease.cores if lease is not None else (),
        numa_node=lease.node if lease is not None else None,
        attempt=attempt,
        call=call,
        depfile=spec.depfile,
        slurm=spec.slurm,
    )


def critical_path(
    g: BuildGraph, to_run: Sequence[int], below: Mapping[int, list[int]], policy: Policy
) -> list[float]:
    """Each task's priority: critical path by recorded durations (its own expected duration
    plus the longest chain below it); ``unweighted`` counts tasks; ``fifo``: none."""
    prio = [0.0] * len(g.specs)
    if policy.schedule == "fifo":  # ready tasks start in topological (manifest) order
        return prio
    durations = {} if policy.schedule == "unweighted" else policy.durations
    known = [durations[g.specs[i].name] for i in to_run if g.specs[i].name in durations]
    default = sum(known) / len(known) if known else 1.0
    for i in reversed(to_run):
        longest = 0.0
        for j in below[i]:
            if prio[j] > longest:
                longest = prio[j]
        prio[i] = durations.get(g.specs[i].name, default) + longest
    return prio


class Backoff:
    """A failed attempt's delay before its retry: exponential back-off with jitter,
    ``retry_backoff * 2**(n-1)``, capped at ``retry_backoff_max``, times 0.5..1."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._random: random.Random | None = None  # for the jitter, made when needed

    def delay(self, n: int) -> float:
        """The delay after the ``n``-th attempt failed."""
        p = self.policy
        delay: float = min(p.retry_backoff * 2 ** min(n - 1, 30), p.retry_backoff_max)
        if self._random is None:
            import random  # not at the top: ~0.9 ms of every build, for retries only

            self._random = random.Random()
        return delay * (0.5 + 0.5 * self._random.random())
