"""The no-op fast path, asked from the command line: prove that nothing needs to run, and say so.

Both the ``dagrun`` entry point (before the CLI is imported) and ``cli.cmd_build``
(when the entry could not ask: ``python -m dagrun.cli``, tests calling
``cli.main``) ask ``answer_noop``.  The proof itself is dagrun/fresh.py; the
manifest is found as the CLI finds it (dagrun/locate.py: upward from the folder).
Only ``os`` and ``sys`` are imported up front.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any


def answer_noop(directory: str, file: str | None, targets: Sequence[str]) -> Any:
    """The no-op fast path (dagrun/fresh.py): the exit status (int) when it proved, and said,
    that nothing needs to run; else the fresh.Delta of what changed since the proof, for the
    build to start from, or None when the full build must decide."""
    from .locate import find

    path = find(directory, file)
    if path is None or (targets and not _at_root(path, directory)):
        return None  # a target path from a subfolder is relative to it: the proof's are not
    from .fresh import examine, no_work_line

    found = examine(path, targets, os.environ)
    return _say(no_work_line(found) + "\n") if isinstance(found, int) else found


def _at_root(manifest: str, directory: str) -> bool:
    """Whether ``directory`` is the manifest's folder."""
    return os.path.dirname(os.path.abspath(manifest)) == os.path.abspath(directory)


def _say(line: str) -> int:
    try:
        sys.stdout.write(line)
        sys.stdout.flush()
    except OSError as exc:  # as cli.main: a closed pipe exits 1; a full disk is an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        if isinstance(exc, BrokenPipeError):
            return 1
        sys.stderr.write(f"dagrun: error: cannot write to stdout: {exc.strerror or exc}\n")
        return 2
    return 0
