"""The Dask executor's packs (dask_batch.py): several short jobs in one Dask future while the
cluster is saturated, each job keeping its own outcome, cancel and loss (a real LocalCluster)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
from dask_cluster import dask_executor_factory
from realproc import DEADLINE, assert_groups_gone, wait_for

from dagrun.executors import Job, Outcome

pytest.importorskip("distributed")
pytestmark = [pytest.mark.dask, pytest.mark.slow]


def _job(tmp_path: Path, job_id: int, cmd: str, task: str = "t") -> Job:
    """One job of the matrix ``task`` (only the jobs of a task seen to be short are packed)."""
    name = f"{task}[i={job_id}]"
    return Job(job_id, name, cmd, str(tmp_path), ".", {"DAGRUN_TASK": name},
               str(tmp_path / ".dagrun" / "runs" / f"{task}{job_id}"))


def _started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[list[int]]]:
    """A started executor that has run one short job (packs need a duration seen), and the
    job ids of each future it gives Dask from then on."""
    ex = dask_executor_factory(tmp_path)
    ex.start()
    ex.submit(_job(tmp_path, 999, "true"))
    assert [o.ok for o in _all(ex, 1)] == [True]
    assert ex._batches.packs == 0  # one job: a future of its own
    units: list[list[int]] = []
    given = ex._batches._given

    def spy(us: list[list[Any]], futures: list[Any]) -> None:
        units.extend([e.job.id for e in u] for u in us)
        given(us, futures)

    monkeypatch.setattr(ex._batches, "_given", spy)
    return ex, units


def _all(ex: Any, n: int) -> list[Outcome]:
    outcomes: list[Outcome] = []
    end = time.monotonic() + 4 * DEADLINE
    while len(outcomes) < n and time.monotonic() < end:
        outcomes += ex.wait(timeout=1.0)
    assert len(outcomes) == n, outcomes
    return outcomes


def _pid_in(path: Path) -> int:
    """The pid a job wrote to ``path`` (``echo $$ > path`` makes the file before writing it)."""
    wait_for(lambda: path.exists() and path.read_text().endswith("\n"), f"{path.name} written")
    return int(path.read_text())


def _gated(i: int) -> str:
    """Waits for the file ``gate``, marks that it started, sleeps while ``hold<i>`` exists."""
    return (f"while [ ! -e gate ]; do sleep 0.02; done; echo $$ > g{i}; "
            f"if [ -e hold{i} ]; then sleep 60; fi; touch done{i}")


def _a_pack(units: list[list[int]], size: int) -> list[int]:
    packs = [u for u in units if len(u) >= size]
    assert packs, units
    return packs[0]


def test_short_jobs_go_in_packs_each_with_its_own_outcome(tmp_path, dask_scheduler, monkeypatch):
    ex, units = _started(tmp_path, monkeypatch)
    try:
        n = 40
        for i in range(n):
            code = 7 if i % 5 == 3 else 0
            ex.submit(_job(tmp_path, i, f"echo out-{i}; echo err-{i} >&2; exit {code}"))
        by_id = {o.job_id: o for o in _all(ex, n)}
        assert sorted(by_id) == list(range(n))
        for i, o in by_id.items():
            assert o.exit_code == (7 if i % 5 == 3 else 0), o
            assert (o.stdout, o.stderr) == (f"out-{i}\n", f"err-{i}\n")
            assert not o.lost and not o.timed_out
        assert ex._batches.packs > 0 and ex._batches.packed >= 2 * ex._batches.packs
        assert sorted(i for u in units for i in u) == list(range(n))
        mixed = [u for u in units if len(u) > 1 and {i % 5 == 3 for i in u} == {True, False}]
        assert mixed, units  # a failing job whose pack-mates succeeded
        assert ex._batches.count == 0 and not ex._batches._by_key
    finally:
        ex.close()


def test_a_timeout_in_a_pack_is_that_jobs_alone(tmp_path, dask_scheduler, monkeypatch):
    ex, units = _started(tmp_path, monkeypatch)
    try:
        jobs = [_job(tmp_path, i, "true") for i in range(24)]
        jobs[10] = replace(jobs[10], cmd="sleep 30", timeout=0.5)
        for job in jobs:
            ex.submit(job)
        by_id = {o.job_id: o for o in _all(ex, len(jobs))}
        assert by_id[10].timed_out and not by_id[10].ok
        assert all(o.ok for i, o in by_id.items() if i != 10)
        assert ex._batches.packs > 0
    finally:
        ex.close()


def test_a_cancelled_job_in_a_pack_ends_alone(tmp_path, dask_scheduler, monkeypatch):
    """The pack's running job is killed, the one not started never starts; the rest run."""
    ex, units = _started(tmp_path, monkeypatch)
    try:
        n = 30
        for i in range(n):
            ex.submit(_job(tmp_path, i, _gated(i)))
        wait_for(lambda: sum(len(u) for u in units) == n, "every job given to Dask")
        first, second, *rest = _a_pack(units, 3)
        (tmp_path / f"hold{first}").touch()
        ex.cancel(second)  # not started: its pack waits for the gate, or has not started
        (tmp_path / "gate").touch()
        group = _pid_in(tmp_path / f"g{first}")  # the pack's first job started
        ex.cancel(first)
        by_id = {o.job_id: o for o in _all(ex, n)}
        for i in (first, second):
            assert not by_id[i].ok and not by_id[i].lost, by_id[i]
        assert_groups_gone({group})
        assert not (tmp_path / f"g{second}").exists()  # never started
        assert not (tmp_path / f"done{first}").exists()
        for i in set(range(n)) - {first, second}:
            assert by_id[i].ok, by_id[i]
            assert (tmp_path / f"done{i}").exists()
        assert rest  # pack-mates after the cancelled ones ran (checked above)
    finally:
        ex.close()


def test_a_worker_killed_under_a_pack_loses_its_jobs_once(tmp_path, dask_scheduler, monkeypatch):
    """Every job of the pack ends lost: the running one's orphan is killed, the others never
    start (none runs twice at once: the scheduler would run them again as new jobs)."""
    from distributed import Client

    ex, units = _started(tmp_path, monkeypatch)
    try:
        n = 30
        for i in range(n):
            ex.submit(_job(tmp_path, i, _gated(i)))
        wait_for(lambda: sum(len(u) for u in units) == n, "every job given to Dask")
        pack = _a_pack(units, 2)
        (tmp_path / f"hold{pack[0]}").touch()
        (tmp_path / "gate").touch()
        group = _pid_in(tmp_path / f"g{pack[0]}")  # the pack's first job started
        os.kill(psutil.Process(group).ppid(), signal.SIGKILL)  # its worker
        by_id = {o.job_id: o for o in _all(ex, n)}
        for i in pack:
            assert by_id[i].lost and by_id[i].exit_code is None, by_id[i]
        assert_groups_gone({group})
        time.sleep(1.0)  # a job that was told never to start does not start later either
        started = {i for i in range(n) if (tmp_path / f"g{i}").exists()}
        assert not started & set(pack[1:])
        for o in by_id.values():  # the other futures on that worker may be lost too
            assert o.ok or o.lost, o
        assert ex._batches.count == 0 and not ex._batches._by_key
    finally:
        ex.close()
        with Client(dask_scheduler, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=30)  # the nanny restarts it, for the tests after


def test_an_orphan_started_before_its_marker_is_killed_by_its_mark():
    """A worker killed between starting a command and writing its marker (``.pgid``) left the
    command running with nothing naming it (CI: the test above, once).  The command's
    environment names it: a forced kill of a job that has no marker finds it there."""
    import shutil
    import subprocess
    import uuid

    from dagrun import remote_run

    token = uuid.uuid4().hex

    def command(job_id: int, cmd: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, remote_run.MARK: f"{token}.{job_id}"}
        return subprocess.Popen(["sh", "-c", cmd], env=env, start_new_session=True)

    orphan = command(5, "sleep 30 & sleep 30")
    other = command(50, "sleep 30")  # job 50's mark starts like job 5's
    try:
        assert remote_run.kill_jobs(token, [5], force=True) == []  # no marker names it
        assert orphan.wait(timeout=DEADLINE) == -signal.SIGKILL
        assert_groups_gone({orphan.pid})
        assert other.poll() is None
        assert os.path.exists(os.path.join(remote_run.marker_dir(token), "5.cancel"))
    finally:
        for p in (orphan, other):
            p.kill()
            p.wait()
        shutil.rmtree(remote_run.marker_dir(token), ignore_errors=True)


# -- how a batch is split (no cluster)


class _Owner:
    def __init__(self, threads: int) -> None:
        self.threads = threads

    def _info(self) -> tuple[int, int]:
        return 1, self.threads


def _split(n: int, *, threads: int = 2, out: int = 0, recent: float | None = 0.001,
           other: int = 0) -> list[Any]:
    """How ``n`` jobs of task ``t`` (then ``other`` jobs of task ``u``, never seen) go."""
    from dagrun.executors.dask_batch import Batches, _Entry

    b = Batches(_Owner(threads), lambda o: None)  # type: ignore[arg-type]
    b._recent = {} if recent is None else {"t": recent}
    b._by_key = {str(k): [] for k in range(out)}
    group = [_Entry(_job(Path("/x"), i, "true"), 0.0) for i in range(n)]
    group += [_Entry(_job(Path("/x"), n + i, "true", "u"), 0.0) for i in range(other)]
    return [[len(u) for u in units] for units in b._packs(group)]


def test_how_a_batch_is_split_into_singles_and_packs():
    assert _split(20) == [[1, 1, 1, 1], [8, 8]]  # a queued future behind each thread first
    assert _split(20, out=4) == [[7, 7, 6]]  # the threads are busy already: all in packs
    assert _split(5) == [[1, 1, 1, 1, 1]]  # one left over: no pack
    assert _split(6) == [[1, 1, 1, 1], [2]]
    assert _split(1, out=10) == [[1]]
    assert _split(20, recent=None) == [[1] * 20]  # no job has ended yet
    assert _split(20, recent=0.5) == [[1] * 20]  # the jobs are not short
    assert _split(20, other=3) == [[1, 1, 1, 1], [7, 6, 6]]  # a task not seen yet: singles
    assert _split(0, other=20) == [[1] * 20]
