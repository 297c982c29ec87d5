"""NUMA topology and core leasing: which cores a task runs on, granted the way Ninja pools edges.

    topology = Topology.read()              # /sys/devices/system/node; tests pass a fake tree
    pool = CorePool(((0, (0, 1, 2, 3)), (1, (4, 5, 6, 7))))   # executors/local_pool.py makes it
    leases = CoreLeases(pool)
    lease = leases.try_grant(4, node=None)  # 4 cores on one node, or None: wait for a release
    leases.release(lease)

Placement: a task with ``numa_node`` takes cores from that node only.  Any
other task takes them from the node with the most free cores that has enough
(ties: the lowest node number), lowest-numbered cores first.  A task larger
than every node is split across nodes (most free first) only when
``numa_strict = false``; otherwise it is a manifest error.  A task that could
fit on one node waits for one rather than being split by a momentary shortage.

The local executor's configuration of the pool (``[executors.local]``
core_pool, numa_nodes, numa_strict) is read and checked against the machine in
``executors/local_pool.py``, before anything runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ExecutorError
from .records import TaskSpec

SYSFS_NODES = "/sys/devices/system/node"


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
