"""What a file's kind, a closed or full stdout, or a huge number in the manifest can do to
dagrun (issue 20): a clear error (exit 2) or a finished build, never a traceback or a hang.
Real processes, real files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TWO_TASKS = """
[tasks.a]
cmd = "echo a > a.txt"
outputs = ["a.txt"]

[tasks.b]
cmd = "echo b > b.txt"
inputs = ["a.txt"]
outputs = ["b.txt"]
"""


def dagrun_sh(root: Path, redirect: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m dagrun build`` from sh, with ``redirect`` applied to it."""
    return subprocess.run(
        f"exec {sys.executable} -m dagrun build {redirect}", shell=True, cwd=root,
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, timeout=timeout,
    )


def test_a_range_past_64_bits_is_a_manifest_error(project):
    project.manifest(
        '[tasks.r]\nmatrix = { n = { range = [0, 10000000000000000000] } }\ncmd = "echo {n}"\n'
    )
    r = project.run("build")
    assert r.code == 2
    assert r.err == (
        "dagrun: error: dagrun.toml:2: task 'r', key 'matrix': variable 'n': "
        "range [0, 10000000000000000000] has more than 1,000,000 values\n"
    )


def test_a_full_stdout_is_a_clear_error(tmp_path):
    (tmp_path / "dagrun.toml").write_text(TWO_TASKS)
    p = dagrun_sh(tmp_path, "> /dev/full")
    assert (p.returncode, p.stderr) == (
        2, "dagrun: error: cannot write to stdout: No space left on device\n"
    )


@pytest.mark.parametrize("redirect", [">&-", ">&- 2>&-", "<&- >&-"])
def test_a_closed_stdout_lets_the_build_finish(tmp_path, redirect):
    (tmp_path / "dagrun.toml").write_text(TWO_TASKS)
    p = dagrun_sh(tmp_path, redirect)
    assert (p.returncode, p.stderr) == (0, "")
    assert (tmp_path / "b.txt").read_text() == "b\n"
    again = dagrun_sh(tmp_path, ">&-")
    assert again.returncode == 0


def dagrun_run(root: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dagrun", *args], cwd=root, capture_output=True, text=True,
        timeout=timeout,
    )


def _fifo_or_device(root: Path, name: str, kind: str) -> None:

    if kind == "fifo":
        os.mkfifo(root / name)
    else:
        os.symlink("/dev/zero", root / name)


@pytest.mark.parametrize(
    ("kind", "what"), [("fifo", "a FIFO"), ("zero", "a character device")]
)
def test_a_fifo_or_dev_zero_input_is_a_clear_error_at_once(tmp_path, kind, what):

    _fifo_or_device(tmp_path, "in.txt", kind)
    (tmp_path / "dagrun.toml").write_text(
        '[tasks.a]\ncmd = "echo a > a.txt"\ninputs = ["in.txt"]\noutputs = ["a.txt"]\n'
    )
    start = time.monotonic()
    p = dagrun_run(tmp_path, "build")
    assert time.monotonic() - start < 10  # "within a second", with the loaded machine's margin
    assert (p.returncode, p.stderr) == (
        2,
        "dagrun: error: dagrun.toml:3: task 'a', key 'inputs': input 'in.txt' cannot be read: "
        f"is {what}, not a regular file\n",
    )


def test_a_fifo_depfile_fails_its_task(tmp_path):

    os.mkfifo(tmp_path / "dep.d")
    (tmp_path / "dagrun.toml").write_text(
        '[tasks.a]\ncmd = "echo a > a.txt"\noutputs = ["a.txt"]\ndepfile = "dep.d"\n'
    )
    p = dagrun_run(tmp_path, "build")
    assert p.returncode == 1
    assert "[depfile dep.d: cannot be read: is a FIFO, not a regular file]" in p.stdout


def test_a_depfile_naming_a_fifo_or_dev_zero_does_not_hang(tmp_path):

    os.mkfifo(tmp_path / "ff")
    os.symlink("/dev/zero", tmp_path / "zz")
    (tmp_path / "dagrun.toml").write_text(
        '[tasks.a]\ncmd = "echo a > a.txt; echo \'a.txt: ff zz\' > dep.d"\n'
        'outputs = ["a.txt"]\ndepfile = "dep.d"\n'
    )
    # neither is read: they count as files that are not there (as a header deleted since)
    assert dagrun_run(tmp_path, "build", timeout=20).returncode == 0
    p = dagrun_run(tmp_path, "build", timeout=20)
    assert (p.returncode, p.stdout) == (0, "dagrun: no work to do (1 up to date)\n")


@pytest.mark.parametrize(
    "name", ["cache", "fresh", "journal", "last-build.jsonl", "executors.json"]
)
def test_a_fifo_in_place_of_a_state_file_is_discarded(tmp_path, name):

    (tmp_path / "dagrun.toml").write_text(TWO_TASKS)
    assert dagrun_run(tmp_path, "build").returncode == 0
    (tmp_path / ".dagrun" / name).unlink(missing_ok=True)
    os.mkfifo(tmp_path / ".dagrun" / name)
    (tmp_path / "dagrun.toml").write_text(TWO_TASKS + "# changed\n")
    for args in (["build"], ["build"], ["list"], ["show", "b"], ["status"]):
        p = dagrun_run(tmp_path, *args)
        assert (p.returncode, p.stderr) == (0, ""), args


@pytest.mark.parametrize("name", ["log", "lock"])
def test_a_fifo_in_place_of_the_log_or_lock_is_a_clear_error(tmp_path, name):

    (tmp_path / "dagrun.toml").write_text(TWO_TASKS)
    assert dagrun_run(tmp_path, "build").returncode == 0
    (tmp_path / ".dagrun" / name).unlink()
    os.mkfifo(tmp_path / ".dagrun" / name)
    (tmp_path / "dagrun.toml").write_text(TWO_TASKS + "# changed\n")
    for args in (["build"], ["list"], ["show", "b"]):
        p = dagrun_run(tmp_path, *args)
        assert p.returncode == 2, args
        assert f".dagrun/{name}" in p.stderr and "is a FIFO, not a regular file" in p.stderr


FUNCTIONS = '''
import time

def f():
    time.sleep(0.3)
    return 1

def g():
    time.sleep(0.3)
    return 2
'''


@pytest.mark.parametrize("keep_going", [["-k"], []])
def test_a_function_task_that_cannot_start_fails_alone(tmp_path, keep_going):
    """g's run folder cannot be written (its command.txt is /dev/full): g fails with that error;
    f, the shell task s and h after it are not touched by it."""
    (tmp_path / "mod.py").write_text(FUNCTIONS)
    (tmp_path / "dagrun.toml").write_text(
        '[tasks.f]\ncall = "mod:f"\n\n[tasks.g]\ncall = "mod:g"\n\n'
        '[tasks.s]\ncmd = "sleep 0.5; echo s > s.txt"\noutputs = ["s.txt"]\n\n'
        '[tasks.h]\ncall = "mod:f"\ndeps = ["s"]\n\n[dagrun]\nfailures_allowed = 0\n'
    )
    (tmp_path / ".dagrun" / "runs" / "g").mkdir(parents=True)
    os.symlink("/dev/full", tmp_path / ".dagrun" / "runs" / "g" / "command.txt")
    p = dagrun_run(tmp_path, "build", "-j4", *keep_going)
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stderr == ""
    assert "dagrun: 3 succeeded, 0 up to date, 1 failed" in p.stdout
    assert (
        "  g  [cannot prepare the run folder .dagrun/runs/g: No space left on device]"
        in p.stdout
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
@pytest.mark.parametrize("option", ["--junit", "--trace", "--events"])
def test_a_report_to_a_full_device_is_a_clear_error_and_the_device_stays(tmp_path, option):
    """A report path that is a device is written to, never replaced by a regular file (as root,
    `--junit /dev/full` used to replace /dev/full itself).  A private node: c 1 7 is /dev/full."""
    full = tmp_path / "full"
    os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    (tmp_path / "dagrun.toml").write_text(TWO_TASKS)
    p = dagrun_run(tmp_path, "build", option, str(full))
    assert (p.returncode, p.stderr) == (
        2, f"dagrun: error: cannot write {full}: No space left on device\n"
    )
    assert stat.S_ISCHR(os.lstat(full).st_mode)


def test_a_report_to_a_fifo_goes_to_its_reader(tmp_path):
    import threading

    fifo = tmp_path / "junit.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    (tmp_path / "dagrun.toml").write_text(TWO_TASKS)
    p = dagrun_run(tmp_path, "build", "--junit", str(fifo))
    reader.join(10)
    assert p.returncode == 0, p.stderr
    assert got and got[0].startswith(b"<?xml")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("option", ["--junit", "--events"])
def test_a_report_to_a_fifo_nobody_reads_is_a_clear_error(tmp_path, option):
    os.mkfifo(tmp_path / "r.fifo")
    (tmp_path / "dagrun.toml").write_text(TWO_TASKS)
    p = dagrun_run(tmp_path, "build", option, "r.fifo")
    assert (p.returncode, p.stderr) == (
        2, "dagrun: error: cannot write r.fifo: a FIFO that nobody reads\n"
    )
