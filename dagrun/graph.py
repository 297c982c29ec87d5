"""Manifest -> BuildGraph: dependencies resolved, cycles refused, a topological order.

A BuildGraph is plain data indexed by task number, so it can be cached on disk
and reloaded without parsing TOML (the no-op build's fast path).  networkx is
used only where its cost does not matter: naming a cycle and `dagrun graph`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import operator
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from . import globs
from .errors import CycleError, ManifestError, UnknownTargetError
from .paths import inside_root
from .records import CacheSettings, ExecutorSpec, Manifest, TaskSpec
from .task_inputs import Inputs

GRAPH_FORMAT = 9  # 4: TaskSpec gained the function-task fields; 5: depfile, restat; 6: columns
# 7: desc; 8: stall_warning, slurm; 9: cache


@dataclass
class BuildGraph:
    """The compiled graph.  ``deps[i]`` are task numbers; ``order`` is topological.

    ``index``, ``producers`` and ``dependents`` are made on first use: a build without
    targets needs none of them before it runs, and a graph loaded from the cache is
    then ready without a dict over every task.
    """

    manifest: Manifest
    specs: tuple[TaskSpec, ...]
    deps: list[tuple[int, ...]]
    order: Sequence[int]  # range(n) when the manifest's order is topological already
    groups: dict[str, list[int]]
    sources: list[tuple[str, ...]]  # per task: hashed source inputs (globs expanded)
    scanned: dict[str, int] = field(default_factory=dict)  # folder read -> its stamp
    _index: dict[str, int] | None = None
    _producers: dict[str, int] | None = None
    _dependents: list[tuple[int, ...]] | None = None
    _derived: dict[str, Any] = field(default_factory=dict)

    def derived(self, name: str, make: Callable[[BuildGraph], Any]) -> Any:
        """``make(self)``, made once per graph: facts over every task that builds of the same
        graph (a watch's rounds) need again and again."""
        if name not in self._derived:
            self._derived[name] = make(self)
        return self._derived[name]

    @property
    def calls(self) -> list[int]:
        """The function tasks (pycall.py)."""
        calls: list[int] = self.derived(
            "calls", lambda g: [i for i, s in enumerate(g.specs) if s.call]
        )
        return calls

    @property
    def depfiles(self) -> list[int]:
        """The tasks with a depfile."""
        depfiles: list[int] = self.derived(
            "depfiles", lambda g: [i for i, s in enumerate(g.specs) if s.depfile]
        )
        return depfiles

    @property
    def names(self) -> list[str]:
        """Each task's name, by task number."""
        names: list[str] = self.derived("names", lambda g: list(map(_NAME, g.specs)))
        return names

    def names_of(self, tasks: Sequence[int]) -> tuple[str, ...]:
        """The names of ``tasks`` (a tuple, in their order), picked at C speed."""
        if len(tasks) < 2:
            return tuple(self.names[i] for i in tasks)
        picked: tuple[str, ...] = operator.itemgetter(*tasks)(self.names)
        return picked

    @property
    def position(self) -> Sequence[int]:
        """Task number -> its place in ``order`` (``order`` itself when that is 0..n-1)."""
        position: Sequence[int] = self.derived("position", _positions)
        return position

    @property
    def root(self) -> str:
        return self.manifest.root

    def __len__(self) -> int:
        return len(self.specs)

    @property
    def index(self) -> dict[str, int]:
        """Task name -> task number."""
        if self._index is None:
            self._index = dict(zip(map(_NAME, self.specs), range(len(self.specs)), strict=True))
        return self._index

    @property
    def producers(self) -> dict[str, int]:
        """Declared output -> the task that writes it."""
        if self._producers is None:
            self._producers = {p: i for i, s in enumerate(self.specs) for p in s.outputs}
        return self._producers

    @property
    def dependents(self) -> list[tuple[int, ...]]:
        """Per task: the tasks that depend on it (tuples: most are the one empty tuple)."""
        if self._dependents is None:
            lists: dict[int, list[int]] = {}
            for i, ds in enumerate(self.deps):
                if ds:
                    for d in ds:
                        lists.setdefault(d, []).append(i)
            out: list[tuple[int, ...]] = [()] * len(self.specs)
            for d, js in lists.items():
                out[d] = tuple(js)
            self._dependents = out
        return self._dependents

    # -- targets

    def resolve(self, targets: Iterable[str], cwd: str | None = None) -> list[int]:
        """Task numbers named by targets: names, groups, globs over names, or output paths
        (relative to ``cwd`` when given and that names an output, else to the root)."""
        found: dict[int, None] = {}
        for target in targets:
            hits = self._resolve_one(target, cwd)
            if hits is None:
                raise UnknownTargetError(self._unknown_message(target))
            found.update(dict.fromkeys(hits))
        return list(found)

    def _resolve_one(self, target: str, cwd: str | None = None) -> list[int] | None:
        """The tasks ``target`` names ([] for an empty matrix group); None if it names nothing."""
        if target in self.index:
            return [self.index[target]]
        if target in self.groups:
            return list(self.groups[target])
        here = inside_root(os.path.join(cwd, target), self.root) if cwd else None
        if here is not None and here in self.producers:
            return [self.producers[here]]
        path = inside_root(target, self.root) or os.path.normpath(target)
        if path in self.producers:
            return [self.producers[path]]
        if globs.has_magic(target):
            hits = [i for i, s in enumerate(self.specs) if fnmatch.fnmatchcase(s.name, target)]
            return hits or None
        return None

    def _unknown_message(self, target: str) -> str:
        names = list(self.index) + list(self.groups)
        import difflib  # only for a message

        close = difflib.get_close_matches(target, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{self.manifest.source}: unknown target '{target}'{hint}"

    def closure(self, roots: Iterable[int]) -> list[int]:
        """``roots`` and everything they depend on, in topological order."""
        stack = list(roots)
        if len(stack) == len(self.specs) and len(set(stack)) == len(stack):
            return list(self.order)  # every task (the default targets, mostly)
        seen = bytearray(len(self.specs))
        while stack:
            i = stack.pop()
            if seen[i]:
                continue
            seen[i] = 1
            stack.extend(self.deps[i])
        return [i for i in self.order if seen[i]]

    def default_targets(self) -> list[int]:
        if self.manifest.default:
            return self.resolve(self.manifest.default)
        return list(range(len(self.specs)))

    def select(self, targets: Iterable[str] | None, cwd: str | None = None) -> list[int]:
        targets = list(targets or ())
        if not targets:  # the default targets' closure: made once per graph (a server's builds)
            return list(self.derived("default_selection",
                                     lambda g: tuple(g.closure(g.default_targets()))))
        return self.closure(self.resolve(targets, cwd))

    # -- export

    def to_networkx(self) -> Any:
        import networkx as nx

        g: nx.DiGraph[str] = nx.DiGraph()
        for s in self.specs:
            g.add_node(s.name)
        for i, ds in enumerate(self.deps):
            for d in ds:
                g.add_edge(self.specs[d].name, self.specs[i].name)
        return g

    # -- cache

    def to_cache(self) -> list[Any]:
        """The graph as marshal pieces, each dumped alone (session._cache_dump): a head, the
        order (None when it is 0..n-1), deps, the sources that are not exactly the task's inputs,
        then one column per TaskSpec field: a list, or ``(value,)`` when every task has it.

        Columns load without a conversion per task (from_cache) and dump with a small
        transient: marshal's table of shared objects is per piece, not per graph.
        """
        m = self.manifest
        executors = {k: (v.type, dict(v.options)) for k, v in m.executors.items()}
        settings = (
            m.source, m.root, m.jobs, m.failures_allowed, m.default, m.env, m.key_env,
            m.resources, executors, m.watch_debounce_ms, m.warnings,
            None if m.cache is None else tuple(m.cache),
        )
        n = len(self.specs)
        order = None if isinstance(self.order, range) else list(self.order)
        specs = self.specs
        odd = {i: s for i, s in enumerate(self.sources) if s != specs[i].inputs}
        head = (GRAPH_FORMAT, settings, n, self.groups, self.scanned)
        return [head, order, self.deps, odd, *(_column(specs, f) for f in range(_FIELDS))]

    @classmethod
    def from_cache(cls, data: Any) -> BuildGraph | None:
        """The graph ``to_cache`` gave (its pieces are used as they are: not to be changed)."""
        if not isinstance(data, list) or len(data) != 4 + _FIELDS:
            return None
        if not isinstance(data[0], tuple) or data[0][:1] != (GRAPH_FORMAT,):
            return None
        head, order, deps, odd, *columns = data
        _, settings, n, groups, scanned = head
        if any(type(c) is list and len(c) != n for c in columns) or len(deps) != n:
            return None
        from .state.cache import gc_paused  # loaded already: this graph came from the cache

        with gc_paused():
            cols = [c if type(c) is list else repeat(c[0], n) for c in columns]
            specs = tuple(map(_new_spec, zip(*cols, strict=False)))
        sources = list(map(_INPUTS, specs))
        for i, s in odd.items():
            sources[i] = s
        (source, root, jobs, failures_allowed, default, env, key_env, resources, executors,
         debounce, said, cache) = settings
        manifest = Manifest(
            source=source, root=root, tasks=specs, jobs=jobs,
            failures_allowed=failures_allowed, default=tuple(default), env=tuple(env),
            key_env=tuple(key_env), resources=tuple(resources),
            executors={k: ExecutorSpec(k, t, o) for k, (t, o) in executors.items()},
            watch_debounce_ms=debounce, scanned={}, warnings=tuple(said),
            cache=None if cache is None else CacheSettings(*cache),
        )
        return cls(
            manifest=manifest,
            specs=specs,
            deps=deps,
            order=range(n) if order is None else order,
            groups=groups,
            sources=sources,
            scanned=scanned,
        )


_FIELDS = len(TaskSpec._fields)
_NAME = operator.itemgetter(0)


def _positions(graph: BuildGraph) -> Sequence[int]:
    order, n = graph.order, len(graph.specs)
    if isinstance(order, range) and order == range(n):
        return order
    position = [0] * n
    for k, i in enumerate(order):
        position[i] = k
    return position
_INPUTS = operator.itemgetter(2)
_new_spec = functools.partial(tuple.__new__, TaskSpec)


def _column(specs: tuple[TaskSpec, ...], f: int) -> Any:
    """One TaskSpec field of every task: ``(value,)`` when all tasks have the same, else a list."""
    col = list(map(operator.itemgetter(f), specs))
    if col and col.count(col[0]) == len(col) and len(set(map(type, col))) == 1:
        return (col[0],)
    return col


def compile(manifest: Manifest, exclude: frozenset[str] = frozenset()) -> BuildGraph:
    """Resolve every dependency, expand input globs and order the tasks.

    ``exclude``: files no glob or folder input matches (outputs of tasks gone from the
    manifest, leftovers.dead_outputs)."""
    specs = manifest.tasks
    index = {s.name: i for i, s in enumerate(specs)}
    groups: dict[str, list[int]] = {g: [] for g in manifest.groups}
    for i, s in enumerate(specs):
        if s.group:
            groups.setdefault(s.group, []).append(i)
    producers = {p: i for i, s in enumerate(specs) for p in s.outputs}
    scanned: dict[str, int] = dict(manifest.scanned)
    inputs = Inputs(manifest, producers, scanned, exclude)
    deps, sources, named = _resolve(manifest, index, groups, inputs)
    if named != list(specs):
        specs = tuple(named)
        manifest = dataclasses.replace(manifest, tasks=specs)
    graph = BuildGraph(  # without index and producers: made again if needed (less memory)
        manifest=manifest,
        specs=specs,
        deps=deps,
        order=_order(manifest, index, producers, deps),
        groups=groups,
        sources=sources,
        scanned=scanned,
    )
    _check_default(graph)
    return graph


def _resolve(
    manifest: Manifest, index: Mapping[str, int], groups: Mapping[str, list[int]], inputs: Inputs
) -> tuple[list[tuple[int, ...]], list[tuple[str, ...]], list[TaskSpec]]:
    """Per task: its dependencies (its ``deps`` and the producers of its inputs), its hashed
    source files, and its spec with ``{inputs}`` and ``{outputs}`` replaced in its cmd."""
    deps: list[tuple[int, ...]] = []
    sources: list[tuple[str, ...]] = []
    named: list[TaskSpec] = []
    for i, s in enumerate(manifest.tasks):
        found = _named_deps(manifest, index, groups, i)
        srcs = inputs.of_task(i, found)
        deps.append(tuple(found))
        found_sources = tuple(sorted(srcs))
        sources.append(s.inputs if found_sources == s.inputs else found_sources)  # one tuple
        named.append(_name_files(s, inputs.listed) if _OWN_FILES.search(s.cmd) else s)
    return deps, sources, named


def _named_deps(
    manifest: Manifest, index: Mapping[str, int], groups: Mapping[str, list[int]], i: int
) -> dict[int, None]:
    """The tasks task ``i``'s ``deps`` entries name (names, groups, globs), in order."""
    s = manifest.tasks[i]
    found: dict[int, None] = {}
    for name in s.deps:
        for d in _resolve_dep(manifest, index, groups, s, name):
            if d == i:
                raise CycleError([s.name, s.name], manifest.source)  # a task needs itself
            found[d] = None
    return found


def _order(
    manifest: Manifest, index: Mapping[str, int], producers: Mapping[str, int],
    deps: list[tuple[int, ...]],
) -> Sequence[int]:
    """A topological order (``range(n)`` when the manifest's is one); CycleError naming a
    cycle, with the files that link its tasks."""
    specs = manifest.tasks
    try:
        order = _toposort(specs, deps, manifest.source)
    except CycleError as exc:
        links = _cycle_links(manifest, index, producers, exc.cycle)
        raise CycleError(exc.cycle, manifest.source, links) from None
    return range(len(specs)) if order == list(range(len(specs))) else order  # no int per task


_OWN_FILES = re.compile(r"(?<!\$)\{(inputs|outputs)\}")


def _name_files(spec: TaskSpec, inputs: Iterable[str]) -> TaskSpec:
    """``spec`` with ``{inputs}`` / ``{outputs}`` in its cmd replaced by its files, shell-quoted.

    The paths are relative to the task's cwd, in the order declared (a glob's matches
    sorted), an input folder as the folder itself, ``!`` exclusions applied.  The
    matrix pass before this one quoted every file name it put in, so no name shows
    this pass a placeholder (shellwords).
    """
    from . import shellwords

    def local(path: str) -> str:
        if spec.cwd == "." or path.startswith("/"):
            return path
        return os.path.relpath(path, spec.cwd)

    files = {"inputs": list(inputs), "outputs": list(spec.outputs)}
    quoting: dict[int, str] = {}

    def replace(m: re.Match[str]) -> str:
        paths = [local(p) for p in files[m.group(1)]]
        if all(map(shellwords.safe, paths)):
            return " ".join(paths)
        if not quoting:  # read once, and only for names that need quoting
            starts = (x.start() for x in _OWN_FILES.finditer(spec.cmd))
            quoting.update(shellwords.quoting_at(spec.cmd, starts))
        return shellwords.words(paths, quoting[m.start()])

    return spec._replace(cmd=_OWN_FILES.sub(replace, spec.cmd))


def _cycle_links(
    manifest: Manifest, index: Mapping[str, int], producers: Mapping[str, int], cycle: list[str]
) -> tuple[str, ...]:
    """For a cycle that goes through files: which file links each task to the next, with lines.

    Empty when every link is an explicit ``deps`` entry (the path says it all).
    """
    specs = manifest.tasks
    links: list[str] = []
    through_files = False
    for a, b in zip(cycle, cycle[1:], strict=False):
        sa, sb = specs[index[a]], specs[index[b]]
        path = _file_between(manifest, sa, index[b], producers)
        if path is None:
            links.append(f"{a} needs {b} (deps{_at(manifest.line_of(sa, 'deps'))})")
            continue
        through_files = True
        links.append(
            f"{a} reads {path}{_at(manifest.line_of(sa, 'inputs'), ' (line ', ')')}, "
            f"written by {b}{_at(manifest.line_of(sb, 'outputs'), ' (line ', ')')}"
        )
    return tuple(links) if through_files else ()


def _file_between(
    manifest: Manifest, spec: TaskSpec, producer: int, producers: Mapping[str, int]
) -> str | None:
    """An input of ``spec`` (an exact path, or a glob's match) that task ``producer`` writes."""
    if spec.deps and any(d == manifest.tasks[producer].name for d in spec.deps):
        return None
    for pattern in spec.inputs:
        if pattern.startswith("!"):
            continue
        if not globs.has_magic(pattern):
            if producers.get(pattern) == producer:
                return pattern
            continue
        rx = globs.translate(pattern)
        for out in manifest.tasks[producer].outputs:
            if rx.match(out):
                return out
    return None


def _at(line: int | None, before: str = ", line ", after: str = "") -> str:
    return f"{before}{line}{after}" if line is not None else ""


def _check_default(graph: BuildGraph) -> None:
    """``[dagrun] default`` names only known targets (checked now, not at the first bare build)."""
    m = graph.manifest
    for target in m.default:
        if graph._resolve_one(target) is None:
            import difflib  # only for a message

            close = difflib.get_close_matches(target, list(graph.index) + list(graph.groups), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "no task, group or output matches"
            raise ManifestError(
                f"unknown target '{target}'", source=m.source, key="default",
                line=m.settings_line("default"), hint=hint,
            )


def _resolve_dep(
    manifest: Manifest,
    index: Mapping[str, int],
    groups: Mapping[str, list[int]],
    spec: TaskSpec,
    name: str,
) -> list[int]:
    if name in index:
        return [index[name]]
    if name in groups:
        return groups[name]
    if globs.has_magic(name):
        hits = [i for n, i in index.items() if fnmatch.fnmatchcase(n, name)]
        if hits:
            return hits
    import difflib  # only for a message

    close = difflib.get_close_matches(name, list(index) + list(groups), n=1)
    raise ManifestError(
        f"unknown dependency '{name}'",
        source=manifest.source, task=spec.name, key="deps", line=manifest.line_of(spec, "deps"),
        hint=f"did you mean '{close[0]}'?" if close else "no task or matrix group has this name",
    )


def _toposort(specs: tuple[TaskSpec, ...], deps: list[tuple[int, ...]], source: str) -> list[int]:
    """Kahn's algorithm, stable in manifest order; a cycle raises CycleError naming it."""
    n = len(specs)
    waiting = [len(d) for d in deps]
    dependents: list[list[int]] = [[] for _ in range(n)]
    for i, ds in enumerate(deps):
        for d in ds:
            dependents[d].append(i)
    order = [i for i in range(n) if waiting[i] == 0]
    pos = 0
    while pos < len(order):
        for j in dependents[order[pos]]:
            waiting[j] -= 1
            if waiting[j] == 0:
                order.append(j)
        pos += 1
    if len(order) != n:
        raise CycleError(_find_cycle(specs, deps, waiting), source)
    return order


def _find_cycle(
    specs: tuple[TaskSpec, ...], deps: list[tuple[int, ...]], waiting: list[int]
) -> list[str]:
    """A cycle among the tasks Kahn's algorithm could not order, as names.

    Read ``a -> b`` as "a depends on b"; the path starts at the cycle's task
    that comes first in the manifest, so the message is the same every time.
    """
    import networkx as nx

    g: nx.DiGraph[int] = nx.DiGraph()
    for i, ds in enumerate(deps):
        if waiting[i]:
            g.add_edges_from((i, d) for d in ds if waiting[d])
    cycle = [a for a, _ in nx.find_cycle(g)]
    first = cycle.index(min(cycle))
    cycle = cycle[first:] + cycle[:first]
    return [specs[i].name for i in cycle + cycle[:1]]


# ---------------------------------------------------------------- rendering (`dagrun graph`)


def to_json(
    graph: BuildGraph,
    selected: Iterable[int],
    up_to_date: Iterable[int],
    keys: list[str | None],
) -> dict[str, Any]:
    """``{"tasks": [...], "edges": [[from, to], ...]}`` over the selected tasks."""
    fresh = set(up_to_date)
    chosen = list(selected)
    tasks = []
    for i in chosen:
        s = graph.specs[i]
        tasks.append(
            {
                "name": s.name,
                "display": s.display or None,
                "cmd": s.cmd,
                "inputs": list(s.inputs),
                "outputs": list(s.outputs),
                "deps": [graph.specs[d].name for d in graph.deps[i]],
                "up_to_date": i in fresh,
                "key": keys[i],
            }
        )
    edges = [[graph.specs[d].name, graph.specs[i].name] for i in chosen for d in graph.deps[i]]
    return {"tasks": tasks, "edges": edges}


def to_dot(graph: BuildGraph, selected: Iterable[int], up_to_date: Iterable[int]) -> str:
    """Graphviz DOT: up-to-date tasks filled green, tasks that would run in bold red."""
    fresh = set(up_to_date)
    chosen = list(selected)
    lines = ["digraph dagrun {", "  rankdir=LR;", '  node [shape=box, fontname="monospace"];']
    for i in chosen:
        s = graph.specs[i]
        style = (
            'style=filled, fillcolor="#d9f2d9", color="#5a9a5a"'
            if i in fresh
            else 'style=bold, color="#b03030"'
        )
        tip = "up to date" if i in fresh else "will run"
        lines.append(f"  {_q(s.name)} [label={_q(s.label)}, tooltip={_q(tip)}, {style}];")
    for i in chosen:
        for d in graph.deps[i]:
            lines.append(f"  {_q(graph.specs[d].name)} -> {_q(graph.specs[i].name)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
