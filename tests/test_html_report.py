"""Issue 27: `dagrun report --html` / `build --html`, one self-contained page, rendered in
headless Chromium (Debian's ``chromium``): a screenshot, no console message, one timeline
bar per task run, the critical path, sorting by a column."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dagrun.html_report import critical_path, read, render

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PROJECT = """
[dagrun]
jobs = 3
[tasks.gen]
cmd = "sleep 0.3; echo gen > gen.txt"
outputs = ["gen.txt"]
[tasks.a]
cmd = "sleep 0.5; cat gen.txt > a.txt"
inputs = ["gen.txt"]
outputs = ["a.txt"]
[tasks.b]
cmd = "sleep 0.1; echo b"
deps = ["gen"]
[tasks.bad]
cmd = "echo about to fail; echo 'error: it broke <badly>' >&2; exit 3"
[tasks.link]
cmd = "sleep 0.3; cat a.txt > link.txt"
inputs = ["a.txt"]
outputs = ["link.txt"]
[tasks.after_bad]
cmd = "true"
deps = ["bad"]
[tasks.flaky]
cmd = "test -e flaky.ok || { touch flaky.ok; exit 1; }"
retries = 1
"""


def chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        pytest.skip("no chromium here (Debian: apt-get install chromium)")
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={cwd / 'chromium-profile'}", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.slow
def test_the_page_of_a_real_build_renders_in_chromium(project, tmp_path: Path) -> None:
    project.manifest(PROJECT)
    r = project.run("build", "-k", "--html", "build.html", "--events", "events.jsonl")
    assert r.code == 1 and "Traceback" not in r.err
    events = [json.loads(x) for x in project.read("events.jsonl").splitlines()]
    runs = sum(e["event"] == "started" for e in events)
    assert runs == 7  # flaky ran twice
    r = project.run("report", "--html", "report.html")
    assert (r.code, r.err) == (0, "dagrun: wrote report.html\n")
    page = project.read("report.html")
    assert page == project.read("build.html")  # the same build, the same page
    # self-contained: no link, script or style from anywhere, no URL but the SVG namespace
    assert not re.search(r"\b(src|href)=", page)
    assert set(re.findall(r"https?://[^\s\"<]+", page)) == {"http://www.w3.org/2000/svg"}

    shot = tmp_path / "shot.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1200,900",
                    (tmp_path / "report.html").as_uri(), cwd=tmp_path)
    assert shot.stat().st_size > 10_000, done.stderr
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dom = chromium("--dump-dom", (tmp_path / "report.html").as_uri() + "#sort=-duration",
                   cwd=tmp_path)
    assert "CONSOLE" not in dom.stderr, dom.stderr  # no console message, no uncaught error
    html = dom.stdout
    assert 'data-ready="yes"' in html  # the script ran to its end
    assert len(re.findall(r'<rect class="bar ', html)) == runs  # one bar per task run
    assert len(re.findall(r'<rect class="bar failed', html)) == 1
    assert len(re.findall(r'<rect class="bar retry', html)) == 1
    critical = re.findall(r'<rect class="bar [a-z]+ critical" data-task="([^"]+)"', html)
    assert critical == ["gen", "a", "link"]
    order = re.findall(r'<tr class="[^"]*"><td data-v="([^"]+)"', html)
    assert order[0] == "a" and order[-1] == "after_bad"  # sorted by duration, longest first
    assert 'class="sorted-down"' in html
    assert "error: it broke &lt;badly&gt;" in html  # the failed task's output, escaped


def test_report_without_a_build_is_a_clear_error(project) -> None:
    project.manifest('[tasks.a]\ncmd = "true"\n')
    r = project.run("report", "--html", "r.html")
    assert r.code == 2
    assert r.err == ("dagrun: error: no build to report yet: run `dagrun build` "
                     "(a build that runs a task)\n")


RECORDS = [
    {"event": "build_started", "t": 0.0, "time": 1.0},
    {"event": "planned", "t": 0.0, "task": "x", "run": True, "reason": "never ran"},
    {"event": "planned", "t": 0.0, "task": "y", "run": True, "reason": "never ran"},
    {"event": "planned", "t": 0.0, "task": "z", "run": True, "reason": "never ran"},
    {"event": "planned", "t": 0.0, "task": "w", "run": True, "reason": "never ran"},
    {"event": "started", "t": 0.0, "task": "x", "executor": "local"},
    {"event": "started", "t": 0.0, "task": "w", "executor": "lab"},
    {"event": "started", "t": 0.1, "task": "y", "executor": "local"},
    {"event": "finished", "t": 0.5, "task": "y", "status": "succeeded"},
    {"event": "finished", "t": 1.0, "task": "x", "status": "succeeded"},
    {"event": "started", "t": 1.0, "task": "z", "executor": "local"},
    {"event": "finished", "t": 2.0, "task": "z", "status": "succeeded"},
    {"event": "finished", "t": 2.5, "task": "w", "status": "succeeded"},
    {"event": "build_finished", "t": 2.5, "elapsed": 2.5, "succeeded": 4, "exit_status": 0},
]


def test_runs_take_the_lowest_free_lane_of_their_executor() -> None:
    b = read(RECORDS)
    assert [(r.task, r.executor, r.lane) for r in b.runs] == [
        ("y", "local", 1), ("x", "local", 0), ("z", "local", 0), ("w", "lab", 0)]
    assert b.lanes == {"local": 2, "lab": 1}


def test_the_critical_path_goes_back_through_the_dependency_that_ended_last() -> None:
    runs = read(RECORDS).runs
    assert critical_path(runs, {"z": ["x", "y"], "w": []}) == ["w"]  # w ended last
    assert critical_path(runs[:3], {"z": ["x", "y"]}) == ["x", "z"]
    assert critical_path(runs, None) == []
    page = render(RECORDS[:-2] + [RECORDS[-1]], deps={"z": ["x", "y"]})
    assert page.count('class="bar succeeded critical"') == 2  # x and z (w never finished)
