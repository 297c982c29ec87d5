"""dagrun's state on disk: everything it keeps lives in ``.dagrun/`` beside the manifest.

    lock            lock.py       one flock: a build, ``clean``, ``touch`` and the no-op check
    log             log.py        the completion log: the journal of what ran, and why
    cache           cache.py      compiled graph, stat cache, keys, the log's index
    cache.journal   cache.py      what partial builds changed in the cache since it was written
    fresh           proof.py      the no-op proof: what the last build's decisions rest on
    runs/           runs.py       a task's command and output (kept when it printed or failed)

One integrity format, here: every state file carries the zlib.crc32 of the bytes
it covers.  A binary file (the cache, its journal, the no-op proof) ends with four
little-endian bytes, the crc32 of everything before them (``write_sealed`` and
``Sealer`` write it, ``unseal`` checks it); the completion log, read line by line,
ends each line with the same crc32 of the line's bytes before it, as a last JSON
field (``seal_line``, ``unseal_line``).  What does not match is not used: at worst,
everything is checked again.  Deleting ``.dagrun/`` is always safe.  This module,
``lock`` and ``proof`` import only the standard library's smallest modules: the
no-op check runs before anything else.
"""

from __future__ import annotations

import os
import zlib

STATE_DIR = ".dagrun"  # beside the manifest; never an input, never removed by `clean`
TRAILER = 4  # bytes: a binary file's crc32, little-endian
LINE_TAIL = len(b',"crc":"00000000"}')
_HEX = b"0123456789abcdef"


def unseal(raw: bytes) -> memoryview | None:
    """The bytes a sealed file holds before its crc32; None when it does not match."""
    body = memoryview(raw)[:-TRAILER]
    if len(raw) < TRAILER or zlib.crc32(body) != int.from_bytes(raw[-TRAILER:], "little"):
        return None
    return body


class Sealer:
    """Writes blobs to ``f`` one after the other, then (``close``) their crc32."""

    __slots__ = ("f", "crc")

    def __init__(self, f: object) -> None:
        self.f = f
        self.crc = 0

    def write(self, blob: bytes | memoryview) -> None:
        self.f.write(blob)  # type: ignore[attr-defined]
        self.crc = zlib.crc32(blob, self.crc)

    def close(self) -> None:
        self.f.write(self.crc.to_bytes(TRAILER, "little"))  # type: ignore[attr-defined]


def write_sealed(path: str, blob: bytes) -> None:
    """Write ``blob`` and its crc32 to ``path`` whole or not at all (a temporary file,
    renamed; removed on failure).  ``unseal`` reads it back.

    The old file is removed before the rename.  A rename over an existing file makes ext4
    (``auto_da_alloc``) write the new file's blocks out at once: ~0.3 ms, twice in every
    build (the proof, the cache journal), against ~15 us this way.  What that flush buys, a
    file never seen empty after a power cut, the seal already gives: a torn or missing file
    is no proof and no journal, which costs time, never a wrong answer; and nothing reads
    them without the build lock the writer holds."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            sealer = Sealer(f)
            sealer.write(blob)  # no copy of the blob
            sealer.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def seal_line(body: bytes) -> bytes:
    """A log line: ``body`` (a JSON object without its closing brace), its crc32, a newline."""
    return body + b',"crc":"%08x"}\n' % zlib.crc32(body)


def unseal_line(line: bytes) -> bytes | None:
    """A log line's body (its JSON without the crc field and closing brace); None if the
    checksum does not match."""
    if len(line) <= LINE_TAIL or line[-LINE_TAIL:-10] != b',"crc":"' or line[-2:] != b'"}':
        return None
    digits = line[-10:-2]
    if digits.strip(_HEX):  # 8 lowercase hex digits, nothing else
        return None
    body = line[:-LINE_TAIL]
    return body if zlib.crc32(body) == int(digits, 16) else None
