"""The code stays as STYLE.md asks: ruff (E, F, I, B) clean and mypy --strict clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff() -> None:
    pytest.importorskip("ruff", reason="ruff is not installed: pip install -e '.[dev]'")
    p = run("ruff", "check", "dagrun", "tests", "bench")
    assert p.returncode == 0, p.stdout + p.stderr


def test_mypy_strict() -> None:
    pytest.importorskip("mypy", reason="mypy is not installed: pip install -e '.[dev]'")
    p = run("mypy", "--strict", "dagrun")
    assert p.returncode == 0, p.stdout + p.stderr
