"""Where a cold build's peak RSS comes from, and what loading the state cache costs (issue 12).

Three measurements of a generated build (``bench/gen.py``), with the dagrun that ``python``
imports (use a regular install's python, bytecode compiled, as bench/run.py does):

- ``phases``: one cold build in this process (``rm -rf out .dagrun`` first), printing VmRSS
  and VmHWM (the peak so far) when each step starts and ends, and with ``--trace`` the
  largest live allocations (tracemalloc, by line) at the end of the run and the peak of
  each step: what each step adds and what its transient costs; ``--incremental``: of a
  built project (no ``rm -rf``), the last task's input changed;
- ``compare``: alternating runs of several installs (each a venv folder): peak RSS, wall and
  CPU time (user+sys, children included) of a cold build, 3 no-op builds and 3 incremental
  builds (the last task's input changed) per round; medians;
- ``load``: in fresh processes (CPU time, medians of 21): marshal.loads of the cache's graph
  part plus ``BuildGraph.from_cache``, and the whole ``state_cache.loads``.

Usage::

    python bench/memory.py phases  --project DIR [--trace] [--incremental]
    python bench/memory.py compare --project DIR --rounds 3 VENV [VENV ...]
    python bench/memory.py load    --project DIR [--python PYTHON]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any


def rss() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in MB."""
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                found[line.split(":")[0]] = int(line.split()[1]) // 1024
    return found["VmRSS"], found["VmHWM"]


def _fresh(project: str) -> None:
    shutil.rmtree(os.path.join(project, "out"), ignore_errors=True)
    shutil.rmtree(os.path.join(project, ".dagrun"), ignore_errors=True)
    os.mkdir(os.path.join(project, "out"))


def phases(project: str, trace: bool, incremental: bool) -> None:
    if trace:
        import tracemalloc

        tracemalloc.start()
    import dagrun.build as build
    import dagrun.cli as cli
    import dagrun.pipeline as pipeline
    import dagrun.session as session
    import dagrun.state.cache as state_cache

    lines: list[str] = []

    def mark(label: str) -> None:
        now, peak = rss()
        text = f"{label:16s} rss {now:3d} MB  peak {peak:3d} MB"
        if trace:
            current, traced = tracemalloc.get_traced_memory()
            text += f"  traced {current / 1e6:5.1f} MB (peak since last {traced / 1e6:5.1f})"
            tracemalloc.reset_peak()
        lines.append(text)
        if trace and label == "run<":
            for stat in tracemalloc.take_snapshot().statistics("lineno")[:20]:
                frame = stat.traceback[0]
                where = f"{os.path.basename(frame.filename)}:{frame.lineno}"
                lines.append(f"    {stat.size / 1e6:5.2f} MB {stat.count:6d}  {where}")

    def wrap(owner: Any, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            mark(label + ">")
            try:
                return inner(*args, **kwargs)
            finally:
                mark(label + "<")

        setattr(owner, name, wrapped)

    wrap(state_cache.StateCache, "load", "load_cache")
    wrap(pipeline, "load", "manifest")
    wrap(pipeline, "compile", "compile")
    wrap(pipeline.Keys, "compute", "keys")
    wrap(pipeline, "make", "plan")
    wrap(build, "run", "run")
    wrap(state_cache.StateCache, "write", "write_cache")
    wrap(session.Session, "_record_proof", "record_fresh")
    if incremental:  # a built project: one input changed
        last = sorted(glob.glob(os.path.join(project, "src", "*")))[-1]
        with open(last, "a") as f:
            f.write("edit\n")
    else:
        _fresh(project)
    os.chdir(project)
    mark("imports")
    try:
        cli.main(["build", "-j2", "-q"])
    except SystemExit:
        pass
    mark("end")
    print("\n".join(lines))


def compare(project: str, rounds: int, venvs: list[str]) -> None:
    unset = ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")  # the install's own, bytecode compiled
    env = {k: v for k, v in os.environ.items() if k not in unset}
    last = sorted(glob.glob(os.path.join(project, "src", "*")))[-1]
    kinds = ("cold", "no-op", "incremental")
    found: dict[str, dict[str, list[tuple[float, float, float]]]] = {
        v: {k: [] for k in kinds} for v in venvs
    }

    def run(venv: str) -> tuple[float, float, float]:
        start = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "%M %U %S", os.path.join(venv, "bin", "dagrun"), "build",
             "-j2", "-q"],
            cwd=project, env=env, capture_output=True, text=True, check=True,
        )
        wall = time.perf_counter() - start
        kb, user, system = proc.stderr.strip().splitlines()[-1].split()
        return int(kb) / 1024, wall, float(user) + float(system)

    edits = 0
    for _ in range(rounds):
        for venv in venvs:
            _fresh(project)
            found[venv]["cold"].append(run(venv))
            for _ in range(3):
                found[venv]["no-op"].append(run(venv))
            for _ in range(3):
                edits += 1
                with open(last, "w") as f:
                    f.write(f"edit {edits}\n")
                found[venv]["incremental"].append(run(venv))
    for venv in venvs:
        parts = []
        for kind in kinds:
            mb, wall, cpu = (statistics.median(c) for c in zip(*found[venv][kind], strict=True))
            parts.append(f"{kind}: {mb:.1f} MB, {wall * 1000:.0f} ms wall, {cpu * 1000:.0f} ms cpu")
        print(f"{venv}\n  " + "\n  ".join(parts))


_LOAD = r"""
import marshal, sys, time
import dagrun.graph as graph, dagrun.state.cache as state_cache
raw = open(sys.argv[1], "rb").read()
data, blob = state_cache.loads(raw)
blobs = blob[1] if isinstance(blob[1], list) else [blob[1]]
del data, blob
start = time.thread_time()
pieces = [marshal.loads(b) for b in blobs]
loaded = time.thread_time()
g = graph.BuildGraph.from_cache(pieces if len(pieces) > 1 else pieces[0])
made = time.thread_time()
del g, pieces
again = time.thread_time()
state_cache.loads(raw)
print(loaded - start, made - loaded, time.thread_time() - again)
"""


def load(project: str, python: str) -> None:
    cache = os.path.join(project, ".dagrun", "cache")
    rows = []
    for _ in range(21):
        out = subprocess.run([python, "-c", _LOAD, cache], capture_output=True, text=True,
                             check=True, cwd=project).stdout  # not the checkout's dagrun
        rows.append([float(x) * 1000 for x in out.split()])
    loads, made, whole = (statistics.median(c) for c in zip(*rows, strict=True))
    print(f"graph part: marshal.loads {loads:.2f} ms + BuildGraph.from_cache {made:.2f} ms "
          f"= {loads + made:.2f} ms; whole _cache_loads {whole:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("phases", "compare", "load"))
    parser.add_argument("--project", required=True)
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--incremental", action="store_true", help="phases: of a built project")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("venvs", nargs="*")
    args = parser.parse_intermixed_args()
    project = os.path.abspath(args.project)
    if args.what == "phases":
        phases(project, args.trace, args.incremental)
    elif args.what == "compare":
        compare(project, args.rounds, [os.path.abspath(v) for v in args.venvs])
    else:
        load(project, args.python)


if __name__ == "__main__":
    main()
