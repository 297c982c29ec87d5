"""dagrun/unchanged.py: the no-op's stat-only checks, trusted only when a stat is settled."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dagrun import hashing, unchanged

ROOT = Path(__file__).resolve().parent.parent
OLD_NS = 1_600_000_000 * 10**9


def _age(path: Path) -> None:
    os.utime(path, ns=(OLD_NS, OLD_NS))


def _recorded(path: Path) -> tuple[unchanged.StatKey | None, str]:
    """What the proof stores, in the order it must be taken: the stat before the read."""
    stat = unchanged.settled_stat(str(path))
    return stat, unchanged.digest(path.read_bytes())


def test_the_racy_window_and_digest_are_the_stat_caches():
    assert unchanged.RACY_NS == hashing.RACY_NS
    text = b"x = 1\n"
    assert unchanged.digest(text) == hashing.digest_bytes(text)


def test_a_file_written_just_now_has_no_settled_stat(tmp_path: Path):
    path = tmp_path / "dagrun.toml"
    path.write_text("[tasks]\n")
    assert unchanged.settled_stat(str(path)) is None
    _age(path)
    st = path.stat()
    assert unchanged.settled_stat(str(path)) == (st.st_mtime_ns, st.st_ctime_ns, st.st_size,
                                                 st.st_ino)


def test_an_unchanged_settled_manifest_is_trusted_by_its_stat(tmp_path: Path):
    path = tmp_path / "dagrun.toml"
    path.write_text("[tasks]\n")
    _age(path)
    stat, _ = _recorded(path)
    assert stat is not None
    # the stat decides alone: a digest that no longer matches is not even looked at
    assert unchanged.manifest_unchanged(str(path), stat, "not the digest")


def test_a_rewritten_manifest_is_decided_by_its_digest(tmp_path: Path):
    path = tmp_path / "dagrun.toml"
    path.write_text("[tasks]\n")
    _age(path)
    stat, digest = _recorded(path)
    path.write_text("[tasks]\n")  # the same text again (a checkout): a new stat, the same bytes
    assert unchanged.manifest_unchanged(str(path), stat, digest)
    path.write_text("[tasks.a]\n")
    _age(path)  # even with its old mtime back, the ctime and size tell
    assert not unchanged.manifest_unchanged(str(path), stat, digest)


def test_without_a_settled_stat_the_digest_decides(tmp_path: Path):
    path = tmp_path / "dagrun.toml"
    path.write_text("[tasks]\n")
    stat, digest = _recorded(path)
    assert stat is None
    assert unchanged.manifest_unchanged(str(path), None, digest)
    path.write_text("[tasks.b]\n")
    assert not unchanged.manifest_unchanged(str(path), None, digest)


def test_a_manifest_gone_is_changed(tmp_path: Path):
    path = tmp_path / "dagrun.toml"
    path.write_text("[tasks]\n")
    _age(path)
    stat, digest = _recorded(path)
    path.unlink()
    assert not unchanged.manifest_unchanged(str(path), stat, digest)
    assert not unchanged.manifest_unchanged(str(path), None, digest)


def test_folders_are_unchanged_until_an_entry_comes_or_goes(tmp_path: Path):
    (tmp_path / "src").mkdir()
    absent = str(tmp_path / "gen")
    scanned = {str(tmp_path / "src"): unchanged.folder_stamp((tmp_path / "src").stat()),
               absent: unchanged.ABSENT}
    assert unchanged.folders_unchanged(scanned)
    time.sleep(0.01)  # a tick for coarse folder mtimes
    (tmp_path / "src" / "new.c").write_text("")
    assert not unchanged.folders_unchanged(scanned)
    scanned[str(tmp_path / "src")] = unchanged.folder_stamp((tmp_path / "src").stat())
    assert unchanged.folders_unchanged(scanned)
    os.mkdir(absent)
    assert not unchanged.folders_unchanged(scanned)


@pytest.mark.slow
def test_the_stat_checks_import_neither_re_nor_blake3(tmp_path: Path):
    """What the no-op saves: ``re`` (globs' patterns) and blake3 stay unimported."""
    path = tmp_path / "dagrun.toml"
    path.write_text("[tasks]\n")
    _age(path)
    stat, digest = _recorded(path)
    code = (
        f"import os, sys; from dagrun import unchanged as u; d = {str(tmp_path)!r}; "
        "ok = u.folders_unchanged({d: u.folder_stamp(os.stat(d))}) "
        f"and u.manifest_unchanged({str(path)!r}, {stat!r}, {digest!r}); "
        "print(ok, [m for m in ('re', 'blake3', 'typing') if m in sys.modules])"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out == "True []\n"


@pytest.mark.slow
def test_a_no_op_imports_neither_re_nor_blake3(tmp_path: Path):
    """The fast path's whole answer (entry -> locate -> fresh -> unchanged) without them."""
    manifest = tmp_path / "dagrun.toml"
    manifest.write_text('[tasks.a]\ncmd = "touch out.txt"\noutputs = ["out.txt"]\n')
    _age(manifest)  # settled: the proof keeps its stat, and the check trusts it
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run([sys.executable, "-m", "dagrun", "build"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    code = ("import sys\nfrom dagrun.entry import main\ncode = main(['build'])\n"
            "print([m for m in ('re', 'blake3', 'typing') if m in sys.modules], code)\n")
    again = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert again.stdout == "dagrun: no work to do (1 up to date)\n[] 0\n", again.stderr
