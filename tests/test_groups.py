"""Executor groups (``type = "group"``, or a task's ``executor = [...]``).

The choice and the limits through FakeExecutors and a FakeClock (exact), then
a real build over two private sshd hosts and an HTTP pool with real workers:
tasks spread, each member's ``max_jobs`` holds (recorded intervals), and a
host that goes away mid-build hands its tasks to the others.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import psutil
import pytest
from realproc import DagrunProcs, wait_for
from sshd import can_run, start_sshd

from dagrun.clock import FakeClock
from dagrun.events import TaskFinished, TaskStarted
from dagrun.executors import Job, Outcome
from dagrun.executors.fake import FakeExecutor
from dagrun.executors.group import Group
from dagrun.graph import compile
from dagrun.manifest import parse
from dagrun.plan import Plan
from dagrun.report import RecordingReporter
from dagrun.scheduler import Hooks, Limits, Scheduler

ROOT = Path(__file__).resolve().parent.parent

MEMBERS = """
[executors.lab1]
type = "ssh"
host = "h1"
max_jobs = 2
env = { SCRATCH = "/lab1" }

[executors.lab2]
type = "ssh"
host = "h2"
max_jobs = 3

[executors.farm]
type = "group"
members = ["lab1", "lab2"]
env = { FARM = "yes" }
"""


def task(name: str, executor: str = '"farm"', **extra: object) -> str:
    lines = [f"[tasks.{name}]", f'cmd = "run {name}"', f"executor = {executor}"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def run_group(text: str, executors: dict[str, FakeExecutor], clock: FakeClock,
              recorder: RecordingReporter) -> object:
    from dagrun.build import groups

    graph = compile(parse(text, source="t.toml", root="/proj"))
    order = tuple(graph.order)
    plan = Plan(order, order, (), {})
    slots = {name: ex.slots for name, ex in executors.items() if name != "local"}
    return Scheduler(
        graph, plan, [f"k{i}" for i in order], executors,
        limits=Limits(2, slots=slots, groups=groups(graph, plan)),
        hooks=Hooks(recorder), clock=clock, runs_dir="/proj/.dagrun/runs",
    ).run()


def test_group_tasks_spread_and_every_members_limit_holds(fake_clock, recorder):
    lab1 = FakeExecutor(clock=fake_clock, max_active=2, name="lab1", slots=2)
    lab2 = FakeExecutor(clock=fake_clock, max_active=3, name="lab2", slots=3)
    text = MEMBERS + "".join(task(f"g{i}") for i in range(10)) + task("own", '"lab1"')
    result = run_group(text, {"lab1": lab1, "lab2": lab2}, fake_clock, recorder)
    assert result.ok  # type: ignore[attr-defined]
    assert (lab1.peak, lab2.peak) == (2, 3)  # FakeExecutor raises past max_active
    assert "own" in lab1.started and len(lab1.started) + len(lab2.started) == 11
    assert len(lab1.started) >= 3 and len(lab2.started) >= 5
    where = {e.task: e.executor for e in recorder.of(TaskStarted)}
    assert where["own"] == "lab1" and {where[f"g{i}"] for i in range(10)} == {"lab1", "lab2"}
    jobs = {j.task: j for ex in (lab1, lab2) for j in ex.jobs}
    for j in (*lab1.jobs, *lab2.jobs):
        member = "lab1" if j in lab1.jobs else "lab2"
        if j.task != "own":
            assert j.env["DAGRUN_EXECUTOR"] == member and j.env["FARM"] == "yes"
        assert ("SCRATCH" in j.env) == (member == "lab1")  # a member's env where it runs
    assert jobs["own"].env["SCRATCH"] == "/lab1" and "FARM" not in jobs["own"].env


def test_a_member_that_loses_a_job_is_set_aside_and_its_task_runs_elsewhere(fake_clock,
                                                                             recorder):
    def gone(job: Job) -> Outcome:
        return Outcome(job.id, None, 0.0, error="connection dropped", lost=True)

    lab1 = FakeExecutor(gone, clock=fake_clock, name="lab1", slots=2)
    lab2 = FakeExecutor(clock=fake_clock, name="lab2", slots=3)
    text = MEMBERS + "".join(task(f"g{i}") for i in range(8))
    result = run_group(text, {"lab1": lab1, "lab2": lab2}, fake_clock, recorder)
    assert result.ok  # type: ignore[attr-defined]
    assert len(lab1.started) == 2  # the two it had when it went away; nothing after
    assert sorted(lab2.finished) == sorted(f"g{i}" for i in range(8))
    lost = [e for e in recorder.of(TaskFinished) if e.will_retry]
    assert len(lost) == 2 and all("connection dropped" in str(e.error) for e in lost)


def test_a_member_that_refuses_a_job_hands_it_on(fake_clock, recorder):
    class Refusing(FakeExecutor):
        def submit(self, job: Job) -> None:
            raise OSError("host unreachable")

    lab1 = Refusing(clock=fake_clock, name="lab1", slots=2)
    lab2 = FakeExecutor(clock=fake_clock, name="lab2", slots=3)
    text = MEMBERS + "".join(task(f"g{i}") for i in range(4))
    result = run_group(text, {"lab1": lab1, "lab2": lab2}, fake_clock, recorder)
    assert result.ok  # type: ignore[attr-defined]
    assert sorted(lab2.finished) == ["g0", "g1", "g2", "g3"]


def test_choose_prefers_where_the_inputs_are_then_room():
    g = Group("farm", ["lab1", "lab2", "pool"])
    assert g.choose({"lab1": 1, "lab2": 3, "pool": 2}, 1) == "lab2"  # most room
    assert g.choose({"lab1": 1, "lab2": 3, "pool": 2}, 1, ["pool", "lab1", "pool"]) == "pool"
    assert g.choose({"lab1": 0, "lab2": 0, "pool": 0}, 1) is None
    g.lost("lab2")
    assert g.choose({"lab1": 1, "lab2": 3}, 1) == "lab1"
    g.lost("lab1")
    g.lost("pool")  # all set aside: all are tried again rather than none
    assert g.choose({"lab1": 1, "lab2": 3}, 1) == "lab2"


def test_a_list_of_executors_is_a_group_and_only_the_groups_env_enters_the_key():
    m = parse(MEMBERS + task("a", '["lab2", "lab1"]') + task("b"), source="t.toml", root="/p")
    a, b = m.tasks
    assert a.executor == "lab2+lab1" and m.executors["lab2+lab1"].type == "group"
    assert m.executors["lab2+lab1"].options["members"] == ["lab2", "lab1"]
    assert dict(b.env) == {"FARM": "yes"} and a.env == ()  # members' env: not declared


# ---------------------------------------------------------------- real hosts


def _kill_host(server: object) -> None:
    """The host goes away: its sshd and every session (and task) under it die."""
    proc = psutil.Process(server.proc.pid)  # type: ignore[attr-defined]
    for p in [*proc.children(recursive=True), proc]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.slow
@pytest.mark.ssh
def test_a_group_over_two_ssh_hosts_and_an_http_pool(shared_dir, tmp_path, monkeypatch):
    why = can_run()
    if why:
        pytest.skip(why)
    monkeypatch.setenv("DAGRUN", f"{sys.executable} -m dagrun")  # the provisioner's workers
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    hosts = [start_sshd(tmp_path / f"sshd{n}") for n in (1, 2)]
    procs = DagrunProcs(shared_dir)
    try:
        _group_build(shared_dir, hosts, procs)
    finally:
        procs.cleanup()
        for h in hosts:
            if h.proc.poll() is None:
                h.stop()


N = 24
# each task records where it runs, then its interval (the member, start, end); umask 0: a
# task run again elsewhere may be another user (the pool's root, the hosts' ssh user)
CMD = ("umask 0; echo $DAGRUN_EXECUTOR > iv/{n}.run; s=$(date +%s.%N); sleep 0.6; "
       "echo $DAGRUN_EXECUTOR $s $(date +%s.%N) > iv/{n}.txt")


def _group_build(root: Path, hosts: list, procs: DagrunProcs) -> None:
    (root / "iv").mkdir()
    (root / "iv").chmod(0o777)
    members = "".join(h.toml(f"lab{n}", workspace=str(root), max_jobs=2)
                      for n, h in enumerate(hosts, 1))
    procs.manifest(members + f"""
[executors.pool]
type = "http"
provisioner = "{ROOT}/examples/http/local.sh"
max_jobs = 2
lease_timeout = 3

[executors.farm]
type = "group"
members = ["lab1", "lab2", "pool"]

[tasks.t]
matrix = {{ n = {{ range = [0, {N}] }} }}
cmd = "{CMD}"
outputs = ["iv/{{n}}.txt"]
executor = "farm"
""")
    p = procs.start("build", "--events", "events.jsonl", "-k")
    runs = root / "iv"

    def lab1_busy() -> bool:
        """lab1 finished two tasks and runs another now."""
        done = [f for f in runs.glob("*.txt") if f.read_text().startswith("lab1 ")]
        now = [f for f in runs.glob("*.run") if f.read_text().strip() == "lab1"
               and not (runs / f"{f.stem}.txt").exists()]
        return len(done) >= 2 and bool(now)

    wait_for(lab1_busy, "lab1 done with two tasks and running a third", timeout=60)
    _kill_host(hosts[0])
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, out + err
    spans: dict[str, list[tuple[float, float]]] = {}
    for n in range(N):
        member, start, end = (root / "iv" / f"{n}.txt").read_text().split()
        spans.setdefault(member, []).append((float(start), float(end)))
    assert set(spans) == {"lab1", "lab2", "pool"}, spans  # spread over all three
    for member, intervals in spans.items():
        assert _peak(intervals) <= 2, (member, intervals)  # max_jobs = 2 each
    events = [json.loads(x) for x in (root / "events.jsonl").read_text().splitlines()]
    starts = [e["executor"] for e in events if e["event"] == "started"]
    assert starts.count("lab1") <= len(spans["lab1"]) + 2  # none after it went away
    lost = [e for e in events if e["event"] == "finished" and e["status"] == "retry"]
    assert lost and all(e["executor"] == "lab1" for e in lost)
    moved = {e["task"] for e in lost}
    final = {e["task"]: e["executor"] for e in events if e["event"] == "finished"
             and e["status"] == "succeeded"}
    assert all(final[t] in ("lab2", "pool") for t in moved)  # lab1's tasks ran elsewhere


def _peak(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak



@pytest.mark.slow
def test_a_member_that_cannot_start_leaves_its_group_to_the_others(project):
    import socket

    with socket.socket() as s:  # a port nothing listens on: ssh is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    project.manifest(f"""
[executors.gone]
type = "ssh"
host = "127.0.0.1"
port = {port}
ssh_options = ["-o", "ConnectTimeout=2", "-o", "BatchMode=yes"]

[executors.farm]
type = "group"
members = ["gone", "local"]

[tasks.t]
matrix = {{ n = [1, 2, 3] }}
cmd = "echo $DAGRUN_EXECUTOR > t{{n}}.txt"
outputs = ["t{{n}}.txt"]
executor = "farm"
""")
    r = project.run("build")
    assert r.code == 0, r.out + r.err
    assert "executor 'gone'" in r.err and "its groups run their tasks on the others" in r.err
    assert [project.read(f"t{n}.txt") for n in (1, 2, 3)] == ["local\n"] * 3
    project.manifest(project.read("dagrun.toml").replace('"gone", "local"', '"gone"'))
    assert project.run("clean").code == 0
    r = project.run("build")
    assert r.code == 2 and "no member of group 'farm' could start" in r.err
