"""manifest.parse and build_manifest: matrix expansion, paths, line numbers, validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dagrun.errors import ManifestError, UnknownTargetError
from dagrun.graph import compile
from dagrun.manifest import Manifest, TaskSpec, build_manifest, load, parse


def tasks(text: str, root: str | Path = "/p") -> dict[str, TaskSpec]:
    return {t.name: t for t in parse(text, source="m.toml", root=str(root)).tasks}


def error(text: str, root: str | Path = "/p") -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse(text, source="m.toml", root=str(root))
    return info.value


# ---------------------------------------------------------------- matrix


def test_matrix_lists_make_one_task_per_combination_in_order() -> None:
    t = tasks(
        '[tasks.sim]\nmatrix = { n = [1, 2], model = ["a", "b"] }\n'
        'cmd = "./sim --n {n} --model {model}"\noutputs = ["out/{n}-{model}.txt"]\n'
    )
    assert list(t) == [
        "sim[n=1,model=a]",
        "sim[n=1,model=b]",
        "sim[n=2,model=a]",
        "sim[n=2,model=b]",
    ]
    s = t["sim[n=2,model=b]"]
    assert (s.cmd, s.outputs, s.group) == ("./sim --n 2 --model b", ("out/2-b.txt",), "sim")


def test_matrix_values_of_every_scalar_kind() -> None:
    t = tasks('[tasks.s]\nmatrix = { v = [1, 2.5, "x", true] }\ncmd = "echo {v}"\n')
    assert [s.cmd for s in t.values()] == ["echo 1", "echo 2.5", "echo x", "echo true"]


def test_matrix_substitutes_in_every_string_key() -> None:
    t = tasks(
        '[tasks.prep]\nmatrix = { n = [1] }\ncmd = "p"\noutputs = ["p{n}"]\n'
        '[tasks.s]\nmatrix = { n = [1] }\ncmd = "c{n}"\ninputs = ["i{n}"]\noutputs = ["o{n}"]\n'
        'deps = ["prep[n={n}]"]\ndisplay = "SIM {n}"\nenv = { N = "{n}" }\ncwd = "d{n}"\n'
    )
    s = t["s[n=1]"]
    assert (s.cmd, s.inputs, s.outputs, s.deps) == ("c1", ("d1/i1",), ("d1/o1",), ("prep[n=1]",))
    assert (s.display, s.env, s.cwd) == ("SIM 1", (("N", "1"),), "d1")


def test_other_braces_are_left_alone() -> None:
    t = tasks(
        "[tasks.s]\nmatrix = { n = [7] }\n"
        'cmd = "echo ${n} ${n.x} ${HOME} {a,b} {m} {m.bogus} {} {{n}} {n} {print $1}"\n'
    )
    assert t["s[n=7]"].cmd == "echo ${n} ${n.x} ${HOME} {a,b} {m} {m.bogus} {} {7} 7 {print $1}"


@pytest.mark.parametrize(
    ("key", "value", "line"),
    [
        ("cmd", '"wc -l < {f} > {f.stme}.n"', 4),
        ("inputs", '["{f}", "{f.parnet}/x"]', 5),
        ("outputs", '["out/{f.nmae}"]', 6),
        ("display", '"COUNT {f.Stem}"', 7),
        ("env", '{ A = "{f.sufix}" }', 8),
    ],
)
def test_a_misspelt_part_of_a_matrix_variable_is_an_error(key: str, value: str, line: int) -> None:
    keys = {"cmd": '"true"', "inputs": "[]", "outputs": "[]", "display": '""', "env": "{}"}
    keys[key] = value
    text = '\n[tasks.count]\nmatrix = { f = ["a.csv"], n = [1] }\n' + "".join(
        f"{k} = {v}\n" for k, v in keys.items()
    )
    e = error(text)
    placeholder = re.search(r"\{f\.\w+\}", value)
    assert placeholder is not None
    part = placeholder.group(0)[3:-1]
    close = {"stme": "stem", "parnet": "parent", "nmae": "name", "Stem": "stem", "sufix": "suffix"}
    assert str(e) == (
        f"m.toml:{line}: task 'count', key '{key}': unknown placeholder '{placeholder.group(0)}': "
        f"a matrix value has no part '{part}' (did you mean '{{f.{close[part]}}}'?)"
    )


def test_a_misspelt_placeholder_in_a_function_tasks_arguments_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def f(*args, **kwargs):\n    return args\n")
    text = '[tasks.t]\nmatrix = { i = { range = [1, 3] } }\ncall = "m:f"\nargs = ["{i.xyz}"]\n'
    assert str(error(text, tmp_path)) == (
        "m.toml:4: task 't', key 'args': unknown placeholder '{i.xyz}': a matrix value has no "
        "part 'xyz' (a path's parts are {i.stem}, {i.name}, {i.parent}, {i.suffix})"
    )
    kwargs = text.replace('args = ["{i.xyz}"]', 'kwargs = { a = ["x", "{i.nam}"] }')
    assert "key 'kwargs': unknown placeholder '{i.nam}'" in str(error(kwargs, tmp_path))


def test_a_task_without_matrix_keeps_its_braces() -> None:
    assert tasks('[tasks.a]\ncmd = "echo {n} {a,b}"\n')["a"].cmd == "echo {n} {a,b}"


def test_glob_matrix_gives_path_parts(tmp_path: Path) -> None:
    for name in ("data/x/one.csv.gz", "data/y/two.csv.gz", "data/.hidden.csv.gz", "other.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    t = tasks(
        '[tasks.c]\nmatrix = { f = { glob = "data/**/*.gz" } }\n'
        'cmd = "{f} {f.stem} {f.name} {f.parent} {f.suffix}"\ninputs = ["{f}"]\n',
        tmp_path,
    )
    assert list(t) == ["c[f=data/x/one.csv.gz]", "c[f=data/y/two.csv.gz]"]
    s = t["c[f=data/x/one.csv.gz]"]
    assert s.cmd == "data/x/one.csv.gz one.csv one.csv.gz data/x .gz"
    assert s.inputs == ("data/x/one.csv.gz",)


def test_glob_matrix_is_relative_to_the_task_cwd(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.c").write_text("")
    t = tasks(
        '[tasks.cc]\ncwd = "sub"\nmatrix = { f = { glob = "*.c" } }\n'
        'cmd = "cc -c {f}"\ninputs = ["{f}"]\noutputs = ["{f.stem}.o"]\n',
        tmp_path,
    )
    s = t["cc[f=a.c]"]
    assert (s.cmd, s.inputs, s.outputs) == ("cc -c a.c", ("sub/a.c",), ("sub/a.o",))


def test_glob_matrix_records_the_folders_it_read(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("")
    m = parse('[tasks.t]\nmatrix = { f = { glob = "d/*.txt" } }\ncmd = "x"\n', root=str(tmp_path))
    assert str(tmp_path / "d") in m.scanned


def test_glob_matrix_that_matches_nothing_is_an_empty_group(tmp_path: Path) -> None:
    m = parse(
        '[tasks.t]\nmatrix = { f = { glob = "none/*.txt" } }\ncmd = "x"\n'
        '[tasks.after]\ncmd = "y"\ndeps = ["t"]\n[dagrun]\ndefault = ["t"]\n',
        root=str(tmp_path),
    )
    assert ([t.name for t in m.tasks], m.groups) == (["after"], ("t",))
    g = compile(m)
    assert g.deps == [()] and g.resolve(["t"]) == [] and g.select(None) == []
    with pytest.raises(UnknownTargetError):
        g.resolve(["u"])


def test_group_name_is_a_dependency_and_a_target() -> None:
    graph = compile(
        parse(
            '[tasks.sim]\nmatrix = { n = [1, 2] }\ncmd = "s {n}"\n'
            '[tasks.report]\ncmd = "r"\ndeps = ["sim"]\n',
            root="/p",
        )
    )
    names = [s.name for s in graph.specs]
    assert [names[d] for d in graph.deps[graph.index["report"]]] == ["sim[n=1]", "sim[n=2]"]
    assert [names[i] for i in graph.resolve(["sim"])] == ["sim[n=1]", "sim[n=2]"]
    assert [names[i] for i in graph.resolve(["sim[n=2]"])] == ["sim[n=2]"]


KINDS = 'a list, { glob = "pattern" } or { range = [start, stop, step] }'


@pytest.mark.parametrize(
    "matrix, message",
    [
        ("[]", 'must be a non-empty table of variable = [values] or { glob = "..." }'),
        ("{}", 'must be a non-empty table of variable = [values] or { glob = "..." }'),
        ("{ n = [] }", "variable 'n' has no values"),
        ("{ n = 3 }", f"variable 'n' must be {KINDS}, not an integer"),
        ("{ n = [[1]] }", "variable 'n' has a value of type an array"),
        ("{ n = { glob = 1 } }", f"variable 'n' must be {KINDS}"),
        ('{ n = { glob = "*", x = 1 } }', f"variable 'n' must be {KINDS}"),
        ("{ n = { range = [1] } }",
         "variable 'n': range must be [start, stop] or [start, stop, step] (whole numbers), "
         "not [1]"),
        ("{ n = { range = [1, 5, 0] } }", "variable 'n': range step must not be 0"),
        ("{ n = { range = [5, 1] } }",
         "variable 'n': range [5, 1] has no values (stop is exclusive, as in Python)"),
        ('{ n = { range = [1, "9"] } }',
         "variable 'n': range must be [start, stop] or [start, stop, step] (whole numbers), "
         "not [1, '9']"),
        ('{ "1n" = [1] }', "variable name '1n' must be an identifier"),
    ],
)
def test_bad_matrix(matrix: str, message: str) -> None:
    e = error(f'[tasks.s]\ncmd = "x"\nmatrix = {matrix}\n')
    assert (e.task, e.key, e.line, e.message) == ("s", "matrix", 3, message)


def test_matrix_range_with_and_without_a_step() -> None:
    matrix = "{ n = { range = [1, 41] }, k = { range = [10, 0, -5] } }"
    m = parse(f'[tasks.s]\ncmd = "echo {{n}}"\nmatrix = {matrix}\n')
    names = [t.name for t in m.tasks]
    assert len(names) == 40 * 2
    assert names[:2] == ["s[n=1,k=10]", "s[n=1,k=5]"] and names[-1] == "s[n=40,k=5]"
    assert m.tasks[-1].cmd == "echo 40"


def test_matrix_values_that_give_one_name_twice() -> None:
    e = error('[tasks.s]\ncmd = "x"\nmatrix = { n = [1, 1] }\n')
    assert e.message == "the matrix gives two tasks the name 's[n=1]'" and e.line == 3


# ---------------------------------------------------------------- paths


def test_paths_are_normalised_relative_to_the_task_cwd() -> None:
    s = tasks(
        '[tasks.a]\ncmd = "x"\ncwd = "./sub/"\n'
        'inputs = ["a.c", "./b/../c.c", "../top.txt", "/abs//x.h", "d/"]\noutputs = ["o/./a.o"]\n'
    )["a"]
    assert s.cwd == "sub"
    assert s.inputs == ("sub/a.c", "sub/c.c", "top.txt", "/abs/x.h", "sub/d")
    assert s.outputs == ("sub/o/a.o",)


def test_default_cwd_is_the_manifest_folder() -> None:
    s = tasks('[tasks.a]\ncmd = "x"\ninputs = ["./a.c"]\n')["a"]
    assert (s.cwd, s.inputs) == (".", ("a.c",))


def test_inputs_outputs_and_deps_are_deduplicated_in_order() -> None:
    s = tasks(
        '[tasks.b]\ncmd = "b"\n[tasks.a]\ncmd = "x"\ninputs = ["z", "a", "./z", "a/../z"]\n'
        'outputs = ["o", "./o"]\ndeps = ["b", "b"]\n'
    )["a"]
    assert (s.inputs, s.outputs, s.deps) == (("z", "a"), ("o",), ("b",))


def test_same_output_written_two_ways_is_still_a_duplicate() -> None:
    e = error(
        '[tasks.a]\ncmd = "a"\noutputs = ["x/y"]\n[tasks.b]\ncmd = "b"\noutputs = ["x/./y"]\n'
    )
    assert e.message == "output 'x/y' is also declared by task 'a'" and (e.task, e.line) == ("b", 6)


@pytest.mark.parametrize("cwd", ["..", "../x", "/tmp", "a/../.."])
def test_cwd_outside_the_manifest_folder(cwd: str) -> None:
    assert error(f'[tasks.a]\ncmd = "x"\ncwd = "{cwd}"\n').key == "cwd"


def test_cwd_named_like_dotdot_is_inside() -> None:
    assert tasks('[tasks.a]\ncmd = "x"\ncwd = "..data"\n')["a"].cwd == "..data"


# ---------------------------------------------------------------- lines and messages


def test_error_lines_point_at_the_key() -> None:
    e = error('# comment\n\n[tasks.a]\ncmd = "x"\n\n  threads   =  "2"\n')
    assert str(e) == "m.toml:6: task 'a', key 'threads': must be an integer, not a string"


def test_error_lines_skip_multiline_strings() -> None:
    e = error('[tasks.a]\ncmd = """\nthreads = 1\n"""\nthreads = "2"\n')
    assert e.line == 5


def test_error_lines_in_inline_and_dotted_tables() -> None:
    assert error('[tasks]\na = { cmd = "x", threads = 0 }\n').line == 2
    assert error('[tasks.a]\ncmd = "x"\nenv.A = 1\n').line == 3
    assert error('[tasks."a.b"]\ncmd = "x"\nbad = 1\n').message == 'unknown key in [tasks."a.b"]'


def test_error_line_of_a_table_without_its_own_header() -> None:
    e = error('[dagrun]\njobs = 1\n\n[task.a]\ncmd = "x"\n')
    assert str(e) == "m.toml:4: key 'task': unknown top-level table (did you mean 'tasks'?)"


def test_error_lines_for_graph_errors_point_at_the_key() -> None:
    with pytest.raises(ManifestError) as info:
        compile(parse('[tasks.a]\ncmd = "x"\n\ndeps = ["nope"]\n', source="m.toml", root="/p"))
    assert str(info.value) == (
        "m.toml:4: task 'a', key 'deps': unknown dependency 'nope'"
        " (no task or matrix group has this name)"
    )


@pytest.mark.parametrize(
    "glob, why",
    [
        ("[z-a].c", "bad character range z-a"),
        ("[a&&b]", "possible set intersection at position 2"),
    ],
)
def test_an_input_glob_that_is_not_a_glob(glob: str, why: str) -> None:
    # ("[[a].c" is a glob, as fnmatch's: "[" or "a", then ".c"; "[[]" is how a name's "[" is
    # matched literally, so it is no longer an error)
    for _ in range(2):  # the same both times (a failed pattern is not cached by re)
        with pytest.raises(ManifestError) as info:
            text = f'[tasks.a]\ncmd = "x"\ninputs = ["{glob}"]\n'
            compile(parse(text, source="m.toml", root="/p"))
        assert str(info.value) == (
            f"m.toml:3: task 'a', key 'inputs': input '{glob}' is not a valid glob ({why})"
        )


def test_task_specs_carry_their_header_line() -> None:
    t = tasks('[tasks.a]\ncmd = "x"\n\n[tasks.s]\nmatrix = { n = [1, 2] }\ncmd = "y"\n')
    assert [s.line for s in t.values()] == [1, 4, 4]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a = \n", "m.toml:1: invalid TOML: invalid value (column 5)"),
        (
            '[tasks.a]\ncmd = "x"\ncmd = "y"\n',
            "m.toml:3: invalid TOML: key 'cmd' is set twice (column 10)",
        ),
        (
            "[tasks.a]\n[tasks.a]\n",
            "m.toml:2: invalid TOML: table [tasks.a] is declared twice (column 9)",
        ),
        ('x = """abc\nd\n', "m.toml:2: invalid TOML: unterminated string (at the end of the file)"),
        ("a = " + "[" * 5000, "m.toml: invalid TOML: arrays or tables nested too deeply"),
    ],
)
def test_toml_errors(text: str, message: str) -> None:
    assert str(error(text)) == message


@pytest.mark.parametrize(
    "body, message",
    [
        ('cmd = "a\\u0000b"', "key 'cmd': must not contain a NUL character"),
        ('cmd = "x"\ninputs = ["a\\u0000"]', "key 'inputs': must not contain a NUL character"),
        ('cmd = "x"\ntimeout = nan', "key 'timeout': must be a finite number of seconds"),
        ('cmd = "x"\ntimeout = inf', "key 'timeout': must be a finite number of seconds"),
        ('cmd = "x"\ntimeout = 1' + "0" * 400, "key 'timeout': must be a finite number of seconds"),
        ('cmd = "x"\ntimeout = -1.5', "key 'timeout': must be positive, not -1.5"),
        ('cmd = "x"\nthreads = true', "key 'threads': must be an integer, not a boolean"),
        ('cmd = "x"\ndisplay = 1979-05-27', "key 'display': must be a string, not a date/time"),
        ('cmd = "x"\nenv = { "A=B" = "1" }', "key 'env': 'A=B' is not a valid variable name"),
        (
            'cmd = "x"\nresources = { gpu = -1 }',
            "key 'resources': value of 'gpu' must be a non-negative",
        ),
        ('cmd = "x"\noutputs = [""]', "key 'outputs': must not contain an empty string"),
    ],
)
def test_task_value_checks(body: str, message: str) -> None:
    assert f"task 'a', {message}" in str(error(f"[tasks.a]\n{body}\n"))


def test_an_array_of_tables_is_refused_at_its_line() -> None:
    e = error('# tasks as in other tools\n[[tasks]]\nname = "a"\ncmd = "x"\n')
    assert str(e) == "m.toml:2: key 'tasks': must be a table such as [tasks], not an array"


def test_top_level_tables_must_be_tables() -> None:
    assert (
        str(error("tasks = 3\n"))
        == "m.toml:1: key 'tasks': must be a table such as [tasks], not an integer"
    )


# ---------------------------------------------------------------- build_manifest (the API path)


def test_build_manifest_validates_like_a_file(tmp_path: Path) -> None:
    m = build_manifest(
        "<api>",
        str(tmp_path),
        {"jobs": 2},
        {"A": "1"},
        {
            "gen": {"cmd": "gen", "outputs": ["./t.h"]},
            "cc": {
                "cmd": "cc",
                "inputs": ["t.h"],
                "matrix": {"o": ["-O0", "-O2"]},
                "env": {"O": "{o}"},
            },
        },
    )
    assert isinstance(m, Manifest)
    assert (m.source, m.root, m.jobs, m.env) == ("<api>", str(tmp_path), 2, (("A", "1"),))
    assert [t.name for t in m.tasks] == ["gen", "cc[o=-O0]", "cc[o=-O2]"]
    assert m.tasks[2].env == (("O", "-O2"),) and m.tasks[0].outputs == ("t.h",)
    assert [t.line for t in m.tasks] == [None, None, None]


def test_build_manifest_errors_have_no_line() -> None:
    with pytest.raises(ManifestError) as info:
        build_manifest("<api>", "/p", {}, {}, {"a": {"cmd": "x", "depz": []}})
    assert (
        str(info.value)
        == "<api>: task 'a', key 'depz': unknown key in [tasks.a] (did you mean 'deps'?)"
    )
    with pytest.raises(ManifestError, match=r"^<api>: key 'jobs': must be at least 1, not 0$"):
        build_manifest("<api>", "/p", {"jobs": 0}, {}, {})
    with pytest.raises(
        ManifestError, match=r"^<api>: key 'lab': must be a table such as \[executors.lab\]"
    ):
        build_manifest("<api>", "/p", {}, {}, {}, {"lab": "ssh"})  # type: ignore[dict-item]


def test_load_reads_a_file_relative_to_its_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "dagrun.toml"
    path.write_text('[tasks.a]\ncmd = "x"\ninputs = ["in.txt"]\n')
    m = load(path)
    assert (m.root, m.source, m.tasks[0].inputs) == (str(tmp_path / "sub"), str(path), ("in.txt",))


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no such manifest file$"):
        load(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[tasks.a]\ncmd = "\xff"\n')
    with pytest.raises(
        ManifestError, match=r"bad.toml: not UTF-8 text \(invalid start byte at byte 17\)$"
    ):
        load(bad)
