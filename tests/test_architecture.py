"""The import graph keeps its shape: no cycles, and no module imports one from a layer above it.

Every module of dagrun/ is parsed with ``ast``; every ``import`` and ``from ... import``
of a dagrun module counts, at any depth (an import inside a function is what hid the
cycles of issue 21), with relative imports resolved.  Not imports: those under
``if TYPE_CHECKING:``, third-party and standard modules, and names loaded through
``importlib`` (the executor registry, ``dagrun.__getattr__``).  The layers come from the
table in docs/architecture.md, so the document cannot drift from the code.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dagrun"
TABLE = ROOT / "docs" / "architecture.md"

# known breaches, each named with its reason and its way out; empty since the redesign (issue 21)
ALLOWED_CYCLES: set[frozenset[str]] = set()
ALLOWED_UPWARD: set[tuple[str, str]] = set()


class Import(NamedTuple):
    source: str  # dagrun/x.py
    target: str  # dagrun/y.py
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _modules() -> dict[str, str]:
    """Every module of the package: dotted name -> its file, relative to the repository."""
    return {
        _module_name(p): p.relative_to(ROOT).as_posix() for p in sorted(PACKAGE.rglob("*.py"))
    }


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from`` import names (``from ..x import y`` -> ``dagrun.x``)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dagrun modules one import statement imports (a name imported from a package whose
    module it is not, such as ``from . import __version__``, imports the package)."""
    modules = _modules()
    found = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            name = alias.name
            while name and name not in modules:
                name = name.rpartition(".")[0]
            found.append(name)
    elif isinstance(node, ast.ImportFrom):
        base = _resolve(node, module, is_package)
        for alias in node.names:
            found.append(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return [name for name in found if name in modules and name != module]


def imports_in(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """(imported dagrun module, line) of every import in ``source``, at any depth, but those
    under ``if TYPE_CHECKING:``."""
    found: list[tuple[str, int]] = []

    def visit(nodes: Iterable[ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _type_checking(node):
                visit(node.orelse)
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.extend((t, node.lineno) for t in _targets(node, module, is_package))
            visit(ast.iter_child_nodes(node))

    visit([ast.parse(source)])
    return found


@functools.cache
def _imports() -> tuple[Import, ...]:
    modules = _modules()
    out = []
    for module, path in modules.items():
        text = (ROOT / path).read_text()
        for target, line in imports_in(text, module, path.endswith("__init__.py")):
            out.append(Import(path, modules[target], line))
    return tuple(out)


@functools.cache
def _layers() -> dict[str, int]:
    """docs/architecture.md's table of files: each row ``| `dagrun/x.py` | 3 | concept |``."""
    layers: dict[str, int] = {}
    for row in re.finditer(r"^\|\s*`(dagrun/[\w/]+\.py)`\s*\|\s*(\d+)\s*\|", TABLE.read_text(),
                           re.M):
        path, layer = row.group(1), int(row.group(2))
        assert path not in layers, f"docs/architecture.md lists {path} twice"
        layers[path] = layer
    return layers


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {p: set() for p in _modules().values()}
    for imp in _imports():
        edges[imp.source].add(imp.target)
    return edges


def _reach(edges: dict[str, set[str]], start: str) -> set[str]:
    """Every module that ``start`` imports, directly or not."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in edges[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def _cycles() -> list[frozenset[str]]:
    """The groups of modules that import each other, directly or not (strongly connected
    components of more than one module; ~80 modules: reachability from each is cheap)."""
    edges = _edges()
    reach = {module: _reach(edges, module) for module in edges}
    found: set[frozenset[str]] = set()
    for module, reached in reach.items():
        if module in reached:
            found.add(frozenset({module} | {m for m in reached if module in reach[m]}))
    return sorted(found, key=sorted)


def _cycle_path(component: frozenset[str]) -> str:
    """One loop through ``component``, each file with the line of its import of the next:
    ``dagrun/a.py (line 3) -> dagrun/b.py (line 7) -> dagrun/a.py``."""
    first: dict[tuple[str, str], int] = {}
    for imp in _imports():
        if imp.source in component and imp.target in component:
            first.setdefault((imp.source, imp.target), imp.line)
    start = min(component)
    paths = {start: [start]}
    todo = [start]
    while todo:  # breadth first: the shortest loop back to start
        node = todo.pop(0)
        for (source, target), _ in sorted(first.items()):
            if source != node:
                continue
            if target == start:
                loop = [*paths[node], start]
                pairs = zip(loop[:-1], loop[1:], strict=True)
                steps = [f"{a} (line {first[(a, b)]})" for a, b in pairs]
                return " -> ".join([*steps, start])
            if target not in paths:
                paths[target] = [*paths[node], target]
                todo.append(target)
    return " <-> ".join(sorted(component))


def _upward() -> list[Import]:
    layers = _layers()
    return [
        imp for imp in _imports()
        if imp.source in layers and imp.target in layers and layers[imp.target] > layers[imp.source]
    ]


# ---------------------------------------------------------------- the rules (slow: the first
# to run parses every module, ~0.3 s; the others reuse it)


@pytest.mark.slow
def test_every_module_is_in_the_layering_table() -> None:
    layers = _layers()
    modules = set(_modules().values())
    missing = [
        f"{p} is not in the layering table of docs/architecture.md: add a row "
        f"| `{p}` | LAYER | its concept |"
        for p in sorted(modules - set(layers))
    ]
    gone = [
        f"docs/architecture.md lists {p}, which does not exist: remove its row"
        for p in sorted(set(layers) - modules)
    ]
    assert not missing + gone, "\n".join(missing + gone)


@pytest.mark.slow
def test_no_import_cycles() -> None:
    cycles = [c for c in _cycles() if c not in ALLOWED_CYCLES]
    assert not cycles, "import cycles:\n" + "\n".join(_cycle_path(c) for c in cycles)


@pytest.mark.slow
def test_no_module_imports_one_from_a_layer_above() -> None:
    layers = _layers()
    found = [
        f"{i.source} (layer {layers[i.source]}) imports {i.target} (layer {layers[i.target]}) "
        f"at line {i.line}"
        for i in _upward() if (i.source, i.target) not in ALLOWED_UPWARD
    ]
    assert not found, "imports from a layer above:\n" + "\n".join(found)


@pytest.mark.slow
def test_the_allowlists_hold_only_what_is_still_there() -> None:
    cycles = _cycles()
    upward = {(i.source, i.target) for i in _upward()}
    stale = [
        "no longer a cycle: " + " <-> ".join(sorted(allowed))
        for allowed in ALLOWED_CYCLES if not any(allowed <= c for c in cycles)
    ] + [f"no longer an import from a layer above: {a} -> {b}" for a, b in ALLOWED_UPWARD - upward]
    assert not stale, "remove from tests/test_architecture.py's allowlists:\n" + "\n".join(stale)


# ---------------------------------------------------------------- the reader itself


LONGEST_FILE = 700  # lines
LONG_FUNCTION = 40  # lines: a function longer than this reads as several steps
LONG_FUNCTIONS_ALLOWED = 8


def _long_functions() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > LONG_FUNCTION:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    return found


@pytest.mark.slow
def test_no_file_is_longer_than_700_lines_and_few_functions_longer_than_40() -> None:
    """Issue 21's sizes, kept: a file over 700 lines holds more than one concept, and more than
    eight functions over 40 lines mean steps were not named."""
    big = [f"{p.relative_to(ROOT)} ({n} lines)" for p in sorted(PACKAGE.rglob("*.py"))
           if (n := len(p.read_text().splitlines())) > LONGEST_FILE]
    assert not big, "files over 700 lines: split them by concept:\n" + "\n".join(big)
    long = _long_functions()
    assert len(long) <= LONG_FUNCTIONS_ALLOWED, "functions over 40 lines:\n" + "\n".join(long)


def test_the_reader_counts_imports_inside_functions_and_resolves_relative_ones() -> None:
    source = (
        "from __future__ import annotations\n"
        "import os\n"
        "from . import errors, __version__\n"
        "from .executors import local\n"
        "TYPE_CHECKING = False\n"
        "if TYPE_CHECKING:\n"
        "    from .session import Session\n"
        "else:\n"
        "    from .clock import Clock\n"
        "def f():\n"
        "    import json\n"
        "    from .graph import BuildGraph\n"
        "    class C:\n"
        "        def g(self):\n"
        "            import dagrun.plan\n"
    )
    assert imports_in(source, "dagrun.cli") == [
        ("dagrun.errors", 3),
        ("dagrun", 3),
        ("dagrun.executors.local", 4),
        ("dagrun.clock", 9),
        ("dagrun.graph", 12),
        ("dagrun.plan", 15),
    ]


def test_the_reader_resolves_imports_inside_a_subpackage() -> None:
    source = "from . import threaded\nfrom .. import errors\nfrom ..cache.store import Store\n"
    expected = [
        ("dagrun.executors.threaded", 1), ("dagrun.errors", 2), ("dagrun.cache.store", 3)
    ]
    assert imports_in(source, "dagrun.executors.ssh") == expected
    assert imports_in("from . import threaded\n", "dagrun.executors", is_package=True) == [
        ("dagrun.executors.threaded", 1)
    ]
