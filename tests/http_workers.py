"""Real HTTP pull executors with real ``dagrun worker`` processes, for tests.

``http_executor_with_workers(tmp_path)`` is the factory for the executor contract
suite: an HttpExecutor, started, with two workers (two slots each) already
leasing from it.  Its workers exit by themselves when the executor is closed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from dagrun.executors import Context, Job, Outcome
from dagrun.executors.http_pull import HttpExecutor

ROOT = Path(__file__).resolve().parent.parent


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def start_worker(
    ex: HttpExecutor | str,
    token_file: str | None = None,
    *,
    jobs: int = 1,
    directory: Path | None = None,
    grace: float = 10.0,
    cafile: str | None = None,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """A ``python -m dagrun worker`` process for ``ex`` (or a URL and token file)."""
    url = ex if isinstance(ex, str) else ex.url
    token_file = token_file if token_file is not None else ex.token_file  # type: ignore[union-attr]
    argv = [sys.executable, "-m", "dagrun", "worker", url, "--token-file", token_file,
            "-j", str(jobs), "--grace", str(grace)]
    if directory is not None:
        argv += ["--dir", str(directory)]
    if cafile is not None:
        argv += ["--cafile", cafile]
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(argv, env=worker_env(), stdin=subprocess.DEVNULL, stdout=out,
                            stderr=out)
    if log is not None:
        out.close()  # type: ignore[union-attr]
    threading.Thread(target=proc.wait, daemon=True).start()  # reaped whenever it ends
    return proc


def make_executor(tmp_path: Path, **options: Any) -> tuple[HttpExecutor, list[str]]:
    """A started HttpExecutor on ``tmp_path`` (no workers) and the messages it said."""
    said: list[str] = []
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    ctx = Context(str(root), str(root / ".dagrun"), dict(os.environ), 4, said.append)
    options.setdefault("lease_timeout", 2.0)
    ex = HttpExecutor.from_options("pool", options, ctx)
    ex.start()
    return ex, said


def http_executor_with_workers(tmp_path: Path) -> HttpExecutor:
    """The contract suite's factory: an executor with two real workers leasing from it."""
    ex, _ = make_executor(tmp_path, max_jobs=4)
    for n in range(2):
        start_worker(ex, jobs=2, directory=tmp_path / f"worker{n}", grace=5.0)
    wait_for(lambda: len(status(ex)["workers"]) == 2, what="two workers")
    return ex


def job(root: Path | str, job_id: int, cmd: str, **kw: Any) -> Job:
    root = str(root)
    return Job(id=job_id, task=kw.pop("task", f"t{job_id}"), cmd=cmd, root=root, cwd=".",
               env=kw.pop("env", {}), run_dir=f"{root}/.dagrun/runs/t{job_id}", **kw)


def wait_for(check: Any, timeout: float = 30.0, what: str = "a condition") -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def collect(ex: HttpExecutor, n: int, timeout: float = 60.0) -> list[Outcome]:
    """Wait until ``n`` outcomes came (fail after ``timeout``)."""
    got: list[Outcome] = []
    end = time.monotonic() + timeout
    while len(got) < n:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"only {len(got)} of {n} outcomes: {got}")
        got += ex.wait(timeout=left)
    return got


def request(
    url: str, method: str = "GET", body: bytes | None = None, token: str | None = None,
    headers: dict[str, str] | None = None, context: Any = None,
) -> tuple[int, Any]:
    """(status, JSON body or raw bytes) of one request; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
        e.close()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def status(ex: HttpExecutor) -> dict[str, Any]:
    code, body = request(ex.url + "/status", token=ex.token)
    assert code == 200, body
    assert isinstance(body, dict)
    return body


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
