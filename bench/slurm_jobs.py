"""Wall time of N trivial tasks (``true``), each one Slurm batch job (``type = "slurm"``).

    python bench/slurm_jobs.py --start --tasks 200 20 \\
        --dagrun "/tmp/venv-NAME/bin/python -m dagrun"

``--start`` brings up the test suite's single-node Slurm (tests/slurm.py: root,
slurm-wlm) for the run, else SLURM_CONF must name a running one.  Run it under
``flock /tmp/slurm.lock`` when others may use Slurm.  Each size is built
``--repeat`` times in a fresh folder (``--force`` is not needed: a new folder
has no log); the figure is the whole ``dagrun build`` from start to exit.
Prints one line per size and the number of squeue/sbatch calls per build
(counted by shims in front of the real commands on PATH).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent

MANIFEST = """
[executors.hpc]
type = "slurm"
max_jobs = 1000

[tasks.t]
matrix = {{ n = {{ range = [0, {n}] }} }}
cmd = "true"
executor = "hpc"
"""


def shims(folder: Path) -> None:
    """squeue and sbatch wrappers that log each call, then run the real command."""
    for name in ("squeue", "sbatch", "sacct"):
        real = shutil.which(name)
        if real is None:
            continue
        path = folder / name
        path.write_text(f'#!/bin/sh\necho "$(date +%s.%N)" >> "{folder}/{name}.calls"\n'
                        f'exec {real} "$@"\n')
        path.chmod(0o755)


def build(dagrun: str, n: int, base: Path) -> tuple[float, dict[str, int]]:
    project = Path(tempfile.mkdtemp(dir=base))
    (project / "dagrun.toml").write_text(MANIFEST.format(n=n))
    bin_dir = project / "shims"
    bin_dir.mkdir()
    shims(bin_dir)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    started = time.perf_counter()
    done = subprocess.run([*dagrun.split(), "--progress", "plain", "build", "-q"], cwd=project,
                          env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"build failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    calls = {}
    for name in ("squeue", "sbatch", "sacct"):
        log = bin_dir / f"{name}.calls"
        calls[name] = len(log.read_text().splitlines()) if log.exists() else 0
    shutil.rmtree(project, ignore_errors=True)
    return took, calls


@contextlib.contextmanager
def slurm(start: bool, sched: str) -> Iterator[None]:
    if not start:
        if not os.environ.get("SLURM_CONF"):
            raise SystemExit("SLURM_CONF is not set: start a Slurm or pass --start")
        yield
        return
    sys.path.insert(0, str(HERE.parent / "tests"))
    from slurm import slurm_up  # the test suite's single-node Slurm

    with tempfile.TemporaryDirectory(prefix="bench-slurm-") as d, slurm_up(Path(d), sched):
        yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, nargs="+", default=[200])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--start", action="store_true", help="start the tests' single-node Slurm")
    ap.add_argument("--dagrun", default=f"{sys.executable} -m dagrun")
    ap.add_argument("--sched", default="", help="SchedulerParameters of the started Slurm, "
                    "e.g. batch_sched_delay=0 (Slurm's default delays batch jobs up to 3 s)")
    ap.add_argument("--raw", action="store_true", help="also time plain sbatch --wrap true")
    args = ap.parse_args()
    base_dir = tempfile.TemporaryDirectory(prefix="bench-slurm-jobs-")
    with slurm(args.start, args.sched), base_dir as base:
        for n in args.tasks:
            runs = [build(args.dagrun, n, Path(base)) for _ in range(args.repeat)]
            times = [t for t, _ in runs]
            calls = runs[-1][1]
            print(f"{n} tasks: median {statistics.median(times):.1f} s "
                  f"(runs: {', '.join(f'{t:.1f}' for t in times)}); per build: "
                  f"{calls['sbatch']} sbatch, {calls['squeue']} squeue, {calls['sacct']} sacct")
            if args.raw:
                print(f"{n} plain sbatch jobs, submitted and waited for: {raw(n):.1f} s")


def raw(n: int) -> float:
    """Slurm alone: n ``sbatch --wrap true`` jobs, until squeue lists none of them."""
    started = time.perf_counter()
    ids = [subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "true"],
                          capture_output=True, text=True, check=True).stdout.strip()
           for _ in range(n)]
    while subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True,
                         text=True).stdout.strip():
        time.sleep(0.1)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
