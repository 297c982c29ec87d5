"""One task's upload: its blobs first, its entry last (so an entry never names a missing blob).

Runs in an upload thread, after the task's success was recorded.  Each output
is read once: its sha256 (the store's name for it) and its blake3 digest are
taken together, and the digest must be the one the ledger recorded when the
task ended: an output changed since (a later task, the user) is not sent, nor
is the entry.  Blobs the store has already are not sent again.
"""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..digest import DIGEST_BYTES, _hasher, digest_bytes
from .entry import INLINE, Blob, Entry, Output, sha256_bytes
from .store import CHUNK, Store

if TYPE_CHECKING:
    from . import Upload

SMALL = 8 << 20  # an output up to this size is sent from memory, read once


class Uploader:
    """``threads`` daemon threads sending queued uploads (``work(job)``), in order of arrival.

    A plain queue rather than an executor: no Future per task (a 10k-task build queues 10k
    uploads), and a busy thread takes the next one without a wake-up.
    """

    def __init__(self, threads: int, work: Callable[[Upload], None]) -> None:
        self.work = work
        self.queue: queue.SimpleQueue[Upload | None] = queue.SimpleQueue()
        self.dropped = False
        self.threads = [
            threading.Thread(target=self._run, name=f"dagrun-cache-put-{n}", daemon=True)
            for n in range(threads)
        ]
        for t in self.threads:
            t.start()

    def put(self, job: Upload) -> None:
        self.queue.put(job)

    def _run(self) -> None:
        while (job := self.queue.get()) is not None:
            if not self.dropped:
                self.work(job)

    def close(self, *, wait: bool = True) -> None:
        """Wait for every queued upload; ``wait=False``: drop those not started."""
        self.dropped = not wait
        for _ in self.threads:
            self.queue.put(None)
        if wait:
            for t in self.threads:
                t.join()


def send(store: Store, root: str, job: Upload) -> bool:
    """Send the task's blobs and entry; False when it is not sent (an output changed since
    its run, or is not a file)."""
    outputs = []
    for path, recorded in zip(job.outputs, job.digests, strict=True):
        out = _output(store, os.path.join(root, path), path, recorded)
        if out is None:
            return False
        outputs.append(out)
    printed = [_text(store, job.stdout), _text(store, job.stderr)]
    result = None
    if job.result:
        with open(job.result, "rb") as f:
            data = f.read()
        if digest_bytes(data) != job.result_digest:
            return False
        result = _put(store, data)
    depfile = None
    if job.depfile:
        with open(os.path.join(root, job.depfile), "rb") as f:
            depfile = _put(store, f.read())
    made = Entry(job.task, tuple(outputs), printed[0], printed[1], result, job.duration,
                 job.found, depfile)
    store.put("ac", job.name, made.encode())
    return True


def _text(store: Store, text: str) -> Blob | None:
    return _put(store, text.encode("utf-8", "surrogateescape")) if text else None


def _put(store: Store, data: bytes) -> Blob:
    blob = sha256_bytes(data)
    if blob.data is None and not store.has("cas", blob.sha256):
        store.put("cas", blob.sha256, data)
    return blob


def _output(store: Store, full: str, path: str, recorded: str) -> Output | None:
    """Send one output file; None when it is not what its run left, or not a file."""
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        blake, sha = _hasher(), hashlib.sha256()
        blake.update(b"f%d\0" % (1 if st.st_mode & 0o111 else 0))  # as outputs.digest does
        data = b"" if st.st_size > SMALL else None
        kept = []
        size = 0
        while chunk := os.read(fd, CHUNK):
            blake.update(chunk)
            sha.update(chunk)
            size += len(chunk)
            if data is None:
                kept.append(chunk)
    finally:
        os.close(fd)
    if str(blake.hexdigest(length=DIGEST_BYTES)) != recorded:
        return None  # changed since its run: not what the entry would promise
    digest, mode = sha.hexdigest(), st.st_mode & 0o777
    if size <= INLINE and data is None:
        return Output(path, digest, size, mode, b"".join(kept))  # held in the entry
    if not store.has("cas", digest):
        store.put("cas", digest, b"".join(kept) if data is None else full)
    return Output(path, digest, size, mode)
