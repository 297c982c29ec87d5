"""The exception tree of dagrun.

    DagrunError                 anything dagrun reports to the user (exit status 2 unless noted)
     +-- ManifestError          a bad dagrun.toml: file, task, key and line where known
     +-- GraphError             a well-formed manifest that cannot be built
     |    +-- CycleError        a dependency cycle, shown as a path: a -> b -> a
     |    +-- UnknownTargetError  a target or dependency that names nothing
     +-- LogError               the state in .dagrun/ cannot be used (locked, unwritable)
     +-- ExecutorError          an executor could not start or lost its backend

A failed task is not an exception: it is an Outcome (see scheduler.py).
Foreign errors (OSError, TOML, SSH, HTTP) are translated at the boundary
with ``raise ... from exc``.
"""

from __future__ import annotations


class DagrunError(Exception):
    """Base of every error dagrun reports; ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class ManifestError(DagrunError):
    """The manifest is malformed or inconsistent."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        task: str | None = None,
        key: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.task = task
        self.key = key
        self.line = line
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        where = self.source or "<manifest>"
        if self.line is not None:
            where += f":{self.line}"
        parts = []
        if self.task is not None:
            parts.append(f"task '{self.task}'")
        if self.key is not None:
            parts.append(f"key '{self.key}'")
        pieces = [where, ", ".join(parts), self.message] if parts else [where, self.message]
        text = ": ".join(pieces)
        if self.hint:
            text += f" ({self.hint})"
        return text


class GraphError(DagrunError):
    """The tasks cannot form a buildable graph."""


class CycleError(GraphError):
    """A dependency cycle; ``cycle`` lists the task names, first repeated last."""

    def __init__(
        self, cycle: list[str], source: str | None = None, links: tuple[str, ...] = ()
    ) -> None:
        self.cycle = cycle
        self.links = links  # how each task needs the next, when a file makes the link
        where = f"{source}: " if source else ""
        how = "".join(f"; {link}" for link in links)
        super().__init__(f"{where}dependency cycle: {' -> '.join(cycle)}{how}")


class UnknownTargetError(GraphError):
    """A target names no task, matrix group, task glob or declared output."""


class LogError(DagrunError):
    """dagrun's state directory cannot be used."""


class DepfileError(DagrunError):
    """A task's depfile is missing or cannot be parsed (after the task exited 0)."""


class ExecutorError(DagrunError):
    """An executor cannot run jobs (its backend is unreachable or misconfigured)."""


class Interrupted(DagrunError):
    """The build was interrupted by Ctrl-C or SIGTERM; ``result`` says what got done."""

    exit_code = 130

    def __init__(self, message: str = "interrupted", result: object = None) -> None:
        super().__init__(message)
        self.result = result
