"""What ``dagrun list``, ``show`` and ``status`` say, as JSON-ready dicts and as text.

The dicts are the ``--json`` output; the text is rendered from the same dicts,
so the two never disagree.  ``status`` reads the running (or last) build from
``.dagrun/last-build.jsonl`` (record.py) and each executor's pool from
``.dagrun/executors.json`` (pool_status.py); it never waits for a build's lock.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Iterable
from typing import Any

from . import record
from .errors import UnknownTargetError
from .graph import BuildGraph
from .scheduler import run_dir_name

# ---------------------------------------------------------------- list


def task_list(prep: Any) -> dict[str, Any]:
    """Every task: its display, group, executor, and up to date or why it would run."""
    g, plan = prep.graph, prep.plan
    fresh = set(plan.up_to_date)
    tasks = []
    for i in g.order:
        spec = g.specs[i]
        state = "up to date" if i in fresh else "will run" if i in plan.reasons else "not selected"
        tasks.append(
            {
                "name": spec.name, "display": spec.display or None, "desc": spec.desc or None,
                "group": spec.group,
                "executor": spec.executor, "threads": spec.threads, "state": state,
                "reasons": list(plan.reasons.get(i, ())), "key": prep.keys.keys[i],
                "outputs": list(spec.outputs),
            }
        )
    return {"manifest": g.manifest.source, "tasks": tasks}


def list_text(data: dict[str, Any], dim: Any = str) -> str:
    tasks = data["tasks"]
    width = max((len(t["name"]) for t in tasks), default=4)
    lines = []
    for t in tasks:
        state = t["state"]
        if state == "will run":
            state = "will run: " + "; ".join(t["reasons"])
        shown = f"  [{t['display']}]" if t["display"] else ""
        shown += f"  # {t['desc']}" if t.get("desc") else ""
        line = f"{t['name']:<{width}}  {state}{shown}"
        lines.append(dim(line) if t["state"] == "up to date" else line)
    return "".join(line + "\n" for line in lines)


def names(graph: BuildGraph) -> list[str]:
    """Task and matrix group names, for shell completion."""
    return sorted({s.name for s in graph.specs} | set(graph.groups))


# ---------------------------------------------------------------- show


def one_task(graph: BuildGraph, name: str, cwd: str | None = None) -> int:
    """The task ``show`` describes: exactly one, by name (a group or glob must match one), or
    an output path (relative to ``cwd``, else to the root)."""
    if name in graph.index:
        return graph.index[name]
    found = graph.resolve([name], cwd)  # UnknownTargetError (with a hint) when nothing matches
    if len(found) == 1:
        return found[0]
    some = ", ".join(graph.specs[i].name for i in found[:5])
    more = f", ... ({len(found)} tasks)" if len(found) > 5 else ""
    raise UnknownTargetError(f"'{name}' names {len(found)} tasks ({some}{more}); show takes one")


def show(prep: Any, i: int, state_dir: str, last_build: Iterable[record.Record]) -> dict[str, Any]:
    """One task: its command, key and key parts, state, last run, and where its output is."""
    g, plan = prep.graph, prep.plan
    spec = g.specs[i]
    state = "up to date" if i in set(plan.up_to_date) else "will run"
    runs = os.path.join(state_dir, "runs", run_dir_name(spec.name))
    here = os.path.relpath(runs)
    return {
        "name": spec.name, "display": spec.display or None, "desc": spec.desc or None,
        "command": spec.cmd,
        "cwd": spec.cwd, "executor": spec.executor, "threads": spec.threads,
        "state": state, "reasons": list(plan.reasons.get(i, ())),
        "key": prep.keys.keys[i], "key_parts": prep.keys.parts(i).to_json(),
        "last_run": _last_run(prep.log.latest(spec.name), spec.name, last_build),
        "output": {n: os.path.join(here, n) for n in ("command.txt", "stdout.txt", "stderr.txt")
                   if os.path.exists(os.path.join(runs, n))},
        "shared_cache": _shared_cache(g, spec),
    }


def _shared_cache(g: BuildGraph, spec: Any) -> str | None:
    """Whether the task is looked up in and sent to the shared cache ([cache]); None: none."""
    if g.manifest.cache is None:
        return None
    from .cache import why_not_now

    reason = why_not_now(spec, g.root)
    return "cached" if reason is None else f"not cached: {reason}"


def _last_run(
    logged: dict[str, Any] | None, task: str, last_build: Iterable[record.Record]
) -> dict[str, Any] | None:
    """The latest of: the task's last successful run (the log), its last attempt (last build)."""
    best = None
    if logged is not None:
        status = "restored from the shared cache" if logged.get("restored") else "succeeded"
        best = {"time": logged.get("time"), "status": status, "exit_status": 0,
                "duration": logged.get("duration"), "maxrss_kb": logged.get("maxrss"),
                "key": logged.get("key")}
    start = 0.0
    for r in last_build:
        if r["event"] == "build_started":
            start = float(r.get("time") or 0.0)
        elif r["event"] == "finished" and r.get("task") == task:
            when = round(start + float(r.get("t") or 0.0), 3)
            if best is not None and r.get("job") and abs(when - float(best["time"] or 0)) <= 5:
                best.update(job=r["job"], executor=r.get("executor"))  # the logged run: its job
            if best is None or when > float(best.get("time") or 0.0) + 0.5:
                best = {"time": when, "status": r.get("status"),
                        "exit_status": r.get("exit_status"), "duration": r.get("duration"),
                        "maxrss_kb": r.get("maxrss_kb"), "key": None, "job": r.get("job"),
                        "executor": r.get("executor")}
    return best


def show_text(d: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = [("task", d["name"])]
    if d.get("desc"):
        rows.append(("desc", d["desc"]))
    if d["display"]:
        rows.append(("display", d["display"]))
    rows += [("command", d["command"]), ("cwd", d["cwd"]),
             ("executor", f"{d['executor']} (threads {d['threads']})")]
    state = d["state"] + (": " + "; ".join(d["reasons"]) if d["reasons"] else "")
    rows += [("state", state), ("key", d["key"] or "-")]
    rows += _parts_rows(d["key_parts"])
    rows.append(("last run", _run_text(d["last_run"])))
    if d.get("shared_cache"):
        rows.append(("shared cache", d["shared_cache"]))
    rows.append(("output", _output_text(d["output"], d["last_run"])))
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k:<{width}}  {v}\n" for k, v in rows)


def _output_text(out: dict[str, str], last_run: dict[str, Any] | None) -> str:
    if out:
        return "  ".join(out.values())
    if last_run is None:
        return "none kept (never ran here)"
    return "none kept (its last run printed nothing)"


def _parts_rows(parts: dict[str, Any]) -> list[tuple[str, str]]:
    """Every part of the key, as ``--json`` has it: a function's code and args, the files a
    depfile listed, a key_env variable that is not set."""
    rows = [("  command", parts["cmd"]), ("  cwd", parts["cwd"])]
    if "code" in parts:
        rows += [("  code", parts["code"]), ("  args", parts["args"])]
    rows += [("  env", f"{k}={v}") for k, v in parts["env"].items()]
    rows += [("  key_env", f"{k}={v}" if v is not None else f"{k} (not set)")
             for k, v in parts["key_env"].items()]
    rows += [("  input", f"{p}  {h}") for p, h in parts["inputs"].items()]
    rows += [("  from depfile", f"{p}  {h}") for p, h in parts.get("found", {}).items()]
    rows += [("  dependency", f"{t}  {k}") for t, k in parts["upstream"].items()]
    rows += [("  output", p) for p in parts["outputs"]]
    return [("key parts", "")] + rows


def _run_text(run: dict[str, Any] | None) -> str:
    if run is None:
        return "never"
    when = datetime.datetime.fromtimestamp(float(run["time"] or 0.0), datetime.timezone.utc)
    rss = run.get("maxrss_kb") or 0  # 0: not measured (a function task, a remote one)
    memory = f"max RSS {rss / 1024:.1f} MB, " if rss else ""
    return (
        f"{when:%Y-%m-%d %H:%M:%S} UTC: {run['status']} in {float(run['duration'] or 0):.2f}s, "
        f"{memory}exit status {run['exit_status']}"
        + (f", on {run['executor']} as job {run['job']}" if run.get("job") else "")
    )


# ---------------------------------------------------------------- status

COUNTS = ("ready", "waiting", "running", "succeeded", "failed", "interrupted", "not_run",
          "up_to_date")


def build_status(
    graph: BuildGraph | None, records: Iterable[record.Record], live: bool = True
) -> dict[str, Any]:
    """Counts of the running (or last) build's tasks, and what runs where.

    ``live``: a build is running now; if not, a record without its end is a build that
    was killed (``stopped``), whose running tasks are not running any more.
    """
    head, last, running, finished = _replay(records)
    stopped = bool(head) and finished is None and not live
    if stopped:
        running.clear()
        gone = {"running": "interrupted", "planned": "not_run"}
        last = {t: gone.get(v, v) for t, v in last.items()}
    started_at = float(head.get("time") or 0.0)
    return {
        "state": "none" if not head else "finished" if finished else "stopped" if stopped
        else "running",
        "started": head.get("time"),
        "exit_status": finished.get("exit_status") if finished else None,
        "counts": _counts(graph, head, last),
        "running": [
            {"task": t, "executor": r.get("executor"), "cores": r.get("cores") or [],
             "since": round(started_at + float(r.get("t") or 0.0), 3), "job": r.get("job")}
            for t, r in running.items()
        ],
    }


def _replay(records: Iterable[record.Record]) -> tuple[
    record.Record, dict[str, str], dict[str, record.Record], record.Record | None
]:
    """The build's head record, each task's last state (planned / running / succeeded /
    failed / ...), the tasks running with their start record, and the end record (or None)."""
    head: record.Record = {}
    last: dict[str, str] = {}
    running: dict[str, record.Record] = {}
    finished = None
    for r in records:
        kind = r["event"]
        if kind == "build_started":
            head = r
        elif kind == "planned" and r.get("run"):
            last[r["task"]] = "planned"
        elif kind == "started":
            last[r["task"]] = "running"
            running[r["task"]] = r
        elif kind == "placed" and r["task"] in running:
            running[r["task"]] = {**running[r["task"]], "job": r.get("job")}
        elif kind == "finished":
            last[r["task"]] = "running" if r["status"] == "retry" else r["status"]
            running.pop(r["task"], None)
        elif kind == "not_run":
            last[r["task"]] = "not_run"
        elif kind == "up_to_date":  # planned to run, found up to date (early cutoff)
            last[r["task"]] = "up_to_date"
        elif kind == "build_finished":
            finished = r
    return head, last, running, finished


def _counts(graph: BuildGraph | None, head: record.Record, last: dict[str, str]) -> dict[str, int]:
    """How many tasks are in each state (COUNTS); a planned task is ready or waiting."""
    counts = dict.fromkeys(COUNTS, 0)
    counts["up_to_date"] = int(head.get("up_to_date") or 0)
    for task, state in last.items():
        if state == "planned":
            state = "ready" if _deps_done(graph, task, last) else "waiting"
        counts[state] = counts.get(state, 0) + 1
    return counts


def _deps_done(graph: BuildGraph | None, task: str, last: dict[str, str]) -> bool:
    if graph is None or task not in graph.index:
        return False
    deps = graph.deps[graph.index[task]]
    return all(last.get(graph.specs[d].name, "succeeded") == "succeeded" for d in deps)


def status(build: dict[str, Any], pools: list[Any]) -> dict[str, Any]:
    return {"build": build, "executors": [dataclasses.asdict(p) for p in pools]}


def build_status_text(build: dict[str, Any]) -> str:
    if build["state"] == "none":
        return "build: none yet\n"
    c = build["counts"]
    shown = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in c.items() if v)
    return f"build: {build['state']}: {shown or 'no tasks'}\n"


def executor_pool_text(p: Any) -> str:
    """One executor's pool as ``dagrun status --executors`` prints it."""
    rows = _host_rows(p)
    if p.type == "dask":
        rows.extend(_cluster_rows(p))
    queued = _queued(p)
    if p.type == "http" and p.cluster is not None:
        rows.append(("workers", f"{p.cluster.get('workers')} connected"))
    rows.extend(_job_rows(p, queued))
    width = max(len(k) for k, _ in rows)
    lines = [f"{p.name} ({p.type})"] + [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines) + "\n"


def _host_rows(p: Any) -> list[tuple[str, str]]:
    """The local executor's cores, or a remote executor's host and whether it answers."""
    from .numa import format_cpulist

    def cores(c: tuple[int, ...]) -> str:
        return f"{format_cpulist(c) or '-'} ({len(c)})"

    rows = []
    if p.type == "local":
        rows.append(("logical cores", str(p.logical_cores)))
        if p.configured is None:
            rows.append(("configured cores", "none (no core_pool: tasks are not pinned)"))
        else:
            rows.append(("configured cores", cores(p.configured)))
            rows.append(("free cores", cores(p.free)))
    if p.host is not None:
        reach = {True: "yes", False: "no", None: "not checked"}[p.reachable]
        rows.append(("host", p.host))
        rows.append(("reachable", reach))
    return rows


def _job_rows(p: Any, queued: set[str]) -> list[tuple[str, str]]:
    """The running jobs (how many, in which build), the NUMA nodes, and each job."""
    from .numa import format_cpulist

    running = str(len(p.running) - len(queued))
    if p.slots is not None:
        running += f" of {p.slots} slots"
    running += f" (build pid {p.build_pid})" if p.build_pid else " (no build running)"
    rows = [("running jobs", running)]
    for u in p.nodes:
        free = format_cpulist(u.free) or "-"
        rows.append((f"node {u.node}", f"cores {format_cpulist(u.cores)}, free {free}"))
    for j in p.running:
        pinned = f"cores {format_cpulist(j.cores)}" if j.cores else "not pinned"
        if j.task in queued:
            pinned = "queued (no worker has it yet)"
        pinned = f"job {j.job}" if j.job else pinned
        rows.append((f"  {j.task}", pinned))
    return rows


def _queued(p: Any) -> set[str]:
    """An http executor's submitted tasks that no worker has leased yet (not running)."""
    if p.type != "http" or p.cluster is None:
        return set()
    leased = set(p.cluster.get("leased", ()))
    return {j.task for j in p.running if j.task not in leased}


def _cluster_rows(p: Any) -> list[tuple[str, str]]:
    """A dask executor's cluster: where it is, and its workers while a build uses it."""
    c = p.cluster
    if c is None:
        return []
    rows = [("cluster", f"{c.get('cluster')} at {c.get('address') or '?'}")]
    if c.get("workers") is not None:
        rows.append(("workers", f"{c['workers']} ({c.get('threads')} threads)"))
    return rows
