"""A task's run folder, ``.dagrun/runs/<task>/``: written one way, whatever executor ran the task.

    command.txt   the command; an empty line; ``# task: NAME``; ``# cwd: FOLDER`` (where
                  it ran, on the machine that ran it); for an executor other than the
                  local one ``# executor: NAME (TYPE[, WHERE])``; then what else says
                  where it ran (``# argv:``, ``# cores:``, ``# host:``, ``# worker:``, ...)
    stdout.txt    all of what the run wrote (an Outcome keeps at most MAX_SHOWN bytes)
    stderr.txt

The folder is kept only when the run printed something or failed (``kept``): a
silent success leaves no folder, and removes its previous run's, which would no
longer be true.  How the output gets there differs by executor, the rule does
not: the local executor writes into unnamed files and names them only when kept
(``settle(..., streams=(out, err))``); SSH, Slurm and function tasks write into
the folder as they run (``written=True``); the HTTP and Dask executors get the
output in the outcome and write it at the end.  A run folder that cannot be
written fails its task, with why (``Outcome.failed``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

MAX_SHOWN = 1 << 20  # bytes of a stream kept in an Outcome; the file has all of it
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+@\[\]-]")
_LONGEST = 120  # characters of a task name kept in its run folder's name


class Job(Protocol):
    """What a run folder needs of a job (``executors.Job``; not imported: the executors import
    this module)."""

    @property
    def cmd(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def run_dir(self) -> str: ...
    @property
    def local_cwd(self) -> str: ...


_Outcome = TypeVar("_Outcome", bound="Outcome")


class Outcome(Protocol):
    """What a run folder needs of how a job ended (``executors.Outcome``)."""

    @property
    def stdout(self) -> str: ...
    @property
    def stderr(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def error(self) -> str | None: ...
    def failed(self: _Outcome, error: str) -> _Outcome: ...


def run_dir_name(task: str) -> str:
    """A file-system-safe folder name for a task, unique per task name."""
    safe = _UNSAFE.sub("_", task)
    if safe != task or safe in (".", "..") or len(safe) > _LONGEST:
        import zlib

        crc = zlib.crc32(task.encode(errors="surrogateescape"))
        safe = f"{safe[:_LONGEST]}-{crc:08x}"  # names are at most 255 bytes
    return safe


def command_text(job: Job, details: Iterable[str] = (), *, cwd: str | None = None,
                 first: str | None = None) -> str:
    """command.txt: ``first`` (the command), then the task, the cwd and ``details`` lines."""
    lines = [job.cmd if first is None else first, "", f"# task: {job.task}",
             f"# cwd: {job.local_cwd if cwd is None else cwd}"]
    lines.extend(f"# {line}" for line in details)
    return "\n".join(lines) + "\n"


def kept(outcome: Outcome) -> bool:
    """Whether a run keeps its folder: it printed something or failed."""
    return bool(outcome.stdout or outcome.stderr) or not outcome.ok or outcome.error is not None


def settle(
    job: Job, outcome: _Outcome, describe: Callable[[], str] | None, *,
    streams: tuple[int, int] | None = None, written: bool = False,
) -> _Outcome:
    """A run ended: keep its folder (command.txt from ``describe()``, or there already when
    None; stdout.txt and stderr.txt linked from ``streams``, already ``written`` there, or else
    written from the outcome) or remove it.  The outcome, or a failure saying why the folder
    could not be kept."""
    if not kept(outcome):
        remove(job.run_dir)
        return outcome
    run = job.run_dir + "/"  # plain concatenation and os.open: this runs once per task
    name = run + "command.txt"
    try:
        make_dir(job.run_dir)
        if describe is not None:
            write_text(name, describe())
        if streams is not None:
            for fd, name in ((streams[0], run + "stdout.txt"), (streams[1], run + "stderr.txt")):
                link_fd(fd, name)
        elif not written:
            for text, name in ((outcome.stdout, run + "stdout.txt"),
                               (outcome.stderr, run + "stderr.txt")):
                write_text(name, text)
    except OSError as exc:
        return outcome.failed(reason(f"cannot write {name}", exc))
    return outcome


def remove(run_dir: str) -> None:
    """A previous run's files, which no longer tell what the task printed (one stat if none)."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(run_dir, name))
        except OSError:
            pass
    try:
        os.rmdir(run_dir)
    except OSError:
        pass


def reason(what: str, exc: OSError) -> str:
    """``what`` failed, and why, in words a user can act on."""
    why = exc.strerror or str(exc)
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        why = "a file is in the way of a folder"
    return f"{what}: {why}"


def make_dir(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)`` in one system call when the parent exists."""
    try:
        os.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)


def write_text(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        data = text.encode("utf-8", "surrogateescape")  # a file name need not be UTF-8
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


def link_fd(fd: int, path: str) -> None:
    """Give the unnamed file open at fd the name path (replacing a previous run's file)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    try:
        os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)
        return
    except OSError:
        pass  # no /proc: copy it
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        size, offset = os.fstat(fd).st_size, 0
        while offset < size:
            sent = os.sendfile(out, fd, offset, size - offset)
            if sent == 0:
                break
            offset += sent
    finally:
        os.close(out)


def read_back(fd: int) -> str:
    """What a stream's file holds, at most MAX_SHOWN bytes of it (and a note if cut)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return ""
    data = os.pread(fd, min(size, MAX_SHOWN), 0)
    text = data.decode("utf-8", "replace")
    if size > MAX_SHOWN:
        text += (
            f"\n[dagrun: output cut at {MAX_SHOWN} of {size} bytes; the run folder has all of it]\n"
        )
    return text


def read_file(path: str) -> str:
    """``read_back`` of a named file; "" when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        return read_back(fd)
    finally:
        os.close(fd)
