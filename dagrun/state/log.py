"""The completion log: append-only, versioned, checksummed, forgiving.

``.dagrun/log`` starts with a ``# dagrun log v2`` header, then one JSON record
per line; each ends with ``"crc"``, the zlib.crc32 (8 hex digits) of the line's
bytes before ``,"crc"`` (the state's one checksum: state/__init__.py):

    {"start":"cc","crc":"…"}               # before each attempt at running cc
    {"task":"cc","key":"…","duration":0.12,"outputs":[[size,ctime_ns,inode,kind],…],
     "fp":"…","seen":"…","digests":["…",…],"result":"…","upstream_fp":{…},
     "maxrss":5120,"time":1.7e9,"parts":{…},"crc":"…"}   # cc exited 0, its outputs exist
    {"forget":"cc","crc":"…"}              # written by `dagrun clean`

A task is done with key K only when its *latest* record is a success with key
K: a ``start`` record written before each attempt invalidates the task until
the attempt's success is recorded, so a failed, timed-out, interrupted or lost
attempt (even a ``kill -9`` of dagrun) leaves it to run again.  A success
records each declared output's identity (size, ctime_ns, inode, kind: 0 a
file, 1 a folder (inode only), 2 a symlink), so an output edited, replaced or
deleted since is seen (plan.py), and its content digest (``digests``), which
decides when the identity differs: a tree restored elsewhere, or an output
rewritten with the same bytes, is still what the run left (outputs.py).

``fp`` (the fingerprint of what the run made: its outputs' digests and, for a
function task, its result's digest; for a task that makes nothing, its
``seen``) and ``seen`` (the fingerprints of its dependencies when it ran,
combined; ``upstream_fp`` has them one by one) let a task rerun when a
dependency's output changed although that dependency's key did not (a
forced, cleaned or ``always`` rerun of a non-deterministic producer).

A record whose checksum does not match is skipped with a warning, never half
trusted; a torn last line (a crash mid-write) is cut off; an unknown header
means "start over" (a lost log only costs a rebuild).  A write that fails
(disk full) is cut off again and raises OSError.  When dead records reach 3x
the live ones the log is rewritten.  Records are written with one write()
each and no fsync: a killed dagrun loses nothing the kernel has; a power cut
may lose the last records, which the output identities mostly catch, and
otherwise only means those tasks run again.

An index (each task's latest success: key, offset, output identities; the
tasks whose last attempt did not succeed; durations) is kept in the state
cache together with the log size it covers, so a no-op build reads only what
was appended since.  ``writable=False`` opens the log read-only (a read-only
``.dagrun``): nothing is cut or rewritten, appends fail.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import LogError
from ..regular import open_regular
from ..regular import unlink_quietly as _unlink
from . import seal_line
from . import unseal_line as checked

HEADER = b"# dagrun log v2\n"
_OLD_HEADER = b"# dagrun log v1\n"
_RECORD = re.compile(
    rb'^\{"task":("(?:[^"\\]|\\.)*"),"key":"([0-9a-f]+)","duration":([-0-9.e+]+),'
    rb'"outputs":(\[(?:\[[-0-9,]*\],?)*\])'
    rb'(?:,"fp":"([0-9a-f]*)","seen":"([0-9a-f]*)"(?:,"result":"([0-9a-f]*)")?)?'
)
_OTHER = re.compile(rb'^\{"(start|forget)":("(?:[^"\\]|\\.)*")$')

Identity = tuple[int, int, int, int]  # size, ctime_ns, inode, kind (0 file, 1 folder, 2 symlink)
# a task's latest success: key, offset, output identities, fp, seen (None: an older record),
# and its result's digest (a function task; "" otherwise)
Entry = tuple[str, int, tuple[Identity, ...], "str | None", "str | None", str]


@dataclass
class LogIndex:
    """What the log says, without the parts: cheap to keep in the state cache."""

    ino: int = 0
    size: int = 0
    # task -> (key, offset, output identities, fp, seen, result) of its latest successful run
    latest: dict[str, Entry] = field(default_factory=dict)
    unfinished: set[str] = field(default_factory=set)  # tasks whose last attempt did not succeed
    durations: dict[str, float] = field(default_factory=dict)
    records: int = 0

    def to_cache(self) -> tuple[Any, ...]:
        return (self.ino, self.size, self.latest, self.unfinished, self.durations, self.records)

    @classmethod
    def from_cache(cls, data: Any) -> LogIndex | None:
        """The index a state cache holds, or None when it is not one."""
        try:
            ino, size, latest, unfinished, durations, records = data
        except (TypeError, ValueError):
            return None
        shapes = ((ino, int), (size, int), (latest, dict), (unfinished, set))
        if not all(isinstance(v, t) for v, t in shapes) or not isinstance(durations, dict):
            return None
        return cls(ino, size, latest, unfinished, durations, records)


@dataclass(frozen=True)
class Made:
    """What a successful run made, beside its outputs' identities (see the module's doc)."""

    fp: str
    seen: str
    digests: tuple[str, ...] = ()
    result: str = ""
    upstream: dict[str, str] = field(default_factory=dict)  # dependency -> its fp
    restored: bool = False  # from the shared cache (cache/): it did not run here

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fp": self.fp, "seen": self.seen}
        if self.result:
            out["result"] = self.result
        out["digests"] = list(self.digests)
        if self.upstream:
            out["upstream_fp"] = self.upstream
        if self.restored:
            out["restored"] = True
        return out


def record_line(record: dict[str, Any]) -> bytes:
    """One log line: the record's JSON with its checksum as the last field (state/__init__.py)."""
    return seal_line(json.dumps(record, separators=(",", ":"))[:-1].encode())


class CompletionLog:
    """Each task's latest successful run, with the parts its key was made from."""

    def __init__(self, path: str, index: LogIndex | None = None, *, writable: bool = True) -> None:
        self.path = path
        self.index = LogIndex()
        self.warnings: list[str] = []
        self.writable = writable
        self._fd = -1
        self._open(index)

    # -- reading

    def success(self, task: str) -> tuple[str, Sequence[Identity]] | None:
        """(key, output identities) of the task's latest successful run; None if none."""
        entry = self.index.latest.get(task)
        return None if entry is None else (entry[0], entry[2])

    def fingerprint(self, task: str) -> str | None:
        """``fp`` of the task's latest successful run (None: none, or an older record)."""
        entry = self.index.latest.get(task)
        return None if entry is None else entry[3]

    def result(self, task: str) -> str:
        """The digest of the result its latest successful run left ("": none on record)."""
        entry = self.index.latest.get(task)
        return "" if entry is None else entry[5]

    def seen(self, task: str) -> str | None:
        """``seen`` of the task's latest successful run (None: none, or an older record)."""
        entry = self.index.latest.get(task)
        return None if entry is None else entry[4]

    def unfinished(self, task: str) -> bool:
        """True when an attempt at the task started after its latest success and did not succeed."""
        return task in self.index.unfinished

    def done(self, task: str, key: str) -> bool:
        """The task's latest record is a success with this key."""
        entry = self.index.latest.get(task)
        return entry is not None and entry[0] == key and task not in self.index.unfinished

    def duration(self, task: str) -> float | None:
        return self.index.durations.get(task)

    def latest(self, task: str) -> dict[str, Any] | None:
        """The task's latest success record, parsed; None if it never completed."""
        entry = self.index.latest.get(task)
        if entry is None:
            return None
        with open(self.path, "rb") as f:
            f.seek(entry[1])
            body = checked(f.readline().rstrip(b"\n"))
        if body is None:
            return None
        try:
            record: dict[str, Any] = json.loads(body + b"}")
        except ValueError:
            return None
        return record

    # -- writing

    def started(self, task: str) -> None:
        """Invalidate the task's record before an attempt at it (written once after a success)."""
        if task in self.index.unfinished:
            return
        self._write_line(record_line({"start": task}))
        self.index.unfinished.add(task)
        self.index.records += 1

    def append(
        self,
        task: str,
        key: str,
        parts: dict[str, Any],
        duration: float,
        maxrss: int,
        when: float,
        outputs: Sequence[Identity] = (),
        made: Made | None = None,
    ) -> None:
        record: dict[str, Any] = {
            "task": task,
            "key": key,
            "duration": round(duration, 6),
            "outputs": [list(o) for o in outputs],
        }
        if made is not None:
            record |= made.fields()
        record |= {"maxrss": maxrss, "time": round(when, 3), "parts": parts}
        self._add(task, key, record, outputs, duration)

    def refresh(self, task: str, outputs: Sequence[Identity]) -> bool:
        """Record the task's latest success again with its outputs' identities as they are now
        (their digests vouched that they are what the run left); False if there is none."""
        record = self.latest(task)
        if record is None or task in self.index.unfinished:
            return False
        record["outputs"] = [list(o) for o in outputs]
        self._add(task, record["key"], record, outputs, float(record.get("duration", 0.0)))
        return True

    def _add(
        self, task: str, key: str, record: dict[str, Any], outputs: Sequence[Identity],
        duration: float,
    ) -> None:
        offset = self._write_line(record_line(record))
        idx = self.index
        fp, seen, result = record.get("fp"), record.get("seen"), record.get("result", "")
        ids = tuple((o[0], o[1], o[2], o[3]) for o in outputs)
        idx.latest[task] = (key, offset, ids, fp, seen, result)
        idx.unfinished.discard(task)
        idx.durations[task] = duration
        idx.records += 1

    def forget(self, task: str) -> None:
        if task not in self.index.latest and task not in self.index.unfinished:
            return
        self._write_line(record_line({"forget": task}))
        self._forget(task)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def compact_if_needed(self) -> bool:
        live = len(self.index.latest) + len(self.index.unfinished)
        if not self.writable or self.index.records <= max(3 * live, 1000):
            return False
        self.compact()
        return True

    def compact(self) -> None:
        """Rewrite the log with each task's latest success, then a start for each unfinished one."""
        lines = []
        with open(self.path, "rb") as f:
            for entry in sorted(self.index.latest.values(), key=lambda e: e[1]):
                f.seek(entry[1])
                lines.append(f.readline())
        lines += [record_line({"start": t}) for t in sorted(self.index.unfinished)]
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(HEADER)
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError:
            _unlink(tmp)
            raise
        self.close()
        self._open(None)

    # -- internals

    def _write_line(self, data: bytes) -> int:
        """Append one line at the end of what the index covers; on failure cut it off again."""
        offset = self.index.size
        try:
            n = os.write(self._fd, data)
            while n < len(data):  # a short write: the disk is full, the next write says so
                n += os.write(self._fd, data[n:])
        except OSError:
            try:
                os.ftruncate(self._fd, offset)
                os.lseek(self._fd, offset, os.SEEK_SET)
            except OSError:
                pass
            raise
        self.index.size += len(data)
        return offset

    def _forget(self, task: str) -> None:
        idx = self.index
        idx.latest.pop(task, None)
        idx.unfinished.discard(task)
        idx.durations.pop(task, None)
        idx.records += 1

    def _open(self, cached: LogIndex | None) -> None:
        if not self.writable:
            self._open_read_only(cached)
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = _open_log(self.path, os.O_RDWR | os.O_CREAT)
        try:
            self._read(fd, os.fstat(fd), cached)
        except BaseException:
            os.close(fd)
            raise
        os.lseek(fd, self.index.size, os.SEEK_SET)
        self._fd = fd

    def _open_read_only(self, cached: LogIndex | None) -> None:
        try:
            fd = _open_log(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            self._read(fd, os.fstat(fd), cached)
        finally:
            os.close(fd)

    def _read(self, fd: int, st: os.stat_result, cached: LogIndex | None) -> None:
        if st.st_size == 0:
            if self.writable:
                os.write(fd, HEADER)
            self.index = LogIndex(ino=st.st_ino, size=len(HEADER))
        elif cached is not None and cached.ino == st.st_ino and cached.size == st.st_size:
            self.index = cached  # nothing appended since the cache was written
        elif (
            cached is not None
            and cached.ino == st.st_ino
            and len(HEADER) <= cached.size < st.st_size
        ):
            self.index = cached
            self._load(fd, cached.size, st.st_size)
        else:
            self.index = LogIndex(ino=st.st_ino, size=len(HEADER))
            header = os.pread(fd, len(HEADER), 0)
            if header == HEADER:
                self._load(fd, len(HEADER), st.st_size)
                return
            old = " written by an older dagrun" if header == _OLD_HEADER else ""
            self.warnings.append(f"{self.path}: unknown log format{old}; starting over")
            if self.writable:
                os.ftruncate(fd, 0)
                os.write(fd, HEADER)

    def _load(self, fd: int, start: int, end: int) -> None:
        data = os.pread(fd, end - start, start)
        complete = data.rfind(b"\n") + 1
        if complete < len(data):  # a torn last record: cut it off before appending
            if self.writable:
                os.ftruncate(fd, start + complete)
            self.warnings.append(f"{self.path}: ignored a torn last record")
            data = data[:complete]
        offset = start
        for line in data.splitlines(keepends=True):
            self._index_line(line.rstrip(b"\n"), offset)
            offset += len(line)
        self.index.size = offset

    def _index_line(self, line: bytes, offset: int) -> None:
        body = checked(line)
        m = _RECORD.match(body) if body is not None else None
        if m:
            outputs = _identities(m.group(4))
            if outputs is not None:
                task = json.loads(m.group(1))
                idx = self.index
                fp, seen, result = m.group(5), m.group(6), m.group(7)
                idx.latest[task] = (
                    m.group(2).decode(), offset, outputs,
                    None if fp is None else fp.decode(), None if seen is None else seen.decode(),
                    "" if result is None else result.decode(),
                )
                idx.unfinished.discard(task)
                idx.durations[task] = float(m.group(3))
                idx.records += 1
                return
        m = _OTHER.match(body) if body is not None else None
        if m:
            task = json.loads(m.group(2))
            if m.group(1) == b"forget":
                self._forget(task)
            else:
                self.index.unfinished.add(task)
                self.index.records += 1
            return
        if line.strip():
            self.warnings.append(f"{self.path}: ignored a damaged record at byte {offset}")


def _identities(text: bytes) -> tuple[Identity, ...] | None:
    try:
        items = json.loads(text)
    except ValueError:
        return None
    if not all(len(o) == 4 and all(type(x) is int for x in o) for o in items):
        return None
    return tuple((o[0], o[1], o[2], o[3]) for o in items)



def _open_log(path: str, flags: int) -> int:
    """The log's descriptor; a log that is not a regular file (a FIFO) is a LogError."""
    try:
        return open_regular(path, flags)
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        raise LogError(
            f"{path} {exc.strerror}: remove it (deleting .dagrun/ is always safe)"
        ) from exc


def recorded_digests(log: CompletionLog, task: str) -> dict[str, str]:
    """Output -> the content digest the latest success of ``task`` recorded (none for a record
    older than digests, and none for an output whose digest was not taken)."""
    record = log.latest(task) or {}
    parts, digests = record.get("parts"), record.get("digests")
    names = parts.get("outputs") if isinstance(parts, dict) else None
    if not isinstance(names, list) or not isinstance(digests, list):
        return {}
    return {n: d for n, d in zip(names, digests, strict=False) if isinstance(n, str) and d}
