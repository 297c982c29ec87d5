"""Where an incremental build's time goes, phase by phase (issue 12).

For a built project, each sample rewrites the last task's source, then runs one
``dagrun build`` in a fresh interpreter with the phases of the build path timed
by ``time.perf_counter`` wrappers (the wrappers cost a few microseconds each):
the interpreter's start (``python -c pass``, measured apart), the imports, the
no-op check that finds what changed (``proof.examine``), loading the state
cache, the graph, the partial plan (``Planner._partial`` and ``_plan``), running
the task, the journal and the proof.  Prints the median of each phase.

    python bench/incremental_phases.py --folder BUILT [--samples 15] [--python PY]

Run it with the interpreter of a regular install (``bench/.venv/dagrun/bin/python``)
and ``PYTHONDONTWRITEBYTECODE`` unset, as bench/run.py measures dagrun.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
times = {}
from dagrun import entry
from dagrun.state import proof
def wrap(obj, name, label):
    f = getattr(obj, name)
    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            times[label] = times.get(label, 0.0) + time.perf_counter() - t
    setattr(obj, name, timed)
wrap(proof, "examine", "check (proof.examine)")
t_imp = time.perf_counter()
from dagrun import cli, session, build, scheduler, pipeline
from dagrun.state import cache
times["imports of the build path"] = time.perf_counter() - t_imp
S, P = session.Session, pipeline.Planner
for obj, name, label in (
    (cache.StateCache, "load", "load the state cache"), (P, "graph", "the graph"),
    (P, "_partial", "partial: re-key what the change reaches"),
    (P, "_plan", "plan the decided tasks"), (S, "_run", "run (scheduler, spawn, log)"),
    (S, "_save", "journal / cache"), (S, "_record_proof", "the new proof"),
):
    wrap(obj, name, label)
sys.argv = ["dagrun", "build", "-j2", "-q"]
code = entry.main()
times["total (after the interpreter's start)"] = time.perf_counter() - t0
print(json.dumps({k: v * 1000 for k, v in times.items()}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--folder", required=True, help="a built project (bench/gen.py)")
    ap.add_argument("--samples", type=int, default=15)
    ap.add_argument("--python", default=sys.executable)
    a = ap.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE",
                                                            "PYTHONPATH")}
    src = os.path.join(a.folder, "src")
    last = sorted(os.listdir(src))[-1]
    rows: dict[str, list[float]] = {}
    starts = []
    for k in range(a.samples):
        with open(os.path.join(src, last), "w") as f:
            f.write(f"sample {k} {time.time_ns()}\n")
        out = subprocess.run([a.python, "-c", CHILD], cwd=a.folder, env=env, check=True,
                             capture_output=True, text=True).stdout
        for name, ms in json.loads(out.splitlines()[-1]).items():
            rows.setdefault(name, []).append(ms)
        t = time.perf_counter()
        subprocess.run([a.python, "-c", "pass"], env=env, check=True)
        starts.append((time.perf_counter() - t) * 1000)
    print(f"{a.folder}: medians of {a.samples} (ms)\n\n| phase | ms |\n|---|---|")
    print(f"| interpreter start (`python -c pass`, apart) | {statistics.median(starts):.1f} |")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(values):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
