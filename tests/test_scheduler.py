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
from dagrun.scheduler import BuildResult, Hooks, Limits, Policy, Scheduler, run_dir_name


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
    resources = resources if resources is not None else dict(graph.manifest.resources)
    return Scheduler(
        graph, plan, keys, executor,
        limits=Limits(jobs, resources, leases),
        policy=Policy(failures_allowed, durations=durations or {}),
        hooks=Hooks(reporter, on_success),
        clock=executor.clock, runs_dir="/proj/.dagrun/runs",
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
    assert job.cwd == "sub" and job.local_cwd == "/proj/sub"
    assert job.timeout == 5.0
    assert job.outputs == ("sub/o1",)
    assert job.local_path(job.outputs[0]) == "/proj/sub/o1"
    assert job.env["A"] == "1" and "PATH" not in job.env  # declared env only: the job travels
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
        def collect(self):
            if self.started == ["a", "b"]:
                raise KeyboardInterrupt
            return super().collect()

    ex = Interrupting(clock=fake_clock)
    with pytest.raises(Interrupted) as info:
        schedule(tasks(t("a"), t("b"), t("c", ["a"])), ex, recorder)
    assert sorted(ex.cancelled) == ["a", "b"]
    result = info.value.result
    assert result.interrupted and result.exit_code == 130
    assert sorted(result.failed) == ["a", "b"] and result.not_run == ("c",)
    assert all(e.error == "interrupted" for e in recorder.of(TaskFinished))


def test_a_second_interrupt_while_cancelling_forces_the_cancel(fake_clock, recorder):
    """The scheduler owns "a second Ctrl-C means force": an executor's cancel_all interrupted
    during its grace period is called again with force=True, and no outcome is lost."""

    class Slow(FakeExecutor):
        forces: list[bool] = []

        def collect(self):
            if self.started == ["a", "b"]:
                raise KeyboardInterrupt
            return super().collect()

        def cancel_all(self, *, force=False):
            self.forces.append(force)
            if not force:
                raise KeyboardInterrupt  # the second Ctrl-C, during the grace period
            return super().cancel_all(force=force)

    ex = Slow(clock=fake_clock)
    with pytest.raises(Interrupted) as info:
        schedule(tasks(t("a"), t("b"), t("c", ["a"])), ex, recorder)
    assert ex.forces == [False, True]
    assert sorted(info.value.result.failed) == ["a", "b"]


def test_a_system_exit_inside_a_build_is_an_interrupt_not_a_success(fake_clock, recorder):
    """A library's ``sys.exit()`` (dask_jobqueue's SIGINT handler) ended builds with 0."""

    class Exiting(FakeExecutor):
        def collect(self):
            if self.started == ["a", "b"]:
                raise SystemExit
            return super().collect()

    ex = Exiting(clock=fake_clock)
    with pytest.raises(Interrupted) as info:
        schedule(tasks(t("a"), t("b"), t("c", ["a"])), ex, recorder)
    assert sorted(ex.cancelled) == ["a", "b"]
    assert info.value.result.interrupted and info.value.result.exit_code == 130


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


# ---------------------------------------------------------------- many executors


def schedule_on(text: str, executors: dict, reporter: RecordingReporter, clock: FakeClock, *,
                jobs: int = 2, stops=(), policy: Policy | None = None) -> BuildResult:
    graph = compile(parse(text, source="t.toml", root="/proj"))
    order = tuple(graph.order)
    plan = Plan(order, order, (), {})
    slots = {name: ex.slots for name, ex in executors.items() if name != "local"}
    return Scheduler(
        graph, plan, [f"k{i}" for i in order], executors,
        limits=Limits(jobs, leases=None, slots=slots), policy=policy,
        hooks=Hooks(reporter, stops=stops), clock=clock, runs_dir="/proj/.dagrun/runs",
    ).run()


REMOTE = '[executors.lab]\ntype = "ssh"\nhost = "h"\n'


def test_each_executor_has_its_own_slots_and_leases_stay_local(fake_clock, recorder):
    local = FakeExecutor(clock=fake_clock, max_active=2, name="local")
    remote = FakeExecutor(clock=fake_clock, max_active=3, name="lab", slots=3)
    text = REMOTE + tasks(
        *[t(f"l{i}") for i in range(4)], *[t(f"r{i}", executor='"lab"') for i in range(6)],
        t("big", executor='"lab"', threads=3),
    )
    leases = _Leases(2)
    graph = compile(parse(text, source="t.toml", root="/proj"))
    order = tuple(graph.order)
    result = Scheduler(
        graph, Plan(order, order, (), {}), ["k"] * len(order), {"local": local, "lab": remote},
        limits=Limits(2, leases=leases, slots={"lab": 3}), hooks=Hooks(recorder),
        clock=fake_clock, runs_dir="/r",
    ).run()
    assert result.ok
    assert (local.peak, remote.peak) == (2, 3)  # the -j limit did not hold the remote back
    assert sorted(local.started) == [f"l{i}" for i in range(4)]
    assert all(j.cores == () for j in remote.jobs) and all(j.cores for j in local.jobs)
    big = remote.intervals["big"]  # a 3-thread remote task takes all of lab's slots
    assert all(s[1] <= big[0] or s[0] >= big[1]
               for name, s in remote.intervals.items() if name != "big")
    started = {e.task: e.executor for e in recorder.of(TaskStarted)}
    assert started["r0"] == "lab" and started["l0"] == "local"


def test_a_lost_attempt_runs_again_without_using_a_retry(fake_clock, recorder):
    seen: list[str] = []

    def handler(job):
        seen.append(job.task)
        if len(seen) <= 2:
            return Outcome(job.id, None, 0.0, error="worker gone", lost=True)
        return 0

    ex = FakeExecutor(handler, clock=fake_clock)
    logged: list[int] = []
    result = schedule(tasks(t("a")), ex, recorder, on_success=lambda i, o: logged.append(i))
    assert result.ok and seen == ["a", "a", "a"]  # retries = 0, yet it ran three times
    assert logged == [0]  # only the successful attempt reached the log
    finished = recorder.of(TaskFinished)
    assert [(e.ok, e.will_retry) for e in finished] == [(False, True), (False, True), (True, False)]
    assert finished[0].error == "lost: worker gone"


def test_a_job_lost_three_times_fails(fake_clock, recorder):
    ex = FakeExecutor(lambda job: Outcome(job.id, None, 0.0, error="worker gone", lost=True),
                      clock=fake_clock)
    result = schedule(tasks(t("a", retries=5)), ex, recorder)
    assert result.failed == ("a",) and ex.started == ["a"] * 3
    assert recorder.of(TaskFinished)[-1].error == "lost 3 times, last: worker gone"


def test_retries_back_off_exponentially_with_jitter(recorder):
    clock = FakeClock(0.0)
    ex = FakeExecutor(lambda job: 1, clock=clock, duration=0.0)
    schedule(tasks(t("a", retries=4)), ex, recorder)
    starts = [start for _, start, _ in ex.spans]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert len(gaps) == 4
    for n, gap in enumerate(gaps):  # base 0.5 s doubling, times 0.5..1
        assert 0.5 * 2**n * 0.5 <= gap <= 0.5 * 2**n


def test_a_huge_retries_count_does_not_spin(recorder):
    clock = FakeClock(0.0)
    ex = FakeExecutor(lambda job: 1, clock=clock, duration=0.0)
    schedule(tasks(t("a", retries=100)), ex, recorder)
    assert len(ex.started) == 101
    assert clock.now() >= 30 * 0.5 * 90  # capped at 30 s (times the jitter) between attempts


def test_a_submit_that_raises_stops_the_build_with_its_summary(fake_clock, recorder):
    from dagrun.errors import ExecutorError

    class Broken(FakeExecutor):
        def submit(self, job):
            if job.task == "r1":
                raise ExecutorError("the cluster went away")
            super().submit(job)

    local = FakeExecutor(clock=fake_clock, name="local", durations={"l0": 5.0})
    remote = Broken(clock=fake_clock, name="lab", slots=2)
    text = REMOTE + tasks(t("l0"), t("r0", executor='"lab"'), t("r1", executor='"lab"'))
    with pytest.raises(ExecutorError, match=r"^executor 'lab' could not start task 'r1': "
                                            r"the cluster went away$"):
        schedule_on(text, {"local": local, "lab": remote}, recorder, fake_clock)
    assert sorted(local.cancelled + remote.cancelled) == ["l0", "r0"]
    summary = recorder.of(BuildFinished)[0]
    assert (summary.succeeded, summary.failed) == (0, 3)


@pytest.mark.slow
def test_a_stop_flag_set_from_another_thread_stops_the_build(recorder):
    import threading

    from dagrun.clock import MonotonicClock
    from dagrun.executors.local import LocalExecutor
    from dagrun.scheduler import StopFlag

    stop = StopFlag()
    ex = LocalExecutor(grace=0.5)
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    try:
        with pytest.raises(Interrupted):
            schedule_on(tasks(t("a").replace('"run a"', '"sleep 30"')), {"local": ex}, recorder,
                        MonotonicClock(), stops=(stop,))  # type: ignore[arg-type]
    finally:
        timer.cancel()
        ex.close()
    assert recorder.of(TaskFinished)[0].error == "interrupted"


def test_retries_above_the_maximum_is_a_manifest_error():
    from dagrun.errors import ManifestError

    with pytest.raises(ManifestError, match=r"^t.toml:3: task 'a', key 'retries': must be at "
                                            r"most 100, not 1000000000$"):
        parse(tasks(t("a", retries=1000000000)), source="t.toml", root="/proj")
