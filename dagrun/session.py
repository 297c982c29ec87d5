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
import functools
import itertools
import marshal
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from . import cutoff, fresh, globs
from .clock import Clock, MonotonicClock
from .completion_log import CompletionLog, Identity, LogIndex
from .errors import DagrunError, DepfileError, LogError, ManifestError
from .executors import Outcome
from .fs import FileSystem, LocalFileSystem
from .fs import unlink_quietly as _unlink
from .graph import BuildGraph, compile, gc_paused
from .hashing import Keys, StatCache, digest_bytes, key_env_names
from .manifest import Manifest, output_problem
from .manifest import read as read_manifest
from .numa import CorePool, Topology
from .plan import Plan, make, output_changes
from .pycall import Results, results_of, results_view
from .scheduler import BuildResult, Reporter, StopFlag

if TYPE_CHECKING:
    from .build import ExecutorFactory

STATE_DIR = ".dagrun"
CACHE_VERSION = 7  # 7: the graph in pieces (BuildGraph.to_cache)


@dataclass
class Prepared:
    """A graph with keys and a plan, ready to run (or to show)."""

    graph: BuildGraph
    keys: Keys
    log: CompletionLog
    plan: Plan
    pool: CorePool | None = None  # the local executor's core pool, when one is configured
    waits: Mapping[int, str] = field(default_factory=dict)  # pending task -> the task it waits on


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
    ) -> None:
        if (manifest_path is None) == (manifest is None):
            raise ValueError("give exactly one of manifest_path and manifest")
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
        self._graph_blob: GraphBlob | None = None  # the cache file's graph part, as read
        self._topology = topology  # None: read this machine's when a core_pool needs it
        self.on_result = on_result  # streams function tasks' results as they finish (pycall.py)
        self.read_only: str | None = None  # why .dagrun cannot be written (lock), else None
        self._log_error: str | None = None  # the completion log could not be appended to

    # ------------------------------------------------------------ public operations

    def build(
        self,
        targets: Iterable[str] | None = None,
        *,
        reporter: Reporter,
        jobs: int | None = None,
        failures_allowed: int | None = None,
        explain: bool = False,
    ) -> BuildResult:
        with self.lock():
            fresh.forget(self.state_dir)
            self._log_error = None
            if self.read_only is None:
                _remove_stale_temporaries(self.state_dir)
            prep = self._prepare(targets, explain=explain)
            self._refuse_if_read_only(prep)
            try:
                result = self._run(prep, reporter, jobs, failures_allowed, explain)
            finally:
                self._save(prep)
                prep.log.close()
            if self._log_error is not None:
                raise LogError(self._log_error)
            self._record_fresh(prep, targets, result)
            return result

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
        """After a build that left every selected task up to date: the no-op proof (fresh.py)."""
        if self.manifest_path is None or not result.ok or self.warnings or self.read_only:
            return
        if not isinstance(self.fs, LocalFileSystem):
            return
        g, entries = prep.graph, prep.keys.stats.entries
        sources: dict[str, fresh.SourceRow] = {}  # the proof's rows as they are written
        outputs: list[fresh.OutputRow] = []
        latest = prep.log.index.latest
        for i in prep.plan.selected:
            spec = g.specs[i]
            if spec.always:
                return
            for p in (*g.sources[i], *prep.keys.found.get(spec.name, ())):
                e = entries.get(p)
                if e is None or not e[5]:  # untrusted (racy) digests are re-hashed next time
                    return
                sources[p] = (p, e[0], e[1], e[2], e[3])
            entry = latest.get(spec.name)
            if entry is None or len(entry[2]) != len(spec.outputs):
                return
            for o, ident in zip(spec.outputs, entry[2], strict=True):
                outputs.append((o, *ident))
        try:
            fresh.record(
                self.state_dir,
                self.manifest_path,
                self._source[2],
                tuple(targets or ()),
                self._state[2],
                g.scanned,
                list(sources.values()),
                outputs,
                len(prep.plan.selected),
            )
        except OSError:
            fresh.forget(self.state_dir)

    def plan(self, targets: Iterable[str] | None = None, *, explain: bool = True) -> Prepared:
        """The plan without running anything (``-n``, ``list``, ``graph``)."""
        with self.lock():
            prep = self._prepare(targets, explain=explain)
            self._save(prep)
            prep.log.close()
            return prep

    def clean(self, targets: Iterable[str] | None = None, *, dead: bool = False) -> list[str]:
        """Remove the named tasks' declared outputs (all without targets); forget their keys.

        ``dead``: instead, the outputs the log records for tasks no longer in the
        manifest (as ``ninja -t cleandead``).  Only paths inside the project are
        removed, never the project, its parent or .dagrun, and never through a
        symlink that leads out of the project.
        """
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
                    chosen = _dead_outputs(graph, log)
                else:
                    picked = graph.resolve(targets) if targets else range(len(graph.specs))
                    chosen = {graph.specs[i].name: graph.specs[i].outputs for i in picked}
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

    def _open_lock(self, path: str) -> int | None:
        """The lock file, open to write; None (``read_only`` says why) if .dagrun is read-only."""
        import errno

        self.read_only = None
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise LogError(f"cannot use {self.state_dir}: {exc.strerror}") from None
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
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # no lock file in a folder nobody may write to: nobody is building
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------ preparing

    def _prepare(self, targets: Iterable[str] | None, *, explain: bool) -> Prepared:
        cache = self._load_cache()
        graph, reused = self._graph(cache)
        self.warnings.extend(graph.manifest.warnings)
        selected = graph.select(targets)
        stats = StatCache(self.fs, cache.get("stats") if cache else None)
        kenv = {n: self.environ.get(n) for n in key_env_names(graph)}
        previous = None
        if reused and cache is not None and cache.get("kenv") == kenv:
            previous = cache.get("keys")
        keys = Keys(graph, stats, self.environ, previous)
        log = self._open_log(cache)
        keys.found = self.found = cutoff.found_in_log(graph, log, range(len(graph.specs)))
        keys.compute(selected)
        others = [i for i in graph.order if keys.keys[i] is None]
        if others:  # keep every key current, so the cache never holds a stale one
            self._compute_quietly(keys, others)
        pool = self._core_pool(graph)
        found = self.identities([o for i in selected for o in graph.specs[i].outputs])
        plan = make(
            graph,
            keys.keys,
            results_view(graph, keys.keys, log, self.state_dir),
            found.get,
            selected,
            parts=keys.parts if explain else None,
        )
        waits = cutoff.pending(graph, plan, keys.by_outputs)
        plan = cutoff.with_pending(plan, waits)
        self._state = (cache, reused, kenv)
        return Prepared(graph, keys, log, plan, pool, waits)

    def identities(self, paths: Iterable[str]) -> dict[str, Identity | None]:
        """Each output's identity now (completion_log.Identity); None where it does not exist."""
        if isinstance(self.fs, LocalFileSystem):
            return fresh.identities(self.fs.root, paths)
        found: dict[str, Identity | None] = {}
        for p in paths:
            st = self.fs.stat(p)
            found[p] = None if st is None else (st.size, st.mtime_ns, st.ino, 0)
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
            graph = BuildGraph.from_cache(cache["graph"])
            if graph is not None and globs.folders_unchanged(graph.scanned):
                if self.manifest_name is not None:  # named as the user names it today
                    graph.manifest = replace(graph.manifest, source=self._source_name())
                return graph, True
        return compile(self._load_manifest(data)), False

    def _read_manifest(self) -> bytes | None:
        if self._manifest is not None:
            return None
        assert self.manifest_path is not None
        return read_manifest(self.manifest_path)

    def _load_manifest(self, data: bytes | None) -> Manifest:
        if self._manifest is not None:
            return self._manifest
        from .manifest import load

        assert self.manifest_path is not None
        return load(self.manifest_path, source=self._source_name(), data=data)

    def _source_name(self) -> str:
        """The manifest as messages name it: as the user gave it if relative, else absolute."""
        assert self.manifest_path is not None and self.manifest_name is not None
        relative = not os.path.isabs(self.manifest_name)
        return self.manifest_name if relative else self.manifest_path

    def _source_id(self, data: bytes | None) -> tuple[Any, ...]:
        if data is None:
            return ("api", self.root, digest_bytes(repr(self._manifest).encode()))
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
        specs = graph.specs

        def on_success(i: int, outcome: Outcome) -> str | None:
            problem = self._record_success(prep, i, outcome)
            if problem is None and specs[i].call:
                stream(i)
            return problem

        def on_start(i: int) -> None:
            try:
                log.started(specs[i].name)  # an attempt that does not succeed leaves it to run
            except OSError as exc:
                why = f"cannot write the completion log {log.path}: {exc.strerror}"
                raise LogError(why) from None

        results = results_of(graph, keys.keys, self.state_dir)
        stream = functools.partial(_stream, self.on_result, graph, results)
        for i in prep.plan.up_to_date:
            stream(i)
        if self.on_plan is not None:
            self.on_plan(graph, prep.plan)
        setup = build.BuildSetup(
            state_dir=self.state_dir,
            environ=self.environ,
            clock=self.clock,
            jobs=jobs or m.jobs or default_jobs(),
            failures_allowed=m.failures_allowed if failures_allowed is None else failures_allowed,
            explain=explain,
            pool=prep.pool,
            factory=self.executor_factory,
            stops=self.stops,
            say=self.on_wait,  # messages for the user (the URL workers connect to)
        )
        check = cutoff.Cutoff(keys, prep.waits, log.done, lambda i: self._outputs_intact(prep, i))
        result = build.run(
            graph, prep.plan, keys.keys, reporter, setup, on_success, log.index.durations,
            on_start,
            check.still_needed,
        )
        done = {*result.succeeded, *result.up_to_date}
        values = {t: p for t, p in results.items() if t in done}
        return dataclasses.replace(result, values=Results(values))

    def _outputs_intact(self, prep: Prepared, i: int) -> bool:
        """Task ``i``'s outputs are what its latest successful run left (early cutoff's check)."""
        spec = prep.graph.specs[i]
        done = prep.log.success(spec.name)
        if done is None:
            return False
        return not output_changes(spec, done[1], self.identities(spec.outputs).get)

    def _record_success(self, prep: Prepared, i: int, outcome: Outcome) -> str | None:
        """Log a task that exited 0, or say why it did not succeed (an output not written, a
        full disk): the scheduler then counts it as failed with that error."""
        spec, key, log = prep.graph.specs[i], prep.keys.keys[i], prep.log
        found = self.identities(spec.outputs)
        outputs: list[Identity] = []
        for out in spec.outputs:
            identity = found[out]
            if identity is None:
                return f"declared output {out} was not written"
            outputs.append(identity)
        try:
            key = cutoff.learn(prep.keys, i) or key  # a depfile's files join the key
        except DepfileError as exc:
            return str(exc)
        if key is None:
            return None
        parts = prep.keys.parts(i).to_json()
        try:
            log.append(spec.name, key, parts, outcome.duration, outcome.maxrss_kb,
                       self.clock.wall(), outputs)
        except OSError as exc:
            self._log_error = f"cannot write the completion log {log.path}: {exc.strerror}"
            return self._log_error
        return None

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
            with open(os.path.join(self.state_dir, "cache"), "rb") as f:
                data, self._graph_blob = _cache_loads(f.read())
        except (OSError, EOFError, ValueError, TypeError):
            return None
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return None
        self._cache = data
        return data

    def _save(self, prep: Prepared) -> None:
        if self.read_only is not None:
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

    def _write_cache(self, data: dict[str, Any]) -> None:
        """Write the cache whole or not at all (under the lock: any temporary file is stale)."""
        _remove_stale_temporaries(self.state_dir)
        path = os.path.join(self.state_dir, "cache")
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                _cache_dump(data, f, self._graph_blob)
            os.replace(tmp, path)
        except (OSError, ValueError) as exc:
            _unlink(tmp)
            _unlink(path)  # an older cache would still be right, but say nothing we did not check
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


def _dead_outputs(graph: BuildGraph, log: CompletionLog) -> dict[str, tuple[str, ...]]:
    """Task -> outputs the log records, for each logged task that the manifest no longer has."""
    dead = {}
    for task in list(log.index.latest):
        if task in graph.index:
            continue
        record = log.latest(task) or {}
        parts = record.get("parts")
        outputs = parts.get("outputs", ()) if isinstance(parts, dict) else ()
        dead[task] = tuple(
            o for o in outputs if isinstance(o, str) and o not in graph.producers
        )
    return dead


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


def _stream(
    on_result: Callable[[str, Any], None] | None, graph: BuildGraph, results: Mapping[str, str],
    i: int,
) -> None:
    """Hand function task ``i``'s result to ``on_result``, if one was given."""
    name = graph.specs[i].name
    if on_result is not None and name in results:
        on_result(name, Results(results)[name])


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
