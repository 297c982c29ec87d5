"""Correct after any history (issue 8): a hypothesis state machine over a small real project.

A generated DAG of 3-6 tasks (``cat`` of source files and upstream outputs, a short sleep, a
``flags/tK`` file that makes task K fail after writing a partial output), beside a matrix over
``mat/*.txt`` with a task that reads all its outputs (``out/m-*``), a function task (``call``,
keyed by its code) and a non-deterministic producer (``nd`` writes the time, ``ndc`` copies
it), is edited, reverted, broken and repaired at random: inputs edited and reverted, matrix
inputs added and removed, commands changed and changed back, outputs deleted or tampered with,
tasks made to fail and pass, tasks cleaned (``nd`` too: its new bytes must reach ``ndc``),
``nd`` made ``always``, a byte of ``.dagrun/cache``, ``cache.journal``, ``log`` or ``fresh``
flipped, the whole tree moved elsewhere through a tarball (a CI cache restore), a real
``dagrun build`` killed with SIGKILL (tasks and all) at a random instant.  Every build is a new
process with its own random ``PYTHONHASHSEED`` (keys must not depend on it).  After every build
that succeeds (of everything, or of one target), every output it brought up to date must equal
what a from-scratch build of a copy of the tree (manifest and inputs only) produces, no output
of a removed matrix input is left, ``ndc`` equals ``nd``, and the same build again must have
nothing to do.

CI runs a few examples; a long local run is one command:

    DAGRUN_STATEFUL_EXAMPLES=300 DAGRUN_STATEFUL_STEPS=40 \\
    DAGRUN_STATEFUL_REPORT=/tmp/stateful.txt pytest tests/test_stateful.py

(the report file receives the steps and compared builds made, one line per example; the test's
timeout grows with the number of steps).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from dagrun.cli import main as cli_main

EXAMPLES = int(os.environ.get("DAGRUN_STATEFUL_EXAMPLES", "5"))
STEPS = int(os.environ.get("DAGRUN_STATEFUL_STEPS", "20"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(max(600, 6 * EXAMPLES * STEPS))]
REPORT = os.environ.get("DAGRUN_STATEFUL_REPORT")
SOURCES = 3
CONTENTS = ("one\n", "two\n", "three\n", "")
STATE_FILES = ("cache", "cache.journal", "log", "fresh")
MATRIX = 3  # mat/x0.txt .. mat/x2.txt, each there or not
# a function task whose code uses two module-level names (their order once followed the seed)
STEPS_PY = '''
PREFIX = "fn:"
SUFFIX = "!\\n"


def fn():
    with open("in/i0") as f:
        text = f.read()
    with open("out/fn", "w") as f:
        f.write(PREFIX + text.upper() + SUFFIX)
    return len(text)
'''
FIXED = """
[tasks.m]
matrix = {{ f = {{ glob = "mat/*.txt", allow_empty = true }} }}
cmd = "cat {{f}} > out/m-{{f.stem}}"
inputs = ["{{f}}"]
outputs = ["out/m-{{f.stem}}"]

[tasks.mall]
cmd = "cat {{inputs}} > out/mall"
inputs = ["in/i1", "out/m-*"]
outputs = ["out/mall"]

[tasks.fn]
call = "steps:fn"
inputs = ["in/i0"]
outputs = ["out/fn"]

[tasks.nd]
cmd = "date +%s%N > out/nd"
outputs = ["out/nd"]
{always}
[tasks.ndc]
cmd = "cp out/nd out/ndc"
inputs = ["out/nd"]
outputs = ["out/ndc"]
"""
COMPARED_FIXED = ("fn", "mall")  # nd's output differs by design: checked as ndc == nd


@dataclass
class Task:
    sources: tuple[int, ...]
    deps: tuple[int, ...]
    sleep: str


def dag() -> st.SearchStrategy[list[Task]]:
    """3-6 tasks; task k reads some sources and the outputs of some tasks before it."""

    @st.composite
    def build(draw: st.DrawFn) -> list[Task]:
        n = draw(st.integers(3, 6))
        tasks = []
        for k in range(n):
            deps = tuple(sorted(draw(st.sets(st.integers(0, k - 1), max_size=2)))) if k else ()
            sources = tuple(sorted(draw(st.sets(st.integers(0, SOURCES - 1), max_size=2))))
            if not deps and not sources:
                sources = (k % SOURCES,)
            tasks.append(Task(sources, deps, draw(st.sampled_from(("0", "0.01", "0.03")))))
        return tasks

    return build()


def run_cli(root: str, *args: str, seed: int) -> tuple[int, str, str]:
    """The real CLI in a new process, with its own PYTHONHASHSEED."""
    p = subprocess.run(
        [sys.executable, "-m", "dagrun", "-C", root, "--progress", "plain", *args],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONHASHSEED": str(seed)},
    )
    return p.returncode, p.stdout, p.stderr


def run_in_process(root: str, *args: str) -> tuple[int, str, str]:
    """The real CLI, in this process (fast); the working folder is restored after."""
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(["-C", root, "--progress", "plain", *args])
    finally:
        os.chdir(here)
    return code, out.getvalue(), err.getvalue()


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process below it, frozen first so that none escapes."""
    try:
        proc = psutil.Process(pid)
        proc.suspend()
        seen: set[int] = set()
        while True:
            below = [p for p in proc.children(recursive=True) if p.pid not in seen]
            if not below:
                break
            for p in below:
                seen.add(p.pid)
                with contextlib.suppress(psutil.Error):
                    p.suspend()
        for p in [pid, *seen]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    except psutil.NoSuchProcess:
        pass


class History(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="dagrun-stateful-")
        self.ref = tempfile.mkdtemp(prefix="dagrun-stateful-ref-")
        self.tasks: list[Task] = []
        self.variant: list[int] = []
        self.inputs: list[str] = []
        self.previous: list[str] = []
        self.expected: dict[tuple[str, tuple[str, ...]], dict[str, str]] = {}
        self.steps = 0
        self.compared = 0
        self.kills = 0  # builds killed before they ended
        self.flips = 0  # bytes flipped in a state file that existed
        self.builds = 0  # builds run (new processes)
        self.moves = 0  # trees moved elsewhere through a tarball
        self.matrix: list[bool] = [True, False, False]  # which mat/xJ.txt exist
        self.nd_always = False
        # a byte of the log was flipped, or a build killed: the record of a task gone from the
        # manifest may be lost (or never written), and then its output is a file like any other
        self.amnesia = False

    # -- the project

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def manifest(self) -> str:
        parts = []
        for k, t in enumerate(self.tasks):
            reads = [f"in/i{j}" for j in t.sources] + [f"out/t{d}" for d in t.deps]
            cmd = (
                f"echo partial > out/t{k}; test ! -e flags/t{k} && sleep {t.sleep} && "
                f"{{ cat {' '.join(reads)}; echo t{k}:{self.variant[k]}; }} > out/t{k}"
            )
            parts.append(
                f"[tasks.t{k}]\ncmd = {json.dumps(cmd)}\ninputs = {json.dumps(reads)}\n"
                f'outputs = ["out/t{k}"]\n'
            )
        parts.append(FIXED.format(always="always = true\n" if self.nd_always else ""))
        return "\n".join(parts)

    def cli(self, *args: str) -> tuple[int, str, str]:
        self.builds += 1
        return run_cli(self.root, *args, seed=(self.builds * 2654435761) % 4294967295)

    def write(self, rel: str, text: str) -> None:
        with open(self.path(rel), "w") as f:
            f.write(text)

    def write_manifest(self) -> None:
        self.write("dagrun.toml", self.manifest())

    @initialize(tasks=dag(), contents=st.lists(st.sampled_from(CONTENTS), min_size=3, max_size=3))
    def setup(self, tasks: list[Task], contents: list[str]) -> None:
        self.tasks = tasks
        self.variant = [0] * len(tasks)
        os.makedirs(self.path("in"))
        os.makedirs(self.path("flags"))
        os.makedirs(self.path("mat"))
        os.makedirs(self.path("out"))
        self.write("steps.py", STEPS_PY)
        self.write("mat/x0.txt", "x0\n")
        self.inputs = list(contents)
        self.previous = list(contents)
        for j, text in enumerate(contents):
            self.write(f"in/i{j}", text)
        self.write_manifest()

    def teardown(self) -> None:
        if REPORT:
            with open(REPORT, "a") as f:
                f.write(
                    f"steps {self.steps} builds {self.builds} compared {self.compared} "
                    f"kills {self.kills} flips {self.flips} moves {self.moves}\n"
                )
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.ref, ignore_errors=True)

    # -- edits

    @rule(j=st.integers(0, SOURCES - 1), text=st.sampled_from(CONTENTS))
    def edit_input(self, j: int, text: str) -> None:
        self.steps += 1
        self.previous[j], self.inputs[j] = self.inputs[j], text
        self.write(f"in/i{j}", text)

    @rule(j=st.integers(0, SOURCES - 1))
    def revert_input(self, j: int) -> None:
        self.steps += 1
        self.previous[j], self.inputs[j] = self.inputs[j], self.previous[j]
        self.write(f"in/i{j}", self.inputs[j])

    @rule(j=st.integers(0, MATRIX - 1), there=st.booleans())
    def matrix_input(self, j: int, there: bool) -> None:
        """Add or remove one input of the matrix: a removed one's output must go."""
        self.steps += 1
        self.matrix[j] = there
        if there:
            self.write(f"mat/x{j}.txt", f"x{j}\n")
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(f"mat/x{j}.txt"))

    @rule(always=st.booleans())
    def nd_always(self, always: bool) -> None:
        self.steps += 1
        self.nd_always = always
        self.write_manifest()

    @rule()
    def move_elsewhere(self) -> None:
        """The tree, state and outputs, moved to another folder through a tarball."""
        self.steps += 1
        self.moves += 1
        new = tempfile.mkdtemp(prefix="dagrun-stateful-moved-")
        ball = new + ".tar"
        with tarfile.open(ball, "w") as t:
            t.add(self.root, arcname=".")
        with tarfile.open(ball) as t:
            t.extractall(new, filter="tar")
        os.unlink(ball)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = new

    @rule(k=st.integers(0, 5), variant=st.integers(0, 2))
    def change_command(self, k: int, variant: int) -> None:
        self.steps += 1
        self.variant[k % len(self.tasks)] = variant  # variant 0 changes it back
        self.write_manifest()

    @rule(k=st.integers(0, 5))
    def delete_output(self, k: int) -> None:
        self.steps += 1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(f"out/t{k % len(self.tasks)}"))

    @rule(k=st.integers(0, 5), text=st.sampled_from(("tampered\n", "x", "")))
    def tamper_output(self, k: int, text: str) -> None:
        self.steps += 1
        path = self.path(f"out/t{k % len(self.tasks)}")
        if os.path.isfile(path):
            with open(path, "r+") as f:  # in place: the same inode
                f.truncate(0)
                f.write(text)

    @rule(k=st.integers(0, 5), fail=st.booleans())
    def set_failing(self, k: int, fail: bool) -> None:
        self.steps += 1
        flag = self.path(f"flags/t{k % len(self.tasks)}")
        if fail:
            self.write(flag, "")
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(flag)

    @rule(name=st.sampled_from(STATE_FILES), where=st.floats(0, 1), bit=st.integers(0, 7))
    def flip_state_byte(self, name: str, where: float, bit: int) -> None:
        self.steps += 1
        path = self.path(f".dagrun/{name}")
        self.amnesia |= name == "log"
        try:
            with open(path, "r+b") as f:
                data = bytearray(f.read())
                if not data:
                    return
                pos = min(int(where * len(data)), len(data) - 1)
                data[pos] ^= 1 << bit
                f.seek(0)
                f.write(data)
                self.flips += 1
        except FileNotFoundError:
            pass

    # -- builds

    @rule()
    def build(self) -> None:
        self.steps += 1
        code, out, err = self.cli("build")
        self.check(code, out, err)

    @rule()
    def build_one_at_a_time_with_reasons(self) -> None:
        self.steps += 1
        code, out, err = self.cli("build", "-j1", "--explain")
        self.check(code, out, err)

    @rule(k=st.integers(0, 5))
    def build_one_target(self, k: int) -> None:
        """``dagrun build tK``: tK and what it needs are built, the rest is left alone."""
        self.steps += 1
        k %= len(self.tasks)
        code, out, err = self.cli("build", f"t{k}")
        self.check(code, out, err, target=k)

    @rule(k=st.integers(0, 6))
    def clean(self, k: int) -> None:
        """``dagrun clean tK``, or ``clean nd`` (its rerun makes other bytes)."""
        self.steps += 1
        name = "nd" if k == 6 else f"t{k % len(self.tasks)}"
        code, out, err = self.cli("clean", name)
        assert (code, "Traceback" in err) == (0, False), (out, err)

    @rule(delay=st.one_of(st.floats(0.0, 0.5), st.just(None)))
    def kill_9_a_build(self, delay: float | None) -> None:
        """A real ``dagrun build`` killed at a random instant, tasks and all (None: not killed)."""
        self.steps += 1
        self.builds += 1
        p = subprocess.Popen(
            [sys.executable, "-m", "dagrun", "--progress", "plain", "build"],
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": str(self.builds % 4294967295)},
        )
        if delay is not None:
            time.sleep(delay)
            if p.poll() is None:
                kill_tree(p.pid)
        out, err = p.communicate(timeout=30)
        if p.returncode == -signal.SIGKILL:
            self.kills += 1
            # a task killed before its success was recorded may have written its output: if its
            # matrix input goes later, the log never knew that file (docs/state.md: the limit)
            self.amnesia = True
        else:
            self.check(p.returncode, out, err)

    def check(self, code: int, out: str, err: str, target: int | None = None) -> None:
        assert "Traceback" not in err, err
        assert code in (0, 1), (code, out, err)
        if "no work to do" not in out:  # the full path ran: it leaves no temporary file
            left = [n for n in os.listdir(self.path(".dagrun")) if n.endswith(".tmp")]
            assert left == [], left
        if code != 0:
            return
        built = self.closure(target)
        expected = self.from_scratch()
        assert self.outputs(built) == {t: expected[t] for t in built}, (out, err)
        if target is None:
            assert self.read("out/ndc") == self.read("out/nd"), (out, err)
            made = sorted(n for n in os.listdir(self.path("out")) if n.startswith("m-"))
            assert made == expected["m-files"], (made, out, err)
        self.compared += 1
        targets = [] if target is None else [f"t{target}"]
        code, again, err = self.cli("build", *targets)
        if self.nd_always and target is None:  # nd runs at every build, and ndc after it
            assert code == 0 and self.read("out/ndc") == self.read("out/nd"), (again, err)
            return
        assert (code, again.startswith("dagrun: no work to do")) == (0, True), (again, err)

    def strays(self) -> tuple[tuple[str, str], ...]:
        """After a damaged log: outputs of removed matrix inputs still in out/ (name, text)."""
        if not self.amnesia:
            return ()
        live = {f"m-x{j}" for j in range(MATRIX) if self.matrix[j]}
        names = sorted(n for n in os.listdir(self.path("out")) if n.startswith("m-"))
        return tuple((n, self.read(f"out/{n}")) for n in names if n not in live)

    def read(self, rel: str) -> str:
        with open(self.path(rel)) as f:
            return f.read()

    def closure(self, target: int | None) -> list[str]:
        """The tasks a build of ``target`` (None: every task) brings up to date."""
        if target is None:
            return [f"t{k}" for k in range(len(self.tasks))] + list(COMPARED_FIXED)
        seen, stack = set(), [target]
        while stack:
            k = stack.pop()
            if k not in seen:
                seen.add(k)
                stack.extend(self.tasks[k].deps)
        return [f"t{k}" for k in sorted(seen)]

    def outputs(self, names: list[str] | None = None) -> dict[str, str]:
        found = {}
        for name in names if names is not None else self.closure(None):
            with open(self.path(f"out/{name}")) as f:
                found[name] = f.read()
        return found

    def from_scratch(self) -> dict[str, str]:
        """The outputs a first build of a copy of the manifest and the inputs makes."""
        manifest = self.manifest()
        strays = self.strays()
        key = (manifest, tuple(self.inputs), tuple(self.matrix), strays)
        if key not in self.expected:
            shutil.rmtree(self.ref, ignore_errors=True)
            for folder in ("in", "flags", "mat", "out"):
                os.makedirs(os.path.join(self.ref, folder))
            for rel in ("dagrun.toml", "steps.py"):
                shutil.copy(self.path(rel), os.path.join(self.ref, rel))
            for j in range(SOURCES):
                shutil.copy(self.path(f"in/i{j}"), os.path.join(self.ref, f"in/i{j}"))
            for j in range(MATRIX):
                if self.matrix[j]:
                    shutil.copy(self.path(f"mat/x{j}.txt"), os.path.join(self.ref, f"mat/x{j}.txt"))
            for name, text in strays:  # files the tree has that no task makes (see amnesia)
                with open(os.path.join(self.ref, f"out/{name}"), "w") as f:
                    f.write(text)
            code, out, err = run_in_process(self.ref, "build")
            assert code == 0, (out, err)
            found: dict[str, Any] = {}
            for name in [f"t{k}" for k in range(len(self.tasks))] + list(COMPARED_FIXED):
                with open(os.path.join(self.ref, f"out/{name}")) as f:
                    found[name] = f.read()
            out_dir = os.path.join(self.ref, "out")
            found["m-files"] = sorted(n for n in os.listdir(out_dir) if n.startswith("m-"))
            self.expected[key] = found
        return self.expected[key]


History.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestHistory = History.TestCase


class ServedHistory(History):
    """The same histories with every build through the build server (DAGRUN_SERVER=1: the
    first build starts one, the next ones go through it), plus what can happen to a server:
    killed (-9, with its tasks) while idle or in the middle of a build, inputs edited while it
    is down (the rules above, between), a build run in-process beside it.  ``clean`` is always
    in-process, beside it.  Its answers must be the from-scratch build's, always."""

    def __init__(self) -> None:
        super().__init__()
        self._saved = os.environ.get("DAGRUN_SERVER")
        os.environ["DAGRUN_SERVER"] = "1"  # run_cli and the killed builds pass os.environ on
        self.server_kills = 0

    def server_pid(self) -> int | None:
        from dagrun import client

        found = client.ask(self.path(".dagrun"), client.STATUS)
        return None if found is None else int(found["pid"])

    def teardown(self) -> None:
        if self._saved is None:
            os.environ.pop("DAGRUN_SERVER", None)
        else:
            os.environ["DAGRUN_SERVER"] = self._saved
        from dagrun import client

        found = client.ask(self.path(".dagrun"), client.STATUS)
        if REPORT:
            with open(REPORT, "a") as f:
                served = found["builds"] if found else "-"
                f.write(f"server: kills {self.server_kills}, last one served {served}\n")
        if found is not None:
            kill_tree(int(found["pid"]))
        super().teardown()

    @rule(delay=st.one_of(st.floats(0.0, 0.3), st.just(None)))
    def kill_9_the_server(self, delay: float | None) -> None:
        """SIGKILL the server and its tasks, idle (None) or while a build runs through it."""
        self.steps += 1
        pid = self.server_pid()
        if pid is None:
            return
        if delay is None:
            kill_tree(pid)
            self.server_kills += 1
            return
        self.builds += 1
        p = subprocess.Popen(
            [sys.executable, "-m", "dagrun", "--progress", "plain", "build"], cwd=self.root,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
        )
        time.sleep(delay)
        kill_tree(pid)
        self.server_kills += 1
        out, err = p.communicate(timeout=30)
        self.amnesia = True  # as kill_9_a_build: a task killed before its record
        if "went away during the build" not in err:  # else: exit 1, nothing to compare
            self.check(p.returncode, out, err)

    @rule()
    def build_in_process_beside_it(self) -> None:
        self.steps += 1
        self.builds += 1
        code, out, err = run_cli(self.root, "build", "--no-server", seed=self.builds)
        self.check(code, out, err)


TestServedHistory = ServedHistory.TestCase
TestServedHistory.settings = settings(
    max_examples=max(1, EXAMPLES // 2),
    stateful_step_count=STEPS,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
