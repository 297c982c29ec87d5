"""FakeExecutor: runs jobs through a behaviour function, records everything, spawns nothing.

    def handler(job):                # -> int exit code, or an Outcome, or a (code, stdout) pair
        fs.write("out/" + job.task, "x")
        return 0

    ex = FakeExecutor(handler, clock=fake_clock, duration=1.0)

Jobs end in the order they were submitted, each ``duration`` seconds of fake
time after it started (``durations`` per task overrides), so tests see
deterministic orders and can count how many ran at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..clock import FakeClock
from . import Job, Outcome


class FakeExecutor:
    name = "fake"

    def __init__(
        self,
        handler: Callable[[Job], Any] | None = None,
        *,
        clock: FakeClock | None = None,
        duration: float = 1.0,
        durations: Mapping[str, float] | None = None,
        max_active: int | None = None,
    ) -> None:
        self.handler = handler or (lambda job: 0)
        self.clock = clock or FakeClock()
        self.duration = duration
        self.durations = dict(durations or {})
        self.max_active = max_active
        self.jobs: list[Job] = []
        self.started: list[str] = []  # task names, in start order
        self.finished: list[str] = []
        self.intervals: dict[str, tuple[float, float]] = {}
        self.peak = 0
        self.cancelled: list[str] = []
        self._active: list[tuple[float, int, Job]] = []  # (end time, seq, job)
        self._seq = 0

    def submit(self, job: Job) -> None:
        if self.max_active is not None and len(self._active) >= self.max_active:
            raise AssertionError(f"more than {self.max_active} jobs at once")
        self.jobs.append(job)
        self.started.append(job.task)
        end = self.clock.now() + self.durations.get(job.task, self.duration)
        self._seq += 1
        self._active.append((end, self._seq, job))
        self.peak = max(self.peak, len(self._active))

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        if not self._active:
            return []
        self._active.sort(key=lambda a: (a[0], a[1]))
        end, _, job = self._active.pop(0)
        start = end - self.durations.get(job.task, self.duration)
        if end > self.clock.now():
            self.clock.advance(end - self.clock.now())
        self.finished.append(job.task)
        self.intervals[job.task] = (start, end)
        return [self._outcome(job, self.handler(job), end - start)]

    @staticmethod
    def _outcome(job: Job, result: Any, duration: float) -> Outcome:
        if isinstance(result, Outcome):
            return result
        if isinstance(result, tuple):
            code, out = result
            return Outcome(job.id, code, duration, stdout=out)
        return Outcome(job.id, int(result or 0), duration)

    def cancel_all(self, *, force: bool = False) -> list[Outcome]:
        outs = [Outcome(job.id, -15, 0.0) for _, _, job in self._active]
        self.cancelled.extend(job.task for _, _, job in self._active)
        self._active.clear()
        return outs

    def close(self) -> None:
        self._active.clear()

    @property
    def running(self) -> int:
        return len(self._active)
