"""Idle and half-sent connections to the HTTP executor's port (issue 20): anyone who can reach
it can open them; they never take the build's descriptors.  A real build (the CLI in a
subprocess with the usual 1,024-descriptor soft limit), a real worker, 2,000 real sockets."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from http_workers import start_worker, stop, wait_for, worker_env

pytestmark = pytest.mark.slow

TASKS = "".join(
    f"""
[tasks.r{n}]
cmd = "sleep 0.2; echo {n} > r{n}.txt"
outputs = ["r{n}.txt"]
executor = "pool"

[tasks.l{n}]
cmd = "cat r{n}.txt > l{n}.txt"
inputs = ["r{n}.txt"]
outputs = ["l{n}.txt"]
"""
    for n in range(12)
) + '\n[tasks.limit]\ncmd = "ulimit -Sn > limit.txt"\noutputs = ["limit.txt"]\n'


def _limit_descriptors(soft: int, hard: int | None) -> None:
    if hard is None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _worker_command(out: Path) -> list[str]:
    wait_for(lambda: "dagrun worker http" in out.read_text(), what="the worker command")
    line = next(x for x in out.read_text().splitlines() if "dagrun worker http" in x)
    return line.split()[2:]  # URL --token-file FILE


def _flood(host: str, port: int, n: int) -> list[socket.socket]:
    """``n`` connections: every other one sends half a request head, the rest nothing."""
    socks = []
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect((host, port))
        except BlockingIOError:
            pass
        if i % 2:
            try:
                s.send(b"GET /status HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                pass
        socks.append(s)
    return socks


@pytest.mark.parametrize("hard", [None, 1024], ids=["soft-1024", "hard-1024"])
def test_two_thousand_idle_connections_leave_the_build_running(tmp_path, hard):
    """With the hard limit at 1,024 too, raising the soft one cannot help: the cap must."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "dagrun.toml").write_text(f'[executors.pool]\ntype = "http"\n{TASKS}')
    out = tmp_path / "build.out"
    with open(out, "wb") as f:
        build = subprocess.Popen(
            [sys.executable, "-m", "dagrun", "--progress", "plain", "build", "-j", "4"],
            cwd=project, env=worker_env(), stdout=f, stderr=subprocess.STDOUT,
            preexec_fn=lambda: _limit_descriptors(1024, hard),
        )
    socks: list[socket.socket] = []
    worker = None
    try:
        url, _, token_file = _worker_command(out)
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        socks = _flood(parts.hostname, parts.port, 2000)
        time.sleep(1.0)  # the server accepts them (and drops the oldest)
        worker = start_worker(url, token_file, jobs=2)
        assert build.wait(timeout=90) == 0, out.read_text()
    finally:
        for s in socks:
            s.close()
        if build.poll() is None:
            build.kill()
            build.wait()
        if worker is not None:
            stop(worker)
    text = out.read_text()
    assert "25 succeeded" in text, text
    raised = hard if hard is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert int((project / "limit.txt").read_text()) == raised  # the soft limit, raised at start
    assert "Traceback" not in text
    assert all((project / f"l{n}.txt").read_text() == f"{n}\n" for n in range(12))
