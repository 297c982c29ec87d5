"""Issue 15's manifest features, built for real: excludes, [vars], {inputs}/{outputs},
names with '/', and a matrix over the files a generator declares."""

from __future__ import annotations

import pytest

from dagrun import graph, manifest
from dagrun.scheduler import run_dir_name


def names(text: str, root: str) -> list[str]:
    return [t.name for t in manifest.parse(text, root=root).tasks]


def test_matrix_glob_exclude_by_name_and_by_path(tmp_path):
    for name in ("a.c", "b.c", "lua.c", "onelua.c", "sub/c.c"):
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_text("")
    text = """
    [tasks.cc]
    matrix = { c = { glob = "src/**/*.c", exclude = ["onelua.c", "lua.c", "src/sub/*"] } }
    cmd = "cc -c {c}"
    """
    assert names(text, str(tmp_path)) == ["cc[c=src/a.c]", "cc[c=src/b.c]"]


def test_negated_inputs_leave_the_key_and_the_dependencies(project):
    project.manifest(
        """
        [tasks.gen]
        cmd = "echo gen > build/gen.h"
        outputs = ["build/gen.h"]

        [tasks.use]
        cmd = "cat {inputs} > all.txt"
        inputs = ["src/*.txt", "build/*.h", "!src/skip*", "!build/gen.h"]
        outputs = ["all.txt"]
        """
    )
    project.write("src/a.txt", "a\n")
    project.write("src/skipped.txt", "skip\n")
    g = graph.compile(manifest.load(project.root / "dagrun.toml"))
    use = g.index["use"]
    assert g.deps[use] == ()  # gen's only file was excluded
    assert g.sources[use] == ("src/a.txt",)
    assert g.specs[use].cmd == "cat src/a.txt > all.txt"
    assert project.run("build", "use").code == 0
    project.write("src/skipped.txt", "changed\n")
    r = project.run("build", "use", "--explain")
    assert r.code == 0 and "1 up to date" in r.out


def test_inputs_and_outputs_with_spaces_are_quoted(project):
    project.manifest(
        """
        [vars]
        PARTS = ["in/one part.txt", "in/two.txt"]

        [tasks."join/all"]
        cmd = "cat {inputs} > {outputs} && printf '%s\\n' {PARTS} > list.txt"
        cwd = "."
        inputs = ["{PARTS}"]
        outputs = ["out dir/joined file.txt"]
        """
    )
    project.write("in/one part.txt", "one\n")
    project.write("in/two.txt", "two\n")
    r = project.run("build")
    assert r.code == 0, r.err
    assert project.read("out dir/joined file.txt") == "one\ntwo\n"
    assert project.read("list.txt") == "in/one part.txt\nin/two.txt\n"  # one word each


def test_inputs_are_relative_to_the_tasks_cwd(project):
    project.manifest(
        """
        [tasks.sub]
        cwd = "sub"
        cmd = "cat {inputs} > {outputs}"
        inputs = ["a.txt", "../top.txt"]
        outputs = ["out.txt"]
        """
    )
    project.write("sub/a.txt", "a\n")
    project.write("top.txt", "top\n")
    assert project.run("build").code == 0
    assert project.read("sub/out.txt") == "a\ntop\n"


def test_vars_in_cmd_inputs_and_outputs_and_unknown_braces_stay(tmp_path):
    text = """
    [vars]
    CFLAGS = "-O2 -Wall"
    OBJS = ["build/a.o", "build/b c.o"]

    [tasks.link]
    cmd = "cc {CFLAGS} {OBJS} -o {outputs} ${CFLAGS} {nope} {a,b}"
    inputs = ["{OBJS}"]
    outputs = ["build/app"]
    """
    (t,) = manifest.parse(text, root=str(tmp_path)).tasks
    assert t.inputs == ("build/a.o", "build/b c.o")
    assert t.cmd == "cc -O2 -Wall build/a.o 'build/b c.o' -o {outputs} ${CFLAGS} {nope} {a,b}"


def test_names_with_slash_build_and_render_in_dot(project):
    project.manifest(
        """
        [tasks."docs/html"]
        cmd = "echo html > {outputs}; echo made"
        outputs = ["site/index.html"]

        [tasks."app/web:build"]
        cmd = "cat site/index.html > {outputs}"
        inputs = ["site/index.html"]
        outputs = ["web.txt"]
        """
    )
    r = project.run("build", "app/web:build")
    assert r.code == 0, r.err
    assert project.read("web.txt") == "html\n"
    # run folders (made for a task that printed) have safe names
    runs = project.root / ".dagrun" / "runs"
    assert [p.name for p in runs.iterdir()] == [run_dir_name("docs/html")]
    r = project.run("graph", "--dot")
    assert '"docs/html" -> "app/web:build";' in r.out


@pytest.mark.parametrize("name", ["a b", "x[1]", "a*", "a=b", "a,b", "a?"])
def test_names_with_target_syntax_are_refused(tmp_path, name):
    with pytest.raises(manifest.ManifestError, match="task names must not contain"):
        manifest.parse(f'[tasks."{name}"]\ncmd = "true"\n', root=str(tmp_path))


def test_a_matrix_over_a_generators_outputs_expands_in_one_build(project):
    project.manifest(
        """
        [tasks.count]
        matrix = { p = { glob = "parts/*.txt" } }
        cmd = "wc -c < {p} > {outputs}"
        inputs = ["{p}"]
        outputs = ["counts/{p.stem}.n"]

        [tasks.split]
        cmd = "mkdir -p parts && echo one > parts/1.txt && echo three > parts/3.txt"
        outputs = ["parts/1.txt", "parts/3.txt"]

        [tasks.total]
        matrix = { n = { glob = "counts/*.n" } }
        cmd = "cat {n} >> total.txt"
        inputs = ["{n}"]
        """
    )
    r = project.run("build")
    assert r.code == 0, r.err
    assert "5 succeeded" in r.out
    assert sorted(project.read("total.txt").split()) == ["4", "6"]
    assert "no work to do (5 up to date)" in project.run("build").out
