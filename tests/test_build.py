"""End-to-end builds through the CLI, with real `sh -c` tasks in tmp_path."""

from __future__ import annotations

import json
import os
import re

import pytest

CHAIN = """
[tasks.gen]
cmd = "cat gen.in > build/gen.out && echo gen >> tally"
inputs = ["gen.in"]
outputs = ["build/gen.out"]

[tasks.mid]
cmd = "cat build/gen.out mid.in > build/mid.out && echo mid >> tally"
inputs = ["build/gen.out", "mid.in"]
outputs = ["build/mid.out"]

[tasks.side]
cmd = "cat side.in > build/side.out && echo side >> tally"
inputs = ["side.in"]
outputs = ["build/side.out"]

[tasks.top]
cmd = "cat build/mid.out build/side.out > build/top.out && echo top >> tally"
inputs = ["build/mid.out", "build/side.out"]
outputs = ["build/top.out"]
"""


@pytest.fixture
def chain(project):
    project.manifest(CHAIN)
    for name in ("gen", "mid", "side"):
        project.write(f"{name}.in", f"{name} input\n")
    return project


def ran(project) -> list[str]:
    """Names of tasks that ran since the last call, and reset the tally."""
    path = project.root / "tally"
    if not path.exists():
        return []
    names = path.read_text().split()
    path.unlink()
    return sorted(names)


def test_first_build_runs_everything_in_dependency_order(chain):
    r = chain.run("build")
    assert r.code == 0, r.err
    assert ran(chain) == ["gen", "mid", "side", "top"]
    assert chain.read("build/top.out") == "gen input\nmid input\nside input\n"
    assert r.out.splitlines()[-1].startswith("dagrun: 4 succeeded, 0 up to date in ")


def test_second_build_does_nothing(chain):
    chain.run("build")
    ran(chain)
    r = chain.run("build")
    assert r.code == 0
    assert ran(chain) == []
    assert r.out == "dagrun: no work to do (4 up to date)\n"


def test_changed_input_reruns_exactly_the_task_and_its_dependents(chain):
    chain.run("build")
    ran(chain)
    chain.write("mid.in", "changed\n")
    r = chain.run("build")
    assert r.code == 0
    assert ran(chain) == ["mid", "top"]
    assert "2 succeeded, 2 up to date" in r.out


def test_same_content_rewritten_does_not_rerun(chain):
    chain.run("build")
    ran(chain)
    path = chain.root / "gen.in"
    content = path.read_text()
    os.utime(path, ns=(1, 1))
    path.write_text(content)
    r = chain.run("build")
    assert ran(chain) == []
    assert "no work to do" in r.out


def test_missing_output_reruns_only_that_task(chain):
    chain.run("build")
    ran(chain)
    (chain.root / "build/side.out").unlink()
    r = chain.run("build", "--explain")
    assert ran(chain) == ["side"]
    assert "explain side: output build/side.out is missing" in r.out


def test_target_builds_only_it_and_what_it_needs(chain):
    r = chain.run("build", "mid")
    assert r.code == 0
    assert ran(chain) == ["gen", "mid"]


def test_target_by_output_path_and_by_glob(chain):
    chain.run("build", "build/side.out")
    assert ran(chain) == ["side"]
    chain.run("build", "g*")
    assert ran(chain) == ["gen"]


def test_unknown_target_is_a_usage_error_with_a_suggestion(chain):
    r = chain.run("build", "midd")
    assert r.code == 2
    assert r.err.endswith("unknown target 'midd'; did you mean 'mid'?\n")
    assert "Traceback" not in r.err


def test_dry_run_prints_plan_and_runs_nothing(chain):
    r = chain.run("build", "-n")
    assert r.code == 0
    assert ran(chain) == []
    assert "would run: gen\n    never ran\n" in r.out
    assert r.out.endswith("dagrun: 4 would run, 0 up to date\n")
    assert not (chain.root / "build").exists()


def test_explain_names_the_exact_part_that_changed(chain):
    chain.run("build")
    chain.write("gen.in", "new\n")
    r = chain.run("build", "--explain")
    assert "explain gen: input gen.in changed" in r.out
    assert "explain mid: dependency gen changed" in r.out
    chain.manifest(CHAIN.replace("echo side >> tally", "echo side  >> tally"))
    r = chain.run("build", "-n")
    assert "would run: side\n    command changed\n" in r.out


def test_explain_names_env_changes(project):
    project.manifest("""
        [env]
        MODE = "fast"
        [tasks.a]
        cmd = "echo $MODE > a.out"
        outputs = ["a.out"]
    """)
    project.run("build")
    project.manifest("""
        [env]
        MODE = "slow"
        [tasks.a]
        cmd = "echo $MODE > a.out"
        outputs = ["a.out"]
    """)
    r = project.run("build", "--explain")
    assert "explain a: env MODE changed" in r.out
    assert project.read("a.out") == "slow\n"


def test_key_env_reruns_when_outer_variable_changes(project, monkeypatch):
    project.manifest("""
        [dagrun]
        key_env = ["CC_FLAVOUR"]
        [tasks.a]
        cmd = "echo ${CC_FLAVOUR:-none} >> a.out"
        outputs = ["a.out"]
    """)
    monkeypatch.setenv("CC_FLAVOUR", "gcc")
    project.run("build")
    assert "no work to do" in project.run("build").out
    monkeypatch.setenv("CC_FLAVOUR", "clang")
    r = project.run("build", "--explain")
    assert "explain a: key_env CC_FLAVOUR changed" in r.out
    assert project.read("a.out") == "gcc\nclang\n"


def test_undeclared_outer_env_does_not_change_the_key(project, monkeypatch):
    project.manifest('[tasks.a]\ncmd = "echo $OTHER > a.out"\noutputs = ["a.out"]\n')
    monkeypatch.setenv("OTHER", "1")
    project.run("build")
    monkeypatch.setenv("OTHER", "2")
    assert "no work to do" in project.run("build").out


def test_failure_stops_dependents_and_exits_1(project):
    project.manifest("""
        [tasks.bad]
        cmd = "echo oops >&2; exit 3"
        outputs = ["bad.out"]
        [tasks.after]
        cmd = "touch after.out"
        inputs = ["bad.out"]
        outputs = ["after.out"]
    """)
    r = project.run("build")
    assert r.code == 1
    assert "FAILED: [code=3] bad\necho oops >&2; exit 3\noops\n" in r.out
    assert "not run: after (dependency failed: bad)" in r.out
    assert "0 succeeded, 0 up to date, 1 failed, 1 not run" in r.out
    log = (project.root / ".dagrun/log").read_text()
    assert '"task":"bad"' not in log
    assert project.run("build").code == 1  # a failure is never recorded as done


def test_keep_going_runs_independent_tasks_after_a_failure(project):
    project.manifest("""
        [dagrun]
        jobs = 1
        [tasks.a]
        cmd = "exit 1"
        [tasks.b]
        cmd = "exit 1"
        [tasks.c]
        cmd = "touch c.out"
        outputs = ["c.out"]
    """)
    r = project.run("build")
    assert r.code == 1
    assert not (project.root / "c.out").exists()  # stopped after the first failure
    r = project.run("build", "-k")
    assert r.code == 1
    assert (project.root / "c.out").exists()
    assert "1 succeeded, 0 up to date, 2 failed" in r.out


def test_failures_allowed_counts_failures(project):
    project.manifest("""
        [dagrun]
        jobs = 1
        [tasks.a]
        cmd = "exit 1"
        [tasks.b]
        cmd = "exit 1"
        deps = ["a0"]
        [tasks.a0]
        cmd = "true"
        [tasks.c]
        cmd = "exit 1"
        deps = ["b"]
    """)
    r = project.run("build", "--failures-allowed", "2")
    assert r.code == 1
    assert "2 failed" in r.out


def test_run_folder_keeps_command_and_output(project):
    project.manifest("""
        [tasks."sim-1"]
        cmd = "echo out; echo err >&2"
    """)
    project.run("build")
    runs = project.root / ".dagrun/runs/sim-1"
    assert (runs / "command.txt").read_text().startswith("echo out; echo err >&2\n")
    assert (runs / "stdout.txt").read_text() == "out\n"
    assert (runs / "stderr.txt").read_text() == "err\n"


def test_task_environment(project):
    project.manifest("""
        [env]
        GLOBAL = "g"
        [tasks.show]
        cmd = "env | grep -E '^(GLOBAL|LOCAL|DAGRUN_)' | sort > env.out"
        outputs = ["env.out"]
        env = { LOCAL = "l" }
    """)
    project.run("build")
    env = dict(line.split("=", 1) for line in project.read("env.out").splitlines())
    assert env["GLOBAL"] == "g" and env["LOCAL"] == "l"
    assert env["DAGRUN_TASK"] == "show"
    assert env["DAGRUN_EXECUTOR"] == "local"
    assert re.fullmatch(r"[0-9a-f]{32}", env["DAGRUN_KEY"])
    lines = (project.root / ".dagrun/log").read_text().splitlines()
    record = json.loads(lines[2])  # [1]: the start record
    assert record["key"] == env["DAGRUN_KEY"]


def test_cwd_and_paths_relative_to_it(project):
    project.manifest("""
        [tasks.sub]
        cwd = "sub"
        cmd = "cat in.txt > out.txt"
        inputs = ["in.txt"]
        outputs = ["out.txt"]
    """)
    project.write("sub/in.txt", "hello\n")
    assert project.run("build").code == 0
    assert project.read("sub/out.txt") == "hello\n"
    assert project.run("build", "sub/out.txt").out.startswith("dagrun: no work to do")


def test_always_task_runs_every_time(project):
    project.manifest('[tasks.stamp]\ncmd = "echo x >> stamps"\nalways = true\n')
    project.run("build")
    project.run("build")
    assert project.read("stamps") == "x\nx\n"


def test_matrix_and_glob_inputs_end_to_end(project):
    project.manifest("""
        [tasks.up]
        matrix = { f = { glob = "data/*.txt" } }
        cmd = "tr a-z A-Z < {f} > out/{f.stem}.up"
        inputs = ["{f}"]
        outputs = ["out/{f.stem}.up"]

        [tasks.join]
        cmd = "cat out/*.up > all.txt"
        inputs = ["out/*.up"]
        outputs = ["all.txt"]
    """)
    project.write("data/a.txt", "a\n")
    project.write("data/b.txt", "b\n")
    assert project.run("build").code == 0
    assert project.read("all.txt") == "A\nB\n"
    project.write("data/c.txt", "c\n")  # a new file that a matrix glob matches
    r = project.run("build")
    assert "[1/2] up[f=data/c.txt]" in r.out
    assert project.read("all.txt") == "A\nB\nC\n"


def test_input_glob_picks_up_new_files(project):
    project.manifest("""
        [tasks.count]
        cmd = "find src -name '*.c' | wc -l > n.txt"
        inputs = ["src/**/*.c"]
        outputs = ["n.txt"]
    """)
    project.write("src/a.c", "1\n")
    project.run("build")
    assert project.read("n.txt").strip() == "1"
    project.write("src/deep/b.c", "2\n")
    r = project.run("build", "--explain")
    assert "explain count: input src/deep/b.c added" in r.out
    assert project.read("n.txt").strip() == "2"


def test_threads_occupy_slots(project):
    project.manifest("""
        [dagrun]
        jobs = 2
        [tasks.big]
        cmd = "echo start-big >> events; sleep 0.3; echo end-big >> events"
        threads = 2
        [tasks.small]
        cmd = "echo start-small >> events; sleep 0.3; echo end-small >> events"
    """)
    assert project.run("build").code == 0
    events = project.read("events").split()
    # never both running: each start is followed by its own end
    assert events in (
        ["start-big", "end-big", "start-small", "end-small"],
        ["start-small", "end-small", "start-big", "end-big"],
    )


def test_clean_removes_outputs_and_forgets_keys(chain):
    chain.run("build")
    ran(chain)
    r = chain.run("clean", "side")
    assert r.out == "dagrun: removed 1 output(s)\n"
    assert not (chain.root / "build/side.out").exists()
    r = chain.run("build", "--explain")
    assert "explain side: never ran" in r.out
    assert ran(chain) == ["side"]
    chain.run("clean")
    assert not list((chain.root / "build").iterdir())


def test_list_shows_state(chain):
    chain.run("build", "mid")
    r = chain.run("list")
    lines = r.out.splitlines()
    assert lines[0].split() == ["gen", "up", "to", "date"]
    assert any(line.startswith("side  will run: never ran") for line in lines)


def test_graph_dot_and_json(chain):
    chain.run("build", "gen")
    dot = chain.run("graph", "--dot").out
    assert dot.startswith("digraph dagrun {")
    assert '"gen" -> "mid";' in dot
    assert '"mid" -> "top";' in dot and '"side" -> "top";' in dot
    assert re.search(r'"gen" \[label="gen", tooltip="up to date", style=filled', dot)
    assert re.search(r'"mid" \[label="mid", tooltip="will run", style=bold', dot)
    data = json.loads(chain.run("graph", "--json").out)
    by_name = {t["name"]: t for t in data["tasks"]}
    assert by_name["gen"]["up_to_date"] is True and by_name["top"]["up_to_date"] is False
    assert sorted(by_name["top"]["deps"]) == ["mid", "side"]
    assert ["gen", "mid"] in data["edges"]


def test_command_not_found_is_a_task_failure(project):
    project.manifest('[tasks.a]\ncmd = "no-such-program-xyz arg"\n')
    r = project.run("build")
    assert r.code == 1
    assert "FAILED: [code=127] a" in r.out
    assert "not found" in r.out


def test_missing_manifest_is_a_usage_error(tmp_path, monkeypatch, capsys):
    from dagrun.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["build"]) == 2
    assert "no dagrun.toml in" in capsys.readouterr().err


def test_default_targets(project):
    project.manifest("""
        [dagrun]
        default = ["a"]
        [tasks.a]
        cmd = "touch a.out"
        outputs = ["a.out"]
        [tasks.b]
        cmd = "touch b.out"
        outputs = ["b.out"]
    """)
    project.run("build")
    assert (project.root / "a.out").exists() and not (project.root / "b.out").exists()


def test_deleting_state_folder_reruns_everything(chain):
    import shutil

    chain.run("build")
    ran(chain)
    shutil.rmtree(chain.root / ".dagrun")
    chain.run("build")
    assert ran(chain) == ["gen", "mid", "side", "top"]


def test_corrupt_cache_is_ignored(chain):
    chain.run("build")
    ran(chain)
    (chain.root / ".dagrun/cache").write_bytes(b"garbage")
    r = chain.run("build")
    assert r.code == 0 and "no work to do" in r.out
    assert ran(chain) == []


def test_missing_input_names_the_inputs_line(project):
    project.manifest('[tasks.a]\ncmd = "true"\n\ninputs = ["nope.txt"]\n')
    r = project.run("build")
    assert r.code == 2
    assert r.err == (
        "dagrun: error: dagrun.toml:4: task 'a', key 'inputs': "
        "input 'nope.txt' does not exist and no task produces it\n"
    )


def test_unreadable_input_is_a_clear_error(project):
    name = "x" * 300
    project.manifest(f'[tasks.a]\ncmd = "true"\ninputs = ["{name}"]\n')
    r = project.run("build")
    assert r.code == 2
    assert f"input '{name}' cannot be read: File name too long" in r.err
    assert "Traceback" not in r.err


def test_build_output_into_a_closed_pipe_is_not_success(tmp_path):
    import subprocess
    import sys

    (tmp_path / "dagrun.toml").write_text(
        "".join(f'[tasks.t{i}]\ncmd = "echo line {i}"\n' for i in range(50))
    )
    p = subprocess.run(
        f"{sys.executable} -m dagrun build -j1 | head -1; echo rc=${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.stdout.splitlines()[0] == "[1/50] t0"
    assert p.stdout.splitlines()[-1] == "rc=1"
    assert "Traceback" not in p.stderr


def test_stat_cache_forgets_files_that_are_no_longer_inputs(project):
    from dagrun.session import Session

    project.write("a.txt", "a")
    project.write("b.txt", "b")
    project.manifest('[tasks.t]\ncmd = "true"\ninputs = ["a.txt", "b.txt"]\n')
    project.run("build")
    stats = Session(manifest_path=str(project.root / "dagrun.toml"))._cache.load()["stats"]
    assert sorted(stats) == ["a.txt", "b.txt"]
    project.manifest('[tasks.t]\ncmd = "true"\ninputs = ["a.txt"]\n')
    project.run("build")
    stats = Session(manifest_path=str(project.root / "dagrun.toml"))._cache.load()["stats"]
    assert sorted(stats) == ["a.txt"]
