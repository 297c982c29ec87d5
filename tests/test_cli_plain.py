"""cli.plain_args: a plain build's command line read without argparse means what argparse says."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagrun.cli import parse, plain_args
from dagrun.entry import plain_build

PLAIN = [
    ["build"],
    [],
    ["-q"],
    ["build", "-j2"],
    ["build", "-j", "02", "lib", "app"],
    ["build", "lib", "app", "-k"],
    ["build", "--jobs=3", "--failures-allowed", "0", "x"],
    ["build", "--failures-allowed=2", "--keep-going", "--jobs", "4"],
    ["-C", "sub", "-f", "other.toml", "--progress", "plain", "build", "t"],
    ["-C", "a", "build", "-C", "b", "-j1", "-j", "3"],  # the last one wins, as in argparse
    ["--color", "always", "build", "-v", "-j", "2", "--verbose"],
    ["-f", "build"],
    ["-C", "build", "-f", "build"],  # "build" only as values: argparse reads no command
    ["build", "build"],
    ["lib", "app", "--quiet", "--progress", "rich", "--color", "never"],
]

NOT_PLAIN = [
    ["build", "-n"], ["list"], ["build", "--junit", "x.xml"], ["-h"], ["build", "-q", "-v"],
]


@pytest.mark.parametrize("argv", PLAIN, ids=lambda a: " ".join(a) or "(none)")
def test_a_plain_build_reads_as_argparse_reads_it(argv):
    assert vars(plain_args(argv)) == vars(parse(argv))


@pytest.mark.parametrize("argv", NOT_PLAIN, ids=" ".join)
def test_anything_else_is_left_to_argparse(argv):
    assert plain_args(argv) is None


WORDS = st.sampled_from([
    "build", "list", "-j", "-j2", "-j0", "--jobs", "--jobs=5", "--failures-allowed",
    "--failures-allowed=0", "-k", "--keep-going", "-q", "--quiet", "-v", "--verbose", "-C",
    "-f", "--progress", "--color", "plain", "never", "rich", "3", "0", "a", "b", "-n",
    "--explain", "x.toml", "sub",
])


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(st.lists(WORDS, max_size=7))
def test_any_words_plain_args_takes_mean_what_argparse_says(argv):
    fast = plain_args(argv)
    assert (fast is None) == (plain_build(argv) is None)
    if fast is not None:
        assert vars(fast) == vars(parse(argv))


@pytest.mark.slow
def test_a_plain_build_does_not_import_argparse(project):
    project.manifest('''
        [tasks.a]
        cmd = "echo a > a.txt"
        outputs = ["a.txt"]
    ''')
    code = (
        "import sys; from dagrun.cli import main; rc = main(['build', '-j1']); "
        "print(rc, 'argparse' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=project.root, capture_output=True, text=True, check=True
    )
    assert out.stdout.split()[-2:] == ["0", "False"]
    assert (project.root / "a.txt").read_text() == "a\n"


def test_an_option_the_reader_does_not_know_is_left_to_argparse(monkeypatch):
    import dagrun.argv

    # as if the fast path's recogniser learned an option this reader has not: argparse decides
    monkeypatch.setattr(dagrun.argv, "plain_build", lambda argv: (".", None, []))
    assert plain_args(["build", "--explain"]) is None
    assert plain_args(["build", "-j", "2"]) is not None
