"""The build server's client: hand a build to the project's server (server.py), or say it cannot.

``forward(argv)`` runs first thing in the ``dagrun`` command (entry.py), before the CLI
or anything of the build is imported, so it imports only ``os``, ``sys``, ``marshal``
and ``_socket`` (the C half of ``socket``: 0.3 ms instead of 2.3).  It answers the
exit status of a build the server ran, or None: build in-process.  None whenever
it is unsure -- not a build, a ``-C``/``-f`` it does not read the way argparse
does, no server, a server that did not answer within ``HELLO_TIMEOUT`` (dead,
wedged by SIGSTOP, busy beyond reason), one of another dagrun version, or one
that declines (``[dagrun] server = false``).  A server that should have answered
and did not gets one warning line; in-process is always a right answer.

The protocol, over ``.dagrun/server.sock`` (mode 0600): frames of one tag byte,
a 4-byte length and a payload.  The server speaks first (``h``: its protocol,
version, pid) as soon as it accepts, from a thread that never builds, so a
client learns within milliseconds that it is alive even while another build
runs.  The client then sends ``q`` (marshal: the request: argv, cwd,
environment, which streams are terminals and their size, their encoding), and
the server streams ``o`` and ``e`` (the bytes the build writes to stdout and
stderr) and ends with ``x`` (the exit status).  ``i`` from the client is
Ctrl-C (or SIGTERM, SIGHUP): the server interrupts the build as a signal
would interrupt an in-process one.  ``r`` (declined) and ``v`` (incompatible)
end a request before anything ran: the client builds in-process.

When no server runs, ``forward`` may start one in the background (``[dagrun]
server = "auto"``, the default: on a terminal, without ``CI`` set; or whenever
``DAGRUN_SERVER=1``) and builds this time in-process.  ``DAGRUN_SERVER=0`` and
``--no-server`` never reach this module (entry.py checks them first).
"""

from __future__ import annotations

import _socket
import marshal
import os
import sys

from .argv import COMMANDS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

PROTOCOL = 1
SOCKET, LOG, LOCK = "server.sock", "server.log", "server.lock"
HELLO_TIMEOUT = 0.7  # a live server answers within ms; the user waits at most this, then builds
OUT, ERR, EXIT, HELLO, REFUSED, INCOMPATIBLE, STATUS = b"o", b"e", b"x", b"h", b"r", b"v", b"s"
REQUEST, INTERRUPT, STOP = b"q", b"i", b"t"
_MAX_ADDRESS = 100  # sun_path holds 108 bytes: a longer path is reached through /proc/self/fd


class Refused(Exception):
    """The server cannot take requests (dead, wedged, incompatible): why, for a warning."""


# ------------------------------------------------------------------ frames


def send(sock: Any, tag: bytes, body: bytes = b"") -> None:
    sock.sendall(tag + len(body).to_bytes(4, "little") + body)


def receive(sock: Any) -> tuple[bytes, bytes]:
    """The next frame; (b"", b"") when the other side closed."""
    head = _exactly(sock, 5)
    if len(head) < 5:
        return b"", b""
    body = _exactly(sock, int.from_bytes(head[1:], "little"))
    return head[:1], body


def _exactly(sock: Any, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def address(state_dir: str) -> tuple[str, int | None]:
    """The socket's address, and a folder descriptor to close after use when the path is too
    long for ``sun_path`` (the address is then ``/proc/self/fd/N/server.sock``)."""
    path = os.path.join(state_dir, SOCKET)
    if len(path.encode()) <= _MAX_ADDRESS:
        return path, None
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{SOCKET}", fd


def connect(state_dir: str, timeout: float = HELLO_TIMEOUT) -> tuple[Any, tuple[Any, ...]]:
    """A connection to the project's server and its hello (protocol, version, pid, ...);
    FileNotFoundError when there is no socket; Refused when it does not answer as one."""
    where, fd = address(state_dir)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(where)
        except FileNotFoundError:
            raise
        except ConnectionRefusedError:
            raise Refused("is not running (a stale socket)") from None
        except OSError as exc:
            raise Refused(f"cannot be reached ({exc.strerror or exc})") from None
        try:
            tag, body = receive(sock)
        except OSError:  # _socket.timeout is an OSError
            raise Refused(f"did not answer within {timeout:g} s") from None
        if tag != HELLO:
            raise Refused("closed the connection")
        hello = marshal.loads(body)
        sock.settimeout(None)
        return sock, hello
    except BaseException:
        sock.close()
        raise
    finally:
        if fd is not None:
            os.close(fd)


# ------------------------------------------------------------------ forwarding a build


def forward(argv: Sequence[str]) -> int | None:
    """The exit status of the build ``argv`` as the project's server ran it; None: build it
    in-process (a background server may have been started for the next one)."""
    where = _build_location(argv)
    if where is None:
        return None
    from .locate import find

    manifest = find(*where)
    if manifest is None:
        return None
    state_dir = os.path.join(os.path.dirname(os.path.abspath(manifest)), ".dagrun")
    try:
        sock, hello = connect(state_dir)
    except FileNotFoundError:
        _maybe_start(manifest, state_dir)
        return None
    except Refused as exc:
        stopped = _stopped_mid_build(state_dir) if "did not answer" in str(exc) else None
        if stopped is not None:  # it holds the build lock, and would hold it forever
            _warn(f"the build server (pid {stopped}) is stopped (SIGSTOP) in the middle of a "
                  "build; killed it and its tasks; building in-process")
            _kill_server(stopped)
        else:
            _warn(f"the build server {exc}; building in-process")
        if "stale" in str(exc) or stopped is not None:
            _remove_stale(state_dir)
            _maybe_start(manifest, state_dir)
        return None
    try:
        return _run(sock, argv, hello)
    finally:
        sock.close()


def _run(sock: Any, argv: Sequence[str], hello: tuple[Any, ...]) -> int | None:
    from . import __version__

    out, err = sys.stdout, sys.stderr
    ttys = (_isatty(out), _isatty(err))
    size = None
    if ttys[0] or ttys[1]:
        try:
            size = tuple(os.get_terminal_size(1 if ttys[0] else 2))
        except OSError:
            size = None
    request = (
        PROTOCOL, (__version__, fingerprint()), list(argv), os.getcwd(), dict(os.environ), ttys,
        size,
        tuple((getattr(s, "encoding", None) or "utf-8", getattr(s, "errors", None) or "strict")
              for s in (out, err)),
    )
    try:
        send(sock, REQUEST, marshal.dumps(request))
    except OSError as exc:
        _warn(f"the build server went away ({exc.strerror or exc}); building in-process")
        return None
    return _stream(sock, hello)


def _stream(sock: Any, hello: tuple[Any, ...]) -> int | None:
    """Print what the server streams until the exit status; Ctrl-C becomes an ``i`` frame."""
    started = False
    while True:
        try:
            tag, body = receive(sock)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM / SIGHUP (entry.py's early handler)
            try:
                send(sock, INTERRUPT)
            except OSError:
                return 130
            continue
        except OSError:
            tag, body = b"", b""
        if tag in (OUT, ERR):
            started = True
            _write(1 if tag == OUT else 2, body)
        elif tag == EXIT:
            return int(body)
        elif tag == REFUSED:
            return None  # the server declines (server = false): in-process, no warning
        elif tag == INCOMPATIBLE:
            _warn(f"the build server (pid {hello[2]}) runs dagrun {body.decode()}; "
                  "building in-process (it stops)")
            return None
        elif not started:
            _warn(f"the build server (pid {hello[2]}) went away; building in-process")
            return None
        else:  # gone in the middle of a build: its output is half shown, nothing to redo
            _write(2, b"dagrun: error: the build server went away during the build\n")
            return 1


def fingerprint() -> tuple[int, ...]:
    """This dagrun's code as installed now: Python's version, and the newest mtime and the
    number of its modules (a reinstall or an edit of the same version changes it; ~0.2 ms)."""
    here = os.path.dirname(os.path.abspath(__file__))
    newest, count = 0, 0
    for folder in (here, *(e.path for e in os.scandir(here) if e.is_dir()
                           and not e.name.startswith(("_", ".")))):
        for entry in os.scandir(folder):
            if entry.name.endswith(".py"):
                newest = max(newest, entry.stat().st_mtime_ns)
                count += 1
    return (*sys.version_info[:2], newest, count)


def _write(fd: int, data: bytes) -> None:
    stream = sys.stdout if fd == 1 else sys.stderr
    try:
        stream.flush()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        pass  # a closed pipe: the rest goes nowhere, as in-process (stdio.py)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _warn(text: str) -> None:
    try:
        sys.stderr.write(f"dagrun: warning: {text}\n")
        sys.stderr.flush()
    except OSError:
        pass


def _remove_stale(state_dir: str) -> None:
    """Remove a socket nobody listens on, unless a server holds the lock (it is starting)."""
    import fcntl

    try:
        fd = os.open(os.path.join(state_dir, LOCK), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(os.path.join(state_dir, SOCKET))
    except OSError:
        pass
    finally:
        if fd is not None:
            os.close(fd)


def _stopped_mid_build(state_dir: str) -> int | None:
    """The pid of the project's server when it is stopped (SIGSTOP, a debugger) while it
    holds the build lock; else None.  Only our own background server: a stopped ``dagrun
    build`` in a terminal is the user's to resume, and the build waits for it as usual."""
    from .remote_run import state
    from .state.lock import LOCK as BUILD_LOCK
    from .state.lock import read_pid, try_flock

    paths = (os.path.join(state_dir, LOCK), os.path.join(state_dir, BUILD_LOCK))
    pid = read_pid(paths[0])
    # "T" only, not "t": a tracer's stop is brief
    if pid is None or read_pid(paths[1]) != pid or state(pid) != b"T":
        return None
    for path in paths:
        fd = try_flock(path)  # both still held (by it: the pid in each is its own)
        if fd is not None:
            os.close(fd)
            return None
    return pid


def _kill_server(pid: int) -> None:
    """SIGKILL a stopped server and its build's local tasks (marked ``PID.``, sweep.py), then
    wait (a moment) for it to be gone, which frees the build lock: its log is as safe as after
    any crash, and the build that follows runs again what was running."""
    import select
    import signal

    from .executors import sweep
    from .remote_run import state

    try:
        fd = os.pidfd_open(pid)  # from here, this process and no other that takes its pid
    except OSError:
        return
    try:
        if state(pid) != b"T":  # still the stopped one (looked at before the pidfd)
            raise OSError("not stopped any more")
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        os.close(fd)
        return
    try:
        sweep.sweep(f"{pid}.")
        select.select([fd], [], [], 2.0)
    finally:
        os.close(fd)


def _build_location(argv: Sequence[str]) -> tuple[str, str | None] | None:
    """(-C DIR, -f FILE) when ``argv`` is a build whose -C and -f this reader is sure of."""
    directory, file = ".", None
    command = None
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in ("-h", "--help", "--version", "--no-server", "--"):
            return None
        if word in ("-C", "-f"):
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                return None
            if word == "-C":
                directory = argv[i + 1]
            else:
                file = argv[i + 1]
            i += 2
            continue
        if word.startswith(("-C", "-f")) and not word.startswith("--"):
            return None  # -CDIR, -fFILE: argparse's business
        if command is None and word in COMMANDS:
            command = word
        i += 1
    if command not in (None, "build"):
        return None
    return directory, file


# ------------------------------------------------------------------ starting one


def _maybe_start(manifest: str, state_dir: str) -> None:
    """Start a server in the background for the next build, if this one may (see the module
    docstring), and say so on stderr."""
    if not _auto(manifest) or _starting(state_dir):
        return
    pid = spawn(manifest, state_dir, after=os.getpid())
    if pid is not None:
        sys.stderr.write(
            f"dagrun: started the build server (pid {pid}) for the next builds; "
            "`dagrun server stop` ends it, `--no-server` or DAGRUN_SERVER=0 keeps a build "
            "in-process\n"
        )


def _auto(manifest: str) -> bool:
    mode = os.environ.get("DAGRUN_SERVER", "")
    if mode != "1":
        if "CI" in os.environ or not (_isatty(sys.stdout) and _isatty(sys.stdin)):
            return False
    return wanted(manifest)


def wanted(manifest: str) -> bool:
    """Whether ``[dagrun] server`` is not false (the TOML is parsed only if it may be)."""
    try:
        with open(manifest, "rb") as f:
            text = f.read()
    except OSError:
        return False
    if b"server" not in text:
        return True
    try:
        import tomllib

        settings = tomllib.loads(text.decode()).get("dagrun", {})
    except (ValueError, UnicodeDecodeError):
        return False  # the build reports the manifest's error
    return not isinstance(settings, dict) or settings.get("server", "auto") is not False


def spawn(manifest: str, state_dir: str, after: int = 0) -> int | None:
    """Start the server (``serve``) detached: its own session, stdin from /dev/null, stdout
    and stderr to ``.dagrun/server.log``; its pid, or None when it could not be started.
    ``after``: a pid (the build that starts it) whose end it waits for before loading the
    project, so that the two do not compete for the CPU.  ``posix_spawn``, not subprocess:
    ~8 ms less for the build that starts it."""
    try:
        os.makedirs(state_dir, exist_ok=True)
        log = os.open(os.path.join(state_dir, LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT
                      | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the same dagrun
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = [sys.executable, "-c", "from dagrun.server import serve; serve()",
            os.path.abspath(manifest), str(after)]
    try:
        return os.posix_spawn(sys.executable, argv, env, setsid=True, file_actions=[
            (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, log, 1),
            (os.POSIX_SPAWN_DUP2, log, 2),
        ])
    except OSError:
        return None
    finally:
        os.close(log)
        os.close(null)


def server_lock(state_dir: str) -> int | None:
    """The server lock (one server per project), taken; None when another holds it."""
    from .state.lock import try_flock

    return try_flock(os.path.join(state_dir, LOCK), os.O_RDWR | os.O_CREAT)


def _starting(state_dir: str) -> bool:
    """Whether a server holds the lock (it is starting: no socket yet)."""
    fd = server_lock(state_dir)
    if fd is None:
        return os.path.exists(os.path.join(state_dir, LOCK))
    os.close(fd)
    return False


# ------------------------------------------------------------------ dagrun server start|stop|status

START_TIMEOUT = 30.0


def command(action: str, manifest: str) -> int:
    """``dagrun server start|stop|status`` for the project of ``manifest``; the exit status."""
    state_dir = os.path.join(os.path.dirname(os.path.abspath(manifest)), ".dagrun")
    if action == "start":
        return _start(manifest, state_dir)
    if action == "stop":
        return _stop(state_dir)
    return _status(state_dir)


def ask(state_dir: str, tag: bytes) -> dict[str, Any] | None:
    """The server's answer (its status) to ``tag``; None when no server answers."""
    try:
        sock, _ = connect(state_dir, timeout=2.0)
    except (FileNotFoundError, Refused):
        return None
    try:
        sock.settimeout(5.0)
        send(sock, tag)
        answer, body = receive(sock)
        return marshal.loads(body) if answer == STATUS else None
    except (OSError, ValueError, EOFError):
        return None
    finally:
        sock.close()


def _start(manifest: str, state_dir: str) -> int:
    found = ask(state_dir, STATUS)
    if found is not None:
        print(f"dagrun: the build server already runs (pid {found['pid']})")
        return 0
    if not wanted(manifest):
        sys.stderr.write("dagrun: error: [dagrun] server = false in the manifest\n")
        return 2
    _remove_stale(state_dir)
    pid = spawn(manifest, state_dir)
    if pid is None:
        sys.stderr.write("dagrun: error: cannot start the build server\n")
        return 1
    import time

    end = time.monotonic() + START_TIMEOUT
    while time.monotonic() < end:
        found = ask(state_dir, STATUS)
        if found is not None:
            print(f"dagrun: the build server runs (pid {found['pid']}); "
                  f"its log: {os.path.join(state_dir, LOG)}")
            return 0
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done == pid:
            break
        time.sleep(0.05)
    sys.stderr.write(f"dagrun: error: the build server did not start; see "
                     f"{os.path.join(state_dir, LOG)}\n")
    return 1


def _stop(state_dir: str) -> int:
    found = ask(state_dir, STOP)
    if found is None:
        print("dagrun: no build server runs for this project")
        return 0
    import time

    from .remote_run import alive  # the one test of a process still running

    end = time.monotonic() + 10.0
    while time.monotonic() < end and alive(found["pid"]):
        time.sleep(0.02)
    print(f"dagrun: stopped the build server (pid {found['pid']})")
    return 0



def _status(state_dir: str) -> int:
    found = ask(state_dir, STATUS)
    if found is None:
        print("dagrun: no build server runs for this project")
        return 1
    up = int(found["uptime"])
    print(f"pid:     {found['pid']} (dagrun {found['version']})")
    print(f"uptime:  {up // 3600}h{up // 60 % 60:02d}m{up % 60:02d}s")
    print(f"builds:  {found['builds']} served" + (", one running" if found["building"] else ""))
    print(f"watches: {found['folders']} folder(s)")
    print(f"memory:  {found['rss'] / 2**20:.1f} MiB resident")
    print(f"idle:    {found['idle']:.0f} s")
    return 0
