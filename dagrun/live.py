"""`dagrun status`, `tail` and `cancel`, the client side: ask the running build, print its answer.

The build answers on its control socket (control.py); after it, ``status``
reads ``.dagrun/last-build.jsonl`` (record.py) into maestro's table: every
task of the last build with its state, attempts, duration, exit status and
executor.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from . import control
from .errors import DagrunError, UnknownTargetError


def running(state_dir: str) -> dict[str, Any] | None:
    """The running build's status (steering._status), or None when no build answers."""
    try:
        answer = control.ask(state_dir, {"op": "status"})
    except (control.NoBuild, OSError):
        return None
    return answer if "running" in answer else None


def _elapsed(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def running_text(live: dict[str, Any]) -> str:
    """The running build: each running task (where, elapsed, attempt, last line), the queue."""
    rows: list[tuple[str, ...]] = [("TASK", "STATE", "WHERE", "ELAPSED", "ATTEMPT", "LAST LINE")]
    for r in live["running"]:
        where = r["where"] or f"{r['executor']}: waiting for a worker"
        rows.append((r["task"], r["state"], where, _elapsed(r["elapsed"]), str(r["attempt"]),
                     r["last_line"] or ""))
    for name in live["queued"]:
        rows.append((name, "queued", "", "", "", ""))
    lines = [f"build: running: {live['done']} of {live['total']} done, "
             f"{sum(r['state'] == 'running' for r in live['running'])} running, "
             f"{live['queued_count'] + sum(r['state'] == 'queued' for r in live['running'])} "
             f"queued, {live['waiting']} waiting, {live['failures']} failed "
             f"(build pid {live['pid']})"]
    lines += _table(rows)
    if live["queued_count"] > len(live["queued"]):
        lines.append(f"... and {live['queued_count'] - len(live['queued'])} more queued")
    for name, workers in live["workers"].items():
        lines.append(f"workers of {name}: {len(workers)} connected"
                     + (f" ({', '.join(workers)})" if workers else ""))
    return "".join(x + "\n" for x in lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    return ["  ".join(f"{v:<{w}}" for v, w in zip(r, widths, strict=False)) + "  " + r[-1]
            for r in rows]


# ---------------------------------------------------------------- after the build


def task_table(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every task of the last build: state, attempts, duration, exit status, executor."""
    tasks: dict[str, dict[str, Any]] = {}
    for r in records:
        kind, name = r["event"], str(r.get("task"))
        if kind == "planned" and r.get("run"):
            tasks[name] = {"task": name, "state": "not run", "attempts": 0, "duration": None,
                           "exit_status": None, "executor": r.get("executor"), "why": None}
        elif kind == "started" and name in tasks:
            tasks[name].update(state="running", attempts=r.get("attempt", 1),
                               executor=r.get("executor"))
        elif kind == "finished" and name in tasks:
            status = "running" if r["status"] == "retry" else r["status"]
            tasks[name].update(state=status, duration=r.get("duration"),
                               exit_status=r.get("exit_status"), why=r.get("error"))
        elif kind == "not_run" and name in tasks:
            tasks[name].update(state="not run", why=r.get("why"))
        elif kind == "up_to_date" and name in tasks:
            tasks[name].update(state="up to date")
    return list(tasks.values())


def table_text(tasks: list[dict[str, Any]]) -> str:
    if not tasks:
        return ""
    rows: list[tuple[str, ...]] = [
        ("TASK", "STATE", "ATTEMPTS", "DURATION", "EXIT", "EXECUTOR", "NOTE")
    ]
    for t in tasks:
        duration = "" if t["duration"] is None else f"{t['duration']:.2f}s"
        code = "" if t["exit_status"] is None else str(t["exit_status"])
        rows.append((t["task"], t["state"], str(t["attempts"]), duration, code,
                     t["executor"] or "", t["why"] or ""))
    return "".join(x.rstrip() + "\n" for x in _table(rows))


# ---------------------------------------------------------------- tail and cancel


def tail(state_dir: str, task: str, lines: int) -> int:
    """Print a running task's output as it comes (stdout to stdout, stderr to stderr) until it
    ends; 0 if it succeeded, 1 if not."""
    end = None
    seen = False
    try:
        for record in control.stream(state_dir, {"op": "tail", "task": task, "lines": lines},
                                     timeout=None):
            seen = True
            if "o" in record:
                sys.stdout.write(record["o"])
                sys.stdout.flush()
            elif "e" in record:
                sys.stderr.write(record["e"])
                sys.stderr.flush()
            elif "note" in record:
                sys.stderr.write(f"dagrun: {record['note']}\n")
            elif "end" in record:
                end = record
    except control.NoBuild:
        if not seen:
            raise control.NoBuild(f"no build is running here: nothing to tail ({task})") from None
    if end is None:
        raise DagrunError(f"the build ended while following {task}")
    return _ended(task, end)


def _ended(task: str, end: dict[str, Any]) -> int:
    state = end["end"]
    if state == "unknown":
        raise UnknownTargetError(f"no task named '{task}' in the running build")
    why = f" ({end['why']})" if end.get("why") else ""
    sys.stderr.write(f"dagrun: {task}: {state}{why}\n")
    return 0 if state in ("succeeded", "up to date") else 1


def cancel(state_dir: str, tasks: list[str]) -> int:
    try:
        answer = control.ask(state_dir, {"op": "cancel", "tasks": tasks})
    except control.NoBuild:
        raise control.NoBuild("no build is running here: nothing to cancel") from None
    if "unknown" in answer:
        raise UnknownTargetError(answer["unknown"])
    if "said" not in answer:
        raise DagrunError(f"the build did not cancel: {answer.get('error', 'no answer')}")
    for line in answer["said"]:
        sys.stdout.write(f"dagrun: {line}\n")
    return 0
