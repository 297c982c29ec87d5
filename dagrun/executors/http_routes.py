"""The HTTP face of an HTTP executor's broker: authentication, limits, validation, staging.

``Routes`` is the application ``http_server.Server`` calls for each request (on the
server's thread): ``/lease`` and ``/heartbeat`` are long polls answered when the
broker has news, ``/report`` ends a lease, ``/files`` downloads a declared input or
uploads a declared output (``stage = "http"``), ``/status`` shows the broker.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import time
from collections.abc import Mapping
from typing import Any

from .http_broker import Broker
from .http_server import Awaits, Pending, Request, Response

JSON_LIMIT = 64 * 1024  # lease and heartbeat bodies
REPORT_LIMIT = 4 << 20  # a report carries (cut) output
MAX_UPLOAD = 1 << 30  # one staged output file
MAX_WAIT = 60.0  # the longest long poll a client may ask for
STATUS_EVERY = 1.0  # seconds between two looks at the leases for the status snapshot

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
