"""Stat-only evidence that a file or folder read earlier is unchanged: the no-op's cheap checks.

The no-op fast path (dagrun/state/proof.py) runs before anything else is imported,
so this module imports only ``os`` (``time`` when recording, blake3 only when
a stat cannot decide).  Measured at 1k tasks: ``re`` (which ``globs`` needs for
its patterns) costs ~7 ms of CPU and blake3 ~1.5 ms, against a whole no-op of
~28 ms; see bench/NOOP.md.

A file is trusted by its stat (mtime_ns, ctime_ns, size, inode) only when that
stat was *settled* when it was taken: modified more than ``RACY_NS`` before.
A file modified within that window could be modified again within the same
timestamp tick, leaving the stat equal over different bytes (the racy-clean
problem; hashing.StatCache trusts source digests by the same rule).
"""

from __future__ import annotations

import os
from stat import S_ISREG

RACY_NS = 50_000_000  # as hashing.RACY_NS (tests/test_unchanged.py checks they agree)

StatKey = tuple[int, int, int, int]  # mtime_ns, ctime_ns, size, inode (as fresh.StatKey)


ABSENT, RACY = -1, -2  # folder stamps: no folder there; listed too soon after a change


def folder_stamp(st: os.stat_result, now_ns: int | None = None) -> int:
    """A folder's identity as one exact int: its mtime, ctime and inode (a folder replaced by
    one with the same mtime, or put back with ``touch -d``, differs in inode or ctime).

    With ``now_ns`` (the time of its listing): RACY, which never matches, when its mtime is
    within RACY_NS of it: an entry added in the same clock tick would leave the mtime as is
    (the rule of hashing.StatCache and settled_stat for files).
    """
    if now_ns is not None and now_ns - st.st_mtime_ns <= RACY_NS:
        return RACY
    return (st.st_ino << 128) | (st.st_ctime_ns << 64) | st.st_mtime_ns


def folders_unchanged(scanned: dict[str, int]) -> bool:
    """True when every folder in ``scanned`` still has the recorded stamp (or is still absent)."""
    stat = os.stat
    for path, stamp in scanned.items():
        try:
            st = stat(path)
        except OSError:
            if stamp != ABSENT:
                return False
            continue
        if (st.st_ino << 128) | (st.st_ctime_ns << 64) | st.st_mtime_ns != stamp:
            return False
    return True


def settled_stat(path: str) -> StatKey | None:
    """The stat of ``path`` to record with a digest of its bytes, or None when it is too recent.

    Call it *before* reading the bytes that are digested: a write after this stat (and before or
    during the read) gives the file a later stat, so the proof falls back to the digest.
    """
    import time

    now = time.time_ns()  # before the stat: a write after it has an mtime >= now - one tick
    st = os.stat(path)
    if now - st.st_mtime_ns <= RACY_NS:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def manifest_unchanged(
    path: str, recorded_stat: StatKey | None, recorded_digest: str
) -> bool:
    """Whether the manifest at ``path`` still has the bytes whose digest was recorded.

    Its stat decides when one was recorded (``settled_stat``) and still matches: no read, no
    blake3.  Otherwise (no settled stat, or a different one: a ``touch``, a checkout rewriting
    the same text) the bytes are read and digested.  A file that cannot be read is changed.
    """
    if recorded_stat is not None:
        try:
            st = os.stat(path)
        except OSError:
            return False
        if (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino) == tuple(recorded_stat):
            return True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO: no hang
        with os.fdopen(fd, "rb") as f:
            if not S_ISREG(os.fstat(fd).st_mode):
                return False
            data = f.read()
    except OSError:
        return False
    return digest(data) == recorded_digest


def digest(data: bytes) -> str:
    """The manifest digest the proof records (as hashing.digest_bytes)."""
    from blake3 import blake3

    return str(blake3(data).hexdigest(length=16))
