"""The real single-node Slurm fixture works: a batch job runs and sees its job id."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_a_batch_job_runs_on_the_real_slurm(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    sub = subprocess.run(
        ["sbatch", "--parsable", "-o", str(out), "--wrap", "echo job=$SLURM_JOB_ID"],
        capture_output=True, text=True, check=True, env=dict(os.environ),
    )
    job_id = sub.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if out.exists() and out.read_text().strip():
            break
        time.sleep(0.2)
    assert out.read_text().strip() == f"job={job_id}"
