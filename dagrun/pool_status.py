"""Each executor's pool for ``dagrun status --executors``: configured, and in use now.

A running build keeps a small JSON snapshot in ``.dagrun/executors.json``:
StatusReporter follows the build's events and rewrites the file each time
the scheduler starts waiting (so it shows the state while tasks run), and
removes it when the build ends.  A snapshot whose build is gone is ignored.

The file is rewritten in place (pwrite + ftruncate, ~10 us) rather than
replaced (~150 us here), since it changes once per finished task; the record
is one line, and a reader that catches it half-written reads it again.

A flush costs what changed, not what runs: with nothing new (and no cluster
to ask, at most once a second) it returns at once, and each running job's
JSON is encoded once, when it starts, then only joined.  (It used to rebuild
and encode every running job before every wait of the scheduler: 30 % of a
build's samples with 1,000 HTTP workers, on the thread the server needs.)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .events import Event, TaskFinished, TaskPlaced, TaskStarted
from .fs import open_regular
from .records import Manifest

if TYPE_CHECKING:  # numa: imported where a core pool is configured
    from .numa import CorePool, NodeUsage

SNAPSHOT = "executors.json"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class RunningJob:
    task: str
    executor: str
    cores: tuple[int, ...] = ()
    job: str | None = None  # the executor's own id for it (a Slurm job id)


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
    host: str | None = None  # remote executors: where they run
    reachable: bool | None = None  # None: not known (not checked)
    cluster: dict[str, Any] | None = None  # a cluster executor's describe() (workers, ...)


class StatusReporter:
    """A Reporter that records, for ``dagrun status``, which jobs run where and on which cores.

    It follows TaskStarted/TaskFinished events and writes the snapshot when
    ``flush()`` is called (the scheduler calls it before it waits); ``close()``
    removes the file when the build ends.
    """

    def __init__(
        self, path: str, pool: CorePool | None, slots: Mapping[str, int],
        reachable: Mapping[str, bool] | None = None,
        describe: Mapping[str, Callable[[], dict[str, Any]]] | None = None,
    ) -> None:
        self.path = path
        self.describe = dict(describe or {})  # executor name -> its describe() (clusters)
        self.pool = pool
        self.slots = dict(slots)
        self.reachable = dict(reachable or {})
        self.jobs_running: dict[str, RunningJob] = {}
        self._encoded: dict[str, str] = {}  # task -> its entry in "running", as JSON
        self._fd: int | None = None
        self._last = b""
        self._changed = True
        self._next_describe = 0.0  # when the clusters are asked again (monotonic)

    def handle(self, event: Event) -> None:
        if isinstance(event, TaskStarted):
            self.jobs_running[event.task] = RunningJob(event.task, event.executor, event.cores)
            self._encoded[event.task] = _dumps([event.task, event.executor, list(event.cores)])
            self._changed = True
        elif isinstance(event, TaskFinished):
            if self.jobs_running.pop(event.task, None) is not None:
                del self._encoded[event.task]
                self._changed = True
        elif isinstance(event, TaskPlaced) and event.task in self.jobs_running:
            j = self.jobs_running[event.task]  # its job id (Slurm): a fourth element
            self.jobs_running[event.task] = RunningJob(j.task, j.executor, j.cores, event.ref)
            self._encoded[event.task] = _dumps([j.task, j.executor, list(j.cores), event.ref])
            self._changed = True

    def flush(self) -> None:
        now = time.monotonic()
        asking = bool(self.describe) and now >= self._next_describe
        if not self._changed and not asking:
            return
        self._changed = False
        data: dict[str, Any] = {
            "version": _VERSION,
            "pid": os.getpid(),
            "jobs": self.slots.get("local"),
            "running": None,
            "free": self._free(),
            "executors": {
                name: {"slots": n, "reachable": self.reachable.get(name)}
                for name, n in self.slots.items()
            },
        }
        if self.describe:  # cluster executors (dask): workers, threads, running
            self._next_describe = now + 1.0
            data["clusters"] = {name: describe() for name, describe in self.describe.items()}
        running = "[" + ",".join(self._encoded.values()) + "]"
        text = (_dumps(data).replace('"running":null', '"running":' + running, 1) + "\n")
        self._write(text.encode())

    def _write(self, text: bytes) -> None:
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

    def _free(self) -> dict[str, list[int]] | None:
        if self.pool is None:
            return None
        held = {c for j in self.jobs_running.values() if j.executor == "local" for c in j.cores}
        return {str(node): [c for c in cores if c not in held] for node, cores in self.pool.groups}

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            try:
                os.unlink(self.path)
            except OSError:
                pass


class Tee:
    """Hands every event to several reporters, in order."""

    def __init__(self, *reporters: Any) -> None:
        self.reporters = reporters

    def handle(self, event: Event) -> None:
        for r in self.reporters:
            r.handle(event)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def read_snapshot(path: str) -> dict[str, Any] | None:
    """The snapshot of the build running now, or None (no build, or its snapshot is stale)."""
    data = None
    for _ in range(5):  # the build may be rewriting it right now
        try:
            with open(open_regular(path), encoding="utf-8") as f:
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
    manifest: Manifest, pool: CorePool | None, logical: int, snapshot: dict[str, Any] | None,
    probes: Mapping[str, bool] | None = None,
) -> list[ExecutorPool]:
    """Every executor of the manifest, with live figures from ``snapshot`` when a build runs."""
    running = [RunningJob(r[0], r[1], tuple(r[2]), r[3] if len(r) > 3 else None)
               for r in (snapshot or {}).get("running", [])]
    free_by_node = (snapshot or {}).get("free") or {}
    live = (snapshot or {}).get("executors") or {}
    out = []
    for name, spec in sorted(manifest.executors.items(), key=lambda kv: kv[0] != "local"):
        mine = tuple(j for j in running if j.executor == name)
        slots = live.get(name, {}).get("slots", spec.max_jobs)
        if snapshot and name == "local":
            slots = snapshot.get("jobs")
        pid = snapshot.get("pid") if snapshot else None
        if spec.type != "local":
            host = spec.options.get("host")
            reachable = (probes or {}).get(name, live.get(name, {}).get("reachable"))
            cluster = ((snapshot or {}).get("clusters") or {}).get(name)
            if cluster is not None:
                slots = cluster.get("slots", slots)
            out.append(ExecutorPool(
                name, spec.type, None, None, None, (), mine, slots, pid, host, reachable, cluster
            ))
            continue
        nodes: tuple[NodeUsage, ...] = ()
        configured = free = None
        if pool is not None:
            from .numa import NodeUsage

            nodes = tuple(
                NodeUsage(node, cores, tuple(free_by_node.get(str(node), cores)))
                for node, cores in pool.groups
            )
            configured = pool.cores
            free = tuple(sorted(c for u in nodes for c in u.free))
        out.append(ExecutorPool(name, "local", logical, configured, free, nodes, mine, slots, pid))
    return out
