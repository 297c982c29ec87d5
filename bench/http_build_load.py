"""1,000 HTTP workers against a real ``dagrun build`` (not a harness): lease latency, tasks/s,
and the build's CPU while the workers idle.

    python bench/http_build_load.py                      # 1,000 workers, 20,000 tasks
    python bench/http_build_load.py --python /tmp/venv-x/bin/python   # a regular install
    python bench/http_build_load.py --smoke              # 50 workers, 500 tasks

A project with TASKS trivial tasks (``always = true``, executor ``pool``) and a
local task ``gate`` that they all depend on (``sleep IDLE``): the build starts,
its server prints the worker command, WORKERS simulated workers (one keep-alive
connection each, bench/http_load.py's client, the real protocol: long-poll
``/lease``, ``/report``) connect and long-poll while ``gate`` runs (the idle
phase: the build process's CPU is sampled then), then the tasks are released
all at once and leased, "run" (TASK_TIME s, +-50 %: a fleet's pace; 0: saturated, every
worker asks again at once) and reported.  Measured: the p50/p99
latency of the ``/lease`` requests that got tasks, tasks/s from the first lease
to the last report, the build process's CPU per task, and its idle CPU in % of
one core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from http_load import REPORT, Conn, _pct  # noqa: E402  (the same simulated client)


async def worker(
    n: int, conn: Conn, slots: int, stats: dict[str, Any], phase: dict[str, Any]
) -> None:
    """Lease (long poll), report at once, again; every /lease as (sent, answered, jobs).  A
    dropped connection is made again, as ``dagrun worker`` does: the server keeps at most
    PREAUTH_LIMIT connections that have not sent the token yet, so 1,000 workers connecting at
    once lose some (before this, those workers just stopped: ~256 of 1,000 took part)."""
    name = f"sim-{n}"
    while not phase["over"]:
        t0 = time.perf_counter()
        try:
            _, reply = await conn.post("/lease", {"worker": name, "slots": slots,
                                                  "wait": phase["wait"]})
        except (ConnectionError, asyncio.IncompleteReadError):
            conn.close()
            conn.reader = conn.writer = None
            stats["reconnects"] += 1
            await asyncio.sleep(random.uniform(0.05, 0.5))
            continue
        jobs = reply.get("jobs") or []
        stats["leases"].append((t0, time.perf_counter(), len(jobs)))
        if jobs and phase["task_time"]:
            await asyncio.sleep(phase["task_time"] * random.uniform(0.5, 1.5))
        if jobs:
            reports = [REPORT % (name.encode(), job["lease"].encode()) for job in jobs]
            for status in await conn.pipeline("/report", reports):
                stats["reported"] += status == 200
            stats["last"] = time.perf_counter()
        if reply.get("done"):
            return


def latencies(leases: list[tuple[float, float, int]]) -> tuple[list[float], float]:
    """The latency of each /lease that got tasks and was sent after the first tasks came out
    (a poll parked before that waited for the release, not for the server); and that moment."""
    release = min((t1 for _, t1, n in leases if n), default=0.0)
    return [t1 - t0 for t0, t1, n in leases if n and t0 >= release], release


def project(folder: str, tasks: int, idle: float) -> None:
    with open(os.path.join(folder, "dagrun.toml"), "w") as f:
        f.write(
            '[executors.pool]\ntype = "http"\nmax_jobs = 100000\nlease_timeout = 30\n\n'
            f'[tasks.gate]\ncmd = "sleep {idle}"\nalways = true\n\n'
            f"[tasks.t]\nmatrix = {{ n = {{ range = [0, {tasks}] }} }}\n"
            'cmd = "echo {n}"\nexecutor = "pool"\ndeps = ["gate"]\nalways = true\n'
        )


def start_build(python: str, folder: str) -> tuple[subprocess.Popen[str], str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DAGRUN_SERVER")}
    env["DAGRUN_SERVER"] = "0"
    build = subprocess.Popen(
        [python, "-m", "dagrun", "--progress", "plain", "build", "-q"], cwd=folder, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert build.stderr is not None
    end = time.monotonic() + 120
    for line in build.stderr:
        found = re.search(r"dagrun worker (\S+) --token-file (\S+)", line)
        if found:
            with open(found.group(2)) as f:
                return build, found.group(1), f.read().strip()
        if time.monotonic() > end:
            break
    build.kill()
    raise RuntimeError("the build printed no worker command")


def cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(args: argparse.Namespace) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="dagrun-buildload-")
    project(folder, args.tasks, args.idle)
    started = time.monotonic()
    build, url, token = start_build(args.python, folder)
    try:
        host, port = url.split("//")[1].rsplit(":", 1)
        conns = [Conn(host, int(port), token) for _ in range(args.workers)]
        stats: dict[str, Any] = dict(leases=[], reported=0, last=None, reconnects=0)
        phase = {"over": False, "wait": 5.0, "task_time": args.task_time}
        workers = [asyncio.create_task(worker(i, c, args.slots, stats, phase))
                   for i, c in enumerate(conns)]
        await asyncio.sleep(min(3.0, 0.003 * args.workers))  # every worker connects and polls
        c0, t0 = cpu(build.pid), time.monotonic()
        window = max(1.0, args.idle - (t0 - started) - 1.0)
        await asyncio.sleep(window)
        idle = 100 * (cpu(build.pid) - c0) / (time.monotonic() - t0)
        c1 = cpu(build.pid)
        while build.poll() is None and time.monotonic() - started < args.limit:
            await asyncio.sleep(0.05)
            if stats["reported"] >= args.tasks:
                c2 = cpu(build.pid)  # before the build's own end (log, summary)
                break
        else:
            c2 = cpu(build.pid) if build.poll() is None else float("nan")
        code = await asyncio.get_running_loop().run_in_executor(None, build.wait, 60)
        phase["over"] = True
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for c in conns:
            c.close()
        lat, release = latencies(stats["leases"])
        elapsed = (stats["last"] or 0) - release
        return {
            "workers": args.workers, "tasks": args.tasks, "slots": args.slots,
            "build_exit": code, "reported": stats["reported"], "reconnects": stats["reconnects"],
            "tasks_per_s": round(args.tasks / elapsed, 1) if elapsed > 0 else None,
            "lease_p50_ms": round(_pct(lat, 50) * 1000, 2),
            "lease_p99_ms": round(_pct(lat, 99) * 1000, 2),
            "build_cpu_us_per_task": round((c2 - c1) / args.tasks * 1e6, 1),
            "idle_cpu_pct": round(idle, 2),
            "idle_poll_s": phase["wait"], "task_time_s": args.task_time,
        }
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python", default=sys.executable, help="the Python dagrun is installed in")
    p.add_argument("--workers", type=int, default=1000)
    p.add_argument("--tasks", type=int, default=20000)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--idle", type=float, default=15.0, help="seconds the tasks wait for 'gate'")
    p.add_argument("--limit", type=float, default=300.0)
    p.add_argument("--task-time", type=float, default=3.0,
                   help="seconds a task 'runs' (+-50 %%; default 3: 1,000 workers x 4 slots offer "
                   "~1,333 tasks/s); 0: every worker leases again at once (saturated)")
    p.add_argument("--smoke", action="store_true", help="50 workers, 500 tasks, 4 s idle")
    args = p.parse_args()
    if args.smoke:
        args.workers, args.tasks, args.idle, args.task_time = 50, 500, 4.0, 0.1
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.workers + 100)), hard))
    result = asyncio.run(load(args))
    print(json.dumps(result), flush=True)
    return 0 if result["reported"] == args.tasks and result["build_exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
