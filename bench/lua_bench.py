"""Lua 5.4 built with make, ninja and dagrun: header edits, comment edits, no-ops.

    python bench/lua_bench.py /path/to/lua54 [--rounds 5] [--jobs 2]

LUA54 is a folder with Lua 5.4's .c and .h files (the ``lupa`` sdist on PyPI has
them in third-party/lua54: ``pip download --no-deps --no-binary :all: lupa``).
Lua's sources are copied into three folders under a temporary directory, one per
tool, each with its build file (written by this script): every .c file but
onelua.c compiled with ``gcc -MMD`` (34 objects), liblua.a from all but lua.o,
and the ``lua`` binary. Then, for each scenario, the tools take turns (make,
ninja, dagrun, make, ...), each on its own copy:

- header: a comment appended to lundump.h (included by 4 sources), then a build;
- comment: a comment appended to ltable.c (its object comes out byte-identical);
- no-op: a build with nothing changed.

For each, the objects recompiled (.o files whose mtime changed), whether ``lua``
was relinked, and the wall time (median, min-max over the rounds) are printed.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFLAGS = "-Wall -O2 -std=c99 -DLUA_USE_LINUX -fno-stack-protector -fno-common"
TOOLS = ("make", "ninja", "dagrun")

MAKEFILE = """\
CFLAGS = {cflags}
SRCS = $(filter-out onelua.c,$(wildcard *.c))
OBJS = $(SRCS:.c=.o)
LIB_OBJS = $(filter-out lua.o,$(OBJS))

lua: lua.o liblua.a
\tgcc -o $@ -Wl,-E lua.o liblua.a -lm -ldl

liblua.a: $(LIB_OBJS)
\trm -f $@ && ar rcs $@ $(LIB_OBJS)

%.o: %.c
\tgcc $(CFLAGS) -MMD -MF $*.d -c $< -o $@

-include $(OBJS:.o=.d)
"""

NINJA_HEAD = """\
cflags = {cflags}
rule cc
  command = gcc $cflags -MMD -MF $out.d -c $in -o $out
  depfile = $out.d
  deps = gcc
rule ar
  command = rm -f $out && ar rcs $out $in
rule link
  command = gcc -o $out -Wl,-E $in -lm -ldl
"""

DAGRUN = """\
[vars]
CFLAGS = "{cflags}"

[tasks.cc]
matrix = {{ c = {{ glob = "*.c", exclude = ["onelua.c"] }} }}
cmd = "gcc {{CFLAGS}} -MMD -MF {{c.stem}}.d -c {{c}} -o {{outputs}}"
inputs = ["{{c}}"]
outputs = ["{{c.stem}}.o"]
depfile = "{{c.stem}}.d"
restat = true

[tasks.lib]
cmd = "rm -f {{outputs}} && ar rcs {{outputs}} {{inputs}}"
inputs = ["*.o", "!lua.o"]
outputs = ["liblua.a"]
restat = true

[tasks.lua]
cmd = "gcc -o {{outputs}} -Wl,-E {{inputs}} -lm -ldl"
inputs = ["lua.o", "liblua.a"]
outputs = ["lua"]
"""


def sources(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(".c") and f != "onelua.c")


def write_build_files(work: str) -> None:
    srcs = sources(os.path.join(work, "make"))
    with open(os.path.join(work, "make", "Makefile"), "w") as f:
        f.write(MAKEFILE.format(cflags=CFLAGS))
    lines = [NINJA_HEAD.format(cflags=CFLAGS)]
    objs = [s[:-2] + ".o" for s in srcs]
    lines += [f"build {o}: cc {s}" for s, o in zip(srcs, objs, strict=True)]
    lib = " ".join(o for o in objs if o != "lua.o")
    lines += [f"build liblua.a: ar {lib}", "build lua: link lua.o liblua.a", ""]
    with open(os.path.join(work, "ninja", "build.ninja"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(work, "dagrun", "dagrun.toml"), "w") as f:
        f.write(DAGRUN.format(cflags=CFLAGS))


def command(tool: str, jobs: int) -> list[str]:
    if tool == "make":
        return ["make", "-s", f"-j{jobs}"]
    if tool == "ninja":
        return ["ninja", "-j", str(jobs)]
    return [sys.executable, "-m", "dagrun", "build", "-j", str(jobs), "-q"]


def mtimes(folder: str) -> dict[str, int]:
    return {
        f: os.stat(os.path.join(folder, f)).st_mtime_ns
        for f in os.listdir(folder)
        if f.endswith(".o") or f == "lua"
    }


def build(folder: str, tool: str, jobs: int) -> tuple[float, int, bool]:
    """(wall seconds, objects recompiled, lua relinked)."""
    before = mtimes(folder)
    env = dict(os.environ, PYTHONPATH=ROOT)
    t0 = time.perf_counter()
    subprocess.run(command(tool, jobs), cwd=folder, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = mtimes(folder)
    changed = {f for f in after if before.get(f) != after[f]}
    return wall, len([f for f in changed if f.endswith(".o")]), "lua" in changed


def append(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lua", help="a folder with Lua 5.4's sources")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="lua-bench-")
    for tool in TOOLS:
        os.makedirs(os.path.join(work, tool))
        for f in os.listdir(args.lua):
            if f.endswith((".c", ".h")):
                shutil.copy(os.path.join(args.lua, f), os.path.join(work, tool, f))
    write_build_files(work)
    print(f"{len(sources(os.path.join(work, 'make')))} objects, -j{args.jobs}, in {work}")
    results: dict[tuple[str, str], list[tuple[float, int, bool]]] = {}
    scenarios = {
        "cold": None,
        "header lundump.h": "lundump.h",
        "comment ltable.c": "ltable.c",
        "no-op": "",
    }
    for name, edited in scenarios.items():
        rounds = 1 if edited is None else args.rounds
        for n in range(rounds):
            for tool in TOOLS:
                folder = os.path.join(work, tool)
                if edited:
                    append(os.path.join(folder, edited), f"/* edit {n} */\n")
                results.setdefault((name, tool), []).append(build(folder, tool, args.jobs))
    print("| scenario | tool | objects recompiled | lua relinked | wall (median, min-max) |")
    print("|---|---|---|---|---|")
    for (name, tool), runs in results.items():
        walls = [r[0] for r in runs]
        objs = sorted({r[1] for r in runs})
        relinked = sorted({r[2] for r in runs})
        print(
            f"| {name} | {tool} | {'/'.join(map(str, objs))} | "
            f"{'/'.join('yes' if r else 'no' for r in relinked)} | "
            f"{statistics.median(walls):.3f} s ({min(walls):.3f}-{max(walls):.3f}) |"
        )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
