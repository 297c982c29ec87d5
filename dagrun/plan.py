"""Graph + keys + completion log + files -> Plan: what runs and why.  Pure.

A task is up to date when its key is in the log and every declared output
exists; ``always`` tasks never are.  ``explain`` compares the new key's parts
with the parts of the task's last successful run and names what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .graph import BuildGraph
from .hashing import MISSING, KeyParts


class LogView(Protocol):
    def has(self, key: str) -> bool: ...

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
    exists: Callable[[str], bool],
    selected: list[int],
    *,
    parts: Callable[[int], KeyParts] | None = None,
    always_run: bool = False,
) -> Plan:
    """Decide each selected task.  With ``parts`` the reasons say exactly what changed."""
    to_run: list[int] = []
    fresh: list[int] = []
    reasons: dict[int, tuple[str, ...]] = {}
    specs = graph.specs
    for i in selected:
        spec = specs[i]
        key = keys[i]
        why: list[str] = []
        if spec.always or always_run:
            why.append("always = true" if spec.always else "forced")
        elif key is None or not log.has(key):
            if parts is None:
                why.append("key changed")
            else:
                why.extend(explain(spec.name, parts(i), log.latest(spec.name)))
        else:
            for out in spec.outputs:
                if not exists(out):
                    why.append(f"output {out} is missing")
        if why:
            to_run.append(i)
            reasons[i] = tuple(why)
        else:
            fresh.append(i)
    return Plan(tuple(selected), tuple(to_run), tuple(fresh), reasons)


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
