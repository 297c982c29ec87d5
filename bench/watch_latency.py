"""Latency of ``dagrun watch``: from a file save to the start of the task it triggers.

Method: a project whose measured task's command begins with
``date +%s.%N >> starts.txt`` (the wall time its shell runs, a few ms after
the spawn).  With ``--tasks 1`` that is the only task; with ``--tasks N`` the
project is ``bench/gen.py``'s ``wide`` build of N tasks (each copies its own
``src/tNNNNN.txt``) and the measured task is the last one.  ``dagrun watch``
runs as a subprocess; for each sample the script notes ``time.time()``,
rewrites the measured task's source, waits for the new line in ``starts.txt``
and for the round to end ("dagrun: watching"), then idles 0.3 s so samples do
not overlap.  Latency = task start - write.  Prints min / median / max per
debounce, and the median minus the debounce (dagrun's own time).

    python bench/watch_latency.py [--samples 15] [--debounce 0 50 200] [--tasks 1 10000]
        [--dagrun "python -m dagrun"]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen  # noqa: E402

MANIFEST = """\
[tasks.t]
cmd = "date +%s.%N >> starts.txt"
inputs = ["src.txt"]
"""
STAMP = "date +%s.%N >> starts.txt && "


def wait_until(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise SystemExit("timed out")
        time.sleep(0.001)


def make_project(root: Path, tasks: int) -> Path:
    """Write the project; return the source file each sample rewrites."""
    if tasks <= 1:
        (root / "dagrun.toml").write_text(MANIFEST)
        (root / "src.txt").write_text("0")
        return root / "src.txt"
    gen.gen(tasks, "wide", str(root), peers=False)
    last = gen.names(tasks)[-1]
    toml = root / "dagrun.toml"
    cmd = f'cmd = "{gen.command(last)}"'
    text = toml.read_text()
    assert text.count(cmd) == 1
    toml.write_text(text.replace(cmd, f'cmd = "{STAMP}{gen.command(last)}"'))
    return root / "src" / f"{last}.txt"


def measure(dagrun: list[str], debounce: int, samples: int, tasks: int) -> list[float]:
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as d:
        root = Path(d)
        src = make_project(root, tasks)
        p = subprocess.Popen(
            [*dagrun, "--progress", "plain", "watch", "--debounce", str(debounce)],
            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True).start()  # type: ignore[arg-type]
        starts = root / "starts.txt"

        def rounds() -> int:
            return sum("dagrun: watching" in line for line in lines)

        def count() -> int:
            return len(starts.read_text().split()) if starts.exists() else 0

        wait_until(lambda: rounds() >= 1, timeout=max(10.0, tasks / 20))
        out = []
        for n in range(1, samples + 1):
            time.sleep(0.3)
            before = count()
            t0 = time.time()
            src.write_text(str(n))
            wait_until(lambda before=before: count() > before)
            out.append(float(starts.read_text().split()[-1]) - t0)
            wait_until(lambda n=n: rounds() >= n + 1)
        p.terminate()  # stops like Ctrl-C (SIGINT may be ignored when this runs in the background)
        p.wait(timeout=30)
        return out


def summary(debounce: int, tasks: int, seconds: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in seconds]
    med = statistics.median(ms)
    return {"tasks": tasks, "debounce_ms": debounce, "min": min(ms), "median": med,
            "max": max(ms), "own": med - debounce}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=15)
    ap.add_argument("--debounce", type=int, nargs="+", default=[0, 50, 200])
    ap.add_argument("--tasks", type=int, nargs="+", default=[1])
    ap.add_argument("--dagrun", default=f"{sys.executable} -m dagrun",
                    help="the command that runs dagrun (default: this python -m dagrun)")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {args.samples} samples each")
    for n in args.tasks:
        for d in args.debounce:
            s = summary(d, n, measure(shlex.split(args.dagrun), d, args.samples, n))
            print(
                f"{n:>6} task(s) --debounce {d:>4}: min {s['min']:6.1f} ms  "
                f"median {s['median']:6.1f} ms  max {s['max']:6.1f} ms  "
                f"(median - debounce: {s['own']:5.1f} ms)", flush=True,
            )


if __name__ == "__main__":
    main()
