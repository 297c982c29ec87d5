"""dagrun.toml text -> Manifest: validated, matrix-expanded, paths normalised.

Everything a user can get wrong in the manifest is found here and raised as a
ManifestError naming the file, the task, the key and the line.  Paths in a
TaskSpec are relative to the manifest's folder (or absolute); a task's
``inputs`` and ``outputs`` are written relative to its ``cwd``.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import globs
from .errors import ManifestError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MANIFEST_NAME = "dagrun.toml"


class TaskSpec(NamedTuple):
    """One task after matrix expansion.  A NamedTuple: immutable, and cheap to rebuild from cache."""

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
    # folders read by matrix globs -> mtime_ns, so a cached expansion can be checked
    scanned: Mapping[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------- validation helpers

Check = Callable[[Any], "str | None"]  # returns an error message or None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(minimum: int) -> Check:
    def check(v: Any) -> str | None:
        if not _is_int(v):
            return f"must be an integer, not {_tname(v)}"
        if v < minimum:
            return f"must be at least {minimum}, not {v}"
        return None

    return check


def _number_positive(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"must be a number of seconds, not {_tname(v)}"
    if v <= 0:
        return f"must be positive, not {v}"
    return None


def _str(v: Any) -> str | None:
    return None if isinstance(v, str) else f"must be a string, not {_tname(v)}"


def _nonempty_str(v: Any) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, not {_tname(v)}"
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
    return None


def _str_table(v: Any) -> str | None:
    if not isinstance(v, dict):
        return f"must be a table of strings, not {_tname(v)}"
    for k, item in v.items():
        if not isinstance(item, str):
            return f"value of '{k}' must be a string, not {_tname(item)}"
    return None


def _count_table(v: Any) -> str | None:
    if not isinstance(v, dict):
        return f"must be a table of counts, not {_tname(v)}"
    for k, item in v.items():
        if not _is_int(item) or item < 0:
            return f"value of '{k}' must be a non-negative integer, not {item!r}"
    return None


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


def _matrix(v: Any) -> str | None:
    if not isinstance(v, dict) or not v:
        return "must be a non-empty table of variable = [values] or { glob = \"...\" }"
    for var, values in v.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
            return f"variable name '{var}' must be an identifier"
        if isinstance(values, dict):
            if set(values) != {"glob"} or not isinstance(values["glob"], str):
                return f"variable '{var}' must be a list or {{ glob = \"pattern\" }}"
        elif isinstance(values, list):
            if not values:
                return f"variable '{var}' has no values"
            for x in values:
                if not isinstance(x, (str, int, float, bool)):
                    return f"variable '{var}' has a value of type {_tname(x)}"
        else:
            return f"variable '{var}' must be a list or {{ glob = \"pattern\" }}, not {_tname(values)}"
    return None


def _tname(v: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)


DAGRUN_KEYS: dict[str, Check] = {
    "jobs": _int(1),
    "failures_allowed": _int(0),
    "default": _str_list,
    "key_env": _str_list,
    "resources": _count_table,
    "watch_debounce_ms": _int(0),
}

TASK_KEYS: dict[str, Check] = {
    "cmd": _nonempty_str,
    "inputs": _str_list,
    "outputs": _str_list,
    "deps": _str_list,
    "display": _str,
    "env": _str_table,
    "cwd": _nonempty_str,
    "threads": _int(1),
    "numa_node": _int(0),
    "timeout": _number_positive,
    "retries": _int(0),
    "always": _bool,
    "executor": _nonempty_str,
    "key_env": _str_list,
    "resources": _count_table,
    "matrix": _matrix,
}

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
        "max_sessions": _int(1),
    },
    "http": {
        "type": _str,
        "provisioner": _str,
        "bind": _str,
        "max_jobs": _int(1),
        "lease_timeout": _number_positive,
    },
    "dask": {
        "type": _str,
        "scheduler": _str,
        "cluster": _str,
        "options": _any_table,
        "max_jobs": _int(1),
    },
}

TOP_KEYS = ("dagrun", "env", "tasks", "executors")


# ---------------------------------------------------------------- entry points


def load(path: str | os.PathLike[str]) -> Manifest:
    """Read and parse a manifest file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ManifestError("no such manifest file", source=path) from None
    except OSError as exc:
        raise ManifestError(f"cannot read manifest: {exc.strerror}", source=path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=path) from None
    return parse(text, source=path, root=os.path.dirname(os.path.abspath(path)))


def parse(text: str, *, source: str = MANIFEST_NAME, root: str | None = None) -> Manifest:
    """Parse manifest text.  ``root`` is the folder paths are relative to (default: cwd)."""
    root = os.path.abspath(root if root is not None else os.getcwd())
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        line = int(m.group(1)) if m else None
        short = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
        if m:
            short += f" (column {m.group(2)})"
        raise ManifestError(f"invalid TOML: {short}", source=source, line=line) from None
    return _Builder(text, source, root).build(doc)


def build_manifest(
    source: str,
    root: str,
    settings: Mapping[str, Any],
    env: Mapping[str, str],
    tasks: Mapping[str, Mapping[str, Any]],
    executors: Mapping[str, Mapping[str, Any]] | None = None,
) -> Manifest:
    """Validate tables given as Python values (the API's path; same checks as a file)."""
    doc: dict[str, Any] = {"dagrun": dict(settings), "env": dict(env), "tasks": dict(tasks)}
    if executors:
        doc["executors"] = dict(executors)
    return _Builder("", source, os.path.abspath(root)).build(doc)


# ---------------------------------------------------------------- the builder


class _Builder:
    def __init__(self, text: str, source: str, root: str) -> None:
        self.text = text
        self.source = source
        self.root = root
        self._lines: _LineIndex | None = None
        self.scanned: dict[str, int] = {}

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
        if self._lines is None:
            self._lines = _LineIndex(self.text)
        line = self._lines.find(table, key) if table is not None else None
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
                close = difflib.get_close_matches(key, list(allowed), n=1)
                hint = f"did you mean '{close[0]}'?" if close else "known keys: " + ", ".join(allowed)
                where = "[" + ".".join(path) + "]"
                raise self.error(f"unknown key in {where}", task=task, key=key, table=path, hint=hint)
            problem = check(value)
            if problem:
                raise self.error(problem, task=task, key=key, table=path)

    # -- the document

    def build(self, doc: dict[str, Any]) -> Manifest:
        for key in doc:
            if key not in TOP_KEYS:
                close = difflib.get_close_matches(key, TOP_KEYS, n=1)
                raise self.error(
                    "unknown top-level table",
                    key=key,
                    table=(),
                    hint=f"did you mean '{close[0]}'?" if close else "known: " + ", ".join(TOP_KEYS),
                )
        settings = self.table(doc, "dagrun")
        self.check_keys(settings, DAGRUN_KEYS, ("dagrun",))
        env = self.table(doc, "env")
        problem = _str_table(env)
        if problem:
            raise self.error(problem, key="env", table=("env",))
        executors = self.executors(self.table(doc, "executors"))
        tasks_doc = self.table(doc, "tasks")
        tasks: list[TaskSpec] = []
        for name, body in tasks_doc.items():
            tasks.extend(self.task(name, body))
        self.check_unique(tasks, executors)
        return Manifest(
            source=self.source,
            root=self.root,
            tasks=tuple(tasks),
            jobs=settings.get("jobs"),
            failures_allowed=settings.get("failures_allowed", 1),
            default=tuple(settings.get("default", ())),
            env=tuple(sorted(env.items())),
            key_env=tuple(settings.get("key_env", ())),
            resources=tuple(sorted(settings.get("resources", {}).items())),
            executors=executors,
            watch_debounce_ms=settings.get("watch_debounce_ms", 200),
            scanned=self.scanned,
        )

    def table(self, doc: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            raise self.error(f"must be a table, not {_tname(value)}", key=key, table=())
        return value

    def executors(self, doc: dict[str, Any]) -> dict[str, ExecutorSpec]:
        out = {"local": ExecutorSpec("local", "local", {})}
        for name, body in doc.items():
            path = ("executors", name)
            if not isinstance(body, dict):
                raise self.error(f"must be a table, not {_tname(body)}", key=name, table=("executors",))
            kind = body.get("type", "local" if name == "local" else None)
            if kind is None:
                raise self.error(
                    "executor has no 'type'", key=name, table=path, hint="one of: local, ssh, http, dask"
                )
            if kind not in EXECUTOR_KEYS:
                raise self.error(
                    f"unknown executor type '{kind}'", key="type", table=path,
                    hint="one of: " + ", ".join(EXECUTOR_KEYS),
                )
            if name == "local" and kind != "local":
                raise self.error("the executor named 'local' must have type 'local'", key="type", table=path)
            self.check_keys(body, EXECUTOR_KEYS[kind], path)
            if kind == "ssh" and "host" not in body:
                raise self.error("ssh executor needs 'host'", key=name, table=path)
            out[name] = ExecutorSpec(name, kind, dict(body))
        return out

    def task(self, name: str, body: Any) -> list[TaskSpec]:
        path = ("tasks", name)
        if not isinstance(body, dict):
            raise self.error(f"must be a table, not {_tname(body)}", task=name, table=("tasks",), key=name)
        if not re.fullmatch(r"[A-Za-z0-9_.+-][A-Za-z0-9_.+@:-]*", name):
            raise self.error(
                "task names may use letters, digits and _ . + - @ : only",
                task=name, table=path,
            )
        self.check_keys(body, TASK_KEYS, path, task=name)
        if "cmd" not in body:
            raise self.error("task has no 'cmd'", task=name, table=path)
        line = self._line_of(path)
        matrix = body.get("matrix")
        if matrix is None:
            return [self.spec(name, body, {}, None, line)]
        return [self.spec(n, body, values, name, line) for n, values in self.combinations(name, body)]

    def _line_of(self, path: tuple[str, ...]) -> int | None:
        if not self.text:
            return None
        if self._lines is None:
            self._lines = _LineIndex(self.text)
        return self._lines.find(path, None)

    def combinations(self, name: str, body: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
        cwd = body.get("cwd", ".")
        axes: list[list[tuple[str, str]]] = []
        for var, values in body["matrix"].items():
            if isinstance(values, dict):
                base = os.path.join(self.root, cwd)
                found = globs.expand(values["glob"], base, self.scanned)
                axes.append([(var, p) for p in found])
            else:
                axes.append([(var, _scalar(v)) for v in values])
        out = []
        for combo in itertools.product(*axes):
            label = ",".join(f"{k}={v}" for k, v in combo)
            out.append((f"{name}[{label}]", dict(combo)))
        return out

    def spec(
        self, name: str, body: dict[str, Any], values: dict[str, str], group: str | None, line: int | None
    ) -> TaskSpec:
        sub = _Substituter(values)
        path = ("tasks", group or name)
        cwd = _norm(sub(body.get("cwd", ".")), ".")
        if cwd.startswith("/") or cwd.startswith(".."):
            raise self.error("cwd must be a folder inside the manifest's folder", task=name, key="cwd", table=path)
        env = tuple(sorted((k, sub(v)) for k, v in body.get("env", {}).items()))
        threads = body.get("threads", 1)
        return TaskSpec(
            name=name,
            cmd=sub(body["cmd"]),
            inputs=tuple(dict.fromkeys(_norm(sub(p), cwd) for p in body.get("inputs", ()))),
            outputs=tuple(dict.fromkeys(_norm(sub(p), cwd) for p in body.get("outputs", ()))),
            deps=tuple(dict.fromkeys(sub(d) for d in body.get("deps", ()))),
            display=sub(body.get("display", "")),
            env=env,
            cwd=cwd,
            threads=threads,
            numa_node=body.get("numa_node"),
            timeout=float(body["timeout"]) if "timeout" in body else None,
            retries=body.get("retries", 0),
            always=body.get("always", False),
            executor=body.get("executor", "local"),
            key_env=tuple(body.get("key_env", ())),
            resources=tuple(sorted(body.get("resources", {}).items())),
            group=group,
            line=line,
        )

    def check_unique(self, tasks: list[TaskSpec], executors: Mapping[str, ExecutorSpec]) -> None:
        names: set[str] = set()
        producers: dict[str, str] = {}
        groups = {t.group for t in tasks if t.group}
        for t in tasks:
            table = ("tasks", t.group or t.name)
            if t.name in names:
                raise self.error("two tasks have this name", task=t.name, table=table)
            names.add(t.name)
            if t.executor not in executors:
                known = ", ".join(sorted(executors))
                raise self.error(
                    f"unknown executor '{t.executor}'", task=t.name, key="executor", table=table,
                    hint=f"defined: {known}",
                )
            for out in t.outputs:
                if globs.has_magic(out):
                    raise self.error(
                        f"output '{out}' is a glob; outputs must be exact paths",
                        task=t.name, key="outputs", table=table,
                    )
                other = producers.get(out)
                if other is not None:
                    raise self.error(
                        f"output '{out}' is also declared by task '{other}'",
                        task=t.name, key="outputs", table=table,
                    )
                producers[out] = t.name
        clash = names & groups
        if clash:
            n = sorted(clash)[0]
            raise self.error("a task and a matrix group share this name", task=n, table=("tasks", n))


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _norm(path: str, cwd: str) -> str:
    """Normalise ``path`` written relative to ``cwd`` into a path relative to the root."""
    if path.startswith("/"):
        return os.path.normpath(path)
    joined = os.path.normpath(os.path.join(cwd, path))
    return joined


class _Substituter:
    """Replaces {var} and {var.stem|name|parent|suffix} for matrix variables only."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        if values:
            names = "|".join(re.escape(k) for k in sorted(values, key=len, reverse=True))
            self.pattern: re.Pattern[str] | None = re.compile(
                r"(?<!\$)\{(" + names + r")(?:\.(stem|name|parent|suffix))?\}"
            )
        else:
            self.pattern = None

    def __call__(self, text: str) -> str:
        if self.pattern is None or "{" not in text:
            return text
        return self.pattern.sub(self._replace, text)

    def _replace(self, m: re.Match[str]) -> str:
        value = self.values[m.group(1)]
        part = m.group(2)
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

    One pass over the text on first use; every later lookup is a dict access.
    """

    _HEADER = re.compile(r"^\s*\[(?!\[)(.+?)\]\s*(?:#.*)?$")
    _KEY = re.compile(r'^\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*[.=]')

    def __init__(self, text: str) -> None:
        self.headers: dict[tuple[str, ...], int] = {}
        self.keys: dict[tuple[tuple[str, ...], str], int] = {}
        current: tuple[str, ...] = ()
        for n, line in enumerate(text.splitlines(), 1):
            if "[" in line:
                m = self._HEADER.match(line)
                if m:
                    current = _split_dotted(m.group(1))
                    self.headers.setdefault(current, n)
                    continue
            km = self._KEY.match(line)
            if km:
                key = _unquote(km.group(1))
                self.keys.setdefault((current, key), n)
                # an inline table such as `name = { cmd = "..." }` stands for [current.name]
                self.headers.setdefault(current + (key,), n)

    def find(self, table: tuple[str, ...] | None, key: str | None) -> int | None:
        if table is None:
            return None
        if key is not None and (table, key) in self.keys:
            return self.keys[(table, key)]
        return self.headers.get(table)


def _split_dotted(s: str) -> tuple[str, ...]:
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|([^.\s]+)', s)
    return tuple(a or b or c for a, b, c in parts)


def _unquote(s: str) -> str:
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        return s[1:-1]
    return s
