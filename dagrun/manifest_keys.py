"""The keys a manifest may have, outside ``[executors]``: each table's keys and their checks.

``[executors.NAME]`` tables are declared by type in executor_options.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import placement
from .checks import (
    Check,
    any_table,
    boolean,
    count_table,
    did_you_mean,
    env_table,
    integer,
    is_int,
    nonempty_str,
    number_positive,
    seconds_or_zero,
    str_list,
    string,
    tname,
)

if TYPE_CHECKING:
    from .lines import Pointer


def _call(v: Any) -> str | None:
    """A "package.module:function" string, or (from the API) a function."""
    return None if callable(v) else nonempty_str(v)


def _args(v: Any) -> str | None:
    return None if isinstance(v, (list, tuple)) else f"must be an array, not {tname(v)}"


_MATRIX_KINDS = 'a list, { glob = "pattern" } or { range = [start, stop, step] }'
RESERVED = ("inputs", "outputs")  # {inputs} and {outputs} in cmd: the task's own files


def vars_problem(v: Any) -> str | None:
    """``[vars]``: NAME = "text" or NAME = ["item", ...]."""
    for name, value in v.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            return f"variable name '{name}' must be an identifier"
        if name in RESERVED:
            return f"'{name}' is reserved: {{{name}}} names the task's own {name}"
        problem = string(value) if isinstance(value, str) else str_list(value)
        if problem and not isinstance(value, str):
            problem = "must be a string or a list of strings" + (
                "" if isinstance(value, list) else f", not {tname(value)}"
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
            elif "exclude" in values and str_list(values["exclude"]):
                return f"variable '{var}': exclude {str_list(values['exclude'])}"
        elif isinstance(values, list):
            if not values:
                return f"variable '{var}' has no values"
            for x in values:
                if not isinstance(x, (str, int, float, bool)):
                    return f"variable '{var}' has a value of type {tname(x)}"
        else:
            return f"variable '{var}' must be {_MATRIX_KINDS}, not {tname(values)}"
    return None


def _range(v: Any) -> str | None:
    """``[start, stop]`` or ``[start, stop, step]``: whole numbers, as Python's range()."""
    if not isinstance(v, list) or not 2 <= len(v) <= 3 or not all(is_int(x) for x in v):
        return f"must be [start, stop] or [start, stop, step] (whole numbers), not {v!r}"
    if len(v) == 3 and v[2] == 0:
        return "step must not be 0"
    if not range(*v):
        return f"{v!r} has no values (stop is exclusive, as in Python)"
    if range(*v)[1_000_000:]:  # not len(): past 2**63 values it raises OverflowError
        return f"{v!r} has more than 1,000,000 values"
    return None


DAGRUN_KEYS: dict[str, Check] = {
    "jobs": integer(1),
    "failures_allowed": integer(0),
    "default": str_list,
    "key_env": str_list,
    "resources": count_table,
    "watch_debounce_ms": integer(0),
    "stall_warning": seconds_or_zero,
    "server": lambda v: None if v == "auto" or v is False else 'must be "auto" or false',
    "server_idle": number_positive,  # both read by the build server (server.py), not a Manifest
}

TASK_KEYS: dict[str, Check] = {
    "cmd": nonempty_str,
    "inputs": str_list,
    "outputs": str_list,
    "deps": str_list,
    "display": string,
    "desc": string,
    "env": env_table,
    "cwd": nonempty_str,
    "threads": integer(1),
    "numa_node": integer(0),
    "timeout": number_positive,
    "retries": integer(0, 100),  # scheduler.MAX_RETRIES
    "always": boolean,
    "executor": placement.executor_ref,
    "key_env": str_list,
    "resources": count_table,
    "matrix": _matrix,
    "depfile": nonempty_str,
    "restat": boolean,
    "stall_warning": seconds_or_zero,
    "call": _call,
    "args": _args,
    "kwargs": any_table,
    "io_bound": boolean,
    "slurm": placement.slurm_table,
    "cache": boolean,
}
FUNCTION_KEYS = ("args", "kwargs", "io_bound")  # meaningful with call only

TOP_KEYS = ("dagrun", "env", "vars", "tasks", "executors", "cache")


def _cache_url(v: Any) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, not {tname(v)}"
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
    "read": boolean,
    "write": boolean,
    "token_env": nonempty_str,
    "connect_timeout": number_positive,
    "read_timeout": number_positive,
}


def check_keys(
    pointer: Pointer,
    table: Mapping[str, Any],
    allowed: Mapping[str, Check],
    path: tuple[str, ...],
    task: str | None = None,
) -> None:
    """Every key of ``table`` is one of ``allowed`` and passes its check; else ManifestError."""
    for key, value in table.items():
        check = allowed.get(key)
        if check is None:
            import difflib

            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = did_you_mean(close) or "known keys: " + ", ".join(allowed)
            where = table_name(path)
            raise pointer.error(
                f"unknown key in {where}", task=task, key=key, table=path, hint=hint
            )
        problem = check(value)
        if problem:
            raise pointer.error(problem, task=task, key=key, table=path)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def table_name(path: tuple[str, ...]) -> str:
    """``("tasks", "a.b")`` -> ``[tasks."a.b"]``, as the user would write the header."""
    return "[" + ".".join(p if _BARE_KEY.fullmatch(p) else '"' + p + '"' for p in path) + "]"
