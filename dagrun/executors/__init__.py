"""The Executor seam: where jobs run.  The scheduler submits Jobs and waits for Outcomes.

An executor starts what it is given at once (the scheduler owns the limits),
reports each job's end exactly once through ``wait``, and kills what it runs
on ``cancel``.  A failed command is an Outcome, not an exception; an executor
raises ExecutorError only when it cannot run anything at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Job:
    """One attempt at running one task."""

    id: int
    task: str
    cmd: str
    cwd: str  # absolute
    env: Mapping[str, str]  # the whole environment of the command
    run_dir: str  # where command.txt, stdout.txt, stderr.txt go
    timeout: float | None = None
    outputs: tuple[str, ...] = ()  # absolute; their folders are made before the command runs
    cores: tuple[int, ...] = ()
    numa_node: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job ended."""

    job_id: int
    exit_code: int | None  # negative: killed by that signal; None: could not start
    duration: float
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    maxrss_kb: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class Executor(Protocol):
    name: str

    def submit(self, job: Job) -> None:
        """Start the job now."""

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        """Block until at least one job ends (or timeout); return the ends seen."""

    def cancel(self, *, force: bool = False) -> list[Outcome]:
        """Kill every running job (``force``: at once, no grace) and return their outcomes."""

    def close(self) -> None: ...
