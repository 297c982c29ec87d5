"""Keys are a pure function of the manifest, the files and the declared environment.

Nothing that changes from one process to the next (PYTHONHASHSEED, and with it the order of
sets) may enter a key: every build is a new process, and one key computed differently reruns
the task and everything below it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.slow  # each test starts several Python processes

HERE = Path(__file__).parent
REPO = HERE.parent
SEEDS = ("0", "1", "2", "3", "4")

# a function that uses several module-level names (set order once decided the code key's)
STEPS = '''
import json
import os.path

SCALE = 3
OFFSET = 7


class Box:
    def __init__(self, value):
        self.value = value


def _shift(x):
    return x + OFFSET


def double(i, tag="t"):
    return Box(_shift(i * SCALE) + len(json.dumps([i, tag])) + len(os.path.sep)).value


def total(double, path):
    with open(path, "w") as f:
        f.write(str(sum(double.values() if isinstance(double, dict) else [double])))
    return path
'''

FUNCTIONS = """
[dagrun]
key_env = ["HOME"]

[env]
LC_ALL = "C"
B = "2"
A = "1"

[vars]
FLAGS = ["-n", "-s"]

[tasks.double]
matrix = { i = { range = [1, 4] }, f = { glob = "data/*.txt" } }
call = "steps:double"
args = ["{i}"]
kwargs = { tag = "{f.stem}" }
inputs = ["{f}"]

[tasks.total]
call = "steps:total"
deps = ["double"]
kwargs = { path = "build/total.txt" }
outputs = ["build/total.txt"]

[tasks.show]
cmd = "cat {inputs} {FLAGS}"
inputs = ["build/total.txt", "data/*.txt"]
env = { Z = "z", Y = "y" }
"""


def _manifests_in_tests() -> list[tuple[str, str, list[str]]]:
    """(name, manifest text, the other string constants of its file) for every module-level
    string of tests/test_*.py that is a manifest."""
    found = []
    for path in sorted(HERE.glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        strings = {}
        for node in ast.parse(path.read_text()).body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str)
                    and isinstance(node.targets[0], ast.Name)):
                strings[node.targets[0].id] = textwrap.dedent(node.value.value)
        for name, text in strings.items():
            try:
                tasks = tomllib.loads(text).get("tasks")
            except tomllib.TOMLDecodeError:
                continue
            if isinstance(tasks, dict):
                found.append((f"{path.stem}.{name}", text, list(strings.values())))
    return found


def _materialize(root: Path, text: str, others: list[str]) -> None:
    """Write the sources a manifest names (each file holding its own path) and the modules
    its calls import (the test file's code that defines the functions, or a stub)."""
    tasks = [t for t in tomllib.loads(text)["tasks"].values() if isinstance(t, dict)]
    outputs = {o for t in tasks for o in t.get("outputs", ())}
    wanted = [p for t in tasks for p in t.get("inputs", ()) if isinstance(p, str)]
    wanted += [
        v["glob"] for t in tasks for v in t.get("matrix", {}).values()
        if isinstance(v, dict) and isinstance(v.get("glob"), str)
    ]
    for pattern in wanted:
        if pattern in outputs or re.search(r"^[!/]|[{\[]|\.\.", pattern):
            continue
        path = root / re.sub(r"\*\*/?", "", pattern).replace("*", "a").replace("?", "q")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(str(path.relative_to(root)))
    calls: dict[str, list[str]] = {}
    for t in tasks:
        if isinstance(t.get("call"), str) and ":" in t["call"]:
            module, _, fn = t["call"].partition(":")
            calls.setdefault(module, []).append(fn)
    for module, fns in calls.items():
        code = next((c for c in others if all(f"def {fn}(" in c for fn in fns)), None)
        stub = "".join(f"def {fn}(*args, **kwargs):\n    return None\n" for fn in fns)
        (root / f"{module.replace('.', '/')}.py").write_text(code or stub)


def _projects(into: Path) -> dict[str, str]:
    """Every project, copied into ``into``: name -> its manifest's path relative to ``into``."""
    found = {}
    for example in sorted((REPO / "examples").glob("*/dagrun.toml")):
        name = f"examples.{example.parent.name}"
        shutil.copytree(example.parent, into / name, ignore=shutil.ignore_patterns(".dagrun"))
        found[name] = f"{name}/dagrun.toml"
    full = (REPO / "manifests" / "full.toml").read_text()  # with cores this machine has
    for line in ('core_pool = "0-15"\n', 'numa_nodes = { 0 = "0-7", 1 = "8-15" }\n'):
        full = full.replace(line, "")
    texts = [("manifests.full", full, []), ("functions", FUNCTIONS, [STEPS])]
    for name, text, others in texts + _manifests_in_tests():
        (into / name).mkdir()
        (into / name / "dagrun.toml").write_text(text)
        _materialize(into / name, text, others)
        found[name] = f"{name}/dagrun.toml"
    (into / "functions" / "data" / "b.txt").write_text("b")  # a second file for the matrix glob
    return found


def _keys_with_seed(tmp_path: Path, seed: str) -> dict[str, Any]:
    """Every project's keys, planned by a new process with PYTHONHASHSEED=seed in fresh copies."""
    folder = tmp_path / f"seed{seed}"
    folder.mkdir()
    projects = _projects(folder)
    env = {**os.environ, "PYTHONHASHSEED": seed, "DAGRUN_SERVER": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, str(HERE / "print_keys.py"), *projects.values()],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    by_path = json.loads(out.replace(str(folder), "<folder>"))  # in error messages
    return {name: by_path[path] for name, path in projects.items()}


def test_every_task_key_is_the_same_in_processes_with_different_hash_seeds(tmp_path):
    runs = {seed: _keys_with_seed(tmp_path, seed) for seed in SEEDS}
    first = runs[SEEDS[0]]
    planned = {name for name, keys in first.items() if isinstance(keys, dict)}
    examples = {name for name in first if name.startswith("examples.")}
    assert len(examples) == 8 and examples <= planned, first  # slurm is the 8th
    assert {"functions", "manifests.full", "test_pytasks.MANIFEST"} <= planned, first
    assert len(planned) >= 30, sorted(set(first) - planned)
    assert len(first["functions"]) == 3 * 2 + 2, first["functions"]
    for seed in SEEDS[1:]:
        for name in first:
            assert runs[seed][name] == first[name], f"{name}: PYTHONHASHSEED={seed}"


def _dagrun(root: Path, seed: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": seed, "DAGRUN_SERVER": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "dagrun", "--progress", "plain", *args],
        cwd=root, env=env, capture_output=True, text=True, timeout=60,
    )


def test_a_manifest_comment_and_another_hash_seed_rerun_nothing(tmp_path):
    (tmp_path / "steps.py").write_text(STEPS)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a")
    (tmp_path / "dagrun.toml").write_text(FUNCTIONS)
    first = _dagrun(tmp_path, "1", "build")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[5/5]" in first.stdout, first.stdout
    with (tmp_path / "dagrun.toml").open("a") as f:
        f.write("# a comment: no task changes\n")
    for seed in ("2", "3"):
        plan = _dagrun(tmp_path, seed, "build", "-n")
        assert plan.returncode == 0, plan.stdout + plan.stderr
        assert "changed" not in plan.stdout + plan.stderr, plan.stdout
        assert plan.stdout.splitlines()[-1] == "dagrun: 0 would run, 5 up to date", plan.stdout
        again = _dagrun(tmp_path, seed, "build", "--explain")
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.splitlines()[-1] == "dagrun: no work to do (5 up to date)", again.stdout


SETS_IN_ARGS = """
import pickle, sys
from dagrun.pycall import pack_args
blob = pack_args(({"ant", "bee", "cat", "dog", "eel", 7}, [frozenset({"x", "y", "z"})]),
                 {"tags": {"p", "q", "r", "s"}, "nested": {"k": ({"u", "v", "w"},)},
                  "keyed": {frozenset({"m", "n", "o"}): 1}})
args, kwargs = pickle.loads(blob)
assert args == ({"ant", "bee", "cat", "dog", "eel", 7}, [frozenset({"x", "y", "z"})]), args
assert type(args[1][0]) is frozenset and type(kwargs["tags"]) is set
assert kwargs == {"tags": {"p", "q", "r", "s"}, "nested": {"k": ({"u", "v", "w"},)},
                  "keyed": {frozenset({"m", "n", "o"}): 1}}, kwargs
assert pack_args([1, "x"], {"k": [2]}) == pickle.dumps(((1, "x"), {"k": [2]}), protocol=4)
sys.stdout.write(blob.hex())
"""


def test_sets_in_a_function_tasks_arguments_pickle_the_same_with_any_hash_seed():
    blobs = set()
    for seed in SEEDS:
        env = {**os.environ, "PYTHONHASHSEED": seed}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        run = subprocess.run([sys.executable, "-c", SETS_IN_ARGS], env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        blobs.add(run.stdout)
    assert len(blobs) == 1
