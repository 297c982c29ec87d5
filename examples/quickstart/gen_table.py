"""Writes a small lookup table (stands in for a code generator)."""

for n in range(1, 6):
    print(f"{n}\t{n * n}")
