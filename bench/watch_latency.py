"""Latency of ``dagrun watch``: from a file save to the start of the task it triggers.

Method: a project with one task whose command is ``date +%s.%N >> starts.txt``
(the wall time its shell runs, a few ms after the spawn).  ``dagrun watch``
runs as a subprocess; for each sample the script notes ``time.time()``, writes
the input file, waits for the new line in ``starts.txt`` and for the round to
end ("dagrun: watching"), then idles 0.3 s so samples do not overlap.
Latency = task start - write.  Prints min / median / max per debounce.

    python bench/watch_latency.py [--samples 15] [--debounce 0 50 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MANIFEST = """\
[tasks.t]
cmd = "date +%s.%N >> starts.txt"
inputs = ["src.txt"]
"""


def wait_until(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise SystemExit("timed out")
        time.sleep(0.001)


def measure(debounce: int, samples: int) -> list[float]:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "dagrun.toml").write_text(MANIFEST)
        (root / "src.txt").write_text("0")
        p = subprocess.Popen(
            [sys.executable, "-m", "dagrun", "--progress", "plain", "watch",
             "--debounce", str(debounce)],
            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True).start()  # type: ignore[arg-type]
        starts = root / "starts.txt"

        def rounds() -> int:
            return sum("dagrun: watching" in line for line in lines)

        def count() -> int:
            return len(starts.read_text().split()) if starts.exists() else 0

        wait_until(lambda: rounds() >= 1)
        out = []
        for n in range(1, samples + 1):
            time.sleep(0.3)
            before = count()
            t0 = time.time()
            (root / "src.txt").write_text(str(n))
            wait_until(lambda before=before: count() > before)
            out.append(float(starts.read_text().split()[-1]) - t0)
            wait_until(lambda n=n: rounds() >= n + 1)
        p.send_signal(2)
        p.wait(timeout=10)
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=15)
    ap.add_argument("--debounce", type=int, nargs="+", default=[0, 50, 200])
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {args.samples} samples each")
    for d in args.debounce:
        ms = [x * 1000 for x in measure(d, args.samples)]
        print(
            f"--debounce {d:>4}: min {min(ms):6.1f} ms  median {statistics.median(ms):6.1f} ms  "
            f"max {max(ms):6.1f} ms"
        )


if __name__ == "__main__":
    main()
