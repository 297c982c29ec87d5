"""``dagrun worker URL``: lease jobs from a build's http executor, run them here, report back.

Three threads, so that no wait holds up another:

    leaser       POST /lease (long poll) while slots are free -> the inbox
    heartbeater  POST /heartbeat (long poll) while jobs run   -> cancels into the inbox
    main         runs jobs with the local executor (process group, timeout, cwd,
                 env, a run folder of its own), stages files, POSTs /report

Only the standard library's http.client: a worker must start fast and stay light.
The worker exits by itself when the build is over (the server says so) or when the
server has been gone for ``grace`` seconds; SIGTERM or Ctrl-C kill its tasks first.

At most one attempt of a task is alive at a time, so a worker's tasks never
outlive their lease.  A ``guard`` process (guard.py) kills them when the worker
dies (``kill -9``), and kills a task whose lease has gone unconfirmed for 80 % of
the server's ``lease_timeout`` (a network split, a server too busy to answer, a
worker stopped by SIGSTOP or Ctrl-Z), before the server gives it to another
worker.  The worker does not report such a task (the server ends it as lost,
which costs no retry).
"""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from typing import Any
from urllib.parse import quote, urlsplit

from .executors import Job, Outcome, cancel_all
from .executors.local import LocalExecutor
from .guard import Guard
from .runs import run_dir_name

SHOWN = 256 * 1024  # bytes of each stream sent back; the whole file stays here
EXIT_DONE, EXIT_GONE, EXIT_REFUSED = 0, 1, 2
FENCE = 0.8  # of the lease timeout: a lease unconfirmed for that long is killed here
_PACKAGE = os.path.dirname(os.path.abspath(__file__))  # function tasks import this dagrun
REFUSED_GRACE = 2.0  # seconds a connection refused on first contact may last (a restart)


class Refused(Exception):
    """The server refused our token: nothing to retry."""


class Client:
    """One keep-alive connection to the build's server (one per thread)."""

    def __init__(self, url: str, token: str, cafile: str | None, timeout: float = 90.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port or (443 if self.https else 80)
        self.context = ssl.create_default_context(cafile=cafile) if self.https else None
        self.headers = {"Authorization": f"Bearer {token}"}
        self.timeout = timeout
        self.conn: HTTPConnection | None = None
        self.last_ok = time.monotonic()
        self.answered = False  # the server answered once

    def _connect(self) -> HTTPConnection:
        if self.conn is None:
            if self.https:
                self.conn = HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=self.context
                )
            else:
                self.conn = HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self.conn

    def call(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        kind: str = "application/json",
    ) -> tuple[int, bytes]:
        """(status, body); raises OSError/HTTPException when the server cannot be reached."""
        conn = self._connect()
        headers = {**self.headers, "Content-Type": kind, "Content-Length": str(len(body))}
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, HTTPException):
            conn.close()
            self.conn = None
            raise
        self.last_ok = time.monotonic()
        self.answered = True
        if response.status == 401:
            raise Refused("the server refused the token (401)")
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
            self.conn = None
        return response.status, data

    def post(self, path: str, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, raw = self.call("POST", path, json.dumps(data).encode())
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        return status, body if isinstance(body, dict) else {}


class _Inbox:
    """Messages from the leaser and heartbeater threads to the main thread (deque + eventfd)."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.items: deque[tuple[str, Any]] = deque()
        self.lock = threading.Lock()

    def put(self, kind: str, item: Any = None) -> None:
        with self.lock:
            self.items.append((kind, item))
        os.eventfd_write(self.fd, 1)

    def take(self) -> list[tuple[str, Any]]:
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass
        with self.lock:
            out = list(self.items)
            self.items.clear()
        return out


class Worker:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        jobs: int = 1,
        cafile: str | None = None,
        directory: str | None = None,
        grace: float = 60.0,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.url, self.token, self.cafile = url.rstrip("/"), token, cafile
        self.jobs = jobs
        self.grace = grace
        self.started = time.monotonic()
        self.say = say or _say
        self.id = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        if directory is None:
            import tempfile

            directory = os.path.join(tempfile.gettempdir(), f"dagrun-worker-{self.id}")
        self.dir = os.path.abspath(directory)
        environ = {k: v for k, v in os.environ.items() if k != "DAGRUN_TOKEN"}
        self.local = LocalExecutor(environ=environ, slots=jobs)
        self.main = Client(self.url, token, cafile)
        self.inbox = _Inbox()
        self.cond = threading.Condition()
        self.free = jobs
        self.heartbeat = 1.0
        self.leases: dict[str, int] = {}  # lease -> local job id (read by the heartbeater)
        self.confirmed: dict[str, float] = {}  # lease -> when the last request that renewed it
        self.fenced: set[int] = set()  # local job ids killed unconfirmed: never reported
        # local job id -> the fence and group the guard has for it
        self.fences: dict[int, tuple[float, int | None]] = {}
        self.groups: dict[int, int] = {}  # local job id -> its process group, once it runs
        self.active: set[int] = set()  # jobs the guard may be told of: none once dropped
        self.fence_lock = threading.Lock()  # fences, groups and the guard's pipe: two threads
        self.guard: Guard | None = None
        self.lease_timeout: float | None = None  # the server's, once it said
        self.wire: dict[int, dict[str, Any]] = {}  # local job id -> the job as served
        self.next_id = 0
        self.stopping = threading.Event()
        self.exit_code = EXIT_DONE
        self.clients: list[Client] = [self.main]

    # -- threads

    def _leaser(self) -> None:
        client = self._client()
        while not self.stopping.is_set():
            with self.cond:
                while self.free == 0 and not self.stopping.is_set():
                    self.cond.wait(1.0)
                slots = self.free
            body = {
                "worker": self.id,
                "slots": slots,
                "capacity": self.jobs,
                "wait": self.heartbeat,
                "host": socket.gethostname(),
                "pid": os.getpid(),
            }
            sent = time.monotonic()  # granted at some point of the long poll: count from here
            reply = self._post(client, "/lease", body)
            if reply is None:
                continue
            jobs = reply.get("jobs") or []
            self._news(reply)  # first: the lease timeout the jobs' fences need
            with self.cond:
                self.free -= sum(self._need(job) for job in jobs)
            for job in jobs:
                self.inbox.put("job", (job, sent))

    def _heartbeater(self) -> None:
        client = self._client()
        while not self.stopping.is_set():
            with self.cond:
                leases = list(self.leases)
                if not leases:
                    self.cond.wait(self.heartbeat)
                    continue
            body = {"worker": self.id, "leases": leases, "wait": self.heartbeat}
            sent = time.monotonic()
            reply = self._post(client, "/heartbeat", body)
            if reply is None:
                continue
            unknown = reply.get("unknown") or []
            with self.cond:
                for lease in leases:
                    if lease in self.confirmed and lease not in unknown:
                        self.confirmed[lease] = max(self.confirmed[lease], sent)
            self._news(reply)
            self._renew()  # from here: a main thread busy uploading must not let fences lapse
            for lease in reply.get("cancel") or []:
                self.inbox.put("cancel", lease)
            for lease in unknown:  # the server ended it (expired): it may run elsewhere now
                self.inbox.put("lost", lease)

    def _client(self) -> Client:
        client = Client(self.url, self.token, self.cafile, timeout=self.heartbeat + 60)
        self.clients.append(client)
        return client

    def _post(self, client: Client, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        try:
            status, reply = client.post(path, body)
        except Refused as exc:
            self._stop(EXIT_REFUSED, str(exc))
            return None
        except (OSError, HTTPException) as exc:
            self._refused(exc)
            time.sleep(min(1.0, self.heartbeat))
            return None
        if status != 200:
            self.say(f"dagrun worker: {path}: {status} {reply.get('error', '')}")
            time.sleep(min(1.0, self.heartbeat))
            return None
        return reply

    def _refused(self, exc: Exception) -> None:
        """Nothing listens at the URL, and nothing ever answered there: the build is over
        (a worker a batch queue started late), so exit 0 at once rather than after ``grace``."""
        if not isinstance(exc, ConnectionRefusedError) or any(c.answered for c in self.clients):
            return
        if time.monotonic() - self.started > REFUSED_GRACE:
            self._stop(EXIT_DONE, f"nothing listens at {self.url}: its build is over")

    def _news(self, reply: dict[str, Any]) -> None:
        beat = reply.get("heartbeat")
        if isinstance(beat, (int, float)) and 0.05 <= beat <= 60:
            self.heartbeat = float(beat)
        limit = reply.get("lease_timeout")
        if isinstance(limit, (int, float)) and limit > 0:
            self.lease_timeout = float(limit)
        if reply.get("done") is True:
            self._stop(EXIT_DONE, "the build is over")

    def _stop(self, code: int, why: str) -> None:
        if not self.stopping.is_set():
            self.exit_code = code
            self.say(f"dagrun worker: {why}; exiting")
            self.stopping.set()
            self.inbox.put("stop")
        with self.cond:
            self.cond.notify_all()

    # -- the main thread

    def run(self) -> int:
        os.makedirs(self.dir, exist_ok=True)
        self.guard = Guard(self.local.mark_prefix)  # before any thread or task: a plain fork
        try:
            return self._run()
        finally:
            self.guard.close()

    def _run(self) -> int:
        for target in (self._leaser, self._heartbeater):
            threading.Thread(target=target, daemon=True, name=f"dagrun-{target.__name__}").start()
        try:
            while not self.stopping.is_set():
                self._step()
        except KeyboardInterrupt:
            self.say("dagrun worker: interrupted; killing its tasks (their leases will expire)")
            self.exit_code = 130
        self.stopping.set()
        cancel_all(self.local, force=self.exit_code != 130)  # a second Ctrl-C: no more grace
        self.local.close()
        return self.exit_code

    def _step(self) -> None:
        deadline = self.local.deadline()
        timeout = min(self.heartbeat, 1.0)
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - time.monotonic()))
        assert self.guard is not None
        select.select([self.local.fileno(), self.inbox.fd, self.guard.fd], [], [], timeout)
        self._fenced()
        if self.guard.dead:  # nothing would kill a task whose lease moves on: stop them all
            self._stop(EXIT_GONE, "its guard process is gone; killing its tasks")
            return
        for kind, item in self.inbox.take():
            if kind == "job":
                self._start(*item)
            elif kind == "cancel":
                self._cancel(item)
            elif kind == "lost":
                self._lost(item)
        outcomes = self.local.collect()
        self._fenced()  # after collecting: the guard names a job before it kills it
        for outcome in outcomes:
            if outcome.job_id in self.fenced:
                self._forget(outcome.job_id)
            else:
                self._finish(outcome)
        self._renew()
        gone = time.monotonic() - max(c.last_ok for c in self.clients)
        if gone > self.grace:
            self._stop(EXIT_GONE, f"the server has not answered for {self.grace:g} s")

    def _renew(self) -> bool:
        """Tell the guard each running job's fence (when its lease has been unconfirmed for
        FENCE of the lease timeout, and the server may be about to give it to another worker)
        and group.  The main thread and the heartbeater both call it.  False if a message
        could not be sent (that job's older fence stands: it may be killed early, never late)."""
        limit, guard = self.lease_timeout, self.guard
        if limit is None or guard is None:  # the server has not said (every answer says it)
            return True
        with self.cond:
            since = {self.leases[lease]: t for lease, t in self.confirmed.items()}
        sent = True
        with self.fence_lock:
            for job_id, t in since.items():
                if job_id not in self.active:  # dropped meanwhile (its group may be reused)
                    continue
                fence, group = t + FENCE * limit, self.groups.get(job_id)
                if self.fences.get(job_id) != (fence, group):
                    if guard.renew(job_id, fence, group):
                        self.fences[job_id] = (fence, group)
                    else:
                        sent = False
        return sent

    def _lost(self, lease: str) -> None:
        """The server no longer knows the lease (it expired: the task may run elsewhere now):
        kill its job at once, and report nothing."""
        job_id = self.leases.get(lease)
        if job_id is None or job_id in self.fenced:
            return
        self._kill_unreported(job_id, lease, "ended on the server; its task was killed")

    def _fenced(self) -> None:
        """The jobs the guard killed at their fence: never reported, their slots freed."""
        assert self.guard is not None
        for job_id in self.guard.killed():
            if job_id not in self.wire or job_id in self.fenced:
                continue  # it ended and was reported first
            limit = FENCE * (self.lease_timeout or 0)
            self._kill_unreported(
                job_id, str(self.wire[job_id].get("lease")),
                f"not confirmed for {limit:g} s (the server is out of reach, or this worker was "
                "stopped); its task was killed before it runs elsewhere",
            )

    def _kill_unreported(self, job_id: int, lease: str, why: str) -> None:
        """Kill a job whose task may run elsewhere now (its group; the guard kills by its mark
        too), and never report it: its lease ends on the server as lost."""
        self._let_go(lease)
        self.fenced.add(job_id)
        self.local.kill(job_id)
        self.say(f"dagrun worker: lease {lease} {why}")

    def _let_go(self, lease: str) -> None:
        """Stop renewing ``lease`` (the heartbeater reads these)."""
        with self.cond:
            self.leases.pop(lease, None)
            self.confirmed.pop(lease, None)

    def _forget(self, job_id: int) -> None:
        """A fenced job ended: no report (its lease expires on the server as lost)."""
        self.fenced.discard(job_id)
        self._unfence(job_id)
        wire = self.wire.pop(job_id)
        with self.cond:
            self.free += self._need(wire)
            self.cond.notify_all()

    def _start(self, wire: dict[str, Any], sent: float) -> None:
        self.next_id += 1
        job_id = self.next_id
        self.wire[job_id] = wire
        limit = self.lease_timeout
        if limit is not None and time.monotonic() - sent > FENCE * limit:
            self.say(  # granted before this worker stopped: the server may give it away now
                f"dagrun worker: lease {wire.get('lease')} is {FENCE * limit:g} s old "
                "(this worker was stopped?); not starting its task"
            )
            self._forget(job_id)
            return
        with self.fence_lock:
            self.active.add(job_id)
        with self.cond:
            self.leases[str(wire.get("lease"))] = job_id
            self.confirmed[str(wire.get("lease"))] = sent
            self.cond.notify_all()
        if not self._renew():  # no fence, no start: it would not be killed on time
            self.say(f"dagrun worker: cannot tell its guard about lease {wire.get('lease')}; "
                     "not starting its task")
            self._let_go(str(wire.get("lease")))
            self._forget(job_id)  # its lease ends on the server as lost
            return
        try:
            job = self._job(job_id, wire)
            if wire.get("stage") == "http":
                self._fetch_inputs(job, wire)
        except (KeyError, TypeError, ValueError, OSError, HTTPException) as exc:
            self._report(job_id, Outcome(job_id, None, 0.0, error=f"worker {self.id}: {exc}"))
            return
        self.local.submit(job)
        group = self.local.group_of(job_id)
        if group is not None:
            with self.fence_lock:
                self.groups[job_id] = group
            self._renew()  # the guard kills the group too, not only what carries the mark
        self._fenced()  # its fence may have passed while it was being started

    def _job(self, job_id: int, w: dict[str, Any]) -> Job:
        root = str(w["root"]) if w.get("stage") != "http" else os.path.join(self.dir, "workspace")
        lease = str(w["lease"])
        env = {str(k): str(v) for k, v in dict(w["env"]).items()}
        env["DAGRUN_WORKER"] = self.id
        env["DAGRUN_PYTHON"], env["DAGRUN_HOME"] = sys.executable, _PACKAGE  # remote_call.py
        timeout = w.get("timeout")
        return Job(
            id=job_id,
            task=str(w["task"]),
            cmd=str(w["cmd"]),
            root=root,
            cwd=str(w["cwd"]),
            env=env,
            run_dir=os.path.join(self.dir, "runs", f"{run_dir_name(str(w['task']))}-{lease}"),
            timeout=float(timeout) if timeout is not None else None,
            inputs=tuple(map(str, w.get("inputs", ()))),
            outputs=tuple(map(str, w.get("outputs", ()))),
            threads=int(w.get("threads", 1)),
            attempt=int(w.get("attempt", 1)),
        )

    def _fetch_inputs(self, job: Job, wire: dict[str, Any]) -> None:
        for path in job.inputs:
            _confined(path)
            status, data = self.main.call("GET", self._files(wire, path))
            if status != 200:
                raise ValueError(f"cannot fetch input {path}: HTTP {status}")
            full = job.local_path(path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(data)
            mode = (wire.get("modes") or {}).get(path)
            if type(mode) is int:
                os.chmod(full, mode & 0o777)  # an executable input stays one

    def _files(self, wire: dict[str, Any], path: str) -> str:
        return f"/files?lease={quote(str(wire['lease']))}&path={quote(path)}"

    def _cancel(self, lease: str) -> None:
        job_id = self.leases.get(lease)
        if job_id is not None:
            self.local.cancel(job_id)

    def _finish(self, outcome: Outcome) -> None:
        wire = self.wire[outcome.job_id]
        if outcome.ok and wire.get("stage") == "http":
            problem = self._upload_outputs(wire)
            if problem is not None:
                outcome = outcome.failed(problem)
        self._report(outcome.job_id, outcome)

    def _upload_outputs(self, wire: dict[str, Any]) -> str | None:
        root = os.path.join(self.dir, "workspace")
        for path in wire.get("outputs", ()):
            full = os.path.join(root, _confined(str(path)))
            try:
                with open(full, "rb") as f:
                    data = f.read()
                    mode = os.fstat(f.fileno()).st_mode & 0o777
            except OSError:
                return f"declared output {path} was not produced"
            try:
                status, _ = self.main.call(
                    "PUT", f"{self._files(wire, path)}&mode={mode:o}", data,
                    "application/octet-stream",
                )
            except (OSError, HTTPException) as exc:
                return f"cannot upload {path}: {exc}"
            if status != 200:
                return f"cannot upload {path}: HTTP {status}"
        return None

    def _report(self, job_id: int, outcome: Outcome) -> None:
        wire = self.wire.pop(job_id)
        lease = str(wire.get("lease"))
        run_dir = os.path.join(self.dir, "runs", f"{run_dir_name(str(wire.get('task')))}-{lease}")
        body = {
            "worker": self.id,
            "lease": lease,
            "exit_code": outcome.exit_code,
            "duration": outcome.duration,
            "maxrss_kb": outcome.maxrss_kb,
            "stdout": _cut(outcome.stdout, run_dir, "stdout.txt"),
            "stderr": _cut(outcome.stderr, run_dir, "stderr.txt"),
            "timed_out": outcome.timed_out,
            "error": outcome.error,
            "run_dir": run_dir,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        try:
            status, reply = self.main.post("/report", body)
        except Refused as exc:
            self._stop(EXIT_REFUSED, str(exc))
            status, reply = 401, {}
        except (OSError, HTTPException) as exc:
            status, reply = 0, {"error": str(exc)}
        if status == 409:
            self.say(
                f"dagrun worker: report for task {wire.get('task')} refused (409): "
                "its lease expired and the task went to another worker"
            )
        elif status != 200:
            self.say(
                f"dagrun worker: report for task {wire.get('task')} failed: {status} "
                f"{reply.get('error', '')}"
            )
        self._unfence(job_id)
        with self.cond:
            self.leases.pop(lease, None)
            self.confirmed.pop(lease, None)
            self.free += self._need(wire)
            self.cond.notify_all()

    def _unfence(self, job_id: int) -> None:
        with self.fence_lock:  # after this, no renew of it reaches the guard (_renew)
            self.active.discard(job_id)
            self.fences.pop(job_id, None)
            self.groups.pop(job_id, None)
            if self.guard is not None:
                self.guard.drop(job_id)  # also ends the guard's kills of a fenced job

    def _need(self, wire: dict[str, Any]) -> int:
        """The slots a job takes here: its threads, at most all of them."""
        threads = wire.get("threads", 1)
        return min(threads, self.jobs) if type(threads) is int and threads > 0 else 1


def _cut(text: str, run_dir: str, name: str) -> str:
    if len(text) <= SHOWN:
        return text
    return text[:SHOWN] + f"\n[dagrun worker: output cut; all of it is in {run_dir}/{name}]\n"


def _confined(path: str) -> str:
    if not path or path.startswith("/") or ".." in path.split("/"):
        raise ValueError(f"refusing a path outside the workspace: {path!r}")
    return path


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def read_token(token_file: str | None) -> str:
    """The token from ``--token-file`` or DAGRUN_TOKEN; ValueError if neither has one."""
    if token_file:
        with open(token_file, encoding="utf-8") as f:
            token = f.read().strip()
    else:
        token = os.environ.get("DAGRUN_TOKEN", "").strip()
    if not token:
        raise ValueError("no token: give --token-file FILE or set DAGRUN_TOKEN")
    return token


def main(
    url: str,
    *,
    jobs: int,
    token_file: str | None,
    cafile: str | None,
    directory: str | None,
    grace: float,
) -> int:
    """The ``dagrun worker`` command."""
    from .errors import DagrunError

    try:
        token = read_token(token_file)
        worker = Worker(url, token, jobs=jobs, cafile=cafile, directory=directory, grace=grace)
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise DagrunError(f"worker: {exc}") from exc
    return worker.run()  # SIGTERM, SIGHUP, Ctrl-C: cli.cmd_worker runs it under interrupts.raised
