"""Issue 8, item 18: the small ones.  Each test here failed on the main of that day."""

from __future__ import annotations

import pytest

from dagrun.errors import ManifestError
from dagrun.manifest import parse


def test_item18_an_empty_matrix_glob_warns(project):
    project.manifest('[tasks.cc]\nmatrix = { f = { glob = "scr/*.c" } }\ncmd = "cc {f}"\n')
    project.write("src/a.c", "int a;\n")
    r = project.run("build")
    assert r.code == 0
    assert (
        "dagrun: warning: dagrun.toml:2: task 'cc': matrix glob f = 'scr/*.c' matches no file"
        in r.err
    )
    assert "allow_empty = true" in r.err
    assert "matches no file" in project.run("build").err  # every time, not only the first


def test_item18_allow_empty_silences_the_empty_matrix_glob_warning(project):
    project.manifest(
        '[tasks.cc]\nmatrix = { f = { glob = "scr/*.c", allow_empty = true } }\ncmd = "cc {f}"\n'
    )
    r = project.run("build")
    assert r.code == 0, r.err
    assert r.err == ""


def test_item18_allow_empty_must_be_a_boolean(tmp_path):
    with pytest.raises(ManifestError, match="allow_empty must be true or false"):
        parse(
            '[tasks.cc]\nmatrix = { f = { glob = "*.c", allow_empty = 1 } }\ncmd = "x"\n',
            root=str(tmp_path),
        )


def test_item18_a_utf8_byte_order_mark_is_accepted(project):
    (project.root / "dagrun.toml").write_bytes(
        b'\xef\xbb\xbf[tasks.t]\ncmd = "echo ok > out.txt"\noutputs = ["out.txt"]\n'
    )
    r = project.run("build")
    assert r.code == 0, r.err
    assert project.read("out.txt") == "ok\n"


def test_item18_a_huge_failed_command_is_cut_when_printed(project):
    cmd = "false # " + "x" * 200_000
    project.manifest(f'[tasks.t]\ncmd = "{cmd}"\n')
    r = project.run("build")
    assert r.code == 1
    assert "FAILED: [code=1] t" in r.out  # it ran: too long for an argument, it runs from a file
    assert len(r.out) < 10_000
    assert "[dagrun: command cut at 4000 of 200008 characters" in r.out
    assert (project.root / ".dagrun" / "runs" / "t" / "command.txt").read_text().startswith(cmd)


TOO_BIG_TASK = """
[executors.local]
core_pool = "0"

[tasks.big]
cmd = "true"
threads = 2
"""


@pytest.mark.parametrize("command", [["build", "-n"], ["list"], ["build"]])
def test_item18_dry_run_and_list_refuse_what_build_refuses(project, command):
    # (the case of the issue, a task of an executor type this dagrun could not run, is gone: every
    # type runs now; what build refuses before running anything, -n and list refuse alike)
    project.manifest(TOO_BIG_TASK)
    r = project.run(*command)
    assert r.code == 2
    assert "would run" not in r.out and "will run" not in r.out
    never = "task 'big', key 'threads': threads = 2 can never fit: the core pool has 1 cores"
    assert never in r.err


def test_item18_clean_dead_removes_outputs_of_tasks_no_longer_in_the_manifest(project):
    two = """
    [tasks.a]
    cmd = "echo a > a.txt"
    outputs = ["a.txt"]

    [tasks.gone]
    cmd = "mkdir -p old && echo b > old/b.txt"
    outputs = ["old/b.txt"]
    """
    project.manifest(two)
    assert project.run("build").code == 0
    project.manifest(two.split("[tasks.gone]")[0])
    r = project.run("clean", "--dead")
    assert r.code == 0, r.err
    assert r.out == "dagrun: removed 1 output(s)\n"
    assert not (project.root / "old" / "b.txt").exists()
    assert project.read("a.txt") == "a\n"
    assert project.run("clean", "--dead").out == "dagrun: removed 0 output(s)\n"


def test_item18_clean_dead_keeps_an_output_a_live_task_now_declares(project):
    project.manifest('[tasks.old]\ncmd = "echo > x.txt"\noutputs = ["x.txt"]\n')
    assert project.run("build").code == 0
    project.manifest('[tasks.new]\ncmd = "echo > x.txt"\noutputs = ["x.txt"]\n')
    assert project.run("clean", "--dead").out == "dagrun: removed 0 output(s)\n"
    assert (project.root / "x.txt").exists()


def test_item18_a_task_with_deps_and_no_cmd_is_an_aggregate(project):
    project.manifest(
        """
        [tasks.a]
        cmd = "echo a > a.txt"
        outputs = ["a.txt"]

        [tasks.b]
        cmd = "echo b > b.txt"
        outputs = ["b.txt"]

        [tasks.all]
        deps = ["a", "b"]
        """
    )
    r = project.run("build", "all")
    assert r.code == 0, r.err
    assert project.read("a.txt") == "a\n" and project.read("b.txt") == "b\n"
    assert "3 succeeded" in r.out
    assert not (project.root / ".dagrun" / "runs" / "all").exists()  # nothing ran
    assert project.run("build", "all").out == "dagrun: no work to do (3 up to date)\n"


@pytest.mark.parametrize(
    "body, message",
    [
        ('outputs = ["x"]', "missing 'cmd' (the shell command to run)"),
        ('deps = ["a"]\noutputs = ["x"]', "a task without 'cmd' runs nothing"),
    ],
)
def test_item18_without_deps_cmd_stays_required(tmp_path, body, message):
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(f'[tasks.a]\ncmd = "x"\n[tasks.t]\n{body}\n', root=str(tmp_path))
