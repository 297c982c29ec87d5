#!/usr/bin/env python3
"""What a no-op build costs: the interpreter's start, dagrun's own work, and the output checks.

usage: python bench/noop_share.py [--tasks 1000 10000] [--runs 21] [--work DIR] [--json FILE]

Run it with the interpreter of the install to measure (a regular install, e.g.
``bench/.venv/dagrun/bin/python bench/noop_share.py``): the no-op command is the
``dagrun`` console script next to that interpreter (else ``python -m dagrun``),
and the in-process part imports that interpreter's dagrun (unset PYTHONPATH for
an install).

For each size, a ``wide`` build of bench/gen.py is built once by dagrun (-j2)
and, in a second copy, by ninja when it is on PATH.  Then:

1. whole no-ops in subprocesses, alternating ninja, dagrun and
   ``python -c pass`` (the floor: the interpreter's own start), median wall and
   CPU (user + sys, from wait4) of ``--runs`` rounds;
2. in this process, ``fresh.check`` alternating three ways: as it is; with
   ``fresh._changed_outputs`` reduced to one lstat per output (existence
   only, nothing compared); with no output check at all.

"real - none" is what the output checks cost, "exist - none" the lstats
alone; each is also given as a share of the whole no-op's wall median (1).
No result is asserted: the machine's load moves every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def child_env() -> dict[str, str]:
    """Bytecode compiled and cached (PYTHONPATH is kept: the children run what this imports)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def dagrun_argv() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "dagrun")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "dagrun"]


def timed(argv: list[str], cwd: str) -> tuple[float, float]:
    """(wall ms, CPU ms) of one run; a failing run is an error."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=child_env(), stdout=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = (time.perf_counter() - t0) * 1000
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"noop_share: {' '.join(argv)} failed in {cwd}")
    return wall, (usage.ru_utime + usage.ru_stime) * 1000


def prepare(n: int, work: str) -> dict[str, str]:
    """The build for each tool, built once: tool -> folder."""
    folders = {"dagrun": os.path.join(work, f"dagrun-{n}")}
    if shutil.which("ninja"):
        folders["ninja"] = os.path.join(work, f"ninja-{n}")
    for tool, folder in folders.items():
        if not os.path.exists(folder):
            subprocess.run([sys.executable, os.path.join(HERE, "gen.py"), "--tasks", str(n),
                            "--shape", "wide", "--out", folder], check=True,
                           stdout=subprocess.DEVNULL)
        argv = dagrun_argv() + ["-j2", "-q"] if tool == "dagrun" else ["ninja", "-j2"]
        subprocess.run(argv, cwd=folder, env=child_env(), check=True, stdout=subprocess.DEVNULL)
    return folders


def whole(folders: dict[str, str], runs: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU of each no-op (and of the bare interpreter), alternating."""
    argvs = {"dagrun": dagrun_argv() + ["-j2"], "python -c pass": [sys.executable, "-c", "pass"]}
    if "ninja" in folders:
        argvs["ninja"] = ["ninja", "-j2"]
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in argvs}
    for i in range(runs + 1):  # the first round warms the caches and is not counted
        for name, argv in argvs.items():
            run = timed(argv, folders.get(name, folders["dagrun"]))
            if i:
                samples[name].append(run)
    return {name: {"wall_ms": statistics.median(w for w, _ in runs_),
                   "cpu_ms": statistics.median(c for _, c in runs_)}
            for name, runs_ in samples.items()}


def exists_only(fd: int, outputs: Any) -> set[str]:
    """One lstat per output, nothing compared (a missing one still raises)."""
    lstat = os.lstat
    for row in outputs:
        lstat(row[0], dir_fd=fd)
    return set()


def in_process(folder: str, n: int, runs: int) -> dict[str, float]:
    """Median ms of fresh.check with the real output check, an existence check, none."""
    from dagrun.state import proof as fresh

    real = getattr(fresh, "_changed_outputs", None)
    if real is None:
        raise SystemExit("noop_share: dagrun.state.proof has no _changed_outputs(fd, outputs)")
    variants: dict[str, Callable[..., set[str]]] = {
        "real": real, "exist": exists_only, "none": lambda fd, outputs: set()}
    manifest = os.path.join(folder, "dagrun.toml")
    samples: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for i in range(runs + 1):
            for name, check in variants.items():
                fresh._changed_outputs = check  # type: ignore[attr-defined]
                t0 = time.perf_counter()
                count = fresh.check(manifest, [], os.environ)
                if i:
                    samples[name].append((time.perf_counter() - t0) * 1000)
                if count != n:
                    raise SystemExit(f"noop_share: the proof did not hold in {folder} ({name})")
    finally:
        fresh._changed_outputs = real  # type: ignore[attr-defined]
    return {name: statistics.median(s) for name, s in samples.items()}


def measure(n: int, work: str, runs: int) -> dict[str, Any]:
    folders = prepare(n, work)
    noop = whole(folders, runs)
    check = in_process(folders["dagrun"], n, runs)
    wall = noop["dagrun"]["wall_ms"]
    outputs, lstats = check["real"] - check["none"], check["exist"] - check["none"]
    return {"n": n, "noop": noop, "check_ms": check, "outputs_ms": outputs, "lstats_ms": lstats,
            "outputs_share": outputs / wall, "lstats_share": lstats / wall,
            "us_per_output": outputs / n * 1000}


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| N | ninja | dagrun | ×ninja | `python -c pass` | fresh.check (real / exist / none) "
           "| output checks | share of the no-op |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        noop, c = r["noop"], r["check_ms"]
        ninja = noop.get("ninja", {}).get("wall_ms")
        ratio = f"{noop['dagrun']['wall_ms'] / ninja:.2f}" if ninja else "–"
        out.append(
            f"| {r['n']:,} | {f'{ninja:.1f} ms' if ninja else '–'} "
            f"| {noop['dagrun']['wall_ms']:.1f} ms | {ratio} "
            f"| {noop['python -c pass']['wall_ms']:.1f} ms "
            f"| {c['real']:.2f} / {c['exist']:.2f} / {c['none']:.2f} ms "
            f"| {r['outputs_ms']:.2f} ms ({r['us_per_output']:.2f} µs each; lstat alone "
            f"{r['lstats_ms']:.2f}) "
            f"| {r['outputs_share']:.1%} (lstat alone {r['lstats_share']:.1%}) |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--tasks", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--runs", type=int, default=21, help="rounds per figure (median)")
    ap.add_argument("--work", help="folder for the builds (kept; default: a temporary one)")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="noop-share-") as tmp:
        work = a.work or tmp
        os.makedirs(work, exist_ok=True)
        rows = [measure(n, work, max(1, a.runs)) for n in a.tasks]
    print(table(rows))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"python": sys.executable, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
