"""What one Slurm batch job of dagrun is: its sbatch line, its script, its report, its state.

The job's script runs dagrun's runner (``remote_run.slurm_main``; remote_run.py's
text is written once to ``.dagrun/slurm/wrapper.py``) in the task's cwd: it
starts ``sh -c CMD`` as the leader of a new session with stdout and stderr going
straight to the run folder, enforces the task's ``timeout`` itself (Slurm's
``--time`` has minute steps; it is set a little above, as a backstop), turns
Slurm's SIGTERM (``scancel``, a time limit, preemption) into INT+TERM to the
whole group and KILL after the grace period (``remote_run.stop_group``), and
writes ``slurm-report.json`` (exit status, max RSS, duration, whether it timed
out or was killed) with a rename, so a report is either whole or absent.  That
report is the exit code and RSS when Slurm's accounting is off (as on a single
node); ``sacct`` is asked only for jobs that ended without one.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from .. import remote_run

REPORT = "slurm-report.json"
SCRIPT = "slurm-job.sh"
CMD_FILE = "slurm-cmd.sh"
SLURM_OUT = "slurm.out"  # sbatch's own --output: the wrapper's errors, Slurm's messages

# Slurm's job states (squeue --states=all / sacct), by what dagrun makes of them
ACTIVE = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
    "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD",
})
LOST = frozenset({"NODE_FAIL", "PREEMPTED", "BOOT_FAIL"})  # Slurm lost it: run it again

# keys of the executor table and of a task's ``slurm = {...}`` that become sbatch options
SBATCH_KEYS = ("partition", "account", "qos", "mem")

def wrapper_text() -> str:
    """``.dagrun/slurm/wrapper.py``: remote_run.py's own text, then its ``slurm_main``, so that
    a Slurm job runs the same runner as an SSH host or a Dask worker, not a copy."""
    with open(remote_run.__file__, encoding="utf-8") as f:
        return f.read() + "\nslurm_main(sys.argv[1:])\n"


class Report(NamedTuple):
    """What the job's wrapper wrote when the command ended."""

    exit_code: int
    maxrss_kb: int
    duration: float
    timed_out: bool
    killed: bool  # it got SIGTERM from Slurm (scancel, time limit, preemption)


def read_report(run_dir: str) -> Report | None:
    """The job's report, or None while there is none (or it is not whole)."""
    try:
        with open(os.path.join(run_dir, REPORT), encoding="utf-8") as f:
            data = json.load(f)
        return Report(int(data["exit_code"]), int(data["maxrss_kb"]), float(data["duration"]),
                      bool(data["timed_out"]), bool(data["killed"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def time_limit(timeout: float | None, grace: float) -> str | None:
    """``--time`` in whole minutes, above ``timeout`` plus the grace (the wrapper keeps the
    exact timeout; Slurm's limit only catches a wrapper that could not)."""
    if timeout is None:
        return None
    return str(math.ceil((timeout + grace) / 60.0) + 1)


_NAME = re.compile(r"[^A-Za-z0-9._=+@,\[\]-]")


def sbatch_argv(
    *,
    task: str,
    cwd: str,
    run_dir: str,
    threads: int,
    limit: str | None,
    options: Mapping[str, Any],
    script: str,
) -> list[str]:
    """The sbatch command line; ``options`` are the executor's merged with the task's."""
    argv = [
        "sbatch", "--parsable", f"--job-name=dagrun:{_NAME.sub('_', task)[:100]}",
        f"--chdir={cwd}", f"--output={os.path.join(run_dir, SLURM_OUT).replace('%', '%%')}",
        "--no-requeue", f"--cpus-per-task={threads}",
    ]
    if limit is not None:
        argv.append(f"--time={limit}")
    for key in SBATCH_KEYS:
        value = options.get(key)
        if value not in (None, ""):
            argv.append(f"--{key}={value}")
    argv.extend(str(o) for o in options.get("sbatch_options", ()))
    argv.append(script)
    return argv


def merged(base: Mapping[str, Any], task: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """The executor's sbatch settings with a task's ``slurm = {...}`` over them (its
    ``sbatch_options`` come after the executor's, so they win where sbatch takes the last)."""
    out = dict(base)
    for key, value in task:
        if key == "sbatch_options":
            out[key] = (*base.get(key, ()), *value)
        else:
            out[key] = value
    return out


def script_text(python: str, wrapper: str, run_dir: str, timeout: float | None,
                grace: float) -> str:
    import shlex

    args = " ".join(shlex.quote(a) for a in (run_dir, str(timeout or 0), str(grace)))
    return f"#!/bin/sh\nexec {shlex.quote(python)} {shlex.quote(wrapper)} {args}\n"


def parse_squeue(text: str) -> dict[str, str]:
    """``squeue -h -o '%i %T'`` lines -> {job id: state}."""
    states = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            states[parts[0]] = parts[1].rstrip("+")
    return states


def parse_sacct(text: str) -> dict[str, tuple[str, str]]:
    """``sacct -n -P -X -o JobID,State,ExitCode`` lines -> {job id: (state, exit code)}."""
    out = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) >= 3:
            out[parts[0]] = (parts[1].split()[0].rstrip("+") if parts[1] else "", parts[2])
    return out
