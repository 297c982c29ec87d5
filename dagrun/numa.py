"""NUMA topology and core leasing: which cores a task runs on, granted the way Ninja pools edges.

    topology = Topology.read()              # /sys/devices/system/node; tests pass a fake tree
    pool = core_pool(manifest, topology)    # [executors.local] core_pool/numa_nodes, checked
    check_fits(manifest, pool)              # every task can ever run, or ManifestError
    leases = CoreLeases(pool)
    lease = leases.try_grant(4, node=None)  # 4 cores on one node, or None: wait for a release
    leases.release(lease)

Placement: a task with ``numa_node`` takes cores from that node only.  Any
other task takes them from the node with the most free cores that has enough
(ties: the lowest node number), lowest-numbered cores first.  A task larger
than every node is split across nodes (most free first) only when
``numa_strict = false``; otherwise it is a manifest error.  A task that could
fit on one node waits for one rather than being split by a momentary shortage.

Everything the user can get wrong here (a bad range, a core the machine does
not have, overlapping nodes, a task that can never fit) is a ManifestError
naming the manifest, the task and the key, raised before anything runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ExecutorError, ManifestError
from .manifest import Manifest, TaskSpec

SYSFS_NODES = "/sys/devices/system/node"
_LOCAL = ("executors", "local")


# ---------------------------------------------------------------- core lists


def parse_cpulist(text: str) -> tuple[int, ...]:
    """``"0-3,8-11"`` -> (0, 1, 2, 3, 8, 9, 10, 11), sorted, no repeats; ValueError if malformed."""
    cores: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if m is None:
            raise ValueError(f"bad core range '{part}' (write ranges like \"0-3,8-11\")")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        if last < first:
            raise ValueError(f"bad core range '{part}': {last} is less than {first}")
        cores.update(range(first, last + 1))
    return tuple(sorted(cores))


def format_cpulist(cores: Iterable[int]) -> str:
    """(0, 1, 2, 3, 8, 9) -> ``"0-3,8-9"``; the inverse of parse_cpulist."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(set(cores)):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(_span(run))
        run = [c]
    if run:
        out.append(_span(run))
    return ",".join(out)


def _span(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


# ---------------------------------------------------------------- the machine


@dataclass(frozen=True, slots=True)
class Topology:
    """The machine as dagrun sees it.

    ``cpus``: every core dagrun may run on; ``nodes``: NUMA node -> its cores
    among ``cpus`` (empty when the machine reports no nodes); ``logical``: how
    many logical cores the machine has, usable or not.
    """

    cpus: tuple[int, ...]
    nodes: Mapping[int, tuple[int, ...]]
    logical: int

    @classmethod
    def read(cls, root: str = SYSFS_NODES, usable: Iterable[int] | None = None) -> Topology:
        """Read ``root/node*/cpulist`` (and ``root/online``).  ``usable`` limits the cores
        (the real machine passes its CPU affinity); by default every core listed is usable."""
        listed = _read_nodes(root)
        every = sorted({c for cores in listed.values() for c in cores})
        if usable is None:
            allowed = set(every) if listed else set(range(os.cpu_count() or 1))
        else:
            allowed = set(usable)
        nodes = {n: tuple(c for c in cores if c in allowed) for n, cores in listed.items()}
        nodes = {n: cores for n, cores in nodes.items() if cores}
        logical = len(set(every) | allowed) if listed else max(len(allowed), os.cpu_count() or 1)
        return cls(tuple(sorted(allowed)), nodes, logical)

    @classmethod
    def machine(cls) -> Topology:
        """This machine: sysfs nodes, limited to the cores this process may run on."""
        return cls.read(SYSFS_NODES, os.sched_getaffinity(0))

    def node_of(self, core: int) -> int | None:
        for node, cores in self.nodes.items():
            if core in cores:
                return node
        return None


def _read_nodes(root: str) -> dict[int, tuple[int, ...]]:
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return {}  # no NUMA support in this kernel: one node-less pool
    except OSError as exc:
        raise ExecutorError(f"cannot read the NUMA topology in {root}: {exc.strerror}") from None
    found = sorted(int(n[4:]) for n in names if re.fullmatch(r"node\d+", n))
    online = _read_text(os.path.join(root, "online"), required=False)
    if online is not None:
        up = set(_parse_sysfs(online, os.path.join(root, "online")))
        found = [n for n in found if n in up]
    nodes = {}
    for n in found:
        path = os.path.join(root, f"node{n}", "cpulist")
        text = _read_text(path, required=True)
        assert text is not None
        nodes[n] = _parse_sysfs(text, path)
    return nodes


def _read_text(path: str, *, required: bool) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except FileNotFoundError:
        if not required:
            return None
        raise ExecutorError(f"cannot read the NUMA topology: {path} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExecutorError(f"cannot read the NUMA topology: {path}: {exc}") from None


def _parse_sysfs(text: str, path: str) -> tuple[int, ...]:
    try:
        return parse_cpulist(text.strip())
    except ValueError as exc:
        raise ExecutorError(f"cannot read the NUMA topology: {path}: {exc}") from None


# ---------------------------------------------------------------- the configured pool


@dataclass(frozen=True, slots=True)
class CorePool:
    """The cores dagrun may lease, grouped by NUMA node (node None: the machine has no nodes)."""

    groups: tuple[tuple[int | None, tuple[int, ...]], ...]
    strict: bool = True
    logical: int = 0

    @property
    def cores(self) -> tuple[int, ...]:
        return tuple(sorted(c for _, cores in self.groups for c in cores))

    @property
    def nodes(self) -> dict[int | None, tuple[int, ...]]:
        return dict(self.groups)

    def largest(self) -> int:
        return max((len(cores) for _, cores in self.groups), default=0)


def core_pool(manifest: Manifest, topology: Topology) -> CorePool | None:
    """The pool ``[executors.local]`` configures on this machine, or None without ``core_pool``."""
    opts = manifest.executors["local"].options if "local" in manifest.executors else {}
    if "core_pool" not in opts:
        return None
    where = _Where(manifest.source)
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
    try:
        return parse_cpulist(value)
    except ValueError as exc:
        raise where.error(str(exc), key) from None


def _on_machine(cores: Iterable[int], topology: Topology, where: _Where, key: str) -> None:
    have = set(topology.cpus)
    for c in cores:
        if c not in have:
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
                raise _Where(manifest.source).task_error(spec, message, key, hint)


def _check_resources(manifest: Manifest, spec: TaskSpec, pools: Mapping[str, int]) -> None:
    for name, count in spec.resources:
        if name not in pools:
            known = ", ".join(sorted(pools)) or "none"
            raise _Where(manifest.source).task_error(
                spec, f"resource '{name}' is not declared in [dagrun] resources", "resources",
                f"declared: {known}",
            )
        if count > pools[name]:
            raise _Where(manifest.source).task_error(
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
    """Builds ManifestErrors that point at the manifest, finding the line when the file exists."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, message: str, key: str, hint: str | None = None) -> ManifestError:
        return ManifestError(message, source=self.source, key=key,
                             line=self._line(_LOCAL, key), hint=hint)

    def task_error(self, spec: TaskSpec, message: str, key: str, hint: str | None) -> ManifestError:
        line = self._line(("tasks", spec.group or spec.name), key) or spec.line
        return ManifestError(message, source=self.source, task=spec.name, key=key, line=line,
                             hint=hint)

    def _line(self, table: tuple[str, ...], key: str) -> int | None:
        from .manifest import _LineIndex

        try:
            with open(self.source, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            return None
        return _LineIndex(text).find(table, key)


# ---------------------------------------------------------------- leasing


@dataclass(frozen=True, slots=True)
class Lease:
    """Cores granted to one task.  ``node`` is None when they span nodes (or there are none)."""

    cores: tuple[int, ...]
    node: int | None
    nodes: tuple[int | None, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeUsage:
    node: int | None
    cores: tuple[int, ...]
    free: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LeaseStatistics:
    """A snapshot of a CoreLeases: pool size, what is free, how many leases are out."""

    cores: int
    free: int
    leases: int
    granted: int
    nodes: tuple[NodeUsage, ...]


class CoreLeases:
    """Grants cores from a CorePool; a task that gets None waits for a release (Ninja's Pool)."""

    def __init__(self, pool: CorePool) -> None:
        self.pool = pool
        self._free: dict[int | None, list[int]] = {node: list(cores) for node, cores in pool.groups}
        self._node_of = {c: node for node, cores in pool.groups for c in cores}
        self._leased: set[int] = set()
        self._active = 0
        self._granted = 0
        self._largest = pool.largest()

    def try_grant(self, n: int, node: int | None = None) -> Lease | None:
        """``n`` cores on ``node`` (or on the best node), or None if they are not free now."""
        if n < 1:
            raise ValueError(f"a lease needs at least one core, not {n}")
        if node is not None:
            free = self._free.get(node)
            if free is None or len(free) < n:
                return None
            return self._grant({node: n})
        best, most = None, n - 1  # the group key may itself be None (a machine without nodes)
        for key, free in self._free.items():
            if len(free) > most:
                best, most = key, len(free)
        if most >= n:
            return self._grant({best: n})
        if n <= self._largest or self.pool.strict:
            return None  # it fits on one node: wait for one
        return self._split(n)

    def _split(self, n: int) -> Lease | None:
        if sum(len(f) for f in self._free.values()) < n:
            return None
        take: dict[int | None, int] = {}
        for key in sorted(self._free, key=lambda k: -len(self._free[k])):
            k = min(n, len(self._free[key]))
            if k:
                take[key] = k
                n -= k
            if n == 0:
                break
        return self._grant(take)

    def _grant(self, take: Mapping[int | None, int]) -> Lease:
        cores: list[int] = []
        for key, k in take.items():
            free = self._free[key]
            cores.extend(free[:k])
            del free[:k]
        self._leased.update(cores)
        self._active += 1
        self._granted += 1
        nodes = tuple(take)
        return Lease(tuple(sorted(cores)), nodes[0] if len(nodes) == 1 else None, nodes)

    def release(self, lease: Any) -> None:
        """Give a lease's cores back.  Releasing cores that are not leased is a bug: ValueError."""
        stray = [c for c in lease.cores if c not in self._leased]
        if stray:
            raise ValueError(f"cores {format_cpulist(stray)} are not leased")
        for c in lease.cores:
            self._leased.discard(c)
            free = self._free[self._node_of[c]]
            free.append(c)
            free.sort()
        self._active -= 1

    def statistics(self) -> LeaseStatistics:
        nodes = tuple(
            NodeUsage(node, cores, tuple(self._free[node])) for node, cores in self.pool.groups
        )
        free = sum(len(u.free) for u in nodes)
        return LeaseStatistics(len(self._node_of), free, self._active, self._granted, nodes)


def describe_placement(spec: TaskSpec, pool: CorePool) -> str:
    """What ``-n`` says a task will lease: ``"2 cores on node 0 (0-7)"``."""
    n = spec.threads
    count = f"{n} core{'s' if n != 1 else ''}"
    nodes = pool.nodes
    if spec.numa_node is not None:
        return f"{count} on node {spec.numa_node} ({format_cpulist(nodes[spec.numa_node])})"
    if None in nodes:
        return f"{count} of {format_cpulist(pool.cores)}"
    fits = [k for k, cores in nodes.items() if len(cores) >= n]
    names = ", ".join(str(k) for k in (fits or nodes))
    if not fits:
        return f"{count} across nodes {names}"
    if len(fits) == 1:
        return f"{count} on node {names} ({format_cpulist(nodes[fits[0]])})"
    return f"{count} on one of nodes {names} (the one with the most free cores)"
