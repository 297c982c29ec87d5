"""The Slurm executor (``type = "slurm"``) on the real single-node Slurm of tests/slurm.py.

Builds whose tasks are batch jobs: their resources as ``scontrol`` sees them,
exit codes, timeouts, Ctrl-C, a job cancelled or lost under dagrun, and the
job id in events, ``status``, ``show`` and JUnit.  Run under
``flock /tmp/slurm.lock`` when another developer may start a Slurm too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from realproc import wait_for
from slurm import fail_node_and_resume

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

EXECUTOR = """
[executors.hpc]
type = "slurm"
mem = "100M"
max_jobs = 8
grace_period = 0.5
"""


def events(root: Path) -> list[dict[str, object]]:
    path = root / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def job_ids(root: Path) -> dict[str, str]:
    """task -> its latest Slurm job id, from the build's ``placed`` events."""
    return {str(e["task"]): str(e["job"]) for e in events(root) if e["event"] == "placed"}


def job_info(job: str) -> str:
    return subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True,
                          text=True, check=True).stdout


def active(ids: list[str]) -> str:
    """What squeue still lists of ``ids`` (running, pending, completing)."""
    return subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(ids)],
                          capture_output=True, text=True).stdout.strip()


def test_a_dag_of_jobs_runs_each_with_its_own_resources(project, slurm_cluster, monkeypatch):
    monkeypatch.setenv("SBATCH_TIMELIMIT", "5")  # the user's own sbatch default holds
    project.manifest(EXECUTOR + """
[tasks.prep]
cmd = "echo $SLURM_JOB_ID $SLURM_CPUS_PER_TASK > prep.txt"
outputs = ["prep.txt"]
executor = "hpc"

[tasks.big]
cmd = "cat prep.txt > big.txt; echo $SLURM_JOB_ID $SLURM_CPUS_PER_TASK $GREETING >> big.txt"
inputs = ["prep.txt"]
outputs = ["big.txt"]
executor = "hpc"
threads = 2
timeout = 100
env = { GREETING = "hello" }
slurm = { mem = "200M", sbatch_options = ["--comment=dagrun-test"] }
""")
    r = project.run("build", "--events", "events.jsonl", "--junit", "junit.xml")
    assert r.code == 0, r.out + r.err
    ids = job_ids(project.root)
    assert project.read("big.txt").splitlines() == [
        f"{ids['prep']} 1", f"{ids['big']} 2 hello"
    ]
    prep, big = job_info(ids["prep"]), job_info(ids["big"])
    assert "MinMemoryNode=100M" in prep and "CPUs/Task=1" in prep
    assert "MinMemoryNode=200M" in big and "CPUs/Task=2" in big
    assert "Comment=dagrun-test" in big
    assert "TimeLimit=00:03:00" in big  # 100 s + grace, in whole minutes, one more
    assert "TimeLimit=00:05:00" in prep  # no timeout: SBATCH_TIMELIMIT from the environment
    finished = [e for e in events(project.root) if e["event"] == "finished"]
    assert {str(e["task"]): e["job"] for e in finished} == ids
    assert f'<property name="job" value="{ids["big"]}" />' in project.read("junit.xml")
    shown = project.run("show", "big")
    assert f"on hpc as job {ids['big']}" in shown.out


def test_a_failing_job_gives_its_exit_code_and_output(project, slurm_cluster):
    project.manifest(EXECUTOR + """
[tasks.broken]
cmd = "echo partial; echo broken >&2; exit 3"
executor = "hpc"
""")
    r = project.run("build", "--events", "events.jsonl")
    assert r.code == 1
    [end] = [e for e in events(project.root) if e["event"] == "finished"]
    assert end["exit_status"] == 3 and end["status"] == "failed"
    assert "broken" in r.out + r.err and "partial" in r.out + r.err


def test_a_timeout_ends_the_job(project, slurm_cluster):
    project.manifest(EXECUTOR + """
[tasks.slow]
cmd = "sleep 60"
executor = "hpc"
timeout = 1
""")
    started = time.monotonic()
    r = project.run("build", "--events", "events.jsonl")
    assert r.code == 1
    assert time.monotonic() - started < 30
    [end] = [e for e in events(project.root) if e["event"] == "finished"]
    assert end["timed_out"] is True
    ids = list(job_ids(project.root).values())
    assert "RUNNING" not in active(ids)  # scancelled; Slurm may still be tearing it down
    wait_for(lambda: active(ids) == "", "the job gone from squeue", timeout=15)


def test_status_cancel_and_ctrl_c_of_slurm_jobs(dagrun_proc, slurm_cluster):
    root = dagrun_proc.root
    dagrun_proc.manifest(EXECUTOR + """
[tasks.a]
cmd = "sleep 120"
executor = "hpc"

[tasks.b]
cmd = "sleep 120"
executor = "hpc"
""")
    p = dagrun_proc.start("build", "--events", "events.jsonl")
    wait_for(lambda: len(job_ids(root)) == 2, "both jobs submitted", timeout=60)
    ids = job_ids(root)
    wait_for(lambda: active(list(ids.values())).count("RUNNING") == 2, "both jobs running",
             timeout=60)
    status = subprocess.run(
        [sys.executable, "-m", "dagrun", "status"], cwd=root, capture_output=True, text=True
    )
    assert f"job {ids['a']}" in status.stdout and f"job {ids['b']}" in status.stdout, status
    cancel = subprocess.run([sys.executable, "-m", "dagrun", "cancel", "a"], cwd=root,
                            capture_output=True, text=True)
    assert cancel.returncode == 0, cancel
    wait_for(lambda: active([ids["a"]]) == "", "job a scancelled", timeout=60)
    assert "RUNNING" in active([ids["b"]])  # the build goes on
    os.killpg(p.pid, signal.SIGINT)
    p.communicate(timeout=60)
    assert p.returncode == 130
    assert "RUNNING" not in active(list(ids.values()))  # scancelled (maybe still COMPLETING)
    wait_for(lambda: active(list(ids.values())) == "", "the jobs gone from squeue", timeout=15)


def test_a_job_cancelled_outside_dagrun_is_reported(dagrun_proc, slurm_cluster):
    root = dagrun_proc.root
    dagrun_proc.manifest(EXECUTOR + """
[tasks.victim]
cmd = "sleep 120"
executor = "hpc"
""")
    p = dagrun_proc.start("build", "--events", "events.jsonl")
    wait_for(lambda: "victim" in job_ids(root), "the job submitted", timeout=60)
    job = job_ids(root)["victim"]
    wait_for(lambda: "RUNNING" in active([job]), "the job running", timeout=60)
    subprocess.run(["scancel", job], check=True)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert f"Slurm job {job} was cancelled outside dagrun (scancel)" in out + err


def test_a_job_lost_with_its_node_runs_again(dagrun_proc, slurm_cluster):
    """NODE_FAIL: the attempt is lost (no retry used up) and a second job runs the task."""
    root = dagrun_proc.root
    dagrun_proc.manifest(EXECUTOR + """
[tasks.survivor]
cmd = "if [ -e first.pid ]; then echo again > done.txt; else echo $$ > first.pid; sleep 120; fi"
outputs = ["done.txt"]
executor = "hpc"
""")
    p = dagrun_proc.start("build", "--events", "events.jsonl")
    wait_for(lambda: (root / "first.pid").exists(), "the first attempt running", timeout=60)
    first = job_ids(root)["survivor"]
    fail_node_and_resume()
    out, err = p.communicate(timeout=90)
    assert p.returncode == 0, out + err
    ends = [e for e in events(root) if e["event"] == "finished"]
    assert [e["status"] for e in ends] == ["retry", "succeeded"]
    assert f"Slurm job {first} ended NODE_FAIL" in str(ends[0]["error"])
    assert job_ids(root)["survivor"] != first
    assert (root / "done.txt").read_text() == "again\n"


def test_cancel_of_one_job_scancels_it(tmp_path, slurm_cluster):
    from dagrun.executors import Context, Job, create

    ex = create("slurm", "hpc", {"grace_period": 0.5},
                Context(str(tmp_path), str(tmp_path / ".dagrun"), dict(os.environ), 2))
    ex.start()
    try:
        job = Job(1, "t", "sleep 120", str(tmp_path), ".", {}, str(tmp_path / "runs" / "t"))
        ex.submit(job)
        slurm_id = ex.job_ref(1)  # type: ignore[attr-defined]
        wait_for(lambda: "RUNNING" in active([slurm_id]), "the job running", timeout=60)
        ex.cancel(1)
        [outcome] = ex.wait(60)
        assert not outcome.ok and outcome.error == "cancelled"
        wait_for(lambda: active([slurm_id]) == "", "the job gone from squeue", timeout=30)
    finally:
        ex.close()


def test_the_slurm_example_builds_on_the_test_slurm(tmp_path, slurm_cluster):
    import shutil

    root = tmp_path / "slurm"
    shutil.copytree(Path(__file__).resolve().parent.parent / "examples" / "slurm", root)
    done = subprocess.run([sys.executable, "-m", "dagrun", "--progress", "plain", "build"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (root / "out" / "total.txt").read_text() == f"{sum(range(1, 401))}\n"
    jobs = (root / "out" / "jobs.log").read_text().splitlines()
    assert len(jobs) == 4 and all(line.endswith(", 2 cpus") for line in jobs)


def test_a_controller_that_does_not_answer_loses_no_job(tmp_path, slurm_cluster):
    """While squeue fails, nothing is judged; a job cancelled meanwhile is reported after."""
    import shutil

    from dagrun.executors import Context, Job, create

    shims = tmp_path / "bin"
    shims.mkdir()
    broken = tmp_path / "broken"
    (shims / "squeue").write_text(
        f"#!/bin/sh\n[ -e {broken} ] && {{ echo 'Unable to contact slurm controller' >&2; "
        f"exit 1; }}\nexec {shutil.which('squeue')} \"$@\"\n")
    (shims / "squeue").chmod(0o755)
    environ = dict(os.environ, PATH=f"{shims}{os.pathsep}{os.environ['PATH']}")
    ex = create("slurm", "hpc", {"grace_period": 0.5},
                Context(str(tmp_path), str(tmp_path / ".dagrun"), environ, 2))
    ex.start()
    try:
        job = Job(1, "t", "sleep 120", str(tmp_path), ".", {}, str(tmp_path / "runs" / "t"),
                  slurm=(("sbatch_options", ("--begin=now+60",)),))  # pending: never runs
        ex.submit(job)
        slurm_id = ex.job_ref(1)  # type: ignore[attr-defined]
        broken.touch()
        subprocess.run(["scancel", slurm_id], check=True)  # ends with no report
        assert ex.wait(8) == []  # before: "lost" after 5 s, though Slurm never said so
        broken.unlink()
        [outcome] = ex.wait(30)
        assert not outcome.ok and not outcome.lost
        assert outcome.error == f"Slurm job {slurm_id} was cancelled outside dagrun (scancel)"
    finally:
        ex.close()


def test_one_squeue_call_watches_every_job(project, slurm_cluster, monkeypatch):
    """squeue runs for all unfinished jobs at once, never more often than every 0.2 s."""
    import shutil

    shims = project.root / "bin"
    shims.mkdir()
    log = project.root / "squeue.calls"
    (shims / "squeue").write_text(f'#!/bin/sh\necho "$(date +%s.%N) $*" >> {log}\n'
                                  f'exec {shutil.which("squeue")} "$@"\n')
    (shims / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    project.manifest(EXECUTOR + """
[tasks.t]
matrix = { n = [1, 2, 3, 4, 5, 6] }
cmd = "sleep 1"
executor = "hpc"
""")
    started = time.time()
    r = project.run("build", "--events", "events.jsonl")
    took = time.time() - started
    assert r.code == 0, r.out + r.err
    calls = [line.split() for line in log.read_text().splitlines()]
    watching = [c for c in calls if "--states=all" in c]
    assert watching, calls
    first = watching[0][watching[0].index("-j") + 1].split(",")
    assert sorted(first) == sorted(job_ids(project.root).values())  # every job in one call
    times = [float(c[0]) for c in watching]
    # stamped by a shell each call starts (its start-up varies): 0.15, not 0.2
    assert all(b - a >= 0.15 for a, b in zip(times, times[1:], strict=False)), times
    assert len(watching) <= took / 0.2 + 1


def test_the_sbatch_line_keeps_percent_signs_and_puts_the_tasks_options_last():
    """No Slurm needed: sbatch's filename patterns (%j) must not rewrite a folder's name."""
    from dagrun.executors.slurm_job import merged, sbatch_argv

    options = merged({"mem": "1G", "partition": "a", "sbatch_options": ("--exclusive",)},
                     (("mem", "8G"), ("sbatch_options", ("--gres=gpu:1",))))
    argv = sbatch_argv(task="sim[n=1]", cwd="/p/100%", run_dir="/p/100%/.dagrun/runs/sim",
                       threads=4, limit="3", options=options, script="/s.sh")
    assert argv == [
        "sbatch", "--parsable", "--job-name=dagrun:sim[n=1]", "--chdir=/p/100%",
        "--output=/p/100%%/.dagrun/runs/sim/slurm.out", "--no-requeue", "--cpus-per-task=4",
        "--time=3", "--partition=a", "--mem=8G", "--exclusive", "--gres=gpu:1", "/s.sh",
    ]
