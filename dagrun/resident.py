"""A Session kept in memory between builds, told by inotify what changed: the server's machinery.

``dagrun watch`` (watch.py) holds a Session across its rounds and tells each
build which paths changed (``Session.build(changed=...)``), so the build
re-keys and decides only what those paths reach.  ``Resident`` is that
machinery without the loop, for a caller that builds on request (the build
server, server.py): before each build ``changes(request)`` answers the
root-relative paths that changed since the last build, or None -- check
everything -- and ``finished(ok)`` marks the end of a build.  It uses watch's
``WatchSet`` (what to watch and what a change means) over every task of the
graph, and inotify.py for the events.

Any doubt is a full check (None), and a doubt about the state on disk is a new
Session, read from disk as an in-process build reads it:

- the first build; a build that did not succeed; other targets, working
  folder or ``NAME=value`` words than the last build's (the proof is of a
  selection);
- a lost event (the kernel's queue overflowed: ``IN_Q_OVERFLOW``), a watcher
  that failed (a watch limit reached, a watched folder gone) or that had to
  move (the watched folders changed: events in a new one were not seen);
- a watched folder on a file system that does not deliver events for every
  change (NFS, FUSE, 9p, CIFS, ...: ``statfs`` type, ``untrusted``), or a source
  that is a symlink or has other hard links (its edits may come through a
  folder nobody watches: ``linked``): then every build checks everything;
- a change of the manifest, of a folder a glob reads, of a declared output
  that the build did not write (after the build's end mark);
- the state files (log, cache, its journal, the proof) are not as the last
  build through this Session left them: another dagrun built, cleaned or
  touched beside the server -> a new Session.

The Session itself checks the rest as it does for watch: ``key_env`` values
(the keys are computed again when they differ) and, under the build lock,
that the proof it built from is still the state's (``state.proof.stamp``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from . import inotify
from .errors import DagrunError
from .graph import BuildGraph
from .hashing import key_env_names
from .plan import Plan
from .session import Session
from .state import STATE_DIR, proof
from .watchset import (
    Change,
    ChangeSet,
    Feed,
    Kind,
    WatchSet,
    manifest_set,
    matrix_globs,
    watch_set,
)

SYNC = "server-sync"  # in the state folder: touched after each build (Resident.finished)
COOKIE = "server-cookie."  # + a number: made before each answer; once any event of it is read,
# so is every event before it (a new name each time: one touch may make several events)
_CATCH_UP = 2.0  # seconds the watcher may take to read up to the cookie; then: doubt

# statfs f_type of file systems whose changes may come from elsewhere without an inotify event
NO_EVENTS = {
    0x6969: "nfs", 0x65735546: "fuse", 0x01021997: "9p", 0xFF534D42: "cifs",
    0xFE534D42: "smb2", 0x517B: "smb", 0x00C36400: "ceph", 0x5346414F: "afs",
    0x73757245: "coda", 0x01161970: "gfs2", 0x7461636F: "ocfs2", 0x0BD00BD0: "lustre",
    0x47504653: "gpfs", 0x564C: "ncp", 0x6B414653: "kafs",
}
_TICK_MS = 1000  # an idle watcher wakes this often (the server's idle CPU)
_TEST_FS = "DAGRUN_TEST_NO_EVENTS"  # tests: folders under this path count as such a mount


def fs_type(folder: str) -> int | None:
    """``statfs(folder).f_type``, or None where it cannot be read."""
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type is its first word
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.statfs(os.fsencode(folder), buf) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return int(ctypes.c_long.from_buffer(buf).value) & 0xFFFFFFFF


def untrusted(folders: Iterable[str]) -> str | None:
    """A folder (and its file system) whose changes inotify may not report, or None."""
    fake = os.environ.get(_TEST_FS)
    for folder in folders:
        if fake and (folder == fake or folder.startswith(fake.rstrip("/") + "/")):
            return f"{folder} (test)"
        kind = fs_type(folder)
        if kind in NO_EVENTS:
            return f"{folder} ({NO_EVENTS[kind]})"
    return None


def linked(files: Iterable[str]) -> str | None:
    """A source whose edits its folder's watch may not see: a symlink (the file it points to
    is elsewhere) or a file with other hard links (written through another folder)."""
    for path in files:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if (st.st_mode & 0o170000) == 0o120000:
            return f"{path} (a symbolic link)"
        if st.st_nlink > 1 and (st.st_mode & 0o170000) == 0o100000:
            return f"{path} (a file with {st.st_nlink} hard links)"
    return None


class _Marks(Collection[str]):
    """inotify.watch's ``marks``: the sync file, and every cookie (a prefix)."""

    def __init__(self, sync: str, cookie: str) -> None:
        self.sync, self.cookie = sync, cookie

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and (path == self.sync or path.startswith(self.cookie))

    def __iter__(self) -> Iterator[str]:
        return iter((self.sync,))

    def __len__(self) -> int:
        return 1


class ResidentSession(Session):
    """A Session whose next build starts from what its Resident found changed (``changed``)."""

    changed: Collection[str] | None = None

    def build(self, targets: Iterable[str] | None = None, **kw: Any) -> Any:
        if kw.get("changed") is None:
            kw["changed"] = self.changed
        self.changed = None
        return super().build(targets, **kw)


class _Feed(Feed):
    """The server's watcher thread: inotify change sets of ``folders``, ready once armed."""

    def __init__(self, folders: Sequence[str], marks: Collection[str],
                 sink: Callable[[ChangeSet], None]) -> None:
        self.folders = tuple(folders)
        super().__init__(
            lambda stop: inotify.watch(self.folders, stop, marks=marks, tick_ms=_TICK_MS),
            sink, "dagrun-resident",
        )
        self.ready.wait(timeout=10.0)


class Resident:
    """One manifest's Session, kept between builds, and the changes seen since the last one."""

    def __init__(self, manifest_path: str, on_doubt: Callable[[str], None] | None = None) -> None:
        self.manifest_path = os.path.abspath(manifest_path)
        self.root = os.path.dirname(self.manifest_path)
        self.state_dir = os.path.join(self.root, STATE_DIR)
        self.on_doubt = on_doubt  # told why a build checks everything (the server's log)
        self.session = self._new_session()
        self.builds = 0
        self._lock = threading.Lock()  # the feed thread adds, the builder takes
        self._changed: set[str] = set()
        self._doubt: str | None = "the first build"
        self._owned: frozenset[str] = frozenset()  # outputs the build may write, until SYNC
        self._ws: WatchSet = manifest_set(self.manifest_path)
        self._untrusted: str | None = None
        self._feed: _Feed | None = None
        self._graph: BuildGraph | None = None
        self._request: Any = None  # what the last build was asked (targets, cwd, ...)
        self._left: tuple[int, ...] | None = None  # the state files as the last build left them
        self._noop: tuple[Any, dict[str, str | None], int] | None = None  # see noop()
        self._selected = 0  # the last plan's selected tasks
        self._always = False  # ... and whether one of them is ``always``
        self._always_in: tuple[BuildGraph, bool] | None = None  # whether any task of a graph is
        self._seen = threading.Condition()  # the cookies the watcher read (_catch_up)
        self._sent = self._cookies = 0
        self._linked: str | None = None  # a source that is a symlink or a hard link
        self._made: tuple[BuildGraph, dict[str, tuple[str, ...]], WatchSet] | None = None
        self._matrix: tuple[tuple[int, ...], list[str]] = ((), [])
        with contextlib.suppress(OSError):  # cookies a killed server left
            for name in os.listdir(self.state_dir):
                if name.startswith(COOKIE):
                    os.unlink(os.path.join(self.state_dir, name))
        try:
            self._graph = self.session.load_graph()  # watch what it reads from the start
        except DagrunError:
            pass  # the first build reports it
        self._watch()

    def _new_session(self) -> ResidentSession:
        return ResidentSession(manifest_path=self.manifest_path, on_plan=self._on_plan,
                               cwd=self.root)

    @property
    def folders(self) -> tuple[str, ...]:
        return self._ws.folders

    # ------------------------------------------------------------ before and after a build

    def changes(self, request: Any) -> Collection[str] | None:
        """What changed since the last build (root-relative paths), or None: check everything.
        ``request`` is what the build is asked, compared with the last one's."""
        caught_up = self._catch_up()
        with self._lock:
            changed, doubt = self._changed, self._doubt
            self._changed, self._doubt = set(), None
        if doubt is None and not caught_up:
            doubt = f"the file watcher did not catch up within {_CATCH_UP:g} s"
        if self._state_id() != self._left:
            why = "the state in .dagrun changed (another dagrun built or cleaned)"
            doubt = why if doubt is None or self._left is None else f"{doubt}; {why}"
            self.session = self._new_session()
        elif doubt is None and self._feed is not None and self._feed.broken:
            doubt = f"the file watcher failed ({self._feed.failed or 'stopped'})"
        elif doubt is None and self._untrusted:
            doubt = f"{self._untrusted} is on a file system that does not report every change"
        elif doubt is None and request != self._request:
            doubt = "other targets than the last build's"
        self._request = request
        if doubt is not None:
            if self.on_doubt is not None:
                self.on_doubt(doubt)
            return None
        return changed

    def _catch_up(self) -> bool:
        """Wait until the watcher has read every event that happened before now: touch the
        cookie and wait for its event (the kernel queues events in order).  An edit saved just
        before the build is then always among the changes, however late the thread runs."""
        feed = self._feed
        if feed is None or feed.broken:
            return False
        self._sent += 1
        target = self._sent
        path = os.path.join(self.state_dir, f"{COOKIE}{target}")
        if not _touch(path):
            return False
        try:
            with self._seen:
                return self._seen.wait_for(lambda: self._cookies >= target or feed.broken,
                                           timeout=_CATCH_UP) and not feed.broken
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def finished(self, ok: bool, plain: Any = None,
                 environ: Mapping[str, str] | None = None) -> None:
        """After a build through ``session``: mark its end among the events, note the state it
        left, and watch what its graph reads now.  ``plain``: the request, when it was a plain
        build (entry.plain_build) whose success leaves a no-op for the same request next."""
        self.builds += 1
        self._noop = None
        graph = self._graph
        if ok and plain is not None and graph is not None and not self.session.warnings:
            if not self._always:
                self._noop = (plain, self._key_env(graph, environ or {}), self._selected)
        if not _touch(os.path.join(self.state_dir, SYNC)):
            self._set_doubt("the build's end could not be marked")
        if not ok:
            self._set_doubt("the last build did not succeed")
        self._left = self._state_id()
        self._watch()

    def noop(self, request: Any, changed: Collection[str] | None,
             environ: Mapping[str, str]) -> int | None:
        """The number of tasks up to date when the build ``request`` (as ``changes`` was told)
        has provably nothing to do: the last build was the same plain build and succeeded
        without warnings and without ``always`` tasks, nothing changed since (``changed`` is
        empty: no event, no doubt, the state files as it left them) and the ``key_env`` values
        are the same.  Else None: the build decides.  The caller holds the build lock."""
        if changed is None or changed or self._noop is None or self._graph is None:
            return None
        plain, kenv, count = self._noop
        if plain != request or self._key_env(self._graph, environ) != kenv:
            return None
        return count

    @staticmethod
    def _key_env(graph: BuildGraph, environ: Mapping[str, str]) -> dict[str, str | None]:
        return {name: environ.get(name) for name in key_env_names(graph)}

    def forget(self) -> None:
        """A build ran beside ``session`` (another Session of this process): start over."""
        self._set_doubt("a build ran without the resident session")

    def close(self) -> None:
        if self._feed is not None:
            self._feed.close()
            self._feed = None

    # ------------------------------------------------------------ what to watch

    def _on_plan(self, graph: BuildGraph, plan: Plan) -> None:
        self._graph = graph
        specs, root = graph.specs, self.root
        self._selected = len(plan.selected)
        if self._always_in is None or self._always_in[0] is not graph:  # once per graph
            self._always_in = (graph, any(spec.always for spec in specs))
        self._always = self._always_in[1] and any(specs[i].always for i in plan.selected)
        self._owned = frozenset(
            os.path.normpath(os.path.join(root, o)) for i in plan.to_run for o in specs[i].outputs
        )

    def _watch(self) -> None:
        """Watch what the graph in hand reads (every task); a new watcher means doubt."""
        graph, found = self._graph, self.session.found
        if graph is not None and self._made is not None and self._made[:2] == (graph, found):
            ws = self._made[2]  # the same graph reads the same files
        elif graph is not None:
            ws = watch_set(graph, range(len(graph.specs)), self.manifest_path,
                           self._matrix_globs(), found)
            self._made = (graph, dict(found), ws)
            self._linked = linked(ws.files)
        else:
            ws = manifest_set(self.manifest_path)
        if self.state_dir not in ws.folders and os.path.isdir(self.state_dir):
            ws = dataclasses.replace(ws, folders=tuple(sorted({*ws.folders, self.state_dir})))
        feed = self._feed
        self._ws = ws
        if feed is not None and not feed.broken and feed.folders == ws.folders:
            return
        self._untrusted = untrusted(ws.folders) or self._linked
        marks = _Marks(os.path.join(self.state_dir, SYNC), os.path.join(self.state_dir, COOKIE))
        new = _Feed(ws.folders, marks, self._sink)
        self._feed = new
        if feed is not None:
            feed.close()
            broken = feed.failed or ("stopped" if feed.broken else None)
            why = f"the file watcher failed ({broken})" if broken else "the watched folders changed"
            self._set_doubt(why)

    def _matrix_globs(self) -> list[str]:
        """watch.matrix_globs() of the manifest, read again only when the file changed."""
        try:
            st = os.stat(self.manifest_path)
        except OSError:
            return []
        stamp = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
        if self._matrix[0] != stamp:
            self._matrix = (stamp, matrix_globs(self.manifest_path))
        return self._matrix[1]

    def _sink(self, changes: ChangeSet) -> None:
        """In the feed thread: note the relevant changes, or the doubt they cast."""
        ws, mark = self._ws, os.path.join(self.state_dir, SYNC)
        cookie = os.path.join(self.state_dir, COOKIE)
        doubt = None
        paths = []
        synced, baked = False, 0
        for change, path in changes:
            if path == mark:
                synced = True
                continue
            if path.startswith(cookie):
                number = path[len(cookie):]
                baked = max(baked, int(number) if number.isdigit() else 0)
                continue
            kind = ws.classify(change, path)
            if kind is Kind.INPUT:
                paths.append(os.path.relpath(os.path.normpath(path), self.root))
            elif kind is Kind.OUTPUT:
                if os.path.normpath(path) not in self._owned:
                    doubt = doubt or f"{path}: a declared output changed outside the build"
            elif kind is Kind.LOST or change == Change.LOST:
                doubt = "the kernel dropped file events (its queue overflowed)"
            elif kind is not None:
                doubt = doubt or f"{path}: {kind.value} changed"
        with self._lock:
            self._changed.update(paths)
            if doubt is not None and self._doubt is None:
                self._doubt = doubt
        if synced:
            self._owned = frozenset()
        if baked:  # every event before that cookie is noted: wake the build that waits
            with self._seen:
                self._cookies = max(self._cookies, baked)
                self._seen.notify_all()

    def _set_doubt(self, why: str) -> None:
        with self._lock:
            if self._doubt is None:
                self._doubt = why

    def _state_id(self) -> tuple[int, ...]:
        """The identity of the log, the cache, its journal and the proof now."""
        found: list[int] = []
        for name in ("log", "cache", "cache.journal", proof.FILE):
            try:
                st = os.stat(os.path.join(self.state_dir, name))
                found += (st.st_ino, st.st_mtime_ns, st.st_size)
            except OSError:
                found += (-1, -1, -1)
        return tuple(found)


def _touch(path: str) -> bool:
    """Make an inotify event on ``path`` (its mtime; created if missing); False if it cannot."""
    try:
        os.utime(path)
    except FileNotFoundError:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError:
            return False
    except OSError:
        return False
    return True
