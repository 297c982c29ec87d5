"""``kill -9`` mid-build and a torn completion log: the next run goes on, nothing twice more."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from realproc import (
    DagrunProcs,
    logged_tasks,
    tally,
    wait_for,
)

pytestmark = pytest.mark.slow



TASKS = 30
JOBS = 2


def chain_manifest(n: int) -> str:
    """Short tasks appending their name to ``tally``; two in three depend on the one before."""
    parts = []
    for i in range(n):
        deps = f'deps = ["t{i - 1}"]' if i % 3 else ""
        parts.append(f'[tasks.t{i}]\ncmd = "echo t{i} >> tally; sleep 0.03"\n{deps}\n')
    return "\n".join(parts)


def test_kill_9_mid_build_then_rebuild_runs_each_task_at_most_once_more(
    dagrun_proc: DagrunProcs,
) -> None:
    root = dagrun_proc.root
    dagrun_proc.manifest(chain_manifest(TASKS))
    p = dagrun_proc.start("build", "-j", str(JOBS))
    wait_for(lambda: sum(tally(root / "tally").values()) >= TASKS // 3, "a third of the tasks")
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=10)
    assert p.returncode == -signal.SIGKILL
    logged_before = logged_tasks(root)
    assert 0 < len(logged_before) < TASKS

    code, out, err = dagrun_proc.run("build", "-j", str(JOBS))
    assert code == 0, (out, err)
    assert "Traceback" not in err
    counts = tally(root / "tally")
    assert sorted(counts) == sorted(f"t{i}" for i in range(TASKS))
    assert set(counts.values()) <= {1, 2}
    assert all(counts[t] == 1 for t in logged_before)  # what was logged is never redone
    twice = [t for t, c in counts.items() if c == 2]
    assert len(twice) <= JOBS, twice  # only the tasks running at the kill run again
    assert sorted(logged_tasks(root)) == sorted(f"t{i}" for i in range(TASKS))

    code, out, err = dagrun_proc.run("build")
    assert code == 0, (out, err)
    assert "no work to do" in out
    assert tally(root / "tally") == counts


def _cut_last_record(log: Path) -> str:
    """Cut the log's last record in half, as a kill mid-write would; returns that record's task."""
    data = log.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    last = data[start:]
    log.write_bytes(data[: start + len(last) // 2])
    return str(last.split(b'"')[3].decode())


@pytest.mark.parametrize("damage", ["cut", "garbage"])
def test_a_torn_last_record_is_ignored_with_a_warning(
    dagrun_proc: DagrunProcs, damage: str
) -> None:
    root = dagrun_proc.root
    dagrun_proc.manifest(
        """
        [tasks.a]
        cmd = "echo a >> tally"
        [tasks.b]
        cmd = "echo b >> tally"
        deps = ["a"]
        [tasks.c]
        cmd = "echo c >> tally"
        deps = ["b"]
        """
    )
    assert dagrun_proc.run("build")[0] == 0
    log = root / ".dagrun" / "log"
    if damage == "cut":
        torn = _cut_last_record(log)
        assert torn == "c"
        expected = {"a": 1, "b": 1, "c": 2}
    else:
        with log.open("ab") as f:
            f.write(b'{"task":"b","key":"0123')
        expected = {"a": 1, "b": 1, "c": 1}

    code, out, err = dagrun_proc.run("build")
    assert code == 0, (out, err)
    assert "Traceback" not in err
    assert "warning:" in err and "torn last record" in err
    assert tally(root / "tally") == expected
    assert sorted(logged_tasks(root)) == ["a", "b", "c"]  # parses whole again

    code, out, err = dagrun_proc.run("build")
    assert (code, err) == (0, "")
    assert "no work to do" in out
