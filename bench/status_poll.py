#!/usr/bin/env python3
"""Issue 27: does watching a build slow it?  Cold builds with and without a status poll.

    python bench/status_poll.py --dagrun /tmp/venv-a/bin/dagrun --baseline /tmp/venv-b/bin/dagrun

For each size (default 1k and 10k tasks, bench/gen.py's "wide" shape, -j2), each
repetition times (wall, and the CPU time of dagrun with its tasks), in turn: the
baseline (a dagrun without the control channel, e.g. the commit before it),
dagrun, and dagrun while a poller asks the build's
control socket for its status every 100 ms (what `dagrun status` sends; a
thread of this process, so the poll's own Python start-up does not compete
for the two cores).  Each build is cold: a newly generated folder.  The poller
also records how long each answer took.  Use regular (non-editable) installs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gen  # noqa: E402  (bench/gen.py)

POLL_EVERY = 0.1


class Poller:
    """Asks ``folder``'s running build for its status every POLL_EVERY seconds."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, ".dagrun", "control.sock")
        self.stop = threading.Event()
        self.answers: list[float] = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def ask(self) -> float | None:
        t0 = time.perf_counter()
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(self.path)
                s.sendall(b'{"op": "status"}\n')
                data = s.makefile("rb").readline()
        except OSError:
            return None
        if b'"running"' not in data:
            return None
        return time.perf_counter() - t0

    def run(self) -> None:
        while not self.stop.wait(POLL_EVERY):
            took = self.ask()
            if took is not None:
                self.answers.append(took)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def cold(dagrun: str, n: int, poll: bool, work: str) -> tuple[float, float, list[float]]:
    """(wall seconds, CPU seconds of dagrun and its tasks, the poll's answer times)."""
    folder = tempfile.mkdtemp(dir=work)
    gen.gen(n, "wide", folder, peers=False)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(CI="1", NO_COLOR="1")
    t0 = time.perf_counter()
    p = subprocess.Popen([dagrun, "--progress", "plain", "-q", "build", "-j", "2"], cwd=folder,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    poller = Poller(folder) if poll else None
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = code = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    if poller is not None:
        poller.close()
    if code != 0:
        raise SystemExit(f"{dagrun} failed at {n} tasks (exit {code}) in {folder}")
    subprocess.run(["rm", "-rf", folder], check=True)
    return wall, cpu, poller.answers if poller else []


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dagrun", required=True)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--reps", type=int, nargs="+", default=[7, 3])
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as work:
        for n, reps in zip(args.sizes, args.reps, strict=True):
            walls: dict[str, list[float]] = {"baseline": [], "dagrun": [], "dagrun+poll": []}
            cpus: dict[str, list[float]] = {k: [] for k in walls}
            latencies: list[float] = []
            for rep in range(reps):
                for name, dagrun, poll in (("baseline", args.baseline, False),
                                           ("dagrun", args.dagrun, False),
                                           ("dagrun+poll", args.dagrun, True)):
                    wall, cpu, answers = cold(dagrun, n, poll, work)
                    walls[name].append(wall)
                    cpus[name].append(cpu)
                    latencies += answers
                print(f"n={n} rep {rep + 1}/{reps}: " + ", ".join(
                    f"{k} {v[-1]:.2f}s ({cpus[k][-1]:.2f}s CPU)" for k, v in walls.items()),
                    flush=True)
            latencies.sort()
            results[str(n)] = {
                "median_s": {k: round(statistics.median(v), 3) for k, v in walls.items()},
                "all_s": {k: [round(x, 3) for x in v] for k, v in walls.items()},
                "cpu_median_s": {k: round(statistics.median(v), 3) for k, v in cpus.items()},
                "min_s": {k: round(min(v), 3) for k, v in walls.items()},
                "answers": len(latencies),
                "answer_ms_median": round(statistics.median(latencies) * 1000, 2),
                "answer_ms_p95": round(latencies[int(len(latencies) * 0.95)] * 1000, 2),
                "answer_ms_max": round(latencies[-1] * 1000, 2),
            }
            print(json.dumps(results[str(n)]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
