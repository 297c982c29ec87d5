"""The ledger: what a build records of its tasks, and how it tells a task's outputs are intact.

One object per build over the completion log (state/log.py):

The scheduler calls it from its loop (scheduler.Ledger), as Ninja's
FinishCommand writes the build log:

- ``started(i)``: before each attempt (the log's ``start`` record);
- ``succeeded(i, outcome)``: after a task exited 0: its outputs' identities and
  digests, its result's digest, its fingerprint and what it saw of its
  dependencies (outputs.py), or the reason it did not succeed after all; then
  a function task's result goes to whoever streams results (``stream_to``),
  and the task to the shared cache to be uploaded (``shared``, cache/);
- ``still_needed(i)``: when a pending task becomes ready, whether it must still
  run (early cutoff: cutoff.Cutoff over the plan's ``awaits``);
- ``result(task)``: a function task's result digest as its success holds it;
- ``touch(tasks)``: ``build --touch`` (Make's ``-t``, Snakemake's ``--touch``):
  record tasks as done unrun, with their current keys and their outputs as they
  are now, so the next build finds them up to date -- all of them, or none: a
  task with a missing output, or a function task (its result exists only once it
  ran), refuses the whole touch before anything is recorded;
- ``intact(i)``: its outputs are what its latest successful run left: the same
  identity, or, where the identity differs, the same content digest;
- ``upstream_changed(i)``: why it must run again although its key and outputs
  are as recorded: a dependency made something else since it ran;
- ``vouch(tasks, found)``: before planning, outputs whose identity changed but
  whose digest did not count as intact (a restored or copied tree), and their
  records are written again with the new identities (``refresh``), so the next
  build's fast check passes.

What the log recorded of outputs of tasks gone from the manifest is read by
leftovers.py (``dead_outputs``), which removes the untouched ones.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import cutoff, outputs
from .errors import DepfileError, LogError
from .executors import Outcome
from .fs import FileSystem, LocalFileSystem
from .graph import BuildGraph
from .hashing import Keys, digest_bytes
from .pycall import RESULTS, Results, result_digest
from .state import proof
from .state.log import CompletionLog, Identity, Made, recorded_digests


class Ledger:
    """What one build records in the completion log, and what it knows from it."""

    def __init__(
        self,
        graph: BuildGraph,
        keys: Keys,
        log: CompletionLog,
        fs: FileSystem,
        state_dir: str,
        wall: Callable[[], float],
    ) -> None:
        self.graph = graph
        self.keys = keys
        self.log = log
        self.fs = fs
        self.state_dir = state_dir
        self.wall = wall
        self.error: str | None = None  # the log could not be appended to
        self.last: Made | None = None  # what the latest success recorded made (the upload's)
        self.shared: Any = None  # this build's shared cache (cache.SharedCache), if any
        self._cutoff: cutoff.Cutoff | None = None  # the plan's pending tasks (awaits)
        self._stream: tuple[Callable[[str, Any], None], Mapping[str, str]] | None = None

    # ------------------------------------------------------------ recording

    def started(self, i: int) -> None:
        log = self.log
        try:
            log.started(self.graph.specs[i].name)  # an attempt that does not succeed: rerun
        except OSError as exc:
            why = f"cannot write the completion log {log.path}: {exc.strerror}"
            raise LogError(why) from None

    def succeeded(self, i: int, outcome: Outcome) -> str | None:
        """Log a task that exited 0 (or restored from the shared cache), or say why it did not
        succeed (an output not written, a full disk): the scheduler then counts it as failed
        with that error.  Then stream its result and hand it to the shared cache."""
        shared = self.shared
        problem = self._record(i, outcome, shared is not None and i in shared.restored)
        if problem is not None:
            return problem
        if self.graph.specs[i].call:
            self.stream(i)
        if shared is not None and self.last is not None:
            shared.succeeded(i, self.last, outcome)
        return None

    def _record(self, i: int, outcome: Outcome, restored: bool) -> str | None:
        spec, log = self.graph.specs[i], self.log
        found = identities(self.fs, spec.outputs)
        ids: list[Identity] = []
        for out in spec.outputs:
            identity = found[out]
            if identity is None:
                return f"declared output {out} was not written"
            ids.append(identity)
        try:
            key = cutoff.learn(self.keys, i) or self.keys.keys[i]  # a depfile's files join it
        except DepfileError as exc:
            return str(exc)
        if key is None:
            return None
        parts = self.keys.parts(i).to_json()
        made = self.made(i, key)
        if restored:
            made = dataclasses.replace(made, restored=True)
        self.last = made
        try:
            log.append(spec.name, key, parts, outcome.duration, outcome.maxrss_kb,
                       self.wall(), ids, made)
        except OSError as exc:
            self.error = f"cannot write the completion log {log.path}: {exc.strerror}"
            return self.error
        return None

    def touch(self, tasks: list[int]) -> str | None:
        """Record ``tasks`` as done unrun (see the module's doc); why not, or None."""
        problem = self._refusal(tasks)
        for i in tasks if problem is None else ():
            problem = self.succeeded(i, Outcome(0, 0, 0.0))
            if problem is not None:
                break
        return problem

    def _refusal(self, tasks: Iterable[int]) -> str | None:
        """Why ``tasks`` cannot be touched; None when each of them can."""
        for i in tasks:
            spec = self.graph.specs[i]
            if spec.call:
                return f"cannot touch '{spec.name}': a function task's result comes only from a run"
            found = identities(self.fs, spec.outputs)
            missing = [o for o in spec.outputs if found.get(o) is None]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                return (
                    f"cannot touch '{spec.name}': its output {missing[0]}{more} is missing "
                    "(build it, or create it first)"
                )
        return None

    def stream_to(self, on_result: Callable[[str, Any], None], results: Mapping[str, str]) -> None:
        """Hand each function task's result (``results``: task -> its file) to ``on_result``
        as the task succeeds (``stream`` for one up to date)."""
        self._stream = (on_result, results)

    def stream(self, i: int) -> None:
        if self._stream is None:
            return
        on_result, results = self._stream
        name = self.graph.specs[i].name
        if name in results:
            on_result(name, Results(results, self.log.result)[name])

    def result(self, task: str) -> str:
        """The digest of task's result as its latest success records it ("": none)."""
        return self.log.result(task)

    def made(self, i: int, key: str) -> Made:
        """What task ``i`` made, digested now (its outputs are hot in the page cache)."""
        spec = self.graph.specs[i]
        made = self.digests(spec.outputs)
        result = ""
        if spec.call:
            result = result_digest(os.path.join(self.state_dir, RESULTS, key)) or ""
        upstream = self.upstream(i)
        seen = outputs.combine(upstream.items())
        return Made(outputs.fingerprint(made, result, seen), seen, made, result, upstream)

    def upstream(self, i: int) -> dict[str, str]:
        """Each dependency's fingerprint now ("" where it has none on record)."""
        specs, log = self.graph.specs, self.log
        return {specs[d].name: log.fingerprint(specs[d].name) or "" for d in self.graph.deps[i]}

    def digests(self, paths: tuple[str, ...]) -> tuple[str, ...]:
        if isinstance(self.fs, LocalFileSystem):
            return outputs.digests(self.fs.root, paths)
        out = []
        for p in paths:
            chunks = self.fs.read_chunks(p)
            out.append("" if chunks is None else digest_bytes(*chunks))
        return tuple(out)

    # ------------------------------------------------------------ checking

    def awaits(self, waits: Mapping[int, str]) -> None:
        """The plan's pending tasks (cutoff.pending: task -> the task it waits on)."""
        self._cutoff = cutoff.Cutoff(
            self.keys, waits, self.log.done, self.intact, self.upstream_changed
        )

    def still_needed(self, i: int) -> bool:
        """Whether task ``i``, ready now, must still run (False: early cutoff)."""
        return self._cutoff is None or self._cutoff.still_needed(i)

    def upstream_changed(self, i: int) -> str | None:
        """Why task ``i`` must run although its key and outputs are as its latest success left
        them: a dependency made something else since; None when none did (or the record is
        older than fingerprints)."""
        spec = self.graph.specs[i]
        recorded = self.log.seen(spec.name)
        if recorded is None or not self.graph.deps[i]:
            return None
        now = self.upstream(i)
        if outputs.combine(now.items()) == recorded:
            return None
        record = self.log.latest(spec.name) or {}
        was = record.get("upstream_fp")
        was = was if isinstance(was, dict) else {}
        changed = sorted(n for n, f in now.items() if was.get(n) != f)
        if not changed:
            return "a dependency's output changed since it ran"
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        return f"output of dependency {changed[0]}{more} changed since it ran"

    def intact(self, i: int) -> bool:
        """Task ``i``'s outputs are what its latest successful run left (early cutoff's check)."""
        spec = self.graph.specs[i]
        done = self.log.success(spec.name)
        if done is None or len(done[1]) != len(spec.outputs):
            return False
        found = identities(self.fs, spec.outputs)
        if not self._same(i, done[1], found):
            return False
        if any(found[o] != tuple(w) for o, w in zip(spec.outputs, done[1], strict=True)):
            self._rewrite(i, found)
        return True

    def vouch(self, tasks: Iterable[int], found: dict[str, Identity | None], *, refresh: bool
              ) -> None:
        """For each of ``tasks`` whose key is its latest success's: outputs whose identity
        changed but whose digest did not are put in ``found`` with the recorded identity (the
        plan sees them intact); with ``refresh`` the task's record is written again."""
        specs, keys, log = self.graph.specs, self.keys.keys, self.log
        for i in tasks:
            spec = specs[i]
            if not spec.outputs:
                continue
            done = log.success(spec.name)
            if done is None or done[0] != keys[i] or len(done[1]) != len(spec.outputs):
                continue
            if all(found.get(o) == tuple(w) for o, w in zip(spec.outputs, done[1], strict=True)):
                continue
            if not self._same(i, done[1], found):
                continue
            if refresh and self._rewrite(i, found):
                continue  # the record has the identities in ``found`` now
            for o, was in zip(spec.outputs, done[1], strict=True):
                found[o] = tuple(was)  # type: ignore[assignment]

    def _same(self, i: int, recorded: Any, found: Mapping[str, Identity | None]) -> bool:
        """Whether task ``i``'s outputs, found with the identities ``found``, are what its
        latest success recorded: the same identity, or else the same digest."""
        outs = self.graph.specs[i].outputs
        changed = [o for o, was in zip(outs, recorded, strict=True) if found.get(o) != tuple(was)]
        if not changed:
            return True
        if any(found.get(o) is None for o in changed):
            return False
        was = recorded_digests(self.log, self.graph.specs[i].name)
        now = self.digests(tuple(changed))
        return all(d and d == was.get(o) for o, d in zip(changed, now, strict=True))

    def _rewrite(self, i: int, found: Mapping[str, Identity | None]) -> bool:
        """Record task ``i``'s latest success again with the identities in ``found`` (they were
        vouched for); False when it was not (a read-only log, or a write error, which only
        costs the next build's fast check)."""
        spec = self.graph.specs[i]
        if not self.log.writable:
            return False
        try:
            return self.log.refresh(spec.name, [found[o] for o in spec.outputs])  # type: ignore[misc]
        except OSError:
            return False


def identities(fs: FileSystem, paths: Iterable[str]) -> dict[str, Identity | None]:
    """Each output's identity now (state/log.py); None where it does not exist."""
    if isinstance(fs, LocalFileSystem):
        return proof.identities(fs.root, paths)
    found: dict[str, Identity | None] = {}
    for p in paths:
        st = fs.stat(p)
        found[p] = None if st is None else (st.size, st.ctime_ns, st.ino, 0)
    return found
