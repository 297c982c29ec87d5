#!/usr/bin/env python3
"""The build server against Ninja: no-op and one-input-edited builds, alternating (issue 22).

    python bench/server.py [--sizes 1000 10000] [--reps 10] [--json FILE]

For each size, three copies of the same generated wide build (bench/gen.py, -j2):
Ninja's, dagrun's through its server, and dagrun's in-process (DAGRUN_SERVER=0, so
the in-process figures are measured beside the server ones and must not regress).
Each repetition times, in turn, a no-op of each, then an edit of the last task's
input (it has no dependents: exactly one task reruns) and a build of each.
dagrun is the non-editable install in bench/.venv/dagrun (run.py's install_dagrun),
PYTHONDONTWRITEBYTECODE unset, as in bench/run.py.  Also measured:

- ``python -c pass`` with the same interpreter (the floor under any client);
- the build that starts the server: a no-op with DAGRUN_SERVER=1 and no server
  running (it spawns one, then builds in-process), against an in-process no-op;
- the server's idle CPU over 10 s after the builds, and its RSS (status) against
  the peak RSS of an in-process build of the same size (GNU time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import gen  # noqa: E402
import run  # noqa: E402

from dagrun import client, remote_run  # noqa: E402


def env(server: str) -> dict[str, str]:
    e = run.base_env()
    e.pop("CI", None)
    e["DAGRUN_SERVER"] = server
    return e


def wait_server(folder: str, seconds: float = 60.0) -> dict[str, Any]:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        found = client.ask(os.path.join(folder, ".dagrun"), client.STATUS)
        if found is not None:
            return found
        time.sleep(0.05)
    raise SystemExit(f"no server in {folder}")


def stop_server(folder: str) -> None:
    found = client.ask(os.path.join(folder, ".dagrun"), client.STOP)
    if found is not None:
        end = time.monotonic() + 10
        while time.monotonic() < end and remote_run.alive(int(found["pid"])):
            time.sleep(0.02)


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def edit(folder: str, last: str, tag: str) -> str:
    text = f"changed {tag} {time.time_ns()}\n"
    with open(os.path.join(folder, "src", f"{last}.txt"), "w") as f:
        f.write(text)
    return text


def check(folder: str, last: str, text: str, errors: list[str], who: str) -> None:
    with open(os.path.join(folder, "out", last)) as f:
        if f.read() != text:
            errors.append(f"{who}: out/{last} was not rebuilt")


def measure(n: int, reps: int, work: str, dagrun: list[str], ninja: str,
            say: Any) -> dict[str, Any]:
    folders = {k: os.path.join(work, f"server-{n}-{k}") for k in ("ninja", "server", "alone")}
    for folder in folders.values():
        gen.gen(n, "wide", folder)
    last = gen.names(n)[-1]
    argv = {"ninja": [ninja, "-j2"], "server": dagrun + ["build", "-j2"],
            "alone": dagrun + ["build", "-j2"]}
    envs = {"ninja": run.base_env(), "server": env("1"), "alone": env("0")}
    errors: list[str] = []
    for k in ("ninja", "alone"):
        r = run.timed(argv[k], folders[k], envs[k], cap=3600)
        assert r.code == 0, k
    # the build that starts the server: a no-op in a built tree with no server yet
    folder = folders["server"]
    r = run.timed(argv["alone"], folder, env("0"), cap=3600)
    assert r.code == 0
    starting, plain_noop = [], []
    for _ in range(3):
        plain_noop.append(run.timed(argv["alone"], folder, env("0")).wall)
        starting.append(run.timed(argv["server"], folder, env("1")).wall)
        wait_server(folder)
        stop_server(folder)
    start = run.timed(argv["server"], folder, env("1"))
    status = wait_server(folder)
    pid = int(status["pid"])
    for _ in range(3):  # warm up: the first builds through it check everything
        run.timed(argv["server"], folder, envs["server"])
    py = os.path.join(os.path.dirname(dagrun[0]), "python")
    floor: list[float] = []  # `python -c pass`, measured between the no-ops
    noop: dict[str, list[float]] = {k: [] for k in argv}
    incr: dict[str, list[float]] = {k: [] for k in argv}
    rss: dict[str, list[int]] = {k: [] for k in argv}
    for rep in range(reps):
        order = list(argv) if rep % 2 == 0 else list(argv)[::-1]
        for k in order:
            r = run.timed(argv[k], folders[k], envs[k])
            noop[k].append(r.wall)
        floor.append(run.timed([py, "-c", "pass"], work).wall)
        for k in order:
            text = edit(folders[k], last, f"{rep}")
            r = run.timed(argv[k], folders[k], envs[k])
            incr[k].append(r.wall)
            rss[k].append(r.rss_kb)
            check(folders[k], last, text, errors, k)
    builds = wait_server(folder)["builds"]
    t0, c0 = time.monotonic(), cpu_ticks(pid)
    time.sleep(10)
    idle_cpu = (cpu_ticks(pid) - c0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0)
    server_rss = int(wait_server(folder)["rss"])
    stop_server(folder)

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    def ratio(xs: list[float], ninja: list[float]) -> float:
        """The median of per-repetition ratios (each pair measured side by side)."""
        return med([a / b for a, b in zip(xs, ninja, strict=True)])

    row = {
        "n": n,
        "ninja": {"noop": med(noop["ninja"]), "incremental": med(incr["ninja"])},
        "server": {"noop": med(noop["server"]), "incremental": med(incr["server"])},
        "in_process": {"noop": med(noop["alone"]), "incremental": med(incr["alone"])},
        "ratio_server": {"noop": ratio(noop["server"], noop["ninja"]),
                         "incremental": ratio(incr["server"], incr["ninja"])},
        "ratio_in_process": {"noop": ratio(noop["alone"], noop["ninja"]),
                             "incremental": ratio(incr["alone"], incr["ninja"])},
        "python_c_pass": med(floor),
        "starting_build": med(starting), "in_process_noop_before": med(plain_noop),
        "first_start_build": start.wall,
        "server_idle_cpu_fraction": idle_cpu,
        "server_rss_kb": server_rss // 1024,
        "in_process_peak_rss_kb": max(rss["alone"]),
        "builds_served": builds,
        "errors": errors,
    }
    say(json.dumps(row))
    return row


def table(rows: list[dict[str, Any]]) -> str:
    ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
    lines = [
        "| N | Ninja no-op | server no-op (×Ninja) | in-process no-op (×Ninja) | Ninja edit | "
        "server edit (×Ninja) | in-process edit (×Ninja) | `python -c pass` |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {ms(r['ninja']['noop'])} | {ms(r['server']['noop'])} "
            f"({r['ratio_server']['noop']:.2f}×) | {ms(r['in_process']['noop'])} "
            f"({r['ratio_in_process']['noop']:.2f}×) | {ms(r['ninja']['incremental'])} | "
            f"{ms(r['server']['incremental'])} ({r['ratio_server']['incremental']:.2f}×) | "
            f"{ms(r['in_process']['incremental'])} ({r['ratio_in_process']['incremental']:.2f}×)"
            f" | {ms(r['python_c_pass'])} |"
        )
    lines += ["", "| N | build that starts the server | in-process no-op | server idle CPU | "
              "server RSS | in-process peak RSS |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {ms(r['starting_build'])} | {ms(r['in_process_noop_before'])} | "
            f"{r['server_idle_cpu_fraction'] * 100:.2f}% | {r['server_rss_kb'] / 1024:.0f} MiB | "
            f"{r['in_process_peak_rss_kb'] / 1024:.0f} MiB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", default=os.path.join(HERE, "results-server.json"))
    ap.add_argument("--no-install", action="store_true", help="use bench/.venv/dagrun as it is")
    args = ap.parse_args(argv)
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    if not args.no_install:
        run.install_dagrun(say)
    dagrun, where = run.dagrun_argv(False)
    say(f"dagrun: {where}")
    ninja = run.shutil.which("ninja")
    if ninja is None:
        raise SystemExit("ninja is not installed")
    rows = []
    with tempfile.TemporaryDirectory(prefix="dagrun-server-bench-") as work:
        for n in args.sizes:
            rows.append(measure(n, args.reps, work, dagrun, ninja, say))
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
