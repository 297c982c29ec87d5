"""DAGRUN_SCHEDULE: the critical path by recorded durations beats FIFO (the scheduling demo)."""

from __future__ import annotations

from dagrun.clock import FakeClock
from dagrun.executors.fake import FakeExecutor
from dagrun.graph import compile
from dagrun.manifest import parse
from dagrun.plan import Plan
from dagrun.report import RecordingReporter
from dagrun.scheduler import Hooks, Limits, Policy, Scheduler

# 4 short tasks, one lone long task, then a chain of 3: declared in FIFO's worst order
DEMO = "".join(f'[tasks.s{i}]\ncmd = "s"\n' for i in range(4)) + (
    '[tasks.big]\ncmd = "big"\n'
    '[tasks.c0]\ncmd = "c"\n'
    '[tasks.c1]\ncmd = "c"\ndeps = ["c0"]\n'
    '[tasks.c2]\ncmd = "c"\ndeps = ["c1"]\n'
)
DURATIONS = {
    "s0": 1.0, "s1": 1.0, "s2": 1.0, "s3": 1.0, "big": 4.0, "c0": 2.0, "c1": 2.0, "c2": 2.0,
}


def makespan(schedule: str) -> tuple[float, list[str]]:
    clock = FakeClock(0.0)
    ex = FakeExecutor(clock=clock, durations=DURATIONS)
    graph = compile(parse(DEMO, source="t.toml", root="/proj"))
    order = tuple(graph.order)
    plan = Plan(order, order, (), {})
    Scheduler(
        graph, plan, [f"k{i}" for i in order], ex,
        limits=Limits(2), policy=Policy(1, schedule, DURATIONS), hooks=Hooks(RecordingReporter()),
        clock=clock, runs_dir="/proj/.dagrun/runs",
    ).run()
    return clock.now(), ex.started


def test_critical_path_starts_the_long_chain_and_the_long_task_first() -> None:
    span, started = makespan("critical-path")
    assert started[:2] == ["c0", "big"]
    assert span == 7.0  # the chain on one slot, big and the shorts on the other: no idle slot


def test_fifo_starts_in_manifest_order_and_takes_longer() -> None:
    span, started = makespan("fifo")
    assert started[:4] == ["s0", "s1", "s2", "s3"]
    assert span == 8.0


def test_unweighted_counts_tasks_like_ninja() -> None:
    span, started = makespan("unweighted")
    assert started[0] == "c0"  # the longest chain by count
    assert started[1] == "s0"  # big weighs as much as a short task
    assert span == 8.0
