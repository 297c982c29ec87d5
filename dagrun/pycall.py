"""Python function tasks: the job a function task carries and the results it leaves.

Naming a function, checking a ``call``, packing its arguments and keying its
code are in ``pycode.py`` (the manifest and hashing need them; this module
needs the graph).

Results are pickled to ``.dagrun/results/<key>``: pickle because a result is
any Python value (a DataFrame, a model, a dict of arrays) and both sides of
the file are the same Python with the same code; a key names exactly one run,
so a result is never stale, and deleting the folder only costs reruns.  A
result's digest is kept in its task's success record in the log, and a result
is loaded only when its bytes have that digest (``load_result``): a damaged or
planted file is never unpickled (unpickling runs code), and the planner reruns
its producer instead (``results_view``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .digest import digest_bytes
from .pycode import check_target as check_target  # re-exported: pycall.target_of & co.
from .pycode import code_digest as code_digest
from .pycode import pack_args as pack_args
from .pycode import target_of as target_of

if TYPE_CHECKING:  # pickle is imported where used: a build without functions skips it
    from .graph import BuildGraph

RESULTS = "results"  # the folder in .dagrun/


@dataclass(frozen=True, slots=True)
class Call:
    """What a function job carries besides its Job: the function, its arguments, its inputs."""

    target: str  # "package.module:qualname"
    code_file: str  # the module's source file, absolute; "" for a compiled module
    args: bytes  # pickle of (args, kwargs)
    # (task, matrix group or "", key, result digest) of function deps
    upstream: tuple[tuple[str, str, str, str], ...]
    key: str  # the result goes to results_dir/key
    results_dir: str
    io_bound: bool = False


# ---------------------------------------------------------------- jobs and results


def make_call(
    graph: BuildGraph, i: int, keys: list[str | None], results_dir: str,
    digest_of: Callable[[str], str] = lambda task: "",
) -> Call:
    """The Call of function task ``i``: its upstream results are those of its function deps,
    each with the digest its success record holds (``digest_of``)."""
    specs = graph.specs
    spec = specs[i]
    upstream = []
    for d in graph.deps[i]:
        dep = specs[d]
        key = keys[d]
        if dep.call and key is not None:
            upstream.append((dep.name, dep.group or "", key, digest_of(dep.name)))
    return Call(
        target=spec.call,
        code_file=spec.code_file if spec.code_file.startswith("/") or not spec.code_file
        else os.path.join(graph.root, spec.code_file),
        args=spec.args,
        upstream=tuple(upstream),
        key=keys[i] or "",
        results_dir=results_dir,
        io_bound=spec.io_bound,
    )


def result_digest(path: str) -> str | None:
    """The digest of a result file's bytes (None: it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return digest_bytes(f.read())
    except OSError:
        return None


def load_result(path: str, digest: str, task: str) -> Any:
    """The result in ``path``, unpickled only if its bytes have ``digest`` (its success
    record's); LookupError saying why otherwise (a missing, damaged or planted file)."""
    import pickle

    return pickle.loads(checked_bytes(path, digest, task, "not loaded"))


def checked_bytes(path: str, digest: str, task: str, otherwise: str) -> bytes:
    """The bytes of ``task``'s cached result in ``path``, if they have ``digest``; else
    LookupError saying why, and ``otherwise`` (what is not done with them)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise LookupError(f"the cached result of task '{task}' is missing ({path})") from None
    if not digest or digest_bytes(data) != digest:
        raise LookupError(
            f"the cached result of task '{task}' ({path}) is not the one its run left "
            f"(damaged or replaced): {otherwise}"
        )
    return data


class Results(Mapping[str, Any]):
    """Task name -> result, read from ``.dagrun/results/`` on first access and checked
    against the digest in the task's success record (``digest_of``: the log's ``result``)."""

    def __init__(self, paths: Mapping[str, str], digest_of: Callable[[str], str]) -> None:
        self._paths = dict(paths)
        self._digest_of = digest_of
        self._values: dict[str, Any] = {}

    def __getitem__(self, task: str) -> Any:
        if task not in self._values:
            path = self._paths[task]
            self._values[task] = load_result(path, self._digest_of(task), task)
        return self._values[task]

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __repr__(self) -> str:
        return f"Results({sorted(self._paths)})"


def results_of(graph: BuildGraph, keys: list[str | None], state_dir: str) -> dict[str, str]:
    """Function task name -> the file its result has (or will have) under its current key."""
    folder = os.path.join(state_dir, RESULTS)
    specs = graph.specs
    return {
        specs[i].name: os.path.join(folder, key)
        for i in graph.calls
        if (key := keys[i]) is not None
    }


class _ResultsView:
    """The completion log as the planner sees it: a function task whose result file is gone,
    or is not the one its run left, is not up to date (deleting ``.dagrun/results`` only costs
    reruns; a damaged or planted result reruns its producer)."""

    def __init__(self, log: Any, missing: set[str]) -> None:
        self.log = log
        self.missing = missing

    def success(self, task: str) -> Any:
        """The task's latest success (key, output identities), unless its result file is gone."""
        found = self.log.success(task)
        return None if found is not None and found[0] in self.missing else found

    def unfinished(self, task: str) -> bool:
        return bool(self.log.unfinished(task))

    def latest(self, task: str) -> dict[str, Any] | None:
        record: dict[str, Any] | None = self.log.latest(task)
        return record


def results_view(
    graph: BuildGraph, keys: list[str | None], log: Any, state_dir: str,
    digest: Callable[[str], str | None] = result_digest,
) -> Any:
    """``log`` as the planner sees it; ``digest`` gives a result file's digest (a stat cache's,
    so that an unchanged file is not read again)."""
    paths = results_of(graph, keys, state_dir)
    if not paths:
        return log
    missing = set()
    for task, path in paths.items():
        key = os.path.basename(path)
        done = log.success(task)
        if done is None or done[0] != key:
            continue  # it runs anyway
        recorded = log.result(task)
        if not recorded or digest(path) != recorded:
            missing.add(key)
    return _ResultsView(log, missing) if missing else log

