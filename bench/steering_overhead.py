#!/usr/bin/env python3
"""Issue 27: what the steering mailbox adds to the scheduler's loop, per task.

    PYTHONPATH=<a dagrun tree> python bench/steering_overhead.py

10k independent tasks through FakeExecutor (jobs that cost nothing, a fake clock),
CPU time of ``Scheduler.run`` per task, with and without a steering.Mailbox
(every real build has one); a tree without steering.py runs the first only.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from dagrun.clock import FakeClock
from dagrun.executors.fake import FakeExecutor
from dagrun.graph import compile
from dagrun.manifest import parse
from dagrun.plan import Plan
from dagrun.scheduler import Hooks, Limits, Scheduler

N = 10_000
REPS = 7

try:
    from dagrun.steering import Mailbox
except ImportError:  # the tree before issue 27
    Mailbox = None  # type: ignore[assignment,misc]


class Null:
    def handle(self, event: Any) -> None:
        pass


def once(graph: Any, steer: bool) -> float:
    clock = FakeClock()
    ex = FakeExecutor(lambda job: 0, clock=clock, duration=0.001)
    box = Mailbox() if steer else None
    hooks = Hooks(Null()) if box is None else Hooks(Null(), steering=box)
    order = tuple(graph.order)
    s = Scheduler(graph, Plan(order, order, (), {}), [None] * N, ex, limits=Limits(2),
                  hooks=hooks, clock=clock, runs_dir="/proj/.dagrun/runs")
    t0 = time.process_time()
    s.run()
    took = time.process_time() - t0
    if box is not None:
        box.close()
    ex.close()
    return took


def main() -> None:
    text = "".join(f'[tasks.t{i}]\ncmd = "run {i}"\n' for i in range(N))
    graph = compile(parse(text, source="t.toml", root="/proj"))
    variants = [False] + ([True] if Mailbox is not None else [])
    times: dict[bool, list[float]] = {v: [] for v in variants}
    for _ in range(REPS):
        for v in variants:
            times[v].append(once(graph, v))
    for v in variants:
        median, least = statistics.median(times[v]) * 1e6 / N, min(times[v]) * 1e6 / N
        print(f"{'with' if v else 'without'} a mailbox: {median:.2f} us/task (min {least:.2f})")


if __name__ == "__main__":
    main()
