"""The Dask executor's command jobs: handed to Dask in batches, their ends collected in batches.

A thread, a ``submit`` and a waited ``result()`` per job cost the build ~2.7 ms of
CPU per trivial task and ran at ~0.3x plain ``client.map``.  Here
``Batches.add`` only queues the job, and two threads do the rest:

- the submitting thread takes every job queued since its last round and hands
  them to Dask in one ``client.map`` per resource request (one message to the
  scheduler for the lot, as plain ``client.map`` sends); it also stops jobs (a
  cancelled one has its process group killed on its worker and ``grace`` + 2 s
  to end, a second Ctrl-C kills it at once, then its future is cancelled) and
  fails every job once the cluster has had no worker for ``worker_timeout``;
- the collecting thread waits for every future at once (``as_completed``); the
  futures that ended together come back in one ``client.gather`` (one round
  trip, not one per job), and their outcomes go to the executor's
  Completions, whose eventfd wakes the scheduler's epoll once for the lot.
  While every worker thread has a job queued behind it, it lets ends gather
  for COALESCE seconds first (no worker waits for that; each round trip saved
  is CPU the workers get, on a machine they share).  A job whose worker died
  ends *lost* once its orphaned command is killed (and told never to start):
  the scheduler decides whether it runs again.

Packs: on 2 shared cores, Dask's own cost per future (the client's, the
scheduler's, the worker's bookkeeping) is taken from the workers.  So while the
cluster is saturated with short jobs, the submitting thread sends the jobs a
round has beyond what keeps every worker thread busy with a future queued
behind it as *packs* of at most PACK jobs, one future each
(``remote_run.run_commands``: the jobs one after another on the worker, a
result each); see ``_packs`` for when (only the jobs of a task, or matrix, whose
jobs ended lately took under PACK_SHORT on average).  Each job of a pack keeps its own
outcome, timeout, cancel file and process group: cancelling one kills only it
(one not started never starts), and it ends "cancelled" when its pack ends or
its grace has passed, its pack going on; a pack's future is cancelled only
once none of its jobs is left.  A worker that dies under a pack makes every
job of it that has not ended *lost*, as a single job's.  The price: a pack's
jobs wait for one another, so a job that turns out long holds back at most
PACK - 1 others (its task's jobs stop being packed once their average is not
short).

A job ends exactly once: whichever thread ends it takes it out of ``_entries``
(and of its future's list in ``_by_key``) under the lock, and posts its outcome
under the same lock.  No thread here touches the log or the reporters.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .. import remote_run
from . import Job, Outcome

COALESCE = 0.02  # seconds the collector lets ends gather while every worker thread has a queue
PACK = 8  # at most this many jobs in one Dask future (a pack)
PACK_SHORT = 0.2  # seconds: a task's jobs are packed only while its jobs ended lately ran shorter
RECENT = 0.2  # the weight of a job's duration in that average (per task, matrix included)
LOOK_EVERY = 1.0  # seconds between two looks for workers while jobs are out
STOP_POLL = 0.05  # seconds between two looks at stopping jobs (a second Ctrl-C)


class Owner(Protocol):
    """What Batches uses of its DaskExecutor (dask.py): declared here, so that this module
    need not import the one that imports it."""

    name: str
    client: Any
    force: threading.Event
    grace: float
    worker_timeout: float
    token: str
    env_inherit: Any
    environ: dict[str, str]

    def _info(self) -> tuple[int, int]: ...
    def _kill(self, job_ids: list[int], *, force: bool, cancel: bool) -> None: ...
    def _multi(self) -> bool: ...
    def _prepare(self, job: Job) -> None: ...
    def _resources(self) -> bool: ...
    def _settle(self, job: Job, outcome: Outcome) -> Outcome: ...
    def _too_big(self, job: Job) -> str | None: ...
    def _without_workers(self) -> float: ...


@dataclass(slots=True, eq=False)
class _Entry:
    job: Job
    queued: float  # monotonic, when add() took it
    future: Any = None  # its Dask future, while submitted
    stop_at: float | None = None  # cancelled: when its future is given up
    forced: bool = False  # killed without grace already
    slot: int = -1  # its place in its pack's results; -1: a future of its own


class Batches:
    """The command jobs of one DaskExecutor; see the module docstring."""

    def __init__(self, executor: Owner, post: Callable[[Outcome], None]) -> None:
        self.ex = executor
        self._post = post
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the submitting thread waits on it
        self._out = threading.Condition(self._lock)  # the collecting thread: futures given out
        self._entries: dict[int, _Entry] = {}  # every job whose outcome is not posted yet
        self._by_key: dict[str, list[_Entry]] = {}  # the submitted ones, by their future's key
        self._queued: list[_Entry] = []  # for the submitting thread
        self._cancels: list[int] = []
        self._stopping: dict[int, _Entry] = {}  # cancelled and killed, not ended yet
        self._closed = False
        self._next_look = 0.0
        self._ends: Any = None  # distributed.as_completed, made with the threads
        self._threads: list[threading.Thread] = []
        self._recent: dict[str, float] = {}  # by task (a matrix's as one): durations, averaged
        self.packs = self.packed = 0  # packs sent, and the jobs in them (tests, debugging)

    # -- from the scheduler's thread

    @property
    def count(self) -> int:
        """Jobs added whose outcome is not posted yet."""
        return len(self._entries)

    def add(self, job: Job) -> None:
        entry = _Entry(job, time.monotonic())
        with self._lock:
            if not self._threads:
                self._start()
            self._entries[job.id] = entry
            self._queued.append(entry)
            if len(self._queued) == 1:
                self._work.notify()

    def owns(self, job_id: int) -> bool:
        return job_id in self._entries

    def cancel(self, job_id: int) -> None:
        with self._lock:
            if job_id in self._entries:
                self._cancels.append(job_id)
                self._work.notify()

    def cancel_all(self) -> None:
        with self._lock:
            self._cancels.extend(self._entries)
            self._work.notify()

    def wake(self) -> None:
        """Look again now (a second Ctrl-C: kill the stopping jobs at once)."""
        with self._lock:
            self._work.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._work.notify()
            self._out.notify()
        if self._ends is not None:
            self._ends.clear()  # its iterator stops: the collecting thread sees the close
        for thread in self._threads:
            thread.join(timeout=10.0)

    def _start(self) -> None:
        from distributed import as_completed

        self._ends = as_completed(loop=self.ex.client.loop)  # type: ignore[no-untyped-call]
        name = f"dagrun-{self.ex.name}"
        self._threads = [
            threading.Thread(target=self._submitting, name=f"{name}-submit", daemon=True),
            threading.Thread(target=self._collecting, name=f"{name}-collect", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _end(self, e: _Entry, outcome: Outcome) -> bool:
        """Post the job's outcome unless another thread ended it first; forget it.  Its run
        folder first (runs.py: kept when it printed something or failed)."""
        if self._entries.get(e.job.id) is not e:
            return False
        try:
            outcome = self.ex._settle(e.job, outcome)
        except Exception:  # noqa: BLE001, S110 - the outcome carries the output
            pass
        with self._lock:
            if self._entries.get(e.job.id) is not e:
                return False
            del self._entries[e.job.id]
            self._stopping.pop(e.job.id, None)
            mates = self._by_key.get(e.future.key) if e.future is not None else None
            if mates is not None and e in mates:
                mates.remove(e)
                if not mates:
                    del self._by_key[e.future.key]
            self._post(outcome)
        return True

    # -- the submitting thread

    def _submitting(self) -> None:
        while True:
            with self._lock:
                while not (self._queued or self._cancels or self._closed):
                    if not self._work.wait(self._timeout()):
                        break  # time to look at the stopping jobs or the workers
                if self._closed:
                    return
                queued, self._queued = self._queued, []
                cancels, self._cancels = self._cancels, []
            try:
                if cancels:
                    queued = self._cancel(cancels, queued)
                if queued:
                    self._submit(queued)
            except Exception as exc:  # noqa: BLE001 - as a job thread's exception was: lost
                for e in queued:
                    if e.future is None:  # never given to Dask
                        self._end(e, _lost(e, exc))
            try:
                self._look()
            except Exception:  # noqa: BLE001, S110 - the scheduler is gone: the futures say so
                pass

    def _timeout(self) -> float | None:
        """How long the submitting thread may sleep with nothing new: for ever with no job."""
        if self._stopping:
            return STOP_POLL
        if self._entries:
            return max(0.0, self._next_look - time.monotonic()) + 0.001
        return None

    def _cancel(self, ids: list[int], queued: list[_Entry]) -> list[_Entry]:
        """Stop the cancelled jobs: those not submitted yet end now; the rest are killed."""
        cancelled = set(ids)
        for e in queued:
            if e.job.id in cancelled:
                self._end(e, Outcome(e.job.id, None, 0.0, error="cancelled"))
        with self._lock:
            out = [self._entries.get(i) for i in ids]
        kill = [e for e in out if e is not None and e.future is not None and e.stop_at is None]
        if kill:
            forced = self.ex.force.is_set()
            self._kill(kill, force=forced)
            end = time.monotonic() + self.ex.grace + 2.0
            with self._lock:
                for e in kill:
                    e.stop_at, e.forced = end, forced
                    self._stopping[e.job.id] = e
        return [e for e in queued if e.job.id not in cancelled]

    def _kill(self, entries: list[_Entry], *, force: bool, cancel: bool = True) -> None:
        try:
            self.ex._kill([e.job.id for e in entries], force=force, cancel=cancel)
        except Exception:  # noqa: BLE001, S110 - the workers are gone: nothing left to kill
            pass

    def _submit(self, entries: list[_Entry]) -> None:
        """The outputs' folders, then one ``client.map`` per resource request."""
        ex = self.ex
        groups: dict[int | None, list[_Entry]] = {}
        try:
            use = ex._resources()
            multi = use and ex._multi()
        except Exception as exc:  # noqa: BLE001 - the scheduler is gone: the jobs are lost
            for e in entries:
                self._end(e, _lost(e, exc))
            return
        for e in entries:
            try:
                ex._prepare(e.job)
                problem = ex._too_big(e.job) if use else None
            except Exception as exc:  # noqa: BLE001 - as a job thread's exception was
                self._end(e, _lost(e, exc))
                continue
            if problem is not None:
                self._end(e, Outcome(e.job.id, None, 0.0, error=problem))
                continue
            groups.setdefault(e.job.threads if multi else None, []).append(e)
        for threads, group in groups.items():
            for units in self._packs(group):
                try:
                    futures = self._map(units, threads)
                except Exception as exc:  # noqa: BLE001
                    for unit in units:
                        for e in unit:
                            self._end(e, _lost(e, exc))
                    continue
                self._given(units, futures)

    def _given(self, units: list[list[_Entry]], futures: list[Any]) -> None:
        with self._lock:
            idle = not self._by_key
            for unit, future in zip(units, futures, strict=True):
                for slot, e in enumerate(unit):
                    e.future, e.slot = future, slot if len(unit) > 1 else -1
                self._by_key[future.key] = list(unit)
                if len(unit) > 1:
                    self.packs += 1
                    self.packed += len(unit)
            self._ends.update(futures)
            if idle:
                self._out.notify()

    def _packs(self, group: list[_Entry]) -> list[list[list[_Entry]]]:
        """The group as futures: ``[singles]``, or ``[singles, packs]`` while the cluster is
        saturated with short jobs.  Only a short task's jobs are packed: one whose jobs (all of
        a matrix's, as one task) ended lately in under PACK_SHORT on average; a task none of
        whose jobs has ended yet is not (a pack runs its jobs one after another: a long one
        would hold its pack-mates back).  Singles first: the other jobs, and as many short ones
        as keep every worker thread busy with one future queued behind it (counting the
        futures out already); the rest in packs of at most PACK, as even as can be, unless
        fewer than 2 are left over."""
        recent = self._recent
        short = [e for e in group if recent.get(_rule(e.job), PACK_SHORT) < PACK_SHORT]
        if len(short) < 2:
            return [[[e] for e in group]]
        try:
            threads = self.ex._info()[1]
        except Exception:  # noqa: BLE001 - no answer: no packs
            threads = 0
        with self._lock:
            out = len(self._by_key)
        lone = max(0, 2 * threads - out - (len(group) - len(short))) if threads else len(short)
        rest = short[lone:]
        if len(rest) < 2:
            return [[[e] for e in group]]
        count = -(-len(rest) // PACK)
        size, more = divmod(len(rest), count)
        packs, start = [], 0
        for n in range(count):
            end = start + size + (n < more)
            packs.append(rest[start:end])
            start = end
        packed = {id(e) for e in rest}
        singles = [[e] for e in group if id(e) not in packed]
        return [singles, packs] if singles else [packs]

    def _map(self, units: list[list[_Entry]], threads: int | None) -> list[Any]:
        """One ``client.map``: of ``run_command`` for singles, of ``run_commands`` for packs."""
        ex = self.ex
        env = dict(ex.environ) if ex.env_inherit else {}
        resources = {"threads": threads} if threads is not None else None
        if len(units[0]) > 1:
            packs = [[_args(e.job, env, ex.env_inherit, ex.grace) for e in u] for u in units]
            return list(ex.client.map(
                remote_run.run_commands, [ex.token] * len(units), packs,
                key=[f"dagrun-pack-{u[0].job.task}-{u[0].job.id}-{len(u)}-{uuid.uuid4().hex[:8]}"
                     for u in units],
                pure=False, retries=0, resources=resources,
            ))
        jobs = [u[0].job for u in units]
        envs = [{**env, **j.env} for j in jobs] if env else [dict(j.env) for j in jobs]
        n = len(jobs)
        return list(ex.client.map(
            remote_run.run_command,
            [ex.token] * n, [j.id for j in jobs], [j.cmd for j in jobs],
            [j.local_cwd for j in jobs], envs, [not ex.env_inherit] * n,
            [j.timeout for j in jobs], [ex.grace] * n,
            key=[f"dagrun-{j.task}-{j.id}-{uuid.uuid4().hex[:8]}" for j in jobs],
            pure=False, retries=0, resources=resources,
        ))

    def _look(self) -> None:
        """Stopping jobs past their grace, a second Ctrl-C, and a cluster without workers."""
        now = time.monotonic()
        with self._lock:
            stopping = list(self._stopping.values())
        if stopping:
            if self.ex.force.is_set():
                unforced = [e for e in stopping if not e.forced]
                if unforced:
                    self._kill(unforced, force=True)
                    for e in unforced:
                        e.forced = True
            late = [e for e in stopping if e.stop_at is not None and now >= e.stop_at]
            self._give_up(late, "cancelled")
        if not self._entries or now < self._next_look:
            return
        self._next_look = now + LOOK_EVERY
        if self.ex._without_workers() > self.ex.worker_timeout:
            with self._lock:
                out = [e for e in self._entries.values() if e.future is not None]
            self._give_up(out, (
                f"executor '{self.ex.name}': no Dask worker for {self.ex.worker_timeout:g} s "
                "(the cluster lost every worker, or none ever started; worker_timeout)"
            ))

    def _give_up(self, entries: list[_Entry], why: str) -> None:
        """End these submitted jobs; cancel their futures, but not a pack that still runs a
        job not given up (that one ends when its pack does)."""
        entries = [e for e in entries if e.future is not None]
        if not entries:
            return
        leaving = set(entries)
        with self._lock:
            futures = {e.future.key: e.future for e in entries
                       if all(m in leaving for m in self._by_key.get(e.future.key, ()))}
        try:
            if futures:
                self.ex.client.cancel(list(futures.values()))
        except Exception:  # noqa: BLE001, S110 - the connection is gone: so are they
            pass
        now = time.monotonic()
        for e in entries:
            self._end(e, Outcome(e.job.id, None, now - e.queued, error=why))

    # -- the collecting thread

    def _collecting(self) -> None:
        ends = self._ends
        while True:
            with self._lock:
                while not self._by_key and not self._closed:
                    self._out.wait()
                if self._closed:
                    return
            got = False
            try:
                for batch in ends.batches():  # until every future given to it has ended
                    got = True
                    if self._busy(len(batch)):
                        time.sleep(COALESCE)
                        batch += ends.next_batch(block=False)
                    self._collect(batch)
            except Exception:  # noqa: BLE001, S110 - the client is closing: the jobs end there
                pass
            if not got:  # never spin (a future that left as_completed without ending its job)
                with self._lock:
                    self._out.wait(STOP_POLL)

    def _busy(self, ended: int) -> bool:
        """Whether every worker thread still has a job queued behind the one it runs."""
        try:
            threads = self.ex._info()[1]
        except Exception:  # noqa: BLE001 - no answer: no waiting
            return False
        return bool(threads) and len(self._by_key) - ended >= 2 * threads

    def _collect(self, futures: list[Any]) -> None:
        """Ended futures of current attempts: results gathered at once, the lost run again."""
        now = time.monotonic()
        with self._lock:
            current = [(e, f) for f in futures
                       for e in self._by_key.get(f.key, ()) if e.future is f]
        finished = list({f.key: f for _, f in current if f.status == "finished"}.values())
        results = self._gather(finished)
        lost: list[_Entry] = []
        for e, f in current:
            outcome = self._outcome(e, f, results.get(f.key), now - e.queued)
            if outcome is None:
                lost.append(e)
                continue
            if outcome.exit_code is not None:
                d, rule = outcome.duration, _rule(e.job)
                recent = self._recent.get(rule, d)
                self._recent[rule] = recent + RECENT * (d - recent)
            self._end(e, outcome)
        if lost:
            self._lost(lost)

    def _gather(self, futures: list[Any]) -> dict[str, Any]:
        if not futures:
            return {}
        try:
            values = self.ex.client.gather(futures, errors="raise")
        except Exception:  # noqa: BLE001 - one of them went wrong meanwhile: each on its own
            return {}
        return {f.key: v for f, v in zip(futures, values, strict=True)}

    def _outcome(self, e: _Entry, future: Any, r: Any, waited: float) -> Outcome | None:
        """How the job ended; None when its worker died (it runs again)."""
        from distributed.scheduler import KilledWorker

        job_id = e.job.id
        try:
            if r is None and future.status == "finished":
                r = future.result()
            if r is not None and e.slot >= 0:
                r = r[e.slot]  # a pack's results: one per job
            if future.status == "error":
                exc = future.exception()
                if isinstance(exc, KilledWorker):
                    return None
                return Outcome(job_id, None, waited, error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - the scheduler or the connection went away
            return Outcome(job_id, None, waited, error=f"{type(exc).__name__}: {exc}", lost=True)
        if r is None:  # cancelled: the scheduler or the connection went away
            if e.stop_at is not None:
                return Outcome(job_id, None, waited, error="cancelled")
            return Outcome(job_id, None, waited, error=f"Dask future {future.status}", lost=True)
        return Outcome(
            job_id, r["code"], r["duration"], r.get("stdout", ""), r.get("stderr", ""),
            r.get("timed_out", False), r.get("maxrss_kb", 0), r.get("error"),
        )

    def _lost(self, lost: list[_Entry]) -> None:
        """Jobs whose worker died: their orphaned commands are killed wherever they still run
        (and marked cancelled: never started again), then they end lost, or cancelled."""
        self._kill(lost, force=True, cancel=True)
        for e in lost:
            if e.stop_at is not None:
                self._end(e, Outcome(e.job.id, None, 0.0, error="cancelled"))
            else:
                self._end(e, Outcome(e.job.id, None, 0.0, error="its Dask worker died",
                                     lost=True))


def _args(job: Job, env: dict[str, str], inherit: bool, grace: float) -> tuple[Any, ...]:
    """A job's ``run_command`` arguments after the token, for a pack."""
    return (job.id, job.cmd, job.local_cwd, {**env, **job.env} if env else dict(job.env),
            not inherit, job.timeout, grace)


def _rule(job: Job) -> str:
    """The task a job's duration is averaged under: a matrix's tasks (``name[var=value]``) as
    one."""
    return job.task.partition("[")[0]


def _lost(e: _Entry, exc: BaseException) -> Outcome:
    return Outcome(e.job.id, None, 0.0, error=f"{type(exc).__name__}: {exc}", lost=True)
