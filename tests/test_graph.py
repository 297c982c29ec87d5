"""Manifest -> BuildGraph: dependencies, cycles, targets, and the cache round trip."""

from __future__ import annotations

import pytest

from dagrun.errors import CycleError, ManifestError, UnknownTargetError
from dagrun.graph import BuildGraph, compile
from dagrun.manifest import parse


def g(text: str, root: str = "/p") -> BuildGraph:
    return compile(parse(text, source="m.toml", root=root))


def names(graph: BuildGraph, idx) -> list[str]:
    return [graph.specs[i].name for i in idx]


def deps_of(graph: BuildGraph, name: str) -> list[str]:
    return sorted(names(graph, graph.deps[graph.index[name]]))


def test_implicit_dependency_from_output_to_input():
    graph = g('[tasks.a]\ncmd="a"\noutputs=["x"]\n[tasks.b]\ncmd="b"\ninputs=["x"]\n')
    assert deps_of(graph, "b") == ["a"]
    assert graph.sources[graph.index["b"]] == ()


def test_glob_input_depends_on_matching_outputs(tmp_path):
    graph = g(
        '[tasks.a]\ncmd="a"\noutputs=["out/a.o"]\n[tasks.b]\ncmd="b"\noutputs=["out/sub/b.o"]\n'
        '[tasks.link]\ncmd="l"\ninputs=["out/**/*.o"]\n',
        root=str(tmp_path),
    )
    assert deps_of(graph, "link") == ["a", "b"]


def test_matrix_group_as_dependency_and_target():
    graph = g('[tasks.sim]\nmatrix={n=[1,2]}\ncmd="s {n}"\n[tasks.sum]\ncmd="x"\ndeps=["sim"]\n')
    assert deps_of(graph, "sum") == ["sim[n=1]", "sim[n=2]"]
    assert names(graph, graph.resolve(["sim"])) == ["sim[n=1]", "sim[n=2]"]


def test_cycle_is_named_as_a_path():
    with pytest.raises(CycleError) as info:
        g(
            '[tasks.a]\ncmd="a"\ndeps=["c"]\n[tasks.b]\ncmd="b"\ndeps=["a"]\n[tasks.c]\ncmd="c"\ndeps=["b"]\n'
            '[tasks.free]\ncmd="f"\n'
        )
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1] and sorted(cycle[:-1]) == ["a", "b", "c"]
    assert str(info.value).startswith("m.toml: dependency cycle: ")
    assert " -> ".join(cycle) in str(info.value)


def test_self_dependency_is_a_cycle():
    with pytest.raises(CycleError, match=r"^m.toml: dependency cycle: a -> a$"):
        g('[tasks.a]\ncmd="a"\ndeps=["a"]\n')


def test_unknown_dependency_suggests():
    with pytest.raises(ManifestError, match=r"unknown dependency 'bulid'.*did you mean 'build'"):
        g('[tasks.build]\ncmd="a"\n[tasks.t]\ncmd="t"\ndeps=["bulid"]\n')


def test_input_that_is_own_output():
    with pytest.raises(ManifestError, match=r"'x' is both an input and an output of this task"):
        g('[tasks.a]\ncmd="a"\ninputs=["x"]\noutputs=["x"]\n')


def test_topological_order_is_stable():
    graph = g('[tasks.z]\ncmd="z"\ndeps=["y"]\n[tasks.y]\ncmd="y"\n[tasks.x]\ncmd="x"\n')
    assert names(graph, graph.order) == ["y", "x", "z"]


def test_select_closure_and_unknown_target():
    graph = g('[tasks.a]\ncmd="a"\n[tasks.b]\ncmd="b"\ndeps=["a"]\n[tasks.c]\ncmd="c"\n')
    assert names(graph, graph.select(["b"])) == ["a", "b"]
    assert names(graph, graph.select(None)) == ["a", "c", "b"]
    with pytest.raises(UnknownTargetError, match=r"unknown target 'bb'; did you mean 'b'\?"):
        graph.select(["bb"])


def test_cache_round_trip():
    graph = g(
        '[dagrun]\njobs=3\n[tasks.a]\ncmd="a"\noutputs=["x"]\n[tasks.b]\ncmd="b"\ninputs=["x"]\n'
        "[executors.local]\nmax_jobs=2\n"
    )
    back = BuildGraph.from_cache(graph.to_cache())
    assert back is not None
    assert back.specs == graph.specs and back.deps == graph.deps and back.order == graph.order
    assert back.manifest.jobs == 3 and back.manifest.executors["local"].max_jobs == 2
    assert back.producers == graph.producers
    assert BuildGraph.from_cache((999,)) is None


def test_cache_columns_round_trip_every_field_and_the_lazy_maps(tmp_path):
    (tmp_path / "src").mkdir()
    for n in ("a.c", "b.c"):
        (tmp_path / "src" / n).write_text(n)
    graph = g(
        '[tasks.gen]\ncmd="g"\noutputs=["gen.h"]\nthreads=2\nenv={K="v"}\n'
        '[tasks.cc]\nmatrix={f=["a","b"]}\ncmd="cc {inputs}"\ninputs=["src/{f}.c","gen.h"]\n'
        'outputs=["{f}.o"]\ntimeout=5\nretries=1\n'
        '[tasks.link]\ncmd="l"\ninputs=["*.o","src/*.c","!src/b.c"]\nalways=true\n',
        root=str(tmp_path),
    )
    back = BuildGraph.from_cache(graph.to_cache())
    assert back is not None
    assert back.specs == graph.specs and back.sources == graph.sources
    assert back.deps == graph.deps and back.order == graph.order and back.groups == graph.groups
    assert back.index == graph.index and back.producers == graph.producers
    assert back.dependents == graph.dependents == [(1, 2), (3,), (3,), ()]
    assert all(type(s) is type(graph.specs[0]) for s in back.specs)
    # a task whose inputs are all sources shares one tuple for both
    assert graph.sources[0] is graph.specs[0].inputs
    wrong = graph.to_cache()
    wrong[4] = wrong[4][:-1]  # a column one task short is no cache
    assert BuildGraph.from_cache(wrong) is None


def test_to_networkx():
    graph = g('[tasks.a]\ncmd="a"\n[tasks.b]\ncmd="b"\ndeps=["a"]\n')
    nxg = graph.to_networkx()
    assert list(nxg.edges) == [("a", "b")]


def test_a_cycle_through_files_names_the_files_and_lines():
    m = parse(
        '[tasks.a]\ncmd = "x"\ninputs = ["gen/*.h"]\noutputs = ["a.o"]\n'
        '[tasks.b]\ncmd = "y"\ndeps = ["a"]\noutputs = ["gen/b.h"]\n',
        source="m.toml",
    )
    with pytest.raises(CycleError) as info:
        compile(m)
    assert str(info.value) == (
        "m.toml: dependency cycle: a -> b -> a; a reads gen/b.h (line 3), written by b (line 8); "
        "b needs a (deps, line 7)"
    )
