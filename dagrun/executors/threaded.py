"""Executors whose jobs run in threads (SSH, Dask, ...): outcomes posted to a queue + an eventfd.

The scheduler waits on ``fileno()`` with everything else it waits on; the
threads never touch the completion log or the reporters (they stay on the
scheduler's thread).

    class MyExecutor(ThreadedExecutor):
        def run(self, job, cancel):          # in a worker thread
            ...                              # poll cancel.is_set(); kill the remote group if so
            return Outcome(job.id, code, duration, stdout, stderr)
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable

from . import Executor, Job, Outcome, cancel_all


class Completions:
    """Outcomes handed from worker threads to the scheduler's thread, with an eventfd to wake it."""

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._queue: deque[Outcome] = deque()
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self._fd

    def post(self, outcome: Outcome) -> None:
        """From any thread."""
        with self._lock:
            first = not self._queue
            self._queue.append(outcome)
        if first:  # one wake-up per batch: the reader takes the whole queue
            os.eventfd_write(self._fd, 1)

    def __len__(self) -> int:
        """How many outcomes are waiting to be taken."""
        return len(self._queue)

    def take(self) -> list[Outcome]:
        """Everything posted so far; never blocks."""
        try:
            os.eventfd_read(self._fd)
        except BlockingIOError:
            pass
        with self._lock:
            out = list(self._queue)
            self._queue.clear()
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def wait_on(
    executor: Executor, busy: Callable[[], bool], timeout: float | None = None
) -> list[Outcome]:
    """An executor's ``wait`` from its ``fileno``/``collect``: block until outcomes come (or
    ``timeout``); ``busy`` says whether it still has jobs that will end."""
    end = None if timeout is None else time.monotonic() + timeout
    while busy():
        left = None if end is None else max(0.0, end - time.monotonic())
        select.select([executor.fileno()], [], [], left)
        outcomes = executor.collect()
        if outcomes or (end is not None and time.monotonic() >= end):
            return outcomes
    return []


class ThreadedExecutor:
    """A thread per running job; subclasses implement ``run(job, cancel) -> Outcome``.

    ``cancel`` is set when the job must stop (``cancel``, ``cancel_all``, close);
    ``run`` must then kill what it started and return soon (at once when ``force``
    is set: ``cancel_all(force=True)``).  An exception
    escaping ``run`` ends the job as lost (the scheduler retries it a bounded
    number of times), with the exception as its error.
    """

    name = "threaded"

    def __init__(self, name: str, slots: int) -> None:
        self.name = name
        self.slots = slots
        self.completions = Completions()
        self._cancels: dict[int, threading.Event] = {}
        self._threads: dict[int, threading.Thread] = {}
        self.force = threading.Event()  # set by cancel_all(force=True): no grace period

    # -- subclasses

    def run(self, job: Job, cancel: threading.Event) -> Outcome:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self) -> None:
        """Check the backend; subclasses raise ExecutorError when it cannot be used."""

    # -- the protocol

    @property
    def running(self) -> int:
        return len(self._threads)

    def fileno(self) -> int:
        return self.completions.fileno()

    def deadline(self) -> float | None:
        return None

    def submit(self, job: Job) -> None:
        cancel = threading.Event()
        thread = threading.Thread(
            target=self._work, args=(job, cancel), name=f"dagrun-{self.name}-{job.id}", daemon=True
        )
        self._cancels[job.id] = cancel
        self._threads[job.id] = thread
        thread.start()

    def _work(self, job: Job, cancel: threading.Event) -> None:
        started = time.monotonic()
        try:
            outcome = self.run(job, cancel)
        except Exception as exc:  # noqa: BLE001 - a broken connection must not kill the build
            outcome = Outcome(
                job.id, None, time.monotonic() - started, error=f"{type(exc).__name__}: {exc}",
                lost=True,
            )
        self.completions.post(outcome)

    def collect(self) -> list[Outcome]:
        outcomes = self.completions.take()
        for o in outcomes:
            self._cancels.pop(o.job_id, None)
            thread = self._threads.pop(o.job_id, None)
            if thread is not None:
                thread.join()
        return outcomes

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        """Block until a job ends (or ``timeout``); a single caller's way (see wait_on)."""
        return wait_on(self, lambda: bool(self._threads), timeout)

    def cancel(self, job_id: int) -> None:
        event = self._cancels.get(job_id)
        if event is not None:
            event.set()

    def cancel_all(self, *, force: bool = False) -> list[Outcome]:
        """Set every job's cancel (``force``: ``run`` kills at once, no grace) and wait for the
        threads.  Interrupted, the outcomes stay queued for the next call (forced)."""
        if force:
            self.force.set()
        for event in self._cancels.values():
            event.set()
        while any(thread.is_alive() for thread in self._threads.values()):
            for thread in list(self._threads.values()):
                thread.join(timeout=0.1)
        return self.collect()

    def close(self) -> None:
        if self._threads:
            cancel_all(self, force=True)  # a Ctrl-C meanwhile: it goes on
        self.completions.close()
