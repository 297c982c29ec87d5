"""blake3 file digests behind a stat cache, and task keys.

A task's key is blake3 over a format version, its command, declared env, the
values of its ``key_env`` variables, its cwd, its declared outputs, the digest
of each source input (sorted by path), the key of each task it depends on (or,
for a dependency with ``restat`` or a ``depfile``, the digests of that task's
outputs), and the digests of the files its latest depfile listed.  Keys are
computed in topological order before anything runs; a key over outputs that a
task of the plan will rewrite is computed again when its task becomes ready.

The stat cache maps a path to (mtime_ns, ctime_ns, size, inode, digest): an
unchanged stat means an unchanged file, so the file is not read again.  A file
modified within RACY_NS of being hashed could change again without its stat
changing (timestamps are coarse), so such entries are re-hashed next time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from .digest import digest_bytes as digest_bytes  # re-exported: callers take it from here
from .errors import ManifestError
from .fs import FileSystem
from .graph import BuildGraph
from .pycode import code_digest

KEY_FORMAT = "dagrun-key/1"
RACY_NS = 50_000_000


# path -> (mtime_ns, ctime_ns, size, ino, digest, trusted)
StatEntry = tuple[int, int, int, int, str, bool]


class StatCache:
    """File digests that are recomputed only when a file's stat changes."""

    def __init__(self, fs: FileSystem, entries: dict[str, StatEntry] | None = None) -> None:
        self.fs = fs
        self.entries: dict[str, StatEntry] = entries if entries is not None else {}
        self.changed: set[str] = set()  # paths whose digest differs from the cached one
        self.updated: set[str] = set()  # paths whose entry was written or removed
        self.hashed = 0
        self.dirty = False

    def digest(self, path: str) -> str | None:
        """The file's digest, or None when it does not exist."""
        st = self.fs.stat(path)
        if st is None:
            if path in self.entries:
                del self.entries[path]
                self.changed.add(path)
                self.updated.add(path)
                self.dirty = True
            return None
        e = self.entries.get(path)
        if (
            e is not None
            and e[5]
            and e[0] == st.mtime_ns
            and e[1] == st.ctime_ns
            and e[2] == st.size
            and e[3] == st.ino
        ):
            return e[4]
        chunks = self.fs.read_chunks(path)
        if chunks is None:
            return None
        digest = digest_bytes(*chunks)
        self.hashed += 1
        trusted = self.fs.now_ns() - st.mtime_ns > RACY_NS
        self.entries[path] = (st.mtime_ns, st.ctime_ns, st.size, st.ino, digest, trusted)
        self.updated.add(path)
        self.dirty = True
        if e is None or e[4] != digest:
            self.changed.add(path)
        return digest


MISSING = "missing"  # the digest of a depfile's file that no longer exists
Found = tuple[tuple[str, str], ...]


class KeyParts(NamedTuple):
    """What a key is made from; kept in the log so --explain can name what changed."""

    cmd: str
    env: tuple[tuple[str, str], ...]
    key_env: tuple[tuple[str, str | None], ...]
    cwd: str
    outputs: tuple[str, ...]
    inputs: tuple[tuple[str, str], ...]
    upstream: tuple[tuple[str, str], ...]
    found: tuple[tuple[str, str], ...] = ()  # files its last depfile listed, with their digests
    # function tasks only (pycall.py): the digest of the function's code, of its args
    code: str = ""
    args: str = ""

    def to_json(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"code": self.code, "args": self.args} if self.code else {}
        if self.found:
            extra["found"] = dict(self.found)
        return extra | {
            "cmd": self.cmd,
            "env": dict(self.env),
            "key_env": dict(self.key_env),
            "cwd": self.cwd,
            "outputs": list(self.outputs),
            "inputs": dict(self.inputs),
            "upstream": dict(self.upstream),
        }


def key_of(parts: KeyParts) -> str:
    buf = [KEY_FORMAT, "cmd", parts.cmd, "cwd", parts.cwd]
    for k, v in parts.env:
        buf += ("env", k, v)
    for k, ov in parts.key_env:
        buf += ("kenv", k, "\x01unset" if ov is None else ov)
    for p in parts.outputs:
        buf += ("out", p)
    for p, d in parts.inputs:
        buf += ("in", p, d)
    for t, k in parts.upstream:
        buf += ("up", t, k)
    for p, d in parts.found:
        buf += ("dep", p, d)
    if parts.code:
        buf += ("code", parts.code, "args", parts.args)
    return digest_bytes("\x00".join(buf).encode("utf-8", "surrogateescape"))


def merged_env(graph: BuildGraph, i: int) -> tuple[tuple[str, str], ...]:
    """The task's declared environment: manifest [env] overridden by the task's env."""
    spec = graph.specs[i]
    if not spec.env:
        return graph.manifest.env
    env = dict(graph.manifest.env)
    env.update(spec.env)
    return tuple(sorted(env.items()))


def key_env_names(graph: BuildGraph) -> list[str]:
    return list(graph.derived("key_env", _key_env_names))


def _key_env_names(graph: BuildGraph) -> list[str]:
    names = dict.fromkeys(graph.manifest.key_env)
    for s in graph.specs:
        if s.key_env:
            names.update(dict.fromkeys(s.key_env))
    return sorted(names)


def _function_parts(graph: BuildGraph, i: int) -> dict[str, str]:
    """A function task's code digest (not its whole module's: see pycode.py) and args digest."""
    spec = graph.specs[i]
    path = spec.code_file
    if path and not path.startswith("/"):
        path = f"{graph.root}/{path}"
    return {"code": code_digest(path, spec.call), "args": digest_bytes(spec.args)}


class Keys:
    """Computes every selected task's key, reusing the previous run's keys where nothing changed.

    ``previous`` (task name -> key) must come from the same compiled graph and
    the same key_env values; a task is re-keyed when one of its source digests
    changed or the key of one of its dependencies changed.
    """

    def __init__(
        self,
        graph: BuildGraph,
        stats: StatCache,
        environ: Mapping[str, str],
        previous: Mapping[str, str] | None = None,
    ) -> None:
        self.graph = graph
        self.stats = stats
        self.environ = environ
        self.previous = previous or {}
        self.keys: list[str | None] = [None] * len(graph.specs)
        self.changed: list[bool] = [True] * len(graph.specs)
        self.recomputed = 0
        self.rekeyed: set[int] = set()  # tasks whose key compute() made (not taken as it was)
        # task name -> the files its latest successful run's depfile listed (session: the log)
        self.found: dict[str, tuple[str, ...]] = {}
        # tasks that dependents key by their outputs' digests (restat or a depfile)
        self.by_outputs: list[bool] = graph.derived(
            "by_outputs", lambda g: [s.restat or bool(s.depfile) for s in g.specs]
        )

    def seed(self, last: list[str | None] | None = None) -> None:
        """Take every task's previous key as it is (a partial build then re-keys a few);
        ``last``: the same keys as a list (the previous build of this session left them)."""
        if last is not None and len(last) == len(self.graph.specs):
            self.keys = list(last)
        else:
            prev = self.previous
            self.keys = [prev.get(s.name) for s in self.graph.specs]
        self.changed = [False] * len(self.keys)

    def compute(self, selected: list[int]) -> list[str | None]:
        """Keys of ``selected`` (a closure in topological order); raises for a missing input."""
        g = self.graph
        specs, sources, deps = g.specs, g.sources, g.deps
        stats, changed_paths, prev = self.stats, self.stats.changed, self.previous
        keys, changed = self.keys, self.changed
        for i in selected:
            spec = specs[i]
            old = prev.get(spec.name)
            # a depfile's files, or an upstream keyed by its outputs: always keyed again
            dirty = old is None or bool(spec.depfile) or any(self.by_outputs[d] for d in deps[i])
            for p in sources[i]:
                try:
                    found = stats.digest(p)
                except OSError as exc:
                    raise self._missing(i, p, exc.strerror or str(exc)) from None
                if found is None:
                    raise self._missing(i, p)
                if p in changed_paths:
                    dirty = True
            if not dirty:
                for d in deps[i]:
                    if changed[d]:
                        dirty = True
                        break
            if dirty:
                key = key_of(self.parts(i))
                self.recomputed += 1
                self.rekeyed.add(i)
                keys[i] = key
                changed[i] = key != old
            else:
                keys[i] = old
                changed[i] = False
        return keys

    def parts(self, i: int) -> KeyParts:
        g = self.graph
        spec = g.specs[i]
        digests = self.stats.entries
        inputs = tuple((p, digests[p][4]) for p in g.sources[i] if p != spec.code_file)
        upstream = tuple(sorted((g.specs[d].name, self._upstream(d)) for d in g.deps[i]))
        kenv = tuple(
            (n, self.environ.get(n)) for n in sorted({*g.manifest.key_env, *spec.key_env})
        )
        return KeyParts(
            cmd=spec.cmd,
            env=merged_env(g, i),
            key_env=kenv,
            cwd=spec.cwd,
            outputs=spec.outputs,
            inputs=inputs,
            upstream=upstream,
            found=self.found_digests(spec.name),
            **(_function_parts(g, i) if spec.call else {}),
        )

    def found_digests(self, task: str, paths: tuple[str, ...] | None = None) -> Found:
        """(path, digest) of each file the task's depfile listed; MISSING for one gone since."""
        if paths is None:
            paths = self.found.get(task, ())
        out = []
        for p in paths:
            try:
                d = self.stats.digest(p)
            except OSError:
                d = None
            out.append((p, MISSING if d is None else d))
        return tuple(out)

    def _upstream(self, d: int) -> str:
        """What a dependency contributes: its key, or its outputs' digests (restat, depfile)."""
        if not self.by_outputs[d]:
            return self._key(d)
        chunks = []
        for p in self.graph.specs[d].outputs:
            try:
                found = self.stats.digest(p)
            except OSError:  # a folder: no early cutoff over it
                found = None
            if found is None:  # not written yet, or not a file: the key is exact
                return self._key(d)
            chunks.append(f"{p}\0{found}\0".encode(errors="surrogateescape"))
        return "outputs:" + digest_bytes(*chunks)

    def _key(self, i: int) -> str:
        key = self.keys[i]
        assert key is not None, "dependencies are keyed first"
        return key

    def _missing(self, i: int, path: str, why: str | None = None) -> ManifestError:
        spec = self.graph.specs[i]
        m = self.graph.manifest
        message = (
            f"input '{path}' cannot be read: {why}" if why
            else f"input '{path}' does not exist and no task produces it"
        )
        return ManifestError(
            message, source=m.source, task=spec.name, key="inputs", line=m.line_of(spec, "inputs"),
        )
