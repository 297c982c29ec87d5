"""A function task run on another machine (an SSH host, an HTTP worker) as a command.

The build side writes the job's request into its run folder (``call.in``: the
function's name, its arguments, and its upstream results, read and checked here
against their success records) and hands the executor a command job instead
(``prepare``)::

    PYTHON -c ENTRY ROOT .dagrun/runs/TASK/call.in .dagrun/runs/TASK/call.out

with the request as one more input and the result as one more output, so that
``stage = "rsync"`` and ``stage = "http"`` carry both files as they carry any
task's.  On the host, ``ENTRY`` imports dagrun (from ``DAGRUN_HOME`` when set:
a ``dagrun worker`` points its jobs at its own package) and runs ``main``, which
calls the function as a local worker does (in the task's cwd, with its
environment; the user's traceback on stderr and exit status 1 when it raises)
and writes the pickled result to ``call.out``.  Back here, ``finish`` checks the
result's digest and only then stores it in ``.dagrun/results/<key>``, where the
ledger digests and records it as any function task's result.  A host that
cannot import dagrun exits with ``NO_DAGRUN`` and says why on stderr.

Both files are framed: a line ``dagrun-call 1 <blake2b of the rest>``, then the
pickle.  blake2b from hashlib, not blake3, so that the host needs nothing of
dagrun's dependencies; a file damaged on the way is refused, never unpickled.
dagrun's own process never unpickles a result either: it moves bytes.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import replace
from typing import Any

from . import Job, Outcome

HEADER = b"dagrun-call 1 "
REQUEST, RESULT = "call.in", "call.out"  # in the task's run folder
NO_DAGRUN = 121  # the host's exit status when it cannot import dagrun
NO_DAGRUN_SAYS = "dagrun: cannot import dagrun on this host: "
PICKLING = "dagrun: the result ("  # the line a result that cannot be pickled ends stderr with
ENTRY = (
    "import os, sys\n"
    "home = os.environ.get('DAGRUN_HOME')\n"
    "try:\n"
    "    if home:\n"
    "        import importlib.util as u\n"
    "        s = u.spec_from_file_location('dagrun', os.path.join(home, '__init__.py'),"
    " submodule_search_locations=[home])\n"
    "        m = sys.modules['dagrun'] = u.module_from_spec(s)\n"
    "        s.loader.exec_module(m)\n"
    "    from dagrun.executors.remote_call import main\n"
    "except Exception as e:\n"
    f"    sys.stderr.write({NO_DAGRUN_SAYS!r} + '%s: %s\\n' % (type(e).__name__, e))\n"
    f"    sys.exit({NO_DAGRUN})\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def frame(data: bytes) -> bytes:
    return HEADER + hashlib.blake2b(data, digest_size=16).hexdigest().encode() + b"\n" + data


def unframe(blob: bytes) -> bytes | None:
    """The framed bytes, or None when the frame is not whole (damaged, cut short, replaced)."""
    head, sep, data = blob.partition(b"\n")
    if not sep or not head.startswith(HEADER):
        return None
    digest = hashlib.blake2b(data, digest_size=16).hexdigest().encode()
    return data if head[len(HEADER):] == digest else None


# ---------------------------------------------------------------- this side


def prepare(job: Job, python: str) -> Job | Outcome:
    """``job`` (a function job) as the command job that runs it on the host with ``python``
    (a shell word); an Outcome instead when its request cannot be written."""
    import pickle

    call = job.call
    assert call is not None
    run = os.path.relpath(job.run_dir, job.root)
    try:
        upstream = tuple((task, group, _upstream_bytes(call.results_dir, key, digest, task))
                         for task, group, key, digest in call.upstream)
    except (OSError, LookupError) as exc:
        return Outcome(job.id, None, 0.0, error=f"cannot read an upstream result: {exc}")
    code_file = call.code_file
    if code_file.startswith(job.root.rstrip("/") + "/"):
        code_file = os.path.relpath(code_file, job.root)  # the host has it under its root
    request = {"target": call.target, "code_file": code_file, "args": call.args,
               "upstream": upstream}
    try:
        os.makedirs(job.run_dir, exist_ok=True)
        _write(os.path.join(job.run_dir, REQUEST), frame(pickle.dumps(request, protocol=4)))
    except OSError as exc:
        return Outcome(job.id, None, 0.0, error=f"cannot write the call's request: {exc}")
    words = [python, "-c", _quote(ENTRY), _quote(os.path.relpath(job.root, job.local_cwd)),
             _quote(f"{run}/{REQUEST}"), _quote(f"{run}/{RESULT}")]
    return replace(job, cmd=" ".join(words), call=None, inputs=(*job.inputs, f"{run}/{REQUEST}"),
                   outputs=(*job.outputs, f"{run}/{RESULT}"))


def _upstream_bytes(results_dir: str, key: str, digest: str, task: str) -> bytes:
    from ..pycall import checked_bytes  # only the build's side needs it, never a host's

    return checked_bytes(os.path.join(results_dir, key), digest, task, "not sent")


def finish(job: Job, outcome: Outcome, where: str) -> Outcome:
    """The host's outcome of function job ``job`` (the job before ``prepare``): on success its
    result, checked, stored in the results folder; the request and result files removed."""
    call = job.call
    assert call is not None
    request, result = (os.path.join(job.run_dir, name) for name in (REQUEST, RESULT))
    try:
        if outcome.exit_code == NO_DAGRUN and NO_DAGRUN_SAYS in outcome.stderr:
            why = outcome.stderr.split(NO_DAGRUN_SAYS, 1)[1].split("\n", 1)[0]
            return outcome.failed(f"{where}: cannot import dagrun ({why}): install it there, "
                                  "or set python = \"...\" to a Python that has it")
        if not outcome.ok:
            return _named(outcome)
        return _store(job, outcome, result, where)
    finally:
        for path in (request, result):
            _remove(path)
        try:
            os.rmdir(job.run_dir)  # only when empty: a task that never started (runs.py)
        except OSError:
            pass


def _named(outcome: Outcome) -> Outcome:
    """A failure named as on the local pool (``FAILED: [ValueError: bad row 7]``): the last
    line the host wrote, when it is the exception's or the pickling problem's."""
    if outcome.exit_code != 1 or outcome.error:
        return outcome
    last = outcome.stderr.rstrip().rpartition("\n")[2]
    if last.startswith(PICKLING):
        return replace(outcome, error=last[len("dagrun: "):])
    if "Traceback (most recent call last):" in outcome.stderr and last[:1].isalpha():
        return replace(outcome, error=last)
    return outcome


def _store(job: Job, outcome: Outcome, result: str, where: str) -> Outcome:
    call = job.call
    assert call is not None
    try:
        with open(result, "rb") as f:
            data = unframe(f.read())
    except OSError as exc:
        return outcome.failed(f"the result did not come back from {where}: {exc.strerror or exc}")
    if data is None:
        return outcome.failed(f"the result came back from {where} damaged (its digest does not "
                              "match): not stored")
    try:
        os.makedirs(call.results_dir, exist_ok=True)
        _write(os.path.join(call.results_dir, call.key), data)
    except OSError as exc:
        return outcome.failed(f"cannot store the result: {exc}")
    return outcome


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ---------------------------------------------------------------- the host


def main(argv: list[str]) -> int:
    """On the host, in the task's cwd: ``ROOT REQUEST RESULT`` (ROOT relative to the cwd, the
    files relative to ROOT).  Exit status 0 with the result written, 1 when the function
    raised (its traceback on stderr) or its result cannot be pickled, 2 on a bad request."""
    import pickle

    root, request, result = argv
    root = os.path.abspath(root)
    try:
        with open(os.path.join(root, request), "rb") as f:
            data = unframe(f.read())
    except OSError as exc:
        data, problem = None, f"cannot read {request}: {exc}"
    else:
        problem = f"{request} came damaged (its digest does not match)"
    if data is None:
        sys.stderr.write(f"dagrun: {problem}\n")
        return 2
    req = pickle.loads(data)
    sys.path[:] = [root] + [p for p in sys.path if p not in ("", root)]  # as on the local pool
    code = _call(req, root)
    if isinstance(code, int):
        return code
    os.makedirs(os.path.dirname(os.path.join(root, result)), exist_ok=True)
    _write(os.path.join(root, result), frame(code))
    return 0


def _call(req: dict[str, Any], root: str) -> bytes | int:
    """The function's pickled result, or 1 (what went wrong is on stderr)."""
    import asyncio
    import inspect
    import pickle

    from .. import pyworker

    code_file = req["code_file"]
    if code_file and not code_file.startswith("/"):
        code_file = os.path.join(root, code_file)
    upstream = tuple((task, group, "", "") for task, group, _ in req["upstream"])
    r = pyworker.Request(target=req["target"], code_file=code_file, args=req["args"],
                         upstream=upstream, result_path="", results_dir="", cwd="", env=(),
                         cores=(), stdout="", stderr="")
    try:
        pyworker._importable(r.target, r.code_file)
        values = {task: pickle.loads(data) for task, _, data in req["upstream"]}
        fn = pyworker.resolve(r.target, r.code_file)
        args, kwargs = pyworker.arguments(fn, r, values)
        value = fn(*args, **kwargs)
        if inspect.iscoroutine(value):
            value = asyncio.run(value)
    except BaseException as exc:  # noqa: BLE001 - SystemExit in a task fails the task
        sys.stderr.write(_user_traceback(exc, pyworker.__file__))
        return 1
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - pickling raises many kinds
        sys.stderr.write(f"{PICKLING}{type(value).__name__}) cannot be pickled: {exc}\n")
        return 1


def _user_traceback(exc: BaseException, *ours: str) -> str:
    """The traceback from the user's code down, without dagrun's frames."""
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in (__file__, *ours):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))
