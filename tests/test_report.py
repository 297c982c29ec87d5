"""What the user sees: plain lines for pipes, a live footer on terminals."""

from __future__ import annotations

import io

from rich.console import Console

from dagrun.events import BuildFinished, BuildStarted, TaskFinished, TaskSkipped, TaskStarted
from dagrun.report import PlainReporter, RichReporter, make_reporter, summary_line


def finished(task="cc", ok=True, code=0, out="", err="", done=1, total=2, **kw):
    return TaskFinished(task=task, label=f"CC {task}", cmd=f"cc {task}.c", ok=ok, exit_code=code,
                        duration=0.5, stdout=out, stderr=err, done=done, total=total, **kw)


def test_plain_lines():
    s = io.StringIO()
    r = PlainReporter(s)
    r.handle(BuildStarted(2, 0, 2))
    r.handle(TaskStarted("a", "A", 1))
    r.handle(finished("a", out="hello\n"))
    r.handle(finished("b", ok=False, code=2, err="boom", done=2))
    r.handle(TaskSkipped("c", "c", "dependency failed: b"))
    r.handle(BuildFinished(1, 3, 1, 1, 1.234))
    assert s.getvalue() == (
        "[1/2] CC a\nhello\n"
        "[2/2] CC b\nFAILED: [code=2] b\ncc b.c\nboom\n"
        "not run: c (dependency failed: b)\n"
        "dagrun: 1 failed:\n"
        "  b  [code=2]  .dagrun/runs/b/stdout.txt  .dagrun/runs/b/stderr.txt\n"
        "dagrun: 1 succeeded, 3 up to date, 1 failed, 1 not run in 1.23s\n"
    )


def test_plain_explain_and_failures_of_other_kinds():
    s = io.StringIO()
    r = PlainReporter(s, explain=True)
    r.handle(TaskStarted("a", "A", 1, reasons=("input a.c changed", "env X set")))
    r.handle(finished("t", ok=False, code=-15, timed_out=True))
    r.handle(finished("k", ok=False, code=-9))
    r.handle(finished("n", ok=False, code=None, error="cannot start: No such file"))
    r.handle(finished("r", ok=False, code=1, will_retry=True))
    text = s.getvalue()
    assert "explain a: input a.c changed; env X set\n" in text
    assert "FAILED: [timeout] t\n" in text and "dagrun: t timed out after 0.5s" in text
    assert "FAILED: [killed by signal 9] k\n" in text
    assert "FAILED: [cannot start: No such file] n\n" in text
    assert "RETRY: [code=1] r\n" in text


def test_summary_lines():
    assert summary_line(BuildFinished(0, 5, 0, 0, 0.01)) == "dagrun: no work to do (5 up to date)"
    assert summary_line(BuildFinished(1, 0, 0, 2, 2.0, interrupted=True)) == (
        "dagrun: interrupted: 1 succeeded, 0 up to date, 2 not run in 2.00s"
    )


def test_rich_reporter_on_a_terminal():
    s = io.StringIO()
    console = Console(file=s, force_terminal=True, width=100, color_system=None)
    r = RichReporter(console)
    r.handle(BuildStarted(2, 0, 2))
    r.handle(TaskStarted("a", "A", 1))
    r.handle(finished("a", out="hello\n"))
    r.handle(finished("b", ok=False, code=2, err="boom", done=2))
    r.handle(BuildFinished(1, 0, 1, 0, 0.5))
    text = s.getvalue()
    assert "[1/2] CC a\nhello\n" in text
    assert "FAILED: [code=2] b\ncc b.c\nboom\n" in text
    assert text.rstrip().endswith("dagrun: 1 succeeded, 0 up to date, 1 failed in 0.50s")


def test_rich_footer_renders_progress_and_running_tasks():
    s = io.StringIO()
    console = Console(file=s, force_terminal=True, width=100, color_system=None)
    r = RichReporter(console)
    r.total, r.done = 4, 1
    r.running = {"slow-task": 0.0}
    console.print(r)
    text = s.getvalue()
    assert "[1/4] [######------------------]" in text
    assert "1 running" in text and "slow-task" in text


def test_auto_mode_is_plain_without_a_terminal():
    assert isinstance(make_reporter("auto", stream=io.StringIO()), PlainReporter)
    assert isinstance(make_reporter("plain", stream=io.StringIO()), PlainReporter)

    class FakeTty(io.StringIO):
        def isatty(self):
            return True

    # a tty whose TERM is dumb (or any console rich would not drive) stays plain
    assert isinstance(make_reporter("rich", stream=FakeTty()), RichReporter)


def test_rich_footer_shows_display_labels_and_colour_only_when_asked():
    from dagrun.report import Options

    s = io.StringIO()
    console = Console(file=s, force_terminal=True, width=100, color_system="standard")
    r = RichReporter(console, options=Options(color=True))
    r.handle(BuildStarted(2, 0, 2))
    r.handle(TaskStarted("cc-main", "CC main.o", 1))
    console.print(r)
    assert "CC main.o" in s.getvalue() and "cc-main" not in s.getvalue()
    r.handle(finished("cc-main", ok=False, code=1, done=1))
    assert "\x1b[1;31mFAILED: [code=1] cc-main" in s.getvalue()


def test_interrupted_tasks_are_named_once_and_counted_apart():
    s = io.StringIO()
    r = PlainReporter(s)
    r.handle(BuildStarted(5, 0, 2))
    for name in ("b", "a"):
        r.handle(TaskStarted(name, name.upper(), 1))
    for name in ("a", "b"):
        r.handle(finished(name, ok=False, code=-2, error="interrupted", interrupted=True))
    r.handle(TaskSkipped("c", "c", "build stopped"))
    r.handle(BuildFinished(0, 1, 2, 3, 1.0, interrupted=True))
    assert s.getvalue() == (
        "dagrun: interrupted: killed b, a\n"
        "dagrun: interrupted: 0 succeeded, 1 up to date, 2 interrupted, 3 not run in 1.00s\n"
    )
