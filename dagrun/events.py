"""Small frozen records the scheduler emits and reporters render.

NamedTuples, not dataclasses: every build that runs a task imports them, and a
NamedTuple costs ~0.1 ms to create where a dataclass costs ~0.5-1 ms
(bench/IMPORTS.md).  Nothing copies (``replace``) or compares them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple


class Planned(NamedTuple):
    """What a build selected, by reference (no copies: a 100k-task build pays nothing for it).

    ``specs`` are the graph's TaskSpecs; ``to_run`` and ``up_to_date`` index into
    them; ``keys`` and ``reasons`` (why each task runs) too.
    """

    specs: Sequence[Any]
    to_run: Sequence[int]
    up_to_date: Sequence[int]
    keys: Sequence[str | None]
    reasons: Mapping[int, tuple[str, ...]] = MappingProxyType({})


class BuildStarted(NamedTuple):
    total: int  # tasks to run
    up_to_date: int
    jobs: int
    planned: Planned | None = None  # what runs and what is up to date, for reports


class TaskStarted(NamedTuple):
    task: str
    label: str
    attempt: int
    cores: tuple[int, ...] = ()
    reasons: tuple[str, ...] = ()  # filled when --explain is on
    executor: str = "local"


class TaskFinished(NamedTuple):
    task: str
    label: str
    cmd: str
    ok: bool
    exit_code: int | None  # negative: killed by that signal; None: never started
    duration: float
    stdout: str
    stderr: str
    timed_out: bool = False
    error: str | None = None  # dagrun's own reason it could not run the command
    will_retry: bool = False
    done: int = 0  # finished so far, counting this one
    total: int = 0
    maxrss_kb: int = 0
    attempt: int = 1
    max_attempts: int = 1  # retries + 1
    interrupted: bool = False  # killed by Ctrl-C / SIGTERM, not a failure of its own
    executor: str = "local"
    cores: tuple[int, ...] = ()  # the local cores it held
    restored: bool = False  # from the shared cache: nothing ran (stdout, stderr: the run's)


class TaskPlaced(NamedTuple):
    """A started task's job got a name of its executor's own (a Slurm job id)."""

    task: str
    executor: str
    ref: str


class TaskSkipped(NamedTuple):
    task: str
    label: str
    why: str  # "dependency failed: x" or "build stopped"


class TaskCutOff(NamedTuple):
    """A task planned as "may run" that was up to date when it became ready (early cutoff)."""

    task: str
    label: str
    done: int = 0
    total: int = 0


class TaskStalled(NamedTuple):
    """A running task printed nothing and used no CPU for ``seconds`` (its ``stall_warning``)."""

    task: str
    label: str
    seconds: float


class BuildFinished(NamedTuple):
    succeeded: int
    up_to_date: int
    failed: int
    not_run: int
    elapsed: float
    interrupted: bool = False
    restored: int = 0  # tasks restored from the shared cache (not in succeeded)


Event = (
    BuildStarted | TaskStarted | TaskPlaced | TaskFinished | TaskSkipped | TaskCutOff
    | TaskStalled
    | BuildFinished
)
