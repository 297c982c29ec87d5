"""Every executor the contract suite runs against, in one place: name -> Kit.

A Kit's ``make(root)`` returns an executor (not started) whose jobs run with
``root`` as the manifest's folder (the ``shared_dir`` fixture: the ssh test user
can work there too).  ``lose(executor)`` drops the
executor's backend under its running jobs (None: it cannot lose a job);
``processes``: its jobs are real processes (timeouts kill process groups).
The HTTP and Dask executors join by adding a Kit here.
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


KITS: dict[str, Kit] = {
    "fake": Kit(_fake, _lose_fake, processes=False),
    "local": Kit(_local),
    "ssh": Kit(_ssh, _drop_ssh, skip=can_run),
}
