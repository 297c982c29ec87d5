"""Random and malformed manifests never give a traceback: a DagrunError or a valid graph.

Four sources of input, each fed to manifest.parse and graph.compile:
TOML-ish token soup, mutations of valid manifests, random documents built
from manifest.py's own key tables (also through build_manifest, the API's
path, which must agree with the file's), and a subset through the real CLI
(`dagrun build -n`, in-process), which must exit 0, 1 or 2, an error in one line.

Strings that start with "/" or contain ".." are left out: a glob such as
"/**" is legal and would walk the whole machine's file system.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from dagrun import graph, manifest
from dagrun.errors import DagrunError

pytestmark = [
    pytest.mark.slow,
    # hypothesis writes a patch for a failing example with libcst, which warns on import:
    # without this, a failure ends in a pytest INTERNALERROR instead of its report
    pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"),
]

REPO = Path(__file__).resolve().parent.parent
FILES = (
    "a.txt",
    "b.c",
    "data/x.csv",
    "data/y.csv",
    "sub/c.txt",
    "sub/data/z.csv",
    "gen_table.py",
    "report.py",
)
SOURCE = "fuzz.toml"

# DAGRUN_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py searches longer
EXAMPLES = int(os.environ.get("DAGRUN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)

SEEDS = [
    (REPO / "examples" / "quickstart" / "dagrun.toml").read_text().replace("...", ""),
    (REPO / "manifests" / "full.toml").read_text().replace('"/shared/proj"', '"shared/proj"'),
    '''[dagrun]
default = ["report"]
[env]
A = "1"
[tasks]
gen = { cmd = "echo > build/t.h", outputs = ["build/t.h"] }
[tasks.cc]
cmd = """
cc -c b.c ${CFLAGS} {a,b}
"""
inputs = ["b.c", "build/t.h", "data/*.csv"]
outputs = ["build/b.o"]
deps = ["gen"]
env.CFLAGS = "-O2"
[tasks.sim]
matrix = { n = [1, 2], f = { glob = "data/*.csv" } }
cmd = "sim {n} {f.stem} > out/{n}-{f.name}"
outputs = ["out/{n}-{f.name}"]
cwd = "sub"
[tasks.report]
cmd = "cat out/*"
inputs = ["sub/out/*", "a.txt"]
deps = ["sim", "c*"]
timeout = 1.5
retries = 2
always = true
''',
]


def make_root(path: Path) -> Path:
    for name in FILES:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(name)
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_root(tmp_path_factory.mktemp("fuzz")))


def safe(text: str) -> bool:
    """No string that could make a glob leave the fuzz folder."""
    escaped = re.search(r"\\[uU]0*2[eEfF]", text)  # "\u002f" is "/", "\u002e" is "."
    return ".." not in text and re.search(r"[\"']\s*/", text) is None and escaped is None


def parse_and_compile(text: str, root: str) -> manifest.Manifest | None:
    """The manifest (compiled fine), or None after a DagrunError; any other exception escapes."""
    try:
        m = manifest.parse(text, source=SOURCE, root=root)
        graph.compile(m)
    except DagrunError as exc:
        assert str(exc).startswith(SOURCE), str(exc)
        event(f"{type(exc).__name__}: {'TOML' if 'invalid TOML' in str(exc) else 'checks'}")
        return None
    event("valid")
    return m


# ---------------------------------------------------------------- token soup

TOKENS = [
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    ",",
    ".",
    "=",
    " ",
    "\n",
    "\n",
    "#",
    '"',
    "'",
    '"""',
    "\\n",
    "dagrun",
    "env",
    "tasks",
    "executors",
    "tasks.a",
    "tasks.b",
    "cmd",
    "inputs",
    "outputs",
    "deps",
    "matrix",
    "glob",
    "cwd",
    "threads",
    "timeout",
    "retries",
    "always",
    "executor",
    "default",
    "jobs",
    "type",
    "local",
    "ssh",
    "host",
    "core_pool",
    "numa_nodes",
    "display",
    '"a"',
    '"b"',
    '"x"',
    '"*.txt"',
    '"data/*.csv"',
    '"**"',
    '"{n}"',
    '"{f.stem}"',
    '"[z-a]"',
    '"[[a]"',
    '"[!]"',
    "1",
    "0",
    "-1",
    "2.5",
    "1e400",
    "nan",
    "inf",
    "true",
    "false",
    "1979-05-27",
    "07:32:00",
    '["a"]',
    '["a.txt"]',
    "[1, 2]",
    "[]",
    "{}",
    "{ n = [1, 2] }",
    '{ glob = "*.txt" }',
    "\x00",
]


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_token_soup(root: str, text: str) -> None:
    assume(safe(text))
    parse_and_compile(text, root)


@FUZZ
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=200))
def test_random_text(root: str, text: str) -> None:
    assume(safe(text))
    parse_and_compile(text, root)


# ---------------------------------------------------------------- mutations of valid manifests


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        text = draw(st.sampled_from(MUTATIONS))(draw, text)
    return text


def _delete(draw: st.DrawFn, text: str) -> str:
    i = draw(st.integers(0, len(text)))
    return text[:i] + text[i + draw(st.integers(1, 12)) :]


def _insert(draw: st.DrawFn, text: str) -> str:
    i = draw(st.integers(0, len(text)))
    return text[:i] + draw(st.sampled_from(TOKENS)) + text[i:]


def _swap_lines(draw: st.DrawFn, text: str) -> str:
    lines = text.split("\n")
    i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


def _duplicate_line(draw: st.DrawFn, text: str) -> str:
    lines = text.split("\n")
    i = draw(st.integers(0, len(lines) - 1))
    return "\n".join(lines[: i + 1] + lines[i:])


def _swap_keys(draw: st.DrawFn, text: str) -> str:
    """Rename one known key to another (or to a typo)."""
    keys = sorted({*manifest.TASK_KEYS, *manifest.DAGRUN_KEYS, *manifest.TOP_KEYS})
    old = draw(st.sampled_from([k for k in keys if k in text] or keys))
    new = draw(st.sampled_from([*keys, old[:-1], old + "s"]))
    return text.replace(old, new, draw(st.integers(1, 3)))


def _retype_value(draw: st.DrawFn, text: str) -> str:
    """Replace the value of one `key = value` line with a value of another type."""
    lines = text.split("\n")
    candidates = [i for i, line in enumerate(lines) if re.match(r"\s*[\w.]+\s*=", line)]
    if not candidates:
        return text
    i = draw(st.sampled_from(candidates))
    key = lines[i].split("=", 1)[0]
    return "\n".join(lines[:i] + [key + "= " + draw(toml_values)] + lines[i + 1 :])


MUTATIONS: list[Callable[[st.DrawFn, str], str]] = [
    _delete,
    _insert,
    _swap_lines,
    _duplicate_line,
    _swap_keys,
    _retype_value,
]


# ---------------------------------------------------------------- values and documents

SAFE_TEXT = st.text(alphabet="abcxyz019 _-.*?[]{}$/:,=\t\\\"'\n\x00é", max_size=12).filter(safe)
PATHS = st.one_of(
    st.sampled_from(["a.txt", "b.c", "data/*.csv", "**/*.txt", "build/o", "out/{n}", "{f}", "."]),
    SAFE_TEXT,
)
scalars = st.one_of(
    st.integers(-3, 5),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    PATHS,
    st.dates(),
)
py_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(SAFE_TEXT, inner, max_size=3)
    ),
    max_leaves=6,
)


def to_toml(v: Any) -> str:
    """A Python value as a one-line TOML value (inline tables and arrays)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, (int,)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(to_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return (
            "{ "
            + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {to_toml(x)}" for k, x in v.items())
            + " }"
        )
    return str(v.isoformat())  # a date


toml_values = py_values.map(to_toml)
NAMES = st.sampled_from(["t0", "t1", "t2", "t*", "nope"])
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    # [dagrun]
    "jobs": st.integers(0, 4),
    "failures_allowed": st.integers(-1, 2),
    "default": st.lists(NAMES, max_size=2),
    "key_env": st.lists(st.sampled_from(["CC", "HOME", ""]), max_size=2),
    "resources": st.dictionaries(st.sampled_from(["gpu", "disk"]), st.integers(-1, 2), max_size=2),
    "watch_debounce_ms": st.integers(-1, 500),
    # tasks
    "cmd": st.sampled_from(["true", "echo {n} > out/{n}", "cat {f}", " "]),
    "inputs": st.lists(PATHS, max_size=3),
    "outputs": st.lists(PATHS, max_size=2),
    "deps": st.lists(NAMES, max_size=2),
    "display": st.sampled_from(["GEN {n}", ""]),
    "env": st.dictionaries(
        st.sampled_from(["A", "B=", ""]), st.sampled_from(["1", "{n}"]), max_size=2
    ),
    "matrix": st.sampled_from([{"n": [1, 2]}, {"f": {"glob": "data/*.csv"}}, {"n": [1, 1]}, {}]),
    "threads": st.integers(0, 3),
    "numa_node": st.integers(-1, 1),
    "timeout": st.sampled_from([0.5, 1, 0, -1]),
    "retries": st.integers(-1, 2),
    "always": st.booleans(),
    "executor": st.sampled_from(["local", "lab", ""]),
    "cwd": st.sampled_from([".", "sub", "data/", "{n}"]),
}


def value_for(key: str) -> st.SearchStrategy[Any]:
    """Mostly a plausible value for ``key`` (often right, sometimes just wrong); else anything."""
    good = PLAUSIBLE.get(key)
    return py_values if good is None else st.one_of(good, good, good, py_values)


@st.composite
def tasks_tables(draw: st.DrawFn) -> dict[str, Any]:
    """Task tables from TASK_KEYS with values from value_for; now and then a typo."""
    tasks: dict[str, Any] = {}
    for n in range(draw(st.integers(0, 4))):
        keys = draw(st.lists(st.sampled_from(sorted(manifest.TASK_KEYS)), max_size=6))
        body = {key: draw(value_for(key)) for key in keys}
        if draw(st.integers(0, 9)):
            body.setdefault("cmd", "true")
        if draw(st.integers(0, 9)) == 0:
            body[draw(SAFE_TEXT)] = draw(py_values)
        tasks[draw(st.sampled_from([f"t{n}", f"t{n}", draw(SAFE_TEXT)]))] = body
    return tasks


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    settings_keys = draw(st.lists(st.sampled_from(sorted(manifest.DAGRUN_KEYS)), max_size=3))
    doc: dict[str, Any] = {
        "dagrun": {k: draw(value_for(k)) for k in settings_keys},
        "env": draw(st.dictionaries(SAFE_TEXT, st.one_of(SAFE_TEXT, py_values), max_size=2)),
        "tasks": draw(tasks_tables()),
    }
    if draw(st.booleans()):
        kind = draw(st.sampled_from(sorted(manifest.EXECUTOR_KEYS)))
        keys = draw(st.lists(st.sampled_from(sorted(manifest.EXECUTOR_KEYS[kind])), max_size=3))
        table = {k: draw(py_values) for k in keys}
        table["type"] = kind
        doc["executors"] = {draw(st.sampled_from(["local", "lab"])): table}
    return doc


@FUZZ
@given(mutated())
def test_mutated_manifests(root: str, text: str) -> None:
    assume(safe(text))
    parse_and_compile(text, root)


@FUZZ
@given(documents())
def test_random_documents_and_the_api_path_agree(root: str, doc: dict[str, Any]) -> None:
    text = "\n".join(f"{k} = {to_toml(v)}" for k, v in doc.items())
    assume(safe(text))
    from_file = parse_and_compile(text, root)
    try:
        from_api = manifest.build_manifest(
            SOURCE, root, doc["dagrun"], doc["env"], doc["tasks"], doc.get("executors")
        )
        graph.compile(from_api)
    except DagrunError as exc:
        assert from_file is None, f"only the API path refused it: {exc}"
        return
    assert from_file is not None, "only the file path refused it"
    assert [t._replace(line=None) for t in from_file.tasks] == list(from_api.tasks)


# ---------------------------------------------------------------- through the CLI


def run_cli(text: str) -> tuple[int, str]:
    """`dagrun --progress plain build -n` in a fresh folder; (exit status, stderr)."""
    old = os.getcwd()
    folder = tempfile.mkdtemp(prefix="dagrun-fuzz-")
    err, out = io.StringIO(), io.StringIO()
    try:
        make_root(Path(folder))
        Path(folder, "dagrun.toml").write_text(text)
        from dagrun.cli import main

        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(["-C", folder, "--progress", "plain", "build", "-n"])
    finally:
        os.chdir(old)
        shutil.rmtree(folder, ignore_errors=True)
    return code, err.getvalue()


@settings(FUZZ, max_examples=max(EXAMPLES // 4, 1))
@given(
    st.one_of(
        mutated(), documents().map(lambda d: "\n".join(f"{k} = {to_toml(v)}" for k, v in d.items()))
    )
)
def test_cli_exits_0_or_2_without_a_traceback(text: str) -> None:
    assume(safe(text))
    code, err = run_cli(text)
    assert "Traceback" not in err
    assert code in (0, 1, 2)
    if code == 2:
        assert err.startswith("dagrun: error: ") and err.count("dagrun: error: ") == 1, err


def test_the_seeds_are_valid(root: str) -> None:
    """The mutations start from safe manifests that parse and compile (else they test little)."""
    for seed in SEEDS:
        assert safe(seed)
        graph.compile(manifest.parse(seed, source=SOURCE, root=root))
