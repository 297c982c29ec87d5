"""FakeExecutor: runs jobs through a behaviour function, records everything, spawns nothing.

    def handler(job):                # -> int exit code, or an Outcome, or a (code, stdout) pair
        fs.write("out/" + job.task, "x")
        return 0

    ex = FakeExecutor(handler, clock=fake_clock, duration=1.0)

Jobs end in the order they were submitted, each ``duration`` seconds of fake
time after it started (``durations`` per task overrides), so tests see
deterministic orders and can count how many ran at once.  Its ``fileno()`` is
readable while jobs are active: each ``collect()`` ends the earliest one,
moving the fake clock to its end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from ..clock import FakeClock
from . import Job, Outcome


class FakeExecutor:
    """A scripted executor; ``handler(job)`` decides each job's outcome when it ends."""

    def __init__(
        self,
        handler: Callable[[Job], Any] | None = None,
        *,
        clock: FakeClock | None = None,
        duration: float = 1.0,
        durations: Mapping[str, float] | None = None,
        max_active: int | None = None,
        name: str = "fake",
        slots: int = 1,
    ) -> None:
        self.name = name
        self.slots = slots
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.cancel_requests: list[str] = []
        self.handler = handler or (lambda job: 0)
        self.clock = clock or FakeClock()
        self.duration = duration
        self.durations = dict(durations or {})
        self.max_active = max_active
        self.jobs: list[Job] = []
        self.started: list[str] = []  # task names, in start order
        self.finished: list[str] = []
        self.intervals: dict[str, tuple[float, float]] = {}  # each task's last attempt
        self.spans: list[tuple[str, float, float]] = []  # every attempt, in the order they ended
        self.peak = 0
        self.cancelled: list[str] = []
        self._active: list[tuple[float, int, Job]] = []  # (end time, seq, job)
        self._seq = 0
        self._starts: dict[int, float] = {}
        self._killed: set[int] = set()

    def submit(self, job: Job) -> None:
        if self.max_active is not None and len(self._active) >= self.max_active:
            raise AssertionError(f"more than {self.max_active} jobs at once")
        self.jobs.append(job)
        self.started.append(job.task)
        end = self.clock.now() + self.durations.get(job.task, self.duration)
        self._seq += 1
        self._starts[job.id] = self.clock.now()
        self._active.append((end, self._seq, job))
        self.peak = max(self.peak, len(self._active))
        os.eventfd_write(self._fd, 1)

    def start(self) -> None:
        pass

    def fileno(self) -> int:
        return self._fd

    def deadline(self) -> float | None:
        return None

    def collect(self) -> list[Outcome]:
        outcomes = self.wait()
        if not self._active:
            try:
                os.eventfd_read(self._fd)
            except BlockingIOError:
                pass
        return outcomes

    def cancel(self, job_id: int) -> None:
        """Ends the job at once as killed by SIGTERM (its outcome comes through collect)."""
        for n, (_, seq, job) in enumerate(self._active):
            if job.id == job_id:
                self.cancel_requests.append(job.task)
                self._killed.add(job_id)
                self._active[n] = (self.clock.now(), seq, job)

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        if not self._active:
            return []
        self._active.sort(key=lambda a: (a[0], a[1]))
        end, _, job = self._active.pop(0)
        start = self._starts.pop(job.id)
        if end > self.clock.now():
            self.clock.advance(end - self.clock.now())
        self.finished.append(job.task)
        self.intervals[job.task] = (start, end)
        self.spans.append((job.task, start, end))
        if job.id in self._killed:
            self._killed.discard(job.id)
            return [Outcome(job.id, -15, end - start)]
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
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def running(self) -> int:
        return len(self._active)
