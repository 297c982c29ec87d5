"""Reporters turn events into what the user sees.  Presentation stays here (and in cli.py).

- PlainReporter: one ``[k/N] display`` line per finished task, its output
  whole beneath it, flushed line by line; what CI logs get.
- RichReporter: the same lines printed above a live footer (done/total,
  running tasks, elapsed) on a terminal.  rich is imported only here.
- RecordingReporter: keeps the events, for tests.  Tee: several reporters at once.

A task's output is printed only after it ends, in one piece, so two tasks'
output never interleave.  ``Options`` say how: ``-q`` (failures and the
summary), ``-v`` (commands instead of displays), colour (``color_wanted``:
``--color``, ``NO_COLOR``, ``FORCE_COLOR``, a terminal), and GitHub Actions'
``::group::`` folding and ``::error`` annotations.  A build ends with one
line naming the tasks Ctrl-C killed, a recap of the failed tasks and where
their output is, and the summary.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping
from typing import IO, Any, NamedTuple

from .events import (
    BuildFinished,
    BuildStarted,
    Event,
    TaskCutOff,
    TaskFinished,
    TaskSkipped,
    TaskStalled,
    TaskStarted,
)

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
    head = "RETRY" if ev.will_retry else "FAILED"
    return f"{head}: [{failure_reason(ev)}] {ev.task}"


def failure_reason(ev: TaskFinished) -> str:
    if ev.timed_out:
        return "timeout"
    if ev.error:
        return ev.error
    if ev.exit_code is not None and ev.exit_code < 0:
        return f"killed by signal {-ev.exit_code}"
    return f"code={ev.exit_code}"


def stall_line(ev: TaskStalled) -> str:
    """The one warning of a task that seems stuck (stall_warning)."""
    return (
        f"dagrun: warning: {ev.label} printed nothing and used no CPU for {ev.seconds:g}s "
        f"(still running; `dagrun tail {ev.task}` follows it, `dagrun cancel {ev.task}` stops "
        "it)\n"
    )


class Style:
    """ANSI colours for plain text; all empty when colour is off."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __call__(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.on and text else text

    def ok(self, text: str) -> str:
        return self(text, "32")

    def bad(self, text: str) -> str:
        return self(text, "1;31")

    def warn(self, text: str) -> str:
        return self(text, "33")

    def dim(self, text: str) -> str:
        return self(text, "2")


def summary_line(ev: BuildFinished, interrupted_tasks: int = 0, style: Style | None = None) -> str:
    """The build's last line; tasks killed by Ctrl-C count as interrupted, not failed."""
    st = style or Style(False)
    ran = ev.succeeded + ev.failed + ev.not_run + ev.restored
    if ran == 0 and not ev.interrupted:
        return f"dagrun: no work to do ({ev.up_to_date} up to date)"
    parts = [st.ok(f"{ev.succeeded} succeeded")]
    if ev.restored:
        parts.append(st.ok(f"{ev.restored} restored"))
    parts.append(st.dim(f"{ev.up_to_date} up to date"))
    failed = ev.failed - interrupted_tasks
    if failed:
        parts.append(st.bad(f"{failed} failed"))
    if interrupted_tasks:
        parts.append(f"{interrupted_tasks} interrupted")
    if ev.not_run:
        parts.append(f"{ev.not_run} not run")
    head = "dagrun: interrupted: " if ev.interrupted else "dagrun: "
    return head + ", ".join(parts) + f" in {ev.elapsed:.2f}s"


def gh_escape(text: str, prop: bool = False) -> str:
    """Escape a GitHub Actions workflow command's message (or property) text."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def _block(*texts: str) -> str:
    out = ""
    for t in texts:
        if t:
            out += t if t.endswith("\n") else t + "\n"
    return out


class Options(NamedTuple):  # not a dataclass: ~0.7 ms less per start (bench/IMPORTS.md)
    """How the console reporters print: -q, -v, --explain, colour, GitHub Actions."""

    explain: bool = False
    quiet: bool = False  # failures and the summary only
    verbose: bool = False  # each task's command instead of its display
    color: bool = False
    github: bool = False  # ::group:: folding and ::error annotations
    runs_dir: str = ".dagrun/runs"  # as the recap shows it


class _TextReport:
    """What both console reporters print, as text blocks."""

    def __init__(self, explain: bool = False, options: Options | None = None) -> None:
        self.o = options or Options(explain=explain)
        self.explain = self.o.explain
        self.style = Style(self.o.color)
        self.skipped: list[TaskSkipped] = []
        self.failed: list[TaskFinished] = []
        self.killed: list[TaskFinished] = []
        self.order: dict[str, int] = {}  # task -> when it first started

    def started(self, ev: TaskStarted) -> str | None:
        self.order.setdefault(ev.task, len(self.order))
        if self.explain and ev.reasons and not self.o.quiet:
            text = f"explain {ev.task}: " + "; ".join(ev.reasons)
            if ev.cores:
                text += " [cores " + ",".join(map(str, ev.cores)) + "]"
            return text
        return None

    def finished(self, ev: TaskFinished) -> str:
        if ev.interrupted:  # named once, in the interrupted line at the end
            self.killed.append(ev)
            return ""
        if ev.ok:
            return self._succeeded(ev)
        if ev.will_retry and self.o.quiet:  # -q: only what failed for good
            return ""
        if not ev.will_retry:
            self.failed.append(ev)
        st = self.style
        if ev.will_retry:
            line = st.warn(f"[attempt {ev.attempt}/{ev.max_attempts}]") + " " + self._title(ev)
            header = st.warn(failure_header(ev))
        else:
            line = f"{st.bad(self._count(ev))} {self._title(ev)}"
            header = st.bad(failure_header(ev))
        command = "" if self.o.verbose else shown_cmd(ev.cmd)  # -v: the title shows it
        block = _block(line, header, command, ev.stdout, ev.stderr)
        if ev.timed_out:
            block += f"dagrun: {ev.task} timed out after {ev.duration:.1f}s\n"
        if self.o.github and not ev.will_retry:
            block += self._annotation(ev)
        return block

    def _count(self, ev: TaskFinished) -> str:
        return f"[{ev.done}/{ev.total}]"

    def _title(self, ev: TaskFinished) -> str:
        return ev.cmd if self.o.verbose and ev.cmd else ev.label

    def _succeeded(self, ev: TaskFinished) -> str:
        if self.o.quiet:
            return ""
        line = f"{self.style.ok(self._count(ev))} {self._title(ev)}"
        if ev.restored:
            line += self.style.dim(" (restored)")
        output = _block(ev.stdout, ev.stderr)
        if self.o.github and output:
            return f"::group::{line}\n{output}::endgroup::\n"
        return _block(line, output)

    def _annotation(self, ev: TaskFinished) -> str:
        from .record import tail

        title = gh_escape(f"dagrun: {ev.task} failed", prop=True)
        message = failure_header(ev) + "\n" + tail(ev.stderr or ev.stdout, lines=10)
        return f"::error title={title}::{gh_escape(message.rstrip())}\n"

    def finished_build(self, ev: BuildFinished) -> str:
        lines = []
        if self.killed:
            names = sorted((k.task for k in self.killed), key=lambda t: self.order.get(t, 0))
            more = f" and {len(names) - 10} more" if len(names) > 10 else ""
            lines.append(f"dagrun: interrupted: killed {', '.join(names[:10])}{more}")
        elif not self.o.quiet:
            shown = self.skipped[:20]
            for s in shown:
                lines.append(f"not run: {s.task} ({s.why})")
            if len(self.skipped) > len(shown):
                lines.append(f"not run: {len(self.skipped) - len(shown)} more")
        lines.extend(self.recap())
        lines.append(summary_line(ev, len(self.killed), self.style))
        return "\n".join(lines) + "\n"

    def recap(self) -> list[str]:
        """Every failed task with where its output is."""
        if not self.failed:
            return []
        from .scheduler import run_dir_name

        lines = [self.style.bad(f"dagrun: {len(self.failed)} failed:")]
        for ev in self.failed:
            d = f"{self.o.runs_dir}/{run_dir_name(ev.task)}"
            lines.append(f"  {ev.task}  [{failure_reason(ev)}]  {d}/stdout.txt  {d}/stderr.txt")
        return lines


class PlainReporter:
    """Plain lines for logs and pipes."""

    def __init__(
        self, stream: IO[str] | None = None, *, explain: bool = False,
        options: Options | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.text = _TextReport(explain, options)

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
            case TaskStalled():
                out = stall_line(event)
            case _:
                pass
        if out:
            self.stream.write(out)
            self.stream.flush()


class Tee:
    """Hands each event to several reporters, in order."""

    def __init__(self, reporters: list[Any]) -> None:
        self.reporters = reporters

    def handle(self, event: Event) -> None:
        for r in self.reporters:
            r.handle(event)


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

    def __init__(
        self, console: Any = None, *, explain: bool = False, max_running: int = 6,
        options: Options | None = None,
    ) -> None:
        from rich.console import Console

        self.console = console if console is not None else Console()
        self.text = _TextReport(explain, options)
        self.max_running = max_running
        self.running: dict[str, float] = {}
        self.labels: dict[str, str] = {}  # task -> its display, for the footer
        self.done = 0
        self.total = 0
        self.failed = 0
        self.interrupted = 0  # killed by Ctrl-C: not failures of their own
        self.started_at = time.monotonic()
        self.live: Any = None
        self.lock = threading.Lock()

    def _print(self, text: str) -> None:
        if not text:
            return
        if "\x1b[" in text:
            from rich.text import Text

            self.console.print(Text.from_ansi(text, end=""), end="", soft_wrap=True)
            return
        self.console.print(text, end="", markup=False, highlight=False, soft_wrap=True)

    def handle(self, event: Event) -> None:
        with self.lock:
            self._handle(event)

    def _handle(self, event: Event) -> None:
        match event:
            case BuildStarted(total=total):
                self._build_started(total)
            case TaskStarted():
                self.running[event.task] = time.monotonic()
                self.labels[event.task] = event.label
                out = self.text.started(event)
                if out:
                    self._print(out + "\n")
            case TaskFinished():
                self.running.pop(event.task, None)
                self.done, self.total = event.done, event.total or self.total
                if event.interrupted:
                    self.interrupted += 1
                elif not event.ok and not event.will_retry:
                    self.failed += 1
                self._print(self.text.finished(event))
            case TaskCutOff():
                self.total = event.total  # found up to date: out of the total
            case TaskSkipped():
                self.text.skipped.append(event)
            case BuildFinished():
                if self.live is not None:
                    self.live.stop()
                    self.live = None
                self._print(self.text.finished_build(event))
            case TaskStalled():
                self._print(stall_line(event))
            case _:
                pass

    def _build_started(self, total: int) -> None:
        """Count the tasks; start the live display if any will run."""
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

    def __rich__(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        now = time.monotonic()
        grid = Table.grid(padding=(0, 1))
        bar_width = 24
        filled = int(bar_width * self.done / self.total) if self.total else bar_width
        bar = "#" * filled + "-" * (bar_width - filled)
        failed = f"  {self.failed} failed" if self.failed else ""
        failed += f"  {self.interrupted} interrupted" if self.interrupted else ""
        grid.add_row(
            Text(
                f"[{self.done}/{self.total}] [{bar}] {now - self.started_at:5.1f}s  "
                f"{len(self.running)} running{failed}"
            )
        )
        items = sorted(self.running.items(), key=lambda kv: kv[1])[: self.max_running]
        for task, since in items:
            label = self.labels.get(task, task)
            grid.add_row(Text(f"  {label}  ({now - since:.1f}s)"))
        if len(self.running) > len(items):
            grid.add_row(Text(f"  ... {len(self.running) - len(items)} more"))
        return grid


def color_wanted(mode: str, stream: Any, environ: Mapping[str, str]) -> bool:
    """``--color``: always / never; auto: not with NO_COLOR, yes with FORCE_COLOR, else a tty."""
    if mode in ("always", "never"):
        return mode == "always"
    if environ.get("NO_COLOR"):
        return False
    if environ.get("FORCE_COLOR", "") not in ("", "0"):
        return True
    isatty = getattr(stream, "isatty", lambda: False)()
    return bool(isatty) and environ.get("TERM") != "dumb"


def make_reporter(
    mode: str = "auto",
    *,
    explain: bool = False,
    stream: IO[str] | None = None,
    options: Options | None = None,
) -> Any:
    """``auto``: rich only on a real terminal (not when FORCE_COLOR fakes one); else plain.

    ``rich`` forces the live display even into a pipe or a file.
    """
    stream = stream if stream is not None else sys.stdout
    options = options or Options(explain=explain)
    if mode == "plain":
        return PlainReporter(stream, options=options)
    if mode == "auto":
        isatty = getattr(stream, "isatty", lambda: False)()
        if not isatty:
            return PlainReporter(stream, options=options)
    from rich.console import Console

    console = Console(
        file=stream,
        force_terminal=True if mode == "rich" else None,
        color_system="auto" if options.color else None,
        no_color=not options.color,
    )
    if mode == "auto" and (not console.is_terminal or console.is_dumb_terminal):
        return PlainReporter(stream, options=options)
    return RichReporter(console, options=options)
