"""Finds misspelt placeholders of matrix variables: ``{f.stme}`` is an error, not text.

Substitution leaves every brace it does not know alone (shell ``${VAR}``,
``{a,b}``, awk's ``{print $1}``), so a misspelt part would run as text.  Only
the ``{VAR.part}`` form where VAR is a matrix variable of the task is checked
here: that form means nothing to a shell, so it can only be a mistake.
Called once per matrix table when the manifest is read, before any task is made.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from typing import Any, NamedTuple

PARTS = ("stem", "name", "parent", "suffix")  # what {f.part} gives of a path (manifest.py)
KEYS = ("cmd", "inputs", "outputs", "deps", "display", "env", "cwd", "depfile", "args", "kwargs")


class Misspelt(NamedTuple):
    """A placeholder that names a matrix variable and a part no path has."""

    key: str  # the task key whose string holds it
    placeholder: str  # as written: "{f.stme}"
    message: str
    hint: str


def check(body: Mapping[str, Any], variables: Collection[str]) -> Misspelt | None:
    """The first misspelt placeholder in the strings of a task table, or None."""
    if not variables:
        return None
    names = "|".join(re.escape(v) for v in sorted(variables, key=len, reverse=True))
    pattern = re.compile(r"(?<!\$)\{(" + names + r")\.([^{}\s]*)\}")
    for key in KEYS:
        for text in _strings(body.get(key)):
            for m in pattern.finditer(text):
                if m.group(2) not in PARTS:
                    return _misspelt(key, m.group(0), m.group(1), m.group(2))
    return None


def _misspelt(key: str, placeholder: str, var: str, part: str) -> Misspelt:
    import difflib

    close = difflib.get_close_matches(part.lower(), PARTS, n=1, cutoff=0.5)
    hint = (
        f"did you mean '{{{var}.{close[0]}}}'?" if close
        else "a path's parts are " + ", ".join(f"{{{var}.{p}}}" for p in PARTS)
    )
    message = f"unknown placeholder '{placeholder}': a matrix value has no part '{part}'"
    return Misspelt(key, placeholder, message, hint)


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a value (lists and tables included)."""
    if isinstance(value, str):
        if "{" in value:
            yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
