"""The status snapshot is a reporter fed by events: what `dagrun status --executors` reads."""

from __future__ import annotations

import os

from dagrun.events import TaskFinished, TaskStarted
from dagrun.manifest import parse
from dagrun.numa import CorePool
from dagrun.pool_status import SNAPSHOT, StatusReporter, executor_pools, read_snapshot

MANIFEST = (
    '[executors.local]\ncore_pool = "0-3"\n'
    '[executors.lab]\ntype = "ssh"\nhost = "h1"\nmax_jobs = 5\n'
    '[tasks.a]\ncmd = "a"\n'
)


def finished(task: str, executor: str) -> TaskFinished:
    return TaskFinished(task, task, "c", True, 0, 1.0, "", "", executor=executor)


def test_running_jobs_slots_and_free_cores_follow_the_events(tmp_path):
    pool = CorePool(((0, (0, 1, 2, 3)),))
    path = str(tmp_path / SNAPSHOT)
    status = StatusReporter(path, pool, {"local": 2, "lab": 3}, {"lab": True})
    status.handle(TaskStarted("a", "a", 1, (0, 1), executor="local"))
    status.handle(TaskStarted("r1", "r1", 1, executor="lab"))
    status.handle(TaskStarted("r2", "r2", 1, executor="lab"))
    status.handle(finished("r1", "lab"))
    status.flush()
    snapshot = read_snapshot(path)
    assert snapshot is not None and snapshot["pid"] == os.getpid()
    local, lab = executor_pools(parse(MANIFEST, source="m.toml", root=str(tmp_path)), pool, 8,
                                snapshot)
    assert [j.task for j in local.running] == ["a"] and local.free == (2, 3)
    assert local.slots == 2
    assert (lab.host, lab.reachable, lab.slots) == ("h1", True, 3)
    assert [j.task for j in lab.running] == ["r2"]
    status.close()
    assert not os.path.exists(path)  # gone when the build ends


def test_a_flush_encodes_what_changed_not_every_running_job(tmp_path, monkeypatch):
    """With 1,000 jobs running, a flush after one change encodes that job only, and a flush
    after none does nothing (it used to rebuild them all before every wait)."""
    import json

    path = str(tmp_path / SNAPSHOT)
    status = StatusReporter(path, None, {"local": 2, "pool": 1000})
    for n in range(1000):
        status.handle(TaskStarted(f"t{n}", f"t{n}", 1, executor="pool"))
    status.flush()
    encoded: list[object] = []
    real = json.dumps

    def counting(value: object, **kw: object) -> str:
        encoded.append(value)
        return real(value, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(json, "dumps", counting)
    status.flush()
    assert encoded == []  # nothing changed: nothing done
    status.handle(finished("t0", "pool"))
    status.handle(TaskStarted("new", "new", 1, executor="pool"))
    status.flush()
    jobs = [v for v in encoded if isinstance(v, list)]
    assert jobs == [["new", "pool", []]]
    snapshot = read_snapshot(path)
    assert snapshot is not None and len(snapshot["running"]) == 1000
    assert ["new", "pool", []] in snapshot["running"] and ["t0", "pool", []] not in \
        snapshot["running"]
    status.close()


def test_the_clusters_are_asked_once_a_second_not_at_every_flush(tmp_path, monkeypatch):
    """An HTTP executor's describe() lists every leased task: asking it before every wait of
    the scheduler was O(running jobs) again (38 % of a build's samples with 1,000 workers)."""
    import dagrun.pool_status as ps

    now = [100.0]
    monkeypatch.setattr(ps.time, "monotonic", lambda: now[0])
    asked: list[int] = []

    def describe() -> dict[str, object]:
        asked.append(len(asked))
        return {"type": "http", "leased": [f"t{n}" for n in range(len(asked))]}

    path = str(tmp_path / SNAPSHOT)
    status = StatusReporter(path, None, {"local": 2, "pool": 1000}, describe={"pool": describe})
    for n in range(50):
        status.handle(TaskStarted(f"t{n}", f"t{n}", 1, executor="pool"))
        status.flush()
    assert asked == [0]
    snapshot = read_snapshot(path)
    assert snapshot is not None and len(snapshot["running"]) == 50
    assert snapshot["clusters"] == {"pool": {"type": "http", "leased": ["t0"]}}
    now[0] += ps.DESCRIBE_EVERY
    status.flush()  # nothing changed, but a second went by: the clusters are asked again
    assert asked == [0, 1]
    snapshot = read_snapshot(path)
    assert snapshot is not None and snapshot["clusters"]["pool"]["leased"] == ["t0", "t1"]
    status.close()
