"""plan.make is pure: a graph, keys, a log view and an exists() in; a Plan with reasons out."""

from __future__ import annotations

from dagrun.graph import compile
from dagrun.hashing import KeyParts
from dagrun.manifest import parse
from dagrun.plan import explain, make

TEXT = """
[tasks.a]
cmd = "a"
outputs = ["a.out"]
[tasks.b]
cmd = "b"
inputs = ["a.out"]
outputs = ["b.out"]
[tasks.c]
cmd = "c"
always = true
"""


SAME = (1, 2, 3, 0)  # every output's identity, as recorded and (by default) as found


class Log:
    """A log whose latest runs of tasks a, b, c succeeded with the keys ``keys`` names."""

    def __init__(self, keys=(), records=None, unfinished=()):
        names = {"ka": "a", "kb": "b", "kc": "c"}
        self.done = {names[k]: (k, [SAME]) for k in keys}
        self.records = records or {}
        self.failed = set(unfinished)

    def success(self, task):
        return self.done.get(task)

    def unfinished(self, task):
        return task in self.failed

    def latest(self, task):
        return self.records.get(task)


def found(p):
    return SAME


def setup():
    g = compile(parse(TEXT, root="/p"))
    return g, ["ka", "kb", "kc"]


def test_everything_runs_on_an_empty_log():
    g, keys = setup()
    plan = make(g, keys, Log(), lambda p: None, g.order)
    assert plan.to_run == (0, 2, 1) and plan.up_to_date == ()  # topological: b after a
    assert plan.reasons[0] == ("key changed",)
    assert plan.reasons[2] == ("always = true",)


def test_logged_with_outputs_is_up_to_date():
    g, keys = setup()
    plan = make(g, keys, Log({"ka", "kb", "kc"}), found, g.order)
    assert plan.to_run == (2,) and plan.up_to_date == (0, 1)
    assert not make(g, keys, Log({"ka", "kb"}), found, [0, 1])


def test_missing_output_reruns():
    g, keys = setup()
    plan = make(g, keys, Log({"ka", "kb"}), lambda p: None if p == "b.out" else SAME, [0, 1])
    assert plan.to_run == (1,)
    assert plan.reasons[1] == ("output b.out is missing",)


def test_item3_an_output_changed_since_it_was_built_reruns():
    g, keys = setup()
    edited = (SAME[0] + 1, *SAME[1:])
    plan = make(g, keys, Log({"ka", "kb"}), lambda p: edited if p == "b.out" else SAME, [0, 1])
    assert plan.to_run == (1,)
    assert plan.reasons[1] == ("output b.out changed since it was built",)


def test_item1_only_the_latest_run_counts():
    g, keys = setup()
    log = Log({"ka"})
    assert not make(g, keys, log, found, [0])
    assert make(g, ["k-older"], log, found, [0]).to_run == (0,)  # not the latest key: runs
    failed = Log({"ka"}, unfinished={"a"})  # an attempt started after that success and failed
    plan = make(g, keys, failed, found, [0])
    assert plan.to_run == (0,) and plan.reasons[0] == ("its last run did not succeed",)
    never = Log(unfinished={"a"})  # its first attempt failed
    assert make(g, keys, never, found, [0]).reasons[0] == ("its last run did not succeed",)


def test_selected_subset_only():
    g, keys = setup()
    plan = make(g, keys, Log(), found, [0])
    assert plan.selected == (0,) and plan.to_run == (0,)


def parts(**kw):
    base = dict(
        cmd="cc",
        env=(("A", "1"),),
        key_env=(("CC", "gcc"),),
        cwd=".",
        outputs=("o",),
        inputs=(("x.c", "d1"), ("y.c", "d2")),
        upstream=(("gen", "k1"),),
    )
    base.update(kw)
    return KeyParts(**base)


def record(p: KeyParts):
    return {"task": "t", "key": "k", "parts": p.to_json()}


def test_explain_names_each_changed_part():
    old = record(parts())
    assert explain("t", parts(), None) == ["never ran"]
    assert explain("t", parts(cmd="cc -O2"), old) == ["command changed"]
    assert explain("t", parts(env=(("A", "2"),)), old) == ["env A changed"]
    assert explain("t", parts(env=()), old) == ["env A unset"]
    assert explain("t", parts(key_env=(("CC", "clang"),)), old) == ["key_env CC changed"]
    assert explain("t", parts(inputs=(("x.c", "d9"), ("y.c", "d2"))), old) == ["input x.c changed"]
    assert explain("t", parts(inputs=(("x.c", "d1"),)), old) == ["input y.c removed"]
    assert explain("t", parts(inputs=(("x.c", "d1"), ("y.c", "d2"), ("z.c", "d3"))), old) == [
        "input z.c added"
    ]
    assert explain("t", parts(upstream=(("gen", "k2"),)), old) == ["dependency gen changed"]
    assert explain("t", parts(cwd="sub"), old) == ["cwd changed (. -> sub)"]
    assert explain("t", parts(outputs=("o", "p")), old) == ["declared outputs changed"]
    assert explain("t", parts(), old) == ["key changed"]


def test_make_with_parts_explains():
    g, keys = setup()
    old = {
        "a": record(parts(cmd="a", env=(), key_env=(), outputs=("a.out",), inputs=(), upstream=()))
    }
    new = parts(cmd="a2", env=(), key_env=(), outputs=("a.out",), inputs=(), upstream=())
    plan = make(g, keys, Log(records=old), found, [0], parts=lambda i: new)
    assert plan.reasons[0] == ("command changed",)
