"""Dangerous outputs refused and clean kept inside the project; clear errors, never a traceback.

Issue 8, items 11 and 12: each test here failed on the main of that day.
"""

from __future__ import annotations

import os

import pytest

from dagrun.errors import ManifestError
from dagrun.manifest import parse


def _task(output: str) -> str:
    return f'[tasks.t]\ncmd = "true"\noutputs = ["{output}"]\n'


@pytest.mark.parametrize(
    "output, message",
    [
        (".", "output '.' is the project folder itself"),
        ("./", "output '.' is the project folder itself"),
        ("a/..", "output '.' is the project folder itself"),
        ("..", "output '..' is outside the project folder"),
        ("../sibling.txt", "output '../sibling.txt' is outside the project folder"),
        ("/etc/passwd", "output '/etc/passwd' is outside the project folder"),
        (".dagrun", "output '.dagrun' is in .dagrun/, dagrun's own state"),
        (".dagrun/log", "output '.dagrun/log' is in .dagrun/, dagrun's own state"),
    ],
)
def test_item11_outputs_must_lie_inside_the_project(tmp_path, output, message):
    with pytest.raises(ManifestError) as err:
        parse(_task(output), root=str(tmp_path), source="dagrun.toml")
    assert str(err.value).startswith("dagrun.toml:3: task 't', key 'outputs': " + message)


def test_item11_an_absolute_output_inside_the_project_is_made_relative(tmp_path):
    m = parse(_task(f"{tmp_path}/out/x.txt"), root=str(tmp_path))
    assert m.tasks[0].outputs == ("out/x.txt",)


@pytest.mark.parametrize("command", ["build", "clean"])
def test_item11_dot_as_an_output_is_refused_and_clean_removes_nothing(project, command):
    project.manifest(_task("."))
    project.write("precious.txt", "keep me\n")
    r = project.run(command)
    assert r.code == 2
    assert "dagrun.toml:3: task 't', key 'outputs': output '.' is the project folder" in r.err
    assert project.read("precious.txt") == "keep me\n"


def test_item11_clean_never_follows_a_symlink_out_of_the_project(project, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "victim.txt").write_text("not yours\n")
    os.symlink(outside, project.root / "link")
    project.manifest(_task("link/victim.txt"))
    r = project.run("clean")
    assert r.code == 0, r.err
    assert (outside / "victim.txt").read_text() == "not yours\n"
    assert "not removing 'link/victim.txt': its folder leads out of the project" in r.err


def test_item11_clean_removes_an_output_folder_inside_the_project(project):
    project.manifest(_task("build"))
    project.write("build/deep/x.o", "x")
    r = project.run("clean")
    assert r.code == 0, r.err
    assert not (project.root / "build").exists()
    assert (project.root / "dagrun.toml").exists()


# ---------------------------------------------------------------- item 12: no traceback


def test_item12_a_month_long_timeout_runs(project):
    project.manifest(
        '[tasks.t]\ncmd = "echo ok > out.txt"\noutputs = ["out.txt"]\ntimeout = 2592000\n'
    )
    r = project.run("build")
    assert r.code == 0, r.err
    assert project.read("out.txt") == "ok\n"


@pytest.mark.parametrize("value", ["1e10", "31536001"])
def test_item12_a_timeout_beyond_a_year_is_a_manifest_error(project, value):
    project.manifest(f'[tasks.t]\ncmd = "true"\ntimeout = {value}\n')
    r = project.run("build")
    assert r.code == 2
    assert "dagrun.toml:3: task 't', key 'timeout': must be at most 31536000 seconds" in r.err


def test_item12_an_output_under_a_file_fails_the_task_clearly(project):
    project.manifest('[tasks.t]\ncmd = "true"\noutputs = ["f/out.txt"]\n')
    project.write("f", "a file, not a folder\n")
    r = project.run("build")
    assert r.code == 1
    assert "Traceback" not in r.err + r.out
    assert "cannot make the folder of output" in r.out
    assert "f/out.txt: a file is in the way of a folder" in r.out


def test_item12_a_300_character_matrix_value_runs(project):
    value = "v" * 300
    project.manifest(
        f'[tasks.t]\nmatrix = {{ v = ["{value}"] }}\ncmd = "echo {{v}} > out.txt; echo kept"\n'
    )
    r = project.run("build")  # it prints: its run folder is kept
    assert r.code == 0, r.err
    assert project.read("out.txt") == value + "\n"
    (run,) = os.listdir(project.root / ".dagrun" / "runs")
    assert len(run) < 255


def test_item12_runs_being_a_file_fails_each_task_clearly(project):
    project.manifest('[tasks.t]\ncmd = "true"\n')
    project.write(".dagrun/runs", "in the way\n")
    r = project.run("build")
    assert r.code == 1
    assert "Traceback" not in r.err + r.out
    assert "cannot make the run folder" in r.out and "a file is in the way" in r.out


def test_item12_a_disk_full_while_writing_a_run_file_fails_the_task_clearly(project):
    project.manifest('[tasks.t]\ncmd = "echo hi"\n')  # a silent task writes no run file
    (project.root / ".dagrun" / "runs" / "t").mkdir(parents=True)
    os.symlink("/dev/full", project.root / ".dagrun" / "runs" / "t" / "command.txt")
    r = project.run("build")
    assert r.code == 1
    assert "Traceback" not in r.err + r.out
    assert "command.txt: No space left on device" in r.out


def test_item12_a_matrix_of_a_billion_tasks_is_refused_before_it_is_made(tmp_path):
    axis = "[" + ", ".join(str(n) for n in range(1000)) + "]"
    text = f'[tasks.t]\nmatrix = {{ a = {axis}, b = {axis}, c = {axis} }}\ncmd = "true"\n'
    with pytest.raises(ManifestError) as err:
        parse(text, root=str(tmp_path), source="dagrun.toml")
    assert "task 't', key 'matrix': the matrix makes 1,000,000,000 tasks" in str(err.value)
    assert "at most 1,000,000" in str(err.value)
