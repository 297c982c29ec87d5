"""Tabulate the benchmark runs and check each saw exactly the cores dagrun leased it."""

from __future__ import annotations

import json
import sys


def cores(text: str) -> set[int]:
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out


def main(paths: list[str]) -> int:
    runs = [json.load(open(p)) for p in sorted(paths)]
    print(f"{'task':<28} {'workers':>7} {'node':>4} {'cores':>7} {'seconds':>8} {'Mops/s':>7}")
    bad = 0
    for r in runs:
        ok = cores(r["leased"]) == cores(r["allowed"])
        bad += not ok
        flag = "" if ok else f"  ALLOWED {r['allowed']}!"
        print(f"{r['task']:<28} {r['workers']:>7} {r['node'] or '-':>4} {r['leased']:>7} "
              f"{r['seconds']:>8.3f} {r['mops']:>7.2f}{flag}")
    print(f"{len(runs)} runs; every run saw exactly its leased cores: {'yes' if not bad else 'NO'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
