"""Where things are in a manifest's TOML text: the line of a table header or of a key.

The parser (manifest.py) builds a LineIndex while it reads the text, and keeps it
in the Manifest (``Manifest.line_of``), so errors found later (graph.compile,
hashing, the core pool) can name a line too.  ``Pointer`` makes the ManifestErrors
that point at those lines.
"""

from __future__ import annotations

import re
import zlib

from .errors import ManifestError
from .fs import read_regular


class LineIndex:
    """Finds the line of a table header, or of a key inside a table, in TOML text.

    One pass over the text when built; every later lookup is a dict access.
    Lines inside multi-line strings are skipped.  A key in a table that has no
    header of its own (``[tasks.a.env]`` without ``[tasks.a]``, or the table
    ``task`` of ``[task.a]``) is found at the first header below it.

    Where that is exact (no multi-line strings, only ``\\n`` line breaks), the
    first pass indexes table headers only, with one regex over the text; keys
    and inline tables are indexed on the first lookup that needs them (in
    practice: an error).  On a 10,000-task manifest this saves ~10 MB of a cold
    build's peak RSS.  For valid TOML (the only text indexed) an explicit
    header is always a table's first line, so header lookups answer the same.
    """

    _HEADER = re.compile(r"^\s*\[\[?\s*([^\[\]].*?)\s*\]\]?\s*(?:#.*)?$")  # [t] or [[t]]
    _KEY = re.compile(r'^\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*[.=]')
    # _HEADER over a whole text: \s that cannot cross a line, and the same per-line anchors
    _HEADERS = re.compile(
        r"^[^\S\n]*\[\[?[^\S\n]*([^\[\]\n].*?)[^\S\n]*\]\]?[^\S\n]*(?:#.*)?$", re.MULTILINE
    )
    _ODD_BREAKS = re.compile("[\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")  # str.splitlines splits there

    def __init__(self, text: str, *, headers: bool = True) -> None:
        """``headers=False``: index nothing until the first lookup (then everything), where
        the caller knows the task headers' lines (``deferred`` says whether it may use them)."""
        self.headers: dict[tuple[str, ...], int] = {}  # explicit headers and inline tables
        self.below: dict[tuple[str, ...], int] = {}  # first header at or below a table path
        self.keys: dict[tuple[tuple[str, ...], str], int] = {}
        self._text: str | None = text  # until keys are indexed
        self._file: tuple[str, int] | None = None  # where to read the text again, its crc32
        self.deferred = False
        if '"""' in text or "'''" in text or self._ODD_BREAKS.search(text):
            self._complete()
            return
        if not headers:
            self.deferred = True
            return
        n, last = 1, 0
        for m in self._HEADERS.finditer(text):
            n += text.count("\n", last, m.start())
            last = m.start()
            current = split_dotted(m.group(1))
            self.headers.setdefault(current, n)
            for i in range(1, len(current)):  # the whole path is in headers
                self.below.setdefault(current[:i], n)

    @classmethod
    def of_file(cls, path: str) -> LineIndex | None:
        """The index of a manifest file's text as it is now; None if it cannot be read."""
        try:
            with open(path, encoding="utf-8") as f:
                return cls(f.read())
        except (OSError, UnicodeDecodeError):
            return None

    def shrink(self) -> None:
        """Forget the header index while the text is kept: the next lookup indexes the text
        again, whole (in practice only an error looks a line up once the tasks are made)."""
        if self._text is not None:
            self.headers.clear()
            self.below.clear()

    def keep_file(self, path: str, crc: int) -> None:
        """Forget the text (a big manifest's is megabytes, kept all build long for an error
        that rarely comes): the first lookup reads it again from ``path``, if it is still the
        same text; else lines are the tasks' table lines (TaskSpec.line)."""
        if self._text is not None:
            self._text, self._file = None, (path, crc)

    def _complete(self) -> None:
        """Index every line: keys and inline tables too (once)."""
        text, self._text = self._text, None
        if text is None and self._file is not None:
            text, self._file = _text_again(*self._file), None
        if text is None:
            return
        current: tuple[str, ...] = ()
        quote = ""  # the delimiter of the multi-line string we are in, if any
        for n, line in enumerate(text.splitlines(), 1):
            if quote:
                if quote in line:
                    quote = ""
                continue
            m = self._HEADER.match(line) if "[" in line else None
            if m:
                current = split_dotted(m.group(1))
                self.headers.setdefault(current, n)
                for i in range(1, len(current) + 1):
                    self.below.setdefault(current[:i], n)
                continue
            km = self._KEY.match(line)
            if km:
                key = unquote(km.group(1))
                self.keys.setdefault((current, key), n)
                # an inline table such as `name = { cmd = "..." }` stands for [current.name]
                self.headers.setdefault(current + (key,), n)
            quote = _opens_multiline(line)

    def find(self, table: tuple[str, ...] | None, key: str | None) -> int | None:
        if table is None:
            return None
        if key is not None or table not in self.headers:
            self._complete()
        if key is not None:
            line = self.keys.get((table, key))
            line = line or self.headers.get(table + (key,)) or self.below.get(table + (key,))
            if line:
                return line
        return self.headers.get(table) or self.below.get(table)


def _text_again(path: str, crc: int) -> str | None:
    """The manifest's text as it was parsed, or None if the file is gone or has changed."""
    try:
        data = read_regular(path)
    except OSError:
        return None
    if zlib.crc32(data) != crc:
        return None
    text = data.decode("utf-8", errors="replace")
    return text[1:] if text.startswith("\ufeff") else text


def _opens_multiline(line: str) -> str:
    """The delimiter of a multi-line string left open at the end of ``line``, or ''."""
    for delim in ('"""', "'''"):
        if line.count(delim) % 2 == 1:
            return delim
    return ""


def split_dotted(s: str) -> tuple[str, ...]:
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|([^.\s]+)', s)
    return tuple(a or b or c for a, b, c in parts)


def unquote(s: str) -> str:
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        return s[1:-1]
    return s


class Pointer:
    """Makes ManifestErrors that name the file and, where the index finds it, the line."""

    def __init__(self, source: str, lines: LineIndex | None) -> None:
        self.source = source
        self.lines = lines

    def line(self, table: tuple[str, ...] | None, key: str | None = None) -> int | None:
        """The line of ``key`` in ``table`` (or of the table), where known."""
        return self.lines.find(table, key) if self.lines is not None else None

    def error(
        self,
        message: str,
        *,
        task: str | None = None,
        key: str | None = None,
        table: tuple[str, ...] | None = None,
        hint: str | None = None,
    ) -> ManifestError:
        """A ManifestError with the line of ``key`` in ``table`` (or of the table) when known."""
        line = self.line(table, key) if table is not None else None
        return ManifestError(message, source=self.source, task=task, key=key, line=line, hint=hint)


def key_set_on(line: str) -> str | None:
    """The key a line of TOML sets (``name = ...`` or ``name.sub = ...``), or None."""
    m = LineIndex._KEY.match(line)
    return unquote(m.group(1)) if m else None
