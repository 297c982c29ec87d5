"""Runs each job as one Slurm batch job: the task's own resources, its job id shown, one poll.

``submit`` writes the job's script into its run folder and calls ``sbatch``
(``threads`` -> ``--cpus-per-task``, ``timeout`` -> ``--time``, the
executor's ``partition``/``account``/``qos``/``mem``/``sbatch_options`` with
the task's ``slurm = {...}`` over them), with dagrun's environment plus the
job's, so ``SLURM_CONF`` and the user's ``SLURM_*``/``SBATCH_*`` settings hold.
No thread per job: ``deadline()`` asks the scheduler to call ``collect()``
every 0.2 s while jobs end, backing off to 1 s when nothing does; each call
looks for the jobs' report files (slurm_job.py) and, at most every 0.2-2 s
(longer with more jobs), asks one ``squeue`` about every job still without a
report.  A job that ended NODE_FAIL, PREEMPTED or BOOT_FAIL is *lost* (the
scheduler runs it again; jobs are submitted ``--no-requeue`` so Slurm never
runs a second copy itself); one cancelled by someone else (``scancel``) fails
and says so.  ``cancel`` and ``cancel_all`` (Ctrl-C) call ``scancel``, and
``cancel_all`` waits until Slurm lists none of them as active.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import runs
from ..errors import ExecutorError
from ..executor_options import effective
from . import Context, Job, Outcome, cancel_all
from .slurm_job import (
    ACTIVE,
    CMD_FILE,
    LOST,
    REPORT,
    SBATCH_KEYS,
    SCRIPT,
    SLURM_OUT,
    Report,
    merged,
    parse_sacct,
    parse_squeue,
    read_report,
    sbatch_argv,
    script_text,
    time_limit,
    wrapper_text,
)
from .threaded import Completions

POLL_MIN = 0.2  # seconds between looks at the report files while jobs end
POLL_MAX = 1.0  # ... when nothing has ended for a while
SQUEUE_MAX = 2.0  # squeue at most this far apart
REPORT_WAIT = 5.0  # a job Slurm calls ended may take this long to show its report (NFS)


@dataclass(slots=True)
class _Submitted:
    job: Job
    slurm_id: str
    cancelled: bool = False
    ended_at: float | None = None  # when Slurm first said it ended while no report was there
    state: str = "PENDING"  # as squeue last said


class SlurmExecutor:
    """One ``sbatch`` job per task; see the module docstring."""

    def __init__(
        self,
        name: str,
        *,
        state_dir: str,
        environ: Mapping[str, str],
        max_jobs: int = 256,
        sbatch: Mapping[str, Any] | None = None,
        python: str = "python3",
        grace: float = 3.0,
    ) -> None:
        self.name = name
        self.max_jobs = max_jobs
        self.environ = dict(environ)
        self.sbatch = dict(sbatch or {})
        self.python = python
        self.grace = grace
        self.wrapper = os.path.join(state_dir, "slurm", "wrapper.py")
        self.completions = Completions()
        self.jobs: dict[int, _Submitted] = {}
        self._idle = 0  # looks in a row that found nothing ended
        self._next_look = 0.0
        self._next_squeue = 0.0
        self._sacct: bool | None = None  # whether sacct answers (accounting on); None: not asked
        self._stopped: list[Outcome] = []  # ended while cancel_all waited, not returned yet

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any], context: Context) -> SlurmExecutor:
        opts = effective("slurm", options)  # checked when the manifest was read
        sbatch = {k: opts[k] for k in (*SBATCH_KEYS, "sbatch_options") if k in opts}
        return cls(
            name,
            state_dir=context.state_dir,
            environ=context.environ,
            max_jobs=opts["max_jobs"],
            sbatch=sbatch,
            python=opts["python"],
            grace=opts["grace_period"],
        )

    @property
    def slots(self) -> int:
        return self.max_jobs

    def start(self) -> None:
        """sbatch must be there and the controller must answer; the wrapper is written once."""
        if shutil.which("sbatch", path=self.environ.get("PATH")) is None:
            raise ExecutorError(f"executor '{self.name}': sbatch is not on PATH (Slurm's client)")
        done = self._slurm(["sinfo", "-h", "-o", "%P"], timeout=30)
        if done.returncode != 0:
            why = done.stderr.strip() or f"exit status {done.returncode}"
            raise ExecutorError(f"executor '{self.name}': Slurm does not answer: {why}")
        os.makedirs(os.path.dirname(self.wrapper), exist_ok=True)
        tmp = self.wrapper + f".{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(wrapper_text())
        os.replace(tmp, self.wrapper)

    def fileno(self) -> int:
        return self.completions.fileno()

    def deadline(self) -> float | None:
        return self._next_look if self.jobs else None

    def job_ref(self, job_id: int) -> str | None:
        """The Slurm job id of a running job (shown by status, show, events and JUnit)."""
        sub = self.jobs.get(job_id)
        return sub.slurm_id if sub is not None else None

    def job_where(self, job_id: int) -> str | None:
        """``dagrun status`` of a running build (steering.py): its job, and if it still waits."""
        sub = self.jobs.get(job_id)
        if sub is None:
            return None
        return f"job {sub.slurm_id}" + (", pending" if sub.state == "PENDING" else "")

    def job_output(self, job_id: int) -> tuple[str, str] | None:
        """``dagrun tail``: the files the job writes its output to (the run folder)."""
        sub = self.jobs.get(job_id)
        if sub is None:
            return None
        run = sub.job.run_dir
        return os.path.join(run, "stdout.txt"), os.path.join(run, "stderr.txt")

    # -- submitting

    def submit(self, job: Job) -> None:
        run = job.run_dir
        os.makedirs(run, exist_ok=True)
        for stale in (REPORT, "stdout.txt", "stderr.txt", SLURM_OUT):
            _remove(os.path.join(run, stale))
        _write(os.path.join(run, CMD_FILE), job.cmd)
        script = os.path.join(run, SCRIPT)
        _write(script, script_text(self.python, self.wrapper, run, job.timeout, self.grace))
        argv = sbatch_argv(
            task=job.task, cwd=job.local_cwd, run_dir=run, threads=job.threads,
            limit=time_limit(job.timeout, self.grace),
            options=merged(self.sbatch, job.slurm), script=script,
        )
        done = self._slurm(argv, env={**self.environ, **job.env}, timeout=60)
        slurm_id = done.stdout.strip().split(";")[0]
        if done.returncode != 0 or not slurm_id.isdigit():
            why = done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}"
            refused = Outcome(job.id, None, 0.0, error=f"sbatch refused: {why}")
            self.completions.post(self._settle(job, refused))
            return
        self.jobs[job.id] = _Submitted(job, slurm_id)
        self._soon()

    def _soon(self) -> None:
        self._idle = 0
        self._next_look = min(self._next_look, time.monotonic() + POLL_MIN) if self.jobs else (
            time.monotonic() + POLL_MIN)

    # -- polling

    def collect(self) -> list[Outcome]:
        outcomes = self.completions.take()
        now = time.monotonic()
        if self.jobs and now >= self._next_look:
            ended = self._look(now)
            outcomes.extend(ended)
            self._idle = 0 if ended else self._idle + 1
            self._next_look = now + min(POLL_MAX, POLL_MIN * 1.5**self._idle)
        return outcomes

    def _look(self, now: float) -> list[Outcome]:
        """Jobs with a report end; the rest are asked about in one squeue when it is time."""
        ended: list[Outcome] = []
        unsure: list[tuple[_Submitted, Report | None]] = []
        for sub in self.jobs.values():
            report = read_report(sub.job.run_dir)
            if report is not None and (sub.cancelled or not report.killed):
                ended.append(self._from_report(sub, report))
            else:
                unsure.append((sub, report))
        if unsure and now >= self._next_squeue:
            states = self._states([sub.slurm_id for sub, _ in unsure])
            for sub, report in unsure:
                if states is None:
                    break
                sub.state = states.get(sub.slurm_id, sub.state)
                outcome = self._judge(sub, report, states.get(sub.slurm_id), now)
                if outcome is not None:
                    ended.append(outcome)
            self._next_squeue = now + min(SQUEUE_MAX, POLL_MIN + 0.01 * len(self.jobs))
        return [self._settle(self.jobs.pop(o.job_id), o) for o in ended]

    def _settle(self, sub: _Submitted | Job, outcome: Outcome) -> Outcome:
        """The run folder, which the job wrote its output into: kept or removed (runs.py)."""
        job = sub.job if isinstance(sub, _Submitted) else sub
        details = [f"executor: {self.name} (slurm)"]
        if isinstance(sub, _Submitted):
            details.append(f"job: {sub.slurm_id}")
        return runs.settle(job, outcome, lambda: runs.command_text(job, details), written=True)

    def _states(self, ids: Sequence[str]) -> dict[str, str] | None:
        """Slurm's state of each job it still knows (one squeue for all of them); None when
        Slurm does not answer (then nothing is judged: a busy controller loses no job)."""
        argv = ["squeue", "-h", "--states=all", "-o", "%i %T", "-j", ",".join(ids)]
        done = self._slurm(argv, timeout=30)
        states = parse_squeue(done.stdout)
        if done.returncode != 0 and not states:  # a job id it forgot makes squeue refuse all
            mine = ["squeue", "-h", "--states=all", "-o", "%i %T", "-u", str(os.getuid())]
            done = self._slurm(mine, timeout=30)
            if done.returncode != 0:
                return None
            states = parse_squeue(done.stdout)
        return states

    def _judge(self, sub: _Submitted, report: Report | None, state: str | None,
               now: float) -> Outcome | None:
        """The outcome of a job without a (plain) report, from Slurm's state; None: not ended."""
        if state in ACTIVE:
            return None
        if state in LOST:
            return self._lost(sub, f"Slurm job {sub.slurm_id} ended {state}")
        if sub.cancelled:
            return self._cancelled(sub, report)
        if state == "CANCELLED":
            why = f"Slurm job {sub.slurm_id} was cancelled outside dagrun (scancel)"
            return self._failed(sub, report, why)
        if state in ("TIMEOUT", "DEADLINE"):
            return self._failed(sub, report, f"Slurm's time limit ended job {sub.slurm_id}",
                                timed_out=True)
        if report is not None:
            return self._from_report(sub, report)
        if sub.ended_at is None:
            sub.ended_at = now
        if now - sub.ended_at < REPORT_WAIT:
            return None
        return self._no_report(sub, state)

    def _no_report(self, sub: _Submitted, state: str | None) -> Outcome:
        """Slurm says the job ended, and it left no report: ask sacct, else fail (or lost)."""
        if state is None:
            state, code = self._accounted(sub.slurm_id)
            if state in LOST or not state:
                return self._lost(sub, f"Slurm no longer knows job {sub.slurm_id}")
        why = f"Slurm job {sub.slurm_id} ended {state} without a report (see {SLURM_OUT})"
        return self._failed(sub, None, why)

    def _accounted(self, slurm_id: str) -> tuple[str, str]:
        """(state, exit code) from sacct when accounting is on; ("", "") otherwise."""
        if self._sacct is False:
            return "", ""
        argv = ["sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode", "-j", slurm_id]
        done = self._slurm(argv, timeout=30)
        self._sacct = done.returncode == 0
        return parse_sacct(done.stdout).get(slurm_id, ("", ""))

    # -- outcomes

    def _output(self, sub: _Submitted) -> tuple[str, str]:
        run = sub.job.run_dir + "/"
        return runs.read_file(run + "stdout.txt"), runs.read_file(run + "stderr.txt")

    def _from_report(self, sub: _Submitted, report: Report) -> Outcome:
        out, err = self._output(sub)
        code = report.exit_code
        if sub.cancelled and code == 0:  # a trap that exits 0 when killed: still cancelled
            code = -signal.SIGTERM
        return Outcome(
            sub.job.id, code, report.duration, out, err, timed_out=report.timed_out,
            maxrss_kb=report.maxrss_kb, error="cancelled" if sub.cancelled else None,
        )

    def _failed(self, sub: _Submitted, report: Report | None, why: str, *,
                timed_out: bool = False) -> Outcome:
        out, err = self._output(sub)
        if report is None:
            err += _read(os.path.join(sub.job.run_dir, SLURM_OUT))
        code = report.exit_code if report is not None else None
        rss = report.maxrss_kb if report is not None else 0
        took = report.duration if report is not None else 0.0
        return Outcome(sub.job.id, code, took, out, err, timed_out=timed_out, maxrss_kb=rss,
                       error=why)

    def _cancelled(self, sub: _Submitted, report: Report | None) -> Outcome:
        if report is not None:
            return self._from_report(sub, report)
        out, err = self._output(sub)
        return Outcome(sub.job.id, -signal.SIGTERM, 0.0, out, err, error="cancelled")

    def _lost(self, sub: _Submitted, why: str) -> Outcome:
        out, err = self._output(sub)
        return Outcome(sub.job.id, None, 0.0, out, err, error=why, lost=True)

    # -- cancelling

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        """Until a job ends (or ``timeout``): its ends are seen at ``deadline()``, not on the fd."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            outcomes = self.collect()
            now = time.monotonic()
            if outcomes or not self.jobs or (end is not None and now >= end):
                return outcomes
            due = self.deadline()
            left = [t - now for t in (end, due) if t is not None]
            select.select([self.fileno()], [], [], max(0.0, min(left)) if left else None)

    def cancel(self, job_id: int) -> None:
        sub = self.jobs.get(job_id)
        if sub is not None and not sub.cancelled:
            sub.cancelled = True
            self._slurm(["scancel", sub.slurm_id], timeout=30)
            self._soon()

    def cancel_all(self, *, force: bool = False) -> list[Outcome]:
        """scancel every job (``force``: SIGKILL too); wait until Slurm lists none of them as
        active.  Interrupted, what ended is kept for the next call (the scheduler's, forced)."""
        self._stopped.extend(self.completions.take())
        if self.jobs:
            for sub in self.jobs.values():
                sub.cancelled = True
            ids = [sub.slurm_id for sub in self.jobs.values()]
            self._slurm(["scancel", *ids], timeout=30)
            if force:
                self._slurm(["scancel", "--full", "--signal=KILL", *ids], timeout=30)
        end = time.monotonic() + self.grace + 30.0
        while self.jobs and time.monotonic() < end:
            time.sleep(POLL_MIN)
            self._next_squeue = 0.0
            self._stopped.extend(self._look(time.monotonic()))
        for sub in list(self.jobs.values()):  # Slurm never let go of them: say so
            why = f"cancelled; Slurm job {sub.slurm_id} was still listed as active"
            self._stopped.append(self._settle(sub, self._failed(sub, None, why)))
        self.jobs.clear()
        stopped, self._stopped = self._stopped, []
        return stopped

    def close(self) -> None:
        if self.jobs:
            cancel_all(self, force=True)  # a Ctrl-C meanwhile: it goes on
        self.completions.close()

    def _slurm(self, argv: list[str], *, env: Mapping[str, str] | None = None,
               timeout: float) -> subprocess.CompletedProcess[str]:
        """A Slurm command; one that cannot run or hangs becomes a failed CompletedProcess."""
        try:
            return subprocess.run(argv, env=dict(env or self.environ), capture_output=True,
                                  text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return subprocess.CompletedProcess(argv, 255, "", f"{argv[0]}: {exc}")


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
