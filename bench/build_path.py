#!/usr/bin/env python3
"""The path of one ``dagrun build``: the files it enters from the command line to the first
spawned process and on to the log write (the success record), and how often a call runs back
up the import graph.

    python bench/build_path.py [--json]

A one-task project is built in a temporary folder, in this process (``dagrun.entry.main``),
with a profiler on every thread.  Each call into a dagrun file is one step; consecutive steps
in the same file are one.  ``os.posix_spawn`` (the first task) and the first ``os.write`` to
the completion log mark the two legs.

Floors come from the package's own imports (every ``import`` of a dagrun module, at any
depth of a module, ``if TYPE_CHECKING:`` blocks aside): a file with no dagrun imports is
floor 1, any other is one above the highest file it imports; files in an import cycle share
a floor.  A call *runs back up* when it goes from a file into one on a higher floor, i.e.
into code that the caller's file does not import (a callback, a hook, a late import).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "dagrun")
sys.path.insert(0, ROOT)  # this tree's dagrun, whatever is installed


def modules() -> dict[str, str]:
    """{dotted name: path} of every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[rel.removesuffix(".__init__")] = path
    return found


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(test) if test else False


def _imports(tree: ast.AST, me: str, is_package: bool) -> Iterator[str]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking(node):
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = me.split(".")[: len(me.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parts + ([base] if base else []))
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        targets = set(_imports(tree, name, path.endswith("__init__.py")))
        graph[mods[name]] = {mods[t] for t in targets if t in mods and t != name}
    return graph


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Floor of each file: cycles share one (Tarjan's components, then longest path)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    comp: dict[str, int] = {}
    stack: list[str] = []
    comps: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w not in comp and w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                comp[w] = len(comps)
                members.append(w)
                if w == v:
                    break
            comps.append(members)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            strong(v)
    floor: dict[int, int] = {}
    for c, members in enumerate(comps):  # Tarjan emits a component after all it reaches
        below = [floor[comp[w]] for v in members for w in graph[v] if comp[w] != c]
        floor[c] = 1 + max(below, default=0)
    return {v: floor[comp[v]] for v in graph}


def trace_build() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(steps, marks): each step (caller file, callee file); marks (what, after step #)."""
    steps: list[tuple[str, str]] = []
    marks: list[tuple[str, str]] = []
    lock = threading.Lock()

    def dagrun_file(frame: object) -> str | None:
        while frame is not None:
            f = frame.f_code.co_filename  # type: ignore[attr-defined]
            if f.startswith(PACKAGE):
                return f
            frame = frame.f_back  # type: ignore[attr-defined]
        return None

    def profile(frame, event, _arg):  # noqa: ANN001, ANN202
        if event != "call" or not frame.f_code.co_filename.startswith(PACKAGE):
            return
        callee = frame.f_code.co_filename
        caller = dagrun_file(frame.f_back) or "<command line>"
        with lock:
            if not steps or steps[-1][1] != callee:
                steps.append((caller, callee))

    spawn, spawnp, write = os.posix_spawn, os.posix_spawnp, os.write

    def mark(what: str) -> None:
        with lock:
            if what not in {m[0] for m in marks}:
                marks.append((what, str(len(steps))))

    def traced_spawn(*a, **k):  # noqa: ANN002, ANN003, ANN202
        mark("first spawn")
        return spawn(*a, **k)

    def traced_spawnp(*a, **k):  # noqa: ANN002, ANN003, ANN202
        mark("first spawn")
        return spawnp(*a, **k)

    def traced_write(fd, data):  # noqa: ANN001, ANN202
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        started = any(m[0] == "first spawn" for m in marks)  # not the start record before it
        if started and os.sep + ".dagrun" + os.sep in target and "log" in os.path.basename(target):
            mark("log write")
        return write(fd, data)

    from dagrun.entry import main  # noqa: PLC0415  (the trace starts at the command line)

    with tempfile.TemporaryDirectory() as project:
        with open(os.path.join(project, "dagrun.toml"), "w") as f:
            f.write('[tasks.hello]\ncmd = "echo hi > out.txt"\noutputs = ["out.txt"]\n')
        old = os.getcwd()
        os.chdir(project)
        os.posix_spawn, os.posix_spawnp, os.write = traced_spawn, traced_spawnp, traced_write
        threading.setprofile(profile)
        sys.setprofile(profile)
        try:
            code = main(["build", "-q"])
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]
            os.posix_spawn, os.posix_spawnp, os.write = spawn, spawnp, write
            os.chdir(old)
        if code != 0:
            raise SystemExit(f"the build failed ({code})")
    return steps, marks


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    graph = import_graph()
    floor = floors(graph)
    steps, marks = trace_build()
    ends = {what: int(at) for what, at in marks}
    legs = [("command line to first spawn", 0, ends.get("first spawn", len(steps))),
            ("first spawn to log write", ends.get("first spawn", 0),
             ends.get("log write", len(steps)))]
    rel = lambda p: os.path.relpath(p, ROOT)  # noqa: E731
    report = {"files": len(graph), "floors": max(floor.values()),
              "cycles": sorted({tuple(sorted(rel(v) for v in graph if floor[v] == floor[u]
                                             and u in _reach(graph, v) and v in _reach(graph, u)))
                                for u in graph if u in _reach(graph, u)}),
              "legs": []}
    for name, start, end in legs:
        leg = steps[start:end]
        files: list[str] = []
        for _, callee in leg:
            if rel(callee) not in files:
                files.append(rel(callee))
        up = [(rel(a), rel(b)) for a, b in leg
              if a in floor and floor[b] > floor[a]]
        report["legs"].append({"leg": name, "steps": len(leg), "files entered": files,
                               "moves back up": len(up), "back up": sorted(set(up))})
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{report['files']} files, {report['floors']} floors, "
          f"{len(report['cycles'])} import cycles")
    for c in report["cycles"]:
        print("  cycle:", ", ".join(c))
    for leg in report["legs"]:
        print(f"\n{leg['leg']}: {leg['steps']} steps, {len(leg['files entered'])} files, "
              f"{leg['moves back up']} moves back up")
        print("  files, in the order first entered:", " → ".join(leg["files entered"]))
        for a, b in leg["back up"]:
            print(f"  back up: {a} (floor {floor[os.path.join(ROOT, a)]}) → "
                  f"{b} (floor {floor[os.path.join(ROOT, b)]})")
    return 0


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    """Files reachable from ``start`` by one import or more."""
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        v = todo.pop()
        if v not in seen:
            seen.add(v)
            todo.extend(graph[v])
    return seen


if __name__ == "__main__":
    raise SystemExit(main())
