"""What an ssh host with ``stage = "rsync"`` sends back cannot plant setuid files, links to
local secrets, or files the task did not declare (issue 20).  A real sshd on 127.0.0.1 (its
user is not the one running the build), a real build in-process."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd import SshServer

pytestmark = pytest.mark.slow


@pytest.fixture
def root(shared_dir: Path, sshd: SshServer) -> Path:
    return shared_dir


@pytest.fixture
def workspace() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="dagrun-ws-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def build(root: Path, monkeypatch, capsys) -> tuple[int, str]:
    from dagrun.cli import main

    monkeypatch.chdir(root)
    capsys.readouterr()
    code = main(["--progress", "plain", "build", "-k"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_fetched_outputs_are_never_setuid_and_belong_to_the_builder(
    root, sshd, workspace, monkeypatch, capsys
):
    (root / "dagrun.toml").write_text(sshd.toml("lab", workspace=str(workspace), stage="rsync")
                                      + textwrap.dedent("""
        [tasks.tool]
        executor = "lab"
        outputs = ["bin/tool", "share"]
        cmd = "echo x>bin/tool;chmod 6755 bin/tool;mkdir share;echo y>share/s;chmod 4755 share/s"
    """))
    code, out = build(root, monkeypatch, capsys)
    assert code == 0, out
    for path in (root / "bin" / "tool", root / "share" / "s"):
        st = path.stat()
        assert st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX) == 0, path
        assert st.st_uid == os.getuid(), path
    assert (root / "bin" / "tool").read_text() == "x\n"
    assert (workspace / "bin" / "tool").stat().st_mode & stat.S_ISUID  # it was, over there


@pytest.mark.parametrize(
    ("outputs", "cmd", "bad"),
    [
        (["out/secret"], "ln -s {secret} out/secret", "out/secret"),
        (["out"], "mkdir -p out; ln -s {secret} out/link; echo ok > out/fine", "out/link"),
        (["out/up"], "ln -s ../../../../../../../../{secret} out/up", "out/up"),
        (["out/state"], "mkdir -p .dagrun; : > .dagrun/log; ln -s ../.dagrun/log out/state",
         "out/state"),
    ],
)
def test_a_fetched_symlink_out_of_the_project_fails_the_task_and_never_lands(
    root, sshd, workspace, monkeypatch, capsys, outputs, cmd, bad
):
    secret = Path(tempfile.mkdtemp(prefix="dagrun-secret-")) / "key"
    secret.write_text("secret\n")
    secret.parent.chmod(0o755)  # so that the link resolves over there too ("-e" holds)
    try:
        listed = ", ".join(f'"{o}"' for o in outputs)
        (root / "dagrun.toml").write_text(
            sshd.toml("lab", workspace=str(workspace), stage="rsync")
            + f'[tasks.leak]\nexecutor = "lab"\noutputs = [{listed}]\n'
            + f'cmd = "mkdir -p out; {cmd.format(secret=secret)}"\n'
        )
        code, out = build(root, monkeypatch, capsys)
        assert code == 1, out
        assert f"fetched output {bad} is a symlink to " in out and "outside the project" in out
        assert not (root / "out").exists()  # nothing of it was moved in
        assert not list((root / ".dagrun" / "ssh").glob("fetch-*"))  # nor left behind
    finally:
        shutil.rmtree(secret.parent)


def test_only_declared_outputs_are_moved_in_and_a_device_is_refused(tmp_path):
    """The remote side writes the tar stream: whatever else it holds stays in the staging
    folder; a FIFO (or a device) among the outputs fails the fetch, and nothing moves."""
    from dagrun.executors import fetched

    staging, root = tmp_path / "staging", tmp_path / "root"
    (staging / "out").mkdir(parents=True)
    root.mkdir()
    (staging / "out" / "a").write_text("a\n")
    (staging / "dagrun.toml").write_text("forged\n")
    assert fetched.adopt(str(staging), str(root), ["out/a"]) is None
    assert sorted(p.name for p in root.rglob("*")) == ["a", "out"]
    os.mkfifo(staging / "out" / "p")
    (staging / "out" / "b").write_text("b\n")
    problem = fetched.adopt(str(staging), str(root), ["out/b", "out/p"])
    assert problem == "fetched output out/p is not a file or a folder"
    assert not (root / "out" / "b").exists()


def test_a_fetched_folder_is_merged_and_never_written_through_a_link(tmp_path):
    from dagrun.executors import fetched

    staging, root, outside = tmp_path / "staging", tmp_path / "root", tmp_path / "outside"
    (staging / "out" / "sub").mkdir(parents=True)
    (staging / "out" / "sub" / "new").write_text("new\n")
    (root / "out").mkdir(parents=True)
    (root / "out" / "other").write_text("another task's\n")
    outside.mkdir()
    os.symlink(outside, root / "out" / "sub")  # in the way: replaced, not followed
    assert fetched.adopt(str(staging), str(root), ["out"]) is None
    assert (root / "out" / "other").read_text() == "another task's\n"
    assert not (root / "out" / "sub").is_symlink()
    assert (root / "out" / "sub" / "new").read_text() == "new\n"
    assert list(outside.iterdir()) == []
