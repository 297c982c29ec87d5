"""The build server (dagrun/server.py, client.py, resident.py): real processes, real sockets.

Each test starts a server for its own project with ``dagrun server start`` and builds with
``python -m dagrun`` under ``DAGRUN_SERVER=1`` (the suite runs without a terminal, often with
CI set: builds are in-process otherwise).  What a build through the server prints and
returns must be what the same build prints and returns in-process, in a twin project.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from realproc import wait_for

from dagrun import argv, client, remote_run, resident

pytestmark = pytest.mark.slow

MANIFEST = """
[tasks.a]
cmd = "cat in.txt > out/a.txt"
inputs = ["in.txt"]
outputs = ["out/a.txt"]

[tasks.b]
cmd = "cat out/a.txt out/a.txt > out/b.txt"
inputs = ["out/a.txt"]
outputs = ["out/b.txt"]

[tasks.c]
cmd = "ls src > out/c.txt"
inputs = ["src/*.txt"]
outputs = ["out/c.txt"]
"""


def _env(server: str | None = "1", **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "DAGRUN_SERVER")}
    if server is not None:
        env["DAGRUN_SERVER"] = server
    env.update(more)
    return env


def dagrun(root: Path, *args: str, server: str | None = "1", timeout: float = 60,
           **env: str) -> tuple[int, str, str]:
    p = subprocess.run(
        [sys.executable, "-m", "dagrun", *args], cwd=root, capture_output=True, text=True,
        env=_env(server, **env), stdin=subprocess.DEVNULL, timeout=timeout,
    )
    return p.returncode, p.stdout, p.stderr


def _background_build(root: Path, **popen: Any) -> subprocess.Popen[str]:
    """``dagrun build`` through the server as a process of its own, its output piped."""
    return subprocess.Popen([sys.executable, "-m", "dagrun", "build"], cwd=root, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _plain(text: str) -> str:
    """Output with its timings made equal."""
    return re.sub(r"in \d+\.\d+s", "in Xs", text)


def _project(root: Path, manifest: str = MANIFEST) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dagrun.toml").write_text(textwrap.dedent(manifest))
    (root / "in.txt").write_text("one\n")
    (root / "src").mkdir(exist_ok=True)
    (root / "src" / "x.txt").write_text("x\n")
    return root


class Running:
    """A server started for a project; killed at teardown whatever the test did to it."""

    def __init__(self, root: Path, **env: str) -> None:
        self.root = root
        code, out, err = dagrun(root, "server", "start", **env)
        assert code == 0, (out, err)
        self.pid = int(re.search(r"pid (\d+)", out).group(1))  # type: ignore[union-attr]

    def status(self) -> dict[str, object] | None:
        return client.ask(str(self.root / ".dagrun"), client.STATUS)

    def builds(self) -> int:
        found = self.status()
        assert found is not None
        return int(found["builds"])  # type: ignore[call-overload]

    def alive(self) -> bool:
        return remote_run.alive(self.pid)

    def wait_gone(self, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not self.alive():
                return True
            time.sleep(0.05)
        return False

    def log(self) -> str:
        path = self.root / ".dagrun" / "server.log"
        return path.read_text() if path.exists() else ""

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGCONT)
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def servers() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for s in started:
        s.kill()


def start(servers: list[Running], root: Path, **env: str) -> Running:
    s = Running(root, **env)
    servers.append(s)
    return s


# ------------------------------------------------------------------ the same answers


def test_builds_through_the_server_print_and_return_what_in_process_builds_do(
    tmp_path: Path, servers: list[Running]
) -> None:
    served, alone = _project(tmp_path / "served"), _project(tmp_path / "alone")
    s = start(servers, served)

    def both(*args: str) -> None:
        args = (*args, "-j1")  # one order of tasks
        got = dagrun(served, *args)
        want = dagrun(alone, *args, server="0")
        assert (got[0], _plain(got[1]), _plain(got[2])) == (
            want[0], _plain(want[1]), _plain(want[2])), args

    steps = [
        lambda: both("build"),  # everything runs
        lambda: both("build"),  # no-op
        lambda: both("build", "-n"),
        lambda: both("build", "b"),
        lambda: [p.joinpath("in.txt").write_text("two\n") for p in (served, alone)],
        lambda: both("build", "--explain"),  # one input edited
        lambda: both("build"),
        lambda: [p.joinpath("src", "y.txt").write_text("y\n") for p in (served, alone)],
        lambda: both("build"),  # a new file a glob matches
        lambda: both("build", "nosuch"),  # a usage error: exit 2, did you mean
        lambda: [p.joinpath("dagrun.toml").write_text(textwrap.dedent(MANIFEST).replace(
            "cat in.txt >", "cat in.txt missing.txt >")) for p in (served, alone)],
        lambda: both("build"),  # a failure: exit 1, FAILED, its output
        lambda: both("build"),
        lambda: [p.joinpath("dagrun.toml").write_text(textwrap.dedent(MANIFEST))
                 for p in (served, alone)],
        lambda: both("build", "-q"),
        lambda: both("build", "-v", "-B", "a"),
    ]
    for step in steps:
        step()
    assert s.builds() == 12  # every build went through the server
    for name in ("a.txt", "b.txt", "c.txt"):
        assert (served / "out" / name).read_text() == (alone / "out" / name).read_text()
    assert (served / "out" / "c.txt").read_text() == "x.txt\ny.txt\n"


def test_edits_seen_by_the_server_rebuild_exactly_what_they_reach(
    tmp_path: Path, servers: list[Running]
) -> None:
    root = _project(tmp_path / "p")
    s = start(servers, root)
    assert dagrun(root, "build")[0] == 0
    assert "no work to do (3 up to date)" in dagrun(root, "build")[1]
    for text in ("two\n", "three\n", "one\n"):  # one -> two -> one reruns
        (root / "in.txt").write_text(text)
        code, out, _ = dagrun(root, "build")
        assert code == 0 and "2 succeeded, 1 up to date" in out, out
        assert (root / "out" / "b.txt").read_text() == text * 2
    (root / "src" / "x.txt").unlink()
    code, out, _ = dagrun(root, "build")
    assert code == 0 and (root / "out" / "c.txt").read_text() == ""
    assert "checking everything" in s.log()
    assert s.builds() == 6


def test_the_socket_is_the_owners_only_and_status_tells_the_server_state(
    tmp_path: Path, servers: list[Running]
) -> None:
    root = _project(tmp_path / "p")
    start(servers, root)
    mode = (root / ".dagrun" / "server.sock").stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    dagrun(root, "build")
    code, out, _ = dagrun(root, "server", "status")
    assert code == 0
    for field in ("pid:", "uptime:", "builds:  1 served", "watches:", "memory:"):
        assert field in out, out
    assert re.search(r"watches: [1-9]\d* folder", out)
    code, out, _ = dagrun(root, "server", "stop")
    assert code == 0 and "stopped" in out
    assert not (root / ".dagrun" / "server.sock").exists()
    assert dagrun(root, "server", "status")[0] == 1


# ------------------------------------------------------------------ never wrong


def test_a_lost_event_queue_makes_the_next_build_check_everything(
    tmp_path: Path, servers: list[Running]
) -> None:
    """Stop the server, flood its inotify queue past max_queued_events, then edit an input:
    the edit's event is lost with the others, and only the overflow tells the server."""
    root = _project(tmp_path / "p")
    s = start(servers, root)
    assert dagrun(root, "build")[0] == 0
    assert dagrun(root, "build")[0] == 0  # the watches now cover out/ as well
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    os.kill(s.pid, signal.SIGSTOP)
    try:
        _wait_stopped(s.pid)  # a thread still running could drain the queue as it fills
        flood = root / "flood"
        for i in range(limit + 100):  # create + close_write: two events each, twice the queue
            (root / f"junk{i}").write_bytes(b"")
        (root / "in.txt").write_text("edited\n")
        del flood
    finally:
        os.kill(s.pid, signal.SIGCONT)
    code, out, _ = dagrun(root, "build")
    assert code == 0 and "2 succeeded" in out, (out, s.log())
    assert (root / "out" / "b.txt").read_text() == "edited\n" * 2
    assert "queue overflowed" in s.log()


def test_the_manifest_changed_under_the_server(tmp_path: Path, servers: list[Running]) -> None:
    root = _project(tmp_path / "p")
    start(servers, root)
    assert dagrun(root, "build")[0] == 0
    (root / "dagrun.toml").write_text(textwrap.dedent(MANIFEST).replace(
        "cat in.txt > out/a.txt", "tr a-z A-Z < in.txt > out/a.txt"))
    code, out, _ = dagrun(root, "build")
    assert code == 0 and (root / "out" / "b.txt").read_text() == "ONE\nONE\n"


def test_key_env_values_of_each_client_enter_the_keys(
    tmp_path: Path, servers: list[Running]
) -> None:
    root = _project(tmp_path / "p", '[dagrun]\nkey_env = ["FLAVOR"]\n' + MANIFEST.replace(
        "cat in.txt > out/a.txt", "echo $FLAVOR > out/a.txt"))
    start(servers, root)
    for flavor in ("x", "y", "y", "x"):
        code, out, _ = dagrun(root, "build", FLAVOR=flavor)
        assert code == 0 and (root / "out" / "a.txt").read_text() == f"{flavor}\n"
    assert "no work to do" in dagrun(root, "build", FLAVOR="x")[1]


def test_builds_and_cleans_beside_the_server_are_noticed(
    tmp_path: Path, servers: list[Running]
) -> None:
    root = _project(tmp_path / "p")
    s = start(servers, root)
    assert dagrun(root, "build")[0] == 0
    assert dagrun(root, "build")[0] == 0
    assert dagrun(root, "clean", server="0")[0] == 0  # in-process, beside it
    code, out, _ = dagrun(root, "build")
    assert code == 0 and "3 succeeded" in out, out
    (root / "in.txt").write_text("two\n")
    assert dagrun(root, "build", "--no-server")[0] == 0
    (root / "in.txt").write_text("one\n")
    code, out, _ = dagrun(root, "build")
    assert code == 0 and (root / "out" / "b.txt").read_text() == "one\none\n"
    assert "another dagrun built or cleaned" in s.log()


def test_an_output_edited_outside_the_build(tmp_path: Path, servers: list[Running]) -> None:
    root = _project(tmp_path / "p")
    start(servers, root)
    assert dagrun(root, "build")[0] == 0
    assert dagrun(root, "build")[0] == 0
    (root / "out" / "b.txt").write_text("scribbled\n")
    code, out, _ = dagrun(root, "build")
    assert code == 0 and (root / "out" / "b.txt").read_text() == "one\none\n"


def test_a_file_system_without_events_is_never_trusted(
    tmp_path: Path, servers: list[Running]
) -> None:
    root = _project(tmp_path / "p")
    s = start(servers, root, DAGRUN_TEST_NO_EVENTS=str(root))
    for _ in range(3):
        assert dagrun(root, "build")[0] == 0
    assert "does not report every change" in s.log()
    assert resident.untrusted(["/"]) is None or "(" in str(resident.untrusted(["/"]))
    assert resident.fs_type(str(tmp_path)) not in resident.NO_EVENTS


# ------------------------------------------------------------------ never in the way


def test_a_killed_server_costs_one_warning_and_an_in_process_build(
    tmp_path: Path, servers: list[Running]
) -> None:
    root = _project(tmp_path / "p")
    s = start(servers, root)
    assert dagrun(root, "build")[0] == 0
    os.kill(s.pid, signal.SIGKILL)
    assert s.wait_gone(5)
    (root / "in.txt").write_text("two\n")  # edited while it is down
    t0 = time.monotonic()
    code, out, err = dagrun(root, "build")
    assert time.monotonic() - t0 < 5
    assert code == 0 and (root / "out" / "b.txt").read_text() == "two\ntwo\n"
    assert err.count("warning") == 1 and "not running" in err, err
    code, out, err = dagrun(root, "build")  # the stale socket is gone: no second warning
    assert code == 0 and err == "" and "no work to do" in out
    end = time.monotonic() + 15  # the build that found it dead started a new one
    while (found := s.status()) is None and time.monotonic() < end:
        time.sleep(0.05)
    assert found is not None
    s.pid = int(found["pid"])  # type: ignore[call-overload]


def test_a_server_still_loading_its_project_greets_a_build_which_waits_for_it(
    tmp_path: Path, servers: list[Running]
) -> None:
    """A new server loads the project (seconds at 100k tasks) after the build that started it
    exits; a build meanwhile got no hello within HELLO_TIMEOUT and warned that the server did
    not answer.  Here a real server's load is stretched to 2 s."""
    root = _project(tmp_path / "p")
    slow = (
        "import sys, time\n"
        "from dagrun import resident, server\n"
        "load = resident.Resident.__init__\n"
        "def slow(self, *a, **k):\n"
        "    time.sleep(2.0)\n"
        "    load(self, *a, **k)\n"
        "resident.Resident.__init__ = slow\n"
        "sys.exit(server.main([sys.argv[1]]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", slow, str(root / "dagrun.toml")], env=_env(),
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: (root / ".dagrun" / "server.sock").exists(), "the server listens")
        t0 = time.monotonic()
        code, out, err = dagrun(root, "build")
        assert (code, err) == (0, ""), err  # no "did not answer" warning: it waited
        assert "[3/3]" in out and time.monotonic() - t0 > 1.0  # built by the server, once loaded
        status = client.ask(str(root / ".dagrun"), client.STATUS)
        assert status is not None and status["pid"] == proc.pid and status["builds"] == 1
    finally:
        proc.kill()
        proc.wait()


def test_a_stopped_server_is_given_up_within_a_second(
    tmp_path: Path, servers: list[Running]
) -> None:
    root = _project(tmp_path / "p")
    s = start(servers, root)
    os.kill(s.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    with pytest.raises(client.Refused, match="did not answer within"):
        client.connect(str(root / ".dagrun"))
    assert time.monotonic() - t0 < client.HELLO_TIMEOUT + 0.8  # 0.7 s, and a loaded machine
    code, out, err = dagrun(root, "build")
    assert code == 0 and "3 succeeded" in out
    assert err.count("warning") == 1 and "did not answer" in err, err
    os.kill(s.pid, signal.SIGCONT)
    code, out, err = dagrun(root, "build")  # it answers again, and checks everything
    assert code == 0 and "no work to do" in out and err == ""
    assert s.builds() == 1


def test_a_server_stopped_in_the_middle_of_a_build_is_killed_and_the_build_runs_here(
    tmp_path: Path, servers: list[Running]
) -> None:
    """SIGSTOP the server while it builds: it holds the build lock, so a build that waited for
    it would wait forever.  The next build kills it and its tasks, and builds in-process."""
    root = _project(tmp_path / "p", """
        [tasks.slow]
        cmd = "echo $$ > slow.pid; sleep 30; echo done > slow.txt"
        outputs = ["slow.txt"]
    """)
    s = start(servers, root)
    first = _background_build(root, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: (root / "slow.pid").exists() and (root / "slow.pid").read_text(),
                 what="the server's build to start the task")
        task = int((root / "slow.pid").read_text())
        os.kill(s.pid, signal.SIGSTOP)
        _wait_stopped(s.pid)
        (root / "dagrun.toml").write_text(textwrap.dedent("""
            [tasks.slow]
            cmd = "echo done > slow.txt"
            outputs = ["slow.txt"]
        """))
        t0 = time.monotonic()
        code, out, err = dagrun(root, "build", timeout=30)
        took = time.monotonic() - t0
        # the first client, whose server went away before it printed anything, builds in-process
        # too: one of the two runs the task, the other finds no work
        assert code == 0 and ("1 succeeded" in out or "no work to do" in out), (out, err)
        assert err.count("warning") == 1 and "is stopped (SIGSTOP)" in err, err
        assert took < 10, took  # not the 30 s task, nor a wait for the lock
        assert (root / "slow.txt").read_text() == "done\n"
        assert s.wait_gone(5)
        assert not remote_run.alive(task)  # the stopped server's task died with it
        _, err1 = first.communicate(timeout=10)  # it had printed nothing: it builds here too
        assert first.returncode == 0 and "went away; building in-process" in err1, err1
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
        dagrun(root, "server", "stop")  # the one the build started for the next builds


def test_a_malformed_request_gets_a_clear_refusal_and_the_server_serves_on(
    tmp_path: Path, servers: list[Running], capfd: pytest.CaptureFixture[str]
) -> None:
    import io
    import marshal

    from dagrun import __version__

    root = _project(tmp_path / "p")
    s = start(servers, root)
    hello_fingerprint = (__version__, client.fingerprint())
    good = (client.PROTOCOL, hello_fingerprint, ["build"], str(root), dict(os.environ),
            (False, False), None, (("utf-8", "strict"), ("utf-8", "strict")))
    bad = [
        good[:7] + (((None, None), ("utf-8", "strict")),),  # a stream without an encoding
        good[:7] + ((("no-such-codec", "strict"), ("utf-8", "strict")),),
        good[:2] + (["build", 3],) + good[3:],
        good[:4] + ({"A": 1},) + good[5:],
        good[:6] + ((80, -1),) + good[7:],
        ("a", "tuple"),
    ]
    for request in bad:
        sock, _ = client.connect(str(root / ".dagrun"))
        try:
            client.send(sock, client.REQUEST, marshal.dumps(request))
            tag, body = client.receive(sock)
            assert tag == client.ERR and b"refused the request" in body, (request, body)
            assert client.receive(sock) == (client.EXIT, b"2")
        finally:
            sock.close()
    # a client whose sys.stdout is a StringIO (no encoding: a program calling dagrun's entry;
    # the client writes to descriptor 1 itself)
    capfd.readouterr()
    saved = sys.stdout
    sys.stdout = io.StringIO()
    try:
        old = os.getcwd()
        os.chdir(root)
        try:
            code = client.forward(["build"])
        finally:
            os.chdir(old)
    finally:
        sys.stdout = saved
    shown = capfd.readouterr().out
    assert code == 0 and "3 succeeded" in shown, shown
    assert s.builds() == 1 and "malformed request" in s.log()


def test_a_server_of_another_version_steps_aside(tmp_path: Path, servers: list[Running]) -> None:
    root = _project(tmp_path / "p")
    s = start(servers, root, DAGRUN_TEST_SERVER_VERSION="0.0.0-old")
    code, out, err = dagrun(root, "build")
    assert code == 0 and "3 succeeded" in out
    assert err.count("warning") == 1 and "runs dagrun 0.0.0-old" in err, err
    assert s.wait_gone(5)


def test_two_clients_at_once_queue_like_two_builds(
    tmp_path: Path, servers: list[Running]
) -> None:
    root = _project(tmp_path / "p", """
        [tasks.slow]
        cmd = "echo start >> trace.txt; sleep 2; echo end >> trace.txt; date +%s%N > out/s.txt"
        outputs = ["out/s.txt"]
        always = true
    """)
    start(servers, root)

    procs = [_background_build(root)]
    # the first one's task runs: the second waits
    wait_for(lambda: (root / "trace.txt").exists(), "the first build's task", timeout=15)
    procs.append(_background_build(root))
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert (root / "trace.txt").read_text() == "start\nend\nstart\nend\n"
    assert sum("waiting for it to finish" in err for _, err in results) == 1, results


def test_ctrl_c_in_the_client_interrupts_the_build_in_the_server(
    tmp_path: Path, servers: list[Running]
) -> None:
    root = _project(tmp_path / "p", """
        [tasks.sleepy]
        cmd = "echo $$ > pid.txt; sleep 30"
        outputs = ["never.txt"]
    """)
    s = start(servers, root)
    p = _background_build(root, start_new_session=True)
    wait_for(lambda: (root / "pid.txt").exists() and (root / "pid.txt").read_text().strip() != "",
             "the task's pid", timeout=15)
    task = int((root / "pid.txt").read_text())
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 130, (out, err)
    assert "interrupted" in err + out
    assert not psutil.pid_exists(task) or psutil.Process(task).status() == "zombie"
    assert s.alive()
    assert dagrun(root, "build", "-n")[0] == 0  # and it serves the next one


def test_the_server_exits_when_idle_or_when_its_folder_is_gone(
    tmp_path: Path, servers: list[Running]
) -> None:
    idle = _project(tmp_path / "idle", "[dagrun]\nserver_idle = 1\n" + MANIFEST)
    s = start(servers, idle)
    assert dagrun(idle, "build")[0] == 0
    assert s.wait_gone(10)
    assert "no request for 1 s" in s.log()
    gone = _project(tmp_path / "gone")
    s = start(servers, gone)
    shutil.rmtree(gone)
    assert s.wait_gone(10)


def test_server_false_keeps_builds_in_process(tmp_path: Path, servers: list[Running]) -> None:
    root = _project(tmp_path / "p", "[dagrun]\nserver = false\n" + MANIFEST)
    code, _, err = dagrun(root, "server", "start")
    assert code == 2 and "server = false" in err
    root2 = _project(tmp_path / "q")
    s = start(servers, root2)
    (root2 / "dagrun.toml").write_text("[dagrun]\nserver = false\n" + textwrap.dedent(MANIFEST))
    code, out, err = dagrun(root2, "build")
    assert code == 0 and "3 succeeded" in out and err == ""
    assert s.wait_gone(10)


def test_auto_start_needs_a_terminal_or_dagrun_server_1(
    tmp_path: Path, servers: list[Running]
) -> None:
    root = _project(tmp_path / "p")
    assert dagrun(root, "build", server=None)[0] == 0  # no terminal: in-process, no server
    assert not (root / ".dagrun" / "server.sock").exists()
    code, out, err = dagrun(root, "build", server="1")  # forced: starts one for next time
    assert code == 0 and "no work to do" in out and "started the build server" in err
    pid = int(re.search(r"pid (\d+)", err).group(1))  # type: ignore[union-attr]
    s = Running.__new__(Running)
    s.root, s.pid = root, pid
    servers.append(s)
    wait_for(lambda: s.status() is not None, "the server's status", timeout=15)
    code, out, err = dagrun(root, "build", server=None, CI="true")  # CI: in-process, server or not
    assert code == 0 and err == "" and s.builds() == 0
    assert dagrun(root, "build")[0] == 0 and s.builds() == 1


def test_the_clients_command_words_are_the_clis() -> None:
    assert "server" in argv.COMMANDS
    assert client._build_location(["-C", "x", "build", "-n"]) == ("x", None)
    assert client._build_location(["list"]) is None
    assert client._build_location(["--no-server"]) is None
    assert client._build_location(["-Cx"]) is None


def test_a_watch_limit_reached_is_a_full_check_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inotify_add_watch fails with ENOSPC past max_user_watches: the watcher is broken, and
    every build checks everything (PLATFORM.md section 10)."""
    import errno

    root = _project(tmp_path / "p")
    assert dagrun(root, "build", server="0")[0] == 0

    def full(folders: object, stop: object, **kw: object) -> Iterator[set[tuple[int, str]]]:
        raise OSError(errno.ENOSPC, "inotify_add_watch: No space left on device")
        yield set()

    monkeypatch.setattr(resident.inotify, "watch", full)
    doubts: list[str] = []
    r = resident.Resident(str(root / "dagrun.toml"), on_doubt=doubts.append)
    try:
        assert r.changes(("x",)) is None
        r.finished(True)
        assert r.changes(("x",)) is None
        assert any("No space left on device" in d or "watcher" in d for d in doubts), doubts
    finally:
        r.close()


def test_statfs_types_of_file_systems_without_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resident.fs_type(str(tmp_path)) is not None
    assert resident.untrusted([str(tmp_path)]) is None  # a local disk (this machine: ext4)
    monkeypatch.setattr(resident, "fs_type", lambda folder: 0x6969)
    assert resident.untrusted([str(tmp_path)]) == f"{tmp_path} (nfs)"
    monkeypatch.setattr(resident, "fs_type", lambda folder: 0x65735546)
    assert resident.untrusted([str(tmp_path)]) == f"{tmp_path} (fuse)"


def test_a_symlinked_source_is_never_trusted_to_events(
    tmp_path: Path, servers: list[Running]
) -> None:
    """An edit of the file a symlinked input points to happens in a folder nobody watches."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "real.txt").write_text("one\n")
    root = _project(tmp_path / "p")
    (root / "in.txt").unlink()
    (root / "in.txt").symlink_to(elsewhere / "real.txt")
    s = start(servers, root)
    assert dagrun(root, "build")[0] == 0
    assert dagrun(root, "build")[0] == 0
    (elsewhere / "real.txt").write_text("two\n")
    code, out, _ = dagrun(root, "build")
    assert code == 0 and (root / "out" / "b.txt").read_text() == "two\ntwo\n", out
    assert "a symbolic link" in s.log()


def _wait_stopped(pid: int) -> None:
    """Until every thread of ``pid`` is stopped (SIGSTOP is delivered to each in its turn)."""

    def state(task: str) -> bytes:
        with open(f"/proc/{pid}/task/{task}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3]

    wait_for(lambda: all(state(t) in (b"T", b"t") for t in os.listdir(f"/proc/{pid}/task")),
             f"every thread of {pid} stopped", timeout=10)
