"""What a file's kind, a closed or full stdout, or a huge number in the manifest can do to
dagrun (issue 20): a clear error (exit 2) or a finished build, never a traceback or a hang.
Real processes, real files."""

from __future__ import annotations

import subprocess
import sys
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
