"""Issue 27: watching and steering a running build (`status`, `tail`, `cancel`, stall warnings).

Real builds in separate processes; the commands talk to them over the build's control
socket (.dagrun/control.sock), as a user in a second terminal would.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from realproc import DEADLINE, DagrunProcs, live_in_groups, wait_for

from dagrun.events import TaskFinished
from dagrun.executors.fake import FakeExecutor
from dagrun.scheduler import Hooks, Limits, Scheduler

pytestmark = pytest.mark.slow

# a task that waits for the file go/NAME (the test says when it may end)
GATED = 'echo $$ > pids/{name}; while [ ! -e go/{name} ]; do sleep 0.05; done'


def gated(name: str, before: str = "", after: str = "") -> str:
    return f"{before}{GATED.format(name=name)}; {after}".strip("; ")


def go(root: Path, name: str) -> None:
    (root / "go").mkdir(exist_ok=True)
    (root / "go" / name).write_text("")


def cli(root: Path, *args: str) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, "-m", "dagrun", *args], cwd=root, capture_output=True,
                       text=True, timeout=DEADLINE)
    return p.returncode, p.stdout, p.stderr


def finish(p: subprocess.Popen[str]) -> int:
    """The build's exit status, once it ended (its pipes read and closed)."""
    p.communicate(timeout=DEADLINE)
    return p.returncode


def live(root: Path) -> dict | None:
    code, out, err = cli(root, "status", "--json")
    assert code == 0, err
    return json.loads(out)["live"]


def test_status_shows_running_and_queued_tasks_with_their_last_line(dagrun_proc: DagrunProcs):
    root = dagrun_proc.root
    dagrun_proc.manifest(f"""
        [dagrun]
        jobs = 2
        [tasks.a]
        cmd = "{gated('a', before='echo hello from a; echo warming up >&2; echo third line; ')}"
        [tasks.b]
        cmd = "{gated('b', before='echo b says hi >&2; ')}"
        [tasks.c]
        cmd = "true"
        [tasks.d]
        cmd = "true"
        deps = ["a"]
    """)
    p = dagrun_proc.start("build")
    dagrun_proc.task_pid("a"), dagrun_proc.task_pid("b")
    state = live(root)
    assert state is not None
    running = {r["task"]: r for r in state["running"]}
    assert set(running) == {"a", "b"}
    a = running["a"]
    assert (a["state"], a["executor"], a["attempt"], a["last_line"]) == (
        "running", "local", 1, "third line")
    assert a["where"] == f"pid {int((root / 'pids' / 'a').read_text())}"
    assert running["b"]["last_line"] == "b says hi"
    assert a["elapsed"] >= 0
    assert (state["queued"], state["queued_count"], state["waiting"]) == (["c"], 1, 1)
    assert (state["done"], state["total"]) == (0, 4)
    code, text, _ = cli(root, "status")
    lines = text.splitlines()
    assert lines[0] == "build: running: 0 of 4 done, 2 running, 1 queued, 1 waiting, 0 failed " \
        f"(build pid {p.pid})"
    assert lines[1].split() == ["TASK", "STATE", "WHERE", "ELAPSED", "ATTEMPT", "LAST", "LINE"]
    row_a = next(x for x in lines if x.startswith("a "))
    assert "running" in row_a and row_a.endswith("third line")
    assert any(x.split() == ["c", "queued"] for x in lines)
    mode = os.stat(root / ".dagrun" / "control.sock").st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    go(root, "a"), go(root, "b")
    assert finish(p) == 0
    assert not (root / ".dagrun" / "control.sock").exists()
    assert live(root) is None
    code, text, _ = cli(root, "status")
    table = [x.split() for x in text.splitlines()[1:6]]
    assert table[0] == ["TASK", "STATE", "ATTEMPTS", "DURATION", "EXIT", "EXECUTOR", "NOTE"]
    assert sorted(r[0] for r in table[1:]) == ["a", "b", "c", "d"]
    assert all(r[1] == "succeeded" and r[2] == "1" and r[4] == "0" for r in table[1:])


def test_cancel_kills_a_task_its_dependents_do_not_run_and_the_build_goes_on(
    dagrun_proc: DagrunProcs,
):
    root = dagrun_proc.root
    dagrun_proc.manifest(f"""
        [dagrun]
        jobs = 2
        [tasks.slow]
        cmd = "sleep 300 & {GATED.format(name='slow')}"
        retries = 2
        [tasks.after]
        cmd = "touch after-ran"
        deps = ["slow"]
        [tasks.other]
        cmd = "{gated('other', after='touch other-ran')}"
        [tasks.later]
        cmd = "touch later-ran"
        deps = ["other"]
        [tasks.below_later]
        cmd = "touch below-later-ran"
        deps = ["later"]
    """)
    p = dagrun_proc.start("build", "--events", "events.jsonl")
    group = dagrun_proc.task_pid("slow")
    dagrun_proc.task_pid("other")
    code, out, err = cli(root, "cancel", "slow", "later")
    assert (code, err) == (0, "")
    assert out == ("dagrun: slow: cancelled (killing it)\n"
                   "dagrun: later: cancelled before it started\n")
    wait_for(lambda: not live_in_groups({group}), "the cancelled task's group is gone")
    code, out, _ = cli(root, "cancel", "slow")
    assert out == "dagrun: slow: already failed\n"
    go(root, "other")  # the rest of the build goes on after the cancel
    out, err = p.communicate(timeout=DEADLINE)
    assert p.returncode == 1, (out, err)
    assert "FAILED: [cancelled] slow" in out
    assert (root / "other-ran").exists()
    for never in ("after-ran", "later-ran", "below-later-ran"):
        assert not (root / never).exists(), never
    events = [json.loads(x) for x in (root / "events.jsonl").read_text().splitlines()]
    slow = [e for e in events if e.get("task") == "slow" and e["event"] == "finished"]
    assert [(e["status"], e["error"]) for e in slow] == [("failed", "cancelled")]  # no retry
    not_run = {e["task"]: e["why"] for e in events if e["event"] == "not_run"}
    assert not_run == {"after": "dependency failed: slow", "later": "cancelled",
                       "below_later": "dependency failed: later"}
    code, text, _ = cli(root, "status")
    rows = {x.split()[0]: x for x in text.splitlines()[2:7]}
    assert rows["slow"].split()[:3] == ["slow", "failed", "1"]
    assert rows["slow"].endswith("cancelled")


def test_cancel_and_tail_without_a_build_or_with_an_unknown_task(dagrun_proc: DagrunProcs):
    root = dagrun_proc.root
    dagrun_proc.manifest(f'[tasks.wait]\ncmd = "{gated("wait")}"\n')
    assert cli(root, "cancel", "wait") == (1, "", "dagrun: error: no build is running here: "
                                                  "nothing to cancel\n")
    assert cli(root, "tail", "wait")[::2] == (1, "dagrun: error: no build is running here: "
                                                   "nothing to tail (wait)\n")
    p = dagrun_proc.start("build")
    dagrun_proc.task_pid("wait")
    code, out, err = cli(root, "cancel", "wiat")
    assert (code, out) == (2, "")
    assert err.startswith("dagrun: error: ") and "unknown target 'wiat'" in err
    assert "did you mean 'wait'" in err
    code, _, err = cli(root, "tail", "nope")
    assert (code, err) == (2, "dagrun: error: no task named 'nope' in the running build\n")
    go(root, "wait")
    assert finish(p) == 0  # nothing was cancelled


def test_a_command_in_a_build_s_first_moments_waits_for_its_control_socket(tmp_path: Path):
    """A build binds its control socket from a thread as its first task starts: `status`,
    `tail` or `cancel` right then found no socket and said no build is running (CI, once).
    While a build holds the project's lock, the client tries again for up to a second."""
    import fcntl

    from dagrun import control
    from dagrun.steering import Mailbox

    state = tmp_path / ".dagrun"
    state.mkdir()
    (state / "lock").touch()
    t0 = time.monotonic()
    with pytest.raises(control.NoBuild):  # no build: said at once
        control.ask(str(state), {"op": "hello"})
    assert time.monotonic() - t0 < 0.5
    fd = os.open(state / "lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a build holds it
    servers: list[control.ControlServer] = []
    binder = threading.Timer(0.3, lambda: servers.append(
        control.ControlServer(str(state), Mailbox(), None)))
    try:
        binder.start()
        answer = control.ask(str(state), {"op": "hello"})  # before the socket is there
        assert answer == {"error": "unknown request 'hello'"}
        binder.join()
        servers.pop().close()
        t0 = time.monotonic()
        with pytest.raises(control.NoBuild):  # a lock and never a socket: a second, then no
            control.ask(str(state), {"op": "hello"})
        assert control.CONNECT_WAIT <= time.monotonic() - t0 < control.CONNECT_WAIT + 2
    finally:
        binder.cancel()
        for server in servers:
            server.close()
        os.close(fd)


def test_tail_shows_the_last_lines_then_follows_until_the_task_ends(dagrun_proc: DagrunProcs):
    root = dagrun_proc.root
    body = "for i in 1 2 3 4 5; do echo out $i; done; echo err 1 >&2; echo err 2 >&2; " \
        + GATED.format(name="t") + "; echo more out; echo more err >&2; exit 3"
    dagrun_proc.manifest(f'[tasks.t]\ncmd = "{body}"\n')
    p = dagrun_proc.start("build")
    dagrun_proc.task_pid("t")
    tail = subprocess.Popen([sys.executable, "-m", "dagrun", "tail", "t", "-n", "2"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert tail.stdout is not None
    assert tail.stdout.readline() == "out 4\n"  # the last two lines first
    assert tail.stdout.readline() == "out 5\n"
    assert tail.poll() is None  # following
    go(root, "t")
    out, err = tail.communicate(timeout=DEADLINE)
    assert tail.returncode == 1  # the task failed
    assert out == "more out\n"
    assert err == "err 1\nerr 2\nmore err\ndagrun: t: failed\n"
    assert finish(p) == 1


def test_tail_gets_the_whole_last_burst_and_the_end_though_the_build_exits_at_once(
        dagrun_proc: DagrunProcs):
    # The task's last 14 MB come after tail's last read, and tail's reader is slow (here: it
    # waits half a second), so they are still being sent when the build ends: the build must
    # not exit under its control thread while it still sends them and the end record.
    root = dagrun_proc.root
    dagrun_proc.manifest(f'[tasks.t]\ncmd = "{gated("t", "echo ready; ", "seq 1 2000000")}"\n')
    p = dagrun_proc.start("build")
    dagrun_proc.task_pid("t")
    tail = subprocess.Popen([sys.executable, "-m", "dagrun", "tail", "t"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert tail.stdout is not None
    assert tail.stdout.readline() == "ready\n"  # following
    ended: list[int] = []
    build = threading.Thread(target=lambda: ended.append(finish(p)))  # reads the build's output
    build.start()
    go(root, "t")
    time.sleep(0.5)  # the pipes fill; the task and the build end meanwhile
    out, err = tail.communicate(timeout=DEADLINE)
    assert (tail.returncode, err) == (0, "dagrun: t: succeeded\n")
    assert out.endswith("1999999\n2000000\n") and out.count("\n") == 2000000
    build.join(DEADLINE)
    assert ended == [0]


def test_tail_waits_for_a_queued_task(dagrun_proc: DagrunProcs):
    root = dagrun_proc.root
    dagrun_proc.manifest(f"""
        [dagrun]
        jobs = 1
        [tasks.first]
        cmd = "{gated('first')}"
        [tasks.second]
        cmd = "echo second speaks"
        deps = ["first"]
    """)
    p = dagrun_proc.start("build")
    dagrun_proc.task_pid("first")
    tail = subprocess.Popen([sys.executable, "-m", "dagrun", "tail", "second"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert tail.stderr is not None
    assert tail.stderr.readline() == "dagrun: second is queued; waiting for it to start\n"
    go(root, "first")
    out, err = tail.communicate(timeout=DEADLINE)
    assert (tail.returncode, out) == (0, "second speaks\n")
    assert err.endswith("dagrun: second: succeeded\n")
    assert finish(p) == 0


def test_a_stalled_task_gets_one_warning_a_busy_or_talking_one_none(dagrun_proc: DagrunProcs):
    root = dagrun_proc.root
    spin = "python3 -c 'import time, pathlib\\nwhile not pathlib.Path(\\\"go/spin\\\").exists(): " \
        "sum(range(10000))'"
    dagrun_proc.manifest(f"""
        [dagrun]
        jobs = 4
        stall_warning = 0.6
        [tasks.idle]
        cmd = "sleep 30 & {GATED.format(name='idle').replace('sleep 0.05', 'sleep 1')}"
        [tasks.spin]
        cmd = "echo $$ > pids/spin; {spin}"
        [tasks.talk]
        cmd = "echo $$ > pids/talk; while [ ! -e go/talk ]; do echo tick; sleep 0.1; done"
        [tasks.quiet]
        cmd = "{gated('quiet')}"
        stall_warning = 0
    """)
    # idle polls its gate once a second: the fork of each `sleep` is CPU its group used, and
    # under load twenty forks a second moved its CPU time on within every 0.6 s window
    p = dagrun_proc.start("build", "-j4", "--events", "events.jsonl",
                          stderr=root / "build.err")
    for name in ("idle", "spin", "talk", "quiet"):
        dagrun_proc.task_pid(name)
    events = root / "events.jsonl"

    def stalled() -> list[dict]:
        text = events.read_text() if events.exists() else ""
        return [json.loads(x) for x in text.splitlines() if '"stalled"' in x]

    def polled_and_stalled() -> bool:  # status asked every 10 ms: the stall check goes on
        from dagrun import control

        assert "running" in control.ask(str(root / ".dagrun"), {"op": "status"})
        return stalled() != []

    wait_for(polled_and_stalled, "a stall warning while status is polled", timeout=10)
    time.sleep(1.5)  # two more stall periods: still one warning, and none for the others
    for name in ("idle", "spin", "talk", "quiet"):
        go(root, name)
    out, _ = p.communicate(timeout=DEADLINE)
    assert p.returncode == 0
    found = stalled()
    assert [(e["task"], e["seconds"] >= 0.6) for e in found] == [("idle", True)]
    warnings = [x for x in out.splitlines() if "printed nothing" in x]
    assert len(warnings) == 1 and warnings[0].startswith(
        "dagrun: warning: idle printed nothing and used no CPU for ")


def test_the_scheduler_cancels_without_stopping_the_build(fake_clock, recorder):
    """cancel() on the scheduler's thread: failed, not retried, dependents blocked, the build
    goes on although failures_allowed is 1 (FakeExecutor: jobs end on a fake clock)."""
    from dagrun.graph import compile
    from dagrun.manifest import parse
    from dagrun.plan import Plan

    text = """
        [tasks.a]\ncmd = "run a"\nretries = 3
        [tasks.b]\ncmd = "run b"\ndeps = ["a"]
        [tasks.c]\ncmd = "run c"
        [tasks.d]\ncmd = "run d"
    """
    g = compile(parse(textwrap.dedent(text), source="t.toml", root="/proj"))
    order = tuple(g.order)
    asked: list[str] = []

    def handler(job):  # c ends first: it cancels a (running) and d (queued: jobs = 2)
        if job.task == "c":
            asked.extend(s.cancel(g.index[n]) for n in ("a", "d", "a"))
        return 0

    ex = FakeExecutor(handler, clock=fake_clock, durations={"a": 10.0, "c": 1.0}, max_active=2)
    s = Scheduler(g, Plan(order, order, (), {}), [None] * len(order), ex, limits=Limits(2),
                  hooks=Hooks(recorder), clock=fake_clock, runs_dir="/proj/.dagrun/runs")
    result = s.run()
    assert asked == ["a: cancelled (killing it)", "d: cancelled before it started",
                     "a: cancelled (killing it)"]  # asked twice: killed once
    assert result.failed == ("a",) and result.succeeded == ("c",)
    assert sorted(result.not_run) == ["b", "d"]
    a = [e for e in recorder.of(TaskFinished) if e.task == "a"]
    assert [(e.ok, e.error, e.will_retry) for e in a] == [(False, "cancelled", False)]
    assert ex.started == ["a", "c"] and result.exit_code == 1


def test_commands_answer_quickly_while_a_1000_task_build_runs(tmp_path: Path):
    """`dagrun status` (the request itself, without Python's start-up) while 1,000 short tasks
    run, as often as it can answer: the median under 200 ms."""
    from dagrun import control

    tasks = "".join(f'[tasks.t{i}]\ncmd = "sleep 0.005"\n' for i in range(1000))
    (tmp_path / "dagrun.toml").write_text(tasks)
    build = subprocess.Popen([sys.executable, "-m", "dagrun", "--progress", "plain", "build",
                              "-j", "4"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        state = str(tmp_path / ".dagrun")
        wait_for(lambda: (tmp_path / ".dagrun" / "control.sock").exists(), "the control socket")
        times, done = [], []
        while build.poll() is None:
            t0 = time.perf_counter()
            try:
                answer = control.ask(state, {"op": "status"})
            except control.NoBuild:
                break  # it ended meanwhile
            if "done" not in answer:  # it was ending: {"error": "the build did not answer"}
                break
            times.append(time.perf_counter() - t0)
            done.append(answer["done"])
        assert build.wait(60) == 0
        assert len(times) >= 10 and done[0] < 500 and done == sorted(done), done
        times.sort()
        median, worst = times[len(times) // 2], times[-1]
        print(f"status: {len(times)} answers, median {median * 1000:.1f} ms, "
              f"worst {worst * 1000:.1f} ms")
        assert median < 0.2 and worst < 3.0  # a loaded machine (the build and this loop fill both
        # cores): the median is the measure, the worst only a bound on a hang
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()


# -- a remote task (tests/sshd.py: a real sshd on 127.0.0.1)


@pytest.fixture
def remote(shared_dir: Path, sshd) -> Iterator[DagrunProcs]:
    """A project in a folder the ssh test user shares, with an ssh executor "lab" on it."""
    from realproc import dagrun_procs

    (shared_dir / "go").mkdir()
    made = dagrun_procs(shared_dir)  # makes pids/
    procs = next(made)
    for sub in ("pids", "go"):
        (shared_dir / sub).chmod(0o777)
    yield procs
    next(made, None)  # its cleanup


def test_tail_and_cancel_a_task_on_an_ssh_host(remote: DagrunProcs, sshd):
    from test_ssh import remote_leftovers

    root = remote.root
    remote.manifest(sshd.toml("lab", workspace=str(root)) + textwrap.dedent(f"""
        [dagrun]
        jobs = 2
        [tasks.far]
        executor = "lab"
        cmd = "echo far 1; echo far err >&2; {gated('far', after='echo far done')}"
        [tasks.stuck]
        executor = "lab"
        cmd = "sleep 301 & echo $$ > pids/stuck; wait"
        [tasks.after_stuck]
        cmd = "touch after-stuck-ran"
        deps = ["stuck"]
    """))
    p = remote.start("build", stderr=root / "build.err")
    remote.task_pid("far"), remote.task_pid("stuck")
    state = live(root)
    assert state is not None
    host = f"ssh dagrunssh@127.0.0.1:{sshd.port}"
    where = {r["task"]: (r["where"], r["last_line"]) for r in state["running"]}
    assert where["stuck"] == (host, "")
    # its two streams come back on two channels: either may have been written last here
    assert where["far"] in ((host, "far 1"), (host, "far err"))
    tail = subprocess.Popen([sys.executable, "-m", "dagrun", "tail", "far", "-n", "5"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert tail.stdout is not None
    assert tail.stdout.readline() == "far 1\n"
    assert cli(root, "cancel", "stuck")[:2] == (0, "dagrun: stuck: cancelled (killing it)\n")
    assert remote_leftovers("sleep 301") == []  # its group on the host was killed
    go(root, "far")
    out, err = tail.communicate(timeout=DEADLINE)
    assert (tail.returncode, out) == (0, "far done\n")
    assert err == "far err\ndagrun: far: succeeded\n"
    out, _ = p.communicate(timeout=DEADLINE)
    assert p.returncode == 1, (root / "build.err").read_text()
    assert "FAILED: [cancelled] stuck" in out and not (root / "after-stuck-ran").exists()


# -- an HTTP pull executor (tests/http_workers.py: real `dagrun worker` processes)


def test_http_tasks_are_queued_until_a_worker_leases_them_and_cancel_reaches_it(tmp_path):
    from http_workers import start_worker, stop, worker_env

    (tmp_path / "pids").mkdir()
    (tmp_path / "dagrun.toml").write_text(textwrap.dedent("""
        [executors.pool]
        type = "http"
        lease_timeout = 4
        grace_period = 1
        [tasks.remote]
        executor = "pool"
        cmd = "echo $$ > pids/remote; exec sleep 302"
        [tasks.below]
        cmd = "touch below-ran"
        deps = ["remote"]
    """))
    out = tmp_path / "build.out"
    with out.open("wb") as f:
        build = subprocess.Popen([sys.executable, "-m", "dagrun", "--progress", "plain", "build"],
                                 cwd=tmp_path, env=worker_env(), stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "dagrun worker http" in out.read_text(), "the worker command")
        state = live(tmp_path)
        assert state is not None
        assert [(r["task"], r["state"], r["where"]) for r in state["running"]] == [
            ("remote", "queued", None)]
        assert state["workers"] == {"pool": []}
        line = next(x for x in out.read_text().splitlines() if "dagrun worker http" in x)
        url, _, token_file = line.split()[2:5]
        worker = start_worker(url, token_file)
        pid = int(wait_and_read(tmp_path / "pids" / "remote"))
        state = live(tmp_path)
        assert state is not None
        (running,) = state["running"]
        assert running["state"] == "running" and running["where"].startswith("worker ")
        assert state["workers"]["pool"] == [running["where"].split(" ", 1)[1]]
        code, said, _ = cli(tmp_path, "cancel", "remote")
        assert (code, said) == (0, "dagrun: remote: cancelled (killing it)\n")
        wait_for(lambda: not _alive(pid), "the worker killed the task")
        assert build.wait(DEADLINE) == 1, out.read_text()
        assert "FAILED: [cancelled] remote" in out.read_text()
        assert not (tmp_path / "below-ran").exists()
        stop(worker)
    finally:
        if build.poll() is None:
            os.killpg(build.pid, 9)
            build.wait()


def wait_and_read(path: Path) -> str:
    wait_for(lambda: path.exists() and path.read_text().endswith("\n"), f"{path} written")
    return path.read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- a Dask cluster (tests/dask_cluster.py: a real LocalCluster)


def test_cancel_reaches_a_task_on_a_dask_worker_and_status_names_the_workers(
    dagrun_proc: DagrunProcs, dask_scheduler: str,
):
    root = dagrun_proc.root
    dagrun_proc.manifest(f"""
        [executors.cluster]
        type = "dask"
        scheduler = "{dask_scheduler}"
        [tasks.far]
        executor = "cluster"
        cmd = "sleep 303 & echo $$ > pids/far; wait"
        [tasks.below]
        cmd = "touch below-ran"
        deps = ["far"]
    """)
    p = dagrun_proc.start("build")
    group = dagrun_proc.task_pid("far")
    state = live(root)
    assert state is not None
    assert [(r["task"], r["executor"]) for r in state["running"]] == [("far", "cluster")]
    assert len(state["workers"]["cluster"]) == 2  # the LocalCluster's two workers
    assert cli(root, "cancel", "far")[:2] == (0, "dagrun: far: cancelled (killing it)\n")
    wait_for(lambda: not live_in_groups({group}), "the task's group on the worker is gone")
    out, _ = p.communicate(timeout=DEADLINE)
    assert p.returncode == 1 and "FAILED: [cancelled] far" in out
    assert not (root / "below-ran").exists()
