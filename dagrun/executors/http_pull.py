"""HTTP pull workers: the build serves its jobs, ``dagrun worker URL`` processes lease and run them.

    scheduler thread                 server thread (asyncio, http_server.Server)
    submit(job) -> Broker.add ---->  POST /lease      (long poll) -> jobs, each under a lease
    cancel(id)  -> Broker.cancel ->  POST /heartbeat  (long poll) -> leases to kill, leases gone
    collect()  <- Completions  <---  POST /report     -> Outcome (409: a lease that moved on)
                                     GET/PUT /files   (stage = "http"), GET /status
                                     every tick: silent leases expire -> Outcome(lost=True)

The protocol is documented in docs/http-protocol.md; the manifest keys in docs/http.md.
The Broker (http_broker.py) holds all state under one lock; the scheduler's thread and
the server's thread (through http_routes.Routes) both call it.  The completion log and
reporters stay on the scheduler's thread: the server only posts Outcomes.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from .. import runs
from ..errors import ExecutorError
from ..executor_options import effective
from . import Context, Job, Outcome, cancel_all, remote_call
from .http_broker import DEFAULT_LEASE_TIMEOUT, Broker
from .http_fleet import Fleet
from .http_routes import STATUS_EVERY, Routes
from .http_server import Server, tls_context
from .threaded import Completions, wait_on

__all__ = ["HttpExecutor", "Options", "Routes"]

PYTHON = '"${DAGRUN_PYTHON:-python3}"'  # function tasks: the worker's Python (worker.py)
SWITCH_INTERVAL = 0.0005  # seconds a thread holds the GIL while another waits for it


def _describe(job: Job, executor: str, worker: str, run_dir: Any) -> str:
    """The job's command.txt (runs.py): the worker that ran it, and its run folder there."""
    details = [f"executor: {executor} (http)", f"worker: {worker}"]
    if run_dir:
        details.append(f"worker's run folder: {run_dir}")
    return runs.command_text(job, details)


@dataclass(frozen=True)
class Options:
    bind: str = "127.0.0.1:0"
    provisioner: str | None = None
    deprovisioner: str | None = None
    max_workers: int = 1
    max_jobs: int = 64
    lease_timeout: float = DEFAULT_LEASE_TIMEOUT
    stage: str = "shared"
    tls_cert: str | None = None
    tls_key: str | None = None
    grace_period: float = 5.0
    worker_timeout: float = 300.0


class HttpExecutor:
    """Jobs leased to pull workers over HTTP (see the module docstring and docs/http.md)."""

    def __init__(self, name: str, options: Options, context: Context) -> None:
        self.name = name
        self.options = options
        self.context = context
        self.slots = options.max_jobs
        self.token = secrets.token_urlsafe(32)
        self.completions = Completions()
        self.broker = Broker(
            name,
            context.root,
            options.lease_timeout,
            options.stage,
            self.completions,
            self._wake,
        )
        self.server: Server | None = None
        self.url = ""
        self.token_file = os.path.join(context.state_dir, "http", f"{name}.token")
        self._out: set[int] = set()
        self._calls: dict[int, Job] = {}  # function jobs out, as submitted (remote_call.py)
        self._say: Callable[[str], None] = context.say or _stderr
        self.fleet = Fleet(name, self.broker, options, context.root, context.environ, self._say)

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any], context: Context) -> HttpExecutor:
        return cls(name, Options(**effective("http", options)), context)  # checked at load

    # -- starting

    def start(self) -> None:
        host, port = _split_bind(self.name, self.options.bind)
        tls = self._tls()
        self.server = Server(Routes(self.broker, self.token), host, port, tls)
        self.server.tick_every = min(1.0, self.broker.heartbeat / 2)
        # the server's thread shares the GIL with the scheduler's: let it in every 0.5 ms, not
        # 5 ms (a request waits for the GIL several times; bench/RESULTS.md, issue 24)
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        try:
            self.server.start(self._tick)
        except OSError as exc:
            raise ExecutorError(
                f"executor '{self.name}': cannot listen on {self.options.bind}: {exc.strerror}"
            ) from exc
        shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.url = f"{'https' if tls else 'http'}://{shown}:{self.server.port}"
        self._write_token()
        self._announce(host, tls is not None)

    def _tls(self) -> Any:
        """The server's TLS context from tls_cert and tls_key, or None (plain HTTP)."""
        if not (self.options.tls_cert and self.options.tls_key):
            return None
        try:
            return tls_context(self._path(self.options.tls_cert), self._path(self.options.tls_key))
        except (OSError, ValueError) as exc:
            raise ExecutorError(
                f"executor '{self.name}': cannot load tls_cert/tls_key: {exc}"
            ) from exc

    def _announce(self, host: str, tls: bool) -> None:
        """Start the workers (a provisioner), or tell the user how; warn of clear text."""
        if not tls and not host.startswith("127.") and host not in ("localhost", "::1"):
            self._say(
                f"executor '{self.name}': serving beyond loopback ({self.options.bind}) without "
                "TLS: the token and task data travel in clear text (set tls_cert and tls_key)"
            )
        if self.options.provisioner:
            self._provision()
        else:
            self._say(
                f"executor '{self.name}' serves tasks at {self.url}; start workers with:\n"
                f"  {self.worker_command()}"
            )

    def _path(self, path: str) -> str:
        return os.path.join(self.context.root, os.path.expanduser(path))

    def worker_command(self) -> str:
        """The exact command that starts a worker for this build."""
        import shlex

        cmd = f"dagrun worker {self.url} --token-file {shlex.quote(self.token_file)}"
        if self.options.tls_cert:
            cmd += f" --cafile {shlex.quote(self._path(self.options.tls_cert))}"
        return cmd

    def _write_token(self) -> None:
        os.makedirs(os.path.dirname(self.token_file), exist_ok=True)
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token + "\n")

    def _provision(self) -> None:
        self.fleet.provision(self.url, self.token, os.path.dirname(self.token_file))

    def _tick(self) -> None:
        """On the server's thread, every few tenths of a second: expiry, the workers' watch."""
        self.broker.expire()
        self.fleet.tick(time.monotonic())
        if self.options.provisioner and self.fleet.workers_short():
            self._provision()

    def _wake(self, worker: str | None) -> None:
        if self.server is None:
            return
        if worker is None:
            self.server.wake_ready()
        else:
            self.server.wake_worker(worker)

    # -- the protocol

    def fileno(self) -> int:
        return self.completions.fileno()

    def deadline(self) -> float | None:
        """Once a second while jobs are out: the status snapshot shows which ones a worker took
        (it is written before the scheduler waits; workers lease without waking it)."""
        return time.monotonic() + STATUS_EVERY if self._out else None

    def submit(self, job: Job) -> None:
        self._out.add(job.id)
        if job.call is not None:  # a function task: a command run by the worker's own dagrun
            command = remote_call.prepare(job, PYTHON)
            if isinstance(command, Outcome):
                self.completions.post(command)
                return
            self._calls[job.id] = job
            job = command
        self.broker.add(job)

    def collect(self) -> list[Outcome]:
        settled = []
        for o in self.completions.take():
            self._out.discard(o.job_id)
            with self.broker.lock:
                files = self.broker.run_files.pop(o.job_id, None)
            call = self._calls.pop(o.job_id, None)
            if call is not None:  # its result checked and stored (remote_call.py)
                o = remote_call.finish(call, o, f"worker {files[1]}" if files else self.name)
            if files is not None:  # here, on the scheduler's thread: the server stays quick
                job, worker, run_dir = files
                job = call or job
                o = runs.settle(job, o, partial(_describe, job, self.name, worker, run_dir))
            settled.append(o)
        return settled

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        return wait_on(self, lambda: bool(self._out), timeout)

    def cancel(self, job_id: int) -> None:
        self.broker.cancel(job_id)

    def job_where(self, job_id: int) -> str | None:
        """The worker that leased the job; None while it waits for one (steering.py)."""
        b = self.broker
        with b.lock:
            lease = b.leases.get(b.lease_of.get(job_id, ""))
            return None if lease is None else f"worker {lease.worker}"

    def connected_workers(self) -> list[str]:
        """The workers heard from within the lease timeout."""
        b = self.broker
        now = time.monotonic()
        with b.lock:
            return [w.id for w in b.workers.values() if now - w.seen <= b.lease_timeout]

    def cancel_all(self, *, force: bool = False) -> list[Outcome]:
        """Tell every worker to kill its tasks; wait for their reports, unless ``force``, then
        give up on the rest.  Interrupted, the reports stay queued for the next call."""
        self.broker.cancel_everything()
        end = time.monotonic() + self.options.grace_period + 2 * self.broker.heartbeat + 1.0
        while not force and len(self.completions) < len(self._out) and time.monotonic() < end:
            time.sleep(0.01)  # not on fileno(): it stays readable until the reports are taken
        self.broker.abandon("interrupted; the worker did not confirm that it stopped the task")
        return self.collect()

    def close(self) -> None:
        if self._out:
            cancel_all(self, force=True)  # a Ctrl-C meanwhile: it goes on
        with self.broker.lock:
            self.broker.done = True
            self.broker.version += 1
        if self.server is not None:
            self.server.wake_all()  # long polls answer "done": their workers exit
            time.sleep(0.2)
            self.server.stop()
        self.fleet.close(self.url, os.path.dirname(self.token_file))
        self.completions.close()
        try:
            os.unlink(self.token_file)
        except OSError:
            pass

    def status(self) -> dict[str, Any]:
        return self.broker.status()

    def describe(self) -> dict[str, Any]:
        """For ``dagrun status``: the workers connected, and which submitted tasks a worker has
        (the others are queued, not running)."""
        b, now = self.broker, time.monotonic()
        with b.lock:
            connected = sum(1 for w in b.workers.values() if now - w.seen <= b.lease_timeout)
            leased = sorted(x.job.task for x in b.leases.values())
            queued = len(b.jobs) - len(b.leases)
        return {"type": "http", "address": self.url, "workers": connected, "leased": leased,
                "queued": queued, "slots": self.slots}


def _split_bind(name: str, bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or int(port) > 65535 or not host:
        raise ExecutorError(f"executor '{name}': bind must be HOST:PORT, not {bind!r}")
    return host, int(port)


def _stderr(message: str) -> None:
    import sys

    sys.stderr.write(message + "\n")
    sys.stderr.flush()
