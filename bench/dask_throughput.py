"""Dask throughput: N trivial tasks through a real ``dagrun build`` against plain ``client.map``.

    python bench/dask_throughput.py --python /tmp/venv-x/bin/python [--tasks 2000] [--rounds 2]

One LocalCluster (2 worker processes, 1 thread each: this machine's 2 cores) serves both, in
turns (A B A B).  Plain Dask: ``client.map(run, ["true"] * N, pure=False)`` then ``gather``,
``run`` being ``subprocess.run(cmd, shell=True, capture_output=True)``: the floor.  dagrun: a
project of N independent tasks ``true`` on an executor ``scheduler = ADDRESS``, built with
``dagrun build -q`` from the given interpreter (a regular install); its wall time from start
to exit, and its CPU (user + system of the build process and its children, which are none
here but the local ones).  Printed: tasks/s and CPU ms per task for each.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any


def run(cmd: str) -> int:
    return subprocess.run(cmd, shell=True, capture_output=True).returncode


def plain(client: Any, n: int) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    codes = client.gather(client.map(run, ["true"] * n, pure=False))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert codes == [0] * n
    return n / wall, cpu / n * 1000


def dagrun(python: str, address: str, n: int, extra: str) -> tuple[float, float]:
    folder = tempfile.mkdtemp(prefix="dagrun-dask-bench-")
    try:
        with open(os.path.join(folder, "dagrun.toml"), "w") as f:
            f.write(f'[executors.c]\ntype = "dask"\nscheduler = "{address}"\n{extra}\n'
                    f'[tasks.t]\nmatrix = {{ n = {{ range = [0, {n}] }} }}\n'
                    'cmd = "true {n}"\nexecutor = "c"\n')
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["DAGRUN_SERVER"] = "0"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([python, "-m", "dagrun", "build", "-q"], cwd=folder, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return n / wall, cpu / n * 1000
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python", action="append", required=True, help="one per dagrun to compare")
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--extra", default="", help="more lines for [executors.c] (max_jobs = 8)")
    args = p.parse_args()
    from distributed import Client, LocalCluster

    scratch = tempfile.mkdtemp(prefix="dagrun-dask-bench-scratch-")
    os.environ["DASK_TEMPORARY_DIRECTORY"] = scratch
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR,
                           scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                           resources=None if os.environ.get("NO_RESOURCES") else {"threads": 1},
                           local_directory=scratch)
    client = Client(cluster)
    try:
        plain(client, 50)  # warm
        for r in range(args.rounds):
            rate, cpu = plain(client, args.tasks)
            print(json.dumps({"round": r, "who": "client.map", "tasks_per_s": round(rate, 1),
                              "cpu_ms_per_task": round(cpu, 2)}), flush=True)
            for py in args.python:
                rate, cpu = dagrun(py, cluster.scheduler_address, args.tasks, args.extra)
                print(json.dumps({"round": r, "who": py, "tasks_per_s": round(rate, 1),
                                  "cpu_ms_per_task": round(cpu, 2)}), flush=True)
    finally:
        client.close()
        cluster.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
