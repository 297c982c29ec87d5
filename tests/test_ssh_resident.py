"""The SSH runner (remote_run.resident_main) driven through its client (executors/ssh_resident.py)
over plain pipes, no sshd: under this python3 and the oldest one a host may have (3.6)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from realproc import wait_for

from dagrun.executors.ssh_resident import PROGRAM, Resident, Slot

OLD = "/root/.pyenv/versions/3.6.15/bin/python3"
PYTHONS = [sys.executable, OLD if os.path.exists(OLD) else shutil.which("python3.6") or OLD]


def request(root: Path, cmd: str, **extra: object) -> dict[str, object]:
    return {"cmd": cmd, "ws": str(root), "cwd": ".", "mk": [], "env": {}, "grace": 0.5, **extra}


def group_alive(pgid: int) -> list[int]:
    """The group's processes that are not zombies."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.info["pid"]) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p.info["pid"])
        except (ProcessLookupError, psutil.Error):
            pass
    return found


@pytest.mark.parametrize("python", PYTHONS, ids=["this", "3.6"])
def test_the_runner_runs_stops_and_abandons_jobs(python: str, tmp_path: Path) -> None:
    if not os.path.exists(python):
        pytest.skip("no python3.6 here")
    out, err = os.open(tmp_path / "o", os.O_WRONLY | os.O_CREAT), os.open(
        tmp_path / "e", os.O_WRONLY | os.O_CREAT)
    runner = Resident([python, "-I", "-S", "-c", PROGRAM])
    try:
        assert runner.wait_ready(30) is None
        first = Slot(out, err)
        runner.run(1, request(tmp_path, 'echo "$X $PWD"; echo e >&2; exit 3', cwd="sub",
                              mk=["a/b"], env={"X": "x y"}), first)
        assert first.done.wait(10) and first.end is not None and first.end[0] == 3
        assert (tmp_path / "o").read_text() == f"x y {tmp_path}/sub\n"
        assert (tmp_path / "e").read_text() == "e\n" and (tmp_path / "a" / "b").is_dir()
        stubborn = Slot(out, err)
        runner.run(2, request(tmp_path, "trap '' INT TERM; touch armed; sleep 105"), stubborn)
        wait_for(lambda: (tmp_path / "armed").exists(), "the trap set")
        runner.cancel(2)  # SIGKILL after the grace period
        assert stubborn.done.wait(10) and stubborn.end is not None and stubborn.end[0] == -9
        failed = Slot(out, err)
        (tmp_path / "nowhere").write_text("a file in the way")
        runner.run(3, request(tmp_path / "nowhere" / "x", "true"), failed)
        assert failed.done.wait(10) and failed.error, failed.end
        left = Slot(out, err)
        runner.run(4, request(tmp_path, "echo $$ > pid; sleep 106 & sleep 107"), left)
        end = time.monotonic() + 10
        while not (tmp_path / "pid").exists() or left.pgid is None:
            assert time.monotonic() < end
            time.sleep(0.02)
    finally:
        runner.close()  # the end of its stdin: every group is killed at once
    assert left.done.wait(10) and left.lost is not None
    pgid = int((tmp_path / "pid").read_text())
    end = time.monotonic() + 2
    while group_alive(pgid):
        assert time.monotonic() < end, "the group outlived its runner's stdin"
        time.sleep(0.02)
    os.close(out)
    os.close(err)
