"""The benchmark's smoke run (N=50) keeps bench/run.py working; peers not installed are skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_smoke_benchmark_runs_every_tool_it_finds(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke",
         "--work", str(tmp_path / "work"), "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    cases = [(c["shape"], c["n"]) for c in results["cases"]]
    assert cases == [("wide", 50), ("diamond-layers", 50)]
    for case in results["cases"]:
        assert case["errors"] == []
        figures = case["figures"]
        assert {"cold", "cold_rm", "noop", "incremental", "rss_kb"} <= set(figures["dagrun"])
        assert set(figures["spawn"]) == {"cold", "rss_kb"}
        if "ninja" in figures:
            assert figures["dagrun"]["cold"]["ratio_to_ninja"] > 0
    assert [row["n"] for row in results["series"]] == [50, 100]
    assert [row["bytes"] for row in results["stream"]["rows"]] == [0, 2000000, 4000000]
    assert set(results["sched"]["modes"]) == {"fifo", "unweighted", "critical-path"}
    assert "| dagrun |" in proc.stdout
    assert "Targets of issue 12" in proc.stdout


@pytest.mark.slow
def test_the_shared_cache_benchmark_runs(tmp_path: Path) -> None:
    """bench/shared_cache.py on 30 tasks, one round: its three builds work (no timing here)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "dagrun").write_text(f'#!/bin/sh\nexec {sys.executable} -m dagrun "$@"\n')
    (bindir / "dagrun").chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "shared_cache.py"), "--dagrun",
         str(bindir / "dagrun"), "--tasks", "30", "--rounds", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| 30 tasks, folder store | from warm |" in proc.stdout
