"""The manifest as records: what the core (graph, hashing, plan, scheduler, executors) reads.

A Manifest holds the settings and the expanded tasks, each a TaskSpec.  The
parser that makes them from TOML (manifest.py) is not needed to read them: a
graph loaded from the cache rebuilds these records without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .lines import LineIndex

STALL_WARNING = 300.0  # [dagrun] stall_warning's default
FUNCTION_POOL = "python"  # where function tasks of the local executor run (executors/pyfunc.py)


class TaskSpec(NamedTuple):
    """One task after matrix expansion; a NamedTuple, so cheap to rebuild from the cache."""

    name: str
    cmd: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    deps: tuple[str, ...] = ()
    display: str = ""
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = "."
    threads: int = 1
    numa_node: int | None = None
    timeout: float | None = None
    retries: int = 0
    always: bool = False
    executor: str = "local"
    key_env: tuple[str, ...] = ()
    resources: tuple[tuple[str, int], ...] = ()
    group: str | None = None
    line: int | None = None
    # a Python function task (pycall.py): cmd is then "call <target>", for display only
    call: str = ""  # "package.module:qualname"
    args: bytes = b""  # pickle of (args, kwargs)
    code_file: str = ""  # the function's module source (also one of inputs), "" if none
    io_bound: bool = False  # runs on the io worker's event loop and takes no slot
    depfile: str = ""  # relative to the root, like inputs; "" when none
    restat: bool = False  # dependents key this task by its outputs' digests (early cutoff)
    desc: str = ""  # one line of description (list, show, tree); not in the key
    stall_warning: float = STALL_WARNING  # seconds silent and idle before a warning; 0: never
    slurm: tuple[tuple[str, Any], ...] = ()  # sbatch settings over its executor's (placement.py)
    cache: bool = True  # false: never looked up in nor written to the shared cache ([cache])

    @property
    def label(self) -> str:
        """What the console shows for this task."""
        return self.display or self.name

    @property
    def runs_on(self) -> str:
        """The executor that runs this task: the one it names, except that a function task
        of the local executor runs in the function pool (the manifest allows function tasks
        only on executor types that run them: executor_options.FUNCTION_EXECUTORS)."""
        return FUNCTION_POOL if self.call and self.executor == "local" else self.executor


@dataclass(frozen=True)
class ExecutorSpec:
    """An ``[executors.NAME]`` table."""

    name: str
    type: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def max_jobs(self) -> int | None:
        value = self.options.get("max_jobs")
        return value if isinstance(value, int) else None


class CacheSettings(NamedTuple):
    """The ``[cache]`` table: the shared cache's store and what this build may do with it."""

    url: str  # file:///folder, http(s)://host/prefix
    read: bool = True
    write: bool = True
    token_env: str = ""  # the variable holding a bearer token ("" : none)
    connect_timeout: float = 5.0
    read_timeout: float = 60.0


@dataclass(frozen=True)
class Manifest:
    """A whole manifest: settings plus the expanded tasks."""

    source: str
    root: str
    tasks: tuple[TaskSpec, ...]
    jobs: int | None = None
    failures_allowed: int = 1
    default: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    key_env: tuple[str, ...] = ()
    resources: tuple[tuple[str, int], ...] = ()
    executors: Mapping[str, ExecutorSpec] = field(default_factory=dict)
    watch_debounce_ms: int = 200
    cache: CacheSettings | None = None  # [cache], None without one
    # folders read by matrix globs -> mtime_ns, so a cached expansion can be checked
    scanned: Mapping[str, int] = field(default_factory=dict)
    # every matrix group's name, also of one whose glob matched no file (and so has no task)
    groups: tuple[str, ...] = ()
    # things to say on every build of this manifest (an empty matrix glob)
    warnings: tuple[str, ...] = ()
    # where keys are in the text, for errors found later (graph.compile); None without text
    line_index: LineIndex | None = field(default=None, repr=False, compare=False)

    def line_of(self, spec: TaskSpec, key: str) -> int | None:
        """The line of ``key`` in ``spec``'s table, else of the table itself."""
        if self.line_index is None:
            return spec.line
        return self.line_index.find(("tasks", spec.group or spec.name), key) or spec.line

    def line_in(self, table: tuple[str, ...], key: str | None = None) -> int | None:
        """The line of ``key`` in ``table`` (or of the table), where known; a manifest from the
        graph cache has no index, and reads its file (``source``) again."""
        index = self.line_index if self.line_index is not None else LineIndex.of_file(self.source)
        return index.find(table, key) if index is not None else None

    def settings_line(self, key: str) -> int | None:
        """The line of ``key`` in [dagrun], where known."""
        return self.line_index.find(("dagrun",), key) if self.line_index is not None else None
