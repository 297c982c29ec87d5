"""Machine-readable results: JUnit XML, the event stream, the Chrome trace, GitHub annotations,
and the JSON of list / status / show."""

from __future__ import annotations

import json
import re
import signal
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
import xmlschema

from dagrun.events import BuildFinished, BuildStarted, Planned, TaskFinished, TaskStarted
from dagrun.junit import to_xml
from dagrun.manifest import TaskSpec
from dagrun.record import Collected, Records
from dagrun.trace import to_trace

SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parent / "data" / "junit.xsd"))

MIXED = """
[tasks.fresh]
cmd = "echo fresh > fresh.txt"
outputs = ["fresh.txt"]

[tasks.ok]
cmd = "echo hello"
display = "SAY hello"
always = true

[tasks.bad]
cmd = "for i in $(seq 1 100); do echo line $i >&2; done; exit 3"
always = true

[tasks.after]
cmd = "true"
deps = ["bad"]
"""


def built_once_then(project, *args: str):
    project.manifest(MIXED)
    assert project.run("build", "fresh").code == 0  # so that `fresh` is up to date next time
    return project.run("build", "-k", *args)


def test_junit_report_validates_and_counts_right(project) -> None:
    r = built_once_then(project, "--junit", "report.xml")
    assert r.code == 1
    text = project.read("report.xml")
    SCHEMA.validate(text)  # raises with the offending element when invalid
    suite = ET.fromstring(text).find("testsuite")
    assert suite is not None
    assert {k: suite.get(k) for k in ("name", "tests", "failures", "errors", "skipped")} == {
        "name": "dagrun.toml", "tests": "4", "failures": "1", "errors": "0", "skipped": "2",
    }
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"fresh", "ok", "bad", "after"}
    assert list(cases["ok"]) == []  # passed: no child
    assert cases["fresh"][0].tag == "skipped" and cases["fresh"][0].get("message") == "up to date"
    assert cases["after"][0].get("message") == "not run: dependency failed: bad"
    failure = cases["bad"][0]
    assert failure.tag == "failure"
    assert failure.get("message") == "FAILED: [code=3] bad" and failure.get("type") == "code=3"
    tail = (failure.text or "").splitlines()
    assert tail[0] == "line 61" and tail[-1] == "line 100"  # the last 40 lines of stderr
    assert float(cases["bad"].get("time") or -1) >= 0


def test_the_schema_refuses_what_ci_tools_would_not_read(project) -> None:
    built_once_then(project, "--junit", "report.xml")
    good = project.read("report.xml")
    assert SCHEMA.is_valid(good)
    for broken in (
        good.replace(' classname="dagrun"', "", 1),  # a testcase without classname
        good.replace('failures="1"', 'failures="one"', 1),
        good.replace('<skipped message="up to date" />',
                     '<skipped message="up to date" /><failure type="x" />', 1),
    ):
        assert broken != good and not SCHEMA.is_valid(broken)


def test_junit_counts_a_task_killed_by_ctrl_c_as_an_error() -> None:
    sink = Collected(lambda records: None, wants_fresh=True)
    rec = Records([sink], clock=iter([0.0, 0.0, 1.0, 2.0, 3.0]).__next__)
    spec = TaskSpec(name="long", cmd="sleep 9")
    rec.handle(BuildStarted(1, 0, 2, Planned([spec], [0], [], ["k1"], {0: ("never ran",)})))
    rec.handle(TaskStarted("long", "long", 1))
    rec.handle(TaskFinished("long", "long", "sleep 9", False, -2, 1.5, "", "", error="interrupted",
                            interrupted=True, done=1, total=1))
    rec.handle(BuildFinished(0, 0, 1, 0, 3.0, interrupted=True))
    text = to_xml(sink.records)
    SCHEMA.validate(text)
    suite = ET.fromstring(text).find("testsuite")
    assert suite is not None and (suite.get("errors"), suite.get("failures")) == ("1", "0")
    assert sink.records[-1]["interrupted"] == 1 and sink.records[-1]["failed"] == 0
    assert sink.records[-1]["exit_status"] == 130


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_event_stream_is_complete_and_ordered(project) -> None:
    built_once_then(project, "--events", "events.jsonl")
    events = read_events(project.root / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "build_started" and kinds[-1] == "build_finished"
    assert kinds.count("build_started") == kinds.count("build_finished") == 1
    times = [e["t"] for e in events]
    assert times == sorted(times)
    planned = {e["task"]: e for e in events if e["event"] == "planned"}
    assert set(planned) == {"fresh", "ok", "bad", "after"}
    assert planned["fresh"]["run"] is False and planned["fresh"]["reason"] == "up to date"
    assert planned["ok"]["reason"] == "always = true" and planned["ok"]["executor"] == "local"
    assert all(len(e["key"]) == 32 for e in planned.values())
    for task in ("ok", "bad"):  # each run: planned, then started, then finished
        mine = [e["event"] for e in events if e.get("task") == task]
        assert mine == ["planned", "started", "finished"]
    finished = {e["task"]: e for e in events if e["event"] == "finished"}
    assert finished["ok"]["status"] == "succeeded" and finished["ok"]["exit_status"] == 0
    assert finished["bad"]["status"] == "failed" and finished["bad"]["exit_status"] == 3
    for e in finished.values():
        assert e["executor"] == "local" and e["cores"] == [] and e["duration"] >= 0
        assert e["maxrss_kb"] > 0
    assert [e["task"] for e in events if e["event"] == "not_run"] == ["after"]
    end = events[-1]
    assert (end["succeeded"], end["failed"], end["up_to_date"], end["not_run"]) == (1, 1, 1, 1)
    assert end["exit_status"] == 1


def test_events_of_retries_count_each_attempt(project) -> None:
    project.manifest("""
        [tasks.flaky]
        cmd = "if [ -e mark ]; then echo ok; else touch mark; exit 1; fi"
        retries = 2
    """)
    r = project.run("build", "--events", "e.jsonl")
    assert r.code == 0
    assert "[attempt 1/3] flaky" in r.out and "[1/1] flaky" in r.out and "[0/" not in r.out
    runs = [(e["event"], e.get("attempt"), e.get("status"))
            for e in read_events(project.root / "e.jsonl") if e["event"] in ("started", "finished")]
    assert runs == [("started", 1, None), ("finished", 1, "retry"),
                    ("started", 2, None), ("finished", 2, "succeeded")]


TRACE_SCHEMA = json.loads((Path(__file__).parent / "data" / "trace-event.schema.json").read_text())


def check_trace(data: dict) -> list[dict]:
    """The trace event format's rules for what dagrun writes; returns the complete events."""
    jsonschema.validate(data, TRACE_SCHEMA)
    assert isinstance(data["traceEvents"], list)
    complete = []
    for e in data["traceEvents"]:
        assert e["ph"] in ("X", "M")
        assert isinstance(e["name"], str) and isinstance(e["pid"], int)
        assert isinstance(e["tid"], int)
        if e["ph"] == "X":
            assert isinstance(e["ts"], int) and isinstance(e["dur"], int)
            assert e["ts"] >= 0 and e["dur"] >= 0
            complete.append(e)
        else:
            assert e["name"] in ("process_name", "thread_name") and "name" in e["args"]
    lanes: dict[tuple[int, int], list[dict]] = {}
    for e in complete:
        lanes.setdefault((e["pid"], e["tid"]), []).append(e)
    for runs in lanes.values():  # a lane never holds two runs at once
        runs.sort(key=lambda e: e["ts"])
        for a, b in zip(runs, runs[1:], strict=False):
            assert a["ts"] + a["dur"] <= b["ts"]
    return complete


@pytest.mark.slow
def test_trace_has_one_complete_event_per_run_live_and_from_the_last_build(project) -> None:
    project.manifest("""
        [dagrun]
        jobs = 3
        [tasks.w]
        matrix = { n = { range = [0, 6] } }
        cmd = "sleep 0.0{n}"
        display = "WORK {n}"
        [tasks.flaky]
        cmd = "if [ -e mark ]; then true; else touch mark; exit 1; fi"
        retries = 1
    """)
    assert project.run("build", "--trace", "live.json").code == 0
    live = check_trace(json.loads(project.read("live.json")))
    assert len(live) == 8  # six tasks, and two attempts of flaky
    assert sorted(e["name"] for e in live if e["name"].startswith("WORK")) == [
        f"WORK {n}" for n in range(6)
    ]
    assert max(e["tid"] for e in live) <= 3  # no more lanes than slots
    r = project.run("trace", "again.json")
    assert r.code == 0 and r.err == "dagrun: wrote again.json\n"
    again = check_trace(json.loads(project.read("again.json")))
    assert again == live
    # a no-op build keeps the last build that ran something
    assert project.run("build").out.startswith("dagrun: no work to do")
    assert check_trace(json.loads(project.run("trace").out)) == live


def test_trace_without_a_build_is_an_error(project) -> None:
    project.manifest('[tasks.a]\ncmd = "true"\n')
    r = project.run("trace")
    assert r.code == 2 and "no build to trace yet" in r.err


def test_trace_lanes_per_executor() -> None:
    records = [
        {"event": "build_started", "t": 0.0, "time": 1.0, "jobs": 2},
        {"event": "started", "t": 0.0, "task": "a", "executor": "local"},
        {"event": "started", "t": 0.1, "task": "b", "executor": "lab"},
        {"event": "started", "t": 0.2, "task": "c", "executor": "local"},
        {"event": "finished", "t": 0.5, "task": "a", "status": "succeeded"},
        {"event": "started", "t": 0.6, "task": "d", "executor": "local"},
        {"event": "finished", "t": 0.7, "task": "b", "status": "succeeded"},
        {"event": "finished", "t": 0.8, "task": "c", "status": "failed"},
        {"event": "finished", "t": 0.9, "task": "d", "status": "succeeded"},
    ]
    complete = check_trace(to_trace(records))
    where = {e["args"]["task"]: (e["pid"], e["tid"]) for e in complete}
    assert where == {"a": (1, 1), "b": (2, 1), "c": (1, 2), "d": (1, 1)}
    assert {e["args"]["task"]: e["dur"] for e in complete}["a"] == 500_000


@pytest.mark.parametrize("value, expected", [("true", True), ("false", False), (None, False)])
def test_github_annotations_only_under_github_actions(project, monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    else:
        monkeypatch.setenv("GITHUB_ACTIONS", value)
    r = built_once_then(project)
    has = [marker in r.out for marker in ("::error ", "::group::", "::endgroup::")]
    assert has == [expected] * 3
    if expected:
        assert re.search(r"::group::\[\d/3\] SAY hello\nhello\n::endgroup::\n", r.out)
        error = next(line for line in r.out.splitlines() if line.startswith("::error "))
        assert error.startswith("::error title=dagrun%3A bad failed::FAILED: [code=3] bad%0A")
        assert error.endswith("line 100")


def test_list_json(project) -> None:
    built_once_then(project)
    r = project.run("list", "--json")
    data = json.loads(r.out)
    states = {t["name"]: (t["state"], t["display"]) for t in data["tasks"]}
    assert states == {
        "fresh": ("up to date", None), "ok": ("will run", "SAY hello"),
        "bad": ("will run", None), "after": ("will run", None),
    }
    assert data["manifest"] == "dagrun.toml"
    assert project.run("list", "--names").out == "after\nbad\nfresh\nok\n"


def test_status_json_counts_the_last_build(project) -> None:
    built_once_then(project)
    data = json.loads(project.run("status", "--json").out)
    build = data["build"]
    assert build["state"] == "finished" and build["exit_status"] == 1
    assert build["counts"] == {
        "ready": 0, "waiting": 0, "running": 0, "succeeded": 1, "failed": 1,
        "interrupted": 0, "not_run": 1, "up_to_date": 1,
    }
    assert data["executors"][0]["name"] == "local"
    text = project.run("status").out
    assert text.startswith("build: finished: 1 succeeded, 1 failed, 1 not run, 1 up to date\n")


def test_show_a_task(project) -> None:
    built_once_then(project)
    r = project.run("show", "bad")
    assert r.code == 0
    rows = dict(line.split(None, 1) for line in r.out.splitlines() if not line.startswith(" "))
    assert rows["command"].startswith("for i in $(seq 1 100)")
    assert rows["state"].strip() == "will run: always = true"
    assert "failed in" in rows["last"] and "exit status 3" in rows["last"]
    assert ".dagrun/runs/bad/stderr.txt" in rows["output"]
    data = json.loads(project.run("show", "fresh", "--json").out)
    assert data["state"] == "up to date" and data["key_parts"]["outputs"] == ["fresh.txt"]
    assert data["last_run"]["status"] == "succeeded" and data["last_run"]["exit_status"] == 0
    assert data["last_run"]["maxrss_kb"] > 0 and data["last_run"]["duration"] >= 0
    assert data["output"] == {}  # it printed nothing: a silent success keeps no run files


def test_show_refuses_a_group_or_an_unknown_name(project) -> None:
    project.manifest('[tasks.s]\nmatrix = { n = [1, 2] }\ncmd = "echo {n}"\n')
    r = project.run("show", "s")
    assert r.code == 2
    assert r.err == "dagrun: error: 's' names 2 tasks (s[n=1], s[n=2]); show takes one\n"
    assert project.run("show", "s[n=3]").code == 2


def test_a_report_that_cannot_be_written_stops_before_the_build(project) -> None:
    project.manifest('[tasks.a]\ncmd = "touch ran"\n')
    r = project.run("build", "--junit", "no/such/dir/r.xml")
    assert r.code == 2 and "cannot write the JUnit report to no/such/dir/r.xml" in r.err
    assert not (project.root / "ran").exists()


@pytest.mark.slow
def test_status_json_while_a_build_runs_says_what_runs_where(dagrun_proc) -> None:
    from realproc import stop_and_expect_130, wait_for

    busy = "sleep 30 & echo $$ > pids/{name}; wait"
    dagrun_proc.manifest(f"""
        [dagrun]
        jobs = 2
        [tasks.a]
        cmd = "{busy.format(name="a")}"
        [tasks.b]
        cmd = "true"
        deps = ["a"]
        [tasks.c]
        cmd = "{busy.format(name="c")}"
        [tasks.d]
        cmd = "true"
    """)
    p = dagrun_proc.start("build")
    groups = {dagrun_proc.task_pid("a"), dagrun_proc.task_pid("c")}
    seen: list[dict] = []

    def both_running() -> bool:  # the build's record is flushed within 0.2 s
        code, out, err = dagrun_proc.run("status", "--json")
        assert code == 0, err
        seen.append(json.loads(out)["build"])
        return seen[-1]["counts"]["running"] == 2

    wait_for(both_running, "status shows two running tasks")
    build = seen[-1]
    assert build["state"] == "running"
    assert build["counts"] == {
        "ready": 1, "waiting": 1, "running": 2, "succeeded": 0, "failed": 0,
        "interrupted": 0, "not_run": 0, "up_to_date": 0,
    }
    assert sorted((r["task"], r["executor"]) for r in build["running"]) == [
        ("a", "local"), ("c", "local"),
    ]
    stop_and_expect_130(p, signal.SIGINT, to_group=True, groups=groups)
    build = json.loads(dagrun_proc.run("status", "--json")[1])["build"]
    assert build["state"] == "finished" and build["exit_status"] == 130
    assert (build["counts"]["interrupted"], build["counts"]["not_run"]) == (2, 2)
