"""Big manifests, small peak: batched TOML parsing and the lazy line index answer as before."""

from __future__ import annotations

import re
import sys

import pytest

from dagrun import manifest, tomlsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def tasks_text(n: int, extra: str = "") -> str:
    body = "".join(
        f'[tasks.t{i}]\ncmd = "cp src/{i} out/{i}"\ninputs = ["src/{i}"]\noutputs = ["out/{i}"]\n'
        + (f'deps = ["t{i - 1}"]\n' if i else "")
        for i in range(n)
    )
    return '[dagrun]\njobs = 2\n\n[env]\nA = "1"\n\n' + body + extra


N = tomlsplit.MIN_TASKS + 5


def test_batches_give_tomllibs_document():
    text = tasks_text(N)
    assert tomlsplit._loads_in_batches(text) == tomllib.loads(text)  # not a fall-back
    assert tomlsplit.loads(text) == tomllib.loads(text)
    assert list(tomlsplit.loads(text)) == list(tomllib.loads(text))


@pytest.mark.parametrize(
    "extra",
    [
        "[executors.x]\ntype = 'ssh'\n",  # another table after the tasks
        "[tasks.t3.env]\nB = '2'\n",  # a sub-table of an earlier task
        '[tasks."quoted name"]\ncmd = "x"\n',
        "[tasks.t4]\ncmd = 'again'\n",  # a task declared twice: tomllib's error
        "[tasks.z]\ncmd = '''\n[tasks.q]\n'''\n",  # a header-looking line in a multi-line string
        "[tasks.y]\ncmd = 'x'\n[[tasks.arr]]\nv = 1\n",
    ],
)
def test_anything_unusual_is_parsed_whole(extra):
    text = tasks_text(N, extra)
    try:
        expected = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        with pytest.raises(tomllib.TOMLDecodeError, match=re.escape(str(exc))):
            tomlsplit.loads(text)
        return
    assert tomlsplit.loads(text) == expected


def test_a_syntax_error_has_tomllibs_message_and_line():
    text = tasks_text(N) + "[tasks.bad]\ncmd = = 1\n"
    with pytest.raises(tomllib.TOMLDecodeError) as whole:
        tomllib.loads(text)
    with pytest.raises(tomllib.TOMLDecodeError) as batched:
        tomlsplit.loads(text)
    assert str(batched.value) == str(whole.value)


TEXTS = [
    tasks_text(20),
    "[dagrun]\njobs = 2\n[tasks]\na.cmd = 'x'\n[tasks.a.env]\nK = '1'\n[tasks.b]\ncmd = 'y'\n",
    "[tasks]\ninline = { cmd = 'x', outputs = ['o'] }\n  [tasks.sub]  # comment\ncmd = 'y'\n",
    "[[arr]]\nx = 1\n[[arr]]\nx = 2\n[tasks.m]\nmatrix = { n = [1, 2] }\ncmd = 'x {n}'\n",
    "[tasks.s]\ncmd = '''\n[tasks.fake]\n'''\n[tasks.t]\ncmd = 'z'\n",
    "[tasks.w]\r\ncmd = 'x'\r\n[tasks.v]\r\ncmd = 'y'\r\n",
]


@pytest.mark.parametrize("text", TEXTS)
def test_the_lazy_line_index_answers_like_the_full_one(text):
    tomllib.loads(text)  # only valid TOML is indexed
    lazy = manifest._LineIndex(text)
    full = manifest._LineIndex(text)
    full._complete()
    tables = set(full.headers) | set(full.below)
    keys = {k for _, k in full.keys} | {"cmd", "deps", "nope"}
    for table in sorted(tables) + [("nothing",), ("tasks", "missing")]:
        assert lazy.find(table, None) == full.find(table, None), table
    for table in sorted(tables):
        for key in sorted(keys):
            assert lazy.find(table, key) == full.find(table, key), (table, key)


def test_task_lines_need_no_key_index():
    text = tasks_text(50)
    index = manifest._LineIndex(text)
    assert index.find(("tasks", "t7"), None) == text.splitlines().index("[tasks.t7]") + 1
    assert index.keys == {}  # nothing but headers so far
    assert index.find(("tasks", "t7"), "cmd") == text.splitlines().index("[tasks.t7]") + 2


def test_a_big_manifest_made_batch_by_batch_is_the_one_made_whole(monkeypatch):
    text = tasks_text(N) + '[tasks.m]\nmatrix = { n = [1, 2] }\ncmd = "x {n}"\n'
    assert tomlsplit.split(text) is not None  # not a fall-back
    batched = manifest.parse(text, source="m.toml", root="/p")
    monkeypatch.setattr(tomlsplit, "split", lambda text: None)
    whole = manifest.parse(text, source="m.toml", root="/p")
    assert batched.tasks == whole.tasks
    assert batched.tasks[7].line == text.splitlines().index("[tasks.t7]") + 1


@pytest.mark.parametrize(
    "extra, message",
    [
        ("[tasks.bad]\ncmd = 'x'\nnope = 1\n", r"m.toml:\d+: task 'bad': unknown key"),
        ("[tasks.bad]\ncmd = = 1\n", "invalid TOML"),
    ],
)
def test_errors_in_a_big_manifest_are_the_ones_of_the_whole_text(monkeypatch, extra, message):
    text = tasks_text(N).replace('[tasks.t3]\ncmd', "[tasks.t3]\nthreads = 'x'\ncmd", 1)
    text += extra  # a later batch: a TOML error there wins over t3's, as with one parse
    with pytest.raises(manifest.ManifestError) as batched:
        manifest.parse(text, source="m.toml", root="/p")
    monkeypatch.setattr(tomlsplit, "split", lambda text: None)
    with pytest.raises(manifest.ManifestError) as whole:
        manifest.parse(text, source="m.toml", root="/p")
    assert str(batched.value) == str(whole.value)
    first = "invalid TOML" if "TOML" in message else "task 't3'"
    assert first in str(batched.value)


def test_an_error_in_a_big_manifest_names_the_keys_line():
    lines = tasks_text(N).splitlines()
    at = lines.index("[tasks.t400]") + 1
    lines.insert(at + 1, "nope = 1")
    with pytest.raises(manifest.ManifestError, match=rf"m.toml:{at + 2}: task 't400'"):
        manifest.parse("\n".join(lines) + "\n", source="m.toml", root="/p")


def test_a_loaded_manifest_reads_its_text_again_for_a_later_errors_line(tmp_path):
    path = tmp_path / "dagrun.toml"
    path.write_text('[tasks.a]\ncmd = "x"\n\ninputs = ["in.txt"]\n')
    m = manifest.load(str(path))
    assert m.line_index is not None and m.line_index._text is None  # not kept
    assert m.line_of(m.tasks[0], "inputs") == 4
    path.write_text('[tasks.a]\ncmd = "x"\n\ninputs = ["in.txt"]\n')
    m = manifest.load(str(path))
    path.write_text('# edited since\n[tasks.a]\ncmd = "x"\ninputs = ["in.txt"]\n')
    assert m.line_of(m.tasks[0], "inputs") == 1  # another text: the table's line, as parsed
