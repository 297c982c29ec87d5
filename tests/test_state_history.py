"""Issue 8, the state half: correct after any history of edits, failures and faults.

One test (or a few) per item: 1 only the latest run counts; 2 a failed or lost attempt
invalidates; 3 outputs are checked against what the run left; 4 an output not written is a
failure; 5 every state file is checksummed; 12 a full disk is a clear error; 15 a read-only
``.dagrun`` still answers a no-op.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from realproc import DagrunProcs

from dagrun.state import cache as state_cache
from dagrun.state import proof as fresh

COPY = '[tasks.copy]\ncmd = "cp in.txt out.txt"\ninputs = ["in.txt"]\noutputs = ["out.txt"]\n'


def build(project, *args: str):
    run = project.run("build", *args)
    assert "Traceback" not in run.err
    return run


# -- 1. a key that was ever logged does not count as done


def test_item1_an_input_changed_and_changed_back_reruns(project):
    project.manifest(COPY)
    for text in ("one\n", "two\n", "one\n"):
        project.write("in.txt", text)
        run = build(project)
        assert run.code == 0 and "no work to do" not in run.out, (text, run.out)
        assert project.read("out.txt") == text


def test_item1_a_command_changed_and_changed_back_reruns(project):
    project.write("in.txt", "x\n")
    for suffix in ("", "; echo more >> out.txt", ""):
        project.manifest(COPY.replace('in.txt out.txt"', f'in.txt out.txt{suffix}"'))
        assert build(project).code == 0
        expected = "x\n" + ("more\n" if suffix else "")
        assert project.read("out.txt") == expected


# -- 2. a failed, interrupted or lost attempt invalidates the task's record


PARTIAL = """
[tasks.p]
cmd = "echo partial > out.txt; test -e ok && cat in.txt > out.txt"
inputs = ["in.txt"]
outputs = ["out.txt"]
"""


def test_item2_a_failed_rerun_is_not_trusted_afterwards(project):
    project.manifest(PARTIAL)
    project.write("in.txt", "one\n")
    project.write("ok", "")
    assert build(project).code == 0
    project.write("in.txt", "two\n")
    os.unlink(project.root / "ok")
    assert build(project).code == 1  # out.txt is "partial" now
    project.write("in.txt", "one\n")  # the key of the last success again
    run = build(project, "--explain")
    assert run.code == 1, run.out  # it reran (and failed): not "no work to do"
    assert "its last run did not succeed" in run.out + run.err
    project.write("ok", "")
    assert build(project).code == 0 and project.read("out.txt") == "one\n"


SLOW = """
[tasks.s]
cmd = "echo partial > out.txt; [ -e slow ] && { echo $$ > pids/s; sleep 30; }; cat in.txt > out.txt"
inputs = ["in.txt"]
outputs = ["out.txt"]
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "kill-9"])
def test_item2_an_interrupted_or_killed_rerun_is_not_trusted(dagrun_proc: DagrunProcs, how: str):
    root = dagrun_proc.root
    dagrun_proc.manifest(SLOW)
    (root / "in.txt").write_text("one\n")
    assert dagrun_proc.run("build")[0] == 0
    (root / "in.txt").write_text("two\n")
    (root / "slow").write_text("")
    p = dagrun_proc.start("build")
    task = dagrun_proc.task_pid("s")  # the task leads its own process group
    if how == "sigterm":
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=15)
        assert p.returncode == 130
    else:
        p.kill()
        p.communicate(timeout=15)
        os.killpg(task, signal.SIGKILL)  # the machine went down with it
    assert (root / "out.txt").read_text() == "partial\n"
    (root / "slow").unlink()
    (root / "in.txt").write_text("one\n")  # the key of the last success again
    code, out, err = dagrun_proc.run("build")
    assert code == 0 and "no work to do" not in out, (out, err)
    assert (root / "out.txt").read_text() == "one\n"


@pytest.mark.slow
def test_item2_a_disk_full_failure_leaves_no_trusted_output(project):
    out = project.root / "out"
    _mount_tmpfs(out, "64k")
    try:
        project.manifest('[tasks.c]\ncmd = "cp in.txt out/o"\ninputs = ["in.txt"]\n'
                         'outputs = ["out/o"]\n')
        project.write("in.txt", "small\n")
        assert build(project).code == 0
        project.write("in.txt", "x" * 200_000)  # more than the disk holds
        assert build(project).code == 1
        assert (out / "o").stat().st_size < 200_000  # what the failed copy left
        project.write("in.txt", "small\n")  # the key of the last success again
        run = build(project)
        assert run.code == 0 and "no work to do" not in run.out
        assert (out / "o").read_text() == "small\n"
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)


# -- 3. outputs are checked against what the run left


def test_item3_an_edited_or_deleted_output_reruns_with_a_reason(project):
    project.manifest(COPY)
    project.write("in.txt", "one\n")
    assert build(project).code == 0
    out = project.root / "out.txt"
    for damage, reason in (
        (lambda: out.write_text("own\n"), "output out.txt changed since it was built"),
        (lambda: out.unlink(), "output out.txt is missing"),
        (lambda: (out.unlink(), out.mkdir()), "output out.txt changed since it was built"),
    ):
        damage()
        dry = project.run("build", "-n")
        assert reason in dry.out, dry.out
        if out.is_dir():  # cp would copy into it
            out.rmdir()
            reason = "output out.txt is missing"
        run = build(project, "--explain")
        assert run.code == 0 and reason in run.out + run.err
        assert project.read("out.txt") == "one\n"
        assert build(project).out.startswith("dagrun: no work to do")


# -- 4. a task that exits 0 without writing a declared output fails


def test_item4_an_output_not_written_fails_the_task(project):
    project.manifest("""
        [tasks.left]
        cmd = "echo done"
        outputs = ["right.txt"]
        [tasks.next]
        cmd = "cat right.txt > next.txt"
        inputs = ["right.txt"]
        outputs = ["next.txt"]
    """)
    run = build(project)
    assert run.code == 1
    assert "declared output right.txt was not written" in run.out
    assert "not run: next (dependency failed: left)" in run.out
    log = (project.root / ".dagrun" / "log").read_text()
    assert '"task":"left"' not in log
    assert build(project).code == 1  # not recorded as done


# -- 5. every state file is checked before it is trusted


DAG = """
[tasks.a]
cmd = "cp a.txt a.out"
inputs = ["a.txt"]
outputs = ["a.out"]
[tasks.b]
cmd = "cat a.out b.txt > b.out"
inputs = ["a.out", "b.txt"]
outputs = ["b.out"]
[tasks.c]
cmd = "cat b.out a.out > c.out"
inputs = ["b.out"]
deps = ["a"]
outputs = ["c.out"]
"""


def _dag(project, a: str, b: str) -> None:
    for name, text in (("a.txt", a), ("b.txt", b)):
        path = project.root / name
        if not path.exists() or path.read_text() != text:
            project.write(name, text)
            past = 1_600_000_000 * 10**9 + len(text) * 10**9 + hash(text) % 10**9
            os.utime(path, ns=(past, past))  # not racily clean: the no-op proof is written


def _expected(a: str, b: str) -> dict[str, str]:
    return {"a.out": a, "b.out": a + b, "c.out": a + b + a}


def test_item5_any_flipped_byte_makes_the_cache_no_cache():
    f = io.BytesIO()
    data = {"version": 6, "graph": ("g", "cp in.txt out.txt", ["in.txt"]), "stats": {"i": (1,)},
            "keys": {"t": "k" * 32}, "log": ()}
    state_cache.dump(data, f, None)
    raw = f.getvalue()
    assert state_cache.loads(raw)[0] == data
    for pos in range(len(raw)):
        for bit in (0x01, 0x80):
            damaged = bytearray(raw)
            damaged[pos] ^= bit
            assert state_cache.loads(bytes(damaged))[0] is None, pos


@pytest.mark.slow
@pytest.mark.parametrize("state", ["cache", "log", "fresh"])
def test_item5_a_flipped_byte_in_a_state_file_never_gives_a_wrong_build(project, state):
    """Flip one byte of a real state file, maybe change an input, build: the outputs are right
    and the build never crashes.  25 random positions; DAGRUN_FLIP_EVERY=1: every position."""
    project.manifest(DAG)
    for k in range(3):  # a history: records of each task, some superseded
        _dag(project, f"a{k}\n", "b\n")
        assert build(project).code == 0
    target = project.root / ".dagrun" / state
    size = len(target.read_bytes())
    every = bool(os.environ.get("DAGRUN_FLIP_EVERY"))
    rng = random.Random(state)
    manifest = str(project.root / "dagrun.toml")
    for n in range(size if every else 25):
        raw = bytearray(target.read_bytes())
        pos = n % len(raw) if every else rng.randrange(len(raw))
        raw[pos] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(raw))
        if state == "fresh":
            assert fresh.check(manifest, [], os.environ) is None, pos
        if state == "log":  # read the log whole, not through the cache's index of it
            (project.root / ".dagrun" / "cache").unlink(missing_ok=True)
            (project.root / ".dagrun" / "fresh").unlink(missing_ok=True)
        a, b = ("a2\n", f"b{n}\n") if n % 2 else ("a2\n", "b\n")
        _dag(project, a, b)
        run = build(project)
        assert run.code == 0, (state, pos, run.out, run.err)
        got = {x: project.read(x) for x in ("a.out", "b.out", "c.out")}
        assert got == _expected(a, b), (state, pos)
        again = build(project)
        assert again.code == 0 and "no work to do" in again.out, (state, pos, again.out)


def test_item5_a_damaged_log_record_is_skipped_with_a_warning(project):
    project.manifest(COPY)
    project.write("in.txt", "one\n")
    assert build(project).code == 0
    log = project.root / ".dagrun" / "log"
    raw = log.read_bytes()
    log.write_bytes(raw.replace(b'"task":"copy"', b'"task":"copz"'))
    os.unlink(project.root / ".dagrun" / "cache")
    (project.root / ".dagrun" / "fresh").unlink(missing_ok=True)  # the full path reads the log
    run = build(project)
    assert run.code == 0 and "ignored a damaged record" in run.err
    assert "no work to do" not in run.out  # the record is skipped: copy runs again


# -- 12 (the state part). a full disk while writing the log or the cache


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass
    return filler


@pytest.fixture
def small_state(project) -> Iterator:
    state = project.root / ".dagrun"
    _mount_tmpfs(state, "256k")
    try:
        yield project
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


@pytest.mark.slow
def test_item12_a_full_disk_under_the_log_and_cache_is_a_clear_error(small_state):
    project = small_state
    project.write("in.txt", "one\n")
    pad = "x" * 20_000  # in each success record (the declared env is a part of the key)
    project.manifest(COPY + f'env = {{ PAD = "{pad}" }}\n')
    assert build(project).code == 0
    state = project.root / ".dagrun"
    (state / "cache.4242.tmp").write_bytes(b"left by a crash")
    filler = _fill(state)
    project.write("in.txt", "two\n")
    run = build(project)
    assert run.code == 2, (run.out, run.err)
    assert "cannot write the completion log" in run.err and "No space left on device" in run.err
    assert "Traceback" not in run.err
    assert [p.name for p in state.iterdir() if p.name.endswith(".tmp")] == []
    lines = (state / "log").read_bytes().splitlines()
    assert all(json.loads(x) for x in lines[1:])  # nothing torn left in it
    filler.unlink()
    again = build(project)
    assert again.code == 0 and "no work to do" not in again.out
    assert project.read("out.txt") == "two\n"
    assert build(project).out.startswith("dagrun: no work to do")


def test_item12_stale_temporary_state_files_are_removed(project):
    project.manifest(COPY)
    project.write("in.txt", "one\n")
    assert build(project).code == 0
    state = project.root / ".dagrun"
    for name in ("cache.999999.tmp", "fresh.999999.tmp", "log.tmp"):
        (state / name).write_text("left by a crash")
    project.write("in.txt", "two\n")
    assert build(project).code == 0
    assert sorted(p.name for p in state.iterdir() if p.name.endswith(".tmp")) == []


def test_item12_a_cache_that_cannot_be_written_is_a_warning_and_leaves_no_temporary(project):
    project.manifest(COPY)
    project.write("in.txt", "one\n")
    assert build(project).code == 0
    state = project.root / ".dagrun"
    os.unlink(state / "cache")
    os.mkdir(state / "cache")  # os.replace onto a folder fails: a real OSError, at the last step
    project.write("in.txt", "two\n")
    run = build(project)
    assert run.code == 0 and "could not write the state cache" in run.err
    assert [p.name for p in state.iterdir() if p.name.endswith(".tmp")] == []
    assert project.read("out.txt") == "two\n"


# -- 15. a read-only .dagrun answers a no-op build and -n

# root without the capabilities that let it write anywhere: file modes bind it like any user
AS_A_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner,-chown"]


def _run(prefix: list[str], cwd: Path, *args: str) -> tuple[int, str, str]:
    p = subprocess.run([*prefix, sys.executable, "-m", "dagrun", "--progress", "plain", *args],
                       cwd=cwd, capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def _read_only_checks(prefix: list[str], root: Path, drop_proof) -> None:
    code, out, err = _run(prefix, root, "build")  # the fast path
    assert (code, out, err) == (0, "dagrun: no work to do (1 up to date)\n", "")
    drop_proof()  # now the full path must answer it
    code, out, err = _run(prefix, root, "build")
    assert (code, out, err) == (0, "dagrun: no work to do (1 up to date)\n", "")
    code, out, err = _run(prefix, root, "build", "-n")
    assert (code, err) == (0, "") and "0 would run, 1 up to date" in out
    code, out, err = _run(prefix, root, "list")
    assert (code, err) == (0, "") and "up to date" in out
    (root / "in.txt").write_text("two\n")
    code, out, err = _run(prefix, root, "build", "-n")
    assert code == 0 and "1 would run" in out
    code, out, err = _run(prefix, root, "build")
    assert code == 2 and "Traceback" not in err
    assert "cannot build" in err and "cannot be written" in err, err
    assert (root / "out.txt").read_text() == "one\n"


@pytest.fixture
def built_project(tmp_path: Path) -> Path:
    (tmp_path / "dagrun.toml").write_text(COPY)
    (tmp_path / "in.txt").write_text("one\n")
    os.utime(tmp_path / "in.txt", ns=(10**18, 10**18))  # not racily clean: the proof is written
    assert _run([], tmp_path, "build")[0] == 0
    assert (tmp_path / ".dagrun" / "fresh").exists()
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("how", ["another-user", "chmod-R", "chmod-folder"])
def test_item15_a_read_only_state_answers_a_no_op_and_dry_run(built_project, how):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop the capabilities that ignore file modes")
    if subprocess.run([*AS_A_USER, "true"], capture_output=True).returncode != 0:
        pytest.skip("setpriv cannot drop capabilities here")
    root = built_project
    state = root / ".dagrun"
    if how == "another-user":  # a state written by someone else, with the usual modes
        for p in [state, *state.rglob("*")]:
            os.chown(p, 65534, 65534)
    elif how == "chmod-R":
        subprocess.run(["chmod", "-R", "a-w", str(state)], check=True)
    else:
        state.chmod(0o555)
    _read_only_checks(AS_A_USER, root, lambda: os.unlink(state / "fresh"))


@pytest.mark.slow
def test_item15_a_read_only_mounted_state_answers_a_no_op_and_dry_run(built_project):
    state = built_project / ".dagrun"

    def mount_read_only() -> None:
        r = subprocess.run(["mount", "--bind", str(state), str(state)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {r.stderr.decode().strip()}")
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)

    def drop_proof() -> None:
        subprocess.run(["umount", str(state)], check=True)
        os.unlink(state / "fresh")
        mount_read_only()

    mount_read_only()
    try:
        _read_only_checks([], built_project, drop_proof)
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
