"""What one incremental build's state update costs in four formats, at N tasks (issue 12).

Not a design: a measurement of the candidate costs, to choose one on evidence.  For a built
project (default: a generated ``wide`` build of N tasks, built once with ``python -m dagrun``):

- today: read, check and load ``.dagrun/cache`` whole (``state_cache.loads``), and write it
  back whole (``state_cache.dump`` to a temporary file, then rename), as an incremental build
  does; loading the completion log through its cached index (``CompletionLog``);
- SQLite in WAL mode: one table of N rows (task, key, stats, outputs); open, update one row,
  commit (synchronous NORMAL, then FULL), read one row by name; and ``import sqlite3``;
- an append-only log: append one record of the size of one of today's log lines (then with
  fsync); the index must still be loaded to answer "what is task T's last record";
- an mmap-ed table of fixed 128-byte records: open, mmap, find task T's slot by hashing its name,
  write its record in place (then with msync).

Usage: ``python bench/state_formats.py [--n 10000] [--folder BUILT]``; prints medians of 21.
"""

from __future__ import annotations

import argparse
import marshal
import mmap
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import gen  # noqa: E402

from dagrun.state import cache as state_cache  # noqa: E402
from dagrun.state.log import CompletionLog, LogIndex  # noqa: E402

REPS = 21
RECORD = 128


def median_ms(fn: Callable[[], Any]) -> float:
    times = []
    for _ in range(REPS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def built(n: int, folder: str | None) -> str:
    if folder:
        return folder
    folder = os.path.join(tempfile.mkdtemp(prefix="state-formats-"), "b")
    gen.gen(n, "wide", folder, peers=False)
    subprocess.run([sys.executable, "-m", "dagrun", "build", "-j2"], cwd=folder, check=True,
                   stdout=subprocess.DEVNULL)
    return folder


def today(state: str) -> dict[str, float]:
    path = os.path.join(state, "cache")

    def load() -> tuple[Any, Any]:
        with open(path, "rb") as f:
            return state_cache.loads(f.read())

    data, blob = load()

    def rewrite() -> None:
        tmp = path + ".bench.tmp"
        with open(tmp, "wb") as f:
            state_cache.dump(data, f, blob)
        os.replace(tmp, path)

    index = LogIndex.from_cache(data.get("log")) if data else None

    def log_open() -> None:
        CompletionLog(os.path.join(state, "log"), index, writable=False).close()

    return {"cache: read + check + load whole": median_ms(load),
            "cache: write whole + rename": median_ms(rewrite),
            "completion log: open with the cached index": median_ms(log_open),
            "cache size (KB)": os.path.getsize(path) / 1024}


def sqlite_wal(names: list[str], work: str) -> dict[str, float]:
    db = os.path.join(work, "state.sqlite")
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t (name TEXT PRIMARY KEY, key TEXT, stats BLOB, outputs BLOB)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?, ?)",
                    [(nm, "0" * 32, b"s" * 40, b"o" * 40) for nm in names])
    con.commit()
    con.close()
    last = names[-1]

    def update(sync: str) -> Callable[[], None]:
        def run() -> None:
            c = sqlite3.connect(db)
            c.execute(f"PRAGMA synchronous={sync}")
            c.execute("UPDATE t SET key = ?, outputs = ? WHERE name = ?",
                      (f"{time.time_ns():032d}", b"p" * 40, last))
            c.commit()
            c.close()
        return run

    def read_one() -> None:
        c = sqlite3.connect(db)
        c.execute("SELECT key, stats, outputs FROM t WHERE name = ?", (last,)).fetchone()
        c.close()

    def read_all() -> None:
        c = sqlite3.connect(db)
        c.execute("SELECT name, key, stats, outputs FROM t").fetchall()
        c.close()

    return {"sqlite WAL: open + update 1 row + commit (synchronous=NORMAL)": median_ms(
                update("NORMAL")),
            "sqlite WAL: open + update 1 row + commit (synchronous=FULL, fsync)": median_ms(
                update("FULL")),
            "sqlite WAL: open + read 1 row": median_ms(read_one),
            "sqlite WAL: open + read all rows": median_ms(read_all),
            "import sqlite3 (fresh interpreter, minus `python -c pass`)": import_cost()}


def import_cost() -> float:
    def start(code: str) -> float:
        times = []
        for _ in range(11):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    return (start("import sqlite3") - start("pass")) * 1000


def append_log(work: str) -> dict[str, float]:
    path = os.path.join(work, "append.log")
    line = (b'{"task":"t09999","key":"' + b"0" * 32 + b'","outputs":[[1,2,3,0]],"d":0.01}')

    def append(sync: bool) -> Callable[[], None]:
        def run() -> None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            data = line + b" %08x\n" % zlib.crc32(line)
            os.write(fd, data)
            if sync:
                os.fsync(fd)
            os.close(fd)
        return run

    return {"append-only log: append 1 record": median_ms(append(False)),
            "append-only log: append 1 record + fsync": median_ms(append(True))}


def mmap_table(names: list[str], work: str) -> dict[str, float]:
    path = os.path.join(work, "table.bin")
    slots = 1 << (2 * len(names) - 1).bit_length()
    with open(path, "wb") as f:
        f.truncate(slots * RECORD)
    last = names[-1].encode()

    def write(sync: bool) -> Callable[[], None]:
        def run() -> None:
            fd = os.open(path, os.O_RDWR)
            m = mmap.mmap(fd, 0)
            i = zlib.crc32(last) & (slots - 1)  # open addressing: the first slot, here
            rec = marshal.dumps((last, "0" * 32, (1, 2, 3, 0)))[:RECORD].ljust(RECORD, b"\0")
            m[i * RECORD:(i + 1) * RECORD] = rec
            if sync:
                m.flush()
            m.close()
            os.close(fd)
        return run

    return {"mmap table: open + write 1 record in place": median_ms(write(False)),
            "mmap table: open + write 1 record in place + msync": median_ms(write(True))}


def kept(state: str) -> dict[str, float]:
    """What was built (issue 12, round 3): a partial build's journal instead of the whole cache,
    and the no-op proof's rows as columns instead of tuples."""
    from dagrun.state import proof as fresh

    with open(os.path.join(state, "cache"), "rb") as f:
        data, _ = state_cache.loads(f.read())
    assert data is not None
    some = dict(list(data["stats"].items())[:1])
    names = list(data["keys"].items())[:2]
    journal = state_cache.Journal((1, 2, 3, 4), some, dict(names))

    def write_journal() -> None:
        journal.write(state)

    with open(os.path.join(state, fresh.FILE), "rb") as f:
        raw = f.read()
    blob = memoryview(raw)[:-4]
    proof = marshal.loads(blob)
    sources, outputs = fresh.Rows.unpack(*proof[8:10]), fresh.Rows.unpack(*proof[10:12])
    as_tuples = marshal.dumps((list(sources), list(outputs)))

    def load_columns() -> None:
        got = marshal.loads(blob)
        fresh.Rows.unpack(*got[8:10])
        fresh.Rows.unpack(*got[10:12])

    def load_tuples() -> None:
        marshal.loads(as_tuples)

    def rewrite_columns() -> None:
        sources.update({sources.paths[-1]: fresh.NEVER})
        marshal.dumps((*sources.pack(), *outputs.pack()))

    result = {
        "kept: journal of 1 stat entry + 2 keys, write + rename": median_ms(write_journal),
        "kept: proof rows as columns, load (proof format 4 and 5)": median_ms(load_columns),
        "before: proof rows as tuples, load (proof format 3)": median_ms(load_tuples),
        "kept: proof rows as columns, update 1 row + dump": median_ms(rewrite_columns),
    }
    os.unlink(os.path.join(state, state_cache.JOURNAL))  # the bench's journal is not the cache's
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--folder", help="an already built project (default: generate one)")
    a = ap.parse_args(argv)
    folder = built(a.n, a.folder)
    names = gen.names(a.n)
    rows: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=folder) as work:  # the same file system
        rows.update(today(os.path.join(folder, ".dagrun")))
        rows.update(kept(os.path.join(folder, ".dagrun")))
        rows.update(sqlite_wal(names, work))
        rows.update(append_log(work))
        rows.update(mmap_table(names, work))
    print(f"N = {a.n:,}; medians of {REPS} (ms)\n\n| operation | ms |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
