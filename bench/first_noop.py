#!/usr/bin/env python3
"""The first no-op right after a build, Lua 5.4 (issue 22): before and after, beside ninja.

    python bench/first_noop.py /path/to/lua54 [--before 3210a48] [--rounds 5]

Lua's link reads ``*.o`` by a glob, so every build that compiles writes into the folder the
glob reads.  For each round, alternating (ninja, dagrun before, dagrun after), each on its own
copy: a comment appended to ltable.c, a build, then the first no-op and a second no-op, timed.
dagrun runs from regular (non-editable) installs in venvs, PYTHONDONTWRITEBYTECODE unset.
Prints medians (min-max) of each no-op and the ratio to ninja's.
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
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import lua_bench  # noqa: E402
from output_digests import before_and_after, bench_env  # noqa: E402


def timed(cmd: list[str], cwd: str) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=bench_env(), check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("lua")
    ap.add_argument("--before", default="3210a48")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="dagrun-first-noop-")
    try:
        with before_and_after(work, args.before) as installs:
            tools = {
                "ninja": ["ninja", "-j", "2"],
                "before": [installs["before"], "build", "-j2", "-q"],
                "after": [installs["after"], "build", "-j2", "-q"],
            }
            _measure(args, work, tools)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _measure(args: argparse.Namespace, work: str, tools: dict[str, list[str]]) -> None:
    for name in ("make", "ninja", "dagrun"):  # lua_bench's layout and build files
        folder = os.path.join(work, name)
        os.makedirs(folder)
        for f in os.listdir(args.lua):
            if f.endswith((".c", ".h")):
                shutil.copy(os.path.join(args.lua, f), os.path.join(folder, f))
    lua_bench.write_build_files(work)
    for name in ("before", "after"):
        shutil.copytree(os.path.join(work, "dagrun"), os.path.join(work, name))
    for name, cmd in tools.items():
        timed(cmd, os.path.join(work, name))  # the cold build
    first: dict[str, list[float]] = {n: [] for n in tools}
    second: dict[str, list[float]] = {n: [] for n in tools}
    for n in range(args.rounds):
        for name, cmd in tools.items():
            folder = os.path.join(work, name)
            lua_bench.append(os.path.join(folder, "ltable.c"), f"/* edit {n} */\n")
            timed(cmd, folder)
            first[name].append(timed(cmd, folder))
            second[name].append(timed(cmd, folder))
    print("| tool | first no-op after a build (ms) | ×ninja | second no-op (ms) | ×ninja |")
    print("|---|---|---|---|---|")
    n1, n2 = statistics.median(first["ninja"]), statistics.median(second["ninja"])
    for name in tools:
        a, b = statistics.median(first[name]), statistics.median(second[name])
        print(f"| {name} | {a * 1000:.1f} ({min(first[name]) * 1000:.1f}-"
              f"{max(first[name]) * 1000:.1f}) | {a / n1:.1f} | {b * 1000:.1f} | "
              f"{b / n2:.1f} |")
    print(f"\n(medians of {args.rounds} alternating rounds; Lua 5.4, 34 objects, -j2)")


if __name__ == "__main__":
    raise SystemExit(main())
