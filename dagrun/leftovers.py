"""What ``clean`` removes: declared outputs, depfiles, function results; and dead outputs.

``clean`` removes the named tasks' declared outputs (all without targets), or with
``dead`` the outputs the log records for tasks no longer in the manifest (as
``ninja -t cleandead``).  Only paths inside the project are removed, never the
project, its parent or .dagrun, and never through a symlink that leads out of the
project (``remove_output``).  A build removes a dead output still as its run left
it (``remove_dead``).

A task's depfile (``depfile = "build/x.d"``) is written by the task but is not one of its
declared outputs; a function task's result is pickled to ``.dagrun/results/<key>``.  Both
go with the task's outputs when it is cleaned.  A result file is named by its key alone,
and two function tasks with the same call and arguments share one: it is kept while another
task's latest run in the log has that key.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable

from .fs import FileSystem
from .graph import BuildGraph
from .outputs import digest
from .paths import output_problem
from .pycall import RESULTS
from .regular import unlink_quietly
from .state import STATE_DIR
from .state.log import CompletionLog, Identity, recorded_digests


def clean(
    graph: BuildGraph, log: CompletionLog, fs: FileSystem, root: str, state_dir: str,
    targets: Iterable[str] | None, cwd: str | None, dead: bool, warnings: list[str],
) -> list[str]:
    """Remove what ``clean`` removes (see the module's doc) and forget those tasks in the
    log; the outputs removed."""
    if dead:
        chosen = {t: tuple(o for o, _ in outs) for t, outs in dead_outputs(graph, log).items()}
    else:
        picked = graph.resolve(targets, cwd) if targets else range(len(graph.specs))
        chosen = {graph.specs[i].name: graph.specs[i].outputs for i in picked}
    remove_results(state_dir, log, chosen, not dead and not targets)
    for depfile in depfiles(graph, chosen):
        if os.path.lexists(os.path.join(root, depfile)):
            remove_output(fs, root, depfile, warnings)
    removed = []
    for task, outputs in chosen.items():
        removed += [out for out in outputs if remove_output(fs, root, out, warnings)]
        log.forget(task)
    return removed


def remove_output(fs: FileSystem, root: str, out: str, warnings: list[str]) -> bool:
    """Remove one output if it is safe to (see ``clean``); a warning says why not."""
    problem = output_problem(out) or _escapes(root, out)
    if problem:
        warnings.append(f"not removing '{out}': {problem}")
        return False
    return fs.remove(out)


def remove_dead(
    fs: FileSystem, root: str, log: CompletionLog, task: str, out: str, same_identity: bool,
    warnings: list[str], say: Callable[[str], None] | None,
) -> bool:
    """Remove an output of a task gone from the manifest if its run left it as it is (the
    same identity, or else the same digest: a tree moved or restored since)."""
    recorded = None if same_identity else recorded_digests(log, task).get(out)
    if not same_identity and (
        recorded is None or digest(os.path.join(root, out)) != recorded
    ):
        warnings.append(
            f"kept {out}: task '{task}' that wrote it is no longer in the manifest, but it "
            "was changed since (remove it, or `dagrun clean --dead`)"
        )
        return False
    if not remove_output(fs, root, out, warnings):
        return False
    if say is not None:
        say(f"removed {out} (its task '{task}' is no longer in the manifest)")
    return True


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


def depfiles(graph: BuildGraph, tasks: Iterable[str]) -> list[str]:
    """The depfiles (relative to the root) of ``tasks`` that the manifest declares."""
    found = []
    for task in tasks:
        i = graph.index.get(task)
        if i is not None and graph.specs[i].depfile:
            found.append(graph.specs[i].depfile)
    return found


def remove_results(state_dir: str, log: CompletionLog, tasks: Iterable[str], every: bool) -> None:
    """Remove the result files of ``tasks``' latest runs (call before the log forgets them);
    ``every``: every task is cleaned, so the whole results folder goes."""
    folder = os.path.join(state_dir, RESULTS)
    if every:
        import shutil  # not at the top: it imports bz2 and lzma, and builds import this module

        shutil.rmtree(folder, ignore_errors=True)
        return
    if not os.path.isdir(folder):
        return
    latest = log.index.latest
    cleaned = set(tasks)
    kept = Counter(entry[0] for task, entry in latest.items() if task not in cleaned)
    for task in cleaned:
        entry = latest.get(task)
        if entry is not None and not kept[entry[0]]:
            unlink_quietly(os.path.join(folder, entry[0]))


def dead_outputs(
    graph: BuildGraph, log: CompletionLog
) -> dict[str, tuple[tuple[str, Identity], ...]]:
    """Task -> (output, identity its run left) of each output the log records, for every task
    it has a success of that the manifest no longer has (outputs another task of the manifest
    declares are left out)."""
    out: dict[str, tuple[tuple[str, Identity], ...]] = {}
    index, producers = graph.index, graph.producers
    for task, entry in list(log.index.latest.items()):
        if task in index:
            continue
        record = log.latest(task) or {}
        parts = record.get("parts")
        names = parts.get("outputs", ()) if isinstance(parts, dict) else ()
        if not isinstance(names, list) or len(names) != len(entry[2]):
            names = []
        out[task] = tuple(
            (name, identity) for name, identity in zip(names, entry[2], strict=True)
            if isinstance(name, str) and name not in producers
        )
    return out
