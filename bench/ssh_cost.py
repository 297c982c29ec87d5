#!/usr/bin/env python3
"""The cost of a trivial task (``true``) locally, over SSH through the shared connection, and
with a fresh SSH handshake: medians over N runs, against a private sshd on 127.0.0.1.

usage (root, openssh-server installed): python bench/ssh_cost.py [N]

Starts the tests' sshd (tests/sshd.py: an unprivileged user with /bin/sh, curve25519 key
exchange) and measures, each N times, one after the other:

    local executor     LocalExecutor.submit + wait on its fileno + collect, ``true``
    ssh executor       the same through SshExecutor (one channel on the ControlMaster)
    ssh channel alone  ``ssh -o ControlPath=SOCKET host true`` (the mux client, no wrapper)
    fresh handshake    ``ssh -o ControlMaster=no -o ControlPath=none host true``

and then the throughput of 500 (``N_MANY``) ``true`` with 8 (``IN_FLIGHT``) at a time: through
SshExecutor (max_jobs 8), through 8 loops of the bare mux client on the same connection, and
as a real ``python -m dagrun build`` of 500 tasks on an ssh executor with max_jobs 8 (the
whole command timed: its start, the master's handshake and the scheduler included).
"""

from __future__ import annotations

import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sshd import start_sshd  # noqa: E402

from dagrun.executors import Context, Executor, Job, create  # noqa: E402


def run_jobs(ex: Executor, root: str, n: int) -> list[float]:
    times = []
    for i in range(n):
        job = Job(id=i + 1, task=f"t{i}", cmd="true", root=root, cwd=".", env={},
                  run_dir=os.path.join(root, ".dagrun", "runs", f"t{i}"))
        t = time.perf_counter()
        ex.submit(job)
        got: list[object] = []
        while not got:
            select.select([ex.fileno()], [], [])
            got = list(ex.collect())
        times.append(time.perf_counter() - t)
    return times


N_MANY, IN_FLIGHT = 500, 8


def many_jobs(ex: Executor, root: str) -> float:
    """Tasks per second for N_MANY jobs, IN_FLIGHT at a time (as the scheduler keeps them)."""
    left, running = N_MANY, 0
    t = time.perf_counter()
    while left or running:
        while left and running < IN_FLIGHT:
            ex.submit(Job(id=left, task=f"m{left}", cmd="true", root=root, cwd=".", env={},
                          run_dir=os.path.join(root, ".dagrun", "runs", f"m{left}")))
            left, running = left - 1, running + 1
        select.select([ex.fileno()], [], [])
        running -= len(ex.collect())
    return N_MANY / (time.perf_counter() - t)


def many_cmds(argv: list[str]) -> float:
    """Tasks per second for N_MANY commands, IN_FLIGHT loops of them at once."""
    import threading

    def loop() -> None:
        for _ in range(N_MANY // IN_FLIGHT):
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)

    threads = [threading.Thread(target=loop) for _ in range(IN_FLIGHT)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return N_MANY // IN_FLIGHT * IN_FLIGHT / (time.perf_counter() - t)


def build_rate(base: Path, server: Any) -> float:
    """Tasks per second of a whole ``dagrun build`` of N_MANY ``true`` on the ssh executor."""
    project = base / "build"
    project.mkdir()
    project.chmod(0o777)
    tasks = "".join(f'[tasks.t{i}]\nexecutor = "lab"\ncmd = "true"\n' for i in range(N_MANY))
    (project / "dagrun.toml").write_text(
        server.toml("lab", workspace=str(project), max_jobs=IN_FLIGHT) + tasks)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dagrun", "--progress", "plain", "build"], cwd=project,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
    return N_MANY / (time.perf_counter() - t)


def run_cmd(argv: list[str], n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return times


def _closing(executor: Executor, stop: Any) -> Any:
    """``stop`` that first closes ``executor`` (its master connection), even after an error."""

    def both() -> None:
        executor.close()
        stop()

    return both


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    base = Path(tempfile.mkdtemp(prefix="dagrun-sshcost-"))
    base.chmod(0o777)
    server = start_sshd(base / "sshd")
    root = str(base)
    ctx = Context(root, os.path.join(root, ".dagrun"), dict(os.environ), 4)
    try:
        local = create("local", "local", {}, ctx)
        remote = create("ssh", "lab", server.options(workspace=root, max_jobs=IN_FLIGHT), ctx)
        remote.start()
        server.stop = _closing(remote, server.stop)  # type: ignore[method-assign]
        plain = remote.ssh_argv()  # type: ignore[attr-defined]  # ends with the host
        fresh = [("ControlPath=none" if a.startswith("ControlPath=") else a) for a in plain]
        results = {
            "local executor": run_jobs(local, root, n),
            "ssh executor (shared connection)": run_jobs(remote, root, n),
            "ssh channel alone (mux client)": run_cmd([*plain, "true"], n),
            "fresh handshake (ControlMaster=no)": run_cmd([*fresh, "true"], n),
        }
        rates = {
            f"ssh executor, max_jobs {IN_FLIGHT}": many_jobs(remote, root),
            f"{IN_FLIGHT} mux client loops": many_cmds([*plain, "true"]),
        }
        remote.close()
        local.close()
        rates[f"dagrun build, max_jobs {IN_FLIGHT}"] = build_rate(base, server)
    finally:
        server.stop()
    print(f"median of {n} runs each, `true`, sequential:")
    for name, times in results.items():
        print(f"  {name:36s} {statistics.median(times) * 1000:8.1f} ms")
    print(f"{N_MANY} `true`, {IN_FLIGHT} at a time:")
    for name, rate in rates.items():
        print(f"  {name:36s} {rate:8.0f} tasks/s")


if __name__ == "__main__":
    main()
