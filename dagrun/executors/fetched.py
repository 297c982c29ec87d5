"""Files fetched from a host that is not trusted with this machine (ssh ``stage = "rsync"``).

The remote side writes the tar stream, so it decides every member's name, kind, owner and
mode.  Fetched outputs are unpacked into a fresh private folder, without the archive's owners
or permission bits (``TAR_FLAGS``), then checked and moved into the project one declared
output at a time: a member that is not a declared output never lands, a setuid, setgid or
sticky bit is cleared, a symlink that leads out of the project (or to ``.dagrun/``) or a
device, FIFO or socket fails the job, and nothing of it is moved.
"""

from __future__ import annotations

import os
import shutil
import stat

from ..state import STATE_DIR

# GNU tar, as the user that runs dagrun (root too): files owned by that user, modes through
# its umask, no member over an existing folder's attributes
TAR_FLAGS = ("--no-same-owner", "--no-same-permissions", "--no-overwrite-dir")
_SPECIAL = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


def adopt(staging: str, root: str, outputs: list[str]) -> str | None:
    """Move each declared output from ``staging`` into ``root``, checked; None, or what is
    wrong (then nothing was moved)."""
    for out in outputs:
        problem = _check_tree(staging, root, out)
        if problem is not None:
            return problem
    for out in outputs:
        dest = os.path.join(root, out)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        _move(os.path.join(staging, out), dest)
    return None


def _move(src: str, dest: str) -> None:
    """``src`` to ``dest``; a folder merged into the one there (files of other tasks may lie in
    it, as tar would have left them), never written through a link that is in the way."""
    if not _is_dir(src):
        if _is_dir(dest):
            shutil.rmtree(dest)
        os.replace(src, dest)
        return
    if os.path.lexists(dest) and not _is_dir(dest):
        os.unlink(dest)
    os.makedirs(dest, exist_ok=True)
    for name in os.listdir(src):
        _move(os.path.join(src, name), os.path.join(dest, name))


def _is_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def _check_tree(staging: str, root: str, out: str) -> str | None:
    """What is wrong with output ``out`` (and, for a folder, everything in it), or None."""
    top = os.path.join(staging, out)
    if not os.path.lexists(top):
        return f"declared output {out} did not come back"
    problem = _check_one(top, os.path.join(root, out), root, out)
    if problem is not None or not os.path.isdir(top) or os.path.islink(top):
        return problem
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, staging)
            problem = _check_one(path, os.path.join(root, rel), root, rel)
            if problem is not None:
                return problem
    return None


def _check_one(path: str, final: str, root: str, rel: str) -> str | None:
    """One fetched entry at ``path``, to be at ``final``: None when it may come in."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        where = os.path.normpath(os.path.join(os.path.dirname(final), target))
        base = os.path.normpath(root)
        if not where.startswith(base + os.sep) or _in_state_dir(where[len(base) + 1 :]):
            return f"fetched output {rel} is a symlink to {target}, outside the project"
        return None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return f"fetched output {rel} is not a file or a folder"
    if st.st_mode & _SPECIAL:
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~_SPECIAL)
    return None


def _in_state_dir(rel: str) -> bool:
    return rel == STATE_DIR or rel.startswith(STATE_DIR + os.sep)
