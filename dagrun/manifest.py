"""dagrun.toml text -> Manifest: validated, matrix-expanded, paths normalised.

Everything a user can get wrong in the manifest is found here and raised as a
ManifestError naming the file, the task, the key and the line.  Paths in a
TaskSpec are relative to the manifest's folder (or absolute); a task's
``inputs`` and ``outputs`` are written relative to its ``cwd``.

The parser, in steps, each in its own module: the TOML line index (lines.py),
the keys and their checks (manifest_keys.py, executor_options.py, checks.py),
the task tables (task_tables.py), matrix expansion (matrix.py), placeholders
(substitute.py), the path rules (paths.py).  What it makes, the records, are in
records.py: the core reads those and never needs this module.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from . import placement, tomlsplit
from .checks import did_you_mean, env_entry, tname
from .errors import ManifestError
from .executor_options import EXECUTOR_KEYS, FUNCTION_EXECUTORS, rule_problem
from .fs import read_regular
from .lines import LineIndex, Pointer, key_set_on
from .manifest_keys import (
    CACHE_KEYS,
    DAGRUN_KEYS,
    TASK_KEYS,
    TOP_KEYS,
    check_keys,
    table_name,
    vars_problem,
)
from .matrix import Matrices
from .paths import STATE_DIR, in_state_dir, inside_root, output_problem
from .records import STALL_WARNING, CacheSettings, ExecutorSpec, Manifest, TaskSpec
from .task_tables import TaskTables

__all__ = [  # the parser's own, and what callers and tests long took from here
    "CACHE_KEYS", "DAGRUN_KEYS", "EXECUTOR_KEYS", "MANIFEST_NAME", "STATE_DIR", "TASK_KEYS",
    "TOP_KEYS", "CacheSettings", "ExecutorSpec", "Manifest", "ManifestError", "TaskSpec",
    "build_manifest", "inside_root", "load", "output_problem", "parse", "read",
]

MANIFEST_NAME = "dagrun.toml"
_LineIndex = LineIndex  # its old name (tests)


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
        key = key_set_on(lines[line - 1]) if line <= len(lines) else None
        what = f"key '{key}' is set twice" if key else "a key is set twice"
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
        self.overrides = dict(overrides or {})
        self.source = source
        self.root = root
        self.lines = LineIndex(text, headers=headers) if text else None
        self.pointer = Pointer(source, self.lines)
        self.error = self.pointer.error
        self.header_lines: dict[str, int] = {}  # task table -> its header's line (split text)
        self.matrices = Matrices(root, self.pointer)
        self.vars: dict[str, str | list[str]] = {}

    # -- the document

    def build(
        self, doc: dict[str, Any], batches: Iterable[tomlsplit.Batch] | None = None
    ) -> Manifest:
        """The Manifest of ``doc``; its task tables, when ``batches`` is given, come from those
        (tomlsplit.split), each batch's tables dropped once made into tasks."""
        self.check_top(doc)
        settings = self.table(doc, "dagrun")
        check_keys(self.pointer, settings, DAGRUN_KEYS, ("dagrun",))
        env = self.env(self.table(doc, "env"))
        self.read_vars(doc)
        executors = self.executors(self.table(doc, "executors"))
        cache = self.cache(doc)
        stall_warning = float(settings.get("stall_warning", STALL_WARNING))
        tables = TaskTables(self.pointer, self.root, self.vars, stall_warning, self.matrices,
                            self.header_lines)
        tasks = self.tasks(tables, self.table(doc, "tasks"), batches)
        executors.update(tables.implicit)
        self.check_groups(executors, tables.implicit_by)
        self.check_unique(tasks, executors)
        tasks = self.with_executor_env(tasks, executors)
        if self.lines is not None:
            self.lines.shrink()
        return self.manifest(settings, env, tasks, executors, cache, tables.groups)

    def manifest(
        self, settings: Mapping[str, Any], env: tuple[tuple[str, str], ...],
        tasks: list[TaskSpec], executors: dict[str, ExecutorSpec], cache: CacheSettings | None,
        groups: list[str],
    ) -> Manifest:
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
            scanned=self.matrices.scanned,
            groups=tuple(groups),
            warnings=tuple(self.matrices.empty.values()),
            line_index=self.lines,
        )

    def check_top(self, doc: Mapping[str, Any]) -> None:
        for key in doc:
            if key not in TOP_KEYS:
                import difflib

                close = difflib.get_close_matches(key, TOP_KEYS, n=1)
                raise self.error(
                    "unknown top-level table",
                    key=key,
                    table=(),
                    hint=did_you_mean(close) or "known: " + ", ".join(TOP_KEYS),
                )

    def tasks(self, tables: TaskTables, bodies: dict[str, Any],
              batches: Iterable[tomlsplit.Batch] | None) -> list[TaskSpec]:
        """Every task table made into tasks (the bodies of ``batches`` when given, else of
        ``bodies``); then matrices over globs see the outputs the others declare."""
        per_task: dict[str, list[TaskSpec]] = {}
        globbed: dict[str, Any] = {}  # the bodies of matrices over globs, expanded again
        matrices = self.matrices
        for part, lines in [(bodies, {})] if batches is None else batches:
            if self.lines is not None and self.lines.deferred:
                self.header_lines.update(lines)  # exact: only \n breaks a line in this text
            for name in list(part):
                body = part.pop(name)  # each table is freed once made into tasks: a lower peak
                known = len(matrices.globbed)
                per_task[name] = tables.task(name, body)
                if len(matrices.globbed) > known:
                    globbed[name] = body
        if matrices.globbed:
            matrices.settle(globbed, per_task, tables.task)
        return [t for made in per_task.values() for t in made]

    def read_vars(self, doc: Mapping[str, Any]) -> None:
        """``[vars]``, checked, with the command line's values over the file's."""
        self.vars = self.table(doc, "vars")
        problem = vars_problem(self.vars)
        if problem:
            raise self.error(f"[vars] entry {problem}", key=problem.split("'")[1], table=("vars",))
        self.override_vars()

    def override_vars(self) -> None:
        """``NAME=value`` words of the command line replace [vars] values; a list variable
        takes the value split as a shell would split it."""
        for name, value in self.overrides.items():
            if name not in self.vars:
                import difflib

                close = difflib.get_close_matches(name, list(self.vars), n=1)
                known = ", ".join(self.vars) or "none"
                hint = did_you_mean(close) or f"[vars] has: {known}"
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
            problem = f"must be a table such as [{key}], not {tname(value)}"
            raise self.error(problem, key=key, table=())
        return value

    def env(self, table: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        for name, value in table.items():
            problem = env_entry(name, value)
            if problem:
                raise self.error(f"[env] entry {problem}", key=name, table=("env",))
        return tuple(sorted(table.items()))

    def cache(self, doc: dict[str, Any]) -> CacheSettings | None:
        """``[cache]``: None without one; a table without ``url`` is an error."""
        if "cache" not in doc:
            return None
        body = self.table(doc, "cache")
        check_keys(self.pointer, body, CACHE_KEYS, ("cache",))
        if "url" not in body:
            hint = 'url = "file:///mnt/cache" or "http://cache.internal:8080/dagrun"'
            raise self.error("[cache] has no 'url' (where the shared cache is)", table=("cache",),
                             hint=hint)
        timeouts = {k: float(body[k]) for k in ("connect_timeout", "read_timeout") if k in body}
        return CacheSettings(
            body["url"].rstrip("/"), body.get("read", True), body.get("write", True),
            body.get("token_env", ""), **timeouts,
        )

    # -- executors

    def executors(self, doc: dict[str, Any]) -> dict[str, ExecutorSpec]:
        out = {"local": ExecutorSpec("local", "local", {})}
        for name, body in doc.items():
            out[name] = self.executor(name, body)
        return out

    def executor(self, name: str, body: Any) -> ExecutorSpec:
        """An ``[executors.NAME]`` table, checked against its type's options (executor_options)."""
        path = ("executors", name)
        where = table_name(path)
        if not isinstance(body, dict):
            problem = f"must be a table such as {where}, not {tname(body)}"
            raise self.error(problem, key=name, table=path)
        kind = self.executor_type(name, body, path)
        check_keys(self.pointer, body, EXECUTOR_KEYS[kind], path)
        broken = rule_problem(kind, body, where)
        if broken is not None:
            message, key, hint = broken
            raise self.error(message, key=key, table=path, hint=hint)
        return ExecutorSpec(name, kind, dict(body))

    def executor_type(self, name: str, body: dict[str, Any], path: tuple[str, ...]) -> str:
        where = table_name(path)
        kinds = "one of: " + ", ".join(EXECUTOR_KEYS)
        kind = body.get("type", "local" if name == "local" else None)
        if kind is None:
            raise self.error(f"{where} has no 'type'", table=path, hint=kinds)
        if not isinstance(kind, str):
            problem = f"must be a string, not {tname(kind)}"
            raise self.error(problem, key="type", table=path, hint=kinds)
        if kind not in EXECUTOR_KEYS:
            raise self.error(
                f"unknown executor type {kind!r} in {where}", key="type", table=path, hint=kinds
            )
        if name == "local" and kind != "local":
            problem = "the executor named 'local' must have type 'local'"
            raise self.error(problem, key="type", table=path)
        return kind

    def check_groups(self, executors: dict[str, ExecutorSpec],
                     implicit_by: Mapping[str, tuple[str, tuple[str, ...]]]) -> None:
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
            if name in implicit_by:
                task, table = implicit_by[name]
                raise self.error(problem, task=task, key="executor", table=table, hint=hint)
            raise self.error(problem, key="members", table=("executors", name), hint=hint)

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

    # -- what needs every task

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
            if in_state_dir(p):
                problem = f"input '{p}' is in {STATE_DIR}/, dagrun's own state: never an input"
                raise self.error(problem, task=t.name, key="inputs", table=table)

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


def _executor_hint(name: str, executors: Mapping[str, ExecutorSpec]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(executors), n=1)
    defined = ", ".join(sorted(executors))
    return did_you_mean(close) or f"defined: {defined}; add an [executors.{name}] table"
