"""What ``clean`` removes besides declared outputs: depfiles and function results.

A task's depfile (``depfile = "build/x.d"``) is written by the task but is not one of its
declared outputs; a function task's result is pickled to ``.dagrun/results/<key>``.  Both
go with the task's outputs when it is cleaned.  A result file is named by its key alone,
and two function tasks with the same call and arguments share one: it is kept while another
task's latest run in the log has that key.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterable

from .completion_log import CompletionLog
from .fs import unlink_quietly
from .graph import BuildGraph
from .pycall import RESULTS


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
