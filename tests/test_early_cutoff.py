"""restat = true: early cutoff with plain shell tasks, and keys that stay exact."""

from __future__ import annotations

import json

MANIFEST = """
[tasks.gen]
cmd = "tr a-z A-Z < in.txt | grep -v '^#' > gen.txt; echo gen >> tally"
inputs = ["in.txt"]
outputs = ["gen.txt"]
restat = true

[tasks.use]
cmd = "cat gen.txt own.txt > use.txt; echo use >> tally"
inputs = ["gen.txt", "own.txt"]
outputs = ["use.txt"]

[tasks.top]
cmd = "cat use.txt > top.txt; echo top >> tally"
inputs = ["use.txt"]
outputs = ["top.txt"]
"""


def ran(project) -> list[str]:
    path = project.root / "tally"
    if not path.exists():
        return []
    names = path.read_text().split()
    path.unlink()
    return sorted(names)


def setup(project):
    project.manifest(MANIFEST)
    project.write("in.txt", "abc\n")
    project.write("own.txt", "own\n")
    assert project.run("build").code == 0
    assert ran(project) == ["gen", "top", "use"]


def test_identical_output_reruns_nothing_below(project):
    setup(project)
    project.write("in.txt", "abc\n#a comment\n")
    r = project.run("build", "-n")
    assert "may run: depends on gen" in r.out
    r = project.run("build")
    assert r.code == 0 and "1 succeeded, 2 up to date" in r.out
    assert ran(project) == ["gen"]
    assert "no work to do" in project.run("build").out


def test_a_changed_output_reruns_what_depends_on_it(project):
    setup(project)
    project.write("in.txt", "xyz\n")
    assert project.run("build").code == 0
    assert ran(project) == ["gen", "top", "use"]
    assert project.read("top.txt") == "XYZ\nown\n"


def test_own_input_changed_while_upstream_reruns_identically(project):
    setup(project)
    project.write("in.txt", "abc\n#again\n")
    project.write("own.txt", "mine\n")
    assert project.run("build").code == 0
    assert ran(project) == ["gen", "top", "use"]  # use's own input changed: never skipped
    assert project.read("top.txt") == "ABC\nmine\n"


def test_a_deleted_downstream_output_still_reruns(project):
    setup(project)
    project.write("in.txt", "abc\n#once more\n")
    (project.root / "use.txt").unlink()
    assert project.run("build").code == 0
    assert ran(project) == ["gen", "use"]  # top's key is use's key, which did not change


def test_events_and_summary_count_cut_off_tasks_as_up_to_date(project):
    setup(project)
    project.write("in.txt", "abc\n#events\n")
    events = project.root / "events.jsonl"
    junit = project.root / "junit.xml"
    r = project.run("build", "--events", str(events), "--junit", str(junit))
    assert r.code == 0
    records = [json.loads(line) for line in events.read_text().splitlines()]
    assert records[-1]["event"] == "build_finished"
    assert (records[-1]["succeeded"], records[-1]["up_to_date"]) == (1, 2)
    assert sorted(r["task"] for r in records if r["event"] == "up_to_date") == ["top", "use"]
    assert junit.read_text().count('<skipped message="up to date (early cutoff)" />') == 2
