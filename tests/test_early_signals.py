"""A SIGTERM or SIGHUP early in a build exits 130, never dies of it (issue 8, item 14).

The signal is sent at a random moment after dagrun's own code has started
(seen in ``-X importtime``'s report of ``dagrun.entry``): before that, only the
interpreter is starting, and no Python program can handle a signal yet.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

MANIFEST = "".join(f'[tasks.t{i}]\ncmd = "sleep 0.2"\n' for i in range(4))


def _start(root: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "dagrun", "--progress", "plain", "build"],
        cwd=root,
        env=env,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _one_try(root: Path, sig: int, delay: float) -> tuple[int, str]:
    p = _start(root)
    assert p.stderr is not None
    seen = []
    for line in p.stderr:  # wait until dagrun's own code runs
        seen.append(line)
        if line.rstrip().endswith("| dagrun.entry"):
            break
    time.sleep(delay)
    try:
        os.kill(p.pid, sig)
    except ProcessLookupError:
        pass
    out, err = p.communicate(timeout=30)
    if _alive_group(p.pid):
        os.killpg(p.pid, signal.SIGKILL)
    return p.returncode, "".join(seen) + err


def _alive_group(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_item14_a_signal_early_in_a_build_exits_130(tmp_path: Path, sig: int) -> None:
    (tmp_path / "dagrun.toml").write_text(MANIFEST)
    rng = random.Random(8014)
    codes = []
    for trial in range(20):
        code, err = _one_try(tmp_path, sig, rng.uniform(0.0005, 0.06))
        codes.append(code)
        assert "Traceback" not in err, err
        assert code == 130, f"trial {trial}: exit {code}; all so far: {codes}"
