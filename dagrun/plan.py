"""Graph + keys + completion log + files -> Plan: what runs and why.  Pure.

A task is up to date only when its key equals the key of its latest run in
the log, that run succeeded (no attempt started since: completion_log.py), and
each declared output still has the identity (size, ctime_ns, inode, kind) the
run left; an older key in the log does not count.  ``always`` tasks never are
up to date.  ``explain`` compares the new key's parts with the parts of the
task's last successful run and names what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .graph import BuildGraph
from .hashing import MISSING, KeyParts
from .records import TaskSpec

Identity = tuple[int, int, int, int]  # an output's size, ctime_ns, inode, kind (completion_log)


class LogView(Protocol):
    def success(self, task: str) -> tuple[str, Sequence[Identity]] | None: ...

    def unfinished(self, task: str) -> bool: ...

    def latest(self, task: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True, slots=True)
class Plan:
    selected: tuple[int, ...]  # every task the targets need, topological
    to_run: tuple[int, ...]  # topological
    up_to_date: tuple[int, ...]
    reasons: Mapping[int, tuple[str, ...]]

    def __bool__(self) -> bool:
        return bool(self.to_run)


def make(
    graph: BuildGraph,
    keys: list[str | None],
    log: LogView,
    identity: Callable[[str], Identity | None],
    selected: list[int],
    *,
    parts: Callable[[int], KeyParts] | None = None,
    always_run: bool = False,
    upstream_changed: Callable[[int], str | None] | None = None,
    forced: Collection[int] = (),
) -> Plan:
    """Decide each selected task.  With ``parts`` the reasons say exactly what changed.

    ``identity`` gives an output's identity now, None when it does not exist;
    ``upstream_changed`` why a task whose key and outputs are as recorded must run all
    the same (a dependency made something else since: ledger.py), asked only when none
    of its dependencies runs in this plan (those decide when they have run: cutoff.py);
    ``forced`` tasks run even when up to date (``build --force``).
    """
    to_run: list[int] = []
    fresh: list[int] = []
    reasons: dict[int, tuple[str, ...]] = {}
    specs = graph.specs
    running: set[int] = set()
    for i in selected:
        spec = specs[i]
        if spec.always or always_run:
            why = ["always = true" if spec.always else "forced"]
        elif i in forced:
            why = ["forced (--force)"]
        else:
            why = _stale(spec, keys[i], log, identity, parts, i)
            if not why and upstream_changed is not None and running.isdisjoint(graph.deps[i]):
                changed = upstream_changed(i)
                why = [changed] if changed else []
        if why:
            running.add(i)
            to_run.append(i)
            reasons[i] = tuple(why)
        else:
            fresh.append(i)
    return Plan(tuple(selected), tuple(to_run), tuple(fresh), reasons)


def _stale(
    spec: TaskSpec,
    key: str | None,
    log: LogView,
    identity: Callable[[str], Identity | None],
    parts: Callable[[int], KeyParts] | None,
    i: int,
) -> list[str]:
    """Why task ``i`` must run; [] when its latest run succeeded with this key and left its
    outputs as they are."""
    done = log.success(spec.name)
    if key is not None and done is not None and done[0] == key:
        if log.unfinished(spec.name):
            return ["its last run did not succeed"]
        return output_changes(spec, done[1], identity)
    if done is None and log.unfinished(spec.name):
        return ["its last run did not succeed"]
    if parts is None:
        return ["key changed"]
    return explain(spec.name, parts(i), log.latest(spec.name))


def output_changes(
    spec: TaskSpec, recorded: Sequence[Identity], identity: Callable[[str], Identity | None]
) -> list[str]:
    """Sentences naming each declared output that is not what the last run left."""
    if len(recorded) != len(spec.outputs):
        return ["declared outputs changed"]
    why = []
    for out, was in zip(spec.outputs, recorded, strict=True):
        now = identity(out)
        if now is None:
            why.append(f"output {out} is missing")
        elif now != tuple(was):
            why.append(f"output {out} changed since it was built")
    return why


def explain(task: str, new: KeyParts, record: dict[str, Any] | None) -> list[str]:
    """Sentences naming each part of ``new`` that differs from the last successful run."""
    if record is None or "parts" not in record:
        return ["never ran"]
    old = record["parts"]
    why: list[str] = []
    if old.get("cmd") != new.cmd:
        why.append("command changed")
    if old.get("code", "") != new.code:
        why.append(f"code of {new.cmd.removeprefix('call ')} changed")
    if old.get("args", "") != new.args:
        why.append("args changed")
    if old.get("cwd") != new.cwd:
        why.append(f"cwd changed ({old.get('cwd')} -> {new.cwd})")
    why += _dict_changes("env", old.get("env", {}), dict(new.env))
    why += _dict_changes("key_env", old.get("key_env", {}), dict(new.key_env))
    if list(old.get("outputs", [])) != list(new.outputs):
        why.append("declared outputs changed")
    why += _dict_changes("input", old.get("inputs", {}), dict(new.inputs), files=True)
    found = _dict_changes("input", old.get("found", {}), dict(new.found), files=True)
    gone = {f"input {p} changed" for p, d in new.found if d == MISSING}
    why += [f"{w.replace('changed', 'deleted') if w in gone else w} (from depfile)" for w in found]
    why += _dict_changes("dependency", old.get("upstream", {}), dict(new.upstream), files=True)
    return why or ["key changed"]


def _dict_changes(
    what: str, old: Mapping[str, Any], new: Mapping[str, Any], *, files: bool = False
) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        if k not in old:
            out.append(f"{what} {k} added" if files else f"{what} {k} set")
        elif k not in new:
            out.append(f"{what} {k} removed" if files else f"{what} {k} unset")
        elif old[k] != new[k]:
            out.append(f"{what} {k} changed")
    return out
