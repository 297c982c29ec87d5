"""Small frozen records the scheduler emits and reporters render."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BuildStarted:
    total: int  # tasks to run
    up_to_date: int
    jobs: int


@dataclass(frozen=True, slots=True)
class TaskStarted:
    task: str
    label: str
    attempt: int
    cores: tuple[int, ...] = ()
    reasons: tuple[str, ...] = ()  # filled when --explain is on
    executor: str = "local"


@dataclass(frozen=True, slots=True)
class TaskFinished:
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
    executor: str = "local"
    cores: tuple[int, ...] = ()  # the local cores it held


@dataclass(frozen=True, slots=True)
class TaskSkipped:
    task: str
    label: str
    why: str  # "dependency failed: x" or "build stopped"


@dataclass(frozen=True, slots=True)
class BuildFinished:
    succeeded: int
    up_to_date: int
    failed: int
    not_run: int
    elapsed: float
    interrupted: bool = False


Event = BuildStarted | TaskStarted | TaskFinished | TaskSkipped | BuildFinished
