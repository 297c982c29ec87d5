"""The Python API: build a graph in code, or load a dagrun.toml, then build it.

    import dagrun
    g = dagrun.Graph(jobs=4)
    a = g.add_task("gen", cmd="python gen.py", outputs=["t.h"])
    b = g.add_task("cc", cmd="cc -c main.c", inputs=["t.h", "main.c"], deps=[a])
    result = g.build(targets=["cc"])          # result.failed, result.order, ...

The CLI is a thin layer over this module: anything a manifest can say,
``add_task`` and the Graph settings can say too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any

from .errors import ManifestError
from .manifest import Manifest, build_manifest
from .scheduler import BuildResult, Reporter
from .session import Prepared, Session


class TaskRef(str):
    """A task's name, returned by ``add_task`` so it can be passed in ``deps``."""

    __slots__ = ()


class Graph:
    """Tasks and settings; ``build`` runs them with state kept in ``root/.dagrun``."""

    def __init__(
        self,
        *,
        jobs: int | None = None,
        root: str | os.PathLike[str] = ".",
        env: Mapping[str, str] | None = None,
        failures_allowed: int = 1,
        default: Iterable[str] = (),
        key_env: Iterable[str] = (),
        resources: Mapping[str, int] | None = None,
        executors: Mapping[str, Mapping[str, Any]] | None = None,
        cache: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = os.path.abspath(root)
        self.settings: dict[str, Any] = {"failures_allowed": failures_allowed}
        if jobs is not None:
            self.settings["jobs"] = jobs
        if default:
            self.settings["default"] = list(default)
        if key_env:
            self.settings["key_env"] = list(key_env)
        if resources:
            self.settings["resources"] = dict(resources)
        self.env = dict(env or {})
        self.executors = {k: dict(v) for k, v in (executors or {}).items()}
        self.cache = dict(cache) if cache is not None else None  # [cache]: the shared cache
        self.tasks: dict[str, dict[str, Any]] = {}
        self._path: str | None = None
        self._loaded: Manifest | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Graph:
        from .manifest import load as load_manifest

        m = load_manifest(path)  # validates now, so errors surface at load time
        g = cls(root=m.root)
        g._path = os.path.abspath(path)
        g._loaded = m
        return g

    def add_task(
        self,
        name: str,
        cmd: str | None = None,
        *,
        fn: Callable[..., Any] | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        inputs: Iterable[str] = (),
        outputs: Iterable[str] = (),
        deps: Iterable[str] = (),
        **options: Any,
    ) -> TaskRef:
        """Add a task; ``options`` are the manifest's other task keys (display, env, cwd, ...).

        A task runs either ``cmd`` (a shell command) or ``fn`` (a module-level
        Python function, called with ``args``, ``kwargs`` and its function
        dependencies' results; see docs/python-tasks.md).
        """
        if fn is not None:
            if cmd is not None:
                raise ManifestError("give either cmd or fn, not both", source="<api>", task=name)
            options = {**options, "call": fn, "args": list(args), "kwargs": dict(kwargs or {})}
        elif cmd is None:
            raise ManifestError("give cmd (a shell command) or fn (a function)", source="<api>",
                                task=name)
        self._check_new(name)
        body: dict[str, Any] = {} if cmd is None else {"cmd": cmd}
        for key, value in (("inputs", inputs), ("outputs", outputs), ("deps", deps)):
            if value:
                body[key] = [str(v) for v in value]
        for key, value in options.items():
            if value is not None:
                body[key] = list(value) if isinstance(value, tuple) and key != "args" else value
        self.tasks[name] = body
        return TaskRef(name)

    def _check_new(self, name: str) -> None:
        """A task may be added: the graph is not a file's, and no task has ``name`` yet."""
        if self._path is not None:
            raise ManifestError(
                "tasks cannot be added to a graph loaded from a file", source=self._path
            )
        if name in self.tasks:
            raise ManifestError("two tasks have this name", source="<api>", task=name)

    def task(
        self, name: str | None = None, **options: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of ``add_task(name, fn=f, ...)``; the name defaults to the function's.

            @g.task(deps=["load"])
            def clean(load): ...
        """

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add_task(name or fn.__name__, fn=fn, **options)
            return fn

        return add

    @property
    def manifest(self) -> Manifest:
        if self._loaded is not None:
            return self._loaded
        return build_manifest(
            "<api>", self.root, self.settings, self.env, self.tasks, self.executors, self.cache
        )

    def session(self, **kwargs: Any) -> Session:
        if self._path is not None:
            return Session(manifest_path=self._path, **kwargs)
        return Session(manifest=self.manifest, **kwargs)

    def build(
        self,
        targets: Iterable[str] | None = None,
        *,
        jobs: int | None = None,
        keep_going: bool = False,
        failures_allowed: int | None = None,
        explain: bool = False,
        reporter: Reporter | None = None,
        force: bool = False,
        cache: str = "auto",
        **session_options: Any,
    ) -> BuildResult:
        """Build ``targets`` (default: the default targets) and what they depend on.

        ``force``: run the named targets even when up to date (``build --force``);
        ``overrides={"CFLAGS": "-O0"}`` (a session option, for a graph loaded from a file)
        replaces [vars] values; ``cache``: how the shared cache ([cache]) is used: "auto",
        "required", "read-only" or "off" (as ``dagrun build --cache``)."""
        if reporter is None:
            from .report import make_reporter

            reporter = make_reporter("auto", explain=explain)
        if keep_going:
            failures_allowed = 0
        return self.session(**session_options).build(
            targets,
            reporter=reporter,
            jobs=jobs,
            failures_allowed=failures_allowed,
            explain=explain,
            force=force,
            cache=cache,
        )

    def touch(self, targets: Iterable[str] | None = None, **session_options: Any) -> list[str]:
        """Record what a build of ``targets`` would run as done, without running it
        (``build --touch``); the names of the tasks recorded."""
        return self.session(**session_options).touch(targets)

    def iter_build(
        self, targets: Iterable[str] | None = None, **build_options: Any
    ) -> Generator[tuple[str, Any], None, BuildResult]:
        """Build, yielding (task, result) for each function task as it finishes.

        Cached results of up-to-date tasks come first.  The build runs in a
        thread (signals stay with the main thread: for a build Ctrl-C stops
        cleanly, use ``build(on_result=...)``).  The BuildResult is the
        generator's return value (``result = yield from g.iter_build()``), and
        failures raise nothing here: check ``result.failed``.
        """
        import queue
        import threading

        q: queue.Queue[tuple[str, Any]] = queue.Queue()
        done = object()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["result"] = self.build(
                    targets, on_result=lambda t, v: q.put((t, v)), **build_options
                )
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                box["error"] = exc
            finally:
                q.put(("", done))

        thread = threading.Thread(target=run, name="dagrun-iter-build", daemon=True)
        thread.start()
        while True:
            task, value = q.get()
            if value is done:
                break
            yield task, value
        thread.join()
        if "error" in box:
            raise box["error"]
        result: BuildResult = box["result"]
        return result

    def plan(self, targets: Iterable[str] | None = None, **session_options: Any) -> Prepared:
        """What would run and why, without running anything."""
        return self.session(**session_options).plan(targets)


def load(path: str | os.PathLike[str] = "dagrun.toml") -> Graph:
    """A Graph from a manifest file."""
    return Graph.from_file(path)
