"""The shared cache ([cache]): a cold build from a warm store against a cold build.

    python bench/shared_cache.py --dagrun /tmp/venv/bin/dagrun [--tasks 10000] [--rounds 3]
                                 [--lua /tmp/lupa/lupa-2.8/third-party/lua54]

Run it with dagrun installed (not editable) in a separate venv.  For each project, each
round, in fresh copies (no ``.dagrun/``, no outputs):

- cold: a build without a ``[cache]``;
- cold + upload: the same with ``[cache]`` on an empty store (what the uploads add);
- from warm: a build in another fresh copy, every task in the store (what a second CI
  runner pays).

Projects: ``bench/gen.py``'s wide build of ``--tasks`` tasks (``cp`` each) with a folder
store; with ``--lua``, Lua 5.4 (34 objects, ``gcc -O2 -MMD``, bench/lua_bench.py's manifest)
with an nginx store (tests/nginx.py: a real nginx with WebDAV PUT on 127.0.0.1).
Prints a Markdown table: median (min-max) wall seconds and the ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))


def run(dagrun: str, folder: Path, jobs: int, restores: bool = False) -> tuple[float, float]:
    """The build's wall time and CPU time (dagrun's and its tasks', user + system: steadier
    than wall on a shared machine); ``restores``: it must run no task (all from the store)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGRUN_")}
    env.update(DAGRUN_SERVER="0", CI="1")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([dagrun, "build", "-q", "-j", str(jobs)], cwd=folder, env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise SystemExit(f"build failed in {folder}:\n{text}")
    if restores and not text.startswith("dagrun: 0 succeeded, "):
        raise SystemExit(f"the build from a warm store ran tasks:\n{text}")
    return wall, usage.ru_utime + usage.ru_stime


def copy(template: Path, to: Path, cache: str | None) -> Path:
    shutil.copytree(template, to)
    if cache is not None:
        with open(to / "dagrun.toml", "a") as f:
            f.write(f'\n[cache]\nurl = "{cache}"\n')
    return to


def rounds(template: Path, work: Path, dagrun: str, jobs: int, n: int,
           fresh_store: Callable[[int], str]) -> dict[str, list[tuple[float, float]]]:
    times: dict[str, list[tuple[float, float]]] = {"cold": [], "cold + upload": [],
                                                   "from warm": []}
    for r in range(n):
        store = fresh_store(r)
        times["cold"].append(run(dagrun, copy(template, work / f"cold{r}", None), jobs))
        times["cold + upload"].append(run(dagrun, copy(template, work / f"up{r}", store), jobs))
        warm = copy(template, work / f"warm{r}", store)
        times["from warm"].append(run(dagrun, warm, jobs, restores=True))
        for name in (f"cold{r}", f"up{r}", f"warm{r}"):
            shutil.rmtree(work / name)
    return times


def table(project: str, times: dict[str, list[tuple[float, float]]]) -> list[str]:
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    rows = []
    for k, v in times.items():
        walls = [w for w, _ in v]
        ratio = "" if k == "cold" else (
            f"{wall[k] / wall['cold']:.2f}x | {cpu[k] / cpu['cold']:.2f}x")
        rows.append(f"| {project} | {k} | {wall[k]:.3f} s ({min(walls):.3f}-{max(walls):.3f}) "
                    f"| {cpu[k]:.2f} s | {ratio or ' | '} |")
    return rows


def gen_project(work: Path, tasks: int) -> Path:
    out = work / "gen-template"
    subprocess.run([sys.executable, str(HERE / "gen.py"), "--tasks", str(tasks), "--shape",
                    "wide", "--out", str(out), "--dagrun-only"], check=True,
                   capture_output=True)
    return out


def lua_project(work: Path, lua: Path) -> Path:
    import lua_bench

    out = work / "lua-template"
    shutil.copytree(lua, out)
    with open(out / "dagrun.toml", "w") as f:
        f.write(lua_bench.DAGRUN.format(cflags=lua_bench.CFLAGS))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dagrun", required=True, help="the dagrun command of a regular install")
    ap.add_argument("--tasks", type=int, default=10_000, help="0: the Lua build only")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--lua", type=Path, help="Lua 5.4's sources (the lupa sdist's lua54)")
    args = ap.parse_args()
    rows = ["| project | build | wall, median (min-max) | CPU, median | wall ratio | CPU ratio |",
            "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="dagrun-bench-cache-") as tmp:
        work = Path(tmp)
        if args.tasks > 0:  # 0: Lua only
            template = gen_project(work, args.tasks)
            stores = work / "stores"
            times = rounds(template, work, args.dagrun, args.jobs, args.rounds,
                           lambda r: f"file://{stores}/gen{r}")
            rows += table(f"{args.tasks} tasks, folder store", times)
        if args.lua is not None:
            from nginx import start_nginx

            server = start_nginx(work / "nginx")
            try:
                template = lua_project(work, args.lua)
                times = rounds(template, work, args.dagrun, args.jobs, args.rounds,
                               lambda r: server.url())
                rows += table("Lua 5.4 (34 objects), nginx store", times)
            finally:
                server.stop()
    print("\n".join(rows))


if __name__ == "__main__":
    main()
