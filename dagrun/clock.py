"""The Clock seam: the core asks it for time instead of calling time.monotonic()."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""

    def wall(self) -> float:
        """Seconds since the epoch (for log records)."""

    def wait_time(self, until: float) -> float:
        """Seconds to block (in a poll) for ``until`` to come; a fake clock moves there at once."""


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def wait_time(self, until: float) -> float:
        return max(0.0, until - time.monotonic())


class FakeClock:
    """Time that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return 1_700_000_000.0 + self._now

    def wait_time(self, until: float) -> float:
        if until > self._now:
            self._now = until
        return 0.0

    def advance(self, seconds: float) -> None:
        self._now += seconds
