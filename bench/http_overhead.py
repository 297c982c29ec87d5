"""Per-task overhead of a trivial task: one HTTP pull worker against the local executor.

    python bench/http_overhead.py [--tasks 100]

Runs ``true`` TASKS times, one at a time (submit, wait for its outcome), on the
local executor and on an HttpExecutor with one ``dagrun worker`` process,
alternating (so that both see the same machine load), and prints the median
and p90 wall time per task from submit to outcome, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from dagrun.executors import Context, Job  # noqa: E402
from dagrun.executors.http_pull import HttpExecutor  # noqa: E402
from dagrun.executors.local import LocalExecutor  # noqa: E402


def one(ex: Any, root: str, i: int) -> float:
    job = Job(i, f"t{i}", "true", root, ".", {}, os.path.join(root, "runs", f"t{i}"))
    t0 = time.perf_counter()
    ex.submit(job)
    got: list[Any] = []
    while not got:
        got = ex.wait(timeout=30)
    assert got[0].ok, got
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=100)
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="dagrun-overhead-")
    local = LocalExecutor()
    ctx = Context(root, os.path.join(root, ".dagrun"), dict(os.environ), 1, lambda m: None)
    ex = HttpExecutor.from_options("one", {}, ctx)
    ex.start()
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    worker = subprocess.Popen(
        [sys.executable, "-m", "dagrun", "worker", ex.url, "--token-file", ex.token_file],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not ex.status()["workers"] and time.monotonic() < deadline:
        time.sleep(0.05)
    results: dict[str, list[float]] = {"local": [], "http, 1 worker": []}
    for i in range(1, args.tasks + 1):  # interleaved, so both see the same machine load
        results["local"].append(one(local, root, i))
        results["http, 1 worker"].append(one(ex, root, i))
    local.close()
    ex.close()
    worker.wait(timeout=30)
    out = {
        name: {
            "median_ms": round(statistics.median(t) * 1000, 2),
            "p90_ms": round(sorted(t)[int(0.9 * len(t))] * 1000, 2),
        }
        for name, t in results.items()
    }
    print(json.dumps({"tasks": args.tasks, **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
