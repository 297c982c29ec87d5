"""One benchmark run: a fixed amount of arithmetic on each leased core, timed.

dagrun sets DAGRUN_CORES (the leased cores, e.g. "2,3") and DAGRUN_NUMA_NODE;
this starts one worker process per core (they inherit the pinning) and
writes a JSON record of what it was given, what the kernel says it may use,
and how long the work took.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def allowed_cores() -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    return "?"


def work(kernel: str, n: int) -> int:
    acc = 1
    for i in range(1, n):
        acc = (acc + i * i) % 1_000_003 if kernel == "sum" else (acc * (i | 1)) % 1_000_003
    return acc


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kernel", choices=("sum", "mul"), required=True)
    p.add_argument("--size", type=int, default=400_000)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    leased = os.environ.get("DAGRUN_CORES", "")
    workers = max(1, len(leased.split(","))) if leased else 1
    start = time.perf_counter()
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            work(args.kernel, args.size)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    seconds = time.perf_counter() - start
    record = {
        "task": os.environ.get("DAGRUN_TASK", "?"),
        "kernel": args.kernel,
        "workers": workers,
        "leased": leased,
        "node": os.environ.get("DAGRUN_NUMA_NODE", ""),
        "allowed": allowed_cores(),
        "seconds": round(seconds, 4),
        "mops": round(workers * args.size / seconds / 1e6, 2),
    }
    with open(args.out, "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
