"""One resident runner per SSH executor: every job of the host through one channel.

``Resident(argv)`` starts ``python3 -c`` with remote_run.py's own text and its
``resident_main`` on the host, over the executor's master connection, once; each
job is then one JSON line to it (``run``; ``cancel``, ``kill``) and frames back
(``remote_run.FRAME``): its group id, its output (written here, as it comes, into
the files the job's thread gave: the run folder's stdout.txt and stderr.txt, so
``dagrun tail`` follows it), and its end.  No process starts here per job, and
no interpreter there.

A reader thread takes the frames.  When the channel ends (the connection
dropped, the runner died) every job still running on it ends ``lost`` with why
(the runner kills their groups itself when its stdin ends; the executor kills
them again over a new connection before they run again), and the executor starts
another runner for the next job.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import tempfile
import threading
from typing import Any

from .. import remote_run

_FRAME = struct.Struct(remote_run.FRAME)
READY_TIMEOUT = 60.0  # seconds for the runner to say it is there


def _program() -> str:
    """What the host runs (``python3 -c``): remote_run.py's own text, then its
    ``resident_main``, so that the host runs the same code as a Dask worker, not a copy."""
    with open(remote_run.__file__, encoding="utf-8") as f:
        return f.read() + "\nresident_main()\n"


PROGRAM = _program()


class Slot:
    """One job on the runner: where its output goes, and how it ended."""

    __slots__ = ("out", "err", "done", "pgid", "end", "error", "lost")

    def __init__(self, out: int, err: int) -> None:
        self.out, self.err = out, err
        self.done = threading.Event()
        self.pgid: int | None = None
        self.end: tuple[int, int, float] | None = None  # exit code, max RSS kB, duration
        self.error: str | None = None  # could not start: why
        self.lost: str | None = None  # the runner went away: why


class Resident:
    """The runner on one host; see the module docstring."""

    def __init__(self, argv: list[str]) -> None:
        self._errors = tempfile.TemporaryFile()  # not a pipe: the ssh client keeps it open
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errors,
            start_new_session=True, bufsize=0,
        )
        self.host_pid: int | None = None
        self.ready = threading.Event()
        self.gone: str | None = None  # why it ended
        self._slots: dict[int, Slot] = {}
        self._lock = threading.Lock()  # the slots
        self._writing = threading.Lock()  # stdin (never held while a frame waits for _lock)
        self._reader = threading.Thread(target=self._read, name="dagrun-ssh-resident",
                                        daemon=True)
        self._reader.start()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> str | None:
        """None once the runner is there, else why it is not."""
        self.ready.wait(timeout)
        if self.host_pid is not None:
            return None
        self.close()
        return self.gone or "the runner did not answer"

    @property
    def alive(self) -> bool:
        return self.gone is None and self.proc.poll() is None

    def run(self, job_id: int, request: dict[str, Any], slot: Slot) -> None:
        """Start a job: its output goes to ``slot``'s files, its end sets ``slot.done``."""
        with self._lock:
            if self.gone is not None:
                slot.lost = self.gone
                slot.done.set()
                return
            self._slots[job_id] = slot
        self._say({"op": "run", "id": job_id, **request})

    def cancel(self, job_id: int, *, now: bool = False) -> None:
        """Stop a job's group: with its grace period, or (``now``) SIGKILL at once."""
        self._say({"op": "kill" if now else "cancel", "id": job_id})

    def forget(self, job_id: int) -> None:
        """No more frames of this job (its files are being closed)."""
        with self._lock:
            self._slots.pop(job_id, None)

    def _say(self, request: dict[str, Any]) -> None:
        data = (json.dumps(request, separators=(",", ":")) + "\n").encode()
        try:
            with self._writing:
                assert self.proc.stdin is not None
                self.proc.stdin.write(data)
        except (OSError, ValueError):
            pass  # the reader sees the end and says why

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        try:
            while True:
                data = os.read(fd, 1 << 16)
                if not data:
                    break
                buf = self._frames(buf + data)
        except OSError:
            pass
        self.proc.stdout.close()
        self._ended()

    def _frames(self, buf: bytes) -> bytes:
        """Dispatch each whole frame of ``buf``; what is left of it."""
        at, size = 0, _FRAME.size
        while len(buf) - at >= size:
            kind, job_id, length = _FRAME.unpack_from(buf, at)
            if len(buf) - at - size < length:
                break
            payload = buf[at + size : at + size + length]
            at += size + length
            self._frame(kind, job_id, payload)
        return buf[at:]

    def _frame(self, kind: bytes, job_id: int, payload: bytes) -> None:
        with self._lock:
            slot = self._slots.get(job_id)
            if kind == b"r":
                self.host_pid = int(payload)
                self.ready.set()
            elif slot is None:
                return
            elif kind in (b"o", b"e"):
                _write_all(slot.out if kind == b"o" else slot.err, payload)
            elif kind == b"s":
                slot.pgid = int(payload)
            else:
                del self._slots[job_id]
                if kind == b"x":
                    code, rss, duration = payload.split()
                    slot.end = (int(code), int(rss), float(duration))
                else:
                    slot.error = payload.decode(errors="replace")
                slot.done.set()

    def _ended(self) -> None:
        rc = self.proc.wait()
        self._errors.seek(0)
        lines = self._errors.read().decode(errors="replace").strip().splitlines()
        why = lines[-1] if lines else f"ssh exit {rc}"
        with self._lock:
            self.gone = why
            slots, self._slots = self._slots, {}
        for slot in slots.values():
            slot.lost = why
            slot.done.set()
        self.ready.set()

    def pgids(self) -> list[int]:
        """The groups of the jobs running now, and the runner's own pid."""
        with self._lock:
            found = [s.pgid for s in self._slots.values() if s.pgid is not None]
        return found + ([self.host_pid] if self.host_pid is not None else [])

    def close(self) -> None:
        """End the channel: the runner kills what still runs and exits."""
        with self._writing:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._reader.join(timeout=10)
        self._errors.close()


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass  # a run folder that cannot be written: settle() says so at the end
