"""The shared cache ([cache]): real `dagrun` runs in real folders sharing a folder store or a
real nginx (tests/nginx.py).  A second clone restores what the first built, byte for byte;
every way a store can fail costs at most a run, never a wrong output."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from nginx import TOKEN, NginxServer

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # each test starts several dagrun processes

MODULE = '''
def square(n):
    print("squaring", n)
    return n * n
'''

MANIFEST = """
[cache]
url = "{url}"
{extra}

[tasks.gen]
cmd = '''echo gen >> $RUNLOG; echo making the header; echo a warning >&2
mkdir -p build; cat src.txt src.txt > build/gen.h'''
inputs = ["src.txt"]
outputs = ["build/gen.h"]

[tasks.tool]
cmd = "echo tool >> $RUNLOG; mkdir -p build; cp tool.sh build/tool; chmod 755 build/tool"
inputs = ["tool.sh"]
outputs = ["build/tool"]

[tasks.use]
cmd = "echo use >> $RUNLOG; mkdir -p out; build/tool > out/use.txt; cat build/gen.h >> out/use.txt"
inputs = ["build/gen.h", "build/tool"]
outputs = ["out/use.txt"]

[tasks.sq]
call = "mathy:square"
args = [7]

[tasks.tree]
cmd = "echo tree >> $RUNLOG; mkdir -p out/tree; echo x > out/tree/x"
outputs = ["out/tree"]

[tasks.stamp]
cmd = "echo stamp >> $RUNLOG; date +%s%N > out/stamp.txt"
deps = ["use"]
outputs = ["out/stamp.txt"]
cache = false
"""
CACHED = ("gen", "tool", "use", "sq")  # tree: a folder output; stamp: cache = false


def make_project(where: Path, url: str, extra: str = "") -> Path:
    where.mkdir(parents=True)
    (where / "dagrun.toml").write_text(MANIFEST.format(url=url, extra=extra))
    (where / "src.txt").write_text("int answer = 42;\n" * 200)  # gen.h: in cas/, not inlined
    (where / "tool.sh").write_text("#!/bin/sh\necho tool output\n")
    (where / "tool.sh").chmod(0o755)
    (where / "mathy.py").write_text(MODULE)
    return where


def dagrun(project: Path, *args: str, env: dict[str, str] | None = None, user: str | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DAGRUN_", "GITHUB_"))}
    full.update(PYTHONPATH=str(REPO), DAGRUN_SERVER="0", NO_COLOR="1", CI="1")
    full["RUNLOG"] = str(project / "runlog.txt")
    full.update(env or {})
    argv = [sys.executable, "-m", "dagrun", "--progress", "plain", *args]
    if user is not None:
        # a second uid; it may read (never write) root's files, as the Python under /root
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
                "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", *argv]
        full["HOME"] = str(project)
    return subprocess.run(argv, cwd=project, env=full, capture_output=True, text=True,
                          timeout=timeout)


def ran(project: Path) -> list[str]:
    log = project / "runlog.txt"
    return log.read_text().split() if log.exists() else []


def events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def outputs(project: Path) -> dict[str, tuple[bytes, int]]:
    found = {}
    for rel in ("build/gen.h", "build/tool", "out/use.txt"):
        p = project / rel
        found[rel] = (p.read_bytes(), p.stat().st_mode & 0o777)
    return found


def store_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---------------------------------------------------------------- two clones


def two_clones(tmp_path: Path, url: str, second: Path | None = None) -> tuple[Path, Path]:
    a = make_project(tmp_path / "alice" / "proj", url)
    first = dagrun(a, "build")
    assert first.returncode == 0, first.stderr
    assert "restored" not in first.stdout.splitlines()[-1]
    b = second or tmp_path / "ci-runner" / "work" / "proj"  # another absolute path
    b.parent.mkdir(parents=True)
    shutil.copytree(a, b, ignore=shutil.ignore_patterns(".dagrun", "build", "out", "runlog.txt",
                                                         "__pycache__"))
    return a, b


def check_second_clone(a: Path, b: Path, result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert "shared cache" not in result.stderr, result.stderr  # no warning: every one a hit
    assert sorted(ran(b)) == ["stamp", "tree"]  # the two that are never cached
    assert "2 succeeded, 4 restored, 0 up to date" in result.stdout.splitlines()[-1]
    assert outputs(b) == outputs(a)  # byte-identical, modes kept
    assert "making the header\n" in result.stdout and "a warning" in result.stdout
    assert "[" in result.stdout and "gen (restored)" in result.stdout
    assert (b / ".dagrun" / "runs" / "gen" / "stdout.txt").read_text() == "making the header\n"


def test_two_clones_share_a_folder_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    a, b = two_clones(tmp_path, f"file://{store}")
    assert (store / "ac").is_dir() and (store / "cas").is_dir()
    result = dagrun(b, "build", "--events", "ev.jsonl", "--junit", "j.xml")
    check_second_clone(a, b, result)
    recs = events(b / "ev.jsonl")
    started = {r["task"] for r in recs if r["event"] == "started"}
    assert started == {"stamp", "tree"}
    restored = {r["task"] for r in recs if r.get("status") == "restored"}
    assert restored == set(CACHED)
    assert recs[-1]["restored"] == 4 and recs[-1]["succeeded"] == 2
    junit = (b / "j.xml").read_text()
    assert junit.count("restored from the shared cache") == 4
    assert "<failure" not in junit
    show = dagrun(b, "show", "gen")
    assert "restored from the shared cache" in show.stdout
    assert "shared cache  cached" in show.stdout
    assert "not cached: output out/tree is a folder" in dagrun(b, "show", "tree").stdout
    assert "not cached: cache = false" in dagrun(b, "show", "stamp").stdout
    again = dagrun(b, "build")  # restored tasks are up to date like built ones
    assert again.returncode == 0 and "no work to do" in again.stdout, again.stdout


def test_a_function_tasks_result_is_restored(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _, b = two_clones(tmp_path, f"file://{store}")
    script = (
        "import dagrun, sys; r = dagrun.load('dagrun.toml').build(targets=['sq']); "
        "print('value', r.values['sq'], r.restored)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGRUN_")}
    env.update(PYTHONPATH=str(REPO), DAGRUN_SERVER="0")
    out = subprocess.run([sys.executable, "-c", script], cwd=b, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "value 49 ('sq',)" in out.stdout


def test_a_second_user_in_another_folder_gets_hits(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as a second user")
    store = tmp_path / "store"
    home = Path(tempfile.mkdtemp(prefix="dagrun-second-user-"))  # one the user may enter
    try:
        home.chmod(0o755)
        a, b = two_clones(tmp_path, f"file://{store}", home / "work" / "proj")
        for p in [home / "work", b, *b.rglob("*")]:
            os.chown(p, 65534, 65534)
        result = dagrun(b, "build", user="65534")
        check_second_clone(a, b, result)
        assert (b / "build" / "gen.h").stat().st_uid == 65534
    finally:
        shutil.rmtree(home)


def test_two_clones_share_an_nginx_store(tmp_path: Path, nginx: NginxServer) -> None:
    url = nginx.url()
    a, b = two_clones(tmp_path, url)
    assert store_files(nginx.stored(url))
    result = dagrun(b, "build")
    check_second_clone(a, b, result)


# ---------------------------------------------------------------- a damaged store


def entries_of(store: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_bytes()) for p in (store / "ac").iterdir()]


def blob_of(store: Path, task: str, n: int = 0) -> Path:
    entry = next(e for e in entries_of(store) if e["task"] == task)
    return store / "cas" / entry["outputs"][n][1]  # type: ignore[index]


def damaged_then_built(tmp_path: Path, damage: object) -> tuple[Path, Path,
                                                                 subprocess.CompletedProcess[str]]:
    store = tmp_path / "store"
    a, b = two_clones(tmp_path, f"file://{store}")
    damage(store)  # type: ignore[operator]
    result = dagrun(b, "build")
    assert result.returncode == 0, result.stderr
    assert outputs(b) == outputs(a)  # never a wrong output
    return a, b, result


def flip_a_byte(store: Path) -> None:
    blob = blob_of(store, "gen")
    data = bytearray(blob.read_bytes())
    data[3] ^= 0x20
    blob.write_bytes(bytes(data))


def truncate(store: Path) -> None:
    blob = blob_of(store, "gen")
    blob.write_bytes(blob.read_bytes()[:-5])


def remove_the_blob(store: Path) -> None:
    blob_of(store, "gen").unlink()


def flip_a_byte_of_an_inlined_output(store: Path) -> None:
    import base64

    for p in (store / "ac").iterdir():
        entry = json.loads(p.read_bytes())
        if entry["task"] == "gen":
            data = bytearray(base64.b64decode(entry["stdout"][2]))  # "making the header"
            data[0] ^= 0x20
            entry["stdout"][2] = base64.b64encode(bytes(data)).decode()
            p.write_text(json.dumps(entry))


def damage_the_entry(store: Path) -> None:
    for p in (store / "ac").iterdir():
        if json.loads(p.read_bytes())["task"] == "gen":
            p.write_bytes(p.read_bytes()[:-7])


@pytest.mark.parametrize(
    "damage",
    [flip_a_byte, truncate, remove_the_blob, flip_a_byte_of_an_inlined_output, damage_the_entry],
)
def test_a_damaged_store_costs_a_run_never_a_wrong_output(tmp_path: Path, damage: object) -> None:
    _, b, result = damaged_then_built(tmp_path, damage)
    assert "gen" in ran(b)  # it ran instead
    assert "dagrun: warning: shared cache:" in result.stderr
    assert "shared cache" not in result.stdout
    assert "use" not in ran(b)  # the tasks below it still hit: gen made the same bytes


def test_a_planted_symlink_is_never_written_through(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _, b = two_clones(tmp_path, f"file://{store}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (b / "build").symlink_to(outside)
    result = dagrun(b, "build")
    assert list(outside.iterdir()) == [] or "gen" in ran(b)
    assert not (outside / "gen.h").exists() or "gen" in ran(b)
    assert "is a symlink" in result.stderr


# ---------------------------------------------------------------- a failing store


def test_a_store_that_answers_500_costs_one_warning_and_the_runs(
    tmp_path: Path, nginx: NginxServer
) -> None:
    a = make_project(tmp_path / "a", nginx.url("broken"))
    result = dagrun(a, "build")
    assert result.returncode == 0, result.stderr
    assert sorted(ran(a)) == ["gen", "stamp", "tool", "tree", "use"]
    assert "answered 500" in result.stderr
    assert result.stderr.count("reading from it stops") == 1


def test_a_required_store_that_fails_fails_the_build(tmp_path: Path, nginx: NginxServer) -> None:
    a = make_project(tmp_path / "a", nginx.url("broken"))
    result = dagrun(a, "build", "--cache=required")
    assert result.returncode == 1
    assert "FAILED: [shared cache (--cache=required):" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.fixture
def hanging_server() -> Iterator[int]:
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield int(listener.getsockname()[1])
    stop.set()
    t.join()
    for s in held:
        s.close()
    listener.close()


def test_a_store_that_hangs_costs_one_timeout(tmp_path: Path, hanging_server: int) -> None:
    url = f"http://127.0.0.1:{hanging_server}/dagrun"
    a = make_project(tmp_path / "a", url, "connect_timeout = 0.5\nread_timeout = 0.5")
    result = dagrun(a, "build", timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(ran(a)) == ["gen", "stamp", "tool", "tree", "use"]
    assert "timed out" in result.stderr
    assert result.stderr.count("reading from it stops") == 1
    assert result.stderr.count("writing to it stops") == 1


def test_a_required_store_that_refuses_put_fails_the_build(
    tmp_path: Path, nginx: NginxServer
) -> None:
    a = make_project(tmp_path / "a", nginx.url("nowrite"))
    result = dagrun(a, "build", "--cache=required")
    assert result.returncode == 1
    assert "dagrun: error: the shared cache failed (--cache=required):" in result.stderr
    assert "answered 401" in result.stderr and "Traceback" not in result.stderr
    assert sorted(ran(a)) == ["gen", "stamp", "tool", "tree", "use"]  # a miss is no error


def test_a_store_that_refuses_put_keeps_reads(tmp_path: Path, nginx: NginxServer) -> None:
    a = make_project(tmp_path / "a", nginx.url("nowrite"))
    result = dagrun(a, "build")
    assert result.returncode == 0, result.stderr
    assert "answered 401" in result.stderr
    assert result.stderr.count("writing to it stops") == 1
    assert not store_files(nginx.stored(nginx.url("nowrite")).parent)


def test_a_full_disk_under_the_folder_store_drops_the_upload(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    store = tmp_path / "small"
    store.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(store)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        a = make_project(tmp_path / "a", f"file://{store}")
        (a / "src.txt").write_text("x" * 40_000)  # gen.h is 80 kB: more than the disk holds
        result = dagrun(a, "build")
        assert result.returncode == 0, result.stderr
        assert "No space left on device" in result.stderr
        assert not [p for p in store.rglob(".tmp-*")]  # no half blob left behind
        assert not (store / "ac").exists() or not any((store / "ac").iterdir()) or all(
            e["task"] != "gen" for e in entries_of(store)
        )
        b = tmp_path / "b"
        shutil.copytree(a, b, ignore=shutil.ignore_patterns(".dagrun", "build", "out",
                                                             "runlog.txt"))
        second = dagrun(b, "build")
        assert second.returncode == 0, second.stderr
        assert "gen" in ran(b) and outputs(b) == outputs(a)
    finally:
        subprocess.run(["umount", str(store)], check=False)


# ---------------------------------------------------------------- write = false, the token


def test_write_false_never_writes(tmp_path: Path, nginx: NginxServer) -> None:
    url = nginx.url()
    a = make_project(tmp_path / "a", url, "write = false")
    result = dagrun(a, "build")
    assert result.returncode == 0, result.stderr
    assert store_files(nginx.stored(url)) == []
    assert f"PUT /{url.split('/', 3)[3]}" not in nginx.access_log()
    store = tmp_path / "store"
    b = make_project(tmp_path / "b", f"file://{store}", "write = false")
    assert dagrun(b, "build").returncode == 0
    assert not store.exists()
    c = make_project(tmp_path / "c", f"file://{store}")  # write = true, but a PR's job
    assert dagrun(c, "build", "--cache=read-only").returncode == 0
    assert not store.exists()
    d = make_project(tmp_path / "d", f"file://{store}")
    assert dagrun(d, "build", "--cache=off").returncode == 0
    assert not store.exists()


def test_the_token_is_sent_and_never_shown(tmp_path: Path, nginx: NginxServer) -> None:
    url = nginx.url("auth")
    extra = 'token_env = "CACHE_TOKEN"'
    env = {"CACHE_TOKEN": TOKEN}
    a = make_project(tmp_path / "alice", url, extra)
    with open(a / "dagrun.toml", "a") as f:  # a task that prints its whole environment
        f.write('[tasks.env]\ncmd = "mkdir -p out; env > out/env.txt; env"\n'
                'outputs = ["out/env.txt"]\n')
    runs = [dagrun(a, "build", "--events", "ev.jsonl", "--junit", "j.xml", "--trace", "t.json",
                   "--explain", env=env)]
    assert runs[0].returncode == 0, runs[0].stderr
    assert store_files(nginx.stored(url))  # the token let it in
    b = tmp_path / "bob"
    shutil.copytree(a, b, ignore=shutil.ignore_patterns(".dagrun", "build", "out", "runlog.txt",
                                                        "*.jsonl", "*.xml", "*.json"))
    runs.append(dagrun(b, "build", "--events", "ev.jsonl", "-v", env=env))
    assert "5 restored" in runs[1].stdout
    assert "CACHE_TOKEN" not in (b / "out" / "env.txt").read_text()
    wrong = make_project(tmp_path / "eve", url, extra)
    runs.append(dagrun(wrong, "build", env={"CACHE_TOKEN": "wrong"}))
    assert "answered 401" in runs[2].stderr
    for name in ("show", "list"):
        runs.append(dagrun(b, name, *(["gen"] if name == "show" else []), env=env))
    for r in runs:
        assert TOKEN not in r.stdout + r.stderr
    secret = TOKEN.encode()
    for folder in (a, b, wrong):
        for p in folder.rglob("*"):
            if p.is_file():
                assert secret not in p.read_bytes(), p
    for p in nginx.stored(url).rglob("*"):
        assert p.is_dir() or secret not in p.read_bytes()


def test_the_entry_name_covers_the_key_os_architecture_and_upstream(tmp_path: Path) -> None:
    from dagrun.cache.entry import entry_name, platform_tag

    key = "0" * 32
    tag = platform_tag()
    assert tag == f"{sys.platform}-{os.uname().machine}"
    expected = hashlib.sha256(f"dagrun-cache/1\0{key}\0{tag}\0seen".encode()).hexdigest()
    assert entry_name(key, "seen") == expected


def test_a_dependency_that_made_other_bytes_never_restores_what_old_ones_made(
    tmp_path: Path,
) -> None:
    """`fetch` (always = true, a download) makes other bytes on every run, under one key: what
    `process` made from another clone's download is not this clone's."""
    store = tmp_path / "store"
    text = f"""
[cache]
url = "file://{store}"
[tasks.fetch]
cmd = "mkdir -p out; head -c 16 /dev/urandom | od -An -tx1 > out/fetched.txt"
outputs = ["out/fetched.txt"]
always = true
[tasks.process]
cmd = "tr a-f A-F < out/fetched.txt > out/processed.txt"
inputs = ["out/fetched.txt"]
outputs = ["out/processed.txt"]
"""
    for clone in ("a", "b"):
        (tmp_path / clone).mkdir()
        (tmp_path / clone / "dagrun.toml").write_text(text)
        result = dagrun(tmp_path / clone, "build")
        assert result.returncode == 0, result.stderr
        fetched = (tmp_path / clone / "out" / "fetched.txt").read_text()
        processed = (tmp_path / clone / "out" / "processed.txt").read_text()
        assert processed == fetched.upper()
    assert "restored" not in result.stdout
    assert len(list((store / "ac").iterdir())) == 2  # one entry per download


# ---------------------------------------------------------------- docs/ci.md's recipe


def shared_cache_recipe() -> dict[str, object]:
    """The second YAML block of docs/ci.md: the workflow with a shared cache."""
    import yaml

    blocks = (REPO / "docs" / "ci.md").read_text().split("```yaml\n")[1:]
    assert len(blocks) >= 2, "docs/ci.md has the .dagrun/ recipe, then the shared-cache one"
    flow: dict[str, object] = yaml.safe_load(blocks[1].split("```", 1)[0])
    return flow


def step_env(step: dict[str, str], trusted: bool) -> dict[str, str]:
    """The step's `env:` as GitHub evaluates it for a push to main (trusted) or a pull
    request: the two expressions the recipe uses, nothing else."""
    out = {}
    for name, value in step["env"].items():  # type: ignore[attr-defined]
        if "secrets.DAGRUN_CACHE_TOKEN" in value:
            out[name] = TOKEN if trusted else ""
        elif "github.event_name == 'push' && github.ref == 'refs/heads/main'" in value:
            out[name] = "true" if trusted else "false"
        else:
            raise AssertionError(f"an expression the test does not know: {value}")
    return out


def test_the_shared_cache_recipe_of_docs_ci_md_works_as_written(
    tmp_path: Path, nginx: NginxServer
) -> None:
    flow = shared_cache_recipe()
    steps = flow["jobs"]["build"]["steps"]  # type: ignore[index]
    build = next(s for s in steps if s.get("name") == "Build")
    assert "pull_request" in flow[True]  # type: ignore[index,operator]  # YAML reads on: as True
    url = nginx.url("trusted")  # anyone reads; a PUT needs the token
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "dagrun").write_text(f'#!/bin/sh\nexec {sys.executable} -m dagrun "$@"\n')
    (bindir / "dagrun").chmod(0o755)

    def job(name: str, trusted: bool) -> tuple[Path, subprocess.CompletedProcess[str]]:
        checkout = make_project(tmp_path / name, url, 'token_env = "DAGRUN_CACHE_TOKEN"')
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAGRUN_")}
        env.update(step_env(build, trusted), PYTHONPATH=str(REPO), CI="true",
                   GITHUB_ACTIONS="true", RUNLOG=str(checkout / "runlog.txt"),
                   PATH=f"{bindir}:{os.environ['PATH']}")
        done = subprocess.run(["bash", "-e", "-c", build["run"]], cwd=checkout, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert (checkout / "dagrun-junit.xml").exists()
        return checkout, done

    pr, _ = job("pull-request-1", trusted=False)
    assert sorted(ran(pr)) == ["gen", "stamp", "tool", "tree", "use"]
    assert store_files(nginx.stored(url)) == []  # a pull request never writes
    main, _ = job("main", trusted=True)
    assert store_files(nginx.stored(url))  # a push to main does
    pr2, done = job("pull-request-2", trusted=False)
    assert sorted(ran(pr2)) == ["stamp", "tree"]
    assert "4 restored" in done.stdout
    assert outputs(pr2) == outputs(main)


# ---------------------------------------------------------------- depfiles (examples/c)


def c_clone(where: Path, store: Path) -> Path:
    shutil.copytree(REPO / "examples" / "c", where,
                    ignore=shutil.ignore_patterns(".dagrun", "build"))
    with open(where / "dagrun.toml", "a") as f:
        f.write(f'\n[cache]\nurl = "file://{store}"\n')
    return where


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_a_task_with_a_depfile_is_restored_only_where_its_headers_match(tmp_path: Path) -> None:
    store = tmp_path / "store"
    a = c_clone(tmp_path / "a", store)
    assert dagrun(a, "build").returncode == 0
    b = c_clone(tmp_path / "b", store)
    first = dagrun(b, "build")
    assert "0 succeeded, 6 restored" in first.stdout, first.stdout
    assert (b / "build" / "hello").read_bytes() == (a / "build" / "hello").read_bytes()
    edit = dagrun(b, "build", "--explain")  # the restored depfiles are the log's: a header
    assert "no work to do" in edit.stdout  # edit is seen as the compile's would be
    (b / "include" / "greet.h").write_text((b / "include" / "greet.h").read_text() + "// x\n")
    edit = dagrun(b, "build", "--explain")
    assert "input include/greet.h changed (from depfile)" in edit.stdout
    assert "3 succeeded" in edit.stdout
    c = c_clone(tmp_path / "c", store)  # a greet.h no build sent: its includers run
    greet = c / "include" / "greet.h"
    greet.write_text(greet.read_text() + "#define DAGRUN_TEST_ONLY 1\n")
    third = dagrun(c, "build")
    assert third.returncode == 0, third.stderr
    for source in ("src/greet.c", "src/shout.c", "app/main.c"):
        assert f"CC {source} (restored)" not in third.stdout
        assert f"CC {source}" in third.stdout
    out = subprocess.run([str(c / "build" / "hello"), "x"], capture_output=True, text=True)
    assert out.stdout == "Hello, X!\n"


# ---------------------------------------------------------------- the API, manifest errors


def test_the_api_says_what_the_manifest_says(tmp_path: Path) -> None:
    import dagrun
    from dagrun.report import RecordingReporter

    store = tmp_path / "store"
    results = []
    for clone in ("one", "two"):
        root = tmp_path / clone
        root.mkdir()
        (root / "in.txt").write_text("data\n")
        g = dagrun.Graph(root=root, cache={"url": f"file://{store}", "write": clone == "one"})
        g.add_task("copy", cmd="cp in.txt out.txt", inputs=["in.txt"], outputs=["out.txt"])
        results.append(g.build(reporter=RecordingReporter(), cache="required"))
        assert (root / "out.txt").read_text() == "data\n"
    assert results[0].succeeded == ("copy",) and results[0].restored == ()
    assert results[1].succeeded == () and results[1].restored == ("copy",)


@pytest.mark.parametrize(("table", "message"), [
    ("[cache]\nread = true\n",
     "dagrun.toml:1: [cache] has no 'url' (where the shared cache is)"),
    ('[cache]\nurl = "s3://bucket/prefix"\n',
     "dagrun.toml:2: key 'url': s3:// stores are not supported"),
    ('[cache]\nurl = "file://relative/path"\n',
     "dagrun.toml:2: key 'url': must name an absolute folder"),
    ('[cache]\nurl = "http://h/x"\nwrite = "no"\n',
     "dagrun.toml:3: key 'write': must be true or false"),
    ('[cache]\nurl = "http://h/x"\ntoken = "T"\n',
     "dagrun.toml:3: key 'token': unknown key in [cache] (did you mean 'token_env'?)"),
])
def test_a_bad_cache_table_is_an_error_naming_file_and_line(
    tmp_path: Path, table: str, message: str
) -> None:
    (tmp_path / "dagrun.toml").write_text(table + '[tasks.a]\ncmd = "true"\n')
    result = dagrun(tmp_path, "build")
    assert result.returncode == 2
    assert result.stderr.startswith(f"dagrun: error: {message}"), result.stderr
    assert "Traceback" not in result.stderr


def test_an_entry_reads_back_as_written_and_anything_else_is_no_entry() -> None:
    from dagrun.cache.entry import Blob, Entry, Output, decode, sha256_bytes

    big = b"x" * 5000
    made = Entry("t", (Output("out/a", sha256_bytes(big).sha256, 5000, 0o755),
                       Output("out/b", sha256_bytes(b"hi").sha256, 2, 0o644, b"hi")),
                 sha256_bytes(b"printed\n"), None, None, 1.5, (("inc/x.h", "ab"),),
                 Blob(sha256_bytes(b"d").sha256, 1, b"d"))
    assert decode(made.encode()) == made
    assert sha256_bytes(big).data is None and sha256_bytes(b"hi").data == b"hi"
    text = made.encode().decode()
    for bad in (b"", b"garbage", b"[]", b'{"format":"dagrun-cache/0"}',
                text.replace('"aGk="', '"!!"').encode(),  # inlined data that is not base64
                text.replace("493", "4096").encode(),  # a mode past 0o777
                text.replace(sha256_bytes(big).sha256, "../../etc/passwd").encode()):
        assert decode(bad) is None, bad


def test_a_flipped_byte_served_by_nginx_costs_a_run(tmp_path: Path, nginx: NginxServer) -> None:
    url = nginx.url()
    a, b = two_clones(tmp_path, url)
    flip_a_byte(nginx.stored(url))  # nginx hands back what its folder holds
    result = dagrun(b, "build")
    assert result.returncode == 0, result.stderr
    assert "gen" in ran(b) and outputs(b) == outputs(a)
    assert "does not have its digest" in result.stderr


@pytest.fixture
def slow_store(tmp_path: Path) -> Iterator[tuple[str, Path, list[int]]]:
    """An HTTP server over a folder store's files that answers each GET after 0.2 s, and
    counts how many requests it serves at once (its most, in the list)."""
    import http.server

    folder = tmp_path / "served"
    folder.mkdir()
    busy = [0, 0]  # now, most
    lock = threading.Lock()

    class Slow(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(folder), **kw)  # type: ignore[arg-type]

        def do_GET(self) -> None:  # noqa: N802
            # counted while the client waits for the answer: once the answer is on its way, the
            # client's thread may already have sent its next request (a new connection)
            with lock:
                busy[0] += 1
                busy[1] = max(busy)
            try:
                threading.Event().wait(0.2)
            finally:
                with lock:
                    busy[0] -= 1
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder, busy
    server.shutdown()
    server.server_close()
    t.join()


def test_downloads_run_in_parallel_and_bounded(
    tmp_path: Path, slow_store: tuple[str, Path, list[int]]
) -> None:
    url, served, busy = slow_store
    store = tmp_path / "store"
    tasks = "".join(
        f'[tasks.t{n}]\ncmd = "echo {n} > out{n}.txt"\noutputs = ["out{n}.txt"]\n'
        for n in range(24)
    )
    first = tmp_path / "first"
    first.mkdir()
    (first / "dagrun.toml").write_text(f'[cache]\nurl = "file://{store}"\n{tasks}')
    assert dagrun(first, "build").returncode == 0
    shutil.copytree(store, served, dirs_exist_ok=True)  # the same layout, over HTTP
    second = tmp_path / "second"
    second.mkdir()
    (second / "dagrun.toml").write_text(f'[cache]\nurl = "{url}"\nwrite = false\n{tasks}')
    result = dagrun(second, "build")
    assert "0 succeeded, 24 restored" in result.stdout, result.stdout + result.stderr
    assert 2 <= busy[1] <= 8, busy  # DOWNLOADS lookups at once, not one, not all 24
