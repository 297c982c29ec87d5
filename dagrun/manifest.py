"""dagrun.toml text -> Manifest: validated, matrix-expanded, paths normalised.

Everything a user can get wrong in the manifest is found here and raised as a
ManifestError naming the file, the task, the key and the line.  Paths in a
TaskSpec are relative to the manifest's folder (or absolute); a task's
``inputs`` and ``outputs`` are written relative to its ``cwd``.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import globs, placeholders, placement, shellwords, tomlsplit
from .errors import ManifestError
from .fs import read_regular

MANIFEST_NAME = "dagrun.toml"
STATE_DIR = globs.STATE_DIR
MAX_SECONDS = 365 * 24 * 3600  # the longest timeout or grace period: a year
STALL_WARNING = 300.0  # [dagrun] stall_warning's default
MAX_TASKS = 1_000_000  # matrices are refused, before they are expanded, past this many tasks


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
    line_index: _LineIndex | None = field(default=None, repr=False, compare=False)

    def line_of(self, spec: TaskSpec, key: str) -> int | None:
        """The line of ``key`` in ``spec``'s table, else of the table itself."""
        if self.line_index is None:
            return spec.line
        return self.line_index.find(("tasks", spec.group or spec.name), key) or spec.line

    def settings_line(self, key: str) -> int | None:
        """The line of ``key`` in [dagrun], where known."""
        return self.line_index.find(("dagrun",), key) if self.line_index is not None else None


# ---------------------------------------------------------------- validation helpers

Check = Callable[[Any], "str | None"]  # returns an error message or None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(minimum: int, maximum: int | None = None) -> Check:
    def check(v: Any) -> str | None:
        if not _is_int(v):
            return f"must be an integer, not {_tname(v)}"
        if v < minimum:
            return f"must be at least {minimum}, not {v}"
        if maximum is not None and v > maximum:
            return f"must be at most {maximum}, not {v}"
        return None

    return check


def _one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        if v not in choices:
            return "must be one of " + ", ".join(f'"{c}"' for c in choices) + f", not {v!r}"
        return None

    return check


def _seconds_or_zero(v: Any) -> str | None:
    """A number of seconds, or 0 (off)."""
    return None if v == 0 and not isinstance(v, bool) else _number_positive(v)


def _number_positive(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"must be a number of seconds, not {_tname(v)}"
    try:
        finite = math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        return "must be a finite number of seconds"
    if v <= 0:
        return f"must be positive, not {v}"
    if v > MAX_SECONDS:
        return f"must be at most {MAX_SECONDS} seconds (a year), not {v}"
    return None


def _str(v: Any) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, not {_tname(v)}"
    return "must not contain a NUL character" if "\0" in v else None


def _nonempty_str(v: Any) -> str | None:
    problem = _str(v)
    if problem:
        return problem
    return None if v.strip() else "must not be empty"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, not {_tname(v)}"


def _str_list(v: Any) -> str | None:
    if not isinstance(v, list):
        return f"must be a list of strings, not {_tname(v)}"
    for item in v:
        if not isinstance(item, str):
            return f"must be a list of strings, but has {_tname(item)} {item!r}"
        if not item:
            return "must not contain an empty string"
        if "\0" in item:
            return "must not contain a NUL character"
    return None


def _env_table(v: Any) -> str | None:
    if not isinstance(v, dict):
        return f"must be a table of strings, not {_tname(v)}"
    for k, item in v.items():
        problem = _env_entry(k, item)
        if problem:
            return f"'{k}' {problem}"
    return None


def _env_entry(name: str, value: Any) -> str | None:
    """What is wrong with one environment variable, or None."""
    if not name or "=" in name or "\0" in name:
        return "is not a valid variable name (it must be non-empty, without '=')"
    return _str(value)


def _count_table(v: Any) -> str | None:
    if not isinstance(v, dict):
        return f"must be a table of counts, not {_tname(v)}"
    for k, item in v.items():
        if not _is_int(item) or item < 0:
            return f"value of '{k}' must be a non-negative integer, not {item!r}"
    return None


def _call(v: Any) -> str | None:
    """A "package.module:function" string, or (from the API) a function."""
    return None if callable(v) else _nonempty_str(v)


def _args(v: Any) -> str | None:
    return None if isinstance(v, (list, tuple)) else f"must be an array, not {_tname(v)}"


def _any_table(v: Any) -> str | None:
    return None if isinstance(v, dict) else f"must be a table, not {_tname(v)}"


def _cores(v: Any) -> str | None:
    if isinstance(v, str):
        return None
    if isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v):
        return None
    return f'must be a range string such as "0-3,8-11" or a list of core numbers, not {v!r}'


def _numa_nodes(v: Any) -> str | None:
    if v == "auto":
        return None
    if isinstance(v, dict) and all(isinstance(x, (str, list)) for x in v.values()):
        return None
    return f'must be "auto" or a table such as {{ 0 = "0-7", 1 = "8-15" }}, not {v!r}'


_MATRIX_KINDS = 'a list, { glob = "pattern" } or { range = [start, stop, step] }'
RESERVED = ("inputs", "outputs")  # {inputs} and {outputs} in cmd: the task's own files


def _vars(v: Any) -> str | None:
    """``[vars]``: NAME = "text" or NAME = ["item", ...]."""
    for name, value in v.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            return f"variable name '{name}' must be an identifier"
        if name in RESERVED:
            return f"'{name}' is reserved: {{{name}}} names the task's own {name}"
        problem = _str(value) if isinstance(value, str) else _str_list(value)
        if problem and not isinstance(value, str):
            problem = "must be a string or a list of strings" + (
                "" if isinstance(value, list) else f", not {_tname(value)}"
            )
        if problem:
            return f"'{name}' {problem}"
    return None


def _matrix(v: Any) -> str | None:
    if not isinstance(v, dict) or not v:
        return "must be a non-empty table of variable = [values] or { glob = \"...\" }"
    for var, values in v.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
            return f"variable name '{var}' must be an identifier"
        if var in RESERVED:
            return f"variable name '{var}' is reserved: {{{var}}} names the task's own {var}"
        if isinstance(values, dict):
            if set(values) == {"range"}:
                problem = _range(values["range"])
                if problem:
                    return f"variable '{var}': range {problem}"
            elif "glob" not in values or not set(values) <= {"glob", "allow_empty", "exclude"}:
                return f"variable '{var}' must be {_MATRIX_KINDS}"
            elif not isinstance(values["glob"], str):
                return f"variable '{var}' must be {_MATRIX_KINDS}"
            elif not isinstance(values.get("allow_empty", False), bool):
                return f"variable '{var}': allow_empty must be true or false"
            elif "exclude" in values and _str_list(values["exclude"]):
                return f"variable '{var}': exclude {_str_list(values['exclude'])}"
        elif isinstance(values, list):
            if not values:
                return f"variable '{var}' has no values"
            for x in values:
                if not isinstance(x, (str, int, float, bool)):
                    return f"variable '{var}' has a value of type {_tname(x)}"
        else:
            return f"variable '{var}' must be {_MATRIX_KINDS}, not {_tname(values)}"
    return None


def _range(v: Any) -> str | None:
    """``[start, stop]`` or ``[start, stop, step]``: whole numbers, as Python's range()."""
    if not isinstance(v, list) or not 2 <= len(v) <= 3 or not all(_is_int(x) for x in v):
        return f"must be [start, stop] or [start, stop, step] (whole numbers), not {v!r}"
    if len(v) == 3 and v[2] == 0:
        return "step must not be 0"
    if not range(*v):
        return f"{v!r} has no values (stop is exclusive, as in Python)"
    if range(*v)[1_000_000:]:  # not len(): past 2**63 values it raises OverflowError
        return f"{v!r} has more than 1,000,000 values"
    return None


def _tname(v: Any) -> str:
    import datetime  # not at the top: ~1.4 ms of every build that reads the cached graph

    if isinstance(v, (datetime.date, datetime.time)):
        return "a date/time"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)


def _adapt(v: Any) -> str | None:
    if isinstance(v, dict) and set(v) <= {"minimum", "maximum"}:
        if all(_is_int(x) and x >= 0 for x in v.values()):
            return None
    return f"must be a table such as {{ minimum = 0, maximum = 8 }}, not {v!r}"


def _cluster(v: Any) -> str | None:
    """"local", or a class by its dotted path (``dask_jobqueue.SLURMCluster``)."""
    if isinstance(v, str) and v == "local":
        return None
    module, _, name = v.rpartition(".") if isinstance(v, str) else ("", "", "")
    if module and name.isidentifier() and all(p.isidentifier() for p in module.split(".")):
        return None
    hint = ' (did you mean "local"?)' if isinstance(v, str) and _near(v, "local") else ""
    return (f'must be "local" or a cluster class such as "dask_jobqueue.SLURMCluster", '
            f"not {v!r}{hint}")


def _near(word: str, target: str) -> bool:
    import difflib

    return bool(difflib.get_close_matches(word.lower(), [target], n=1, cutoff=0.6))


DAGRUN_KEYS: dict[str, Check] = {
    "jobs": _int(1),
    "failures_allowed": _int(0),
    "default": _str_list,
    "key_env": _str_list,
    "resources": _count_table,
    "watch_debounce_ms": _int(0),
    "stall_warning": _seconds_or_zero,
    "server": lambda v: None if v == "auto" or v is False else 'must be "auto" or false',
    "server_idle": _number_positive,  # both read by the build server (server.py), not a Manifest
}

TASK_KEYS: dict[str, Check] = {
    "cmd": _nonempty_str,
    "inputs": _str_list,
    "outputs": _str_list,
    "deps": _str_list,
    "display": _str,
    "desc": _str,
    "env": _env_table,
    "cwd": _nonempty_str,
    "threads": _int(1),
    "numa_node": _int(0),
    "timeout": _number_positive,
    "retries": _int(0, 100),  # scheduler.MAX_RETRIES
    "always": _bool,
    "executor": placement.executor_ref,
    "key_env": _str_list,
    "resources": _count_table,
    "matrix": _matrix,
    "depfile": _nonempty_str,
    "restat": _bool,
    "stall_warning": _seconds_or_zero,
    "call": _call,
    "args": _args,
    "kwargs": _any_table,
    "io_bound": _bool,
    "slurm": placement.slurm_table,
    "cache": _bool,
}
FUNCTION_KEYS = ("args", "kwargs", "io_bound")  # meaningful with call only
FUNCTION_EXECUTORS = ("local", "dask")  # executor types that can run a function task

EXECUTOR_KEYS: dict[str, dict[str, Check]] = {
    "local": {
        "type": _str,
        "max_jobs": _int(1),
        "core_pool": _cores,
        "numa_nodes": _numa_nodes,
        "numa_strict": _bool,
        "grace_period": _number_positive,
    },
    "ssh": {
        "type": _str,
        "host": _nonempty_str,
        "user": _str,
        "port": _int(1),
        "identity_file": _str,
        "ssh_options": _str_list,
        "workspace": _nonempty_str,
        "max_jobs": _int(1),
        "max_sessions": _int(2),
        "stage": _one_of("shared", "rsync"),
        "env_inherit": _bool,
        "grace_period": _number_positive,
    },
    "http": {
        "type": _str,
        "provisioner": _str,
        "deprovisioner": _str,
        "bind": _str,
        "max_jobs": _int(1),
        "lease_timeout": _number_positive,
        "max_workers": _int(1),
        "stage": lambda v: None if v in ("shared", "http") else 'must be "shared" or "http"',
        "tls_cert": _nonempty_str,
        "tls_key": _nonempty_str,
        "grace_period": _number_positive,
        "worker_timeout": _number_positive,
    },
    "dask": {
        "type": _str,
        "scheduler": _str,
        "cluster": _cluster,
        "options": _any_table,
        "max_jobs": _int(1),
        "scale": _int(0),
        "adapt": _adapt,
        "workers": _int(1),
        "threads_per_worker": _int(1),
        "grace_period": _number_positive,
        "env_inherit": _bool,
        "connect_timeout": _number_positive,
        "worker_timeout": _number_positive,
    },
    "slurm": {
        "type": _str,
        "max_jobs": _int(1),
        "partition": _nonempty_str,
        "account": _nonempty_str,
        "qos": _nonempty_str,
        "mem": _nonempty_str,
        "sbatch_options": _str_list,
        "python": _nonempty_str,
        "grace_period": _number_positive,
    },
    placement.GROUP: {"type": _str, "members": placement.members_list},
}
for _keys in EXECUTOR_KEYS.values():
    _keys["env"] = _env_table  # added to its tasks' environment (placement.py)

TOP_KEYS = ("dagrun", "env", "vars", "tasks", "executors", "cache")


def _cache_url(v: Any) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, not {_tname(v)}"
    if v.startswith("file://"):
        if not v[len("file://"):].startswith("/"):
            return f"must name an absolute folder (file:///path/to/cache), not {v!r}"
        return None
    if v.startswith(("http://", "https://")):
        return None if len(v.split("/")[2]) else f"has no host: {v!r}"
    if v.startswith("s3://"):
        return "s3:// stores are not supported (docs/cache.md says why); use http(s):// or file://"
    return f"must start with file://, http:// or https://, not {v!r}"


CACHE_KEYS: dict[str, Check] = {
    "url": _cache_url,
    "read": _bool,
    "write": _bool,
    "token_env": _nonempty_str,
    "connect_timeout": _number_positive,
    "read_timeout": _number_positive,
}


# ---------------------------------------------------------------- entry points


def read(path: str) -> bytes:
    """A manifest file's bytes; ManifestError naming it when it cannot be read."""
    try:
        return read_regular(path)  # a FIFO or a device: an error, not a hang
    except FileNotFoundError:
        raise ManifestError("no such manifest file", source=path) from None
    except OSError as exc:
        raise ManifestError(f"cannot read manifest: {exc.strerror}", source=path) from None


def load(
    path: str | os.PathLike[str],
    *,
    source: str | None = None,
    data: bytes | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Manifest:
    """Read and parse a manifest file; ``source`` is how messages name it (default: ``path``).

    ``data``: the file's bytes, when the caller has read them already; ``overrides``: [vars]
    values given on the command line (``dagrun build CFLAGS=-O0``).
    """
    path = os.fspath(path)
    if data is None:
        data = read(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise ManifestError(problem, source=path) from None
    root = os.path.dirname(os.path.abspath(path))
    manifest = parse(text, source=source or path, root=root, overrides=overrides)
    if manifest.line_index is not None:  # its text is read again if an error needs a line
        manifest.line_index.keep_file(path, zlib.crc32(data))
    return manifest


def parse(
    text: str,
    *,
    source: str = MANIFEST_NAME,
    root: str | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Manifest:
    """Parse manifest text.  ``root`` is the folder paths are relative to (default: cwd);
    ``overrides`` replace [vars] values (see load)."""
    root = os.path.abspath(root if root is not None else os.getcwd())
    if text.startswith("\ufeff"):  # a UTF-8 byte order mark, as some editors write
        text = text[1:]
    parts = tomlsplit.split(text)
    if parts is not None:  # a big manifest: its tasks made batch by batch, tables dropped
        try:
            return _Builder(text, source, root, headers=False, overrides=overrides).build(*parts)
        except (tomlsplit.Unsplittable, ManifestError):
            pass  # the whole text at once says what is wrong, as it would without batches
    try:
        doc = tomlsplit.loads(text)  # tomllib, imported lazily (~9 ms), in batches on big manifests
    except tomlsplit.decode_error() as exc:
        raise _toml_error(str(exc), text, source) from None
    except RecursionError:
        problem = "invalid TOML: arrays or tables nested too deeply"
        raise ManifestError(problem, source=source) from None
    return _Builder(text, source, root, overrides=overrides).build(doc)


def _toml_error(msg: str, text: str, source: str) -> ManifestError:
    """A TOML parser message made readable: 'file:LINE: invalid TOML: what (column N)'."""
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)", msg)
    at_end = not m and "(at end of document)" in msg
    lines = text.splitlines()
    line = int(m.group(1)) if m else (len(lines) or 1) if at_end else None
    what = msg[: m.start()] if m else msg.replace(" (at end of document)", "")
    declared = re.fullmatch(r"Cannot declare \((.*)\) twice", what)
    if declared:
        parts = re.findall(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"", declared.group(1))
        what = "table [" + ".".join(a or b for a, b in parts) + "] is declared twice"
    elif what == "Cannot overwrite a value" and line is not None:
        km = _LineIndex._KEY.match(lines[line - 1]) if line <= len(lines) else None
        what = f"key '{_unquote(km.group(1))}' is set twice" if km else "a key is set twice"
    else:
        what = what[:1].lower() + what[1:]
    where = f" (column {m.group(2)})" if m else " (at the end of the file)" if at_end else ""
    return ManifestError(f"invalid TOML: {what}{where}", source=source, line=line)


def build_manifest(
    source: str,
    root: str,
    settings: Mapping[str, Any],
    env: Mapping[str, str],
    tasks: Mapping[str, Mapping[str, Any]],
    executors: Mapping[str, Mapping[str, Any]] | None = None,
    cache: Mapping[str, Any] | None = None,
) -> Manifest:
    """Validate tables given as Python values (the API's path; same checks as a file)."""
    doc: dict[str, Any] = {"dagrun": dict(settings), "env": dict(env), "tasks": dict(tasks)}
    if executors:
        doc["executors"] = dict(executors)
    if cache is not None:
        doc["cache"] = dict(cache)
    return _Builder("", source, os.path.abspath(root)).build(doc)


# ---------------------------------------------------------------- the builder


class _Builder:
    """Validates a parsed document and expands it into a Manifest."""

    def __init__(
        self,
        text: str,
        source: str,
        root: str,
        *,
        headers: bool = True,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        self.text = text
        self.overrides = dict(overrides or {})
        self.source = source
        self.root = root
        self.lines = _LineIndex(text, headers=headers) if text else None
        self.header_lines: dict[str, int] = {}  # task table -> its header's line (split text)
        self.scanned: dict[str, int] = {}
        self.groups: list[str] = []
        self.empty: dict[tuple[str, str], str] = {}  # (group, variable) -> warning: no file
        self.vars: dict[str, str | list[str]] = {}
        # declared outputs (relative to the root) -> task: a matrix glob sees them too
        self.declared: dict[str, tuple[str, str | None]] = {}  # -> (task, its matrix group)
        self.saw: dict[str, frozenset[str]] = {}  # matrix group -> declared outputs its globs saw
        self.globbed: list[str] = []  # matrix groups with a glob variable
        # groups made by a task's executor = [...]: name -> spec, and the first task naming it
        self.implicit: dict[str, ExecutorSpec] = {}
        self.implicit_by: dict[str, tuple[str, tuple[str, ...]]] = {}
        # matrix group -> variable -> {value as text: value as written} (numbers, booleans)
        self.typed: dict[str, dict[str, dict[str, Any]]] = {}
        self.count = 0  # tasks so far, to refuse a matrix of millions before making it

    # -- errors

    def error(
        self,
        message: str,
        *,
        task: str | None = None,
        key: str | None = None,
        table: tuple[str, ...] | None = None,
        hint: str | None = None,
    ) -> ManifestError:
        """A ManifestError with the line of ``key`` in ``table`` (or of the table) when known."""
        line = self.lines.find(table, key) if self.lines is not None and table is not None else None
        return ManifestError(message, source=self.source, task=task, key=key, line=line, hint=hint)

    def check_keys(
        self,
        table: Mapping[str, Any],
        allowed: Mapping[str, Check],
        path: tuple[str, ...],
        task: str | None = None,
    ) -> None:
        for key, value in table.items():
            check = allowed.get(key)
            if check is None:
                import difflib

                close = difflib.get_close_matches(key, list(allowed), n=1)
                hint = _did_you_mean(close) or "known keys: " + ", ".join(allowed)
                where = _table_name(path)
                raise self.error(
                    f"unknown key in {where}", task=task, key=key, table=path, hint=hint
                )
            problem = check(value)
            if problem:
                raise self.error(problem, task=task, key=key, table=path)

    # -- the document

    def build(
        self, doc: dict[str, Any], batches: Iterable[tomlsplit.Batch] | None = None
    ) -> Manifest:
        """The Manifest of ``doc``; its task tables, when ``batches`` is given, come from those
        (tomlsplit.split), each batch's tables dropped once made into tasks."""
        for key in doc:
            if key not in TOP_KEYS:
                import difflib

                close = difflib.get_close_matches(key, TOP_KEYS, n=1)
                raise self.error(
                    "unknown top-level table",
                    key=key,
                    table=(),
                    hint=_did_you_mean(close) or "known: " + ", ".join(TOP_KEYS),
                )
        settings = self.table(doc, "dagrun")
        self.check_keys(settings, DAGRUN_KEYS, ("dagrun",))
        env = self.env(self.table(doc, "env"))
        self.vars = self.table(doc, "vars")
        self.stall_warning = float(settings.get("stall_warning", STALL_WARNING))
        problem = _vars(self.vars)
        if problem:
            raise self.error(f"[vars] entry {problem}", key=problem.split("'")[1], table=("vars",))
        self.override_vars()
        executors = self.executors(self.table(doc, "executors"))
        cache = self.cache(doc)
        bodies = self.table(doc, "tasks")
        per_task: dict[str, list[TaskSpec]] = {}
        globbed: dict[str, Any] = {}  # the bodies of matrices over globs, expanded again
        for part, lines in [(bodies, {})] if batches is None else batches:
            if self.lines is not None and self.lines.deferred:
                self.header_lines.update(lines)  # exact: only \n breaks a line in this text
            for name in list(part):
                body = part.pop(name)  # each table is freed once made into tasks: a lower peak
                known = len(self.globbed)
                per_task[name] = self.task(name, body)
                if len(self.globbed) > known:
                    globbed[name] = body
        if self.globbed:
            self.produced_matrices(globbed, per_task)
        tasks = [t for made in per_task.values() for t in made]
        del per_task
        executors.update(self.implicit)
        self.check_groups(executors)
        self.check_unique(tasks, executors)
        tasks = self.with_executor_env(tasks, executors)
        if self.lines is not None:
            self.lines.shrink()
        return Manifest(
            source=self.source,
            root=self.root,
            tasks=tuple(tasks),
            jobs=settings.get("jobs"),
            failures_allowed=settings.get("failures_allowed", 1),
            default=tuple(settings.get("default", ())),
            env=env,
            key_env=tuple(settings.get("key_env", ())),
            resources=tuple(sorted(settings.get("resources", {}).items())),
            executors=executors,
            watch_debounce_ms=settings.get("watch_debounce_ms", 200),
            cache=cache,
            scanned=self.scanned,
            groups=tuple(self.groups),
            warnings=tuple(self.empty.values()),
            line_index=self.lines,
        )

    def override_vars(self) -> None:
        """``NAME=value`` words of the command line replace [vars] values; a list variable
        takes the value split as a shell would split it."""
        for name, value in self.overrides.items():
            if name not in self.vars:
                import difflib

                close = difflib.get_close_matches(name, list(self.vars), n=1)
                known = ", ".join(self.vars) or "none"
                hint = _did_you_mean(close) or f"[vars] has: {known}"
                raise ManifestError(
                    f"{name}={value} on the command line names no [vars] entry",
                    source=self.source, hint=hint,
                )
            if isinstance(self.vars[name], list):
                import shlex

                try:
                    self.vars[name] = shlex.split(value)
                except ValueError as exc:  # an unmatched quote
                    problem = f"{name}={value} on the command line: {exc}"
                    raise ManifestError(problem, source=self.source) from None
            else:
                self.vars[name] = value

    def table(self, doc: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            problem = f"must be a table such as [{key}], not {_tname(value)}"
            raise self.error(problem, key=key, table=())
        return value

    def env(self, table: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        for name, value in table.items():
            problem = _env_entry(name, value)
            if problem:
                raise self.error(f"[env] entry {problem}", key=name, table=("env",))
        return tuple(sorted(table.items()))

    def cache(self, doc: dict[str, Any]) -> CacheSettings | None:
        """``[cache]``: None without one; a table without ``url`` is an error."""
        if "cache" not in doc:
            return None
        body = self.table(doc, "cache")
        self.check_keys(body, CACHE_KEYS, ("cache",))
        if "url" not in body:
            hint = 'url = "file:///mnt/cache" or "http://cache.internal:8080/dagrun"'
            raise self.error("[cache] has no 'url' (where the shared cache is)", table=("cache",),
                             hint=hint)
        timeouts = {k: float(body[k]) for k in ("connect_timeout", "read_timeout") if k in body}
        return CacheSettings(
            body["url"].rstrip("/"), body.get("read", True), body.get("write", True),
            body.get("token_env", ""), **timeouts,
        )

    def executors(self, doc: dict[str, Any]) -> dict[str, ExecutorSpec]:
        out = {"local": ExecutorSpec("local", "local", {})}
        for name, body in doc.items():
            out[name] = self.executor(name, body)
        return out

    def executor(self, name: str, body: Any) -> ExecutorSpec:
        path = ("executors", name)
        where = _table_name(path)
        if not isinstance(body, dict):
            problem = f"must be a table such as {where}, not {_tname(body)}"
            raise self.error(problem, key=name, table=path)
        kinds = "one of: " + ", ".join(EXECUTOR_KEYS)
        kind = body.get("type", "local" if name == "local" else None)
        if kind is None:
            raise self.error(f"{where} has no 'type'", table=path, hint=kinds)
        if not isinstance(kind, str):
            problem = f"must be a string, not {_tname(kind)}"
            raise self.error(problem, key="type", table=path, hint=kinds)
        if kind not in EXECUTOR_KEYS:
            raise self.error(
                f"unknown executor type {kind!r} in {where}", key="type", table=path, hint=kinds
            )
        if name == "local" and kind != "local":
            problem = "the executor named 'local' must have type 'local'"
            raise self.error(problem, key="type", table=path)
        self.check_keys(body, EXECUTOR_KEYS[kind], path)
        if kind == "ssh" and "host" not in body:
            raise self.error(f"{where} has no 'host' (the machine to run tasks on)", table=path)
        if kind == placement.GROUP and "members" not in body:
            hint = 'members = ["lab1", "lab2"]: the executors it spreads tasks over'
            raise self.error(f"{where} has no 'members'", table=path, hint=hint)
        if kind == "dask" and ("scheduler" in body) == ("cluster" in body):
            hint = 'scheduler = "tcp://host:8786", or cluster = "local" or "module.Class"'
            raise self.error(f"{where} needs exactly one of 'scheduler' and 'cluster'",
                             table=path, hint=hint)
        return ExecutorSpec(name, kind, dict(body))

    def executor_name(self, value: str | list[str], task: str, table: tuple[str, ...]) -> str:
        """A task's executor: a name, or the group its list makes (placement.py)."""
        if isinstance(value, str):
            return value
        group = placement.implicit_name(value)
        if len(value) > 1 and group not in self.implicit:
            self.implicit[group] = ExecutorSpec(group, placement.GROUP, {"members": value})
            self.implicit_by[group] = (task, table)
        return group

    def check_groups(self, executors: dict[str, ExecutorSpec]) -> None:
        """Every group's members are executors, and none is a group."""
        types = {name: spec.type for name, spec in executors.items()}
        for name, spec in executors.items():
            if spec.type != placement.GROUP:
                continue
            problem = placement.group_problem(name, spec.options["members"], types)
            if problem is None:
                continue
            hint = "defined: " + ", ".join(sorted(n for n, t in types.items()
                                                   if t != placement.GROUP))
            if name in self.implicit_by:
                task, table = self.implicit_by[name]
                raise self.error(problem, task=task, key="executor", table=table, hint=hint)
            raise self.error(problem, key="members", table=("executors", name), hint=hint)

    def check_slurm(self, t: TaskSpec, executors: Mapping[str, ExecutorSpec],
                    table: tuple[str, ...]) -> None:
        """A task's ``slurm`` settings need a Slurm executor (or a group with one)."""
        spec = executors[t.executor]
        kinds = {spec.type}
        if spec.type == placement.GROUP:
            kinds = {executors[m].type for m in spec.options["members"]}
        if not kinds & set(placement.SLURM_TYPES):
            raise self.error(
                f"'slurm' settings need a Slurm executor, and '{t.executor}' is of type "
                f"{spec.type}", task=t.name, key="slurm", table=table,
                hint='executor = "NAME" of an [executors.NAME] table with type = "slurm"',
            )

    def with_executor_env(self, tasks: list[TaskSpec],
                          executors: Mapping[str, ExecutorSpec]) -> list[TaskSpec]:
        """An executor's (or group's) ``env`` joins the declared env of the tasks naming it."""
        envs = {n: e.options["env"] for n, e in executors.items() if e.options.get("env")}
        if not envs:
            return tasks
        out = []
        for t in tasks:
            extra = envs.get(t.executor)
            if extra:
                t = t._replace(env=tuple(sorted({**extra, **dict(t.env)}.items())))
            out.append(t)
        return out

    def task(self, name: str, body: Any) -> list[TaskSpec]:
        path = ("tasks", name)
        if not isinstance(body, dict):
            raise self.error(
                f"must be a table such as {_table_name(path)} with a 'cmd', not {_tname(body)}",
                task=name, table=path,
            )
        if not _TASK_NAME.fullmatch(name):
            problem = "task names must not contain whitespace or [ ] * ? = , (targets use them)"
            raise self.error(problem, task=name, table=path)
        self.check_keys(body, TASK_KEYS, path, task=name)
        if "cmd" in body and "call" in body:
            problem = "a task has either 'cmd' (a shell command) or 'call' (a function), not both"
            raise self.error(problem, task=name, key="call", table=path)
        if "cmd" not in body and "call" not in body:
            self.check_aggregate(name, body, path)
        for key in FUNCTION_KEYS:
            if key in body and "call" not in body:
                problem = f"'{key}' is for Python function tasks (with 'call') only"
                raise self.error(problem, task=name, key=key, table=path)
        if "call" in body:
            body = {**body, **self.function(name, body["call"], path)}
        line = self.header_lines.get(name)
        if line is None and self.lines is not None:
            line = self.lines.find(path, None)
        if "matrix" not in body:
            self.count += 1
            return [self.spec(name, body, {}, None, line)]
        if name not in self.groups:
            self.groups.append(name)
        clash = [v for v in body["matrix"] if v in self.vars]
        if clash:
            problem = f"matrix variable '{clash[0]}' has the name of a [vars] entry"
            raise self.error(problem, task=name, key="matrix", table=path)
        self.check_placeholders(name, body, path)
        combos = self.combinations(name, body)
        return [self.spec(n, body, values, name, line) for n, values in combos]

    def check_placeholders(self, name: str, body: dict[str, Any], path: tuple[str, ...]) -> None:
        """A misspelt part of a matrix variable (``{f.stme}``) is an error, not text."""
        misspelt = placeholders.check(body, body["matrix"])
        if misspelt is not None:
            raise self.error(misspelt.message, task=name, key=misspelt.key, table=path,
                             hint=misspelt.hint)

    def produced_matrices(
        self, bodies: Mapping[str, Any], per_task: dict[str, list[TaskSpec]]
    ) -> None:
        """Expand matrix globs again over the outputs other tasks declare, until nothing changes.

        A matrix over ``build/*.o`` then has one task per object the build will make,
        in the same build, and depends on each object's producer through its inputs.
        """
        for _ in range(len(self.globbed) + 1):
            changed = False
            self.declared = {
                o: (t.name, t.group) for made in per_task.values() for t in made for o in t.outputs
            }
            for name in self.globbed:
                if not self.sees_declared(name, bodies[name]):
                    continue
                before = [t.name for t in per_task[name]]
                self.count -= len(before)
                self.saw.pop(name, None)
                per_task[name] = self.task(name, bodies[name])
                changed |= [t.name for t in per_task[name]] != before
            if not changed:
                return
        raise self.error(
            "matrix globs over each other's outputs do not settle", table=("tasks",),
            hint="a matrix glob should not match the outputs of a matrix that depends on it",
        )

    def sees_declared(self, name: str, body: dict[str, Any]) -> bool:
        """Whether the other tasks' outputs that matrix ``name``'s globs match have changed
        since it was last expanded (then it must be expanded again)."""
        cwd = os.path.normpath(body.get("cwd", "."))
        seen = frozenset(
            out
            for values in body["matrix"].values()
            if isinstance(values, dict) and "glob" in values
            for out, *_ in self.declared_matches(name, values["glob"], cwd)
        )
        return seen != self.saw.get(name, frozenset())

    def declared_matches(
        self, name: str, pattern: str, cwd: str
    ) -> Iterator[tuple[str, str, str, bool]]:
        """(output, its task, output relative to cwd, exact match) for outputs of other groups
        that ``pattern`` matches or could match files below."""
        if "{" in cwd:
            return
        lit = globs.literal_prefix(pattern)
        lit = lit if cwd == "." else f"{cwd}/{lit}"
        rx = globs.translate(pattern)
        for out, (producer, group) in self.declared.items():
            if group == name or not (out.startswith(lit) or lit.startswith(out + "/")):
                continue
            local = out if cwd == "." else os.path.relpath(out, cwd)
            if rx.match(local):
                yield out, producer, local, True
            elif globs.may_match_below(pattern, local):
                yield out, producer, local, False

    def glob_values(self, name: str, var: str, values: dict[str, Any], cwd: str) -> list[str]:
        """A glob variable's values: files on disk and declared outputs, minus ``exclude``."""
        base = os.path.normpath(os.path.join(self.root, cwd))
        found = set(globs.expand(values["glob"], base, self.scanned))
        pattern = values["glob"]
        inside: list[str] = []
        matches = self.declared_matches(name, pattern, os.path.normpath(cwd))
        seen = set()
        for out, producer, local, exact in matches:
            seen.add(out)
            if exact:
                found.add(local)
            else:
                inside.append(f"'{out}' (of task '{producer}')")
        if seen:
            self.saw[name] = self.saw.get(name, frozenset()) | seen
        excluded = [globs.translate(p) for p in values.get("exclude", ())]
        kept = sorted(p for p in found if not _excluded(p, excluded, values.get("exclude", ())))
        self.empty.pop((name, var), None)
        if not kept and inside:
            raise self.error(
                f"matrix glob {var} = '{pattern}' would match files inside {inside[0]}, which "
                "do not exist before that task runs: a matrix is expanded before the build",
                task=name, key="matrix", table=("tasks", name),
                hint="declare the files as that task's outputs, so the matrix sees them",
            )
        if not kept and not values.get("allow_empty", False):
            self.warn_empty(name, var, pattern)
        return kept

    def check_aggregate(self, name: str, body: dict[str, Any], path: tuple[str, ...]) -> None:
        """A task without ``cmd`` is an aggregate: it needs ``deps`` and writes nothing."""
        if not body.get("deps"):
            raise self.error("missing 'cmd' (the shell command to run)", task=name, table=path)
        if body.get("outputs"):
            raise self.error(
                "a task without 'cmd' runs nothing, so it cannot declare outputs",
                task=name, key="outputs", table=path, hint="give it a 'cmd' that writes them",
            )

    def function(self, name: str, call: Any, path: tuple[str, ...]) -> dict[str, Any]:
        """``call``'s target and source file, checked now: a call that cannot import is exit 2."""
        from . import pycall

        try:
            if callable(call):
                target, code_file = pycall.target_of(call)
            else:
                target, code_file = call, pycall.check_target(call, self.root)
        except ValueError as exc:
            raise self.error(str(exc), task=name, key="call", table=path) from None
        if code_file.startswith(self.root + os.sep):
            code_file = os.path.relpath(code_file, self.root)
        return {"cmd": f"call {target}", "call": target, "code_file": code_file}

    def combinations(self, name: str, body: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
        """One (task name, {variable: value}) per combination of the matrix values."""
        cwd = body.get("cwd", ".")
        axes: list[list[tuple[str, str]]] = []
        for var, values in body["matrix"].items():
            if isinstance(values, dict) and "range" in values:
                axes.append([(var, str(n)) for n in range(*values["range"])])
            elif isinstance(values, dict):
                if name not in self.globbed:
                    self.globbed.append(name)
                found = self.glob_values(name, var, values, cwd)
                axes.append([(var, p) for p in found])  # none: the group stays, empty
            else:
                axes.append([(var, _scalar(v)) for v in values])
        self.check_count(name, math.prod(len(a) for a in axes))
        out = []
        for combo in itertools.product(*axes):
            label = ",".join(f"{k}={v}" for k, v in combo)
            out.append((f"{name}[{label}]", dict(combo)))
        return out

    def warn_empty(self, name: str, var: str, pattern: str) -> None:
        line = self.lines.find(("tasks", name), "matrix") if self.lines is not None else None
        where = f"{self.source}:{line}" if line else self.source
        self.empty[(name, var)] = (
            f"{where}: task '{name}': matrix glob {var} = '{pattern}' matches no file, so the "
            "task has no instance (set allow_empty = true in its table if that is expected)"
        )

    def check_count(self, name: str, count: int) -> None:
        """Refuse a matrix that would make more than MAX_TASKS tasks, before making them."""
        self.count += count
        if self.count > MAX_TASKS:
            problem = (
                f"the matrix makes {count:,} tasks; a manifest may have at most {MAX_TASKS:,}"
            )
            raise self.error(problem, task=name, key="matrix", table=("tasks", name))

    def spec(
        self,
        name: str,
        body: dict[str, Any],
        values: dict[str, str],
        group: str | None,
        line: int | None,
    ) -> TaskSpec:
        matrix = body.get("matrix", {})
        found = [v for v in values if isinstance(matrix.get(v), dict) and "glob" in matrix[v]]
        sub = _Substituter(values, self.vars, found)
        path = ("tasks", group or name)
        cwd = _norm(sub(body.get("cwd", ".")), ".", self.root)
        if cwd.startswith("/") or cwd == ".." or cwd.startswith("../"):
            raise self.error(
                f"cwd '{cwd}' is outside the manifest's folder; it must be a folder inside it",
                task=name, key="cwd", table=path,
            )
        spec = TaskSpec(
            name=name,
            cmd=sub(body.get("cmd", ""), quote=True),
            inputs=self.paths(sub, body, "inputs", cwd, name, path),
            outputs=self.paths(sub, body, "outputs", cwd, name, path),
            deps=tuple(dict.fromkeys(d for e in body.get("deps", ()) for d in sub.items(e))),
            display=sub(body.get("display", "")),
            env=tuple(sorted((k, sub(v)) for k, v in body.get("env", {}).items())),
            cwd=cwd,
            threads=body.get("threads", 1),
            numa_node=body.get("numa_node"),
            timeout=float(body["timeout"]) if "timeout" in body else None,
            retries=body.get("retries", 0),
            always=body.get("always", False),
            executor=self.executor_name(body.get("executor", "local"), name, path),
            key_env=tuple(body.get("key_env", ())),
            resources=tuple(sorted(body.get("resources", {}).items())),
            group=group,
            line=line,
            depfile=_norm(sub(body["depfile"]), cwd, self.root) if "depfile" in body else "",
            restat=body.get("restat", False),
            desc=sub(body.get("desc", "")),
            stall_warning=float(body.get("stall_warning", self.stall_warning)),
            slurm=placement.slurm_pairs(body["slurm"]) if "slurm" in body else (),
            cache=body.get("cache", True),
        )
        if "call" in body:
            exact = self.typed_args(group, body, values)
            spec = spec._replace(**self.function_fields(spec, body, sub, path, exact))
        return spec

    def typed_args(
        self, group: str | None, body: dict[str, Any], values: dict[str, str]
    ) -> dict[str, Any]:
        """``"{n}"`` -> the value of matrix variable ``n`` as written (an int from a range, a
        number or boolean from a list), for the arguments that are exactly a placeholder."""
        if group is None:
            return {}
        typed = self.typed.get(group)
        if typed is None:
            typed = self.typed[group] = {}
            for var, axis in body["matrix"].items():
                if isinstance(axis, dict) and "range" in axis:
                    typed[var] = {str(n): n for n in range(*axis["range"])}
                elif isinstance(axis, list):
                    typed[var] = {_scalar(v): v for v in axis if not isinstance(v, str)}
        return {
            f"{{{var}}}": found[values[var]] for var, found in typed.items()
            if values[var] in found
        }

    def function_fields(
        self,
        spec: TaskSpec,
        body: dict[str, Any],
        sub: _Substituter,
        path: tuple[str, ...],
        exact: dict[str, Any],
    ) -> dict[str, Any]:
        """A function task's fields; its module's source becomes one of its inputs."""
        from . import pycall

        args = [_substitute(a, sub, exact) for a in body.get("args", ())]
        kwargs = {k: _substitute(v, sub, exact) for k, v in body.get("kwargs", {}).items()}
        try:
            blob = pycall.pack_args(args, kwargs)
        except ValueError as exc:
            raise self.error(str(exc), task=spec.name, key="args", table=path) from None
        code_file = body["code_file"]
        inputs = spec.inputs
        if code_file:
            inputs = tuple(dict.fromkeys((*inputs, code_file)))
        return {
            "inputs": inputs, "call": body["call"], "args": blob, "code_file": code_file,
            "io_bound": body.get("io_bound", False),
        }

    def paths(
        self,
        sub: _Substituter,
        body: dict[str, Any],
        key: str,
        cwd: str,
        name: str,
        table: tuple[str, ...],
    ) -> tuple[str, ...]:
        """``inputs`` or ``outputs``: substituted, list variables spread, normalised.

        An input ``!pattern`` stays marked with its ``!`` (graph.compile removes its
        matches from the inputs before it).
        """
        out: dict[str, None] = {}
        for entry in body.get(key, ()):
            negated = entry.startswith("!")
            if negated and (key == "outputs" or not out):
                problem = (
                    "outputs cannot be excluded with '!'" if key == "outputs"
                    else f"'{entry}' removes files matched by the inputs before it, "
                    "so it cannot come first"
                )
                raise self.error(problem, task=name, key=key, table=table)
            try:
                items = sub.items(entry[1:] if negated else entry, literal=key == "inputs")
            except ValueError as exc:
                raise self.error(str(exc), task=name, key=key, table=table) from None
            for p in items:
                out[("!" if negated else "") + _norm(p, cwd, self.root)] = None
        return tuple(out)

    def check_unique(self, tasks: list[TaskSpec], executors: Mapping[str, ExecutorSpec]) -> None:
        """Task names and outputs are unique; executors exist; outputs are exact paths."""
        names: set[str] = set()
        producers: dict[str, str] = {}
        for t in tasks:
            table = ("tasks", t.group or t.name)
            if t.name in names:
                if t.group:
                    raise self.error(
                        f"the matrix gives two tasks the name '{t.name}'",
                        task=t.group, key="matrix", table=table, hint="are two values the same?",
                    )
                raise self.error("two tasks have this name", task=t.name, table=table)
            names.add(t.name)
            if t.executor not in executors:
                raise self.error(
                    f"unknown executor '{t.executor}'", task=t.name, key="executor", table=table,
                    hint=_executor_hint(t.executor, executors),
                )
            self.check_paths(t, table)
            kind = executors[t.executor].type
            if t.slurm:
                self.check_slurm(t, executors, table)
            if t.call and kind not in FUNCTION_EXECUTORS:
                raise self.error(
                    f"executor '{t.executor}' (type {kind}) cannot run Python function tasks",
                    task=t.name, key="executor", table=table,
                    hint="run them on: " + ", ".join(FUNCTION_EXECUTORS),
                )
            for out in t.outputs:
                other = producers.get(out)
                if other is not None:
                    raise self.error(
                        f"output '{out}' is also declared by task '{other}'",
                        task=t.name, key="outputs", table=table,
                    )
                producers[out] = t.name


    def check_paths(self, t: TaskSpec, table: tuple[str, ...]) -> None:
        """Outputs are exact paths inside the project; nothing is in ``.dagrun``."""
        for out in t.outputs:
            problem = output_problem(out)
            if problem:
                raise self.error(problem, task=t.name, key="outputs", table=table)
        if t.depfile:
            problem = output_problem(t.depfile)
            if problem:
                problem = problem.replace(f"output '{t.depfile}'", f"depfile '{t.depfile}'")
                raise self.error(problem.replace("outputs must", "it must"), task=t.name,
                                 key="depfile", table=table)
        for p in t.inputs:
            if _in_state_dir(p):
                problem = f"input '{p}' is in {STATE_DIR}/, dagrun's own state: never an input"
                raise self.error(problem, task=t.name, key="inputs", table=table)


def output_problem(out: str) -> str | None:
    """What is wrong with a declared output (normalised, relative to the root), or None."""
    if globs.has_magic(out):
        return f"output '{out}' is a glob; outputs must be exact paths"
    if out == ".":
        return "output '.' is the project folder itself; outputs must lie inside it"
    if out.startswith("/") or out == ".." or out.startswith("../"):
        return f"output '{out}' is outside the project folder; outputs must lie inside it"
    if _in_state_dir(out):
        return f"output '{out}' is in {STATE_DIR}/, dagrun's own state"
    return None


def _in_state_dir(path: str) -> bool:
    return path == STATE_DIR or path.startswith(STATE_DIR + "/")


# what targets give a meaning to ([ ] * ? = ,: matrix labels and globs), whitespace, controls
_TASK_NAME = re.compile(r"[^\[\]*?=,\s\x00-\x1f\x7f]+")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _table_name(path: tuple[str, ...]) -> str:
    """``("tasks", "a.b")`` -> ``[tasks."a.b"]``, as the user would write the header."""
    return "[" + ".".join(p if _BARE_KEY.fullmatch(p) else '"' + p + '"' for p in path) + "]"


def _did_you_mean(close: list[str]) -> str | None:
    return f"did you mean '{close[0]}'?" if close else None


def _executor_hint(name: str, executors: Mapping[str, ExecutorSpec]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(executors), n=1)
    defined = ", ".join(sorted(executors))
    return _did_you_mean(close) or f"defined: {defined}; add an [executors.{name}] table"


def _substitute(value: Any, sub: _Substituter, exact: Mapping[str, Any]) -> Any:
    """Matrix placeholders replaced in every string inside an argument; a string that is
    exactly one of ``exact`` (``"{n}"``) becomes its value, typed (typed_args)."""
    if isinstance(value, str):
        return exact[value] if value in exact else sub(value)
    if isinstance(value, list):
        return [_substitute(v, sub, exact) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, sub, exact) for k, v in value.items()}
    return value


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _norm(path: str, cwd: str, root: str) -> str:
    """Normalise ``path`` written relative to ``cwd`` into a path relative to the root.

    However it is spelled (``./x``, ``a/../x``, ``/abs/root/x``, ``../root/x``),
    a path inside the root comes out relative to it; one outside keeps its form.
    """
    joined = os.path.normpath(os.path.join(cwd, path))
    if joined.startswith("/") or joined == ".." or joined.startswith("../"):
        return inside_root(joined, root) or joined
    return joined


def inside_root(path: str, root: str) -> str | None:
    """``path`` (absolute, or relative to ``root``) relative to ``root`` when it lies inside it."""
    full = os.path.normpath(os.path.join(root, path))
    for base in (root, os.path.realpath(root)):
        if full == base:
            return "."
        if full.startswith(base.rstrip("/") + "/"):
            return full[len(base.rstrip("/")) + 1 :]
    return None


def _excluded(path: str, rxs: list[re.Pattern[str]], patterns: list[str]) -> bool:
    """Whether a matrix glob's match is excluded: a pattern matches it, or (no '/') its name."""
    name = os.path.basename(path)
    for rx, pattern in zip(rxs, patterns, strict=True):
        if rx.match(path) or ("/" not in pattern and rx.match(name)):
            return True
    return False


class _Substituter:
    """Replaces {var} and {var.stem|name|parent|suffix} for matrix variables and [vars] only.

    A [vars] list is spread: in ``cmd`` its items are shell-quoted and joined by
    spaces; a path or dependency that names it becomes one entry per item.
    """

    def __init__(
        self,
        values: dict[str, str],
        variables: Mapping[str, str | list[str]] | None = None,
        found: Iterable[str] = (),
    ) -> None:
        self.values: dict[str, str | list[str]] = {**(variables or {}), **values}
        self.found = frozenset(found)  # matrix glob variables: file names, quoted in cmd
        if self.values:
            names = "|".join(re.escape(k) for k in sorted(self.values, key=len, reverse=True))
            self.pattern: re.Pattern[str] | None = re.compile(
                r"(?<!\$)\{(" + names + r")(?:\.(stem|name|parent|suffix))?\}"
            )
        else:
            self.pattern = None
        self.quote = self.literal = False
        self.text = ""
        self.quoting: dict[int, str] | None = None
        self.lists = any(isinstance(v, list) for v in self.values.values())

    def __call__(self, text: str, quote: bool = False) -> str:
        """``text`` with its placeholders replaced, in one pass; ``quote``: ``text`` is a
        command, where file names and list items are shell-quoted (see shellwords)."""
        if self.pattern is None or "{" not in text:
            return text
        self.quote, self.text, self.quoting = quote, text, None
        return self.pattern.sub(self._replace, text)

    def _quoting_at(self, start: int) -> str:
        """The shell quoting around the placeholder at ``start``, read once per command."""
        if self.quoting is None:
            assert self.pattern is not None
            starts = (m.start() for m in self.pattern.finditer(self.text))
            self.quoting = shellwords.quoting_at(self.text, starts)
        return self.quoting[start]

    def items(self, text: str, literal: bool = False) -> list[str]:
        """``text`` substituted; one string per item of the one [vars] list it names.

        ``literal``: ``text`` is a pattern, where a matrix glob's file name matches itself
        only (its wildcard characters escaped).
        """
        self.literal = literal
        try:
            return self._items(text, literal)
        finally:
            self.literal = False

    def _items(self, text: str, literal: bool) -> list[str]:
        if not self.lists or "{" not in text:
            return [self(text)]
        assert self.pattern is not None
        lists = {m.group(1) for m in self.pattern.finditer(text)}
        lists = {n for n in lists if isinstance(self.values[n], list)}
        if len(lists) > 1:
            raise ValueError(f"'{text}' names two list variables; one at most can be spread")
        if not lists:
            return [self(text)]
        (name,) = lists
        items = self.values[name]
        assert isinstance(items, list)
        out = []
        for item in items:
            each = _Substituter({name: item}, self.values, self.found)
            each.literal = literal
            out.append(each(text))
        return out

    def _replace(self, m: re.Match[str]) -> str:
        value = self.values[m.group(1)]
        if isinstance(value, list):
            shown = [self._part(v, m.group(2)) for v in value]
            if not self.quote or all(map(shellwords.safe, shown)):
                return " ".join(shown)
            return shellwords.words(shown, self._quoting_at(m.start()))
        if m.group(1) in self.found:
            part = self._part(value, m.group(2))
            if self.quote and not shellwords.safe(part):
                return shellwords.word(part, self._quoting_at(m.start()))
            return globs.escape(part) if self.literal and not self.quote else part
        return self._part(value, m.group(2))

    @staticmethod
    def _part(value: str, part: str | None) -> str:
        if part is None:
            return value
        base = os.path.basename(value)
        if part == "name":
            return base
        if part == "parent":
            return os.path.dirname(value) or "."
        stem, suffix = os.path.splitext(base)
        return stem if part == "stem" else suffix


class _LineIndex:
    """Finds the line of a table header, or of a key inside a table, in TOML text.

    One pass over the text when built; every later lookup is a dict access.
    Lines inside multi-line strings are skipped.  A key in a table that has no
    header of its own (``[tasks.a.env]`` without ``[tasks.a]``, or the table
    ``task`` of ``[task.a]``) is found at the first header below it.

    Where that is exact (no multi-line strings, only ``\\n`` line breaks), the
    first pass indexes table headers only, with one regex over the text; keys
    and inline tables are indexed on the first lookup that needs them (in
    practice: an error).  On a 10,000-task manifest this saves ~10 MB of a cold
    build's peak RSS.  For valid TOML (the only text indexed) an explicit
    header is always a table's first line, so header lookups answer the same.
    """

    _HEADER = re.compile(r"^\s*\[\[?\s*([^\[\]].*?)\s*\]\]?\s*(?:#.*)?$")  # [t] or [[t]]
    _KEY = re.compile(r'^\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*[.=]')
    # _HEADER over a whole text: \s that cannot cross a line, and the same per-line anchors
    _HEADERS = re.compile(
        r"^[^\S\n]*\[\[?[^\S\n]*([^\[\]\n].*?)[^\S\n]*\]\]?[^\S\n]*(?:#.*)?$", re.MULTILINE
    )
    _ODD_BREAKS = re.compile("[\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")  # str.splitlines splits there

    def __init__(self, text: str, *, headers: bool = True) -> None:
        """``headers=False``: index nothing until the first lookup (then everything), where
        the caller knows the task headers' lines (``deferred`` says whether it may use them)."""
        self.headers: dict[tuple[str, ...], int] = {}  # explicit headers and inline tables
        self.below: dict[tuple[str, ...], int] = {}  # first header at or below a table path
        self.keys: dict[tuple[tuple[str, ...], str], int] = {}
        self._text: str | None = text  # until keys are indexed
        self._file: tuple[str, int] | None = None  # where to read the text again, its crc32
        self.deferred = False
        if '"""' in text or "'''" in text or self._ODD_BREAKS.search(text):
            self._complete()
            return
        if not headers:
            self.deferred = True
            return
        n, last = 1, 0
        for m in self._HEADERS.finditer(text):
            n += text.count("\n", last, m.start())
            last = m.start()
            current = _split_dotted(m.group(1))
            self.headers.setdefault(current, n)
            for i in range(1, len(current)):  # the whole path is in headers
                self.below.setdefault(current[:i], n)

    def shrink(self) -> None:
        """Forget the header index while the text is kept: the next lookup indexes the text
        again, whole (in practice only an error looks a line up once the tasks are made)."""
        if self._text is not None:
            self.headers.clear()
            self.below.clear()

    def keep_file(self, path: str, crc: int) -> None:
        """Forget the text (a big manifest's is megabytes, kept all build long for an error
        that rarely comes): the first lookup reads it again from ``path``, if it is still the
        same text; else lines are the tasks' table lines (TaskSpec.line)."""
        if self._text is not None:
            self._text, self._file = None, (path, crc)

    def _complete(self) -> None:
        """Index every line: keys and inline tables too (once)."""
        text, self._text = self._text, None
        if text is None and self._file is not None:
            text, self._file = _text_again(*self._file), None
        if text is None:
            return
        current: tuple[str, ...] = ()
        quote = ""  # the delimiter of the multi-line string we are in, if any
        for n, line in enumerate(text.splitlines(), 1):
            if quote:
                if quote in line:
                    quote = ""
                continue
            m = self._HEADER.match(line) if "[" in line else None
            if m:
                current = _split_dotted(m.group(1))
                self.headers.setdefault(current, n)
                for i in range(1, len(current) + 1):
                    self.below.setdefault(current[:i], n)
                continue
            km = self._KEY.match(line)
            if km:
                key = _unquote(km.group(1))
                self.keys.setdefault((current, key), n)
                # an inline table such as `name = { cmd = "..." }` stands for [current.name]
                self.headers.setdefault(current + (key,), n)
            quote = _opens_multiline(line)

    def find(self, table: tuple[str, ...] | None, key: str | None) -> int | None:
        if table is None:
            return None
        if key is not None or table not in self.headers:
            self._complete()
        if key is not None:
            line = self.keys.get((table, key))
            line = line or self.headers.get(table + (key,)) or self.below.get(table + (key,))
            if line:
                return line
        return self.headers.get(table) or self.below.get(table)


def _text_again(path: str, crc: int) -> str | None:
    """The manifest's text as it was parsed, or None if the file is gone or has changed."""
    try:
        data = read_regular(path)
    except OSError:
        return None
    if zlib.crc32(data) != crc:
        return None
    text = data.decode("utf-8", errors="replace")
    return text[1:] if text.startswith("\ufeff") else text


def _opens_multiline(line: str) -> str:
    """The delimiter of a multi-line string left open at the end of ``line``, or ''."""
    for delim in ('"""', "'''"):
        if line.count(delim) % 2 == 1:
            return delim
    return ""


def _split_dotted(s: str) -> tuple[str, ...]:
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|([^.\s]+)', s)
    return tuple(a or b or c for a, b, c in parts)


def _unquote(s: str) -> str:
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        return s[1:-1]
    return s
