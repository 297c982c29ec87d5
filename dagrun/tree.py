"""``dagrun tree [TARGET...]``: the dependency tree as indented text, as ``cargo tree`` draws it.

Each root (the targets; without any, every selected task nothing selected depends on)
comes first, its dependencies below it, by name.  A task whose subtree was drawn already
is drawn again as one line ending in ``(*)``, so a shared dependency costs one line per
use, not its whole subtree.  A task that would run says so, with its first reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .graph import BuildGraph

MID, LAST, BAR, GAP = "├── ", "└── ", "│   ", "    "


def roots(graph: BuildGraph, selected: Sequence[int], named: Iterable[int] | None) -> list[int]:
    """The tasks the tree starts from: ``named``, else the selected tasks no selected task
    depends on, in the graph's order."""
    if named is not None:
        return list(dict.fromkeys(named))
    chosen = set(selected)
    needed = {d for i in selected for d in graph.deps[i] if d in chosen}
    return [i for i in selected if i not in needed]


def lines(
    graph: BuildGraph, tops: Sequence[int], reasons: Mapping[int, Sequence[str]]
) -> list[str]:
    """The tree under ``tops``; ``reasons``: the tasks that would run, and why."""
    out: list[str] = []
    drawn: set[int] = set()
    specs, deps = graph.specs, graph.deps
    stack = [(i, "", "") for i in reversed(tops)]
    while stack:  # depth first, without recursion: a chain of 10,000 tasks is fine
        i, lead, branch = stack.pop()
        again = i in drawn and bool(deps[i])
        label = _label(specs[i].name, reasons.get(i))
        out.append(lead + branch + label + (" (*)" if again else ""))
        if again:
            continue
        drawn.add(i)
        below = lead + ("" if not branch else GAP if branch == LAST else BAR)
        kids = sorted(deps[i], key=lambda d: specs[d].name)
        for n in range(len(kids) - 1, -1, -1):
            stack.append((kids[n], below, LAST if n == len(kids) - 1 else MID))
    return out


def _label(name: str, why: Sequence[str] | None) -> str:
    if why is None:
        return name
    first = why[0] if why else "would run"
    more = f"; +{len(why) - 1} more" if len(why) > 1 else ""
    if first.startswith("may run: "):  # decided when the task it waits on has run
        return f"{name}  ({first}{more})"
    return f"{name}  (would run: {first}{more})"
