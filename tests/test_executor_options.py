"""Executor options are declared once (executor_options.py) and checked as the manifest is read."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dagrun.errors import ManifestError
from dagrun.executor_options import EXECUTOR_KEYS, TYPES, effective
from dagrun.manifest import parse


def test_rsync_without_a_workspace_is_a_manifest_error_with_its_line():
    text = '[executors.lab]\ntype = "ssh"\nhost = "h"\nstage = "rsync"\n[tasks.a]\ncmd = "true"\n'
    with pytest.raises(ManifestError) as info:
        parse(text, source="m.toml")
    assert str(info.value) == (
        "m.toml:4: key 'stage': stage = \"rsync\" in [executors.lab] needs a workspace "
        "(workspace = \"/scratch/dagrun\": the folder on the host that inputs are copied to)"
    )


def test_tls_cert_without_tls_key_is_a_manifest_error_with_its_line():
    text = '[executors.pool]\ntype = "http"\n\ntls_cert = "c.pem"\n[tasks.a]\ncmd = "true"\n'
    with pytest.raises(ManifestError) as info:
        parse(text, source="m.toml")
    assert str(info.value) == (
        "m.toml:4: key 'tls_cert': [executors.pool] needs both tls_cert and tls_key, or neither"
    )


def test_effective_options_fill_in_the_defaults():
    assert effective("ssh", {"type": "ssh", "host": "h", "grace_period": 1}) == {
        "host": "h", "ssh_options": (), "max_jobs": 4, "max_sessions": 10, "stage": "shared",
        "env_inherit": False, "grace_period": 1.0, "python": "python3",
    }
    assert effective("local", {}) == {"numa_nodes": "auto", "numa_strict": True,
                                      "grace_period": 3.0}


def test_the_declared_defaults_are_the_executors_own():
    from dagrun.executors import dask, http_pull

    assert http_pull.Options(**effective("http", {})) == http_pull.Options()
    dask_defaults = effective("dask", {})
    assert dask_defaults["connect_timeout"] == dask.CONNECT_TIMEOUT
    assert dask_defaults["worker_timeout"] == dask.WORKER_TIMEOUT


def test_the_key_tables_come_from_the_declarations():
    for kind, declared in TYPES.items():
        assert list(EXECUTOR_KEYS[kind]) == [o.name for o in declared.options]


def test_reading_a_manifest_imports_no_executor_module():
    code = (
        "import sys, dagrun.manifest as m\n"
        "m.parse('[executors.d]\\ntype = \"dask\"\\ncluster = \"local\"\\n"
        "[tasks.a]\\ncmd = \"true\"\\n')\n"
        "print(sorted(n for n in sys.modules if n.startswith('dagrun.executors')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
