"""TOML with a bounded memory peak: a big manifest is parsed a few hundred tasks at a time.

tomllib keeps flags for every key it has seen until the end of the document:
on a 10,000-task manifest (1 MB) it peaks at ~30 MB for an 8 MB result, which
is most of a cold build's peak RSS.  ``loads`` cuts the text at plain
``[tasks.NAME]`` headers, parses the preamble and then batches of task
sections separately, and joins the tables.  It does so only where the result
is certainly the one of a single ``tomllib.loads``: every batch must define
exactly its own tasks and nothing else, no task twice, no ``tasks`` in the
preamble, no multi-line strings anywhere.  Anything else, including any error,
goes to one ``tomllib.loads`` of the whole text, whose error messages and
line numbers are the ones users see.  ``split`` hands the batches over one at a
time, so the manifest builder never holds more than one batch's tables.
"""

from __future__ import annotations

import re
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

BATCH = 256  # task sections per tomllib.loads call
MIN_TASKS = 2 * BATCH  # smaller manifests: one call, as before

_HEADER = re.compile(r"^\[tasks\.([A-Za-z0-9_-]+)\][ \t]*\r?$", re.MULTILINE)


def _tomllib() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib


def decode_error() -> type[Exception]:
    error: type[Exception] = _tomllib().TOMLDecodeError
    return error


def loads(text: str) -> dict[str, Any]:
    """Exactly ``tomllib.loads(text)``, with a lower peak on big manifests."""
    doc = None
    try:
        doc = _loads_in_batches(text)
    except Exception:  # noqa: BLE001 - the whole-text parse below says what is wrong
        doc = None
    if doc is None:
        result: dict[str, Any] = _tomllib().loads(text)
        return result
    return doc


Batch = tuple["dict[str, Any]", "dict[str, int]"]  # task tables, the line of each one's header


class Unsplittable(Exception):
    """A batch was not exactly its own tasks (or not TOML): parse the whole text instead."""


def split(text: str) -> tuple[dict[str, Any], Iterator[Batch]] | None:
    """The document without its tasks, and the task tables batch by batch, each batch parsed
    only when asked for (so a caller that builds each batch's tasks and drops its tables never
    holds the whole parse); None when the text is small or unusual.  The batches raise
    Unsplittable where they are not exactly ``tomllib.loads(text)["tasks"]``.

    Each batch comes with the line of each task's header (counting ``\\n`` only)."""
    if text.count("[tasks.") < MIN_TASKS or '"""' in text or "'''" in text:
        return None
    cuts = [(m.start(), m.group(1)) for m in _HEADER.finditer(text)]
    if len(cuts) < MIN_TASKS or len({name for _, name in cuts}) != len(cuts):
        return None  # a task declared twice: tomllib's error
    try:
        doc: dict[str, Any] = _tomllib().loads(text[: cuts[0][0]])
    except Exception:  # noqa: BLE001
        return None
    if "tasks" in doc:
        return None
    return doc, _batches(text, cuts)


def _batches(text: str, cuts: list[tuple[int, str]]) -> Iterator[Batch]:
    parse = _tomllib().loads
    line, last = 1, 0
    for b in range(0, len(cuts), BATCH):
        batch = cuts[b : b + BATCH]
        end = cuts[b + BATCH][0] if b + BATCH < len(cuts) else len(text)
        try:
            part = parse(text[batch[0][0] : end])
        except Exception:  # noqa: BLE001
            raise Unsplittable from None
        names = [name for _, name in batch]
        if list(part) != ["tasks"] or list(part["tasks"]) != names:
            raise Unsplittable  # another table inside, or a name twice in this batch
        lines = {}
        for pos, name in batch:
            line += text.count("\n", last, pos)
            last = pos
            lines[name] = line
        yield {name: part["tasks"][name] for name in names}, lines  # the cut's name strings


def _loads_in_batches(text: str) -> dict[str, Any] | None:
    parts = split(text)
    if parts is None:
        return None
    doc, batches = parts
    tasks: dict[str, Any] = {}
    try:
        for batch, _ in batches:
            tasks.update(batch)
    except Unsplittable:
        return None
    doc["tasks"] = tasks
    return doc
