"""Reporters turn events into what the user sees.  Presentation stays here (and in cli.py).

- PlainReporter: one ``[k/N] display`` line per finished task, its output
  whole beneath it, flushed line by line; what CI logs get.
- RichReporter: the same lines printed above a live footer (done/total,
  running tasks, elapsed) on a terminal.  rich is imported only here.
- RecordingReporter: keeps the events, for tests.

A task's output is printed only after it ends, in one piece, so two tasks'
output never interleave.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

from .events import BuildFinished, BuildStarted, Event, TaskFinished, TaskSkipped, TaskStarted

MAX_CMD_SHOWN = 4000  # characters of a failed command printed; command.txt has all of it


def shown_cmd(cmd: str) -> str:
    """A failed task's command as printed: a huge one (a generated script) is cut, with a note."""
    if len(cmd) <= MAX_CMD_SHOWN:
        return cmd
    return (
        f"{cmd[:MAX_CMD_SHOWN]}\n[dagrun: command cut at {MAX_CMD_SHOWN} of {len(cmd)} "
        "characters; the task's command.txt under .dagrun/runs has all of it]"
    )


def failure_header(ev: TaskFinished) -> str:
    if ev.timed_out:
        why = "timeout"
    elif ev.error:
        why = ev.error
    elif ev.exit_code is not None and ev.exit_code < 0:
        why = f"killed by signal {-ev.exit_code}"
    else:
        why = f"code={ev.exit_code}"
    head = "RETRY" if ev.will_retry else "FAILED"
    return f"{head}: [{why}] {ev.task}"


def summary_line(ev: BuildFinished) -> str:
    ran = ev.succeeded + ev.failed + ev.not_run
    if ran == 0 and not ev.interrupted:
        return f"dagrun: no work to do ({ev.up_to_date} up to date)"
    parts = [f"{ev.succeeded} succeeded", f"{ev.up_to_date} up to date"]
    if ev.failed:
        parts.append(f"{ev.failed} failed")
    if ev.not_run:
        parts.append(f"{ev.not_run} not run")
    head = "dagrun: interrupted: " if ev.interrupted else "dagrun: "
    return head + ", ".join(parts) + f" in {ev.elapsed:.2f}s"


class _TextReport:
    """What both console reporters print, as text blocks."""

    def __init__(self, explain: bool = False) -> None:
        self.explain = explain
        self.skipped: list[TaskSkipped] = []

    def started(self, ev: TaskStarted) -> str | None:
        if self.explain and ev.reasons:
            text = f"explain {ev.task}: " + "; ".join(ev.reasons)
            if ev.cores:
                text += " [cores " + ",".join(map(str, ev.cores)) + "]"
            return text
        return None

    def finished(self, ev: TaskFinished) -> str:
        lines = [f"[{ev.done}/{ev.total}] {ev.label}"]
        if not ev.ok:
            lines.append(failure_header(ev))
            lines.append(shown_cmd(ev.cmd))
        block = "\n".join(lines) + "\n"
        for stream in (ev.stdout, ev.stderr):
            if stream:
                block += stream if stream.endswith("\n") else stream + "\n"
        if not ev.ok and ev.timed_out:
            block += f"dagrun: {ev.task} timed out after {ev.duration:.1f}s\n"
        return block

    def finished_build(self, ev: BuildFinished) -> str:
        lines = []
        shown = self.skipped[:20]
        for s in shown:
            lines.append(f"not run: {s.task} ({s.why})")
        if len(self.skipped) > len(shown):
            lines.append(f"not run: {len(self.skipped) - len(shown)} more")
        lines.append(summary_line(ev))
        return "\n".join(lines) + "\n"


class PlainReporter:
    """Plain lines for logs and pipes."""

    def __init__(self, stream: IO[str] | None = None, *, explain: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.text = _TextReport(explain)

    def handle(self, event: Event) -> None:
        out = None
        match event:
            case TaskStarted():
                out = self.text.started(event)
                if out is not None:
                    out += "\n"
            case TaskFinished():
                out = self.text.finished(event)
            case TaskSkipped():
                self.text.skipped.append(event)
            case BuildFinished():
                out = self.text.finished_build(event)
            case _:
                pass
        if out:
            self.stream.write(out)
            self.stream.flush()


class RecordingReporter:
    """Keeps every event; ``names(kind)`` lists task names of one event type."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def handle(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def names(self, kind: type[Any]) -> list[str]:
        return [e.task for e in self.of(kind)]


class RichReporter:
    """A live footer on a terminal; finished tasks print above it, like Ninja's status line."""

    def __init__(self, console: Any = None, *, explain: bool = False, max_running: int = 6) -> None:
        from rich.console import Console

        self.console = console if console is not None else Console()
        self.text = _TextReport(explain)
        self.max_running = max_running
        self.running: dict[str, float] = {}
        self.done = 0
        self.total = 0
        self.failed = 0
        self.started_at = time.monotonic()
        self.live: Any = None
        self.lock = threading.Lock()

    def _print(self, text: str) -> None:
        self.console.print(text, end="", markup=False, highlight=False, soft_wrap=True)

    def handle(self, event: Event) -> None:
        with self.lock:
            self._handle(event)

    def _handle(self, event: Event) -> None:
        match event:
            case BuildStarted(total=total):
                self.total = total
                self.started_at = time.monotonic()
                if total:
                    from rich.live import Live

                    self.live = Live(
                        self,
                        console=self.console,
                        refresh_per_second=8,
                        transient=True,
                        redirect_stdout=False,
                        redirect_stderr=False,
                    )
                    self.live.start()
            case TaskStarted():
                self.running[event.task] = time.monotonic()
                out = self.text.started(event)
                if out:
                    self._print(out + "\n")
            case TaskFinished():
                self.running.pop(event.task, None)
                self.done = event.done
                if not event.ok and not event.will_retry:
                    self.failed += 1
                self._print(self.text.finished(event))
            case TaskSkipped():
                self.text.skipped.append(event)
            case BuildFinished():
                if self.live is not None:
                    self.live.stop()
                    self.live = None
                self._print(self.text.finished_build(event))
            case _:
                pass

    def __rich__(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        now = time.monotonic()
        grid = Table.grid(padding=(0, 1))
        bar_width = 24
        filled = int(bar_width * self.done / self.total) if self.total else bar_width
        bar = "#" * filled + "-" * (bar_width - filled)
        failed = f"  {self.failed} failed" if self.failed else ""
        grid.add_row(
            Text(
                f"[{self.done}/{self.total}] [{bar}] {now - self.started_at:5.1f}s  "
                f"{len(self.running)} running{failed}"
            )
        )
        items = sorted(self.running.items(), key=lambda kv: kv[1])[: self.max_running]
        for task, since in items:
            grid.add_row(Text(f"  {task}  ({now - since:.1f}s)"))
        if len(self.running) > len(items):
            grid.add_row(Text(f"  ... {len(self.running) - len(items)} more"))
        return grid


def make_reporter(
    mode: str = "auto", *, explain: bool = False, stream: IO[str] | None = None
) -> Any:
    """``auto``: rich only on a real terminal (not when FORCE_COLOR fakes one); else plain."""
    stream = stream if stream is not None else sys.stdout
    if mode == "plain":
        return PlainReporter(stream, explain=explain)
    if mode == "auto":
        isatty = getattr(stream, "isatty", lambda: False)()
        if not isatty:
            return PlainReporter(stream, explain=explain)
    from rich.console import Console

    console = Console(file=stream)
    if mode == "auto" and (not console.is_terminal or console.is_dumb_terminal):
        return PlainReporter(stream, explain=explain)
    return RichReporter(console, explain=explain)
