"""A task's entry in the shared cache: what its run made, by sha256, under a name from its key.

The entry's name is sha256 over the task's key (hashing.py: no absolute path, no
machine name), the OS and CPU architecture, and what its dependencies made (their
fingerprints, outputs.py): a key is the same on every machine for the same
sources, an object file built on one architecture is no use on another, and a
dependency that made other bytes under the same key (a download, a timestamp)
must not restore what was made from the old ones.  sha256 because the layout is
bazel-remote's (``cas/<sha256>``), whose servers check it; the entry's name is a
sha256 too, so such a server takes it.

The entry is JSON: the format, the task's name (for people reading the store;
it is not trusted), and per declared output (in the manifest's order) its
sha256, size and mode; the sha256 and size of the run's stdout, stderr and, for
a function task, its result.  A blob of at most INLINE bytes is held in the
entry itself (base64), as Bazel's ActionResult inlines small outputs: one file
or request per task instead of two or more, for the many small outputs of a
big build (a file's creation costs ~130 us on our disks).  It is checked by its
sha256 all the same.  Nothing in it names a path to write: outputs are
written where the manifest says, never where the store says.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import sys
from typing import Any, NamedTuple

FORMAT = "dagrun-cache/1"
INLINE = 4096  # bytes: a blob this small is held in its entry


class Blob(NamedTuple):
    sha256: str
    size: int
    data: bytes | None = None  # held in the entry (small), else in cas/<sha256>


class Output(NamedTuple):
    path: str  # as the manifest declares it (checked against it, never used to write)
    sha256: str
    size: int
    mode: int  # permission bits (0o755, 0o644)
    data: bytes | None = None

    @property
    def blob(self) -> Blob:
        return Blob(self.sha256, self.size, self.data)


class Entry(NamedTuple):
    task: str
    outputs: tuple[Output, ...]
    stdout: Blob | None = None
    stderr: Blob | None = None
    result: Blob | None = None  # a function task's pickled result
    duration: float = 0.0  # how long the run that made it took
    # a task with a depfile: the files it listed, with their digests (hashing.py's), and the
    # depfile itself; the entry holds only where each of them is what it was
    found: tuple[tuple[str, str], ...] = ()
    depfile: Blob | None = None

    def blobs(self) -> list[Blob]:
        out = [o.blob for o in self.outputs]
        out += [b for b in (self.stdout, self.stderr, self.result, self.depfile) if b is not None]
        return out

    def encode(self) -> bytes:
        def blob(b: Blob | None) -> list[Any] | None:
            return None if b is None else [b.sha256, b.size, *_inline(b.data)]

        doc = {
            "format": FORMAT, "task": self.task,
            "outputs": [[o.path, o.sha256, o.size, o.mode, *_inline(o.data)]
                        for o in self.outputs],
            "stdout": blob(self.stdout), "stderr": blob(self.stderr), "result": blob(self.result),
            "duration": round(self.duration, 3),
        }
        if self.depfile is not None:
            doc["found"] = [list(f) for f in self.found]
            doc["depfile"] = blob(self.depfile)
        return json.dumps(doc, separators=(",", ":")).encode()


def decode(data: bytes) -> Entry | None:
    """The entry in ``data``; None for anything that is not one (damaged, another format)."""
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            return None
        outputs = tuple(_output(o) for o in doc["outputs"])
        found = tuple(_found(f) for f in doc.get("found", ()))
        return Entry(
            str(doc["task"]), outputs, _blob(doc["stdout"]), _blob(doc["stderr"]),
            _blob(doc["result"]), float(doc.get("duration") or 0.0), found,
            _blob(doc.get("depfile")),
        )
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        return None


def _inline(data: bytes | None) -> list[str]:
    return [] if data is None else [base64.b64encode(data).decode()]


def _data(v: list[Any]) -> bytes | None:
    """An inlined blob's bytes (ValueError if it is not base64), None when not inlined."""
    if not v:
        return None
    if len(v) != 1 or not isinstance(v[0], str):
        raise ValueError("not inlined data")
    return base64.b64decode(v[0], validate=True)


def _blob(v: Any) -> Blob | None:
    if v is None:
        return None
    sha, size, *data = v
    return Blob(_sha(sha), _size(size), _data(data))


def _output(v: Any) -> Output:
    path, sha, size, mode, *data = v
    if not isinstance(path, str) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError("not an output")
    return Output(path, _sha(sha), _size(size), mode, _data(data))


def _found(v: Any) -> tuple[str, str]:
    path, digest = v
    if not isinstance(path, str) or not isinstance(digest, str):
        raise ValueError("not a file and its digest")
    return path, digest


def _sha(v: Any) -> str:
    if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise ValueError("not a sha256")
    return v


def _size(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError("not a size")
    return v


def platform_tag() -> str:
    """The OS and CPU architecture an entry was made on (``linux-x86_64``)."""
    return f"{sys.platform}-{os.uname().machine}"


def entry_name(key: str, seen: str = "") -> str:
    """The entry's name in ``ac/``: sha256 over the format, the task's key, the platform and
    ``seen`` (its dependencies' fingerprints, combined: outputs.combine)."""
    text = f"{FORMAT}\0{key}\0{platform_tag()}\0{seen}"
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_bytes(data: bytes) -> Blob:
    """The blob of ``data``, held inline when it is small."""
    return Blob(hashlib.sha256(data).hexdigest(), len(data), data if len(data) <= INLINE else None)
