"""Runs jobs on a dask.distributed cluster: an existing one, a LocalCluster, or any cluster class.

    [executors.cluster]
    type = "dask"
    scheduler = "tcp://10.0.0.5:8786"        # an existing cluster, or:
    cluster = "local"                         # a LocalCluster dagrun starts and stops
    workers = 2                               #   (its worker processes and threads each)
    threads_per_worker = 2
    cluster = "dask_jobqueue.SLURMCluster"    # or any class: options = {...} are its
    options = { cores = 2, memory = "4GB" }   #   keyword arguments, then scale = N or
    scale = 2                                 #   adapt = { minimum = 0, maximum = 8 }

dagrun keeps the DAG, the keys and the log: a job is submitted only when its
dependencies are done, as ``remote_run.run_command`` (``pure=False``), which
runs the command with ``sh -c`` on the worker in its own session and returns
its exit status, duration, max RSS and output.  Jobs go to Dask in batches
and their ends come back in batches, on two threads for all of them
(dask_batch.py); a function task has a thread of its own (``ThreadedExecutor``).
No Dask thread touches the log or the reporters.  The workers must see the
manifest's folder at the same path (a shared file system).

``threads`` becomes the Dask worker resource ``threads`` when the workers
declare it (a LocalCluster's do: ``threads_per_worker`` each) and some worker
offers more than one; on workers that declare no resources, each task takes
one Dask thread whatever its ``threads``.  ``max_jobs`` defaults to QUEUE times
the workers' threads: a queue behind each thread, so that the workers never wait
for dagrun's round trip between two jobs, and jobs come back in batches (one
job per thread left the workers idle between jobs; two per thread, ends one by
one, each a round trip of its own).  QUEUE is 16: two packs of short jobs per
thread (dask_batch.py), one running while the next waits; at 8, two threads
had room for one pack each and idled for the round trip between packs (2,000
``true`` on 2 workers: ~370 tasks/s at 8, ~500 at 16, ~580 at 32, plain
``client.map`` ~490; bench/RESULTS.md).  A deeper queue hands jobs to Dask
earlier, in the order they became ready; while the jobs are long (not packed)
it buys nothing.

A cluster with no worker at all for ``worker_timeout`` seconds (default 300:
every worker lost, or none ever started) fails the jobs waiting on it, with a
message, instead of waiting for ever.

A worker that dies mid-task: its command is killed (it would otherwise keep
running, orphaned) and the job ends *lost*: the scheduler runs it again, as a
new job, by its rule for lost jobs (at most ``max_lost`` times); it is logged
once, when it ends.  Dask must not rerun it by itself meanwhile, so the
clusters dagrun starts have ``allowed-failures = 0``; an external scheduler
keeps its own setting (the lost attempt's cancel file stops a rerun there
before it starts).  Cancelling kills the job's process group on
its worker (``client.cancel`` alone would leave the command running).
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from typing import Any

from .. import pyworker, remote_run, runs
from ..errors import ExecutorError
from ..executor_options import effective
from ..pycall import load_result
from . import Context, Job, Outcome, cancel_all
from .dask_batch import PACK, Batches
from .threaded import ThreadedExecutor, wait_on

INSTALL_HINT = "pip install 'dagrun[dask]'"
CONNECT_TIMEOUT = 10.0  # seconds to reach a scheduler
WORKERS_AGE = 2.0  # seconds a look at the scheduler's workers stays good
KILL_WAIT = 5.0  # seconds to wait for the workers to kill a job's command
WORKER_TIMEOUT = 300.0  # seconds a job waits while the cluster has no worker at all
QUEUE = 2 * PACK  # default max_jobs: jobs per worker thread (a pack runs, one more queues)


class DaskExecutor(ThreadedExecutor):
    """Jobs as Dask futures; see the module docstring."""

    def __init__(
        self,
        name: str,
        *,
        scheduler: str | None = None,
        cluster: str | None = None,
        options: Mapping[str, Any] | None = None,
        scale: int | None = None,
        adapt: Mapping[str, int] | None = None,
        workers: int = 2,
        threads_per_worker: int = 1,
        max_jobs: int | None = None,
        grace: float = 3.0,
        env_inherit: bool = False,
        environ: Mapping[str, str] | None = None,
        state_dir: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        default_slots: int = 1,
        worker_timeout: float = WORKER_TIMEOUT,
    ) -> None:
        if (scheduler is None) == (cluster is None):
            raise ExecutorError(f"executor '{name}': give exactly one of 'scheduler' and 'cluster'")
        self.scheduler = scheduler
        self.cluster_kind = cluster
        self.options = dict(options or {})
        self.scale, self.adapt = scale, adapt
        self.workers, self.threads_per_worker = workers, threads_per_worker
        self.max_jobs = max_jobs
        local_slots = QUEUE * workers * threads_per_worker if cluster == "local" else 1
        super().__init__(name, max_jobs or local_slots)
        self.grace = grace
        self.env_inherit = env_inherit
        self.environ = dict(os.environ if environ is None else environ)
        self.state_dir = state_dir
        self.connect_timeout = connect_timeout
        self.worker_timeout = worker_timeout
        self.default_slots = default_slots  # when max_jobs is unset and no worker is up yet
        self._not_connected(scheduler or "", cluster == "local")

    def _not_connected(self, address: str, local: bool) -> None:
        """What start() fills in: the client, the cluster, what is known of its workers."""
        self.token = uuid.uuid4().hex  # names this build's markers on the workers
        self.client: Any = None
        self.cluster: Any = None
        self.address = address
        self.use_resources: bool | None = True if local else None
        self._lock = threading.Lock()
        self._empty_since: float | None = None  # when the cluster was last seen with no worker
        self._described: tuple[float, dict[str, Any]] | None = None
        self._workers_seen: tuple[float, list[dict[str, Any]]] | None = None
        self._batches = Batches(self, self.completions.post)  # the command jobs

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any], context: Context) -> DaskExecutor:
        opts = effective("dask", options)  # checked when the manifest was read
        adapt = opts.get("adapt")
        return cls(
            name,
            scheduler=opts.get("scheduler"),
            cluster=opts.get("cluster"),
            options=opts.get("options"),
            scale=opts.get("scale"),
            adapt=dict(adapt) if adapt is not None else None,
            workers=opts["workers"],
            threads_per_worker=opts["threads_per_worker"],
            max_jobs=opts.get("max_jobs"),
            grace=opts["grace_period"],
            env_inherit=opts["env_inherit"],
            environ=context.environ,
            state_dir=context.state_dir,
            connect_timeout=opts["connect_timeout"],
            default_slots=context.jobs,
            worker_timeout=opts["worker_timeout"],
        )

    # -- starting and stopping

    def start(self) -> None:
        """Connect (starting the cluster first if dagrun owns it); ExecutorError if impossible."""
        if self.client is not None:
            return
        distributed = _import_distributed(self.name)
        if self.scheduler is not None:
            self._check_address(self.scheduler)
            self.client = self._connect(distributed, self.scheduler)
        else:
            self.cluster = self._make_cluster(distributed)
            self.address = str(self.cluster.scheduler_address)
            self.client = self._connect(distributed, self.cluster)
        if self.max_jobs is None and self.cluster_kind != "local":
            threads = self._info()[1]  # the threads of the workers up, each with a queue
            self.slots = QUEUE * threads if threads else self.default_slots

    def _check_address(self, address: str) -> None:
        """A malformed address is an error before any Client exists (a half-made one complains
        when it is collected)."""
        from distributed.comm.addressing import resolve_address

        try:
            resolve_address(address)
        except (ValueError, OSError) as exc:
            message = f"executor '{self.name}': bad Dask scheduler address {address!r}: {exc}"
            raise ExecutorError(message) from exc
        self._check_listening(address)

    def _check_listening(self, address: str) -> None:
        """A refused connection is an answer: stop at once (the Client would retry it until
        ``connect_timeout``).  Anything else (no answer, TLS, another protocol) is the Client's."""
        import socket

        from distributed.comm.addressing import get_address_host_port

        if not address.startswith("tcp://"):
            return
        try:
            host, port = get_address_host_port(address)
            with socket.create_connection((host, port), timeout=min(self.connect_timeout, 5.0)):
                pass
        except ConnectionRefusedError as exc:
            raise ExecutorError(
                f"executor '{self.name}': cannot reach the Dask scheduler at {address}: "
                "connection refused (is the scheduler running?)"
            ) from exc
        except (OSError, ValueError):
            pass

    def _connect(self, distributed: Any, target: Any) -> Any:
        try:
            return distributed.Client(
                target, timeout=self.connect_timeout, set_as_default=False
            )
        except (OSError, TimeoutError) as exc:
            self._close_cluster()
            raise ExecutorError(
                f"executor '{self.name}': cannot reach the Dask scheduler at "
                f"{self.address or target}: {exc}"
            ) from exc

    def _make_cluster(self, distributed: Any) -> Any:
        import dask

        scratch = os.path.join(self.state_dir or ".", "dask")
        # we rerun a lost job ourselves, after killing its orphaned command
        config: dict[str, Any] = {"distributed.scheduler.allowed-failures": 0}
        if "DASK_TEMPORARY_DIRECTORY" not in self.environ:
            config["temporary-directory"] = scratch
        with dask.config.set(config):
            if self.cluster_kind == "local":
                return self._local_cluster(distributed, scratch)
            return self._class_cluster()

    def _local_cluster(self, distributed: Any, scratch: str) -> Any:
        try:
            return distributed.LocalCluster(
                n_workers=self.workers,
                threads_per_worker=self.threads_per_worker,
                processes=True,
                dashboard_address=None,  # no dashboard, and its HTTP server (it stays, for
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # metrics) not on :8787
                silence_logs=logging.CRITICAL,
                local_directory=scratch,
                resources={"threads": self.threads_per_worker},
                preload=["dagrun.remote_run"],  # its dask_setup: out of the terminal's group
            )
        except Exception as exc:  # noqa: BLE001 - any failure to start is the executor's error
            message = f"executor '{self.name}': cannot start a LocalCluster: {exc}"
            raise ExecutorError(message) from exc

    def _class_cluster(self) -> Any:
        module, _, cls_name = str(self.cluster_kind).rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError, ValueError) as exc:
            hint = f" ({INSTALL_HINT} brings dask-jobqueue)" if module == "dask_jobqueue" else ""
            raise ExecutorError(
                f"executor '{self.name}': cannot import cluster class {self.cluster_kind!r}: "
                f"{exc}{hint}"
            ) from exc
        cluster = None
        try:
            cluster = cls(**self.options)
            if self.adapt is not None:
                cluster.adapt(**self.adapt)
            elif self.scale is not None:
                cluster.scale(self.scale)
        except Exception as exc:  # noqa: BLE001 - the class's own errors, shown as ours
            if cluster is not None:
                cluster.close()
            raise ExecutorError(
                f"executor '{self.name}': {self.cluster_kind}(...) failed: {exc}"
            ) from exc
        return cluster

    def close(self) -> None:
        if self._batches.count:
            cancel_all(self, force=True)  # a Ctrl-C meanwhile: it goes on
        self._batches.close()
        super().close()
        if self.client is not None:
            if self.cluster_kind != "local":  # a last sweep: no command outlives the build
                self._on_workers(remote_run.kill_all, self.token, True)
            self.client.close()
            self.client = None
        self._close_cluster()

    def _close_cluster(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
        remote_run.kill_all(self.token, True)  # this machine's (a LocalCluster's, say)

    # -- running

    def submit(self, job: Job) -> None:
        if job.call is not None:  # a function: a thread waits for it (ThreadedExecutor)
            super().submit(job)
        else:
            self._batches.add(job)

    @property
    def running(self) -> int:
        return len(self._threads) + self._batches.count

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        return wait_on(self, lambda: bool(self._threads) or self._batches.count > 0, timeout)

    def cancel(self, job_id: int) -> None:
        if self._batches.owns(job_id):
            self._batches.cancel(job_id)
        else:
            super().cancel(job_id)

    def cancel_all(self, *, force: bool = False) -> list[Outcome]:
        """The batched jobs are stopped by the batches' thread; their outcomes stay posted (and
        are returned with the function tasks') so that a call interrupted here loses none."""
        if force:
            self.force.set()
        self._batches.cancel_all()
        while self._batches.count:
            time.sleep(0.05)
        return super().cancel_all(force=force)

    def run(self, job: Job, cancel: threading.Event) -> Outcome:
        """A function task, in its thread (commands go in batches: dask_batch.py)."""
        self._prepare(job)
        return self._settle(job, self._run_function(job, cancel))

    def _run_function(self, job: Job, cancel: threading.Event) -> Outcome:
        """A function task: the function itself is submitted (no shell), with its upstream
        results; its return value comes back and is stored in the results folder here."""
        call = job.call
        assert call is not None
        started = time.monotonic()
        try:
            values = {
                task: load_result(os.path.join(call.results_dir, key), digest, task)
                for task, _, key, digest in call.upstream
            }
        except (OSError, LookupError, pickle.UnpicklingError) as exc:
            return Outcome(job.id, None, 0.0, error=f"cannot read an upstream result: {exc}")
        future = self.client.submit(
            pyworker.apply, call, values, pure=False, retries=0,
            key=f"dagrun-{job.task}-{job.id}-{uuid.uuid4().hex[:8]}",
        )
        stopped = _wait_function(job, future, cancel, started)
        if stopped is not None:
            return stopped
        duration = time.monotonic() - started
        try:
            value = future.result()
        except Exception as exc:  # noqa: BLE001 - the user's exception fails the task
            return Outcome(job.id, 1, duration, stderr="".join(traceback.format_exception(exc)))
        problem = pyworker.store(value, os.path.join(call.results_dir, call.key))
        return Outcome(job.id, 1 if problem else 0, duration, error=problem)

    def _without_workers(self) -> float:
        """How long the cluster has had no worker at all (0 while it has one)."""
        try:
            up = bool(self._workers())
        except Exception:  # noqa: BLE001 - the scheduler is gone: the future says so itself
            up = True
        now = time.monotonic()
        with self._lock:
            if up:
                self._empty_since = None
            elif self._empty_since is None:
                self._empty_since = now
            return 0.0 if self._empty_since is None else now - self._empty_since

    def _kill(self, job_ids: list[int], *, force: bool, cancel: bool) -> None:
        if self.cluster_kind == "local":  # its workers are on this machine: no round trip, and
            remote_run.kill_jobs(self.token, job_ids, force, cancel)  # a dead worker's orphans too
            return
        self._on_workers(remote_run.kill_jobs, self.token, job_ids, force, cancel)

    def _on_workers(self, function: Any, *args: Any) -> None:
        """``function(*args)`` on every worker, waiting at most KILL_WAIT seconds (a worker that
        just died makes the scheduler wait for its connect timeout)."""
        client = self.client

        def call() -> None:
            try:
                client.run(function, *args, on_error="ignore")
            except Exception:  # noqa: BLE001, S110 - the workers or the scheduler are gone
                pass

        thread = threading.Thread(target=call, name=f"dagrun-{self.name}-kill", daemon=True)
        thread.start()
        thread.join(KILL_WAIT)

    # -- worker resources

    def _resources(self) -> bool:
        """Whether jobs ask for the ``threads`` resource (decided once workers are known)."""
        if self.use_resources is None:
            workers = self._workers()
            if workers:
                self.use_resources = any("threads" in w.get("resources", {}) for w in workers)
        return bool(self.use_resources)

    def _multi(self) -> bool:
        """Whether some worker offers more than one thread: else a job needs no resource to
        take a whole worker thread, and without one Dask queues the next job on the worker
        (with one, it waits at the scheduler for a round trip: 77 against 141 tasks/s)."""
        offered = [int(w.get("resources", {}).get("threads", 0)) for w in self._workers()]
        return not offered or max(offered) > 1

    def _too_big(self, job: Job) -> str | None:
        offered = [int(w.get("resources", {}).get("threads", 0)) for w in self._workers()]
        if not offered or job.threads <= max(offered):
            return None
        return (
            f"needs {job.threads} threads; the largest worker of executor '{self.name}' "
            f"offers {max(offered)}"
        )

    def _workers(self) -> list[dict[str, Any]]:
        """The workers' descriptions, asked of the scheduler at most every WORKERS_AGE seconds."""
        now = time.monotonic()
        with self._lock:
            seen = self._workers_seen
            if seen is not None and now - seen[0] < WORKERS_AGE:
                return seen[1]
        info = self.client.scheduler_info(n_workers=-1)
        workers = list(info.get("workers", {}).values())
        with self._lock:
            self._workers_seen = (now, workers)
        return workers

    def connected_workers(self) -> list[str]:
        """The cluster's workers now, for `dagrun status` (steering.py)."""
        if self.client is None:
            return []
        return [str(w.get("id") or w.get("name")) for w in self._workers()]

    def _info(self) -> tuple[int, int]:
        workers = self._workers()
        return len(workers), sum(int(w.get("nthreads", 0)) for w in workers)

    # -- the outputs' folders, the run folder (runs.py)

    @staticmethod
    def _prepare(job: Job) -> None:
        for path in job.outputs:
            os.makedirs(os.path.dirname(job.local_path(path)), exist_ok=True)

    def _settle(self, job: Job, outcome: Outcome) -> Outcome:
        where = self.scheduler or self.cluster_kind
        first = f"call {job.call.target}" if job.call is not None else None
        return runs.settle(job, outcome, lambda: runs.command_text(
            job, [f"executor: {self.name} (dask, {where})"], first=first))

    # -- status

    def describe(self) -> dict[str, Any]:
        """The cluster for ``dagrun status``: address, workers, threads, running, slots."""
        now = time.monotonic()
        if self._described is not None and now - self._described[0] < 1.0:
            cached = dict(self._described[1])
            cached["running"] = self.running
            return cached
        workers = threads = None
        if self.client is not None:
            try:
                workers, threads = self._info()
            except Exception:  # noqa: BLE001 - status must not break a build
                pass
        data = {
            "type": "dask",
            "address": self.address,
            "cluster": self.cluster_kind or "external",
            "workers": workers,
            "threads": threads,
            "running": self.running,
            "slots": self.slots,
        }
        self._described = (now, data)
        return dict(data)


def _wait_function(job: Job, future: Any, cancel: threading.Event,
                   started: float) -> Outcome | None:
    """Wait for a function task's future; its outcome if it was cancelled or timed out (the
    future is cancelled: a function running on a worker thread cannot be killed)."""
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    while not done.wait(0.05):
        late = job.timeout is not None and time.monotonic() - started > job.timeout
        if cancel.is_set() or late:
            future.cancel()
            why = "timeout" if late else "cancelled"
            return Outcome(job.id, None, time.monotonic() - started, timed_out=late, error=why)
    return None


def _import_distributed(name: str) -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ExecutorError(
            f"executor '{name}' (type dask) needs dask.distributed: {INSTALL_HINT}"
        ) from exc
    return distributed
