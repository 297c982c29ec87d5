"""Runs jobs as local processes: one process group each, pinned to leased cores.

Speed matters here (a no-logic spawn costs ~1.2 ms on our machines), so:
- processes start with ``os.posix_spawn`` (no Popen object, no pipes);
- stdout and stderr go straight to files, read back only when non-empty; the
  files are unnamed (``O_TMPFILE`` in the runs folder) until the job ends, and
  the job's run folder (command.txt, stdout.txt, stderr.txt) is made only for a
  job that printed something or failed: a silent success creates no file of
  dagrun's (and removes its previous run's, which would no longer be true);
- a command with no shell syntax is exec'd directly (Make's trick, saves the
  ~0.9 ms of a ``sh``); everything else runs as ``sh -c CMD``;
- ends are awaited on pidfds with one epoll, never by polling.

Every job leads its own process group within dagrun's session (so a terminal's
Ctrl-C reaches dagrun, the foreground group, not the tasks; and, unlike a session
of its own, the kernel's autogroup scheduling gives the tasks dagrun's share of
the CPU, as Make's and Ninja's get, not one share each); killing a job signals
its whole process group: SIGINT and SIGTERM, then SIGKILL once ``grace``
seconds have passed.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import select
import signal
import time
from collections.abc import Mapping
from typing import Any

from .. import remote_run, runs
from ..errors import ExecutorError
from ..executor_options import effective
from ..interrupts import HOLD
from ..runs import make_dir, read_back, reason, write_text
from . import Context, Job, Outcome, cancel_all, sweep

_SIMPLE = re.compile(r"[A-Za-z0-9_./+-][A-Za-z0-9_./:,+@%=-]*(?: +[A-Za-z0-9_./:,+@%=-]+)*")
_SHELL_WORDS = frozenset(
    ". : [ [[ alias bg break cd command continue eval exec exit export false fc fg getopts hash "
    "jobs kill local printf pwd read readonly return set shift source test times trap true type "
    "ulimit umask unalias unset wait echo if then else elif fi for while until do done case esac "
    "in function select time".split()
)
MAX_ARG = 100_000  # bytes of a command passed as an argument; a longer one runs from a file
MAX_POLL = 3600.0  # seconds one epoll wait may last (epoll takes at most ~24.8 days in ms)
_DEFAULT_SIGNALS = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGPIPE", "SIGXFSZ", "SIGXFZ")) if s is not None
)


def direct_argv(cmd: str) -> list[str] | None:
    """The argv of ``cmd`` when running it without a shell changes nothing, else None."""
    if not _SIMPLE.fullmatch(cmd):
        return None
    argv = cmd.split()
    if argv[0] in _SHELL_WORDS or "=" in argv[0]:
        return None
    return argv


class _Proc:
    """A running job's process.  Not a dataclass: ~0.7 ms less per start (bench/IMPORTS.md)."""

    __slots__ = ("job", "pid", "pidfd", "out", "err", "started", "deadline", "kill_at",
                 "timed_out", "signals", "argv", "unnamed")

    def __init__(
        self, job: Job, pid: int, pidfd: int, out: int, err: int, started: float,
        deadline: float | None, argv: list[str], unnamed: bool,
    ) -> None:
        self.job, self.pid, self.pidfd, self.out, self.err = job, pid, pidfd, out, err
        self.started, self.deadline = started, deadline
        self.kill_at: float | None = None
        self.timed_out = False
        self.signals: list[int] = []
        self.argv = argv  # for a kept command.txt
        self.unnamed = unnamed  # the streams are unnamed files, named only if kept


class LocalExecutor:
    """Local processes.  ``numactl``: path to numactl for memory binding, or None.

    A job's environment is ``environ`` (dagrun's own, by default) updated with the job's.
    """

    name = "local"

    def __init__(
        self,
        *,
        grace: float = 3.0,
        numactl: str | None = None,
        environ: Mapping[str, str] | None = None,
        slots: int = 1,
    ) -> None:
        if not hasattr(os, "pidfd_open"):  # pragma: no cover - Linux >= 5.3 has it
            raise ExecutorError("the local executor needs Linux 5.3 or later (pidfd_open)")
        self.grace = grace
        self.numactl = numactl
        self.slots = slots
        self.environ = dict(os.environ if environ is None else environ)
        self._epoll = select.epoll()
        self._procs: dict[int, _Proc] = {}  # pidfd -> process
        self._done: list[Outcome] = []
        self._cwd = os.getcwd()
        self._path = os.environ.get("PATH")
        self._programs: dict[str, str | None] = {}  # a command's name -> its file on the PATH
        self._all_cores: set[int] | None = None
        self._made: set[str] = set()
        self._unnamed = hasattr(os, "O_TMPFILE")  # False once the file system refused one
        # the jobs' environment mark (see sweep.py): this process and this executor, so two
        # executors in one process (API builds, watch rounds) never sweep each other's jobs
        self._build = f"{os.getpid()}.{next(_INSTANCES)}"
        self._submitted = False
        self._first_pid: int | None = None  # of this executor's first job: sweeps start there

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any], context: Context) -> LocalExecutor:
        opts = effective("local", options)  # checked when the manifest was read
        slots = min(context.jobs, opts.get("max_jobs", context.jobs))
        numactl = find_numactl() if "core_pool" in opts else None  # else sched_setaffinity
        return cls(grace=opts["grace_period"], numactl=numactl, environ=context.environ,
                   slots=slots)

    @property
    def running(self) -> int:
        return len(self._procs)

    @property
    def mark_prefix(self) -> str:
        """The start of every job's mark (see sweep.py): ``sweep.sweep(it)`` kills them all."""
        return f"{self._build}."

    def start(self) -> None:
        pass

    def fileno(self) -> int:
        return self._epoll.fileno()

    def deadline(self) -> float | None:
        if self._done:  # ends with no process behind them (aggregates, jobs that could not start)
            return 0.0
        return self._next_deadline()

    def collect(self) -> list[Outcome]:
        return self.wait(timeout=0) if self._procs or self._done else []

    def cancel(self, job_id: int) -> None:
        now = time.monotonic()
        for p in self._procs.values():
            if p.job.id == job_id and p.kill_at is None:
                self._terminate(p, now)

    def kill(self, job_id: int) -> None:
        """SIGKILL one job's group at once, no grace; its outcome comes through ``collect()``."""
        for p in self._procs.values():
            if p.job.id == job_id:
                remote_run.killpg(p.pid, signal.SIGKILL)  # killed by a signal: swept when reaped
    def group_of(self, job_id: int) -> int | None:
        """The process group a running job leads (its pid), or None."""
        p = self._proc_of(job_id)
        return p.pid if p is not None else None

    # -- what `dagrun status`, `tail` and the stall check ask (steering.py)

    def _proc_of(self, job_id: int) -> _Proc | None:
        for p in self._procs.values():
            if p.job.id == job_id:
                return p
        return None

    def job_where(self, job_id: int) -> str | None:
        p = self._proc_of(job_id)
        return "local" if p is None else f"pid {p.pid}"

    def job_output(self, job_id: int) -> tuple[int, int] | None:
        """The job's stdout and stderr so far: its (unnamed) files' descriptors."""
        p = self._proc_of(job_id)
        return None if p is None else (p.out, p.err)

    def job_cpu_time(self, job_id: int) -> float | None:
        """CPU seconds used by the processes of the job's group now, and by those it reaped."""
        p = self._proc_of(job_id)
        return None if p is None else group_cpu_times().get(p.pid, 0.0)

    # -- starting

    def submit(self, job: Job) -> None:
        if not job.cmd:  # an aggregate: nothing to run, done when its dependencies are
            self._done.append(Outcome(job.id, 0, 0.0))
            return
        env = self._env(job)
        argv = self._argv(job, env)
        prepared = self._prepare(job, argv)
        if isinstance(prepared, str):
            self._done.append(Outcome(job.id, None, 0.0, error=prepared))
            return
        out, err, unnamed = prepared
        self._submitted = True
        with HOLD:  # a Ctrl-C landing between spawn and record would lose the process
            started = time.monotonic()
            try:
                pid = self._spawn(job, argv, env, out, err)
            except OSError as exc:
                os.close(out)
                os.close(err)
                why = exc.strerror or str(exc)
                if not os.path.isdir(job.local_cwd):  # made by no task before it, or removed
                    why = f"its cwd {job.local_cwd} does not exist"
                self._done.append(Outcome(job.id, None, 0.0, error=f"cannot start: {why}"))
                return
            pidfd = os.pidfd_open(pid)
            if self._first_pid is None:
                self._first_pid = pid
            deadline = started + job.timeout if job.timeout else None
            self._procs[pidfd] = _Proc(job, pid, pidfd, out, err, started, deadline, argv, unnamed)
            self._epoll.register(pidfd, select.EPOLLIN)

    def _prepare(self, job: Job, argv: list[str]) -> tuple[int, int, bool] | str:
        """The outputs' folders made, the streams opened: (stdout, stderr, unnamed), or why
        that failed (the job fails with it; the build goes on).  Unnamed streams when the file
        system has them (the run folder waits for the job's end), else the run folder now."""
        streams = None
        if argv[-1] != job.run_dir + "/command.sh":  # a long command runs from its run folder
            streams = self._open_unnamed(job)
        if streams is None:
            try:
                make_dir(job.run_dir)
            except OSError as exc:
                return reason(f"cannot make the run folder {job.run_dir}", exc)
        for path in job.outputs:  # like Ninja and Snakemake: output folders exist
            parent = os.path.dirname(job.local_path(path))
            if parent not in self._made:
                try:
                    os.makedirs(parent, exist_ok=True)
                except OSError as exc:
                    if streams is not None:
                        os.close(streams[0])
                        os.close(streams[1])
                    return reason(f"cannot make the folder of output {path}", exc)
                self._made.add(parent)
        if streams is not None:
            return streams[0], streams[1], True
        named = self._open_run_files(job, argv)
        return named if isinstance(named, str) else (named[0], named[1], False)

    def _open_unnamed(self, job: Job) -> tuple[int, int] | None:
        """Two unnamed files in the runs folder (linked into the run folder if kept), or None."""
        if not self._unnamed:
            return None
        runs = os.path.dirname(job.run_dir)
        fds: list[int] = []
        try:
            if runs not in self._made:
                os.makedirs(runs, exist_ok=True)
                self._made.add(runs)
            for _ in range(2):
                fds.append(os.open(runs, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o644))
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                self._unnamed = False  # this file system has no O_TMPFILE: named files from now
            return None  # the named path says what is wrong, if anything
        return fds[0], fds[1]

    def _settle(self, p: _Proc, outcome: Outcome) -> Outcome:
        """A job ended: keep its run folder if it printed or failed, else remove it (and its
        previous run's files); the outcome, failed if the folder could not be kept."""
        if not p.unnamed:  # named files, in the run folder from the start
            return runs.settle(p.job, outcome, None, written=True)
        return runs.settle(p.job, outcome, lambda: self._describe(p.job, p.argv),
                           streams=(p.out, p.err))

    def _open_run_files(self, job: Job, argv: list[str]) -> tuple[int, int] | str:
        run = job.run_dir + "/"  # plain concatenation and os.open: this runs once per task
        name = run + "command.txt"
        fds: list[int] = []
        try:
            write_text(name, self._describe(job, argv))
            if argv[-1] == run + "command.sh":
                name = argv[-1]
                write_text(name, job.cmd + "\n")
            flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            for name in (run + "stdout.txt", run + "stderr.txt"):
                fds.append(os.open(name, flags, 0o644))
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            return reason(f"cannot write {name}", exc)
        return fds[0], fds[1]

    def _env(self, job: Job) -> dict[str, str]:
        env = self.environ.copy()
        env.update(job.env)
        env[sweep.MARK] = sweep.job_mark(self._build, job.id)
        return env

    def _argv(self, job: Job, env: Mapping[str, str]) -> list[str]:
        argv = None
        long = len(job.cmd) > MAX_ARG // 4 and len(job.cmd.encode(errors="replace")) > MAX_ARG
        if long:  # Linux refuses an argument over 128 KiB
            argv = ["/bin/sh", job.run_dir + "/command.sh"]
        elif env.get("PATH") == self._path:
            argv = direct_argv(job.cmd)
        if argv is None:
            argv = ["/bin/sh", "-c", job.cmd]
        if job.cores and self.numactl:
            bind = [self.numactl, "--physcpubind=" + ",".join(map(str, job.cores))]
            if job.numa_node is not None:
                bind.append(f"--membind={job.numa_node}")
            argv = bind + ["--"] + argv
        return argv

    @staticmethod
    def _describe(job: Job, argv: list[str]) -> str:
        details = []
        if argv[:2] != ["/bin/sh", "-c"]:
            details.append("argv: " + " ".join(argv))
        if job.cores:
            details.append("cores: " + ",".join(map(str, job.cores)))
        if job.numa_node is not None:
            details.append(f"numa node: {job.numa_node}")
        return runs.command_text(job, details)

    def _spawn(self, job: Job, argv: list[str], env: Mapping[str, str], out: int, err: int) -> int:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out, 1),
            (os.POSIX_SPAWN_DUP2, err, 2),
        ]
        cwd = job.local_cwd
        moved = cwd != self._cwd
        pinned = bool(job.cores) and not self.numactl
        if moved:
            os.chdir(cwd)  # posix_spawn has no cwd; we are the only thread that spawns
        if pinned:
            if self._all_cores is None:
                self._all_cores = os.sched_getaffinity(0)
            os.sched_setaffinity(0, job.cores)  # this thread only; the child inherits it
        try:
            return self._exec(job, argv, env, actions)
        finally:
            if pinned and self._all_cores is not None:
                os.sched_setaffinity(0, self._all_cores)
            if moved:
                os.chdir(self._cwd)

    def _exec(self, job: Job, argv: list[str], env: Mapping[str, str], actions: list[Any]) -> int:
        """posix_spawn ``argv`` (its program found on the PATH once per build); a program that
        is not there gets the shell's own "not found" (exit 127), as ``sh -c`` would give."""
        program = self._program(argv[0], env)
        try:
            if program is not None:  # found once: the child does not search the PATH again
                return os.posix_spawn(program, argv, env, file_actions=actions, setpgroup=0,
                                      setsigdef=_DEFAULT_SIGNALS)
            return os.posix_spawnp(argv[0], argv, env, file_actions=actions, setpgroup=0,
                                   setsigdef=_DEFAULT_SIGNALS)
        except FileNotFoundError:
            if argv[0] == "/bin/sh" or argv[0] == self.numactl:
                raise
            sh = ["/bin/sh", "-c", job.cmd]
            return os.posix_spawn(sh[0], sh, env, file_actions=actions, setpgroup=0,
                                  setsigdef=_DEFAULT_SIGNALS)

    def _program(self, name: str, env: Mapping[str, str]) -> str | None:
        """The file ``name`` runs, searched on the PATH once per build (None: let posix_spawnp
        search, as execvp does: the job has another PATH, or the PATH has a relative folder)."""
        if "/" in name or env.get("PATH") != self._path:
            return None
        if name in self._programs:
            return self._programs[name]
        folders = (self._path if self._path is not None else os.defpath).split(":")
        found = None
        if all(f.startswith("/") for f in folders):  # else the search depends on the cwd
            for folder in folders:
                path = f"{folder}/{name}"
                if os.path.isfile(path) and os.access(path, os.X_OK):
                    found = path
                    break
        self._programs[name] = found
        return found

    # -- waiting

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        """Block until a job ends (or ``timeout``): the outcomes.  Not the scheduler's way (it
        waits on ``fileno()`` with every other executor), but a single caller's."""
        end = None if timeout is None else time.monotonic() + timeout
        while self._procs and not self._done:
            self._poll(end)
            if end is not None and time.monotonic() >= end:
                break
        done, self._done = self._done, []
        return done

    def _poll(self, end: float | None) -> None:
        """One wait on the pidfds, until ``end`` or the next deadline at the latest: what ended
        is reaped into ``_done``, what is due is signalled."""
        wake = self._next_deadline()
        if end is not None:
            wake = end if wake is None else min(wake, end)
        now = time.monotonic()
        events = self._epoll.poll(-1 if wake is None else min(max(0.0, wake - now), MAX_POLL))
        with HOLD:  # nor lose an end already reaped
            for fd, _ in events:
                self._reap(fd)
        self._enforce_deadlines(time.monotonic())

    def _next_deadline(self) -> float | None:
        best = None
        for p in self._procs.values():
            t = p.kill_at if p.kill_at is not None else p.deadline
            if t is not None and (best is None or t < best):
                best = t
        return best

    def _enforce_deadlines(self, now: float) -> None:
        for p in list(self._procs.values()):
            if p.kill_at is not None and now >= p.kill_at:
                remote_run.killpg(p.pid, signal.SIGKILL)
                p.kill_at = None
            elif p.deadline is not None and now >= p.deadline and not p.timed_out:
                p.timed_out = True
                self._terminate(p, now)

    def _terminate(self, p: _Proc, now: float) -> None:
        """remote_run.stop_group's steps, as deadlines: SIGKILL comes at ``kill_at``."""
        remote_run.ask_to_stop(p.pid)
        p.kill_at = now + self.grace

    def _reap(self, pidfd: int) -> None:
        p = self._procs.pop(pidfd)
        self._epoll.unregister(pidfd)
        _, status, usage = os.wait4(p.pid, 0)
        os.close(pidfd)
        duration = time.monotonic() - p.started
        code = os.waitstatus_to_exitcode(status)
        if p.timed_out or p.kill_at is not None:
            remote_run.killpg(p.pid, signal.SIGKILL)  # background children left in the group
        if p.timed_out or p.kill_at is not None or code < 0:
            sweep.sweep(sweep.job_mark(self._build, p.job.id), since=p.pid)  # those that left
        stdout, stderr = read_back(p.out), read_back(p.err)
        outcome = Outcome(p.job.id, code, duration, stdout, stderr, p.timed_out,
                          int(usage.ru_maxrss))
        outcome = self._settle(p, outcome)
        os.close(p.out)
        os.close(p.err)
        self._done.append(outcome)

    # -- stopping

    def cancel_all(self, *, force: bool = False) -> list[Outcome]:
        """Kill every job's group: SIGINT+SIGTERM, SIGKILL after the grace period (``force``: at
        once).  Interrupted, it keeps what ended for the next call (the scheduler's, forced)."""
        now = time.monotonic()
        for p in self._procs.values():
            if force:
                remote_run.killpg(p.pid, signal.SIGKILL)
            elif p.kill_at is None:
                self._terminate(p, now)
        while self._procs:
            self._poll(time.monotonic() + 0.5)
        self._sweep()
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        if self._procs:
            cancel_all(self, force=True)  # a Ctrl-C meanwhile: it goes on
        self._sweep()
        self._epoll.close()

    def _sweep(self) -> None:
        """Kill what any job of this build left running outside its group (see sweep.py)."""
        if self._submitted:
            sweep.sweep(f"{self._build}.", since=self._first_pid)


_INSTANCES = itertools.count(1)


_CPU_SCAN: list[Any] = [0.0, {}]  # (when, {process group: CPU seconds}): one scan per check


def group_cpu_times(fresh_for: float = 0.5) -> dict[int, float]:
    """CPU seconds (user + system, with reaped children) per process group, from /proc."""
    now = time.monotonic()
    if now - _CPU_SCAN[0] < fresh_for:
        return dict(_CPU_SCAN[1])
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        group = int(fields[2])  # state, ppid, pgrp, ...: field 5 of stat(5)
        used = sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
        found[group] = found.get(group, 0.0) + used
    _CPU_SCAN[:] = [now, found]
    return dict(found)


def find_numactl() -> str | None:
    import shutil  # not at the top: shutil (with bz2, lzma) costs ~1.5 MB and ~2 ms per start

    return shutil.which("numactl")
