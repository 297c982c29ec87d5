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
  (and, once it runs, its process group) down the same pipe (``renew``) as the
  heartbeats confirm its lease, and takes it back (``drop``) when the job ends.
  When a fence passes, the guard writes the job's id on the second pipe, then kills
  the job's group and every process with its mark, and again every RESWEEP seconds
  until the worker drops it (a job the worker was about to start when its fence
  passed).  So a job dies on time whether the worker is cut off from the server (a
  network split) or cannot run at all (stopped); the worker reads the id, and never
  reports that job (its lease ends on the server as lost, which costs no retry).
- **The guard's death.**  Either pipe breaking tells the worker (``dead``): it
  kills its tasks and exits, since nothing would fence them any more.

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
from .remote_run import killpg

RESWEEP = 0.5  # seconds between two kills of a job whose fence passed, until it is dropped


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
        self.dead = False  # a pipe broke: the guard is gone
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child; covered by tests/test_one_attempt.py
            os.close(self.fd)
            _guard(read, self._write, back, mark_prefix)
        os.close(read)
        os.close(back)

    def renew(self, job_id: int, fence: float, group: int | None = None) -> bool:
        """Kill job ``job_id`` (its process group ``group`` once it runs, and its mark) at
        ``fence`` (``time.monotonic()``) unless renewed before; False when the message could
        not be sent (a full pipe: a guard that cannot run; or ``dead``)."""
        return self._send(f"{job_id} {fence!r} {group or 0}\n")

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
        except OSError:  # EPIPE: the guard is gone
            self.dead = True
            return False
        return True

    def killed(self) -> list[int]:
        """The jobs the guard killed (or is killing) at their fence since the last call."""
        lines, self._partial, ended = _lines(self.fd, self._partial)
        if ended:  # the guard is gone (it holds the write end)
            self.dead = True
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
        os.set_blocking(back, False)  # a stopped worker never stops its guard
        jobs = _Jobs()
        partial = b""
        while True:
            try:
                select.select([read], [], [], jobs.timeout())
            except InterruptedError:
                continue
            lines, partial, ended = _lines(read, partial)
            for line in lines:
                if line:
                    jobs.apply(line)
            if ended:
                break
            jobs.fire(back, mark_prefix)
        for group in jobs.groups.values():
            killpg(group, signal.SIGKILL)
        sweep.sweep(mark_prefix)
    finally:
        os._exit(0)


class _Jobs:  # pragma: no cover - the guard's; covered by tests/test_one_attempt.py
    """The guard's view of the running jobs: their fences, groups, and the ones it killed."""

    def __init__(self) -> None:
        self.fences: dict[int, float] = {}
        self.groups: dict[int, int] = {}
        self.fired: dict[int, float] = {}  # killed at their fence -> when to kill them again

    def timeout(self) -> float | None:
        times = list(self.fences.values()) + list(self.fired.values())
        return max(0.0, min(times) - time.monotonic()) if times else None

    def fire(self, back: int, mark_prefix: str) -> None:
        now = time.monotonic()
        for job_id in [j for j, fence in self.fences.items() if fence <= now]:
            del self.fences[job_id]
            try:
                os.write(back, f"{job_id}\n".encode())  # first: the worker must not report it
            except OSError:
                pass  # the worker is gone: its end is read next
            self.fired[job_id] = now
        for job_id in [j for j, when in self.fired.items() if when <= now]:
            if job_id in self.groups:
                killpg(self.groups[job_id], signal.SIGKILL)
            sweep.sweep(f"{mark_prefix}{job_id}")
            self.fired[job_id] = now + RESWEEP  # until the worker drops it

    def apply(self, line: bytes) -> None:
        job, _, rest = line.decode().partition(" ")
        job_id = int(job)
        if rest == "-":
            self.fences.pop(job_id, None)
            self.groups.pop(job_id, None)
            self.fired.pop(job_id, None)
            return
        fence, _, group = rest.partition(" ")
        if job_id not in self.fired:  # once killed, killed until dropped
            self.fences[job_id] = float(fence)
        if group and int(group) > 0:
            self.groups[job_id] = int(group)


def _lines(fd: int, partial: bytes) -> tuple[list[bytes], bytes, bool]:
    """The whole lines waiting on the non-blocking pipe ``fd`` (after ``partial``, the start
    of a line read before), the start of the next one, and whether the other end has closed."""
    chunks = [partial]
    ended = False
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            break
        except InterruptedError:
            continue
        if not data:
            ended = True
            break
        chunks.append(data)
    *lines, rest = b"".join(chunks).split(b"\n")
    return lines, rest, ended
