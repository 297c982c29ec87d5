"""A task's inputs -> its dependencies (on their producers) and its hashed source files.

graph.compile asks ``Inputs.of_task`` once per task, in manifest order.
"""

from __future__ import annotations

import os
import re
import warnings

from . import globs
from .errors import ManifestError
from .records import Manifest, TaskSpec


class Inputs:
    """Turns a task's inputs into dependencies (on their producers) and hashed source files.

    An input produced by a task, or lying under a produced folder, is that task's
    dependency; a folder input stands for every file in its tree, and depends on
    every task that produces something inside it; a glob depends on every task
    with an output it matches or an output folder it could match files in.
    """

    def __init__(self, manifest: Manifest, producers: dict[str, int], scanned: dict[str, int],
                 dead: frozenset[str] = frozenset()) -> None:
        """``producers``: output -> task, grown by the outputs' real paths; ``scanned``: the
        folders read (-> stamp); ``dead``: files no glob or folder input matches."""
        self.manifest = manifest
        self.producers = producers
        self.scanned = scanned
        self.outputs = list(producers)
        self.prefix = manifest.root.rstrip("/") + "/"
        self.subdirs: dict[str, frozenset[str]] = {}  # folder -> its subfolders' names
        self.real_root = os.path.realpath(manifest.root)
        self.real_dirs: dict[str, str] = {}  # a folder an input names -> the one it leads to
        # for the task being compiled: each dependency's files, and every input in order
        self.via: dict[int, list[str]] = {}
        self.listed: dict[str, None] = {}
        self.dead = dead
        self.real_outputs()

    def of_task(self, i: int, found: dict[int, None]) -> dict[str, None]:
        """Task ``i``'s hashed source files, in its inputs' order; the tasks that produce its
        inputs join ``found`` (its dependencies so far), and ``listed`` holds every input."""
        explicit = set(found)
        srcs: dict[str, None] = {}
        self.via.clear()
        self.listed.clear()
        for pattern in self.manifest.tasks[i].inputs:
            if pattern.startswith("!"):
                self.exclude(self.real(pattern[1:]), found, explicit, srcs)
            elif globs.has_magic(pattern):
                self.glob(i, self.real(pattern), found, srcs)
            else:
                self.path(i, self.real(pattern), found, srcs)
        return srcs

    def real(self, pattern: str) -> str:
        """``pattern`` with a symlink to a folder inside the project, in its fixed part, replaced
        by that folder: ``src/gen/*.txt`` with ``src/gen -> ../gen`` reads ``gen/*.txt``, and
        so meets the task that writes ``gen/x.txt`` (one realpath per folder named)."""
        if pattern.startswith("/"):
            return pattern
        lit = globs.literal_prefix(pattern)
        if lit != pattern:
            folder = lit.rpartition("/")[0]  # the folders before the first wildcard
        elif self.is_dir(self.prefix + pattern):
            folder = pattern  # a folder input: it may be the link itself
        else:
            folder = pattern.rpartition("/")[0]
        if not folder:
            return pattern
        real = self.real_dirs.get(folder)
        if real is None:
            real = self.real_dirs[folder] = self._real_dir(folder)
        return pattern if real == folder else real + pattern[len(folder) :]

    def real_outputs(self) -> None:
        """Each output written through a symlinked folder is also known by the folder it leads
        to (``src/gen/x.txt`` as ``gen/x.txt``), so every spelling of an input meets it."""
        real_dirs = self.real_dirs
        for out, i in list(self.producers.items()):
            folder = out.rpartition("/")[0]
            if not folder or out.startswith("/"):
                continue
            real = real_dirs.get(folder)
            if real is None:
                real = real_dirs[folder] = self._real_dir(folder)
            if real != folder and self.producers.setdefault(real + out[len(folder) :], i) == i:
                self.outputs.append(real + out[len(folder) :])

    def _real_dir(self, folder: str) -> str:
        full = os.path.realpath(self.prefix + folder)
        base = self.real_root.rstrip("/") + "/"
        if full == base + folder or not full.startswith(base):
            return folder  # no link on the way, or one that leads out of the project
        return full[len(base) :]

    def need(self, producer: int, path: str, found: dict[int, None]) -> None:
        found[producer] = None
        self.via.setdefault(producer, []).append(path)

    def exclude(
        self, pattern: str, found: dict[int, None], explicit: set[int], srcs: dict[str, None]
    ) -> None:
        """``!pattern``: its matches (and what lies below them) leave the inputs before it."""
        rx = globs.translate(pattern)
        for files in (srcs, self.listed):
            for p in [p for p in files if _gone(rx, p)]:
                del files[p]
        for d, paths in self.via.items():
            paths[:] = [p for p in paths if not _gone(rx, p)]
            if not paths and d not in explicit:
                found.pop(d, None)

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` (absolute) is a folder: one listing per parent, not a stat per input."""
        parent, _, name = path.rpartition("/")
        names = self.subdirs.get(parent)
        if names is None:
            names = self.subdirs[parent] = _subdirs(parent or "/")
        return name in names or name in ("", ".", "..")

    def glob(self, i: int, pattern: str, found: dict[int, None], srcs: dict[str, None]) -> None:
        spec = self.manifest.tasks[i]
        rx = _glob_regex(self.manifest, spec, pattern)
        lit = globs.literal_prefix(pattern)  # a cheap first test of every output
        matches: set[str] = set()
        for out in self.outputs:
            if not out.startswith(lit) and not lit.startswith(out + "/"):
                continue
            if self.producers[out] != i and (rx.match(out) or globs.may_match_below(pattern, out)):
                self.need(self.producers[out], out, found)
                if rx.match(out):
                    matches.add(out)
        for path in globs.expand(pattern, self.manifest.root, self.scanned):
            if path in self.dead:
                continue
            if self.producer(path) is None:
                srcs[path] = None
            matches.add(path)
        self.listed.update(dict.fromkeys(sorted(matches)))

    def path(self, i: int, path: str, found: dict[int, None], srcs: dict[str, None]) -> None:
        self.listed[path] = None
        p = self.producer(path)
        if p is not None:
            if p == i:
                raise self._error(i, f"'{path}' is both an input and an output of this task")
            self.need(p, path, found)
            return
        if not self.is_dir(path if path.startswith("/") else self.prefix + path):
            srcs[path] = None
            return
        below = "" if path == "." else path + "/"
        for out in self.outputs:
            if out.startswith(below) and self.producers[out] != i:
                self.need(self.producers[out], out, found)
        for f in globs.tree(path, self.manifest.root, self.scanned):
            if self.producer(f) is None and f not in self.dead:
                srcs[f] = None

    def producer(self, path: str) -> int | None:
        """The task that outputs ``path`` or a folder it lies in, or None."""
        producers = self.producers
        p = producers.get(path)
        end = len(path)
        while p is None and end > 0:
            end = path.rfind("/", 0, end)
            if end <= 0:
                return None
            p = producers.get(path[:end])
        return p

    def _error(self, i: int, message: str) -> ManifestError:
        m = self.manifest
        spec = m.tasks[i]
        return ManifestError(
            message, source=m.source, task=spec.name, key="inputs", line=m.line_of(spec, "inputs")
        )


def _subdirs(folder: str) -> frozenset[str]:
    try:
        with os.scandir(folder) as it:
            return frozenset(e.name for e in it if e.is_dir())
    except (OSError, ValueError):
        return frozenset()


def _gone(rx: re.Pattern[str], path: str) -> bool:
    """Whether an input exclusion's regex matches ``path`` or a folder it lies in."""
    while path:
        if rx.match(path):
            return True
        path = path.rpartition("/")[0]
    return False


def _glob_regex(manifest: Manifest, spec: TaskSpec, pattern: str) -> re.Pattern[str]:
    """An input glob's regex; a glob ``re`` refuses (or warns about: ``[[``, ``&&``) is an error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            return globs.translate(pattern)
    except (re.error, FutureWarning) as exc:
        why = exc.msg if isinstance(exc, re.error) else str(exc)
        raise ManifestError(
            f"input '{pattern}' is not a valid glob ({why[:1].lower() + why[1:]})",
            source=manifest.source, task=spec.name, key="inputs",
            line=manifest.line_of(spec, "inputs"),
        ) from None
