"""A real C project built with gcc: depfiles and early cutoff (issue 15).

The project is examples/c, copied to tmp_path. Which tasks ran is read from the
build's --events file (the "started" events), so each test says exactly what
reran.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "c"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed"),
]


@pytest.fixture
def c_project(project):
    for path in EXAMPLE.rglob("*"):
        rel = path.relative_to(EXAMPLE)
        if path.is_file() and not rel.parts[0].startswith((".dagrun", "build")):
            project.write(str(rel), path.read_text())
    return project


def build(project, *args: str) -> list[str]:
    """Run a build; the names of the tasks that started, sorted."""
    events = project.root / "events.jsonl"
    r = project.run("build", "-j2", "--events", str(events), *args)
    assert r.code == 0, r.out + r.err
    ran = []
    for line in events.read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "started":
            ran.append(e["task"])
    return sorted(ran)


def append(project, path: str, text: str) -> None:
    with open(project.root / path, "a") as f:
        f.write(text)


def hello(project) -> str:
    return subprocess.run(
        [str(project.root / "build" / "hello"), "x"], capture_output=True, text=True, check=True
    ).stdout


def test_a_header_edit_recompiles_exactly_its_includers(c_project):
    assert len(build(c_project)) == 6
    assert build(c_project) == []
    append(c_project, "src/util.h", "/* a comment */\n")  # included by greet.c only
    assert build(c_project) == ["cc[c=src/greet.c]"]  # same object: nothing relinks
    append(c_project, "include/greet.h", "/* a comment */\n")  # included by all three
    assert build(c_project) == ["cc[c=src/greet.c]", "cc[c=src/shout.c]", "main"]


def test_a_real_header_change_relinks_and_explain_names_the_header(c_project):
    build(c_project)
    text = (c_project.root / "src/util.h").read_text().replace('"Hello"', '"Howdy"')
    (c_project.root / "src/util.h").write_text(text)
    r = c_project.run("build", "-n", "--explain")
    assert "input src/util.h changed (from depfile)" in r.out
    assert build(c_project, "link") == ["cc[c=src/greet.c]", "lib", "link"]
    assert hello(c_project) == "Howdy, X!\n"


def test_a_new_include_is_picked_up_on_the_next_build(c_project):
    build(c_project)
    c_project.write("src/extra.h", "#define EXTRA 1\n")
    text = (c_project.root / "src/shout.c").read_text()
    (c_project.root / "src/shout.c").write_text('#include "extra.h"\n' + text)
    assert build(c_project) == ["cc[c=src/shout.c]"]  # the object did not change
    append(c_project, "src/extra.h", "#define MORE 2\n")
    assert build(c_project) == ["cc[c=src/shout.c]"]


def test_deleting_a_depfile_header_reruns_never_a_stale_success(c_project):
    build(c_project)
    text = (c_project.root / "src/greet.c").read_text()
    (c_project.root / "src/util.h").unlink()
    r = c_project.run("build", "-j2")
    assert r.code == 1  # greet.c still includes it: gcc fails, dagrun reports it
    assert "util.h" in r.out + r.err
    assert "Traceback" not in r.out + r.err
    (c_project.root / "src/greet.c").write_text(
        text.replace('#include "util.h"\n', '#define GREETING "Hello"\n')
    )
    assert build(c_project) == ["cc[c=src/greet.c]"]  # the same object as before
    assert build(c_project) == []


def test_a_comment_in_a_c_file_relinks_nothing_and_a_code_change_relinks(c_project):
    build(c_project)
    append(c_project, "src/shout.c", "/* only a comment */\n")
    r = c_project.run("build", "-n")
    assert "may run: depends on cc[c=src/shout.c]" in r.out
    assert build(c_project) == ["cc[c=src/shout.c]"]
    append(c_project, "src/shout.c", "int unused_but_exported(void) { return 1; }\n")
    assert build(c_project) == ["cc[c=src/shout.c]", "lib", "link", "test"]
    assert hello(c_project) == "Hello, X!\n"


def test_a_missing_depfile_fails_the_task_clearly(c_project):
    text = (c_project.root / "dagrun.toml").read_text()
    (c_project.root / "dagrun.toml").write_text(text.replace("-MMD -MF build/main.d ", ""))
    r = c_project.run("build", "main")
    assert r.code == 1
    assert "depfile build/main.d" in r.out + r.err and "does not exist" in r.out + r.err


def test_a_malformed_depfile_fails_the_task_clearly(c_project):
    text = (c_project.root / "dagrun.toml").read_text()
    text = text.replace(
        "-MMD -MF build/main.d -c app/main.c -o {outputs}",
        "-c app/main.c -o {outputs} && echo garbage > build/main.d",
    )
    (c_project.root / "dagrun.toml").write_text(text)
    r = c_project.run("build", "main")
    assert r.code == 1
    assert "depfile build/main.d" in r.out + r.err and "line 1" in r.out + r.err


def test_cflags_on_the_command_line_rebuilds_with_them_and_the_environment_does_not(
    c_project, monkeypatch
):
    """examples/c takes CFLAGS from [vars]: ``dagrun build CFLAGS=...`` (issue 26) recompiles
    with those flags; CFLAGS in the environment is not read, so it reruns nothing."""
    assert len(build(c_project)) == 6
    monkeypatch.setenv("CFLAGS", "-O0")
    assert build(c_project) == []
    monkeypatch.delenv("CFLAGS")
    r = c_project.run("build", "-v", "CFLAGS=-O0 -g -Wall -Iinclude")
    assert r.code == 0, r.err
    compiles = [ln for ln in r.out.splitlines() if "-c " in ln]
    assert len(compiles) == 3 and all(" -O0 -g -Wall " in ln for ln in compiles)
    assert hello(c_project) == "Hello, X!\n"
    assert len(build(c_project)) == 6  # the manifest's own flags again: other objects
