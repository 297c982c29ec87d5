"""Where the manifest is: ``-C DIR``, ``-f FILE``, else the nearest dagrun.toml upward.

As cargo and go-task do, a build started in a subfolder uses the manifest of
the project it is in; the manifest's folder is the root its paths (and
targets given as paths) are relative to.  The path returned is relative when
it can be (``dagrun.toml``, ``../../dagrun.toml``), so messages name the
manifest the way the user would.  Only ``os`` is imported: dagrun.entry's
no-op fast path uses this too.
"""

from __future__ import annotations

import os

MANIFEST_NAME = "dagrun.toml"


def find(directory: str = ".", file: str | None = None) -> str | None:
    """The manifest's path, or None when there is none (``file``: exactly that one)."""
    if file:
        path = os.path.join(directory, file)
        return path if os.path.isfile(path) else None
    here = directory
    start = os.path.abspath(directory)
    current = start
    while True:
        candidate = os.path.join(current, MANIFEST_NAME)
        if os.path.isfile(candidate):
            if current == start:
                return os.path.join(here, MANIFEST_NAME) if here != "." else MANIFEST_NAME
            return os.path.relpath(candidate)
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
