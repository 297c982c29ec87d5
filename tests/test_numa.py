"""NUMA topology, the core pool's checks, and CoreLeases placement, on fake sysfs trees.

The multi-node machines here are folders in tmp_path laid out like
/sys/devices/system/node (``online``, ``nodeN/cpulist``), read by the same
Topology.read the real machine goes through.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
from pathlib import Path

import pytest

from dagrun.clock import FakeClock
from dagrun.errors import ExecutorError, ManifestError
from dagrun.executors.fake import FakeExecutor
from dagrun.executors.local_pool import check_fits, core_pool
from dagrun.manifest import parse
from dagrun.numa import (
    CoreLeases,
    CorePool,
    Lease,
    LeaseStatistics,
    NodeUsage,
    Topology,
    describe_placement,
    format_cpulist,
    parse_cpulist,
)
from dagrun.pool_status import SNAPSHOT, read_snapshot
from dagrun.report import RecordingReporter
from dagrun.session import Session


def sysfs(root: Path, nodes: dict[int, str], online: str | None = None) -> str:
    """A fake /sys/devices/system/node: ``{0: "0-7", 1: "8-15"}``."""
    root.mkdir(parents=True, exist_ok=True)
    for n, cpus in nodes.items():
        (root / f"node{n}").mkdir()
        (root / f"node{n}" / "cpulist").write_text(cpus + "\n")
    (root / "possible").write_text(format_cpulist(nodes) + "\n")
    if online is not None:
        (root / "online").write_text(online + "\n")
    return str(root)


@pytest.fixture
def two_by_eight(tmp_path: Path) -> Topology:
    return Topology.read(sysfs(tmp_path / "sys2x8", {0: "0-7", 1: "8-15"}, "0-1"))


@pytest.fixture
def four_by_four(tmp_path: Path) -> Topology:
    return Topology.read(sysfs(tmp_path / "sys4x4", {0: "0-3", 1: "4-7", 2: "8-11", 3: "12-15"}))


@pytest.fixture
def uneven(tmp_path: Path) -> Topology:
    # 6 + 2 cores, plus a memory-only node with no cores
    return Topology.read(sysfs(tmp_path / "sysuneven", {0: "0-5", 1: "6-7", 2: ""}, "0-2"))


def pool_of(topology: Topology, local: str = 'core_pool = "auto"', tasks: str = "") -> CorePool:
    text = f"[executors.local]\n{local}\n{tasks}"
    m = parse(text, source="m.toml", root="/proj")
    pool = core_pool(m, topology)
    assert pool is not None
    check_fits(m, pool)
    return pool


# ---------------------------------------------------------------- core lists


def test_parse_cpulist_forms():
    assert parse_cpulist("0-3,8-11") == (0, 1, 2, 3, 8, 9, 10, 11)
    assert parse_cpulist("5") == (5,)
    assert parse_cpulist(" 3, 1-2 ,1 ") == (1, 2, 3)
    assert parse_cpulist("") == ()
    assert parse_cpulist("0-3,\n") == (0, 1, 2, 3)  # sysfs text ends in a newline


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3-1", "bad core range '3-1': 1 is less than 3"),
        ("0-3,x", "bad core range 'x' (write ranges like \"0-3,8-11\")"),
        ("-1", "bad core range '-1' (write ranges like \"0-3,8-11\")"),
        ("0-3-5", "bad core range '0-3-5' (write ranges like \"0-3,8-11\")"),
    ],
)
def test_parse_cpulist_refuses_bad_ranges(text, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        parse_cpulist(text)


def test_format_cpulist_is_the_inverse():
    rng = random.Random(7)
    for _ in range(200):
        cores = {rng.randrange(64) for _ in range(rng.randrange(20))}
        text = format_cpulist(cores)
        assert parse_cpulist(text) == tuple(sorted(cores))
    assert format_cpulist([0, 1, 2, 3, 8, 9, 11]) == "0-3,8-9,11"


# ---------------------------------------------------------------- reading sysfs


def test_reads_two_nodes_of_eight(two_by_eight):
    assert two_by_eight.nodes == {0: tuple(range(8)), 1: tuple(range(8, 16))}
    assert two_by_eight.cpus == tuple(range(16))
    assert two_by_eight.logical == 16


def test_reads_uneven_nodes_and_skips_memory_only_ones(uneven):
    assert uneven.nodes == {0: (0, 1, 2, 3, 4, 5), 1: (6, 7)}
    assert uneven.node_of(7) == 1 and uneven.node_of(99) is None


def test_offline_nodes_are_left_out(tmp_path):
    topo = Topology.read(sysfs(tmp_path / "s", {0: "0-3", 1: "4-7"}, online="0"))
    assert topo.nodes == {0: (0, 1, 2, 3)}


def test_usable_cores_limit_the_nodes(tmp_path):
    topo = Topology.read(sysfs(tmp_path / "s", {0: "0-3", 1: "4-7"}), usable={1, 2, 5})
    assert topo.nodes == {0: (1, 2), 1: (5,)}
    assert topo.cpus == (1, 2, 5)
    assert topo.logical == 8


def test_no_sysfs_tree_means_no_nodes(tmp_path):
    topo = Topology.read(str(tmp_path / "absent"), usable={0, 1})
    assert topo.nodes == {} and topo.cpus == (0, 1)


def test_a_garbled_cpulist_is_reported(tmp_path):
    root = sysfs(tmp_path / "s", {0: "0-x"})
    path = os.path.join(root, "node0", "cpulist")
    with pytest.raises(ExecutorError, match=re.escape(f"{path}: bad core range '0-x'")):
        Topology.read(root)


def test_this_machine_matches_its_affinity():
    topo = Topology.machine()
    assert topo.cpus == tuple(sorted(os.sched_getaffinity(0)))
    if topo.nodes:
        assert sorted(c for cores in topo.nodes.values() for c in cores) == list(topo.cpus)
    assert topo.logical >= len(topo.cpus)


# ---------------------------------------------------------------- the configured pool


def test_auto_pool_groups_cores_by_node(two_by_eight):
    pool = pool_of(two_by_eight)
    assert pool.groups == ((0, tuple(range(8))), (1, tuple(range(8, 16))))
    assert pool.strict is True and pool.logical == 16


def test_a_pool_subset_keeps_only_nodes_it_touches(four_by_four):
    pool = pool_of(four_by_four, 'core_pool = [1, 2, 5]')
    assert pool.groups == ((0, (1, 2)), (1, (5,)))


def test_explicit_nodes_must_match_the_machine(two_by_eight):
    pool = pool_of(two_by_eight, 'core_pool = "0-3,8-11"\nnuma_nodes = { 0 = "0-3", 1 = "8-11" }')
    assert pool.groups == ((0, (0, 1, 2, 3)), (1, (8, 9, 10, 11)))


def _local_error(topology: Topology, local: str, tasks: str = "") -> str:
    """The error as "task 'T', key 'K': message (hint)", without the file and line."""
    with pytest.raises(ManifestError) as info:
        pool_of(topology, local, tasks)
    e = info.value
    assert e.source == "m.toml"
    where = ", ".join(p for p in (e.task and f"task '{e.task}'", f"key '{e.key}'") if p)
    return f"{where}: {e.message}" + (f" ({e.hint})" if e.hint else "")


@pytest.mark.parametrize(
    ("local", "message"),
    [
        ('core_pool = "0-3,9-7"',
         "key 'core_pool': bad core range '9-7': 7 is less than 9"),
        ('core_pool = "0-31"',
         "key 'core_pool': core 16 is not on this machine (dagrun may use cores 0-15)"),
        ('core_pool = [3, 40]',
         "key 'core_pool': core 40 is not on this machine (dagrun may use cores 0-15)"),
        ('core_pool = ""',
         "key 'core_pool': names no cores (e.g. \"0-3\", or \"auto\" for every core)"),
        ('core_pool = "0-15"\nnuma_nodes = { 0 = "0-8", 1 = "8-15" }',
         "key 'numa_nodes': core 8 is in both node 0 and node 1"),
        ('core_pool = "0-15"\nnuma_nodes = { 0 = "0-7", 2 = "8-15" }',
         "key 'numa_nodes': node 2 is not on this machine (its nodes: 0, 1)"),
        ('core_pool = "0-15"\nnuma_nodes = { 0 = "0-9", 1 = "10-15" }',
         "key 'numa_nodes': core 8 is on node 1 of this machine, not node 0"),
        ('core_pool = "0-15"\nnuma_nodes = { 0 = "0-7" }',
         "key 'core_pool': core 8 of core_pool is on none of the nodes in numa_nodes"),
        ('core_pool = "0-15"\nnuma_nodes = { x = "0-7" }',
         "key 'numa_nodes': node name 'x' must be a node number"),
        ('core_pool = "0-15"\nnuma_nodes = { 0 = "0-99" }',
         "key 'numa_nodes': core 16 is not on this machine (dagrun may use cores 0-15)"),
    ],
)
def test_bad_pool_settings_are_manifest_errors(two_by_eight, local, message):
    assert _local_error(two_by_eight, local) == message


def test_explicit_nodes_need_a_machine_with_nodes(tmp_path):
    topo = Topology.read(str(tmp_path / "absent"), usable={0, 1})
    message = _local_error(topo, 'core_pool = "0-1"\nnuma_nodes = { 0 = "0-1" }')
    assert message == "key 'numa_nodes': this machine reports no NUMA nodes (use \"auto\")"
    assert pool_of(topo, 'core_pool = "0-1"').groups == ((None, (0, 1)),)


def test_no_core_pool_no_pool(two_by_eight):
    m = parse("[tasks.a]\ncmd = 'x'\nthreads = 64\n", source="m.toml", root="/proj")
    assert core_pool(m, two_by_eight) is None
    check_fits(m, None)  # without a pool, threads only count against job slots


# ---------------------------------------------------------------- tasks that can never fit


@pytest.mark.parametrize(
    ("local", "task", "message"),
    [
        ('core_pool = "0-15"', "threads = 17",
         "task 'big', key 'threads': threads = 17 can never fit: "
         "the core pool has 16 cores"),
        ('core_pool = "0-15"', "threads = 9",
         "task 'big', key 'threads': threads = 9 can never fit on one NUMA node: "
         "the largest has 8 cores in the core pool "
         "(set numa_strict = false in [executors.local] to let a task span nodes)"),
        ('core_pool = "0-15"', "threads = 9\nnuma_node = 1",
         "task 'big', key 'threads': threads = 9 can never fit: "
         "node 1 has 8 cores in the core pool"),
        ('core_pool = "0-15"\nnuma_strict = false', "threads = 3\nnuma_node = 2",
         "task 'big', key 'numa_node': node 2 has no cores in the core pool "
         "(nodes with pool cores: 0, 1)"),
        ('core_pool = "0-3"', "numa_node = 1",
         "task 'big', key 'numa_node': node 1 has no cores in the core pool "
         "(nodes with pool cores: 0)"),
    ],
)
def test_tasks_that_can_never_fit(two_by_eight, local, task, message):
    tasks = f"[tasks.small]\ncmd = 'x'\n[tasks.big]\ncmd = 'y'\n{task}\n"
    assert _local_error(two_by_eight, local, tasks) == message


def test_a_big_task_may_span_nodes_when_not_strict(two_by_eight):
    pool = pool_of(two_by_eight, 'core_pool = "0-15"\nnuma_strict = false',
                   "[tasks.big]\ncmd = 'y'\nthreads = 12\n")
    assert pool.strict is False


def test_tasks_on_other_executors_do_not_count(two_by_eight):
    pool_of(two_by_eight, 'core_pool = "0-3"\n[executors.lab]\ntype = "ssh"\nhost = "h"\n'
            'workspace = "/w"', "[tasks.remote]\ncmd = 'y'\nthreads = 64\nexecutor = 'lab'\n")


def test_resources_must_be_declared_and_large_enough():
    m = parse("[dagrun]\nresources = { gpu = 2 }\n[tasks.t]\ncmd = 'x'\nresources = { gpu = 3 }\n",
              source="m.toml", root="/p")
    with pytest.raises(ManifestError) as info:
        check_fits(m, None)
    e = info.value
    assert (e.task, e.key, e.message) == (
        "t", "resources", "needs 3 of resource 'gpu', but the pool has 2")
    m = parse("[dagrun]\nresources = { gpu = 2 }\n[tasks.t]\ncmd = 'x'\nresources = { gpus = 1 }\n",
              source="m.toml", root="/p")
    with pytest.raises(ManifestError) as info:
        check_fits(m, None)
    e = info.value
    assert (e.task, e.key, e.message, e.hint) == (
        "t", "resources", "resource 'gpus' is not declared in [dagrun] resources", "declared: gpu")


def test_errors_name_the_line_of_the_key(tmp_path, two_by_eight):
    path = tmp_path / "dagrun.toml"
    path.write_text(
        "[executors.local]\ncore_pool = \"0-15\"\n\n"
        "[tasks.sim]\nmatrix = { n = [1, 2] }\ncmd = \"sim {n}\"\nthreads = 9\n"
    )
    session = Session(manifest_path=str(path), topology=two_by_eight)
    with pytest.raises(ManifestError) as info:
        session.plan()
    e = info.value
    assert (e.source, e.line, e.task, e.key) == (str(path), 7, "sim[n=1]", "threads")
    assert e.message.startswith("threads = 9 can never fit on one NUMA node")
    path.write_text("[executors.local]\ncore_pool = \"0-3,7-5\"\n[tasks.a]\ncmd = \"a\"\n")
    with pytest.raises(ManifestError) as info:
        Session(manifest_path=str(path), topology=two_by_eight).plan()
    e = info.value
    assert (e.source, e.line, e.task, e.key) == (str(path), 2, None, "core_pool")
    assert e.message == "bad core range '7-5': 5 is less than 7"


# ---------------------------------------------------------------- placement


def test_prefers_the_node_with_most_free_cores(two_by_eight):
    leases = CoreLeases(pool_of(two_by_eight))
    a = leases.try_grant(4)
    assert a == Lease((0, 1, 2, 3), 0, (0,))  # a tie goes to the lowest node
    b = leases.try_grant(2)
    assert b == Lease((8, 9), 1, (1,))  # node 1 has 8 free, node 0 has 4
    c = leases.try_grant(3)
    assert c is not None and c.node == 1  # 6 free on node 1, 4 on node 0
    d = leases.try_grant(4)
    assert d == Lease((4, 5, 6, 7), 0, (0,))


def test_a_task_never_spans_nodes_when_it_fits_on_one(two_by_eight):
    leases = CoreLeases(dataclasses.replace(pool_of(two_by_eight), strict=False))
    assert leases.try_grant(5, 0) is not None and leases.try_grant(5, 1) is not None
    assert leases.try_grant(4) is None  # 6 cores are free, but no node has 4: wait
    assert leases.try_grant(3) is not None


def test_numa_node_pins_to_that_node(four_by_four):
    leases = CoreLeases(pool_of(four_by_four))
    assert leases.try_grant(3, node=2) == Lease((8, 9, 10), 2, (2,))
    assert leases.try_grant(2, node=2) is None  # one left there; other nodes do not help
    assert leases.try_grant(1, node=2) == Lease((11,), 2, (2,))
    assert leases.try_grant(1, node=7) is None


def test_split_across_nodes_only_when_not_strict(four_by_four):
    strict = CoreLeases(pool_of(four_by_four))
    assert strict.try_grant(6) is None
    loose = CoreLeases(dataclasses.replace(pool_of(four_by_four), strict=False))
    first = loose.try_grant(3, node=0)
    assert first is not None
    big = loose.try_grant(6)
    assert big is not None
    assert big.node is None and big.nodes == (1, 2)  # most free first: 4 on node 1, 2 on node 2
    assert big.cores == (4, 5, 6, 7, 8, 9)
    assert loose.try_grant(8) is None  # 7 free in all
    loose.release(first)
    assert loose.try_grant(8) is not None


def test_uneven_nodes(uneven):
    leases = CoreLeases(pool_of(uneven))
    assert leases.try_grant(2) == Lease((0, 1), 0, (0,))
    assert leases.try_grant(3) == Lease((2, 3, 4), 0, (0,))
    assert leases.try_grant(2) == Lease((6, 7), 1, (1,))  # node 0 has only 1 free now
    assert leases.try_grant(2) is None


def test_a_node_less_machine_is_one_group(tmp_path):
    topo = Topology.read(str(tmp_path / "absent"), usable={0, 1, 2})
    leases = CoreLeases(pool_of(topo))
    assert leases.try_grant(2) == Lease((0, 1), None, (None,))


def test_release_and_statistics(two_by_eight):
    leases = CoreLeases(pool_of(two_by_eight, 'core_pool = "0-3,8-9"'))
    a = leases.try_grant(3)
    b = leases.try_grant(2)
    assert a is not None and b is not None
    stats = leases.statistics()
    assert stats == LeaseStatistics(
        cores=6, free=1, leases=2, granted=2,
        nodes=(NodeUsage(0, (0, 1, 2, 3), (3,)), NodeUsage(1, (8, 9), ())),
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.free = 3  # type: ignore[misc]
    leases.release(a)
    assert leases.statistics().free == 4 and leases.statistics().leases == 1
    with pytest.raises(ValueError, match=r"^cores 0-2 are not leased$"):
        leases.release(a)
    leases.release(b)
    assert leases.statistics().free == 6 and leases.statistics().granted == 2


def test_random_grants_never_share_a_core(four_by_four):
    rng = random.Random(3)
    leases = CoreLeases(dataclasses.replace(pool_of(four_by_four), strict=False))
    out: list[Lease] = []
    for _ in range(2000):
        if out and rng.random() < 0.45:
            leases.release(out.pop(rng.randrange(len(out))))
            continue
        node = rng.choice([None, None, 0, 1, 2, 3])
        lease = leases.try_grant(rng.randint(1, 4 if node is not None else 7), node)
        if lease is None:
            continue
        out.append(lease)
        held = [c for x in out for c in x.cores]
        assert len(held) == len(set(held))
        if len(lease.cores) <= 4:
            assert lease.node is not None  # it fits on one node, so it got one
            assert all(four_by_four.node_of(c) == lease.node for c in lease.cores)
        assert leases.statistics().free == 16 - len(held)


def test_describe_placement(two_by_eight, uneven):
    pool = pool_of(two_by_eight)
    spec = parse("[tasks.a]\ncmd='x'\nthreads=2\n", root="/p").tasks[0]
    assert describe_placement(spec, pool) == (
        "2 cores on one of nodes 0, 1 (the one with the most free cores)")
    assert describe_placement(spec._replace(numa_node=1), pool) == "2 cores on node 1 (8-15)"
    assert describe_placement(spec._replace(threads=12), pool) == "12 cores across nodes 0, 1"
    assert describe_placement(spec._replace(threads=4), pool_of(uneven)) == (
        "4 cores on node 0 (0-5)")
    assert describe_placement(spec._replace(threads=1), pool_of(uneven)).startswith("1 core on one")


# ---------------------------------------------------------------- through a build


def _fake_build(tmp_path: Path, topology: Topology, manifest: str, seen=None):
    (tmp_path / "dagrun.toml").write_text(manifest)
    clock = FakeClock()

    def handler(job):
        if seen is not None:
            seen.append(read_snapshot(str(tmp_path / ".dagrun" / SNAPSHOT)))
        return 0

    ex = FakeExecutor(handler, clock=clock, duration=1.0)
    session = Session(manifest_path=str(tmp_path / "dagrun.toml"), topology=topology,
                      clock=clock, executor_factory=lambda g: ex)
    result = session.build(reporter=RecordingReporter())
    return result, ex


def _assert_no_core_shared(ex: FakeExecutor) -> int:
    """No two jobs that ran at the same time had a core in common; returns overlapping pairs."""
    jobs = {j.task: j for j in ex.jobs}
    overlapping = 0
    names = sorted(ex.intervals)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (s1, e1), (s2, e2) = ex.intervals[a], ex.intervals[b]
            if s1 < e2 and s2 < e1:
                overlapping += 1
                assert not set(jobs[a].cores) & set(jobs[b].cores), (a, b)
    return overlapping


def test_build_leases_cores_on_a_two_node_machine(tmp_path, two_by_eight):
    manifest = """
[dagrun]
jobs = 64

[executors.local]
core_pool = "auto"

[tasks.bench]
matrix = { i = [1, 2, 3, 4, 5, 6] }
cmd = "bench {i}"
threads = 4

[tasks.pinned]
matrix = { i = [1, 2] }
cmd = "pinned {i}"
threads = 2
numa_node = 1
"""
    result, ex = _fake_build(tmp_path, two_by_eight, manifest)
    assert result.ok and len(ex.jobs) == 8
    for job in ex.jobs:
        node = job.numa_node
        assert node in (0, 1)
        assert all(two_by_eight.node_of(c) == node for c in job.cores)
        assert job.env["DAGRUN_CORES"] == ",".join(map(str, job.cores))
        assert job.env["DAGRUN_NUMA_NODE"] == str(node)
        if job.task.startswith("pinned"):
            assert node == 1 and len(job.cores) == 2
        else:
            assert len(job.cores) == 4
    assert _assert_no_core_shared(ex) > 0
    assert _most_cores_at_once(ex) == 16  # the pool was full at some point, never over


def _most_cores_at_once(ex: FakeExecutor) -> int:
    jobs = {j.task: j for j in ex.jobs}
    return max(
        sum(len(jobs[b].cores) for b, (s, e) in ex.intervals.items() if s <= start < e)
        for start, _ in ex.intervals.values()
    )


def test_build_splits_big_tasks_on_four_small_nodes(tmp_path, four_by_four):
    manifest = """
[dagrun]
jobs = 64

[executors.local]
core_pool = "auto"
numa_strict = false

[tasks.wide]
matrix = { i = [1, 2, 3] }
cmd = "wide {i}"
threads = 6

[tasks.narrow]
matrix = { i = [1, 2, 3, 4] }
cmd = "narrow {i}"
threads = 3
"""
    result, ex = _fake_build(tmp_path, four_by_four, manifest)
    assert result.ok
    for job in ex.jobs:
        if job.task.startswith("wide"):
            assert len(job.cores) == 6 and job.numa_node is None
            assert "DAGRUN_NUMA_NODE" not in job.env
            assert len({four_by_four.node_of(c) for c in job.cores}) == 2
        else:
            assert len({four_by_four.node_of(c) for c in job.cores}) == 1
    assert _assert_no_core_shared(ex) > 0


def test_a_build_refuses_a_task_that_never_fits_before_running_anything(tmp_path, uneven):
    manifest = "[executors.local]\ncore_pool = \"auto\"\n[tasks.a]\ncmd = 'a'\n" \
               "[tasks.b]\ncmd = 'b'\nthreads = 3\nnuma_node = 1\n"
    with pytest.raises(ManifestError) as info:
        _fake_build(tmp_path, uneven, manifest)
    assert (info.value.task, info.value.key) == ("b", "threads")
    assert not (tmp_path / ".dagrun" / "runs").exists()


def test_the_snapshot_shows_running_jobs_and_free_cores(tmp_path, two_by_eight):
    manifest = "[executors.local]\ncore_pool = \"0-3\"\n[tasks.a]\ncmd = 'a'\nthreads = 3\n" \
               "[tasks.b]\ncmd = 'b'\n"
    seen: list = []
    result, ex = _fake_build(tmp_path, two_by_eight, manifest, seen)
    assert result.ok
    first = seen[0]
    assert first["jobs"] == 4 and first["pid"] == os.getpid()
    assert sorted(first["running"]) == [["a", "local", [0, 1, 2]], ["b", "local", [3]]]
    assert first["free"] == {"0": []}
    assert not (tmp_path / ".dagrun" / SNAPSHOT).exists()  # removed when the build ends


def test_executor_pools_report(tmp_path, two_by_eight):
    (tmp_path / "dagrun.toml").write_text(
        "[executors.local]\ncore_pool = \"0-3,8-9\"\n[executors.lab]\ntype = \"ssh\"\n"
        "host = \"h\"\nworkspace = \"/w\"\nmax_jobs = 4\n[tasks.a]\ncmd = 'a'\n"
    )
    session = Session(manifest_path=str(tmp_path / "dagrun.toml"), topology=two_by_eight)
    local, lab = session.executor_pools(probe=False)
    assert (local.name, local.logical_cores, local.configured, local.free) == (
        "local", 16, (0, 1, 2, 3, 8, 9), (0, 1, 2, 3, 8, 9))
    assert local.running == () and local.build_pid is None
    assert [(u.node, u.cores) for u in local.nodes] == [(0, (0, 1, 2, 3)), (1, (8, 9))]
    assert (lab.name, lab.type, lab.configured, lab.slots) == ("lab", "ssh", None, 4)


def test_interrupted_tasks_give_their_cores_back(two_by_eight):
    from dagrun.errors import Interrupted
    from dagrun.graph import compile
    from dagrun.plan import Plan
    from dagrun.scheduler import Hooks, Limits, Scheduler

    m = parse("[tasks.a]\ncmd='a'\nthreads=4\n[tasks.b]\ncmd='b'\nthreads=8\nnuma_node=1\n"
              "[tasks.c]\ncmd='c'\nthreads=2\n", source="m.toml", root="/proj")
    graph = compile(m)
    order = tuple(graph.order)
    leases = CoreLeases(pool_of(two_by_eight))

    class CtrlC(FakeExecutor):
        def collect(self):
            raise KeyboardInterrupt  # Ctrl-C while all three run

    ex = CtrlC(clock=FakeClock())
    scheduler = Scheduler(
        graph, Plan(order, order, (), {}), ["k"] * 3, ex, limits=Limits(16, leases=leases),
        hooks=Hooks(RecordingReporter()), clock=ex.clock, runs_dir="/proj/runs",
    )
    with pytest.raises(Interrupted):
        scheduler.run()
    assert sorted(ex.cancelled) == ["a", "b", "c"]
    stats = leases.statistics()
    assert (stats.free, stats.leases, stats.granted) == (16, 0, 3)
