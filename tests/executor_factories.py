"""Every executor the contract suite runs against, in one place: name -> Kit.

A Kit's ``make(root)`` returns an executor (not started) whose jobs run with
``root`` as the manifest's folder (the ``shared_dir`` fixture: the ssh test user
can work there too).  ``lose(executor)`` drops the
executor's backend under its running jobs (None: it cannot lose a job);
``processes``: its jobs are real processes (timeouts kill process groups).
The HTTP executor comes with two real ``dagrun worker`` processes; the Dask one
runs on the shared LocalCluster of tests/dask_cluster.py.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sshd import can_run, shared_server

from dagrun.executors import Context, Executor, Job, Outcome, create
from dagrun.executors.fake import FakeExecutor


@dataclass(frozen=True)
class Kit:
    make: Callable[[Path], Executor]
    lose: Callable[[Executor], None] | None = None
    processes: bool = True
    skip: Callable[[], str | None] = lambda: None  # why it cannot run here, or None
    fixture: str | None = None  # a fixture it needs (the real Slurm)


def _context(tmp_path: Path) -> Context:
    return Context(str(tmp_path), str(tmp_path / ".dagrun"), dict(os.environ), 4)


def _run_for_real(job: Job) -> Outcome:
    """The fake's handler: the command, run to its end when the fake ends the job."""
    env = {"PATH": os.environ["PATH"], **job.env}
    done = subprocess.run(
        ["/bin/sh", "-c", job.cmd], cwd=job.local_cwd, env=env, capture_output=True, text=True
    )
    return Outcome(job.id, done.returncode, 0.0, done.stdout, done.stderr)


def _fake(tmp_path: Path) -> Executor:
    return FakeExecutor(_run_for_real, slots=4)


def _local(tmp_path: Path) -> Executor:
    return create("local", "local", {"grace_period": 0.5}, _context(tmp_path))


def _ssh(tmp_path: Path) -> Executor:
    server = shared_server()
    options = server.options(workspace=str(tmp_path), max_jobs=4, grace_period=0.5)
    return create("ssh", "lab", options, _context(tmp_path))


def _drop_ssh(executor: Executor) -> None:
    import signal

    pid = getattr(executor, "master_pid", None)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the connection drops under every running job


def _lose_fake(executor: Executor) -> None:
    assert isinstance(executor, FakeExecutor)
    executor.handler = lambda job: Outcome(job.id, None, 0.0, error="worker gone", lost=True)


def _http(tmp_path: Path) -> Executor:
    from http_workers import start_worker

    from dagrun.executors.http_pull import HttpExecutor

    class WithWorkers(HttpExecutor):
        """Two real workers start leasing as soon as the server is up."""

        workers: list[subprocess.Popen[bytes]] = []

        def start(self) -> None:
            super().start()
            self.workers = [
                start_worker(self, jobs=2, directory=tmp_path / ".workers" / str(n), grace=5.0)
                for n in range(2)
            ]

    options = {"max_jobs": 4, "lease_timeout": 2.0, "grace_period": 2.0}
    return WithWorkers.from_options("pool", options, _context(tmp_path))


def _kill_http_workers(executor: Executor) -> None:
    for proc in getattr(executor, "workers", []):
        proc.kill()  # their leases go silent: lost after lease_timeout


def _dask(tmp_path: Path) -> Executor:
    from dask_cluster import dask_executor_factory

    executor: Executor = dask_executor_factory(tmp_path)
    return executor


def _no_dask() -> str | None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return "dask.distributed is not installed (pip install 'dagrun[dask]')"
    return None


def _slurm(tmp_path: Path) -> Executor:
    """Jobs on the real single-node Slurm (the ``slurm_cluster`` fixture sets SLURM_CONF)."""
    return create("slurm", "hpc", {"grace_period": 0.5, "max_jobs": 4}, _context(tmp_path))


def _no_slurm() -> str | None:
    import shutil

    if os.geteuid() != 0 or not shutil.which("slurmctld") or not shutil.which("sbatch"):
        return "needs root and slurm-wlm (slurmctld, slurmd, munge)"
    return None


def _down_slurm_node(executor: Executor) -> None:
    """The node fails under the running job (NODE_FAIL), and comes back at once."""
    from slurm import fail_node_and_resume  # noqa: PLC0415  (the Slurm kit's helpers)

    fail_node_and_resume()


KITS: dict[str, Kit] = {
    "fake": Kit(_fake, _lose_fake, processes=False),
    "local": Kit(_local),
    "ssh": Kit(_ssh, _drop_ssh, skip=can_run),
    "http": Kit(_http, _kill_http_workers),
    "dask": Kit(_dask, skip=_no_dask),  # a killed worker's job is rerun by the executor itself
    "slurm": Kit(_slurm, _down_slurm_node, skip=_no_slurm, fixture="slurm_cluster"),
}
