"""Keys and the stat cache, on MemoryFileSystem (which records every read)."""

from __future__ import annotations

import pytest

from dagrun.errors import ManifestError
from dagrun.fs import MemoryFileSystem
from dagrun.graph import compile
from dagrun.hashing import RACY_NS, Keys, StatCache, key_of
from dagrun.manifest import parse

TEXT = """
[env]
LANG = "C"
[tasks.gen]
cmd = "gen"
inputs = ["gen.py", "data/*.csv"]
outputs = ["t.h"]
[tasks.cc]
cmd = "cc"
inputs = ["t.h", "main.c"]
outputs = ["main.o"]
[tasks.other]
cmd = "other"
inputs = ["other.c"]
"""


@pytest.fixture
def graph(tmp_path):
    for name in ("a.csv", "b.csv"):
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / name).write_text(name)
    return compile(parse(TEXT, root=str(tmp_path)))


def fs_for(**extra: str) -> MemoryFileSystem:
    files = {
        "gen.py": "print()",
        "data/a.csv": "a",
        "data/b.csv": "b",
        "main.c": "int main;",
        "other.c": "x",
    }
    files.update(extra)
    fs = MemoryFileSystem({k: v.encode() for k, v in files.items()})
    fs.clock_ns += 10 * RACY_NS  # every file is old enough to trust its stat
    return fs


def keyed(graph, fs, stats=None, previous=None, environ=None):
    stats = stats or StatCache(fs)
    keys = Keys(graph, stats, environ or {}, previous)
    keys.compute(graph.order)
    return {graph.specs[i].name: k for i, k in enumerate(keys.keys)}, keys


def test_keys_are_stable_and_content_based(graph):
    k1, _ = keyed(graph, fs_for())
    k2, _ = keyed(graph, fs_for())
    assert k1 == k2
    assert len(set(k1.values())) == 3


def test_change_upstream_changes_every_key_downstream(graph):
    base, _ = keyed(graph, fs_for())
    changed, _ = keyed(graph, fs_for(**{"data/b.csv": "B"}))
    assert changed["gen"] != base["gen"] and changed["cc"] != base["cc"]
    assert changed["other"] == base["other"]


def test_produced_input_enters_by_upstream_key_not_content(graph):
    base, _ = keyed(graph, fs_for())
    with_header, _ = keyed(graph, fs_for(**{"t.h": "anything"}))
    assert with_header == base


def test_env_and_command_enter_the_key(graph, tmp_path):
    base, _ = keyed(graph, fs_for())
    g2 = compile(parse(TEXT.replace('LANG = "C"', 'LANG = "en"'), root=str(tmp_path)))
    other, _ = keyed(g2, fs_for())
    assert all(other[n] != base[n] for n in base)
    g3 = compile(parse(TEXT.replace('cmd = "cc"', 'cmd = "cc -O2"'), root=str(tmp_path)))
    k3, _ = keyed(g3, fs_for())
    assert k3["cc"] != base["cc"] and k3["gen"] == base["gen"]


def test_key_env_values_enter_the_key(tmp_path):
    g = compile(parse('[dagrun]\nkey_env = ["CC"]\n[tasks.a]\ncmd = "x"\n', root=str(tmp_path)))
    fs = fs_for()
    k1, _ = keyed(g, fs, environ={"CC": "gcc"})
    k2, _ = keyed(g, fs, environ={"CC": "clang"})
    k3, _ = keyed(g, fs, environ={})
    assert len({k1["a"], k2["a"], k3["a"]}) == 3


def test_stat_cache_does_not_reread_unchanged_files(graph):
    fs = fs_for()
    stats = StatCache(fs)
    keyed(graph, fs, stats)
    assert sorted(fs.reads) == ["data/a.csv", "data/b.csv", "gen.py", "main.c", "other.c"]
    fs.reads.clear()
    stats2 = StatCache(fs, stats.entries)
    keyed(graph, fs, stats2)
    assert fs.reads == []
    fs.touch("main.c")  # new mtime, same content: read again, same digest
    stats3 = StatCache(fs, stats2.entries)
    keyed(graph, fs, stats3)
    assert fs.reads == ["main.c"]
    assert stats3.changed == set()


def test_racy_entries_are_rehashed(graph):
    fs = fs_for()
    fs.write("main.c", "int main;")  # written "now": its stat cannot be trusted yet
    stats = StatCache(fs)
    keyed(graph, fs, stats)
    fs.reads.clear()
    keyed(graph, fs, StatCache(fs, stats.entries))
    assert fs.reads == ["main.c"]
    fs.clock_ns += 10 * RACY_NS
    stats = StatCache(fs, stats.entries)
    keyed(graph, fs, stats)
    fs.reads.clear()
    keyed(graph, fs, StatCache(fs, stats.entries))
    assert fs.reads == []


def test_previous_keys_are_reused_and_only_changed_tasks_rekeyed(graph):
    fs = fs_for()
    stats = StatCache(fs)
    first, k = keyed(graph, fs, stats)
    assert k.recomputed == 3
    again, k2 = keyed(graph, fs, StatCache(fs, stats.entries), previous=first)
    assert again == first and k2.recomputed == 0
    fs.write("main.c", "int main(void);")
    fs.clock_ns += 10 * RACY_NS
    third, k3 = keyed(graph, fs, StatCache(fs, dict(stats.entries)), previous=first)
    assert k3.recomputed == 1
    assert third["cc"] != first["cc"] and third["gen"] == first["gen"]


def test_missing_source_input_is_a_manifest_error(graph):
    fs = fs_for()
    fs.remove("main.c")
    with pytest.raises(
        ManifestError, match=r"task 'cc'.*input 'main.c' does not exist and no task produces it"
    ):
        keyed(graph, fs)


def test_key_parts_round_trip(graph):
    fs = fs_for()
    keys, k = keyed(graph, fs)
    i = graph.index["cc"]
    parts = k.parts(i)
    assert key_of(parts) == keys["cc"]
    j = parts.to_json()
    assert j["upstream"] == {"gen": keys["gen"]}
    assert list(j["inputs"]) == ["main.c"]
    assert j["env"] == {"LANG": "C"}
