"""Processes a job left behind outside its process group (``setsid`` daemons), found by a mark.

Every local job's environment carries ``DAGRUN_JOB=<pid>.<executor>.<job id>``.  A
process that escaped the job's process group (``setsid``, a double fork) still
carries it: ``/proc/PID/environ`` is the environment it was started with, and
its own children inherit it.  So when a job ends abnormally (timed out,
cancelled, killed by a signal), and once when the build ends, every process
whose environment holds the mark is killed.  Reading the environment of every
process costs a few milliseconds, paid only then, never per task; a task pays
one more environment variable.

What it cannot catch: a process started with a clean environment (``env -i``,
``sudo``, ``systemd-run``), and anything left when dagrun itself is killed with
SIGKILL (a cgroup would catch both; this machine class has no delegated one).
"""

from __future__ import annotations

import os
import signal

from ..remote_run import MARK, alive, marked

__all__ = ["MARK", "job_mark", "sweep"]


def job_mark(build: int | str, job: int) -> str:
    """The value of MARK for one job of ``build`` (a process id, or ``pid.executor``)."""
    return f"{build}.{job}"


def sweep(value_prefix: str, rounds: int = 3, since: int | None = None) -> int:
    """SIGKILL every other process whose MARK starts with ``value_prefix``; how many were found.

    A value prefix ending in ``.`` names a whole build; ``job_mark(...)`` one job
    (matched exactly).  Repeated while any is found, for a process forking meanwhile.
    ``since``: the pid of the first process that may carry the mark (the job's, or the
    build's first job's): only processes from there up are read while pids have not wrapped
    (``remote_run.marked``), so a server's build reads a few environments instead of every one
    (~0.8 ms).  A process caught in the middle of an exec is read again until its new
    environment shows.
    """
    exact = not value_prefix.endswith(".")
    needle = f"\0{MARK}={value_prefix}".encode() + (b"\0" if exact else b"")
    killed: set[int] = set()
    for _ in range(rounds):
        found = marked([needle], since)
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        killed.update(found)
        if not found:
            break
    _wait_dead(killed)
    return len(killed)


def _wait_dead(pids: set[int], timeout: float = 1.0) -> None:
    """Wait (a bounded moment) until each killed process is gone or a zombie: SIGKILL is
    delivered when the process next runs, which on a busy machine is not at once."""
    import time

    end = time.monotonic() + timeout
    left = set(pids)
    while left and time.monotonic() < end:
        left = {pid for pid in left if alive(pid)}
        if left:
            time.sleep(0.002)
