"""Session: one manifest's build, plan, touch and clean operations -- a thin front.

    Session.build: lock (state/lock.py)
        -> Planner.prepare (pipeline.py): graph, keys, plan, the ledger
        -> build.run_prepared (build.py): executors, the Scheduler, which records through
           the Ledger (ledger.py) into the completion log
        -> the state cache or its journal (state/cache.py), the no-op proof (state/proof.py)

Everything lives in ``.dagrun/`` beside the manifest (state/__init__.py).  A
``.dagrun`` that cannot be written still answers a no-op build, ``-n`` and ``list``
(the lock is taken through a read-only descriptor); a build that must run a task,
or ``clean``, then stops with a LogError.  A log that cannot be appended to (disk
full) is a LogError too, after the build; a cache that cannot be written is a
warning (it is only a cache).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import build, leftovers
from .clock import Clock, MonotonicClock
from .errors import DagrunError, LogError
from .fs import FileSystem, LocalFileSystem
from .graph import BuildGraph
from .manifest import Manifest
from .pipeline import Planner, Prepared, Project, Request
from .plan import Plan
from .pool_status import SNAPSHOT, executor_pools, read_snapshot
from .scheduler import BuildResult, Reporter, StopFlag
from .state import STATE_DIR, proof
from .state.cache import StateCache, remove_stale_temporaries
from .state.lock import StateLock
from .state.log import Identity

if TYPE_CHECKING:
    from .build import ExecutorFactory
    from .numa import Topology

__all__ = ["STATE_DIR", "Prepared", "Session"]


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
        p = self.project = Project.of(manifest_path, manifest, environ, fs, overrides, cwd)
        self.manifest_path, self.manifest_name, self.root = p.manifest_path, p.manifest_name, p.root
        self.environ, self.fs, self.state_dir, self.cwd = p.environ, p.fs, p.state_dir, p.cwd
        self.overrides, self.executor_factory = dict(p.overrides), executor_factory
        self.clock = clock or MonotonicClock()
        self.on_plan = on_plan  # sees each plan before it runs (watch)
        self.stops = stops  # one set from another thread: the build stops as on Ctrl-C (watch)
        self.on_wait = on_wait  # messages for the user (waiting for the lock, a removed output)
        self.on_result = on_result  # streams function tasks' results as they finish (pycall.py)
        # task -> the files its depfile listed (the plan's, then updated as tasks succeed)
        self.found: Mapping[str, tuple[str, ...]] = {}
        self.warnings: list[str] = []
        self.keep_last = False  # keep the last build's state until this session goes (the CLI:
        # until exit, which frees it at once rather than object by object)
        self._lock = StateLock(p.state_dir, p.root, wait=wait_for_lock, on_wait=on_wait)
        self._cache = StateCache(p.state_dir, self.warnings)
        self._planner = Planner(p, self._cache, self._lock, self.warnings, self.clock.wall,
                                on_wait, topology)
        self._proof: proof.Delta | None = None  # the proof this session wrote last (no changes)
        self._last: Prepared | None = None

    def ask_from(self, cwd: str | None, manifest_name: str,
                 on_wait: Callable[[str], None] | None) -> None:
        """The same project asked again from another folder, naming the manifest another way,
        by another client (the build server keeps one Session for every build)."""
        p = self.project = self.project._replace(cwd=cwd, manifest_name=manifest_name)
        self.manifest_name, self.cwd, self.on_wait = p.manifest_name, p.cwd, on_wait
        self._planner.project, self._planner.on_wait, self._lock.on_wait = p, on_wait, on_wait

    @property
    def read_only(self) -> str | None:
        """Why .dagrun cannot be written (found when the lock was taken), else None."""
        return self._lock.read_only

    @property
    def topology(self) -> Topology:
        return self._planner.topology

    def lock(self) -> StateLock:
        """The state folder's lock (state/lock.py): ``with session.lock(): ...``."""
        return self._lock

    def identities(self, paths: Iterable[str]) -> dict[str, Identity | None]:
        """Each output's identity now (state/log.py); None where it does not exist."""
        return self._planner.identities(paths)

    # ------------------------------------------------------------ public operations

    def build(
        self,
        targets: Iterable[str] | None = None,
        *,
        reporter: Reporter,
        jobs: int | None = None,
        failures_allowed: int | None = None,
        explain: bool = False,
        delta: proof.Delta | None = None,
        changed: Collection[str] | None = None,
        force: bool = False,
        cache: str = "auto",
    ) -> BuildResult:
        """Build ``targets`` (the defaults when None).

        ``cache``: the shared cache ([cache]): "auto" (a failure of it is a warning),
        "required" (an error), "read-only" (looked up, never written) or "off" (not used).

        ``delta`` is the no-op check's finding (proof.examine: the CLI asked it just before);
        ``changed`` is for a caller that watches files (``dagrun watch``): the root-relative
        paths that changed since this Session's previous build, vouching that nothing else
        did.  Either one lets the build re-key and decide only the tasks the changes reach,
        when the state is still the one proven after the previous build; otherwise it is
        ignored and every task is checked.  ``force`` runs the named targets (every selected
        task without targets) even when they are up to date.
        """
        with self._lock:
            started = self.clock.now()  # the summary's time: from here, as a wall clock
            prep = self._prepare_build(targets, explain, delta, changed, force)
            try:
                result = self._run(prep, reporter, jobs, failures_allowed, explain, cache,
                                   started)
                if result.ok:
                    self._planner.rescan(prep)
            finally:
                self._save(prep)
                prep.log.close()
            self._built(prep, targets, result)
            return result

    def _built(self, prep: Prepared, targets: Iterable[str] | None, result: BuildResult) -> None:
        """After the log is closed: a log write that failed is an error; else the no-op proof,
        and the keys a next build of this graph may start from (the cache holds them now)."""
        assert prep.ledger is not None
        if prep.ledger.error is not None:
            raise LogError(prep.ledger.error)
        self._record_proof(prep, targets, result)
        if self.keep_last:
            self._last = prep
        self._planner.keys_after = (prep.graph, prep.keys.keys) if self.read_only is None else None

    def _prepare_build(
        self, targets: Iterable[str] | None, explain: bool, delta: proof.Delta | None,
        changed: Collection[str] | None, force: bool,
    ) -> Prepared:
        """Under the lock: forget the proof (it is written again after a build that ends
        well) and prepare, from ``delta`` when it still holds."""
        delta = None if force else self._usable_delta(delta, changed)
        proof.forget(self.state_dir)
        planner = self._planner
        planner.seed, planner.keys_after = planner.keys_after, None  # again if this one ends well
        self._proof = None
        if self.read_only is None:
            remove_stale_temporaries(self.state_dir)
        prep = self._prepare(targets, explain=explain, delta=delta, force=force, building=True)
        self._refuse_if_read_only(prep)
        return prep

    def touch(self, targets: Iterable[str] | None = None) -> list[str]:
        """Record every task a build of ``targets`` would run as done, without running it
        (Ledger.touch); DagrunError, and nothing recorded, when one of them cannot be."""
        with self._lock:
            proof.forget(self.state_dir)
            prep = self._prepare(targets, explain=False)
            chosen = [i for i in prep.plan.to_run if not prep.graph.specs[i].always]
            try:
                self._refuse_if_read_only(prep)
                assert prep.ledger is not None
                problem = prep.ledger.touch(chosen)
            finally:
                self._save(prep)
                prep.log.close()
            if problem is not None:
                raise DagrunError(problem)
            return [prep.graph.specs[i].name for i in chosen]

    def plan(
        self, targets: Iterable[str] | None = None, *, explain: bool = True, force: bool = False
    ) -> Prepared:
        """The plan without running anything (``-n``, ``list``, ``graph``)."""
        with self._lock.reading():
            prep = self._prepare(targets, explain=explain, force=force)
            self._save(prep)
            prep.log.close()
            return prep

    def clean(self, targets: Iterable[str] | None = None, *, dead: bool = False) -> list[str]:
        """Remove the named tasks' declared outputs (all without targets), their depfiles and
        function results; forget their keys.  ``dead``: instead, the outputs the log records
        for tasks no longer in the manifest (leftovers.py says what is never removed)."""
        with self._lock:
            if self.read_only is not None:
                why = f"{self.state_dir} cannot be written ({self.read_only})"
                raise LogError(f"cannot clean: {why}")
            cache = self._cache.load()
            graph, _ = self._planner.graph(cache)
            log = self._planner.open_log(cache)
            try:
                return leftovers.clean(graph, log, self.fs, self.root, self.state_dir, targets,
                                       self.cwd, dead, self.warnings)
            finally:
                if cache is not None:
                    cache["log"] = log.index.to_cache()
                    self._cache.write(cache)
                log.close()

    def load_graph(self) -> BuildGraph:
        return self._planner.graph(self._cache.load())[0]

    def executor_pools(self, *, probe: bool = True) -> list[Any]:
        """Each executor's pool (``dagrun status --executors``), live while a build runs.

        With no build running, ``probe`` checks whether each ssh host can be reached now.
        """
        graph = self.load_graph()
        pool = self._planner.core_pool(graph)
        snapshot = read_snapshot(os.path.join(self.state_dir, SNAPSHOT))
        probes = None
        if snapshot is None and probe:
            probes = build.probe(graph, self.state_dir, self.environ)
        return executor_pools(graph.manifest, pool, self.topology.logical, snapshot, probes)

    # ------------------------------------------------------------ the steps

    def _prepare(
        self, targets: Iterable[str] | None, *, explain: bool, delta: proof.Delta | None = None,
        force: bool = False, building: bool = False,
    ) -> Prepared:
        """The plan of ``targets`` (under the lock)."""
        prep = self._planner.prepare(Request(list(targets or ()), explain, delta, force, building))
        self.found = prep.keys.found
        return prep

    def _usable_delta(
        self, delta: proof.Delta | None, changed: Collection[str] | None
    ) -> proof.Delta | None:
        """The delta to build from, if the proof it was found against is still the state's
        (under the lock: no other dagrun built or cleaned in between)."""
        if changed is not None and delta is None and self._proof is not None:
            was = self._proof
            known, produced = was.source_rows.where(), was.output_rows.where()
            delta = proof.Delta(
                {p for p in changed if p in known}, {p for p in changed if p in produced},
                was.source_rows, was.output_rows, was.stamp,
            )
        if delta is None or proof.stamp(self.state_dir) != delta.stamp:
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

    def _run(
        self, prep: Prepared, reporter: Reporter, jobs: int | None,
        failures_allowed: int | None, explain: bool, cache: str, started: float,
    ) -> BuildResult:
        m = prep.graph.manifest
        if self.on_plan is not None:
            self.on_plan(prep.graph, prep.plan)
        setup = build.BuildSetup(
            state_dir=self.state_dir,
            environ=build.without_token(self.environ, m.cache),
            clock=self.clock,
            jobs=jobs or m.jobs or build.default_jobs(),
            failures_allowed=m.failures_allowed if failures_allowed is None else failures_allowed,
            explain=explain,
            pool=prep.pool,
            factory=self.executor_factory,
            stops=self.stops,
            say=self.on_wait,  # messages for the user (the URL workers connect to)
            started=started,
        )
        return build.run_prepared(prep, reporter, setup, cache_mode=cache, environ=self.environ,
                                  on_result=self.on_result, warn=self.warnings.append)

    def _save(self, prep: Prepared) -> None:
        """The state cache after a build or a plan: its journal after a partial build."""
        if self.read_only is not None:
            return
        basis, cache = prep.basis, self._cache
        assert basis is not None
        ran = prep.plan.to_run
        if prep.delta is not None and cache.save_journal(basis, prep.graph, prep.keys, prep.log,
                                                         ran):
            return
        cache.save(basis, prep.graph, prep.keys, prep.log)

    def _record_proof(
        self, prep: Prepared, targets: Iterable[str] | None, result: BuildResult
    ) -> None:
        """After a build that left every selected task up to date: the no-op proof."""
        if self.manifest_path is None or not result.ok or self.warnings or self.read_only:
            return
        if self.overrides:  # the proof is of the manifest as written: a plain build checks
            return
        if targets and self.cwd is not None and self.cwd != self.root:
            return  # its targets may be paths relative to the subfolder (see entry.py)
        if not isinstance(self.fs, LocalFileSystem):
            return
        planner = self._planner
        manifest = (self.manifest_path, planner.source[2], planner.manifest_stat)
        self._proof = proof.prove(self.state_dir, prep, manifest, tuple(targets or ()))
