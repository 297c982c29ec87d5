"""One manifest's build state on disk, and the build, plan, clean and status operations.

Data flow of a build (see STYLE.md):

    manifest (or the cached compiled graph) -> BuildGraph
    BuildGraph + StatCache -> keys          (hashing.Keys, only what changed)
    keys + CompletionLog + files -> Plan    (plan.make)
    Plan -> build.run (executors, Scheduler) -> BuildResult; log records on success

Everything lives in ``.dagrun/`` beside the manifest: ``log`` (the completion
log), ``cache`` (compiled graph, stat cache, keys and log index, marshal, with a
checksum: a damaged one is no cache; deleting it only costs time), ``runs/``
and ``lock``.  The cache is what makes a no-op build fast: no TOML, no
networkx, no re-hashing of unchanged files.

Before each attempt at a task its ``start`` record invalidates it in the log;
when it exits 0 every declared output must exist (else it fails: "declared
output X was not written") and their identities go into its success record.
A ``.dagrun`` that cannot be written still answers a no-op build, ``-n`` and
``list`` (the lock is taken through a read-only descriptor); a build that must
run a task, or ``clean``, then stops with a LogError.  A log that cannot be
appended to (disk full) is a LogError too, after the build; a cache that
cannot be written is a warning (it is only a cache), and no temporary file is
left behind.
"""

from __future__ import annotations

import dataclasses
import fcntl
import itertools
import marshal
import os
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from . import cutoff, fresh, globs, outputs, unchanged
from .clock import Clock, MonotonicClock
from .completion_log import CompletionLog, Identity, LogIndex
from .errors import DagrunError, LogError, ManifestError
from .executors import Outcome
from .fs import FileSystem, LocalFileSystem, open_regular, read_regular
from .fs import unlink_quietly as _unlink
from .graph import BuildGraph, compile, gc_paused
from .hashing import Keys, StatCache, digest_bytes, key_env_names
from .ledger import Ledger, dead_outputs, recorded_digests
from .manifest import Manifest, output_problem
from .manifest import read as read_manifest
from .plan import Plan, make
from .pycall import Results, results_of, results_view
from .scheduler import BuildResult, Reporter, StopFlag

if TYPE_CHECKING:
    from .build import ExecutorFactory
    from .numa import CorePool, Topology  # imported where a core pool is configured

STATE_DIR = ".dagrun"
CACHE_VERSION = 8  # 8: the log index holds fp and seen; 7: the graph in pieces


@dataclass
class Prepared:
    """A graph with keys and a plan, ready to run (or to show)."""

    graph: BuildGraph
    keys: Keys
    log: CompletionLog
    plan: Plan
    pool: CorePool | None = None  # the local executor's core pool, when one is configured
    waits: Mapping[int, str] = field(default_factory=dict)  # pending task -> the task it waits on
    delta: fresh.Delta | None = None  # a partial build: what changed since the proof
    decided: tuple[int, ...] = ()  # a partial build: the selected tasks it looked at
    ledger: Ledger | None = None  # what the build records (ledger.py)


class Session:
    """Builds one manifest.  Give ``manifest_path`` (a dagrun.toml) or a ``manifest`` object."""

    def __init__(
        self,
        *,
        manifest_path: str | None = None,
        manifest: Manifest | None = None,
        environ: Mapping[str, str] | None = None,
        fs: FileSystem | None = None,
        clock: Clock | None = None,
        executor_factory: ExecutorFactory | None = None,
        on_plan: Callable[[BuildGraph, Plan], None] | None = None,
        stops: tuple[StopFlag, ...] = (),
        wait_for_lock: bool = True,
        on_wait: Callable[[str], None] | None = None,
        topology: Topology | None = None,
        on_result: Callable[[str, Any], None] | None = None,
        overrides: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        """``overrides``: [vars] values from the command line (``CFLAGS=-O0``); ``cwd``: the
        folder the command was run in, where a target path is looked for first."""
        if (manifest_path is None) == (manifest is None):
            raise ValueError("give exactly one of manifest_path and manifest")
        if overrides and manifest is not None:
            raise ValueError("overrides replace [vars] of a manifest file: give manifest_path")
        self.manifest_path = os.path.abspath(manifest_path) if manifest_path else None
        # messages name the manifest as the user did (dagrun.toml:4: ...), not by absolute path
        self.manifest_name = os.path.normpath(manifest_path) if manifest_path else None
        self._manifest = manifest
        self.root = os.path.dirname(self.manifest_path) if self.manifest_path else manifest.root  # type: ignore[union-attr]
        self.environ = environ if environ is not None else os.environ
        self.fs = fs if fs is not None else LocalFileSystem(self.root)
        self.clock = clock or MonotonicClock()
        self.executor_factory = executor_factory
        self.on_plan = on_plan  # sees each plan before it runs (watch)
        # task -> the files its depfile listed (the plan's, then updated as tasks succeed)
        self.found: Mapping[str, tuple[str, ...]] = {}
        self.stops = stops  # one set from another thread: the build stops as on Ctrl-C (watch)
        self.state_dir = os.path.join(self.root, STATE_DIR)
        self.wait_for_lock = wait_for_lock
        self.on_wait = on_wait
        self.warnings: list[str] = []
        self._cache: dict[str, Any] | None = None
        self._source: tuple[Any, ...] = ()  # what the graph in hand was made from (_graph)
        self._manifest_stat: unchanged.StatKey | None = None  # its settled stat (_read_manifest)
        self._graph_blob: GraphBlob | None = None  # the cache file's graph part, as read
        self._made: tuple[Any, BuildGraph | None] | None = None  # (cache["graph"], its graph)
        self._index: tuple[BuildGraph, dict[str, list[int]]] | None = None  # path -> readers
        self._again = False  # the graph in hand served a previous build of this session
        self._keys_after: tuple[BuildGraph, list[str | None]] | None = None  # the last keys
        self._seed: tuple[BuildGraph, list[str | None]] | None = None  # those, for this build
        self._topology = topology  # None: read this machine's when a core_pool needs it
        self.overrides = dict(overrides or {})
        self.cwd = cwd
        self.on_result = on_result  # streams function tasks' results as they finish (pycall.py)
        self.read_only: str | None = None  # why .dagrun cannot be written (lock), else None
        self._log_error: str | None = None  # the completion log could not be appended to
        self._proof: fresh.Delta | None = None  # the proof this session wrote last (no changes)
        self._journal: Journal | None = None  # the cache's journal, as loaded or last written
        self._ledger: tuple[Ledger, bool]  # this build's (or plan's), and whether it builds
        self._loaded: Manifest | None = None  # the manifest the graph in hand was compiled from
        self._excluded: frozenset[str] = frozenset()  # dead outputs no input matches (_bury)
        self._forced: set[int] = set()  # the tasks --force names (this build's)
        self._started: float | None = None  # the clock when this build began
        # keep the last build's graph and state until this session goes (the CLI: until exit,
        # which frees them at once rather than object by object)
        self.keep_last = False
        self._cache_mode = "auto"  # the shared cache: auto, required or off (build's ``cache``)
        self._last: Prepared | None = None

    # ------------------------------------------------------------ public operations

    def build(
        self,
        targets: Iterable[str] | None = None,
        *,
        reporter: Reporter,
        jobs: int | None = None,
        failures_allowed: int | None = None,
        explain: bool = False,
        delta: fresh.Delta | None = None,
        changed: Collection[str] | None = None,
        force: bool = False,
        cache: str = "auto",
    ) -> BuildResult:
        """Build ``targets`` (the defaults when None).

        ``cache``: the shared cache ([cache]): "auto" (a failure of it is a warning),
        "required" (an error), "read-only" (looked up, never written) or "off" (not used).

        ``delta`` is the no-op check's finding (fresh.examine: the CLI asked it just before);
        ``changed`` is for a caller that watches files (``dagrun watch``): the root-relative
        paths that changed since this Session's previous build, vouching that nothing else
        did.  Either one lets the build re-key and decide only the tasks the changes reach,
        when the state is still the one proven after the previous build; otherwise it is
        ignored and every task is checked.  ``force`` runs the named targets (every selected
        task without targets) even when they are up to date.
        """
        with self.lock():
            self._started = self.clock.now()  # the summary's time: from here, as a wall clock
            delta = None if force else self._usable_delta(delta, changed)
            fresh.forget(self.state_dir)
            self._seed, self._keys_after = self._keys_after, None  # again if this one ends well
            self._proof = None
            self._log_error = None
            if self.read_only is None:
                _remove_stale_temporaries(self.state_dir)
            prep = self._prepare(
                targets, explain=explain, delta=delta, force=force, building=True
            )
            self._refuse_if_read_only(prep)
            self._cache_mode = cache
            try:
                result = self._run(prep, reporter, jobs, failures_allowed, explain)
                if result.ok:
                    self._rescan(prep)
            finally:
                self._save(prep)
                prep.log.close()
            if self._log_error is not None:
                raise LogError(self._log_error)
            self._record_fresh(prep, targets, result)
            if self.keep_last:
                self._last = prep
            # the cache now holds these keys: a next build of this graph may start from them
            self._keys_after = (prep.graph, prep.keys.keys) if self.read_only is None else None
            return result

    def touch(self, targets: Iterable[str] | None = None) -> list[str]:
        """Record every task a build of ``targets`` would run as done, without running it
        (touch.py); DagrunError, and nothing recorded, when one of them cannot be."""
        from .touch import refusal

        with self.lock():
            fresh.forget(self.state_dir)
            prep = self._prepare(targets, explain=False)
            chosen = [i for i in prep.plan.to_run if not prep.graph.specs[i].always]
            try:
                self._refuse_if_read_only(prep)
                problem = refusal(prep.graph, chosen, self.identities)
                assert prep.ledger is not None
                for i in chosen if problem is None else ():
                    problem = prep.ledger.succeeded(i, Outcome(0, 0, 0.0))
                    if problem is not None:
                        break
            finally:
                self._save(prep)
                prep.log.close()
            if problem is not None:
                raise DagrunError(problem)
            return [prep.graph.specs[i].name for i in chosen]

    def _usable_delta(
        self, delta: fresh.Delta | None, changed: Collection[str] | None
    ) -> fresh.Delta | None:
        """The delta to build from, if the proof it was found against is still the state's
        (under the lock: no other dagrun built or cleaned in between)."""
        if changed is not None and delta is None and self._proof is not None:
            proof = self._proof
            known, produced = proof.source_rows.where(), proof.output_rows.where()
            delta = fresh.Delta(
                {p for p in changed if p in known}, {p for p in changed if p in produced},
                proof.source_rows, proof.output_rows, proof.stamp,
            )
        if delta is None or fresh.stamp(self.state_dir) != delta.stamp:
            return None
        return delta

    def _refuse_if_read_only(self, prep: Prepared) -> None:
        """A build that must run tasks needs to write the log: say why it cannot."""
        if self.read_only is None or not prep.plan.to_run:
            return
        prep.log.close()
        raise LogError(
            f"cannot build: {self.state_dir} cannot be written ({self.read_only}) "
            f"and {len(prep.plan.to_run)} task(s) must run"
        )

    def _record_fresh(
        self, prep: Prepared, targets: Iterable[str] | None, result: BuildResult
    ) -> None:
        """After a build that left every selected task up to date: the no-op proof (fresh.py).

        After a partial build (``prep.delta``), the previous proof's rows are kept for every
        task the build did not look at, and only the looked-at tasks' rows are made again.
        """
        if self.manifest_path is None or not result.ok or self.warnings or self.read_only:
            return
        if self.overrides:  # the proof is of the manifest as written: a plain build checks
            return
        if targets and self.cwd is not None and self.cwd != self.root:
            return  # its targets may be paths relative to the subfolder (see entry.py)
        if not isinstance(self.fs, LocalFileSystem):
            return
        delta = prep.delta
        # a partial build's decided tasks, and the pending ones below a task it ran
        tasks = prep.plan.selected if delta is None else (*prep.decided, *prep.plan.to_run)
        sources: dict[str, fresh.StatKey] = {}  # the rows of ``tasks``
        outputs: dict[str, fresh.Identity] = {}
        if not self._proof_rows(prep, tasks, sources, outputs):
            return
        if delta is None:
            source_rows, output_rows = fresh.Rows.of(sources), fresh.Rows.of(outputs)
        else:  # the proof's other rows stay; a changed file no task reads any more goes
            source_rows, output_rows = delta.source_rows, delta.output_rows
            source_rows.update(sources, drop=delta.sources)
            output_rows.update(outputs)
        try:
            fresh.record(
                self.state_dir,
                self.manifest_path,
                self._source[2],
                self._manifest_stat,
                tuple(targets or ()),
                self._state[2],
                prep.graph.scanned,
                source_rows,
                output_rows,
                len(prep.plan.selected),
            )
        except (OSError, OverflowError):  # OverflowError: a number beyond 64 bits (an inode)
            fresh.forget(self.state_dir)
            return
        stamp = fresh.stamp(self.state_dir)
        if stamp is not None:
            self._proof = fresh.Delta(set(), set(), source_rows, output_rows, stamp)

    def _proof_rows(
        self,
        prep: Prepared,
        tasks: Iterable[int],
        sources: dict[str, fresh.StatKey],
        outputs: dict[str, fresh.Identity],
    ) -> bool:
        """Put the proof's rows of ``tasks`` in ``sources`` and ``outputs``; False when there
        can be no proof (an ``always`` task, a task without a success on record).

        A source whose digest is not trusted yet (written within hashing.RACY_NS of being
        hashed) gets a row that never matches, so the next check hands it to a partial build,
        which hashes it again.
        """
        g, entries = prep.graph, prep.keys.stats.entries
        latest = prep.log.index.latest
        found = prep.keys.found
        for i in tasks:
            spec = g.specs[i]
            if spec.always:
                return False
            for p in (*g.sources[i], *found.get(spec.name, ())):
                e = entries.get(p)
                if e is None:
                    return False
                sources[p] = (e[0], e[1], e[2], e[3]) if e[5] else fresh.NEVER
            entry = latest.get(spec.name)
            if entry is None or len(entry[2]) != len(spec.outputs):
                return False
            for o, ident in zip(spec.outputs, entry[2], strict=True):
                outputs[o] = ident
        return True

    def plan(
        self, targets: Iterable[str] | None = None, *, explain: bool = True, force: bool = False
    ) -> Prepared:
        """The plan without running anything (``-n``, ``list``, ``graph``)."""
        with self._reading():
            prep = self._prepare(targets, explain=explain, force=force)
            self._save(prep)
            prep.log.close()
            return prep

    def clean(self, targets: Iterable[str] | None = None, *, dead: bool = False) -> list[str]:
        """Remove the named tasks' declared outputs (all without targets), their depfiles and
        function results (leftovers.py); forget their keys.

        ``dead``: instead, the outputs the log records for tasks no longer in the
        manifest (as ``ninja -t cleandead``).  Only paths inside the project are
        removed, never the project, its parent or .dagrun, and never through a
        symlink that leads out of the project.
        """
        from . import leftovers

        with self.lock():
            if self.read_only is not None:
                why = f"{self.state_dir} cannot be written ({self.read_only})"
                raise LogError(f"cannot clean: {why}")
            cache = self._load_cache()
            graph, _ = self._graph(cache)
            log = self._open_log(cache)
            removed = []
            try:
                if dead:
                    chosen = {
                        t: tuple(o for o, _ in outs) for t, outs in dead_outputs(graph, log).items()
                    }
                else:
                    everything = range(len(graph.specs))
                    picked = graph.resolve(targets, self.cwd) if targets else everything
                    chosen = {graph.specs[i].name: graph.specs[i].outputs for i in picked}
                every = not dead and not targets
                leftovers.remove_results(self.state_dir, log, chosen, every)
                for depfile in leftovers.depfiles(graph, chosen):
                    if os.path.lexists(os.path.join(self.root, depfile)):
                        self._remove_output(depfile)
                for task, outputs in chosen.items():
                    removed += [out for out in outputs if self._remove_output(out)]
                    log.forget(task)
            finally:
                if cache is not None:
                    cache["log"] = log.index.to_cache()
                    self._write_cache(cache)
                log.close()
            return removed

    def _remove_output(self, out: str) -> bool:
        """Remove one output if it is safe to (see ``clean``); a warning says why not."""
        problem = output_problem(out) or _escapes(self.root, out)
        if problem:
            self.warnings.append(f"not removing '{out}': {problem}")
            return False
        return self.fs.remove(out)

    def load_graph(self) -> BuildGraph:
        return self._graph(self._load_cache())[0]

    # ------------------------------------------------------------ locking

    @contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on the state folder, so two builds never run the same task.

        When ``.dagrun`` cannot be written, ``read_only`` says why and the lock is shared, taken
        through a read-only descriptor (none when there is no lock file): what needs no write
        (a no-op, ``-n``) still works, the rest refuses.
        """
        path = os.path.join(self.state_dir, "lock")
        fd = self._open_lock(path)
        if fd is None:
            with self._shared_lock(path):
                yield
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                msg = f"another dagrun (pid {holder}) is running in {self.root}"
                if not self.wait_for_lock:
                    raise LogError(msg) from None
                if self.on_wait is not None:
                    self.on_wait(msg + "; waiting for it to finish")
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """The lock for a command that only reads: none where .dagrun does not exist yet, so
        ``list``, ``show``, ``graph``, ``tree`` and ``-n`` in a fresh tree create nothing."""
        if os.path.isdir(self.state_dir):
            with self.lock():
                yield
            return
        self.read_only = "not created by a command that only reads"
        yield

    def _open_lock(self, path: str) -> int | None:
        """The lock file, open to write; None (``read_only`` says why) if .dagrun is read-only."""
        import errno

        self.read_only = None
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            fd = open_regular(path, os.O_RDWR | os.O_CREAT)  # a FIFO there: an error, below
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                where = path if exc.errno == errno.EINVAL else self.state_dir  # a FIFO
                raise LogError(f"cannot use {where}: {exc.strerror}") from None
            self.read_only = exc.strerror or str(exc)
            return None
        if not os.access(self.state_dir, os.W_OK | os.X_OK):  # the lock file alone is writable
            os.close(fd)
            self.read_only = os.strerror(errno.EACCES)
            return None
        return fd

    @contextmanager
    def _shared_lock(self, path: str) -> Iterator[None]:
        try:
            fd = open_regular(path)
        except FileNotFoundError:  # no lock file in a folder nobody may write to: no build
            yield
            return
        except OSError as exc:
            raise LogError(f"cannot use {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------ preparing

    def _prepare(
        self,
        targets: Iterable[str] | None,
        *,
        explain: bool,
        delta: fresh.Delta | None = None,
        force: bool = False,
        building: bool = False,
    ) -> Prepared:
        cache = self._load_cache()
        graph, reused = self._graph(cache)
        self.warnings.extend(graph.manifest.warnings)
        log = self._open_log(cache)
        if not reused and log.index.latest:
            graph = self._bury(graph, log, building)
        targets = list(targets or ())
        selected = graph.select(targets, self.cwd)
        self._forced = set()
        if force:
            self._forced = set(graph.resolve(targets, self.cwd) if targets else selected)
        stats = StatCache(self.fs, cache.get("stats") if cache else None)
        kenv = {n: self.environ.get(n) for n in key_env_names(graph)}
        previous = None
        if reused and cache is not None and cache.get("kenv") == kenv:
            previous = cache.get("keys")
        keys = Keys(graph, stats, self.environ, previous)
        keys.found = self.found = cutoff.found_in_log(graph, log)
        self._state = (cache, reused, kenv)
        ledger = Ledger(graph, keys, log, self.fs, self.state_dir, self.identities,
                        self.clock.wall)
        self._ledger = (ledger, building)
        pool = self._core_pool(graph)
        if delta is not None and previous is not None and self._journal_intact():
            part = self._partial(graph, keys, delta, selected)
            if part is not None:
                return self._plan(graph, keys, log, pool, selected, part, explain, delta)
        keys.compute(selected)
        others = [i for i in graph.order if keys.keys[i] is None]
        if others:  # keep every key current, so the cache never holds a stale one
            self._compute_quietly(keys, others)
        return self._plan(graph, keys, log, pool, selected, selected, explain, None)

    def _bury(self, graph: BuildGraph, log: CompletionLog, building: bool) -> BuildGraph:
        """Outputs of tasks gone from the manifest: a build removes those still as their run
        left them (and says so) and keeps an edited one (with a warning); either way no
        input matches them (the graph is compiled again without them)."""
        dead = [(t, o, was) for t, outs in dead_outputs(graph, log).items() for o, was in outs]
        if not dead or self._loaded is None:
            return graph
        found = self.identities([o for _, o, _ in dead])
        present = frozenset(o for _, o, _ in dead if found[o] is not None)
        if building and self.read_only is None:
            kept = {
                t for t, o, was in dead
                if o in present and not self._remove_dead(log, t, o, found[o] == tuple(was))
            }
            for task in {t for t, _, _ in dead} - kept:
                log.forget(task)
        self._excluded = present
        return compile(self._loaded, present) if present else graph

    def _rescan(self, prep: Prepared) -> None:
        """After a build that wrote into folders its globs read (``build/*.o``): when the
        manifest and its globs still make the same graph (only declared outputs came and went),
        keep the folders' new mtimes, so that the graph cache and the no-op proof hold and the
        next no-op takes the fast path instead of compiling the manifest again."""
        graph = prep.graph
        if self.manifest_path is None or self.read_only is not None:
            return
        if globs.folders_unchanged(graph.scanned):
            return
        _settle(graph.scanned)
        try:
            again = compile(self._load_manifest(read_manifest(self.manifest_path)), self._excluded)
        except DagrunError:
            return
        if (again.specs, again.deps, again.sources) != (graph.specs, graph.deps, graph.sources):
            return
        graph.scanned.clear()
        graph.scanned.update(again.scanned)
        cache, _, kenv = self._state
        self._state = (cache, False, kenv)  # the graph is written again, with the new mtimes

    def _remove_dead(self, log: CompletionLog, task: str, out: str, same_identity: bool) -> bool:
        """Remove an output of a task gone from the manifest if its run left it as it is (the
        same identity, or else the same digest: a tree moved or restored since)."""
        recorded = None if same_identity else recorded_digests(log, task).get(out)
        if not same_identity and (
            recorded is None or outputs.digest(os.path.join(self.root, out)) != recorded
        ):
            self.warnings.append(
                f"kept {out}: task '{task}' that wrote it is no longer in the manifest, but it "
                "was changed since (remove it, or `dagrun clean --dead`)"
            )
            return False
        if not self._remove_output(out):
            return False
        if self.on_wait is not None:
            self.on_wait(f"removed {out} (its task '{task}' is no longer in the manifest)")
        return True

    def _result_digest(self, keys: Keys) -> Callable[[str], str | None]:
        """A result file's digest through the stat cache (an unchanged file is not read)."""
        stats, prefix = keys.stats, self.root.rstrip("/") + "/"

        def digest(path: str) -> str | None:
            rel = path[len(prefix):] if path.startswith(prefix) else path
            try:
                return stats.digest(rel)
            except OSError:
                return None

        return digest

    def _readers(self, graph: BuildGraph, changed: set[str]) -> dict[str, list[int]]:
        """The tasks whose source inputs include each changed path.  The first partial build of
        a session scans every task's sources; the next ones (a watch's rounds) use an index of
        them, made once per graph."""
        if self._index is not None and self._index[0] is graph:
            by_path = self._index[1]
            return {p: list(by_path[p]) for p in changed if p in by_path}
        readers: dict[str, list[int]] = {}
        if self._again:  # a watch's next round: worth an index
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

    def _plan(
        self,
        graph: BuildGraph,
        keys: Keys,
        log: CompletionLog,
        pool: CorePool | None,
        selected: list[int],
        decide: list[int],
        explain: bool,
        delta: fresh.Delta | None,
    ) -> Prepared:
        """The plan over ``decide`` (every selected task, or a partial build's few); the other
        selected tasks are up to date."""
        found = self.identities([o for i in decide for o in graph.specs[i].outputs])
        ledger, building = self._ledger
        ledger.vouch(decide, found, refresh=building and self.read_only is None)
        plan = make(
            graph,
            keys.keys,
            results_view(graph, keys.keys, log, self.state_dir, self._result_digest(keys)),
            found.get,
            decide,
            parts=keys.parts if explain else None,
            upstream_changed=ledger.upstream_changed,
            forced=self._forced,
        )
        if decide is not selected:
            run = set(plan.to_run)
            plan = Plan(
                tuple(selected), plan.to_run, tuple(i for i in selected if i not in run),
                plan.reasons,
            )
        waits = cutoff.pending(graph, plan, keys.by_outputs)
        plan = cutoff.with_pending(plan, waits)
        ledger.awaits(waits)
        return Prepared(graph, keys, log, plan, pool, waits, delta, tuple(decide), ledger)

    def _partial(
        self, graph: BuildGraph, keys: Keys, delta: fresh.Delta, selected: list[int]
    ) -> list[int] | None:
        """A partial build's tasks to decide, with their keys computed; None: check them all.

        Every selected task outside the returned list is up to date: none of its sources nor
        outputs changed since the proof (delta), and none of the tasks above it was re-keyed,
        so its key is the previous build's, which its latest success in the log has.
        """
        changed = delta.sources
        readers = self._readers(graph, changed)
        for task, paths in keys.found.items():  # the files depfiles listed are read too
            i = graph.index.get(task)
            if i is not None:
                for p in changed.intersection(paths):
                    readers.setdefault(p, []).append(i)
        touched = {i for p in delta.sources for i in readers.get(p, ())}
        if touched:  # and every task below them: one pass in topological order
            deps = graph.deps
            for i in graph.order:
                if deps[i] and i not in touched and not touched.isdisjoint(deps[i]):
                    touched.add(i)
        producers = graph.producers if delta.outputs else {}
        if any(o not in producers for o in delta.outputs):
            return None
        last = self._seed
        keys.seed(last[1] if last is not None and last[0] is graph else None)
        if touched:
            order = [i for i in graph.order if i in touched]
            chosen = set(selected)
            keys.compute([i for i in order if i in chosen])
            self._compute_quietly(keys, [i for i in order if i not in chosen])
        decide = touched | {producers[o] for o in delta.outputs}
        return [i for i in selected if i in decide]

    def identities(self, paths: Iterable[str]) -> dict[str, Identity | None]:
        """Each output's identity now (completion_log.Identity); None where it does not exist."""
        if isinstance(self.fs, LocalFileSystem):
            return fresh.identities(self.fs.root, paths)
        found: dict[str, Identity | None] = {}
        for p in paths:
            st = self.fs.stat(p)
            found[p] = None if st is None else (st.size, st.ctime_ns, st.ino, 0)
        return found

    def _core_pool(self, graph: BuildGraph) -> CorePool | None:
        """The checked core pool (ManifestError if a task can never fit), or None."""
        from .executors import local_pool

        m = graph.manifest
        pool = None
        if "core_pool" in m.executors["local"].options:
            pool = local_pool.core_pool(m, self.topology)
        local_pool.check_fits(m, pool)
        if pool is None:
            pinned = [s.name for s in graph.specs if s.numa_node is not None]
            if pinned:
                more = f" (and {len(pinned) - 1} more)" if len(pinned) > 1 else ""
                self.warnings.append(
                    f"task '{pinned[0]}'{more} sets numa_node, but [executors.local] has no "
                    "core_pool: it is not pinned"
                )
        return pool

    @property
    def topology(self) -> Topology:
        if self._topology is None:
            from .numa import Topology

            self._topology = Topology.machine()
        return self._topology

    def _compute_quietly(self, keys: Keys, tasks: list[int]) -> None:
        """Key tasks outside the selection; one with a missing input stays unkeyed."""
        for i in tasks:
            if any(keys.keys[d] is None for d in keys.graph.deps[i]):
                continue
            try:
                keys.compute([i])
            except ManifestError:
                keys.keys[i] = None

    def _graph(self, cache: dict[str, Any] | None) -> tuple[BuildGraph, bool]:
        """The graph of the manifest as read now (once: its digest keys the cache and the proof)."""
        data = self._read_manifest()
        self._source = self._source_id(data)
        if cache is not None and cache.get("source") == self._source:
            graph = self._made if self._made and self._made[0] is cache["graph"] else None
            self._again = graph is not None  # the graph of a previous build of this session
            if graph is None:
                graph = (cache["graph"], BuildGraph.from_cache(cache["graph"]))
            if graph[1] is not None and globs.folders_unchanged(graph[1].scanned):
                self._made = graph  # the next build of this session (watch) takes it as it is
                if self.manifest_name is not None:  # named as the user names it today
                    graph[1].manifest = replace(graph[1].manifest, source=self._source_name())
                return graph[1], True
        self._loaded = self._load_manifest(data)  # as written: _bury may compile it again
        return compile(self._loaded), False

    def _read_manifest(self) -> bytes | None:
        if self._manifest is not None:
            return None
        assert self.manifest_path is not None
        try:  # before the read: a write after this stat gives the file another one
            self._manifest_stat = unchanged.settled_stat(self.manifest_path)
        except OSError:
            self._manifest_stat = None  # read_manifest says why
        return read_manifest(self.manifest_path)

    def _load_manifest(self, data: bytes | None) -> Manifest:
        if self._manifest is not None:
            return self._manifest
        from .manifest import load

        assert self.manifest_path is not None
        return load(
            self.manifest_path, source=self._source_name(), data=data, overrides=self.overrides
        )

    def _source_name(self) -> str:
        """The manifest as messages name it: as the user gave it if relative, else absolute."""
        assert self.manifest_path is not None and self.manifest_name is not None
        relative = not os.path.isabs(self.manifest_name)
        return self.manifest_name if relative else self.manifest_path

    def _source_id(self, data: bytes | None) -> tuple[Any, ...]:
        if data is None:
            return ("api", self.root, digest_bytes(repr(self._manifest).encode()))
        if self.overrides:  # another graph: cached apart from the file's own
            data += repr(sorted(self.overrides.items())).encode()
        return ("file", self.manifest_path, digest_bytes(data))

    def _open_log(self, cache: dict[str, Any] | None) -> CompletionLog:
        index = None
        if cache is not None and "log" in cache:
            index = LogIndex.from_cache(cache["log"])  # None when it is not one
        try:
            path = os.path.join(self.state_dir, "log")
            log = CompletionLog(path, index, writable=self.read_only is None)
        except OSError as exc:
            raise LogError(f"cannot open the completion log: {exc}") from None
        self.warnings.extend(log.warnings)
        return log

    # ------------------------------------------------------------ running

    def _run(
        self,
        prep: Prepared,
        reporter: Reporter,
        jobs: int | None,
        failures_allowed: int | None,
        explain: bool,
    ) -> BuildResult:
        from . import build

        graph, keys, log = prep.graph, prep.keys, prep.log
        m = graph.manifest

        ledger = prep.ledger
        assert ledger is not None

        shared = self._shared_cache(prep)
        ledger.shared = shared
        results = results_of(graph, keys.keys, self.state_dir)
        if self.on_result is not None:
            ledger.stream_to(self.on_result, results)
            for i in prep.plan.up_to_date if results else ():
                ledger.stream(i)
        if self.on_plan is not None:
            self.on_plan(graph, prep.plan)
        setup = build.BuildSetup(
            state_dir=self.state_dir,
            environ=_without_token(self.environ, m.cache),
            clock=self.clock,
            jobs=jobs or m.jobs or default_jobs(),
            failures_allowed=m.failures_allowed if failures_allowed is None else failures_allowed,
            explain=explain,
            pool=prep.pool,
            factory=self.executor_factory,
            stops=self.stops,
            say=self.on_wait,  # messages for the user (the URL workers connect to)
            started=self._started,
        )
        try:
            result = build.run(
                graph, prep.plan, keys.keys, reporter, setup, ledger, log.index.durations, shared
            )
        except BaseException:
            if shared is not None:
                shared.close(wait=False)  # interrupted: the queued uploads are dropped
            raise
        finally:
            if ledger.error is not None:
                self._log_error = ledger.error
        if shared is not None:
            shared.close()
        if shared is not None and shared.required and shared.problems:
            from .cache import CacheError

            raise CacheError(f"the shared cache failed (--cache=required): {shared.problems[0]}")
        done = {*result.succeeded, *result.restored, *result.up_to_date}
        values = {t: p for t, p in results.items() if t in done}
        return dataclasses.replace(result, values=Results(values, log.result))

    def _shared_cache(self, prep: Prepared) -> Any:
        """This build's SharedCache (cache/), or None: no [cache], --cache=off, nothing to run."""
        settings = prep.graph.manifest.cache
        mode = self._cache_mode
        if settings is None or mode == "off" or not prep.plan.to_run:
            return None
        from .cache import SharedCache

        say = self.on_wait or (lambda text: self.warnings.append(text))
        if mode == "read-only":
            settings = settings._replace(write=False)
        from .outputs import combine

        ledger = prep.ledger
        assert ledger is not None
        return SharedCache(settings, prep.graph, prep.keys, self.environ, self.state_dir, say,
                           seen=lambda i: combine(ledger.upstream(i).items()),
                           required=mode == "required")

    def executor_pools(self, *, probe: bool = True) -> list[Any]:
        """Each executor's pool (``dagrun status --executors``), live while a build runs.

        With no build running, ``probe`` checks whether each ssh host can be reached now.
        """
        from .build import probe as probe_hosts
        from .pool_status import SNAPSHOT, executor_pools, read_snapshot

        graph = self.load_graph()
        pool = self._core_pool(graph)
        snapshot = read_snapshot(os.path.join(self.state_dir, SNAPSHOT))
        probes = None
        if snapshot is None and probe:
            probes = probe_hosts(graph, self.state_dir, self.environ)
        return executor_pools(graph.manifest, pool, self.topology.logical, snapshot, probes)

    # ------------------------------------------------------------ the state cache

    def _load_cache(self) -> dict[str, Any] | None:
        if self._cache is not None:
            return self._cache
        try:
            raw = read_regular(os.path.join(self.state_dir, "cache"))  # a FIFO: discarded
            data, self._graph_blob = _cache_loads(raw)
        except (OSError, EOFError, ValueError, TypeError):
            return None
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return None
        self._journal = _apply_journal(self.state_dir, data)
        self._cache = data
        return data

    def _save(self, prep: Prepared) -> None:
        if self.read_only is not None:
            return
        if prep.delta is not None and self._save_journal(prep):
            return
        cache, reused, kenv = self._state
        keys = prep.keys
        unchanged = (
            reused
            and cache is not None
            and not keys.stats.dirty
            and keys.recomputed == 0
            and cache.get("kenv") == kenv
            and tuple(cache.get("log", ())) == prep.log.index.to_cache()
        )
        if unchanged:
            return
        g = prep.graph
        stats = keys.stats.entries
        if not reused and cache is not None:  # a new graph: forget files no task reads now
            live = {p for srcs in g.sources for p in srcs}
            stats = {p: e for p, e in stats.items() if p in live}
        data = {
            "version": CACHE_VERSION,
            "source": self._source,
            "graph": cache["graph"] if reused and cache is not None else g.to_cache(),
            "stats": stats,
            "keys": {g.specs[i].name: k for i, k in enumerate(keys.keys) if k is not None},
            "kenv": kenv,
            "log": prep.log.index.to_cache(),
        }
        if not globs.folders_unchanged(g.scanned):
            data["source"] = None  # a glob's folder changed under us: recompile next time
        self._write_cache(data)
        try:
            compacted = prep.log.compact_if_needed()
        except OSError as exc:
            self.warnings.append(f"could not compact the completion log: {exc.strerror}")
            compacted = False
        if compacted:
            data["log"] = prep.log.index.to_cache()
            self._write_cache(data)

    def _journal_intact(self) -> bool:
        """Whether the cache's journal was whole (a damaged one leaves the cache older than the
        proof: its keys may predate the last partial builds, so every task is checked)."""
        return self._journal is not None and self._journal.base is not None

    def _save_journal(self, prep: Prepared) -> bool:
        """After a partial build: its few new stat entries and keys, appended to the cache's
        journal instead of the whole cache rewritten; False when the cache must be written."""
        cache, reused, _ = self._state
        journal = self._journal
        if cache is None or not reused or journal is None or journal.base is None:
            return False
        stats = prep.keys.stats
        entries = stats.entries
        for p in stats.updated:
            journal.stats[p] = entries.get(p)
        previous = cache.get("keys", {})
        specs, keys = prep.graph.specs, prep.keys.keys
        # every other task's key is the previous one (Keys.seed); the plan's may be learnt late
        for i in (*prep.keys.rekeyed, *prep.plan.to_run):
            key = keys[i]
            if key is not None and previous.get(specs[i].name) != key:
                journal.keys[specs[i].name] = key
        if len(journal.stats) + len(journal.keys) > max(JOURNAL_MIN, len(entries) // 8):
            return False  # it has grown: fold it into the cache
        if prep.log.index.size - cache.get("log", (0, 0))[1] > JOURNAL_LOG_TAIL:
            return False  # the log's index in the cache is far behind: write it again
        try:
            journal.write(self.state_dir)
        except OSError:
            return False
        previous.update(journal.keys)  # the cache as this session sees it from now on
        return True

    def _write_cache(self, data: dict[str, Any]) -> None:
        """Write the cache whole or not at all (under the lock: any temporary file is stale)."""
        _remove_stale_temporaries(self.state_dir)
        path = os.path.join(self.state_dir, "cache")
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                _cache_dump(data, f, self._graph_blob)
            os.replace(tmp, path)
            _unlink(os.path.join(self.state_dir, JOURNAL))  # folded in; its base is gone anyway
            self._journal = Journal(_cache_id(path), {}, {})
        except (OSError, ValueError) as exc:
            _unlink(tmp)
            _unlink(path)  # an older cache would still be right, but say nothing we did not check
            _unlink(os.path.join(self.state_dir, JOURNAL))
            self._journal = None
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            self.warnings.append(f"could not write the state cache {path}: {why}")
        self._cache = data


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


def _cache_dump(data: dict[str, Any], f: Any, known: GraphBlob | None) -> None:
    """MAGIC, the blobs of each part, the sizes (a list for a graph in pieces), their length,
    and a zlib.crc32 of all that: a cache with one wrong byte is no cache."""
    f.write(_MAGIC)
    crc = zlib.crc32(_MAGIC)
    sizes: list[Any] = []
    for name in (*_PARTS, None):
        value = data[name] if name else {k: v for k, v in data.items() if k not in _PARTS}
        reuse = known if name == "graph" and known is not None and known[0] is value else None
        split = type(reuse[1]) is list if reuse else name == "graph" and type(value) is list
        written = []
        for blob in _part_blobs(value, reuse, split, name in _FLAT):
            f.write(blob)
            crc = zlib.crc32(blob, crc)
            written.append(len(blob))
        sizes.append(written if split else written[0])
    sizes_blob = marshal.dumps(sizes)
    tail = sizes_blob + len(sizes_blob).to_bytes(4, "little")
    f.write(tail + zlib.crc32(tail, crc).to_bytes(4, "little"))


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


def _cache_loads(raw: bytes) -> tuple[dict[str, Any] | None, GraphBlob | None]:
    if not raw.startswith(_MAGIC) or len(raw) < len(_MAGIC) + 8:
        return None, None
    view = memoryview(raw)
    if zlib.crc32(view[:-4]) != int.from_bytes(view[-4:], "little"):
        return None, None
    view = view[:-4]
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
        fresh.write_checked(os.path.join(state_dir, JOURNAL), blob)


def _cache_id(path: str) -> tuple[int, ...] | None:
    """The cache file's identity: a journal applies only to the file it was written over."""
    try:
        st = os.stat(path)
        with os.fdopen(open_regular(path), "rb") as f:
            f.seek(-4, os.SEEK_END)
            crc = int.from_bytes(f.read(4), "little")
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, crc)


def _apply_journal(state_dir: str, data: dict[str, Any]) -> Journal:
    """Apply the cache's journal to ``data`` (the cache as loaded); the journal to extend."""
    base = _cache_id(os.path.join(state_dir, "cache"))
    try:
        raw = read_regular(os.path.join(state_dir, JOURNAL))
    except OSError:
        return Journal(base, {}, {})
    blob = fresh.checked(raw)
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


def _escapes(root: str, out: str) -> str | None:
    """Why removing ``out`` could reach outside the project (through a symlink), or None."""
    real_root = os.path.realpath(root)
    parent = os.path.realpath(os.path.join(root, os.path.dirname(out)))
    if parent != real_root and not parent.startswith(real_root + "/"):
        return f"its folder leads out of the project (to {parent})"
    target = os.path.join(parent, os.path.basename(out))
    state = os.path.realpath(os.path.join(root, STATE_DIR))
    if state == target or state.startswith(target + "/"):
        return f"it is or holds {STATE_DIR}"
    return None


def _settle(scanned: Mapping[str, int]) -> None:
    """Wait until no folder of ``scanned`` changed within the racy window (at most ~50 ms): a
    folder listed sooner is never trusted (unchanged.folder_stamp), and a build whose last task
    wrote into a globbed folder would leave no proof behind."""
    import time

    newest = 0
    for path in scanned:
        try:
            newest = max(newest, os.stat(path).st_mtime_ns)
        except OSError:
            continue
    wait = unchanged.RACY_NS - (time.time_ns() - newest)
    if 0 < wait <= unchanged.RACY_NS:
        time.sleep(wait / 1e9 + 0.002)
def _without_token(environ: Mapping[str, str], cache: Any) -> Mapping[str, str]:
    """dagrun's environment for its tasks: without the shared cache's token (it is dagrun's,
    and a task printing its environment would put it in a run file, and in the store)."""
    if cache is None or not cache.token_env or cache.token_env not in environ:
        return environ
    return {k: v for k, v in environ.items() if k != cache.token_env}


def _remove_stale_temporaries(state_dir: str) -> None:
    """Temporary state files a crashed or failed dagrun left (the caller holds the lock)."""
    try:
        names = os.listdir(state_dir)
    except OSError:
        return
    for name in names:
        if name.endswith(".tmp") and name.split(".", 1)[0] in ("cache", "fresh", "log"):
            _unlink(os.path.join(state_dir, name))



def default_jobs() -> int:
    return (os.cpu_count() or 1) + 2


def find_manifest(directory: str, file: str | None) -> str:
    """The manifest path for ``-C DIR`` and ``-f FILE``."""
    path = os.path.join(directory, file) if file else os.path.join(directory, "dagrun.toml")
    if not os.path.isfile(path):
        if file:
            raise DagrunError(f"no such manifest: {path}")
        raise DagrunError(f"no dagrun.toml in {os.path.abspath(directory)} (use -C DIR or -f FILE)")
    return path
