"""`dagrun build` with an http executor: real server, real workers, the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from http_workers import ROOT, start_worker, stop, wait_for, worker_env

pytestmark = pytest.mark.slow
EXAMPLES = ROOT / "examples" / "http"
DAGRUN = f"{sys.executable} -m dagrun"


def _project(tmp_path: Path, pool: str, tasks: str) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "dagrun.toml").write_text(f"[executors.pool]\ntype = \"http\"\n{pool}\n{tasks}")
    return project


def _build(project: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    out = open(project.parent / "build.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagrun", "--progress", "plain", "build", *args], cwd=project,
        env=worker_env(DAGRUN=DAGRUN, **env), stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out.close()
    return proc


def _output(project: Path) -> str:
    return (project.parent / "build.out").read_text()


def _written(path: Path) -> bool:
    return path.exists() and path.read_text().endswith("\n")


def _log_records(project: Path, task: str) -> int:
    lines = (project / ".dagrun" / "log").read_text().splitlines()[1:]
    return sum(1 for line in lines if json.loads(line).get("task") == task)


def _worker_command(project: Path) -> list[str]:
    wait_for(lambda: "dagrun worker http" in _output(project), what="the worker command")
    line = next(x for x in _output(project).splitlines() if "dagrun worker http" in x)
    return line.split()[2:]  # URL --token-file FILE


# waits (up to 20 s) until the three middle tasks all started: they must run at once
BARRIER = (
    "i=0; while [ $(ls bar.* | wc -l) -lt 3 ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done"
)


def test_a_diamond_spreads_over_three_workers(tmp_path):
    middle = "".join(
        f"""
[tasks.{m}]
cmd = "echo $DAGRUN_WORKER > {m}.txt; touch bar.{m}; {BARRIER}"
inputs = ["a.txt"]
outputs = ["{m}.txt"]
executor = "pool"
"""
        for m in ("b", "c", "e")
    )
    tasks = f"""
[tasks.a]
cmd = "echo a > a.txt"
outputs = ["a.txt"]
executor = "pool"
{middle}
[tasks.d]
cmd = "cat b.txt c.txt e.txt > d.txt"
inputs = ["b.txt", "c.txt", "e.txt"]
outputs = ["d.txt"]
executor = "pool"
"""
    shutil.copy(EXAMPLES / "local.sh", tmp_path / "local.sh")
    project = _project(tmp_path, f'provisioner = "sh {tmp_path}/local.sh"', tasks)
    proc = _build(project, "-j", "3", WORKERS="3")
    assert proc.wait(timeout=90) == 0, _output(project)
    workers = (project / "d.txt").read_text().split()
    assert len(workers) == 3 and len(set(workers)) == 3  # b, c and e ran at once, one per worker
    assert "5 succeeded" in _output(project)


def test_a_killed_worker_s_task_is_leased_again_and_logged_once(tmp_path):
    tasks = """
[tasks.slow]
cmd = "echo $$ >> pids; sleep 1; echo done > slow.txt"
outputs = ["slow.txt"]
executor = "pool"
"""
    project = _project(tmp_path, "lease_timeout = 4", tasks)  # see test_http_executor's twin
    proc = _build(project)
    url, _, token_file = _worker_command(project)
    first = start_worker(url, token_file)
    wait_for(lambda: _written(project / "pids"), what="the task to start")
    stop(first)  # kill -9 the worker (its guard kills its task)
    second = start_worker(url, token_file)
    assert proc.wait(timeout=60) == 0, _output(project)
    assert len((project / "pids").read_text().split()) == 2  # it ran twice
    assert _log_records(project, "slow") == 1  # and is recorded once
    assert "1 succeeded" in _output(project)
    assert second.wait(timeout=20) == 0  # told the build is over


def test_ctrl_c_of_the_build_kills_the_workers_tasks(tmp_path):
    tasks = """
[tasks.forever]
cmd = "echo $$ > pid; exec sleep 60"
executor = "pool"
"""
    project = _project(tmp_path, "lease_timeout = 2\ngrace_period = 2", tasks)
    proc = _build(project)
    url, _, token_file = _worker_command(project)
    worker = start_worker(url, token_file)
    wait_for(lambda: _written(project / "pid"), what="the task to start")
    pid = int((project / "pid").read_text())
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == 130, _output(project)
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.05)
    assert worker.wait(timeout=20) == 0
    assert not (project / ".dagrun" / "log").exists() or _log_records(project, "forever") == 0


def test_a_bad_http_executor_option_is_a_clear_error(tmp_path):
    project = _project(tmp_path, 'stage = "rsync"', '[tasks.t]\ncmd = "true"\nexecutor = "pool"\n')
    proc = _build(project)
    assert proc.wait(timeout=30) == 2
    assert "stage" in _output(project) and "Traceback" not in _output(project)


@pytest.mark.slurm
def test_the_sbatch_provisioner_on_a_real_slurm(slurm_cluster, tmp_path):
    shutil.copy(EXAMPLES / "sbatch.sh", tmp_path / "sbatch.sh")
    tasks = """
[tasks.where]
matrix = { n = [1, 2] }
cmd = "echo job=$SLURM_JOB_ID > where{n}.txt"
outputs = ["where{n}.txt"]
executor = "pool"
"""
    pool = f'provisioner = "sh {tmp_path}/sbatch.sh"\nmax_workers = 2\nlease_timeout = 5'
    project = _project(tmp_path, pool, tasks)
    proc = _build(project, "-j", "2", SLURM_LOG_DIR=str(tmp_path), WORKER_JOBS="1")
    assert proc.wait(timeout=110) == 0, _output(project) + "".join(
        p.read_text() for p in tmp_path.glob("dagrun-worker-*.out"))
    for n in (1, 2):
        assert (project / f"where{n}.txt").read_text().startswith("job=")
        assert (project / f"where{n}.txt").read_text().strip() != "job="


def test_the_provisioner_runs_again_while_tasks_wait_up_to_max_workers(tmp_path):
    tasks = "".join(
        f"""
[tasks.{m}]
cmd = "echo $DAGRUN_WORKER > {m}.txt; touch bar.{m}; {BARRIER}"
outputs = ["{m}.txt"]
executor = "pool"
"""
        for m in ("b", "c", "e")
    )
    shutil.copy(EXAMPLES / "local.sh", tmp_path / "local.sh")
    pool = f'provisioner = "sh {tmp_path}/local.sh"\nmax_workers = 3'
    project = _project(tmp_path, pool, tasks)
    proc = _build(project, "-j", "3", WORKERS="1")  # one worker per run of the provisioner
    assert proc.wait(timeout=90) == 0, _output(project)
    logs = sorted(p.name for p in (project / ".dagrun" / "http").glob("*.log"))
    assert logs == [f"pool.provisioner-{n}.log" for n in (1, 2, 3)]
    workers = {(project / f"{m}.txt").read_text() for m in ("b", "c", "e")}
    assert len(workers) == 3


def test_no_worker_within_worker_timeout_fails_the_build_with_progress(tmp_path):
    tasks = """
[tasks.a]
cmd = "true"
executor = "pool"
"""
    project = _project(tmp_path, "worker_timeout = 12", tasks)
    proc = _build(project)
    assert proc.wait(timeout=60) == 1, _output(project)
    out = _output(project)
    import re

    assert re.search(r"executor 'pool': 0 workers connected, 1 task\(s\) waiting \(\d s left "
                     r"of worker_timeout\)", out), out
    assert "executor 'pool': no worker connected for 12 s (worker_timeout)" in out


def test_a_failing_provisioner_fails_the_build_at_once(tmp_path):
    tasks = """
[tasks.a]
cmd = "true"
executor = "pool"
"""
    project = _project(tmp_path, 'provisioner = "echo no quota >&2; exit 3"', tasks)
    started = time.monotonic()
    proc = _build(project)
    assert proc.wait(timeout=60) == 1, _output(project)
    assert time.monotonic() - started < 30
    assert ("executor 'pool': the provisioner exited with 3 (its output is in "
            ".dagrun/http/pool.provisioner-1.log)") in _output(project)
    assert (project / ".dagrun/http/pool.provisioner-1.log").read_text() == "no quota\n"


@pytest.mark.slurm
def test_queued_sbatch_jobs_are_cancelled_at_the_end(slurm_cluster, tmp_path):
    """A worker job still pending when the build ends is scancel'ed by the deprovisioner."""
    for name in ("sbatch.sh", "scancel.sh"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    (tmp_path / "prov.sh").write_text(  # sbatch.sh, keeping the URL for the test's worker
        f'echo "$1" > {tmp_path}/url; exec sh {tmp_path}/sbatch.sh "$1"\n')
    tasks = """
[tasks.a]
cmd = "echo ran > a.txt"
outputs = ["a.txt"]
executor = "pool"
"""
    pool = (f'provisioner = "sh {tmp_path}/prov.sh"\n'
            f'deprovisioner = "sh {tmp_path}/scancel.sh"')
    project = _project(tmp_path, pool, tasks)
    proc = _build(project, SLURM_LOG_DIR=str(tmp_path), SBATCH_OPTIONS="--begin=now+3600")
    log = project / ".dagrun" / "http" / "pool.provisioner-1.log"
    wait_for(lambda: log.exists() and log.read_text().strip().isdigit(), what="the job id")
    job = log.read_text().strip()
    url = (tmp_path / "url").read_text().strip()
    worker = start_worker(url, str(project / ".dagrun" / "http" / "pool.token"))
    assert proc.wait(timeout=60) == 0, _output(project)  # the queued job never started
    assert worker.wait(timeout=20) == 0
    state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                           text=True)
    assert state.stdout.strip() in ("", "CANCELLED"), state.stdout + state.stderr
    said = (project / ".dagrun" / "http" / "pool.deprovisioner.log").read_text()
    assert said == ""  # scancel found the job pending and cancelled it


def test_status_tells_queued_tasks_from_running_ones(tmp_path):
    tasks = """
[tasks.a]
cmd = "echo go > started; sleep 30"
executor = "pool"
[tasks.b]
cmd = "sleep 30"
executor = "pool"
"""
    project = _project(tmp_path, "max_jobs = 2", tasks)
    proc = _build(project)
    try:
        wait_for(lambda: (project / ".dagrun" / "executors.json").exists(), what="the snapshot")
        time.sleep(1.5)  # the status snapshot asks the executor once a second

        def status() -> str:
            r = subprocess.run([sys.executable, "-m", "dagrun", "status", "--executors"],
                               cwd=project, env=worker_env(), capture_output=True, text=True)
            return " ".join(r.stdout.split())

        words = status()
        assert "workers 0 connected running jobs 0 of 2 slots" in words, words
        assert "a queued (no worker has it yet)" in words and \
            "b queued (no worker has it yet)" in words
        url, _, token_file = _worker_command(project)
        worker = start_worker(url, token_file)
        wait_for(lambda: (project / "started").exists(), what="a task to start")
        wait_for(lambda: "running jobs 1 of 2 slots" in status(), what="one task running")
        words = status()
        assert "workers 1 connected" in words and "a not pinned" in words
        assert "b queued (no worker has it yet)" in words
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    stop(worker)
