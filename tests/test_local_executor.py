"""LocalExecutor with real processes: exit codes, output files, direct exec, timeouts, groups."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from dagrun.executors import Job
from dagrun.executors.local import LocalExecutor, direct_argv


@pytest.fixture
def ex():
    e = LocalExecutor(grace=1.0)
    yield e
    e.close()


def job(tmp_path, cmd: str, n: int = 1, **kw) -> Job:
    env = dict(os.environ)
    env.update(kw.pop("env", {}))
    return Job(
        id=n,
        task=f"t{n}",
        cmd=cmd,
        root=str(kw.pop("cwd", tmp_path)),
        cwd=".",
        env=env,
        run_dir=str(tmp_path / "runs" / f"t{n}"),
        **kw,
    )


def wait_all(ex: LocalExecutor, count: int, limit: float = 20.0):
    outs = []
    end = time.monotonic() + limit
    while len(outs) < count and time.monotonic() < end:
        outs.extend(ex.wait(timeout=end - time.monotonic()))
    return {o.job_id: o for o in outs}


def test_direct_argv_only_for_plain_commands():
    assert direct_argv("cp src/a.txt out/a") == ["cp", "src/a.txt", "out/a"]
    assert direct_argv("cc -O2 -c x.c -o x.o") == ["cc", "-O2", "-c", "x.c", "-o", "x.o"]
    for cmd in (
        "echo hi",
        "cd x",
        "a > b",
        "a | b",
        "a; b",
        "x=1 y",
        "ls *.c",
        "echo $HOME",
        "a && b",
        "cat 'q q'",
        "ls ~",
        "a\nb",
        "exit 3",
    ):
        assert direct_argv(cmd) is None, cmd


def test_exit_codes_and_output(ex, tmp_path):
    ex.submit(job(tmp_path, "echo out; echo err >&2; exit 3", 1))
    ex.submit(job(tmp_path, "true", 2))
    outs = wait_all(ex, 2)
    assert outs[1].exit_code == 3 and not outs[1].ok
    assert outs[1].stdout == "out\n" and outs[1].stderr == "err\n"
    assert outs[2].ok and outs[2].stdout == "" and outs[2].maxrss_kb > 0
    assert (tmp_path / "runs/t1/stdout.txt").read_text() == "out\n"
    assert (
        (tmp_path / "runs/t1/command.txt")
        .read_text()
        .startswith("echo out; echo err >&2; exit 3\n")
    )


def test_direct_exec_and_cwd(ex, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/a.txt").write_text("A")
    ex.submit(job(tmp_path, "cp a.txt b.txt", 1, cwd=tmp_path / "sub"))
    outs = wait_all(ex, 1)
    assert outs[1].ok
    assert (tmp_path / "sub/b.txt").read_text() == "A"
    assert not (tmp_path / "runs/t1").exists()  # a silent success keeps no run files
    ex.submit(job(tmp_path, "cat b.txt", 2, cwd=tmp_path / "sub"))
    outs = wait_all(ex, 1)
    assert outs[2].ok and outs[2].stdout == "A"
    assert "# argv: cat b.txt" in (tmp_path / "runs/t2/command.txt").read_text()
    assert os.getcwd() != str(tmp_path / "sub")


def test_missing_program_is_exit_127(ex, tmp_path):
    ex.submit(job(tmp_path, "no-such-program-xyz a b", 1))
    outs = wait_all(ex, 1)
    assert outs[1].exit_code == 127 and "not found" in outs[1].stderr


def test_output_folders_are_created(ex, tmp_path):
    target = tmp_path / "deep/er/out.txt"
    ex.submit(job(tmp_path, f"echo x > {target}", 1, outputs=(str(target),)))
    assert wait_all(ex, 1)[1].ok and target.read_text() == "x\n"


def test_each_job_leads_its_own_process_group(ex, tmp_path):
    ex.submit(job(tmp_path, "echo $$ > pid; ps -o pgid= -p $$ > pgid", 1))
    wait_all(ex, 1)
    assert (tmp_path / "pid").read_text().strip() == (tmp_path / "pgid").read_text().strip()
    assert os.getpgid(0) != int((tmp_path / "pgid").read_text())


def group_alive(pgid: int) -> list[psutil.Process]:
    alive = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    return alive


@pytest.mark.slow
def test_timeout_kills_the_whole_group(ex, tmp_path):
    ex.submit(job(tmp_path, "sleep 30 & echo $! > bg; sleep 30", 1, timeout=1.0))  # bg written
    t0 = time.monotonic()
    outs = wait_all(ex, 1)
    assert time.monotonic() - t0 < 5
    assert outs[1].timed_out and not outs[1].ok
    bg = int((tmp_path / "bg").read_text())
    time.sleep(0.1)
    assert not psutil.pid_exists(bg) or psutil.Process(bg).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
def test_timeout_escalates_to_sigkill(tmp_path):
    ex = LocalExecutor(grace=0.3)
    try:
        ex.submit(job(tmp_path, "trap '' INT TERM; sleep 30", 1, timeout=1.0))  # trap set by then
        t0 = time.monotonic()
        outs = wait_all(ex, 1)
        assert outs[1].timed_out and outs[1].exit_code == -9
        assert time.monotonic() - t0 < 5
    finally:
        ex.close()


@pytest.mark.slow
def test_cancel_kills_every_group(ex, tmp_path):
    for n in (1, 2):
        ex.submit(job(tmp_path, f"sleep 30 & echo $$ > pg{n}; sleep 30", n))
    deadline = time.monotonic() + 5
    while not all(
        (tmp_path / f"pg{n}").exists() and (tmp_path / f"pg{n}").read_text() for n in (1, 2)
    ):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    groups = [int((tmp_path / f"pg{n}").read_text()) for n in (1, 2)]
    outs = ex.cancel_all()
    assert sorted(o.job_id for o in outs) == [1, 2]
    assert all(not o.ok for o in outs)
    time.sleep(0.1)
    assert [group_alive(g) for g in groups] == [[], []]


def test_start_failure_is_an_outcome(ex, tmp_path):
    j = job(tmp_path, "true", 1, cwd=tmp_path / "missing-dir")
    ex.submit(j)
    outs = wait_all(ex, 1)
    assert outs[1].exit_code is None and outs[1].error.startswith("cannot start")


def test_run_folder_is_kept_only_for_output_or_failure(ex, tmp_path):
    """Unnamed streams: a silent success leaves no file, and removes its previous run's."""
    ex.submit(job(tmp_path, "echo said", 1))
    ex.submit(job(tmp_path, "exit 4", 2))
    outs = wait_all(ex, 2)
    assert not outs[2].ok
    assert (tmp_path / "runs/t1/stdout.txt").read_text() == "said\n"
    assert (tmp_path / "runs/t1/stderr.txt").read_text() == ""
    assert (tmp_path / "runs/t1/command.txt").read_text().startswith("echo said\n")
    assert sorted(os.listdir(tmp_path / "runs/t2")) == ["command.txt", "stderr.txt", "stdout.txt"]
    ex.submit(job(tmp_path, "true", 1))  # t1 again, silent now: its old output is not true
    assert wait_all(ex, 1)[1].ok
    assert sorted(os.listdir(tmp_path / "runs")) == ["t2"]


def test_output_far_beyond_what_is_shown_is_all_in_the_file(ex, tmp_path):
    size = 3 << 20  # 3 MiB: the Outcome keeps 1 MiB, the file all of it
    ex.submit(job(tmp_path, f"head -c {size} /dev/zero", 1))
    out = wait_all(ex, 1)[1]
    assert out.ok and "output cut at" in out.stdout
    assert (tmp_path / "runs/t1/stdout.txt").stat().st_size == size


def test_commands_are_found_on_the_path_relative_folders_included(project, monkeypatch):
    """The local executor looks a command up on the PATH once per build; a PATH with a relative
    folder is searched by the child, from the task's cwd, as execvp does."""
    tool = project.write("sub/tools/hello", "#!/bin/sh\necho hello > out.txt\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", "tools:" + os.environ["PATH"])
    project.manifest(
        '[tasks.a]\ncmd = "hello"\ncwd = "sub"\noutputs = ["sub/out.txt"]\n'
        '[tasks.b]\ncmd = "touch b.txt"\noutputs = ["b.txt"]\n'
        '[tasks.c]\ncmd = "no-such-program-here"\n'
    )
    run = project.run("build", "-k")
    assert run.code == 1
    assert project.read("sub/out.txt") == "hello\n"
    assert (project.root / "b.txt").exists()
    assert "127" in run.out + run.err
