"""What users of Make, Snakemake, doit and go-task reach for (issue 26): ``build --force``,
``build --touch``, ``NAME=value``, ``tree``, ``desc``, targets relative to the current folder,
and the rough edges they hit.  Each test runs the real entry point in a temp project."""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

TWO = """
[vars]
MSG = "hello"

[tasks.a]
cmd = "echo {MSG} > out/a.txt; echo ran >> runs.txt"
outputs = ["out/a.txt"]
desc = "Write the greeting"

[tasks.b]
cmd = "cat out/a.txt > out/b.txt"
inputs = ["out/a.txt"]
outputs = ["out/b.txt"]
"""


@dataclass
class Run:
    code: int
    out: str
    err: str


class Tree:
    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
        self.root, self.mp, self.capsys = root, monkeypatch, capsys

    def write(self, path: str, text: str) -> Path:
        p = self.root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
        return p

    def read(self, path: str) -> str:
        return (self.root / path).read_text()

    def run(self, *args: str, cwd: str = ".") -> Run:
        """``dagrun ARGS`` through the console script's entry (the no-op fast path included)."""
        from dagrun.entry import main

        self.mp.chdir(self.root / cwd)
        self.capsys.readouterr()
        code = main(["--progress", "plain", *args])
        got = self.capsys.readouterr()
        return Run(code, got.out, got.err)


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> Tree:
    t = Tree(tmp_path, monkeypatch, capsys)
    t.write("dagrun.toml", TWO)
    (tmp_path / "out").mkdir()
    return t


def runs(tree: Tree) -> int:
    return tree.read("runs.txt").count("ran") if (tree.root / "runs.txt").exists() else 0


# ---------------------------------------------------------------- --force / -B


@pytest.mark.parametrize("flag", ["--force", "-B"])
def test_force_reruns_the_named_task_when_up_to_date(tree, flag) -> None:
    assert tree.run("build").code == 0
    assert tree.run("build").out == "dagrun: no work to do (2 up to date)\n"
    r = tree.run("build", flag, "a")
    assert r.code == 0
    assert r.out.splitlines()[0] == "[1/1] a"
    assert runs(tree) == 2


def test_force_without_targets_reruns_every_task(tree) -> None:
    tree.run("build")
    r = tree.run("build", "-B")
    assert r.out.splitlines()[:2] == ["[1/2] a", "[2/2] b"]
    assert runs(tree) == 2


def test_force_in_a_dry_run_says_forced(tree) -> None:
    tree.run("build")
    r = tree.run("build", "-n", "-B", "b")
    assert r.out == "would run: b\n    forced (--force)\ndagrun: 1 would run, 1 up to date\n"


# ---------------------------------------------------------------- --touch


def test_touch_records_what_would_run_as_done_without_running_it(tree) -> None:
    tree.run("build")
    tree.write("out/a.txt", "edited by hand\n")
    r = tree.run("build", "--touch")
    # b saw a's old bytes: it would run after a (the digest rule), so it is touched too (Make -t)
    expected = "touched: a\ntouched: b\ndagrun: touched 2 task(s), ran nothing\n"
    assert (r.code, r.out) == (0, expected)
    assert runs(tree) == 1
    assert tree.run("build").out == "dagrun: no work to do (2 up to date)\n"
    assert tree.read("out/a.txt") == "edited by hand\n"


def test_touch_in_a_fresh_tree_with_the_outputs_there(tree) -> None:
    tree.write("out/a.txt", "x\n")
    tree.write("out/b.txt", "x\n")
    assert tree.run("build", "--touch", "b").out.startswith("touched: a\ntouched: b\n")
    assert tree.run("build").out == "dagrun: no work to do (2 up to date)\n"
    assert runs(tree) == 0


def test_touch_refuses_when_an_output_is_missing_and_records_nothing(tree) -> None:
    tree.write("out/a.txt", "x\n")
    r = tree.run("build", "--touch")
    assert r.code == 2
    assert r.err == (
        "dagrun: error: cannot touch 'b': its output out/b.txt is missing "
        "(build it, or create it first)\n"
    )
    assert tree.run("build", "-n").out.endswith("dagrun: 2 would run, 0 up to date\n")


def test_touch_refuses_a_function_task(tree) -> None:
    tree.write("steps26.py", "def f():\n    return 1\n")
    tree.write("dagrun.toml", '[tasks.f]\ncall = "steps26:f"\n')
    r = tree.run("build", "--touch")
    assert r.code == 2
    assert "cannot touch 'f': a function task's result comes only from a run" in r.err


def test_force_and_touch_together_are_a_usage_error(tree) -> None:
    with pytest.raises(SystemExit) as exc:
        tree.run("build", "-B", "--touch")
    assert exc.value.code == 2
    assert tree.capsys.readouterr().err.endswith(
        "dagrun: error: --force and --touch cannot be used together\n"
    )


# ---------------------------------------------------------------- NAME=value


def test_a_var_on_the_command_line_overrides_vars_for_this_build(tree) -> None:
    tree.run("build")
    r = tree.run("build", "MSG=bye", "b")
    assert r.code == 0
    assert tree.read("out/b.txt") == "bye\n"
    # the next plain build is the manifest's own again: not answered by the no-op proof
    r = tree.run("build")
    assert r.out.splitlines()[:2] == ["[1/2] a", "[2/2] b"]
    assert tree.read("out/b.txt") == "hello\n"


def test_an_unknown_var_name_is_exit_2_with_did_you_mean(tree) -> None:
    r = tree.run("build", "MGS=x")
    assert r.code == 2
    assert r.err == (
        "dagrun: error: dagrun.toml: MGS=x on the command line names no [vars] entry "
        "(did you mean 'MSG'?)\n"
    )
    assert not (tree.root / "out/a.txt").exists()


def test_a_list_var_takes_the_value_split_as_a_shell_would(tree) -> None:
    tree.write("dagrun.toml", """
        [vars]
        WORDS = ["one"]
        [tasks.w]
        cmd = "printf '%s|' {WORDS} > w.txt"
        outputs = ["w.txt"]
        """)
    tree.run("build", "WORDS=two 'three four'")
    assert tree.read("w.txt") == "two|three four|"


def test_a_matrix_task_name_with_equals_is_still_a_target(tree) -> None:
    tree.write("dagrun.toml", """
        [tasks.m]
        matrix = { n = ["1", "2"] }
        cmd = "echo {n} > m{n}.txt"
        outputs = ["m{n}.txt"]
        """)
    r = tree.run("build", "m[n=2]")
    assert r.code == 0
    assert not (tree.root / "m1.txt").exists() and tree.read("m2.txt") == "2\n"


# ---------------------------------------------------------------- targets from a subfolder


def test_a_target_path_relative_to_the_current_folder(tree) -> None:
    (tree.root / "src").mkdir()
    r = tree.run("build", "../out/b.txt", cwd="src")
    assert r.code == 0, r.err
    assert tree.read("out/b.txt") == "hello\n"
    assert tree.run("build", "../out/b.txt", cwd="src").out == (
        "dagrun: no work to do (2 up to date)\n"
    )
    # from the folder of the output, its own name
    assert tree.run("build", "-B", "a.txt", cwd="out").out.splitlines()[0] == "[1/1] a"


def test_a_relative_target_from_a_subfolder_is_not_the_root_s_proof(tree) -> None:
    """The no-op proof records targets as typed: ``x.txt`` in a subfolder is another file."""
    tree.write("dagrun.toml", """
        [tasks.top]
        cmd = "echo top > x.txt"
        outputs = ["x.txt"]
        [tasks.sub]
        cmd = "echo sub > sub/x.txt"
        outputs = ["sub/x.txt"]
        """)
    (tree.root / "sub").mkdir()
    tree.run("build", "x.txt")
    assert tree.run("build", "x.txt").out == "dagrun: no work to do (1 up to date)\n"
    r = tree.run("build", "x.txt", cwd="sub")
    assert r.out.splitlines()[0] == "[1/1] sub"
    assert tree.read("sub/x.txt") == "sub\n"


def test_clean_takes_a_target_relative_to_the_current_folder(tree) -> None:
    tree.run("build")
    assert tree.run("clean", "b.txt", cwd="out").out == "dagrun: removed 1 output(s)\n"
    assert not (tree.root / "out/b.txt").exists() and (tree.root / "out/a.txt").exists()


# ---------------------------------------------------------------- tree, desc


DIAMOND = """
[tasks.gen]
cmd = "echo g > g.txt"
outputs = ["g.txt"]

[tasks.left]
cmd = "cat g.txt > l.txt"
inputs = ["g.txt"]
outputs = ["l.txt"]
desc = "The left half"

[tasks.right]
cmd = "cat g.txt > r.txt"
inputs = ["g.txt"]
outputs = ["r.txt"]

[tasks.all]
deps = ["left", "right"]
"""


def test_tree_draws_dependencies_marking_what_would_run(tree) -> None:
    tree.write("dagrun.toml", DIAMOND)
    r = tree.run("tree")
    assert r.code == 0
    assert r.out == (
        "all  (would run: never ran)\n"
        "├── left  (would run: never ran)\n"
        "│   └── gen  (would run: never ran)\n"
        "└── right  (would run: never ran)\n"
        "    └── gen  (would run: never ran)\n"
    )
    tree.run("build")
    tree.write("r.txt", "edited\n")
    assert tree.run("tree", "all").out == (
        "all  (may run: depends on right)\n├── left\n│   └── gen\n"
        "└── right  (would run: output r.txt changed since it was built)\n    └── gen\n"
    )
    assert tree.run("tree", "left").out == "left\n└── gen\n"


def test_tree_draws_a_shared_subtree_once(tree) -> None:
    tree.write("dagrun.toml", DIAMOND + '\n[tasks.top]\ndeps = ["left", "right"]\n')
    tree.run("build")
    out = tree.run("tree").out
    assert out == (
        "all\n├── left\n│   └── gen\n└── right\n    └── gen\n"
        "top\n├── left (*)\n└── right (*)\n"
    )


def test_desc_is_shown_by_list_and_show(tree) -> None:
    tree.write("dagrun.toml", DIAMOND)
    listed = tree.run("list").out.splitlines()
    assert [ln for ln in listed if ln.startswith("left")] == [
        "left   will run: never ran  # The left half"
    ]
    shown = tree.run("show", "left").out.splitlines()
    assert [ln.split(None, 1) for ln in shown[:2]] == [["task", "left"], ["desc", "The left half"]]
    import json

    data = json.loads(tree.run("list", "--json").out)
    assert [t["desc"] for t in data["tasks"]] == [None, "The left half", None, None]


def test_desc_must_be_a_string(tree) -> None:
    tree.write("dagrun.toml", '[tasks.a]\ncmd = "true"\ndesc = 3\n')
    r = tree.run("list")
    assert r.code == 2
    assert r.err == (
        "dagrun: error: dagrun.toml:3: task 'a', key 'desc': must be a string, not an integer\n"
    )


@pytest.mark.parametrize(
    "command", [["list"], ["show", "a"], ["graph"], ["tree"], ["status"], ["build", "-n"],
                ["list", "--names"]]
)
def test_read_only_commands_create_nothing_in_a_fresh_tree(tree, command) -> None:
    assert tree.run(*command).code == 0
    assert not (tree.root / ".dagrun").exists()


# ---------------------------------------------------------------- early cutoff: the counters

CUTOFF = """
[tasks.gen]
cmd = "cat in.txt > g.txt"
inputs = ["in.txt"]
outputs = ["g.txt"]

[tasks.norm]
cmd = "tr -d ' ' < g.txt > n.txt"
inputs = ["g.txt"]
outputs = ["n.txt"]
restat = true

[tasks.use1]
cmd = "cat n.txt > u1.txt"
inputs = ["n.txt"]
outputs = ["u1.txt"]

[tasks.use2]
cmd = "cat u1.txt > u2.txt"
inputs = ["u1.txt"]
outputs = ["u2.txt"]

[tasks.zlast]
cmd = "cat g.txt > z.txt"
inputs = ["g.txt"]
outputs = ["z.txt"]
"""


@pytest.fixture
def cut(tree) -> Tree:
    tree.write("dagrun.toml", CUTOFF)
    tree.write("in.txt", "a b\n")
    assert tree.run("build").code == 0
    tree.write("in.txt", "a  b\n")  # norm's output stays "ab": use1 and use2 are cut off
    return tree


def test_status_counts_cut_off_tasks_as_up_to_date(cut) -> None:
    assert cut.run("build", "-j1").code == 0
    assert cut.run("status").out.splitlines()[0] == "build: finished: 3 succeeded, 2 up to date"


def test_k_of_n_counts_what_ran_without_gaps_after_a_cutoff(cut) -> None:
    out = cut.run("build", "-j1").out.splitlines()
    counters = [line.split()[0] for line in out if line.startswith("[")]
    assert counters == ["[1/5]", "[2/5]", "[3/3]"], out  # gen, norm, then zlast: Ninja's way
    assert out[-1].startswith("dagrun: 3 succeeded, 2 up to date in ")


def test_watch_counts_only_what_surely_runs(cut) -> None:
    import io
    import threading

    from dagrun.watch import Watcher

    def idle(folders, stop):
        while not stop.wait(0.01):
            yield set()

    out, stop = io.StringIO(), threading.Event()
    w = Watcher(str(cut.root / "dagrun.toml"), progress="plain", out=out, err=out,
                watch_fn=idle, on_round=lambda r: stop.set())
    assert w.run(stop) == 0
    assert "first build -> running 3: gen, norm, zlast (2 more if their inputs change)" in (
        out.getvalue()
    ), out.getvalue()


def test_the_live_footer_counts_ctrl_c_as_interrupted_not_failed() -> None:
    import io

    from rich.console import Console

    from dagrun.events import BuildStarted, TaskFinished, TaskStarted
    from dagrun.report import RichReporter

    buf = io.StringIO()
    rep = RichReporter(Console(file=buf, width=100, force_terminal=False))
    rep.handle(BuildStarted(total=2, up_to_date=0, jobs=2))
    rep.handle(TaskStarted("s", "s", 1))
    rep.handle(TaskFinished("s", "s", "sleep 9", False, -2, 1.0, "", "", done=1, total=2,
                            interrupted=True))
    console = Console(file=io.StringIO(), width=100)
    console.print(rep)
    footer = console.file.getvalue()
    rep.live.stop()
    assert "1 interrupted" in footer and "failed" not in footer, footer


# ---------------------------------------------------------------- bash completion past =


@pytest.mark.slow
def test_bash_completes_a_matrix_task_name_past_its_equals_sign(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    (tmp_path / "dagrun.toml").write_text(
        '[tasks.cc]\nmatrix = { c = ["src/main.c", "src/util.c"] }\ncmd = "true"\n'
        '[tasks.app]\ncmd = "true"\n'
    )
    script = subprocess.run([sys.executable, "-m", "dagrun", "completion", "bash"],
                            capture_output=True, text=True, check=True).stdout
    (tmp_path / "complete.sh").write_text(script)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "dagrun").write_text(f'#!/bin/sh\nexec {sys.executable} -m dagrun "$@"\n')
    (bindir / "dagrun").chmod(0o755)

    def complete(line: str) -> list[str]:
        """What bash offers at the end of ``line``, split into words as readline splits them
        (COMP_WORDBREAKS has = and :)."""
        import re

        words = re.findall(r"[=:]|[^\s=:]+", line) + ([""] if line.endswith(" ") else [])
        quoted = " ".join(f"'{w}'" for w in words)
        probe = (f"source complete.sh; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
                 f"COMP_LINE='{line}'; COMP_POINT={len(line)}; "
                 '_dagrun; printf "%s\\n" "${COMPREPLY[@]}"')
        env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
        done = subprocess.run(["bash", "--norc", "-c", probe], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return sorted(done.stdout.split())

    # bash replaces the word after the last = with what is offered
    assert complete("dagrun build cc[c=src/m") == ["src/main.c]"]
    assert complete("dagrun build cc[c=") == ["=src/main.c]", "=src/util.c]"]
    assert complete("dagrun cc[c=src/u") == ["src/util.c]"]
    assert complete("dagrun build cc") == ["cc", "cc[c=src/main.c]", "cc[c=src/util.c]"]
    assert complete("dagrun tree a") == ["app"]


# ---------------------------------------------------------------- the summary's time


def test_the_summary_time_is_wall_time_with_the_executors_start_up(tmp_path: Path) -> None:
    """A Dask build whose cluster took 5 s to start said it took 1 s: the time an executor
    takes to start (here 5 s of a fake clock, as a cluster's start-up) is in the summary."""
    from dagrun.clock import FakeClock
    from dagrun.events import BuildFinished
    from dagrun.executors.fake import FakeExecutor
    from dagrun.report import RecordingReporter
    from dagrun.session import Session

    (tmp_path / "dagrun.toml").write_text('[tasks.a]\ncmd = "true"\n')
    clock = FakeClock()

    def start_slowly(graph):
        clock.advance(5.0)
        return FakeExecutor(lambda job: 0, clock=clock, duration=1.0)

    rec = RecordingReporter()
    session = Session(manifest_path=str(tmp_path / "dagrun.toml"), clock=clock,
                      executor_factory=start_slowly)
    result = session.build(reporter=rec)
    assert result.elapsed == 6.0
    assert rec.of(BuildFinished)[0].elapsed == 6.0


# ---------------------------------------------------------------- messages


def test_a_missing_cwd_is_named(tree) -> None:
    tree.write("dagrun.toml", '[tasks.a]\ncmd = "echo hi"\ncwd = "nodir"\n')
    r = tree.run("build")
    assert r.code == 1
    assert f"FAILED: [cannot start: its cwd {tree.root}/nodir does not exist] a\n" in r.out


def test_a_misspelt_dask_cluster_is_a_manifest_error(tree) -> None:
    tree.write("dagrun.toml", """
        [executors.farm]
        type = "dask"
        cluster = "lokal"

        [tasks.b]
        cmd = "true"
        executor = "farm"
        """)
    r = tree.run("build", "-n")
    assert r.code == 2
    assert r.err == (
        "dagrun: error: dagrun.toml:4: key 'cluster': must be \"local\" or a cluster class such "
        'as "dask_jobqueue.SLURMCluster", not \'lokal\' (did you mean "local"?)\n'
    )


# ---------------------------------------------------------------- clean, run folders


def test_clean_removes_depfiles_and_function_results(tree) -> None:
    tree.write("steps26.py", "def f():\n    return 42\n\ndef g():\n    return 7\n")
    tree.write("dagrun.toml", """
        [tasks.d]
        cmd = "echo x > out/d.txt && printf 'out/d.txt: dep.h\\\\n' > out/d.dep"
        inputs = ["dep.h"]
        outputs = ["out/d.txt"]
        depfile = "out/d.dep"

        [tasks.f]
        call = "steps26:f"

        [tasks.g]
        call = "steps26:g"
        """)
    tree.write("dep.h", "")
    assert tree.run("build").code == 0, tree.run("build").err
    results = tree.root / ".dagrun" / "results"
    assert (tree.root / "out/d.dep").exists() and len(list(results.iterdir())) == 2
    assert tree.run("clean", "d", "f").out == "dagrun: removed 1 output(s)\n"
    assert not (tree.root / "out/d.dep").exists()
    assert len(list(results.iterdir())) == 1  # g's result stays
    tree.run("build")
    tree.run("clean")
    assert not results.exists()


def test_a_silent_function_task_keeps_no_run_folder(tree) -> None:
    tree.write("steps26.py", "def quiet():\n    return 1\n\ndef loud():\n    print('hi')\n"
                             "\ndef bad():\n    raise ValueError(1)\n")
    tree.write("dagrun.toml", '[tasks.quiet]\ncall = "steps26:quiet"\n'
                              '[tasks.loud]\ncall = "steps26:loud"\n'
                              '[tasks.bad]\ncall = "steps26:bad"\n')
    assert tree.run("build", "-k").code == 1
    runs = tree.root / ".dagrun" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["bad", "loud"]
    assert (runs / "bad" / "command.txt").read_text().startswith("call steps26:bad\n")
    assert (runs / "loud" / "stdout.txt").read_text() == "hi\n"
    shown = dict(ln.split(None, 1) for ln in tree.run("show", "quiet").out.splitlines()
                 if not ln.startswith(" ") and " " in ln.strip())
    assert shown["output"] == "none kept (its last run printed nothing)"
    assert "MB" not in shown["last"]  # a function task's memory is not measured: not "0.0 MB"


def test_show_text_has_every_key_part_its_json_has(tree, monkeypatch) -> None:
    import json

    monkeypatch.delenv("CC", raising=False)
    tree.write("steps26.py", "def f(n):\n    return n\n")
    tree.write("dep.h", "")
    tree.write("dagrun.toml", """
        [dagrun]
        key_env = ["CC"]

        [tasks.d]
        cmd = "echo x > d.txt && printf 'd.txt: dep.h\\\\n' > d.dep"
        outputs = ["d.txt"]
        depfile = "d.dep"

        [tasks.f]
        call = "steps26:f"
        args = [3]
        """)
    assert tree.run("build").code == 0
    text = tree.run("show", "d").out
    parts = json.loads(tree.run("show", "d", "--json").out)["key_parts"]
    assert parts["found"] == {"dep.h": parts["found"]["dep.h"]}
    import re

    def row(name: str, value: str) -> str:
        return rf"(?m)^  {name} +{re.escape(value)}$"

    assert re.search(row("from depfile", f"dep.h  {parts['found']['dep.h']}"), text), text
    assert re.search(row("key_env", "CC (not set)"), text) and "None" not in text
    text = tree.run("show", "f").out
    parts = json.loads(tree.run("show", "f", "--json").out)["key_parts"]
    assert re.search(row("code", parts["code"]), text), text
    assert re.search(row("args", parts["args"]), text), text


def test_show_takes_an_output_path_relative_to_the_current_folder(tree) -> None:
    r = tree.run("show", "b.txt", cwd="out")
    assert r.code == 0, r.err
    assert r.out.splitlines()[0].split() == ["task", "b"]


@pytest.mark.slow
def test_the_live_footer_s_last_frame_after_ctrl_c_says_interrupted(dagrun_proc) -> None:
    """A real build with the live display (forced into the pipe), stopped by Ctrl-C."""
    import re
    import signal

    from realproc import stop_and_expect_130

    dagrun_proc.manifest("""
        [dagrun]
        jobs = 2
        [tasks.s]
        matrix = { n = [1, 2, 3] }
        cmd = "echo $$ > pids/s{n}; sleep 30"
    """)
    p = dagrun_proc.start("build", "--progress", "rich")
    groups = {dagrun_proc.task_pid("s1"), dagrun_proc.task_pid("s2")}
    out, _ = stop_and_expect_130(p, signal.SIGINT, to_group=True, groups=groups)
    frames = re.findall(r"\[\d+/3\] \[[#-]+\] +[\d.]+s +\d+ running[^\r\n\x1b]*", out)
    assert frames, out
    assert frames[-1].endswith("0 running  2 interrupted"), frames[-3:]
    assert not any("failed" in f for f in frames), frames


def test_the_api_forces_touches_and_overrides_as_the_cli_does(tree) -> None:
    import dagrun
    from dagrun.report import RecordingReporter

    g = dagrun.load(tree.root / "dagrun.toml")
    assert g.build(reporter=RecordingReporter()).succeeded == ("a", "b")
    assert g.build(["a"], force=True, reporter=RecordingReporter()).succeeded == ("a",)
    g.build(reporter=RecordingReporter(), overrides={"MSG": "api"})
    assert tree.read("out/b.txt") == "api\n"
    assert g.touch() == ["a", "b"]  # the manifest's MSG again: both would run
    assert g.build(reporter=RecordingReporter()).up_to_date == ("a", "b")


def test_watch_takes_a_target_relative_to_the_current_folder(tree, monkeypatch) -> None:
    import io
    import threading

    from dagrun.watch import Watcher

    def idle(folders, stop):
        while not stop.wait(0.01):
            yield set()

    monkeypatch.chdir(tree.root / "out")
    out, stop = io.StringIO(), threading.Event()
    w = Watcher(str(tree.root / "dagrun.toml"), ["a.txt"], progress="plain", out=out, err=out,
                watch_fn=idle, on_round=lambda r: stop.set())
    assert w.run(stop) == 0
    assert "first build -> running 1: a" in out.getvalue(), out.getvalue()


@pytest.mark.slow
def test_docs_c_md_builds_two_sources_of_one_name(tree) -> None:
    """docs/c.md's manifest on a project with two static_init.c (as Brotli has)."""
    import re
    import shutil

    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    docs = (Path(__file__).resolve().parent.parent / "docs" / "c.md").read_text()
    manifest = re.search(r"```toml\n(.*?)```", docs, re.S)
    assert manifest is not None
    tree.write("dagrun.toml", manifest.group(1))
    tree.write("src/a/static_init.c", "int f(void) { return 1; }\n")
    tree.write("src/b/static_init.c", "int g(void) { return 2; }\n")
    tree.write("src/main.c", "int main(void) { return 0; }\n")
    r = tree.run("build")
    assert r.code == 0, r.err
    assert (tree.root / "build/src/a/static_init.o").exists()
    assert (tree.root / "build/src/b/static_init.o").exists()
