"""The no-op fast path: prove from ``stat`` alone that a build has nothing to do.

After a build in which every selected task succeeded or was up to date,
Session writes ``.dagrun/fresh``: what the selected tasks' keys and
up-to-date checks were computed from, in the cheapest form to check again:

- the manifest (path, content digest) and the targets asked for;
- the value of every ``key_env`` variable, and the mtime of every folder a
  glob read;
- the completion log's (inode, size): any record appended (``clean``'s
  ``forget`` too) or a compaction changes it;
- every source input's (mtime_ns, ctime_ns, size, inode), exactly as the stat
  cache trusted it when hashing: the same stat means the same digest, hence the
  same keys, all of which the unchanged log holds;
- every declared output, which must still exist.

``check`` (run by ``dagrun build`` before anything else is imported) answers
"nothing to do, N tasks up to date" only when all of that still holds, under
the build lock; in every other case it answers None and the full build path
decides, so it can make a build slower but never wrong.  No TOML, no graph,
no hashing of inputs: imports are ``os`` and ``marshal`` (and blake3 for the
manifest digest).  A folder holding many outputs is listed once instead of
stat-ing each output in it.
"""

from __future__ import annotations

import fcntl
import marshal
import os

TYPE_CHECKING = False  # typing and collections.abc stay out of a no-op's imports
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

FORMAT = 2
FILE = "fresh"
LIST_AT = 16  # outputs in one folder from which listing the folder beats one lstat each

StatKey = tuple[int, int, int, int]  # mtime_ns, ctime_ns, size, inode


def digest(data: bytes) -> str:
    from blake3 import blake3

    return str(blake3(data).hexdigest(length=16))


def no_work_line(up_to_date: int) -> str:
    """What the reporters print for a build with nothing to do (report.summary_line)."""
    return f"dagrun: no work to do ({up_to_date} up to date)"


def record(
    state_dir: str,
    manifest_path: str,
    manifest_digest: str,
    targets: Iterable[str],
    kenv: Mapping[str, str | None],
    scanned: Mapping[str, int],
    sources: Mapping[str, StatKey],
    outputs: Iterable[str],
    count: int,
) -> None:
    """Write the proof for the state now (under the build lock, after the log is closed).

    ``manifest_digest`` is the digest of the manifest text the build was planned from, not of the
    file now: a manifest edited during the build must not look proven.
    """
    root = os.path.dirname(os.path.abspath(manifest_path))
    log = os.stat(os.path.join(state_dir, "log"))
    folders = group(outputs)
    data = (
        FORMAT,
        os.path.abspath(manifest_path),
        manifest_digest,
        tuple(targets),
        dict(kenv),
        dict(scanned),
        (log.st_ino, log.st_size),
        [(p, *st) for p, st in sources.items()],
        list(folders.items()),
        count,
        root,
    )
    path = os.path.join(state_dir, FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        marshal.dump(data, f)
    os.replace(tmp, path)


def forget(state_dir: str) -> None:
    try:
        os.unlink(os.path.join(state_dir, FILE))
    except OSError:
        pass


def check(manifest_path: str, targets: Iterable[str], environ: Mapping[str, str]) -> int | None:
    """The number of up-to-date tasks when provably nothing needs to run, else None."""
    manifest_path = os.path.abspath(manifest_path)
    state_dir = os.path.join(os.path.dirname(manifest_path), ".dagrun")
    try:
        lock = os.open(os.path.join(state_dir, "lock"), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return None  # another dagrun is building: the full path waits for it
        try:
            return _check(state_dir, manifest_path, tuple(targets), environ)
        except (OSError, ValueError, EOFError, TypeError):
            return None
    finally:
        os.close(lock)  # releases the lock


def _check(
    state_dir: str, manifest_path: str, targets: tuple[str, ...], environ: Mapping[str, str]
) -> int | None:
    with open(os.path.join(state_dir, FILE), "rb") as f:
        data: Any = marshal.loads(f.read())  # marshal.load(f) reads item by item: 10x slower
    if not isinstance(data, tuple) or len(data) != 11 or data[0] != FORMAT:
        return None
    _, path, manifest_digest, was_targets, kenv, scanned, log, sources, folders, count, root = data
    if path != manifest_path or was_targets != targets:
        return None
    for name, value in kenv.items():
        if environ.get(name) != value:
            return None
    st = os.stat(os.path.join(state_dir, "log"))
    if (st.st_ino, st.st_size) != log:
        return None
    from .globs import folders_unchanged

    if not folders_unchanged(scanned):
        return None
    with open(manifest_path, "rb") as f:
        if digest(f.read()) != manifest_digest:
            return None
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if not _sources_unchanged(fd, sources) or not _outputs_exist(fd, folders):
            return None
    finally:
        os.close(fd)
    return int(count)


def _sources_unchanged(fd: int, sources: list[tuple[str, int, int, int, int]]) -> bool:
    stat = os.stat
    for p, mtime, ctime, size, ino in sources:
        st = stat(p, dir_fd=fd)  # FileNotFoundError: the caller answers None
        if (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino) != (mtime, ctime, size, ino):
            return False
    return True


def _outputs_exist(fd: int, folders: list[tuple[str, list[str]]]) -> bool:
    lstat = os.lstat
    for folder, names in folders:
        if len(names) >= LIST_AT:
            if not _listing(fd, folder).issuperset(names):
                return False
            continue
        for name in names:
            lstat(f"{folder}/{name}", dir_fd=fd)  # FileNotFoundError: the caller answers None
    return True


def _listing(fd: int, folder: str) -> set[str]:
    try:
        sub = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    except OSError:  # as os.path.lexists: cannot look = not there
        return set()
    try:
        return set(os.listdir(sub))
    finally:
        os.close(sub)


def group(paths: Iterable[str]) -> dict[str, list[str]]:
    """Paths by parent folder ('.' for the root): folder -> names."""
    folders: dict[str, list[str]] = {}
    for p in paths:
        parent, _, name = p.rpartition("/")
        if parent or not p.startswith("/"):
            folders.setdefault(parent or ".", []).append(name)
        else:  # /name
            folders.setdefault("/", []).append(name)
    return folders


def existing(root: str, paths: Iterable[str]) -> set[str]:
    """Which of ``paths`` (relative to root, or absolute) exist, as os.path.lexists says.

    A folder with many of them is listed once instead of one lstat each.
    """
    found: set[str] = set()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for folder, names in group(paths).items():
            prefix = "" if folder == "." else "/" if folder == "/" else folder + "/"
            if len(names) >= LIST_AT:
                present = _listing(fd, folder)
                found.update(prefix + n for n in names if n in present)
                continue
            for n in names:
                try:
                    os.lstat(prefix + n, dir_fd=fd)
                except OSError:
                    continue
                found.add(prefix + n)
    finally:
        os.close(fd)
    return found
