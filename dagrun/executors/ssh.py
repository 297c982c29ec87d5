"""Runs jobs on another host through the system's OpenSSH client, over one shared connection.

``start()`` opens one ControlMaster connection per executor (``ssh -N -f``,
its socket under ``.dagrun/ssh/``, or under a private folder in /tmp when that
path is too long for a unix socket) and checks that the host runs
``python3``; no job then costs a handshake.

At the first job, one channel on that connection starts dagrun's runner on the
host (``ssh_resident.Resident``: ``python3 -c`` with remote_run.py's own text
and its ``resident_main``, the one runner that also runs Dask workers' and
Slurm jobs' commands); it stays for the build, and every job is a request to
it: it runs ``sh -c CMD`` in ``workspace``/cwd as the leader of a new session,
with the job's environment and DAGRUN_*, and streams back its group id, its
output (into the run folder here, as it comes) and its exit status, max RSS and
duration.  A cancel (timeout, Ctrl-C, ``dagrun cancel``) asks it to stop the
job's whole group (``remote_run.stop_group``'s steps: SIGINT and SIGTERM, then
SIGKILL after ``grace_period``; a ``force`` cancel: SIGKILL at once).  Its
stdin is the connection: when it ends (a dropped connection, a build gone) the
runner SIGKILLs every job's group at once, since they will run again, and a job
that came with that end never starts.  A job whose end never came back, and
that was not cancelled, is *lost*: its group is killed over a new connection
too (if the host can be reached) before it runs again, and the next job starts
a new runner.  Copies (``stage = "rsync"``) and kills that bypass the runner
take channels of their own, at most ``max_sessions - 2`` at once (sshd's
MaxSessions, 10 by default: one channel is the runner's, one stays free).

A function task (``job.call``) becomes a command run by the host's ``python``
with dagrun (``remote_call.py``): its request goes as one more input, its result
comes back as one more output and is checked by digest before it is stored.

``stage = "rsync"`` copies the job's declared inputs to the workspace before it
runs, and its declared outputs back after, with ``tar`` over the same
connection (no rsync needed on either side); a missing output fails the job.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .. import remote_run, runs
from ..errors import ExecutorError
from ..executor_options import effective
from ..fs import unlink_quietly as _unlink
from ..state import STATE_DIR
from . import Context, Job, Outcome, fetched, remote_call
from .ssh_resident import PROGRAM, Resident, Slot
from .threaded import ThreadedExecutor

_SOCKET_MAX = 100  # sun_path is 108 bytes; ssh appends a temporary suffix while binding
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/._+-]+")
PERSIST = 120  # seconds an idle master stays (not "yes": none may outlive a build for long)
RECONNECT = 15.0  # seconds to keep trying to reopen a dropped master (an sshd restarting)
_WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC  # a job's output files here


class SshExecutor(ThreadedExecutor):
    """Jobs on one SSH host; see the module docstring."""

    def __init__(
        self,
        name: str,
        host: str,
        *,
        state_dir: str,
        user: str | None = None,
        port: int | None = None,
        identity_file: str | None = None,
        ssh_options: Sequence[str] = (),
        workspace: str | None = None,
        max_jobs: int = 4,
        max_sessions: int = 10,
        stage: str = "shared",
        environ: Mapping[str, str] | None = None,
        grace: float = 3.0,
        python: str = "python3",
    ) -> None:
        super().__init__(name, max_jobs)
        self.python = python  # runs function tasks (remote_call.py)
        self.host = host
        self.user = user
        self.port = port
        self.identity_file = identity_file
        self.ssh_options = tuple(ssh_options)
        self.workspace = workspace
        self.stage = stage
        self.environ = dict(environ) if environ is not None else None  # env_inherit
        self.grace = grace
        self.control_path = control_path(state_dir, name, host)
        # channels of stage = "rsync" copies: one stays for the runner, one to kill a job
        self.channels = threading.BoundedSemaphore(max(1, max_sessions - 2))
        self.master_pid: int | None = None
        self.reachable = False
        self._master_lock = threading.Lock()
        self._runner: Resident | None = None
        self._resident_lock = threading.Lock()
        self._slots: dict[int, tuple[Resident, Slot, str]] = {}  # job id -> its runner, run/
        self._cancelled: set[int] = set()

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any], context: Context) -> SshExecutor:
        opts = effective("ssh", options)  # checked when the manifest was read
        identity = opts.get("identity_file")
        if identity:
            identity = os.path.join(context.root, os.path.expanduser(identity))
        return cls(
            name,
            opts["host"],
            state_dir=context.state_dir,
            user=opts.get("user") or None,
            port=opts.get("port"),
            identity_file=identity,
            ssh_options=tuple(opts["ssh_options"]),
            workspace=opts.get("workspace"),
            max_jobs=opts["max_jobs"],
            max_sessions=opts["max_sessions"],
            stage=opts["stage"],
            environ=context.environ if opts["env_inherit"] else None,
            grace=opts["grace_period"],
            python=opts["python"],
        )

    # -- the connection

    @property
    def where(self) -> str:
        host = f"{self.user}@{self.host}" if self.user else self.host
        return f"{host}:{self.port}" if self.port else host

    def ssh_argv(self, *extra: str, master: bool = False) -> list[str]:
        """The ssh command line for this host; jobs go through the master's socket."""
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        argv += ["-o", f"ControlPath={self.control_path}"]
        if master:
            argv += ["-o", "ControlMaster=yes", "-o", f"ControlPersist={PERSIST}"]
        else:
            argv += ["-o", "ControlMaster=no"]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.identity_file:
            argv += ["-i", self.identity_file, "-o", "IdentitiesOnly=yes"]
        if self.user:
            argv += ["-l", self.user]
        return argv + list(self.ssh_options) + list(extra) + [self.host]

    def start(self) -> None:
        """Open the master connection and check the host; ExecutorError if it cannot be used."""
        if self.identity_file and not os.access(self.identity_file, os.R_OK):
            why = "does not exist" if not os.path.exists(self.identity_file) else "is not readable"
            raise ExecutorError(  # ssh only warns, then says "Permission denied"
                f"executor '{self.name}': identity_file {self.identity_file} {why}"
            )
        self._open_master()
        probe = self._run_remote("command -v python3 >/dev/null && echo ok")
        if probe.returncode != 0 or b"ok" not in probe.stdout:
            self.close()
            raise ExecutorError(
                f"executor '{self.name}': host {self.where} has no python3 (dagrun needs it there "
                "to run and stop tasks)"
            )
        self.reachable = True

    def _open_master(self) -> None:
        os.makedirs(os.path.dirname(self.control_path), mode=0o700, exist_ok=True)
        _unlink(self.control_path)
        with tempfile.TemporaryFile() as err:  # not a pipe: the master keeps it open
            try:
                rc = subprocess.run(
                    self.ssh_argv("-N", "-f", master=True),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    timeout=60, start_new_session=True,
                ).returncode
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise ExecutorError(
                    f"executor '{self.name}': cannot connect to {self.where}: {exc}"
                ) from exc
            err.seek(0)
            message = err.read().decode(errors="replace").strip()
        if rc != 0:
            last = message.splitlines()[-1] if message else f"ssh exited with {rc}"
            raise ExecutorError(f"executor '{self.name}': cannot connect to {self.where}: {last}")
        self.master_pid = self._check_master()

    def _check_master(self) -> int | None:
        out = subprocess.run(
            self.ssh_argv("-O", "check"), stdin=subprocess.DEVNULL,
            capture_output=True, timeout=30,
        )
        text = out.stderr.decode(errors="replace")
        if out.returncode != 0 or "pid=" not in text:
            return None
        return int(text.split("pid=", 1)[1].split(")", 1)[0])

    def _ensure_master(self) -> None:
        """Reopen the master if it died (a dropped connection, an idle one timed out), trying
        again with back-off for ``RECONNECT`` seconds (an sshd restarting); jobs never
        handshake alone."""
        with self._master_lock:
            if self.master_pid is not None and remote_run.alive(self.master_pid):
                return
            end, pause = time.monotonic() + RECONNECT, 0.1
            while True:
                try:
                    self._open_master()
                    return
                except ExecutorError:
                    if time.monotonic() + pause > end:
                        raise
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    def _run_remote(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.ssh_argv() + [_sh(script)], stdin=subprocess.DEVNULL,
            capture_output=True, timeout=timeout, start_new_session=True,
        )

    def close(self) -> None:
        """Stop the master: ``-O exit`` through its socket, or by its pid when the socket is
        gone (removed by a task, a tmp cleaner): no authenticated connection outlives a build."""
        super().close()
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        if self.master_pid is not None or os.path.exists(self.control_path):
            subprocess.run(
                self.ssh_argv("-O", "exit"), stdin=subprocess.DEVNULL, capture_output=True,
                timeout=30,
            )
        if self.master_pid is not None and _is_master(self.master_pid, self.control_path):
            try:
                os.kill(self.master_pid, signal.SIGTERM)
            except OSError:
                pass
        self.master_pid = None
        _unlink(self.control_path)

    # -- one job, in its own thread

    def run(self, job: Job, cancel: threading.Event) -> Outcome:
        runs.make_dir(job.run_dir)  # the output comes into it as the job runs (dagrun tail)
        if job.call is not None:
            outcome, written = self._run_call(job, cancel)
        else:
            outcome, written = self._attempt(job, cancel)
        return runs.settle(job, outcome, lambda: self._command_text(job), written=written)

    def _attempt(self, job: Job, cancel: threading.Event) -> tuple[Outcome, bool]:
        """The job's outcome, and whether its output files are written in its run folder."""
        started = time.monotonic()
        if self.stage == "rsync":
            self._ensure_master()
            with self.channels:
                error = self._send_inputs(job)
            if error is not None:
                return Outcome(job.id, None, time.monotonic() - started, error=error), False
        outcome = self._execute(job, cancel, started)
        if outcome.ok and self.stage == "rsync":
            with self.channels:
                error = self._fetch_outputs(job)
            if error is not None:
                outcome = outcome.failed(error)
        return outcome, True

    def _run_call(self, job: Job, cancel: threading.Event) -> tuple[Outcome, bool]:
        """A function task: a command that runs it with the host's dagrun (remote_call.py)."""
        command = remote_call.prepare(job, shlex.quote(self.python))
        if isinstance(command, Outcome):
            return command, False
        outcome, written = self._attempt(command, cancel)
        return remote_call.finish(job, outcome, f"host {self.where}"), written

    def _command_text(self, job: Job) -> str:
        """The job's command.txt (runs.py)."""
        cwd = f"{self.workspace or job.root}/{job.cwd}"
        return runs.command_text(job, [f"executor: {self.name} (ssh)", f"host: {self.where}"],
                                 cwd=cwd)

    def _remote_dir(self, job: Job) -> str:
        """The workspace (default: the same folder as here), as a shell word."""
        base = self.workspace or job.root
        return _path_word(base)

    def request(self, job: Job) -> dict[str, Any]:
        """What the runner on the host needs to start ``job`` (remote_run.resident_main)."""
        env = dict(self.environ or {})
        env.update(job.env)
        parents = sorted({os.path.dirname(o) for o in job.outputs if not o.startswith("/")} - {""})
        return {"cmd": job.cmd, "ws": self.workspace or job.root, "cwd": job.cwd, "mk": parents,
                "env": {k: v for k, v in env.items() if _name_ok(k)}, "grace": self.grace}

    def _resident(self) -> Resident:
        """The runner on the host, started (over a live master) if there is none or it ended."""
        with self._resident_lock:
            if self._runner is not None and self._runner.alive:
                return self._runner
            if self._runner is not None:
                self._runner.close()  # it ended: its jobs are lost
                self._runner = None
            self._ensure_master()
            runner = Resident(self.ssh_argv() + [_sh(
                "exec python3 -I -S -c " + shlex.quote(PROGRAM))])
            why = runner.wait_ready()
            if why is not None:
                raise ExecutorError(f"executor '{self.name}': cannot start dagrun's runner on "
                                    f"{self.where}: {why}")
            self._runner = runner
            return runner

    def _execute(self, job: Job, cancel: threading.Event, started: float) -> Outcome:
        run = job.run_dir + "/"
        runner = self._resident()
        out = os.open(run + "stdout.txt", _WRITE, 0o644)
        err = os.open(run + "stderr.txt", _WRITE, 0o644)
        slot = Slot(out, err)
        try:
            self._slots[job.id] = (runner, slot, run)
            runner.run(job.id, self.request(job), slot)
            if cancel.is_set():
                self.cancel(job.id)
            timed_out = self._wait(runner, slot, job)
        finally:
            runner.forget(job.id)
            self._slots.pop(job.id, None)
            os.close(out)
            os.close(err)
        return self._outcome(job, slot, timed_out, time.monotonic() - started)

    def _outcome(self, job: Job, slot: Slot, timed_out: bool, duration: float) -> Outcome:
        run = job.run_dir + "/"
        stdout, stderr = runs.read_file(run + "stdout.txt"), runs.read_file(run + "stderr.txt")
        cancelled = job.id in self._cancelled
        self._cancelled.discard(job.id)
        if slot.end is not None:
            code, rss, _remote_duration = slot.end
            return Outcome(job.id, code, duration, stdout, stderr, timed_out, rss)
        if cancelled or timed_out:
            return Outcome(job.id, -15, duration, stdout, stderr, timed_out)
        if slot.error is not None:  # the host answered: it could not start the command
            error = f"cannot start on {self.where}: {slot.error}"
            return Outcome(job.id, None, duration, stdout, stderr, error=error)
        if slot.pgid is not None:
            self._kill_orphan(slot.pgid)
        error = f"connection to {self.where} lost: {slot.lost or 'no answer'}"
        return Outcome(job.id, None, duration, stdout, stderr, error=error, lost=True)

    def _wait(self, runner: Resident, slot: Slot, job: Job) -> bool:
        """Wait for the job's end; past its timeout, cancel it.  True if it timed out."""
        if slot.done.wait(job.timeout):
            return False
        self.cancel(job.id)  # the timeout: the runner stops the group
        if not slot.done.wait(self.grace + 5):
            self._kill_now(job.id)  # the runner did not answer: kill it over another channel
            slot.done.wait(5)
        return True

    def _kill_orphan(self, pgid: int) -> None:
        """A lost job's group, killed over a new connection before the job runs again: its
        runner does so itself when its channel closes, unless the host never noticed (a
        network split); if the host cannot be reached either, it will notice when it can."""
        try:
            self._ensure_master()
            self._run_remote(f"kill -KILL -{pgid} 2>/dev/null; true", timeout=15)
        except (ExecutorError, OSError, subprocess.TimeoutExpired):
            pass

    def job_where(self, job_id: int) -> str:
        return f"ssh {self.where}"

    def job_output(self, job_id: int) -> tuple[str, str] | None:
        """The files the job's output comes into as it runs (None before it is sent)."""
        held = self._slots.get(job_id)
        if held is None:
            return None
        return held[2] + "stdout.txt", held[2] + "stderr.txt"

    def cancel(self, job_id: int) -> None:
        """Ask the runner on the host to stop the job's process group (SIGINT+SIGTERM, SIGKILL
        after the grace period; at once when forced)."""
        super().cancel(job_id)
        self._cancelled.add(job_id)
        held = self._slots.get(job_id)
        if held is not None:
            held[0].cancel(job_id, now=self.force.is_set())

    def _kill_now(self, job_id: int) -> None:
        """SIGKILL the job's group on the host over a second channel (the runner is stuck)."""
        held = self._slots.get(job_id)
        pgid = held[1].pgid if held is not None else None
        if held is not None:
            held[0].cancel(job_id, now=True)
        if pgid is not None:
            try:
                self._run_remote(f"kill -KILL -{pgid} 2>/dev/null; true")  # dash: no "--"
            except (OSError, subprocess.TimeoutExpired):
                pass

    def cancel_all(self, *, force: bool = False) -> list[Outcome]:
        if force:
            self.force.set()
        for job_id in list(self._cancels):
            self.cancel(job_id)
        return super().cancel_all(force=force)

    # -- stage = "rsync": tar over the same connection

    def _send_inputs(self, job: Job) -> str | None:
        files = [p for p in job.inputs if not p.startswith("/")]
        if not files:
            return None
        ws = self._remote_dir(job)
        tar = subprocess.Popen(
            ["tar", "-C", job.root, "-cf", "-", "--", *files], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )
        ssh = subprocess.run(
            self.ssh_argv() + [_sh(f"mkdir -p {ws} && tar -C {ws} -xf -")], stdin=tar.stdout,
            capture_output=True, start_new_session=True,
        )
        assert tar.stdout is not None and tar.stderr is not None
        tar.stdout.close()
        tar_err = tar.stderr.read().decode(errors="replace").strip()
        tar.stderr.close()
        if tar.wait() != 0 or ssh.returncode != 0:  # every line: the first says what failed
            why = " / ".join(x for x in (tar_err, ssh.stderr.decode(errors="replace").strip()) if x)
            return f"cannot send the inputs to {self.where}: {' / '.join(why.splitlines())}"
        return None

    def _fetch_outputs(self, job: Job) -> str | None:
        """The declared outputs, and the depfile if the command wrote one (dagrun reads it here;
        a missing one is the depfile check's to report)."""
        outs = [p for p in job.outputs if not p.startswith("/")]
        if not outs and not job.depfile:
            return None
        ws = self._remote_dir(job)
        words = " ".join(shlex.quote(o) for o in outs)
        depfile = shlex.quote(job.depfile) if job.depfile else ""
        script = (
            f"cd {ws} || exit 1; for f in {words}; do [ -e \"$f\" ] || "
            f"echo \"@@missing $f\" >&2; done; for f in {words}; do [ -e \"$f\" ] || exit 3; done; "
            + (f"[ -e {depfile} ] && set -- {depfile}; " if depfile else "set --; ")
            + (f"exec tar -cf - -- {words} \"$@\"" if words else
               "[ $# -gt 0 ] || exec tar -cf - -T /dev/null; exec tar -cf - -- \"$@\"")
        )
        ssh = subprocess.Popen(
            self.ssh_argv() + [_sh(script)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True,
        )
        staging = _staging(job.root)  # the host is not trusted with this machine: fetched.py
        names = [*outs, job.depfile] if job.depfile else outs  # only these are unpacked
        try:
            tar = subprocess.run(
                ["tar", "-C", staging, *fetched.TAR_FLAGS, "-xf", "-", "--", *names],
                stdin=ssh.stdout, capture_output=True,
                env={**os.environ, "LC_ALL": "C"},  # _only_absent reads its English messages
            )
            if job.depfile and tar.returncode != 0 and _only_absent(tar.stderr, job.depfile):
                tar = subprocess.CompletedProcess(tar.args, 0, tar.stdout, b"")  # not written
            if job.depfile and os.path.lexists(os.path.join(staging, job.depfile)):
                outs = [*outs, job.depfile]  # checked and moved in like an output
            error = self._fetched(ssh, tar, staging, job.root, outs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return error

    def _fetched(
        self, ssh: subprocess.Popen[bytes], tar: subprocess.CompletedProcess[bytes],
        staging: str, root: str, outs: list[str],
    ) -> str | None:
        """The fetch's end: its errors, else the outputs checked and moved into the project."""
        assert ssh.stdout is not None and ssh.stderr is not None
        ssh.stdout.close()
        err = ssh.stderr.read().decode(errors="replace")
        ssh.stderr.close()
        rc = ssh.wait()
        missing = [ln.split(" ", 1)[1] for ln in err.splitlines() if ln.startswith("@@missing ")]
        if missing:
            return f"declared output {missing[0]} was not written on {self.where}"
        if rc != 0 or tar.returncode != 0:
            why = err.strip() or tar.stderr.decode(errors="replace").strip()
            return f"cannot fetch the outputs from {self.where}: {why}"
        problem = fetched.adopt(staging, root, outs)
        return None if problem is None else f"{problem} (from {self.where})"


# -- helpers


def control_path(state_dir: str, name: str, host: str) -> str:
    """``.dagrun/ssh/NAME.sock``, or a short private path in /tmp when that is too long for a
    socket or not a plain word for ssh (a space splits ``-o ControlPath=``, ``%`` starts a
    token, quotes are parsed: a project in "my 100% files" could not connect)."""
    path = os.path.join(state_dir, "ssh", f"{name}.sock")
    if len(path) <= _SOCKET_MAX and _PLAIN_PATH.fullmatch(path):
        return path
    digest = hashlib.blake2b(f"{state_dir}\0{name}\0{host}".encode(), digest_size=8).hexdigest()
    return os.path.join(tempfile.gettempdir(), f"dagrun-{os.getuid()}", f"{digest}.sock")


def _only_absent(stderr: bytes, name: str) -> bool:
    """Whether tar's only complaint is that ``name`` is not in the archive (a task that wrote
    no depfile: the depfile check reports it)."""
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    absent = f"{name}: Not found in archive"
    return bool(lines) and all(
        ln.endswith(absent) or "Exiting with failure status" in ln for ln in lines
    )


def _staging(root: str) -> str:
    """A fresh private folder in ``.dagrun/ssh/`` (the project's file system) to unpack into."""
    folder = os.path.join(root, STATE_DIR, "ssh")
    os.makedirs(folder, exist_ok=True)
    return tempfile.mkdtemp(prefix="fetch-", dir=folder)


def _sh(script: str) -> str:
    """A remote command line that runs ``script`` with /bin/sh whatever the login shell is."""
    return "exec /bin/sh -c " + shlex.quote(script)


def _path_word(path: str) -> str:
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _name_ok(name: str) -> bool:
    return name.replace("_", "a").isalnum() and not name[:1].isdigit()


def _is_master(pid: int, control_path: str) -> bool:
    """Whether ``pid`` is still our master (an ssh with our socket), not a recycled pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f"ControlPath={control_path}".encode() in f.read().split(b"\0")
    except OSError:
        return False
