"""A small asyncio HTTP/1.1 server for the HTTP pull executor (chosen on evidence: bench/).

It speaks just what ``dagrun worker`` needs: keep-alive, ``Content-Length``
bodies (no chunked encoding), JSON or raw bytes.  Hostile input never reaches
the application unchecked: the head is capped (431), a body longer than the
route allows is refused before it is read (413), a client that stalls is cut
off after ``IDLE`` seconds, and any exception ends only that connection.
Connections that have not yet sent a request with the token (anyone who can
reach the port can open them) get ``PREAUTH_IDLE`` seconds and at most
``PREAUTH_LIMIT`` descriptors: past it the oldest is dropped, so idle or
half-sent connections never exhaust the build's descriptors, and a worker
still gets in.  The soft descriptor limit is raised to the hard one at start,
and ``accept`` out of descriptors (asyncio waits a second and tries again) is
not reported.

The application (``http_routes.Routes``) is synchronous and fast; a long poll comes
back as a ``Pending`` that this server parks until the broker signals news or
the wait ends.  Everything here runs on one thread: the server's event loop.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import ssl
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

HEAD_LIMIT = 16 * 1024  # request line + headers
IDLE = 30.0  # seconds a connection may sit without sending a whole request
PREAUTH_IDLE = 5.0  # the same, before its first request with the token
PREAUTH_LIMIT = 256  # connections without the token yet (at most 1/8 of the descriptor limit)
BODY_TIMEOUT = 120.0  # seconds to receive a body once its head arrived
MAX_CONNECTIONS = 20000
DRAIN_LIMIT = 16 << 20  # a refused body up to this size is read (and dropped) before the 413
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"


class Awaits(enum.Enum):
    """What a long poll waits for."""

    JOBS = "jobs"  # new jobs, for whoever asks first
    NEWS = "news"  # news for one worker (a cancel, the end)


@dataclass
class Pending:
    """A long poll: ``poll(final)`` is asked again on news (None: still nothing) and at the end."""

    awaits: Awaits
    worker: str
    wait: float
    poll: Callable[[bool], Response | None]


class Upload(Protocol):
    """Where a streamed request body goes (``App.upload``)."""

    def write(self, chunk: bytes) -> None: ...

    def commit(self) -> Response: ...

    def abort(self) -> None: ...


class App(Protocol):
    def authorized(self, headers: dict[str, str]) -> bool: ...

    def body_limit(self, method: str, path: str) -> int: ...

    def handle(self, request: Request) -> Response | Pending: ...

    def upload(self, request: Request, length: int) -> Response | Upload: ...


class Server:
    """Serves ``app`` on ``host:port`` from a thread of its own; ``wake_*`` are thread-safe."""

    def __init__(self, app: App, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.tls = tls
        self.loop = asyncio.new_event_loop()
        # long polls for jobs, with a test of whether the worker closed the connection meanwhile
        self._lease_waiters: deque[
            tuple[Pending, asyncio.Future[Response | None], Callable[[], bool]]
        ] = deque()
        self._news_waiters: dict[str, list[tuple[Pending, asyncio.Future[Response | None]]]] = {}
        self._connections: set[asyncio.StreamWriter] = set()
        # connections that have not yet sent a request with the token, oldest first
        self._strangers: dict[asyncio.StreamWriter, None] = {}
        self.max_connections = MAX_CONNECTIONS
        self.preauth_limit = PREAUTH_LIMIT
        self._thread = threading.Thread(target=self._run, name="dagrun-http", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._server: asyncio.Server | None = None
        self._tick: Callable[[], None] | None = None
        self.tick_every = 1.0
        self._ready_woken = False  # a _dispatch_woken is scheduled and has not begun

    # -- from any thread

    def start(self, tick: Callable[[], None] | None = None) -> None:
        """Bind and serve; raises OSError when the address cannot be bound."""
        self._tick = tick
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def wake_ready(self) -> None:
        """New jobs: one wake-up, however many jobs come before the loop gets to it (20,000
        jobs submitted at once were 20,000 callbacks and self-pipe writes)."""
        if not self._ready_woken:
            self._ready_woken = True
            self.loop.call_soon_threadsafe(self._dispatch_woken)

    def wake_worker(self, worker: str) -> None:
        self.loop.call_soon_threadsafe(self._dispatch_news, worker)

    def wake_all(self) -> None:
        self.loop.call_soon_threadsafe(self._dispatch_all)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._shutdown)
            self._thread.join(5.0)

    # -- the loop's thread

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        limit = _raise_descriptor_limit()
        self.max_connections = min(MAX_CONNECTIONS, limit // 2)
        self.preauth_limit = min(PREAUTH_LIMIT, max(8, limit // 8))
        self.loop.set_exception_handler(_quiet_on_emfile)
        try:
            self._server = self.loop.run_until_complete(
                asyncio.start_server(
                    self._connection,
                    self.host,
                    self.port,
                    ssl=self.tls,
                    limit=HEAD_LIMIT,
                    backlog=4096,
                    ssl_handshake_timeout=PREAUTH_IDLE if self.tls is not None else None,
                )
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
            self._error = exc
            self._started.set()
            return
        self._started.set()
        if self._tick is not None:
            self.loop.call_later(self.tick_every, self._ticking)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def _ticking(self) -> None:
        assert self._tick is not None
        try:
            self._tick()
        finally:
            self.loop.call_later(self.tick_every, self._ticking)

    def _shutdown(self) -> None:
        self._dispatch_all()
        if self._server is not None:
            self._server.close()
        for writer in list(self._connections):
            writer.transport.abort()
        self.loop.call_later(0.05, self.loop.stop)

    def _dispatch_woken(self) -> None:
        self._ready_woken = False  # first: a job added from now on wakes the loop again
        self._dispatch_ready()

    def _dispatch_ready(self) -> None:
        waiters = self._lease_waiters
        while waiters:
            pending, fut, gone = waiters[0]
            if fut.done():
                waiters.popleft()
                continue
            if gone():  # a killed worker's poll: jobs leased to it would sit out a lease timeout
                waiters.popleft()
                fut.set_result(_CLOSED)
                continue
            response = pending.poll(False)
            if response is None:
                return  # nothing left to hand out
            waiters.popleft()
            fut.set_result(response)

    def _dispatch_news(self, worker: str) -> None:
        for pending, fut in self._news_waiters.pop(worker, ()):
            if not fut.done():
                fut.set_result(pending.poll(False))

    def _dispatch_all(self) -> None:
        self._dispatch_ready()
        for worker in list(self._news_waiters):
            self._dispatch_news(worker)
        for pending, fut, _ in self._lease_waiters:
            if not fut.done():
                fut.set_result(pending.poll(True))
        self._lease_waiters.clear()

    async def _park(self, pending: Pending, reader: asyncio.StreamReader) -> Response:
        fut: asyncio.Future[Response | None] = self.loop.create_future()

        def gone() -> bool:
            return reader.at_eof() or reader.exception() is not None

        if pending.awaits is Awaits.JOBS:
            self._lease_waiters.append((pending, fut, gone))
        else:
            self._news_waiters.setdefault(pending.worker, []).append((pending, fut))
        timer = self.loop.call_later(pending.wait, _time_up, fut)  # cheaper than wait_for
        response = await fut
        timer.cancel()
        if response is None and pending.awaits is Awaits.JOBS and gone():
            return _CLOSED  # its time is up, and so is its worker: no job for it
        if response is None:
            response = pending.poll(True)
            assert response is not None
        return response

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            writer.transport.abort()
            return
        if len(self._strangers) >= self.preauth_limit:  # idle or half-sent connections: drop the
            oldest = next(iter(self._strangers))  # oldest, so a worker still gets in
            del self._strangers[oldest]
            oldest.transport.abort()
        self._strangers[writer] = None
        self._connections.add(writer)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError, OSError):
            pass
        except Exception:  # noqa: BLE001 - one bad connection never stops the server
            _try_write(writer, Response(500, b'{"error": "internal error"}'), close=True)
        finally:
            self._connections.discard(writer)
            self._strangers.pop(writer, None)
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; False when the connection must end."""
        head = await self._read_head(reader, writer)
        if head is None:
            return False
        parsed = head if isinstance(head, Response) else self._request_of(head)
        if isinstance(parsed, Response):
            await _send(writer, parsed, close=True)
            return False
        request, length, close = parsed
        self._strangers.pop(writer, None)  # it knows the token
        response = await self._response(reader, writer, request, length)
        close = close or response.status == 413  # its body may still be on the way
        await _send(writer, response, close)
        return not close

    async def _read_head(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | Response | None:
        idle = PREAUTH_IDLE if writer in self._strangers else IDLE
        timer = self.loop.call_later(idle, writer.transport.abort)  # a stalled client goes
        try:
            return await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return _error(431, "request head too large")
        except asyncio.IncompleteReadError:
            return None
        finally:
            timer.cancel()

    def _request_of(self, head: bytes) -> tuple[Request, int, bool] | Response:
        """(the request without its body, the body's length, close after it) or an error."""
        parsed = _parse_head(head)
        if isinstance(parsed, Response):
            return parsed
        method, target, version, headers = parsed
        if not self.app.authorized(headers):
            return _error(401, "missing or wrong token")
        length = _content_length(headers)
        if isinstance(length, Response):
            return length
        path, query = target, {}
        if "?" in target or "#" in target:
            url = urlsplit(target)
            path, query = url.path, dict(parse_qsl(url.query, keep_blank_values=True))
        close = version == "HTTP/1.0" or headers.get("connection", "").lower() == "close"
        return Request(method, path, query, headers), length, close

    async def _response(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request,
        length: int,
    ) -> Response:
        if request.method == "PUT":
            return await self._upload(reader, request, length)
        if length > self.app.body_limit(request.method, request.path):
            if length <= DRAIN_LIMIT:  # so that a plain client reads the answer, not EPIPE
                await _discard(reader, length)
            return _error(413, "body too large")
        timer = self.loop.call_later(BODY_TIMEOUT, writer.transport.abort)
        try:
            body = await reader.readexactly(length) if length else b""
        finally:
            timer.cancel()
        r = request
        result = self.app.handle(Request(r.method, r.path, r.query, r.headers, body))
        return await self._park(result, reader) if isinstance(result, Pending) else result

    async def _upload(
        self, reader: asyncio.StreamReader, request: Request, length: int
    ) -> Response:
        target = self.app.upload(request, length)
        if isinstance(target, Response):
            return target
        left = length
        try:
            while left:
                chunk = await asyncio.wait_for(reader.read(min(left, 1 << 16)), BODY_TIMEOUT)
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", left)
                target.write(chunk)
                left -= len(chunk)
        except BaseException:
            target.abort()
            raise
        return target.commit()


def _raise_descriptor_limit() -> int:
    """Raise the soft limit on open descriptors to the hard one; the limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (OSError, ValueError):
            pass
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def _quiet_on_emfile(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Out of descriptors, asyncio stops accepting for a second and tries again: no message."""
    exc = context.get("exception")
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        return
    loop.default_exception_handler(context)


def _time_up(fut: asyncio.Future[Response | None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _discard(reader: asyncio.StreamReader, length: int) -> None:
    while length > 0:
        chunk = await asyncio.wait_for(reader.read(min(length, 1 << 16)), BODY_TIMEOUT)
        if not chunk:
            return
        length -= len(chunk)


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]] | Response:
    try:
        text = head.decode("latin-1")
        line, *rest = text[:-4].split("\r\n")
        method, target, version = line.split(" ")
    except ValueError:
        return _error(400, "malformed request line")
    if version not in ("HTTP/1.1", "HTTP/1.0") or not target.startswith("/"):
        return _error(400, "malformed request line")
    headers: dict[str, str] = {}
    for field in rest:
        name, sep, value = field.partition(":")
        if not sep or not name or name != name.strip():
            return _error(400, "malformed header")
        headers[name.lower()] = value.strip()
    return method, target, version, headers


def _content_length(headers: dict[str, str]) -> int | Response:
    if "transfer-encoding" in headers:
        return _error(501, "chunked bodies are not supported; send Content-Length")
    text = headers.get("content-length", "0")
    if not text.isdigit() or len(text) > 15:
        return _error(400, "bad Content-Length")
    return int(text)


def _error(status: int, message: str) -> Response:
    import json

    return Response(status, json.dumps({"error": message}).encode())


def _frame(response: Response, close: bool) -> bytes:
    reason = _REASONS.get(response.status, "Unknown")
    head = (
        f"HTTP/1.1 {response.status} {reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
    )
    if close:
        head += "Connection: close\r\n"
    return head.encode("latin-1") + b"\r\n" + response.body


async def _send(writer: asyncio.StreamWriter, response: Response, close: bool = False) -> None:
    writer.write(_frame(response, close))
    await writer.drain()


def _try_write(writer: asyncio.StreamWriter, response: Response, close: bool) -> None:
    try:
        writer.write(_frame(response, close))
    except Exception:  # noqa: BLE001 - the peer is gone: nothing to tell it
        pass


def tls_context(cert: str, key: str) -> Any:
    """A server TLS context from PEM files (ExecutorError-worthy OSError/SSLError propagate)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


_CLOSED = _error(499, "the client closed the connection")  # written to no one
