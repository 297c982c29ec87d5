"""Per-task overhead of a trivial task (``true``): local executor vs Dask vs Slurm (via Dask).

Each figure is the time from ``submit`` to the job's outcome in dagrun, one task at a time
(so it is latency, not throughput), after a few warm-up tasks; the median of ``-n`` runs.

    python bench/dask_overhead.py                 # local, and a LocalCluster (2 workers)
    python bench/dask_overhead.py --slurm         # also SLURMCluster (SLURM_CONF set, Slurm up)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dagrun.executors import Job  # noqa: E402


def measure(ex: Any, root: str, n: int, warm: int = 3) -> list[float]:
    times = []
    for i in range(warm + n):
        job = Job(i + 1, f"t{i}", "true", root, ".", {"DAGRUN_TASK": f"t{i}"},
                  os.path.join(root, ".dagrun", "runs", f"t{i}"))
        t0 = time.perf_counter()
        ex.submit(job)
        outcomes: list[Any] = []
        while not outcomes:
            outcomes = ex.wait()
        elapsed = time.perf_counter() - t0
        assert outcomes[0].ok, outcomes
        if i >= warm:
            times.append(elapsed)
    return times


def report(name: str, times: list[float]) -> None:
    ms = sorted(t * 1000 for t in times)
    print(f"{name:<22} median {statistics.median(ms):7.2f} ms   "
          f"min {ms[0]:7.2f}   max {ms[-1]:7.2f}   (n={len(ms)})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--slurm", action="store_true", help="also through dask_jobqueue.SLURMCluster")
    args = ap.parse_args()
    from dagrun.executors.dask import DaskExecutor
    from dagrun.executors.local import LocalExecutor

    root = tempfile.mkdtemp(prefix="dagrun-dask-bench-")
    state = os.path.join(root, ".dagrun")
    local = LocalExecutor()
    report("local", measure(local, root, args.n))
    local.close()
    dask = DaskExecutor("dask", cluster="local", workers=2, state_dir=state)
    dask.start()
    report("dask LocalCluster", measure(dask, root, args.n))
    dask.close()
    if args.slurm:
        options = {"cores": 1, "processes": 1, "memory": "1GiB", "queue": "debug",
                   "walltime": "00:10:00", "python": sys.executable,
                   "scheduler_options": {"host": "127.0.0.1", "dashboard_address": ":0"},
                   "worker_extra_args": ["--resources", "threads=1"],
                   "log_directory": os.path.join(root, "slurm")}  # not slurm-N.out in the cwd
        slurm = DaskExecutor("slurm", cluster="dask_jobqueue.SLURMCluster", options=options,
                             scale=1, state_dir=state)
        slurm.start()
        slurm.client.wait_for_workers(1, timeout=120)
        report("dask SLURMCluster", measure(slurm, root, args.n))
        slurm.close()


if __name__ == "__main__":
    main()
