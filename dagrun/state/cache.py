"""The state cache: ``.dagrun/cache`` and its journal ``.dagrun/cache.journal``.

The cache holds the compiled graph, the stat cache, every task's key and the
completion log's index (marshal blobs, sealed with the state's checksum: a
damaged one is no cache; deleting it only costs time).  It is what makes a no-op
build fast: no TOML, no networkx, no re-hashing of unchanged files.  After a
partial build only its few new stat entries and keys are appended to the journal
(``Journal``), which is folded into the cache when it grows.  A cache that cannot be written is
a warning (it is only a cache), and no temporary file is left behind.
"""

from __future__ import annotations

import gc
import itertools
import marshal
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from ..regular import open_regular, read_regular
from ..regular import unlink_quietly as _unlink
from ..unchanged import folders_unchanged
from . import Sealer, unseal, write_sealed
from .log import CompletionLog


class BuildGraph(Protocol):
    """What the cache asks of a graph.BuildGraph (the state sits below the graph)."""

    specs: Any
    sources: Any
    scanned: dict[str, int]

    def to_cache(self) -> Any: ...


class Keys(Protocol):
    """What the cache asks of hashing.Keys: its stat cache, keys and what was re-keyed."""

    stats: Any
    keys: list[str | None]
    recomputed: int
    rekeyed: Any

CACHE = "cache"
CACHE_VERSION = 8  # 8: the log index holds fp and seen; 7: the graph in pieces


class StateCache:
    """The cache file (with its journal) as one Session holds it, between its builds."""

    def __init__(self, state_dir: str, warnings: list[str]) -> None:
        self.state_dir = state_dir
        self.warnings = warnings  # a cache that cannot be written says so here
        self.data: dict[str, Any] | None = None  # as loaded or last written
        self.graph_blob: GraphBlob | None = None  # the cache file's graph part, as read
        self.journal: Journal | None = None  # as loaded or last written

    def load(self) -> dict[str, Any] | None:
        if self.data is not None:
            return self.data
        try:
            raw = read_regular(os.path.join(self.state_dir, CACHE))  # a FIFO: discarded
            data, self.graph_blob = loads(raw)
        except (OSError, EOFError, ValueError, TypeError):
            return None
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return None
        self.journal = apply_journal(self.state_dir, data)
        self.data = data
        return data

    def journal_intact(self) -> bool:
        """Whether the cache's journal was whole (a damaged one leaves the cache older than the
        proof: its keys may predate the last partial builds, so every task is checked)."""
        return self.journal is not None and self.journal.base is not None

    def save(self, basis: Basis, graph: BuildGraph, keys: Keys, log: CompletionLog) -> None:
        """Write the cache after a build or a plan, unless it holds all of this already."""
        cache, reused, kenv = basis.cached, basis.reused, basis.kenv
        if reused and cache is not None and self._holds(cache, keys, log, kenv):
            return
        stats = keys.stats.entries
        if not reused and cache is not None:  # a new graph: forget files no task reads now
            live = {p for srcs in graph.sources for p in srcs}
            stats = {p: e for p, e in stats.items() if p in live}
        data = {
            "version": CACHE_VERSION,
            "source": basis.source,
            "graph": cache["graph"] if reused and cache is not None else graph.to_cache(),
            "stats": stats,
            "keys": {graph.specs[i].name: k for i, k in enumerate(keys.keys) if k is not None},
            "kenv": kenv,
            "log": log.index.to_cache(),
        }
        if not folders_unchanged(graph.scanned):
            data["source"] = None  # a glob's folder changed under us: recompile next time
        self.write(data)
        try:
            compacted = log.compact_if_needed()
        except OSError as exc:
            self.warnings.append(f"could not compact the completion log: {exc.strerror}")
            compacted = False
        if compacted:
            data["log"] = log.index.to_cache()
            self.write(data)

    @staticmethod
    def _holds(cache: dict[str, Any], keys: Keys, log: CompletionLog, kenv: Any) -> bool:
        return (
            not keys.stats.dirty
            and keys.recomputed == 0
            and cache.get("kenv") == kenv
            and tuple(cache.get("log", ())) == log.index.to_cache()
        )

    def save_journal(
        self, basis: Basis, graph: BuildGraph, keys: Keys, log: CompletionLog, ran: tuple[int, ...]
    ) -> bool:
        """After a partial build: its few new stat entries and keys (of the re-keyed tasks and
        of ``ran``, whose keys may be learnt late), appended to the cache's journal instead of
        the whole cache rewritten; False when the cache must be written."""
        cache, journal = basis.cached, self.journal
        if cache is None or not basis.reused or journal is None or journal.base is None:
            return False
        entries = keys.stats.entries
        for p in keys.stats.updated:
            journal.stats[p] = entries.get(p)
        previous = cache.get("keys", {})
        specs = graph.specs
        # every other task's key is the previous one (Keys.seed)
        for i in (*keys.rekeyed, *ran):
            key = keys.keys[i]
            if key is not None and previous.get(specs[i].name) != key:
                journal.keys[specs[i].name] = key
        if len(journal.stats) + len(journal.keys) > max(JOURNAL_MIN, len(entries) // 8):
            return False  # it has grown: fold it into the cache
        if log.index.size - cache.get("log", (0, 0))[1] > JOURNAL_LOG_TAIL:
            return False  # the log's index in the cache is far behind: write it again
        try:
            journal.write(self.state_dir)
        except OSError:
            return False
        previous.update(journal.keys)  # the cache as this session sees it from now on
        return True

    def write(self, data: dict[str, Any]) -> None:
        """Write the cache whole or not at all (under the lock: any temporary file is stale)."""
        remove_stale_temporaries(self.state_dir)
        path = os.path.join(self.state_dir, CACHE)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                dump(data, f, self.graph_blob)
            os.replace(tmp, path)
            _unlink(os.path.join(self.state_dir, JOURNAL))  # folded in; its base is gone anyway
            self.journal = Journal(cache_id(path), {}, {})
        except (OSError, ValueError) as exc:
            _unlink(tmp)
            _unlink(path)  # an older cache would still be right, but say nothing we did not check
            _unlink(os.path.join(self.state_dir, JOURNAL))
            self.journal = None
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            self.warnings.append(f"could not write the state cache {path}: {why}")
        self.data = data


@dataclass
class Basis:
    """What a prepared build's keys and graph came from: the cache as loaded (None: none),
    whether its graph was reused, the ``key_env`` values, and the manifest's source id."""

    cached: dict[str, Any] | None
    reused: bool
    kenv: dict[str, str | None]
    source: tuple[Any, ...]

    def previous_keys(self) -> dict[str, str] | None:
        """The cache's keys, when they are of this graph and these ``key_env`` values."""
        if self.reused and self.cached is not None and self.cached.get("kenv") == self.kenv:
            return self.cached.get("keys")
        return None


def remove_stale_temporaries(state_dir: str) -> None:
    """Temporary state files a crashed or failed dagrun left (the caller holds the lock)."""
    try:
        names = os.listdir(state_dir)
    except OSError:
        return
    for name in names:
        if name.endswith(".tmp") and name.split(".", 1)[0] in ("cache", "fresh", "log"):
            _unlink(os.path.join(state_dir, name))


# The cache file is a few marshal blobs: one marshal.dumps of everything needs ~3x the file's size
# in transient memory (most of a cold build's peak RSS), each big part dumped alone far less, and
# the graph (a list of pieces: BuildGraph.to_cache) one blob per piece, each written as soon as it
# is made; the graph's blobs are written back as they were read when the graph did not change.
_MAGIC = b"dagrun-cache\n"
_PARTS = ("graph", "stats", "keys")  # the big parts; everything else is one more blob
# Parts (and graph columns) of distinct objects are dumped with marshal version 2: it keeps no
# table of the objects seen (~45 bytes each while dumping: 2-3x the blob), and loads faster.
_FLAT = ("stats", "keys")
GraphBlob = tuple[Any, bytes | list[memoryview]]  # (the graph part as loaded, its blob(s))


def dump(data: dict[str, Any], f: Any, known: GraphBlob | None) -> None:
    """MAGIC, the blobs of each part, the sizes (a list for a graph in pieces), their length,
    and the crc32 of all that (the state's checksum): a cache with one wrong byte is no cache."""
    sealed = Sealer(f)
    sealed.write(_MAGIC)
    sizes: list[Any] = []
    for name in (*_PARTS, None):
        value = data[name] if name else {k: v for k, v in data.items() if k not in _PARTS}
        reuse = known if name == "graph" and known is not None and known[0] is value else None
        split = type(reuse[1]) is list if reuse else name == "graph" and type(value) is list
        written = []
        for blob in _part_blobs(value, reuse, split, name in _FLAT):
            sealed.write(blob)
            written.append(len(blob))
        sizes.append(written if split else written[0])
    sizes_blob = marshal.dumps(sizes)
    tail = sizes_blob + len(sizes_blob).to_bytes(4, "little")
    sealed.write(tail)
    sealed.close()


def _part_blobs(value: Any, known: GraphBlob | None, split: bool, flat: bool) -> Iterator[Any]:
    """A part's blobs, made one at a time (each is written, then dropped)."""
    if known is not None:
        yield from [known[1]] if isinstance(known[1], bytes) else known[1]
    elif split:
        for piece in value:
            yield marshal.dumps(piece, 2 if _distinct_strings(piece) else marshal.version)
    else:
        yield marshal.dumps(value, 2 if flat else marshal.version)


def _distinct_strings(piece: Any) -> bool:
    """Whether ``piece`` is a list of distinct strings, or tuples of strings (a graph column)."""
    if type(piece) is not list or not piece or len(set(map(id, piece))) != len(piece):
        return False
    first = piece[0]
    return type(first) is str or (type(first) is tuple and bool(first) and type(first[0]) is str)


def loads(raw: bytes) -> tuple[dict[str, Any] | None, GraphBlob | None]:
    if not raw.startswith(_MAGIC) or len(raw) < len(_MAGIC) + 8:
        return None, None
    view = unseal(raw)
    if view is None:
        return None, None
    tail = int.from_bytes(view[-4:], "little")
    sizes = marshal.loads(view[len(view) - 4 - tail : -4])
    if not isinstance(sizes, list) or len(sizes) != len(_PARTS) + 1:
        return None, None
    pieces = sizes[0] if isinstance(sizes[0], list) else None
    ng = len(pieces) if pieces is not None else 1  # the graph's blobs
    flat = (pieces if pieces is not None else sizes[:1]) + sizes[1:]
    if len(_MAGIC) + sum(flat) + tail + 4 != len(view):
        return None, None
    at = list(itertools.accumulate(flat, initial=len(_MAGIC)))
    whole = bytes(view[at[0] : at[ng]])  # the graph's blobs, kept: written back if unchanged
    kept = memoryview(whole)
    graph = [kept[a - at[0] : b - at[0]] for a, b in zip(at[:ng], at[1 : ng + 1], strict=True)]
    others = [view[a:b] for a, b in zip(at[ng:-1], at[ng + 1 :], strict=True)]
    with gc_paused():  # only new objects, no cycles: a collection while loading finds nothing
        data = marshal.loads(others[-1])
        if not isinstance(data, dict):
            return None, None
        if pieces is not None:
            data["graph"] = [marshal.loads(b) for b in graph]
        else:
            data["graph"] = marshal.loads(graph[0])
        data["stats"], data["keys"] = marshal.loads(others[0]), marshal.loads(others[1])
    return data, (data["graph"], graph if pieces is not None else whole)


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic GC off while loading many objects (the cache here, its graph in
    graph.BuildGraph.from_cache): there is nothing to collect, and its passes cost ~1.5 ms of
    a 10k load."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


JOURNAL = "cache.journal"
JOURNAL_MIN = 2048  # entries a journal may hold before it is folded into the cache (or N/8)
JOURNAL_LOG_TAIL = 1 << 18  # log bytes past the cache's index that a build may read again


@dataclass
class Journal:
    """What partial builds changed in the cache since it was written: new stat entries (None:
    removed) and keys.  ``base`` identifies the cache file it applies to (_cache_id); a journal
    whose base is not the cache on disk, or that fails its checksum, is not applied -- the
    cache alone is still consistent (its keys match its stat entries), only older, and the
    completion log's index catches up from the log itself."""

    base: tuple[int, ...] | None
    stats: dict[str, Any]
    keys: dict[str, str]

    def write(self, state_dir: str) -> None:
        blob = marshal.dumps((CACHE_VERSION, self.base, self.stats, self.keys))
        write_sealed(os.path.join(state_dir, JOURNAL), blob)


def cache_id(path: str) -> tuple[int, ...] | None:
    """The cache file's identity: a journal applies only to the file it was written over."""
    try:
        st = os.stat(path)
        with os.fdopen(open_regular(path), "rb") as f:
            f.seek(-4, os.SEEK_END)
            crc = int.from_bytes(f.read(4), "little")
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, crc)


def apply_journal(state_dir: str, data: dict[str, Any]) -> Journal:
    """Apply the cache's journal to ``data`` (the cache as loaded); the journal to extend."""
    base = cache_id(os.path.join(state_dir, CACHE))
    try:
        raw = read_regular(os.path.join(state_dir, JOURNAL))
    except OSError:
        return Journal(base, {}, {})
    blob = unseal(raw)
    try:
        if blob is None:
            raise ValueError("checksum")
        version, was, stats, keys = marshal.loads(blob)
    except (ValueError, EOFError, TypeError):
        return Journal(None, {}, {})  # damaged: not applied, and never extended
    if version != CACHE_VERSION or was != base or base is None:
        return Journal(base, {}, {})  # written over another cache: stale
    entries = data["stats"]
    for p, e in stats.items():
        if e is None:
            entries.pop(p, None)
        else:
            entries[p] = e
    data["keys"].update(keys)
    return Journal(base, dict(stats), dict(keys))
