"""The SSH executor end to end: real builds against a private sshd on 127.0.0.1 (tests/sshd.py)."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import cli_project
from realproc import DagrunProcs, dagrun_procs, wait_for
from sshd import SshServer, user_processes

pytestmark = pytest.mark.slow


def write(root: Path, text: str) -> None:
    (root / "dagrun.toml").write_text(textwrap.dedent(text))


@pytest.fixture
def root(shared_dir: Path, sshd: SshServer) -> Path:
    """The project's folder, a shared workspace: the test user works in it too."""
    return shared_dir


@pytest.fixture
def project(root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """``project.run("build", ...)`` runs the CLI in-process in ``root``."""
    return cli_project(root, monkeypatch, capsys)


@pytest.fixture
def dagrun_proc(root: Path):
    yield from dagrun_procs(root)


@pytest.fixture
def elsewhere() -> Iterator[Path]:
    """A workspace in another folder than the project's (for stage = "rsync")."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="dagrun-ws-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def remote_leftovers(*markers: str) -> list[tuple[int, str]]:
    """The test user's processes whose command line holds a marker (after a short grace)."""
    end = time.monotonic() + 5
    while True:
        left = [(pid, cmd) for pid, cmd in user_processes() if any(m in cmd for m in markers)]
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.05)


def test_tasks_run_remotely_in_the_workspace_with_the_declared_env(root, sshd, project):
    (root / "sub").mkdir(mode=0o777)
    (root / "sub").chmod(0o777)
    project.manifest(sshd.toml("lab", workspace=str(root)) + textwrap.dedent("""
        [env]
        GREETING = "hello there"
        [tasks.remote]
        executor = "lab"
        cwd = "sub"
        cmd = 'echo "$GREETING|$(id -un)|$(pwd)|$DAGRUN_TASK|${HOME_SECRET:-unset}" > out.txt'
        outputs = ["out.txt"]
    """))
    os.environ["HOME_SECRET"] = "local only"
    try:
        r = project.run("build")
    finally:
        del os.environ["HOME_SECRET"]
    assert r.code == 0, r.err
    text = (root / "sub" / "out.txt").read_text().strip()
    assert text == f"hello there|dagrunssh|{root / 'sub'}|remote|unset"
    runs = root / ".dagrun" / "runs" / "remote"
    assert not runs.exists()  # a silent success keeps no run folder (docs/state.md)


def test_env_inherit_passes_dagrun_s_environment(root, sshd, project):
    project.manifest(sshd.toml("lab", workspace=str(root), env_inherit=True) + textwrap.dedent("""
        [tasks.remote]
        executor = "lab"
        cmd = 'echo "${HOME_SECRET:-unset}" > out.txt'
    """))
    os.environ["HOME_SECRET"] = "passed on"
    try:
        assert project.run("build").code == 0
    finally:
        del os.environ["HOME_SECRET"]
    assert (root / "out.txt").read_text() == "passed on\n"


def test_a_failing_remote_command_fails_the_build_with_its_output(root, sshd, project):
    project.manifest(sshd.toml("lab", workspace=str(root)) + textwrap.dedent("""
        [tasks.bad]
        executor = "lab"
        cmd = "echo some output; echo it broke >&2; exit 4"
    """))
    r = project.run("build")
    assert r.code == 1
    assert "FAILED: [code=4] bad" in r.out + r.err
    assert "some output" in r.out + r.err and "it broke" in r.out + r.err
    stderr = (root / ".dagrun" / "runs" / "bad" / "stderr.txt").read_text()
    assert stderr == "it broke\n"  # dagrun's own markers are stripped
    assert "# host: dagrunssh@127.0.0.1" in (root / ".dagrun/runs/bad/command.txt").read_text()


def test_a_remote_timeout_leaves_no_process_on_the_host(root, sshd, project):
    project.manifest(sshd.toml("lab", workspace=str(root), grace_period=0.5) + textwrap.dedent("""
        [tasks.hang]
        executor = "lab"
        cmd = "sleep 61 & sleep 62"
        timeout = 1
    """))
    r = project.run("build")
    assert r.code == 1 and "FAILED: [timeout] hang" in r.out + r.err
    assert remote_leftovers("sleep 61", "sleep 62") == []


def test_ctrl_c_leaves_no_process_on_the_host(root, sshd, dagrun_proc: DagrunProcs):
    write(root, sshd.toml("lab", workspace=str(root)) + textwrap.dedent("""
        [tasks.one]
        executor = "lab"
        cmd = "echo go > started1; sleep 63 & sleep 64"
        [tasks.two]
        executor = "lab"
        cmd = "echo go > started2; sleep 65"
    """))
    p = dagrun_proc.start("build", "-j", "4", stderr=root / "dagrun.err")
    try:
        wait_for(lambda: (root / "started1").exists() and (root / "started2").exists(),
                 "both started")
    except AssertionError:
        raise AssertionError((root / "dagrun.err").read_text()) from None
    os.killpg(p.pid, signal.SIGINT)
    out, _ = p.communicate(timeout=15)
    err = (root / "dagrun.err").read_text()
    assert p.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert remote_leftovers("sleep 63", "sleep 64", "sleep 65") == []
    assert not (root / ".dagrun" / "ssh" / "lab.sock").exists()  # the master was closed


@pytest.mark.parametrize("breakage", ["port", "key"])
def test_an_unusable_host_is_a_clear_error_before_any_task(root, sshd, project, breakage):
    options: dict[str, object] = {"workspace": str(root)}
    if breakage == "port":
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            options["port"] = s.getsockname()[1]  # nothing listens there
    else:
        import subprocess

        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(root / "other_key")], check=True)
        options["identity_file"] = str(root / "other_key")
    project.manifest(sshd.toml("lab", **options) + textwrap.dedent("""
        [tasks.local_first]
        cmd = "touch local_ran"
        [tasks.remote]
        executor = "lab"
        cmd = "touch remote_ran"
    """))
    r = project.run("build")
    assert r.code == 2, r.out + r.err
    assert "Traceback" not in r.err
    assert "dagrun: error: executor 'lab': cannot connect to dagrunssh@127.0.0.1:" in r.err
    reason = "Connection refused" if breakage == "port" else "Permission denied"
    assert reason in r.err
    assert not (root / "local_ran").exists() and not (root / "remote_ran").exists()


def test_each_executor_keeps_to_its_own_max_jobs(root, sshd, project):
    stamp = 'echo "$(date +%s.%N) $(date +%s.%N)" > /dev/null; '
    tasks = []
    for i in range(6):
        for kind in ("loc", "rem"):
            ex = 'executor = "lab"\n' if kind == "rem" else ""
            tasks.append(
                f"[tasks.{kind}{i}]\n{ex}cmd = '{stamp}echo start $(date +%s.%N) > {kind}{i}.t; "
                f"sleep 0.3; echo end $(date +%s.%N) >> {kind}{i}.t'\n"
            )
    project.manifest(
        "[executors.local]\nmax_jobs = 1\n" + sshd.toml("lab", workspace=str(root), max_jobs=2)
        + "".join(tasks)
    )
    r = project.run("build", "-j", "8")
    assert r.code == 0, r.err
    for kind, limit in (("loc", 1), ("rem", 2)):
        spans = []
        for i in range(6):
            lines = (root / f"{kind}{i}.t").read_text().split()
            spans.append((float(lines[1]), float(lines[3])))
        assert max_overlap(spans) <= limit, (kind, spans)


def max_overlap(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = now = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def connection_ports(root: Path, names: list[str]) -> set[str]:
    """The client port of the SSH connection each task ran over (from SSH_CONNECTION)."""
    return {(root / n).read_text().split()[1] for n in names}


def test_many_tasks_share_one_connection(root, sshd, project):
    tasks = "".join(
        f'[tasks.t{i}]\nexecutor = "lab"\ncmd = \'echo "$SSH_CONNECTION" > c{i}\'\n'
        for i in range(20)
    )
    project.manifest(sshd.toml("lab", workspace=str(root), max_jobs=4) + tasks)
    assert project.run("build").code == 0
    assert len(connection_ports(root, [f"c{i}" for i in range(20)])) == 1


def test_channels_stay_under_the_default_max_sessions(root, sshd_default, project):
    tasks = "".join(
        f'[tasks.t{i}]\nexecutor = "lab"\ncmd = \'echo "$SSH_CONNECTION" > c{i}; sleep 0.5\'\n'
        for i in range(14)
    )
    project.manifest(sshd_default.toml("lab", workspace=str(root), max_jobs=14) + tasks)
    r = project.run("build")
    assert r.code == 0, r.err
    assert "refused" not in r.out + r.err
    assert len(connection_ports(root, [f"c{i}" for i in range(14)])) == 1


def test_stage_rsync_copies_inputs_there_and_outputs_back(root, sshd, project, elsewhere):
    ws = elsewhere
    (root / "src").mkdir()
    (root / "src" / "in.txt").write_text("seed\n")
    project.manifest(sshd.toml("lab", workspace=str(ws / "w"), stage="rsync") + textwrap.dedent("""
        [tasks.first]
        executor = "lab"
        inputs = ["src/in.txt"]
        outputs = ["out/a.txt"]
        cmd = "(cat src/in.txt; echo first on $(id -un)) > out/a.txt"
        [tasks.second]
        executor = "lab"
        deps = ["first"]
        outputs = ["out/b.txt"]
        cmd = "(cat out/a.txt; echo second) > out/b.txt"
        [tasks.third]
        deps = ["second"]
        outputs = ["out/c.txt"]
        cmd = "(cat out/b.txt; echo third here) > out/c.txt"
    """))
    r = project.run("build")
    assert r.code == 0, r.out + r.err
    assert (root / "out" / "c.txt").read_text() == "seed\nfirst on dagrunssh\nsecond\nthird here\n"
    assert (ws / "w" / "out" / "b.txt").exists()  # it really ran over there


def test_stage_rsync_fails_a_task_whose_declared_output_is_missing(root, sshd, project, elsewhere):
    ws = elsewhere
    project.manifest(sshd.toml("lab", workspace=str(ws), stage="rsync") + textwrap.dedent("""
        [tasks.lazy]
        executor = "lab"
        outputs = ["out/never.txt"]
        cmd = "true"
    """))
    r = project.run("build")
    assert r.code == 1
    assert "declared output out/never.txt was not written on dagrunssh@127.0.0.1" in r.out + r.err


def test_a_dropped_connection_requeues_the_task_and_the_build_succeeds(root, sshd, project):
    project.manifest(sshd.toml("lab", workspace=str(root)) + textwrap.dedent("""
        [tasks.long]
        executor = "lab"
        cmd = "echo try >> attempts; sleep 1.5; echo done > long.out"
        outputs = ["long.out"]
        [tasks.after]
        executor = "lab"
        deps = ["long"]
        cmd = "cat long.out > after.out"
    """))
    sock = str(root / ".dagrun" / "ssh" / "lab.sock")
    killed: list[int] = []

    def kill_master_once_started() -> None:
        wait_for(lambda: (root / "attempts").exists(), "the first attempt started")
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = proc.info["cmdline"] or []
            if "-N" in cmd and f"ControlPath={sock}" in cmd:
                proc.kill()
                killed.append(proc.info["pid"])

    killer = threading.Thread(target=kill_master_once_started)
    killer.start()
    r = project.run("build")
    killer.join()
    assert killed, "no master connection found"
    assert r.code == 0, r.out + r.err
    assert (root / "attempts").read_text() == "try\ntry\n"
    assert (root / "after.out").read_text() == "done\n"
    assert "lost" in r.out + r.err
    log = (root / ".dagrun" / "log").read_text()
    assert log.count('{"task":"long"') == 1  # the lost attempt was never logged


def test_status_shows_each_host_reachable_running_and_slots(root, sshd, project):
    project.manifest(sshd.toml("lab", workspace=str(root), max_jobs=3) + sshd.toml("down", port=1)
                     + '[tasks.a]\ncmd = "true"\n')
    r = project.run("status", "--executors")
    assert r.code == 0, r.err
    words = " ".join(r.out.split())
    assert ("lab (ssh) host 127.0.0.1 reachable yes running jobs 0 of 3 slots (no build running) "
            "down (ssh) host 127.0.0.1 reachable no running jobs 0 (no build running)") in words


def test_the_ssh_example_builds_against_two_hosts(root, sshd, project, elsewhere):
    import re
    import shutil

    example = Path(__file__).parent.parent / "examples" / "ssh"
    shutil.copytree(example / "src", root / "src")
    text = (example / "dagrun.toml").read_text()
    # the two hosts become this machine's test sshd, with the example's staging kept
    text = re.sub(r"\[executors\.shared_box\].*?\n\n", lambda m: sshd.toml(
        "shared_box", workspace=str(root), max_jobs=2) + "\n", text, flags=re.S)
    text = re.sub(r"\[executors\.scratch_box\].*?\n\n", lambda m: sshd.toml(
        "scratch_box", workspace=str(elsewhere), stage="rsync", max_jobs=4) + "\n", text,
        flags=re.S)
    project.manifest(text)
    # Here the shared host's user is not the build's (root), unlike a real shared folder:
    # `build/`, made by whichever task comes first, must be theirs to write in, as `root` is.
    # (When the fetch of `count` made it first, as root 0755, `where` failed: CI, once.)
    (root / "build").mkdir(mode=0o777)
    (root / "build").chmod(0o777)
    r = project.run("build")
    assert r.code == 0, r.out + r.err
    summary = (root / "build" / "summary.txt").read_text().split()
    assert summary[:2] == ["4", "6"] and summary[-2:] == [str(root), "where"]
    assert (elsewhere / "build" / "a.words").exists()  # counted over there, copied back


def test_status_during_a_build_shows_the_remote_task(root, sshd, project, dagrun_proc):
    write(root, sshd.toml("lab", workspace=str(root), max_jobs=2) + textwrap.dedent("""
        [tasks.slow]
        executor = "lab"
        cmd = "echo go > started; sleep 3"
    """))
    p = dagrun_proc.start("build", stderr=root / "dagrun.err")
    wait_for(lambda: (root / "started").exists(), "the remote task started")
    r = project.run("status", "--executors")
    out, _ = p.communicate(timeout=15)
    assert p.returncode == 0, (out, (root / "dagrun.err").read_text())
    words = " ".join(r.out.split())
    assert (f"lab (ssh) host 127.0.0.1 reachable yes running jobs 1 of 2 slots "
            f"(build pid {p.pid}) slow not pinned") in words


def test_a_second_ctrl_c_kills_a_remote_task_that_ignores_signals(root, sshd, dagrun_proc):
    write(root, sshd.toml("lab", workspace=str(root), grace_period=60) + textwrap.dedent("""
        [tasks.stubborn]
        executor = "lab"
        cmd = "trap '' INT TERM; echo go > started; sleep 66; sleep 67"
    """))
    p = dagrun_proc.start("build", stderr=root / "dagrun.err")
    wait_for(lambda: (root / "started").exists(), "the remote task started")
    os.killpg(p.pid, signal.SIGINT)
    time.sleep(0.5)  # the first Ctrl-C is being handled: the task ignores SIGTERM
    assert p.poll() is None
    os.killpg(p.pid, signal.SIGINT)
    p.communicate(timeout=15)  # well before the 60 s grace period
    assert p.returncode == 130, (root / "dagrun.err").read_text()
    assert remote_leftovers("sleep 66", "sleep 67") == []


def test_a_project_path_with_spaces_percent_and_quotes_works(root, sshd, project):
    weird = root / 'my "proj" 100% x'
    weird.mkdir()
    weird.chmod(0o777)
    write(weird, sshd.toml("lab") + f"workspace = '{weird}'\n" + textwrap.dedent("""
        [tasks.a]
        executor = "lab"
        cmd = "pwd > where.txt"
        outputs = ["where.txt"]
    """))
    r = project.run("-C", str(weird), "build")
    assert r.code == 0, r.out + r.err
    assert (weird / "where.txt").read_text() == f"{weird}\n"


def masters(sock: Path) -> list[int]:
    return [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
            if f"ControlPath={sock}" in (p.info["cmdline"] or []) and "-N" in p.info["cmdline"]]


def test_no_master_connection_outlives_a_build_whose_socket_was_removed(root, sshd, project):
    project.manifest(sshd.toml("lab", workspace=str(root)) + textwrap.dedent("""
        [tasks.a]
        executor = "lab"
        cmd = "echo a > a.out"
        [tasks.b]
        deps = ["a"]
        cmd = "rm -f .dagrun/ssh/lab.sock"
    """))
    r = project.run("build")
    assert r.code == 0, r.out + r.err
    sock = root / ".dagrun" / "ssh" / "lab.sock"
    wait_for(lambda: masters(sock) == [], "the master connection to end")


def restart(server: SshServer, pause: float) -> None:
    """Stop the sshd and every connection it serves; start it again ``pause`` s later."""
    import subprocess

    kids = psutil.Process(server.proc.pid).children(recursive=True)
    server.proc.terminate()
    server.proc.wait()
    for kid in kids:
        try:
            kid.kill()
        except psutil.Error:
            pass
    time.sleep(pause)
    server.proc = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(server.folder / "sshd_config")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def test_an_sshd_restarted_within_seconds_does_not_fail_the_build(root, project, tmp_path):
    from sshd import start_sshd

    server = start_sshd(tmp_path / "sshd")
    try:
        project.manifest(server.toml("lab", workspace=str(root)) + textwrap.dedent("""
            [tasks.long]
            executor = "lab"
            cmd = "echo try >> attempts; sleep 1.5; echo done > long.out"
            outputs = ["long.out"]
        """))

        def restart_once_started() -> None:
            wait_for(lambda: (root / "attempts").exists(), "the first attempt started")
            restart(server, 3.0)

        thread = threading.Thread(target=restart_once_started)
        thread.start()
        r = project.run("build")
        thread.join()
        assert r.code == 0, r.out + r.err
        assert (root / "attempts").read_text() == "try\ntry\n"
    finally:
        server.stop()


def test_stage_rsync_brings_the_depfile_back(root, sshd, project, elsewhere):
    (root / "src").mkdir()
    (root / "src" / "a.c").write_text("int a;\n")
    (root / "src" / "a.h").write_text("/* v1 */\n")
    project.manifest(sshd.toml("lab", workspace=str(elsewhere), stage="rsync") + textwrap.dedent("""
        [tasks.cc]
        executor = "lab"
        inputs = ["src/a.c"]
        outputs = ["out/a.o"]
        depfile = "out/a.d"
        cmd = "cat src/a.c > out/a.o; echo 'out/a.o: src/a.c src/a.h' > out/a.d"
    """))
    r = project.run("build")
    assert r.code == 0, r.out + r.err
    assert (root / "out" / "a.d").read_text() == "out/a.o: src/a.c src/a.h\n"
    (root / "src" / "a.h").write_text("/* v2 */\n")  # a header only the depfile names
    r = project.run("build", "--explain")
    assert r.code == 0, r.out + r.err
    assert "input src/a.h changed (from depfile)" in r.out + r.err


def test_a_missing_identity_file_is_named(root, sshd, project):
    project.manifest(sshd.toml("lab", workspace=str(root), identity_file="keys/nope")
                     + '[tasks.a]\nexecutor = "lab"\ncmd = "true"\n')
    r = project.run("build")
    assert r.code == 2, r.out + r.err
    assert f"dagrun: error: executor 'lab': identity_file {root}/keys/nope does not exist" in r.err
