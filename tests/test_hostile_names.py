"""File names are data (issue 20): whatever bytes a name holds, a command receives it as one
word, exactly, and nothing else runs.  Real files, real `sh -c` jobs, the CLI in-process."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagrun import manifest
from dagrun.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"),
]

# appends its arguments, as bytes, to ./log (one line each); touches the ones under o/
REC = """\
import os, sys
args = [os.fsencode(a) for a in sys.argv[1:]]
with open("log", "ab") as f:
    f.write(repr(args).encode() + b"\\n")
for a in args:
    if a.startswith(b"o/"):
        open(a, "wb").close()
"""


def build(root: Path, *args: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        with contextlib.chdir(root):  # -C changes the folder: give it back
            return main(["--progress", "plain", "build", "-j1", *args])


def records(root: Path) -> list[list[bytes]]:
    import ast

    return [ast.literal_eval(line.decode()) for line in (root / "log").read_bytes().splitlines()]


def toml_str(s: str) -> str:
    """A TOML basic string holding ``s`` exactly."""
    out = []
    for c in s:
        if c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def test_a_name_that_closes_the_authors_quotes_runs_nothing(tmp_path):
    """The issue's repro: `{inputs}` inside a matched name used to close `'{f}'` and run `id`."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x{inputs}$(id>PWNED).csv").write_text("1\n")
    (tmp_path / "dagrun.toml").write_text(
        '[tasks.count]\nmatrix = { f = { glob = "data/*.csv" } }\n'
        "cmd = \"wc -l < '{f}' > out.txt\"\ninputs = [\"{f}\"]\noutputs = [\"out.txt\"]\n"
    )
    assert build(tmp_path) == 0
    assert not (tmp_path / "PWNED").exists()
    assert (tmp_path / "out.txt").read_text().strip() == "1"


@pytest.mark.parametrize(
    ("cmd", "words"),
    [
        ("printf '%s\\n' {f}", ["a b"]),
        ("printf '%s\\n' '{f}'", ["a b"]),
        ("printf '%s\\n' \"{f}\"", ["a b"]),
        ("printf '%s\\n' 'x-{f}-y'", ["x-a b-y"]),
        ("printf '%s\\n' \"$(printf %s {f})\"", ["a b"]),
        ("printf '%s\\n' \"$(printf %s \"{f}\")\"", ["a b"]),
        ("printf '%s\\n' \"`printf %s '{f}'`\"", ["a b"]),
    ],
)
def test_the_authors_quotes_around_a_name_still_work(tmp_path, cmd, words):
    """`'{f}'`, `"{f}"`, `{f}` and `$(...)` all give the name as one word."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a b").write_text("")
    (tmp_path / "dagrun.toml").write_text(
        f'[tasks.p]\nmatrix = {{ f = {{ glob = "*" }} }}\ncmd = {toml_str(cmd + " > out")}\n'
        'cwd = "d"\noutputs = ["out"]\n'.replace("{f}", "{f.name}")
    )
    assert build(tmp_path) == 0
    assert (tmp_path / "d" / "out").read_text().splitlines() == words


def test_safe_names_give_the_command_text_they_always_gave(tmp_path):
    """Ordinary names are not quoted: existing keys do not change."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.csv").write_text("")
    text = (
        '[tasks.p]\nmatrix = { f = { glob = "d/*" } }\n'
        "cmd = \"wc -l '{f}' \\\"{f.stem}\\\" {f}\"\ninputs = [\"{f}\"]\n"
    )
    (t,) = manifest.parse(text, root=str(tmp_path)).tasks
    assert t.cmd == "wc -l 'd/a.csv' \"a\" d/a.csv"


def test_a_name_with_wildcards_is_an_input_matching_only_itself(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("q[1]", "q1", "x*y", "xzy"):
        (tmp_path / "d" / name).write_text(name)
    text = '[tasks.p]\nmatrix = { f = { glob = "d/*" } }\ncmd = "cat {inputs}"\ninputs = ["{f}"]\n'
    tasks = manifest.parse(text, root=str(tmp_path)).tasks
    from dagrun import graph

    g = graph.compile(manifest.parse(text, root=str(tmp_path)))
    by_name = {t.name: t.cmd for t in g.specs}
    assert len(tasks) == 4
    assert by_name["p[f=d/q[1]]"] == "cat 'd/q[1]'"
    assert by_name["p[f=d/x*y]"] == "cat 'd/x*y'"


_FRAGMENTS = [
    b"$(touch PWNED)", b"`touch PWNED`", b"'", b'"', b" ", b"\n", b"\t", b"{inputs}",
    b"{outputs}", b"{f}", b"{V}", b"{f.name}", b"\\", b";", b"*", b"?", b"[", b"]", b"\xff",
    b"\xc3(", b"$HOME", b"${f}", b"-", b"|", b"&", b">", b"<", b"~", b"!", b"#", b"%", b"a",
]
_NAME = (
    st.lists(
        st.one_of(st.sampled_from(_FRAGMENTS), st.binary(min_size=1, max_size=3)),
        min_size=1, max_size=5,
    )
    .map(b"".join)
    .map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_")[:200])
    .filter(lambda b: not b.startswith(b"."))  # globs skip hidden names, as the shell's
)


def _utf8(b: bytes) -> bool:
    try:
        b.decode()
    except UnicodeDecodeError:
        return False
    return True


def _no_wildcard(b: bytes) -> bool:
    return not any(c in b for c in b"*?[")


def _project(root: Path, names: list[bytes], vnames: list[bytes], onames: list[bytes]) -> None:
    for folder, group in ((b"d", names), (b"v", vnames)):
        os.makedirs(os.path.join(os.fsencode(root), folder), exist_ok=True)
        for n in group:
            with open(os.path.join(os.fsencode(root), folder, n), "wb") as f:
                f.write(n)
    os.makedirs(root / "o", exist_ok=True)
    (root / "rec.py").write_text(REC)
    v = ", ".join(toml_str("v/" + n.decode()) for n in vnames)
    w = ", ".join(toml_str("o/" + n.decode()) for n in onames)
    (root / "dagrun.toml").write_text(
        f"[vars]\nV = [{v}]\nW = [{w}]\n\n"
        '[tasks.m]\nmatrix = { f = { glob = "d/*" } }\n'
        "cmd = \"python3 rec.py m {f} '{f}' \\\"{f}\\\" {f.name} {inputs}\"\n"
        'inputs = ["{f}"]\n\n'
        "[tasks.all]\n"
        "cmd = \"python3 rec.py all {inputs} '{inputs}' {V} \\\"{V}\\\" {outputs}\"\n"
        'inputs = ["d/*", "{V}"]\noutputs = ["{W}"]\n'
    )


def _expected(names: list[bytes], vnames: list[bytes], onames: list[bytes]) -> list[list[bytes]]:
    paths = [b"d/" + n for n in names]
    m = [[b"m", p, p, p, p[2:], p] for p in paths]
    ins = [os.fsencode(s) for s in sorted(os.fsdecode(p) for p in paths)]
    ins += [b"v/" + n for n in vnames]
    vs = [b"v/" + n for n in vnames]
    outs = [b"o/" + n for n in onames]
    every = [b"all", *ins, b" ".join(ins), *vs, b" ".join(vs), *outs]
    return sorted(m) + [every]


@settings(
    max_examples=int(os.environ.get("DAGRUN_NAME_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    names=st.lists(_NAME, min_size=1, max_size=4, unique=True),
    # what [vars] and outputs hold is the author's text (TOML: UTF-8), where * ? [ are a glob's
    vnames=st.lists(_NAME.filter(_utf8).filter(_no_wildcard), min_size=1, max_size=3, unique=True),
    onames=st.lists(_NAME.filter(_utf8).filter(_no_wildcard), min_size=1, max_size=2, unique=True),
)
def test_random_names_reach_the_command_as_single_words(names, vnames, onames):
    """Any name, through a matrix glob, `{inputs}`, `{outputs}` and `[vars]` lists: the command
    gets exactly those names, one word each (inside quotes: one word, joined), and nothing else
    runs (no file appears but the ones declared)."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        _project(root, names, vnames, onames)
        assert build(root) == 0
        got = records(root)
        assert sorted(got[:-1]) + got[-1:] == _expected(names, vnames, onames)
        made = {
            os.path.relpath(os.path.join(os.fsencode(dp), f), os.fsencode(root))
            for dp, dns, fs in os.walk(os.fsencode(root))
            for f in fs
            if b".dagrun" not in os.fsencode(dp)
        }
        expected = {b"d/" + n for n in names} | {b"v/" + n for n in vnames}
        expected |= {b"o/" + n for n in onames} | {b"rec.py", b"log", b"dagrun.toml"}
        assert made == expected
        assert build(root) == 0  # and again: up to date, the same words
        assert len(records(root)) == len(got)


def test_a_name_that_is_not_utf8_is_printed_and_kept_in_any_locale(tmp_path):
    """Under a strict UTF-8 stdout (en_US.UTF-8), a failing task named after a non-UTF-8 file:
    its report, command.txt and summary, no UnicodeEncodeError."""
    import subprocess
    import sys

    (tmp_path / "d").mkdir()
    with open(os.path.join(os.fsencode(tmp_path), b"d", b"a\xff b"), "wb") as f:
        f.write(b"1")
    (tmp_path / "dagrun.toml").write_text(
        '[tasks.bad]\nmatrix = { f = { glob = "d/*" } }\ncmd = "echo {f}; exit 3"\n'
    )
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    p = subprocess.run([sys.executable, "-m", "dagrun", "build"], cwd=tmp_path, env=env,
                       capture_output=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert b"Traceback" not in p.stderr + p.stdout
    assert b"FAILED: [code=3] bad[f=d/a\xff b]\necho 'd/a\xff b'; exit 3\n" in p.stdout
    (run,) = (tmp_path / ".dagrun" / "runs").iterdir()
    assert (run / "command.txt").read_bytes().startswith(b"echo 'd/a\xff b'; exit 3\n")
