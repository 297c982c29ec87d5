"""The completion log: append-only, reloadable, forgiving of torn and foreign content."""

from __future__ import annotations

import json

from dagrun.state.log import HEADER, CompletionLog, LogIndex


def add(log: CompletionLog, task: str, key: str, duration: float = 1.5) -> None:
    log.append(task, key, {"cmd": f"run {task}"}, duration, 1024, 1.7e9)


def test_append_and_reload(tmp_path):
    path = str(tmp_path / "log")
    log = CompletionLog(path)
    add(log, "a", "aa11")
    add(log, "b", "bb22", 0.25)
    log.close()
    with open(path, "rb") as f:
        assert f.read().startswith(HEADER)
    again = CompletionLog(path)
    assert again.done("a", "aa11") and again.done("b", "bb22") and not again.done("c", "cc33")
    assert again.duration("b") == 0.25
    assert again.latest("a")["parts"] == {"cmd": "run a"}
    assert again.latest("zzz") is None
    again.close()


def test_latest_record_wins(tmp_path):
    path = str(tmp_path / "log")
    log = CompletionLog(path)
    add(log, "a", "0001")
    add(log, "a", "0002")
    log.close()
    log = CompletionLog(path)
    assert log.latest("a")["key"] == "0002"
    assert log.done("a", "0002")
    assert not log.done("a", "0001")  # an older key never counts: in.txt one -> two -> one reruns
    log.close()


def test_torn_last_record_is_ignored_and_cut(tmp_path):
    path = tmp_path / "log"
    log = CompletionLog(str(path))
    add(log, "a", "aa11")
    log.close()
    with open(path, "ab") as f:
        f.write(b'{"task":"b","key":"bb22","dur')
    log = CompletionLog(str(path))
    assert log.done("a", "aa11") and not log.done("b", "bb22")
    assert any("torn" in w for w in log.warnings)
    add(log, "c", "cc33")
    log.close()
    lines = path.read_bytes().splitlines()
    assert [json.loads(x)["task"] for x in lines[1:]] == ["a", "c"]


def test_unknown_version_starts_over(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"# dagrun log v99\n{}\n")
    log = CompletionLog(str(path))
    assert log.index.latest == {}
    assert any("starting over" in w for w in log.warnings)
    add(log, "a", "aa11")
    log.close()
    assert path.read_bytes().startswith(HEADER)


def test_damaged_middle_record_is_skipped(tmp_path):
    path = tmp_path / "log"
    log = CompletionLog(str(path))
    add(log, "a", "aa11")
    log.close()
    with open(path, "ab") as f:
        f.write(b"not json at all\n")
    log = CompletionLog(str(path))
    add(log, "b", "bb22")
    log.close()
    log = CompletionLog(str(path))
    assert log.done("a", "aa11") and log.done("b", "bb22")
    log.close()


def test_forget(tmp_path):
    path = str(tmp_path / "log")
    log = CompletionLog(path)
    add(log, "a", "aa11")
    add(log, "b", "bb22")
    log.forget("a")
    log.close()
    log = CompletionLog(path)
    assert not log.done("a", "aa11") and log.done("b", "bb22") and log.latest("a") is None
    log.close()


def test_cached_index_reads_only_the_tail(tmp_path):
    path = str(tmp_path / "log")
    log = CompletionLog(path)
    add(log, "a", "aa11")
    cached = LogIndex.from_cache(log.index.to_cache())
    add(log, "b", "bb22")  # appended after the cache was taken (say, by a build that crashed)
    log.close()
    log = CompletionLog(path, cached)
    assert log.done("a", "aa11") and log.done("b", "bb22")
    log.close()
    stale = LogIndex(ino=cached.ino, size=10**9)  # larger than the file: not trusted
    log = CompletionLog(path, stale)
    assert log.done("a", "aa11") and log.done("b", "bb22")
    log.close()


def test_compaction_keeps_latest_records(tmp_path):
    path = tmp_path / "log"
    log = CompletionLog(str(path))
    for n in range(1100):
        add(log, f"t{n % 10}", f"{n:04x}")
    log.started("t9")  # an attempt that did not succeed stays unfinished through a compaction
    assert log.compact_if_needed()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 12
    assert log.unfinished("t9") and not log.done("t9", f"{1099:04x}")
    for n in range(10):
        assert log.latest(f"t{n}")["key"] == f"{1090 + n:04x}"
    add(log, "t0", "ffff")
    log.close()
    log = CompletionLog(str(path))
    assert log.latest("t0")["key"] == "ffff" and log.index.records == 12
    assert log.unfinished("t9")
    assert not log.compact_if_needed()
    log.close()


def test_item2_a_started_attempt_invalidates_until_its_success(tmp_path):
    path = str(tmp_path / "log")
    log = CompletionLog(path)
    add(log, "a", "aa11")
    log.started("a")  # written before the attempt's job is submitted
    assert not log.done("a", "aa11") and log.unfinished("a")
    log.close()
    log = CompletionLog(path)  # a kill -9 now: the attempt never ends
    assert not log.done("a", "aa11") and log.success("a")[0] == "aa11"
    add(log, "a", "aa11")
    log.close()
    log = CompletionLog(path)
    assert log.done("a", "aa11") and not log.unfinished("a")
    log.close()


def test_item3_a_success_records_its_output_identities(tmp_path):
    path = str(tmp_path / "log")
    log = CompletionLog(path)
    log.append("a", "aa11", {}, 0.5, 10, 1.7e9, [(12, 1_700_000_000_123_456_789, 99, 0)])
    log.close()
    log = CompletionLog(path)
    assert log.success("a") == ("aa11", ((12, 1_700_000_000_123_456_789, 99, 0),))
    log.close()


def test_item5_every_record_is_checksummed_and_a_damaged_one_skipped(tmp_path):
    path = tmp_path / "log"
    log = CompletionLog(str(path))
    add(log, "a", "aa11")
    add(log, "b", "bb22")
    log.close()
    lines = path.read_bytes().splitlines(keepends=True)
    assert all(json.loads(x)["crc"] for x in lines[1:])  # still JSON, one object a line
    good = path.read_bytes()
    # a key, a name or a digit changed: the record is skipped, not half trusted
    changes = ((b'"aa11"', b'"aa12"'), (b'"a"', b'"x"'), (b'"duration":1.5', b'"duration":7.5'))
    for old, new in changes:
        path.write_bytes(good.replace(old, new, 1))
        log = CompletionLog(str(path))
        assert log.success("a") is None and log.success("x") is None
        assert log.done("b", "bb22")
        assert any("damaged record" in w for w in log.warnings)
        log.close()
