"""Glob patterns over paths: expansion with ``**`` and a record of the folders read.

The record (folder -> mtime_ns) lets a cached graph be trusted later: if no
folder a glob read has changed, the glob still matches the same files.
"""

from __future__ import annotations

import fnmatch
import os
import re

_MAGIC = re.compile(r"[*?\[]")


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
                body = part[i:j].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                res.append(f"[{body}]")
                i = j + 1
        else:
            res.append(re.escape(c))
    return "".join(res)


def expand(pattern: str, base: str, scanned: dict[str, int] | None = None) -> list[str]:
    """Files matching ``pattern`` (relative to ``base``), sorted, relative like the pattern.

    Names starting with a dot match only a pattern part that starts with a dot,
    as in the shell. Every folder listed is put in ``scanned`` with its mtime.
    """
    absolute = pattern.startswith("/")
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    found: list[str] = []
    _walk("/" if absolute else "", parts, "/" if absolute else base, scanned, found)
    return sorted(set(found))


def _walk(
    rel: str, parts: list[str], base: str, scanned: dict[str, int] | None, found: list[str]
) -> None:
    if not parts:
        if os.path.isfile(os.path.join(base, rel) if rel else base):
            found.append(rel)
        return
    head, rest = parts[0], parts[1:]
    here = os.path.join(base, rel) if rel else base
    if head == "**":
        _walk(rel, rest, base, scanned, found)  # ** matches zero folders
        for name in _listdir(here, scanned):
            if not name.startswith(".") and os.path.isdir(os.path.join(here, name)):
                _walk(_join(rel, name), parts, base, scanned, found)
        return
    if not has_magic(head):
        _walk(_join(rel, head), rest, base, scanned, found)
        return
    for name in _listdir(here, scanned):
        if name.startswith(".") and not head.startswith("."):
            continue
        if fnmatch.fnmatchcase(name, head):
            _walk(_join(rel, name), rest, base, scanned, found)


def _join(rel: str, name: str) -> str:
    if not rel:
        return name
    return rel + name if rel.endswith("/") else rel + "/" + name


def _listdir(path: str, scanned: dict[str, int] | None) -> list[str]:
    try:
        st = os.stat(path)
        names = os.listdir(path)
    except OSError:
        if scanned is not None:
            scanned[path] = -1
        return []
    if scanned is not None:
        scanned[path] = st.st_mtime_ns
    return sorted(names)


def folders_unchanged(scanned: dict[str, int]) -> bool:
    """True when every folder in ``scanned`` still has the recorded mtime (or is still absent)."""
    for path, mtime in scanned.items():
        try:
            now = os.stat(path).st_mtime_ns
        except OSError:
            now = -1
        if now != mtime:
            return False
    return True
