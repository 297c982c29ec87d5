"""The no-op fast path (dagrun/fresh.py): quick when nothing changed, never trusted otherwise."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dagrun.events import BuildFinished
from dagrun.report import summary_line
from dagrun.state import proof as fresh

MANIFEST = """
[dagrun]
key_env = ["FLAVOUR"]

[tasks.a]
cmd = "cp src/a.txt out/a"
inputs = ["src/a.txt"]
outputs = ["out/a"]

[tasks.b]
cmd = "cat out/a src/b/*.txt > out/b"
inputs = ["out/a", "src/b/*.txt"]
outputs = ["out/b"]
"""


def _age(path: Path) -> None:
    """Set the mtime in the past, so the stat cache trusts the digest (not racily clean)."""
    os.utime(path, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))


@pytest.fixture
def built(project, monkeypatch):
    monkeypatch.delenv("FLAVOUR", raising=False)
    project.manifest(MANIFEST)
    for name, text in (("src/a.txt", "a\n"), ("src/b/1.txt", "one\n"), ("src/b/2.txt", "two\n")):
        _age(project.write(name, text))
    _age(project.root / "src" / "b")  # the glob's folder too: listed just after a change, a
    # folder is not trusted (unchanged.folder_stamp)
    first = project.run("build")
    assert first.code == 0, first.err
    assert (project.root / ".dagrun" / "fresh").exists()
    return project


def fast(project) -> int | None:
    return fresh.check(str(project.root / "dagrun.toml"), [], os.environ)


def test_an_unchanged_build_is_proved_up_to_date(built):
    assert fast(built) == 2
    run = built.run("build")
    assert (run.code, run.out) == (0, "dagrun: no work to do (2 up to date)\n")


def test_the_line_is_the_reporters_line():
    assert fresh.no_work_line(7) == summary_line(BuildFinished(0, 7, 0, 0, 0.0))


@pytest.mark.slow
def test_the_cli_no_op_imports_neither_the_session_nor_toml(built):
    code = (
        "import sys; from dagrun.cli import main; rc = main(['build']); "
        "print(sorted(m for m in ('dagrun.session', 'dagrun.graph', 'tomllib') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=built.root, capture_output=True,
                         text=True, check=True).stdout
    assert out == "dagrun: no work to do (2 up to date)\n[]\n"


def test_a_changed_source_is_not_trusted(built):
    built.write("src/a.txt", "A\n")
    assert fast(built) is None
    run = built.run("build")
    assert "2 succeeded" in run.out
    assert built.read("out/b") == "A\none\ntwo\n"


def test_a_removed_source_is_not_trusted(built):
    (built.root / "src/b/2.txt").unlink()
    assert fast(built) is None


def test_a_new_file_in_a_glob_folder_is_not_trusted(built):
    built.write("src/b/3.txt", "three\n")
    assert fast(built) is None
    assert "1 succeeded" in built.run("build").out


def test_a_missing_output_is_not_trusted(built):
    (built.root / "out/a").unlink()
    assert fast(built) is None


def test_item3_an_edited_or_replaced_output_is_not_trusted(built):
    out = built.root / "out/a"
    st = out.stat()
    out.write_text("x\n")  # the same size, written now
    assert fast(built) is None
    other = built.root / "out/a.new"
    other.write_text("z\n")
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, out)  # replaced by another file of the same size and mtime
    assert fast(built) is None
    run = built.run("build", "--explain")
    assert run.code == 0 and "output out/a changed since it was built" in run.err + run.out
    assert fast(built) == 2
    # replaced by a copy with the bytes its run left: its digest vouches for it, nothing runs
    other.write_text(out.read_text())
    os.replace(other, out)
    assert fast(built) is None
    assert built.run("build").out.startswith("dagrun: no work to do")
    assert fast(built) == 2


def test_a_changed_manifest_is_not_trusted(built):
    built.manifest(MANIFEST + "\n# a comment changes nothing, but the digest\n")
    assert fast(built) is None


def test_a_changed_key_env_value_is_not_trusted(built, monkeypatch):
    monkeypatch.setenv("FLAVOUR", "sour")
    assert fast(built) is None
    assert "2 succeeded" in built.run("build").out


def test_a_changed_log_is_not_trusted(built):
    with open(built.root / ".dagrun" / "log", "a") as f:
        f.write('{"forget":"a"}\n')
    assert fast(built) is None


def test_other_targets_are_not_trusted(built):
    assert fresh.check(str(built.root / "dagrun.toml"), ["a"], os.environ) is None


def test_a_build_in_progress_is_waited_for_by_the_full_path(built):
    fd = os.open(built.root / ".dagrun" / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert fast(built) is None
    finally:
        os.close(fd)


def test_options_that_matter_skip_the_fast_path(built):
    run = built.run("build", "--explain")
    assert run.code == 0 and run.out.startswith("dagrun: no work to do")
    dry = built.run("build", "-n")
    assert "would run" in dry.out  # the plan printer, not the fast path


def test_no_proof_after_a_failure(project):
    project.manifest('[tasks.bad]\ncmd = "exit 3"\n')
    assert project.run("build").code == 1
    assert not (project.root / ".dagrun" / "fresh").exists()


def test_a_racily_clean_input_is_never_proven_and_the_next_build_hashes_it_again(project):
    project.manifest('[tasks.a]\ncmd = "cp a.txt b.txt"\ninputs = ["a.txt"]\noutputs = ["b.txt"]\n')
    project.write("a.txt", "new\n")  # written just now: its digest is re-checked next time
    assert project.run("build").code == 0
    found = fresh.examine(str(project.root / "dagrun.toml"), [], os.environ)
    assert isinstance(found, fresh.Delta)
    assert (found.sources, found.outputs) == ({"a.txt"}, set())
    project.write("a.txt", "NEW\n")  # the same size, maybe the same mtime: the digest decides
    run = project.run("build")
    assert run.code == 0 and "dagrun: 1 succeeded, 0 up to date" in run.out
    assert (project.root / "b.txt").read_text() == "NEW\n"
    _age(project.root / "a.txt")
    assert project.run("build").out == "dagrun: no work to do (1 up to date)\n"
    assert fast(project) == 1  # hashed again, long after its last change: trusted, proven


def test_no_proof_for_always_tasks(project):
    project.manifest('[tasks.a]\ncmd = "true"\nalways = true\n')
    assert project.run("build").code == 0
    assert not (project.root / ".dagrun" / "fresh").exists()


def test_a_damaged_proof_is_ignored(built):
    (built.root / ".dagrun" / "fresh").write_bytes(b"\x00garbage")
    assert fast(built) is None
    assert built.run("build").out == "dagrun: no work to do (2 up to date)\n"
    assert fast(built) == 2  # rewritten by the full path


def test_a_manifest_edited_during_the_build_is_not_taken_as_built(tmp_path: Path) -> None:
    """The no-op proof and the cache are keyed by the manifest text the build was planned from."""
    import subprocess
    import sys

    (tmp_path / "next.toml").write_text('[tasks.a]\ncmd = "echo second >> ran"\n')
    (tmp_path / "dagrun.toml").write_text(
        '[tasks.a]\ncmd = "echo first >> ran; cp next.toml dagrun.toml"\n'
    )

    def build() -> str:
        p = subprocess.run(
            [sys.executable, "-m", "dagrun", "build"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
        assert p.returncode == 0, p.stderr
        return p.stdout

    build()
    assert "no work to do" not in build()  # the edited command has never run
    assert (tmp_path / "ran").read_text() == "first\nsecond\n"
    assert "no work to do" in build()


def test_rows_pack_update_and_drop():
    rows = fresh.Rows.of({"a": (1, 2, 3, 4), "b": (5, 6, 7, 8)})
    again = fresh.Rows.unpack(*rows.pack())
    assert list(again) == [("a", 1, 2, 3, 4), ("b", 5, 6, 7, 8)]
    again.update({"b": (9, 9, 9, 9), "c": fresh.NEVER}, drop={"a", "c"})
    assert list(again) == [("b", 9, 9, 9, 9), ("c", -1, 0, 0, 0)]
    assert list(fresh.Rows.unpack("", b"")) == []
    with pytest.raises(ValueError):  # four numbers per path, or the rows are no rows
        list(fresh.Rows.unpack("a\0b", rows.numbers[:6].tobytes()))
    with pytest.raises(OverflowError):  # the session then writes no proof
        fresh.Rows.of({"big": (1, 2, 3, 1 << 64)})


@pytest.mark.parametrize("changed", [2, 40])  # a few rows are looked up; many through an index
def test_rows_update_changes_exactly_the_given_rows(changed):
    rows = fresh.Rows.of({f"p{i}": (i, i, i, i) for i in range(100)})
    new = {f"p{i}": (-i, 0, 0, 0) for i in range(0, 2 * changed, 2)} | {"extra": (7, 7, 7, 7)}
    rows.update(new, drop={"p1", "p3", "p0"})
    got = {p: tuple(n) for p, *n in rows}
    want = {f"p{i}": (i, i, i, i) for i in range(100)} | new
    del want["p1"], want["p3"]
    assert got == want


GLOBBED = """
[tasks.cc]
matrix = { c = { glob = "src/*.c" } }
cmd = "cp {c} build/{c.stem}.o"
inputs = ["{c}"]
outputs = ["build/{c.stem}.o"]

[tasks.link]
cmd = "rm -f build/app && cat {inputs} > build/app"
inputs = ["build/*.o"]
outputs = ["build/app"]
"""


def test_a_build_that_wrote_into_a_globbed_folder_leaves_a_proof(project):
    """`inputs = ["build/*.o"]`: the build itself changes build/'s mtime; when the globs still
    match the same files, the first no-op after it takes the fast path (issue 22)."""
    project.manifest(GLOBBED)
    for n in (1, 2, 3):
        _age(project.write(f"src/f{n}.c", f"int f{n};\n"))
    (project.root / "build").mkdir()
    assert project.run("build").code == 0
    assert fast(project) == 4
    assert project.run("build").out == "dagrun: no work to do (4 up to date)\n"
    # an undeclared file in the globbed folder: a glob may match it, so no proof
    _age(project.write("build/stray.o", "stray\n"))
    assert fast(project) is None
    run = project.run("build")
    assert run.code == 0 and "1 succeeded" in run.out, run.out  # link takes stray.o in
    assert fast(project) == 4
