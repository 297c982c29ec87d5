"""``dagrun watch``: change sets -> rebuilds; ignores dagrun's own outputs; stops on an Event.

The loop, stated once:

    build; then forever: wait for a relevant change, let the burst settle
    (no new change for ``debounce`` ms), print a header, rebuild what is out of date.

What is watched, and which changes matter: dagrun/watchset.py.

What each build is told: after a round that succeeded, when the next one is
caused by source files alone, the build gets their paths (``changed=``) and
may recheck only what reads them.  It gets None (check everything) for the
first round, after a failed or cancelled one, when the manifest or a listing
changed, when the watches moved (a watcher restarted: changes may have been
missed), when the kernel dropped events, or when an output changed that the
build did not write: the build touches ``.dagrun/watch-sync`` when it ends,
and inotify yields what came before that mark apart from what came after.

When a round that succeeded moves the watches to folders not watched before
(the build made them, a depfile named a file there), a change made there before
the new watches were armed raised no event: once they are armed, the no-op
proof the build wrote (state/proof.py) is checked, and a source in those
folders that differs from it makes a round as if it had been seen.  Without a
proof to check (an ``always`` task, targets from a subfolder, ...) one round
checks everything; a round made so does not make another (no loop).  A watcher
that dies (its folder went away, an inotify limit) is started again, and what
changed while none ran raised no event either: after a round that succeeded,
one round checks everything.

Seams: file changes come from ``watch_fn(folders, stop) -> iterable of change
sets`` (on Linux ``inotify.watch``, no polling; else ``watch_folders`` on
watchfiles, whose unordered sets never let a round be told ``changed=``; a
list and an Event in unit tests).  An empty change set is a tick that says
"watching now".  Watchers run in threads and feed a queue; builds run in the
caller's thread, so Ctrl-C reaches the scheduler, which kills every running
task's process group.  With
``restart``, a relevant change during a build cancels it (the executor's
``wait`` gives up as Ctrl-C would) and the next round starts at once.
"""

from __future__ import annotations

import gc
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from . import interrupts
from .errors import DagrunError, Interrupted
from .events import Event, TaskStarted
from .graph import BuildGraph
from .plan import Plan
from .scheduler import BuildResult, Reporter, StopFlag
from .session import Session
from .state import STATE_DIR
from .state.proof import Delta, examine
from .watchset import (  # noqa: F401  # also dagrun.watch's names, as before watchset.py
    Change,
    ChangeSet,
    Feed,
    Kind,
    WatchSet,
    manifest_set,
    matrix_globs,
    watch_set,
)

WatchFn = Callable[[Sequence[str], threading.Event], Iterable[ChangeSet]]

EXIT_IDLE, EXIT_INTERRUPTED = 0, 130
_TICK_MS = 100  # the watcher yields an empty set this often; the first one means "ready"
_POLL = 0.05  # how often a waiting build or idle loop looks at the stop/restart events
_SHOWN = 5  # names listed in a round header before "and N more"
_SYNC = "watch-sync"  # in the state folder: touched after each build (Watcher._sync)
_RESTARTING = frozenset({Kind.MANIFEST, Kind.INPUT, Kind.LISTING, Kind.LOST})  # not a folder alone
_LOST_PATH = "*"  # how a Kind.LOST change is named among the changed paths
_GAP_PATH = "?"  # ... and the doubt cast by watches that moved (Watcher._gap) or a watcher that
# died and was started again (_next_batch): also Kind.LOST


def watch_folders(
    folders: Sequence[str], stop: threading.Event, *, step_ms: int = 50, debounce_ms: int = 1600
) -> Iterator[ChangeSet]:
    """Change sets from watchfiles (inotify) in ``folders``, non-recursive, until ``stop`` is set.

    Yields an empty set every ``_TICK_MS`` ms without changes: the first one
    tells the caller the watches are in place.
    """
    import watchfiles

    for changes in watchfiles.watch(
        *folders, watch_filter=None, debounce=debounce_ms, step=step_ms, stop_event=stop,
        rust_timeout=_TICK_MS, yield_on_timeout=True, recursive=False, raise_interrupt=False,
    ):
        yield {(int(c), p) for c, p in changes}


@dataclass(frozen=True, slots=True)
class Round:
    """One build of the watch loop, as the caller (or a test) sees it."""

    number: int
    changed: tuple[str, ...]  # paths relative to the manifest folder; () for the first build;
    # "*": events were lost; "?": the watches moved and there was no proof to check (_gap)
    to_run: tuple[str, ...]  # what the plan said would run
    result: BuildResult | None  # None when the build could not start or was interrupted
    error: str | None = None  # the manifest (or other dagrun) error that stopped it
    restarted: bool = False  # cancelled by a change (--restart)
    delta: tuple[str, ...] | None = None  # the paths the build was told changed; None: all checked


class _Feed(Feed):
    """The watcher thread of one watch set (``ws``, and its folders' inodes when it started)."""

    def __init__(self, watch_fn: WatchFn, ws: WatchSet, sink: Callable[[ChangeSet], None]) -> None:
        self.ws = ws
        self.inodes = _inodes(ws.folders)
        super().__init__(lambda stop: watch_fn(ws.folders, stop), sink, "dagrun-watch")


def _new_folders(before: _Feed, after: _Feed) -> set[str]:
    """The folders ``after`` watches that ``before`` did not (or that are other folders now)."""
    was = dict(zip(before.ws.folders, before.inodes, strict=True))
    return {f for f, ino in zip(after.ws.folders, after.inodes, strict=True) if was.get(f) != ino}


def _inodes(folders: Sequence[str]) -> tuple[int, ...]:
    out = []
    for f in folders:
        try:
            out.append(os.stat(f).st_ino)
        except OSError:
            out.append(-1)
    return tuple(out)


class Watcher:
    """Builds ``targets`` of one manifest, then rebuilds as their inputs change.

    ``run(stop)`` returns 0 once ``stop`` is set (or Ctrl-C comes) while idle,
    130 when that happens during a build.  ``on_round`` is told of each round.
    """

    def __init__(
        self,
        manifest_path: str,
        targets: Sequence[str] = (),
        *,
        jobs: int | None = None,
        restart: bool = False,
        debounce_ms: int | None = None,
        progress: str = "auto",
        out: IO[str] | None = None,
        err: IO[str] | None = None,
        watch_fn: WatchFn | None = None,
        reporter_factory: Callable[[], Reporter] | None = None,
        on_round: Callable[[Round], None] | None = None,
    ) -> None:
        self.targets = list(targets)
        self.jobs = jobs
        self.restart = restart
        self.debounce_ms = debounce_ms
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.on_round = on_round
        self.rounds = 0
        self._watch_fn = watch_fn
        self._reporter_factory = reporter_factory or self._console_reporter(progress)
        self._cancel = StopFlag()  # set by a change with --restart: the build stops at once
        self.session = Session(
            manifest_path=manifest_path, on_wait=self._say, on_plan=self._on_plan,
            stops=(self._cancel,), cwd=os.getcwd(),  # target paths: from the current folder
        )
        self._init_watching(manifest_path)

    def _init_watching(self, manifest_path: str) -> None:
        """What the watcher knows between rounds: the graph, the watches, the changes queued."""
        self._ws = manifest_set(manifest_path)
        self._graph: BuildGraph | None = None
        self._retired: BuildGraph | None = None  # the previous round's graph, until this one ends
        self._feeds: list[_Feed] = []
        self._queue: queue.Queue[ChangeSet] = queue.Queue()
        self._stop: threading.Event = threading.Event()
        self._building = False
        self._planned: tuple[str, ...] | None = None
        self._maybe = 0  # tasks the plan may run (below a restat task), not counted in it
        self._changed: tuple[str, ...] = ()
        self._matrix: tuple[tuple[int, ...], list[str]] = ((), [])
        # the next build may be told exactly what changed (Session.build's changed=): only
        # after a build that succeeded, with the same watches, no events lost, no output touched
        self._exact = False
        self._succeeded = False  # the last round's build succeeded (checked when watches move)
        self._doubted = False  # the last round was made by such a doubt (_GAP_PATH)
        self._moved = False  # the watch set changed during this round
        self._outputs_changed = False  # an output changed that the build did not write
        self._owned: frozenset[str] = frozenset()  # outputs the build may write, until _SYNC
        self._ws_cache: tuple[dict[str, tuple[str, ...]], WatchSet] | None = None
        self._lag_ms = 0  # how late the watcher reports a change (watchfiles: one step)
        # the watcher yields what came before the build's end mark (_SYNC) apart from what came
        # after (inotify, the test seam); watchfiles does not, so no round is ever exact with it
        self._ordered = True

    # ------------------------------------------------------------ the loop

    def run(self, stop: threading.Event | None = None) -> int:
        """Watch until ``stop`` is set; a StopFlag also stops a running build at once."""
        self._stop = stop if stop is not None else threading.Event()
        stops = (self._cancel, stop) if isinstance(stop, StopFlag) else (self._cancel,)
        self.session.stops = stops
        with interrupts.raised():  # SIGTERM, SIGHUP stop it as Ctrl-C does (signals.py)
            try:
                return self._loop()
            except KeyboardInterrupt:
                self._say("stopped")
                return EXIT_INTERRUPTED if self._building else EXIT_IDLE
            finally:
                for feed in self._feeds:
                    feed.close()
                self._feeds = []

    def _loop(self) -> int:
        self._refresh(None)
        changed: dict[str, tuple[Kind, int]] | None = {}
        while changed is not None:
            if self._round(changed) is not None:
                return EXIT_INTERRUPTED
            before = self._feeds[0] if self._feeds else None
            self._refresh(self._graph if self._planned is not None else None)
            self._doubted = _GAP_PATH in changed  # this round was made by a doubt: cast no other
            missed = self._gap(before, doubted=self._doubted)
            self._say(f"watching {self._ws.describe()}; Ctrl-C to stop")
            changed = self._next_batch(missed)
        return EXIT_IDLE

    def _round(self, changed: dict[str, tuple[Kind, int]]) -> int | None:
        """One build.  Returns 130 if it was interrupted (not restarted), else None."""
        self.rounds += 1
        self._cancel.clear()
        self._planned = None
        self._changed = tuple(_describe(path, kind, ch) for path, (kind, ch) in changed.items())
        delta = self._delta(changed)
        if self.rounds > 1:
            self.out.write("\n")
        self._building = True
        collecting = gc.isenabled()
        try:
            built = self._build(delta, collecting)
        finally:
            if collecting:
                gc.enable()
            self._retired = None
            self._building = False
            self._warn()
            synced = self._sync()
        if built is None:
            return EXIT_INTERRUPTED
        result, error, restarted = built
        self._succeeded = result is not None and result.ok
        self._exact = synced and not self._moved and self._succeeded
        self.out.flush()
        if self.on_round is not None:
            planned = self._planned or ()
            self.on_round(
                Round(self.rounds, tuple(changed), planned, result, error, restarted, delta)
            )
        return None

    def _build(
        self, delta: tuple[str, ...] | None, collecting: bool
    ) -> tuple[BuildResult | None, str | None, bool] | None:
        """Run the round's build: (result, the error that stopped it, restarted), or None when it
        was interrupted.  ``collecting``: the garbage collector waits until a task started."""
        try:
            reporter = self._reporter_factory()
            if collecting:
                gc.disable()
                reporter = _CollectLater(reporter)
            result = self.session.build(
                self.targets, reporter=reporter, jobs=self.jobs, changed=delta
            )
        except KeyboardInterrupt:  # Ctrl-C before any task started
            return None
        except Interrupted:
            if not self._cancel.is_set() or self._stop.is_set():
                return None
            self._say("restarting: inputs changed during the build")
            return None, None, True
        except DagrunError as exc:
            if self._planned is None:
                self._header()
            self.err.write(f"dagrun: error: {exc}\n")
            self.err.flush()
            self._say("still watching; the next change retries")
            return None, str(exc), False
        return result, None, False

    def _delta(self, changed: dict[str, tuple[Kind, int]]) -> tuple[str, ...] | None:
        """What to tell the build changed: the paths, or None for "check everything"."""
        exact = self._exact and self._ordered and not self._outputs_changed
        exact = exact and all(kind is Kind.INPUT for kind, _ in changed.values())
        self._exact = self._outputs_changed = self._moved = False
        if not exact:
            self._ws_cache = None  # the graph may differ: work the watch set out again
        return tuple(changed) if exact else None

    def _sync(self) -> bool:
        """Mark the end of the build among the changes: outputs changed after the mark were
        not written by the build.  False if it cannot be marked."""
        try:
            with open(os.path.join(self.session.state_dir, _SYNC), "a"):
                return True
        except OSError:
            return False

    # ------------------------------------------------------------ waiting for changes

    def _next_batch(
        self, seed: dict[str, tuple[Kind, int]] | None = None
    ) -> dict[str, tuple[Kind, int]] | None:
        """The next burst of relevant changes once it settles (starting with ``seed``, changes
        known already); None when told to stop."""
        batch: dict[str, tuple[Kind, int]] = dict(seed or {})
        while not batch:
            changes = self._get(None)
            if changes is None:
                return None
            if not changes:  # a watcher died (its folder went away, ...): watch again
                self._refresh(None)
                self._stop.wait(0.5)  # do not spin if it keeps failing
                if self._succeeded and not self._doubted:  # what changed while no watcher ran
                    batch[_GAP_PATH] = (Kind.LOST, Change.LOST)  # raised no event: check all
            self._add(batch, changes)
        debounce = self._debounce()
        quiet = max(0, debounce - self._lag_ms) / 1000.0  # the watcher may have waited already
        hard_end = time.monotonic() + max(1.0, debounce / 100)  # a file that never stops changing
        quiet_end = time.monotonic() + quiet
        while (now := time.monotonic()) < min(quiet_end, hard_end):
            changes = self._get(min(quiet_end, hard_end) - now)
            if changes is None:
                return None
            if self._add(batch, changes):
                quiet_end = time.monotonic() + quiet
        return batch

    def _get(self, timeout: float | None) -> ChangeSet | None:
        """Queued changes; empty on timeout or a broken watcher; None once ``stop`` is set."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            if any(f.broken for f in self._feeds):
                return set()
            step = _POLL if end is None else min(_POLL, end - time.monotonic())
            if step <= 0:
                return set()
            try:
                return self._queue.get(timeout=step)
            except queue.Empty:
                continue
        return None

    def _add(self, batch: dict[str, tuple[Kind, int]], changes: ChangeSet) -> bool:
        """Put the relevant ``changes`` in ``batch`` (by path, latest last); True if any was."""
        ws = self._ws
        hits: list[tuple[str, Kind, int]] = []
        folders: list[tuple[str, int]] = []
        outputs: list[str] = []
        synced = False
        for change, path in sorted(changes, key=lambda c: c[1]):
            kind = ws.classify(change, path)
            if kind is Kind.FOLDER:
                folders.append((os.path.normpath(path), change))
            elif kind is Kind.OUTPUT:
                outputs.append(os.path.normpath(path))
            elif kind is Kind.LOST:
                hits.append((os.path.join(ws.root, _LOST_PATH), kind, change))
            elif kind is not None:
                hits.append((os.path.normpath(path), kind, change))
            elif path == os.path.join(ws.root, STATE_DIR, _SYNC):
                synced = True
        if any(p not in self._owned for p in outputs):
            self._outputs_changed = True
        if synced:
            self._owned = frozenset()  # outputs changed from now on were not the last build's
        if folders and self._folders_matter([p for p, _ in folders]):
            hits += [(p, Kind.FOLDER, c) for p, c in folders]
        for path, kind, change in hits:
            rel = os.path.relpath(path, ws.root)
            batch.pop(rel, None)
            batch[rel] = (kind, change)
        return bool(hits)

    def _folders_matter(self, paths: list[str]) -> bool:
        """Watch again after folders came or went; do they change what the tasks read?

        Builds create their outputs' folders: those only move the watches.
        """
        old = self._ws
        self._refresh(None)
        new = self._ws
        if new.files != old.files or new.outputs != old.outputs:
            return True
        return any(f.startswith(p + os.sep) for p in paths for f in new.files)

    def _gap(self, before: _Feed | None, doubted: bool) -> dict[str, tuple[Kind, int]]:
        """After a round that succeeded and moved the watches from ``before``: the changes the
        new watches may have missed, found against the build's no-op proof (module docstring).
        ``doubted``: the round was made by this doubt, which it does not cast again."""
        after = self._feeds[0] if self._feeds else None
        if not self._succeeded or before is None or after is None or after is before:
            return {}
        ws, new = self._ws, _new_folders(before, after)
        files = {f for f in ws.files - ws.outputs if os.path.dirname(f) in new}
        if not files and not new & ws.listed and not any(
                m.startswith(f + os.sep) for m in ws.missing for f in new):
            return {}  # only outputs' folders: changes there are no trigger (and _exact is off)
        found = self._examine()
        if isinstance(found, int) or (found is None and doubted):
            return {}
        if found is None:
            return {_GAP_PATH: (Kind.LOST, Change.LOST)}
        paths = sorted(p for p in (os.path.normpath(os.path.join(ws.root, s))
                                   for s in found.sources) if p in files)
        return {os.path.relpath(p, ws.root): (Kind.INPUT, Change.MODIFIED if os.path.lexists(p)
                                              else Change.DELETED) for p in paths}

    def _examine(self) -> int | Delta | None:
        """proof.examine of the last build (the tasks up to date, what changed since, or None
        when there is no proof to check: its targets are not the proof's from a subfolder)."""
        s = self.session
        if s.manifest_path is None or (self.targets and s.cwd != s.root):
            return None
        return examine(s.manifest_path, self.targets, s.environ)

    def _sink(self, changes: ChangeSet) -> None:
        """Runs in a watcher thread: queue the changes; with --restart, cancel the build."""
        self._queue.put(changes)
        if self.restart and self._building and not self._cancel.is_set():
            ws = self._ws
            if any(ws.classify(c, p) in _RESTARTING for c, p in changes):
                self._cancel.set()

    def _debounce(self) -> int:
        if self.debounce_ms is not None:
            return self.debounce_ms
        return self._graph.manifest.watch_debounce_ms if self._graph is not None else 200

    # ------------------------------------------------------------ what to watch

    def _refresh(self, graph: BuildGraph | None) -> None:
        """Recompute what to watch from ``graph`` (None: load it); move the watchers if needed."""
        try:
            if graph is None or any(os.path.isdir(p) for p in self._ws.pending):
                self._ws_cache = None
            if graph is None:
                graph = self.session.load_graph()
            ws = self._watch_set(graph, None)
            self._graph = graph
        except DagrunError:  # keep watching what we watched (at least the manifest)
            ws = self._ws
        self._ws = ws
        feed = self._feeds[0] if self._feeds else None
        if feed is not None and not feed.broken and (feed.ws is ws or (
                feed.ws.folders == ws.folders and feed.inodes == _inodes(ws.folders))):
            feed.ws = ws
            return
        self._start_feed(ws)

    def _watch_set(self, graph: BuildGraph, selected: Sequence[int] | None) -> WatchSet:
        """watch_set() of the selected tasks, worked out again only when it may differ: the
        graph was loaded anew (a manifest or listing change) or a depfile listed other files."""
        found = self.session.found
        if self._ws_cache is not None and self._ws_cache[0] == found:
            return self._ws_cache[1]
        if selected is None:
            selected = graph.select(self.targets)
        ws = watch_set(graph, selected, self._ws.manifest, self._matrix_globs(), found)
        old = self._ws
        if (ws.files, ws.outputs, ws.folders) != (old.files, old.outputs, old.folders):
            self._moved = True  # events on what it adds were not looked at
            self._exact = False
        self._ws_cache = (dict(found), ws)
        return ws

    def _matrix_globs(self) -> list[str]:
        """matrix_globs() of the manifest, read again only when the file changed."""
        try:
            st = os.stat(self._ws.manifest)
        except OSError:
            return []
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._matrix[0] != stamp:
            self._matrix = (stamp, matrix_globs(self._ws.manifest))
        return self._matrix[1]

    def _start_feed(self, ws: WatchSet) -> None:
        self._exact = False  # a new folder may have changed before it was watched
        new = _Feed(self._make_watch_fn(), ws, self._sink)
        if not new.ready.wait(timeout=5.0):
            self._say("warning: the file watcher is slow to start")
        if new.failed:
            self._say(f"warning: cannot watch {len(ws.folders)} folder(s): {new.failed}")
        for old in self._feeds:  # stopped only once the new one watches: nothing falls between
            old.close()
        self._feeds = [new]

    def _make_watch_fn(self) -> WatchFn:
        if self._watch_fn is not None:
            return self._watch_fn
        from . import inotify

        debounce = self._debounce()
        step = _step_ms(debounce)
        ordered = inotify.available()
        self._lag_ms = 0 if ordered else step
        self._ordered = ordered
        mark = os.path.join(self.session.state_dir, _SYNC)

        def real(folders: Sequence[str], stop: threading.Event) -> Iterator[ChangeSet]:
            if ordered:
                return inotify.watch(folders, stop, settle_ms=step, tick_ms=_TICK_MS, marks={mark})
            return watch_folders(folders, stop, step_ms=step, debounce_ms=max(step, debounce))

        return real

    # ------------------------------------------------------------ what the user sees

    def _on_plan(self, graph: BuildGraph, plan: Plan) -> None:
        self._retired = self._graph  # freed after the round: freeing 10k tasks takes ~2 ms
        self._graph = graph
        # judge changes made during the build by what it builds (its new outputs never count)
        self._ws = ws = self._watch_set(graph, plan.selected)
        specs, root = graph.specs, ws.root
        self._owned = frozenset(
            os.path.normpath(os.path.join(root, o)) for i in plan.to_run for o in specs[i].outputs
        )
        maybe = {i for i in plan.to_run if plan.reasons.get(i, ("",))[0].startswith("may run")}
        self._planned = tuple(graph.specs[i].name for i in plan.to_run if i not in maybe)
        self._maybe = len(maybe)
        self._header(len(plan.up_to_date))

    def _header(self, up_to_date: int = 0) -> None:
        when = time.strftime("%H:%M:%S")
        what = f"changed: {_names(self._changed)}" if self.rounds > 1 else "first build"
        names = self._planned
        if names is None:
            todo = "cannot build"
        elif names or self._maybe:
            todo = f"running {len(names)}: {_names(names)}" if names else "running 0"
            todo += f" ({self._maybe} more if their inputs change)" if self._maybe else ""
        else:
            todo = f"nothing to run ({up_to_date} up to date)"
        self.out.write(f"[{when}] {what} -> {todo}\n")
        self.out.flush()

    def _say(self, text: str) -> None:
        self.out.write(f"dagrun: {text}\n")
        self.out.flush()

    def _warn(self) -> None:
        for w in self.session.warnings:
            self.err.write(f"dagrun: warning: {w}\n")
        self.session.warnings.clear()

    def _console_reporter(self, progress: str) -> Callable[[], Reporter]:
        def make() -> Reporter:
            from .report import make_reporter

            reporter: Reporter = make_reporter(progress, stream=self.out)
            return reporter

        return make


class _CollectLater:
    """Passes events on; turns the garbage collector back on at the first event after a task
    started (so after it was spawned).  Planning a large graph allocates much, and automatic
    collections in the middle of it delayed the task the user waits for by 25-35 ms at 10k
    tasks; the round's garbage is collected once the tasks are on their way."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner
        self._started = False

    def handle(self, event: Event) -> None:
        if self._started:
            gc.enable()
        self._started = self._started or isinstance(event, TaskStarted)
        self.inner.handle(event)


def _step_ms(debounce_ms: int) -> int:
    """How long watchfiles waits for a quiet moment before it yields a change set."""
    return min(20, max(5, debounce_ms // 4))


def _describe(path: str, kind: Kind, change: int) -> str:
    if kind is Kind.LOST and path == _GAP_PATH:
        return "(files may have changed while the watches moved: checking everything)"
    if kind is Kind.LOST:
        return "(changes may have been missed: checking everything)"
    if kind is Kind.FOLDER:
        return f"{path}/ (new)" if change == Change.ADDED else f"{path}/ (removed)"
    if kind is Kind.LISTING:
        return f"{path} (new)" if change == Change.ADDED else f"{path} (removed)"
    return f"{path} (deleted)" if change == Change.DELETED else path


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    if len(names) > _SHOWN:
        shown += f" and {len(names) - _SHOWN} more"
    return shown
