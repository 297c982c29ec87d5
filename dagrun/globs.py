"""Glob patterns over paths: expansion with ``**`` and a record of the folders read.

The record (folder -> its stamp: mtime, ctime and inode) lets a cached graph be trusted later: if no
folder a glob read has changed, the glob still matches the same files.
"""

from __future__ import annotations

import fnmatch
import os
import re
import time

from .unchanged import ABSENT, folder_stamp
from .unchanged import folders_unchanged as folders_unchanged  # re-exported (see unchanged.py)

_MAGIC = re.compile(r"[*?\[]")
STATE_DIR = ".dagrun"  # dagrun's own state: never an input


def has_magic(pattern: str) -> bool:
    return _MAGIC.search(pattern) is not None


def translate(pattern: str) -> re.Pattern[str]:
    """A regex matching the same relative paths as ``pattern`` (``**`` spans folders)."""
    out: list[str] = []
    parts = pattern.split("/")
    for n, part in enumerate(parts):
        last = n == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        out.append(_translate_part(part))
        if not last:
            out.append("/")
    return re.compile("".join(out) + r"\Z")


def _translate_part(part: str) -> str:
    res: list[str] = []
    i = 0
    while i < len(part):
        c = part[i]
        i += 1
        if c == "*":
            res.append("[^/]*")
        elif c == "?":
            res.append("[^/]")
        elif c == "[":
            j = part.find("]", i + 1 if i < len(part) and part[i] in "!]" else i)
            if j < 0:
                res.append(r"\[")
            else:
                body = part[i:j].replace("\\", "\\\\").replace("[", "\\[")
                if body.startswith("!"):
                    body = "^" + body[1:]
                res.append(f"[{body}]")
                i = j + 1
        else:
            res.append(re.escape(c))
    return "".join(res)


def expand(
    pattern: str, base: str, scanned: dict[str, int] | None = None, *, hidden: bool = False
) -> list[str]:
    """Files matching ``pattern`` (relative to ``base``), sorted, relative like the pattern.

    Names starting with a dot match only a pattern part that starts with a dot,
    as in the shell (``hidden``: every part matches them).  A trailing ``**``
    means every file below.  Every folder listed is put in ``scanned`` with its
    mtime.  No folder named ``.dagrun`` is ever entered; ``**`` enters each real
    folder once (by device and inode), so symlink loops end and a file reached
    through a link to a folder already walked is not counted again.
    """
    absolute = pattern.startswith("/")
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    walker = _Walker("/" if absolute else base, scanned, hidden)
    walker.run("/" if absolute else "", parts)
    return sorted(set(walker.found))


def tree(folder: str, base: str, scanned: dict[str, int] | None = None) -> list[str]:
    """Every file below ``folder`` (hidden ones too, never ``.dagrun``), sorted, like ``expand``."""
    walker = _Walker(base, scanned, True)
    walker.run("" if folder == "." else folder, ["**"])
    return sorted(set(walker.found))


class _Walker:
    """One expansion: the files found, the folders ``**`` has entered, links put off till last."""

    def __init__(self, base: str, scanned: dict[str, int] | None, hidden: bool) -> None:
        self.base = base
        self.scanned = scanned
        self.hidden = hidden
        self.found: list[str] = []
        self.entered: set[tuple[int, int, int]] = set()  # (parts left, st_dev, st_ino)
        self.links: list[tuple[str, list[str]]] = []  # folders reached through a symlink
        self.state = _identity(os.path.join(base, STATE_DIR))

    def run(self, rel: str, parts: list[str]) -> None:
        self.walk(rel, parts)
        while self.links:  # real paths first, so a file is named by its real path if it can be
            rel, parts = self.links.pop(0)
            self.walk(rel, parts)

    def path(self, rel: str) -> str:
        return os.path.join(self.base, rel) if rel else self.base

    def walk(self, rel: str, parts: list[str]) -> None:
        if not parts:
            if os.path.isfile(self.path(rel)):
                self.found.append(rel)
            return
        head, rest = parts[0], parts[1:]
        if head == "**":
            self.walk_any(rel, parts)
        elif not has_magic(head):
            if head != STATE_DIR:
                self.walk(_join(rel, head), rest)
        else:
            here = self.path(rel)
            for name in _listdir(here, self.scanned):
                if name == STATE_DIR or not self.visible(name, head):
                    continue
                if fnmatch.fnmatchcase(name, head):
                    if rest and os.path.islink(os.path.join(here, name)):
                        self.links.append((_join(rel, name), rest))
                    else:
                        self.walk(_join(rel, name), rest)

    def walk_any(self, rel: str, parts: list[str]) -> None:
        """``**`` at ``rel``: zero folders, then each subfolder, each real folder once."""
        here = self.path(rel)
        ident = _identity(here)
        if ident is None or ident == self.state:
            return
        entered = (len(parts), *ident)
        if entered in self.entered:
            return
        self.entered.add(entered)
        rest = parts[1:]
        if rest:
            self.walk(rel, rest)
        for name in _listdir(here, self.scanned):
            if not self.visible(name, "") or name == STATE_DIR:
                continue
            full = os.path.join(here, name)
            if os.path.isdir(full):
                if os.path.islink(full):
                    self.links.append((_join(rel, name), parts))
                else:
                    self.walk_any(_join(rel, name), parts)
            elif not rest and os.path.isfile(full):  # a trailing ** means every file below
                self.found.append(_join(rel, name))

    def visible(self, name: str, part: str) -> bool:
        return self.hidden or not name.startswith(".") or part.startswith(".")


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _join(rel: str, name: str) -> str:
    if not rel:
        return name
    return rel + name if rel.endswith("/") else rel + "/" + name


def _listdir(path: str, scanned: dict[str, int] | None) -> list[str]:
    """The names in a folder, sorted; its stamp (unchanged.folder_stamp) put in ``scanned``."""
    try:
        st = os.stat(path)
        names = os.listdir(path)
    except OSError:
        if scanned is not None:
            scanned[path] = ABSENT
        return []
    if scanned is not None:
        scanned[path] = folder_stamp(st, time.time_ns())
    return sorted(names)


def escape(path: str) -> str:
    """A pattern matching exactly ``path``: each wildcard character in a class of its own."""
    return _MAGIC.sub(lambda m: f"[{m.group()}]", path)


def literal_prefix(pattern: str) -> str:
    """The part of ``pattern`` before its first wildcard: every match starts with it."""
    m = _MAGIC.search(pattern)
    return pattern if m is None else pattern[: m.start()]


def may_match_below(pattern: str, folder: str) -> bool:
    """Whether ``pattern`` could match a path inside ``folder`` (both relative to one base)."""
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    names = [p for p in folder.split("/") if p not in ("", ".")]
    for n, name in enumerate(names):
        if n >= len(parts):
            return False
        if parts[n] == "**":
            return True
        if not fnmatch.fnmatchcase(name, parts[n]):
            return False
    return len(parts) > len(names)
