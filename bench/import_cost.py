#!/usr/bin/env python3
"""CPU time of dagrun's start-up: the interpreter, the build path's imports, a 1k incremental build.

usage: python bench/import_cost.py --python VENV/bin/python [--python OTHER/bin/python]
                                   --project DIR [--runs 21]

Each figure is the median over ``--runs`` of the CPU time (user + sys, from
``getrusage(RUSAGE_CHILDREN)``) of one child process and its own children; the
machine is shared, so CPU time, not wall time.  With two ``--python`` the runs
alternate (A, B, A, B, ...) so that load on the machine falls on both alike.

The rows:

    python -c pass          the interpreter's own start (the floor)
    import build path       python -c "import dagrun.cli, dagrun.session, ..."
    incremental build       `echo x >> src/<last>.txt; dagrun build -j2` in --project
                            (made by `bench/gen.py --tasks 1000 --shape wide` and built
                            once); with two --python, give one --project per python

PYTHONPATH is removed and PYTHONDONTWRITEBYTECODE unset: the installed package
and its compiled bytecode are what is measured.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys

IMPORTS = (
    "import dagrun.cli, dagrun.session, dagrun.build, dagrun.report, dagrun.executors.local"
)


def cpu_ms(argv: list[str], cwd: str = "/") -> float:
    """CPU milliseconds (user + sys) of running argv to completion, children included.
    Not run in this checkout: ``python -c`` would import its dagrun, not the installed one."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return used * 1000


def _env() -> dict[str, str]:
    dropped = ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    return {k: v for k, v in os.environ.items() if k not in dropped}


def incremental(python: str, project: str) -> float:
    sources = sorted(os.listdir(os.path.join(project, "src")))
    with open(os.path.join(project, "src", sources[-1]), "a") as f:
        f.write("x\n")
    dagrun = os.path.join(os.path.dirname(python), "dagrun")
    return cpu_ms([dagrun, "build", "-j2"], cwd=project)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", required=True)
    parser.add_argument("--project", action="append", default=[])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    rows: dict[str, list[list[float]]] = {}
    for python in args.python:  # warm: bytecode written, files cached
        cpu_ms([python, "-c", IMPORTS])
    for _ in range(args.runs):
        for k, python in enumerate(args.python):
            _add(rows, "python -c pass", k, cpu_ms([python, "-c", "pass"]))
            _add(rows, "import build path", k, cpu_ms([python, "-c", IMPORTS]))
            if k < len(args.project):
                _add(rows, "incremental build 1k", k, incremental(python, args.project[k]))
    for name, series in rows.items():
        cells = "  ".join(f"{statistics.median(s):7.1f}" for s in series)
        print(f"{name:24s} {cells}   (median CPU ms, {args.runs} runs)")
    return 0


def _add(rows: dict[str, list[list[float]]], name: str, k: int, value: float) -> None:
    series = rows.setdefault(name, [])
    while len(series) <= k:
        series.append([])
    series[k].append(value)


if __name__ == "__main__":
    sys.exit(main())
