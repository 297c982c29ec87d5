"""dagrun.entry: the words it hands to the no-op fast path mean to it what they mean to argparse."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dagrun.cli import parse
from dagrun.entry import main, plain_build

ACCEPTED = [
    ["build"],
    ["build", "-j2"],
    ["build", "-j", "2", "lib", "app"],
    ["build", "lib", "app", "-k"],
    ["build", "--jobs=3", "--failures-allowed", "0", "x"],
    ["build", "--failures-allowed=2", "--keep-going"],
    ["-C", "sub", "-f", "other.toml", "--progress", "plain", "build", "t"],
    ["-f", "/abs/m.toml", "-C", "sub", "build"],
    ["build", "build"],  # a target named build
    [],  # a bare dagrun is a build
    ["-q"],
    ["lib", "app"],  # no command: a build of these targets
    ["-j2", "-q", "app"],
    ["-f", "build"],  # a manifest named build
    ["build", "-C", "sub", "--progress", "plain", "t"],  # global options after the command
    ["build", "t", "-f", "x.toml", "-v", "--color", "never"],
    ["-C", "a", "build", "-C", "b"],  # the last one wins, as in argparse
    ["--color", "always", "build", "-q", "-j", "2"],
]

REFUSED = [
    ["app", "list"],  # a command word anywhere: argparse decides
    ["-h"],
    ["list"],
    ["build", "-n"],
    ["build", "--explain"],
    ["build", "--dry-run"],
    ["build", "-j0"],
    ["build", "-j", "x"],
    ["build", "-j", "-1"],
    ["build", "--jobs", "+2"],
    ["build", "a", "-k", "b"],  # argparse: "unrecognized arguments: b"
    ["build", "--", "a"],
    ["build", "--keep"],  # an abbreviation argparse would accept: leave it to argparse
    ["--progress", "fancy", "build"],
    ["--progress=plain", "build"],
    ["-C", "", "build"],
    ["-C", "-f", "build"],
    ["--version"],
    ["build", "-h"],
    ["build", "-q", "-v"],  # argparse: a usage error
    ["build", "a", "-q", "b"],
    ["--color", "sometimes", "build"],
    ["build", "--junit", "x.xml"],
    ["show", "a"],
]


@pytest.mark.parametrize("argv", ACCEPTED, ids=" ".join)
def test_accepted_words_mean_what_argparse_says(argv):
    args = parse(argv)
    assert plain_build(argv) == (args.directory, args.file, args.targets)
    assert args.command == "build" and not args.dry_run and not args.explain


@pytest.mark.parametrize("argv", REFUSED, ids=lambda a: " ".join(a) or "(none)")
def test_anything_else_goes_to_argparse(argv):
    assert plain_build(argv) is None


def test_a_usage_error_is_still_argparses(project, capsys, monkeypatch):
    project.manifest('[tasks.a]\ncmd = "true"\n')
    monkeypatch.chdir(project.root)
    with pytest.raises(SystemExit) as exc:
        main(["build", "a", "-k", "b"])
    assert exc.value.code == 2
    assert "unrecognized arguments: b" in capsys.readouterr().err


@pytest.mark.slow
def test_python_m_dagrun_answers_a_no_op_through_the_fast_path(tmp_path):
    manifest = '[tasks.a]\ncmd = "touch out.txt"\noutputs = ["out.txt"]\n'
    (tmp_path / "dagrun.toml").write_text(manifest)
    env = dict(os.environ)
    first = subprocess.run([sys.executable, "-m", "dagrun", "build"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    code = ("import sys, runpy; sys.argv = ['dagrun', 'build']\n"
            "try:\n    runpy.run_module('dagrun', run_name='__main__')\n"
            "except SystemExit as e:\n    print(e.code, 'dagrun.cli' in sys.modules)")
    again = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert again.stdout == "dagrun: no work to do (1 up to date)\n0 False\n", again.stderr


@pytest.mark.slow
def test_a_closed_stdout_is_exit_1_without_a_traceback(tmp_path):
    (tmp_path / "dagrun.toml").write_text('[tasks.a]\ncmd = "touch o"\noutputs = ["o"]\n')
    first = subprocess.run([sys.executable, "-m", "dagrun", "build"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / ".dagrun" / "fresh").exists()
    read, write = os.pipe()
    os.close(read)
    try:
        again = subprocess.run([sys.executable, "-m", "dagrun", "build"], cwd=tmp_path,
                               stdout=write, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write)
    assert (again.returncode, again.stderr) == (1, "")


def test_the_fast_paths_command_list_is_the_parsers() -> None:
    from dagrun.cli import parser
    from dagrun.completion import describe
    from dagrun.entry import COMMANDS

    assert sorted(COMMANDS) == sorted(c.name for c in describe(parser())[1])
