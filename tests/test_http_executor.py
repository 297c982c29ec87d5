"""The HTTP pull executor through its protocol, with a real server and real worker processes."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from http_workers import (
    collect,
    http_executor_with_workers,
    job,
    make_executor,
    request,
    start_worker,
    status,
    stop,
    wait_for,
)

from dagrun.executors import http_routes

pytestmark = pytest.mark.slow


def test_jobs_run_on_workers_with_output_env_and_exit_status(tmp_path):
    ex = http_executor_with_workers(tmp_path)
    root = Path(ex.context.root)
    (root / "sub").mkdir()
    try:
        ex.submit(job(root, 1, 'echo "x=$X in $(basename $PWD)"; echo oops >&2', env={"X": "7"}))
        ex.submit(job(root, 2, "exit 3"))
        ex.submit(Job_in_sub(root))
        got = {o.job_id: o for o in collect(ex, 3)}
    finally:
        ex.close()
    assert got[1].ok and got[1].stdout == "x=7 in root\n" and got[1].stderr == "oops\n"
    assert got[1].maxrss_kb > 0 and got[1].duration > 0
    assert got[2].exit_code == 3 and not got[2].ok
    assert got[3].stdout.strip() == "sub"
    assert (root / ".dagrun/runs/t1/stdout.txt").read_text() == "x=7 in root\n"
    assert "# worker: " in (root / ".dagrun/runs/t1/command.txt").read_text()


def Job_in_sub(root: Path):  # noqa: N802 - reads like the Job it makes
    from dagrun.executors import Job

    return Job(3, "t3", "basename $PWD", str(root), "sub", {}, str(root / ".dagrun/runs/t3"))


def test_no_provisioner_prints_the_exact_worker_command(tmp_path):
    ex, said = make_executor(tmp_path)
    try:
        assert ex.url in said[0]
        command = said[0].splitlines()[-1].strip()
        assert command == f"dagrun worker {ex.url} --token-file {ex.token_file}"
        assert oct(os.stat(ex.token_file).st_mode & 0o777) == "0o600"
        ex.submit(job(ex.context.root, 1, "echo hi"))
        argv = command.split()[2:]
        proc = start_worker(argv[0], argv[2])
        assert collect(ex, 1)[0].stdout == "hi\n"
    finally:
        ex.close()
    assert proc.wait(timeout=20) == 0  # told that the build is over


def test_every_endpoint_needs_the_token(tmp_path):
    ex, _ = make_executor(tmp_path)
    try:
        for method, path in [("POST", "/lease"), ("POST", "/heartbeat"), ("POST", "/report"),
                             ("GET", "/status"), ("GET", "/files?lease=x&path=a"),
                             ("PUT", "/files?lease=x&path=a"), ("GET", "/nowhere")]:
            body = b"{}" if method != "GET" else None
            for token in (None, "wrong", ex.token[:-1], ex.token + "x", ""):
                code, _ = request(ex.url + path, method, body, token=token)
                assert code == 401, (method, path, token)
        assert request(ex.url + "/status", token=ex.token)[0] == 200
    finally:
        ex.close()


def _raw(ex, data: bytes) -> bytes:
    """Send raw bytes, return what the server answered (until it closes or 2 s pass)."""
    host, port = ex.url.split("//")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    return out


def test_garbage_oversized_and_wrong_bodies_are_refused_and_the_build_goes_on(tmp_path):
    ex, _ = make_executor(tmp_path)
    auth = {"Authorization": f"Bearer {ex.token}"}
    try:
        ex.submit(job(ex.context.root, 1, "echo still here"))
        bad = [
            ("/lease", b"not json"), ("/lease", b"[1, 2]"), ("/lease", b"{}"),
            ("/lease", b'{"worker": "w", "slots": "2", "wait": 0}'),
            ("/lease", b'{"worker": "w", "slots": true, "wait": 0}'),
            ("/lease", b'{"worker": "", "slots": 1, "wait": 0}'),
            ("/lease", b'{"worker": "w", "slots": -1, "wait": 0}'),
            ("/heartbeat", b'{"worker": "w", "leases": [1], "wait": 0}'),
            ("/report", b'{"worker": "w", "lease": "x"}'),
            ("/report", b'{"worker": "w", "lease": "x", "exit_code": 0.5, "duration": 1, '
                        b'"maxrss_kb": 1, "stdout": "", "stderr": "", "timed_out": false, '
                        b'"error": null}'),
            ("/lease", b"\xff\xfe\x00"),
        ]
        for path, body in bad:
            code, reply = request(ex.url + path, "POST", body, headers=auth)
            assert code == 400 and "error" in reply, (path, body, code)
        code, _ = request(ex.url + "/lease", "POST", b"{" + b" " * (1 << 20) + b"}", headers=auth)
        assert code == 413
        assert request(ex.url + "/lease", "GET", headers=auth)[0] == 405
        assert request(ex.url + "/nothing", "POST", b"{}", headers=auth)[0] == 404
        assert b" 431 " in _raw(ex, b"GET /status HTTP/1.1\r\nX: " + b"a" * 40000 + b"\r\n\r\n")
        assert b" 400 " in _raw(ex, b"HELLO\r\n\r\n")
        bearer = b"Authorization: Bearer " + ex.token.encode() + b"\r\n"
        negative = b"GET /status HTTP/1.1\r\n" + bearer + b"Content-Length: -5\r\n\r\n"
        assert b" 400 " in _raw(ex, negative)
        assert b" 501 " in _raw(ex, b"POST /lease HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                                    + bearer + b"\r\n")
        _raw(ex, b"POST /lease HTTP/1.1\r\n" + bearer + b"Content-Length: 100\r\n\r\n{")  # hangs up
        a_report_for_nothing = (
            b'{"worker": "w", "lease": "nope", "exit_code": 0, "duration": 1, "maxrss_kb": 1,'
            b' "stdout": "", "stderr": "", "timed_out": false, "error": null}'
        )
        assert request(ex.url + "/report", "POST", a_report_for_nothing, headers=auth)[0] == 409
        start_worker(ex)
        (outcome,) = collect(ex, 1)
        assert outcome.stdout == "still here\n"
        assert status(ex)["refused"] == 1
    finally:
        ex.close()


def test_status_counts_at_each_stage(tmp_path):
    ex, _ = make_executor(tmp_path, lease_timeout=10.0)  # job 1 is held: a fence far off
    root = Path(ex.context.root)
    try:
        ex.submit(job(root, 1, "while [ ! -e go ]; do sleep 0.05; done"))
        ex.submit(job(root, 2, "exit 1"))
        ex.submit(job(root, 3, "true"))
        s = status(ex)
        assert (s["ready"], s["leased"], s["succeeded"], s["failed"], s["workers"]) == (
            3, 0, 0, 0, [])
        proc = start_worker(ex, jobs=1)
        wait_for(lambda: status(ex)["leased"] == 1, what="one lease")
        s = status(ex)
        assert (s["ready"], s["leased"], s["succeeded"], s["failed"]) == (2, 1, 0, 0)
        (w,) = s["workers"]
        assert [r["task"] for r in w["running"]] == ["t1"] and w["pid"] == proc.pid
        assert w["alive"] and abs(w["last_heartbeat"] - time.time()) < 10
        (root / "go").touch()
        got = collect(ex, 3)
        s = status(ex)
        assert (s["ready"], s["leased"], s["succeeded"], s["failed"]) == (0, 0, 2, 1)
        assert sorted(o.job_id for o in got if o.ok) == [1, 3]
        assert s["workers"][0]["running"] == []
    finally:
        ex.close()


def test_status_is_encoded_again_only_when_something_changed(tmp_path, monkeypatch):
    monkeypatch.setattr(http_routes, "STATUS_EVERY", 3600.0)  # not its age: only a change
    ex, _ = make_executor(tmp_path)
    root = Path(ex.context.root)
    built: list[int] = []
    real = ex.broker.status

    def counting() -> dict:
        built.append(1)
        return real()

    ex.broker.status = counting  # type: ignore[method-assign]
    try:
        first = status(ex)
        assert status(ex) == first and len(built) == 1  # nothing changed: the same bytes
        ex.submit(job(root, 1, "true"))
        assert status(ex)["ready"] == 1 and len(built) == 2
    finally:
        ex.close()


def test_cancel_one_job_and_cancel_all_kill_the_tasks_on_the_worker(tmp_path):
    ex, _ = make_executor(tmp_path)
    root = Path(ex.context.root)
    try:
        start_worker(ex, jobs=3)
        for i in (1, 2, 3):
            ex.submit(job(root, i, f"echo $$ > pid{i}; exec sleep 60"))
        ex.submit(job(root, 4, "exec sleep 60"))  # waits (or takes job 1's slot): cancelled
        wait_for(lambda: all(_written(root / f"pid{i}") for i in (1, 2, 3)), what="3 tasks")
        ex.cancel(1)
        (one,) = collect(ex, 1, timeout=15)
        assert one.job_id == 1 and one.exit_code is not None and one.exit_code < 0
        rest = ex.cancel_all()
        assert sorted(o.job_id for o in rest) == [2, 3, 4]
        assert all(not o.ok for o in rest)
        for i in (1, 2, 3):
            pid = int((root / f"pid{i}").read_text())
            wait_for(lambda pid=pid: not _alive(pid), timeout=10, what=f"task {i} killed")
    finally:
        ex.close()


def _written(path: Path) -> bool:
    return path.exists() and path.read_text().endswith("\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_a_long_poll_whose_worker_hung_up_is_given_no_job(tmp_path):
    """A worker killed while it waits for work: the job goes to a live worker at once, not
    to the dead connection (where it would wait out the 30 s lease timeout)."""
    ex, _ = make_executor(tmp_path, lease_timeout=30.0)
    root = Path(ex.context.root)
    host, port = ex.url.split("//")[1].rsplit(":", 1)
    body = b'{"worker": "gone", "slots": 1, "wait": 20}'
    head = (b"POST /lease HTTP/1.1\r\nAuthorization: Bearer " + ex.token.encode()
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(head + body)
            wait_for(lambda: status(ex)["workers"], what="the poll to be parked")
        server = ex.server
        assert server is not None
        wait_for(lambda: all(gone() for _, _, gone in list(server._lease_waiters)),
                 what="the server to read the hang-up")
        ex.submit(job(root, 1, "echo here"))
        start_worker(ex)
        (done,) = collect(ex, 1, timeout=20)
        assert done.ok and done.stdout == "here\n"
    finally:
        ex.close()


def test_a_killed_worker_loses_its_job_to_another_worker(tmp_path):
    # 4 s: a loaded machine delays heartbeats (the fence kills at 0.8 of it, and a renewal
    # lands up to a long poll's 0.5 s late), and the lost one is found 4 s after the kill
    ex, _ = make_executor(tmp_path, lease_timeout=4.0)
    root = Path(ex.context.root)
    try:
        first = start_worker(ex)
        j = job(root, 1, "echo $$ >> pids; sleep 1; echo ok")
        ex.submit(j)
        wait_for(lambda: _written(root / "pids"), what="the task to start")
        stop(first)  # kill -9: its guard kills the task (tests/test_one_attempt.py)
        (lost,) = collect(ex, 1, timeout=15)
        assert lost.lost
        ex.submit(j)
        start_worker(ex)
        (done,) = collect(ex, 1)
        assert done.ok and len((root / "pids").read_text().split()) == 2
    finally:
        ex.close()


def test_a_worker_started_after_the_build_ended_exits_by_itself(tmp_path):
    ex, _ = make_executor(tmp_path)
    url, token = ex.url, ex.token
    ex.close()
    token_file = tmp_path / "token"
    token_file.write_text(token)
    started = time.monotonic()
    proc = start_worker(url, str(token_file), grace=60.0, log=tmp_path / "late.log")
    assert proc.wait(timeout=30) == 0  # a batch job started late: not a failure
    assert time.monotonic() - started < 15  # at once, not after --grace
    assert f"nothing listens at {url}: its build is over" in (tmp_path / "late.log").read_text()


def test_a_wrong_token_stops_a_worker_at_once(tmp_path):
    ex, _ = make_executor(tmp_path)
    try:
        token_file = tmp_path / "token"
        token_file.write_text("not-the-token")
        proc = start_worker(ex.url, str(token_file), log=tmp_path / "w.log")
        assert proc.wait(timeout=30) == 2
        assert "refused the token" in (tmp_path / "w.log").read_text()
    finally:
        ex.close()


def test_staged_files_reach_a_worker_in_another_folder(tmp_path):
    ex, _ = make_executor(tmp_path, stage="http")
    root = Path(ex.context.root)
    (root / "data").mkdir()
    (root / "data" / "in.txt").write_text("payload\n")
    elsewhere = tmp_path / "elsewhere"
    try:
        start_worker(ex, directory=elsewhere, jobs=2)
        ex.submit(job(root, 1, "mkdir -p out && tr a-z A-Z < data/in.txt > out/res.txt; pwd",
                      inputs=("data/in.txt",), outputs=("out/res.txt",)))
        ex.submit(job(root, 2, "true", outputs=("never.txt",)))
        ex.submit(job(root, 3, "true", inputs=("../secret",)))
        got = {o.job_id: o for o in collect(ex, 3)}
        auth = {"Authorization": f"Bearer {ex.token}"}
        for bad in ("../x", "/etc/passwd", "data/../../x", "data/in.txt"):
            code, _ = request(f"{ex.url}/files?lease=none&path={bad}", headers=auth)
            assert code == 404
    finally:
        ex.close()
    assert got[1].ok, got[1]
    assert (root / "out" / "res.txt").read_text() == "PAYLOAD\n"
    assert got[1].stdout.startswith(str(elsewhere))  # it ran in the worker's own folder
    assert got[2].exit_code is None and "never.txt was not produced" in (got[2].error or "")
    assert "outside the project folder" in (got[3].error or "")
    assert not (root / "never.txt").exists()


def test_staged_files_keep_their_executable_bit_both_ways(tmp_path):
    ex, _ = make_executor(tmp_path, stage="http")
    root = Path(ex.context.root)
    (root / "tool.sh").write_text("#!/bin/sh\necho tool ran\n")
    (root / "tool.sh").chmod(0o755)
    (root / "plain.txt").write_text("x\n")
    (root / "plain.txt").chmod(0o640)
    try:
        start_worker(ex, directory=tmp_path / "elsewhere")
        ex.submit(job(root, 1, "./tool.sh; mkdir -p out; printf '#!/bin/sh\\n' > out/gen.sh; "
                      "chmod 750 out/gen.sh; cp plain.txt out/plain.txt; chmod 604 out/plain.txt",
                      inputs=("tool.sh", "plain.txt"), outputs=("out/gen.sh", "out/plain.txt")))
        (done,) = collect(ex, 1)
    finally:
        ex.close()
    assert done.ok and done.stdout == "tool ran\n", done
    assert (root / "out" / "gen.sh").stat().st_mode & 0o777 == 0o750
    assert (root / "out" / "plain.txt").stat().st_mode & 0o777 == 0o604


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return str(cert), str(key)


def test_tls_with_a_self_signed_certificate_and_cafile(tmp_path):
    cert, key = _self_signed(tmp_path)
    ex, said = make_executor(tmp_path, tls_cert=cert, tls_key=key)
    try:
        assert ex.url.startswith("https://127.0.0.1:")
        assert f"--cafile {cert}" in said[0]
        start_worker(ex, cafile=cert)
        ex.submit(job(ex.context.root, 1, "echo over tls"))
        assert collect(ex, 1)[0].stdout == "over tls\n"
        with pytest.raises(ssl.SSLCertVerificationError):  # no --cafile: not trusted
            conn = http.client.HTTPSConnection("127.0.0.1", int(ex.url.rsplit(":", 1)[1]),
                                               context=ssl.create_default_context(), timeout=5)
            conn.request("GET", "/status")
        conn.close()
        code, _ = request(ex.url + "/status", token=ex.token,
                          context=ssl.create_default_context(cafile=cert))
        assert code == 200
    finally:
        ex.close()


def test_big_output_is_cut_and_stays_whole_on_the_worker(tmp_path):
    ex, _ = make_executor(tmp_path)
    try:
        start_worker(ex, directory=tmp_path / "w")
        ex.submit(job(ex.context.root, 1, "head -c 400000 /dev/zero | tr '\\0' x"))
        (o,) = collect(ex, 1)
    finally:
        ex.close()
    assert o.ok and o.stdout.startswith("x" * 1000) and len(o.stdout) < 300_000
    path = o.stdout.rsplit("all of it is in ", 1)[1].strip().rstrip("]")
    assert path.startswith(str(tmp_path / "w")) and os.path.getsize(path) == 400_000
    command = (Path(ex.context.root) / ".dagrun/runs/t1/command.txt").read_text()
    assert f"# worker's run folder: {os.path.dirname(path)}" in command


@pytest.mark.parametrize("module", ["dagrun.worker"])
def test_the_worker_stays_light(module):
    code = f"import sys, {module}; print(sorted({{'asyncio', 'aiohttp'}} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_job_takes_as_many_worker_slots_as_it_has_threads(tmp_path):
    ex, _ = make_executor(tmp_path, lease_timeout=10.0)  # job 1 is held: a fence far off
    root = Path(ex.context.root)
    try:
        start_worker(ex, jobs=2)
        ex.submit(job(root, 1, "while [ ! -e go ]; do sleep 0.05; done", threads=2))
        ex.submit(job(root, 2, "true"))
        ex.submit(job(root, 3, "true", threads=8))  # more than any worker: takes all of one
        wait_for(lambda: status(ex)["leased"] == 1, what="the 2-thread job")
        time.sleep(0.5)
        s = status(ex)
        assert (s["leased"], s["ready"], s["workers"][0]["slots"]) == (1, 2, 2)
        (root / "go").touch()
        assert sorted(o.job_id for o in collect(ex, 3) if o.ok) == [1, 2, 3]
    finally:
        ex.close()


def test_serving_beyond_loopback_without_tls_is_said(tmp_path):
    ex, said = make_executor(tmp_path, bind="0.0.0.0:0")
    try:
        assert "clear text" in said[0] and ex.url.startswith(f"http://{socket.gethostname()}:")
        assert request(f"http://127.0.0.1:{ex.url.rsplit(':', 1)[1]}/status", token=ex.token)[0] \
            == 200
    finally:
        ex.close()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["http://127.0.0.1:9"], "no token: give --token-file FILE or set DAGRUN_TOKEN"),
        (["ftp://x", "--token-file", "TOKEN"], "not an http(s) URL: ftp://x"),
        (["http://127.0.0.1:9", "--token-file", "missing"], "No such file"),
    ],
)
def test_worker_usage_errors_exit_2_without_a_traceback(tmp_path, argv, message):
    (tmp_path / "TOKEN").write_text("t\n")
    env = {k: v for k, v in os.environ.items() if k != "DAGRUN_TOKEN"}
    out = subprocess.run([sys.executable, "-m", "dagrun", "worker", *argv], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
