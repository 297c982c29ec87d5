"""A build as JSON records: what ``--events`` writes and ``.dagrun/last-build.jsonl`` keeps.

``Records`` is a reporter: it turns each event into plain dicts, stamped with
``t`` (seconds since the build started), and hands them to its sinks, which
write them as they come (JSON lines) or at the end (JUnit, trace).  One record
per line, in the order things happened:

    {"event": "build_started", "t": 0.0, "time": EPOCH, "to_run": N, "up_to_date": M, "jobs": J}
    {"event": "planned", "t", "task", "display", "executor", "threads", "key", "run", "reason"}
    {"event": "started", "t", "task", "attempt", "executor", "cores", "key"}
    {"event": "placed", "t", "task", "executor", "job"}  # the executor's job id (Slurm)
    {"event": "finished", "t", "task", "status", "exit_status", "duration", "maxrss_kb",
     "attempt", "executor", "cores", "timed_out", "error", "stderr_tail" (failures only),
     "job" (when placed)}
    {"event": "not_run", "t", "task", "why"}
    {"event": "up_to_date", "t", "task"}   # planned to run, found up to date (early cutoff)
    {"event": "stalled", "t", "task", "seconds"}  # silent and idle for its stall_warning
    {"event": "build_finished", "t", "succeeded", "failed", "interrupted", "up_to_date",
     "not_run", "elapsed", "exit_status"}

``status`` is one of ``succeeded``, ``failed``, ``retry`` (failed, will run
again) or ``interrupted`` (killed by Ctrl-C / SIGTERM).  ``planned`` records
of up-to-date tasks (``"run": false``) are written only for sinks that ask
for them (``--events``): a big incremental build should not pay for them.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, Protocol

from .errors import DagrunError
from .events import (
    BuildFinished,
    BuildStarted,
    Event,
    TaskCutOff,
    TaskFinished,
    TaskPlaced,
    TaskSkipped,
    TaskStalled,
    TaskStarted,
)
from .fs import open_regular

FORMAT = 1
LAST_BUILD = "last-build.jsonl"  # in .dagrun/
TAIL_LINES = 40
TAIL_CHARS = 8000

Record = dict[str, Any]


class Sink(Protocol):
    wants_fresh: bool  # also the planned records of up-to-date tasks
    only_if_work: bool  # nothing at all for a build that ran no task

    def add(self, record: Record) -> None: ...

    def close(self) -> None: ...


def tail(text: str, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    """The last ``lines`` lines of ``text``, at most ``chars`` characters."""
    kept = "\n".join(text.rstrip("\n").split("\n")[-lines:])
    return kept[-chars:]


def status_of(ev: TaskFinished) -> str:
    if ev.ok:
        return "restored" if ev.restored else "succeeded"
    if ev.interrupted:
        return "interrupted"
    return "retry" if ev.will_retry else "failed"


class Records:
    """A reporter that feeds JSON-ready records of the build to sinks."""

    def __init__(self, sinks: Sequence[Sink], clock: Callable[[], float] = time.monotonic) -> None:
        self.sinks = list(sinks)
        self.clock = clock
        self.start = clock()
        self.running: dict[str, tuple[str, tuple[int, ...]]] = {}  # task -> (executor, cores)
        self.active: list[Sink] = []
        self.keys: dict[str, str | None] = {}
        self.interrupted = 0  # tasks killed by Ctrl-C: BuildFinished counts them as failed
        self.jobs: dict[str, str] = {}  # task -> its executor's name for its job (Slurm job id)

    def handle(self, event: Event) -> None:
        match event:
            case BuildStarted():
                self._started(event)
            case TaskStarted():
                self.running[event.task] = (event.executor, event.cores)
                self._emit(self._task_started(event))
            case TaskFinished():
                self.interrupted += event.interrupted
                self._emit(self._task_finished(event))
            case TaskPlaced(task=task, executor=executor, ref=ref):
                self.jobs[task] = ref
                self._emit({"event": "placed", "t": self._t(), "task": task,
                            "executor": executor, "job": ref})
            case TaskSkipped(task=task, why=why):
                self._emit({"event": "not_run", "t": self._t(), "task": task, "why": why})
            case TaskCutOff(task=task):
                self._emit({"event": "up_to_date", "t": self._t(), "task": task})
            case TaskStalled(task=task, seconds=seconds):
                self._emit({"event": "stalled", "t": self._t(), "task": task, "seconds": seconds})
            case BuildFinished():
                self._emit(self._build_finished(event))
                for sink in self.active:
                    sink.close()
                self.active = []
            case _:
                pass

    def _t(self) -> float:
        return round(self.clock() - self.start, 6)

    def _emit(self, record: Record, fresh: bool = False) -> None:
        for sink in self.active:
            if not fresh or sink.wants_fresh:
                sink.add(record)

    def _started(self, ev: BuildStarted) -> None:
        self.start = self.clock()
        self.active = [s for s in self.sinks if ev.total or not s.only_if_work]
        head = {
            "event": "build_started", "t": 0.0, "time": round(time.time(), 3), "format": FORMAT,
            "to_run": ev.total, "up_to_date": ev.up_to_date, "jobs": ev.jobs,
        }
        self._emit(head)
        p = ev.planned
        if p is None:
            return
        for i in p.to_run:
            self._emit(self._planned(p, i, True))
        if any(s.wants_fresh for s in self.active):
            for i in p.up_to_date:
                self._emit(self._planned(p, i, False), fresh=True)

    def _planned(self, p: Any, i: int, run: bool) -> Record:
        spec = p.specs[i]
        self.keys[spec.name] = p.keys[i]
        reason = "; ".join(p.reasons.get(i, ())) if run else "up to date"
        return {
            "event": "planned", "t": 0.0, "task": spec.name, "display": spec.display or None,
            "executor": spec.executor, "threads": spec.threads, "key": p.keys[i], "run": run,
            "reason": reason,
        }

    def _task_started(self, ev: TaskStarted) -> Record:
        return {
            "event": "started", "t": self._t(), "task": ev.task, "attempt": ev.attempt,
            "executor": ev.executor, "cores": list(ev.cores), "key": self.keys.get(ev.task),
        }

    def _task_finished(self, ev: TaskFinished) -> Record:
        executor, cores = self.running.pop(ev.task, (ev.executor, ()))
        record: Record = {
            "event": "finished", "t": self._t(), "task": ev.task, "status": status_of(ev),
            "exit_status": ev.exit_code, "duration": round(ev.duration, 6),
            "maxrss_kb": ev.maxrss_kb, "attempt": ev.attempt, "executor": executor,
            "cores": list(cores), "timed_out": ev.timed_out, "error": ev.error,
        }
        job = self.jobs.pop(ev.task, None)
        if job is not None:
            record["job"] = job
        if ev.label != ev.task:
            record["display"] = ev.label
        if not ev.ok:
            record["stderr_tail"] = tail(ev.stderr)
        return record

    def _build_finished(self, ev: BuildFinished) -> Record:
        return {
            "event": "build_finished", "t": self._t(), "succeeded": ev.succeeded,
            "restored": ev.restored,
            "failed": ev.failed - self.interrupted, "interrupted": self.interrupted,
            "up_to_date": ev.up_to_date, "not_run": ev.not_run, "elapsed": round(ev.elapsed, 6),
            "exit_status": 130 if ev.interrupted else 1 if ev.failed or ev.not_run else 0,
        }


# one encoder for every record: json.dumps(separators=...) builds a new one at each call
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


class JsonLines:
    """Writes each record as one JSON line, buffered; flushed within ``FLUSH_EVERY`` seconds.

    A small thread flushes the buffer while the build waits on its tasks, so ``dagrun
    status`` sees a running build at most that late, and a record costs no system call.
    The first ``WRITE_THROUGH`` records are written at once instead: a small build (an
    edit, through the build server) pays a few writes, not a thread's start.
    """

    FLUSH_EVERY = 0.2
    WRITE_THROUGH = 32

    def __init__(
        self, path: str, *, wants_fresh: bool, only_if_work: bool, tolerant: bool = False
    ) -> None:
        self.path = path
        self.tolerant = tolerant  # an error writing it stops it, not the build (last-build)
        self.wants_fresh = wants_fresh
        self.only_if_work = only_if_work
        self.file: IO[str] | None = None
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.dirty = False
        self.written = 0

    def add(self, record: Record) -> None:
        try:
            self._add(record)
        except OSError as exc:
            if not self.tolerant:
                raise DagrunError(f"cannot write {self.path}: {_why(exc)}") from exc
            self.close()
            self.add = lambda record: None  # type: ignore[method-assign]

    def _add(self, record: Record) -> None:
        line = _ENCODE(record) + "\n"
        with self.lock:
            if self.file is None:
                fd = _open_writing(self.path, anew=self.tolerant)
                self.file = open(fd, "w", encoding="utf-8")  # noqa: SIM115
            self.file.write(line)
            self.written += 1
            if self.written < self.WRITE_THROUGH:
                self.file.flush()
            elif self.written == self.WRITE_THROUGH:
                threading.Thread(target=self._flusher, name="dagrun-records", daemon=True).start()
            else:
                self.dirty = True

    def _flusher(self) -> None:
        while not self.stop.wait(self.FLUSH_EVERY):
            with self.lock:
                if self.file is None:
                    return
                if self.dirty:
                    self.dirty = False
                    try:
                        self.file.flush()
                    except OSError:
                        return  # the next write (or close) reports it

    def close(self) -> None:
        self.stop.set()
        with self.lock:
            if self.file is not None:
                try:
                    self.file.close()
                except OSError as exc:
                    self.file = None
                    if not self.tolerant:
                        raise DagrunError(f"cannot write {self.path}: {_why(exc)}") from exc
                self.file = None


class Collected:
    """Keeps the records and hands them to ``write`` at the end (JUnit, trace)."""

    def __init__(self, write: Callable[[list[Record]], None], *, wants_fresh: bool) -> None:
        self.write = write
        self.wants_fresh = wants_fresh
        self.only_if_work = False
        self.records: list[Record] = []

    def add(self, record: Record) -> None:
        self.records.append(record)

    def close(self) -> None:
        self.write(self.records)


def check_writable(path: str, what: str) -> None:
    """Fail before the build, not after it, when a report cannot be written."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return  # a FIFO's reader would take this open for the report; a device: at the end
    except OSError:
        pass
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise DagrunError(f"cannot write the {what} to {path}: {exc.strerror}") from None


def write_text(path: str, text: str) -> None:
    """Write a whole file at once (``-``: standard output); DagrunError when it cannot be."""
    if path == "-":
        import sys

        sys.stdout.write(text)
        return
    try:
        _write_text(path, text)
    except OSError as exc:
        raise DagrunError(f"cannot write {path}: {_why(exc)}") from exc


def _write_text(path: str, text: str) -> None:
    try:
        kind = os.stat(path).st_mode
    except OSError:
        kind = stat.S_IFREG
    if not stat.S_ISREG(kind):  # /dev/stdout, a FIFO, a device: written to, never replaced
        with open(_open_writing(path), "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)
    os.replace(tmp, path)


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENXIO:
        return "a FIFO that nobody reads"
    return exc.strerror or str(exc)


def _open_writing(path: str, anew: bool = False) -> int:
    """A descriptor to write ``path`` from its start; a FIFO without a reader is an OSError
    (ENXIO) at once, not a wait for one.  ``anew`` (dagrun's own last-build.jsonl): a regular
    file is removed and created again, since truncating one makes ext4 write its old blocks
    out first (~0.2 ms, each build); a user's ``--events FILE`` is truncated in place."""
    if anew:
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.unlink(path)
        except OSError:
            pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    os.set_blocking(fd, True)
    return fd


def read(path: str) -> Iterator[Record]:
    """The records of a JSON-lines file; a torn last line (a build still writing) is skipped."""
    with open(open_regular(path), encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "event" in record:
                yield record
