"""A real single-node Slurm for tests marked ``slurm`` (PLATFORM.md section 2c).

``slurm_cluster`` (session scope) starts munged (if no munge daemon answers),
slurmctld and slurmd in the foreground with a private configuration in a
temporary folder, waits until the node is idle, sets ``SLURM_CONF`` for this
process and its children, and stops everything at the end.  It skips when
the Slurm daemons are not installed or we are not root (.ci/run installs
slurm-wlm, so CI runs these tests).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _munge_up() -> None:
    if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        return
    subprocess.run(["install", "-d", "-o", "munge", "-g", "munge", "-m", "0755", "/run/munge"],
                   check=True)
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
    for _ in range(100):
        if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("munged did not start")


def _config(d: Path, scheduler_parameters: str = "") -> str:
    node = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    with open("/proc/meminfo") as f:
        mem_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    mem = max(256, mem_kb // 1024 - 1024)
    return f"""ClusterName=dagruntest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
""" + (f"SchedulerParameters={scheduler_parameters}\n" if scheduler_parameters else "")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``{"SLURM_CONF": path, "partition": "debug"}`` of a running single-node Slurm."""
    if os.geteuid() != 0 or not shutil.which("slurmctld") or not shutil.which("slurmd"):
        pytest.skip("needs root and slurm-wlm (slurmctld, slurmd, munge)")
    with slurm_up(tmp_path_factory.mktemp("slurm")) as info:
        yield info


@contextmanager
def slurm_up(d: Path, scheduler_parameters: str = "") -> Iterator[dict[str, str]]:
    """A single-node Slurm with its state in ``d``, SLURM_CONF set meanwhile (also for bench/);
    ``scheduler_parameters``: slurm.conf's SchedulerParameters (default: Slurm's own)."""
    for sub in ("state", "spool", "log"):
        (d / sub).mkdir()
    conf = d / "slurm.conf"
    conf.write_text(_config(d, scheduler_parameters))
    _munge_up()
    env = dict(os.environ, SLURM_CONF=str(conf))
    procs = []
    for daemon in ("slurmctld", "slurmd"):
        out = open(d / "log" / f"{daemon}.out", "wb")
        procs.append((subprocess.Popen([daemon, "-D"], env=env, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=out), out))
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        deadline = time.monotonic() + 30
        while True:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                                   text=True)
            if "idle" in state.stdout:
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p, _ in procs):
                logs = "".join(f.read_text(errors="replace")[-2000:]
                               for f in sorted((d / "log").iterdir()))
                raise RuntimeError(f"slurm did not start: {state.stdout}{state.stderr}\n{logs}")
            time.sleep(0.2)
        yield {"SLURM_CONF": str(conf), "partition": "debug"}
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
        for p, _ in reversed(procs):
            p.terminate()
        for p, out in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            out.close()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def fail_node_and_resume(timeout: float = 20.0) -> None:
    """This machine's node fails (``down``: its jobs end NODE_FAIL) and comes back.  Slurm
    refuses ``resume`` for a moment while the node's jobs are still being torn down
    ("Invalid node state transition"): asked again until it takes."""
    node = socket.gethostname().split(".")[0]
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=down",
                    "reason=dagrun-test"], check=True, capture_output=True)
    end = time.monotonic() + timeout
    while True:
        r = subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return
        if time.monotonic() > end:
            raise AssertionError(f"scontrol could not resume {node}: {r.stderr.strip()}")
        time.sleep(0.2)
