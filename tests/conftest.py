"""Shared fixtures: fakes for every seam, and a helper to run the real CLI in a folder."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dask_cluster import dask_scheduler  # noqa: F401  (a session fixture: a real LocalCluster)
from nginx import NginxServer, nginx_binary, start_nginx
from realproc import DagrunProcs, dagrun_procs
from slurm import slurm_cluster  # noqa: F401  (a session fixture: a real single-node Slurm)
from sshd import SshServer, can_run, shared_server, start_sshd

from dagrun.clock import FakeClock
from dagrun.executors.fake import FakeExecutor
from dagrun.fs import MemoryFileSystem
from dagrun.report import RecordingReporter

# tests must not depend on the developer's terminal or byte-code settings
os.environ.pop("FORCE_COLOR", None)


@pytest.fixture
def mem_fs() -> MemoryFileSystem:
    return MemoryFileSystem()


@pytest.fixture
def watching() -> Iterator[list[Any]]:
    """The test_watch*.py ``Watching`` watchers a test started, each stopped at its end."""
    started: list[Any] = []
    yield started
    for w in started:
        w.close()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_executor(fake_clock: FakeClock) -> FakeExecutor:
    return FakeExecutor(clock=fake_clock)


@pytest.fixture
def recorder() -> RecordingReporter:
    return RecordingReporter()


@pytest.fixture
def dagrun_proc(tmp_path: Path) -> Iterator[DagrunProcs]:
    """Runs the real CLI as subprocesses; kills whatever a failing test left behind."""
    yield from dagrun_procs(tmp_path)


@dataclass
class CliRun:
    code: int
    out: str
    err: str


def cli_project(folder: Path, monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str]) -> Any:
    """A folder with a manifest; ``project.run("build", ...)`` runs the CLI in-process there
    (the ``project`` fixture's, in ``tmp_path``; test_ssh.py's and test_remote_calls.py's, in
    the folder the ssh test user shares)."""

    class Project:
        root = folder

        def write(self, path: str, text: str) -> Path:
            p = folder / path
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(textwrap.dedent(text))
            return p

        def manifest(self, text: str) -> Path:
            return self.write("dagrun.toml", text)

        def read(self, path: str) -> str:
            return (folder / path).read_text()

        def run(self, *args: str) -> CliRun:
            from dagrun.cli import main

            monkeypatch.chdir(folder)
            capsys.readouterr()
            code = main(["--progress", "plain", *args])
            captured = capsys.readouterr()
            return CliRun(code, captured.out, captured.err)

    return Project()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """A folder with a manifest; ``project.run("build", ...)`` runs the CLI in-process there."""
    return cli_project(tmp_path, monkeypatch, capsys)


Runner = Callable[..., CliRun]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A private sshd on 127.0.0.1 (MaxSessions 64), for the whole test session."""
    why = can_run()
    if why is not None:
        pytest.skip(why)
    yield shared_server(tmp_path_factory.mktemp("sshd"))


@pytest.fixture(scope="session")
def sshd_default(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A second sshd left at the default MaxSessions (10)."""
    why = can_run()
    if why is not None:
        pytest.skip(why)
    server = start_sshd(tmp_path_factory.mktemp("sshd-default"), max_sessions=None)
    yield server
    server.stop()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A fresh folder the ssh test user can reach and write (a shared workspace).

    Not under pytest's tmp_path: pytest makes /tmp/pytest-of-USER private again
    (0o700) whenever a test session starts, and other sessions may be starting.
    """
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="dagrun-ssh-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    """A private nginx with WebDAV PUT on 127.0.0.1 (tests/nginx.py), for the whole session."""
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    if os.geteuid() != 0:
        pytest.skip("the test nginx runs its workers as root (PLATFORM.md section 9)")
    server = start_nginx(tmp_path_factory.mktemp("nginx"), binary)
    yield server
    server.stop()
