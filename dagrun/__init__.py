"""dagrun: a declarative build tool with content-hashed keys and a crash-safe completion log.

``import dagrun`` is cheap: the API is imported on first use.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `from typing import ...`: typing costs ~7 ms of a no-op's ~40
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

__all__ = [
    "BuildResult",
    "CycleError",
    "DagrunError",
    "ExecutorError",
    "Graph",
    "GraphError",
    "Interrupted",
    "LogError",
    "ManifestError",
    "UnknownTargetError",
    "__version__",
    "load",
]

_LAZY = {
    "Graph": "api",
    "load": "api",
    "BuildResult": "scheduler",
    "CycleError": "errors",
    "DagrunError": "errors",
    "ExecutorError": "errors",
    "GraphError": "errors",
    "Interrupted": "errors",
    "LogError": "errors",
    "ManifestError": "errors",
    "UnknownTargetError": "errors",
}

if TYPE_CHECKING:
    from .api import Graph, load
    from .errors import (
        CycleError,
        DagrunError,
        ExecutorError,
        GraphError,
        Interrupted,
        LogError,
        ManifestError,
        UnknownTargetError,
    )
    from .scheduler import BuildResult


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dagrun' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
