"""The no-op fast path: prove from ``stat`` alone that a build has nothing to do.

After a build in which every selected task succeeded or was up to date,
Session writes ``.dagrun/fresh`` (``prove``): what the selected tasks' keys and
up-to-date checks were computed from, in the cheapest form to check again:

- the manifest (path, content digest, and its stat when it was settled: see
  unchanged.py) and the targets asked for;
- the value of every ``key_env`` variable, and the mtime of every folder a
  glob read;
- the completion log's (inode, size): any record appended (``clean``'s
  ``forget`` too) or a compaction changes it;
- every source input's (mtime_ns, ctime_ns, size, inode), exactly as the stat
  cache trusted it when hashing: the same stat means the same digest, hence the
  same keys, all of which the unchanged log holds (a source hashed while racily
  clean gets ``NEVER``, which no file matches);
- every declared output's identity (size, ctime_ns, inode, kind) as the
  completion log recorded it: an output edited, replaced or deleted since
  makes its task run again.

The rows are kept as columns (``Rows``: one string of paths, one int64 array),
so loading 10k of them is a split and a copy.  The file is sealed with the
state's checksum (__init__.py): a damaged proof is no proof.  ``examine`` (run
by ``dagrun build`` before anything else is imported) answers "nothing to do, N tasks up to date"
only when all of that still holds, under the build lock (taken through a
read-only descriptor when ``.dagrun`` cannot be written: a no-op needs no
write).  When only some rows differ, it names them (a ``Delta``) for a partial
build (session.py); in every other case it answers None and the full build path
decides, so it can make a build slower but never wrong.  No TOML, no graph, no
hashing of inputs: imports are ``os``, ``marshal``, ``zlib``, ``array``, the
state package and its lock (blake3 only when the manifest's stat cannot decide).
"""
from __future__ import annotations

import marshal
import os
from array import array
from stat import S_ISREG

from ..unchanged import folders_unchanged, manifest_unchanged
from . import STATE_DIR, unseal, write_sealed
from .lock import try_exclusive

TYPE_CHECKING = False  # typing and collections.abc stay out of a no-op's imports
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

FORMAT = 5  # 5: the manifest's settled stat; 4: rows as a string of paths and an array (3: tuples)
FILE = "fresh"

StatKey = tuple[int, int, int, int]  # mtime_ns, ctime_ns, size, inode
Identity = tuple[int, int, int, int]  # an output's size, ctime_ns, inode, kind (log.py)
_S_IFMT, _S_IFDIR, _S_IFLNK = 0o170000, 0o040000, 0o120000
NEVER = (-1, 0, 0, 0)  # a source row's stat that no file has (inode 0): always "changed"


def identity(st: os.stat_result) -> Identity:
    """An output's identity from its lstat: a folder is its inode (its entries are its tasks')."""
    kind = st.st_mode & _S_IFMT
    if kind == _S_IFDIR:
        return (0, 0, st.st_ino, 1)
    return (st.st_size, st.st_ctime_ns, st.st_ino, 2 if kind == _S_IFLNK else 0)


def identities(root: str, paths: Iterable[str]) -> dict[str, Identity | None]:
    """Each path's identity (None: it does not exist); relative to root, or absolute."""
    found: dict[str, Identity | None] = {}
    lstat = os.lstat
    prefix = root.rstrip("/") + "/"  # no folder descriptor: this also runs once per task's end
    for p in paths:
        try:
            found[p] = identity(lstat(p if p.startswith("/") else prefix + p))
        except OSError:  # as os.path.lexists: cannot look = not there
            found[p] = None
    return found


def no_work_line(up_to_date: int) -> str:
    """What the reporters print for a build with nothing to do (report.summary_line)."""
    return f"dagrun: no work to do ({up_to_date} up to date)"


class Rows:
    """The proof's rows of one kind: paths, and four numbers per path (a source's StatKey, an
    output's Identity), kept as one array: loading 10k rows is one string split and one copy,
    not 10k tuples unmarshalled."""

    __slots__ = ("paths", "numbers", "_where", "_joined")

    def __init__(self, paths: list[str], numbers: array[int], joined: str | None = None) -> None:
        self.paths = paths
        self.numbers = numbers
        self._where: dict[str, int] | None = None
        self._joined = joined  # the paths as pack() writes them, while they are the same

    @classmethod
    def of(cls, rows: Mapping[str, tuple[int, int, int, int]]) -> Rows:
        numbers = array("q")
        for four in rows.values():
            numbers.extend(four)
        return cls(list(rows), numbers)

    @classmethod
    def unpack(cls, paths: str, numbers: bytes) -> Rows:
        found = array("q")
        found.frombytes(numbers)
        return cls(paths.split("\0") if paths else [], found, paths)

    def pack(self) -> tuple[str, bytes]:
        if self._joined is None:  # kept: the rows of a server's next build have the same paths
            self._joined = "\0".join(self.paths)
        return self._joined, self.numbers.tobytes()

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Any:
        """(path, n0, n1, n2, n3) for each row."""
        numbers = iter(self.numbers)
        return zip(self.paths, numbers, numbers, numbers, numbers, strict=True)  # else ValueError

    def where(self) -> dict[str, int]:
        """Path -> its row, made once (kept: a watch asks round after round)."""
        if self._where is None:
            self._where = {p: i for i, p in enumerate(self.paths)}
        return self._where

    def update(
        self, rows: Mapping[str, tuple[int, int, int, int]], drop: Iterable[str] = ()
    ) -> None:
        """Set these paths' numbers (adding new paths); remove the ``drop`` paths not in rows."""
        paths, numbers = self.paths, self.numbers
        where = self.where()
        find = where.get
        for p, four in rows.items():
            i = find(p)
            if i is None:
                where[p] = len(paths)
                paths.append(p)
                numbers.extend(four)
                self._joined = None
            else:
                numbers[4 * i : 4 * i + 4] = array("q", four)
        gone = {p for p in drop if p not in rows and find(p) is not None}
        if gone:
            kept = [i for i, p in enumerate(paths) if p not in gone]
            self.paths = [paths[i] for i in kept]
            self.numbers = array("q", [n for i in kept for n in numbers[4 * i : 4 * i + 4]])
            self._where = self._joined = None


def record(
    state_dir: str,
    manifest_path: str,
    manifest_digest: str,
    manifest_stat: StatKey | None,
    targets: Iterable[str],
    kenv: Mapping[str, str | None],
    scanned: Mapping[str, int],
    sources: Rows,
    outputs: Rows,
    count: int,
) -> None:
    """Write the proof for the state now (under the build lock, after the log is closed).

    ``manifest_digest`` is the digest of the manifest text the build was planned from, not of the
    file now: a manifest edited during the build must not look proven.
    """
    root = os.path.dirname(os.path.abspath(manifest_path))
    log = os.stat(os.path.join(state_dir, "log"))
    data = (
        FORMAT,
        os.path.abspath(manifest_path),
        manifest_digest,
        manifest_stat,
        tuple(targets),
        dict(kenv),
        dict(scanned),
        (log.st_ino, log.st_size),
        *sources.pack(),
        *outputs.pack(),
        count,
        root,
    )
    write_sealed(os.path.join(state_dir, FILE), marshal.dumps(data))


def forget(state_dir: str) -> None:
    try:
        os.unlink(os.path.join(state_dir, FILE))
    except OSError:
        pass


class Delta:
    """What the proof's check found changed, when everything else about the build is as proven.

    The manifest, targets, ``key_env`` values, glob folders and the completion log are as the
    proof recorded them; ``sources`` and ``outputs`` are the paths whose stat or identity is not
    (a missing one included).  Every other source and output is as the proof says, so only the
    tasks reading a path of ``sources`` (and the tasks below them) need new keys, and only those
    and the producers of ``outputs`` need a decision (session.py's partial plan).
    ``source_rows`` and ``output_rows`` are the proof's rows, for the next proof; ``stamp``
    identifies the proof file and the log it was checked against, so the build can make sure,
    under its own lock, that no other dagrun changed the state in between.
    """

    __slots__ = ("sources", "outputs", "source_rows", "output_rows", "stamp")

    def __init__(
        self,
        sources: set[str],
        outputs: set[str],
        source_rows: Rows,
        output_rows: Rows,
        stamp: tuple[int, ...],
    ) -> None:
        self.sources = sources
        self.outputs = outputs
        self.source_rows = source_rows
        self.output_rows = output_rows
        self.stamp = stamp

    def __repr__(self) -> str:
        return f"Delta(sources={sorted(self.sources)}, outputs={sorted(self.outputs)})"


def stamp(state_dir: str) -> tuple[int, ...] | None:
    """The identity of the proof file, the log, the cache and its journal now (None when the
    proof or the log is missing): a partial build trusts a Delta only with these unchanged."""
    try:
        proof = os.stat(os.path.join(state_dir, FILE))
        log = os.stat(os.path.join(state_dir, "log"))
    except OSError:
        return None
    return (proof.st_ino, proof.st_mtime_ns, proof.st_size, *_state_id(state_dir, log))


def _state_id(state_dir: str, log: os.stat_result) -> tuple[int, ...]:
    """The log's, the cache's and the cache journal's identity (-1 for a missing file)."""
    found = [log.st_ino, log.st_size]
    for name in ("cache", "cache.journal"):
        try:
            st = os.stat(os.path.join(state_dir, name))
            found += (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            found += (-1, -1, -1)
    return tuple(found)


def check(manifest_path: str, targets: Iterable[str], environ: Mapping[str, str]) -> int | None:
    """The number of up-to-date tasks when provably nothing needs to run, else None."""
    found = examine(manifest_path, targets, environ)
    return found if isinstance(found, int) else None


def examine(
    manifest_path: str, targets: Iterable[str], environ: Mapping[str, str]
) -> int | Delta | None:
    """As ``check``; and when only some sources or outputs changed, a Delta naming them."""
    manifest_path = os.path.abspath(manifest_path)
    state_dir = os.path.join(os.path.dirname(manifest_path), STATE_DIR)
    lock = try_exclusive(state_dir)  # None: another dagrun is building, the full path waits
    if lock is None:
        return None
    try:
        return _check(state_dir, manifest_path, tuple(targets), environ)
    except (OSError, ValueError, EOFError, TypeError):
        return None
    finally:
        os.close(lock)  # releases the lock


def _check(
    state_dir: str, manifest_path: str, targets: tuple[str, ...], environ: Mapping[str, str]
) -> int | Delta | None:
    loaded = _load(state_dir)
    if loaded is None:
        return None
    data, proof = loaded
    _, path, manifest_digest, manifest_stat, was_targets, kenv, scanned, log = data[:8]
    sources, outputs = Rows.unpack(*data[8:10]), Rows.unpack(*data[10:12])
    count, root = data[12:]
    if path != manifest_path or was_targets != targets:
        return None
    if any(environ.get(name) != value for name, value in kenv.items()):
        return None
    st = os.stat(os.path.join(state_dir, "log"))
    if (st.st_ino, st.st_size) != log:
        return None
    if not folders_unchanged(scanned):
        return None
    if not manifest_unchanged(manifest_path, manifest_stat, manifest_digest):
        return None
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        changed_sources = _changed_sources(fd, sources)
        changed_outputs = _changed_outputs(fd, outputs)
    finally:
        os.close(fd)
    if not changed_sources and not changed_outputs:
        return int(count)
    ident = (proof.st_ino, proof.st_mtime_ns, proof.st_size, *_state_id(state_dir, st))
    return Delta(changed_sources, changed_outputs, sources, outputs, ident)


def _load(state_dir: str) -> tuple[Any, os.stat_result] | None:
    """The proof's fields and its file's stat; None when it is not a whole proof of this
    format."""
    fd = os.open(os.path.join(state_dir, FILE), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        proof = os.fstat(f.fileno())
        if not S_ISREG(proof.st_mode):  # a FIFO or a device: no proof (fs.open_regular)
            return None
        raw = f.read()
    blob = unseal(raw)
    if blob is None:
        return None
    data: Any = marshal.loads(blob)  # marshal.load(f) reads item by item: 10x slower
    if not isinstance(data, tuple) or len(data) != 14 or data[0] != FORMAT:
        return None
    return data, proof


def _changed_sources(fd: int, sources: Rows) -> set[str]:
    """The sources whose stat is not the recorded one (or that are gone)."""
    stat = os.stat
    changed = set()
    for p, mtime, ctime, size, ino in sources:
        try:
            st = stat(p, dir_fd=fd)
        except FileNotFoundError:
            changed.add(p)
            continue
        if (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino) != (mtime, ctime, size, ino):
            changed.add(p)
    return changed


def _changed_outputs(fd: int, outputs: Rows) -> set[str]:
    """The outputs whose identity is not the recorded one (or that are gone); as
    ``identity(lstat(p)) != recorded`` for each, inline: this runs once per output."""
    lstat = os.lstat
    changed = set()
    for p, size, ctime, ino, kind in outputs:
        try:
            st = lstat(p, dir_fd=fd)
        except FileNotFoundError:
            changed.add(p)
            continue
        if st.st_ino != ino:  # another file, folder or link (a new kind means a new inode)
            changed.add(p)
        elif kind != 1 and (st.st_ctime_ns != ctime or st.st_size != size):
            changed.add(p)
    return changed


def prove(state_dir: str, prep: Any, manifest: tuple[str, str, Any], targets: tuple[str, ...]
          ) -> Delta | None:
    """After a build that left every selected task up to date: write the proof of ``prep``
    (pipeline.Prepared) and return it as a Delta with no changes (None when there can be
    none).  ``manifest``: its path, the digest of the text the build was planned from, and
    its settled stat.  After a partial build (``prep.delta``), the previous proof's rows are
    kept for every task the build did not look at, and only the looked-at tasks' are new."""
    delta = prep.delta
    # a partial build's decided tasks, and the pending ones below a task it ran
    tasks = prep.plan.selected if delta is None else (*prep.decided, *prep.plan.to_run)
    rows = _rows(prep, tasks)
    if rows is None:
        return None
    if delta is None:
        source_rows, output_rows = Rows.of(rows[0]), Rows.of(rows[1])
    else:  # the proof's other rows stay; a changed file no task reads any more goes
        source_rows, output_rows = delta.source_rows, delta.output_rows
        source_rows.update(rows[0], drop=delta.sources)
        output_rows.update(rows[1])
    try:
        record(state_dir, manifest[0], manifest[1], manifest[2], targets, prep.basis.kenv,
               prep.graph.scanned, source_rows, output_rows, len(prep.plan.selected))
    except (OSError, OverflowError):  # OverflowError: a number beyond 64 bits (an inode)
        forget(state_dir)
        return None
    proof = stamp(state_dir)
    return None if proof is None else Delta(set(), set(), source_rows, output_rows, proof)


def _rows(prep: Any, tasks: Iterable[int]) -> tuple[dict[str, StatKey], dict[str, Identity]] | None:
    """The proof's rows of ``tasks``: their sources' stats and outputs' identities; None when
    there can be no proof (an ``always`` task, a task without a success on record).

    A source whose digest is not trusted yet (written within hashing.RACY_NS of being
    hashed) gets a row that never matches, so the next check hands it to a partial build,
    which hashes it again.
    """
    g, entries = prep.graph, prep.keys.stats.entries
    latest, found = prep.log.index.latest, prep.keys.found
    sources: dict[str, StatKey] = {}
    outputs: dict[str, Identity] = {}
    for i in tasks:
        spec = g.specs[i]
        if spec.always:
            return None
        for p in (*g.sources[i], *found.get(spec.name, ())):
            e = entries.get(p)
            if e is None:
                return None
            sources[p] = (e[0], e[1], e[2], e[3]) if e[5] else NEVER
        entry = latest.get(spec.name)
        if entry is None or len(entry[2]) != len(spec.outputs):
            return None
        for o, ident in zip(spec.outputs, entry[2], strict=True):
            outputs[o] = ident
    return sources, outputs
