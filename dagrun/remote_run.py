"""Runs a task's command as the leader of a process group of its own, and stops that group.

The one runner for every place a task runs away from the local executor's
epoll: a Dask worker imports this module by name, an SSH host runs this file's
own text (``python3 -I -S -c``, see ``ssh.WRAPPER``), and so does a Slurm job
(``.dagrun/slurm/wrapper.py``, see ``slurm_job.wrapper_text``).  So it needs only
the standard library, imports nothing of dagrun, and imports at the top only
what the SSH side needs (a host pays for its imports on every job).

Stopping a task's group is one sequence, ``stop_group``: SIGINT and SIGTERM to
the whole group, then SIGKILL once ``grace`` seconds have passed or the leader
has ended (what it left in the group gets no more time).  The local executor
runs the same steps as deadlines on its epoll (``ask_to_stop``, then ``killpg``
SIGKILL at its kill time), since it cannot block on one job.

On an SSH host (``ssh_main``): the command starts only when the runner says so
(a runner whose connection is gone before that never starts it), the group id
is printed first (``PGID_MARK``) and the end last (``END_MARK``: exit status,
max RSS, duration), both on stderr.  stdin is the connection: "c" then EOF is a
cancel (the group is stopped with grace), a bare EOF a lost connection (SIGKILL
at once: the task will run again elsewhere).

In a Slurm job (``slurm_main``): the command's output goes straight to the run
folder, the timeout and Slurm's SIGTERM stop the group, and a report file says
how it ended (slurm_job.py reads it).

On a Dask worker (``run_command``): the command's group is recorded in a
*marker* file in a per-build folder of the worker's machine
(``marker_dir(token)``); a *cancel* file there, or the timeout, stops it.
``kill_jobs`` runs on every worker (``client.run``) to stop jobs: it writes a
cancel file for each job (so one that has not started its command yet never
will) and signals the marked groups.  A worker that died mid-task leaves its
command running with no one waiting for it; ``kill_jobs`` kills such orphans
at once (the marker names the worker process).
"""

# No ``from __future__ import annotations``: a host's python3 may be 3.6 (RHEL 8's platform
# python), so annotations that python would evaluate are strings.
import os
import select
import signal
import sys
import threading
import time

TYPE_CHECKING = False  # not typing's: an SSH host imports as little as it can
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Mapping
    from typing import IO, Any

MAX_OUTPUT = 1 << 20  # bytes of a stream sent back; a longer one is cut
POLL = 0.2  # seconds between looks for a cancel file while a command runs
PGID_MARK = "@@dagrun-pgid "
END_MARK = "\n@@dagrun-end "


# -- a task's process group


def killpg(pgid: int, sig: int) -> None:
    """``sig`` to the group; quiet when it is gone already."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def ask_to_stop(pgid: int) -> None:
    """The first step of stopping a task: SIGINT and SIGTERM to its whole group."""
    killpg(pgid, signal.SIGINT)
    killpg(pgid, signal.SIGTERM)


def stop_group(pgid: int, grace: float,
               ended: "Callable[[float], object]" = time.sleep) -> None:
    """Stop a task's group: ``ask_to_stop``, then SIGKILL once ``ended(grace)`` returns (it
    returns when the leader has ended or ``grace`` seconds have passed)."""
    ask_to_stop(pgid)
    ended(grace)
    killpg(pgid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (not gone, not a zombie waiting for its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True  # no /proc: kill() said it is there
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def exit_code(status: int) -> int:
    """A wait status as an exit code (negative: the signal); also on an old python3."""
    if hasattr(os, "waitstatus_to_exitcode"):
        return os.waitstatus_to_exitcode(status)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


# -- on an SSH host


def ssh_main(argv: "list[str]") -> None:
    """``CMD GRACE``: run CMD in its own session, reporting on stderr; stdin is the channel."""
    cmd, grace = argv[0], float(argv[1])
    started = time.time()
    pid, go = _fork_held(cmd)
    sys.stderr.write(f"{PGID_MARK}{pid}\n")
    sys.stderr.flush()
    if select.select([0], [], [], 0)[0]:
        sys.exit(0)  # the channel ended before the command started: it never starts
    os.write(go, b"x")
    reaped = threading.Event()
    stopped = threading.Event()
    threading.Thread(target=_watch_channel, args=(pid, grace, reaped, stopped),
                     daemon=True).start()
    _, status, usage = os.wait4(pid, 0)
    reaped.set()
    if stopped.is_set():
        killpg(pid, signal.SIGKILL)  # what the command left in its group
    try:
        sys.stderr.write(f"{END_MARK}{exit_code(status)} {usage.ru_maxrss} "
                         f"{time.time() - started:.6f}\n")
        sys.stderr.flush()
    except OSError:
        pass


def _fork_held(cmd: str) -> "tuple[int, int]":
    """A child leading a new session that runs ``sh -c cmd`` once "x" comes down the returned
    pipe (and never if the pipe closes first): (its pid, the pipe's write end)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.setsid()
        os.close(w)
        if os.read(r, 1) != b"x":
            os._exit(111)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.execv("/bin/sh", ["/bin/sh", "-c", cmd])
    os.close(r)
    return pid, w


def _watch_channel(pid: int, grace: float, reaped: "threading.Event",
                   stopped: "threading.Event") -> None:
    """Read the channel to its end: "c" stops the group with grace, a bare end at once."""
    data = b""
    while True:
        try:
            chunk = os.read(0, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            break
        data += chunk
    stopped.set()
    if b"c" in data:
        stop_group(pid, grace, reaped.wait)
    else:
        killpg(pid, signal.SIGKILL)  # a lost connection: the task will run again elsewhere


# -- in a Slurm job


def slurm_main(argv: "list[str]") -> None:
    """``RUN TIMEOUT GRACE`` in a Slurm job: RUN/slurm-cmd.sh runs with its output going to
    RUN's stdout.txt and stderr.txt; the timeout (0: none) and Slurm's SIGTERM (``scancel``,
    its time limit, preemption) stop its group, a second one kills it; at the end
    RUN/slurm-report.json, written by a rename (whole or absent)."""
    run, timeout, grace = argv[0], float(argv[1]), float(argv[2])
    with open(os.path.join(run, "slurm-cmd.sh")) as f:
        cmd = f.read()
    started = time.time()
    pid = _fork_into(cmd, run)
    why: "dict[str, str]" = {}
    reaped = threading.Event()

    def stop(reason: str) -> None:  # a signal handler: on the main thread, between bytecodes
        if why:
            killpg(pid, signal.SIGKILL)
            return
        why[reason] = reason
        threading.Thread(target=stop_group, args=(pid, grace, reaped.wait), daemon=True).start()

    signal.signal(signal.SIGALRM, lambda s, f: stop("timed_out"))
    signal.signal(signal.SIGTERM, lambda s, f: stop("killed"))
    signal.signal(signal.SIGINT, lambda s, f: stop("killed"))
    if timeout > 0:
        signal.setitimer(signal.ITIMER_REAL, timeout)
    _, status, usage = os.wait4(pid, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    reaped.set()
    killpg(pid, signal.SIGKILL)  # what the command left in its group
    _report(run, {"job": os.environ.get("SLURM_JOB_ID"), "exit_code": exit_code(status),
                  "maxrss_kb": usage.ru_maxrss, "duration": time.time() - started,
                  "timed_out": "timed_out" in why, "killed": "killed" in why})


def _fork_into(cmd: str, run: str) -> int:
    """A child leading a new session that runs ``sh -c cmd``, its output into ``run``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    out = os.open(os.path.join(run, "stdout.txt"), flags, 0o644)
    err = os.open(os.path.join(run, "stderr.txt"), flags, 0o644)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.execv("/bin/sh", ["/bin/sh", "-c", cmd])
    os.close(out)
    os.close(err)
    return pid


def _report(run: str, report: "dict[str, Any]") -> None:
    import json  # see marker_dir

    tmp = os.path.join(run, ".slurm-report.tmp")
    with open(tmp, "w") as f:
        json.dump(report, f)
    os.rename(tmp, os.path.join(run, "slurm-report.json"))


# -- on a Dask worker


def dask_setup(worker: "Any") -> None:
    """Dask preload hook for the LocalCluster dagrun starts: the worker leaves dagrun's process
    group, so a terminal's Ctrl-C stops the build (which then closes the cluster in order)
    instead of killing the workers under their running commands."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass


def marker_dir(token: str) -> str:
    """This machine's folder for one build's markers (``token`` names the build)."""
    import tempfile  # not at the top: an SSH host runs this file per job and needs none of it

    return os.path.join(tempfile.gettempdir(), f"dagrun-dask-{os.getuid()}", token)


def run_command(
    token: str,
    job_id: int,
    cmd: str,
    cwd: str,
    env: "Mapping[str, str]",
    inherit: bool,
    timeout: "float | None",
    grace: float,
    limit: int = MAX_OUTPUT,
) -> "dict[str, Any]":
    """Run ``cmd`` with ``sh -c`` in ``cwd``; ``inherit``: on top of this worker's environment.
    A plain dict: exit code, duration, max RSS, output (at most ``limit`` bytes a stream)."""
    import tempfile  # see marker_dir

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
            proc = _start(cmd, cwd, full, out, err)
        except OSError as exc:
            return {"code": None, "duration": 0.0, "error": f"cannot start: {exc.strerror or exc}"}
        _write(base + ".pgid", f"{proc.pid} {os.getpid()}\n")
        try:
            status, rss, timed_out = _wait(proc, base, timeout, grace)
        finally:
            _remove(base + ".pgid")
        return {
            "code": exit_code(status), "duration": time.monotonic() - started,
            "maxrss_kb": rss, "timed_out": timed_out,
            "stdout": _read_back(out, limit), "stderr": _read_back(err, limit),
            "host": os.uname().nodename, "pid": os.getpid(),
        }


def _start(cmd: str, cwd: str, env: "Mapping[str, str]", out: "IO[bytes]",
           err: "IO[bytes]") -> "subprocess.Popen[bytes]":
    import subprocess  # see marker_dir

    return subprocess.Popen(
        ["/bin/sh", "-c", cmd], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        stdout=out, stderr=err, start_new_session=True,
    )


def _wait(
    proc: "subprocess.Popen[bytes]", base: str, timeout: "float | None", grace: float
) -> "tuple[int, int, bool]":
    """Wait for the command, stopping it on timeout or a cancel file: (wait status, max RSS in
    KiB, timed out)."""
    pid = proc.pid
    fd = os.pidfd_open(pid)
    try:
        why = _watch_marker(fd, base, timeout)
        if why != "ended":
            stop_group(pid, grace, lambda t: select.select([fd], [], [], t)[0])
        _, status, usage = os.wait4(pid, 0)
        proc.returncode = exit_code(status)  # reaped here, not by Popen
        return status, int(usage.ru_maxrss), why == "timeout"
    finally:
        os.close(fd)


def _watch_marker(fd: int, base: str, timeout: "float | None") -> str:
    """Until the command ends ("ended"), its timeout passes ("timeout") or a cancel file
    appears ("cancel")."""
    deadline = time.monotonic() + timeout if timeout else None
    while True:
        now = time.monotonic()
        wake = now + POLL if deadline is None else min(deadline, now + POLL)
        if select.select([fd], [], [], max(0.0, wake - now))[0]:
            return "ended"
        if deadline is not None and time.monotonic() >= deadline:
            return "timeout"
        if os.path.exists(base + ".cancel"):
            return "cancel"


def kill_jobs(
    token: str, job_ids: "list[int]", force: bool = False, cancel: bool = True
) -> "list[int]":
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
        import shutil  # see marker_dir

        shutil.rmtree(folder, ignore_errors=True)
    return len(killed)


def _kill_marked(base: str, sig: int) -> bool:
    """Signal the group in ``base.pgid`` (SIGTERM: ``ask_to_stop``); SIGKILL when the worker
    that ran it is gone (an orphan: nobody will follow up with SIGKILL)."""
    try:
        with open(base + ".pgid") as f:
            pgid, worker = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return False
    if not alive(worker):
        killpg(pgid, signal.SIGKILL)
    elif sig == signal.SIGTERM:
        ask_to_stop(pgid)
    else:
        killpg(pgid, sig)
    return True


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _read_back(f: "IO[bytes]", limit: int) -> str:
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return ""
    f.seek(0)
    text: str = f.read(min(size, limit)).decode("utf-8", "replace")
    if size > limit:
        text += f"\n[dagrun: output cut at {limit} of {size} bytes]\n"
    return text
