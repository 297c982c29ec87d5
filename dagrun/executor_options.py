"""Every executor type's options, declared once: name, type, default, check and help.

    options = effective("ssh", spec.options)   # the table as written, defaults filled in

The manifest checks each ``[executors.NAME]`` table against its type's
declaration when it is read (so a bad option is exit 2 with the file and line,
also for ``dagrun -n``), and each executor's ``from_options`` takes the
``effective`` values as they are, without checking them again.  Only checks
and constants live here, so the manifest never imports an executor module
(dask, asyncssh...) to read its options.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from . import placement
from .checks import (
    Check,
    any_table,
    boolean,
    env_table,
    integer,
    is_int,
    near,
    nonempty_str,
    number_positive,
    one_of,
    str_list,
    string,
)


class Option(NamedTuple):
    """One key of an ``[executors.NAME]`` table."""

    name: str
    type: str  # what the value is, as `dagrun status --executors` and the docs say it
    check: Check
    default: Any = None  # None: absent unless given (help says what absent means)
    help: str = ""


# (the table as written, "[executors.NAME]") -> (message, key or None, hint or None), or None
Rule = Callable[[Mapping[str, Any], str], "tuple[str, str | None, str | None] | None"]


class ExecutorType(NamedTuple):
    """What an executor type accepts, and whether it can run Python function tasks."""

    options: tuple[Option, ...]
    rules: tuple[Rule, ...] = ()  # checks across options, after each option's own
    runs_functions: bool = False


def _cores(v: Any) -> str | None:
    if isinstance(v, str):
        return None
    if isinstance(v, list) and all(is_int(x) and x >= 0 for x in v):
        return None
    return f'must be a range string such as "0-3,8-11" or a list of core numbers, not {v!r}'


def _numa_nodes(v: Any) -> str | None:
    if v == "auto":
        return None
    if isinstance(v, dict) and all(isinstance(x, (str, list)) for x in v.values()):
        return None
    return f'must be "auto" or a table such as {{ 0 = "0-7", 1 = "8-15" }}, not {v!r}'


def _adapt(v: Any) -> str | None:
    if isinstance(v, dict) and set(v) <= {"minimum", "maximum"}:
        if all(is_int(x) and x >= 0 for x in v.values()):
            return None
    return f"must be a table such as {{ minimum = 0, maximum = 8 }}, not {v!r}"


def _cluster(v: Any) -> str | None:
    """"local", or a class by its dotted path (``dask_jobqueue.SLURMCluster``)."""
    if isinstance(v, str) and v == "local":
        return None
    module, _, name = v.rpartition(".") if isinstance(v, str) else ("", "", "")
    if module and name.isidentifier() and all(p.isidentifier() for p in module.split(".")):
        return None
    hint = ' (did you mean "local"?)' if isinstance(v, str) and near(v, "local") else ""
    return (f'must be "local" or a cluster class such as "dask_jobqueue.SLURMCluster", '
            f"not {v!r}{hint}")


def _http_stage(v: Any) -> str | None:
    return None if v in ("shared", "http") else 'must be "shared" or "http"'


# -- rules across options

def _has_host(body: Mapping[str, Any], where: str) -> tuple[str, None, None] | None:
    return None if "host" in body else (f"{where} has no 'host' (the machine to run tasks on)",
                                        None, None)


def _rsync_workspace(body: Mapping[str, Any], where: str) -> tuple[str, str, str] | None:
    if body.get("stage") != "rsync" or body.get("workspace"):
        return None
    return (f'stage = "rsync" in {where} needs a workspace', "stage",
            'workspace = "/scratch/dagrun": the folder on the host that inputs are copied to')


def _has_members(body: Mapping[str, Any], where: str) -> tuple[str, None, str] | None:
    if "members" in body:
        return None
    return (f"{where} has no 'members'", None,
            'members = ["lab1", "lab2"]: the executors it spreads tasks over')


def _scheduler_or_cluster(body: Mapping[str, Any], where: str) -> tuple[str, None, str] | None:
    if ("scheduler" in body) != ("cluster" in body):
        return None
    return (f"{where} needs exactly one of 'scheduler' and 'cluster'", None,
            'scheduler = "tcp://host:8786", or cluster = "local" or "module.Class"')


def _tls_pair(body: Mapping[str, Any], where: str) -> tuple[str, str, None] | None:
    if ("tls_cert" in body) == ("tls_key" in body):
        return None
    given = "tls_cert" if "tls_cert" in body else "tls_key"
    return f"{where} needs both tls_cert and tls_key, or neither", given, None


SECONDS = "seconds"  # a type whose values are made floats (effective)
_TYPE = Option("type", "string", string, help="the executor type")
_ENV = Option("env", "table", env_table, help="added to its tasks' environment (placement.py)")
_GRACE = Option("grace_period", SECONDS, number_positive, 3.0,
                "seconds between the interrupt and the kill of a cancelled job")

TYPES: dict[str, ExecutorType] = {
    "local": ExecutorType((
        _TYPE,
        Option("max_jobs", "integer", integer(1), help="jobs at once (default: -j)"),
        Option("core_pool", "cores", _cores, help="the cores jobs are pinned to (none: unpinned)"),
        Option("numa_nodes", "nodes", _numa_nodes, "auto", "node -> cores, or the machine's"),
        Option("numa_strict", "boolean", boolean, True, "a job stays on one NUMA node"),
        _GRACE,
        _ENV,
    ), runs_functions=True),
    "ssh": ExecutorType((
        _TYPE,
        Option("host", "string", nonempty_str, help="the machine to run tasks on"),
        Option("user", "string", string, help="the login (default: ssh's)"),
        Option("port", "integer", integer(1), help="the port (default: ssh's)"),
        Option("identity_file", "string", string, help="the private key (relative to the root)"),
        Option("ssh_options", "list", str_list, (), "more ssh -o options"),
        Option("workspace", "string", nonempty_str, help="the folder on the host (stage rsync)"),
        Option("max_jobs", "integer", integer(1), 4, "jobs at once"),
        Option("max_sessions", "integer", integer(2), 10, "the host's sshd MaxSessions"),
        Option("stage", "string", one_of("shared", "rsync"), "shared", "how files get there"),
        Option("env_inherit", "boolean", boolean, False, "jobs get dagrun's environment"),
        Option("python", "string", nonempty_str, "python3",
               "the Python that runs function tasks there (dagrun importable)"),
        _GRACE,
        _ENV,
    ), rules=(_has_host, _rsync_workspace), runs_functions=True),
    "http": ExecutorType((
        _TYPE,
        Option("provisioner", "string", string, help="a command that starts workers"),
        Option("deprovisioner", "string", string, help="a command that stops them"),
        Option("bind", "string", string, "127.0.0.1:0", "the address workers pull from"),
        Option("max_jobs", "integer", integer(1), 64, "jobs at once"),
        Option("lease_timeout", SECONDS, number_positive, 30.0, "a silent worker's lease ends"),
        Option("max_workers", "integer", integer(1), 1, "workers the provisioner starts"),
        Option("stage", "string", _http_stage, "shared", "how files get there"),
        Option("tls_cert", "string", nonempty_str, help="serve HTTPS with this certificate"),
        Option("tls_key", "string", nonempty_str, help="and this key"),
        Option("grace_period", SECONDS, number_positive, 5.0,
               "seconds between the interrupt and the kill of a cancelled job"),
        Option("worker_timeout", SECONDS, number_positive, 300.0, "a job waits for a worker"),
        _ENV,
    ), rules=(_tls_pair,), runs_functions=True),
    "dask": ExecutorType((
        _TYPE,
        Option("scheduler", "string", string, help="a running scheduler's address"),
        Option("cluster", "string", _cluster, help='"local" or a cluster class dagrun starts'),
        Option("options", "table", any_table, help="the cluster class's keyword arguments"),
        Option("max_jobs", "integer", integer(1), help="jobs at once (default: the workers')"),
        Option("scale", "integer", integer(0), help="workers the cluster scales to"),
        Option("adapt", "table", _adapt, help="{ minimum, maximum } workers"),
        Option("workers", "integer", integer(1), 2, "a local cluster's workers"),
        Option("threads_per_worker", "integer", integer(1), 1, "a local worker's threads"),
        _GRACE,
        Option("env_inherit", "boolean", boolean, False, "jobs get dagrun's environment"),
        Option("connect_timeout", SECONDS, number_positive, 10.0, "to reach the scheduler"),
        Option("worker_timeout", SECONDS, number_positive, 300.0, "a job waits for a worker"),
        _ENV,
    ), rules=(_scheduler_or_cluster,), runs_functions=True),
    "slurm": ExecutorType((
        _TYPE,
        Option("max_jobs", "integer", integer(1), 256, "jobs in the queue at once"),
        Option("partition", "string", nonempty_str, help="sbatch --partition"),
        Option("account", "string", nonempty_str, help="sbatch --account"),
        Option("qos", "string", nonempty_str, help="sbatch --qos"),
        Option("mem", "string", nonempty_str, help="sbatch --mem"),
        Option("sbatch_options", "list", str_list, help="more sbatch options"),
        Option("python", "string", nonempty_str, "python3", "the Python on the nodes"),
        _GRACE,
        _ENV,
    )),
    placement.GROUP: ExecutorType((
        _TYPE,
        Option("members", "list", placement.members_list, help="the executors it spreads over"),
        _ENV,
    ), rules=(_has_members,)),
}

# type -> key -> check: what the manifest accepts in an [executors.NAME] table of that type
EXECUTOR_KEYS: dict[str, dict[str, Check]] = {
    kind: {o.name: o.check for o in t.options} for kind, t in TYPES.items()
}
# executor types that can run a function task
FUNCTION_EXECUTORS = tuple(kind for kind, t in TYPES.items() if t.runs_functions)


def rule_problem(kind: str, body: Mapping[str, Any], where: str
                 ) -> tuple[str, str | None, str | None] | None:
    """The first rule across options that ``body`` breaks: (message, key, hint), or None."""
    for rule in TYPES[kind].rules:
        problem = rule(body, where)
        if problem is not None:
            return problem
    return None


def effective(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """A checked table's options with every default filled in (seconds as floats); an option
    without a default is there only when given.  ``type`` and ``env`` are left out."""
    out: dict[str, Any] = {}
    for o in TYPES[kind].options:
        if o.name in ("type", "env"):
            continue
        value = options.get(o.name, o.default)
        if value is None:
            continue
        out[o.name] = float(value) if o.type == SECONDS else value
    return out
