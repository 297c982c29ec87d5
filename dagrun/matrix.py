"""Matrix expansion: a task table with ``matrix = {...}`` becomes one task per combination.

    matrices = Matrices(root, pointer)
    combos = matrices.combinations("cc", body)   # [("cc[f=a.c]", {"f": "a.c"}), ...]

A variable's values are a list, a ``range``, or a ``glob`` over files on disk
*and* over outputs other tasks declare (so a matrix over ``build/*.o`` has a
task per object the same build makes: ``settle`` expands such matrices again
until nothing changes).  Every expansion counts its tasks, and a manifest past
MAX_TASKS is refused before its tasks are made.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from . import globs
from .substitute import scalar

if TYPE_CHECKING:
    from .lines import Pointer
    from .records import TaskSpec

MAX_TASKS = 1_000_000  # matrices are refused, before they are expanded, past this many tasks

Remake = Callable[[str, Any], "list[TaskSpec]"]  # a task table -> its tasks (made again)


class Matrices:
    """The matrix groups of one manifest, expanded; what their globs saw; how many tasks."""

    def __init__(self, root: str, pointer: Pointer) -> None:
        self.root = root
        self.pointer = pointer
        self.scanned: dict[str, int] = {}  # folders read by globs -> mtime_ns
        self.empty: dict[tuple[str, str], str] = {}  # (group, variable) -> warning: no file
        # declared outputs (relative to the root) -> (task, its matrix group): globs see them
        self.declared: dict[str, tuple[str, str | None]] = {}
        self.saw: dict[str, frozenset[str]] = {}  # matrix group -> declared outputs its globs saw
        self.globbed: list[str] = []  # matrix groups with a glob variable
        # matrix group -> variable -> {value as text: value as written} (numbers, booleans)
        self.typed: dict[str, dict[str, dict[str, Any]]] = {}
        self.count = 0  # tasks so far, to refuse a matrix of millions before making it

    # -- one matrix

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
                axes.append([(var, scalar(v)) for v in values])
        self.check_count(name, math.prod(len(a) for a in axes))
        out = []
        for combo in itertools.product(*axes):
            label = ",".join(f"{k}={v}" for k, v in combo)
            out.append((f"{name}[{label}]", dict(combo)))
        return out

    def check_count(self, name: str, count: int) -> None:
        """Refuse a matrix that would make more than MAX_TASKS tasks, before making them."""
        self.count += count
        if self.count > MAX_TASKS:
            problem = (
                f"the matrix makes {count:,} tasks; a manifest may have at most {MAX_TASKS:,}"
            )
            raise self.pointer.error(problem, task=name, key="matrix", table=("tasks", name))

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
                    typed[var] = {scalar(v): v for v in axis if not isinstance(v, str)}
        return {
            f"{{{var}}}": found[values[var]] for var, found in typed.items()
            if values[var] in found
        }

    # -- glob variables

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
            raise self.pointer.error(
                f"matrix glob {var} = '{pattern}' would match files inside {inside[0]}, which "
                "do not exist before that task runs: a matrix is expanded before the build",
                task=name, key="matrix", table=("tasks", name),
                hint="declare the files as that task's outputs, so the matrix sees them",
            )
        if not kept and not values.get("allow_empty", False):
            self.warn_empty(name, var, pattern)
        return kept

    def warn_empty(self, name: str, var: str, pattern: str) -> None:
        line = self.pointer.line(("tasks", name), "matrix")
        where = f"{self.pointer.source}:{line}" if line else self.pointer.source
        self.empty[(name, var)] = (
            f"{where}: task '{name}': matrix glob {var} = '{pattern}' matches no file, so the "
            "task has no instance (set allow_empty = true in its table if that is expected)"
        )

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

    # -- globs over other tasks' outputs

    def settle(
        self, bodies: Mapping[str, Any], per_task: dict[str, list[TaskSpec]], remake: Remake
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
                per_task[name] = remake(name, bodies[name])
                changed |= [t.name for t in per_task[name]] != before
            if not changed:
                return
        raise self.pointer.error(
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


def _excluded(path: str, rxs: list[re.Pattern[str]], patterns: list[str]) -> bool:
    """Whether a matrix glob's match is excluded: a pattern matches it, or (no '/') its name."""
    name = os.path.basename(path)
    for rx, pattern in zip(rxs, patterns, strict=True):
        if rx.match(path) or ("/" not in pattern and rx.match(name)):
            return True
    return False
