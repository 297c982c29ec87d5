"""The ``dagrun`` console script (entry.run): a no-op answered, or a plain build ended, skips the
interpreter's teardown (freeing every object one by one); other commands exit as usual."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = '[tasks.a]\ncmd = "touch out.txt"\noutputs = ["out.txt"]\n'
# an atexit handler shows whether the interpreter's teardown ran
SCRIPT = ("import atexit, sys\nfrom dagrun.entry import run\n"
          "atexit.register(lambda: sys.stderr.write('teardown\\n'))\nrun()\n")


def _script(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=cwd, capture_output=True,
                          text=True)


def test_the_installed_command_is_entry_run():
    text = (ROOT / "pyproject.toml").read_text()
    scripts = text.split("[project.scripts]\n", 1)[1].split("\n\n", 1)[0]
    assert scripts == 'dagrun = "dagrun.entry:run"'


@pytest.mark.slow
def test_a_no_op_and_a_plain_build_exit_at_once_other_commands_as_usual(tmp_path: Path):
    (tmp_path / "dagrun.toml").write_text(MANIFEST)
    first = _script(tmp_path, "build")
    assert (first.returncode, first.stderr) == (0, "")  # a plain build: no teardown either
    assert first.stdout.splitlines()[-1].startswith("dagrun: 1 succeeded")  # all of it flushed
    assert (tmp_path / "out.txt").exists()
    log = (tmp_path / ".dagrun" / "log").read_text()
    assert log.endswith("}\n") and '"task":"a"' in log  # its success record whole on disk
    again = _script(tmp_path, "build")
    assert (again.returncode, again.stdout, again.stderr) == (
        0, "dagrun: no work to do (1 up to date)\n", "")
    listed = _script(tmp_path, "list")
    assert (listed.returncode, listed.stderr) == (0, "teardown\n")
    dry = _script(tmp_path, "build", "-n")  # not a plain build
    assert (dry.returncode, dry.stderr) == (0, "teardown\n")


@pytest.mark.slow
def test_a_no_op_whose_report_cannot_be_written_exits_1_or_2(tmp_path: Path):
    (tmp_path / "dagrun.toml").write_text(MANIFEST)
    assert _script(tmp_path, "build").returncode == 0
    read, write = os.pipe()
    os.close(read)
    try:
        cut = subprocess.run([sys.executable, "-c", SCRIPT, "build"], cwd=tmp_path, stdout=write,
                             stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write)
    assert (cut.returncode, cut.stderr) == (1, "")
    with open("/dev/full", "w") as full:
        disk = subprocess.run([sys.executable, "-c", SCRIPT, "build"], cwd=tmp_path,
                              stdout=full, stderr=subprocess.PIPE, text=True)
    # a full disk is not a reader gone away: a clear error, exit 2 (issue 20)
    assert (disk.returncode, disk.stderr) == (
        2, "dagrun: error: cannot write to stdout: No space left on device\n"
    )
