"""The scheduler, driven through FakeExecutor and FakeClock: no processes, exact orders."""

from __future__ import annotations

import pytest

from dagrun.clock import FakeClock
from dagrun.errors import Interrupted
from dagrun.events import BuildFinished, BuildStarted, TaskFinished, TaskSkipped, TaskStarted
from dagrun.executors import Outcome
from dagrun.executors.fake import FakeExecutor
from dagrun.graph import compile
from dagrun.manifest import parse
from dagrun.plan import Plan
from dagrun.report import RecordingReporter
from dagrun.scheduler import BuildResult, Scheduler, run_dir_name


def schedule(
    text: str,
    executor: FakeExecutor,
    reporter: RecordingReporter,
    *,
    jobs: int = 2,
    failures_allowed: int = 1,
    durations: dict[str, float] | None = None,
    leases=None,
    resources: dict[str, int] | None = None,
    on_success=None,
) -> BuildResult:
    graph = compile(parse(text, source="t.toml", root="/proj"))
    order = tuple(graph.order)
    plan = Plan(order, order, (), {i: ("never ran",) for i in order})
    keys = [f"k{i}" for i in range(len(graph.specs))]
    return Scheduler(
        graph, plan, keys, executor,
        jobs=jobs, failures_allowed=failures_allowed, clock=executor.clock, reporter=reporter,
        base_env={"PATH": "/bin"}, runs_dir="/proj/.dagrun/runs", on_success=on_success,
        durations=durations, leases=leases,
        resources=resources if resources is not None else dict(graph.manifest.resources),
    ).run()


def tasks(*specs: str) -> str:
    return "\n".join(specs)


def t(name: str, deps: list[str] | None = None, **extra: object) -> str:
    lines = [f"[tasks.{name}]", f'cmd = "run {name}"']
    if deps:
        lines.append("deps = [" + ", ".join(f'"{d}"' for d in deps) + "]")
    for k, v in extra.items():
        lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n"


def test_runs_in_dependency_order_within_the_job_limit(fake_executor, recorder):
    text = tasks(t("a"), t("b"), t("c", ["a", "b"]), t("d", ["c"]), t("e"))
    fake_executor.max_active = 2
    result = schedule(text, fake_executor, recorder, jobs=2)
    assert result.ok and result.exit_code == 0
    assert fake_executor.peak == 2
    pos = {name: i for i, name in enumerate(fake_executor.started)}
    assert pos["c"] > pos["a"] and pos["c"] > pos["b"] and pos["d"] > pos["c"]
    start, end = fake_executor.intervals["c"], fake_executor.intervals["a"]
    assert start[0] >= end[1]
    assert sorted(result.succeeded) == ["a", "b", "c", "d", "e"]


def test_events_and_counts(fake_executor, recorder):
    schedule(tasks(t("a"), t("b", ["a"])), fake_executor, recorder)
    assert isinstance(recorder.events[0], BuildStarted) and recorder.events[0].total == 2
    finished = recorder.of(TaskFinished)
    assert [(e.task, e.done, e.total) for e in finished] == [("a", 1, 2), ("b", 2, 2)]
    assert isinstance(recorder.events[-1], BuildFinished)
    assert recorder.events[-1].succeeded == 2


def test_failure_blocks_dependents_and_stops_new_starts(fake_clock, recorder):
    ex = FakeExecutor(lambda job: 1 if job.task == "a" else 0, clock=fake_clock)
    text = tasks(t("a"), t("b", ["a"]), t("c", ["b"]), t("x"), t("y"), t("z"))
    result = schedule(text, ex, recorder, jobs=1)
    assert result.failed == ("a",)
    assert ex.started == ["a"]  # failures_allowed = 1: nothing new starts
    assert set(result.not_run) == {"b", "c", "x", "y", "z"}
    skipped = {e.task: e.why for e in recorder.of(TaskSkipped)}
    assert skipped["c"] == "dependency failed: a"
    assert skipped["x"] == "build stopped"
    assert result.exit_code == 1


def test_keep_going_runs_everything_not_blocked(fake_clock, recorder):
    ex = FakeExecutor(lambda job: 1 if job.task == "a" else 0, clock=fake_clock)
    text = tasks(t("a"), t("b", ["a"]), t("x"), t("y"))
    result = schedule(text, ex, recorder, jobs=1, failures_allowed=0)
    assert sorted(ex.started) == ["a", "x", "y"]
    assert result.not_run == ("b",)


def test_failures_allowed_two(fake_clock, recorder):
    ex = FakeExecutor(lambda job: 1 if job.task in ("a", "b") else 0, clock=fake_clock)
    text = tasks(t("a"), t("b"), t("c"), t("d"))
    result = schedule(text, ex, recorder, jobs=1, failures_allowed=2)
    assert ex.started[:2] == ["a", "b"] and len(ex.started) == 2
    assert sorted(result.not_run) == ["c", "d"]


def test_retries_rerun_a_failed_task(fake_clock, recorder):
    attempts: list[str] = []

    def flaky(job):
        attempts.append(job.task)
        return 1 if attempts.count(job.task) < 3 else 0

    ex = FakeExecutor(flaky, clock=fake_clock)
    result = schedule(tasks(t("a", retries=2)), ex, recorder)
    assert result.ok and attempts == ["a", "a", "a"]
    finished = recorder.of(TaskFinished)
    assert [e.will_retry for e in finished] == [True, True, False]
    assert [e.attempt for e in recorder.of(TaskStarted)] == [1, 2, 3]


def test_retries_exhausted_is_a_failure(fake_clock, recorder):
    ex = FakeExecutor(lambda job: 1, clock=fake_clock)
    result = schedule(tasks(t("a", retries=1)), ex, recorder)
    assert result.failed == ("a",) and ex.started == ["a", "a"]


def test_threads_take_slots(fake_clock, recorder):
    ex = FakeExecutor(clock=fake_clock, max_active=3)
    text = tasks(t("big", threads=3), t("s1"), t("s2"), t("s3"))
    schedule(text, ex, recorder, jobs=3)
    big = ex.intervals["big"]
    for small in ("s1", "s2", "s3"):
        s = ex.intervals[small]
        assert s[1] <= big[0] or s[0] >= big[1], "a 3-thread task shares no slot"


def test_threads_above_jobs_run_alone(fake_clock, recorder):
    ex = FakeExecutor(clock=fake_clock)
    result = schedule(tasks(t("huge", threads=8), t("s")), ex, recorder, jobs=2)
    assert result.ok
    h, s = ex.intervals["huge"], ex.intervals["s"]
    assert s[1] <= h[0] or s[0] >= h[1]


def test_resource_pools_are_never_exceeded(fake_clock, recorder):
    text = "[dagrun]\nresources = { gpu = 1 }\n" + tasks(
        t("g1", resources="{ gpu = 1 }"), t("g2", resources="{ gpu = 1 }"), t("cpu")
    )
    ex = FakeExecutor(clock=fake_clock)
    schedule(text, ex, recorder, jobs=4)
    a, b = ex.intervals["g1"], ex.intervals["g2"]
    assert a[1] <= b[0] or b[1] <= a[0]
    assert ex.intervals["cpu"][0] == min(a[0], b[0])  # cpu work is not held up


def test_critical_path_first(fake_clock, recorder):
    # one long chain and many short independent tasks, one slot:
    # the chain's head starts first because the most work waits on it.
    chain = [t("c1"), t("c2", ["c1"]), t("c3", ["c2"])]
    shorts = [t(f"s{i}") for i in range(4)]
    ex = FakeExecutor(clock=fake_clock)
    schedule(tasks(*shorts, *chain), ex, recorder, jobs=1)
    assert ex.started[0] == "c1"


def test_recorded_durations_weigh_priorities(fake_clock, recorder):
    ex = FakeExecutor(clock=fake_clock)
    text = tasks(t("quick"), t("slow"))
    schedule(text, ex, recorder, jobs=1, durations={"quick": 0.1, "slow": 30.0})
    assert ex.started == ["slow", "quick"]


def test_on_success_called_only_for_successes(fake_clock, recorder):
    seen: list[int] = []
    ex = FakeExecutor(lambda job: 0 if job.task == "ok" else 2, clock=fake_clock)
    schedule(tasks(t("ok"), t("bad")), ex, recorder, failures_allowed=0,
             on_success=lambda i, o: seen.append(i))
    assert len(seen) == 1


def test_job_fields(fake_clock, recorder):
    ex = FakeExecutor(clock=fake_clock)
    text = (
        '[tasks.sim]\nmatrix = { n = [1] }\ncmd = "x"\ncwd = "sub"\ntimeout = 5\n'
        'env = { A = "1" }\noutputs = ["o{n}"]\n'
    )
    schedule(text, ex, recorder)
    job = ex.jobs[0]
    assert job.cwd == "/proj/sub"
    assert job.timeout == 5.0
    assert job.outputs == ("/proj/sub/o1",)
    assert job.env["A"] == "1" and job.env["PATH"] == "/bin"
    assert job.env["DAGRUN_TASK"] == "sim[n=1]"
    assert job.run_dir == "/proj/.dagrun/runs/sim[n=1]"


def test_run_dir_names_are_safe_and_unique():
    assert run_dir_name("plain-name_1.2") == "plain-name_1.2"
    a, b = run_dir_name("a/b"), run_dir_name("a_b")
    assert "/" not in a and a != b
    assert run_dir_name("x y").startswith("x_y-")


class _Leases:
    def __init__(self, cores: int) -> None:
        self.free = list(range(cores))
        self.granted: list[tuple[int, ...]] = []

    def try_grant(self, n, node=None):
        if len(self.free) < n:
            return None
        cores, self.free = tuple(self.free[:n]), self.free[n:]
        self.granted.append(cores)

        class L:
            pass

        lease = L()
        lease.cores, lease.node = cores, 0
        return lease

    def release(self, lease):
        self.free.extend(lease.cores)


def test_leases_wait_for_free_cores(fake_clock, recorder):
    leases = _Leases(2)
    ex = FakeExecutor(clock=fake_clock)
    schedule(tasks(t("a", threads=2), t("b", threads=2)), ex, recorder, jobs=8, leases=leases)
    a, b = ex.intervals["a"], ex.intervals["b"]
    assert a[1] <= b[0] or b[1] <= a[0]
    assert {j.env["DAGRUN_CORES"] for j in ex.jobs} == {"0,1"}
    assert leases.free == [0, 1]


def test_interrupt_cancels_and_raises(fake_clock, recorder):
    class Interrupting(FakeExecutor):
        def wait(self, timeout=None):
            if self.started == ["a", "b"]:
                raise KeyboardInterrupt
            return super().wait(timeout)

    ex = Interrupting(clock=fake_clock)
    with pytest.raises(Interrupted) as info:
        schedule(tasks(t("a"), t("b"), t("c", ["a"])), ex, recorder)
    assert sorted(ex.cancelled) == ["a", "b"]
    result = info.value.result
    assert result.interrupted and result.exit_code == 130
    assert sorted(result.failed) == ["a", "b"] and result.not_run == ("c",)
    assert all(e.error == "interrupted" for e in recorder.of(TaskFinished))


def test_outcome_that_could_not_start(fake_clock, recorder):
    ex = FakeExecutor(lambda job: Outcome(job.id, None, 0.0, error="cannot start: EPERM"),
                      clock=fake_clock)
    result = schedule(tasks(t("a")), ex, recorder)
    assert result.failed == ("a",)
    assert recorder.of(TaskFinished)[0].error == "cannot start: EPERM"


def test_durations_use_the_clock(recorder):
    clock = FakeClock()
    ex = FakeExecutor(clock=clock, durations={"a": 2.5})
    schedule(tasks(t("a")), ex, recorder)
    assert recorder.of(TaskFinished)[0].duration == 2.5
    assert recorder.of(BuildFinished)[0].elapsed == 2.5


def test_item4_a_success_hook_error_turns_the_success_into_a_failure(fake_executor, recorder):
    text = tasks(t("a"), t("b", ["a"]), t("c"))

    def on_success(i: int, outcome: Outcome) -> str | None:
        return "declared output right.txt was not written" if i == 0 else None

    result = schedule(text, fake_executor, recorder, on_success=on_success, failures_allowed=0)
    assert result.failed == ("a",) and result.not_run == ("b",) and result.succeeded == ("c",)
    ends = {e.task: e for e in recorder.events if isinstance(e, TaskFinished)}
    assert not ends["a"].ok and ends["a"].error == "declared output right.txt was not written"
    assert ends["c"].ok and ends["c"].error is None
