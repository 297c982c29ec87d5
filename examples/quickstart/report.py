"""Combines the table and the per-file line counts into one report."""
import os
import sys

table, counts = sys.argv[1], sys.argv[2:]
rows = sum(1 for _ in open(table))
print(f"table rows: {rows}")
for path in sorted(counts):
    name = os.path.basename(path).removesuffix(".count")
    print(f"{name}: {open(path).read().strip()} lines")
