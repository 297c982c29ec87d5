"""Each executor's pool for ``dagrun status --executors``: configured, and in use now.

A running build keeps a small JSON snapshot in ``.dagrun/executors.json``:
SnapshotExecutor wraps the build's executor and rewrites the file each time
the scheduler starts waiting (so it shows the state while tasks run), and
removes it when the build ends.  A snapshot whose build is gone is ignored.

The file is rewritten in place (pwrite + ftruncate, ~10 us) rather than
replaced (~150 us here), since it changes once per finished task; the record
is one line, and a reader that catches it half-written reads it again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .executors import Executor, Job, Outcome
from .manifest import Manifest
from .numa import CoreLeases, CorePool, NodeUsage

SNAPSHOT = "executors.json"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class RunningJob:
    task: str
    executor: str
    cores: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ExecutorPool:
    """One executor's pool: cores (local only), what is free, and the jobs running now."""

    name: str
    type: str
    logical_cores: int | None  # the machine's, for local executors
    configured: tuple[int, ...] | None  # the core pool; None: no core_pool, tasks are not pinned
    free: tuple[int, ...] | None
    nodes: tuple[NodeUsage, ...]
    running: tuple[RunningJob, ...]
    slots: int | None  # the running build's job limit, else max_jobs
    build_pid: int | None  # the build the live figures come from
    cluster: dict[str, Any] | None = None  # a cluster executor's describe() (workers, ...)


class SnapshotExecutor:
    """An Executor that also records, for ``dagrun status``, which jobs run on which cores."""

    def __init__(
        self, inner: Executor, path: str, leases: CoreLeases | None, jobs: int,
        executor_of: Mapping[str, str],
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.path = path
        self.leases = leases
        self.jobs = jobs
        self.executor_of = executor_of
        self.jobs_running: dict[int, RunningJob] = {}
        self._fd: int | None = None
        self._last = b""

    @property
    def running(self) -> int:
        return len(self.jobs_running)

    def submit(self, job: Job) -> None:
        self.jobs_running[job.id] = RunningJob(job.task, self.executor_of.get(job.task, "local"),
                                               job.cores)
        self.inner.submit(job)

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        self._write()
        return self._ended(self.inner.wait(timeout))

    # transitional pass-throughs of the protocol (the scheduler's own loop replaces this wrapper)
    @property
    def slots(self) -> int:
        return self.inner.slots

    def start(self) -> None:
        self.inner.start()

    def fileno(self) -> int:
        return self.inner.fileno()

    def deadline(self) -> float | None:
        return self.inner.deadline()

    def collect(self) -> list[Outcome]:
        return self._ended(self.inner.collect())

    def cancel(self, job_id: int) -> None:
        self.inner.cancel(job_id)

    def cancel_all(self, *, force: bool = False) -> list[Outcome]:
        return self._ended(self.inner.cancel_all(force=force))

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
                try:
                    os.unlink(self.path)
                except OSError:
                    pass

    def _ended(self, outcomes: list[Outcome]) -> list[Outcome]:
        for o in outcomes:
            self.jobs_running.pop(o.job_id, None)
        return outcomes

    def _write(self) -> None:
        data: dict[str, Any] = {
            "version": _VERSION,
            "pid": os.getpid(),
            "jobs": self.jobs,
            "running": [[j.task, j.executor, list(j.cores)] for j in self.jobs_running.values()],
            "free": None,
        }
        describe = getattr(self.inner, "describe", None)  # cluster executors (dask)
        if describe is not None:
            data["clusters"] = {self.inner.name: describe()}
        if self.leases is not None:
            stats = self.leases.statistics()
            data["free"] = {str(u.node): list(u.free) for u in stats.nodes}
        text = (json.dumps(data, separators=(",", ":")) + "\n").encode()
        if text == self._last:
            return
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.pwrite(self._fd, text, 0)
            os.ftruncate(self._fd, len(text))
            self._last = text
        except OSError:
            pass  # status is a convenience; never fail a build over it


def read_snapshot(path: str) -> dict[str, Any] | None:
    """The snapshot of the build running now, or None (no build, or its snapshot is stale)."""
    data = None
    for _ in range(5):  # the build may be rewriting it right now
        try:
            with open(path, encoding="utf-8") as f:
                data = json.loads(f.readline())
            break
        except OSError:
            return None
        except ValueError:
            continue
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        return None
    try:
        os.kill(int(data["pid"]), 0)
    except ProcessLookupError:
        return None  # that build died without cleaning up
    except (PermissionError, KeyError, TypeError, ValueError):
        pass
    return data


def executor_pools(
    manifest: Manifest, pool: CorePool | None, logical: int, snapshot: dict[str, Any] | None
) -> list[ExecutorPool]:
    """Every executor of the manifest, with live figures from ``snapshot`` when a build runs."""
    running = [RunningJob(t, e, tuple(c)) for t, e, c in (snapshot or {}).get("running", [])]
    free_by_node = (snapshot or {}).get("free") or {}
    out = []
    for name, spec in sorted(manifest.executors.items(), key=lambda kv: kv[0] != "local"):
        mine = tuple(j for j in running if j.executor == name)
        slots = snapshot.get("jobs") if snapshot and name == "local" else spec.max_jobs
        pid = snapshot.get("pid") if snapshot else None
        if spec.type != "local":
            cluster = ((snapshot or {}).get("clusters") or {}).get(name)
            if cluster is not None:
                slots = cluster.get("slots", slots)
            out.append(
                ExecutorPool(name, spec.type, None, None, None, (), mine, slots, pid, cluster)
            )
            continue
        nodes: tuple[NodeUsage, ...] = ()
        configured = free = None
        if pool is not None:
            nodes = tuple(
                NodeUsage(node, cores, tuple(free_by_node.get(str(node), cores)))
                for node, cores in pool.groups
            )
            configured = pool.cores
            free = tuple(sorted(c for u in nodes for c in u.free))
        out.append(ExecutorPool(name, "local", logical, configured, free, nodes, mine, slots, pid))
    return out
