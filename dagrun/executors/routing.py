"""A bridge until the scheduler drives many executors itself: function jobs to the pool.

TRANSITIONAL.  The current scheduler drives one executor; this one sends each
job whose task is a Python function (``job.call`` set) to the FunctionPool
and every other job to the command executor, and waits on both file
descriptors at once.  The many-executor scheduler replaces it: there, a
function task's executor is the pool (type "local") or Dask, chosen per task.
"""

from __future__ import annotations

import select
import time

from . import Executor, Job, Outcome
from .pyfunc import FunctionPool


class FunctionRouter:
    """Command jobs to ``commands``, function jobs to ``functions``: one Executor to its caller."""

    def __init__(self, commands: Executor, functions: FunctionPool) -> None:
        self.commands = commands
        self.functions = functions
        self.name = commands.name
        self._where: dict[int, Executor] = {}

    @property
    def slots(self) -> int:
        return self.commands.slots

    def start(self) -> None:
        self.commands.start()

    def fileno(self) -> int:
        return self.commands.fileno()

    def deadline(self) -> float | None:
        times = [t for t in (self.commands.deadline(), self.functions.deadline()) if t is not None]
        return min(times) if times else None

    def submit(self, job: Job) -> None:
        executor: Executor = self.functions if job.call is not None else self.commands
        self._where[job.id] = executor
        executor.submit(job)

    def _ended(self, outcomes: list[Outcome]) -> list[Outcome]:
        for o in outcomes:
            self._where.pop(o.job_id, None)
        return outcomes

    def collect(self) -> list[Outcome]:
        return self._ended(self.commands.collect() + self.functions.collect())

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        busy = set(self._where.values())
        if len(busy) <= 1:
            only = busy.pop() if busy else self.commands
            return self._ended(only.wait(timeout))
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            outcomes = self.collect()
            now = time.monotonic()
            if outcomes or (end is not None and now >= end):
                return outcomes
            wake = self.deadline()
            if end is not None:
                wake = end if wake is None else min(wake, end)
            fds = [self.commands.fileno(), self.functions.fileno()]
            select.select(fds, [], [], None if wake is None else max(0.0, wake - now))

    def cancel(self, job_id: int) -> None:
        executor = self._where.get(job_id)
        if executor is not None:
            executor.cancel(job_id)

    def cancel_all(self, *, force: bool = False) -> list[Outcome]:
        outcomes = self.functions.cancel_all(force=force)
        return self._ended(outcomes + self.commands.cancel_all(force=force))

    def close(self) -> None:
        try:
            self.functions.close()
        finally:
            self.commands.close()
