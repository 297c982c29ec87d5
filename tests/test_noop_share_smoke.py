"""bench/noop_share.py runs (its figures are not checked: timing belongs to the benchmark)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_noop_share_measures_every_part(tmp_path: Path) -> None:
    out = tmp_path / "share.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "noop_share.py"), "--tasks", "20", "--runs", "1",
         "--work", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["n"] == 20
    assert set(row["check_ms"]) == {"real", "exist", "none"}
    assert {"dagrun", "python -c pass"} <= set(row["noop"])
    assert "| 20 |" in proc.stdout
