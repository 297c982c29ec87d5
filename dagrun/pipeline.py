"""The plan pipeline: manifest (or the cached graph) -> graph -> keys -> plan, ready to run.

    manifest (or the state cache's compiled graph) -> BuildGraph     (``graph``)
    BuildGraph + StatCache -> keys          (hashing.Keys, only what changed)
    keys + CompletionLog + files -> Plan    (plan.make, through the Ledger's vouching)

``Planner.prepare`` runs it under the caller's lock and returns a ``Prepared``:
the graph, keys, log, plan, the ledger the build records through, and what the
keys came from (``Basis``, for the state cache).  With a ``Delta`` (the no-op
check's finding: what changed since the proof) it re-keys and decides only the
tasks the changes reach: a partial build.  Outputs of tasks gone from the
manifest are buried here (leftovers.py removes the untouched ones).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple

from . import cutoff, globs, leftovers, unchanged
from .errors import DagrunError, LogError, ManifestError
from .executors import local_pool
from .fs import FileSystem, LocalFileSystem
from .graph import BuildGraph, compile
from .hashing import Keys, StatCache, digest_bytes, key_env_names
from .ledger import Ledger, identities
from .manifest import Manifest, load
from .manifest import read as read_manifest
from .plan import Plan, make
from .pycall import results_view
from .state import STATE_DIR, proof
from .state.cache import Basis, StateCache
from .state.lock import StateLock
from .state.log import CompletionLog, Identity, LogIndex

if TYPE_CHECKING:
    from .numa import CorePool, Topology  # imported where a core pool is configured


@dataclass
class Prepared:
    """A graph with keys and a plan, ready to run (or to show)."""

    graph: BuildGraph
    keys: Keys
    log: CompletionLog
    plan: Plan
    pool: CorePool | None = None  # the local executor's core pool, when one is configured
    waits: Mapping[int, str] = field(default_factory=dict)  # pending task -> the task it waits on
    delta: proof.Delta | None = None  # a partial build: what changed since the proof
    decided: tuple[int, ...] = ()  # a partial build: the selected tasks it looked at
    ledger: Ledger | None = None  # what the build records (ledger.py)
    basis: Basis | None = None  # what the keys came from (the state cache's)


class Project(NamedTuple):
    """What a Session builds: a manifest file (or a Manifest object) and its surroundings."""

    manifest_path: str | None  # absolute
    manifest_name: str | None  # as the user named it (messages say dagrun.toml:4: ...)
    manifest: Manifest | None  # given as an object (api.py), else None
    root: str
    state_dir: str
    environ: Mapping[str, str]
    fs: FileSystem
    overrides: Mapping[str, str]  # [vars] from the command line
    cwd: str | None  # where the command ran: a target path is looked for there first

    @classmethod
    def of(
        cls, manifest_path: str | None, manifest: Manifest | None,
        environ: Mapping[str, str] | None, fs: FileSystem | None,
        overrides: Mapping[str, str] | None, cwd: str | None,
    ) -> Project:
        """Session's arguments checked, with their defaults."""
        if (manifest_path is None) == (manifest is None):
            raise ValueError("give exactly one of manifest_path and manifest")
        if overrides and manifest is not None:
            raise ValueError("overrides replace [vars] of a manifest file: give manifest_path")
        path = os.path.abspath(manifest_path) if manifest_path else None
        # messages name the manifest as the user did (dagrun.toml:4: ...), not by absolute path
        name = os.path.normpath(manifest_path) if manifest_path else None
        root = os.path.dirname(path) if path else manifest.root  # type: ignore[union-attr]
        return cls(
            path, name, manifest, root, os.path.join(root, STATE_DIR),
            environ if environ is not None else os.environ,
            fs if fs is not None else LocalFileSystem(root), dict(overrides or {}), cwd,
        )


class Request(NamedTuple):
    """One preparation: the targets, and how to decide."""

    targets: list[str]
    explain: bool
    delta: proof.Delta | None = None
    force: bool = False
    building: bool = False  # a build: dead outputs are removed, vouched records refreshed


class Planner:
    """Runs the pipeline for one Session, and keeps what its next build may start from: the
    graph in hand, its keys, and the index of which tasks read each source."""

    def __init__(
        self, project: Project, cache: StateCache, lock: StateLock, warnings: list[str],
        wall: Callable[[], float], on_wait: Callable[[str], None] | None = None,
        topology: Topology | None = None,
    ) -> None:
        self.project = project
        self.cache = cache
        self.lock = lock  # its ``read_only``: whether .dagrun can be written
        self.warnings = warnings
        self.wall = wall  # the clock's wall time (the log's records)
        self.on_wait = on_wait  # messages for the user (a dead output removed)
        self._topology = topology  # None: read this machine's when a core_pool needs it
        self.source: tuple[Any, ...] = ()  # what the graph in hand was made from (graph)
        self.manifest_stat: unchanged.StatKey | None = None  # its settled stat (_read_manifest)
        self._made: tuple[Any, BuildGraph | None] | None = None  # (cache["graph"], its graph)
        self._index: tuple[BuildGraph, dict[str, list[int]]] | None = None  # path -> readers
        self._again = False  # the graph in hand served a previous build of this session
        self._scanned: BuildGraph | None = None  # the graph the last partial build scanned
        self.keys_after: tuple[BuildGraph, list[str | None]] | None = None  # the last keys
        self.seed: tuple[BuildGraph, list[str | None]] | None = None  # those, for this build
        self._loaded: Manifest | None = None  # the manifest the graph in hand was compiled from
        self._excluded: frozenset[str] = frozenset()  # dead outputs no input matches (_bury)

    def identities(self, paths: Iterable[str]) -> dict[str, Identity | None]:
        return identities(self.project.fs, paths)

    # ------------------------------------------------------------ the pipeline

    def prepare(self, request: Request) -> Prepared:
        cached = self.cache.load()
        graph, reused = self.graph(cached)
        self.warnings.extend(graph.manifest.warnings)
        log = self.open_log(cached)
        if not reused and log.index.latest:
            graph = self._bury(graph, log, request.building)
        selected = graph.select(request.targets, self.project.cwd)
        forced = self._forced(graph, request, selected)
        keys, basis = self._keys(graph, cached, reused)
        keys.found = cutoff.found_in_log(graph, log)
        ledger = Ledger(graph, keys, log, self.project.fs, self.project.state_dir, self.wall)
        prep = Prepared(graph, keys, log, Plan((), (), (), {}), self.core_pool(graph),
                        ledger=ledger, basis=basis)
        delta = request.delta
        if delta is not None and basis.previous_keys() is not None and self.cache.journal_intact():
            part = self._partial(graph, keys, delta, selected)
            if part is not None:
                return self._plan(prep, request, selected, part, forced, delta)
        keys.compute(selected)
        others = [i for i in graph.order if keys.keys[i] is None]
        if others:  # keep every key current, so the cache never holds a stale one
            self._compute_quietly(keys, others)
        return self._plan(prep, request, selected, selected, forced, None)

    def _forced(self, graph: BuildGraph, request: Request, selected: list[int]) -> set[int]:
        """The tasks --force names: the targets', or every selected task without targets."""
        if not request.force:
            return set()
        targets = request.targets
        return set(graph.resolve(targets, self.project.cwd) if targets else selected)

    def _keys(
        self, graph: BuildGraph, cached: dict[str, Any] | None, reused: bool
    ) -> tuple[Keys, Basis]:
        """The keys (from the cache's stat entries, and its keys for the same graph and
        ``key_env``), and what they came from."""
        environ = self.project.environ
        stats = StatCache(self.project.fs, cached.get("stats") if cached else None)
        kenv = {n: environ.get(n) for n in key_env_names(graph)}
        basis = Basis(cached, reused, kenv, self.source)
        return Keys(graph, stats, environ, basis.previous_keys()), basis

    def _plan(
        self, prep: Prepared, request: Request, selected: list[int], decide: list[int],
        forced: set[int], delta: proof.Delta | None,
    ) -> Prepared:
        """The plan over ``decide`` (every selected task, or a partial build's few); the other
        selected tasks are up to date."""
        graph, keys, ledger = prep.graph, prep.keys, prep.ledger
        assert ledger is not None
        found = self.identities([o for i in decide for o in graph.specs[i].outputs])
        ledger.vouch(decide, found, refresh=request.building and self.lock.read_only is None)
        plan = make(
            graph,
            keys.keys,
            results_view(graph, keys.keys, prep.log, self.project.state_dir,
                         self._result_digest(keys)),
            found.get,
            decide,
            parts=keys.parts if request.explain else None,
            upstream_changed=ledger.upstream_changed,
            forced=forced,
        )
        if decide is not selected:
            full = len(selected) == len(graph.specs)  # then ``selected`` is ``graph.order``
            place = graph.position.__getitem__ if full else selected.index
            plan = Plan(tuple(selected), plan.to_run, _without(selected, plan.to_run, place),
                        plan.reasons)
        waits = cutoff.pending(graph, plan, keys.by_outputs)
        ledger.awaits(waits)
        return replace(prep, plan=cutoff.with_pending(plan, waits), waits=waits, delta=delta,
                       decided=tuple(decide))

    def _result_digest(self, keys: Keys) -> Callable[[str], str | None]:
        """A result file's digest through the stat cache (an unchanged file is not read)."""
        stats, prefix = keys.stats, self.project.root.rstrip("/") + "/"

        def digest(path: str) -> str | None:
            rel = path[len(prefix):] if path.startswith(prefix) else path
            try:
                return stats.digest(rel)
            except OSError:
                return None

        return digest

    def _compute_quietly(self, keys: Keys, tasks: list[int]) -> None:
        """Key tasks outside the selection; one with a missing input stays unkeyed."""
        for i in tasks:
            if any(keys.keys[d] is None for d in keys.graph.deps[i]):
                continue
            try:
                keys.compute([i])
            except ManifestError:
                keys.keys[i] = None

    # ------------------------------------------------------------ a partial build

    def _partial(
        self, graph: BuildGraph, keys: Keys, delta: proof.Delta, selected: list[int]
    ) -> list[int] | None:
        """A partial build's tasks to decide, with their keys computed; None: check them all.

        Every selected task outside the returned list is up to date: none of its sources nor
        outputs changed since the proof (delta), and none of the tasks above it was re-keyed,
        so its key is the previous build's, which its latest success in the log has.
        """
        producers = graph.producers if delta.outputs else {}
        if any(o not in producers for o in delta.outputs):
            return None
        touched = self._touched(graph, keys, delta.sources)
        last = self.seed
        keys.seed(last[1] if last is not None and last[0] is graph else None)
        # every task (the default targets of most graphs), or a set to look tasks up in
        chosen = None if len(selected) == len(graph.specs) else set(selected)
        if touched:
            order = sorted(touched, key=graph.position.__getitem__)
            keys.compute([i for i in order if chosen is None or i in chosen])
            if chosen is not None:
                self._compute_quietly(keys, [i for i in order if i not in chosen])
        decide = touched | {producers[o] for o in delta.outputs}
        return [i for i in sorted(decide, key=graph.position.__getitem__)
                if chosen is None or i in chosen]

    def _touched(self, graph: BuildGraph, keys: Keys, changed: set[str]) -> set[int]:
        """The tasks reading a changed source (their depfiles' files too), and every task
        below them."""
        readers = self._readers(graph, changed)
        for task, paths in keys.found.items():  # the files depfiles listed are read too
            i = graph.index.get(task)
            if i is not None:
                for p in changed.intersection(paths):
                    readers.setdefault(p, []).append(i)
        touched = {i for p in changed for i in readers.get(p, ())}
        dependents, stack = graph.dependents, list(touched)
        while stack:  # and every task below them
            for j in dependents[stack.pop()]:
                if j not in touched:
                    touched.add(j)
                    stack.append(j)
        return touched

    def _readers(self, graph: BuildGraph, changed: set[str]) -> dict[str, list[int]]:
        """The tasks whose source inputs include each changed path.  The first partial build of
        a session scans every task's sources; the next ones (a watch's rounds, a build server's
        builds) use an index of them, made once per graph."""
        if self._index is not None and self._index[0] is graph:
            by_path = self._index[1]
            return {p: list(by_path[p]) for p in changed if p in by_path}
        readers: dict[str, list[int]] = {}
        again, self._scanned = self._again or self._scanned is graph, graph
        if again:  # a watch's next round, a server's next build: worth an index
            self._index = (graph, by_path := {})
            for i, srcs in enumerate(graph.sources):
                for p in srcs:
                    by_path.setdefault(p, []).append(i)
            return {p: list(by_path[p]) for p in changed if p in by_path}
        for i, srcs in enumerate(graph.sources):
            if not changed.isdisjoint(srcs):
                for p in changed.intersection(srcs):
                    readers.setdefault(p, []).append(i)
        return readers

    # ------------------------------------------------------------ the graph

    def graph(self, cached: dict[str, Any] | None) -> tuple[BuildGraph, bool]:
        """The graph of the manifest as read now (once: its digest keys the cache and the
        proof), and whether it is the cache's."""
        data = self._read_manifest()
        self.source = self._source_id(data)
        if cached is not None and cached.get("source") == self.source:
            graph = self._made if self._made and self._made[0] is cached["graph"] else None
            self._again = graph is not None  # the graph of a previous build of this session
            if graph is None:
                graph = (cached["graph"], BuildGraph.from_cache(cached["graph"]))
            if graph[1] is not None and globs.folders_unchanged(graph[1].scanned):
                self._made = graph  # the next build of this session (watch) takes it as it is
                if self.project.manifest_name is not None:  # named as the user names it today
                    graph[1].manifest = replace(graph[1].manifest, source=self._source_name())
                return graph[1], True
        self._loaded = self._load_manifest(data)  # as written: _bury may compile it again
        return compile(self._loaded), False

    def _read_manifest(self) -> bytes | None:
        path = self.project.manifest_path
        if path is None:
            return None
        try:  # before the read: a write after this stat gives the file another one
            self.manifest_stat = unchanged.settled_stat(path)
        except OSError:
            self.manifest_stat = None  # read_manifest says why
        return read_manifest(path)

    def _load_manifest(self, data: bytes | None) -> Manifest:
        p = self.project
        if p.manifest is not None:
            return p.manifest
        assert p.manifest_path is not None
        return load(p.manifest_path, source=self._source_name(), data=data,
                    overrides=dict(p.overrides))

    def _source_name(self) -> str:
        """The manifest as messages name it: as the user gave it if relative, else absolute."""
        p = self.project
        assert p.manifest_path is not None and p.manifest_name is not None
        return p.manifest_name if not os.path.isabs(p.manifest_name) else p.manifest_path

    def _source_id(self, data: bytes | None) -> tuple[Any, ...]:
        p = self.project
        if data is None:
            return ("api", p.root, digest_bytes(repr(p.manifest).encode()))
        if p.overrides:  # another graph: cached apart from the file's own
            data += repr(sorted(p.overrides.items())).encode()
        return ("file", p.manifest_path, digest_bytes(data))

    def open_log(self, cached: dict[str, Any] | None) -> CompletionLog:
        index = None
        if cached is not None and "log" in cached:
            index = LogIndex.from_cache(cached["log"])  # None when it is not one
        try:
            path = os.path.join(self.project.state_dir, "log")
            log = CompletionLog(path, index, writable=self.lock.read_only is None)
        except OSError as exc:
            raise LogError(f"cannot open the completion log: {exc}") from None
        self.warnings.extend(log.warnings)
        return log

    # ------------------------------------------------------------ outputs of gone tasks

    def _bury(self, graph: BuildGraph, log: CompletionLog, building: bool) -> BuildGraph:
        """Outputs of tasks gone from the manifest: a build removes those still as their run
        left them (and says so) and keeps an edited one (with a warning); either way no
        input matches them (the graph is compiled again without them)."""
        gone = leftovers.dead_outputs(graph, log)
        dead = [(t, o, was) for t, outs in gone.items() for o, was in outs]
        if not dead or self._loaded is None:
            return graph
        found = self.identities([o for _, o, _ in dead])
        present = frozenset(o for _, o, _ in dead if found[o] is not None)
        if building and self.lock.read_only is None:
            fs, root = self.project.fs, self.project.root
            kept = {
                t for t, o, was in dead
                if o in present and not leftovers.remove_dead(
                    fs, root, log, t, o, found[o] == tuple(was), self.warnings, self.on_wait)
            }
            for task in {t for t, _, _ in dead} - kept:
                log.forget(task)
        self._excluded = present
        return compile(self._loaded, present) if present else graph

    def rescan(self, prep: Prepared) -> None:
        """After a build that wrote into folders its globs read (``build/*.o``): when the
        manifest and its globs still make the same graph (only declared outputs came and went),
        keep the folders' new mtimes, so that the graph cache and the no-op proof hold and the
        next no-op takes the fast path instead of compiling the manifest again."""
        graph = prep.graph
        if self.project.manifest_path is None or self.lock.read_only is not None:
            return
        if globs.folders_unchanged(graph.scanned):
            return
        _settle(graph.scanned)
        try:
            manifest = self._load_manifest(read_manifest(self.project.manifest_path))
            again = compile(manifest, self._excluded)
        except DagrunError:
            return
        if (again.specs, again.deps, again.sources) != (graph.specs, graph.deps, graph.sources):
            return
        graph.scanned.clear()
        graph.scanned.update(again.scanned)
        assert prep.basis is not None
        prep.basis.reused = False  # the graph is written again, with the new mtimes

    # ------------------------------------------------------------ the core pool

    def core_pool(self, graph: BuildGraph) -> CorePool | None:
        """The checked core pool (ManifestError if a task can never fit), or None."""
        m = graph.manifest
        if "core_pool" in m.executors["local"].options:
            pool = local_pool.core_pool(m, self.topology)
            local_pool.check_fits(m, pool)
            return pool
        pinned = graph.derived("fits", _fits)  # made once per graph (a server's builds)
        if pinned:
            more = f" (and {len(pinned) - 1} more)" if len(pinned) > 1 else ""
            self.warnings.append(
                f"task '{pinned[0]}'{more} sets numa_node, but [executors.local] has no "
                "core_pool: it is not pinned"
            )
        return None

    @property
    def topology(self) -> Topology:
        if self._topology is None:
            from .numa import Topology  # only where a core pool is configured

            self._topology = Topology.machine()
        return self._topology


def _fits(graph: BuildGraph) -> list[str]:
    """With no core pool: check that every task can ever start (ManifestError), and name the
    tasks that set ``numa_node`` (they are not pinned)."""
    local_pool.check_fits(graph.manifest, None)
    return [s.name for s in graph.specs if s.numa_node is not None]


def _without(selected: list[int], tasks: tuple[int, ...], place: Callable[[int], int]
             ) -> tuple[int, ...]:
    """``selected`` without ``tasks`` (some of them), in its order: when they are few, their
    places (``place``) found and the runs between them copied at C speed, not a test per task."""
    if len(tasks) > 16:
        run = set(tasks)
        return tuple(i for i in selected if i not in run)
    out: list[int] = []
    start = 0
    for at in sorted(map(place, tasks)):
        out += selected[start:at]
        start = at + 1
    out += selected[start:]
    return tuple(out)


def _settle(scanned: Mapping[str, int]) -> None:
    """Wait until no folder of ``scanned`` changed within the racy window (at most ~50 ms): a
    folder listed sooner is never trusted (unchanged.folder_stamp), and a build whose last task
    wrote into a globbed folder would leave no proof behind."""
    newest = 0
    for path in scanned:
        try:
            newest = max(newest, os.stat(path).st_mtime_ns)
        except OSError:
            continue
    wait = unchanged.RACY_NS - (time.time_ns() - newest)
    if 0 < wait <= unchanged.RACY_NS:
        time.sleep(wait / 1e9 + 0.002)
