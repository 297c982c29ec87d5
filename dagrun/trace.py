"""A build's records (record.py) -> the Chrome trace event format (Perfetto, chrome://tracing).

Each task run (each attempt) is one complete event (``"ph": "X"``) with its
start and duration in microseconds.  Each executor is a process (``pid``) and
each of its slots a thread (``tid``): a run takes the lowest slot free when
it starts, so a lane never holds two runs at once and the number of lanes is
the most tasks that ran at once.  Metadata events (``"ph": "M"``) name them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .record import Record

TraceEvent = dict[str, Any]


def _us(seconds: float) -> int:
    return int(round(seconds * 1_000_000))


class _Lanes:
    """Slot numbers per executor: the lowest free one for each run."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.busy: dict[str, set[int]] = {}
        self.seen: dict[str, int] = {}

    def take(self, executor: str) -> tuple[int, int]:
        pid = self.pids.setdefault(executor, len(self.pids) + 1)
        busy = self.busy.setdefault(executor, set())
        tid = 1
        while tid in busy:
            tid += 1
        busy.add(tid)
        self.seen[executor] = max(self.seen.get(executor, 0), tid)
        return pid, tid

    def give(self, executor: str, tid: int) -> None:
        self.busy[executor].discard(tid)

    def metadata(self) -> list[TraceEvent]:
        out: list[TraceEvent] = []
        for executor, pid in self.pids.items():
            out.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                        "args": {"name": f"executor {executor}"}})
            for tid in range(1, self.seen[executor] + 1):
                out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                            "args": {"name": f"slot {tid}"}})
        return out


def to_trace(records: Iterable[Record]) -> dict[str, Any]:
    """The trace of one build: ``{"traceEvents": [...], ...}``."""
    lanes = _Lanes()
    running: dict[str, tuple[Record, int, int]] = {}  # task -> (started record, pid, tid)
    labels: dict[str, str] = {}  # task -> display
    events: list[TraceEvent] = []
    head: Record = {}
    for r in records:
        kind = r["event"]
        if kind == "build_started":
            head = r
        elif kind == "planned" and r.get("display"):
            labels[r["task"]] = str(r["display"])
        elif kind == "started":
            pid, tid = lanes.take(r.get("executor") or "local")
            running[r["task"]] = (r, pid, tid)
        elif kind == "finished" and r["task"] in running:
            start, pid, tid = running.pop(r["task"])
            lanes.give(start.get("executor") or "local", tid)
            label = labels.get(r["task"]) or str(r["task"])
            events.append(_complete(start, r, pid, tid, label))
    events.sort(key=lambda e: (e["ts"], e["pid"], e["tid"]))
    other = {"tool": "dagrun", "started": head.get("time"), "jobs": head.get("jobs")}
    return {"traceEvents": lanes.metadata() + events, "displayTimeUnit": "ms", "otherData": other}


def _complete(start: Record, end: Record, pid: int, tid: int, label: str) -> TraceEvent:
    ts = _us(float(start["t"]))
    args = {
        "task": end["task"],
        "status": end.get("status"),
        "exit_status": end.get("exit_status"),
        "attempt": end.get("attempt"),
        "maxrss_kb": end.get("maxrss_kb"),
        "cores": end.get("cores") or [],
        "key": start.get("key"),
    }
    return {
        "name": label, "cat": f"task,{end.get('status')}", "ph": "X", "ts": ts,
        "dur": max(0, _us(float(end["t"])) - ts), "pid": pid, "tid": tid, "args": args,
    }


def dumps(records: Iterable[Record]) -> str:
    return json.dumps(to_trace(records), separators=(",", ":")) + "\n"
