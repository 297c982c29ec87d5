"""Placeholders replaced in a task's strings: matrix variables and [vars] entries.

``{var}`` and ``{var.stem|name|parent|suffix}``; a [vars] list is spread.
Braces that name nothing known are left alone (shell ``${VAR}``, awk's
``{print $1}``); placeholders.py finds the misspelt ones before this runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from . import globs, shellwords


class Substituter:
    """Replaces {var} and {var.stem|name|parent|suffix} for matrix variables and [vars] only.

    A [vars] list is spread: in ``cmd`` its items are shell-quoted and joined by
    spaces; a path or dependency that names it becomes one entry per item.
    """

    def __init__(
        self,
        values: dict[str, str],
        variables: Mapping[str, str | list[str]] | None = None,
        found: Iterable[str] = (),
    ) -> None:
        self.values: dict[str, str | list[str]] = {**(variables or {}), **values}
        self.found = frozenset(found)  # matrix glob variables: file names, quoted in cmd
        if self.values:
            names = "|".join(re.escape(k) for k in sorted(self.values, key=len, reverse=True))
            self.pattern: re.Pattern[str] | None = re.compile(
                r"(?<!\$)\{(" + names + r")(?:\.(stem|name|parent|suffix))?\}"
            )
        else:
            self.pattern = None
        self.quote = self.literal = False
        self.text = ""
        self.quoting: dict[int, str] | None = None
        self.lists = any(isinstance(v, list) for v in self.values.values())

    def __call__(self, text: str, quote: bool = False) -> str:
        """``text`` with its placeholders replaced, in one pass; ``quote``: ``text`` is a
        command, where file names and list items are shell-quoted (see shellwords)."""
        if self.pattern is None or "{" not in text:
            return text
        self.quote, self.text, self.quoting = quote, text, None
        return self.pattern.sub(self._replace, text)

    def _quoting_at(self, start: int) -> str:
        """The shell quoting around the placeholder at ``start``, read once per command."""
        if self.quoting is None:
            assert self.pattern is not None
            starts = (m.start() for m in self.pattern.finditer(self.text))
            self.quoting = shellwords.quoting_at(self.text, starts)
        return self.quoting[start]

    def items(self, text: str, literal: bool = False) -> list[str]:
        """``text`` substituted; one string per item of the one [vars] list it names.

        ``literal``: ``text`` is a pattern, where a matrix glob's file name matches itself
        only (its wildcard characters escaped).
        """
        self.literal = literal
        try:
            return self._items(text, literal)
        finally:
            self.literal = False

    def _items(self, text: str, literal: bool) -> list[str]:
        if not self.lists or "{" not in text:
            return [self(text)]
        assert self.pattern is not None
        lists = {m.group(1) for m in self.pattern.finditer(text)}
        lists = {n for n in lists if isinstance(self.values[n], list)}
        if len(lists) > 1:
            raise ValueError(f"'{text}' names two list variables; one at most can be spread")
        if not lists:
            return [self(text)]
        (name,) = lists
        items = self.values[name]
        assert isinstance(items, list)
        out = []
        for item in items:
            each = Substituter({name: item}, self.values, self.found)
            each.literal = literal
            out.append(each(text))
        return out

    def _replace(self, m: re.Match[str]) -> str:
        value = self.values[m.group(1)]
        if isinstance(value, list):
            shown = [self._part(v, m.group(2)) for v in value]
            if not self.quote or all(map(shellwords.safe, shown)):
                return " ".join(shown)
            return shellwords.words(shown, self._quoting_at(m.start()))
        if m.group(1) in self.found:
            part = self._part(value, m.group(2))
            if self.quote and not shellwords.safe(part):
                return shellwords.word(part, self._quoting_at(m.start()))
            return globs.escape(part) if self.literal and not self.quote else part
        return self._part(value, m.group(2))

    @staticmethod
    def _part(value: str, part: str | None) -> str:
        if part is None:
            return value
        base = os.path.basename(value)
        if part == "name":
            return base
        if part == "parent":
            return os.path.dirname(value) or "."
        stem, suffix = os.path.splitext(base)
        return stem if part == "stem" else suffix


def substitute(value: Any, sub: Substituter, exact: Mapping[str, Any]) -> Any:
    """Matrix placeholders replaced in every string inside an argument; a string that is
    exactly one of ``exact`` (``"{n}"``) becomes its value, typed (typed_args)."""
    if isinstance(value, str):
        return exact[value] if value in exact else sub(value)
    if isinstance(value, list):
        return [substitute(v, sub, exact) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, sub, exact) for k, v in value.items()}
    return value


def scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
