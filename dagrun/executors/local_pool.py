"""The local executor's core pool: ``[executors.local]`` read and checked against this machine.

    pool = core_pool(manifest, topology)    # core_pool / numa_nodes / numa_strict, checked
    check_fits(manifest, pool)              # every task can ever run, or ManifestError

Everything the user can get wrong here (a bad range, a core the machine does
not have, overlapping nodes, a task that can never fit, a resource no pool
holds) is a ManifestError naming the manifest, the task and the key, raised
before anything runs.  (The syntax of these keys is checked with the rest of
the manifest, in manifest.py; what needs the machine is checked here.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ManifestError
from ..records import Manifest, TaskSpec

if TYPE_CHECKING:  # numa is imported where a core pool is configured: ~2.8 ms without one
    from ..numa import CorePool, Topology

_LOCAL = ("executors", "local")


def core_pool(manifest: Manifest, topology: Topology) -> CorePool | None:
    """The pool ``[executors.local]`` configures on this machine, or None without ``core_pool``."""
    opts = manifest.executors["local"].options if "local" in manifest.executors else {}
    if "core_pool" not in opts:
        return None
    from ..numa import CorePool

    where = _Where(manifest)
    cores = _pool_cores(opts["core_pool"], topology, where)
    nodes = _nodes(opts.get("numa_nodes", "auto"), topology, where)
    groups: list[tuple[int | None, tuple[int, ...]]] = []
    if nodes is None:
        groups.append((None, cores))
    else:
        placed: set[int] = set()
        for node, node_cores in sorted(nodes.items()):
            mine = tuple(c for c in node_cores if c in cores)
            placed.update(mine)
            if mine:
                groups.append((node, mine))
        loose = [c for c in cores if c not in placed]
        if loose:
            raise where.error(
                f"core {loose[0]} of core_pool is on none of the nodes in numa_nodes",
                "core_pool",
            )
    return CorePool(tuple(groups), bool(opts.get("numa_strict", True)), topology.logical)


def _pool_cores(value: Any, topology: Topology, where: _Where) -> tuple[int, ...]:
    if value == "auto":
        cores = topology.cpus
    else:
        cores = _cores_of(value, where, "core_pool")
    if not cores:
        raise where.error("names no cores", "core_pool",
                          hint='e.g. "0-3", or "auto" for every core')
    _on_machine(cores, topology, where, "core_pool")
    return cores


def _cores_of(value: Any, where: _Where, key: str) -> tuple[int, ...]:
    if isinstance(value, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in value):
            raise where.error(f"must list core numbers, not {value!r}", key)
        return tuple(sorted(set(value)))
    from ..numa import parse_cpulist

    try:
        return parse_cpulist(value)
    except ValueError as exc:
        raise where.error(str(exc), key) from None


def _on_machine(cores: Iterable[int], topology: Topology, where: _Where, key: str) -> None:
    have = set(topology.cpus)
    for c in cores:
        if c not in have:
            from ..numa import format_cpulist

            raise where.error(
                f"core {c} is not on this machine",
                key,
                hint=f"dagrun may use cores {format_cpulist(have)}",
            )


def _nodes(value: Any, topology: Topology, where: _Where) -> dict[int, tuple[int, ...]] | None:
    """Node -> cores from ``numa_nodes``; None when the machine has no nodes and none are given."""
    if value == "auto":
        return dict(topology.nodes) if topology.nodes else None
    if not topology.nodes:
        raise where.error("this machine reports no NUMA nodes", "numa_nodes", hint='use "auto"')
    nodes: dict[int, tuple[int, ...]] = {}
    owner: dict[int, int] = {}
    for name, spec in value.items():
        if not re.fullmatch(r"\d+", str(name)):
            raise where.error(f"node name '{name}' must be a node number", "numa_nodes")
        node = int(name)
        cores = _cores_of(spec, where, "numa_nodes")
        for c in cores:
            if c in owner:
                raise where.error(f"core {c} is in both node {owner[c]} and node {node}",
                                  "numa_nodes")
            owner[c] = node
        nodes[node] = cores
    for node, cores in sorted(nodes.items()):
        if node not in topology.nodes:
            known = ", ".join(map(str, sorted(topology.nodes)))
            raise where.error(f"node {node} is not on this machine", "numa_nodes",
                              hint=f"its nodes: {known}")
        _on_machine(cores, topology, where, "numa_nodes")
        for c in cores:
            real = topology.node_of(c)
            if real != node:
                raise where.error(f"core {c} is on node {real} of this machine, not node {node}",
                                  "numa_nodes")
    return nodes


# ---------------------------------------------------------------- can every task ever run?


def uses_core_pool(manifest: Manifest, spec: TaskSpec) -> bool:
    ex = manifest.executors.get(spec.executor)
    return ex is not None and ex.type == "local"


def check_fits(manifest: Manifest, pool: CorePool | None) -> None:
    """Raise ManifestError for the first task that could never start: more threads than the
    core pool (or its node) holds, a node the pool lacks, or a named resource it cannot get."""
    resources = dict(manifest.resources)
    for spec in manifest.tasks:
        if spec.resources:
            _check_resources(manifest, spec, resources)
        if pool is not None and uses_core_pool(manifest, spec):
            problem = _never_fits(spec, pool)
            if problem is not None:
                message, key, hint = problem
                raise _Where(manifest).task_error(spec, message, key, hint)


def _check_resources(manifest: Manifest, spec: TaskSpec, pools: Mapping[str, int]) -> None:
    for name, count in spec.resources:
        if name not in pools:
            known = ", ".join(sorted(pools)) or "none"
            raise _Where(manifest).task_error(
                spec, f"resource '{name}' is not declared in [dagrun] resources", "resources",
                f"declared: {known}",
            )
        if count > pools[name]:
            raise _Where(manifest).task_error(
                spec, f"needs {count} of resource '{name}', but the pool has {pools[name]}",
                "resources", None,
            )


def _never_fits(spec: TaskSpec, pool: CorePool) -> tuple[str, str, str | None] | None:
    n = spec.threads
    nodes = pool.nodes
    if spec.numa_node is not None:
        if spec.numa_node not in nodes:
            known = ", ".join(str(k) for k in nodes if k is not None) or "none"
            return (f"node {spec.numa_node} has no cores in the core pool", "numa_node",
                    f"nodes with pool cores: {known}")
        have = len(nodes[spec.numa_node])
        if n > have:
            return (f"threads = {n} can never fit: node {spec.numa_node} has {have} cores "
                    "in the core pool", "threads", None)
        return None
    total = len(pool.cores)
    if n > total:
        return (f"threads = {n} can never fit: the core pool has {total} cores", "threads", None)
    if n > pool.largest() and pool.strict:
        return (f"threads = {n} can never fit on one NUMA node: the largest has "
                f"{pool.largest()} cores in the core pool", "threads",
                "set numa_strict = false in [executors.local] to let a task span nodes")
    return None


class _Where:
    """Builds ManifestErrors that point at the manifest's lines (Manifest.line_in)."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.source = manifest.source

    def error(self, message: str, key: str, hint: str | None = None) -> ManifestError:
        return ManifestError(message, source=self.source, key=key,
                             line=self.manifest.line_in(_LOCAL, key), hint=hint)

    def task_error(self, spec: TaskSpec, message: str, key: str, hint: str | None) -> ManifestError:
        line = self.manifest.line_in(("tasks", spec.group or spec.name), key) or spec.line
        return ManifestError(message, source=self.source, task=spec.name, key=key, line=line,
                             hint=hint)
