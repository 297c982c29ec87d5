"""What ``dagrun watch`` watches, and whether a change matters (a WatchSet per loaded graph).

Never the whole tree: the folder of every source input of the selected tasks,
every folder a glob read (so a new file that matches a glob counts), the
manifest's folder, and the folders of the declared outputs and of ``.dagrun/``
-- each one non-recursively.  A change is relevant when it touches the
manifest, a source file, or adds or removes a visible file in a folder a glob
read.  Declared outputs and ``.dagrun/`` never are, so a build cannot trigger
itself.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass

from . import globs
from .graph import BuildGraph
from .state import STATE_DIR

ChangeSet = Set[tuple[int, str]]  # (Change value, absolute path), as watchfiles yields them

# names that editors and tools write beside real files (watchfiles' DefaultFilter, plus vim's probe)
_SCRATCH = re.compile(r"^\.|~$|\.sw.$|\.tmp$|^4913$|^#.*#$|\.py[cod]$|^flycheck_|\.___jb_...___$")


class Change(enum.IntEnum):
    """The kinds of change watchfiles reports (same values as ``watchfiles.Change``)."""

    LOST = 0  # the watcher may have missed changes (inotify's queue overflowed): check everything
    ADDED = 1
    MODIFIED = 2
    DELETED = 3


class Kind(enum.Enum):
    """Why a change is relevant."""

    MANIFEST = "manifest"
    INPUT = "input"
    LISTING = "listing"  # a file that a glob matches appeared or went away
    FOLDER = "folder"  # a folder that is watched, or would be, appeared or went away
    LOST = "lost"  # changes may have been missed: the next build checks everything
    OUTPUT = "output"  # a declared output: never a trigger; if not the build's own write, the
    # next build checks everything


@dataclass(frozen=True, slots=True)
class WatchSet:
    """What one graph makes worth watching, and the test of whether a change matters."""

    root: str
    manifest: str
    files: frozenset[str]  # absolute source inputs of the selected tasks
    listed: frozenset[str]  # absolute folders whose listing a glob depends on
    missing: frozenset[str]  # folders that would matter but do not exist (yet)
    outputs: frozenset[str]  # absolute declared outputs: never a trigger
    folders: tuple[str, ...]  # what to watch, non-recursively; all exist
    globs: tuple[re.Pattern[str], ...] = ()  # absolute-path regexes of the glob patterns
    glob_dirs: tuple[re.Pattern[str], ...] = ()  # ... and of the folders those globs read
    # folders of outputs (and the state folder) that did not exist: watched once they do
    pending: frozenset[str] = frozenset()

    def classify(self, change: int, path: str) -> Kind | None:
        if change == Change.LOST:
            return Kind.LOST
        path = os.path.normpath(path)
        if path == self.manifest:
            return Kind.MANIFEST
        state = os.path.join(self.root, STATE_DIR)
        if path == state or path.startswith(state + os.sep):
            return None
        if path in self.outputs:
            return Kind.OUTPUT
        if path in self.files:
            return Kind.INPUT
        if change == Change.MODIFIED:
            return None
        if path in self.listed or any(m == path or m.startswith(path + os.sep)
                                      for m in self.missing):
            return Kind.FOLDER  # a folder a glob reads, or one on the way to it
        folder, name = os.path.split(path)
        if folder not in self.listed or _SCRATCH.search(name):
            return None
        if any(g.match(path) for g in self.globs):
            return Kind.LISTING
        if change == Change.ADDED and os.path.isdir(path):
            if any(d.match(path) for d in self.glob_dirs):
                return Kind.FOLDER  # a new folder that a ** glob will read
        return None

    def describe(self) -> str:
        return f"{len(self.files)} input file(s) in {len(self.folders)} folder(s)"


def watch_set(
    graph: BuildGraph,
    selected: Iterable[int],
    manifest: str,
    extra_globs: Iterable[str] = (),
    found: Mapping[str, tuple[str, ...]] | None = None,
) -> WatchSet:
    """The WatchSet of the selected tasks (and the manifest) of ``graph``.

    ``extra_globs`` are more root-relative patterns whose matches matter
    (the manifest's matrix globs: a new match is a new task); ``found``: the files
    each task's depfile listed (task name -> paths), inputs too.
    """
    root = os.path.normpath(graph.root)
    selected = list(selected)
    files = {os.path.normpath(os.path.join(root, p)) for i in selected for p in graph.sources[i]}
    for i in selected:
        for p in (found or {}).get(graph.specs[i].name, ()):
            files.add(os.path.normpath(os.path.join(root, p)))
    listed = {os.path.normpath(p) for p in graph.scanned}
    outputs = {os.path.normpath(os.path.join(root, p)) for p in graph.producers}
    patterns = [p for i in selected for p in graph.specs[i].inputs
                if globs.has_magic(p) and not p.startswith("!")]
    patterns += list(extra_globs)
    ws = _make_set(root, os.path.normpath(manifest), files, listed, outputs,
                   {os.path.join(root, STATE_DIR)})
    absolute = sorted({os.path.normpath(os.path.join(root, p)) for p in patterns})
    return dataclasses.replace(
        ws,
        globs=tuple(globs.translate(p) for p in absolute),
        glob_dirs=tuple(globs.translate(os.path.dirname(p)) for p in absolute),
    )


def matrix_globs(manifest: str) -> list[str]:
    """The manifest's matrix ``{ glob = ... }`` patterns, relative to its folder, or []."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        with open(manifest, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, ValueError):
        return []
    tasks = doc.get("tasks")
    found = []
    for body in tasks.values() if isinstance(tasks, dict) else ():
        matrix = body.get("matrix") if isinstance(body, dict) else None
        cwd = body.get("cwd", ".") if isinstance(body, dict) else "."
        for values in matrix.values() if isinstance(matrix, dict) else ():
            if isinstance(values, dict) and isinstance(values.get("glob"), str):
                found.append(os.path.join(cwd if isinstance(cwd, str) else ".", values["glob"]))
    return found


def manifest_set(manifest: str) -> WatchSet:
    """Only the manifest: what is left to watch while it cannot be loaded at all."""
    manifest = os.path.normpath(os.path.abspath(manifest))
    return _make_set(os.path.dirname(manifest), manifest, set(), set(), set())


def _make_set(
    root: str, manifest: str, files: set[str], listed: set[str], outputs: set[str],
    more: Iterable[str] = (),
) -> WatchSet:
    """Watch the folders of the manifest, the files and the globs (``missing``: those that
    do not exist yet), and those of the outputs and ``more`` that exist (``pending``: the others;
    the build makes them, which is no change to report)."""
    wanted = {os.path.dirname(manifest)} | {os.path.dirname(f) for f in files} | listed
    missing = {f for f in wanted if not os.path.isdir(f)}
    quiet = ({os.path.dirname(f) for f in outputs} | set(more)) - wanted
    pending = {f for f in quiet if not os.path.isdir(f)}
    folders = sorted({_existing(f) for f in wanted} | (quiet - pending))
    return WatchSet(
        root, manifest, frozenset(files), frozenset(listed), frozenset(missing),
        frozenset(outputs), tuple(folders), pending=frozenset(pending),
    )


def _existing(folder: str) -> str:
    """``folder`` or its nearest ancestor that exists."""
    while not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


class Feed:
    """One watcher thread: the change sets ``changes(stop)`` yields, handed to ``sink`` as they
    come, until ``close``; ``dagrun watch`` and the build server each keep one."""

    def __init__(self, changes: Callable[[threading.Event], Iterable[ChangeSet]],
                 sink: Callable[[ChangeSet], None], name: str) -> None:
        self.stop = threading.Event()
        self.ready = threading.Event()  # set once the watches are in place (the first yield)
        self.failed: str | None = None
        self._changes = changes
        self._sink = sink
        self.thread = threading.Thread(target=self._pump, name=name, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        try:
            for changes in self._changes(self.stop):
                self.ready.set()
                if changes:
                    self._sink(changes)
        except Exception as exc:  # a folder vanished under the watcher, inotify limits, ...
            self.failed = f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()

    @property
    def broken(self) -> bool:
        return self.failed is not None or (not self.thread.is_alive() and not self.stop.is_set())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2.0)
