"""``build --touch`` (Make's ``-t``, Snakemake's ``--touch``): record tasks as done unrun.

A touched task gets a success record with its current key and its outputs as they are
now, as if it had just run and written them: the next build finds it up to date.  Every
task such a build would run is touched (the targets and what they need), or none is: a
task with a missing output, or a function task (its result exists only once it ran),
refuses the whole touch before anything is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from .graph import BuildGraph

Identities = Callable[[Iterable[str]], Mapping[str, object]]  # path -> identity, None: missing


def refusal(graph: BuildGraph, tasks: Iterable[int], identities: Identities) -> str | None:
    """Why ``tasks`` cannot be touched; None when each of them can."""
    for i in tasks:
        spec = graph.specs[i]
        if spec.call:
            return f"cannot touch '{spec.name}': a function task's result comes only from a run"
        found = identities(spec.outputs)
        missing = [o for o in spec.outputs if found.get(o) is None]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            return (
                f"cannot touch '{spec.name}': its output {missing[0]}{more} is missing "
                "(build it, or create it first)"
            )
    return None
