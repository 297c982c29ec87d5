"""Helpers for tests that run the real ``dagrun`` CLI as a separate process.

Each CLI process is started in its own session (``start_new_session=True``),
so a signal sent to its group reaches it the way a terminal's Ctrl-C reaches a
foreground job; the tasks it starts lead sessions of their own.  The
``dagrun_proc`` fixture (built on ``dagrun_procs``) kills, at teardown, whatever a failing test left
behind: the CLI's group and every group recorded with ``watch_group``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

DEADLINE = 15.0  # seconds any single wait in these tests may take before it fails


class DagrunProcs:
    """Starts ``python -m dagrun`` in a folder and cleans up after it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[subprocess.Popen[str]] = []
        self.groups: set[int] = set()

    def manifest(self, text: str) -> None:
        (self.root / "dagrun.toml").write_text(textwrap.dedent(text))

    def start(
        self, *args: str, stderr: Path | None = None, nohup: bool = False
    ) -> subprocess.Popen[str]:
        """Start the CLI; stderr goes to a pipe, or to the file ``stderr`` (readable meanwhile).

        ``nohup``: start it with SIGHUP ignored, as ``nohup`` does.
        """
        err = stderr.open("w") if stderr is not None else subprocess.PIPE
        p = subprocess.Popen(
            ["nohup"] * nohup + [sys.executable, "-m", "dagrun", "--progress", "plain", *args],
            cwd=self.root,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        if stderr is not None:
            err.close()  # type: ignore[union-attr]
        self.started.append(p)
        return p

    def run(self, *args: str, timeout: float = DEADLINE) -> tuple[int, str, str]:
        p = self.start(*args)
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err

    def watch_group(self, pgid: int) -> int:
        self.groups.add(pgid)
        return pgid

    def task_pid(self, name: str) -> int:
        """The pid (= process group) a task wrote to ``pids/<name>``; waits for the file."""
        path = self.root / "pids" / name
        wait_for(lambda: path.exists() and path.read_text().strip() != "", f"{path} written")
        return self.watch_group(int(path.read_text()))

    def cleanup(self) -> None:
        for p in self.started:
            if p.poll() is None:
                _killpg(p.pid)
                p.communicate(timeout=DEADLINE)
        for pgid in self.groups:
            _killpg(pgid)


def dagrun_procs(tmp_path: Path) -> Iterator[DagrunProcs]:
    """The body of the ``dagrun_proc`` fixture (tests/conftest.py)."""
    procs = DagrunProcs(tmp_path)
    (tmp_path / "pids").mkdir()
    try:
        yield procs
    finally:
        procs.cleanup()


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``condition`` (file appearances have no cheaper portable event) until true."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        time.sleep(0.01)


def live_in_groups(pgids: set[int]) -> list[str]:
    """Processes (zombies excepted: they are dead) that are still in one of ``pgids``."""
    found = []
    for proc in psutil.process_iter(["pid", "status", "cmdline"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(proc.pid) in pgids:
                found.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])}")
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def live_in_folder(root: Path) -> list[str]:
    """Processes (zombies excepted) whose working folder is ``root``: a build's leftovers."""
    found = []
    for proc in psutil.process_iter(["pid", "status", "cwd", "cmdline"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and proc.info["cwd"] == str(root):
            found.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])}")
    return found


def assert_groups_gone(pgids: set[int], grace: float = 2.0) -> None:
    """Every process of ``pgids`` is gone (SIGKILL'd processes may take a moment to die)."""
    end = time.monotonic() + grace
    left = live_in_groups(pgids)
    while left and time.monotonic() < end:
        time.sleep(0.02)
        left = live_in_groups(pgids)
    assert left == [], f"processes left behind: {left}"


def stop_and_expect_130(
    p: subprocess.Popen[str], sig: int, *, to_group: bool, groups: set[int]
) -> tuple[str, str]:
    """Send ``sig`` to dagrun (or its whole group, as a terminal would); it must exit 130 within
    3 s with no traceback and leave no process in ``groups``.  Returns (stdout, stderr)."""
    sent = time.monotonic()
    if to_group:
        os.killpg(p.pid, sig)
    else:
        os.kill(p.pid, sig)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 130, (out, err)
    assert time.monotonic() - sent < 3.0
    assert "Traceback" not in err
    assert_groups_gone(groups)
    return out, err


def logged_tasks(root: Path) -> list[str]:
    """Task names recorded in the completion log, in order; every record must parse."""
    lines = (root / ".dagrun" / "log").read_text().splitlines()
    assert lines[0] == "# dagrun log v2"
    tasks = []
    for line in lines[1:]:
        record = json.loads(line)
        if "task" in record:
            tasks.append(record["task"])
    return tasks


def tally(path: Path) -> Counter[str]:
    """How many times each task appended its name to a shared tally file."""
    if not path.exists():
        return Counter()
    return Counter(path.read_text().split())
