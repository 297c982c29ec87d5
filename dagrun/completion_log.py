"""The completion log: append-only, versioned, forgiving.

``.dagrun/log`` starts with a ``# dagrun log v1`` header, then one JSON record
per line, written only after a task exits 0:

    {"task": "cc", "key": "…", "duration": 0.12, "maxrss": 5120, "time": 1.7e9, "parts": {…}}
    {"forget": "cc"}                       # written by `dagrun clean`

A torn last line (a crash mid-write) is cut off; an unknown header means
"start over" (a lost log only costs a rebuild).  When dead records reach 3x
the live ones the log is rewritten.  Records are written with one write() each
and no fsync: a killed dagrun loses nothing the kernel has; a power cut may
lose the last records, which only means those tasks run again.

An index (keys done, each task's latest record offset and duration) is kept
in the state cache together with the log size it covers, so a no-op build
reads only what was appended since.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

HEADER = b"# dagrun log v1\n"
_RECORD = re.compile(rb'^\{"task":("(?:[^"\\]|\\.)*"),"key":"([0-9a-f]+)","duration":([-0-9.e+]+)')
_FORGET = re.compile(rb'^\{"forget":("(?:[^"\\]|\\.)*")\}$')


@dataclass
class LogIndex:
    """What the log says, without the parts: cheap to keep in the state cache."""

    ino: int = 0
    size: int = 0
    keys: dict[str, str] = field(default_factory=dict)  # key -> task
    latest: dict[str, tuple[str, int]] = field(default_factory=dict)  # task -> (key, offset)
    durations: dict[str, float] = field(default_factory=dict)
    records: int = 0

    def to_cache(self) -> tuple[Any, ...]:
        return (self.ino, self.size, self.keys, self.latest, self.durations, self.records)

    @classmethod
    def from_cache(cls, data: tuple[Any, ...]) -> LogIndex:
        ino, size, keys, latest, durations, records = data
        return cls(ino, size, keys, latest, durations, records)


class CompletionLog:
    """Keys of completed tasks, with the parts each key was made from."""

    def __init__(self, path: str, index: LogIndex | None = None) -> None:
        self.path = path
        self.index = LogIndex()
        self.warnings: list[str] = []
        self._fd = -1
        self._open(index)

    # -- reading

    def has(self, key: str) -> bool:
        return key in self.index.keys

    def duration(self, task: str) -> float | None:
        return self.index.durations.get(task)

    def latest(self, task: str) -> dict[str, Any] | None:
        """The last record written for ``task``, parsed; None if it never completed."""
        entry = self.index.latest.get(task)
        if entry is None:
            return None
        with open(self.path, "rb") as f:
            f.seek(entry[1])
            line = f.readline()
        try:
            record: dict[str, Any] = json.loads(line)
        except ValueError:
            return None
        return record

    # -- writing

    def append(
        self, task: str, key: str, parts: dict[str, Any], duration: float, maxrss: int, when: float
    ) -> None:
        record = {
            "task": task,
            "key": key,
            "duration": round(duration, 6),
            "maxrss": maxrss,
            "time": round(when, 3),
            "parts": parts,
        }
        self._write(task, key, duration, json.dumps(record, separators=(",", ":")))

    def forget(self, task: str) -> None:
        if task not in self.index.latest and task not in self.index.keys.values():
            return
        line = json.dumps({"forget": task}, separators=(",", ":"))
        self._write_line(line)
        self._forget(task)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def compact_if_needed(self) -> bool:
        live = len(self.index.latest)
        if self.index.records <= max(3 * live, 1000):
            return False
        self.compact()
        return True

    def compact(self) -> None:
        """Rewrite the log with only each task's latest record."""
        lines = []
        with open(self.path, "rb") as f:
            for _task, (_key, offset) in sorted(self.index.latest.items(), key=lambda kv: kv[1][1]):
                f.seek(offset)
                lines.append(f.readline())
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(HEADER)
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.close()
        self._open(None)

    # -- internals

    def _write(self, task: str, key: str, duration: float, line: str) -> None:
        offset = self._write_line(line)
        idx = self.index
        idx.keys[key] = task
        idx.latest[task] = (key, offset)
        idx.durations[task] = duration
        idx.records += 1

    def _write_line(self, line: str) -> int:
        data = line.encode("utf-8", "surrogateescape") + b"\n"
        offset = self.index.size
        n = os.write(self._fd, data)
        while n < len(data):  # pragma: no cover - short writes on a regular file are rare
            n += os.write(self._fd, data[n:])
        self.index.size += len(data)
        return offset

    def _forget(self, task: str) -> None:
        idx = self.index
        idx.latest.pop(task, None)
        idx.durations.pop(task, None)
        for k in [k for k, t in idx.keys.items() if t == task]:
            del idx.keys[k]
        idx.records += 1

    def _open(self, cached: LogIndex | None) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        st = os.fstat(fd)
        if st.st_size == 0:
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
            if os.pread(fd, len(HEADER), 0) != HEADER:
                self.warnings.append(f"{self.path}: unknown log format; starting over")
                os.ftruncate(fd, 0)
                os.write(fd, HEADER)
            else:
                self._load(fd, len(HEADER), st.st_size)
        os.lseek(fd, self.index.size, os.SEEK_SET)
        self._fd = fd

    def _load(self, fd: int, start: int, end: int) -> None:
        data = os.pread(fd, end - start, start)
        complete = data.rfind(b"\n") + 1
        if complete < len(data):  # a torn last record: cut it off before appending
            os.ftruncate(fd, start + complete)
            self.warnings.append(f"{self.path}: ignored a torn last record")
            data = data[:complete]
        offset = start
        idx = self.index
        for line in data.splitlines(keepends=True):
            self._index_line(line.rstrip(b"\n"), offset, idx)
            offset += len(line)
        idx.size = offset

    def _index_line(self, line: bytes, offset: int, idx: LogIndex) -> None:
        m = _RECORD.match(line)
        if m:
            task = json.loads(m.group(1))
            key = m.group(2).decode()
            idx.keys[key] = task
            idx.latest[task] = (key, offset)
            idx.durations[task] = float(m.group(3))
            idx.records += 1
            return
        m = _FORGET.match(line)
        if m:
            self._forget(json.loads(m.group(1)))
            return
        if line.strip():
            self.warnings.append(f"{self.path}: ignored a damaged record at byte {offset}")
