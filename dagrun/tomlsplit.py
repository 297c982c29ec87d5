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
line numbers are the ones users see.
"""

from __future__ import annotations

import re
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
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
    if text.count("[tasks.") >= MIN_TASKS and '"""' not in text and "'''" not in text:
        try:
            doc = _loads_in_batches(text)
        except Exception:  # noqa: BLE001 - the whole-text parse below says what is wrong
            doc = None
    if doc is None:
        result: dict[str, Any] = _tomllib().loads(text)
        return result
    return doc


def _loads_in_batches(text: str) -> dict[str, Any] | None:
    cuts = [(m.start(), m.group(1)) for m in _HEADER.finditer(text)]
    if len(cuts) < MIN_TASKS:
        return None
    parse = _tomllib().loads
    doc: dict[str, Any] = parse(text[: cuts[0][0]])
    if "tasks" in doc:
        return None
    tasks: dict[str, Any] = {}
    for b in range(0, len(cuts), BATCH):
        batch = cuts[b : b + BATCH]
        end = cuts[b + BATCH][0] if b + BATCH < len(cuts) else len(text)
        part = parse(text[batch[0][0] : end])
        names = [name for _, name in batch]
        if list(part) != ["tasks"] or list(part["tasks"]) != names:
            return None  # another table inside, or a name twice in this batch
        for name in names:
            if name in tasks:
                return None
            tasks[name] = part["tasks"][name]
    doc["tasks"] = tasks
    return doc
