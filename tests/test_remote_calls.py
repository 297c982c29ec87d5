"""Function tasks (`call`) on SSH hosts and HTTP workers: a real sshd on 127.0.0.1
(tests/sshd.py) and real `dagrun worker` processes, results checked and cached as on local."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import cli_project
from http_workers import ROOT, worker_env
from sshd import SshServer

pytestmark = pytest.mark.slow

STEPS = """
    import os

    def _count(name):
        with open(name + ".count", "a") as f:
            f.write("x")

    def far(n):
        _count("far")
        print("far ran as", os.environ.get("DAGRUN_TASK"))
        return {"n": n, "pid": os.getpid()}

    def web(word):
        _count("web")
        return word * 2

    def total(far, web):
        _count("total")
        assert far["pid"] != os.getpid()
        with open("total.txt", "w") as f:
            f.write(f"{far['n']}:{web}\\n")
        return far["n"]

    def twice(far):
        return far["n"] * 2

    def boom(n):
        raise ValueError(f"bad row {n}")

    def unpicklable():
        return lambda: 1
"""
HOST_PATH = f'env = {{ PYTHONPATH = "{ROOT}" }}\n'  # dagrun on the host (the test user's python3)


@pytest.fixture
def root(shared_dir: Path, sshd: SshServer) -> Path:
    (shared_dir / "steps.py").write_text(textwrap.dedent(STEPS))
    return shared_dir


@pytest.fixture
def open_umask():
    """Folders the build makes stay writable by the ssh test user (a shared workspace)."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def project(root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            open_umask: None):
    return cli_project(root, monkeypatch, capsys)


def _count(root: Path, name: str) -> int:
    path = root / f"{name}.count"
    return len(path.read_text()) if path.exists() else 0


def _cli_build(root: Path, *args: str) -> tuple[int, str]:
    """``dagrun build`` as its own process (its http workers inherit PYTHONPATH), umask 0."""
    proc = subprocess.run(
        ["sh", "-c", 'umask 0 && exec "$@"', "sh", sys.executable, "-m", "dagrun",
         "--progress", "plain", "build", *args],
        cwd=root, env=worker_env(DAGRUN=f"{sys.executable} -m dagrun", WORKERS="1"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
    )
    return proc.returncode, proc.stdout.decode(errors="replace")


def _flow_manifest(sshd: SshServer, root: Path, n: int) -> str:
    return sshd.toml("lab", workspace=str(root)) + HOST_PATH + textwrap.dedent(f"""
        [executors.pool]
        type = "http"
        provisioner = "sh {ROOT}/examples/http/local.sh"

        [tasks.far]
        call = "steps:far"
        args = [{n}]
        executor = "lab"

        [tasks.web]
        call = "steps:web"
        args = ["ab"]
        executor = "pool"

        [tasks.total]
        call = "steps:total"
        deps = ["far", "web"]
        outputs = ["total.txt"]
    """)


def test_results_from_ssh_and_http_flow_into_a_local_task_and_are_cached(root, sshd):
    (root / "dagrun.toml").write_text(_flow_manifest(sshd, root, 3))
    code, out = _cli_build(root)
    assert code == 0, out
    assert (root / "total.txt").read_text() == "3:abab\n"
    assert "far ran as far" in out  # its output shown as a local task's
    assert not (root / ".dagrun" / "runs" / "web").exists()  # silent success: no run folder
    code, out = _cli_build(root)
    assert code == 0, out
    assert [_count(root, t) for t in ("far", "web", "total")] == [1, 1, 1]  # up to date
    (root / "dagrun.toml").write_text(_flow_manifest(sshd, root, 4))
    code, out = _cli_build(root)
    assert code == 0, out
    assert [_count(root, t) for t in ("far", "web", "total")] == [2, 1, 2]
    assert (root / "total.txt").read_text() == "4:abab\n"


def test_a_raising_function_on_ssh_fails_with_its_traceback(root, sshd, project):
    project.manifest(sshd.toml("lab", workspace=str(root)) + HOST_PATH + """
        [tasks.bad]
        call = "steps:boom"
        args = [7]
        executor = "lab"
        [tasks.lambda]
        call = "steps:unpicklable"
        executor = "lab"
    """)
    r = project.run("build", "-k")
    assert r.code == 1
    assert "FAILED: [the result (function) cannot be pickled: " in r.out + r.err
    assert "FAILED: [ValueError: bad row 7] bad" in r.out + r.err  # as on the local pool
    stderr = (root / ".dagrun" / "runs" / "bad" / "stderr.txt").read_text()
    assert stderr.startswith("Traceback") and "ValueError: bad row 7" in stderr
    assert 'steps.py", line' in stderr and "remote_call" not in stderr  # the user's frames only
    assert not (root / ".dagrun" / "runs" / "bad" / "call.in").exists()


def test_a_result_damaged_on_the_way_is_refused(root, sshd, project):
    damaging = root / "damaging-python"
    damaging.write_text('#!/bin/sh\npython3 "$@" || exit $?\necho garbage >> "$3/$5"\n')
    damaging.chmod(0o755)
    project.manifest(sshd.toml("lab", workspace=str(root), python=str(damaging)) + HOST_PATH + """
        [tasks.far]
        call = "steps:far"
        args = [1]
        executor = "lab"
    """)
    r = project.run("build")
    assert r.code == 1, r.out + r.err
    assert "damaged (its digest does not match): not stored" in r.out + r.err
    results = root / ".dagrun" / "results"
    assert not results.exists() or not any(results.iterdir())
    r = project.run("build")
    assert r.code == 1  # never recorded: it runs again
    assert _count(root, "far") == 2


def test_stage_rsync_carries_the_request_and_the_result(root, sshd, project, tmp_path_factory):
    import shutil
    import tempfile

    ws = Path(tempfile.mkdtemp(prefix="dagrun-ws-"))
    ws.chmod(0o777)
    try:
        project.manifest(sshd.toml("lab", workspace=str(ws / "w"), stage="rsync") + HOST_PATH + """
            [tasks.far]
            call = "steps:far"
            args = [5]
            executor = "lab"
            [tasks.twice]
            call = "steps:twice"
            deps = ["far"]
            executor = "lab"
        """)
        r = project.run("build")
        assert r.code == 0, r.out + r.err
        assert (ws / "w" / "far.count").exists() and not (root / "far.count").exists()
        import dagrun

        result = dagrun.load(root / "dagrun.toml").build()
        assert result.values["twice"] == 10 and result.succeeded == ()
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def test_a_host_without_dagrun_is_a_clear_error(root, sshd, project):
    project.manifest(sshd.toml("lab", workspace=str(root)) + """
        [tasks.far]
        call = "steps:far"
        args = [1]
        executor = "lab"
    """)
    r = project.run("build")
    assert r.code == 1
    assert "cannot import dagrun (ModuleNotFoundError: No module named 'dagrun')" in r.out + r.err
    assert 'set python = "..."' in r.out + r.err


def test_a_raising_function_on_an_http_worker_fails_with_its_traceback(root, sshd):
    (root / "dagrun.toml").write_text(textwrap.dedent(f"""
        [executors.pool]
        type = "http"
        stage = "http"
        provisioner = "sh {ROOT}/examples/http/local.sh"
        [tasks.web]
        call = "steps:web"
        args = ["ab"]
        executor = "pool"
        [tasks.bad]
        call = "steps:boom"
        args = [8]
        executor = "pool"
        deps = ["web"]
    """))
    code, out = _cli_build(root, "-k")
    assert code == 1, out
    assert "ValueError: bad row 8" in out and "Traceback" in out
    stderr = (root / ".dagrun" / "runs" / "bad" / "stderr.txt").read_text()
    assert 'steps.py", line' in stderr
    assert not (root / "web.count").exists()  # stage = "http": it ran in the worker's workspace


def test_a_frame_is_refused_when_damaged_cut_short_or_replaced():
    from dagrun.executors.remote_call import frame, unframe

    blob = frame(b"\x80\x05result")
    assert unframe(blob) == b"\x80\x05result"
    assert unframe(blob + b"x") is None
    assert unframe(blob[:-1]) is None
    assert unframe(b"\x80\x05result") is None
    assert unframe(blob.replace(b"dagrun-call 1", b"dagrun-call 2")) is None
