"""File names put into a shell command so the shell reads exactly their text, quoted or not.

A value that comes from the file system (a matrix glob's match, ``{inputs}``,
``{outputs}``) is data: it is shell-quoted where it is inserted, whatever the
author's own quoting around the placeholder.  ``wc -l < '{f}'`` and
``grep x "{f}"`` keep working: inside the author's quotes the value closes them,
comes in single quotes of its own, and reopens them (``''\\''a b'\\'''`` reads as
``a b``).  Only a value that needs quoting is touched, so ordinary names give the
command text they always gave.

The quoting state is read from the command around the placeholder: single
quotes, double quotes, backslashes, ``$(...)`` and backticks (which start a new,
unquoted level even inside double quotes).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

UNQUOTED, SINGLE, DOUBLE = "", "'", '"'

# a quoted value never shows these to a later substitution pass (graph's {inputs})
_RESERVED = re.compile(r"\{(inputs|outputs)\}")
_UNSAFE = re.compile(r"[^\w@%+=:,./-]", re.ASCII)  # as shlex.quote's


def safe(value: str) -> bool:
    """Whether ``value`` reads as itself in any quoting (so the quoting need not be read)."""
    return bool(value) and _UNSAFE.search(value) is None


def quoting_at(text: str, positions: Iterable[int]) -> dict[int, str]:
    """The shell quoting in force at each position of ``text``: UNQUOTED, SINGLE or DOUBLE."""
    wanted = sorted(set(positions))
    found: dict[int, str] = {}
    stack = [UNQUOTED]  # innermost last; "(" and "`" are unquoted levels
    i, k = 0, 0
    while k < len(wanted):
        while k < len(wanted) and wanted[k] <= i:
            top = stack[-1]
            found[wanted[k]] = top if top in (SINGLE, DOUBLE) else UNQUOTED
            k += 1
        if i >= len(text):
            break
        i = _step(text, i, stack)
    return found


def _step(text: str, i: int, stack: list[str]) -> int:
    """Read the character at ``i``, update the quoting ``stack``; the next position to read."""
    c, top = text[i], stack[-1]
    if top == SINGLE:
        if c == "'":
            stack.pop()
        return i + 1
    if c == "\\":
        return i + 2
    if text.startswith("$(", i):
        stack.append("(")
        return i + 2
    if c == "`":
        if top == "`":
            stack.pop()
        else:
            stack.append("`")
        return i + 1
    if top == DOUBLE:
        if c == '"':
            stack.pop()
        return i + 1
    if c in ("'", '"'):
        stack.append(c)
    elif c == "(":
        stack.append("(")
    elif c == ")" and top == "(":
        stack.pop()
    return i + 1


def word(value: str, quoting: str = UNQUOTED) -> str:
    """``value`` as shell text that reads as exactly ``value`` where ``quoting`` is in force."""
    quoted = shlex.quote(value)
    if quoted == value:
        return value  # nothing in it the shell would read: the same text in any quoting
    quoted = _RESERVED.sub(r"{''\1}", quoted)  # inside single quotes: the same word
    if quoting == UNQUOTED:
        return quoted
    return quoting + quoted + quoting  # close the author's quotes, the value, reopen them


def words(values: Iterable[str], quoting: str = UNQUOTED) -> str:
    """Several values: one word each, unquoted; inside quotes, one word, joined by spaces."""
    if quoting == UNQUOTED:
        return " ".join(word(v) for v in values)
    return word(" ".join(values), quoting)
