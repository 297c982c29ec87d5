"""Runs a task's command as the leader of a process group of its own, and stops that group.

The one runner for every place a task runs away from the local executor's
epoll: a Dask worker imports this module by name, an SSH host runs this file's
own text (``python3 -I -S -c``, once per connection, see ``ssh_resident.PROGRAM``),
and so does a Slurm job (``.dagrun/slurm/wrapper.py``, see
``slurm_job.wrapper_text``).  So it needs only the standard library, imports
nothing of dagrun, and imports at the top only what every side needs.

Stopping a task's group is one sequence, ``stop_group``: SIGINT and SIGTERM to
the whole group, then SIGKILL once ``grace`` seconds have passed or the leader
has ended (what it left in the group gets no more time).  The local executor
runs the same steps as deadlines on its epoll (``ask_to_stop``, then ``killpg``
SIGKILL at its kill time), since it cannot block on one job.

On an SSH host (``resident_main``): one runner per connection runs every job
the executor sends it (JSON lines on stdin), each in a session of its own, and
streams back its group id, its output and its end in frames on stdout
(``FRAME``).  stdin is the connection: a cancel stops one group with grace, a
kill at once; at the end of stdin (a lost connection) every group gets SIGKILL
at once (the tasks will run again elsewhere), and a job that came with that end
never starts.

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
at once (the marker names the worker process).  A worker that died between
starting a command and writing its marker leaves one no marker names: each
command's environment carries ``DAGRUN_JOB=<token>.<job id>`` (``MARK``), and
a forced kill of a job without a marker kills the processes that carry it.
"""

# No ``from __future__ import annotations``: a host's python3 may be 3.6 (RHEL 8's platform
# python), so annotations that python would evaluate are strings.
import os
import select
import signal
import sys  # noqa: F401 - the Slurm job's wrapper text ends with slurm_main(sys.argv[1:])
import threading
import time

TYPE_CHECKING = False  # not typing's: an SSH host imports as little as it can
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Mapping
    from typing import IO, Any

MAX_OUTPUT = 1 << 20  # bytes of a stream sent back; a longer one is cut
POLL = 0.2  # seconds between looks for a cancel file while a command runs


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
    return state(pid) not in (b"Z", b"X")  # None: no /proc, and kill() said it is there


def state(pid: int) -> "bytes | None":
    """The state letter ``/proc/PID/stat`` gives (b"R", b"S", b"T" stopped, b"Z", ...), or
    None when it cannot be read."""
    return _stat(pid)[0] or None


MARK = "DAGRUN_JOB"  # the environment variable that marks a job's processes (executors/sweep.py)
PF_KTHREAD = 0x00200000  # /proc/PID/stat's flags: a kernel thread
EXEC_WAIT = 0.25  # seconds a process showing an empty environment is read again (mid-exec)
_EMPTY = set()  # type: set[tuple[int, bytes]]  # (pid, start time) truly without environment


def marked(needles: "list[bytes]", since: "int | None" = None) -> "list[int]":
    """Every process but this one whose environment (``/proc/PID/environ``: what it was
    started or last exec'd with) holds one of ``needles`` (each ``\\0NAME=VALUE``, and a
    trailing ``\\0`` to match a whole value).

    ``since``: the pid of the first process that may be marked.  The kernel hands out pids
    in increasing order until they wrap, so while the last pid handed out
    (``/proc/loadavg``) is not below it, only processes from ``since`` up are read.  A
    process in the middle of an exec shows an empty environment for a moment (its new
    memory has none yet, or its old one is gone): such a process, unless a zombie or a
    kernel thread, is read again for up to EXEC_WAIT seconds.
    """
    me = os.getpid()
    found = []
    unsure = []
    for pid in _pids(since):
        if pid == me:
            continue
        env = _environ(pid)
        if env:
            if _holds(env, needles):
                found.append(pid)
        elif env is not None and _may_exec(pid):
            unsure.append(pid)
    end = time.monotonic() + EXEC_WAIT
    pause = 0.0005
    while unsure and time.monotonic() < end:
        time.sleep(pause)
        pause = min(pause * 2, 0.01)
        still = []
        for pid in unsure:
            env = _environ(pid)
            if env and _holds(env, needles):
                found.append(pid)
            elif env == b"" and _may_exec(pid):
                still.append(pid)
        unsure = still
    for pid in unsure:  # not an exec: a process started without any environment
        _EMPTY.add((pid, _stat(pid)[1]))
    return found


def _holds(env: bytes, needles: "list[bytes]") -> bool:
    env = b"\0" + env + b"\0"
    return any(needle in env for needle in needles)


def _pids(since: "int | None") -> "list[int]":
    try:
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:  # no /proc: nothing can be found this way
        return []
    if since is not None:
        last = _last_pid()
        if last is not None and last >= since:  # no wrap since ``since`` was handed out
            return [pid for pid in pids if pid >= since]
    return pids


def _last_pid() -> "int | None":
    """The pid the kernel handed out last in this pid namespace (``/proc/loadavg``)."""
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def _environ(pid: int) -> "bytes | None":
    """A process's environment block (None: gone, or another user's).  ``os.open`` and
    ``os.read``: a sweep reads many of them."""
    try:
        fd = os.open("/proc/%d/environ" % pid, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        chunk = os.read(fd, 65536)
        while chunk:
            chunks.append(chunk)
            chunk = os.read(fd, 65536)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks)


def _stat(pid: int) -> "tuple[bytes, bytes, int]":
    """(state letter, start time, flags) from ``/proc/PID/stat`` (the one reader of it: ``state``
    and the sweep's ``_may_exec``); (b"", b"", 0) when it cannot be read."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        return fields[0], fields[19], int(fields[6])
    except (OSError, IndexError, ValueError):
        return b"", b"", 0


def _may_exec(pid: int) -> bool:
    """Whether a process that showed an empty environment may be in the middle of an exec:
    not gone, a zombie or a kernel thread, and not known to have none."""
    letter, started, flags = _stat(pid)
    return letter not in (b"", b"Z", b"X") and not flags & PF_KTHREAD \
        and (pid, started) not in _EMPTY


def exit_code(status: int) -> int:
    """A wait status as an exit code (negative: the signal); also on an old python3."""
    if hasattr(os, "waitstatus_to_exitcode"):
        return os.waitstatus_to_exitcode(status)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


# -- on an SSH host, resident: one runner for every job of a connection


FRAME = ">cII"  # a frame to the executor: kind, job id, payload length; then the payload


def resident_main() -> None:
    """Run jobs as the executor asks (JSON lines on stdin: ``run``, ``cancel``, ``kill``),
    reporting in ``FRAME``s on stdout: "r" ready (this pid), "s" started (the group id), "o"
    and "e" output, "f" could not start (why), "x" ended ("CODE MAXRSS DURATION", once the
    leader is reaped and its output has ended).  stdin is the connection: at its end, or
    when stdout cannot be written, every job's group gets SIGKILL at once and the runner
    exits (the jobs will run again elsewhere)."""
    import json
    import struct

    runner = _Resident(json.loads, struct.Struct(FRAME).pack)
    try:
        runner.loop()
    except (OSError, ValueError):
        pass
    runner.abandon()


class _Job(object):
    __slots__ = ("id", "proc", "fds", "grace", "kill_at", "stopping", "status", "started")

    def __init__(self, job_id: int, proc: "Any", fds: "list[int]", grace: float) -> None:
        self.id, self.proc, self.fds, self.grace = job_id, proc, fds, grace
        self.kill_at = None  # type: Any
        self.stopping = False
        self.status = None  # type: Any
        self.started = time.time()


class _Resident(object):
    """resident_main's state: the running jobs, and one poll over stdin, SIGCHLD and the
    jobs' output pipes."""

    def __init__(self, loads: "Any", pack: "Any") -> None:
        self.loads, self.pack = loads, pack
        self.jobs = {}  # type: dict[int, _Job]
        self.by_pid = {}  # type: dict[int, _Job]
        self.by_fd = {}  # type: dict[int, tuple[_Job, bytes]]
        self.pending = b""
        self.poll = select.poll()
        self.wake, w = os.pipe()
        os.set_blocking(w, False)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        signal.set_wakeup_fd(w)
        self.poll.register(0, select.POLLIN)
        self.poll_stdin = select.poll()
        self.poll_stdin.register(0, select.POLLIN)
        self.poll.register(self.wake, select.POLLIN)

    def send(self, kind: bytes, job_id: int, data: bytes) -> None:
        out = self.pack(kind, job_id, len(data)) + data
        while out:
            out = out[os.write(1, out):]

    def loop(self) -> None:
        self.send(b"r", 0, str(os.getpid()).encode())
        while True:
            due = [j.kill_at for j in self.jobs.values() if j.kill_at is not None]
            wait = None if not due else max(0, int((min(due) - time.monotonic()) * 1000) + 1)
            for fd, _ in self.poll.poll(wait):
                if fd == 0:
                    if not self.requests():
                        return
                elif fd == self.wake:
                    os.read(self.wake, 512)
                    self.reap()
                else:
                    self.output(fd)
            now = time.monotonic()
            for job in list(self.jobs.values()):
                if job.kill_at is not None and now >= job.kill_at:
                    killpg(job.proc.pid, signal.SIGKILL)
                    job.kill_at = None

    def requests(self) -> bool:
        data = os.read(0, 1 << 16)
        while data and self.poll_stdin.poll(0):  # all there is: a job that came with the
            more = os.read(0, 1 << 16)          # connection's end never starts
            if not more:
                return False
            data += more
        if not data:
            return False
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        for line in lines:
            req = self.loads(line.decode())
            job = self.jobs.get(req["id"])
            if req["op"] == "run":
                self.start(req)
            elif job is not None and req["op"] == "cancel":
                self.stop(job, job.grace)
            elif job is not None:
                self.stop(job, 0.0)
        return True

    def start(self, req: "dict[str, Any]") -> None:
        import subprocess

        base = req["ws"]
        if base == "~" or base.startswith("~/"):
            base = os.environ.get("HOME", "/") + base[1:]
        cwd = base if req["cwd"] == "." else base + "/" + req["cwd"]
        env = dict(os.environ)
        env.update(req["env"])
        env["PWD"] = cwd
        pipes = [os.pipe(), os.pipe()]
        try:
            for folder in [cwd] + [base + "/" + p for p in req["mk"]]:
                os.makedirs(folder, exist_ok=True)
            proc = subprocess.Popen(
                ["/bin/sh", "-c", req["cmd"]], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=pipes[0][1], stderr=pipes[1][1], start_new_session=True)
        except (OSError, subprocess.SubprocessError) as exc:
            for fd in pipes[0] + pipes[1]:
                os.close(fd)
            self.send(b"f", req["id"], str(exc).encode("utf-8", "replace"))
            return
        job = _Job(req["id"], proc, [pipes[0][0], pipes[1][0]], float(req["grace"]))
        for n, kind in enumerate((b"o", b"e")):  # no zip(strict=): python 3.6
            os.close(pipes[n][1])
            self.by_fd[pipes[n][0]] = (job, kind)
            self.poll.register(pipes[n][0], select.POLLIN)
        self.jobs[job.id] = job
        self.by_pid[proc.pid] = job
        self.send(b"s", job.id, str(proc.pid).encode())

    def stop(self, job: "_Job", grace: float) -> None:
        """remote_run.stop_group's steps as a deadline: SIGKILL when the leader has ended or
        ``grace`` has passed (at once: ``kill``)."""
        if grace <= 0 or job.status is not None:
            killpg(job.proc.pid, signal.SIGKILL)
            job.kill_at = None
        elif not job.stopping:
            ask_to_stop(job.proc.pid)
            job.kill_at = time.monotonic() + grace
        job.stopping = True

    def reap(self) -> None:
        while self.by_pid:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self.by_pid.pop(pid, None)
            if job is None:
                continue
            job.proc.returncode = exit_code(status)  # reaped here, not by Popen
            job.status = (job.proc.returncode, usage.ru_maxrss)
            if job.stopping:
                killpg(pid, signal.SIGKILL)  # what the command left in its group
                job.kill_at = None
            self.ended(job)

    def output(self, fd: int) -> None:
        job, kind = self.by_fd[fd]
        data = os.read(fd, 1 << 16)
        if data:
            self.send(kind, job.id, data)
            return
        self.poll.unregister(fd)
        os.close(fd)
        del self.by_fd[fd]
        job.fds.remove(fd)
        self.ended(job)

    def ended(self, job: "_Job") -> None:
        if job.status is None or job.fds:
            return
        del self.jobs[job.id]
        code, rss = job.status
        self.send(b"x", job.id, "{} {} {:.6f}".format(
            code, rss, time.time() - job.started).encode())

    def abandon(self) -> None:
        for job in self.jobs.values():
            killpg(job.proc.pid, signal.SIGKILL)


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
    full[MARK] = "%s.%d" % (token, job_id)  # its orphan is found by it before its marker exists
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


def run_commands(token: str, jobs: "list[tuple[Any, ...]]") -> "list[dict[str, Any]]":
    """A pack (dask_batch.py): each job's ``run_command`` arguments after ``token``, run one
    after another; one result each, as ``run_command``'s.  Each job keeps its own cancel file,
    timeout and process group: a cancelled one (killed, or never started) does not stop the
    others; a job that raises has that error as its result."""
    results: "list[dict[str, Any]]" = []
    for args in jobs:
        try:
            results.append(run_command(token, *args))
        except Exception as exc:  # noqa: BLE001 - as a future's own exception: that job's
            results.append({"code": None, "duration": 0.0,
                            "error": f"{type(exc).__name__}: {exc}"})
    return results


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
    unmarked = []
    for job_id in job_ids:
        base = os.path.join(folder, str(job_id))
        if cancel:
            _write(base + ".cancel", "")
        if _kill_marked(base, signal.SIGKILL if force else signal.SIGTERM):
            found.append(job_id)
        elif force:
            unmarked.append(job_id)
    if unmarked:  # started a moment ago (no marker written yet), or not at all: by their mark
        needles = [("\0%s=%s.%d\0" % (MARK, token, i)).encode() for i in unmarked]
        for pid in marked(needles):
            killpg(pid, signal.SIGKILL)  # each command leads its own group
            try:
                os.kill(pid, signal.SIGKILL)  # and a child that left it, marked too
            except (ProcessLookupError, PermissionError):
                pass
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
