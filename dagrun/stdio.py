"""The standard streams at the edge: never closed, and a report that cannot be written is a
clear error, not a traceback.

``dagrun >&-`` starts with descriptor 1 closed: the first file dagrun opened would take it
(and a stray write to stdout land in it).  ``reopen_closed`` puts ``/dev/null`` there first,
and the build runs to its end, its report unseen.  ``dagrun > /dev/full`` fails on its first
write: ``Guarded`` turns that into an ``OutputError`` (exit 2, one line on stderr), and a
reader that went away (``dagrun build | head``) into the ``BrokenPipeError`` cli.py handles
(exit 1, quietly, as before).  Either way descriptor 1 then points at ``/dev/null``, so the
text still buffered, and whatever the build's teardown prints, goes nowhere.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

from .errors import DagrunError


class OutputError(DagrunError):
    """The report could not be written to stdout (a full disk, an I/O error)."""


def reopen_closed() -> None:
    """``/dev/null`` on each of descriptors 0, 1 and 2 that is closed; sys.stdin/out/err too."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: usually fd
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        if getattr(sys, name) is None:  # Python found the descriptor closed at start
            setattr(sys, name, open(fd, mode, closefd=False, errors="backslashreplace"))


class Guarded:
    """A text stream (sys.stdout) whose failed write becomes OutputError or BrokenPipeError."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except OSError as exc:
            raise self._failed(exc) from exc

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: OSError) -> Exception:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
            self._stream.flush()  # what is still buffered: into /dev/null
        except (OSError, ValueError):
            pass
        if exc.errno == errno.EPIPE:
            return BrokenPipeError(exc.errno, exc.strerror)
        return OutputError(f"cannot write to stdout: {exc.strerror or exc}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_stdout() -> None:
    """Wrap sys.stdout in Guarded (once); a file name that is not UTF-8 is written as its
    bytes (as ``ls`` or ``echo`` would), not a UnicodeEncodeError, whatever the locale."""
    if isinstance(sys.stdout, Guarded):
        return
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        try:
            sys.stdout.reconfigure(errors="surrogateescape")
        except (OSError, ValueError):
            pass
    sys.stdout = Guarded(sys.stdout)
