"""dagrun watch: what is watched, what counts as a change, rounds, --restart, Ctrl-C.

Most tests run the Watcher in a thread over real files with the real
(inotify) watcher and a 50 ms debounce; rounds are awaited through the
``on_round`` callback.  "Nothing else happened" is shown without sleeping:
after the event under test, a sentinel change is made, and the very next round
must be the sentinel's alone.  The Ctrl-C tests run the real CLI.
"""

from __future__ import annotations

import io
import os
import queue
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from realproc import DagrunProcs, assert_groups_gone, wait_for

from dagrun.scheduler import StopFlag
from dagrun.session import Session
from dagrun.watch import (
    Change,
    ChangeSet,
    Kind,
    Round,
    Watcher,
    manifest_set,
    matrix_globs,
    watch_set,
)

ABC = """
    [tasks.a]
    cmd = "cat a.txt > out/a && echo a >> tally.log"
    inputs = ["a.txt"]
    outputs = ["out/a"]

    [tasks.b]
    cmd = "cat b.txt > out/b && echo b >> tally.log"
    inputs = ["b.txt"]
    outputs = ["out/b"]

    [tasks.c]
    cmd = "cat out/a > out/c && echo c >> tally.log"
    inputs = ["out/a"]
    outputs = ["out/c"]
"""

GLOBS = """
    [tasks.gen]
    cmd = "echo gen > src/gen.txt && touch src/notes.md src/.gen.swp && echo gen >> tally.log"
    outputs = ["src/gen.txt"]

    [tasks.cat]
    cmd = "cat src/*.txt > all.txt"
    inputs = ["src/*.txt"]
    outputs = ["all.txt"]

    [tasks.count]
    matrix = { f = { glob = "data/*.csv" } }
    cmd = "wc -l < {f} > out/{f.stem}.n"
    inputs = ["{f}"]
    outputs = ["out/{f.stem}.n"]

    [tasks.b]
    cmd = "cp b.txt out/b"
    inputs = ["b.txt"]
    outputs = ["out/b"]
"""


def make_project(root: Path, manifest: str, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    path = root / "dagrun.toml"
    path.write_text(textwrap.dedent(manifest))
    return path


class Watching:
    """A Watcher running in a thread; ``next_round()`` waits for its next round."""

    def __init__(
        self, manifest: Path, *, restart: bool = False, debounce: int = 50,
        hook: Callable[[Round], None] | None = None,
    ) -> None:
        """``hook`` runs in the watcher's thread after each round's build, before the round
        is handed out (and before the watcher watches again)."""
        self.out = io.StringIO()
        self.rounds: queue.Queue[Round] = queue.Queue()
        self.stop = StopFlag()  # also stops a running build at once
        self.hook = hook
        self.watcher = Watcher(
            str(manifest), restart=restart, debounce_ms=debounce, progress="plain",
            out=self.out, err=self.out, on_round=self._on_round,
        )
        self.code: int | None = None
        self.done = 0  # rounds handed out
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_round(self, r: Round) -> None:
        if self.hook is not None:
            self.hook(r)
        self.rounds.put(r)

    def _run(self) -> None:
        self.code = self.watcher.run(self.stop)

    def next_round(self, timeout: float = 10.0) -> Round:
        """The next round, once the watcher watches again after it ("watching ...": a change
        made before the new watches are armed would be one the test did not mean to race)."""
        try:
            r = self.rounds.get(timeout=timeout)
        except queue.Empty:
            output = self.out.getvalue()
            raise AssertionError(f"no round within {timeout}s; output:\n{output}") from None
        self.done += 1
        deadline = time.monotonic() + timeout
        while self.out.getvalue().count("Ctrl-C to stop") < self.done and not self.stop.is_set():
            if self.thread is not None and not self.thread.is_alive():
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        return r

    def close(self) -> int | None:
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the watcher did not stop"
        return self.code




def start(started: list[Watching], manifest: Path, **kw: object) -> Watching:
    w = Watching(manifest, **kw)  # type: ignore[arg-type]
    started.append(w)
    return w



def tally(root: Path) -> list[str]:
    path = root / "tally.log"
    return path.read_text().split() if path.exists() else []


# ---------------------------------------------------------------- what is watched (no watcher)


def test_watch_set_watches_input_folders_and_classifies_changes(tmp_path: Path) -> None:
    manifest = make_project(
        tmp_path, GLOBS,
        {"src/a.txt": "a", "data/x.csv": "1\n", "b.txt": "b", "deep/unrelated/z.txt": "z"},
    )
    graph = Session(manifest_path=str(manifest)).load_graph()
    ws = watch_set(graph, graph.select(None), str(manifest), matrix_globs(str(manifest)))
    root = str(tmp_path)

    assert ws.folders == tuple(sorted([root, f"{root}/src", f"{root}/data"]))  # not out/, deep/
    classify = ws.classify
    assert classify(Change.MODIFIED, f"{root}/dagrun.toml") is Kind.MANIFEST
    assert classify(Change.ADDED, f"{root}/dagrun.toml") is Kind.MANIFEST  # an atomic save
    assert classify(Change.MODIFIED, f"{root}/src/a.txt") is Kind.INPUT
    assert classify(Change.DELETED, f"{root}/b.txt") is Kind.INPUT
    assert classify(Change.ADDED, f"{root}/src/new.txt") is Kind.LISTING  # matches src/*.txt
    assert classify(Change.ADDED, f"{root}/data/y.csv") is Kind.LISTING  # a matrix glob match
    assert classify(Change.DELETED, f"{root}/data/x.csv") is Kind.INPUT
    # outputs are only noted (the next build is not told "only these changed")
    assert classify(Change.ADDED, f"{root}/src/gen.txt") is Kind.OUTPUT
    assert classify(Change.MODIFIED, f"{root}/all.txt") is Kind.OUTPUT
    assert classify(Change.LOST, "") is Kind.LOST
    # never: dagrun's state, files no glob matches, editor scratch, other folders
    assert classify(Change.ADDED, f"{root}/.dagrun/log") is None
    assert classify(Change.ADDED, f"{root}/src/notes.md") is None
    assert classify(Change.ADDED, f"{root}/src/.a.txt.swp") is None
    assert classify(Change.ADDED, f"{root}/src/a.txt~") is None
    assert classify(Change.ADDED, f"{root}/tally.log") is None
    assert classify(Change.ADDED, f"{root}/deep/unrelated/new.txt") is None


def test_watch_set_of_a_target_leaves_other_tasks_inputs_out(tmp_path: Path) -> None:
    manifest = make_project(tmp_path, ABC, {"a.txt": "a", "b.txt": "b"})
    graph = Session(manifest_path=str(manifest)).load_graph()
    ws = watch_set(graph, graph.select(["c"]), str(manifest))
    assert ws.files == {f"{tmp_path}/a.txt"}
    assert ws.classify(Change.MODIFIED, f"{tmp_path}/b.txt") is None


def test_a_glob_over_a_missing_folder_watches_its_nearest_ancestor(tmp_path: Path) -> None:
    manifest = make_project(
        tmp_path,
        """
        [tasks.t]
        cmd = "true"
        inputs = ["in/raw/*.dat"]
        """,
        {},
    )
    graph = Session(manifest_path=str(manifest)).load_graph()
    ws = watch_set(graph, graph.select(None), str(manifest))
    assert ws.folders == (str(tmp_path),)
    assert ws.classify(Change.ADDED, f"{tmp_path}/in") is Kind.FOLDER
    assert ws.classify(Change.ADDED, f"{tmp_path}/other") is None


def test_manifest_set_watches_only_the_manifest(tmp_path: Path) -> None:
    ws = manifest_set(str(tmp_path / "dagrun.toml"))
    assert ws.folders == (str(tmp_path),)
    assert ws.classify(Change.MODIFIED, str(tmp_path / "dagrun.toml")) is Kind.MANIFEST
    assert ws.classify(Change.MODIFIED, str(tmp_path / "x.txt")) is None


# ---------------------------------------------------------------- the loop through its seam


def test_scripted_change_sets_make_one_round_and_the_event_stops_it(tmp_path: Path) -> None:
    manifest = make_project(tmp_path, ABC, {"a.txt": "a", "b.txt": "b"})
    root = str(tmp_path)
    script: list[ChangeSet] = [
        set(),  # "watching now"
        {(Change.MODIFIED, f"{root}/a.txt")},
        {(Change.MODIFIED, f"{root}/a.txt"), (Change.ADDED, f"{root}/out/a")},
        {(Change.MODIFIED, f"{root}/.dagrun/log"), (Change.MODIFIED, f"{root}/tally.log")},
    ]
    watched: list[Sequence[str]] = []

    def fake_watch(folders: Sequence[str], stop: threading.Event) -> Iterator[ChangeSet]:
        watched.append(list(folders))
        if len(watched) == 1:
            yield from script
        while not stop.wait(0.01):
            yield set()

    stop = threading.Event()
    rounds: list[Round] = []

    def on_round(r: Round) -> None:
        rounds.append(r)
        if len(rounds) == 2:
            stop.set()

    out = io.StringIO()
    w = Watcher(str(manifest), debounce_ms=0, progress="plain", out=out, err=out,
                watch_fn=fake_watch, on_round=on_round)
    assert w.run(stop) == 0

    assert watched[0] == [root]
    assert [r.changed for r in rounds] == [(), ("a.txt",)]
    assert rounds[0].to_run == ("a", "b", "c")
    assert rounds[1].to_run == ()  # a.txt's content did not really change
    text = out.getvalue()
    assert "first build -> running 3: a, b, c" in text
    assert "changed: a.txt -> nothing to run (3 up to date)" in text


def test_a_watcher_that_died_and_came_back_makes_one_round_that_checks_everything(
    tmp_path: Path,
) -> None:
    """An edit made while the watcher thread was dead raised no event: once it is started
    again, one round checks everything (and that round makes no other)."""
    manifest = make_project(tmp_path, ABC, {"a.txt": "a", "b.txt": "b"})
    die = threading.Event()
    calls: list[int] = []

    def fake_watch(folders: Sequence[str], stop: threading.Event) -> Iterator[ChangeSet]:
        calls.append(1)
        yield set()  # watching now
        while not stop.wait(0.01):
            if len(calls) == 2 and die.is_set():  # the watcher armed after round 1 (the 2nd)
                raise OSError("the watched folder went away")
            yield set()

    rounds: queue.Queue[Round] = queue.Queue()

    def on_round(r: Round) -> None:
        rounds.put(r)
        if r.number == 1:
            (tmp_path / "a.txt").write_text("a2")  # no watcher will tell
            die.set()

    stop = threading.Event()
    out = io.StringIO()
    w = Watcher(str(manifest), debounce_ms=0, progress="plain", out=out, err=out,
                watch_fn=fake_watch, on_round=on_round)
    thread = threading.Thread(target=lambda: w.run(stop), daemon=True)
    thread.start()
    try:
        assert rounds.get(timeout=30).number == 1
        second = rounds.get(timeout=30)
        assert second.changed == ("?",) and second.result is not None
        assert second.result.succeeded == ("a", "c")
        assert (tmp_path / "out/c").read_text() == "a2"
        with pytest.raises(queue.Empty):
            rounds.get(timeout=1.5)  # no round of its own doubt
        assert len(calls) == 3
        assert "files may have changed while the watches moved" in out.getvalue()
    finally:
        stop.set()
        thread.join(timeout=10)


# ---------------------------------------------------------------- real watcher


@pytest.mark.slow
def test_a_changed_source_reruns_exactly_its_dependents(
    tmp_path: Path, watching: list[Watching]
) -> None:
    manifest = make_project(tmp_path, ABC, {"a.txt": "a1", "b.txt": "b1"})
    w = start(watching, manifest)
    first = w.next_round()
    assert first.result is not None and set(first.result.succeeded) == {"a", "b", "c"}

    (tmp_path / "a.txt").write_text("a2")
    second = w.next_round()
    assert second.changed == ("a.txt",)
    assert second.result is not None
    assert second.result.succeeded == ("a", "c")
    assert second.result.up_to_date == ("b",)
    assert (tmp_path / "out/c").read_text() == "a2"
    assert w.close() == 0


@pytest.mark.slow
def test_files_written_by_tasks_trigger_nothing(tmp_path: Path, watching: list[Watching]) -> None:
    # gen writes a declared output into src/ (read by the glob src/*.txt), plus an undeclared
    # file and an editor-style scratch file there, and appends to a log beside the manifest.
    manifest = make_project(tmp_path, GLOBS, {"src/a.txt": "a", "data/x.csv": "1\n", "b.txt": "b"})
    w = start(watching, manifest)
    first = w.next_round()
    assert first.result is not None and "gen" in first.result.succeeded

    (tmp_path / "b.txt").write_text("b2")  # the sentinel: the next round must be its alone
    second = w.next_round()
    assert second.changed == ("b.txt",)
    assert second.result is not None and second.result.succeeded == ("b",)
    assert tally(tmp_path) == ["gen"]


@pytest.mark.slow
@pytest.mark.parametrize("restart", [False, True], ids=["queue", "restart"])
def test_outputs_and_their_folders_made_by_the_build_trigger_nothing(
    tmp_path: Path, watching: list[Watching], restart: bool
) -> None:
    # sum's glob reads build/, which does not exist until the first build makes it for n's outputs
    manifest = make_project(
        tmp_path,
        """
        [tasks.n]
        matrix = { f = { glob = "data/*.csv" } }
        cmd = "wc -l < {f} > build/{f.stem}.n"
        inputs = ["{f}"]
        outputs = ["build/{f.stem}.n"]

        [tasks.sum]
        cmd = "sleep 0.2 && cat build/*.n > total"  # long enough for build/y.n's event
        inputs = ["build/*.n"]
        outputs = ["total"]

        [tasks.b]
        cmd = "cp b.txt out/b"
        inputs = ["b.txt"]
        outputs = ["out/b"]
        """,
        {"data/x.csv": "1\n", "b.txt": "b"},
    )
    w = start(watching, manifest, restart=restart)
    w.next_round()
    (tmp_path / "b.txt").write_text("b2")  # sentinel
    assert w.next_round().changed == ("b.txt",)

    (tmp_path / "data/y.csv").write_text("1\n2\n")  # a new task, whose new output lands in build/
    r = w.next_round()
    assert r.changed == ("data/y.csv",)
    assert not r.restarted  # with --restart, by build/y.n
    assert r.result is not None and r.result.succeeded == ("n[f=data/y.csv]", "sum")
    (tmp_path / "b.txt").write_text("b3")  # sentinel
    assert w.next_round().changed == ("b.txt",)


@pytest.mark.slow
def test_a_burst_of_writes_makes_one_round(tmp_path: Path, watching: list[Watching]) -> None:
    manifest = make_project(tmp_path, ABC, {"a.txt": "a", "b.txt": "b"})
    w = start(watching, manifest, debounce=1000)  # a stall of this thread must not split it
    w.next_round()

    for n in range(50):  # 50 saves spread over ~0.25 s, each closer to the last than the debounce
        (tmp_path / "a.txt").write_text(f"a{n}")
        time.sleep(0.005)
    burst = w.next_round()
    assert burst.changed == ("a.txt",)
    assert burst.result is not None and burst.result.succeeded == ("a", "c")
    assert (tmp_path / "out/a").read_text() == "a49"

    (tmp_path / "b.txt").write_text("b2")  # sentinel: no second round came from the burst
    assert w.next_round().changed == ("b.txt",)
    runs = tally(tmp_path)
    assert sorted(runs[:3]) == ["a", "b", "c"] and runs[3:] == ["a", "c", "b"]


@pytest.mark.slow
def test_a_new_file_matching_a_glob_rebuilds(tmp_path: Path, watching: list[Watching]) -> None:
    files = {"src/a.txt": "a\n", "data/x.csv": "1\n", "b.txt": "b"}
    manifest = make_project(tmp_path, GLOBS, files)
    w = start(watching, manifest)
    w.next_round()

    (tmp_path / "src/z.md").write_text("not matched by src/*.txt")
    (tmp_path / "src/new.txt").write_text("new\n")
    r = w.next_round()
    assert r.changed == ("src/new.txt",)
    assert r.result is not None and r.result.succeeded == ("cat",)
    assert "new" in (tmp_path / "all.txt").read_text()

    (tmp_path / "data/y.csv").write_text("1\n2\n")  # a new matrix member: a new task
    r = w.next_round()
    assert r.changed == ("data/y.csv",)
    assert r.result is not None and r.result.succeeded == ("count[f=data/y.csv]",)
    assert (tmp_path / "out/y.n").read_text().strip() == "2"


@pytest.mark.slow
def test_a_broken_manifest_is_reported_and_fixing_it_rebuilds(
    tmp_path: Path, watching: list[Watching]
) -> None:
    manifest = make_project(tmp_path, ABC, {"a.txt": "a", "b.txt": "b"})
    w = start(watching, manifest)
    w.next_round()

    manifest.write_text("[tasks.a\ncmd = ")
    broken = w.next_round()
    assert broken.changed == ("dagrun.toml",)
    assert broken.result is None
    assert broken.error is not None and broken.error.startswith(f"{manifest}:1:")
    assert f"dagrun: error: {manifest}:1:" in w.out.getvalue()

    fixed_text = textwrap.dedent(ABC).replace("cat b.txt > out/b", "cat b.txt b.txt > out/b")
    manifest.write_text(fixed_text)
    fixed = w.next_round()
    assert fixed.error is None and fixed.delta is None
    assert fixed.result is not None and fixed.result.succeeded == ("b",)
    assert (tmp_path / "out/b").read_text() == "bb"


@pytest.mark.slow
def test_a_manifest_broken_from_the_start_is_watched_until_fixed(
    tmp_path: Path, watching: list[Watching]
) -> None:
    manifest = make_project(tmp_path, "[tasks.t]\ncmd = 1\n", {"a.txt": "a"})
    w = start(watching, manifest)
    first = w.next_round()
    assert first.error is not None and "task 't'" in first.error

    manifest.write_text(
        '[tasks.t]\ncmd = "cp a.txt t.out"\ninputs = ["a.txt"]\noutputs = ["t.out"]\n'
    )
    assert w.next_round().result is not None
    (tmp_path / "a.txt").write_text("a2")  # and its inputs are watched from then on
    r = w.next_round()
    assert r.changed == ("a.txt",) and (tmp_path / "t.out").read_text() == "a2"


# w waits for the file "go" while in.txt says "wait"
WAITER = """
    [tasks.w]
    cmd = '''echo $$ > pids/w; if grep -q wait in.txt; then touch started;
      while [ ! -e go ]; do sleep 0.01; done; fi; cp in.txt out.txt'''
    inputs = ["in.txt"]
    outputs = ["out.txt"]
"""


@pytest.mark.slow
def test_a_change_during_a_build_starts_the_next_round_when_it_ends(
    tmp_path: Path, watching: list[Watching]
) -> None:
    manifest = make_project(tmp_path, WAITER, {"in.txt": "wait", "pids/.keep": ""})
    w = start(watching, manifest)
    wait_for(lambda: (tmp_path / "started").exists(), "the task to start")
    (tmp_path / "in.txt").write_text("v2")
    (tmp_path / "go").write_text("")
    first = w.next_round()
    assert first.result is not None and first.result.succeeded == ("w",)
    assert not first.restarted
    second = w.next_round()
    assert second.changed == ("in.txt",)
    assert second.result is not None and second.result.succeeded == ("w",)
    assert (tmp_path / "out.txt").read_text() == "v2"


@pytest.mark.slow
def test_restart_cancels_the_running_build_and_starts_again(
    tmp_path: Path, watching: list[Watching]
) -> None:
    manifest = make_project(tmp_path, WAITER, {"in.txt": "wait", "pids/.keep": ""})
    w = start(watching, manifest, restart=True)
    wait_for(lambda: (tmp_path / "started").exists(), "the task to start")
    group = int((tmp_path / "pids/w").read_text())

    (tmp_path / "in.txt").write_text("v2")
    first = w.next_round()
    assert first.restarted and first.result is None
    assert_groups_gone({group})
    second = w.next_round()
    assert second.changed == ("in.txt",)
    assert second.delta is None  # after a cancelled build, everything is checked
    assert second.result is not None and second.result.succeeded == ("w",)
    assert (tmp_path / "out.txt").read_text() == "v2"
    assert "dagrun: restarting" in w.out.getvalue()


# ---------------------------------------------------------------- the CLI and Ctrl-C


class Lines:
    """Collects a process's stdout lines in a thread, so a test can wait for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._stream = proc.stdout
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self.lines.append(line.rstrip("\n"))

    def wait(self, text: str, count: int = 1) -> None:
        wait_for(lambda: sum(text in line for line in self.lines) >= count, f"{count}x {text!r}")

    def text(self) -> str:
        return "\n".join(self.lines)

    def finish(self, proc: subprocess.Popen[str]) -> str:
        """After ``proc`` ended: close its pipes; its stderr."""
        self.thread.join(timeout=5)
        self._stream.close()
        assert proc.stderr is not None
        with proc.stderr:
            return proc.stderr.read()


@pytest.mark.slow
def test_cli_watch_rebuilds_and_ctrl_c_while_idle_exits_0(dagrun_proc: DagrunProcs) -> None:
    dagrun_proc.manifest(ABC)
    (dagrun_proc.root / "a.txt").write_text("a")
    (dagrun_proc.root / "b.txt").write_text("b")
    p = dagrun_proc.start("watch", "c", "--debounce", "50")
    out = Lines(p)
    out.wait("dagrun: watching")
    assert "first build -> running 2: a, c" in out.text()

    (dagrun_proc.root / "a.txt").write_text("a2")
    out.wait("changed: a.txt -> running 2: a, c")
    out.wait("dagrun: watching", count=2)

    sent = time.monotonic()
    os.killpg(p.pid, signal.SIGINT)
    assert p.wait(timeout=10) == 0
    assert time.monotonic() - sent < 3.0
    assert "Traceback" not in out.finish(p)


@pytest.mark.slow
def test_cli_ctrl_c_during_a_build_kills_the_task_and_exits_130(dagrun_proc: DagrunProcs) -> None:
    dagrun_proc.manifest(
        """
        [tasks.busy]
        cmd = "sleep 30 & echo $$ > pids/busy; sleep 30"
        inputs = ["in.txt"]
        """
    )
    (dagrun_proc.root / "in.txt").write_text("x")
    p = dagrun_proc.start("watch", "--debounce", "50")
    out = Lines(p)
    group = dagrun_proc.task_pid("busy")

    sent = time.monotonic()
    os.killpg(p.pid, signal.SIGINT)
    assert p.wait(timeout=10) == 130
    assert time.monotonic() - sent < 5.0
    assert_groups_gone({group})
    assert "Traceback" not in out.finish(p)
    assert "dagrun: interrupted: killed busy" in out.text()


def test_cli_watch_rejects_a_bad_debounce(dagrun_proc: DagrunProcs) -> None:
    dagrun_proc.manifest(ABC)
    code, _, err = dagrun_proc.run("watch", "--debounce", "-5")
    assert code == 2
    assert "--debounce: must be 0 or more: -5" in err
