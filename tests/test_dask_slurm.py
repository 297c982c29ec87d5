"""The dask executor with dask_jobqueue.SLURMCluster: the rendered job script (always), and a
build whose tasks really run as Slurm jobs on the real single-node Slurm (``slurm`` mark)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from realproc import logged_tasks, wait_for

pytest.importorskip("dask_jobqueue")
pytestmark = [pytest.mark.dask, pytest.mark.slow]

OPTIONS = {
    "cores": 1,
    "processes": 1,
    "memory": "1GiB",
    "queue": "debug",
    "walltime": "00:10:00",
    "scheduler_options": {"host": "127.0.0.1", "dashboard_address": ":0"},
    "worker_extra_args": ["--resources", "threads=1"],
}

GOLDEN = """\
#!/usr/bin/env bash

#SBATCH -J dask-worker
#SBATCH -p debug
#SBATCH -n 1
#SBATCH --cpus-per-task=1
#SBATCH --mem=1G
#SBATCH -t 00:10:00

PYTHON -m distributed.cli.dask_worker tcp://127.0.0.1:PORT --name dummy-name --nthreads 1 \
--memory-limit 1.00GiB --nanny --death-timeout 60 --resources threads=1
"""


def test_the_slurm_job_script_the_executor_makes(tmp_path):
    """Without Slurm: the cluster class is called with the manifest's options, nothing else."""
    import distributed

    from dagrun.executors.dask import DaskExecutor

    ex = DaskExecutor("slurm", cluster="dask_jobqueue.SLURMCluster", options=OPTIONS,
                      state_dir=str(tmp_path))
    cluster = ex._make_cluster(distributed)  # no scale: that would call sbatch
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    script = script.replace(sys.executable, "PYTHON")
    script = re.sub(r"tcp://127\.0\.0\.1:\d+", "tcp://127.0.0.1:PORT", script)
    assert script == GOLDEN


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


@pytest.mark.slurm
def test_tasks_run_as_slurm_jobs(project, slurm_cluster):
    options = dict(OPTIONS, python=sys.executable)
    project.manifest(f"""
[executors.hpc]
type = "dask"
cluster = "dask_jobqueue.SLURMCluster"
options = {_toml(options)}
scale = 1

[tasks.first]
cmd = "echo $SLURM_JOB_ID > first.out"
outputs = ["first.out"]
executor = "hpc"

[tasks.second]
cmd = "cat first.out > second.out; echo $SLURM_JOB_ID >> second.out"
inputs = ["first.out"]
outputs = ["second.out"]
executor = "hpc"
""")
    r = project.run("build")
    assert r.code == 0, r.out + r.err
    ids = project.read("second.out").split()
    assert len(ids) == 2 and ids[0] == ids[1] and ids[0].isdigit()  # one worker job ran both
    job = subprocess.run(["scontrol", "show", "job", ids[0]], capture_output=True, text=True)
    assert "JobName=dask-worker" in job.stdout, job.stdout + job.stderr
    assert logged_tasks(project.root) == ["first", "second"]

    def queue_empty() -> bool:  # dagrun's cluster gave its jobs back (after "completing")
        queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, check=True)
        return queue.stdout.strip() == ""

    wait_for(queue_empty, "the Slurm queue to empty")


WAITING = """
[executors.hpc]
type = "dask"
cluster = "dask_jobqueue.SLURMCluster"
options = {options}

[tasks.a]
cmd = "sleep 60"
executor = "hpc"
"""


def test_ctrl_c_with_a_slurm_cluster_executor_exits_130(dagrun_proc):
    """Importing dask_jobqueue sets SIGINT to sys.exit(): a build ended with status 0, no
    summary.  No scale: no worker ever comes (no Slurm needed), the task waits."""
    import os
    import signal
    import time

    dagrun_proc.manifest(WAITING.format(options=_toml(OPTIONS)))
    p = dagrun_proc.start("build")
    snapshot = dagrun_proc.root / ".dagrun" / "executors.json"
    wait_for(lambda: '"a"' in _read(snapshot), "the task to be submitted", timeout=60)
    time.sleep(0.5)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, out + err
    assert "interrupted" in out and "Traceback" not in err


def _read(path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
