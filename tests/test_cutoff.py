"""cutoff.py's pure parts: which tasks wait on a restat task the plan runs."""

from __future__ import annotations

from dagrun import cutoff, graph, manifest
from dagrun.plan import Plan

TEXT = """
[tasks.cc]
cmd = "cc"
outputs = ["a.o"]
restat = true

[tasks.plain]
cmd = "gen"
outputs = ["b.txt"]

[tasks.lib]
cmd = "ar"
inputs = ["a.o", "b.txt"]
outputs = ["lib.a"]

[tasks.app]
cmd = "ld"
inputs = ["lib.a"]
outputs = ["app"]

[tasks.other]
cmd = "x"
inputs = ["b.txt"]
"""


def compiled(tmp_path):
    return graph.compile(manifest.parse(TEXT, root=str(tmp_path)))


def test_everything_below_a_running_restat_task_waits_on_it(tmp_path):
    g = compiled(tmp_path)
    n = g.index
    plan = Plan(tuple(g.order), (n["cc"],), tuple(i for i in g.order if i != n["cc"]), {})
    by_outputs = [s.restat for s in g.specs]
    waits = cutoff.pending(g, plan, by_outputs)
    assert waits == {n["lib"]: "cc", n["app"]: "cc"}
    shown = cutoff.with_pending(plan, waits)
    assert shown.to_run == (n["cc"], n["lib"], n["app"])
    assert shown.reasons[n["app"]] == ("may run: depends on cc",)
    assert n["other"] in shown.up_to_date and n["lib"] not in shown.up_to_date


def test_a_plain_task_that_runs_makes_only_the_up_to_date_tasks_below_it_wait(tmp_path):
    """A plain task that runs with an unchanged key (forced, cleaned, always) may make other
    bytes: the tasks below it that the plan finds up to date wait for its fingerprint; those
    the plan runs anyway (their keys changed) do not wait."""
    g = compiled(tmp_path)
    n = g.index
    plan = Plan(tuple(g.order), (n["plain"],), tuple(i for i in g.order if i != n["plain"]), {})
    waits = cutoff.pending(g, plan, [s.restat for s in g.specs])
    assert waits == {n["lib"]: "plain", n["app"]: "plain", n["other"]: "plain"}
    running = (n["plain"], n["lib"])  # lib runs: it does not wait, app waits on it
    plan = Plan(tuple(g.order), running, tuple(i for i in g.order if i not in running), {})
    waits = cutoff.pending(g, plan, [s.restat for s in g.specs])
    assert waits == {n["app"]: "lib", n["other"]: "plain"}
    nothing = Plan(tuple(g.order), (), tuple(g.order), {})
    assert cutoff.pending(g, nothing, [s.restat for s in g.specs]) == {}
    assert cutoff.with_pending(nothing, {}) is nothing


def test_watch_watches_the_files_a_depfile_listed(tmp_path):
    from dagrun import watch

    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "x.h").write_text("")
    g = compiled(tmp_path)
    ws = watch.watch_set(g, g.order, str(tmp_path / "dagrun.toml"), (), {"cc": ("inc/x.h",)})
    assert str(tmp_path / "inc" / "x.h") in ws.files
    assert str(tmp_path / "inc" / "x.h") not in watch.watch_set(g, g.order, "m").files
