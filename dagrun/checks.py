"""Checks of manifest values: each takes a value and returns what is wrong with it, or None.

    problem = integer(1)(value)     # "must be at least 1, not 0"

The key tables (manifest_keys.py, executor_options.py) map each key to its
check; the messages are the ones users read after "key 'NAME': ".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

MAX_SECONDS = 365 * 24 * 3600  # the longest timeout or grace period: a year

Check = Callable[[Any], "str | None"]  # returns an error message or None


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def integer(minimum: int, maximum: int | None = None) -> Check:
    def check(v: Any) -> str | None:
        if not is_int(v):
            return f"must be an integer, not {tname(v)}"
        if v < minimum:
            return f"must be at least {minimum}, not {v}"
        if maximum is not None and v > maximum:
            return f"must be at most {maximum}, not {v}"
        return None

    return check


def one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        if v not in choices:
            return "must be one of " + ", ".join(f'"{c}"' for c in choices) + f", not {v!r}"
        return None

    return check


def seconds_or_zero(v: Any) -> str | None:
    """A number of seconds, or 0 (off)."""
    return None if v == 0 and not isinstance(v, bool) else number_positive(v)


def number_positive(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"must be a number of seconds, not {tname(v)}"
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


def string(v: Any) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, not {tname(v)}"
    return "must not contain a NUL character" if "\0" in v else None


def nonempty_str(v: Any) -> str | None:
    problem = string(v)
    if problem:
        return problem
    return None if v.strip() else "must not be empty"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, not {tname(v)}"


def str_list(v: Any) -> str | None:
    if not isinstance(v, list):
        return f"must be a list of strings, not {tname(v)}"
    for item in v:
        if not isinstance(item, str):
            return f"must be a list of strings, but has {tname(item)} {item!r}"
        if not item:
            return "must not contain an empty string"
        if "\0" in item:
            return "must not contain a NUL character"
    return None


def env_table(v: Any) -> str | None:
    if not isinstance(v, dict):
        return f"must be a table of strings, not {tname(v)}"
    for k, item in v.items():
        problem = env_entry(k, item)
        if problem:
            return f"'{k}' {problem}"
    return None


def env_entry(name: str, value: Any) -> str | None:
    """What is wrong with one environment variable, or None."""
    if not name or "=" in name or "\0" in name:
        return "is not a valid variable name (it must be non-empty, without '=')"
    return string(value)


def count_table(v: Any) -> str | None:
    if not isinstance(v, dict):
        return f"must be a table of counts, not {tname(v)}"
    for k, item in v.items():
        if not is_int(item) or item < 0:
            return f"value of '{k}' must be a non-negative integer, not {item!r}"
    return None


def any_table(v: Any) -> str | None:
    return None if isinstance(v, dict) else f"must be a table, not {tname(v)}"


def tname(v: Any) -> str:
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


def near(word: str, target: str) -> bool:
    import difflib

    return bool(difflib.get_close_matches(word.lower(), [target], n=1, cutoff=0.6))


def did_you_mean(close: list[str]) -> str | None:
    return f"did you mean '{close[0]}'?" if close else None
