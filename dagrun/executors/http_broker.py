"""The jobs, leases and workers of one HTTP executor: the state both of its threads call.

The scheduler's thread adds and cancels jobs; the server's thread (http_routes.Routes)
leases them to workers, takes heartbeats and reports, and expires silent leases (their
jobs end *lost*).  Everything is under one lock; outcomes go to the executor through a
``Completions`` queue (threaded.py), so the completion log and reporters stay on the
scheduler's thread.  The protocol is documented in docs/http-protocol.md.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import Job, Outcome
from .threaded import Completions

DEFAULT_LEASE_TIMEOUT = 30.0


def heartbeat_every(lease_timeout: float) -> float:
    """How often workers heartbeat (and how long a poll waits): a quarter of the lease timeout."""
    return max(0.1, min(5.0, lease_timeout / 4))


@dataclass
class _Lease:
    id: str
    job: Job
    worker: str
    last: float  # monotonic: the last heartbeat (or the grant)
    cancelled: bool = False


@dataclass
class _Worker:
    id: str
    host: str = ""
    pid: int = 0
    slots: int = 0
    seen: float = 0.0  # monotonic
    seen_wall: float = 0.0
    leases: set[str] = field(default_factory=set)


@dataclass
class _Counts:
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    refused: int = 0  # reports answered 409


class Broker:
    """The jobs, leases and workers of one http executor (thread-safe)."""

    def __init__(
        self,
        name: str,
        root: str,
        lease_timeout: float,
        stage: str,
        completions: Completions,
        wake: Callable[[str | None], None],
    ) -> None:
        self.name = name
        self.root = os.path.abspath(root)
        self.real_root = os.path.realpath(root)
        self.lease_timeout = lease_timeout
        self.heartbeat = heartbeat_every(lease_timeout)
        self.stage = stage
        self.completions = completions
        self.wake = wake  # None: new jobs for anyone; a worker id: news for that worker
        self.lock = threading.Lock()
        self.ready: deque[int] = deque()
        self.jobs: dict[int, Job] = {}  # submitted and not ended
        self.leases: dict[str, _Lease] = {}
        self.lease_of: dict[int, str] = {}
        self.workers: dict[str, _Worker] = {}
        self.counts = _Counts()
        self.done = False
        self.run_files: dict[int, tuple[Job, str, Any]] = {}  # reported, files not written yet
        self.version = 0  # bumped by every change /status shows but a heartbeat's time

    # -- the scheduler's side

    def add(self, job: Job) -> None:
        problem = self._stage_problem(job) if self.stage == "http" else None
        if problem is not None:
            self.completions.post(Outcome(job.id, None, 0.0, error=problem))
            return
        with self.lock:
            self.jobs[job.id] = job
            self.ready.append(job.id)
            self.version += 1
        self.wake(None)

    def _stage_problem(self, job: Job) -> str | None:
        for path in (*job.inputs, *job.outputs):
            if relative_path(self.root, job.local_path(path)) is None:
                return f'stage = "http": {path} is outside the project folder'
        return None

    def cancel(self, job_id: int) -> None:
        with self.lock:
            lease_id = self.lease_of.get(job_id)
            if lease_id is None:
                self.version += 1
                if self.jobs.pop(job_id, None) is not None:  # not leased yet: ends here
                    self.completions.post(Outcome(job_id, None, 0.0, error="cancelled"))
                return
            lease = self.leases[lease_id]
            lease.cancelled = True
        self.wake(lease.worker)

    def cancel_everything(self) -> None:
        with self.lock:
            self.version += 1
            for job_id in list(self.jobs):
                if job_id not in self.lease_of:
                    self.jobs.pop(job_id)
                    self.completions.post(Outcome(job_id, None, 0.0, error="cancelled"))
            workers = set()
            for lease in self.leases.values():
                lease.cancelled = True
                workers.add(lease.worker)
        for w in workers:
            self.wake(w)

    def fail_waiting(self, why: str) -> None:
        """End every job no worker has leased yet as failed, with ``why`` (no worker will come)."""
        with self.lock:
            waiting = [job_id for job_id in self.jobs if job_id not in self.lease_of]
            for job_id in waiting:
                self.jobs.pop(job_id)
            self.version += 1
        for job_id in waiting:
            self.completions.post(Outcome(job_id, None, 0.0, error=why))

    def abandon(self, why: str) -> None:
        """End every job still out (a worker that never answered a cancel)."""
        with self.lock:
            for job_id in list(self.jobs):
                self._end_lease(self.lease_of.get(job_id))
                self.jobs.pop(job_id)
                self.completions.post(Outcome(job_id, None, 0.0, error=why))

    # -- the workers' side (server thread)

    def see(self, worker: str, body: Mapping[str, Any]) -> _Worker:
        w = self.workers.get(worker)
        if w is None:
            w = self.workers[worker] = _Worker(worker)
            self.version += 1
        w.seen, w.seen_wall = time.monotonic(), time.time()
        if isinstance(body.get("host"), str):
            w.host = body["host"][:200]
        if type(body.get("pid")) is int:
            w.pid = body["pid"]
        return w

    def lease(self, worker: str, slots: int, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Ready jobs, in order, while their threads fit in ``slots`` (a job takes at most all
        of the worker's ``capacity``, so that a big job still runs on an idle worker)."""
        capacity = body.get("capacity")
        if type(capacity) is not int or capacity < slots:
            capacity = slots
        with self.lock:
            w = self.see(worker, body)
            w.slots = capacity
            out: list[dict[str, Any]] = []
            while self.ready and slots > 0 and not self.done:
                job = self.jobs.get(self.ready[0])
                if job is None or job.id in self.lease_of:
                    self.ready.popleft()  # cancelled while it waited
                    continue
                if min(job.threads, capacity) > slots:
                    break  # it waits for a worker with room
                self.ready.popleft()
                slots -= min(job.threads, capacity)
                out.append(self._grant(w, job))
            return out

    def _grant(self, w: _Worker, job: Job) -> dict[str, Any]:
        lease = _Lease(secrets.token_hex(8), job, w.id, time.monotonic())
        self.version += 1
        self.leases[lease.id] = lease
        self.lease_of[job.id] = lease.id
        w.leases.add(lease.id)
        rel = self._relative if self.stage == "http" else (lambda p: p)
        inputs = [rel(p) for p in job.inputs]
        return {
            "lease": lease.id,
            "job": job.id,
            "task": job.task,
            "cmd": job.cmd,
            "root": job.root,
            "cwd": job.cwd,
            "env": dict(job.env),
            "timeout": job.timeout,
            "inputs": inputs,
            "outputs": [rel(p) for p in job.outputs],
            "threads": job.threads,
            "attempt": job.attempt,
            "stage": self.stage,
            **({"modes": modes(self.root, inputs)} if self.stage == "http" else {}),
        }

    def _relative(self, path: str) -> str:
        return relative_path(self.root, path) or path

    def heartbeat_news(
        self, worker: str, leases: list[str], body: Mapping[str, Any]
    ) -> dict[str, Any]:
        with self.lock:
            self.see(worker, body)
            now = time.monotonic()
            cancel, unknown = [], []
            for lease_id in leases:
                lease = self.leases.get(lease_id)
                if lease is None or lease.worker != worker:
                    unknown.append(lease_id)
                    continue
                lease.last = now
                if lease.cancelled:
                    cancel.append(lease_id)
            return {"cancel": cancel, "unknown": unknown, "done": self.done,
                    "lease_timeout": self.lease_timeout}

    def report(self, worker: str, lease_id: str, r: Mapping[str, Any]) -> bool:
        """Record a worker's report; False (409) when the lease is not this worker's any more."""
        with self.lock:
            self.see(worker, r)
            lease = self.leases.get(lease_id)
            if lease is None or lease.worker != worker:
                self.counts.refused += 1
                self.version += 1
                return False
            self._end_lease(lease_id)
            job = self.jobs.pop(lease.job.id)
        outcome = Outcome(
            job.id,
            r["exit_code"],
            r["duration"],
            r["stdout"],
            r["stderr"],
            r["timed_out"],
            r["maxrss_kb"],
            r["error"],
        )
        if outcome.exit_code == 0 and outcome.error:
            outcome = outcome.failed(outcome.error)
        with self.lock:
            self.version += 1
            if outcome.ok:
                self.counts.succeeded += 1
            else:
                self.counts.failed += 1
        with self.lock:
            self.run_files[job.id] = (job, worker, r.get("run_dir"))  # written by collect()
        self.completions.post(outcome)
        return True

    def _end_lease(self, lease_id: str | None) -> None:
        lease = self.leases.pop(lease_id, None) if lease_id is not None else None
        self.version += 1
        if lease is not None:
            self.lease_of.pop(lease.job.id, None)
            w = self.workers.get(lease.worker)
            if w is not None:
                w.leases.discard(lease.id)

    def expire(self) -> None:
        """Silent leases go back: their jobs end as lost (or cancelled, when being cancelled)."""
        now = time.monotonic()
        with self.lock:
            late = [x for x in self.leases.values() if now - x.last > self.lease_timeout]
            for lease in late:
                self._end_lease(lease.id)
                self.jobs.pop(lease.job.id, None)
                self.counts.lost += 1
        for lease in late:
            why = f"worker {lease.worker} went silent (no heartbeat for {self.lease_timeout:g} s)"
            if lease.cancelled:
                self.completions.post(Outcome(lease.job.id, None, now - lease.last, error=why))
            else:
                self.completions.post(Outcome(lease.job.id, None, 0.0, error=why, lost=True))

    def file_for(self, lease_id: str, path: str, *, output: bool) -> str | None:
        """The absolute path of a declared input or output of a live lease, else None."""
        with self.lock:
            lease = self.leases.get(lease_id)
            if lease is None:
                return None
            declared = lease.job.outputs if output else lease.job.inputs
            wanted = {self._relative(lease.job.local_path(p)) for p in declared}
        rel = relative_path(self.root, os.path.join(self.root, path)) if _plain(path) else None
        if rel is None or rel not in wanted:
            return None
        full = os.path.join(self.root, rel)
        real = os.path.realpath(os.path.dirname(full))
        if real != self.real_root and relative_path(self.real_root, real) is None:
            return None  # a symlinked folder leading out of the project
        return full

    def _running(self, w: _Worker) -> list[dict[str, Any]]:
        leases = sorted((self.leases[x] for x in w.leases), key=lambda x: x.job.id)
        return [{"lease": x.id, "task": x.job.task, "job": x.job.id} for x in leases]

    def status(self) -> dict[str, Any]:
        now, wall = time.monotonic(), time.time()
        with self.lock:
            workers = [
                {
                    "id": w.id,
                    "host": w.host,
                    "pid": w.pid,
                    "slots": w.slots,
                    "last_heartbeat": round(w.seen_wall, 3),
                    "seconds_ago": round(now - w.seen, 3),
                    "alive": now - w.seen <= self.lease_timeout,
                    "running": self._running(w),
                }
                for w in self.workers.values()
            ]
            leased = len(self.leases)
            return {
                "executor": self.name,
                "ready": len(self.jobs) - leased,
                "leased": leased,
                "running": leased,
                "succeeded": self.counts.succeeded,
                "failed": self.counts.failed,
                "lost": self.counts.lost,
                "refused": self.counts.refused,
                "done": self.done,
                "time": round(wall, 3),
                "workers": workers,
            }


def _plain(path: str) -> bool:
    """A root-relative path with no way out: not absolute, no '..', no NUL."""
    if not path or path.startswith("/") or "\0" in path:
        return False
    return ".." not in path.split("/")


def relative_path(root: str, path: str) -> str | None:
    """``path`` (absolute) relative to ``root`` when it lies inside it, else None."""
    norm = posixpath.normpath(path)
    if norm == root or not norm.startswith(root.rstrip("/") + "/"):
        return None
    return norm[len(root.rstrip("/")) + 1 :]


def modes(root: str, paths: list[str]) -> dict[str, int]:
    """The permission bits of staged inputs (root-relative paths), for the worker to keep."""
    out = {}
    for path in paths:
        try:
            out[path] = os.stat(os.path.join(root, path)).st_mode & 0o777
        except OSError:
            pass
    return out
