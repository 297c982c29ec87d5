"""The Python API (SPEC §6) and the package surface."""

from __future__ import annotations

import subprocess
import sys

import pytest

import dagrun
from dagrun.report import RecordingReporter


def test_exported_members():
    for name in dagrun.__all__:
        assert getattr(dagrun, name) is not None, name
    assert set(dagrun.__all__) == {
        "BuildResult",
        "CycleError",
        "DagrunError",
        "ExecutorError",
        "Graph",
        "GraphError",
        "Interrupted",
        "LogError",
        "ManifestError",
        "UnknownTargetError",
        "__version__",
        "load",
    }
    with pytest.raises(AttributeError):
        dagrun.no_such_thing  # noqa: B018


def test_import_is_lazy():
    code = (
        "import sys, dagrun\n"
        "heavy = ('networkx', 'rich', 'blake3', 'tomllib', 'asyncio', 'watchfiles')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_graph_build(tmp_path):
    (tmp_path / "main.c").write_text("int main;\n")
    g = dagrun.Graph(jobs=2, root=tmp_path)
    a = g.add_task("gen", cmd="echo '#define N 1' > t.h", outputs=["t.h"])
    g.add_task(
        "cc", cmd="cat t.h main.c > main.o", inputs=["t.h", "main.c"], outputs=["main.o"], deps=[a]
    )
    g.add_task("unrelated", cmd="touch u")
    rec = RecordingReporter()
    result = g.build(targets=["cc"], reporter=rec)
    assert result.ok and result.exit_code == 0
    assert result.order == ("gen", "cc")
    assert result.failed == () and set(result.succeeded) == {"gen", "cc"}
    assert (tmp_path / "main.o").read_text() == "#define N 1\nint main;\n"
    again = g.build(targets=["cc"], reporter=rec)
    assert again.order == () and set(again.up_to_date) == {"gen", "cc"}


def test_graph_failure_result(tmp_path):
    g = dagrun.Graph(root=tmp_path)
    g.add_task("bad", cmd="exit 4")
    g.add_task("after", cmd="true", deps=["bad"])
    result = g.build(reporter=RecordingReporter())
    assert result.failed == ("bad",) and result.not_run == ("after",) and result.exit_code == 1


def test_graph_validates_like_a_manifest(tmp_path):
    g = dagrun.Graph(root=tmp_path)
    g.add_task("a", cmd="true", bogus=1)
    with pytest.raises(dagrun.ManifestError, match=r"unknown key"):
        g.build(reporter=RecordingReporter())
    g2 = dagrun.Graph(root=tmp_path)
    g2.add_task("a", cmd="true", deps=["b"])
    g2.add_task("b", cmd="true", deps=["a"])
    with pytest.raises(dagrun.CycleError):
        g2.build(reporter=RecordingReporter())
    with pytest.raises(dagrun.ManifestError, match="two tasks have this name"):
        g2.add_task("a", cmd="x")


def test_load_and_plan(tmp_path):
    (tmp_path / "dagrun.toml").write_text('[tasks.a]\ncmd = "touch a.out"\noutputs = ["a.out"]\n')
    g = dagrun.load(tmp_path / "dagrun.toml")
    prep = g.plan()
    assert [prep.graph.specs[i].name for i in prep.plan.to_run] == ["a"]
    assert prep.plan.reasons[0] == ("never ran",)
    assert g.build(reporter=RecordingReporter()).succeeded == ("a",)
    assert (tmp_path / "a.out").exists()
    with pytest.raises(dagrun.ManifestError):
        g.add_task("b", cmd="x")


def test_load_reports_manifest_errors(tmp_path):
    (tmp_path / "dagrun.toml").write_text("[tasks.a]\ncmd = 3\n")
    with pytest.raises(dagrun.ManifestError, match=r"dagrun.toml:2"):
        dagrun.load(tmp_path / "dagrun.toml")


def test_keep_going(tmp_path):
    g = dagrun.Graph(root=tmp_path, jobs=1)
    g.add_task("a", cmd="exit 1")
    g.add_task("b", cmd="touch b")
    result = g.build(keep_going=True, reporter=RecordingReporter())
    assert result.failed == ("a",) and result.succeeded == ("b",)
