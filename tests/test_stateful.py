"""Correct after any history (issue 8): a hypothesis state machine over a small real project.

A generated DAG of 3-6 tasks (``cat`` of source files and upstream outputs, a short sleep, a
``flags/tK`` file that makes task K fail after writing a partial output) is edited, reverted,
broken and repaired at random: inputs edited and reverted, commands changed and changed back,
outputs deleted or tampered with, tasks made to fail and pass, tasks cleaned, a byte of
``.dagrun/cache``, ``cache.journal``, ``log`` or ``fresh`` flipped, a real ``dagrun build``
killed with SIGKILL (tasks and all) at a random instant.  After every build that succeeds (of
everything, or of one target), every output it brought up to date must equal what a
from-scratch build of a copy of the tree (manifest and inputs only) produces, and the same build
again must have nothing to do.

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
import tempfile
import time
from dataclasses import dataclass

import psutil
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from dagrun.cli import main as cli_main

EXAMPLES = int(os.environ.get("DAGRUN_STATEFUL_EXAMPLES", "8"))
STEPS = int(os.environ.get("DAGRUN_STATEFUL_STEPS", "25"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(max(120, EXAMPLES * STEPS))]
REPORT = os.environ.get("DAGRUN_STATEFUL_REPORT")
SOURCES = 3
CONTENTS = ("one\n", "two\n", "three\n", "")
STATE_FILES = ("cache", "cache.journal", "log", "fresh")


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
        return "\n".join(parts)

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
        self.inputs = list(contents)
        self.previous = list(contents)
        for j, text in enumerate(contents):
            self.write(f"in/i{j}", text)
        self.write_manifest()

    def teardown(self) -> None:
        if REPORT:
            with open(REPORT, "a") as f:
                f.write(
                    f"steps {self.steps} compared {self.compared} kills {self.kills} "
                    f"flips {self.flips}\n"
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
        code, out, err = run_in_process(self.root, "build")
        self.check(code, out, err)

    @rule()
    def build_one_at_a_time_with_reasons(self) -> None:
        self.steps += 1
        code, out, err = run_in_process(self.root, "build", "-j1", "--explain")
        self.check(code, out, err)

    @rule(k=st.integers(0, 5))
    def build_one_target(self, k: int) -> None:
        """``dagrun build tK``: tK and what it needs are built, the rest is left alone."""
        self.steps += 1
        k %= len(self.tasks)
        code, out, err = run_in_process(self.root, "build", f"t{k}")
        self.check(code, out, err, target=k)

    @rule(k=st.integers(0, 5))
    def clean(self, k: int) -> None:
        self.steps += 1
        code, out, err = run_in_process(self.root, "clean", f"t{k % len(self.tasks)}")
        assert (code, "Traceback" in err) == (0, False), (out, err)

    @rule(delay=st.one_of(st.floats(0.0, 0.5), st.just(None)))
    def kill_9_a_build(self, delay: float | None) -> None:
        """A real ``dagrun build`` killed at a random instant, tasks and all (None: not killed)."""
        self.steps += 1
        p = subprocess.Popen(
            [sys.executable, "-m", "dagrun", "--progress", "plain", "build"],
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if delay is not None:
            time.sleep(delay)
            if p.poll() is None:
                kill_tree(p.pid)
        out, err = p.communicate(timeout=30)
        if p.returncode == -signal.SIGKILL:
            self.kills += 1
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
        self.compared += 1
        targets = [] if target is None else [f"t{target}"]
        code, again, err = run_in_process(self.root, "build", *targets)
        assert (code, again.startswith("dagrun: no work to do")) == (0, True), (again, err)

    def closure(self, target: int | None) -> list[str]:
        """The tasks a build of ``target`` (None: every task) brings up to date."""
        if target is None:
            return [f"t{k}" for k in range(len(self.tasks))]
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
        key = (manifest, tuple(self.inputs))
        if key not in self.expected:
            shutil.rmtree(self.ref, ignore_errors=True)
            os.makedirs(os.path.join(self.ref, "in"))
            os.makedirs(os.path.join(self.ref, "flags"))
            shutil.copy(self.path("dagrun.toml"), os.path.join(self.ref, "dagrun.toml"))
            for j in range(SOURCES):
                shutil.copy(self.path(f"in/i{j}"), os.path.join(self.ref, f"in/i{j}"))
            code, out, err = run_in_process(self.ref, "build")
            assert code == 0, (out, err)
            found = {}
            for k in range(len(self.tasks)):
                with open(os.path.join(self.ref, f"out/t{k}")) as f:
                    found[f"t{k}"] = f.read()
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
