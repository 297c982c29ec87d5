"""Prints every task's key of each manifest given, as JSON: ``python print_keys.py A.toml ...``.

tests/test_stable_keys.py runs it once per PYTHONHASHSEED and compares the outputs.  Each
manifest is loaded and planned through the API (``dagrun.load(path).plan()``), in a folder of
its own that no earlier process planned (a plan starts from the keys it finds in ``.dagrun/``).
A manifest that cannot be planned gives its error message instead of keys.
"""

from __future__ import annotations

import json
import sys

import dagrun


def keys_of(path: str) -> dict[str, str | None] | str:
    try:
        prepared = dagrun.load(path).plan()
    except dagrun.DagrunError as exc:
        return str(exc)
    specs = prepared.graph.specs
    return {specs[i].name: key for i, key in enumerate(prepared.keys.keys)}


if __name__ == "__main__":
    print(json.dumps({path: keys_of(path) for path in sys.argv[1:]}, sort_keys=True))
