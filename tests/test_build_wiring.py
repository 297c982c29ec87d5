"""build.py: executors of one build, created only when needed, started first, closed at the end."""

from __future__ import annotations

import io
import time
from pathlib import Path

import psutil
import pytest

from dagrun.errors import ExecutorError
from dagrun.executors import Job
from dagrun.executors.fake import FakeExecutor
from dagrun.executors.local import LocalExecutor
from dagrun.report import PlainReporter
from dagrun.session import Session

MANIFEST = """
[executors.lab]
type = "ssh"
host = "nowhere.invalid"
[tasks.slow]
cmd = "echo $$ > slow.pid; sleep 30"
[tasks.remote]
executor = "lab"
deps = ["later"]
cmd = "true"
[tasks.later]
executor = "lab"
cmd = "true"
"""


class BrokenSubmit(FakeExecutor):
    def submit(self, job: Job) -> None:
        deadline = time.monotonic() + 10
        pid = Path(job.root) / "slow.pid"
        while not pid.exists() or not pid.read_text().strip():  # the local task runs by now
            assert time.monotonic() < deadline
            time.sleep(0.01)
        raise ExecutorError("the cluster went away")


@pytest.mark.slow
def test_a_submit_that_raises_kills_the_others_and_reports_the_summary(tmp_path):
    (tmp_path / "dagrun.toml").write_text(MANIFEST)
    local = LocalExecutor(grace=0.5)
    session = Session(manifest_path=str(tmp_path / "dagrun.toml"),
                      executor_factory=lambda g: {"local": local, "lab": BrokenSubmit(name="lab")})
    out = io.StringIO()
    with pytest.raises(ExecutorError, match=r"^executor 'lab' could not start task 'later': "
                                            r"the cluster went away$"):
        session.build(reporter=PlainReporter(out))
    text = out.getvalue()
    assert "FAILED: [the cluster went away] later" in text
    assert "dagrun: 0 succeeded, 0 up to date, 2 failed, 1 not run" in text
    pid = int((tmp_path / "slow.pid").read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (tmp_path / ".dagrun" / "log").read_text().count('"task"')


def test_only_the_executors_the_plan_needs_are_created(tmp_path):
    from dagrun import build

    (tmp_path / "dagrun.toml").write_text(MANIFEST)
    session = Session(manifest_path=str(tmp_path / "dagrun.toml"))
    prep = session.plan(["slow"])
    assert build.needed(prep.graph, prep.plan) == ["local"]  # no connection to 'lab' is tried
    prep = session.plan()
    assert build.needed(prep.graph, prep.plan) == ["local", "lab"]
