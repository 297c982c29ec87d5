"""The workers of an http executor: provisioning them, and giving up clearly when none come.

    Fleet.start()   runs the provisioner once (or prints the command that starts a worker)
    Fleet.tick()    on the server's thread, every few tenths of a second:
                    - the provisioner runs again while tasks wait beyond the free slots
                      (up to max_workers runs);
                    - a provisioner that failed while no worker is connected fails the waiting
                      tasks with its exit status and log (it used to leave them waiting);
                    - while tasks wait and no worker is connected, "0 workers connected"
                      every PROGRESS seconds, and after ``worker_timeout`` the waiting tasks
                      fail, saying so (a build with no worker used to wait for ever).
    Fleet.close()   waits briefly for provisioner runs, kills what is left of them, then runs
                    the ``deprovisioner`` (if any) as ``DEPROVISIONER URL`` with
                    DAGRUN_PROVISIONER_LOGS naming the runs' output files, one a line, so that
                    it can cancel what they queued (examples/http/scancel.sh: pending Slurm
                    jobs, which would start after the build with nothing to do).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol


class Broker(Protocol):
    """What the fleet reads of the HTTP executor's broker (http_broker.Broker), declared here so
    that this module does not import the one that imports it."""

    jobs: Any
    leases: Any
    workers: Any
    lock: Any
    lease_timeout: float

    def fail_waiting(self, why: str) -> None: ...

PROGRESS = 10.0  # seconds between two "0 workers connected" lines
DEPROVISION_TIMEOUT = 60.0  # seconds the deprovisioner may take at the end of a build


class Fleet:
    """Provisioner runs and the worker watch of one http executor (see the module docstring)."""

    def __init__(
        self, name: str, broker: Broker, options: Any, root: str, environ: Mapping[str, str],
        say: Callable[[str], None],
    ) -> None:
        self.name = name
        self.broker = broker
        self.options = options
        self.root = root
        self.environ = environ
        self.say = say
        self.runs: list[tuple[float, subprocess.Popen[bytes], str]] = []  # (start, proc, log)
        self.broken: str | None = None  # why no worker will come (a failed provisioner)
        self.lonely_since: float | None = None  # tasks wait and no worker is connected
        self.next_progress = 0.0

    # -- provisioning

    def provision(self, url: str, token: str, log_dir: str) -> None:
        env = dict(self.environ)
        env["DAGRUN_TOKEN"] = token
        log_path = os.path.join(log_dir, f"{self.name}.provisioner-{len(self.runs) + 1}.log")
        with open(log_path, "wb") as log:
            try:
                proc = subprocess.Popen(
                    f"{self.options.provisioner} {url}", shell=True, cwd=self.root, env=env,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                )
            except OSError as exc:
                self.broken = f"executor '{self.name}': cannot run the provisioner: {exc}"
                self.say(self.broken)
                return
        self.runs.append((time.monotonic(), proc, log_path))

    def workers_short(self) -> bool:
        """Tasks wait beyond the free slots, and the last run's worker came (or it is late)."""
        if not self.runs or len(self.runs) >= self.options.max_workers:
            return False
        now, b = time.monotonic(), self.broker
        with b.lock:
            alive = [w for w in b.workers.values() if now - w.seen <= b.lease_timeout]
            idle = sum(max(0, w.slots - len(w.leases)) for w in alive)
            waiting = len(b.jobs) - len(b.leases)
            seen = len(b.workers)
        late = now - self.runs[-1][0] > b.lease_timeout
        return waiting > idle and (seen >= len(self.runs) or late)

    # -- the watch

    def tick(self, now: float) -> None:
        for _, proc, log_path in self.runs:
            if proc.returncode is None and proc.poll() not in (None, 0):
                rel = os.path.relpath(log_path, self.root)
                self.broken = (
                    f"executor '{self.name}': the provisioner exited with {proc.returncode} "
                    f"(its output is in {rel})"
                )
                self.say(self.broken)
        connected, waiting = self._census(now)
        if connected or not waiting:
            self.lonely_since = None
            if connected:
                self.broken = None
            return
        if self.broken is not None and not self._provisioning():
            self.broker.fail_waiting(self.broken)
            return
        self._lonely(now, waiting)

    def _census(self, now: float) -> tuple[int, int]:
        """(workers connected now, tasks waiting for a worker)."""
        b = self.broker
        with b.lock:
            connected = sum(1 for w in b.workers.values() if now - w.seen <= b.lease_timeout)
            return connected, len(b.jobs) - len(b.leases)

    def _provisioning(self) -> bool:
        """A provisioner run still going (it may yet start a worker)."""
        return any(proc.returncode is None and proc.poll() is None for _, proc, _ in self.runs)

    def _lonely(self, now: float, waiting: int) -> None:
        limit = self.options.worker_timeout
        if self.lonely_since is None:
            self.lonely_since = now
            self.next_progress = now + PROGRESS
        alone = now - self.lonely_since
        if alone > limit:
            self.broker.fail_waiting(
                f"executor '{self.name}': no worker connected for {limit:g} s (worker_timeout)"
            )
            self.lonely_since = None
        elif now >= self.next_progress:
            self.next_progress = now + PROGRESS
            self.say(
                f"executor '{self.name}': 0 workers connected, {waiting} task(s) waiting "
                f"({limit - alone:.0f} s left of worker_timeout)"
            )

    # -- the end

    def close(self, url: str, log_dir: str) -> None:
        self._reap()
        if self.options.deprovisioner and self.runs:
            self._deprovision(url, log_dir)

    def _deprovision(self, url: str, log_dir: str) -> None:
        env = dict(self.environ)
        env["DAGRUN_PROVISIONER_LOGS"] = "\n".join(log for _, _, log in self.runs)
        log_path = os.path.join(log_dir, f"{self.name}.deprovisioner.log")
        try:
            with open(log_path, "wb") as log:
                rc = subprocess.run(
                    f"{self.options.deprovisioner} {url}", shell=True, cwd=self.root, env=env,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                    timeout=DEPROVISION_TIMEOUT,
                ).returncode
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.say(f"executor '{self.name}': the deprovisioner failed: {exc}")
            return
        if rc != 0:
            rel = os.path.relpath(log_path, self.root)
            self.say(f"executor '{self.name}': the deprovisioner exited with {rc} (see {rel})")

    def _reap(self) -> None:
        end = time.monotonic() + 2.0
        for _, proc, _ in self.runs:
            while proc.poll() is None and time.monotonic() < end:
                time.sleep(0.05)
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except OSError:
                    pass
                proc.wait()
