"""Python functions as tasks: real worker processes, real files, the real CLI where it matters."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import pytask_funcs as funcs
import pytest
from realproc import (
    DagrunProcs,
    assert_groups_gone,
    logged_tasks,
    stop_and_expect_130,
    wait_for,
)

import dagrun
from dagrun.errors import ManifestError
from dagrun.report import RecordingReporter

pytestmark = pytest.mark.slow  # every test here starts worker processes


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.write_text(textwrap.dedent(text))
    return path


def build(
    root: Path, *targets: str, **options: Any
) -> tuple[dagrun.BuildResult, RecordingReporter]:
    reporter = RecordingReporter()
    result = dagrun.load(root / "dagrun.toml").build(
        list(targets) or None, reporter=reporter, **options
    )
    return result, reporter


def finished(reporter: RecordingReporter) -> dict[str, Any]:
    return {e.task: e for e in reporter.events if type(e).__name__ == "TaskFinished"}


PIPELINE = """
    import asyncio

    def load(n):
        with open("load.count", "a") as f:
            f.write("x")
        return list(range(n))

    def clean(load):
        return [x for x in load if x % 2 == 0]

    async def summary(clean, deps):
        await asyncio.sleep(0.01)
        return {"sum": sum(clean), "from": sorted(deps)}

    def report(summary, path):
        with open(path, "w") as f:
            f.write(f"sum={summary['sum']}\\n")
        return path
"""

MANIFEST = """
    [tasks.load]
    call = "pipe:load"
    args = [10]

    [tasks.clean]
    call = "pipe:clean"
    deps = ["load"]

    [tasks.summary]
    call = "pipe:summary"
    deps = ["clean"]

    [tasks.shout]
    cmd = "echo shout > shout.txt"
    outputs = ["shout.txt"]
    deps = ["summary"]

    [tasks.report]
    call = "pipe:report"
    kwargs = { path = "report.txt" }
    deps = ["summary", "shout"]
    outputs = ["report.txt"]
"""


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    write(tmp_path, "pipe.py", PIPELINE)
    write(tmp_path, "dagrun.toml", MANIFEST)
    return tmp_path


def test_functions_pass_results_to_dependents_and_mix_with_commands(pipeline: Path) -> None:
    result, reporter = build(pipeline)
    assert result.ok, finished(reporter)
    assert result.values["load"] == list(range(10))
    assert result.values["clean"] == [0, 2, 4, 6, 8]
    assert result.values["summary"] == {"sum": 20, "from": ["clean"]}  # a coroutine, awaited
    assert result.values["report"] == "report.txt"
    assert "shout" not in result.values  # a command has no result
    assert (pipeline / "report.txt").read_text() == "sum=20\n"
    assert (pipeline / "shout.txt").read_text() == "shout\n"
    # it printed nothing: no run folder, as for a command (a failed one keeps its command.txt)
    assert not (pipeline / ".dagrun/runs/load").exists()


def test_an_up_to_date_task_hands_its_cached_result_to_a_dependent_that_reruns(
    pipeline: Path,
) -> None:
    build(pipeline)
    source = (pipeline / "pipe.py").read_text()
    (pipeline / "pipe.py").write_text(source.replace("x % 2 == 0", "x % 3 == 0"))
    result, _ = build(pipeline, explain=True)
    assert result.up_to_date == ("load",)
    assert set(result.succeeded) == {"clean", "summary", "shout", "report"}
    assert result.reasons["clean"] == ("code of pipe:clean changed",)
    assert result.reasons["summary"] == ("dependency clean changed",)  # not its code
    assert result.values["clean"] == [0, 3, 6, 9]
    assert result.values["load"] == list(range(10))  # read back from .dagrun/results
    assert (pipeline / "load.count").read_text() == "x"


def test_an_edit_elsewhere_in_the_module_reruns_nothing(pipeline: Path) -> None:
    build(pipeline)
    with open(pipeline / "pipe.py", "a") as f:
        f.write("\n# a comment\n\ndef unused():\n    return 1\n")
    result, _ = build(pipeline)
    assert result.succeeded == ()
    assert len(result.up_to_date) == 5


def test_an_edit_of_a_helper_the_function_calls_reruns_it(tmp_path: Path) -> None:
    write(tmp_path, "m.py", "SCALE = 2\ndef helper(x):\n    return x * SCALE\ndef f():\n"
          "    return helper(21)\ndef g():\n    return 1\n")
    write(tmp_path, "dagrun.toml", '[tasks.f]\ncall = "m:f"\n[tasks.g]\ncall = "m:g"\n')
    assert build(tmp_path)[0].values["f"] == 42
    source = (tmp_path / "m.py").read_text()
    (tmp_path / "m.py").write_text(source.replace("SCALE = 2", "SCALE = 3"))
    result, _ = build(tmp_path)
    assert result.succeeded == ("f",)
    assert result.up_to_date == ("g",)
    assert result.values["f"] == 63


def test_args_changed_is_explained(pipeline: Path) -> None:
    build(pipeline)
    text = (pipeline / "dagrun.toml").read_text().replace("args = [10]", "args = [12]")
    (pipeline / "dagrun.toml").write_text(text)
    result, _ = build(pipeline, explain=True)
    assert result.reasons["load"] == ("args changed",)
    assert result.values["summary"]["sum"] == 30


def test_cached_results_are_reused_by_a_new_dagrun_process(
    pipeline: Path, dagrun_proc: DagrunProcs
) -> None:
    code, out, err = dagrun_proc.run("build")
    assert code == 0, err
    source = (pipeline / "pipe.py").read_text()
    (pipeline / "pipe.py").write_text(source.replace("sum(clean)", "sum(clean) + 1"))
    code, out, err = dagrun_proc.run("build", "--explain")
    assert code == 0, err
    assert "explain summary: code of pipe:summary changed" in out
    assert "explain load" not in out and "explain clean" not in out
    assert (pipeline / "load.count").read_text() == "x"
    assert (pipeline / "report.txt").read_text() == "sum=21\n"


def test_a_deleted_result_reruns_its_task(pipeline: Path) -> None:
    first, _ = build(pipeline)
    for path in (pipeline / ".dagrun/results").iterdir():
        path.unlink()
    result, _ = build(pipeline, "clean")
    assert result.succeeded == ("load", "clean")
    assert result.values["clean"] == [0, 2, 4, 6, 8]


def test_matrix_args_are_substituted_and_a_group_parameter_gets_every_result(
    tmp_path: Path,
) -> None:
    write(tmp_path, "m.py", """
        def square(n):
            return int(n) ** 2

        def gather(square, **rest):
            return sorted(square.items()), sorted(rest)

        def everything(**results):
            return sorted(results.items())
    """)
    write(tmp_path, "dagrun.toml", """
        [tasks.square]
        call = "m:square"
        matrix = { n = [1, 2, 3] }
        args = ["{n}"]
        [tasks.gather]
        call = "m:gather"
        deps = ["square"]
        [tasks.everything]
        call = "m:everything"
        deps = ["square[n=1]", "gather"]
    """)
    result, reporter = build(tmp_path)
    assert result.ok, finished(reporter)
    squares, rest = result.values["gather"]
    assert squares == [("square[n=1]", 1), ("square[n=2]", 4), ("square[n=3]", 9)]
    assert rest == []  # the group parameter took them all
    assert result.values["everything"] == [  # names that are not identifiers, through **results
        ("gather", ([("square[n=1]", 1), ("square[n=2]", 4), ("square[n=3]", 9)], [])),
        ("square[n=1]", 1),
    ]


def test_numbers_from_a_matrix_reach_the_arguments_as_numbers(tmp_path: Path) -> None:
    write(tmp_path, "m.py", """
        def double(i, label, scale=1, flag=None, parts=()):
            return i * 2 * scale, label, flag, list(parts)
    """)
    write(tmp_path, "dagrun.toml", """
        [tasks.double]
        call = "m:double"
        matrix = { i = { range = [5, 11, 5] }, s = [1, 0.5], flag = [true, "no"] }
        args = ["{i}", "i={i}"]
        kwargs = { scale = "{s}", flag = "{flag}", parts = ["{i}", "{s}!"] }
    """)
    result, reporter = build(tmp_path)
    assert result.ok, finished(reporter)
    assert len(result.values) == 8
    assert result.values["double[i=5,s=1,flag=true]"] == (10, "i=5", True, [5, "1!"])
    assert result.values["double[i=10,s=0.5,flag=no]"] == (10.0, "i=10", "no", [10, "0.5!"])
    before = result.values["double[i=10,s=1,flag=true]"]
    assert before == (20, "i=10", True, [10, "1!"])
    again, reporter = build(tmp_path)  # the typed arguments key the same way again
    assert again.ok and again.succeeded == (), finished(reporter)
    assert again.values["double[i=10,s=1,flag=true]"] == before


def test_retries_always_and_threads_mean_the_same_for_functions(tmp_path: Path) -> None:
    write(tmp_path, "m.py", """
        import os

        def flaky():
            with open("attempts", "a") as f:
                f.write("x")
            if len(open("attempts").read()) < 2:
                raise RuntimeError("first attempt fails")
            return "second time lucky"

        def cores():
            with open("always.count", "a") as f:
                f.write("x")
            return sorted(os.sched_getaffinity(0))
    """)
    write(tmp_path, "dagrun.toml", """
        [executors.local]
        core_pool = "0-1"
        [tasks.flaky]
        call = "m:flaky"
        retries = 1
        [tasks.wide]
        call = "m:cores"
        threads = 2
        always = true
    """)
    result, _ = build(tmp_path)
    assert result.values["flaky"] == "second time lucky"
    assert result.values["wide"] == [0, 1]
    result, _ = build(tmp_path)
    assert result.succeeded == ("wide",) and result.up_to_date == ("flaky",)
    assert (tmp_path / "always.count").read_text() == "xx"


def test_an_exception_fails_the_task_with_the_users_traceback(tmp_path: Path) -> None:
    write(tmp_path, "m.py", """
        def inner():
            raise ValueError("bad row 7")

        def f():
            print("working")
            inner()

        def after(f):
            return "never"
    """)
    write(tmp_path, "dagrun.toml", """
        [tasks.f]
        call = "m:f"
        [tasks.after]
        call = "m:after"
        deps = ["f"]
    """)
    result, reporter = build(tmp_path)
    assert result.failed == ("f",) and result.not_run == ("after",)
    ev = finished(reporter)["f"]
    assert ev.exit_code == 1 and ev.error == "ValueError: bad row 7"
    assert ev.stdout == "working\n"
    assert ev.stderr.startswith("Traceback (most recent call last):\n")
    assert 'm.py", line 7, in f' in ev.stderr and 'line 3, in inner' in ev.stderr
    assert "pyworker" not in ev.stderr
    assert ev.stderr.endswith("ValueError: bad row 7\n")


def test_an_unpicklable_result_fails_the_task_clearly(tmp_path: Path) -> None:
    g = dagrun.Graph(root=tmp_path)
    g.add_task("u", fn=funcs.unpicklable)
    reporter = RecordingReporter()
    result = g.build(reporter=reporter)
    assert result.failed == ("u",)
    ev = finished(reporter)["u"]
    assert ev.error.startswith("the result (function) cannot be pickled: ")
    assert "dagrun: the result (function) cannot be pickled" in ev.stderr


def test_a_segfault_or_os_exit_fails_that_task_only(tmp_path: Path) -> None:
    write(tmp_path, "m.py", """
        import ctypes, os

        def segv():
            ctypes.string_at(0)

        def leave():
            os._exit(3)

        def fine(n):
            return os.getpid()
    """)
    write(tmp_path, "dagrun.toml", """
        [tasks.segv]
        call = "m:segv"
        [tasks.leave]
        call = "m:leave"
        deps = ["segv"]
        [tasks.fine]
        call = "m:fine"
        args = [1]
        [tasks.fine2]
        call = "m:fine"
        args = [2]
        deps = ["fine"]
    """)
    result, reporter = build(tmp_path, jobs=1, keep_going=True)
    assert set(result.failed) == {"segv"} and set(result.succeeded) == {"fine", "fine2"}
    ev = finished(reporter)
    assert ev["segv"].exit_code == -signal.SIGSEGV
    assert ev["segv"].error.startswith("the Python worker running it died (SIGSEGV)")
    assert "Fatal Python error: Segmentation fault" in ev["segv"].stderr  # faulthandler
    text = (tmp_path / "dagrun.toml").read_text().replace('deps = ["segv"]\n', "")
    (tmp_path / "dagrun.toml").write_text(text)
    result, reporter = build(tmp_path, jobs=1, keep_going=True)
    assert set(result.failed) == {"segv", "leave"}
    assert finished(reporter)["leave"].error.startswith(
        "the Python worker running it exited with status 3"
    )


def test_a_hung_function_is_killed_by_its_timeout_and_a_new_worker_goes_on(
    tmp_path: Path,
) -> None:
    write(tmp_path, "m.py", """
        import os, time

        def hang():
            time.sleep(60)

        def fine():
            return os.getpid()
    """)
    write(tmp_path, "dagrun.toml", """
        [tasks.hang]
        call = "m:hang"
        timeout = 0.5
        [tasks.fine]
        call = "m:fine"
    """)
    started = time.monotonic()
    result, reporter = build(tmp_path, jobs=1, keep_going=True)
    assert time.monotonic() - started < 30
    assert result.failed == ("hang",) and result.succeeded == ("fine",)
    assert finished(reporter)["hang"].timed_out


def test_ctrl_c_stops_every_worker(tmp_path: Path, dagrun_proc: DagrunProcs) -> None:
    write(tmp_path, "m.py", """
        import os, subprocess, time

        def sleeper(name):
            child = subprocess.Popen(["sleep", "60"])  # left in the worker's group
            with open(f"pids/{name}", "w") as f:
                f.write(str(os.getpgid(0)))
            time.sleep(60)

        async def waiter(name):
            import asyncio
            with open(f"pids/{name}", "w") as f:
                f.write(str(os.getpgid(0)))
            await asyncio.sleep(60)
    """)
    write(tmp_path, "dagrun.toml", """
        [tasks.a]
        call = "m:sleeper"
        args = ["a"]
        [tasks.b]
        call = "m:sleeper"
        args = ["b"]
        [tasks.io]
        call = "m:waiter"
        args = ["io"]
        io_bound = true
    """)
    p = dagrun_proc.start("build", "-j", "2")
    groups = {dagrun_proc.task_pid(n) for n in ("a", "b", "io")}
    assert len(groups) == 3  # two plain workers and the io worker
    stop_and_expect_130(p, signal.SIGINT, to_group=True, groups=groups)  # and none left
    assert logged_tasks(tmp_path) == []


def test_io_bound_coroutines_overlap_without_slots(tmp_path: Path) -> None:
    write(tmp_path, "m.py", """
        import asyncio, time

        async def nap(i):
            start = time.monotonic()
            print("nap", i)
            await asyncio.sleep(0.1)
            return start, time.monotonic()
    """)
    write(tmp_path, "dagrun.toml", """
        [tasks.nap]
        call = "m:nap"
        matrix = { i = [VALUES] }
        args = ["{i}"]
        io_bound = true
    """.replace("VALUES", ", ".join(str(i) for i in range(100))))
    result, reporter = build(tmp_path, jobs=1)
    assert result.ok and len(result.succeeded) == 100
    spans = [result.values[t] for t in result.succeeded]
    first_end = min(end for _, end in spans)
    overlapping = sum(1 for start, _ in spans if start < first_end)
    assert overlapping > 1  # more than one was asleep at once, on one slot
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    assert wall < 5.0  # 100 sequential naps would take 10 s
    assert finished(reporter)["nap[i=42]"].stdout == "nap 42\n"  # each task's own output


def test_an_io_bound_timeout_cancels_that_coroutine_only(tmp_path: Path) -> None:
    write(tmp_path, "m.py", """
        import asyncio

        async def forever():
            await asyncio.sleep(60)

        async def quick():
            await asyncio.sleep(0.5)
            return "done"
    """)
    write(tmp_path, "dagrun.toml", """
        [tasks.forever]
        call = "m:forever"
        io_bound = true
        timeout = 0.2
        [tasks.quick]
        call = "m:quick"
        io_bound = true
    """)
    result, reporter = build(tmp_path, keep_going=True)
    assert result.failed == ("forever",) and result.values["quick"] == "done"
    assert finished(reporter)["forever"].timed_out


def test_an_idle_worker_that_died_is_replaced(tmp_path: Path) -> None:
    from dagrun.executors import Job
    from dagrun.executors.pyfunc import FunctionPool
    from dagrun.pycall import Call, pack_args, target_of

    target, code_file = target_of(funcs.numbers)
    pool = FunctionPool(slots=1)

    def job(i: int) -> Job:
        call = Call(target, code_file, pack_args([i], {}), (), f"k{i}", str(tmp_path / "r"))
        return Job(i, f"t{i}", "call", str(tmp_path), ".", {}, str(tmp_path / f"run{i}"),
                   call=call)

    try:
        pool.submit(job(1))
        assert [o.exit_code for o in pool.wait()] == [0]
        (idle,) = pool._idle
        os.kill(idle.proc.pid, signal.SIGKILL)
        idle.proc.wait()
        pool.submit(job(2))
        outcomes = pool.wait()
        assert [o.exit_code for o in outcomes] == [0], outcomes
    finally:
        pool.close()
    assert pickle_load(tmp_path / "r" / "k2") == [0, 1]


def pickle_load(path: Path) -> Any:
    import pickle

    return pickle.loads(path.read_bytes())


def test_a_function_task_is_pinned_to_its_leased_cores(tmp_path: Path) -> None:
    g = dagrun.Graph(root=tmp_path, executors={"local": {"core_pool": "0"}})
    g.add_task("p", fn=funcs.pinned)
    result = g.build(reporter=RecordingReporter())
    assert result.ok
    assert result.values["p"] == [0]


# ---------------------------------------------------------------- the API


def test_api_functions_decorator_and_streamed_results(tmp_path: Path) -> None:
    g = dagrun.Graph(root=tmp_path)
    n = g.add_task("numbers", fn=funcs.numbers, args=[7])
    g.add_task("evens", fn=funcs.evens, deps=[n])
    g.task(deps=["evens"], kwargs={"scale": 10})(funcs.total)
    g.add_task("everything", fn=funcs.everything, deps=["numbers", "evens", "total"])
    streamed: list[tuple[str, Any]] = []
    result = g.build(reporter=RecordingReporter(), on_result=lambda t, v: streamed.append((t, v)))
    assert result.ok
    assert result.values["total"] == 120
    assert result.values["everything"] == ["evens", "numbers", "total"]
    assert [t for t, _ in streamed] == ["numbers", "evens", "total", "everything"]
    again = list(g.iter_build(reporter=RecordingReporter()))  # all up to date: cached results
    assert dict(again) == dict(streamed)


def test_iter_build_returns_the_build_result(tmp_path: Path) -> None:
    g = dagrun.Graph(root=tmp_path)
    g.add_task("numbers", fn=funcs.numbers, args=[3])
    gen = g.iter_build(reporter=RecordingReporter())
    assert next(gen) == ("numbers", [0, 1, 2])
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value.succeeded == ("numbers",)


def test_api_refuses_lambdas_and_nested_functions(tmp_path: Path) -> None:
    def nested() -> int:
        return 1

    g = dagrun.Graph(root=tmp_path)
    for fn in (lambda: 1, nested):
        g.add_task(f"t{id(fn)}", fn=fn)
        with pytest.raises(ManifestError, match="must be a function defined at the top level"):
            g.manifest  # noqa: B018
        g.tasks.clear()
    with pytest.raises(ManifestError, match="either cmd or fn"):
        g.add_task("x", cmd="true", fn=funcs.numbers)


# ---------------------------------------------------------------- manifest errors


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('call = "nosuch.mod:f"', "call 'nosuch.mod:f': cannot import 'nosuch.mod': no module"),
        ('call = "m:ones"', "call 'm:ones': module 'm' has no 'ones'; did you mean 'one'?"),
        ('call = "m"', "call 'm' must name a function as 'package.module:function'"),
        ('call = "bad:f"', "cannot import 'bad': syntax error in"),
        ('call = "m:one"\ncmd = "true"', "a task has either 'cmd' (a shell command) or 'call'"),
        ('cmd = "true"\nio_bound = true', "'io_bound' is for Python function tasks"),
        ('call = "m:one"\nexecutor = "hpc"', "executor 'hpc' (type slurm) cannot run Python"),
    ],
)
def test_a_bad_call_is_a_manifest_error_naming_the_line(
    tmp_path: Path, body: str, message: str
) -> None:
    write(tmp_path, "m.py", "def one():\n    return 1\n")
    write(tmp_path, "bad.py", "def f(:\n")
    write(tmp_path, "dagrun.toml", '[executors.hpc]\ntype = "slurm"\n'
          f'\n[tasks.t]\n{body}\n')
    with pytest.raises(ManifestError) as info:
        dagrun.load(tmp_path / "dagrun.toml")
    text = str(info.value)
    assert message in text
    assert text.startswith(f"{tmp_path / 'dagrun.toml'}:")


def test_the_cli_exits_2_before_running_anything(tmp_path: Path, dagrun_proc: DagrunProcs) -> None:
    write(tmp_path, "dagrun.toml", """
        [tasks.first]
        cmd = "touch ran"
        [tasks.t]
        call = "missing_module:f"
    """)
    code, out, err = dagrun_proc.run("build")
    assert code == 2
    assert err.startswith("dagrun: error: dagrun.toml:5: task 't', key 'call': call ")
    assert "Traceback" not in err
    assert not (tmp_path / "ran").exists()


def test_worker_processes_are_gone_after_a_build(tmp_path: Path) -> None:
    import psutil

    write(tmp_path, "m.py", "import os\ndef pid():\n    return os.getpid()\n")
    write(tmp_path, "dagrun.toml", '[tasks.p]\ncall = "m:pid"\n')
    result, _ = build(tmp_path)
    pid = result.values["p"]
    assert pid != os.getpid()
    wait_for(lambda: not psutil.pid_exists(pid) or
             psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, "the worker gone")
    assert_groups_gone({pid})


def test_the_example_pipeline_runs_and_reruns_from_cache(
    tmp_path: Path, dagrun_proc: DagrunProcs
) -> None:
    import shutil

    example = Path(__file__).resolve().parent.parent / "examples" / "python"
    for name in ("dagrun.toml", "pipeline.py", "data"):
        src = example / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name)
        else:
            shutil.copy(src, tmp_path / name)
    code, out, err = dagrun_proc.run("build")
    assert code == 0, err
    assert "| south | 3 | 367.50 | 122.50 |" in (tmp_path / "build/report.md").read_text()
    source = (tmp_path / "pipeline.py").read_text()
    edited = source.replace("if region:", "if region and amount > 100:")
    assert edited != source
    (tmp_path / "pipeline.py").write_text(edited)
    code, out, err = dagrun_proc.run("build", "--explain")
    assert code == 0, err
    assert "explain clean: code of pipeline:clean changed" in out
    assert "loading" not in out  # load[...] was up to date: its cached rows went to clean
    assert "| north | 1 | 120.50 | 120.50 |" in (tmp_path / "build/report.md").read_text()


def test_apply_runs_a_call_in_process_for_executors_that_move_results(tmp_path: Path) -> None:
    """What a Dask executor submits: the function itself, its upstream values passed in."""
    from dagrun.pycall import Call, pack_args, target_of
    from dagrun.pyworker import apply

    target, code_file = target_of(funcs.total)
    call = Call(target, code_file, pack_args([], {"scale": 3}), (("evens", "", "k1"),), "k2",
                str(tmp_path))
    assert apply(call, {"evens": [2, 4]}) == 18  # a coroutine function, run to its end


def test_functions_of_the_build_script_itself(tmp_path: Path) -> None:
    import subprocess
    import sys

    write(tmp_path, "build.py", """
        import dagrun

        def double(x):
            return 2 * x

        def report(double):
            return f"got {double}"

        if __name__ == "__main__":
            g = dagrun.Graph(root=".")
            g.add_task("double", fn=double, args=[21])
            g.task(deps=["double"])(report)
            result = g.build()
            print(result.values["report"])
    """)
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "build.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(root)),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "got 42"


def test_the_pool_keeps_the_executor_contract(tmp_path: Path) -> None:
    """fileno readable when collect() has outcomes; cancel ends one job; cancel_all the rest."""
    import select

    from dagrun.executors import Context, Job, create
    from dagrun.pycall import Call, pack_args

    write(tmp_path, "m.py", "import time\ndef nap(s):\n    time.sleep(s)\n    return s\n")
    context = Context(str(tmp_path), str(tmp_path / ".dagrun"), dict(os.environ), 3)
    pool = create("python", "python", {}, context)
    code_file = str(tmp_path / "m.py")

    def job(i: int, seconds: float) -> Job:
        call = Call("m:nap", code_file, pack_args([seconds], {}), (), f"k{i}", str(tmp_path / "r"))
        return Job(i, f"t{i}", "call m:nap", str(tmp_path), ".", {}, str(tmp_path / f"run{i}"),
                   call=call)

    try:  # workers import m from the job's root
        pool.start()
        assert pool.slots == 3
        for i, seconds in ((1, 0.0), (2, 60.0), (3, 60.0)):
            pool.submit(job(i, seconds))
        assert select.select([pool.fileno()], [], [], 30)[0] == [pool.fileno()]
        outcomes = pool.collect()
        while not outcomes:
            outcomes = pool.collect()
        assert [(o.job_id, o.ok) for o in outcomes] == [(1, True)]
        pool.cancel(2)
        (cancelled,) = pool.wait(timeout=30)
        assert cancelled.job_id == 2 and not cancelled.ok
        (rest,) = pool.cancel_all()
        assert rest.job_id == 3 and rest.error == "interrupted"
    finally:
        pool.close()


def test_the_scheduler_gives_io_bound_tasks_no_slot_and_no_cores(fake_executor) -> None:
    """With -j1 and a core pool of one core, a CPU task and three io_bound tasks run at once."""
    from dagrun.graph import compile
    from dagrun.manifest import parse
    from dagrun.numa import CoreLeases, CorePool
    from dagrun.plan import Plan
    from dagrun.scheduler import Hooks, Limits, Policy, Scheduler

    text = '[tasks.cpu]\ncmd = "crunch"\n' + "".join(
        f'[tasks.io{i}]\ncall = "json:dumps"\nargs = [{i}]\nio_bound = true\n' for i in range(3)
    )
    graph = compile(parse(text, source="t.toml", root="/proj"))
    order = tuple(graph.order)
    leases = CoreLeases(CorePool(((0, (0,)),)))
    result = Scheduler(
        graph, Plan(order, order, (), {}), [f"k{i}" for i in order], fake_executor,
        limits=Limits(1, {}, leases), policy=Policy(1), hooks=Hooks(RecordingReporter()),
        clock=fake_executor.clock, base_env={}, runs_dir="/proj/.dagrun/runs",
    ).run()
    assert result.ok and fake_executor.peak == 4
    jobs = {j.task: j for j in fake_executor.jobs}
    assert jobs["cpu"].cores == (0,) and jobs["cpu"].call is None
    assert all(jobs[f"io{i}"].cores == () and jobs[f"io{i}"].call.io_bound for i in range(3))
    assert jobs["io1"].call.target == "json:dumps" and jobs["io1"].call.key == "k2"
