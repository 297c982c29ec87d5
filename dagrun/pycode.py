"""A function task's code: naming its function, checking a ``call``, packing its arguments,
and the code part of its key.

A function task names its function by a target, ``"package.module:qualname"``,
which the pool's workers import (``executors/pyfunc.py``, ``pyworker.py``):
functions are never pickled, so the code the key covers is the code that runs.

The code part of a key is the AST of the function's definition plus, found
through the names it uses, every module-level definition of its module it
depends on (other functions, classes, constants, imports), recursively.  An
edit of the function, or of a helper it calls, changes its key; an edit
elsewhere in the module, a comment or a moved line does not.  Code in other
modules is not followed: list such files in the task's ``inputs``.

Near the bottom of the house: the manifest (which checks a ``call``) and hashing
(which keys it) use this module, and it uses only the digest.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .digest import digest_bytes

if TYPE_CHECKING:  # ast and pickle are imported where used: a build without functions skips them
    import ast

_TARGET = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


# ---------------------------------------------------------------- naming and checking


def target_of(fn: Any) -> tuple[str, str]:
    """(target, code_file) of a function given in code; ValueError if workers cannot import it."""
    if not callable(fn):
        raise ValueError(f"fn must be a function, not {type(fn).__name__}")
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<lambda>" in qualname or "<locals>" in qualname:
        raise ValueError(
            f"fn {qualname or fn!r} must be a function defined at the top level of a module: "
            "workers import it by name (a lambda or a nested function cannot be sent to them)"
        )
    mod = sys.modules.get(module)
    path = getattr(mod, "__file__", None) or ""
    obj: Any = mod
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if obj is not fn and getattr(obj, "__wrapped__", None) is not fn:
        raise ValueError(f"fn {module}.{qualname} is not importable under that name")
    if path and not path.endswith(".py"):
        path = ""
    return f"{module}:{qualname}", os.path.abspath(path) if path else ""


def check_target(target: str, root: str) -> str:
    """The source file of a manifest ``call``; ValueError saying why it cannot be imported.

    Nothing is executed: the module is found on ``[root] + sys.path`` and its
    source parsed, so checking a manifest never runs the user's code.
    """
    if not _TARGET.fullmatch(target):
        raise ValueError(f"call {target!r} must name a function as 'package.module:function'")
    module, _, qualname = target.partition(":")
    origin = _find_module(module, root)
    if origin is None:
        raise ValueError(f"call {target!r}: cannot import '{module}': no module named '{module}'")
    if not origin.endswith(".py"):
        return ""
    first = qualname.split(".")[0]
    top = _names(origin, module)
    if first not in top:
        import difflib

        close = difflib.get_close_matches(first, list(top), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"call {target!r}: module '{module}' has no '{first}'{hint}")
    return origin


def _find_module(module: str, root: str) -> str | None:
    """The file of ``module`` on [root] + sys.path, without importing it (or its parents)."""
    from importlib.machinery import PathFinder

    search: list[str] | None = [root] + [p for p in sys.path if p != root]
    name = ""
    spec = None
    for part in module.split("."):
        name = f"{name}.{part}" if name else part
        spec = PathFinder.find_spec(name, search)
        if spec is None:
            return _find_builtin(module) if "." not in module else None
        search = list(spec.submodule_search_locations or [])
    return spec.origin if spec is not None and spec.origin else None


def _find_builtin(module: str) -> str | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return None if spec is None else "<built-in>"


_NAMES: dict[tuple[str, int, int], list[str]] = {}


def _names(path: str, module: str) -> list[str]:
    """The module's top-level names, parsed once per version of the file (a matrix of 1,000
    calls to one module parses it once)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ValueError(f"cannot import '{module}': {path}: {exc.strerror}") from None
    memo = (path, st.st_mtime_ns, st.st_size)
    names = _NAMES.get(memo)
    if names is None:
        names = _NAMES[memo] = list(_top_level(_parse(path, module)))
    return names


def _parse(path: str, module: str) -> ast.Module:
    import ast

    try:
        with open(path, "rb") as f:
            return ast.parse(f.read(), filename=path)
    except SyntaxError as exc:
        where = f" (line {exc.lineno})" if exc.lineno else ""
        problem = f"cannot import '{module}': syntax error in {path}{where}: {exc.msg}"
        raise ValueError(problem) from None
    except OSError as exc:
        raise ValueError(f"cannot import '{module}': {path}: {exc.strerror}") from None


def pack_args(args: Any, kwargs: Any) -> bytes:
    """The task's own arguments as one blob (hashed into its key); ValueError if unpicklable.

    Sets are pickled with their items sorted: in their own order, which follows
    PYTHONHASHSEED, the blob (and the key) would change from one process to the next.
    (Sets inside other objects' state are not reached: pass such objects as plain values.)
    """
    import pickle

    value = (tuple(args), dict(kwargs))
    try:
        blob = pickle.dumps(value, protocol=4)
    except Exception as exc:  # noqa: BLE001 - pickling raises many kinds
        raise ValueError(f"args/kwargs cannot be pickled: {exc}") from None
    if _SET_OPCODES.search(blob):  # maybe a set (or just such a byte): order them
        try:
            blob = pickle.dumps(_sorted_sets(value), protocol=4)
        except RecursionError:  # a value that holds itself: pickle copes, _sorted_sets not
            pass
    return blob


_SET_OPCODES = re.compile(rb"[\x8f\x91]")  # pickle's EMPTY_SET and FROZENSET


class _SortedSet(tuple[Any, ...]):
    """A set's items in a fixed order; unpickles as the set (or frozenset) itself."""

    kind: type = set

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.kind, (list(self),))


def _sorted_sets(value: Any) -> Any:
    """``value`` with every set inside it (in tuples, lists, dicts) made a _SortedSet; the same
    object when it holds none, so the blob of set-free arguments keeps its bytes."""
    import pickle

    kind = type(value)
    if kind in (set, frozenset):
        items = [_sorted_sets(v) for v in value]
        ordered = _SortedSet(sorted(items, key=lambda v: pickle.dumps(v, protocol=4)))
        ordered.kind = kind
        return ordered
    if kind in (tuple, list):
        items = [_sorted_sets(v) for v in value]
        changed = any(a is not b for a, b in zip(items, value, strict=True))
        return kind(items) if changed else value
    if kind is dict:
        pairs = [(_sorted_sets(k), _sorted_sets(v)) for k, v in value.items()]
        changed = any(k is not k0 or v is not v0
                      for (k, v), (k0, v0) in zip(pairs, value.items(), strict=True))
        return dict(pairs) if changed else value
    return value


# ---------------------------------------------------------------- the code part of a key

_DIGESTS: dict[tuple[str, int, int, str], str] = {}


def code_digest(code_file: str, target: str) -> str:
    """A digest of the function's definition and the module-level definitions it uses."""
    if not code_file:
        return digest_bytes(target.encode())
    try:
        st = os.stat(code_file)
    except OSError:
        return digest_bytes(target.encode(), b"\0missing")
    memo = (code_file, st.st_mtime_ns, st.st_size, target)
    found = _DIGESTS.get(memo)
    if found is None:
        found = _digest_source(code_file, target)
        _DIGESTS[memo] = found
    return found


def _digest_source(code_file: str, target: str) -> str:
    import ast

    try:
        with open(code_file, "rb") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return digest_bytes(target.encode(), b"\0unreadable")
    top = _top_level(tree)
    todo = [target.partition(":")[2].split(".")[0]]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in top.get(name, ()):
            todo.extend(n for n in _free_names(node) if n in top and n not in seen)
    # by name, not in the order found: a set's order follows PYTHONHASHSEED, so it would
    # change from one process to the next (and the key with it)
    parts = [target, *(ast.dump(node) for name in sorted(seen) for node in top.get(name, ()))]
    return digest_bytes("\0".join(parts).encode())


def _free_names(node: ast.AST) -> set[str]:
    """Names ``node`` reads but does not bind itself (parameters, assignments): its globals.

    A parameter named like an upstream task (``def clean(load)``) shadows the
    module's ``load`` function; it must not pull that function's code in.
    """
    import ast

    bound: set[str] = set()
    read: set[str] = set()
    declared: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.arg):
            bound.add(sub.arg)
        elif isinstance(sub, ast.Name):
            (read if isinstance(sub.ctx, ast.Load) else bound).add(sub.id)
        elif isinstance(sub, ast.Global):
            declared.update(sub.names)
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return read
    return read - (bound - declared)


def _top_level(tree: ast.Module) -> dict[str, list[ast.stmt]]:
    """Module-level name -> the statements that define it (also inside top-level if/try)."""
    out: dict[str, list[ast.stmt]] = {}
    for stmt in _statements(tree.body):
        for name in _defined(stmt):
            out.setdefault(name, []).append(stmt)
    return out


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    import ast

    for stmt in body:
        if isinstance(stmt, (ast.If, ast.Try)):
            yield from _statements(stmt.body + stmt.orelse)
            if isinstance(stmt, ast.Try):
                yield from _statements(stmt.finalbody)
                for handler in stmt.handlers:
                    yield from _statements(handler.body)
        else:
            yield stmt


def _defined(stmt: ast.stmt) -> list[str]:
    import ast

    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in stmt.names]
    if isinstance(stmt, ast.Assign):
        return [n.id for t in stmt.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)) and isinstance(stmt.target, ast.Name):
        return [stmt.target.id]
    return []
