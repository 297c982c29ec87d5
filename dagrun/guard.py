"""A process beside ``dagrun worker`` that ends the worker's tasks when the worker cannot.

The worker's tasks lead sessions of their own, so nothing in the kernel ends
them when the worker is killed (``kill -9``, the OOM killer, a crash) or stops
(SIGSTOP, Ctrl-Z, a debugger): they would run on, unwatched, while the server
gives their tasks to another worker (two attempts writing the same files).  So
before it starts any task, the worker forks a *guard*: a process in a session of
its own with two pipes to the worker.

- **The worker's end.**  The guard holds the read end of a pipe whose write end
  only the worker holds.  When the worker ends, for whatever reason, the kernel
  closes that write end; the guard reads EOF and SIGKILLs every process that
  carries the worker's job mark in its environment (``sweep``: the tasks' groups
  and whatever left them), then exits.
- **The worker's silence.**  Each running job has a *fence*: the moment its lease
  has gone unconfirmed for 80 % of the server's ``lease_timeout``, after which the
  server may give the task to another worker.  The worker sends each job's fence
  down the same pipe (``renew``) as the heartbeats confirm its lease, and takes it
  back (``drop``) when the job ends.  When a fence passes, the guard writes the
  job's id on the second pipe, then kills the job.  So a job dies on time whether
  the worker is cut off from the server (a network split) or cannot run at all
  (stopped); the worker reads the id, and never reports that job (its lease ends
  on the server as lost, which costs no retry).

A worker that ends normally has killed its tasks already; the guard then finds
nothing.  What it cannot catch is what ``sweep`` cannot: a process started with
a clean environment (``env -i``).
"""

from __future__ import annotations

import os
import select
import signal
import time

from .executors import sweep


class Guard:
    """The worker's side: the two pipes' ends and the guard's pid."""

    def __init__(self, mark_prefix: str) -> None:
        read, self._write = os.pipe()  # worker -> guard: fences; EOF when the worker ends
        self.fd, back = os.pipe()  # guard -> worker: the ids of the jobs it killed
        os.set_inheritable(self._write, False)  # tasks must not hold it: only the worker
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write, False)
        self._mark_prefix = mark_prefix
        self._partial = b""
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child; covered by tests/test_one_attempt.py
            os.close(self.fd)
            _guard(read, self._write, back, mark_prefix)
        os.close(read)
        os.close(back)

    def renew(self, job_id: int, fence: float) -> bool:
        """Kill job ``job_id`` at ``fence`` (``time.monotonic()``) unless renewed before; False
        when the pipe is full (a guard that cannot run: send it again later)."""
        return self._send(f"{job_id} {fence!r}\n")

    def drop(self, job_id: int) -> None:
        """Job ``job_id`` ended: no fence (if the pipe is full, the guard kills nothing of it:
        the job's mark is gone with its processes)."""
        self._send(f"{job_id} -\n")

    def _send(self, line: str) -> bool:
        """One line, in one write (< PIPE_BUF: never interleaved), never blocking the worker."""
        if self._write < 0:
            return False
        try:
            os.write(self._write, line.encode())
        except BlockingIOError:
            return False  # an older fence stands: a job killed early ends lost, never twice
        return True

    def killed(self) -> list[int]:
        """The jobs the guard killed (or is killing) at their fence since the last call."""
        chunks = [self._partial]
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
        *lines, self._partial = b"".join(chunks).split(b"\n")
        return [int(x) for x in lines if x]

    def close(self) -> None:
        """The worker ends normally: the guard sweeps (finding nothing, as a rule) and exits."""
        if self._write >= 0:
            os.close(self._write)
            self._write = -1
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            os.close(self.fd)


def _guard(read: int, write: int, back: int, mark_prefix: str) -> None:  # pragma: no cover
    """Kill each job at its fence; at the worker's end, kill what is left.  Never returns."""
    try:
        os.close(write)
        os.setsid()  # a signal to the worker's process group (a terminal's Ctrl-C) spares it
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGTSTP):
            signal.signal(sig, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # let go of the worker's terminal and pipes
            os.dup2(null, fd)
        low, high = sorted((read, back))
        os.closerange(3, low)
        os.closerange(low + 1, high)
        os.closerange(high + 1, 1 << 16)
        os.set_blocking(read, False)
        fences: dict[int, float] = {}
        partial = b""
        while True:
            timeout = max(0.0, min(fences.values()) - time.monotonic()) if fences else None
            try:
                select.select([read], [], [], timeout)
            except InterruptedError:
                continue
            partial, ended = _read_fences(read, partial, fences)
            if ended:
                break
            now = time.monotonic()
            for job_id in [j for j, fence in fences.items() if fence <= now]:
                del fences[job_id]
                os.write(back, f"{job_id}\n".encode())  # first: the worker must not report it
                sweep.sweep(f"{mark_prefix}{job_id}")
        sweep.sweep(mark_prefix)
    finally:
        os._exit(0)


def _read_fences(read: int, partial: bytes, fences: dict[int, float]) -> tuple[bytes, bool]:
    """Apply every message waiting on ``read``; whether the worker has ended (EOF)."""
    chunks = [partial]
    ended = False
    while True:
        try:
            data = os.read(read, 65536)
        except BlockingIOError:
            break
        except InterruptedError:
            continue
        if not data:
            ended = True
            break
        chunks.append(data)
    *lines, rest = b"".join(chunks).split(b"\n")
    for line in lines:
        job, _, fence = line.decode().partition(" ")
        if fence == "-":
            fences.pop(int(job), None)
        elif fence:
            fences[int(job)] = float(fence)
    return rest, ended
