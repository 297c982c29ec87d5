"""Depfiles: the files a compiler says a task read, in Makefile syntax (gcc -MD/-MMD, clang).

::

    build/a.o build/a.d: src/a.c src/a.h \\
     src/with\\ space.h /usr/include/stdio.h
    src/a.h:

``parse`` returns every prerequisite of every rule, in order, once: a
backslash-newline continues a line, ``\\ `` is a space, ``\\#`` a ``#``, ``$$``
a ``$``; ``-MP``'s empty rules (``src/a.h:``) add nothing new.  ``discovered``
turns them into project paths: relative to the task's cwd, normalised, files
outside the project (system headers) and the task's own declared files left out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .errors import DepfileError
from .fs import read_regular

__all__ = ["DepfileError", "discovered", "parse", "read"]


def parse(text: str) -> list[str]:
    """The prerequisites of every rule in ``text``; raises DepfileError when malformed."""
    found: dict[str, None] = {}
    rules = 0
    for n, line in enumerate(_logical_lines(text), 1):
        words = _words(line)
        if not words:
            continue
        colon = _rule_colon(words)
        if colon is None:
            raise DepfileError(f"line {n}: expected 'target: prerequisites', got {line.strip()!r}")
        rules += 1
        for w in words[colon + 1 :]:
            found[w] = None
    if not rules:
        raise DepfileError("names no rule (expected 'target: prerequisites')")
    return list(found)


def read(path: str) -> list[str]:
    """``parse`` of the file at ``path``; DepfileError when it is missing or unreadable."""
    try:
        data = read_regular(path)  # a FIFO or a device: an error, not a hang
    except FileNotFoundError:
        raise DepfileError("does not exist (did the command write it?)") from None
    except OSError as exc:
        raise DepfileError(f"cannot be read: {exc.strerror}") from None
    return parse(data.decode("utf-8", "surrogateescape"))


def discovered(
    prerequisites: Iterable[str], cwd: str, root: str, declared: Iterable[str]
) -> tuple[str, ...]:
    """Project paths (relative to ``root``) of the prerequisites, minus ``declared`` ones."""
    skip = set(declared)
    out: dict[str, None] = {}
    base = os.path.normpath(os.path.join(root, cwd))
    prefix = root.rstrip("/") + "/"
    for p in prerequisites:
        full = os.path.normpath(os.path.join(base, p))
        if not full.startswith(prefix):
            continue  # outside the project: a system header
        rel = full[len(prefix) :]
        if rel not in skip and not rel.startswith(".dagrun/"):
            out[rel] = None
    return tuple(sorted(out))


def _logical_lines(text: str) -> list[str]:
    """Lines with backslash-newline continuations joined (by a space)."""
    text = text.replace("\r\n", "\n")
    out: list[str] = []
    current = ""
    for raw in text.split("\n"):
        stripped = raw.rstrip()
        if stripped.endswith("\\") and not stripped.endswith("\\\\"):
            current += stripped[:-1] + " "
            continue
        out.append(current + raw)
        current = ""
    if current:
        out.append(current)
    return out


def _words(line: str) -> list[str]:
    """Whitespace-separated words, with ``\\ ``, ``\\#``, ``\\\\`` and ``$$`` unescaped.

    A ``:`` ending a word (or standing alone) is returned as its own word ``":"``.
    """
    words: list[str] = []
    word: list[str] = []
    i = 0
    while i < len(line):
        c = line[i]
        nxt = line[i + 1] if i + 1 < len(line) else ""
        if c == "\\" and nxt in (" ", "#", "\\", "\t"):
            word.append(nxt)
            i += 2
            continue
        if c == "$" and nxt == "$":
            word.append("$")
            i += 2
            continue
        if c == "#" and not word:
            break  # a comment
        if c.isspace():
            if word:
                words.append("".join(word))
                word = []
        elif c == ":" and (nxt == "" or nxt.isspace()):
            if word:
                words.append("".join(word))
                word = []
            words.append(":")
        else:
            word.append(c)
        i += 1
    if word:
        words.append("".join(word))
    return words


def _rule_colon(words: list[str]) -> int | None:
    """Where the first ':' separator is, when at least one target comes before it."""
    for n, w in enumerate(words):
        if w == ":":
            return n if n > 0 else None
    return None
