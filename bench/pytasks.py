"""Per-task overhead of a trivial Python function task against a trivial command task.

    python bench/pytasks.py [--n 200] [--jobs 1] [--reps 3]

Builds N independent tasks twice in fresh folders, once as function tasks
(``call = "triv:nothing"``, returning None) and once as commands
(``cmd = "true"``, exec'd directly), with ``-j`` jobs, and prints for each:
the median of the per-task durations dagrun measured (submit to end, as
recorded in the completion log) and the cold build's wall time per task.
The function build's figure includes starting its worker processes once.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def manifest(kind: str, n: int) -> str:
    body = 'call = "triv:nothing"' if kind == "function" else 'cmd = "true"'
    return "".join(f"[tasks.t{i:04d}]\n{body}\n" for i in range(n))


def run(kind: str, n: int, jobs: int) -> tuple[float, float]:
    """(median per-task duration, wall time per task) of one cold build, in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "triv.py").write_text("def nothing():\n    return None\n")
        (root / "dagrun.toml").write_text(manifest(kind, n))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "dagrun", "--progress", "plain", "build", "-j", str(jobs)],
            cwd=root, env=env, check=True, stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - started
        lines = (root / ".dagrun" / "log").read_text().splitlines()[1:]
        durations = [json.loads(line)["duration"] for line in lines if '"task"' in line]
        assert len(durations) == n, len(durations)
        return statistics.median(durations), wall / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    kinds = ("command", "function")
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    for _ in range(args.reps):  # alternating, so a busy minute hits both kinds
        for kind in kinds:
            samples[kind].append(run(kind, args.n, args.jobs))
    for kind in kinds:
        median = statistics.median(s[0] for s in samples[kind]) * 1000
        wall = statistics.median(s[1] for s in samples[kind]) * 1000
        print(f"{kind:9} n={args.n} -j{args.jobs}: median task {median:.2f} ms, "
              f"cold build {wall:.2f} ms/task (median of {args.reps})")


if __name__ == "__main__":
    main()
