"""Inputs whatever their spelling or history (issue 20): a folder reached through a symlink meets
its producer, and a folder replaced by one with the same mtime is read again.  Real files,
real builds (the CLI in-process)."""

from __future__ import annotations

import os
import shutil

import pytest

pytestmark = pytest.mark.slow

OLD = 1_577_836_800  # 2020-01-01, the normalised mtime of a tarball or a Nix store path


def test_a_glob_through_a_symlinked_folder_depends_on_the_producer(project):
    (project.root / "src").mkdir()
    os.symlink("../gen", project.root / "src" / "gen")
    project.write("seed.txt", "1\n")
    project.manifest(
        """
        [tasks.use]
        cmd = "cat src/gen/*.txt > use.txt"
        inputs = ["src/gen/*.txt"]
        outputs = ["use.txt"]

        [tasks.gen]
        cmd = "mkdir -p gen && cp seed.txt gen/x.txt"
        inputs = ["seed.txt"]
        outputs = ["gen/x.txt"]
        """
    )
    r = project.run("build", "-j1")
    assert r.code == 0, r.out + r.err
    assert r.out.splitlines()[:2] == ["[1/2] gen", "[2/2] use"]  # the producer first
    assert project.read("use.txt") == "1\n"
    project.write("seed.txt", "2\n")
    r = project.run("build", "-j1")
    assert r.out.splitlines()[:2] == ["[1/2] gen", "[2/2] use"]
    assert project.read("use.txt") == "2\n"


def test_a_symlinked_folder_input_depends_on_the_producer(project):
    os.symlink("gen", project.root / "alias")
    project.write("seed.txt", "1\n")
    project.manifest(
        """
        [tasks.use]
        cmd = "cat alias/x.txt > use.txt"
        inputs = ["alias"]
        outputs = ["use.txt"]

        [tasks.gen]
        cmd = "mkdir -p gen && cp seed.txt gen/x.txt"
        inputs = ["seed.txt"]
        outputs = ["gen/x.txt"]
        """
    )
    (project.root / "gen").mkdir()  # the link resolves; the file comes from gen
    r = project.run("build", "-j1")
    assert r.out.splitlines()[:2] == ["[1/2] gen", "[2/2] use"], r.out + r.err
    project.write("seed.txt", "2\n")
    project.run("build", "-j1")
    assert project.read("use.txt") == "2\n"


def _age(path, when=OLD):
    os.utime(path, (when, when))


FOLDER_READERS = """
[tasks.glob]
cmd = "cat d/*.txt > glob.txt"
inputs = ["d/*.txt"]
outputs = ["glob.txt"]

[tasks.tree]
cmd = "cat d/*.txt > tree.txt"
inputs = ["d"]
outputs = ["tree.txt"]
"""


def test_a_file_added_with_the_folder_mtime_put_back_is_read(project):
    project.write("d/a.txt", "a\n")
    _age(project.root / "d")
    project.manifest(FOLDER_READERS)
    assert project.run("build").code == 0
    project.write("d/b.txt", "b\n")
    _age(project.root / "d")  # touch -d: the same mtime, a new ctime
    r = project.run("build")
    assert r.code == 0
    assert project.read("glob.txt") == project.read("tree.txt") == "a\nb\n"


def test_a_folder_replaced_by_one_with_the_same_mtime_is_read(project):
    project.write("d/a.txt", "a\n")
    _age(project.root / "d/a.txt")
    _age(project.root / "d")
    project.manifest(FOLDER_READERS)
    assert project.run("build").code == 0
    new = project.root / "new"
    shutil.copytree(project.root / "d", new)
    (new / "c.txt").write_text("c\n")
    _age(new / "c.txt")
    _age(new)
    shutil.rmtree(project.root / "d")
    os.rename(new, project.root / "d")
    _age(project.root / "d")
    (project.root / ".dagrun" / "fresh").unlink(missing_ok=True)
    r = project.run("build")
    assert r.code == 0
    assert project.read("glob.txt") == project.read("tree.txt") == "a\nc\n"
    assert project.run("build").out == "dagrun: no work to do (2 up to date)\n"


def test_a_folder_listed_within_the_racy_window_is_never_trusted(tmp_path):
    from dagrun import unchanged

    st = os.stat(tmp_path)
    stamp = unchanged.folder_stamp(st)
    assert unchanged.folders_unchanged({str(tmp_path): stamp})
    racy = unchanged.folder_stamp(st, st.st_mtime_ns + unchanged.RACY_NS)
    assert racy == unchanged.RACY
    assert not unchanged.folders_unchanged({str(tmp_path): racy})
    later = st.st_mtime_ns + unchanged.RACY_NS + 1
    assert unchanged.folder_stamp(st, later) == stamp


@pytest.mark.parametrize(
    ("written", "read"),
    [("src/gen/x.txt", "src/gen/*.txt"), ("src/gen/x.txt", "gen/*.txt"),
     ("gen/x.txt", "src/gen/x.txt"), ("src/gen/x.txt", "gen/x.txt")],
)
def test_any_spelling_through_the_link_meets_the_producer(project, written, read):
    (project.root / "src").mkdir()
    (project.root / "gen").mkdir()
    os.symlink("../gen", project.root / "src" / "gen")
    project.write("seed.txt", "1\n")
    project.manifest(
        f"""
        [tasks.use]
        cmd = "cat {read} > use.txt"
        inputs = ["{read}"]
        outputs = ["use.txt"]

        [tasks.gen]
        cmd = "cp seed.txt {written}"
        inputs = ["seed.txt"]
        outputs = ["{written}"]
        """
    )
    r = project.run("build", "-j1")
    assert r.out.splitlines()[:2] == ["[1/2] gen", "[2/2] use"], r.out + r.err
    project.write("seed.txt", "2\n")
    project.run("build", "-j1")
    assert project.read("use.txt") == "2\n"
