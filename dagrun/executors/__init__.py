"""The Executor seam: where jobs run.  The scheduler submits Jobs and collects Outcomes.

One build drives several executors at once (local processes, SSH hosts, HTTP
pull workers, a Dask cluster).  The scheduler owns the limits (each
executor's ``slots``) and waits on all executors in one place: every executor
has a ``fileno()`` that becomes readable when ``collect()`` has outcomes to
give (the local executor: its pidfd epoll; executors whose jobs run in
threads: an eventfd those threads signal, see ``threaded.Completions``), and a
``deadline()`` by which ``collect()`` must be called even if nothing became
readable (timeouts kept by the executor itself).

The contract, which ``tests/test_executor_contract.py`` checks on every executor:

- ``start()`` is called once, before the executor's first job.  It raises
  ExecutorError when the backend cannot be used (host unreachable, key
  refused, scheduler down), so the build stops before any task of it runs.
- ``submit(job)`` starts the job now and does not block for long.
- Every submitted job ends exactly once, as an Outcome from ``collect()`` or
  from ``cancel_all()``.  A failed command is an Outcome, not an exception.
  A job the executor lost (connection dropped, worker gone) ends with
  ``lost=True``: the scheduler runs it again without using up a retry and
  never logs it.
- ``cancel(job_id)`` kills one job (its whole process group, also on a remote
  host); its Outcome still comes through ``collect()``.  ``cancel_all()`` kills
  every job and returns their outcomes (Ctrl-C); ``force`` skips the grace
  period.  The loop decides force (a second Ctrl-C while it waits is one,
  ``cancel_all(executor)`` below): a ``cancel_all`` interrupted by
  KeyboardInterrupt keeps the outcomes it has not returned, and is called
  again with ``force=True``.
  ``close()`` releases connections, clusters and threads.
- There is no blocking ``wait()`` in the contract: the scheduler never blocks on
  one executor, it waits on every executor's ``fileno()`` and ``deadline()`` in
  one epoll.  Executors that have a ``wait(timeout)`` keep it for a single
  caller (a test, a benchmark), built on ``fileno``/``collect``
  (``threaded.wait_on``).
- Optional: ``job_ref(job_id)`` names a submitted job in the executor's own terms (a Slurm
  job id); the scheduler passes it on as a TaskPlaced event (status, show, events, JUnit).

A Job travels: its paths are relative to the manifest's folder (``root``), its
``env`` holds only the declared environment plus ``DAGRUN_*``; an executor adds
the environment it runs in (the local one: dagrun's own; a remote one: the
remote side's, or dagrun's with ``env_inherit = true``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from ..pycall import Call


@dataclass(frozen=True, slots=True)
class Job:
    """One attempt at running one task: everything a local or remote side needs to run it."""

    id: int
    task: str
    cmd: str
    root: str  # the manifest's folder on this machine, absolute
    cwd: str  # relative to root ("." is root)
    env: Mapping[str, str]  # declared environment ([env] + task env) plus DAGRUN_*
    run_dir: str  # absolute, on this machine: command.txt, stdout.txt, stderr.txt go there
    timeout: float | None = None
    inputs: tuple[str, ...] = ()  # relative to root: source inputs and upstream outputs
    outputs: tuple[str, ...] = ()  # relative to root (or absolute); their folders are made
    threads: int = 1
    cores: tuple[int, ...] = ()  # leased local cores, empty when not pinned
    numa_node: int | None = None
    attempt: int = 1
    call: Call | None = None  # a Python function task (``cmd`` is then only its description)
    depfile: str = ""  # relative to root: written by the command, read here after it (staged back)
    slurm: tuple[tuple[str, Any], ...] = ()  # the task's ``slurm = {...}`` (executors/slurm.py)

    @property
    def local_cwd(self) -> str:
        """The working folder on this machine."""
        return self.root if self.cwd == "." else os.path.join(self.root, self.cwd)

    def local_path(self, path: str) -> str:
        """A root-relative path of this job as an absolute path on this machine."""
        return path if path.startswith("/") else os.path.join(self.root, path)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job ended."""

    job_id: int
    exit_code: int | None  # negative: killed by that signal; None: could not start, or lost
    duration: float
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    maxrss_kb: int = 0
    error: str | None = None  # dagrun's own reason, shown in the FAILED block
    lost: bool = False  # the executor lost the job (connection, worker): run it again

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.lost

    def failed(self, error: str) -> Outcome:
        """This outcome as a failure with dagrun's own reason (the command may have exited 0:
        a missing output, a run folder that cannot be written)."""
        return Outcome(self.job_id, None, self.duration, self.stdout, self.stderr,
                       self.timed_out, self.maxrss_kb, error, self.lost)


class Executor(Protocol):
    """Where jobs run; see the module docstring for the contract."""

    name: str

    @property
    def slots(self) -> int:
        """How many threads' worth of jobs may run at once."""

    def start(self) -> None:
        """Check the backend before the first job; ExecutorError if it cannot be used."""

    def fileno(self) -> int:
        """A descriptor that becomes readable when ``collect()`` has outcomes."""

    def deadline(self) -> float | None:
        """The monotonic time by which ``collect()`` must be called, if any."""

    def submit(self, job: Job) -> None:
        """Start the job now."""

    def collect(self) -> list[Outcome]:
        """The outcomes of jobs that ended since the last call; never blocks."""

    def cancel(self, job_id: int) -> None:
        """Kill one job; its outcome comes through ``collect()``."""

    def cancel_all(self, *, force: bool = False) -> list[Outcome]:
        """Kill every job (``force``: at once, no grace) and return their outcomes."""

    def close(self) -> None: ...


class Cancellable(Protocol):
    def cancel_all(self, *, force: bool = False) -> list[Outcome]: ...


def cancel_all(executor: Cancellable, force: bool = False) -> tuple[list[Outcome], bool]:
    """``executor.cancel_all``, and whether to force from now on, for the loop that owns
    Ctrl-C (the scheduler, ``dagrun worker``): a second Ctrl-C while jobs get their grace
    period means no more grace, there and in every executor cancelled after.  (An executor
    keeps the outcomes it has not returned yet, so the call can start over.)"""
    while True:
        try:
            return executor.cancel_all(force=force), force
        except KeyboardInterrupt:
            force = True


class Context(NamedTuple):  # not a dataclass: ~0.7 ms less per start (bench/IMPORTS.md)
    """What an executor may need from the build that creates it."""

    root: str  # the manifest's folder
    state_dir: str  # .dagrun/
    environ: Mapping[str, str]  # dagrun's environment
    jobs: int  # -j: the local limit
    say: Any = None  # Callable[[str], None]: a message for the user (a URL to start workers at)


# type -> "module:Class"; imported only when a manifest uses that type
REGISTRY = {
    "local": "local:LocalExecutor",
    "ssh": "ssh:SshExecutor",
    "http": "http_pull:HttpExecutor",
    "dask": "dask:DaskExecutor",
    "slurm": "slurm:SlurmExecutor",
    # not a manifest type: where the local executor's Python function tasks (job.call) run
    "python": "pyfunc:FunctionPool",
}


def create(kind: str, name: str, options: Mapping[str, Any], context: Context) -> Executor:
    """An executor of type ``kind``; each class has ``from_options(name, options, context)``."""
    import importlib

    module, _, cls = REGISTRY[kind].partition(":")
    factory = getattr(importlib.import_module(f".{module}", __name__), cls)
    executor: Executor = factory.from_options(name, options, context)
    return executor
