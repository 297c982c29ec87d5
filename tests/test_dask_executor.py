"""The dask executor on a real LocalCluster: DAGs, failures, timeouts, lost workers, Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from dask_cluster import dask_executor_factory, worker_pids
from realproc import DEADLINE, assert_groups_gone, logged_tasks, wait_for

from dagrun.executors import Job

pytest.importorskip("distributed")
pytestmark = [pytest.mark.dask, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent


def on_cluster(address: str, tasks: str, extra: str = "") -> str:
    return f'[executors.cluster]\ntype = "dask"\nscheduler = "{address}"\n{extra}\n{tasks}'


DAG = """
[env]
GREETING = "hello"

[tasks.gen]
cmd = 'echo "$GREETING $DAGRUN_TASK" > gen.out; echo $PPID > gen.ppid'
outputs = ["gen.out"]
executor = "cluster"

[tasks.twice]
cmd = "cat ../gen.out ../gen.out > twice.out; pwd > where"
cwd = "sub"
inputs = ["../gen.out"]
outputs = ["twice.out"]
executor = "cluster"

[tasks.top]
cmd = "cat gen.out sub/twice.out > top.out; echo key=$DAGRUN_KEY"
inputs = ["gen.out", "sub/twice.out"]
outputs = ["top.out"]
executor = "cluster"
"""


def test_a_dag_runs_on_the_cluster_workers_and_is_logged_once(project, dask_scheduler):
    project.write("sub/.keep", "")
    project.manifest(on_cluster(dask_scheduler, DAG))
    r = project.run("build")
    assert r.code == 0, r.out + r.err
    assert project.read("top.out") == "hello gen\n" * 3
    assert project.read("sub/where").strip() == str(project.root / "sub")
    assert int(project.read("gen.ppid")) in worker_pids(dask_scheduler)  # ran on a worker
    assert logged_tasks(project.root) == ["gen", "twice", "top"]
    runs = project.root / ".dagrun" / "runs" / "top"
    assert (runs / "stdout.txt").read_text().startswith("key=")
    assert "# executor: cluster (dask" in (runs / "command.txt").read_text()
    again = project.run("build")
    assert again.code == 0
    assert "no work to do (3 up to date)" in again.out


def test_a_failing_task_shows_its_exit_status_and_output(project, dask_scheduler):
    project.manifest(on_cluster(dask_scheduler, """
[tasks.bad]
cmd = "echo to-stdout; echo to-stderr >&2; exit 1"
executor = "cluster"

[tasks.after]
cmd = "touch after"
deps = ["bad"]
executor = "cluster"
"""))
    r = project.run("build")
    assert r.code == 1
    assert "FAILED: [code=1] bad" in r.out
    assert "to-stdout" in r.out + r.err and "to-stderr" in r.out + r.err
    assert not (project.root / "after").exists()
    assert logged_tasks(project.root) == []
    assert (project.root / ".dagrun/runs/bad/stderr.txt").read_text() == "to-stderr\n"


def test_a_timeout_kills_the_whole_process_group_on_the_worker(project, dask_scheduler):
    project.manifest(on_cluster(dask_scheduler, """
[tasks.slow]
cmd = "echo $$ > group; sleep 60 & sleep 60"
timeout = 1
executor = "cluster"
""", "grace_period = 0.5"))
    r = project.run("build")
    assert r.code == 1
    assert "slow timed out after" in r.out + r.err
    assert_groups_gone({int(project.read("group"))})


def test_a_task_asking_more_threads_than_any_worker_has_fails_clearly(project, dask_scheduler):
    project.manifest(on_cluster(dask_scheduler, """
[tasks.wide]
cmd = "true"
threads = 2
executor = "cluster"
"""))
    r = project.run("build")
    assert r.code == 1
    assert "needs 2 threads; the largest worker of executor 'cluster' offers 1" in r.out + r.err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_scheduler_stops_the_build_before_anything_runs(project):
    address = f"tcp://127.0.0.1:{_free_port()}"
    project.manifest(on_cluster(address, """
[tasks.a]
cmd = "touch ran"
executor = "cluster"
""", "connect_timeout = 0.5"))
    r = project.run("build")
    assert r.code == 2
    assert f"executor 'cluster': cannot reach the Dask scheduler at {address}" in r.err
    assert "Traceback" not in r.err
    assert not (project.root / "ran").exists()


def test_a_malformed_scheduler_address_is_a_clear_error(project):
    project.manifest(on_cluster("tcp://nohost", """
[tasks.a]
cmd = "touch ran"
executor = "cluster"
"""))
    r = project.run("build")
    assert r.code == 2
    assert "executor 'cluster': bad Dask scheduler address 'tcp://nohost': missing port" in r.err
    assert not (project.root / "ran").exists()


def test_without_dask_the_error_says_what_to_install(tmp_path):
    (tmp_path / "dagrun.toml").write_text(on_cluster("tcp://127.0.0.1:1", """
[tasks.a]
cmd = "true"
executor = "cluster"
"""))
    code = ("import sys; sys.modules['distributed'] = None; sys.modules['dask'] = None\n"
            "from dagrun.entry import main; sys.exit(main(['build']))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=DEADLINE)
    assert p.returncode == 2, p.stderr
    assert "executor 'cluster' (type dask) needs dask.distributed: pip install 'dagrun[dask]'" in (
        p.stderr
    )
    assert "Traceback" not in p.stderr


def test_a_cluster_class_that_cannot_be_imported_is_a_clear_error(project):
    project.manifest("""
[executors.hpc]
type = "dask"
cluster = "dask_nowhere.FarCluster"

[tasks.a]
cmd = "touch ran"
executor = "hpc"
""")
    r = project.run("build")
    assert r.code == 2
    assert ("executor 'hpc': cannot import cluster class 'dask_nowhere.FarCluster': "
            "No module named 'dask_nowhere'") in r.err
    assert not (project.root / "ran").exists()


# -- the executor itself: cancel, describe (the protocol, on the shared cluster)


def _job(tmp_path: Path, job_id: int, cmd: str, **kw: object) -> Job:
    return Job(job_id, f"t{job_id}", cmd, str(tmp_path), ".", {"DAGRUN_TASK": f"t{job_id}"},
               str(tmp_path / ".dagrun" / "runs" / f"t{job_id}"), **kw)  # type: ignore[arg-type]


def test_cancel_kills_the_jobs_process_group_on_its_worker(tmp_path, dask_scheduler):
    ex = dask_executor_factory(tmp_path)
    ex.start()
    try:
        ex.submit(_job(tmp_path, 1, "echo $$ > group; sleep 60 & sleep 60"))
        wait_for(lambda: (tmp_path / "group").exists() and (tmp_path / "group").read_text(),
                 "the job started")
        group = int((tmp_path / "group").read_text())
        ex.cancel(1)
        outcomes = ex.wait(timeout=DEADLINE)
        assert [o.job_id for o in outcomes] == [1]
        assert not outcomes[0].ok and not outcomes[0].lost
        assert_groups_gone({group})
    finally:
        ex.close()


def test_a_job_cancelled_before_it_starts_never_runs(tmp_path, dask_scheduler):
    ex = dask_executor_factory(tmp_path)
    ex.start()
    try:
        for i in (1, 2):  # both workers busy
            ex.submit(_job(tmp_path, i, f"echo $$ > g{i}; touch ran{i}; sleep 60"))
        wait_for(lambda: (tmp_path / "ran1").exists() and (tmp_path / "ran2").exists(), "busy")
        groups = {int((tmp_path / f"g{i}").read_text()) for i in (1, 2)}
        ex.submit(_job(tmp_path, 3, "touch ran3"))
        ex.cancel(3)
        outcomes = ex.wait(timeout=DEADLINE)
        assert [(o.job_id, o.ok) for o in outcomes] == [(3, False)]
        ended = ex.cancel_all(force=True)
        assert sorted(o.job_id for o in ended) == [1, 2]
        assert_groups_gone(groups)
        assert not (tmp_path / "ran3").exists()
    finally:
        ex.close()


def test_env_is_the_workers_plus_the_declared_or_dagruns_with_env_inherit(
    project, dask_scheduler, monkeypatch
):
    monkeypatch.setenv("ONLY_IN_DAGRUN", "here")  # the workers started before: they lack it
    tasks = """
[env]
DECLARED = "yes"

[tasks.show]
cmd = 'echo "${ONLY_IN_DAGRUN:-unset} $DECLARED $DAGRUN_EXECUTOR" > env.out'
outputs = ["env.out"]
executor = "cluster"
"""
    project.manifest(on_cluster(dask_scheduler, tasks))
    assert project.run("build").code == 0
    assert project.read("env.out") == "unset yes cluster\n"
    project.manifest(on_cluster(dask_scheduler, tasks, "env_inherit = true"))
    project.run("clean")
    assert project.run("build").code == 0
    assert project.read("env.out") == "here yes cluster\n"


def test_describe_shows_the_cluster(tmp_path, dask_scheduler):
    ex = dask_executor_factory(tmp_path)
    ex.start()
    try:
        d = ex.describe()
        assert d == {"type": "dask", "address": dask_scheduler, "cluster": "external",
                     "workers": 2, "threads": 2, "running": 0, "slots": 2}
    finally:
        ex.close()


# -- a LocalCluster that dagrun starts itself (the CLI as a process)

LOCAL = """
[executors.cluster]
type = "dask"
cluster = "local"
workers = 2
grace_period = 1
"""


def _children(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def test_a_worker_killed_mid_task_reruns_it_and_logs_it_once(dagrun_proc):
    root = dagrun_proc.root
    dagrun_proc.manifest(LOCAL + """
[tasks.slow]
cmd = '''echo $$ >> attempts
if [ -e started ]; then echo second > slow.out
else touch started; echo $$ > pids/slow; sleep 60; fi'''
outputs = ["slow.out"]
executor = "cluster"

[tasks.after]
cmd = "cat slow.out > after.out"
inputs = ["slow.out"]
outputs = ["after.out"]
executor = "cluster"
""")
    p = dagrun_proc.start("build")
    first = dagrun_proc.task_pid("slow")
    worker = psutil.Process(first).ppid()
    assert worker in {c.pid for c in _children(p.pid)}
    os.kill(worker, signal.SIGKILL)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, out + err
    assert (root / "after.out").read_text() == "second\n"
    assert len((root / "attempts").read_text().split()) == 2
    assert logged_tasks(root) == ["slow", "after"]
    assert out.count("/2] slow") == 1  # reported done once too
    assert "RETRY: [lost: its Dask worker died] slow" in out  # the scheduler's lost rule
    assert_groups_gone({first})  # the orphaned first attempt was killed


def test_ctrl_c_kills_the_cluster_work_and_stops_the_cluster(dagrun_proc):
    dagrun_proc.manifest(LOCAL + """
[tasks.a]
cmd = "grep SigIgn /proc/$$/status > a.sig; echo $$ > pids/a; sleep 60"
executor = "cluster"

[tasks.b]
cmd = "echo $$ > pids/b; sleep 60"
executor = "cluster"
""")
    p = dagrun_proc.start("build")
    groups = {dagrun_proc.task_pid("a"), dagrun_proc.task_pid("b")}
    time.sleep(0.2)
    workers = [c for c in _children(p.pid) if c.pid not in groups]
    assert len(workers) >= 2
    ignored = int((dagrun_proc.root / "a.sig").read_text().split()[1], 16)
    assert not ignored & (1 << (signal.SIGINT - 1))  # tasks get SIGINT as they would locally
    os.killpg(p.pid, signal.SIGINT)  # as a terminal's Ctrl-C: dagrun and its workers
    out, err = p.communicate(timeout=DEADLINE)
    assert p.returncode == 130, out + err
    assert "Traceback" not in err
    assert "interrupted" in out
    assert_groups_gone(groups)
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert alive == []
    assert logged_tasks(dagrun_proc.root) == []


def test_a_dag_mixing_local_and_dask_tasks(project, dask_scheduler):
    project.manifest(on_cluster(dask_scheduler, """
[tasks.here]
cmd = "echo local $PPID > here.out"
outputs = ["here.out"]

[tasks.there]
cmd = "cat here.out > there.out; echo $PPID >> there.out"
inputs = ["here.out"]
outputs = ["there.out"]
executor = "cluster"

[tasks.back]
cmd = "cat there.out > back.out"
inputs = ["there.out"]
outputs = ["back.out"]
"""))
    r = project.run("build")
    assert r.code == 0, r.out + r.err
    lines = project.read("back.out").split()
    assert lines[0] == "local" and int(lines[1]) == os.getpid()
    assert int(lines[2]) in worker_pids(dask_scheduler)
    assert logged_tasks(project.root) == ["here", "there", "back"]


def test_status_shows_the_cluster_while_a_build_uses_it(dagrun_proc, dask_scheduler):
    root = dagrun_proc.root
    dagrun_proc.manifest(on_cluster(dask_scheduler, """
[tasks.hold]
cmd = "echo $$ > pids/hold; while [ ! -e release ]; do sleep 0.05; done"
executor = "cluster"
"""))
    p = dagrun_proc.start("build")
    dagrun_proc.task_pid("hold")
    wait_for(lambda: (root / ".dagrun" / "executors.json").exists(), "the status snapshot")
    code, out, err = dagrun_proc.run("status", "--executors")
    (root / "release").touch()
    assert p.communicate(timeout=DEADLINE)[0] and p.returncode == 0
    assert code == 0, err
    block = out[out.index("cluster (dask)"):]
    assert block.startswith(
        f"cluster (dask)\n  cluster       external at {dask_scheduler}\n"
        "  workers       2 (2 threads)\n  running jobs  1 of 32 slots (build pid "
    ), block
    assert "\n    hold " in block


def test_the_dask_example_runs_from_a_clean_copy(tmp_path):
    import shutil

    copy = tmp_path / "dask"
    shutil.copytree(REPO / "examples" / "dask", copy, ignore=shutil.ignore_patterns("build"))
    p = subprocess.run([sys.executable, "-m", "dagrun", "--progress", "plain", "-C", str(copy),
                        "build"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "7837 primes in 4 ranges, found by " in p.stdout
    assert (copy / "build" / "summary.txt").exists()


def test_a_worker_of_an_external_cluster_killed_mid_task(dagrun_proc, dask_scheduler):
    """The same through the scheduler's address: the orphan is killed via the other worker."""
    from distributed import Client

    root = dagrun_proc.root
    dagrun_proc.manifest(on_cluster(dask_scheduler, """
[tasks.slow]
cmd = '''echo $$ >> attempts
if [ -e started ]; then echo second > slow.out
else touch started; echo $$ > pids/slow; sleep 60; fi'''
outputs = ["slow.out"]
executor = "cluster"
"""))
    p = dagrun_proc.start("build")
    first = dagrun_proc.task_pid("slow")
    os.kill(psutil.Process(first).ppid(), signal.SIGKILL)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, out + err
    assert (root / "slow.out").read_text() == "second\n"
    assert len((root / "attempts").read_text().split()) == 2
    assert logged_tasks(root) == ["slow"]
    assert_groups_gone({first})
    with Client(dask_scheduler, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=30)  # the nanny restarted it, for the tests after


def test_function_tasks_are_submitted_to_the_cluster_as_functions(project, dask_scheduler):
    """A `call` task on a dask executor runs as the function on a worker, receives its
    dependencies' results and hands its own to a local function task."""
    import dagrun

    project.write("pipe.py", """
        import os


        def load():
            return {"values": [1, 2, 3], "pid": os.getpid()}


        def total(load):
            return {"sum": sum(load["values"]), "pid": os.getpid(), "up": load["pid"]}


        def double(total):
            return 2 * total["sum"]
    """)
    project.manifest(on_cluster(dask_scheduler, """
[tasks.load]
call = "pipe:load"
executor = "cluster"

[tasks.total]
call = "pipe:total"
deps = ["load"]
executor = "cluster"

[tasks.double]
call = "pipe:double"
deps = ["total"]
"""))
    result = dagrun.load(project.root / "dagrun.toml").build()
    assert result.ok, result
    values = result.values
    workers = worker_pids(dask_scheduler)
    assert values["load"]["pid"] in workers and values["total"]["pid"] in workers
    assert values["total"]["sum"] == 6 and values["total"]["up"] == values["load"]["pid"]
    assert values["double"] == 12
    assert logged_tasks(project.root) == ["load", "total", "double"]


def test_a_failing_function_on_the_cluster_shows_the_users_traceback(project, dask_scheduler):
    project.write("boom.py", """
        def explode():
            raise ValueError("no good")
    """)
    project.manifest(on_cluster(dask_scheduler, """
[tasks.f]
call = "boom:explode"
executor = "cluster"
"""))
    r = project.run("build")
    assert r.code == 1
    assert "ValueError: no good" in r.out and 'boom.py", line 3, in explode' in r.out
    assert logged_tasks(project.root) == []


def test_a_local_cluster_leaves_port_8787_alone(tmp_path):
    """Its scheduler serves no dashboard, and its HTTP server (metrics) sits on a free loopback
    port: a second cluster (another build, another user) on the machine neither warns nor fails."""
    from dagrun.executors.dask import DaskExecutor

    holder = socket.socket()
    try:
        holder.bind(("0.0.0.0", 8787))  # taken by "another cluster" (or it already is)
        holder.listen()
    except OSError:
        pass
    ex = DaskExecutor("c", cluster="local", workers=1, state_dir=str(tmp_path))
    try:
        ex.start()  # pytest turns the "Port 8787 is already in use" warning into an error
        ports = {c.laddr.port for c in psutil.Process().net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
        http = ex.cluster.scheduler.http_server.port
        assert http != 8787 and http in ports
        host = {c.laddr.ip for c in psutil.Process().net_connections("tcp")
                if c.laddr.port == http}
        assert host == {"127.0.0.1"}
    finally:
        ex.close()
        holder.close()


def test_a_cluster_with_no_worker_fails_its_tasks_after_worker_timeout(project):
    """Every worker lost (or none ever started): the build fails with a message, not a hang."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=0, processes=False, dashboard_address=None,
                           scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    try:
        project.manifest(on_cluster(cluster.scheduler_address, """
[tasks.a]
cmd = "true"
executor = "cluster"
""", "worker_timeout = 1.5\nmax_jobs = 1"))
        started = time.monotonic()
        r = project.run("build")
        assert r.code == 1, r.out + r.err
        assert time.monotonic() - started < 30
        assert ("executor 'cluster': no Dask worker for 1.5 s (the cluster lost every worker, "
                "or none ever started; worker_timeout)") in r.out
    finally:
        cluster.close()


def test_a_refused_scheduler_port_fails_at_once_not_after_connect_timeout(project):
    address = f"tcp://127.0.0.1:{_free_port()}"
    project.manifest(on_cluster(address, """
[tasks.a]
cmd = "touch ran"
executor = "cluster"
""", "connect_timeout = 60"))
    started = time.monotonic()
    r = project.run("build")
    assert r.code == 2
    assert time.monotonic() - started < 20  # not the 60 s of connect_timeout
    assert (f"executor 'cluster': cannot reach the Dask scheduler at {address}: connection "
            "refused (is the scheduler running?)") in r.err


def test_max_jobs_defaults_to_a_queue_behind_each_worker_thread(tmp_path, dask_scheduler):
    """One job per thread left the workers idle for a round trip between jobs."""
    from dagrun.executors.dask import DaskExecutor

    ex = DaskExecutor("c", scheduler=dask_scheduler, state_dir=str(tmp_path))
    try:
        ex.start()
        assert ex.slots == 32  # 2 workers x 1 thread, x 16 (two packs of 8)
    finally:
        ex.close()
    assert DaskExecutor("l", cluster="local", workers=3, threads_per_worker=2).slots == 96
