"""Depfiles and early cutoff: keys that learn from a task's run.  Pure but for reading files.

- A task's depfile lists the files it read; after it succeeds they become part of
  its key (``hashing.KeyParts.found``), kept in its success record in the log
  (the record's ``parts.found``), read back from there at the next build.
- A task with ``restat`` (or a depfile) is keyed by its outputs' digests in its
  dependents' keys (``hashing.Keys._upstream``).  When such a task will run, the
  keys of the tasks below it are not known before the build: they are *pending*.
  The plan shows them as "may run: depends on X"; the scheduler asks
  ``Cutoff.still_needed`` when one becomes ready, which computes its key from
  the outputs now on disk and answers False when its latest successful run had
  that key and left its outputs as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from . import depfile
from .errors import DepfileError
from .graph import BuildGraph
from .hashing import Keys, key_of
from .plan import Plan


class LatestRecords(Protocol):
    def latest(self, task: str) -> dict[str, Any] | None: ...


def found_in_log(
    graph: BuildGraph, log: LatestRecords, tasks: Iterable[int] | None = None
) -> dict[str, tuple[str, ...]]:
    """Task name -> the files its latest success's depfile listed (tasks with a depfile only,
    of ``tasks`` or of all)."""
    out: dict[str, tuple[str, ...]] = {}
    for i in graph.depfiles if tasks is None else tasks:
        spec = graph.specs[i]
        if not spec.depfile:
            continue
        record = log.latest(spec.name)
        parts = record.get("parts") if record else None
        found = parts.get("found") if isinstance(parts, dict) else None
        if isinstance(found, dict) and all(isinstance(p, str) for p in found):
            out[spec.name] = tuple(found)
    return out


def read_depfile(graph: BuildGraph, i: int) -> tuple[str, ...]:
    """The project files task ``i``'s depfile lists now; DepfileError naming it when it cannot."""
    spec = graph.specs[i]
    root = graph.root
    try:
        listed = depfile.read(f"{root}/{spec.depfile}")
    except DepfileError as exc:
        raise DepfileError(f"depfile {spec.depfile}: {exc}") from None
    declared = (*graph.sources[i], *spec.outputs, *spec.inputs)
    return depfile.discovered(listed, spec.cwd, root, declared)


def learn(keys: Keys, i: int) -> str | None:
    """After task ``i`` exited 0: take in its depfile; its new key, or None without a depfile.

    Raises DepfileError (with a message for the user) when the depfile is missing or
    malformed.  The key is computed over the files the depfile lists, as they are now,
    so that the next build, which computes it the same way, finds it in the log.
    """
    spec = keys.graph.specs[i]
    if not spec.depfile:
        return None
    found = read_depfile(keys.graph, i)
    keys.found[spec.name] = found
    key = key_of(keys.parts(i))
    keys.keys[i] = key
    return key


def pending(graph: BuildGraph, plan: Plan, by_outputs: list[bool]) -> dict[int, str]:
    """Tasks whose decision waits on a task the plan runs: task -> the name of that task.

    Below a task of ``plan.to_run`` that its dependents key by its outputs, every
    selected task waits: until that task has run, its outputs (and so the keys below)
    are not known.  Below any other task of ``plan.to_run``, the tasks the plan finds up
    to date wait: the task may make something else with the same key (a download, a
    timestamp), and then they run too (outputs.py: fingerprints).
    """
    out: dict[int, str] = {}
    dependents = graph.dependents
    if not any(dependents[i] for i in plan.to_run):  # no task below one that runs
        return out
    selected = set(plan.selected)
    fresh = set(plan.up_to_date)
    for i in plan.to_run:
        within = selected if by_outputs[i] else fresh
        stack = [j for j in dependents[i] if j in within]
        while stack:
            j = stack.pop()
            if j not in out:
                out[j] = graph.specs[i].name
                stack.extend(k for k in dependents[j] if k in within)
    return out


def with_pending(plan: Plan, waits: Mapping[int, str]) -> Plan:
    """``plan`` with the pending up-to-date tasks moved to ``to_run``: "may run: depends on X"."""
    moving = [i for i in plan.up_to_date if i in waits] if waits else []
    if not moving:
        return plan
    reasons = dict(plan.reasons)
    for i in moving:
        reasons[i] = (f"may run: depends on {waits[i]}",)
    run = set(plan.to_run) | set(moving)
    return dataclasses.replace(
        plan,
        to_run=tuple(i for i in plan.selected if i in run),
        up_to_date=tuple(i for i in plan.up_to_date if i not in waits),
        reasons=reasons,
    )


class Cutoff:
    """The scheduler's question when a pending task becomes ready: must it still run?"""

    def __init__(
        self,
        keys: Keys,
        waits: Mapping[int, str],
        done: Callable[[str, str], bool],
        intact: Callable[[int], bool],
        upstream_changed: Callable[[int], str | None] = lambda i: None,
    ) -> None:
        self.keys = keys
        self.waits = waits
        self.done = done  # (task, key) -> the task's latest record is a success with that key
        self.intact = intact  # task -> its outputs are what its latest successful run left
        # task -> why a dependency made something else since it ran (ledger.upstream_changed)
        self.upstream_changed = upstream_changed
        self.skipped: list[int] = []

    def still_needed(self, i: int) -> bool:
        """Key task ``i`` now; False when it is up to date after all (it does not run)."""
        if i not in self.waits:
            return True
        keys = self.keys
        key = keys.keys[i]
        waits, by_outputs = self.waits, keys.by_outputs
        if key is None or any(by_outputs[d] or d in waits for d in keys.graph.deps[i]):
            key = key_of(keys.parts(i))  # keyed by outputs now written, or by keys learnt
            keys.keys[i] = key
        spec = keys.graph.specs[i]
        if spec.always or not self.done(spec.name, key) or not self.intact(i):
            return True
        if self.upstream_changed(i) is not None:
            return True
        self.skipped.append(i)
        return False
