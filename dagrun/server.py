"""The build server: one resident process per project runs the builds its clients ask for.

``python -m dagrun.server MANIFEST`` (started by ``dagrun server start`` or, with
``[dagrun] server = "auto"``, by the first build on a terminal: client.py)
listens on ``.dagrun/server.sock`` (mode 0600) and holds the project's Session
in memory with inotify watching what it reads (resident.py), so a no-op needs
no ``stat`` per file and an edit re-keys only what it reaches.

Each build runs the CLI itself (``cli.main``) in the server's main thread, in
the client's folder and environment, with ``sys.stdout``/``sys.stderr``
streaming to the client: the same code prints the same bytes as in-process.
A client's Ctrl-C comes as an ``i`` frame and is raised as SIGINT in the
server, so the build is interrupted exactly as an in-process one would be
(exit 130); a client that goes away mid-build interrupts it too.

Threads: the acceptor greets every connection at once (the client's proof
that the server is alive), answers ``status`` and ``stop`` itself, and queues
builds; the main thread runs them one at a time (two clients queue like two
builds), and between them checks whether to exit: ``server_idle`` seconds
without a request (``[dagrun] server_idle``, default 10800), the project
folder or the socket gone, ``stop``, SIGTERM, or ``[dagrun] server = false``.
A request from another dagrun version is answered ``v`` and the server exits
(the client builds in-process; the next build may start a current server).

For measuring: a server started with ``DAGRUN_SERVER_PROFILE=FOLDER`` in its
environment (``DAGRUN_SERVER_PROFILE=/tmp/p dagrun server start``) writes each
build's cProfile to ``FOLDER/build-N.prof`` (bench/RESULTS.md, issue 22).
"""

from __future__ import annotations

import io
import marshal
import os
import queue
import signal
import socket
import sys
import threading
import time
from typing import Any

from . import __version__, client
from .client import (
    ERR,
    EXIT,
    HELLO,
    INCOMPATIBLE,
    INTERRUPT,
    OUT,
    PROTOCOL,
    REFUSED,
    REQUEST,
    SOCKET,
    STATUS,
    receive,
    send,
)
from .state.lock import LOCK as STATE_LOCK
from .state.lock import try_flock, write_pid

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .resident import Resident

IDLE_DEFAULT = 10800.0
_CHECK = 1.0  # seconds between the idle loop's looks at the folder, the socket, the clock
_VERSION_ENV = "DAGRUN_TEST_SERVER_VERSION"  # tests: the version this server claims
_PROFILE_ENV = "DAGRUN_SERVER_PROFILE"  # a folder: each build's cProfile is dumped there


def version() -> str:
    return os.environ.get(_VERSION_ENV) or __version__


class _Stream(io.TextIOBase):
    """sys.stdout / sys.stderr of a build: what is written goes to the client as frames."""

    def __init__(self, conn: Any, tag: bytes, tty: bool, encoding: str, errors: str) -> None:
        self._conn, self._tag, self._tty = conn, tag, tty
        self._encoding, self._errors = encoding, errors
        self.gone = False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding

    @property
    def errors(self) -> str:  # type: ignore[override]
        return self._errors

    def isatty(self) -> bool:
        return self._tty

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text and not self.gone:
            try:
                send(self._conn, self._tag, text.encode(self._encoding, self._errors))
            except OSError:
                self.gone = True  # the client went away: the build is being interrupted
        return len(text)


class Server:
    """The resident process of one project (see the module docstring)."""

    def __init__(self, manifest_path: str) -> None:
        self.manifest_path = os.path.abspath(manifest_path)
        self.root = os.path.dirname(self.manifest_path)
        self.state_dir = os.path.join(self.root, ".dagrun")
        self.started = time.time()
        self.code = client.fingerprint()  # the code this server runs (a client compares)
        self.served = 0
        self.last_request = time.monotonic()
        self.building = False
        self.stopping = threading.Event()
        self.resident: Resident | None = None
        self._requests: queue.Queue[tuple[Any, tuple[Any, ...]]] = queue.Queue()
        self._settings: tuple[tuple[int, ...], bool, float] = ((), True, IDLE_DEFAULT)
        self._listener: Any = None
        self._listener_args: tuple[Any, ...] = ()  # (conn, done, err) of the build being served
        self._socket_id: tuple[int, int] | None = None
        self._root_id = os.stat(self.root).st_ino

    # ------------------------------------------------------------ the process

    def run(self, lock: int | None = None) -> int:
        """Serve until it is time to exit; ``lock``: the server lock, if taken already."""
        lock = lock if lock is not None else self._take_lock()
        if lock is None:
            return 0  # another server runs (or starts) for this project
        write_pid(lock)  # who holds it: a client that finds it stopped mid-build kills it
        os.chdir(self.state_dir)  # never keep a user's folder busy
        try:
            self._listen()
            self._log(f"serving {self.manifest_path} (pid {os.getpid()}, dagrun {version()})")
            signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            # greet from the start: a client waits for the project's load (seconds at 100k
            # tasks) queued like a build, not for a hello it gives up on after HELLO_TIMEOUT
            threading.Thread(target=self._accept, name="dagrun-accept", daemon=True).start()
            from .resident import Resident  # not before the build that started it is done

            self.resident = Resident(self.manifest_path, on_doubt=self._log_doubt)
            self._loop()
        finally:
            self._close()
            os.close(lock)
        return 0

    def _take_lock(self) -> int | None:
        os.makedirs(self.state_dir, exist_ok=True)
        return client.server_lock(self.state_dir)

    def _listen(self) -> None:
        where, fd = client.address(self.state_dir)
        path = os.path.join(self.state_dir, SOCKET)
        try:
            os.unlink(path)  # we hold the lock: whatever is there is stale
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(where)
        finally:
            os.umask(old)
            if fd is not None:
                os.close(fd)
        os.chmod(path, 0o600)
        sock.listen(64)
        st = os.stat(path)
        self._socket_id = (st.st_ino, st.st_dev)
        self._listener = sock

    def _close(self) -> None:
        if self.resident is not None:
            self.resident.close()
        path = os.path.join(self.state_dir, SOCKET)
        try:
            st = os.stat(path)
            if (st.st_ino, st.st_dev) == self._socket_id:
                os.unlink(path)
        except OSError:
            pass
        if self._listener is not None:
            self._listener.close()
        while not self._requests.empty():  # queued clients build in-process
            conn, _ = self._requests.get_nowait()
            self._decline(conn)
        self._log("stopped")

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, request = self._requests.get(timeout=_CHECK)
            except queue.Empty:
                why = self._why_exit()
                if why is not None:
                    self._log(f"exiting: {why}")
                    return
                continue
            except KeyboardInterrupt:  # a client's interrupt that came after its build ended
                continue
            try:
                self._serve(conn, request)
            except KeyboardInterrupt:
                pass
            except Exception:  # noqa: BLE001 - a fault of ours: the client builds in-process
                import traceback

                self._log("a build failed in the server; exiting:\n" + traceback.format_exc())
                self.stopping.set()  # what it holds may be half changed: a new one starts
                return
            finally:
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # wakes its interrupt listener
                except OSError:
                    pass
                conn.close()
                self.last_request = time.monotonic()

    def _why_exit(self) -> str | None:
        try:
            if os.stat(self.root).st_ino != self._root_id:
                return "the project folder was replaced"
        except OSError:
            return "the project folder is gone"
        try:
            st = os.stat(os.path.join(self.state_dir, SOCKET))
            if (st.st_ino, st.st_dev) != self._socket_id:
                return "another socket took the place of ours"
        except OSError:
            return "the socket is gone"
        wanted, idle = self._manifest_settings()
        if not wanted:
            return "[dagrun] server = false"
        if time.monotonic() - self.last_request > idle:
            return f"no request for {idle:g} s"
        return None

    def _manifest_settings(self) -> tuple[bool, float]:
        """``[dagrun] server`` (not false) and ``server_idle``, read again when the file changed."""
        try:
            st = os.stat(self.manifest_path)
        except OSError:
            return True, self._settings[2]
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._settings[0]:
            wanted, idle = True, IDLE_DEFAULT
            try:
                import tomllib

                with open(self.manifest_path, "rb") as f:
                    settings = tomllib.load(f).get("dagrun", {})
                wanted = settings.get("server", "auto") is not False
                value = settings.get("server_idle", IDLE_DEFAULT)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                    idle = float(value)
            except (OSError, ValueError, AttributeError):
                pass
            self._settings = (stamp, wanted, idle)
        return self._settings[1], self._settings[2]

    # ------------------------------------------------------------ the acceptor thread

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self.stopping.is_set():
                    return
                continue
            # a thread per greeting: a client stopped between connect and request (Ctrl-Z)
            # must not keep the next ones from their hello
            threading.Thread(target=self._greet, args=(conn,), daemon=True).start()

    def _greet(self, conn: Any) -> None:
        try:
            self._take(conn)
        except Exception as exc:  # a client that went away, a request that is not one
            self._log(f"a request failed: {type(exc).__name__}: {exc}")
            conn.close()

    def _take(self, conn: Any) -> None:
        """Say hello; answer ``status`` and ``stop`` at once, queue a build."""
        conn.settimeout(10.0)
        send(conn, HELLO, marshal.dumps((PROTOCOL, version(), os.getpid())))
        tag, body = receive(conn)
        if tag == STATUS:
            send(conn, STATUS, marshal.dumps(self.status()))
            conn.close()
        elif tag == client.STOP:
            self.stopping.set()
            send(conn, STATUS, marshal.dumps(self.status()))
            conn.close()
        elif tag == REQUEST:
            request = marshal.loads(body)
            problem = _malformed(request)
            if problem is not None:  # not from a dagrun client: say so, and serve on
                self._log(f"a malformed request: {problem}")
                send(conn, ERR, f"dagrun: error: the build server refused the request: "
                                f"{problem}\n".encode())
                send(conn, EXIT, b"2")
                conn.close()
                return
            if request[0] != PROTOCOL or request[1] != (version(), self.code):
                what = version() if request[1][0] != version() else f"{version()} (other files)"
                send(conn, INCOMPATIBLE, what.encode())
                conn.close()
                self._log(f"a client of dagrun {request[1]} asked: exiting for a current server")
                self.stopping.set()
                return
            conn.settimeout(None)
            if self.building or not self._requests.empty():
                send(conn, ERR, (
                    f"dagrun: another build is running in {self.root} (in the build server, "
                    f"pid {os.getpid()}); waiting for it to finish\n"
                ).encode())
            self._requests.put((conn, request))
        else:
            conn.close()

    def _decline(self, conn: Any) -> None:
        try:
            send(conn, REFUSED)
        except OSError:
            pass
        conn.close()

    def status(self) -> dict[str, Any]:
        resident = self.resident
        return {
            "pid": os.getpid(),
            "version": version(),
            "manifest": self.manifest_path,
            "uptime": time.time() - self.started,
            "builds": self.served,
            "building": self.building,
            "folders": len(resident.folders) if resident is not None else 0,
            "rss": _rss(),
            "idle": time.monotonic() - self.last_request,
        }

    # ------------------------------------------------------------ one build

    def _serve(self, conn: Any, request: tuple[Any, ...]) -> None:
        _, _, argv, cwd, environ, ttys, size, codecs = request
        if not self._manifest_settings()[0]:
            self._decline(conn)
            self.stopping.set()
            return
        out = _Stream(conn, OUT, ttys[0], *codecs[0])
        err = _Stream(conn, ERR, ttys[1], *codecs[1])
        done = threading.Event()
        self._listener_args = (conn, done, err)  # started for a build, not for a no-op answer
        self.building = True
        t0 = time.perf_counter()
        try:
            code = self._profiled(argv, cwd, environ, size, out, err, done)
        finally:
            done.set()
            self.building = False
            self.served += 1
        self._log(f"build {self.served}: {' '.join(argv)} -> {code} in "
                  f"{(time.perf_counter() - t0) * 1000:.1f} ms")
        try:
            send(conn, EXIT, str(code).encode())
        except OSError:
            pass

    def _profiled(self, *args: Any) -> int:
        """``_answer``; under ``DAGRUN_SERVER_PROFILE=FOLDER`` (the server's environment, for
        measuring), with cProfile, dumped to FOLDER/build-N.prof."""
        folder = os.environ.get(_PROFILE_ENV)
        if not folder:
            return self._answer(*args)
        import cProfile

        profile = cProfile.Profile()
        try:
            return profile.runcall(self._answer, *args)
        finally:
            profile.dump_stats(os.path.join(folder, f"build-{self.served + 1}.prof"))

    def _answer(self, argv: list[str], cwd: str, environ: dict[str, str], size: Any,
                out: _Stream, err: _Stream, done: threading.Event) -> int:
        """A provable no-op is answered here, as the no-op fast path would (entry.py); every
        other build is the CLI's."""
        from .argv import plain_build
        from .state.proof import no_work_line

        resident = self.resident
        assert resident is not None
        plain = plain_build(argv)
        request = (cwd, *plain[:2], tuple(plain[2])) if plain is not None else (cwd, *argv)
        changed = resident.changes(request)
        if plain is not None and changed is not None and not changed:
            lock = self._try_lock()
            if lock is not None:
                try:
                    count = resident.noop(request, changed, environ)
                    if count is not None:
                        out.write(no_work_line(count) + "\n")
                        return 0
                finally:
                    os.close(lock)
        kept = _Kept(resident, changed, request if plain is not None else None, environ)
        threading.Thread(target=self._listen_for_interrupts, args=self._listener_args,
                         daemon=True).start()  # Ctrl-C in the client, or the client gone
        return self._run_cli(argv, cwd, environ, size, out, err, kept, done)

    def _try_lock(self) -> int | None:
        """The build lock, if no build holds it (a build beside the server may be changing
        what the no-op answer rests on: the build decides then)."""
        return try_flock(os.path.join(self.state_dir, STATE_LOCK))

    def _run_cli(self, argv: list[str], cwd: str, environ: dict[str, str], size: Any,
                 out: _Stream, err: _Stream, kept: _Kept, done: threading.Event) -> int:
        """The CLI in the client's folder and environment, printing to ``out`` and ``err``;
        the server's own state is put back after, with no interrupt landing meanwhile."""
        from . import cli

        saved_env = dict(os.environ)
        saved_streams = sys.stdout, sys.stderr
        size_fn = os.get_terminal_size
        _set_environ(environ)
        if size is not None:
            os.get_terminal_size = lambda *_: os.terminal_size(size)
        sys.stdout, sys.stderr = out, err
        cli.RESIDENT = kept
        try:
            os.chdir(cwd)
            code = cli.main(argv, noop_checked=True)
        except KeyboardInterrupt:
            err.write("dagrun: interrupted\n")
            code = 130
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        except OSError as exc:  # the client's folder is gone, ...
            err.write(f"dagrun: error: {exc}\n")
            code = 2
        except Exception as exc:  # never the server's end: the client sees what went wrong
            import traceback

            err.write("".join(traceback.format_exception(exc)))
            code = 1
        finally:
            done.set()  # no more interrupts sent for this build ...
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # ... nor one in flight landing here
            cli.RESIDENT = None
            cli._KEPT.clear()
            try:
                sys.stdout.flush()
            except Exception:
                pass
            sys.stdout, sys.stderr = saved_streams
            os.get_terminal_size = size_fn
            _set_environ(saved_env)
            os.chdir(self.state_dir)
            kept.after(code)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        return int(code)

    def _listen_for_interrupts(self, conn: Any, done: threading.Event, err: _Stream) -> None:
        """An ``i`` frame (Ctrl-C in the client), or the client gone: SIGINT for the build."""
        while not done.is_set():
            try:
                tag, _ = receive(conn)
            except OSError:
                tag = b""
            if done.is_set():
                return
            if tag == INTERRUPT or tag == b"":
                if tag == b"":
                    err.gone = True
                os.kill(os.getpid(), signal.SIGINT)
                if tag == b"":
                    return

    def _log(self, text: str) -> None:
        log = sys.__stderr__
        if log is not None:
            log.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {text}\n")
            log.flush()

    def _log_doubt(self, why: str) -> None:
        self._log(f"checking everything: {why}")


class _Kept:
    """cli.RESIDENT while a request runs: hands the CLI the resident Session, told what changed,
    for a build of the server's manifest without ``NAME=value`` words; a new Session for any
    other (and the resident one then checks everything next time)."""

    def __init__(self, resident: Resident, changed: Any, plain: Any,
                 environ: dict[str, str]) -> None:
        self.resident = resident
        self.changed = changed  # what resident.changes() answered for this request
        self.plain = plain  # the request, when it is a plain build
        self.environ = environ
        self.used = False  # the CLI took the resident session

    def session(self, path: str, overrides: Any, on_wait: Any, args: Any) -> Any:
        from .session import Session

        cwd = os.getcwd()
        if os.path.abspath(path) != self.resident.manifest_path or overrides:
            return Session(manifest_path=path, on_wait=on_wait, overrides=overrides, cwd=cwd)
        session = self.resident.session
        session.changed = self.changed
        session.ask_from(cwd, os.path.normpath(path), on_wait)
        session.warnings.clear()
        self.used = True
        return session

    def after(self, code: int) -> None:
        if self.used:
            self.resident.finished(code == 0, self.plain, self.environ)
        else:  # the changes it was told are lost with this request: check everything next
            self.resident.forget()


def _malformed(request: Any) -> str | None:
    """What is wrong with a build request (client.py's ``_run`` makes them), or None."""
    import codecs

    if not isinstance(request, tuple) or len(request) != 8:
        return "not a tuple of 8"
    protocol, fingerprint, argv, cwd, environ, ttys, size, streams = request
    if not isinstance(fingerprint, tuple) or len(fingerprint) != 2:
        return "no version"
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        return "argv is not a list of strings"
    if not isinstance(cwd, str) or not isinstance(environ, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in environ.items()):
        return "no folder or environment"
    if not (isinstance(ttys, tuple) and len(ttys) == 2 and all(type(t) is bool for t in ttys)):
        return "no terminal flags"
    if size is not None and not (isinstance(size, tuple) and len(size) == 2
                                 and all(type(n) is int and n >= 0 for n in size)):
        return "a bad terminal size"
    if not (isinstance(streams, tuple) and len(streams) == 2):
        return "no stream encodings"
    for pair in streams:
        try:
            encoding, errors = pair
            codecs.lookup(encoding)
            codecs.lookup_error(errors)
        except (TypeError, ValueError, LookupError):
            return f"a bad stream encoding {pair!r}"
    return None


def _rss() -> int:
    """This process's resident memory in bytes (/proc/self/statm)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _set_environ(environ: dict[str, str]) -> None:
    """Make ``os.environ`` equal ``environ``, changing only what differs: a client's
    environment is mostly the server's, and each variable set or unset is a libc call."""
    current = os.environ
    for name in [n for n in current if n not in environ]:
        del current[name]
    for name, value in environ.items():
        if current.get(name) != value:
            current[name] = value


def serve() -> None:
    """The spawned server's first steps (``python -c``): wait for the build that started it,
    then run it (server.py)."""
    manifest, after = sys.argv[1], int(sys.argv[2])
    lock = client.server_lock(os.path.join(os.path.dirname(manifest), ".dagrun"))
    if lock is None:
        return  # another server runs, or starts, for this project
    if after > 0:
        try:
            fd = os.pidfd_open(after)
        except OSError:  # gone already
            fd = None
        if fd is not None:
            import select

            select.select([fd], [], [], 60.0)
            os.close(fd)
    raise SystemExit(Server(manifest).run(lock))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m dagrun.server MANIFEST\n")
        return 2
    return Server(args[0]).run()


if __name__ == "__main__":
    raise SystemExit(main())
