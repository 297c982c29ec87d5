"""A worker process for Python function tasks: ``python -m dagrun.pyworker [--io]``.

Started by ``executors.pyfunc.FunctionPool``, once per build, and reused for
many jobs.  Requests come on fd 0 (moved away at start, so a function that
reads stdin sees /dev/null), replies go to the fd named by ``--reply=N``;
both carry frames: a 4-byte length, then a pickle.

    parent -> worker   ("init", sys_path, root)
                       ("run", job_id, request)         request: see ``Request``
                       ("cancel", job_id)               io workers only
    worker -> parent   ("done", job_id, exit_code, error)

A plain worker runs one job at a time: it moves to the job's cwd, pins itself
to the job's cores, sends fd 1 and 2 to the job's stdout.txt/stderr.txt, calls
the function (a coroutine function is run with ``asyncio.run``), writes the
pickled result to ``results/<key>`` and replies.  An ``--io`` worker runs every
job it gets concurrently on one event loop (plain functions in threads);
``print`` output goes to the job's files through a context variable.

An exception prints the user's traceback (the worker's own frames cut off)
to the job's stderr.  A crash (segfault, ``os._exit``) ends the worker; the
pool sees its reply pipe close and fails that job.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import traceback
from dataclasses import dataclass
from typing import Any

REQUEST_FD = 0


@dataclass(frozen=True, slots=True)
class Request:
    """What a worker needs to run one function job."""

    target: str  # "package.module:qualname"
    code_file: str  # the module's source (used to load "__main__" scripts); "" if none
    args: bytes  # pickle of (args tuple, kwargs dict)
    upstream: tuple[tuple[str, str, str, str], ...]  # (task, group or "", key, digest): pycall
    result_path: str  # where the pickled result goes (atomically)
    results_dir: str  # where upstream results are
    cwd: str  # absolute
    env: tuple[tuple[str, str], ...]
    cores: tuple[int, ...]
    stdout: str  # file paths
    stderr: str


# ---------------------------------------------------------------- framing


def encode(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(4, "little") + data


def decode_frames(buf: bytearray) -> list[Any]:
    """Complete frames at the start of ``buf`` (removed from it)."""
    out = []
    while len(buf) >= 4:
        size = int.from_bytes(buf[:4], "little")
        if len(buf) < 4 + size:
            break
        out.append(pickle.loads(bytes(buf[4 : 4 + size])))
        del buf[: 4 + size]
    return out


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        data = os.read(fd, n)
        if not data:
            return None
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def read_frame(fd: int) -> Any:
    """The next frame from a blocking fd; None at end of file."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    body = _read_exact(fd, int.from_bytes(head, "little"))
    return None if body is None else pickle.loads(body)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ---------------------------------------------------------------- calling


def resolve(target: str, code_file: str) -> Any:
    """The function named by ``target``; ``__main__`` means the script ``code_file``."""
    import importlib

    module_name, _, qualname = target.partition(":")
    if module_name == "__main__":
        module = _main_script(code_file)
    else:
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _main_script(path: str) -> Any:
    """The build script, imported as ``__mp_main__`` (its ``if __name__ == "__main__"`` skipped)."""
    import importlib.util

    module = sys.modules.get("__mp_main__")
    if module is None:
        spec = importlib.util.spec_from_file_location("__mp_main__", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["__mp_main__"] = module
        spec.loader.exec_module(module)
    return module


def load_upstream(req: Request) -> dict[str, Any]:
    """Each upstream result, checked against its success record's digest before unpickling."""
    from .pycall import load_result

    return {
        task: load_result(os.path.join(req.results_dir, key), digest, task)
        for task, _, key, digest in req.upstream
    }


def arguments(
    fn: Any, req: Request, values: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments: the task's own, then upstream results by name.

    A parameter named like an upstream task gets its result; one named like a
    matrix group gets {task: result} of the group; ``deps`` gets every upstream
    result by task name; ``**kwargs`` gets the results no parameter took.
    """
    import inspect

    args, kwargs = pickle.loads(req.args)
    kwargs = dict(kwargs)
    params = inspect.signature(fn).parameters
    groups: dict[str, dict[str, Any]] = {}
    for task, group, *_ in req.upstream:
        if group:
            groups.setdefault(group, {})[task] = values[task]
    taken = set(kwargs)
    positional = list(params)[: len(args)]
    for name in params:
        if name in taken or name in positional:
            continue
        if name in values:
            kwargs[name] = values[name]
        elif name in groups:
            kwargs[name] = groups[name]
        elif name == "deps":
            kwargs[name] = dict(values)
        else:
            continue
        taken.add(name)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        for task, value in values.items():
            if task not in taken and task not in positional and not _in_group(task, req, taken):
                kwargs[task] = value
    return tuple(args), kwargs


def _in_group(task: str, req: Request, taken: set[str]) -> bool:
    return any(t == task and g in taken for t, g, *_ in req.upstream)


def user_traceback(exc: BaseException) -> str:
    """The traceback from the user's function down, without the worker's frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def store(value: Any, path: str) -> str | None:
    """Pickle ``value`` to ``path`` atomically; a message if it cannot be pickled."""
    try:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - pickling raises many kinds
        return f"the result ({type(value).__name__}) cannot be pickled: {exc}"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return None


def finish(value: Any, req: Request) -> tuple[int, str | None]:
    problem = store(value, req.result_path)
    if problem is not None:
        sys.stderr.write(f"dagrun: {problem}\n")
        return 1, problem
    return 0, None


def apply(call: Any, values: dict[str, Any]) -> Any:
    """Run a function task's ``call`` (a pycall.Call) here, with its upstream ``values`` given.

    For executors that move results themselves (Dask: submit ``apply`` with the
    upstream results as futures, store the returned value with ``store``).
    """
    import asyncio
    import inspect

    req = Request(
        target=call.target, code_file=call.code_file, args=call.args, upstream=call.upstream,
        result_path="", results_dir=call.results_dir, cwd="", env=(), cores=(), stdout="",
        stderr="",
    )
    _importable(call.target, call.code_file)
    fn = resolve(req.target, req.code_file)
    args, kwargs = arguments(fn, req, values)
    value = fn(*args, **kwargs)
    return asyncio.run(value) if inspect.iscoroutine(value) else value


def _importable(target: str, code_file: str) -> None:
    """Put the folder ``target``'s module is imported from (known from its source file) on
    sys.path: a remote worker (Dask) does not start in the project's folder."""
    module = target.partition(":")[0]
    if module == "__main__" or not os.path.isabs(code_file):
        return
    folder = os.path.dirname(code_file)
    if os.path.basename(code_file) == "__init__.py":
        folder = os.path.dirname(folder)
    for _ in range(module.count(".")):
        folder = os.path.dirname(folder)
    if folder not in sys.path:
        sys.path.insert(0, folder)


# ---------------------------------------------------------------- the plain worker


def run_one(req: Request) -> tuple[int, str | None]:
    """Run one job in this process, output to the job's files; (exit code, error)."""
    import asyncio
    import inspect

    saved_env = dict(os.environ)
    os.environ.update(dict(req.env))
    os.chdir(req.cwd)
    if req.cores:
        os.sched_setaffinity(0, req.cores)
    out = os.open(req.stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(req.stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    try:
        try:
            fn = resolve(req.target, req.code_file)
            args, kwargs = arguments(fn, req, load_upstream(req))
            if inspect.iscoroutinefunction(fn):
                value = asyncio.run(fn(*args, **kwargs))
            else:
                value = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - SystemExit in a task fails the task
            sys.stderr.write(user_traceback(exc))
            return 1, f"{type(exc).__name__}: {exc}"
        return finish(value, req)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        _reset(saved_env)


_HOME: dict[str, Any] = {}


def _reset(saved_env: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(saved_env)
    os.chdir(_HOME["cwd"])
    os.sched_setaffinity(0, _HOME["cores"])
    os.dup2(_HOME["null"], 1)
    os.dup2(_HOME["err"], 2)


def plain_loop(requests: int, replies: int) -> None:
    while True:
        message = read_frame(requests)
        if message is None or message[0] == "stop":
            return
        if message[0] == "run":
            _, job_id, req = message
            code, error = run_one(req)
            write_all(replies, encode(("done", job_id, code, error)))


# ---------------------------------------------------------------- the io worker


class _Routed(io.TextIOBase):
    """sys.stdout/sys.stderr of an io worker: writes go to the current job's file."""

    def __init__(self, which: int, fallback: Any) -> None:
        self.which = which
        self.fallback = fallback

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        files = _CURRENT.get()
        target = files[self.which] if files is not None else self.fallback
        target.write(text)
        return len(text)

    def flush(self) -> None:
        files = _CURRENT.get()
        (files[self.which] if files is not None else self.fallback).flush()


_CURRENT: Any = None


async def _run_io(job_id: int, req: Request, replies: Any) -> None:
    import asyncio
    import inspect

    out = open(req.stdout, "w", encoding="utf-8", errors="replace")
    err = open(req.stderr, "w", encoding="utf-8", errors="replace")
    _CURRENT.set((out, err))
    code, error = 1, None
    try:
        fn = resolve(req.target, req.code_file)
        args, kwargs = arguments(fn, req, load_upstream(req))
        if inspect.iscoroutinefunction(fn):
            value = await fn(*args, **kwargs)
        else:
            value = await asyncio.to_thread(fn, *args, **kwargs)
        code, error = finish(value, req)
    except asyncio.CancelledError:
        code, error = 1, "cancelled"
    except BaseException as exc:  # noqa: BLE001 - the task fails, the worker goes on
        err.write(user_traceback(exc))
        code, error = 1, f"{type(exc).__name__}: {exc}"
    finally:
        out.close()
        err.close()
        replies.put(encode(("done", job_id, code, error)))


def _writer(fd: int) -> Any:
    """A queue whose frames a thread writes to ``fd``: the event loop never blocks on a full
    reply pipe (dagrun may be busy writing a burst of requests; each side would wait for the
    other)."""
    import queue
    import threading

    outbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def drain() -> None:
        while True:
            write_all(fd, outbox.get())

    threading.Thread(target=drain, name="replies", daemon=True).start()
    return outbox


def io_loop(requests: int, replies: int) -> None:
    import asyncio
    import contextvars

    global _CURRENT
    _CURRENT = contextvars.ContextVar("dagrun_job_files", default=None)
    sys.stdout = _Routed(0, sys.__stdout__)
    sys.stderr = _Routed(1, sys.__stderr__)
    asyncio.run(_io_main(requests, _writer(replies)))


async def _io_main(requests: int, outbox: Any) -> None:
    """The io worker's event loop: every "run" a task on it, until "stop" or the request pipe's
    end; the tasks still running then are cancelled."""
    import asyncio

    loop = asyncio.get_running_loop()
    done = loop.create_future()
    tasks: dict[int, asyncio.Task[None]] = {}
    buf = bytearray()

    def readable() -> None:
        data = os.read(requests, 1 << 16)
        if not data:
            loop.remove_reader(requests)
            if not done.done():
                done.set_result(None)
            return
        buf.extend(data)
        for message in decode_frames(buf):
            _io_message(message, tasks, outbox, done)

    loop.add_reader(requests, readable)
    await done
    for task in tasks.values():
        task.cancel()


def _io_message(message: Any, tasks: dict[int, Any], outbox: Any, done: Any) -> None:
    """One request to the io worker: "run" (a job as a task), "cancel" (one), or "stop"."""
    import asyncio
    import functools

    if message[0] == "run":
        _, job_id, req = message
        task = asyncio.ensure_future(_run_io(job_id, req, outbox))
        tasks[job_id] = task
        task.add_done_callback(functools.partial(_forget, tasks, job_id))
    elif message[0] == "cancel" and message[1] in tasks:
        tasks[message[1]].cancel()
    elif message[0] == "stop" and not done.done():
        done.set_result(None)


def _forget(tasks: dict[int, Any], job_id: int, _task: object) -> None:
    tasks.pop(job_id, None)


# ---------------------------------------------------------------- start


def main(argv: list[str]) -> None:
    import faulthandler

    requests = os.dup(REQUEST_FD)
    os.set_inheritable(requests, False)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)  # output outside a job goes nowhere; dagrun's own stdout stays clean
    _HOME.update(
        cwd=os.getcwd(), cores=os.sched_getaffinity(0), null=null, err=os.dup(2),
    )
    faulthandler.enable()  # a segfault prints the Python stack into the job's stderr
    init = read_frame(requests)
    if init is None:
        return
    _, sys_path, root = init
    sys.path[:] = [root] + [p for p in sys_path if p != root]
    os.chdir(root)
    _HOME["cwd"] = root
    replies = next(int(a.split("=", 1)[1]) for a in argv if a.startswith("--reply="))
    os.set_inheritable(replies, False)
    if "--io" in argv:
        io_loop(requests, replies)
    else:
        plain_loop(requests, replies)


if __name__ == "__main__":
    main(sys.argv[1:])
