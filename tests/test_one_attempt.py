"""At most one live attempt per task: kill the thing under a task at random moments, then check,
from the tasks' own time stamps, that no two attempts of a task ever ran at the same time."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from http_workers import collect, job, make_executor, start_worker, status, stop, wait_for

pytestmark = pytest.mark.slow

# one attempt: a stamp every 50 ms for ~3 s (longer than the lease timeout), in a file of its own
STAMPS = 'f=stamps/$DAGRUN_TASK.$$; for i in $(seq 60); do date +%s.%N >> $f; sleep 0.05; done'


def attempts(stamps: Path) -> dict[str, list[tuple[float, float, int]]]:
    """Each task's attempts: (first stamp, last stamp, stamps), in order of start."""
    out: dict[str, list[tuple[float, float, int]]] = {}
    for f in stamps.iterdir():
        times = [float(x) for x in f.read_text().split()]
        if times:
            task = f.name.rsplit(".", 1)[0]
            out.setdefault(task, []).append((min(times), max(times), len(times)))
    return {task: sorted(runs) for task, runs in out.items()}


def overlaps(stamps: Path) -> list[str]:
    found = []
    for task, runs in attempts(stamps).items():
        for (s1, e1, _), (s2, e2, _) in zip(runs, runs[1:], strict=False):
            if s2 <= e1:
                found.append(f"{task}: {s1:.2f}-{e1:.2f} and {s2:.2f}-{e2:.2f}")
    return found


def group_alive(pgid: int) -> list[int]:
    import psutil

    left = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.info["pid"]) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(p.info["pid"])
        except (ProcessLookupError, psutil.Error):
            pass
    return left


def _end(ex, *workers: subprocess.Popen[bytes] | None) -> None:
    """Close the executor, then resume (if stopped) and kill each worker."""
    ex.close()
    for w in workers:
        if w is not None:
            _resume(w)
            stop(w)


def _resume(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def marked(word: str) -> list[int]:
    import psutil

    return [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline", "status"])
            if word in " ".join(p.info["cmdline"] or []) and p.info["status"] != "zombie"]


def test_kill_9_of_a_worker_kills_its_tasks_within_2_s(tmp_path):
    ex, _ = make_executor(tmp_path, lease_timeout=30.0)
    root = Path(ex.context.root)
    worker = start_worker(ex, directory=tmp_path / "w")
    try:
        ex.submit(job(root, 1, "echo $$ > pid; sleep 100 & setsid sleep 101 & sleep 102"))
        wait_for(lambda: (root / "pid").exists() and marked("sleep 101"), what="the task")
        pgid = int((root / "pid").read_text())
        assert group_alive(pgid)
        os.kill(worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: not group_alive(pgid) and not marked("sleep 101"), timeout=5,
                 what="the task's processes to die")
        assert time.monotonic() - killed < 2.0
    finally:
        stop(worker)
        ex.close()


def test_http_workers_killed_at_random_never_leave_two_attempts_running(tmp_path):
    """20 kill -9 or SIGSTOP of workers at random moments (a stopped one resumes later); lost
    tasks run again, never alongside."""
    ex, _ = make_executor(tmp_path, lease_timeout=2.0, max_jobs=3)  # fence margin 0.4 s
    root = Path(ex.context.root)
    (root / "stamps").mkdir()
    workers = [start_worker(ex, directory=tmp_path / f"w{n}") for n in range(3)]
    rng = random.Random(24)

    stopped: list[subprocess.Popen[bytes]] = []

    def killer() -> None:
        for n in range(20):
            time.sleep(rng.uniform(0.2, 0.6))
            victim = workers.pop(rng.randrange(len(workers)))
            if rng.random() < 0.5:
                os.kill(victim.pid, signal.SIGKILL)
            else:
                os.kill(victim.pid, signal.SIGSTOP)
                stopped.append(victim)
            if len(stopped) > 2:  # resumed after 1-3 rounds: it comes back to work
                resumed = stopped.pop(0)
                os.kill(resumed.pid, signal.SIGCONT)
                workers.append(resumed)
            workers.append(start_worker(ex, directory=tmp_path / f"w{n + 3}"))

    tasks = [f"t{n}" for n in range(6)]
    next_id = iter(range(1, 1000))
    owner: dict[int, str] = {}
    for task in tasks:
        owner[i := next(next_id)] = task
        ex.submit(job(root, i, STAMPS, task=task, env={"DAGRUN_TASK": task}))
    thread = threading.Thread(target=killer)
    thread.start()
    succeeded: set[str] = set()
    try:
        while len(succeeded) < len(tasks):
            for o in collect(ex, 1, timeout=60):
                task = owner[o.job_id]
                if o.ok:
                    succeeded.add(task)
                    continue
                assert o.lost, o  # what the scheduler does with a lost job: run it again
                owner[i := next(next_id)] = task
                ex.submit(job(root, i, STAMPS, task=task, env={"DAGRUN_TASK": task}))
    finally:
        thread.join()
        ex.close()
        for w in workers + stopped:
            _resume(w)
            stop(w)
    assert overlaps(root / "stamps") == []
    runs = attempts(root / "stamps")
    assert sorted(runs) == tasks
    assert all(any(n == 60 for _, _, n in r) for r in runs.values())  # one whole attempt each
    assert sum(len(r) for r in runs.values()) > len(tasks)  # some attempts were killed


def _stamping_pool_and_a_logged_worker(
    tmp_path: Path,
) -> tuple[Any, Path, Path, subprocess.Popen[bytes]]:
    """An HTTP pool with a 2 s lease (a fence at 1.6 s), its root's ``stamps`` folder, and a
    first worker whose log is ``stopped.log``."""
    ex, _ = make_executor(tmp_path, lease_timeout=2.0)
    root = Path(ex.context.root)
    (root / "stamps").mkdir()
    log = tmp_path / "stopped.log"
    return ex, root, log, start_worker(ex, directory=tmp_path / "w1", log=log)


def test_a_stopped_worker_s_task_dies_at_its_fence_and_runs_once_elsewhere(tmp_path):
    """SIGSTOP a worker mid-task: its guard kills the task before the server gives the task
    away; resumed, the worker says so, reports nothing, and goes on taking work."""
    ex, root, log, first = _stamping_pool_and_a_logged_worker(tmp_path)  # fence: 1.6 s
    second = None
    try:
        ex.submit(job(root, 1, STAMPS, task="t", env={"DAGRUN_TASK": "t"}))
        wait_for(lambda: any((root / "stamps").iterdir()), what="the task to start")
        os.kill(first.pid, signal.SIGSTOP)
        stopped = time.time()
        (lost,) = collect(ex, 1, timeout=15)
        assert lost.lost and "went silent" in (lost.error or "")
        ((_, killed_at, n),) = attempts(root / "stamps")["t"]
        assert n < 60 and killed_at < time.time() - 0.1  # it stopped before the lease ended
        assert killed_at - stopped < 2.0
        ex.submit(job(root, 2, STAMPS, task="t", env={"DAGRUN_TASK": "t"}))
        second = start_worker(ex, directory=tmp_path / "w2")
        (done,) = collect(ex, 1, timeout=30)
        assert done.ok
        os.kill(first.pid, signal.SIGCONT)
        wait_for(lambda: "its task was killed" in log.read_text(), what="the worker to say so")
        stop(second)
        time.sleep(0.3)  # the server sees its connections close: no job goes to a dead poll
        ex.submit(job(root, 3, "echo $DAGRUN_WORKER"))  # the resumed worker takes new work
        (again,) = collect(ex, 1, timeout=30)
        assert again.ok and again.stdout.startswith(f"{socket.gethostname()}-{first.pid}-")
        assert status(ex)["refused"] == 0  # the killed task was never reported
    finally:
        _end(ex, first, second)
    assert overlaps(root / "stamps") == []


def test_a_lease_granted_to_a_stopped_worker_s_poll_is_not_started_when_it_resumes(tmp_path):
    """A worker stopped while its /lease long poll was parked: the server grants it a job, which
    expires and runs elsewhere; resumed, the worker must not start it (it counts the lease's age
    from when it asked, not from when the answer was read)."""
    ex, root, log, first = _stamping_pool_and_a_logged_worker(tmp_path)
    second = None
    try:
        wait_for(lambda: status(ex)["workers"], what="the worker to poll")
        time.sleep(0.3)
        os.kill(first.pid, signal.SIGSTOP)
        ex.submit(job(root, 1, STAMPS, task="t", env={"DAGRUN_TASK": "t"}))
        (lost,) = collect(ex, 1, timeout=15)  # granted to the parked poll, then silent
        assert lost.lost, lost
        ex.submit(job(root, 2, STAMPS, task="t", env={"DAGRUN_TASK": "t"}))
        second = start_worker(ex, directory=tmp_path / "w2")
        wait_for(lambda: any((root / "stamps").iterdir()), what="the second attempt to start")
        os.kill(first.pid, signal.SIGCONT)
        (done,) = collect(ex, 1, timeout=30)
        assert done.ok
        wait_for(lambda: "not starting its task" in log.read_text(), what="the worker to say so")
    finally:
        _end(ex, first, second)
    assert overlaps(root / "stamps") == []
    assert len(attempts(root / "stamps")["t"]) == 1


def test_a_worker_whose_guard_dies_kills_its_tasks_and_exits(tmp_path):
    """Nothing would fence the tasks of a worker without its guard: it stops them and exits 1."""
    import psutil

    ex, _ = make_executor(tmp_path, lease_timeout=30.0)
    root = Path(ex.context.root)
    log = tmp_path / "w.log"
    worker = start_worker(ex, directory=tmp_path / "w", log=log)
    try:
        ex.submit(job(root, 1, "echo $$ > pid; sleep 100"))
        wait_for(lambda: (root / "pid").exists() and (root / "pid").read_text(), what="the task")
        pgid = int((root / "pid").read_text())
        me = psutil.Process(worker.pid)
        guards = [c for c in me.children() if c.pid != pgid and c.cmdline() == me.cmdline()]
        assert len(guards) == 1, [c.cmdline() for c in me.children()]
        os.kill(guards[0].pid, signal.SIGKILL)
        assert worker.wait(timeout=15) == 1
        assert "its guard process is gone" in log.read_text()
        wait_for(lambda: not group_alive(pgid), timeout=5, what="the task to die")
    finally:
        stop(worker)
        ex.close()


# -- SSH


def test_the_ssh_runner_never_starts_a_command_once_its_connection_is_gone(tmp_path):
    """The runner's connection is its stdin and stdout: a job that comes with the end of
    stdin, or whose runner cannot write to stdout, never starts (and no child runs it)."""
    import json

    from dagrun.executors.ssh_resident import PROGRAM

    ran = tmp_path / "ran"
    request = {"op": "run", "id": 1, "cmd": f"touch {ran}", "ws": str(tmp_path), "cwd": ".",
               "mk": [], "env": {}, "grace": 1}
    line = (json.dumps(request) + "\n").encode()
    for stdout in ("piped", "closed"):
        r, w = os.pipe()
        if stdout == "closed":
            os.close(r)  # a stdout nobody reads any more: the first write fails
        proc = subprocess.Popen([sys.executable, "-c", PROGRAM], stdin=subprocess.PIPE,
                                stdout=w, stderr=subprocess.DEVNULL)
        os.close(w)
        proc.communicate(line, timeout=30)  # the request, then the end of stdin
        if stdout == "piped":
            os.close(r)
        time.sleep(0.3)  # a child left to itself would have run by now
        assert not ran.exists(), stdout


def ssh_executor(sshd, root: Path, **options: object):
    from dagrun.executors import Context
    from dagrun.executors.ssh import SshExecutor

    ctx = Context(str(root), str(root / ".dagrun"), dict(os.environ), 4, None)
    ex = SshExecutor.from_options("lab", sshd.options(workspace=str(root), **options), ctx)
    ex.start()
    return ex


def drop_connection(sshd, ex, rng: random.Random) -> None:
    """Kill the master connection here, or its sshd over there (both ends, in turn)."""
    import psutil

    if rng.random() < 0.5 and ex.master_pid is not None:
        victims = [psutil.Process(ex.master_pid)]
    else:
        victims = psutil.Process(sshd.proc.pid).children()
    for p in victims:
        try:
            p.kill()
        except psutil.Error:
            pass


def test_ssh_connections_dropped_at_random_never_leave_two_attempts_running(sshd, shared_dir):
    """20 connection drops at random moments, with tasks that ignore SIGTERM (cleaning up,
    say): a lost attempt dies at once (no grace), before its task runs again."""
    root = shared_dir
    (root / "stamps").mkdir()
    (root / "stamps").chmod(0o777)
    ex = ssh_executor(sshd, root, max_jobs=3)
    rng = random.Random(2424)

    def killer() -> None:
        for _ in range(20):
            time.sleep(rng.uniform(0.3, 0.7))
            drop_connection(sshd, ex, rng)

    cmd = "trap '' INT TERM; " + STAMPS
    tasks = [f"s{n}" for n in range(6)]
    next_id = iter(range(1, 1000))
    owner: dict[int, str] = {}

    def submit(task: str) -> None:
        owner[i := next(next_id)] = task
        ex.submit(job(root, i, cmd, task=task, env={"DAGRUN_TASK": task}))

    for task in tasks:
        submit(task)
    thread = threading.Thread(target=killer)
    thread.start()
    succeeded: set[str] = set()
    try:
        while len(succeeded) < len(tasks):
            for o in ex.wait(timeout=60):
                if o.ok:
                    succeeded.add(owner[o.job_id])
                else:
                    assert o.lost, o
                    submit(owner[o.job_id])
    finally:
        thread.join()
        ex.close()
    assert overlaps(root / "stamps") == []
    runs = attempts(root / "stamps")
    assert sorted(runs) == tasks
    assert sum(len(r) for r in runs.values()) > len(tasks)  # some attempts were killed


def test_an_ssh_task_whose_connection_dies_is_killed_within_2_s(sshd, shared_dir):
    """Even one that ignores SIGTERM (the grace period is for cancels, not for lost ones)."""
    root = shared_dir
    ex = ssh_executor(sshd, root)
    try:
        ex.submit(job(root, 1, "trap '' INT TERM; echo $$ > pid; sleep 100 & sleep 101"))
        wait_for(lambda: (root / "pid").exists() and marked("sleep 101"), what="the task")
        pgid = int((root / "pid").read_text())
        import psutil

        psutil.Process(ex.master_pid).kill()  # the connection drops
        dropped = time.monotonic()
        wait_for(lambda: not group_alive(pgid), timeout=10, what="the task's group to die")
        assert time.monotonic() - dropped < 2.0
        (lost,) = ex.wait(timeout=30)
        assert lost.lost, lost
    finally:
        ex.close()


def test_a_killed_ssh_runner_loses_its_jobs_kills_them_and_is_started_again(sshd, shared_dir):
    """The resident runner on the host dies (kill -9): its job ends lost, the job's group is
    killed over the connection before the outcome comes, and the next job gets a new runner."""
    import psutil

    root = shared_dir
    ex = ssh_executor(sshd, root)
    try:
        ex.submit(job(root, 1, "trap '' INT TERM; echo $$ > pid; sleep 103 & sleep 104"))
        wait_for(lambda: (root / "pid").exists() and marked("sleep 104"), what="the task")
        pgid = int((root / "pid").read_text())
        runner = ex._runner.host_pid
        psutil.Process(runner).kill()
        (lost,) = ex.wait(timeout=30)
        assert lost.lost and "lost" in (lost.error or ""), lost
        assert not group_alive(pgid)
        ex.submit(job(root, 2, "echo again"))
        (again,) = ex.wait(timeout=30)
        assert again.ok and again.stdout == "again\n", again
        assert ex._runner.host_pid != runner
    finally:
        ex.close()
