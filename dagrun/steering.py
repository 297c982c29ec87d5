"""Requests to a running build (`dagrun status`, `tail`, `cancel`), answered on its own thread.

The control server (control.py) runs in a thread of its own; it never touches
the scheduler's state.  It posts a Request to the Mailbox, whose eventfd is
one more descriptor in the scheduler's epoll: the scheduler wakes, calls
``serve``, and answers every request between two waits, from what it knows
(its running jobs, ready queues, attempts) and what each executor can tell of
a job.  A build that nobody asks pays next to nothing: no snapshot is
written; the control thread wakes only for the stall check (every tenth of
``stall_warning``, at most every 10 s), one scan of /proc.

Executors may offer, beyond the protocol (executors/__init__.py), four
optional methods, looked up with ``getattr`` (``job_``: ssh.py has a ``where`` already):

- ``job_where(job_id) -> str | None``: where the job runs now ("pid 123",
  "worker w1", "ssh host", a Slurm job id); None: it waits for a worker;
- ``job_output(job_id) -> (stdout, stderr) | None``: its output so far, each
  an open descriptor of the executor's (read with ``pread``; duplicated here
  before it leaves this thread) or the path of a file being written;
- ``connected_workers() -> list[str]``: the workers connected now (pull and cluster
  executors);
- ``job_cpu_time(job_id) -> float | None``: CPU seconds the job used so far (the
  stall check watches only jobs whose executor can tell: local ones).
"""

from __future__ import annotations

import heapq
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from .scheduler import run_dir_name

if TYPE_CHECKING:
    from .scheduler import Scheduler

LAST_LINE_BYTES = 4096  # read from the end of a running job's output for its last line
QUEUED_SHOWN = 50  # queued task names in one status answer (the count is always there)
Source = int | str  # an open descriptor (ours to close) or a path


class Request(NamedTuple):
    kind: str  # "status", "cancel", "follow", "stall"
    arg: Any
    answered: threading.Event
    answer: list[Any]  # filled by serve(): [answer]


class Mailbox:
    """Requests from other threads to the scheduler's thread; the Steering the scheduler serves."""

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._queue: deque[Request] = deque()
        self._lock = threading.Lock()
        self.ended: dict[int, str] = {}  # job id -> how it ended, for jobs being followed
        self.followed: set[int] = set()
        self.awaited: dict[int, list[Request]] = {}  # task -> follows waiting for its start
        self.ended_cond = threading.Condition(self._lock)
        self.closed = False
        self.stalls = StallWatch()

    def fileno(self) -> int:
        return self._fd

    def ask(self, kind: str, arg: Any = None, timeout: float | None = 5.0) -> Any:
        """Post a request and wait for the scheduler's answer (None: it did not answer)."""
        request = Request(kind, arg, threading.Event(), [])
        with self._lock:
            if self.closed:
                return None
            self._queue.append(request)
            os.eventfd_write(self._fd, 1)
        if not request.answered.wait(timeout):
            return None
        return request.answer[0]

    def serve(self, scheduler: Scheduler) -> None:
        try:
            os.eventfd_read(self._fd)
        except (BlockingIOError, OSError):
            pass
        while True:
            with self._lock:
                if not self._queue:
                    return
                request = self._queue.popleft()
            try:
                answer = _HANDLERS[request.kind](self, scheduler, request.arg)
            except Exception as exc:  # noqa: BLE001 - a bad request must not stop the build
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            if answer is _LATER:  # a follow of a queued task: answered when it starts
                self.awaited.setdefault(scheduler.graph.index[request.arg[0]], []).append(request)
                continue
            request.answer.append(answer)
            request.answered.set()

    def job_started(self, scheduler: Scheduler, i: int) -> None:
        """Task ``i`` started: answer the follows that waited for it (``awaited``)."""
        for request in self.awaited.pop(i, ()):
            request.answer.append(_follow(self, scheduler, request.arg))
            request.answered.set()

    def job_ended(self, job_id: int, state: str) -> None:
        if self.followed and job_id in self.followed:
            with self.ended_cond:
                self.ended[job_id] = state
                self.ended_cond.notify_all()
        if self.stalls.seen:  # (called once per task: cheap checks first)
            self.stalls.forget(job_id)

    def wait_ended(self, job_id: int, timeout: float) -> str | None:
        """How job ``job_id`` ended, once it has (None: still running after ``timeout``)."""
        with self.ended_cond:
            self.ended_cond.wait_for(lambda: job_id in self.ended or self.closed, timeout)
            return self.ended.get(job_id, "the build ended" if self.closed else None)

    def wait_closed(self, timeout: float) -> bool:
        """Pause for ``timeout`` or until the build ends; True: it ended."""
        with self.ended_cond:
            return self.ended_cond.wait_for(lambda: self.closed, timeout)

    def unfollow(self, job_id: int) -> None:
        with self._lock:
            self.followed.discard(job_id)
            self.ended.pop(job_id, None)

    def close(self) -> None:
        """The build ended: unanswered requests get None, followers wake."""
        with self.ended_cond:
            self.closed = True
            left, self._queue = list(self._queue), deque()
            left += [r for waiting in self.awaited.values() for r in waiting]
            self.awaited.clear()
            self.ended_cond.notify_all()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        for request in left:
            request.answer.append(None)
            request.answered.set()


# ---------------------------------------------------------------- answers (scheduler's thread)


def _status(box: Mailbox, s: Scheduler, _: Any) -> dict[str, Any]:
    """What runs where, what is queued, the workers: ``dagrun status`` while a build runs."""
    specs = s.graph.specs
    now = s.clock.now()
    running = []
    for job_id, run in s.running.items():
        ex = s.executors.get(run.executor)
        where = _ask(ex, "job_where", job_id, default=run.executor)
        running.append({
            "task": specs[run.task].name, "executor": run.executor, "where": where,
            "state": "running" if where is not None else "queued",
            "attempt": s.attempts[run.task], "elapsed": round(now - run.started, 3),
            "cores": list(run.lease.cores) if run.lease is not None else [],
            "last_line": last_line(_ask(ex, "job_output", job_id)),
        })
    queued = [specs[item[2]].name for heap in s.ready.values() for item in _first(heap)]
    queued += [specs[i].name for _, i in _first(s.backoff)]
    queued_count = sum(map(len, s.ready.values())) + len(s.backoff)
    workers = {name: w for name, ex in s.executors.items()
               if (w := _ask(ex, "connected_workers", default=None)) is not None}
    total = len(s.plan.to_run)
    waiting = total - s.done - len(s.running) - queued_count - len(s.withdrawn)
    return {
        "pid": os.getpid(), "done": s.done, "total": total, "failures": s.failures,
        "running": running, "queued": queued[:QUEUED_SHOWN], "queued_count": queued_count,
        "waiting": max(0, waiting), "stopping": s.stopping, "workers": workers,
    }


def _first(heap: list[Any], n: int = QUEUED_SHOWN) -> list[Any]:
    """The ``n`` smallest items of a heap, in order, without a sort of all of it (10k ready
    tasks: a copy and n pops, ~50 us, not a sort, ~5 ms, at each status poll)."""
    if len(heap) <= n:
        return sorted(heap)
    rest = list(heap)
    return [heapq.heappop(rest) for _ in range(n)]


def _cancel(box: Mailbox, s: Scheduler, names: list[str]) -> dict[str, Any]:
    """Cancel tasks by name, group or glob (every name is checked before any is cancelled)."""
    from .errors import UnknownTargetError

    try:
        found = s.graph.resolve(names)
    except UnknownTargetError as exc:
        return {"unknown": str(exc)}
    return {"said": [s.cancel(i) for i in found]}


_LATER = object()  # an answer that comes later (steering.Mailbox.job_started)


def _follow(box: Mailbox, s: Scheduler, arg: tuple[str, bool]) -> Any:
    """A running task's job and its output sources (descriptors duplicated), or its state
    (a finished one: with its run folder).  ``arg``: (task, wait for it to start)."""
    name, wait = arg
    i = s.graph.index.get(name)
    if i is None:
        return {"state": "unknown"}
    if not s.in_plan[i]:
        return {"state": "not in this build"}
    for job_id, run in s.running.items():
        if run.task != i:
            continue
        sources = _ask(s.executors.get(run.executor), "job_output", job_id)
        if sources is None:
            state = "starting" if run.executor in ("local", "python") else "no live output"
            return {"state": _job_state(s, job_id, run, state), "executor": run.executor}
        with box.ended_cond:
            box.followed.add(job_id)
        return {"state": "running", "job": job_id, "executor": run.executor,
                "sources": [os.dup(x) if isinstance(x, int) else x for x in sources]}
    if i in s.withdrawn:
        return {"state": "cancelled"}
    if i in s.status:
        return {"state": s.status[i].value, "run_dir": os.path.join(
            s.runs_dir, run_dir_name(name))}
    if i in s.blocked_by:
        return {"state": "not run", "why": f"dependency failed: {s.blocked_by[i]}"}
    return _LATER if wait else {"state": "queued"}


def _job_state(s: Scheduler, job_id: int, run: Any, otherwise: str) -> str:
    """A job an executor holds but has not started (an HTTP job with no worker): queued."""
    if _ask(s.executors.get(run.executor), "job_where", job_id, default=run.executor) is None:
        return "queued"
    return otherwise


def _stall(box: Mailbox, s: Scheduler, _: Any) -> list[tuple[str, float]]:
    """Check every running job for a stall; warn (an event) of each one newly found stalled."""
    from .events import TaskStalled

    found = box.stalls.check(s)
    for task, seconds in found:
        s.reporter.handle(TaskStalled(task, s.graph.specs[s.graph.index[task]].label, seconds))
    return found


_HANDLERS: dict[str, Callable[[Mailbox, Scheduler, Any], Any]] = {
    "status": _status, "cancel": _cancel, "follow": _follow, "stall": _stall,
}


def _ask(executor: Any, method: str, *args: Any, default: Any = None) -> Any:
    """An optional executor method's answer, or ``default`` when it has none."""
    call = getattr(executor, method, None)
    if call is None:
        return default
    try:
        return call(*args)
    except Exception:  # noqa: BLE001 - an executor's status must not break the build
        return default


def read_tail(source: Source, limit: int = LAST_LINE_BYTES) -> bytes:
    """The last ``limit`` bytes of a job's output so far."""
    fd = source if isinstance(source, int) else None
    try:
        if fd is None:
            fd = os.open(str(source), os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            return os.pread(fd, min(size, limit), max(0, size - limit))
        finally:
            if not isinstance(source, int):
                os.close(fd)
    except OSError:
        return b""


def last_line(sources: tuple[Source, Source] | None) -> str | None:
    """The last line a job printed: of the stream written last (stdout on a tie)."""
    if sources is None:
        return None
    best: tuple[float, str] | None = None
    for source in sources:
        data = read_tail(source)
        lines = [x for x in data.decode("utf-8", "replace").splitlines()
                 if x.strip() and not x.startswith("@@dagrun-")]
        if not lines:
            continue
        when = _mtime(source)
        if best is None or when > best[0]:  # a tie (same clock tick): stdout
            best = (when, lines[-1][-200:])
    return best[1] if best else ""


def _mtime(source: Source) -> float:
    try:
        st = os.fstat(source) if isinstance(source, int) else os.stat(source)
    except OSError:
        return 0.0
    return st.st_mtime


class StallWatch:
    """Tasks that printed nothing and used no CPU for their ``stall_warning`` seconds."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[Any, float]] = {}  # job id -> (activity, since)
        self.warned: set[int] = set()

    def forget(self, job_id: int) -> None:
        self.seen.pop(job_id, None)
        self.warned.discard(job_id)

    def check(self, s: Scheduler) -> list[tuple[str, float]]:
        now = s.clock.now()
        found = []
        for job_id, run in s.running.items():
            spec = s.graph.specs[run.task]
            limit = getattr(spec, "stall_warning", None)
            if not limit or job_id in self.warned:
                continue
            activity = _activity(s.executors.get(run.executor), job_id)
            if activity is None:  # no CPU figure (a remote job): "no CPU used" is not known
                continue
            last = self.seen.get(job_id)
            if last is None or last[0] != activity:
                self.seen[job_id] = (activity, now)
                continue
            if now - last[1] >= limit:
                self.warned.add(job_id)
                found.append((spec.name, round(now - last[1], 1)))
        return found


def _activity(executor: Any, job_id: int) -> Any:
    """What changes while a job works: its output's sizes and its CPU time (None: the executor
    cannot tell its CPU time)."""
    cpu = _ask(executor, "job_cpu_time", job_id)
    if cpu is None:
        return None
    sources = _ask(executor, "job_output", job_id)
    sizes = []
    for source in sources or ():
        try:
            sizes.append(os.fstat(source).st_size if isinstance(source, int)
                         else os.stat(source).st_size)
        except OSError:
            sizes.append(-1)
    return tuple(sizes), cpu
