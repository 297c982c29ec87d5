"""Runs Python function tasks in a pool of long-lived worker processes (``dagrun.pyworker``).

Workers start lazily, on the first function job, and live for the build: up
to ``slots`` plain workers, each running one job at a time (pinned to the
job's leased cores), and one io worker running every ``io_bound`` job
concurrently on an event loop.  Each worker leads its own session, so
killing its process group also kills what the function started.

Waiting: ``fileno()`` is an epoll over the workers' reply pipes; ``deadline()``
is the next job timeout.  A reply pipe that closes while a job runs means
the worker died (segfault, ``os._exit``, killed): that job fails, and the
next job gets a new worker.  A timeout kills a plain worker (SIGKILL to its
group); an io job that times out is cancelled inside the io worker.
``cancel_all`` and ``close`` kill every worker and reap it: nothing is left.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import runs
from ..interrupts import HOLD
from ..pyworker import Request, decode_frames, encode, write_all
from . import Context, Job, Outcome

# The worker imports this very dagrun package (wherever it is, whatever sys.path a fresh
# interpreter has), without putting its folder on sys.path ahead of the standard library.
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BOOT = (
    "import sys, importlib.util as u\n"
    "s = u.spec_from_file_location('dagrun', sys.argv[1] + '/__init__.py',"
    " submodule_search_locations=[sys.argv[1]])\n"
    "m = sys.modules['dagrun'] = u.module_from_spec(s)\n"
    "s.loader.exec_module(m)\n"
    "from dagrun.pyworker import main\n"
    "main(sys.argv[2:])\n"
)


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    requests: int  # our end of its request pipe
    replies: int  # our end of its reply pipe
    io: bool
    buf: bytearray = field(default_factory=bytearray)
    jobs: dict[int, _Running] = field(default_factory=dict)


@dataclass
class _Running:
    job: Job
    worker: _Worker
    started: float
    deadline: float | None
    out: str
    err: str
    timed_out: bool = False


class FunctionPool:
    """The Executor for function tasks (``Job.call`` set); see the module docstring."""

    name = "python"

    def __init__(self, *, slots: int, environ: Mapping[str, str] | None = None) -> None:
        self.slots = max(1, slots)
        self.environ = dict(environ if environ is not None else os.environ)
        self._epoll = select.epoll()
        self._idle: list[_Worker] = []
        self._io: _Worker | None = None
        self._by_fd: dict[int, _Worker] = {}
        self._running: dict[int, _Running] = {}
        self._done: list[Outcome] = []

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any], context: Context) -> FunctionPool:
        return cls(slots=context.jobs, environ=context.environ)

    @property
    def running(self) -> int:
        return len(self._running)

    def start(self) -> None:
        pass

    def fileno(self) -> int:
        return self._epoll.fileno()

    def deadline(self) -> float | None:
        times = [r.deadline for r in self._running.values() if r.deadline is not None]
        return min(times) if times else None

    # -- workers

    def _spawn(self, io: bool, root: str) -> _Worker:
        r_req, w_req = os.pipe()
        r_rep, w_rep = os.pipe()
        argv = [sys.executable, "-c", _BOOT, _PACKAGE, f"--reply={w_rep}"]
        if io:
            argv.append("--io")
        try:
            proc = subprocess.Popen(
                argv, stdin=r_req, pass_fds=(w_rep,), start_new_session=True, env=self.environ,
                cwd=root,
            )
        finally:
            os.close(r_req)
        os.close(w_rep)
        worker = _Worker(proc, w_req, r_rep, io)
        os.set_blocking(r_rep, False)
        self._epoll.register(r_rep, select.EPOLLIN)
        self._by_fd[r_rep] = worker
        write_all(w_req, encode(("init", list(sys.path), root)))
        return worker

    def _worker_for(self, job: Job) -> _Worker:
        if job.call is not None and job.call.io_bound:
            if self._io is None:
                self._io = self._spawn(True, job.root)
            return self._io
        if self._idle:
            return self._idle.pop()
        return self._spawn(False, job.root)

    # -- running

    def submit(self, job: Job) -> None:
        call = job.call
        assert call is not None, "only function jobs come here"
        try:
            run = self._prepare(job)
        except OSError as exc:  # this task's own files: it fails, the build goes on (as local)
            error = runs.reason(
                f"cannot prepare the run folder {os.path.relpath(job.run_dir, job.root)}", exc)
            self._done.append(Outcome(job.id, None, 0.0, error=error))
            return
        req = Request(
            target=call.target, code_file=call.code_file, args=call.args,
            upstream=call.upstream, result_path=os.path.join(call.results_dir, call.key),
            results_dir=call.results_dir, cwd=job.local_cwd, env=tuple(job.env.items()),
            cores=job.cores, stdout=run + "stdout.txt", stderr=run + "stderr.txt",
        )
        with HOLD:  # a Ctrl-C here must not lose a started worker
            try:
                worker = self._worker_for(job)
            except OSError as exc:
                error = f"cannot start a Python worker: {exc.strerror or exc}"
                self._done.append(Outcome(job.id, None, 0.0, error=error))
                return
            started = time.monotonic()
            deadline = started + job.timeout if job.timeout else None
            running = _Running(job, worker, started, deadline, req.stdout, req.stderr)
            worker.jobs[job.id] = running
            self._running[job.id] = running
        message = encode(("run", job.id, req))
        try:
            write_all(worker.requests, message)
        except BrokenPipeError:  # an idle worker that died meanwhile: a new one takes the job
            with HOLD:
                self._forget(worker)
                running.worker = worker = self._worker_for(job)
                worker.jobs[job.id] = running
            self._send_frame(worker, message)

    @staticmethod
    def _prepare(job: Job) -> str:
        """The run folder (its path, with a slash), its command.txt, the outputs' folders."""
        runs.make_dir(job.run_dir)
        for path in job.outputs:
            os.makedirs(os.path.dirname(job.local_path(path)), exist_ok=True)
        run = job.run_dir + "/"
        runs.write_text(run + "command.txt", describe(job))  # the worker truncates the others
        return run

    def _send_frame(self, worker: _Worker, frame: bytes) -> None:
        """A frame to a worker that may have died: its closed reply pipe reports that."""
        try:
            write_all(worker.requests, frame)
        except OSError:
            pass

    def collect(self) -> list[Outcome]:
        return self.wait(timeout=0)

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._done or not self._running:
                done, self._done = self._done, []
                return done
            now = time.monotonic()
            wake = self.deadline()
            if end is not None:
                wake = end if wake is None else min(wake, end)
            events = self._epoll.poll(-1 if wake is None else max(0.0, wake - now))
            with HOLD:
                for fd, _ in events:
                    self._readable(self._by_fd[fd])
                self._enforce_deadlines(time.monotonic())
            if end is not None and time.monotonic() >= end:
                done, self._done = self._done, []
                return done

    def _readable(self, worker: _Worker) -> None:
        try:
            data = os.read(worker.replies, 1 << 16)
        except BlockingIOError:
            return
        if not data:
            self._died(worker)
            return
        worker.buf.extend(data)
        for message in decode_frames(worker.buf):
            _, job_id, code, error = message
            running = worker.jobs.pop(job_id, None)
            if running is None:
                continue  # an io job that had timed out already
            self._running.pop(job_id, None)
            self._done.append(self._outcome(running, code, error))
            if not worker.io:
                self._idle.append(worker)

    def _outcome(
        self, r: _Running, code: int | None, error: str | None, *, timed_out: bool = False
    ) -> Outcome:
        stdout, stderr = runs.read_file(r.out), runs.read_file(r.err)
        outcome = Outcome(
            r.job.id, code, time.monotonic() - r.started, stdout, stderr,
            timed_out=timed_out or r.timed_out, error=error,
        )
        return runs.settle(r.job, outcome, None, written=True)  # kept if it printed or failed

    def _died(self, worker: _Worker) -> None:
        """The worker's reply pipe closed: it is gone; fail its jobs, forget it."""
        status = self._reap(worker)
        what = _death(status)
        for running in list(worker.jobs.values()):
            self._running.pop(running.job.id, None)
            error = None if running.timed_out else f"the Python worker running it {what}"
            self._done.append(self._outcome(running, status, error))
        worker.jobs.clear()

    def _forget(self, worker: _Worker) -> None:
        """A worker that died between jobs: reap it; its job (not started) moves on."""
        worker.jobs.clear()
        self._reap(worker)

    def _reap(self, worker: _Worker) -> int:
        fd = worker.replies
        if fd in self._by_fd:
            self._epoll.unregister(fd)
            del self._by_fd[fd]
            os.close(fd)
            os.close(worker.requests)
        if worker in self._idle:
            self._idle.remove(worker)
        if worker is self._io:
            self._io = None
        _kill(worker, signal.SIGKILL)  # anything the function left in the group
        return worker.proc.wait()

    def _enforce_deadlines(self, now: float) -> None:
        for r in list(self._running.values()):
            if r.deadline is None or now < r.deadline or r.timed_out:
                continue
            r.timed_out = True
            if r.worker.io:  # the others on the loop go on
                r.worker.jobs.pop(r.job.id, None)
                self._running.pop(r.job.id, None)
                self._send(r.worker, ("cancel", r.job.id))
                self._done.append(self._outcome(r, None, None, timed_out=True))
            else:
                _kill(r.worker, signal.SIGKILL)  # its reply pipe closes: _died reports it

    def _send(self, worker: _Worker, message: Any) -> None:
        self._send_frame(worker, encode(message))

    # -- stopping

    def cancel(self, job_id: int) -> None:
        r = self._running.get(job_id)
        if r is None:
            return
        if r.worker.io:
            self._send(r.worker, ("cancel", job_id))
        else:
            _kill(r.worker, signal.SIGKILL)

    def cancel_all(self, *, force: bool = False) -> list[Outcome]:
        """Kill every worker (busy or idle) and its group; the running jobs' outcomes."""
        with HOLD:
            workers = list(self._by_fd.values())
            for w in workers:
                _kill(w, signal.SIGKILL)
            for w in workers:
                self._died(w)
            done, self._done = self._done, []
        return [
            Outcome(o.job_id, o.exit_code, o.duration, o.stdout, o.stderr, o.timed_out,
                    error=o.error if o.timed_out else "interrupted")
            for o in done
        ]

    def close(self) -> None:
        """Stop idle workers (they exit when their request pipe closes); kill the rest."""
        if self._running:
            self.cancel_all(force=True)
        for w in list(self._by_fd.values()):
            self._send(w, ("stop",))
        deadline = time.monotonic() + 2.0
        for w in list(self._by_fd.values()):
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self._reap(w)
        self._epoll.close()


def describe(job: Job) -> str:
    """command.txt of a function task (runs.py)."""
    call = job.call
    assert call is not None
    details = []
    if call.io_bound:
        details.append("io_bound: runs on the io worker's event loop")
    if job.cores:
        details.append("cores: " + ",".join(map(str, job.cores)))
    return runs.command_text(job, details, first=f"call {call.target}")


def _kill(worker: _Worker, sig: int) -> None:
    try:
        os.killpg(worker.proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _death(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"died ({name}); a new worker takes the next job"
    return f"exited with status {status} (os._exit?); a new worker takes the next job"

