"""The control channel of a running build: ``.dagrun/control.sock`` (mode 0600).

Every build that runs tasks serves it from a thread of its own (ControlServer),
so `dagrun status`, `tail` and `cancel` can reach it; the thread asks the
scheduler through a steering.Mailbox and never touches its state.  The thread
is started before the first task and imports ``socket`` itself, so the
scheduler's thread pays neither the import nor the bind.

The protocol: the client sends one JSON line, the server answers with JSON lines.

    {"op": "status"}                         -> the status (steering._status), one line
    {"op": "cancel", "tasks": [NAME, ...]}   -> {"said": [...]} or {"unknown": message}
    {"op": "tail", "task": NAME, "lines": N} -> {"note": ...} {"o": text} {"e": text} ...
                                                 {"end": state, "why": ...}

The same thread ticks the stall check (steering.StallWatch) every few seconds.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .errors import DagrunError

if TYPE_CHECKING:
    import socket

    from .steering import Mailbox, Source

SOCKET = "control.sock"
FOLLOW_EVERY = 0.1  # seconds between two reads of a followed task's output
FIRST_BYTES = 1 << 16  # read from the end of each stream for ``tail -n N``
CONNECT_WAIT = 1.0  # seconds a client tries again while a build holds the lock but no socket
CLIENTS_GRACE = 2.0  # seconds a closing build waits for its clients' last words
_SUN_PATH = 100  # sun_path holds 108 bytes
END_MARK = "@@dagrun-end "  # the end record of an SSH job's wrapper (executors/ssh.py), after "\n"


class NoBuild(DagrunError):
    """No build is running in this project (nothing answers on the control socket)."""

    exit_code = 1


def _address(path: str) -> tuple[str, int | None]:
    """``path`` as a unix socket address; a long one through /proc/self/fd (a folder's fd)."""
    if len(path.encode()) <= _SUN_PATH:
        return path, None
    folder = os.open(os.path.dirname(path), os.O_PATH | os.O_CLOEXEC)
    return f"/proc/self/fd/{folder}/{os.path.basename(path)}", folder


class ControlServer:
    """Serves ``.dagrun/control.sock`` for one build; ``close()`` removes it."""

    def __init__(self, state_dir: str, mailbox: Mailbox, stall_every: float | None) -> None:
        self.path = os.path.join(state_dir, SOCKET)
        self.mailbox = mailbox
        self.stall_every = stall_every
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._inode: int | None = None
        self._clients: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._run, name="dagrun-control", daemon=True)
        self._thread.start()

    def _bind(self) -> socket.socket:
        import socket

        tmp = f"{self.path}.{os.getpid()}"
        address, folder = _address(tmp)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            sock.bind(address)
            os.chmod(tmp, 0o600)  # before anyone can connect: listen() comes after
            sock.listen(16)
            os.replace(tmp, self.path)
            self._inode = os.stat(self.path).st_ino
        except OSError:
            sock.close()
            raise
        finally:
            if folder is not None:
                os.close(folder)
        return sock

    def _run(self) -> None:
        import select

        try:
            sock = self._bind()
        except OSError:
            return  # no control channel: status is a convenience, never a build's failure
        every = self.stall_every
        tick = None if every is None else time.monotonic() + every
        with sock:
            while True:
                wait = None if tick is None else max(0.0, tick - time.monotonic())
                ready, _, _ = select.select([sock.fileno(), self._stop_r], [], [], wait)
                if self._stop_r in ready:
                    return
                if sock.fileno() in ready:
                    conn, _ = sock.accept()
                    client = threading.Thread(
                        target=self._answer, args=(conn,), name="dagrun-control-client",
                        daemon=True,
                    )
                    client.start()
                    self._clients = [t for t in self._clients if t.is_alive()] + [client]
                if tick is not None and every is not None and time.monotonic() >= tick:
                    self.mailbox.ask("stall", timeout=0)  # not waited for
                    tick = time.monotonic() + every

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5.0)
                with conn.makefile("rb") as f:
                    request = json.loads(f.readline() or b"{}")
                conn.settimeout(None)
                _serve(conn, self.mailbox, request)
            except (OSError, ValueError, AttributeError, TypeError):
                pass  # a client gone or talking nonsense: nothing to say

    def close(self) -> None:
        """Stop serving; the mailbox is closed first, so each client's thread sends its last
        words (a `tail`'s end record) and is waited for, up to CLIENTS_GRACE in all: the build's
        process must not exit under a thread still writing to a client."""
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5.0)
        deadline = time.monotonic() + CLIENTS_GRACE
        for client in self._clients:
            client.join(timeout=max(0.0, deadline - time.monotonic()))
        os.close(self._stop_r)
        os.close(self._stop_w)
        try:
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass


def _send(conn: socket.socket, record: dict[str, Any]) -> None:
    conn.sendall((json.dumps(record) + "\n").encode())


def _serve(conn: socket.socket, box: Mailbox, request: dict[str, Any]) -> None:
    op = request.get("op")
    if op == "status":
        _send(conn, box.ask("status") or {"error": "the build did not answer"})
    elif op == "cancel":
        _send(conn, box.ask("cancel", [str(t) for t in request.get("tasks", [])]) or {})
    elif op == "tail":
        _tail(conn, box, str(request.get("task")), int(request.get("lines", 10)))
    else:
        _send(conn, {"error": f"unknown request {op!r}"})


def _tail(conn: socket.socket, box: Mailbox, task: str, lines: int) -> None:
    """Stream a task's output until it ends.  A queued task is waited for (then shown whole);
    a finished one shows what its run folder kept."""
    found = box.ask("follow", (task, False))
    waited = found is not None and found["state"] == "queued"
    if waited:
        _send(conn, {"note": f"{task} is queued; waiting for it to start"})
        found = box.ask("follow", (task, True), timeout=None)
    while found is not None and found["state"] == "starting":
        if box.wait_closed(FOLLOW_EVERY):
            found = None
            break
        found = box.ask("follow", (task, False))
    if found is None:
        return _send(conn, {"end": "the build ended"})
    if found["state"] == "running":
        return _stream(conn, box, found["job"], found["sources"], -1 if waited else lines)
    if "run_dir" in found:
        for name, key in (("stdout.txt", "o"), ("stderr.txt", "e")):
            reader = _Reader(os.path.join(found["run_dir"], name), key, filtered=False)
            text = reader.last_lines(-1 if waited else lines)
            reader.close()
            if text:
                _send(conn, {key: text})
    _send(conn, {"end": found["state"], "why": found.get("why")})


def _stream(conn: socket.socket, box: Mailbox, job: int, sources: list[Source], n: int) -> None:
    readers = [_Reader(src, key) for src, key in zip(sources, ("o", "e"), strict=False)]
    try:
        for r in readers:
            text = r.last_lines(n)
            if text:
                _send(conn, {r.key: text})
        state = None
        while state is None:
            state = box.wait_ended(job, FOLLOW_EVERY)
            for r in readers:
                text = r.more(final=state is not None)
                if text:
                    _send(conn, {r.key: text})
        _send(conn, {"end": state})
    finally:
        box.unfollow(job)
        for r in readers:
            r.close()


class _Reader:
    """Reads a growing output file from where it was last read (a path: from the remote side,
    whose dagrun lines ``@@dagrun-...`` are left out)."""

    def __init__(self, source: Source, key: str, filtered: bool = True) -> None:
        import codecs

        self.key = key
        self.filtered = filtered and not isinstance(source, int)
        self.fd = source if isinstance(source, int) else _open(source)
        self.offset = 0
        self.pending = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def last_lines(self, n: int) -> str:
        if self.fd < 0:
            return ""
        size = os.fstat(self.fd).st_size
        start = max(0, size - FIRST_BYTES)
        data = os.pread(self.fd, size - start, start)
        self.offset = size
        text = self._filter(data.decode("utf-8", "replace"), final=False)
        if n < 0:  # everything (of the last FIRST_BYTES)
            return text
        return "".join(text.splitlines(keepends=True)[-n:]) if n else ""

    def more(self, final: bool) -> str:
        if self.fd < 0:
            return ""
        chunks = []
        while True:
            data = os.pread(self.fd, 1 << 16, self.offset)
            if not data:
                break
            self.offset += len(data)
            chunks.append(data)
        text = self.decoder.decode(b"".join(chunks), final=final)
        return self._filter(text, final)

    def _filter(self, text: str, final: bool) -> str:
        if not self.filtered:
            return text
        text = self.pending + text
        cut = len(text) if final else text.rfind("\n") + 1  # whole lines only, until the end
        lines = text[:cut].splitlines(keepends=True)
        if not final and lines and lines[-1] == "\n":  # may be the start of the end record
            lines.pop()
            cut -= 1
        self.pending = text[cut:]
        kept = []
        for n, line in enumerate(lines):
            mark = lines[n + 1].startswith(END_MARK) if n + 1 < len(lines) else False
            if not line.startswith("@@dagrun-") and not (line == "\n" and mark):
                kept.append(line)
        return "".join(kept)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


# ---------------------------------------------------------------- the client side


def _connect(state_dir: str, timeout: float) -> socket.socket:
    """A connection to the running build's control socket; NoBuild when none answers.

    A build binds its socket from a thread of its own as its first task starts, so a client
    that comes in the first moments finds no socket yet: while a build holds the project's
    lock (``_building``), it is tried again for up to CONNECT_WAIT seconds.  So it is while
    the socket's queue is full."""
    deadline = time.monotonic() + min(timeout, CONNECT_WAIT)
    while True:
        try:
            return _connect_once(state_dir, timeout)
        except BlockingIOError:  # a full queue of connections: it is there, and busy
            pass
        except (FileNotFoundError, ConnectionRefusedError):
            if not _building(state_dir):
                raise NoBuild("no build is running here") from None
        except OSError:
            raise NoBuild("no build is running here") from None
        if time.monotonic() >= deadline:
            raise NoBuild("no build is running here")
        time.sleep(0.01)


def _connect_once(state_dir: str, timeout: float) -> socket.socket:
    import socket

    path = os.path.join(state_dir, SOCKET)
    address, folder = _address(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    finally:
        if folder is not None:
            os.close(folder)
    return sock


def _building(state_dir: str) -> bool:
    """Whether a process holds the project's build lock exclusively (``/proc/locks``: taking
    the lock to find out would make a build starting meanwhile wait for us)."""
    from .state.lock import LOCK

    try:
        st = os.stat(os.path.join(state_dir, LOCK))
        with open("/proc/locks") as f:
            held = f.read()
    except OSError:
        return False
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in held.splitlines():
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE" \
                and fields[5] == where:
            return True
    return False


def ask(state_dir: str, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """The running build's one-line answer; NoBuild when none runs."""
    for answer in stream(state_dir, request, timeout):
        return answer
    raise NoBuild("the build ended before it answered")


def stream(state_dir: str, request: dict[str, Any], timeout: float | None = 10.0
           ) -> Iterator[dict[str, Any]]:
    """The running build's answers, line by line, until it closes the connection."""
    sock = _connect(state_dir, 10.0 if timeout is None else timeout)
    with sock:
        sent = False
        with sock.makefile("rb") as f:
            while True:
                try:
                    if not sent:
                        sock.sendall((json.dumps(request) + "\n").encode())
                        sock.settimeout(timeout)
                        sent = True
                    line = f.readline()
                except OSError:  # reset (the build ended meanwhile) or no answer in time
                    raise NoBuild("the build did not answer (it may have ended)") from None
                if not line:
                    return
                try:
                    yield json.loads(line)
                except ValueError:
                    continue
