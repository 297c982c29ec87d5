"""The CLI as people coming from make, ninja and go-task use it: options anywhere, a bare
``dagrun``, the manifest found upward, -q / -v, colour only on a terminal, Ctrl-C and failure
recaps, shell completion."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from realproc import DagrunProcs, stop_and_expect_130

from dagrun.cli import parse

COLOUR = re.compile(r"\x1b\[[0-9;]*m")

TWO = """
[tasks.gen]
cmd = "echo generated > gen.txt"
outputs = ["gen.txt"]
display = "GEN gen.txt"

[tasks.use]
cmd = "cat gen.txt > used.txt"
inputs = ["gen.txt"]
outputs = ["used.txt"]
"""


def meaning(argv: list[str]) -> dict:
    """What argv asks for (``implicit`` only says whether ``build`` was typed)."""
    return {k: v for k, v in vars(parse(argv)).items() if k != "implicit"}


@pytest.mark.parametrize(
    "before, after",
    [
        (["-C", "sub", "build"], ["build", "-C", "sub"]),
        (["--progress", "plain", "-f", "x.toml", "build", "t"],
         ["build", "t", "--progress", "plain", "-f", "x.toml"]),
        (["-q", "--color", "never", "list"], ["list", "-q", "--color", "never"]),
        (["-v", "graph", "--json"], ["graph", "--json", "-v"]),
        (["-C", "d", "status"], ["status", "-C", "d"]),
    ],
)
def test_global_options_mean_the_same_before_and_after_the_command(before, after) -> None:
    assert meaning(before) == meaning(after)


def test_a_bare_dagrun_is_a_build() -> None:
    assert meaning([]) == meaning(["build"])
    assert meaning(["-q", "-C", "x"]) == meaning(["build", "-q", "-C", "x"])
    assert meaning(["-j4", "-k", "all"]) == meaning(["build", "-j4", "-k", "all"])


def test_a_mistyped_command_is_an_unknown_target_with_a_hint(project) -> None:
    project.manifest(TWO)
    r = project.run("biuld")
    assert r.code == 2
    assert r.err == "dagrun: error: dagrun.toml: unknown target 'biuld' (or the command 'build'?)\n"
    assert project.run("nothing").err == "dagrun: error: dagrun.toml: unknown target 'nothing'\n"


def test_q_and_v_together_are_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(["build", "-q", "-v"])
    assert exc.value.code == 2
    assert "-q and -v cannot be used together" in capsys.readouterr().err


def test_options_after_the_command_run_the_same_build(project) -> None:
    project.write("sub/dagrun.toml", TWO)
    first = project.run("build", "-C", "sub", "--progress", "plain", "-q")
    assert first.code == 0 and first.out.startswith("dagrun: 2 succeeded")
    (project.root / "sub" / "used.txt").unlink()
    second = project.run("-C", "sub", "-q", "build")  # the same, the other way round
    assert second.code == 0 and second.out.startswith("dagrun: 1 succeeded, 1 up to date")


def test_a_bare_dagrun_builds(project) -> None:
    project.manifest(TWO)
    r = project.run()
    assert r.code == 0 and (project.root / "used.txt").read_text() == "generated\n"


def test_the_manifest_is_found_upward_from_a_nested_folder(project, monkeypatch, capsys) -> None:
    from dagrun.cli import main

    project.manifest(TWO)
    project.write("other/dagrun.toml", '[tasks.wrong]\ncmd = "touch wrong"\n')
    nested = project.root / "src" / "deep" / "er"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    assert main(["build", "--progress", "plain"]) == 0
    assert "[2/2] use" in capsys.readouterr().out
    assert (project.root / "used.txt").exists() and not (nested / "used.txt").exists()
    assert (project.root / ".dagrun").is_dir() and not (nested / ".dagrun").exists()
    # paths are the manifest's: a target given as an output path, and messages name the file
    # relative to where the user is
    (project.root / "used.txt").unlink()
    assert main(["build", "used.txt", "-q"]) == 0 and (project.root / "used.txt").exists()
    (project.root / "dagrun.toml").write_text('[tasks.a]\ncmd = "x"\nbad = 1\n')
    capsys.readouterr()
    assert main(["build"]) == 2
    assert capsys.readouterr().err.startswith("dagrun: error: ../../../dagrun.toml:3: task 'a'")


def test_no_manifest_anywhere_above(tmp_path, monkeypatch, capsys) -> None:
    from dagrun.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["build"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"dagrun: error: no dagrun.toml in {tmp_path} or any folder above it "
        "(use -C DIR or -f FILE)\n"
    ) or "no dagrun.toml" not in err  # a dagrun.toml above tmp_path would be found instead


def test_errors_name_the_manifest_as_typed_even_from_the_cache(project) -> None:
    project.manifest('[tasks.a]\ncmd = "cat in.txt"\ninputs = ["in.txt"]\n')
    project.write("in.txt", "x")
    assert project.run("build", "-f", str(project.root / "dagrun.toml")).code == 0  # cached
    (project.root / "in.txt").unlink()
    r = project.run("build")
    assert re.match(r"dagrun: error: dagrun\.toml:\d+: task 'a', key 'inputs': input 'in", r.err)


FAILING = """
[tasks.flaky]
cmd = "if [ -e mark ]; then echo fine; else touch mark; echo flaked; exit 1; fi"
retries = 1

[tasks.ok]
cmd = "echo ok-output"
always = true

[tasks.bad]
cmd = "echo bad-output; exit 4"
always = true

[tasks.worse]
cmd = "echo worse-output >&2; exit 5"
always = true
"""


def test_quiet_prints_failures_and_the_summary_only(project) -> None:
    project.manifest(FAILING)
    r = project.run("build", "-k", "-q")
    assert r.code == 1
    assert "ok-output" not in r.out and "] ok" not in r.out
    assert "flak" not in r.out and "fine" not in r.out  # retried, then succeeded: not shown
    assert "FAILED: [code=4] bad\necho bad-output; exit 4\nbad-output\n" in r.out
    assert r.out.splitlines()[-1].startswith("dagrun: 2 succeeded, 0 up to date, 2 failed")


def test_verbose_prints_each_command(project) -> None:
    project.manifest(TWO)
    r = project.run("build", "-v")
    assert re.search(r"\[\d/2\] echo generated > gen.txt\n", r.out)
    assert "GEN gen.txt" not in r.out


def test_the_recap_names_every_failed_task_and_its_output_files(project) -> None:
    project.manifest(FAILING)
    r = project.run("build", "-k")
    lines = r.out.splitlines()
    start = lines.index("dagrun: 2 failed:")
    recap = lines[start + 1 : start + 3]
    assert sorted(recap) == [
        "  bad  [code=4]  .dagrun/runs/bad/stdout.txt  .dagrun/runs/bad/stderr.txt",
        "  worse  [code=5]  .dagrun/runs/worse/stdout.txt  .dagrun/runs/worse/stderr.txt",
    ]
    assert project.read(".dagrun/runs/worse/stderr.txt") == "worse-output\n"
    assert lines[-1].startswith("dagrun: 2 succeeded, 0 up to date, 2 failed")


# ---------------------------------------------------------------- colour and terminals


def run_in(root: Path, args: list[str], *, tty: bool, env: dict[str, str] | None = None) -> str:
    """Run the real CLI with stdout on a pseudo-terminal (``tty``) or a pipe; its output."""
    environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    environ.update(TERM="xterm-256color", COLUMNS="100", **(env or {}))
    argv = [sys.executable, "-m", "dagrun", *args]
    if not tty:
        done = subprocess.run(argv, cwd=root, env=environ, capture_output=True, text=True,
                              timeout=30)
        return done.stdout
    main, child = pty.openpty()
    p = subprocess.Popen(argv, cwd=root, env=environ, stdout=child, stderr=child,
                         stdin=subprocess.DEVNULL)
    os.close(child)
    chunks = []
    while True:
        ready, _, _ = select.select([main], [], [], 30)
        if not ready:
            break
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    p.wait(timeout=30)
    return b"".join(chunks).decode(errors="replace")


@pytest.fixture
def failing_project(tmp_path: Path) -> Path:
    (tmp_path / "dagrun.toml").write_text(FAILING)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("progress", ["plain", "auto"])
def test_colour_on_a_terminal(failing_project: Path, progress: str) -> None:
    out = run_in(failing_project, ["build", "-k", "--progress", progress], tty=True)
    assert "\x1b[32m" in out  # succeeded: green
    assert "\x1b[1;31mFAILED: [code=4] bad" in out  # failed: red


@pytest.mark.slow
@pytest.mark.parametrize(
    "tty, env, args",
    [
        (True, {"NO_COLOR": "1"}, ["--progress", "plain"]),
        (True, {"NO_COLOR": "1"}, []),  # the live display, without colour
        (True, {}, ["--color", "never"]),
        (False, {}, []),  # a pipe
    ],
    ids=["no-color-plain", "no-color-live", "color-never", "pipe"],
)
def test_no_colour_with_no_color_or_in_a_pipe(failing_project, tty, env, args) -> None:
    out = run_in(failing_project, ["build", "-k", *args], tty=tty, env=env)
    assert "FAILED: [code=4] bad" in out
    assert not COLOUR.search(out), repr(out[:300])


@pytest.mark.slow
@pytest.mark.parametrize(
    "env, args", [({"FORCE_COLOR": "1"}, []), ({"NO_COLOR": "1"}, ["--color=always"])]
)
def test_colour_forced_into_a_pipe(failing_project, env, args) -> None:
    out = run_in(failing_project, ["build", "-k", *args], tty=False, env=env)
    assert "\x1b[1;31mFAILED: [code=4] bad" in out


@pytest.mark.slow
def test_progress_rich_forces_the_live_display_into_a_pipe(tmp_path: Path) -> None:
    (tmp_path / "dagrun.toml").write_text('[tasks.a]\ncmd = "sleep 0.3"\n')
    out = run_in(tmp_path, ["build", "--progress", "rich"], tty=False)
    assert "\x1b[?25l" in out  # the live display hides the cursor while it runs
    assert not COLOUR.search(out)  # still no colour in a pipe
    plain = run_in(tmp_path, ["build", "-C", ".", "--progress", "auto"], tty=False)
    assert "\x1b[" not in plain


def test_list_dims_up_to_date_tasks_only_with_colour(project) -> None:
    project.manifest(TWO)
    project.run("build", "gen")
    coloured = project.run("list", "--color", "always").out
    assert "\x1b[2mgen " in coloured and "\x1b[2muse" not in coloured
    assert "\x1b[" not in project.run("list").out


# ---------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
def test_ctrl_c_names_the_killed_tasks_once_and_counts_the_rest(
    dagrun_proc: DagrunProcs,
) -> None:
    dagrun_proc.manifest("""
        [dagrun]
        jobs = 2
        [tasks.first]
        cmd = "true"
        [tasks.s]
        matrix = { n = { range = [1, 23] } }
        cmd = "sleep 30 & echo $$ > pids/s{n}; sleep 30"
        deps = ["first"]
    """)
    p = dagrun_proc.start("build")
    groups = {dagrun_proc.task_pid("s1"), dagrun_proc.task_pid("s2")}
    out, err = stop_and_expect_130(p, signal.SIGINT, to_group=True, groups=groups)
    lines = out.splitlines()
    assert "dagrun: interrupted: killed s[n=1], s[n=2]" in lines
    assert "not run" not in out.replace("20 not run", "")  # counted, not listed
    assert "FAILED" not in out
    assert lines[-1].startswith(
        "dagrun: interrupted: 1 succeeded, 0 up to date, 2 interrupted, 20 not run in "
    )


# ---------------------------------------------------------------- completion


def test_list_names_gives_tasks_and_groups(project) -> None:
    project.manifest('[tasks.a]\ncmd = "true"\n[tasks.s]\nmatrix = { n = [1, 2] }\ncmd = "x"\n')
    assert project.run("list", "--names").out == "a\ns\ns[n=1]\ns[n=2]\n"


@pytest.mark.slow
def test_bash_completion_completes_commands_options_and_task_names(tmp_path: Path) -> None:
    (tmp_path / "dagrun.toml").write_text(
        '[tasks.compile]\ncmd = "true"\n[tasks.check]\ncmd = "true"\n'
    )
    script = subprocess.run([sys.executable, "-m", "dagrun", "completion", "bash"],
                            capture_output=True, text=True, check=True).stdout
    (tmp_path / "complete.sh").write_text(script)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "dagrun").write_text(f'#!/bin/sh\nexec {sys.executable} -m dagrun "$@"\n')
    (bindir / "dagrun").chmod(0o755)

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        probe = (f"source complete.sh; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
                 '_dagrun; printf "%s\\n" "${COMPREPLY[@]}"')
        env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
        done = subprocess.run(["bash", "--norc", "-c", probe], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return sorted(done.stdout.split())

    assert complete("dagrun", "bu") == ["build"]
    assert complete("dagrun", "build", "c") == ["check", "compile"]
    assert complete("dagrun", "-q", "show", "com") == ["compile"]
    assert complete("dagrun", "build", "--ju") == ["--junit"]
    assert complete("dagrun", "build", "--progress", "p") == ["plain"]
    assert complete("dagrun", "completion", "") == ["bash", "fish", "zsh"]
    # without a command, dagrun builds: targets complete beside commands, and build's options
    assert complete("dagrun", "c") == ["cancel", "check", "clean", "compile", "completion"]
    assert complete("dagrun", "-q", "compile", "ch") == ["check"]
    assert complete("dagrun", "compile", "--keep") == ["--keep-going"]


def test_zsh_and_fish_scripts_name_every_command() -> None:
    from dagrun.cli import parser
    from dagrun.completion import script

    for shell in ("zsh", "fish"):
        text = script(shell, parser())
        for command in ("build", "watch", "graph", "list", "show", "clean", "status", "trace"):
            assert command in text
        assert "list --names" in text
    assert script("zsh", parser()).startswith("#compdef dagrun\n")
    fish = script("fish", parser()).splitlines()
    assert "complete -c dagrun -n '__fish_seen_subcommand_from build' -l junit -r -F " \
           "-d 'write a JUnit XML report (a testcase per task)'" in fish


@pytest.fixture
def two_task_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A manifest with tasks compile and check, and ``dagrun`` on the PATH."""
    (tmp_path / "dagrun.toml").write_text(
        '[tasks.compile]\ncmd = "true"\n[tasks.check]\ncmd = "true"\n'
    )
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "dagrun").write_text(f'#!/bin/sh\nexec {sys.executable} -m dagrun "$@"\n')
    (bindir / "dagrun").chmod(0o755)
    return tmp_path, dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completion_in_fish(two_task_project) -> None:
    root, env = two_task_project
    (root / "c.fish").write_text(subprocess.run(
        [sys.executable, "-m", "dagrun", "completion", "fish"], capture_output=True, text=True,
        check=True).stdout)

    def complete(line: str) -> list[str]:
        done = subprocess.run(["fish", "--no-config", "-c", f"source c.fish; complete -C '{line}'"],
                              cwd=root, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return sorted(row.split("\t")[0] for row in done.stdout.splitlines())

    assert complete("dagrun build c") == ["check", "compile"]
    assert complete("dagrun c") == ["cancel", "check", "clean", "compile", "completion"]
    assert complete("dagrun build --ju") == ["--junit"]
    assert complete("dagrun --progress ") == ["auto", "plain", "rich"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_in_zsh(two_task_project) -> None:
    """The function's logic, with compsys' compadd and _files stubbed (they need a terminal)."""
    root, env = two_task_project
    (root / "_dagrun").write_text(subprocess.run(
        [sys.executable, "-m", "dagrun", "completion", "zsh"], capture_output=True, text=True,
        check=True).stdout)

    def complete(*words: str) -> list[str]:
        probe = (
            "compdef() { :; }; _files() { print FILES; }\n"
            'compadd() { [[ $1 == -- ]] && shift; print -l -- "$@"; }\n'
            f"source ./_dagrun; words=({' '.join(words)}); CURRENT={len(words)}; "
            f"PREFIX={words[-1]}; _dagrun"
        )
        done = subprocess.run(["zsh", "-f", "-c", probe], cwd=root, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return sorted(w for w in done.stdout.split() if w.startswith(words[-1]) or w == "FILES")

    assert complete("dagrun", "build", "c") == ["check", "compile"]
    assert complete("dagrun", "c") == ["cancel", "check", "clean", "compile", "completion"]
    assert complete("dagrun", "compile", "--k") == ["--keep-going"]
    assert complete("dagrun", "build", "--junit", "x") == ["FILES"]


@pytest.mark.slow
def test_completion_scripts_parse_in_bash() -> None:
    from dagrun.cli import parser
    from dagrun.completion import script

    done = subprocess.run(["bash", "-n"], input=script("bash", parser()), text=True,
                          capture_output=True)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- the no-op fast path


@pytest.mark.slow
@pytest.mark.parametrize(
    "args", [[], ["build", "-q", "--progress", "plain"], ["-C", "..", "build", "--color", "never"]]
)
def test_no_op_fast_path_for_bare_and_reordered_builds_from_a_subfolder(tmp_path, args) -> None:
    (tmp_path / "dagrun.toml").write_text(TWO)
    sub = tmp_path / "sub"
    sub.mkdir()
    first = subprocess.run([sys.executable, "-m", "dagrun"], cwd=tmp_path, capture_output=True,
                           text=True)
    assert first.returncode == 0, first.stderr
    probe = ("import sys\nfrom dagrun.entry import main\ncode = main(sys.argv[1:])\n"
             "print('argparse' in sys.modules, 'rich' in sys.modules, code)\n")
    done = subprocess.run([sys.executable, "-c", probe, *args], cwd=sub, capture_output=True,
                          text=True)
    assert done.stdout == "dagrun: no work to do (2 up to date)\nFalse False 0\n", done.stderr
