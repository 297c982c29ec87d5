"""Where a task may run, as the manifest says it: Slurm settings, executor groups, executor env.

The manifest's checks for these keys live here, so manifest.py only calls them:

- a task's ``slurm = { mem = "8G", ... }`` (sbatch settings over its executor's);
- ``[executors.NAME] type = "group"``, ``members = [...]``, and a task's
  ``executor = ["lab1", "lab2"]`` (a group without a name: ``lab1+lab2``);
- an executor's ``env``: added to the environment of the tasks that run on it.
  For a task that names the executor (or group) itself, it is part of the
  task's declared environment and so of its key; a group *member's* ``env``
  is added only when the task runs there and never enters the key (the key
  is known before a member is chosen; it describes the machine, not the task).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SLURM_TASK_KEYS = ("partition", "account", "qos", "mem", "sbatch_options")
SLURM_TYPES = ("slurm",)
GROUP = "group"


def slurm_table(v: Any) -> str | None:
    """A task's ``slurm = {...}``: sbatch settings for its job."""
    if not isinstance(v, dict):
        return f'must be a table such as {{ mem = "8G", partition = "big" }}, not {_kind(v)}'
    for key, value in v.items():
        if key not in SLURM_TASK_KEYS:
            import difflib

            close = difflib.get_close_matches(key, SLURM_TASK_KEYS, n=1)
            known = f"did you mean '{close[0]}'?" if close else "known: " + ", ".join(
                SLURM_TASK_KEYS)
            return f"has an unknown key '{key}' ({known})"
        problem = _sbatch_list(value) if key == "sbatch_options" else _sbatch_value(value)
        if problem:
            return f"'{key}' {problem}"
    return None


def slurm_pairs(v: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A checked ``slurm`` table as TaskSpec keeps it (sorted pairs; lists become tuples)."""
    return tuple(sorted((k, tuple(x) if isinstance(x, list) else x) for k, x in v.items()))


def _sbatch_value(v: Any) -> str | None:
    if isinstance(v, str) and v and "\n" not in v:
        return None
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return None
    return f"must be a string such as \"8G\" or a number, not {v!r}"


def _sbatch_list(v: Any) -> str | None:
    if isinstance(v, list) and all(isinstance(x, str) and x.startswith("-") for x in v):
        return None
    return f'must be a list of sbatch options such as ["--gres=gpu:1"], not {v!r}'


def executor_ref(v: Any) -> str | None:
    """A task's ``executor``: a name, or a non-empty list of names (a group)."""
    if isinstance(v, str):
        return None if v else "must not be empty"
    if isinstance(v, list) and v and all(isinstance(x, str) and x for x in v):
        return None if len(set(v)) == len(v) else "names an executor twice"
    return f'must be an executor name or a list of them such as ["lab1", "lab2"], not {v!r}'


def implicit_name(members: list[str]) -> str:
    """The name of the group a task's ``executor = [...]`` makes."""
    return members[0] if len(members) == 1 else "+".join(members)


def members_list(v: Any) -> str | None:
    """A group's ``members``."""
    if isinstance(v, list) and v and all(isinstance(x, str) and x for x in v):
        return None if len(set(v)) == len(v) else "names an executor twice"
    return f'must be a non-empty list of executor names such as ["lab1", "lab2"], not {v!r}'


def group_problem(name: str, members: list[str], types: Mapping[str, str]) -> str | None:
    """What is wrong with a group's members, or None (``types``: every executor's type)."""
    for member in members:
        kind = types.get(member)
        if kind is None:
            return f"group '{name}' has an unknown member '{member}'"
        if kind == GROUP:
            return f"group '{name}' has another group as a member ('{member}')"
    return None


def _kind(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "an array"}.get(type(v), type(v).__name__)
