"""The manifest's path rules: paths relative to the manifest's folder, outputs inside it.

A TaskSpec's paths are relative to the root (the manifest's folder) or
absolute; a task writes them relative to its ``cwd``.  Nothing of dagrun's own
state (``.dagrun/``) is ever an input or an output.
"""

from __future__ import annotations

import os

from . import globs

STATE_DIR = globs.STATE_DIR


def norm(path: str, cwd: str, root: str) -> str:
    """Normalise ``path`` written relative to ``cwd`` into a path relative to the root.

    However it is spelled (``./x``, ``a/../x``, ``/abs/root/x``, ``../root/x``),
    a path inside the root comes out relative to it; one outside keeps its form.
    """
    joined = os.path.normpath(os.path.join(cwd, path))
    if joined.startswith("/") or joined == ".." or joined.startswith("../"):
        return inside_root(joined, root) or joined
    return joined


def inside_root(path: str, root: str) -> str | None:
    """``path`` (absolute, or relative to ``root``) relative to ``root`` when it lies inside it."""
    full = os.path.normpath(os.path.join(root, path))
    for base in (root, os.path.realpath(root)):
        if full == base:
            return "."
        if full.startswith(base.rstrip("/") + "/"):
            return full[len(base.rstrip("/")) + 1 :]
    return None


def outside(path: str) -> bool:
    """Whether a normalised relative path leaves its folder (or is absolute)."""
    return path.startswith("/") or path == ".." or path.startswith("../")


def output_problem(out: str) -> str | None:
    """What is wrong with a declared output (normalised, relative to the root), or None."""
    if globs.has_magic(out):
        return f"output '{out}' is a glob; outputs must be exact paths"
    if out == ".":
        return "output '.' is the project folder itself; outputs must lie inside it"
    if outside(out):
        return f"output '{out}' is outside the project folder; outputs must lie inside it"
    if in_state_dir(out):
        return f"output '{out}' is in {STATE_DIR}/, dagrun's own state"
    return None


def in_state_dir(path: str) -> bool:
    return path == STATE_DIR or path.startswith(STATE_DIR + "/")
