"""A small data pipeline written as Python function tasks: load -> clean -> summarise -> report.

Each function receives its dependencies' results by parameter name and
returns its own result; dagrun runs them in worker processes and keeps each
result in .dagrun/results/, so a rerun recomputes only what changed.
"""

from __future__ import annotations

import csv
import statistics


def load(path: str) -> list[dict[str, str]]:
    """One task per data file (a matrix): its rows, as read."""
    print(f"loading {path}")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def clean(load: dict[str, list[dict[str, str]]]) -> list[dict[str, object]]:
    """``load`` is the matrix group: {task name: rows} of every file."""
    rows: list[dict[str, object]] = []
    for task in sorted(load):
        for row in load[task]:
            region = row["region"].strip().lower()
            try:
                amount = float(row["amount"])
            except ValueError:
                continue  # "n/a" and the like
            if region:
                rows.append({"region": region, "amount": amount})
    return rows


def summarise(clean: list[dict[str, object]]) -> dict[str, dict[str, float]]:
    amounts: dict[str, list[float]] = {}
    for row in clean:
        amounts.setdefault(str(row["region"]), []).append(float(row["amount"]))  # type: ignore[arg-type]
    return {
        region: {"orders": len(v), "total": round(sum(v), 2), "mean": round(statistics.mean(v), 2)}
        for region, v in sorted(amounts.items())
    }


def report(summarise: dict[str, dict[str, float]], path: str) -> str:
    lines = ["# Sales by region", "", "| region | orders | total | mean |", "|---|---:|---:|---:|"]
    for region, s in summarise.items():
        lines.append(f"| {region} | {s['orders']:.0f} | {s['total']:.2f} | {s['mean']:.2f} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
