"""What a Dask worker runs for one dagrun task: a shell command in its own session.

Workers import this module by name, so it imports nothing heavy (no dask, no
dagrun package modules beyond this file).  ``run_command`` starts ``sh -c CMD``
as the leader of a new session, records its process group in a *marker* file
in a per-build folder of the worker's machine (``marker_dir(token)``), waits
for it (killing the group on timeout or when a *cancel* file appears), and
returns a plain dict: exit code, duration, max RSS, output (size-limited).

``kill_jobs`` runs on every worker (``client.run``) to stop jobs: it writes a
cancel file for each job (so one that has not started its command yet never
will) and signals the marked process groups.  A worker that died mid-task
leaves its command running with no one waiting for it; ``kill_jobs`` kills such
orphans at once (the marker names the worker process), and ``run_command``
kills an earlier attempt of the same job on the same machine before it starts.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from typing import Any

MAX_OUTPUT = 1 << 20  # bytes of a stream sent back; a longer one is cut
POLL = 0.2  # seconds between looks for a cancel file while a command runs


def dask_setup(worker: Any) -> None:
    """Dask preload hook for the LocalCluster dagrun starts: the worker leaves dagrun's process
    group, so a terminal's Ctrl-C stops the build (which then closes the cluster in order)
    instead of killing the workers under their running commands."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass


def marker_dir(token: str) -> str:
    """This machine's folder for one build's markers (``token`` names the build)."""
    return os.path.join(tempfile.gettempdir(), f"dagrun-dask-{os.getuid()}", token)


def run_command(
    token: str,
    job_id: int,
    cmd: str,
    cwd: str,
    env: Mapping[str, str],
    inherit: bool,
    timeout: float | None,
    grace: float,
    limit: int = MAX_OUTPUT,
) -> dict[str, Any]:
    """Run ``cmd`` with ``sh -c`` in ``cwd``; ``inherit``: on top of this worker's environment."""
    folder = marker_dir(token)
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, str(job_id))
    if os.path.exists(base + ".cancel"):
        return {"code": None, "duration": 0.0, "error": "cancelled"}
    _kill_marked(base, signal.SIGKILL)  # an earlier attempt whose worker died
    full = dict(os.environ) if inherit else {}
    full.update(env)
    with tempfile.TemporaryFile(dir=folder) as out, tempfile.TemporaryFile(dir=folder) as err:
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", cmd], cwd=cwd, env=full, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True,
            )
        except OSError as exc:
            return {"code": None, "duration": 0.0, "error": f"cannot start: {exc.strerror or exc}"}
        _write(base + ".pgid", f"{proc.pid} {os.getpid()}\n")
        try:
            status, rss, timed_out = _wait(proc, base, timeout, grace)
        finally:
            _remove(base + ".pgid")
        duration = time.monotonic() - started
        return {
            "code": os.waitstatus_to_exitcode(status),
            "duration": duration,
            "maxrss_kb": rss,
            "timed_out": timed_out,
            "stdout": _read_back(out, limit),
            "stderr": _read_back(err, limit),
            "host": os.uname().nodename,
            "pid": os.getpid(),
        }


def _wait(
    proc: subprocess.Popen[bytes], base: str, timeout: float | None, grace: float
) -> tuple[int, int, bool]:
    """Wait for the command: (wait status, max RSS in KiB, timed out)."""
    pid = proc.pid
    fd = os.pidfd_open(pid)
    deadline = time.monotonic() + timeout if timeout else None
    kill_at: float | None = None
    timed_out = False
    try:
        while True:
            now = time.monotonic()
            wake = min(t for t in (deadline, kill_at, now + POLL) if t is not None)
            if select.select([fd], [], [], max(0.0, wake - now))[0]:
                break
            now = time.monotonic()
            if kill_at is not None and now >= kill_at:
                _killpg(pid, signal.SIGKILL)
                kill_at = None
            elif kill_at is None and deadline is not None and now >= deadline and not timed_out:
                timed_out = True
                kill_at = _terminate(pid, now, grace)
            elif kill_at is None and os.path.exists(base + ".cancel"):
                kill_at = _terminate(pid, now, grace)
                deadline = None
        _, status, usage = os.wait4(pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if timed_out or os.path.exists(base + ".cancel"):
            _killpg(pid, signal.SIGKILL)  # background children left in the group
        return status, int(usage.ru_maxrss), timed_out
    finally:
        os.close(fd)


def _terminate(pgid: int, now: float, grace: float) -> float:
    _killpg(pgid, signal.SIGINT)
    _killpg(pgid, signal.SIGTERM)
    return now + grace


def kill_jobs(
    token: str, job_ids: list[int], force: bool = False, cancel: bool = True
) -> list[int]:
    """Stop these jobs on this machine: cancel files (``cancel``: so none starts later), then
    signal their groups (``force``: SIGKILL, else SIGINT+SIGTERM); returns the ones found."""
    folder = marker_dir(token)
    os.makedirs(folder, exist_ok=True)
    found = []
    for job_id in job_ids:
        base = os.path.join(folder, str(job_id))
        if cancel:
            _write(base + ".cancel", "")
        if _kill_marked(base, signal.SIGKILL if force else signal.SIGTERM):
            found.append(job_id)
    return found


def kill_all(token: str, forget: bool = False) -> int:
    """SIGKILL every marked group of one build on this machine (its end); how many.
    ``forget``: then remove the build's marker folder."""
    folder = marker_dir(token)
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    ids = [int(n[: -len(".pgid")]) for n in names if n.endswith(".pgid")]
    killed = kill_jobs(token, ids, force=True)
    if forget:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return len(killed)


def _kill_marked(base: str, sig: int) -> bool:
    """Signal the group in ``base.pgid``; SIGKILL when the worker that ran it is gone."""
    try:
        with open(base + ".pgid") as f:
            pgid, worker = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return False
    if not _alive(worker):
        sig = signal.SIGKILL  # an orphan: nobody will follow up with SIGKILL
    elif sig == signal.SIGTERM:
        _killpg(pgid, signal.SIGINT)  # like the local executor: SIGINT and SIGTERM
    _killpg(pgid, sig)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _read_back(f: Any, limit: int) -> str:
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return ""
    f.seek(0)
    text: str = f.read(min(size, limit)).decode("utf-8", "replace")
    if size > limit:
        text += f"\n[dagrun: output cut at {limit} of {size} bytes]\n"
    return text
