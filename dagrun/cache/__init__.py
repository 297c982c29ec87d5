"""The shared cache (``[cache]``): a build looks tasks up before running them, and sends
what it ran to the store after.

``SharedCache`` is one build's view of the store (store.py).  The scheduler
hands it a task that is not up to date when the task becomes ready
(``lookup``); a pool of DOWNLOADS threads fetches the task's entry
(entry.py) and blobs and writes its outputs (restore.py), and posts an
Outcome the scheduler waits on with its executors (``fileno``/``collect``):

- a hit: ``exit_code`` 0, with the run's stdout and stderr; the task is
  recorded as done through the ledger, as *restored*;
- a miss (or a failure of the store, or a damaged blob: a warning):
  ``exit_code`` None; the task runs;
- with ``--cache=required``, a failure of the store is ``exit_code`` 1: the
  task fails with that error.

After a task succeeds, ``succeeded`` queues its upload on a pool of UPLOADS
threads (off the scheduler's path): the blobs first, the entry last, so an
entry never names a blob that is not there.  ``close`` waits for the uploads
at the end of the build.  The first failure of the store stops reading (or
writing) for the rest of the build, so an unreachable or hanging store costs
one timeout, not one per task.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from ..completion_log import Made
from ..errors import DagrunError
from ..executors import Outcome
from ..executors.threaded import Completions
from ..graph import BuildGraph
from ..hashing import MISSING, Keys, digest_bytes, key_of
from ..records import CacheSettings, TaskSpec
from . import entry as entries
from .restore import Damaged, restore
from .store import FolderStore, Store, StoreError, open_store

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from .upload import Uploader

DOWNLOADS = 8  # tasks looked up and restored at once
UPLOADS = 2  # tasks uploaded at once (more only fight the scheduler for the GIL)


class CacheError(DagrunError):
    """``--cache=required`` and the store failed."""

    exit_code = 1


class Upload(NamedTuple):
    """What the scheduler's thread knows of a success, for the upload thread."""

    task: str
    name: str  # the entry's (entry.entry_name)
    outputs: tuple[str, ...]
    digests: tuple[str, ...]  # blake3 as the ledger recorded them: a file changed since is not sent
    stdout: str
    stderr: str
    result: str  # a function task's result file ("" : none)
    result_digest: str
    duration: float
    depfile: str = ""  # the task's depfile, sent with the files it listed (``found``)
    found: tuple[tuple[str, str], ...] = ()


def why_not(spec: TaskSpec) -> str | None:
    """Why a task is never cached, whatever its outputs; None when it may be."""
    if not spec.cache:
        return "cache = false"
    if spec.always:
        return "always = true"
    if not spec.cmd and not spec.call:
        return "it runs nothing"
    for out in spec.outputs:
        if out.startswith("/"):
            return f"output {out} is an absolute path"
    return None


def why_not_now(spec: TaskSpec, root: str) -> str | None:
    """``why_not``, or why its outputs as they are now are not sent (a folder, a symlink)."""
    reason = why_not(spec)
    if reason is not None:
        return reason
    for out in spec.outputs:
        try:
            mode = os.lstat(os.path.join(root, out)).st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a symlink" if stat.S_ISLNK(mode) else (
                "not a regular file")
            return f"output {out} is {kind} (only files are cached)"
    return None


class SharedCache:
    """One build's use of the store; see the module's docstring."""

    def __init__(
        self,
        settings: CacheSettings,
        graph: BuildGraph,
        keys: Keys,
        environ: Mapping[str, str],
        state_dir: str,
        say: Callable[[str], None],
        *,
        seen: Callable[[int], str] = lambda i: "",
        required: bool = False,
        store: Store | None = None,
    ) -> None:
        token = environ.get(settings.token_env, "") if settings.token_env else ""
        self.store = store or open_store(settings.url, token, settings.connect_timeout,
                                         settings.read_timeout)
        self.settings = settings
        self.state_dir = state_dir
        self.graph = graph
        self.keyer = keys
        self.keys = keys.keys
        self.seen = seen  # task -> its dependencies' fingerprints now (ledger.upstream)
        self.reading = settings.read
        self.say = say
        self.required = required
        self.read_down: str | None = None if settings.read else "read = false"
        self.write_down: str | None = None if settings.write else "write = false"
        self.completions = Completions()
        self.pending: dict[int, int] = {}  # lookup job id -> task
        self.restored: set[int] = set()
        self.problems: list[str] = []  # every failure of the store (--cache=required: errors)
        self._said: list[str] = []  # warnings from the threads, said on the scheduler's thread
        self._lock = threading.Lock()
        self._downloads: ThreadPoolExecutor | None = None
        self._uploads: Uploader | None = None
        self.counts = {"hits": 0, "misses": 0, "uploaded": 0}

    # ------------------------------------------------------------ looking up

    def wants(self, i: int) -> bool:
        """Look task ``i`` up before running it?"""
        spec = self.graph.specs[i]
        if not self.reading or (self.read_down is not None and not self.required):
            return False
        return self.keys[i] is not None and why_not(spec) is None

    def lookup(self, job_id: int, i: int) -> bool:
        """Look task ``i`` up in a download thread; False: a miss known at once (a folder
        store says so with one ``stat``, cheaper than a thread's round trip)."""
        key = self.keys[i]
        assert key is not None
        name = entries.entry_name(self.name_key(i), self.seen(i))
        if isinstance(self.store, FolderStore) and self.read_down is None:
            try:
                if not self.store.has("ac", name):
                    with self._lock:
                        self.counts["misses"] += 1
                    return False
            except OSError:
                pass  # the thread says what is wrong
        if self._downloads is None:
            from concurrent.futures import ThreadPoolExecutor

            self._downloads = ThreadPoolExecutor(DOWNLOADS, thread_name_prefix="dagrun-cache-get")
        self.pending[job_id] = i
        self._downloads.submit(self._lookup, job_id, i, key, name)
        return True

    def name_key(self, i: int) -> str:
        """The key an entry is found by: the task's key; for a task with a depfile, its key
        without the files the depfile listed (the entry says which they were, and where each
        is what it was there, the task's whole key is the one its run had: ccache's way)."""
        spec = self.graph.specs[i]
        if spec.depfile:
            return key_of(self.keyer.parts(i)._replace(found=()))
        key = self.keys[i]
        assert key is not None
        return key

    def _lookup(self, job_id: int, i: int, key: str, name: str) -> None:
        started = time.monotonic()
        try:
            outcome = self._fetch(job_id, i, key, name, started)
        except Exception as exc:  # noqa: BLE001 - a bug here must cost a run, not the build
            outcome = self._failed(job_id, f"{type(exc).__name__}: {exc}")
        self.completions.post(outcome)

    def _fetch(self, job_id: int, i: int, key: str, name: str, started: float) -> Outcome:
        spec = self.graph.specs[i]
        if self.read_down is not None:  # the store failed meanwhile
            return self._failed(job_id, self.read_down, said=True)
        try:
            chunks = self.store.get("ac", name)
            found = None if chunks is None else entries.decode(b"".join(chunks))
            if found is None:
                with self._lock:
                    self.counts["misses"] += 1
                if chunks is not None:
                    self._warn(f"shared cache: the entry of '{spec.name}' is damaged: it runs")
                return Outcome(job_id, None, 0.0)
            if spec.depfile and (found.depfile is None or not self._same_files(found.found)):
                with self._lock:
                    self.counts["misses"] += 1
                return Outcome(job_id, None, 0.0)  # made with other headers: a miss
            got = restore(self.store, found, self.graph.root, spec.outputs, spec.depfile)
        except StoreError as exc:
            self._down("read", str(exc))
            return self._failed(job_id, str(exc), said=True)
        except (Damaged, OSError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._warn(f"shared cache: '{spec.name}' cannot be restored ({why}): it runs")
            return self._failed(job_id, why, said=True, store_down=False)
        if got.result is not None:
            self._write_result(key, got.result)
        self._run_files(spec, got.stdout, got.stderr)
        with self._lock:
            self.counts["hits"] += 1
            self.restored.add(i)
        return Outcome(job_id, 0, time.monotonic() - started, got.stdout, got.stderr)

    def _same_files(self, found: tuple[tuple[str, str], ...]) -> bool:
        """Each file a depfile listed has here the digest it had where the entry was made."""
        root = self.graph.root
        for path, digest in found:
            if path.startswith("/") or ".." in path.split("/"):
                return False
            try:
                with open(os.path.join(root, path), "rb") as f:
                    now = digest_bytes(f.read())
            except FileNotFoundError:
                now = MISSING
            except OSError:
                return False
            if now != digest:
                return False
        return True

    def _write_result(self, key: str, data: bytes) -> None:
        from ..pycall import RESULTS

        folder = os.path.join(self.state_dir, RESULTS)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{key}.restore-{threading.get_ident()}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(folder, key))

    def _run_files(self, spec: TaskSpec, stdout: str, stderr: str) -> None:
        """The run folder as a run that printed this leaves it (none for a silent one)."""
        from ..scheduler import run_dir_name

        folder = os.path.join(self.state_dir, "runs", run_dir_name(spec.name))
        files = {"command.txt": spec.cmd + "\n", "stdout.txt": stdout, "stderr.txt": stderr}
        if not stdout and not stderr:
            for name in files:
                try:
                    os.unlink(os.path.join(folder, name))
                except OSError:
                    pass
            return
        os.makedirs(folder, exist_ok=True)
        for name, text in files.items():
            with open(os.path.join(folder, name), "w", encoding="utf-8",
                      errors="surrogateescape") as f:
                f.write(text)

    def _failed(self, job_id: int, why: str, *, said: bool = False,
                store_down: bool = True) -> Outcome:
        """A lookup that failed: a miss (it runs), or with --cache=required a failed task."""
        if not said:
            self._warn(f"shared cache: {why}")
        if self.required and store_down:
            return Outcome(job_id, 1, 0.0, error=f"shared cache (--cache=required): {why}")
        return Outcome(job_id, None, 0.0)

    def _down(self, what: str, why: str) -> None:
        """The store failed: no more reads (or writes) in this build; said once."""
        with self._lock:
            self.problems.append(why)
            attr = "read_down" if what == "read" else "write_down"
            if getattr(self, attr) is not None:
                return
            setattr(self, attr, why)
        verb = "reading from" if what == "read" else "writing to"
        self._warn(f"shared cache: {why}; {verb} it stops for this build")

    def _warn(self, text: str) -> None:
        with self._lock:
            self._said.append(f"warning: {text}")

    # ------------------------------------------------------------ the scheduler's wait

    def fileno(self) -> int:
        return self.completions.fileno()

    def deadline(self) -> float | None:
        return None

    def collect(self) -> list[Outcome]:
        self.flush()
        out = [o for o in self.completions.take() if o.job_id in self.pending]
        for o in out:
            del self.pending[o.job_id]
        return out

    def cancel_all(self, *, force: bool = False) -> list[Outcome]:
        """Every lookup still under way ends now (a thread that finishes later is ignored)."""
        out = [Outcome(job_id, None, 0.0, error="interrupted") for job_id in self.pending]
        self.pending.clear()
        return out

    def flush(self) -> None:
        """Say the threads' warnings (on the scheduler's thread: never inside a task's output)."""
        with self._lock:
            said, self._said = self._said, []
        for text in said:
            self.say(text)

    # ------------------------------------------------------------ uploading

    def succeeded(self, i: int, made: Made, outcome: Outcome) -> None:
        """Task ``i`` ran and its success is recorded (``made``: what the ledger recorded):
        send it (unless it was restored)."""
        if i in self.restored or self.write_down is not None:
            return
        spec = self.graph.specs[i]
        key = self.keys[i]
        if key is None or why_not(spec) is not None:
            return
        found = self.keyer.parts(i).found if spec.depfile else ()
        result = ""
        if spec.call:
            from ..pycall import RESULTS

            result = os.path.join(self.state_dir, RESULTS, key)
        name = entries.entry_name(self.name_key(i), made.seen)
        job = Upload(spec.name, name, spec.outputs, made.digests, outcome.stdout,
                     outcome.stderr, result, made.result, outcome.duration, spec.depfile, found)
        if self._uploads is None:
            from .upload import Uploader

            self._uploads = Uploader(UPLOADS, self._upload)
        self._uploads.put(job)

    def _upload(self, job: Upload) -> None:
        from .upload import send

        if self.write_down is not None:
            return
        try:
            if send(self.store, self.graph.root, job):
                with self._lock:
                    self.counts["uploaded"] += 1
        except StoreError as exc:
            self._down("write", str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug here must cost the upload only
            self._down("write", f"{type(exc).__name__}: {exc}")

    def close(self, *, wait: bool = True) -> None:
        """Wait for the uploads (the end of the build; ``wait=False``: Ctrl-C, the queued ones
        are dropped); drop the lookups still under way."""
        if self._uploads is not None:
            self._uploads.close(wait=wait)
        if self._downloads is not None:
            self._downloads.shutdown(wait=False, cancel_futures=True)
        if wait and hasattr(self.store, "close"):
            self.store.close()
        self.flush()
        self.completions.close()


def summary(cache: SharedCache) -> dict[str, Any]:
    return dict(cache.counts)
