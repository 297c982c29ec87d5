"""A manifest's ``[tasks.NAME]`` tables -> TaskSpecs: keys checked, matrices expanded, paths
normalised, function tasks' ``call`` checked.

    tables = TaskTables(pointer, root, variables, stall_warning, matrices, header_lines)
    specs = tables.task("cc", body)      # one TaskSpec, or one per matrix combination

Used by manifest.py, which checks what needs every task at once (unique names
and outputs, executors that exist) once all tables are made.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from . import placeholders, placement, pycode
from .checks import tname
from .lines import Pointer
from .manifest_keys import FUNCTION_KEYS, TASK_KEYS, check_keys, table_name
from .matrix import Matrices
from .paths import norm, outside
from .records import ExecutorSpec, TaskSpec
from .substitute import Substituter, substitute

# what targets give a meaning to ([ ] * ? = ,: matrix labels and globs), whitespace, controls
_TASK_NAME = re.compile(r"[^\[\]*?=,\s\x00-\x1f\x7f]+")


class TaskTables:
    """Makes the tasks of each ``[tasks.NAME]`` table; remembers the matrix groups and the
    executor groups that tasks' ``executor = [...]`` lists make."""

    def __init__(
        self,
        pointer: Pointer,
        root: str,
        variables: Mapping[str, str | list[str]],
        stall_warning: float,
        matrices: Matrices,
        header_lines: Mapping[str, int],
    ) -> None:
        self.pointer = pointer
        self.error = pointer.error
        self.root = root
        self.vars = variables
        self.stall_warning = stall_warning
        self.matrices = matrices
        self.header_lines = header_lines  # task table -> its header's line (split text)
        self.groups: list[str] = []  # every matrix group, also one with no task
        # groups made by a task's executor = [...]: name -> spec, and the first task naming it
        self.implicit: dict[str, ExecutorSpec] = {}
        self.implicit_by: dict[str, tuple[str, tuple[str, ...]]] = {}

    def task(self, name: str, body: Any) -> list[TaskSpec]:
        """The tasks of table ``name``: one, or one per combination of its matrix."""
        path = ("tasks", name)
        self.check_table(name, body, path)
        if "call" in body:
            body = {**body, **self.function(name, body["call"], path)}
        line = self.header_lines.get(name)
        if line is None:
            line = self.pointer.line(path)
        if "matrix" not in body:
            self.matrices.count += 1
            return [self.spec(name, body, {}, None, line)]
        if name not in self.groups:
            self.groups.append(name)
        clash = [v for v in body["matrix"] if v in self.vars]
        if clash:
            problem = f"matrix variable '{clash[0]}' has the name of a [vars] entry"
            raise self.error(problem, task=name, key="matrix", table=path)
        self.check_placeholders(name, body, path)
        combos = self.matrices.combinations(name, body)
        return [self.spec(n, body, values, name, line) for n, values in combos]

    def check_table(self, name: str, body: Any, path: tuple[str, ...]) -> None:
        """The table's own keys: known, well formed, and not at odds with each other."""
        if not isinstance(body, dict):
            raise self.error(
                f"must be a table such as {table_name(path)} with a 'cmd', not {tname(body)}",
                task=name, table=path,
            )
        if not _TASK_NAME.fullmatch(name):
            problem = "task names must not contain whitespace or [ ] * ? = , (targets use them)"
            raise self.error(problem, task=name, table=path)
        check_keys(self.pointer, body, TASK_KEYS, path, task=name)
        if "cmd" in body and "call" in body:
            problem = "a task has either 'cmd' (a shell command) or 'call' (a function), not both"
            raise self.error(problem, task=name, key="call", table=path)
        if "cmd" not in body and "call" not in body:
            self.check_aggregate(name, body, path)
        for key in FUNCTION_KEYS:
            if key in body and "call" not in body:
                problem = f"'{key}' is for Python function tasks (with 'call') only"
                raise self.error(problem, task=name, key=key, table=path)

    def check_placeholders(self, name: str, body: dict[str, Any], path: tuple[str, ...]) -> None:
        """A misspelt part of a matrix variable (``{f.stme}``) is an error, not text."""
        misspelt = placeholders.check(body, body["matrix"])
        if misspelt is not None:
            raise self.error(misspelt.message, task=name, key=misspelt.key, table=path,
                             hint=misspelt.hint)

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
        try:
            if callable(call):
                target, code_file = pycode.target_of(call)
            else:
                target, code_file = call, pycode.check_target(call, self.root)
        except ValueError as exc:
            raise self.error(str(exc), task=name, key="call", table=path) from None
        if code_file.startswith(self.root + os.sep):
            code_file = os.path.relpath(code_file, self.root)
        return {"cmd": f"call {target}", "call": target, "code_file": code_file}

    # -- one task

    def spec(self, name: str, body: dict[str, Any], values: dict[str, str], group: str | None,
             line: int | None) -> TaskSpec:
        """One task of table ``body``; ``values``: its matrix values, ``group``: its matrix."""
        sub = self.substituter(body, values)
        path = ("tasks", group or name)
        cwd = self.cwd(sub, body, name, path)
        spec = TaskSpec(
            name=name,
            cmd=sub(body.get("cmd", ""), quote=True),
            inputs=self.paths(sub, body, "inputs", cwd, name, path),
            outputs=self.paths(sub, body, "outputs", cwd, name, path),
            deps=tuple(dict.fromkeys(d for e in body.get("deps", ()) for d in sub.items(e))),
            display=sub(body.get("display", "")),
            env=tuple(sorted((k, sub(v)) for k, v in body.get("env", {}).items())),
            cwd=cwd,
            group=group,
            line=line,
            depfile=norm(sub(body["depfile"]), cwd, self.root) if "depfile" in body else "",
            desc=sub(body.get("desc", "")),
            **self.how(body, name, path),
        )
        if "call" in body:
            exact = self.matrices.typed_args(group, body, values)
            spec = spec._replace(**self.function_fields(spec, body, sub, path, exact))
        return spec

    def substituter(self, body: dict[str, Any], values: dict[str, str]) -> Substituter:
        """Replaces the task's matrix ``values`` and the [vars] entries in its strings."""
        matrix = body.get("matrix", {})
        found = [v for v in values if isinstance(matrix.get(v), dict) and "glob" in matrix[v]]
        return Substituter(values, self.vars, found)

    def cwd(self, sub: Substituter, body: dict[str, Any], name: str,
            path: tuple[str, ...]) -> str:
        """The task's ``cwd``, relative to the root; a folder outside it is an error."""
        cwd = norm(sub(body.get("cwd", ".")), ".", self.root)
        if outside(cwd):
            raise self.error(
                f"cwd '{cwd}' is outside the manifest's folder; it must be a folder inside it",
                task=name, key="cwd", table=path,
            )
        return cwd

    def how(self, body: dict[str, Any], name: str, path: tuple[str, ...]) -> dict[str, Any]:
        """The fields that say how and where the task runs (not what it runs)."""
        return {
            "threads": body.get("threads", 1),
            "numa_node": body.get("numa_node"),
            "timeout": float(body["timeout"]) if "timeout" in body else None,
            "retries": body.get("retries", 0),
            "always": body.get("always", False),
            "executor": self.executor_name(body.get("executor", "local"), name, path),
            "key_env": tuple(body.get("key_env", ())),
            "resources": tuple(sorted(body.get("resources", {}).items())),
            "restat": body.get("restat", False),
            "stall_warning": float(body.get("stall_warning", self.stall_warning)),
            "slurm": placement.slurm_pairs(body["slurm"]) if "slurm" in body else (),
            "cache": body.get("cache", True),
        }

    def executor_name(self, value: str | list[str], task: str, table: tuple[str, ...]) -> str:
        """A task's executor: a name, or the group its list makes (placement.py)."""
        if isinstance(value, str):
            return value
        group = placement.implicit_name(value)
        if len(value) > 1 and group not in self.implicit:
            self.implicit[group] = ExecutorSpec(group, placement.GROUP, {"members": value})
            self.implicit_by[group] = (task, table)
        return group

    def function_fields(
        self,
        spec: TaskSpec,
        body: dict[str, Any],
        sub: Substituter,
        path: tuple[str, ...],
        exact: dict[str, Any],
    ) -> dict[str, Any]:
        """A function task's fields; its module's source becomes one of its inputs."""
        args = [substitute(a, sub, exact) for a in body.get("args", ())]
        kwargs = {k: substitute(v, sub, exact) for k, v in body.get("kwargs", {}).items()}
        try:
            blob = pycode.pack_args(args, kwargs)
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
        sub: Substituter,
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
                out[("!" if negated else "") + norm(p, cwd, self.root)] = None
        return tuple(out)
