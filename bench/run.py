#!/usr/bin/env python3
"""The dagrun benchmark: dagrun against ninja, make, doit, snakemake and the physical limit.

    python bench/run.py --setup    # venvs: bench/.venv/peers (doit, snakemake), bench/.venv/dagrun
    python bench/run.py                    # the full run (~30 min); writes bench/RESULTS.md tables
    python bench/run.py --smoke            # N=50, one repetition: keeps the benchmark working (CI)
    python bench/run.py --server           # the build server against ninja (bench/server.py)

For each shape and size it generates one equivalent build per tool (bench/gen.py)
and times, tools alternating A B A B within each repetition:

- cold: outputs and the tool's state removed, then a full build;
- no-op: a build right after a build;
- incremental: the last task's input gets new content (it has no dependents,
  so exactly one task must rerun), then a build;
- peak RSS: ru_maxrss of the largest process in the tool's process tree (wait4).

``spawn`` and ``spawn-sh`` are the physical limit (bench/spawn.py: the same
commands, the same -j2, no build logic; exec'd directly / through ``sh -c``).
A peer whose build passes the cap (120 s) is killed and skipped at that size
and above.  Then, for dagrun alone: the 1k -> 10k -> 100k series (cold plan,
no-op, cold build) and the scheduling demo (critical path vs FIFO, selected with
the DAGRUN_SCHEDULE variable, see README).

dagrun runs from bench/.venv/dagrun, a regular (non-editable) install of this
working tree made at the start of the run, the way users install it; the
interpreter's own start-up is measured and reported next to the figures.
PYTHONDONTWRITEBYTECODE is removed from every tool's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import gen  # noqa: E402  (bench/gen.py, beside this file)

PEER_VENV = os.path.join(HERE, ".venv", "peers")
DAGRUN_VENV = os.path.join(HERE, ".venv", "dagrun")
CAP_S = 120.0
JOBS = 2
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


# ---------------------------------------------------------------- tools


@dataclass
class Tool:
    """How to run one build tool in a generated folder, and what state it keeps there."""

    name: str
    argv: list[str]
    state: tuple[str, ...] = ()  # files/folders removed before a cold build
    incremental: bool = True  # False: cold only (the spawners have no up-to-date check)
    version: str = ""


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # users have it unset; it would recompile every start
    env["LC_ALL"] = "C"
    return env


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=base_env())
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def dagrun_argv(smoke: bool) -> tuple[list[str], str]:
    exe = os.path.join(DAGRUN_VENV, "bin", "dagrun")
    if not smoke and os.path.exists(exe):
        return [exe], f"{DAGRUN_VENV} (regular install of this tree)"
    return [sys.executable, "-m", "dagrun"], f"{sys.executable} -m dagrun (current interpreter)"


def find_tools(names: Sequence[str], smoke: bool) -> tuple[list[Tool], dict[str, str]]:
    """The tools asked for that are installed; the others with the reason they are skipped."""
    tools: list[Tool] = []
    skipped: dict[str, str] = {}
    py = sys.executable
    for name in names:
        if name == "dagrun":
            argv, where = dagrun_argv(smoke)
            t = Tool("dagrun", argv + ["build", f"-j{JOBS}"], (".dagrun",))
            t.version = _version(argv + ["--version"]) + f"; {where}"
        elif name in ("ninja", "make"):
            exe = shutil.which(name)
            if exe is None:
                skipped[name] = "not installed"
                continue
            if name == "ninja":
                t = Tool("ninja", [exe, f"-j{JOBS}"], (".ninja_log", ".ninja_deps"))
            else:
                t = Tool("make", [exe, "-r", f"-j{JOBS}"])
            t.version = _version([exe, "--version"])
        elif name in ("doit", "snakemake"):
            exe = os.path.join(PEER_VENV, "bin", name)
            if not os.path.exists(exe):
                exe = shutil.which(name) or ""
            if not exe:
                skipped[name] = "not installed (python bench/run.py --setup)"
                continue
            if name == "doit":
                t = Tool("doit", [exe, "-n", str(JOBS)],
                         (".doit.db", ".doit.db.bak", ".doit.db.dat", ".doit.db.dir"))
            else:
                t = Tool("snakemake", [exe, "--cores", str(JOBS), "--quiet"], (".snakemake",))
            t.version = f"{name} " + _version([exe, "--version"])
        elif name == "spawn":
            t = Tool("spawn", [py, "-S", os.path.join(HERE, "spawn.py"), f"-j{JOBS}"],
                     incremental=False)
            t.version = "bench/spawn.py (posix_spawn, argv exec'd directly)"
        elif name == "spawn-sh":
            t = Tool("spawn-sh", [py, "-S", os.path.join(HERE, "spawn.py"), f"-j{JOBS}", "--shell"],
                     incremental=False)
            t.version = "bench/spawn.py --shell (sh -c per command)"
        else:
            raise SystemExit(f"unknown tool {name!r}")
        tools.append(t)
    return tools, skipped


# ---------------------------------------------------------------- measuring


@dataclass
class Run:
    wall: float  # seconds
    rss_kb: int
    code: int
    timed_out: bool = False


TIME = "/usr/bin/time"  # GNU time: its %M is the peak RSS of the tool's process tree


def timed(argv: list[str], cwd: str, env: dict[str, str] | None = None, cap: float = CAP_S,
          log: str | None = None) -> Run:
    """Run argv in cwd; wall time and the peak RSS of its process tree.

    The RSS comes from GNU time's wait4, not ours: a child forked from this
    (big) Python process starts with our RSS as its ru_maxrss, a child of the
    small ``time`` process does not.  Without GNU time the RSS is 0.
    """
    out = open(log or os.devnull, "wb")
    rss_file = None
    if os.path.exists(TIME):
        fd, rss_file = tempfile.mkstemp(prefix="bench-rss-")
        os.close(fd)
        argv = [TIME, "-f", "%M", "-o", rss_file, "--"] + argv
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env or base_env(), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = t0 + cap
        while True:
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                wall = time.perf_counter() - t0
                proc.returncode = os.waitstatus_to_exitcode(status)
                return Run(wall, _read_rss(rss_file), proc.returncode)
            if time.perf_counter() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                os.wait4(proc.pid, 0)
                return Run(time.perf_counter() - t0, 0, -9, timed_out=True)
            _sleep_until_exit(proc.pid, deadline)
    finally:
        out.close()
        if rss_file:
            os.unlink(rss_file)


def _read_rss(path: str | None) -> int:
    if path is None:
        return 0
    with open(path) as f:
        words = f.read().split()
    return int(words[-1]) if words and words[-1].isdigit() else 0


def _sleep_until_exit(pid: int, deadline: float) -> None:
    """Block until the process ends or the deadline passes (a pidfd, no polling)."""
    import select

    fd = os.pidfd_open(pid)
    try:
        select.select([fd], [], [], max(0.0, deadline - time.perf_counter()))
    finally:
        os.close(fd)


def clean_state(folder: str, tool: Tool) -> None:
    out = os.path.join(folder, "out")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for name in tool.state:
        p = os.path.join(folder, name)
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        elif os.path.exists(p):
            os.unlink(p)


def count_outputs(folder: str) -> int:
    return len(os.listdir(os.path.join(folder, "out")))


@dataclass
class Series:
    """Samples of one figure for one tool."""

    samples: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # to ninja, per pair (same repetition)

    def summary(self) -> dict[str, Any]:
        s = sorted(self.samples)
        out: dict[str, Any] = {"n": len(s)}
        if s:
            out.update(median=statistics.median(s), min=s[0], max=s[-1])
        if self.ratios:
            out["ratio_to_ninja"] = statistics.median(self.ratios)
        return out


@dataclass
class Case:
    """One shape at one size: every tool's samples."""

    shape: str
    n: int
    figures: dict[str, dict[str, Series]] = field(default_factory=dict)  # tool -> figure -> series
    skipped: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, tool: str, figure: str, value: float) -> None:
        self.figures.setdefault(tool, {}).setdefault(figure, Series()).samples.append(value)


def measure_case(shape: str, n: int, tools: list[Tool], reps: int, noops: int, work: str,
                 skip: dict[str, str], say: Callable[[str], None], cap: float = CAP_S) -> Case:
    """Every tool, A B A B: per repetition a cold build in a new folder, no-ops, an incremental.

    Nothing is deleted while measuring: for minutes after a mass deletion ext4
    makes creating files slow (its inode allocator skips recently deleted
    inodes, see RESULTS.md), which would charge one tool for another's clean-up.
    """
    case = Case(shape, n)
    last = gen.names(n)[-1]
    active = [t for t in tools if t.name not in skip]
    for t in tools:
        if t.name in skip:
            case.skipped[t.name] = skip[t.name]
    for rep in range(reps):
        per_rep: dict[str, dict[str, list[float]]] = {}
        folders: dict[str, str] = {}
        for t in list(active):
            folder = folders[t.name] = os.path.join(work, f"{shape}-{n}-{t.name}-{rep}")
            gen.gen(n, shape, folder)
            r = timed(t.argv, folder, log=os.path.join(folder, "cold.log"), cap=cap)
            if r.timed_out:
                why = f"cold build passed the {cap:.0f} s cap at N={n} ({shape})"
                say(f"  {t.name}: {why}; skipped from here on")
                skip[t.name] = why
                case.skipped[t.name] = why
                active.remove(t)
                continue
            if r.code != 0 or count_outputs(folder) != n:
                case.errors.append(
                    f"{t.name} cold: exit {r.code}, {count_outputs(folder)}/{n} outputs")
            case.add(t.name, "cold", r.wall)
            case.add(t.name, "rss_kb", r.rss_kb)
            per_rep.setdefault(t.name, {})["cold"] = [r.wall]
            if not t.incremental:
                continue
            for _ in range(noops):
                r = timed(t.argv, folder)
                case.add(t.name, "noop", r.wall)
                case.add(t.name, "noop_rss_kb", r.rss_kb)
                per_rep[t.name].setdefault("noop", []).append(r.wall)
            for k in range(2):
                text = f"changed {rep}.{k} {time.time_ns()}\n"
                with open(os.path.join(folder, "src", f"{last}.txt"), "w") as f:
                    f.write(text)
                r = timed(t.argv, folder)
                with open(os.path.join(folder, "out", last)) as f:
                    if f.read() != text:
                        case.errors.append(f"{t.name} incremental: out/{last} was not rebuilt")
                case.add(t.name, "incremental", r.wall)
                per_rep[t.name].setdefault("incremental", []).append(r.wall)
        order = active if rep % 2 == 0 else active[::-1]
        _measure_cold_rm(case, order, folders, per_rep, cap)
        _pair_ratios(case, per_rep)
        say(f"  rep {rep + 1}/{reps}: " + ", ".join(
            f"{k} {v['cold'][0]:.2f}s" for k, v in per_rep.items()))
    return case


def _measure_cold_rm(case: Case, tools: list[Tool], folders: dict[str, str],
                     per_rep: dict[str, dict[str, list[float]]], cap: float = CAP_S) -> None:
    """Cold right after deleting the previous build's outputs and state, in the same folder
    (``rm -rf out .dagrun && dagrun build``: a reused CI runner).  This one pays ext4's slow
    creation after a mass deletion, on purpose; tools alternate, their order flips per rep."""
    for t in tools:
        if not t.incremental or t.name not in per_rep:
            continue
        folder = folders[t.name]
        clean_state(folder, t)
        r = timed(t.argv, folder, log=os.path.join(folder, "cold-rm.log"), cap=cap)
        if r.code != 0 or count_outputs(folder) != case.n:
            case.errors.append(
                f"{t.name} cold after rm: exit {r.code}, {count_outputs(folder)}/{case.n} outputs")
        case.add(t.name, "cold_rm", r.wall)
        per_rep[t.name]["cold_rm"] = [r.wall]


def _pair_ratios(case: Case, per_rep: dict[str, dict[str, list[float]]]) -> None:
    ref = per_rep.get("ninja")
    if not ref:
        return
    for tool, figs in per_rep.items():
        for fig, values in figs.items():
            if fig in ref and ref[fig]:
                r = statistics.median(values) / statistics.median(ref[fig])
                case.figures[tool][fig].ratios.append(r)


# ---------------------------------------------------------------- dagrun alone


def measure_series(sizes: Sequence[int], dagrun: list[str], work: str, reps: int, cold: bool,
                   say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Cold plan, no-op and (optionally) cold build for growing sizes: does cost grow linearly?"""
    rows = []
    for n in sizes:
        folder = os.path.join(work, f"series-{n}-plan")
        gen.gen(n, "wide", folder, peers=False)
        tool = Tool("dagrun", dagrun, (".dagrun",))
        plan, noop, build, rss = Series(), Series(), Series(), Series()
        for _ in range(reps):  # removes only .dagrun's few files between runs
            clean_state(folder, tool)
            plan.samples.append(timed(dagrun + ["-n"], folder, cap=3600).wall)
        for k in range(reps if cold else 1):  # a no-op needs one real build first
            folder = os.path.join(work, f"series-{n}-{k}")
            gen.gen(n, "wide", folder, peers=False)
            r = timed(dagrun, folder, cap=3600)
            build.samples.append(r.wall)
            rss.samples.append(r.rss_kb)
        for _ in range(max(3, reps)):
            noop.samples.append(timed(dagrun, folder, cap=3600).wall)
        row: dict[str, Any] = {"n": n, "plan": plan.summary(), "noop": noop.summary(),
                               "cold": build.summary(), "rss_kb": rss.summary()}
        say(f"  series N={n}: plan {plan.summary()['median']:.3f}s, "
            f"no-op {noop.summary()['median']:.3f}s, cold {build.summary()['median']:.2f}s")
        rows.append(row)
    return rows


def sched_manifest(chain: int, chain_s: float, shorts: int, short_s: float, big_s: float) -> str:
    """A long chain and a long lone task, declared after many short ones (FIFO's worst case)."""
    lines = ["# generated by bench/run.py: the scheduling demo", ""]
    for i in range(shorts):
        lines += [f"[tasks.short{i:03d}]", f'cmd = "sleep {short_s}"', "always = true", ""]
    lines += ["[tasks.big]", f'cmd = "sleep {big_s}"', "always = true", ""]
    for i in range(chain):
        lines += [f"[tasks.chain{i}]", f'cmd = "sleep {chain_s}"', "always = true"]
        if i:
            lines.append(f'deps = ["chain{i - 1}"]')
        lines.append("")
    return "\n".join(lines)


SCHEDULES = ("fifo", "unweighted", "critical-path")


def measure_sched(dagrun: list[str], work: str, reps: int, smoke: bool,
                  say: Callable[[str], None]) -> dict[str, Any]:
    if smoke:
        shape = dict(chain=3, chain_s=0.05, shorts=10, short_s=0.01, big_s=0.05)
    else:
        shape = dict(chain=4, chain_s=0.5, shorts=100, short_s=0.02, big_s=1.0)
    folder = os.path.join(work, "sched")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    with open(os.path.join(folder, "dagrun.toml"), "w") as f:
        f.write(sched_manifest(**shape))  # type: ignore[arg-type]
    timed(dagrun, folder)  # records every task's duration in the log
    series = {m: Series() for m in SCHEDULES}
    for _ in range(reps):
        for mode in SCHEDULES:
            env = base_env()
            env["DAGRUN_SCHEDULE"] = mode
            series[mode].samples.append(timed(dagrun, folder, env=env).wall)
    work_s = shape["chain"] * shape["chain_s"] + shape["shorts"] * shape["short_s"] + shape["big_s"]
    bound = max(shape["chain"] * shape["chain_s"], work_s / JOBS)
    result = {"shape": shape, "lower_bound_s": bound,
              "modes": {m: s.summary() for m, s in series.items()}}
    say("  sched: " + ", ".join(f"{m} {s.summary()['median']:.2f}s" for m, s in series.items())
        + f" (lower bound {bound:.2f}s)")
    return result


def stream_manifest(size: int) -> str:
    """One task printing ``size`` bytes to stdout (``head`` exec'd directly: a small process)."""
    cmd = f"head -c {size} /dev/zero" if size else "true"
    return f'[tasks.loud]\ncmd = "{cmd}"\nalways = true\n'


def measure_stream(dagrun: list[str], work: str, sizes: Sequence[int], reps: int,
                   say: Callable[[str], None]) -> dict[str, Any]:
    """Peak RSS (GNU time: dagrun and its task) of a build whose one task prints N bytes.

    The local executor sends stdout straight to .dagrun/runs/<task>/stdout.txt and reads back
    at most a bounded tail, so the RSS must not grow with N."""
    rows = []
    for size in sizes:
        folder = os.path.join(work, f"stream-{size}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "dagrun.toml"), "w") as f:
            f.write(stream_manifest(size))
        wall, rss = Series(), Series()
        for _ in range(reps):
            r = timed(dagrun, folder, cap=3600)
            printed = os.path.join(folder, ".dagrun", "runs", "loud", "stdout.txt")
            got = os.path.getsize(printed) if os.path.exists(printed) else 0  # silent: no file
            if r.code != 0 or got != size:
                say(f"  ERROR stream {size}: exit {r.code}, stdout.txt has {got} bytes")
            wall.samples.append(r.wall)
            rss.samples.append(r.rss_kb)
        shutil.rmtree(folder, ignore_errors=True)  # 2 GB: do not keep it
        rows.append({"bytes": size, "wall": wall.summary(), "rss_kb": rss.summary()})
        say(f"  stream {size / 1e6:,.0f} MB: {wall.summary()['median']:.2f}s, "
            f"RSS {rss.summary()['median'] / 1024:.1f} MB")
    return {"rows": rows}


def measure_watch(dagrun: list[str], sizes: Sequence[int], samples: int,
                  say: Callable[[str], None]) -> dict[str, Any]:
    """``dagrun watch``: a saved source -> its task's start (bench/watch_latency.py), in ms."""
    import watch_latency

    rows = []
    for n in sizes:
        for debounce in (0, 50):
            row = watch_latency.summary(
                debounce, n, watch_latency.measure(dagrun, debounce, samples, n))
            rows.append(row)
            say(f"  watch {n:,} task(s), --debounce {debounce}: median {row['median']:.1f} ms")
    return {"rows": rows}


def interpreter_floor(dagrun: list[str]) -> dict[str, float]:
    """Start-up of the interpreter dagrun runs on, with and without site (median of 11)."""
    py = dagrun[0]
    if py.endswith("/dagrun"):
        py = os.path.join(os.path.dirname(py), "python")
    out = {}
    for label, argv in (("python -c pass", [py, "-c", "pass"]),
                        ("python -S -c pass", [py, "-S", "-c", "pass"]),
                        ("dagrun --version", dagrun + ["--version"])):
        s = sorted(timed(argv, ROOT).wall for _ in range(11))
        out[label] = s[5]
    return out


# ---------------------------------------------------------------- setup


def setup(say: Callable[[str], None]) -> None:
    """bench/.venv/peers with doit and snakemake; this tree installed into bench/.venv/dagrun."""
    if not os.path.exists(os.path.join(PEER_VENV, "bin", "python")):
        subprocess.run([sys.executable, "-m", "venv", PEER_VENV], check=True)
    subprocess.run([os.path.join(PEER_VENV, "bin", "pip"), "install", "-q", "doit", "snakemake"],
                   check=True)
    install_dagrun(say)


def install_dagrun(say: Callable[[str], None]) -> None:
    """(Re)install the working tree, not editable, into bench/.venv/dagrun."""
    if not os.path.exists(os.path.join(DAGRUN_VENV, "bin", "python")):
        subprocess.run([sys.executable, "-m", "venv", DAGRUN_VENV], check=True)
        # pip < 25 writes `import re` into console scripts (~5 ms a start): users' pip is newer
        subprocess.run([os.path.join(DAGRUN_VENV, "bin", "pip"), "install", "-q", "-U", "pip"],
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as tmp:  # build from a copy: no build/ in the tree
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(os.path.join(ROOT, name), tmp)
        shutil.copytree(os.path.join(ROOT, "dagrun"), os.path.join(tmp, "dagrun"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run([os.path.join(DAGRUN_VENV, "bin", "pip"), "install", "-q",
                        "--force-reinstall", "--no-deps", tmp], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([os.path.join(DAGRUN_VENV, "bin", "pip"), "install", "-q", tmp], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    say(f"installed this tree into {DAGRUN_VENV}")


# ---------------------------------------------------------------- reporting


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "commit": commit, "load_before": os.getloadavg(),
    }


def fmt_s(summary: dict[str, Any], key: str = "median") -> str:
    if not summary or "median" not in summary:
        return "—"
    m, lo, hi = summary["median"], summary["min"], summary["max"]
    if m < 1:
        return f"{m * 1000:.0f} ms ({lo * 1000:.0f}–{hi * 1000:.0f})"
    return f"{m:.2f} s ({lo:.2f}–{hi:.2f})"


def _short(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_ratio(summary: dict[str, Any]) -> str:
    r = summary.get("ratio_to_ninja") if summary else None
    return "—" if r is None else f"{r:.2f}×"


def markdown(results: dict[str, Any]) -> str:
    out = [f"Measured {results['machine']['date']} at commit {results['machine']['commit']}: "
           f"{results['machine']['cpu']}, {results['machine']['cores']} cores, "
           f"kernel {results['machine']['kernel']}, -j{JOBS}; load average before "
           f"{', '.join(f'{x:.2f}' for x in results['machine']['load_before'])}, after "
           f"{', '.join(f'{x:.2f}' for x in results['machine']['load_after'])}.",
           f"Command: `{results['command']}` ({results['elapsed_s'] / 60:.0f} min).", "",
           "Tools:", ""]
    out += [f"- {k}: {v}" for k, v in results["versions"].items()]
    out += [f"- {k}: skipped, {v}" for k, v in results["skipped"].items()]
    out += ["", "Interpreter start-up (median of 11): " + ", ".join(
        f"`{k}` {v * 1000:.1f} ms" for k, v in results["floor"].items()) + ".", ""]
    for case in results["cases"]:
        out += [f"### {case['shape']}, N = {case['n']:,} "
                f"({case['reps']} repetitions, medians with min–max; "
                "ratio = median of per-pair ratios)", "",
                "| tool | cold | ×ninja | cold after rm | ×ninja | no-op | ×ninja | incremental "
                "| ×ninja | peak RSS (cold) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for tool, figs in case["figures"].items():
            rss = figs.get("rss_kb", {})
            rss_s = f"{rss['median'] / 1024:.1f} MB" if rss.get("median") else "—"  # 0: no GNU time
            out.append(
                f"| {tool} | {fmt_s(figs.get('cold', {}))} | {fmt_ratio(figs.get('cold', {}))} "
                f"| {fmt_s(figs.get('cold_rm', {}))} | {fmt_ratio(figs.get('cold_rm', {}))} "
                f"| {fmt_s(figs.get('noop', {}))} | {fmt_ratio(figs.get('noop', {}))} "
                f"| {fmt_s(figs.get('incremental', {}))} "
                f"| {fmt_ratio(figs.get('incremental', {}))} "
                f"| {rss_s} |")
        for tool, why in case["skipped"].items():
            out.append(f"| {tool} | skipped: {why} | | | | | | | | |")
        if case["errors"]:
            out += ["", "Errors: " + "; ".join(case["errors"])]
        out.append("")
    if results.get("series"):
        out += ["### dagrun alone: growth (wide)", "",
                "| N | cold plan (`build -n`, no state) | no-op | cold build | peak RSS (cold) | "
                "no-op per task |", "|---|---|---|---|---|---|"]
        for row in results["series"]:
            per = row["noop"]["median"] / row["n"] * 1e6
            rss = row["rss_kb"].get("median")
            out.append(f"| {row['n']:,} | {fmt_s(row['plan'])} | {fmt_s(row['noop'])} | "
                       f"{fmt_s(row['cold'])} | {'—' if rss is None else f'{rss / 1024:.0f} MB'} | "
                       f"{per:.1f} µs |")
        out.append("")
    if results.get("stream"):
        st = results["stream"]
        out += ["### dagrun alone: a task printing to stdout (peak RSS of the build)", "",
                "| task prints | wall | peak RSS |", "|---|---|---|"]
        for row in st["rows"]:
            out.append(f"| {row['bytes'] / 1e6:,.0f} MB | {fmt_s(row['wall'])} "
                       f"| {row['rss_kb']['median'] / 1024:.1f} MB |")
        out.append("")
    if results.get("sched"):
        s = results["sched"]
        sh = s["shape"]
        out += ["### Scheduling quality (dagrun alone)", "",
                f"{sh['shorts']} tasks of {sh['short_s']} s, one lone task of {sh['big_s']} s "
                "and a "
                f"chain of {sh['chain']} × {sh['chain_s']} s, declared in that order, all "
                f"`always = true`, -j{JOBS}; durations recorded by a first build. Lower bound "
                f"max(chain, work / {JOBS}) = {s['lower_bound_s']:.2f} s.", "",
                "| DAGRUN_SCHEDULE | wall | vs critical-path |", "|---|---|---|"]
        best = s["modes"]["critical-path"]["median"]
        for mode, summ in s["modes"].items():
            out.append(f"| {mode} | {fmt_s(summ)} | {summ['median'] / best:.2f}× |")
        out.append("")
    return "\n".join(out)


def _fig(results: dict[str, Any], shape: str, n: int, tool: str, figure: str) -> dict[str, Any]:
    for case in results["cases"]:
        if case["shape"] == shape and case["n"] == n:
            return dict(case["figures"].get(tool, {}).get(figure, {}))
    return {}


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else "met" if ok else "**not met**"


def targets(results: dict[str, Any]) -> str:
    """Issue 5's targets against the figures of this run (ratios: medians of per-pair ratios)."""
    rows = ["| figure | target | measured | |", "|---|---|---|---|"]

    def ratio(shape: str, n: int, tool: str, figure: str) -> float | None:
        r = _fig(results, shape, n, tool, figure).get("ratio_to_ninja")
        return None if r is None else float(r)

    def add(figure: str, target: str, value: float | None, limit: float, text: str = "") -> None:
        shown = text or ("—" if value is None else f"{value:.2f}× ninja")
        rows.append(f"| {figure} | {target} | {shown} | "
                    f"{_verdict(None if value is None else value <= limit)} |")

    for n in (1000, 10000):
        for shape in ("wide", "diamond-layers"):
            add(f"cold, {shape}, {n:,}", "≤ 1.2× ninja", ratio(shape, n, "dagrun", "cold"), 1.2)
            mk = ratio(shape, n, "make", "cold")
            me = ratio(shape, n, "dagrun", "cold")
            if mk is not None and me is not None:
                rows.append(f"| (stretch) cold, {shape}, {n:,} | ≤ make ({mk:.2f}× ninja) "
                            f"| {me:.2f}× ninja | {_verdict(me <= mk)} |")
    for n, limit in ((10000, 1.2), (1000, 2.0)):
        for shape in ("wide", "diamond-layers"):
            add(f"no-op, {shape}, {n:,}", f"≤ {limit}× ninja",
                ratio(shape, n, "dagrun", "noop"), limit)
    for shape in ("wide", "diamond-layers"):
        add(f"incremental, {shape}, 10,000", "≤ 1.3× ninja",
            ratio(shape, 10000, "dagrun", "incremental"), 1.3)
    for peer, cold_x, noop_x in (("doit", 2.0, 10.0), ("snakemake", 10.0, 10.0)):
        for n in (1000, 10000):
            for shape in ("wide", "diamond-layers"):
                for figure, want in (("cold", cold_x), ("noop", noop_x)):
                    mine = _fig(results, shape, n, "dagrun", figure).get("median")
                    theirs = _fig(results, shape, n, peer, figure).get("median")
                    if mine is None or theirs is None:
                        continue
                    x = theirs / mine
                    rows.append(f"| vs {peer}, {figure}, {shape}, {n:,} | ≥ {want:.0f}× faster "
                                f"| {x:.1f}× faster | {_verdict(x >= want)} |")
    for shape in ("wide", "diamond-layers"):
        mine = _fig(results, shape, 10000, "dagrun", "rss_kb").get("median")
        ninja = _fig(results, shape, 10000, "ninja", "rss_kb").get("median")
        if mine and ninja:
            x = mine / ninja
            rows.append(f"| peak RSS (cold), {shape}, 10,000 | ≤ 4× ninja "
                        f"| {mine / 1024:.1f} MB = {x:.1f}× ninja ({ninja / 1024:.1f} MB) "
                        f"| {_verdict(x <= 4)} |")
    series = results.get("series") or []
    if len(series) >= 2:
        per = ", ".join(f"{r['noop']['median'] / r['n'] * 1e6:.1f}" for r in series)
        plan = ", ".join(f"{r['plan']['median'] / r['n'] * 1e6:.0f}" for r in series)
        first, last = series[0], series[-1]
        grow_noop = last["noop"]["median"] / first["noop"]["median"]
        grow_plan = last["plan"]["median"] / first["plan"]["median"]
        size = last["n"] / first["n"]
        sizes = " → ".join(f"{r['n']:,}" for r in series)
        rows.append(f"| no-op, {sizes} | linear "
                    f"| µs per task: {per} (×{grow_noop:.0f} for ×{size:.0f} tasks) "
                    f"| {_verdict(grow_noop <= size * 1.2)} |")
        rows.append(f"| plan (`-n`, cold), same sizes | linear | µs per task: {plan} "
                    f"(×{grow_plan:.0f}) | {_verdict(grow_plan <= size * 1.2)} |")
    sched = results.get("sched")
    if sched:
        m = sched["modes"]
        gain = m["fifo"]["median"] / m["critical-path"]["median"]
        rows.append(f"| scheduling demo | critical path beats FIFO | {gain:.2f}× faster than FIFO, "
                    f"{m['unweighted']['median'] / m['critical-path']['median']:.2f}× than "
                    f"unweighted | {_verdict(gain > 1)} |")
    return "\n".join(rows) + "\n"


def targets_round2(results: dict[str, Any]) -> str:
    """Issue 12's targets (the edit-rebuild loop, clean rebuilds, memory) against this run."""
    rows = ["| figure | target | measured | |", "|---|---|---|---|"]

    def add(figure: str, fig: str, n: int, shape: str, limit: float) -> None:
        r = _fig(results, shape, n, "dagrun", fig).get("ratio_to_ninja")
        mine = _fig(results, shape, n, "dagrun", fig).get("median")
        ninja = _fig(results, shape, n, "ninja", fig).get("median")
        if r is None or mine is None or ninja is None:
            return
        shown = f"{r:.2f}× ninja ({_short(mine)} vs {_short(ninja)})"
        rows.append(f"| {figure}, {shape}, {n:,} | ≤ {limit}× ninja | {shown} "
                    f"| {_verdict(r <= limit)} |")

    shapes = ("wide", "diamond-layers")
    for n, limit in ((1000, 3.0), (10000, 1.3), (100000, 1.0)):
        for shape in shapes:
            add("incremental", "incremental", n, shape, limit)
    for n in (1000, 10000):
        for shape in shapes:
            add("cold after `rm -rf out .dagrun`", "cold_rm", n, shape, 1.2)
    for n, limit in ((1000, 2.5), (10000, 1.0), (100000, 1.0)):
        for shape in shapes:
            add("no-op", "noop", n, shape, limit)
    for shape in shapes:
        mine = _fig(results, shape, 10000, "dagrun", "rss_kb").get("median")
        ninja = _fig(results, shape, 10000, "ninja", "rss_kb").get("median")
        if mine and ninja:
            x = mine / ninja
            rows.append(f"| peak RSS (cold), {shape}, 10,000 | ≤ 3× ninja "
                        f"| {mine / 1024:.1f} MB = {x:.1f}× ninja ({ninja / 1024:.1f} MB) "
                        f"| {_verdict(x <= 3)} |")
    for w in (results.get("watch") or {}).get("rows") or []:
        d, own = w["debounce_ms"], w["median"] - w["debounce_ms"]
        rows.append(f"| `dagrun watch`: save → task start, {w['tasks']:,} task(s), "
                    f"--debounce {d} | ≤ {d} + 5 ms | {w['median']:.1f} ms ({own:+.1f} ms) "
                    f"| {_verdict(own <= 5)} |")
    stream = (results.get("stream") or {}).get("rows") or []
    if len(stream) >= 3:  # silent, some, a lot: the growth from "some" to "a lot" must be ~0
        silent, some, big = stream[0], stream[-2], stream[-1]
        grew = (big["rss_kb"]["median"] - some["rss_kb"]["median"]) / 1024
        mb = [f"{r['rss_kb']['median'] / 1024:.1f}" for r in (silent, some, big)]
        rows.append(f"| peak RSS, a task printing {some['bytes'] / 1e6:,.0f} MB → "
                    f"{big['bytes'] / 1e6:,.0f} MB | flat (≤ +1 MB) | {mb[1]} → {mb[2]} MB "
                    f"({grew:+.1f} MB; a silent task: {mb[0]} MB) | {_verdict(grew <= 1)} |")
    return "\n".join(rows) + "\n"


def report(results: dict[str, Any]) -> str:
    return (markdown(results) + "\n### Targets of issue 12 (this run)\n\n"
            + targets_round2(results) + "\n### Targets of issue 5 (this run)\n\n"
            + targets(results))


def write_results_md(path: str, text: str) -> None:
    old = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        new = head + BEGIN + "\n" + text + "\n" + END + tail
    else:
        new = old + f"\n{BEGIN}\n{text}\n{END}\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="N=50, one repetition, no 100k series")
    ap.add_argument("--setup", action="store_true", help="create the venvs, then exit")
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--shapes", default="wide,diamond-layers")
    ap.add_argument("--tools", default="dagrun,ninja,make,doit,snakemake,spawn,spawn-sh")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--noops", type=int, default=3, help="no-op builds per repetition")
    ap.add_argument("--series", default="1000,10000,100000",
                    help="sizes for dagrun alone ('' = none)")
    ap.add_argument("--series-cold", action="store_true",
                    help="repeat the series' cold builds (default: one each)")
    ap.add_argument("--no-sched", action="store_true")
    ap.add_argument("--big", action="store_true",
                    help="also wide N=100,000 with dagrun and ninja (cold, no-op, incremental; "
                    "~10 min)")
    ap.add_argument("--stream", default="0,200000000,2000000000",
                    help="bytes printed by one task, for the RSS figure ('' = none)")
    ap.add_argument("--watch", default="1,10000",
                    help="task counts for the watch latency ('' = none)")
    ap.add_argument("--no-install", action="store_true", help="use bench/.venv/dagrun as it is")
    ap.add_argument("--server", action="store_true",
                    help="only the build server against ninja (bench/server.py; --sizes, --reps)")
    ap.add_argument("--work", default=os.path.join(HERE, "work"), help="where builds are generated")
    ap.add_argument("--keep-work", action="store_true", help="keep the generated builds")
    ap.add_argument("--report-only", metavar="JSON", help="only print (and --results-md) a report")
    ap.add_argument("--json", help="write the results as JSON here")
    ap.add_argument("--results-md", help="replace the generated part of this markdown file")
    a = ap.parse_args(argv)

    def say(msg: str) -> None:
        print(msg, flush=True)

    if a.setup:
        setup(say)
        return 0
    if a.report_only:
        with open(a.report_only) as f:
            loaded: dict[str, Any] = json.load(f)
        text = report(loaded)
        if a.results_md:
            write_results_md(a.results_md, text)
        say(text)
        return 0
    if a.server:  # bench/server.py (which imports this file): the server beside ninja
        words = ["--sizes", *a.sizes.split(","), "--reps", str(max(a.reps, 10))]
        words += ["--no-install"] * a.no_install
        return subprocess.run([sys.executable, os.path.join(HERE, "server.py"), *words]).returncode
    if a.smoke:
        a.sizes, a.reps, a.noops, a.series = "50", 1, 1, "50,100"
        a.stream, a.watch = "0,2000000,4000000", "1"
    elif not a.no_install:
        install_dagrun(say)
    started = time.perf_counter()
    shutil.rmtree(a.work, ignore_errors=True)  # a crashed run's leftovers
    os.makedirs(a.work)
    tools, skipped = find_tools(a.tools.split(","), a.smoke)
    for name, why in skipped.items():
        say(f"{name}: skipped, {why}")
    dagrun = next(t.argv[:-2] for t in tools if t.name == "dagrun")
    results: dict[str, Any] = {
        "command": "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(), "versions": {t.name: t.version for t in tools},
        "skipped": skipped, "floor": interpreter_floor(dagrun), "cases": [],
    }
    errors = 0
    cap_skips: dict[str, str] = {}
    for n in [int(x) for x in a.sizes.split(",") if x]:
        for shape in a.shapes.split(","):
            say(f"{shape} N={n}")
            case = measure_case(shape, n, tools, a.reps, a.noops, a.work, cap_skips, say)
            errors += len(case.errors)
            for e in case.errors:
                say(f"  ERROR {e}")
            results["cases"].append({
                "shape": shape, "n": n, "reps": a.reps, "skipped": case.skipped,
                "errors": case.errors,
                "figures": {t: {f: s.summary() for f, s in figs.items()}
                            for t, figs in case.figures.items()},
            })
    series = [int(x) for x in a.series.split(",") if x]
    if series:
        say("dagrun alone: growth")
        results["series"] = measure_series(series, dagrun + ["build", f"-j{JOBS}"], a.work,
                                           1 if a.smoke else 3, a.series_cold or a.smoke, say)
    if a.big:
        tools_big = [t for t in tools if t.name in ("dagrun", "ninja")]
        say("wide N=100000 (dagrun, ninja; one repetition)")
        # a 100k cold build takes minutes on 2 cores: the 120 s cap is for the peers
        case = measure_case("wide", 100000, tools_big, 1, 1, a.work, {}, say, cap=1800.0)
        errors += len(case.errors)
        results["cases"].append({
            "shape": "wide", "n": 100000, "reps": 1, "skipped": case.skipped,
            "errors": case.errors,
            "figures": {t: {f: s.summary() for f, s in figs.items()}
                        for t, figs in case.figures.items()},
        })
    stream = [int(x) for x in a.stream.split(",") if x]
    if stream:
        say("dagrun alone: a task printing to stdout")
        results["stream"] = measure_stream(dagrun + ["build", f"-j{JOBS}"], a.work, stream,
                                           1 if a.smoke else 3, say)
    watch = [int(x) for x in a.watch.split(",") if x]
    if watch:
        say("dagrun alone: watch latency")
        results["watch"] = measure_watch(dagrun, watch, 3 if a.smoke else 15, say)
    if not a.no_sched:
        say("scheduling demo")
        results["sched"] = measure_sched(dagrun + ["build", f"-j{JOBS}"], a.work,
                                         1 if a.smoke else 3, a.smoke, say)
    results["machine"]["load_after"] = os.getloadavg()
    results["elapsed_s"] = time.perf_counter() - started
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    text = report(results)
    if a.results_md:
        write_results_md(a.results_md, text)
    say(text)
    if not a.keep_work:
        say(f"removing {a.work} ...")
        shutil.rmtree(a.work, ignore_errors=True)  # only now: see measure_case
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
