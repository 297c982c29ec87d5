"""HTTP pull workers: the build serves its jobs, ``dagrun worker URL`` processes lease and run them.

    scheduler thread                 server thread (asyncio, http_server.Server)
    submit(job) -> Broker.add ---->  POST /lease      (long poll) -> jobs, each under a lease
    cancel(id)  -> Broker.cancel ->  POST /heartbeat  (long poll) -> leases to kill, leases gone
    collect()  <- Completions  <---  POST /report     -> Outcome (409: a lease that moved on)
                                     GET/PUT /files   (stage = "http"), GET /status
                                     every tick: silent leases expire -> Outcome(lost=True)

The protocol is documented in docs/http-protocol.md; the manifest keys in docs/http.md.
The Broker holds all state under one lock; the scheduler's thread and the
server's thread both call it.  The completion log and reporters stay on the
scheduler's thread: the server only posts Outcomes.
"""

from __future__ import annotations

import hmac
import json
import os
import posixpath
import secrets
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ExecutorError
from . import Context, Job, Outcome
from .http_fleet import Fleet
from .http_server import Awaits, Pending, Request, Response, Server
from .local import _remove_run_files
from .threaded import Completions, wait_on

JSON_LIMIT = 64 * 1024  # lease and heartbeat bodies
REPORT_LIMIT = 4 << 20  # a report carries (cut) output
MAX_UPLOAD = 1 << 30  # one staged output file
MAX_WAIT = 60.0  # the longest long poll a client may ask for
DEFAULT_LEASE_TIMEOUT = 30.0
STATUS_EVERY = 1.0  # seconds between two looks at the leases for the status snapshot
SWITCH_INTERVAL = 0.0005  # seconds a thread holds the GIL while another waits for it


def heartbeat_every(lease_timeout: float) -> float:
    """How often workers heartbeat (and how long a poll waits): a quarter of the lease timeout."""
    return max(0.1, min(5.0, lease_timeout / 4))


@dataclass
class _Lease:
    id: str
    job: Job
    worker: str
    last: float  # monotonic: the last heartbeat (or the grant)
    cancelled: bool = False


@dataclass
class _Worker:
    id: str
    host: str = ""
    pid: int = 0
    slots: int = 0
    seen: float = 0.0  # monotonic
    seen_wall: float = 0.0
    leases: set[str] = field(default_factory=set)


@dataclass
class _Counts:
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    refused: int = 0  # reports answered 409


class Broker:
    """The jobs, leases and workers of one http executor (thread-safe)."""

    def __init__(
        self,
        name: str,
        root: str,
        lease_timeout: float,
        stage: str,
        completions: Completions,
        wake: Callable[[str | None], None],
    ) -> None:
        self.name = name
        self.root = os.path.abspath(root)
        self.real_root = os.path.realpath(root)
        self.lease_timeout = lease_timeout
        self.heartbeat = heartbeat_every(lease_timeout)
        self.stage = stage
        self.completions = completions
        self.wake = wake  # None: new jobs for anyone; a worker id: news for that worker
        self.lock = threading.Lock()
        self.ready: deque[int] = deque()
        self.jobs: dict[int, Job] = {}  # submitted and not ended
        self.leases: dict[str, _Lease] = {}
        self.lease_of: dict[int, str] = {}
        self.workers: dict[str, _Worker] = {}
        self.counts = _Counts()
        self.done = False
        self.run_files: dict[int, tuple[Job, str, Any]] = {}  # reported, files not written yet
        self.version = 0  # bumped by every change /status shows but a heartbeat's time

    # -- the scheduler's side

    def add(self, job: Job) -> None:
        problem = self._stage_problem(job) if self.stage == "http" else None
        if problem is not None:
            self.completions.post(Outcome(job.id, None, 0.0, error=problem))
            return
        with self.lock:
            self.jobs[job.id] = job
            self.ready.append(job.id)
            self.version += 1
        self.wake(None)

    def _stage_problem(self, job: Job) -> str | None:
        for path in (*job.inputs, *job.outputs):
            if relative_path(self.root, job.local_path(path)) is None:
                return f'stage = "http": {path} is outside the project folder'
        return None

    def cancel(self, job_id: int) -> None:
        with self.lock:
            lease_id = self.lease_of.get(job_id)
            if lease_id is None:
                self.version += 1
                if self.jobs.pop(job_id, None) is not None:  # not leased yet: ends here
                    self.completions.post(Outcome(job_id, None, 0.0, error="cancelled"))
                return
            lease = self.leases[lease_id]
            lease.cancelled = True
        self.wake(lease.worker)

    def cancel_everything(self) -> None:
        with self.lock:
            self.version += 1
            for job_id in list(self.jobs):
                if job_id not in self.lease_of:
                    self.jobs.pop(job_id)
                    self.completions.post(Outcome(job_id, None, 0.0, error="cancelled"))
            workers = set()
            for lease in self.leases.values():
                lease.cancelled = True
                workers.add(lease.worker)
        for w in workers:
            self.wake(w)

    def fail_waiting(self, why: str) -> None:
        """End every job no worker has leased yet as failed, with ``why`` (no worker will come)."""
        with self.lock:
            waiting = [job_id for job_id in self.jobs if job_id not in self.lease_of]
            for job_id in waiting:
                self.jobs.pop(job_id)
            self.version += 1
        for job_id in waiting:
            self.completions.post(Outcome(job_id, None, 0.0, error=why))

    def abandon(self, why: str) -> None:
        """End every job still out (a worker that never answered a cancel)."""
        with self.lock:
            for job_id in list(self.jobs):
                self._end_lease(self.lease_of.get(job_id))
                self.jobs.pop(job_id)
                self.completions.post(Outcome(job_id, None, 0.0, error=why))

    # -- the workers' side (server thread)

    def see(self, worker: str, body: Mapping[str, Any]) -> _Worker:
        w = self.workers.get(worker)
        if w is None:
            w = self.workers[worker] = _Worker(worker)
            self.version += 1
        w.seen, w.seen_wall = time.monotonic(), time.time()
        if isinstance(body.get("host"), str):
            w.host = body["host"][:200]
        if type(body.get("pid")) is int:
            w.pid = body["pid"]
        return w

    def lease(self, worker: str, slots: int, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Ready jobs, in order, while their threads fit in ``slots`` (a job takes at most all
        of the worker's ``capacity``, so that a big job still runs on an idle worker)."""
        capacity = body.get("capacity")
        if type(capacity) is not int or capacity < slots:
            capacity = slots
        with self.lock:
            w = self.see(worker, body)
            w.slots = capacity
            out: list[dict[str, Any]] = []
            while self.ready and slots > 0 and not self.done:
                job = self.jobs.get(self.ready[0])
                if job is None or job.id in self.lease_of:
                    self.ready.popleft()  # cancelled while it waited
                    continue
                if min(job.threads, capacity) > slots:
                    break  # it waits for a worker with room
                self.ready.popleft()
                slots -= min(job.threads, capacity)
                out.append(self._grant(w, job))
            return out

    def _grant(self, w: _Worker, job: Job) -> dict[str, Any]:
        lease = _Lease(secrets.token_hex(8), job, w.id, time.monotonic())
        self.version += 1
        self.leases[lease.id] = lease
        self.lease_of[job.id] = lease.id
        w.leases.add(lease.id)
        rel = self._relative if self.stage == "http" else (lambda p: p)
        inputs = [rel(p) for p in job.inputs]
        return {
            "lease": lease.id,
            "job": job.id,
            "task": job.task,
            "cmd": job.cmd,
            "root": job.root,
            "cwd": job.cwd,
            "env": dict(job.env),
            "timeout": job.timeout,
            "inputs": inputs,
            "outputs": [rel(p) for p in job.outputs],
            "threads": job.threads,
            "attempt": job.attempt,
            "stage": self.stage,
            **({"modes": modes(self.root, inputs)} if self.stage == "http" else {}),
        }

    def _relative(self, path: str) -> str:
        return relative_path(self.root, path) or path

    def heartbeat_news(
        self, worker: str, leases: list[str], body: Mapping[str, Any]
    ) -> dict[str, Any]:
        with self.lock:
            self.see(worker, body)
            now = time.monotonic()
            cancel, unknown = [], []
            for lease_id in leases:
                lease = self.leases.get(lease_id)
                if lease is None or lease.worker != worker:
                    unknown.append(lease_id)
                    continue
                lease.last = now
                if lease.cancelled:
                    cancel.append(lease_id)
            return {"cancel": cancel, "unknown": unknown, "done": self.done,
                    "lease_timeout": self.lease_timeout}

    def report(self, worker: str, lease_id: str, r: Mapping[str, Any]) -> bool:
        """Record a worker's report; False (409) when the lease is not this worker's any more."""
        with self.lock:
            self.see(worker, r)
            lease = self.leases.get(lease_id)
            if lease is None or lease.worker != worker:
                self.counts.refused += 1
                self.version += 1
                return False
            self._end_lease(lease_id)
            job = self.jobs.pop(lease.job.id)
        outcome = Outcome(
            job.id,
            r["exit_code"],
            r["duration"],
            r["stdout"],
            r["stderr"],
            r["timed_out"],
            r["maxrss_kb"],
            r["error"],
        )
        if outcome.exit_code == 0 and outcome.error:
            outcome = Outcome(**{**_fields(outcome), "exit_code": None})
        with self.lock:
            self.version += 1
            if outcome.ok:
                self.counts.succeeded += 1
            else:
                self.counts.failed += 1
        with self.lock:
            self.run_files[job.id] = (job, worker, r.get("run_dir"))  # written by collect()
        self.completions.post(outcome)
        return True

    def _end_lease(self, lease_id: str | None) -> None:
        lease = self.leases.pop(lease_id, None) if lease_id is not None else None
        self.version += 1
        if lease is not None:
            self.lease_of.pop(lease.job.id, None)
            w = self.workers.get(lease.worker)
            if w is not None:
                w.leases.discard(lease.id)

    def expire(self) -> None:
        """Silent leases go back: their jobs end as lost (or cancelled, when being cancelled)."""
        now = time.monotonic()
        with self.lock:
            late = [x for x in self.leases.values() if now - x.last > self.lease_timeout]
            for lease in late:
                self._end_lease(lease.id)
                self.jobs.pop(lease.job.id, None)
                self.counts.lost += 1
        for lease in late:
            why = f"worker {lease.worker} went silent (no heartbeat for {self.lease_timeout:g} s)"
            if lease.cancelled:
                self.completions.post(Outcome(lease.job.id, None, now - lease.last, error=why))
            else:
                self.completions.post(Outcome(lease.job.id, None, 0.0, error=why, lost=True))

    def file_for(self, lease_id: str, path: str, *, output: bool) -> str | None:
        """The absolute path of a declared input or output of a live lease, else None."""
        with self.lock:
            lease = self.leases.get(lease_id)
            if lease is None:
                return None
            declared = lease.job.outputs if output else lease.job.inputs
            wanted = {self._relative(lease.job.local_path(p)) for p in declared}
        rel = relative_path(self.root, os.path.join(self.root, path)) if _plain(path) else None
        if rel is None or rel not in wanted:
            return None
        full = os.path.join(self.root, rel)
        real = os.path.realpath(os.path.dirname(full))
        if real != self.real_root and relative_path(self.real_root, real) is None:
            return None  # a symlinked folder leading out of the project
        return full

    def _running(self, w: _Worker) -> list[dict[str, Any]]:
        leases = sorted((self.leases[x] for x in w.leases), key=lambda x: x.job.id)
        return [{"lease": x.id, "task": x.job.task, "job": x.job.id} for x in leases]

    def status(self) -> dict[str, Any]:
        now, wall = time.monotonic(), time.time()
        with self.lock:
            workers = [
                {
                    "id": w.id,
                    "host": w.host,
                    "pid": w.pid,
                    "slots": w.slots,
                    "last_heartbeat": round(w.seen_wall, 3),
                    "seconds_ago": round(now - w.seen, 3),
                    "alive": now - w.seen <= self.lease_timeout,
                    "running": self._running(w),
                }
                for w in self.workers.values()
            ]
            leased = len(self.leases)
            return {
                "executor": self.name,
                "ready": len(self.jobs) - leased,
                "leased": leased,
                "running": leased,
                "succeeded": self.counts.succeeded,
                "failed": self.counts.failed,
                "lost": self.counts.lost,
                "refused": self.counts.refused,
                "done": self.done,
                "time": round(wall, 3),
                "workers": workers,
            }


def _fields(outcome: Outcome) -> dict[str, Any]:
    return {f: getattr(outcome, f) for f in Outcome.__slots__}


def _plain(path: str) -> bool:
    """A root-relative path with no way out: not absolute, no '..', no NUL."""
    if not path or path.startswith("/") or "\0" in path:
        return False
    return ".." not in path.split("/")


def relative_path(root: str, path: str) -> str | None:
    """``path`` (absolute) relative to ``root`` when it lies inside it, else None."""
    norm = posixpath.normpath(path)
    if norm == root or not norm.startswith(root.rstrip("/") + "/"):
        return None
    return norm[len(root.rstrip("/")) + 1 :]


def _keep_run_files(job: Job, outcome: Outcome, worker: str, run_dir: Any) -> None:
    """command.txt, stdout.txt, stderr.txt in the job's run folder, as for a local task: only
    when it printed something or failed; a silent success removes its previous run's files
    (three files per task capped a build with 1,000 workers at ~320 tasks/s)."""
    if outcome.ok and not outcome.stdout and not outcome.stderr:
        _remove_run_files(job.run_dir)
        return
    try:
        os.makedirs(job.run_dir, exist_ok=True)
        where = f"# worker: {worker}\n" + (f"# worker's run folder: {run_dir}\n" if run_dir else "")
        files = {
            "command.txt": f"{job.cmd}\n\n# task: {job.task}\n# cwd: {job.cwd}\n{where}",
            "stdout.txt": outcome.stdout,
            "stderr.txt": outcome.stderr,
        }
        for name, text in files.items():
            with open(os.path.join(job.run_dir, name), "w", encoding="utf-8",
                      errors="surrogateescape") as f:
                f.write(text)
    except OSError:
        pass  # the outcome carries the output; the run folder is a convenience


# -- the HTTP face of the broker

_LEASE = {"worker": str, "slots": int, "wait": float}
_HEARTBEAT = {"worker": str, "leases": list, "wait": float}
_REPORT = {
    "worker": str,
    "lease": str,
    "exit_code": (int, type(None)),
    "duration": float,
    "maxrss_kb": int,
    "stdout": str,
    "stderr": str,
    "timed_out": bool,
    "error": (str, type(None)),
}


class Invalid(ValueError):
    pass


def _check(body: Any, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The body's fields, each of the type ``spec`` says (int is not bool; float accepts int)."""
    if not isinstance(body, dict):
        raise Invalid("the body must be a JSON object")
    for name, kind in spec.items():
        if name not in body:
            raise Invalid(f"missing field {name!r}")
        value = body[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds:
            kinds = (*kinds, int)
        if isinstance(value, bool) and bool not in kinds:
            raise Invalid(f"field {name!r} has the wrong type")
        if not isinstance(value, kinds):
            raise Invalid(f"field {name!r} has the wrong type")
    return body


def _json(status: int, data: Any) -> Response:
    return Response(status, json.dumps(data, separators=(",", ":")).encode())


class Routes:
    """Requests -> Broker calls: authentication, limits and validation (http_server.App)."""

    def __init__(self, broker: Broker, token: str) -> None:
        self.broker = broker
        self.expected = ("Bearer " + token).encode()
        self._status_cache: tuple[int, float, Response] | None = None

    def authorized(self, headers: dict[str, str]) -> bool:
        given = headers.get("authorization", "").encode("latin-1", "replace")
        return hmac.compare_digest(given, self.expected)

    def body_limit(self, method: str, path: str) -> int:
        if method != "POST":
            return 0
        return REPORT_LIMIT if path == "/report" else JSON_LIMIT

    def handle(self, request: Request) -> Response | Pending:
        route = {
            ("POST", "/lease"): self._lease,
            ("POST", "/heartbeat"): self._heartbeat,
            ("POST", "/report"): self._report,
            ("GET", "/status"): self._status,
            ("GET", "/files"): self._download,
        }.get((request.method, request.path))
        if route is None:
            known = request.path in ("/lease", "/heartbeat", "/report", "/status", "/files")
            return _json(405 if known else 404, {"error": "no such endpoint"})
        try:
            return route(request)
        except Invalid as exc:
            return _json(400, {"error": str(exc)})

    @staticmethod
    def _body(request: Request, spec: Mapping[str, Any]) -> dict[str, Any]:
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            raise Invalid("the body is not JSON") from None
        body = _check(body, spec)
        if len(body["worker"]) > 200 or not body["worker"]:
            raise Invalid("field 'worker' must be 1-200 characters")
        return body

    def _lease(self, request: Request) -> Response | Pending:
        body = self._body(request, _LEASE)
        slots, wait = body["slots"], min(max(float(body["wait"]), 0.0), MAX_WAIT)
        if not 0 <= slots <= 4096:
            raise Invalid("field 'slots' must be 0-4096")
        b = self.broker

        def poll(final: bool) -> Response | None:
            jobs = b.lease(body["worker"], slots, body) if slots else []
            if jobs or final or b.done:
                return _json(200, {"jobs": jobs, "done": b.done, "heartbeat": b.heartbeat,
                                   "lease_timeout": b.lease_timeout})
            return None

        first = poll(wait == 0 or slots == 0)
        if first is not None:
            return first
        return Pending(Awaits.JOBS, body["worker"], wait, poll)

    def _heartbeat(self, request: Request) -> Response | Pending:
        body = self._body(request, _HEARTBEAT)
        leases = body["leases"]
        if len(leases) > 4096 or not all(isinstance(x, str) for x in leases):
            raise Invalid("field 'leases' must be a list of lease ids")
        wait = min(max(float(body["wait"]), 0.0), MAX_WAIT)
        b = self.broker

        def poll(final: bool) -> Response | None:
            news = b.heartbeat_news(body["worker"], leases, body)
            if final or news["cancel"] or news["unknown"] or news["done"]:
                return _json(200, {**news, "heartbeat": b.heartbeat})
            return None

        first = poll(wait == 0)
        if first is not None:
            return first
        return Pending(Awaits.NEWS, body["worker"], wait, poll)

    def _report(self, request: Request) -> Response:
        body = self._body(request, _REPORT)
        if body["exit_code"] is not None and not -255 <= body["exit_code"] <= 255:
            raise Invalid("field 'exit_code' must be -255..255 or null")
        if body["duration"] < 0 or body["maxrss_kb"] < 0:
            raise Invalid("fields 'duration' and 'maxrss_kb' must not be negative")
        if not self.broker.report(body["worker"], body["lease"], body):
            return _json(
                409, {"error": "this lease expired or is not yours; the report is ignored"}
            )
        return _json(200, {"done": self.broker.done})

    def _status(self, request: Request) -> Response:
        """The broker's status, encoded again only when something changed (or a second
        passed: the workers' ``seconds_ago``), not for every dashboard's request."""
        now, version = time.monotonic(), self.broker.version
        cached = self._status_cache
        if cached is not None and cached[0] == version and now - cached[1] < STATUS_EVERY:
            return cached[2]
        response = _json(200, self.broker.status())
        self._status_cache = (version, now, response)
        return response

    def _download(self, request: Request) -> Response:
        full = self.broker.file_for(
            request.query.get("lease", ""), request.query.get("path", ""), output=False
        )
        if full is None:
            return _json(404, {"error": "not a declared input of a live lease"})
        try:
            with open(full, "rb") as f:
                return Response(200, f.read(), "application/octet-stream")
        except OSError as exc:
            return _json(404, {"error": f"cannot read {request.query['path']}: {exc.strerror}"})

    def upload(self, request: Request, length: int) -> Response | _Upload:
        if request.path != "/files":
            return _json(404, {"error": "no such endpoint"})
        if length > MAX_UPLOAD:
            return _json(413, {"error": f"a staged file may have at most {MAX_UPLOAD} bytes"})
        full = self.broker.file_for(
            request.query.get("lease", ""), request.query.get("path", ""), output=True
        )
        if full is None:
            return _json(404, {"error": "not a declared output of a live lease"})
        try:
            return _Upload(full, _mode(request.query.get("mode", "")))
        except OSError as exc:
            return _json(400, {"error": f"cannot write {request.query['path']}: {exc.strerror}"})


def _mode(text: str) -> int | None:
    """Permission bits in octal ("755"), never setuid, setgid or sticky; None if not that."""
    if not text or len(text) > 4 or not all(c in "01234567" for c in text):
        return None
    return int(text, 8) & 0o777


def modes(root: str, paths: list[str]) -> dict[str, int]:
    """The permission bits of staged inputs (root-relative paths), for the worker to keep."""
    out = {}
    for path in paths:
        try:
            out[path] = os.stat(os.path.join(root, path)).st_mode & 0o777
        except OSError:
            pass
    return out


class _Upload:
    """A staged output written beside its place, renamed over it once complete."""

    def __init__(self, path: str, mode: int | None = None) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        self.mode = mode  # the file's permission bits on the worker (an executable stays one)
        self.tmp = f"{path}.dagrun-upload-{secrets.token_hex(4)}"
        self.f = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort

    def write(self, chunk: bytes) -> None:
        self.f.write(chunk)

    def commit(self) -> Response:
        self.f.close()
        if self.mode is not None:
            os.chmod(self.tmp, self.mode)
        os.replace(self.tmp, self.path)
        return _json(200, {})

    def abort(self) -> None:
        self.f.close()
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


# -- the executor


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
        self._say: Callable[[str], None] = context.say or _stderr
        self.fleet = Fleet(name, self.broker, options, context.root, context.environ, self._say)

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any], context: Context) -> HttpExecutor:
        known = {k: options[k] for k in Options.__dataclass_fields__ if k in options}
        opts = Options(**known)
        if opts.stage not in ("shared", "http"):
            raise ExecutorError(f'executor \'{name}\': stage must be "shared" or "http"')
        if (opts.tls_cert is None) != (opts.tls_key is None):
            raise ExecutorError(f"executor '{name}': give both tls_cert and tls_key, or neither")
        return cls(name, opts, context)

    # -- starting

    def start(self) -> None:
        host, port = _split_bind(self.name, self.options.bind)
        tls = None
        if self.options.tls_cert and self.options.tls_key:
            from .http_server import tls_context

            try:
                tls = tls_context(
                    self._path(self.options.tls_cert), self._path(self.options.tls_key)
                )
            except (OSError, ValueError) as exc:
                raise ExecutorError(
                    f"executor '{self.name}': cannot load tls_cert/tls_key: {exc}"
                ) from None
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
            ) from None
        shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.url = f"{'https' if tls else 'http'}://{shown}:{self.server.port}"
        self._write_token()
        if tls is None and not host.startswith("127.") and host not in ("localhost", "::1"):
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
        self.broker.add(job)

    def collect(self) -> list[Outcome]:
        outcomes = self.completions.take()
        for o in outcomes:
            self._out.discard(o.job_id)
            with self.broker.lock:
                files = self.broker.run_files.pop(o.job_id, None)
            if files is not None:  # here, on the scheduler's thread: the server stays quick
                _keep_run_files(files[0], o, files[1], files[2])
        return outcomes

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
        """Tell every worker to kill its tasks; wait for their reports (or give up on them)."""
        self.broker.cancel_everything()
        grace = 0.5 if force else self.options.grace_period
        end = time.monotonic() + grace + 2 * self.broker.heartbeat + 1.0
        outcomes: list[Outcome] = []
        while self._out and time.monotonic() < end:
            try:
                outcomes.extend(self.wait(timeout=max(0.0, end - time.monotonic())))
            except KeyboardInterrupt:
                break  # a second Ctrl-C: no more waiting for the workers
        self.broker.abandon("interrupted; the worker did not confirm that it stopped the task")
        outcomes.extend(self.collect())
        return outcomes

    def close(self) -> None:
        if self._out:
            self.cancel_all(force=True)
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
