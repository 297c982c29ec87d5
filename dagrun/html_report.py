"""A build's records (record.py) -> one self-contained HTML page (`report --html`, `build --html`).

No network and no external file: the CSS and the script are inline, the
timeline is SVG.  The page has the summary, a timeline of every task run (each
attempt one bar) in lanes per executor slot (as trace.py lays them out), a
table sortable by any column (task, state, duration, max RSS, executor,
attempts, reason it ran), the output of failed tasks, and the critical path:
from the task that ended last, back through the dependency that ended last
before it (``deps``: task -> its dependencies; without it, no path).
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from .record import Record

OUTPUT_LINES = 60  # of a failed task's output shown on the page
WIDTH, LABEL, LANE = 960, 150, 20  # the timeline's drawing area, lane labels, lane height


class Run(NamedTuple):
    """One attempt of one task, as a bar."""

    task: str
    start: float
    end: float
    status: str
    executor: str
    lane: int
    record: Record


class Build(NamedTuple):
    head: Record
    end: Record
    planned: dict[str, Record]
    runs: list[Run]
    lanes: dict[str, int]  # executor -> lanes used
    not_run: dict[str, str]
    cut_off: list[str]


def read(records: Iterable[Record]) -> Build:
    """The runs of a build, each in the lowest lane of its executor free when it started."""
    head: Record = {}
    end: Record = {}
    planned: dict[str, Record] = {}
    started: dict[str, tuple[Record, int]] = {}
    busy: dict[str, set[int]] = {}
    lanes: dict[str, int] = {}
    runs: list[Run] = []
    not_run: dict[str, str] = {}
    cut_off: list[str] = []
    for r in records:
        kind = r["event"]
        if kind == "build_started":
            head = r
        elif kind == "planned" and r.get("run"):
            planned[r["task"]] = r
        elif kind == "started":
            ex = str(r.get("executor") or "local")
            taken = busy.setdefault(ex, set())
            lane = next(n for n in range(len(taken) + 1) if n not in taken)
            taken.add(lane)
            lanes[ex] = max(lanes.get(ex, 0), lane + 1)
            started[r["task"]] = (r, lane)
        elif kind == "finished" and r["task"] in started:
            s, lane = started.pop(r["task"])
            ex = str(s.get("executor") or "local")
            busy[ex].discard(lane)
            runs.append(Run(r["task"], float(s["t"]), float(r["t"]), str(r.get("status")), ex,
                            lane, r))
        elif kind == "not_run":
            not_run[r["task"]] = str(r.get("why"))
        elif kind == "up_to_date":
            cut_off.append(r["task"])
        elif kind == "build_finished":
            end = r
    return Build(head, end, planned, runs, lanes, not_run, cut_off)


def critical_path(runs: Sequence[Run], deps: Mapping[str, Sequence[str]] | None) -> list[str]:
    """The chain of tasks that decided the build's length, first to last."""
    if not runs or deps is None:
        return []
    last = {r.task: r for r in runs}  # each task's last attempt
    task: str | None = max(last.values(), key=lambda r: r.end).task
    path = []
    while task is not None:
        path.append(task)
        before = [last[d] for d in deps.get(task, ()) if d in last]
        task = max(before, key=lambda r: r.end).task if before else None
    return path[::-1]


def render(records: Iterable[Record], *, deps: Mapping[str, Sequence[str]] | None = None,
           runs_dir: str | None = None, title: str = "dagrun build") -> str:
    """The page."""
    b = read(records)
    path = critical_path(b.runs, deps)
    parts = [
        f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>", _summary(b, path), "<h2>Timeline</h2>", _timeline(b, set(path)),
        "<h2>Tasks</h2>", _table(b, set(path)), _failures(b, runs_dir),
        f"<script>{_SCRIPT}</script></body></html>\n",
    ]
    return "\n".join(parts)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _summary(b: Build, path: list[str]) -> str:
    e = b.end
    if not b.head:
        return "<p>No build recorded yet.</p>"
    import datetime

    when = datetime.datetime.fromtimestamp(float(b.head.get("time") or 0), datetime.timezone.utc)
    counts = [(k.replace("_", " "), e.get(k, 0)) for k in
              ("succeeded", "failed", "interrupted", "not_run", "up_to_date")] if e else []
    items = [f"<li><b>started</b> {when:%Y-%m-%d %H:%M:%S} UTC</li>",
             f"<li><b>elapsed</b> {float(e.get('elapsed') or 0):.2f} s</li>" if e else
             "<li><b>state</b> did not finish (still running, or killed)</li>",
             f"<li><b>exit status</b> {_e(e.get('exit_status'))}</li>" if e else ""]
    items += [f"<li><b>{_e(k)}</b> {_e(v)}</li>" for k, v in counts if v]
    items.append(f"<li><b>task runs</b> {len(b.runs)}</li>")
    if path:
        items.append(f"<li><b>critical path</b> <span class=\"crit\">"
                     f"{' &rarr; '.join(_e(t) for t in path)}</span></li>")
    return f"<ul class=\"summary\">{''.join(items)}</ul>"


def _timeline(b: Build, critical: set[str]) -> str:
    total = max([float(b.end.get("t") or 0)] + [r.end for r in b.runs]) or 1.0
    rows = {ex: y for y, ex in enumerate(_lane_keys(b))}
    height = LANE * max(1, len(rows)) + 30
    scale = WIDTH / total
    out = [f"<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH + LABEL}\""
           f" height=\"{height}\" role=\"img\" aria-label=\"timeline\">"]
    for (ex, lane), y in rows.items():
        out.append(f"<text class=\"lane\" x=\"4\" y=\"{y * LANE + 14}\">{_e(ex)} {lane + 1}</text>")
    for r in b.runs:
        y = rows[(r.executor, r.lane)] * LANE + 2
        x, w = LABEL + r.start * scale, max(1.0, (r.end - r.start) * scale)
        cls = f"bar {r.status}" + (" critical" if r.task in critical else "")
        tip = f"{r.task}: {r.status} in {r.end - r.start:.3f} s on {r.executor}"
        out.append(f"<rect class=\"{cls}\" data-task=\"{_e(r.task)}\" x=\"{x:.1f}\" y=\"{y}\" "
                   f"width=\"{w:.1f}\" height=\"{LANE - 4}\"><title>{_e(tip)}</title></rect>")
    for n in range(6):
        x = LABEL + WIDTH * n / 5
        out.append(f"<text class=\"tick\" x=\"{x - (30 if n == 5 else 0):.0f}\" "
                   f"y=\"{height - 8}\">{total * n / 5:.2f}s</text>")
    out.append("</svg>")
    return "\n".join(out)


def _lane_keys(b: Build) -> list[tuple[str, int]]:
    return [(ex, n) for ex in sorted(b.lanes, key=lambda x: (x != "local", x))
            for n in range(b.lanes[ex])]


def _table(b: Build, critical: set[str]) -> str:
    head = ("task", "state", "duration", "max RSS (MB)", "executor", "attempts", "reason")
    last = {r.task: r for r in b.runs}
    attempts: dict[str, int] = {}
    for r in b.runs:
        attempts[r.task] = attempts.get(r.task, 0) + 1
    rows = []
    for task, p in b.planned.items():
        run = last.get(task)
        state = run.status if run else "up to date" if task in b.cut_off else "not run"
        duration = run.end - run.start if run else None
        rss = int(run.record.get("maxrss_kb") or 0) / 1024 if run else None
        reason = p.get("reason") or b.not_run.get(task) or ""
        if run and run.record.get("error"):
            reason = f"{reason} ({run.record['error']})" if reason else str(run.record["error"])
        cells = [(task, task), (state, state),
                 ("" if duration is None else f"{duration:.3f} s", duration if run else -1),
                 ("" if rss is None else f"{rss:.1f}", rss if rss is not None else -1),
                 (run.executor if run else p.get("executor") or "", None),
                 (attempts.get(task, 0), attempts.get(task, 0)), (reason, None)]
        cls = f"{state.replace(' ', '-')}" + (" critical" if task in critical else "")
        tds = "".join(f"<td data-v=\"{_e(v if v is not None else shown)}\">{_e(shown)}</td>"
                      for shown, v in cells)
        rows.append(f"<tr class=\"{cls}\">{tds}</tr>")
    ths = "".join(f"<th data-col=\"{n}\">{_e(h)}</th>" for n, h in enumerate(head))
    return (f"<table id=\"tasks\"><thead><tr>{ths}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _failures(b: Build, runs_dir: str | None) -> str:
    failed = [r for r in b.runs if r.status == "failed"]
    if not failed:
        return ""
    out = ["<h2>Failed tasks</h2>"]
    for r in failed:
        code = r.record.get("exit_status")
        why = r.record.get("error") or f"exit status {code}"
        text = _kept_output(runs_dir, r.task) or str(r.record.get("stderr_tail") or "")
        out.append(f"<details open class=\"failure\"><summary>{_e(r.task)}: {_e(why)}</summary>"
                   f"<pre>{_e(text) or '(no output)'}</pre></details>")
    return "\n".join(out)


def _kept_output(runs_dir: str | None, task: str) -> str:
    """The last lines of what the task printed, from its run folder."""
    if runs_dir is None:
        return ""
    from .scheduler import run_dir_name

    texts = []
    for name in ("stdout.txt", "stderr.txt"):
        try:
            with open(os.path.join(runs_dir, run_dir_name(task), name), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        if text.strip():
            texts.append("".join(text.splitlines(keepends=True)[-OUTPUT_LINES:]))
    return "\n".join(texts)


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.5em; }
ul.summary { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: .4em 1.6em; }
svg text { font: 11px sans-serif; fill: #444; }
rect.bar { fill: #4caf50; stroke: #2e7d32; stroke-width: .5; }
rect.bar.failed { fill: #e53935; stroke: #b71c1c; }
rect.bar.retry { fill: #ffb300; stroke: #e65100; }
rect.bar.interrupted { fill: #9e9e9e; stroke: #424242; }
rect.bar.critical { stroke: #1a237e; stroke-width: 2.5; }
.crit, tr.critical td:first-child { color: #1a237e; font-weight: bold; }
table { border-collapse: collapse; margin-top: .5em; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .7em; text-align: left; }
th { cursor: pointer; background: #f3f3f3; user-select: none; }
th.sorted-up::after { content: " \\25B2"; } th.sorted-down::after { content: " \\25BC"; }
tr.failed td:nth-child(2) { color: #b71c1c; font-weight: bold; }
details.failure pre { background: #f7f7f7; padding: .6em; overflow-x: auto; max-height: 30em; }
"""

# click a column's header to sort by it (again: the other way); #sort=COLUMN or #sort=-COLUMN
# (the header's text) sorts when the page opens
_SCRIPT = """
(function () {
  var table = document.getElementById("tasks");
  var heads = table.tHead.rows[0].cells;
  function value(row, col) {
    var v = row.cells[col].getAttribute("data-v");
    return v !== "" && isFinite(Number(v)) ? Number(v) : v;
  }
  function sortBy(col, down) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, col), y = value(b, col);
      var c = (typeof x === "number" && typeof y === "number") ? x - y
        : String(x).localeCompare(String(y));
      return down ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    for (var i = 0; i < heads.length; i++) { heads[i].className = ""; }
    heads[col].className = down ? "sorted-down" : "sorted-up";
  }
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      sortBy(col, th.className === "sorted-up");
    });
  });
  var m = /sort=(-?)([^&]+)/.exec(decodeURIComponent(location.hash));
  if (m) {
    for (var i = 0; i < heads.length; i++) {
      if (heads[i].textContent === m[2]) { sortBy(i, m[1] === "-"); }
    }
  }
  document.body.setAttribute("data-ready", "yes");
})();
"""
