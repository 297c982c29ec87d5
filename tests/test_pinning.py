"""Real pinning: tasks read their own Cpus_allowed_list and must see exactly their leased cores.

Both ways of pinning run: ``numactl --physcpubind=.. --membind=..`` (skipped
only when numactl is not installed) and the CPU affinity the spawning thread
sets before posix_spawn (always).  Builds record each task's start and end
and check that no two tasks running at the same time shared a core.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from dagrun.executors import Job
from dagrun.executors.local import LocalExecutor, find_numactl
from dagrun.numa import Topology, format_cpulist, parse_cpulist
from dagrun.report import RecordingReporter
from dagrun.session import Session

NUMACTL = shutil.which("numactl")
CPUS = sorted(os.sched_getaffinity(0))
pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="pinning tests need 2 usable cores")

REPORT = (
    "echo start $(date +%s%N); grep -E 'Cpus_allowed_list|Mems_allowed_list' /proc/self/status; "
    "sh -c 'grep Cpus_allowed_list /proc/self/status' | sed 's/^/child /'; "
    "echo cores=$DAGRUN_CORES node=$DAGRUN_NUMA_NODE"
)


@pytest.fixture(params=["affinity", "numactl"])
def numactl(request: pytest.FixtureRequest) -> str | None:
    """The numactl path for the executor, or None to pin with sched_setaffinity."""
    if request.param == "numactl":
        if NUMACTL is None:
            pytest.skip("numactl is not installed (apt-get install numactl)")
        return NUMACTL
    return None


def pool_and_node() -> tuple[tuple[int, int], int | None]:
    """Two cores dagrun may use, on one NUMA node when the machine reports nodes."""
    topo = Topology.machine()
    for node, cores in sorted(topo.nodes.items()):
        if len(cores) >= 2:
            return (cores[0], cores[1]), node
    return (CPUS[0], CPUS[1]), None


def allowed(text: str, prefix: str = "Cpus_allowed_list") -> tuple[int, ...]:
    m = re.search(rf"^{prefix}:\s*(\S+)$", text, re.M)
    assert m is not None, text
    return parse_cpulist(m.group(1))


def run_jobs(ex: LocalExecutor, jobs: list[Job]) -> dict[int, str]:
    for job in jobs:
        ex.submit(job)
    outs: dict[int, str] = {}
    end = time.monotonic() + 20
    while len(outs) < len(jobs) and time.monotonic() < end:
        for o in ex.wait(timeout=end - time.monotonic()):
            assert o.exit_code == 0, (o.stdout, o.stderr)
            outs[o.job_id] = o.stdout
    return outs


def test_each_job_sees_exactly_its_cores(tmp_path: Path, numactl: str | None):
    (a, b), node = pool_and_node()
    ex = LocalExecutor(numactl=numactl)
    before = os.sched_getaffinity(0)
    sets = {1: (a,), 2: (b,), 3: (a, b), 4: ()}
    jobs = [
        Job(id=n, task=f"t{n}", cmd=REPORT, root=str(tmp_path), cwd=".", env=dict(os.environ),
            run_dir=str(tmp_path / f"t{n}"), cores=cores, numa_node=node if cores else None)
        for n, cores in sets.items()
    ]
    try:
        outs = run_jobs(ex, jobs)
    finally:
        ex.close()
    assert os.sched_getaffinity(0) == before  # dagrun's own threads are never left pinned
    for n, cores in sets.items():
        expected = cores or tuple(sorted(before))
        assert allowed(outs[n]) == expected
        assert allowed(outs[n], "child Cpus_allowed_list") == expected  # children inherit it
    command = (tmp_path / "t3" / "command.txt").read_text()
    assert f"# cores: {a},{b}\n" in command
    if numactl is not None:
        assert f"# argv: {numactl} --physcpubind={a},{b}" in command
        if node is not None:
            assert f"--membind={node} --" in command
            assert allowed(outs[3], "Mems_allowed_list") == (node,)
    else:
        assert "# argv:" not in command  # plain sh -c, pinned by the spawning thread


def _manifest(root: Path, pool: tuple[int, int], node: int | None) -> None:
    pinned = f"numa_node = {node}\n" if node is not None else ""
    record = REPORT + "; sleep 0.15; echo end $(date +%s%N)"
    (root / "dagrun.toml").write_text(f"""
[dagrun]
jobs = 8

[executors.local]
core_pool = "{format_cpulist(pool)}"

[tasks.one]
matrix = {{ i = [1, 2, 3, 4, 5, 6] }}
cmd = "({record}) > out/one-{{i}}.txt"
outputs = ["out/one-{{i}}.txt"]

[tasks.two]
matrix = {{ i = [1, 2] }}
cmd = "({record}) > out/two-{{i}}.txt; echo kept"
outputs = ["out/two-{{i}}.txt"]
threads = 2
{pinned}""")


def _runs(root: Path) -> dict[str, dict[str, object]]:
    runs = {}
    for path in sorted((root / "out").iterdir()):
        text = path.read_text()
        leased = parse_cpulist(re.search(r"^cores=(\S*)", text, re.M).group(1))
        runs[path.stem] = {
            "start": int(re.search(r"^start (\d+)", text, re.M).group(1)),
            "end": int(re.search(r"^end (\d+)", text, re.M).group(1)),
            "allowed": allowed(text),
            "child": allowed(text, "child Cpus_allowed_list"),
            "leased": leased,
            "node": re.search(r"node=(\S*)", text).group(1),
        }
    return runs


@pytest.mark.slow
def test_a_build_pins_every_task_and_never_shares_a_core(tmp_path: Path, numactl: str | None):
    pool, node = pool_and_node()
    _manifest(tmp_path, pool, node)
    session = Session(manifest_path=str(tmp_path / "dagrun.toml"),
                      executor_factory=lambda g: LocalExecutor(numactl=numactl))
    result = session.build(reporter=RecordingReporter())
    assert result.ok, result
    runs = _runs(tmp_path)
    assert len(runs) == 8
    for name, r in runs.items():
        assert r["allowed"] == r["leased"] == r["child"], name
        assert set(r["leased"]) <= set(pool)
        assert len(r["leased"]) == (2 if name.startswith("two") else 1)
        if name.startswith("two") and node is not None:
            assert r["node"] == str(node)
    names = sorted(runs)
    overlapping = 0
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = runs[a], runs[b]
            if ra["start"] < rb["end"] and rb["start"] < ra["end"]:
                overlapping += 1
                assert not set(ra["leased"]) & set(rb["leased"]), (a, b, ra, rb)
    assert overlapping >= 2  # the check above had real concurrency to look at


@pytest.mark.slow
def test_the_default_build_pins_with_numactl_when_installed(tmp_path: Path):
    pool, node = pool_and_node()
    _manifest(tmp_path, pool, node)
    session = Session(manifest_path=str(tmp_path / "dagrun.toml"))
    result = session.build(reporter=RecordingReporter())
    assert result.ok
    command = (tmp_path / ".dagrun" / "runs" / "two[i=1]" / "command.txt").read_text()
    assert ("# argv: " + str(find_numactl()) in command) == (NUMACTL is not None)
    for r in _runs(tmp_path).values():
        assert r["allowed"] == r["leased"]


@pytest.mark.slow
def test_cores_come_back_after_failure_and_timeout(tmp_path: Path, numactl: str | None):
    pool, _ = pool_and_node()
    (tmp_path / "dagrun.toml").write_text(f"""
[dagrun]
failures_allowed = 0

[executors.local]
core_pool = "{format_cpulist(pool)}"
grace_period = 0.5

[tasks.fails]
cmd = "exit 3"
threads = 2

[tasks.hangs]
cmd = "sleep 30"
threads = 2
timeout = 0.2

[tasks.after]
matrix = {{ i = [1, 2] }}
cmd = "grep Cpus_allowed_list /proc/self/status"
threads = 2
""")
    session = Session(manifest_path=str(tmp_path / "dagrun.toml"),
                      executor_factory=lambda g: LocalExecutor(numactl=numactl, grace=0.5))
    result = session.build(reporter=RecordingReporter())
    assert sorted(result.failed) == ["fails", "hangs"]
    assert sorted(result.succeeded) == ["after[i=1]", "after[i=2]"]  # both cores were free again
    assert result.elapsed < 10


def test_cli_plan_and_status_show_the_pool(project):
    pool, node = pool_and_node()
    where = f"node {node} ({format_cpulist(pool)})" if node is not None else format_cpulist(pool)
    project.manifest(f"""
        [executors.local]
        core_pool = "{format_cpulist(pool)}"

        [tasks.a]
        cmd = "true"
        threads = 2
    """)
    r = project.run("build", "-n")
    assert r.code == 0
    assert r.out.splitlines()[:3] == [
        "would run: a", "    never ran",
        f"    leases 2 cores on {where}" if node is not None else f"    leases 2 cores of {where}",
    ]
    r = project.run("status", "--executors")
    assert r.code == 0
    topo = Topology.machine()
    lines = r.out.splitlines()
    assert lines[:5] == [
        "local (local)",
        f"  logical cores     {topo.logical}",
        f"  configured cores  {format_cpulist(pool)} (2)",
        f"  free cores        {format_cpulist(pool)} (2)",
        "  running jobs      0 (no build running)",
    ]


def test_cli_refuses_cores_the_machine_lacks_before_running_anything(project):
    project.manifest("""
        [executors.local]
        core_pool = "0-4095"

        [tasks.a]
        cmd = "touch ran"
    """)
    r = project.run("build")
    assert r.code == 2
    assert "key 'core_pool'" in r.err and "core " in r.err and "is not on this machine" in r.err
    assert "Traceback" not in r.err
    assert not (project.root / "ran").exists()


def test_cli_names_a_task_that_can_never_fit(project):
    project.manifest(f"""
        [executors.local]
        core_pool = "auto"

        [tasks.ok]
        cmd = "touch ran"

        [tasks.huge]
        cmd = "true"
        threads = {len(CPUS) + 1}
    """)
    r = project.run("build")
    assert r.code == 2
    assert "task 'huge', key 'threads'" in r.err
    assert f"threads = {len(CPUS) + 1} can never fit" in r.err
    assert not (project.root / "ran").exists()


@pytest.mark.slow
def test_the_numa_example_runs_here(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch):
    from dagrun.cli import main

    monkeypatch.chdir(tmp_path)  # main() changes directory for -C; put it back afterwards
    example = Path(__file__).parent.parent / "examples" / "numa"
    work = tmp_path / "numa"
    shutil.copytree(example, work, ignore=shutil.ignore_patterns("build", ".dagrun"))
    assert main(["-C", str(work), "--progress", "plain", "build"]) == 0
    summary = (work / "build" / "summary.txt").read_text()
    assert summary.splitlines()[-1] == "12 runs; every run saw exactly its leased cores: yes"
    assert main(["-C", str(work), "--progress", "plain", "build"]) == 0
    assert "no work to do (13 up to date)" in capsys.readouterr().out
