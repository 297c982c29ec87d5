"""Where the shared cache keeps its blobs and entries: a folder, or an HTTP server.

Both have the layout of existing build caches (bazel-remote, any WebDAV server):
``cas/<sha256>`` holds a blob (an output's bytes, a printed output, a function
result), ``ac/<name>`` a task's entry (entry.py).  A store only moves bytes;
what they mean, and whether they are what they claim, is checked by the
caller (a store can hand back anything).

Every failure of the store itself (unreachable, a timeout, a 500, a 401, a full
disk) is a StoreError; a missing blob or entry is ``None`` / ``False``, not an
error.  Nothing here prints: the token never leaves the request's header.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import IO, Protocol
from urllib.parse import urlsplit

from ..errors import DagrunError

CHUNK = 1 << 20


class StoreError(DagrunError):
    """The shared cache's store failed (not a miss)."""


class Store(Protocol):
    """``kind`` is "cas" or "ac"; ``name`` a hex digest."""

    where: str  # the store as messages name it (no credentials)

    def get(self, kind: str, name: str) -> Iterator[bytes] | None:
        """The object's bytes in chunks; None when it is not there."""

    def has(self, kind: str, name: str) -> bool: ...

    def put(self, kind: str, name: str, data: bytes | str) -> None:
        """Store ``data`` (bytes, or the path of a file to send)."""


def open_store(url: str, token: str, connect_timeout: float, read_timeout: float) -> Store:
    if url.startswith("file://"):
        return FolderStore(url[len("file://"):])
    return HttpStore(url, token, connect_timeout, read_timeout)


# ---------------------------------------------------------------- a folder


class FolderStore:
    """A folder (local, NFS, a CI runner's mounted volume) with ``cas/`` and ``ac/``.

    Writes go to a temporary file in the same folder, renamed into place once
    whole: a reader never sees half a blob, and a full disk leaves nothing behind.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.where = folder
        self._made: set[str] = set()

    def _path(self, kind: str, name: str) -> str:
        return f"{self.folder}/{kind}/{name}"

    def get(self, kind: str, name: str) -> Iterator[bytes] | None:
        try:
            f = open(self._path(kind, name), "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self._path(kind, name)}: {exc.strerror}") from exc
        return _chunks(f)

    def has(self, kind: str, name: str) -> bool:
        return os.path.exists(self._path(kind, name))

    def put(self, kind: str, name: str, data: bytes | str) -> None:
        folder = f"{self.folder}/{kind}"
        tmp = f"{folder}/.tmp-{os.getpid()}-{threading.get_ident()}-{name[:16]}"
        try:
            if folder not in self._made:
                os.makedirs(folder, exist_ok=True)
                self._made.add(folder)
            with open(tmp, "wb") as out:
                if isinstance(data, bytes):
                    out.write(data)
                else:
                    with open(data, "rb") as src:
                        while chunk := src.read(CHUNK):
                            out.write(chunk)
            os.replace(tmp, self._path(kind, name))
        except OSError as exc:
            _remove(tmp)
            raise StoreError(f"cannot write to {folder}: {exc.strerror or exc}") from exc


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    with f:
        while chunk := f.read(CHUNK):
            yield chunk


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ---------------------------------------------------------------- HTTP


class HttpStore:
    """``GET``/``HEAD``/``PUT`` of ``<url>/cas/<sha256>`` and ``<url>/ac/<name>``.

    One keep-alive connection per thread; ``connect_timeout`` bounds the
    connection, ``read_timeout`` every wait for the server after it.  A
    ``token`` goes in an ``Authorization: Bearer`` header and nowhere else.
    """

    def __init__(self, url: str, token: str, connect_timeout: float, read_timeout: float) -> None:
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self.where = f"{parts.scheme}://{self.host}{':' + str(self.port) if self.port else ''}"
        self.where += self.prefix
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._local = threading.local()
        self._opened: list[object] = []  # every thread's connection, closed by close()
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()  # type: ignore[attr-defined]

    def _connection(self) -> object:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            import http.client

            cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            conn = cls(self.host, self.port, timeout=self.connect_timeout)
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(self.read_timeout)
            self._local.conn = conn
            with self._lock:
                self._opened.append(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def _request(self, method: str, kind: str, name: str, body: bytes | IO[bytes] | None = None,
                 size: int = 0) -> object:
        """The response (status read, body not yet); StoreError when the server cannot answer."""
        path = f"{self.prefix}/{kind}/{name}"
        headers = dict(self.headers)
        if body is not None:
            headers["Content-Length"] = str(size)
        for attempt in (1, 2):  # a kept-alive connection the server closed: once more, anew
            try:
                conn = self._connection()
                conn.request(method, path, body=body, headers=headers)  # type: ignore[attr-defined]
                return conn.getresponse()  # type: ignore[attr-defined]
            except OSError as exc:
                self._drop()
                if attempt == 2 or isinstance(exc, TimeoutError) or not _reused(exc):
                    raise StoreError(f"{self.where}: {_why(exc)}") from exc
                if body is not None and not isinstance(body, bytes):
                    body.seek(0)
            except Exception as exc:  # http.client's own (a bad status line, ...)
                self._drop()
                if attempt == 2:
                    raise StoreError(f"{self.where}: {type(exc).__name__}") from exc
        raise AssertionError("unreachable")

    def get(self, kind: str, name: str) -> Iterator[bytes] | None:
        resp = self._request("GET", kind, name)
        status = resp.status  # type: ignore[attr-defined]
        if status == 404:
            resp.read()  # type: ignore[attr-defined]
            return None
        if status != 200:
            resp.read()  # type: ignore[attr-defined]
            raise StoreError(f"{self.where}: GET {kind}/{name[:16]}... answered {status}")
        return self._body(resp)

    def _body(self, resp: object) -> Iterator[bytes]:
        try:
            while chunk := resp.read(CHUNK):  # type: ignore[attr-defined]
                yield chunk
        except OSError as exc:
            self._drop()
            raise StoreError(f"{self.where}: {_why(exc)}") from exc
        except Exception as exc:  # http.client.IncompleteRead: the server stopped half-way
            self._drop()
            raise StoreError(f"{self.where}: {type(exc).__name__}") from exc

    def has(self, kind: str, name: str) -> bool:
        resp = self._request("HEAD", kind, name)
        resp.read()  # type: ignore[attr-defined]
        status = resp.status  # type: ignore[attr-defined]
        if status in (200, 404):
            return bool(status == 200)
        raise StoreError(f"{self.where}: HEAD {kind}/{name[:16]}... answered {status}")

    def put(self, kind: str, name: str, data: bytes | str) -> None:
        if isinstance(data, bytes):
            resp = self._request("PUT", kind, name, data, len(data))
        else:
            with open(data, "rb") as f:
                resp = self._request("PUT", kind, name, f, os.fstat(f.fileno()).st_size)
        resp.read()  # type: ignore[attr-defined]
        status = resp.status  # type: ignore[attr-defined]
        if status not in (200, 201, 204):
            raise StoreError(f"{self.where}: PUT {kind}/{name[:16]}... answered {status}")


def _reused(exc: OSError) -> bool:
    """The error of a kept-alive connection the server closed meanwhile."""
    return isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)) or (
        type(exc).__name__ == "RemoteDisconnected"
    )


def _why(exc: OSError) -> str:
    if isinstance(exc, TimeoutError) or "timed out" in str(exc):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__
