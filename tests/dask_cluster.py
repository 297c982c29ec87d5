"""A real Dask LocalCluster for the dask executor's tests (PLATFORM.md section 2a).

``dask_scheduler`` (session scope) is the address of one LocalCluster: 2 worker
processes, 1 thread each (and the resource ``threads = 1``), no dashboard,
quiet, ``allowed-failures = 0`` like the clusters dagrun starts itself, with
``DASK_TEMPORARY_DIRECTORY`` in a temporary folder.  Tests point manifests at
it with ``scheduler = "..."``, so most of them pay no cluster start-up.

``dask_executor_factory(tmp_path)`` makes an (unstarted) DaskExecutor on that
cluster, for the executor contract suite (tests/test_executor_contract.py).
"""

from __future__ import annotations

import atexit
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_CLUSTER: dict[str, Any] = {}


def shared_scheduler() -> str:
    """The shared LocalCluster's address; started on first use, closed at the session's end."""
    if "address" not in _CLUSTER:
        import dask
        from distributed import LocalCluster

        scratch = tempfile.mkdtemp(prefix="dagrun-dask-tests-")
        os.environ["DASK_TEMPORARY_DIRECTORY"] = scratch  # the CLI processes the tests start too
        config = {"temporary-directory": scratch, "distributed.scheduler.allowed-failures": 0}
        with dask.config.set(config):
            cluster = LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # not :8787
                silence_logs=logging.CRITICAL, local_directory=scratch,
                resources={"threads": 1},
            )
        _CLUSTER.update(cluster=cluster, address=cluster.scheduler_address, scratch=scratch)
        atexit.register(close_shared)
    return str(_CLUSTER["address"])


def close_shared() -> None:
    cluster = _CLUSTER.pop("cluster", None)
    _CLUSTER.pop("address", None)
    if cluster is not None:
        cluster.close()
    scratch = _CLUSTER.pop("scratch", None)
    if scratch is not None:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def dask_scheduler() -> Iterator[str]:
    pytest.importorskip("distributed")
    yield shared_scheduler()
    close_shared()


def dask_executor_factory(tmp_path: Path) -> Any:
    """An unstarted DaskExecutor (``start()`` connects) on the shared LocalCluster."""
    from dagrun.executors.dask import DaskExecutor

    state = tmp_path / ".dagrun"
    state.mkdir(exist_ok=True)
    return DaskExecutor("dask", scheduler=shared_scheduler(), max_jobs=2, state_dir=str(state),
                        grace=1.0)


def worker_pids(address: str) -> set[int]:
    """The pids of the cluster's worker processes."""
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        return set(client.run(os.getpid).values())
