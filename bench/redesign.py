#!/usr/bin/env python3
"""The edit loop before and after a change of structure (issue 21), beside Ninja, in one run.

Two regular (non-editable) installs, ``--before REV`` and the working tree, each in its own
venv (PYTHONDONTWRITEBYTECODE unset), and ``ninja -j2`` on the same generated ``wide``
builds (bench/gen.py).  For each size, one project per tool, built cold once; then
``--rounds`` rounds, the tools alternating within each round:

- no-op: a build right after a build;
- incremental: the last task's source gets new content (no task depends on it: exactly one
  task reruns), then a build.

    python bench/redesign.py [--before REV] [--sizes 1000,10000] [--rounds 7]

Prints a Markdown table of medians (milliseconds), after/before and each against Ninja.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gen  # noqa: E402
from output_digests import before_and_after, bench_env  # noqa: E402


def timed(cmd: list[str], cwd: str) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=bench_env(), capture_output=True, text=True)
    took = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{cmd} in {cwd} failed: {p.stdout[-2000:]}{p.stderr[-2000:]}")
    return took


def last_source(project: str) -> str:
    src = os.path.join(project, "src")
    return os.path.join(src, max(os.listdir(src)))


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--before", default="c7cca08")
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="dagrun-redesign-")
    try:
        with before_and_after(work, args.before) as tools:
            commands = {name: [script, "build", "-j2", "-q"] for name, script in tools.items()}
            commands["ninja"] = ["ninja", "-j2"]
            for size in (int(s) for s in args.sizes.split(",")):
                _measure(work, size, commands, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _measure(work: str, size: int, commands: dict[str, list[str]], rounds: int) -> None:
    projects = {}
    for name, cmd in commands.items():
        projects[name] = os.path.join(work, f"wide-{size}-{name}")
        gen.gen(size, "wide", projects[name], peers=(name == "ninja"))
        timed(cmd, projects[name])  # cold
        timed(cmd, projects[name])  # the first no-op leaves what later ones use
    rows: dict[str, dict[str, list[float]]] = {"no-op": {}, "incremental": {}}
    for n in range(rounds):
        for name, cmd in commands.items():
            rows["no-op"].setdefault(name, []).append(timed(cmd, projects[name]))
            with open(last_source(projects[name]), "w") as f:
                f.write(f"round {n}\n")
            rows["incremental"].setdefault(name, []).append(timed(cmd, projects[name]))
    k = f"{size // 1000}k"
    print(f"\n| {k}, wide, -j2 | ninja (ms) | before (ms) | after (ms) | after / before "
          "| before / ninja | after / ninja |")
    print("|---|---|---|---|---|---|---|")
    for figure, by_tool in rows.items():
        m = {name: statistics.median(v) * 1000 for name, v in by_tool.items()}
        print(f"| {figure} | {m['ninja']:.1f} | {m['before']:.1f} | {m['after']:.1f} "
              f"| {m['after'] / m['before']:.2f} | {m['before'] / m['ninja']:.2f} "
              f"| {m['after'] / m['ninja']:.2f} |")
    print(f"\n(medians of {rounds} alternating rounds)")


if __name__ == "__main__":
    raise SystemExit(main())
