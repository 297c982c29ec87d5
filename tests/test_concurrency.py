"""Two builds at once in one folder, and parallel tasks' output on the console."""

from __future__ import annotations

import re

import pytest
from realproc import (
    DagrunProcs,
    logged_tasks,
    tally,
    wait_for,
)

pytestmark = pytest.mark.slow



def test_a_second_build_waits_for_the_first_and_runs_nothing_twice(
    dagrun_proc: DagrunProcs,
) -> None:
    root = dagrun_proc.root
    names = [f"t{i}" for i in range(16)]
    # t0 holds the first build until the second has said that it waits
    gate = "while [ ! -e go ]; do sleep 0.01; done"
    dagrun_proc.manifest(
        "\n".join(
            f'[tasks.{n}]\ncmd = "echo {n} >> tally; {gate if n == "t0" else "sleep 0.02"}"\n'
            for n in names
        )
    )
    first = dagrun_proc.start("build", "-j2")
    wait_for(lambda: "t0" in tally(root / "tally"), "the first build to start t0")
    err_file = root / "second.err"
    second = dagrun_proc.start("build", "-j2", stderr=err_file)
    wait_for(lambda: "waiting" in err_file.read_text(), "the second build to wait")
    assert first.poll() is None
    (root / "go").touch()
    out1, err1 = first.communicate(timeout=30)
    out2, _ = second.communicate(timeout=30)
    err2 = err_file.read_text()

    assert first.returncode == 0, (out1, err1)
    assert second.returncode == 0, (out2, err2)
    assert re.search(
        rf"^dagrun: another dagrun \(pid {first.pid}\) is running in .*; waiting for it to finish$",
        err2,
        re.M,
    ), err2
    assert "no work to do (16 up to date)" in out2
    assert tally(root / "tally") == {n: 1 for n in names}
    assert sorted(logged_tasks(root)) == sorted(names)


def test_parallel_tasks_output_is_never_interleaved(dagrun_proc: DagrunProcs) -> None:
    root = dagrun_proc.root
    (root / "started").mkdir()
    names = ["alpha", "beta", "gamma", "delta"]
    lines = 30
    # each task waits until all four run, then prints slowly, flushing every line
    body = (
        "touch started/{n}; "
        "while [ $(ls started | wc -l) -lt 4 ]; do sleep 0.01; done; "
        "i=0; while [ $i -lt {lines} ]; do i=$((i+1)); echo \\\"{n} line $i\\\"; "
        "echo \\\"{n} err $i\\\" >&2; sleep 0.005; done"
    )
    dagrun_proc.manifest(
        "\n".join(
            f'[tasks.{n}]\ncmd = "{body.format(n=n, lines=lines)}"\ndisplay = "SHOW {n}"\n'
            for n in names
        )
    )
    code, out, err = dagrun_proc.run("build", "-j4")
    assert code == 0, (out, err)

    got = out.splitlines()
    headers = [k for k, line in enumerate(got) if re.fullmatch(r"\[\d/4\] SHOW \w+", line)]
    assert len(headers) == 4, out
    seen = []
    for k in headers:
        name = got[k].split()[-1]
        seen.append(name)
        block = got[k + 1 : k + 1 + 2 * lines]
        expected = [f"{name} line {i}" for i in range(1, lines + 1)]
        expected += [f"{name} err {i}" for i in range(1, lines + 1)]
        assert block == expected, f"block of {name} is not whole:\n{out}"
    assert sorted(seen) == sorted(names)
    for name in names:  # the run folder keeps each stream apart
        stdout = (root / ".dagrun" / "runs" / name / "stdout.txt").read_text()
        assert stdout.splitlines() == [f"{name} line {i}" for i in range(1, lines + 1)]
