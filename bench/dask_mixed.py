"""Dask, jobs that are not trivial: wall time of whole ``dagrun build`` runs, per interpreter.

    python bench/dask_mixed.py --python /tmp/venv-a/bin/python --python /tmp/venv-b/bin/python

One LocalCluster (2 worker processes, 1 thread each), the given dagruns in turns, each case
once per round: 300 x ``sleep 0.05``; 400 x ``true`` and a matrix of 6 x ``sleep 2``; 20 x
``sleep 0.5``.  What packing (dask_batch.py) must not make slower: jobs long enough that Dask's
cost per future does not matter, and long jobs among many trivial ones.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

CASES = {
    "300 x sleep 0.05": [("t", 300, "sleep 0.05; : {n}")],
    "400 x true + 6 x sleep 2": [("t", 400, "true {n}"), ("s", 6, "sleep 2; : {n}")],
    "20 x sleep 0.5": [("t", 20, "sleep 0.5; : {n}")],
}


def build(python: str, address: str, tasks: list[tuple[str, int, str]]) -> float:
    folder = tempfile.mkdtemp(prefix="dagrun-dask-mixed-")
    try:
        with open(os.path.join(folder, "dagrun.toml"), "w") as f:
            f.write(f'[executors.c]\ntype = "dask"\nscheduler = "{address}"\n')
            for name, n, cmd in tasks:
                f.write(f'[tasks.{name}]\nmatrix = {{ n = {{ range = [0, {n}] }} }}\n'
                        f'cmd = "{cmd}"\nexecutor = "c"\n')
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["DAGRUN_SERVER"] = "0"
        t0 = time.perf_counter()
        subprocess.run([python, "-m", "dagrun", "build", "-q"], cwd=folder, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python", action="append", required=True, help="one per dagrun to compare")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    from distributed import LocalCluster

    scratch = tempfile.mkdtemp(prefix="dagrun-dask-bench-scratch-")
    os.environ["DASK_TEMPORARY_DIRECTORY"] = scratch
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR,
                           scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                           resources={"threads": 1}, local_directory=scratch)
    try:
        for r in range(args.rounds):
            for case, tasks in CASES.items():
                for py in args.python:
                    wall = build(py, cluster.scheduler_address, tasks)
                    print(f"round {r}  {case:26}  {py}  {wall:.2f} s", flush=True)
    finally:
        cluster.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
