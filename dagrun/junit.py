"""A build's records (record.py) -> JUnit XML, the test-report format CI servers read.

One ``<testcase>`` per selected task, in one ``<testsuite>``: a failed task
carries a ``<failure>`` (message: why, text: the tail of its stderr), a task
killed by Ctrl-C an ``<error>``, an up-to-date or not-run task ``<skipped>``.
``time`` is the seconds the task ran, over all its attempts.  The layout is
the Ant/Jenkins one (GitHub, GitLab, Jenkins, Azure and CircleCI read it).
"""

from __future__ import annotations

import datetime
import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass

from .record import Record

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class _Case:
    name: str
    display: str | None = None
    time: float = 0.0
    attempts: int = 0
    last: Record | None = None  # the last "finished" record
    skipped: str | None = None  # why it was skipped (up to date, not run)


def why(record: Record) -> str:
    """``code=2``, ``timeout``, ``killed by signal 9``, dagrun's own reason, ``interrupted``."""
    if record.get("status") == "interrupted":
        return "interrupted"
    if record.get("timed_out"):
        return "timeout"
    if record.get("error"):
        return str(record["error"])
    code = record.get("exit_status")
    if isinstance(code, int) and code < 0:
        return f"killed by signal {-code}"
    return f"code={code}"


def _clean(text: str) -> str:
    return _NOT_XML.sub("\ufffd", _ANSI.sub("", text))


def _cases(records: Iterable[Record]) -> tuple[list[_Case], Record]:
    cases: dict[str, _Case] = {}
    head: Record = {}
    for r in records:
        kind = r["event"]
        if kind == "build_started":
            head = r
            continue
        if "task" not in r:
            continue
        case = cases.setdefault(r["task"], _Case(r["task"]))
        if kind == "planned":
            case.display = r.get("display")
            if not r.get("run"):
                case.skipped = "up to date"
        elif kind == "finished":
            case.attempts += 1
            case.time += float(r.get("duration") or 0.0)
            case.last = r
        elif kind == "not_run":
            case.skipped = f"not run: {r.get('why')}"
        elif kind == "up_to_date":
            case.skipped = "up to date (early cutoff)"
    return list(cases.values()), head


def to_xml(records: Iterable[Record], suite: str = "dagrun") -> str:
    """The JUnit XML document of one build."""
    cases, head = _cases(records)
    ts = ET.Element("testsuite", name=_clean(suite))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total = 0.0
    for case in cases:
        counts["tests"] += 1
        total += case.time
        tc = ET.SubElement(ts, "testcase", name=_clean(case.name), classname="dagrun",
                           time=f"{case.time:.3f}")
        if case.last is not None and case.last.get("job"):  # the executor's job id (Slurm)
            props = ET.SubElement(tc, "properties")
            ET.SubElement(props, "property", name="job", value=_clean(str(case.last["job"])))
        kind = _outcome(tc, case)
        if kind:
            counts[kind] += 1
    when = datetime.datetime.fromtimestamp(float(head.get("time", 0.0)), datetime.timezone.utc)
    attrs = {k: str(v) for k, v in counts.items()}
    ts.attrib.update(attrs, time=f"{total:.3f}", timestamp=when.strftime("%Y-%m-%dT%H:%M:%S"),
                     hostname=socket.gethostname() or "localhost")
    root = ET.Element("testsuites", {"name": "dagrun", "time": f"{total:.3f}", **attrs})
    root.append(ts)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def _outcome(tc: ET.Element, case: _Case) -> str | None:
    """Add the case's child element; return which count it adds to (None: passed)."""
    last = case.last
    if last is not None and last.get("status") == "restored":
        ET.SubElement(tc, "system-out").text = "restored from the shared cache (nothing ran)"
        return None
    if last is None or last.get("status") != "succeeded":
        if last is None or case.skipped:
            ET.SubElement(tc, "skipped", message=_clean(case.skipped or "not run"))
            return "skipped"
        reason = why(last)
        tries = f" after {case.attempts} attempts" if case.attempts > 1 else ""
        label = f" ({case.display})" if case.display else ""
        message = f"FAILED: [{reason}] {case.name}{label}{tries}"
        kind = "error" if reason == "interrupted" else "failure"
        el = ET.SubElement(tc, kind, message=_clean(message), type=_clean(reason))
        el.text = _clean(last.get("stderr_tail") or "")
        return "errors" if kind == "error" else "failures"
    return None
