"""The HTTP load test in its short form keeps bench/http_load.py working (figures not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from http_workers import ROOT, worker_env


@pytest.mark.slow
def test_the_http_load_test_runs_in_its_short_form():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "http_load.py"), "--smoke", "--transport", "both"],
        cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["transport"] for r in results] == ["asyncio", "threading"]
    for r in results:
        for phase in ("saturated", "paced"):
            assert r[phase]["reported"] == r[phase]["collected"] == 500
            assert r[phase]["tasks_per_s"] > 0 and r[phase]["lease_p99_ms"] > 0
        assert r["idle_cpu_pct_every_0.5s"] >= 0 and r["idle_cpu_pct_every_0.2s"] >= 0
