"""The executor contract (executors/__init__.py), checked on every executor in executor_factories.

Each test makes jobs in ``tmp_path`` (the manifest's folder), submits them,
and waits on ``fileno()``/``deadline()`` the way the scheduler does.
"""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

import psutil
import pytest
from executor_factories import KITS, Kit

from dagrun.executors import Executor, Job, Outcome

pytestmark = pytest.mark.slow


@pytest.fixture(params=sorted(KITS))
def kit(request: pytest.FixtureRequest) -> Kit:
    kit = KITS[request.param]
    why = kit.skip()
    if why is not None:
        pytest.skip(why)
    if kit.fixture is not None:
        request.getfixturevalue(kit.fixture)
    return kit


@pytest.fixture
def tmp_path(shared_dir: Path) -> Path:
    """The jobs' root: a folder the ssh test user can use as well."""
    return shared_dir


@pytest.fixture
def executor(kit: Kit, tmp_path: Path):
    ex = kit.make(tmp_path)
    ex.start()
    yield ex
    ex.close()


_ids = iter(range(1, 1 << 30))


def job(tmp_path: Path, cmd: str, **extra) -> Job:
    n = next(_ids)
    return Job(
        id=n, task=f"t{n}", cmd=cmd, root=str(tmp_path), cwd=extra.pop("cwd", "."),
        env=extra.pop("env", {"DAGRUN_TASK": f"t{n}"}),
        run_dir=str(tmp_path / ".dagrun" / "runs" / f"t{n}"), **extra,
    )


def wait_for(ex: Executor, ids: set[int], limit: float = 30.0) -> dict[int, Outcome]:
    """Collect until every job in ``ids`` ended (or fail after ``limit`` seconds)."""
    out: dict[int, Outcome] = {}
    end = time.monotonic() + limit
    while not ids <= set(out):
        left = end - time.monotonic()
        assert left > 0, f"jobs {sorted(ids - set(out))} did not end"
        due = ex.deadline()
        timeout = left if due is None else max(0.0, min(left, due - time.monotonic()))
        select.select([ex.fileno()], [], [], timeout)
        out.update((o.job_id, o) for o in ex.collect())
    return out


def run(ex: Executor, j: Job) -> Outcome:
    ex.submit(j)
    return wait_for(ex, {j.id})[j.id]


def test_success_captures_output_in_the_outcome_and_the_run_folder(executor, tmp_path):
    j = job(tmp_path, "echo out; echo err >&2")
    o = run(executor, j)
    assert o.ok and o.exit_code == 0 and not o.lost
    assert (o.stdout, o.stderr) == ("out\n", "err\n")
    if not isinstance(executor, _fake_type()):
        assert (Path(j.run_dir) / "stdout.txt").read_text() == "out\n"
        assert (Path(j.run_dir) / "stderr.txt").read_text() == "err\n"
        assert "echo out" in (Path(j.run_dir) / "command.txt").read_text()


def test_a_silent_success_keeps_no_run_folder_and_a_failure_keeps_one(executor, tmp_path):
    """One rule for every executor (runs.py, docs/state.md): kept only when it printed or failed;
    a silent success also removes its previous run's files."""
    silent = job(tmp_path, "true")
    Path(silent.run_dir).mkdir(parents=True)
    (Path(silent.run_dir) / "stdout.txt").write_text("an earlier run's\n")
    failing = job(tmp_path, "exit 3")
    assert run(executor, silent).ok and not run(executor, failing).ok
    if not isinstance(executor, _fake_type()):
        assert not Path(silent.run_dir).exists()
        command = (Path(failing.run_dir) / "command.txt").read_text()
        assert command.startswith("exit 3\n\n# task: ")
        assert (Path(failing.run_dir) / "stdout.txt").read_text() == ""


def test_failure_gives_the_exit_code_and_output(executor, tmp_path):
    o = run(executor, job(tmp_path, "echo partial; echo broken >&2; exit 3"))
    assert not o.ok and o.exit_code == 3
    assert (o.stdout, o.stderr) == ("partial\n", "broken\n")


def test_environment_is_the_declared_one_plus_dagrun(executor, tmp_path):
    env = {"GREETING": "hello world", "QUOTE": "it's $HOME", "DAGRUN_TASK": "envtask"}
    o = run(executor, job(tmp_path, 'printf "%s|%s|%s" "$GREETING" "$QUOTE" "$DAGRUN_TASK"',
                          env=env))
    assert o.ok and o.stdout == "hello world|it's $HOME|envtask"


def test_cwd_is_relative_to_the_root(executor, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub").chmod(0o777)
    o = run(executor, job(tmp_path, "pwd; touch here", cwd="sub"))
    assert o.ok and o.stdout.strip() == str(tmp_path / "sub")
    assert (tmp_path / "sub" / "here").exists()


# only the executors a check applies to (the fake runs no processes; local and dask never lose a
# job: the local one has no backend to lose, the dask one reruns a killed worker's job itself)
PROCESSES = [name for name in sorted(KITS) if KITS[name].processes]
LOSSY = [name for name in sorted(KITS) if KITS[name].lose is not None]


@pytest.mark.parametrize("kit", PROCESSES, indirect=True)
def test_timeout_kills_the_whole_process_group(kit, executor, tmp_path):
    # 2 s: the shell writes bg.pid first (on ssh the clock starts when the request is sent)
    j = job(tmp_path, "sleep 60 & echo $! > bg.pid; sleep 60", timeout=2.0)
    o = run(executor, j)
    assert o.timed_out and not o.ok
    background = int((tmp_path / "bg.pid").read_text())
    assert not _running(background), "the background child outlived the timeout"


def test_cancel_of_one_job_leaves_the_others(kit, executor, tmp_path):
    slow = job(tmp_path, "sleep 0.5; echo done")
    doomed = job(tmp_path, "sleep 60 & echo $! > bg2.pid; sleep 60")
    executor.submit(doomed)
    executor.submit(slow)
    _wait_for_file(tmp_path / "bg2.pid", kit)
    executor.cancel(doomed.id)
    out = wait_for(executor, {doomed.id, slow.id})
    assert not out[doomed.id].ok and not out[doomed.id].lost
    assert out[slow.id].ok and out[slow.id].stdout == "done\n"
    if kit.processes:
        assert not _running(int((tmp_path / "bg2.pid").read_text()))


def test_cancel_all_ends_every_job(kit, executor, tmp_path):
    jobs = [job(tmp_path, f"sleep 60 & echo $! > c{i}.pid; sleep 60") for i in range(2)]
    for j in jobs:
        executor.submit(j)
    for i in range(2):
        _wait_for_file(tmp_path / f"c{i}.pid", kit)
    outcomes = executor.cancel_all()
    assert {o.job_id for o in outcomes} == {j.id for j in jobs}
    assert not any(o.ok for o in outcomes)
    if kit.processes:
        for i in range(2):
            assert not _running(int((tmp_path / f"c{i}.pid").read_text()))


@pytest.mark.parametrize("kit", LOSSY, indirect=True)
def test_a_lost_backend_gives_a_lost_outcome(kit, executor, tmp_path):
    assert kit.lose is not None
    j = job(tmp_path, "echo started > lost.txt; sleep 30")
    executor.submit(j)
    _wait_for_file(tmp_path / "lost.txt", kit)
    kit.lose(executor)
    o = wait_for(executor, {j.id})[j.id]
    assert o.lost and not o.ok and o.error


def _fake_type() -> type:
    from dagrun.executors.fake import FakeExecutor

    return FakeExecutor


def _running(pid: int, within: float = 5.0) -> bool:
    """Whether ``pid`` still runs ``within`` seconds from now (a kill lands asynchronously)."""
    end = time.monotonic() + within
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            return False
        if time.monotonic() > end:
            return True
        time.sleep(0.02)


def _wait_for_file(path: Path, kit: Kit) -> None:
    """Real executors: until the job wrote ``path``.  The fake runs a job only when it ends."""
    if not kit.processes:
        return
    end = time.monotonic() + 20
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < end, f"{path.name} never written"
        time.sleep(0.01)
    os.sync()
