"""Load test of the HTTP pull server: many simulated workers (async clients) on loopback.

    python bench/http_load.py                       # 1,000 workers, both servers
    python bench/http_load.py --transport asyncio   # only dagrun's server
    python bench/http_load.py --smoke               # a short run for CI (figures not asserted)

The server runs in a process of its own (the real Broker and Routes; ``asyncio``
is the real HttpExecutor, ``threading`` the same application behind the
standard library's ThreadingHTTPServer).  The client process opens one
keep-alive connection per simulated worker and measures:

- throughput: TASKS trivial tasks submitted at once; each worker leases up
  to SLOTS per request and reports each (tasks/s, lease latency), twice:
  "saturated" (a task takes no time: every worker hammers the server, so the
  latency is mostly queueing behind 1,000 others) and "paced" (a task takes
  TASK_TIME s, +-50 %: a fleet's load, ~1,333 tasks/s offered by default);
- idle heartbeats: no tasks; every worker long-polls /lease as an idle
  worker does, at the heartbeat interval of the default lease_timeout (5 s)
  and at 1 s; the server's CPU time over the period, as % of one core.

Bounded: every phase has a time limit; the server is killed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


# ---------------------------------------------------------------- the server process


def serve(transport: str, lease_timeout: float) -> None:
    import tempfile

    from dagrun.executors import Context, Job
    from dagrun.executors.http_pull import HttpExecutor, Routes

    if os.environ.get("LOAD_GC_FREEZE"):  # an experiment: is the p99 the collector's?
        import gc

        gc.freeze()
        gc.set_threshold(100_000, 50, 100)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # run files: the scheduler's cost
    root = tempfile.mkdtemp(prefix="dagrun-load-", dir=shm)
    ctx = Context(root, os.path.join(root, ".dagrun"), {}, 1, lambda m: None)
    ex = HttpExecutor.from_options("load", {"lease_timeout": lease_timeout, "max_jobs": 10**6}, ctx)
    if transport == "asyncio":
        ex.start()
        url = ex.url
    else:
        url = _threading_server(Routes(ex.broker, ex.token), ex)
    print(json.dumps({"url": url, "token": ex.token}), flush=True)
    next_id = 0
    for line in sys.stdin:
        cmd, *arg = line.split()
        if cmd == "cpu":
            print(json.dumps({"cpu": time.process_time()}), flush=True)
        elif cmd == "submit":
            n = int(arg[0])
            for _ in range(n):
                next_id += 1
                ex.submit(Job(next_id, f"t{next_id}", "true", root, ".", {}, root + "/runs"))
            got, t0 = 0, time.monotonic()
            while got < n and time.monotonic() - t0 < 120:
                if os.environ.get("LOAD_POLL"):
                    time.sleep(0.05)
                    got += len(ex.collect())
                else:
                    got += len(ex.wait(timeout=1.0))
            print(json.dumps({"collected": got}), flush=True)
        elif cmd == "quit":
            break
    if transport == "asyncio":
        ex.close()
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    os._exit(0)


def _threading_server(routes: Any, ex: Any) -> str:
    """The same application behind http.server.ThreadingHTTPServer (a thread per connection)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qsl, urlsplit

    from dagrun.executors.http_server import Pending, Request

    cond = threading.Condition()

    def wake(_: str | None) -> None:
        with cond:
            cond.notify_all()

    ex.broker.wake = wake

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            if not routes.authorized(headers):
                return self._send(401, b"{}")
            length = int(headers.get("content-length", "0"))
            if length > routes.body_limit(self.command, urlsplit(self.path).path):
                return self._send(413, b"{}")
            body = self.rfile.read(length)
            url = urlsplit(self.path)
            result = routes.handle(
                Request(self.command, url.path, dict(parse_qsl(url.query)), headers, body)
            )
            if isinstance(result, Pending):
                result = _park(result)
            self._send(result.status, result.body)

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _serve

    def _park(pending: Pending) -> Any:
        end = time.monotonic() + pending.wait
        with cond:
            while True:
                response = pending.poll(False)
                if response is not None:
                    return response
                left = end - time.monotonic()
                if left <= 0:
                    return pending.poll(True)
                cond.wait(left)

    ThreadingHTTPServer.request_queue_size = 4096
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


# ---------------------------------------------------------------- the client process


class Conn:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def _request(self, path: str, body: bytes) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {self.token}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    async def _response(self) -> tuple[int, bytes]:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        at = head.lower().index(b"content-length:") + 15
        length = int(head[at : head.index(b"\r\n", at)])
        return int(head[9:12]), await self.reader.readexactly(length)

    async def post(self, path: str, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self._request(path, json.dumps(data).encode()))
        status, raw = await self._response()
        return status, json.loads(raw) if raw else {}

    async def pipeline(self, path: str, bodies: list[bytes]) -> list[int]:
        """Several requests in one write (HTTP/1.1 pipelining): cheap for the load generator."""
        assert self.writer is not None
        self.writer.write(b"".join(self._request(path, b) for b in bodies))
        return [(await self._response())[0] for _ in bodies]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


REPORT = (
    b'{"worker": "%s", "lease": "%s", "exit_code": 0, "duration": 0.001, "maxrss_kb": 1000,'
    b' "stdout": "", "stderr": "", "timed_out": false, "error": null}'
)


async def worker(
    n: int, conn: Conn, slots: int, stats: dict[str, Any], phase: dict[str, Any]
) -> None:
    """Lease up to ``slots`` tasks, "run" them for ``phase["task_time"]`` s (jittered), report."""
    import random

    name = f"sim-{n}"
    while not phase["over"]:
        t0 = time.perf_counter()
        status, reply = await conn.post(
            "/lease", {"worker": name, "slots": slots, "wait": phase["wait"]}
        )
        dt = time.perf_counter() - t0
        jobs = reply.get("jobs") or []
        if jobs and t0 >= stats["submitted"]:  # not a poll parked before the tasks came
            stats["latency"].append(dt)
        if jobs and stats["first"] is None:
            stats["first"] = t0
        if jobs and phase["task_time"]:
            await asyncio.sleep(phase["task_time"] * random.uniform(0.5, 1.5))
        if jobs:
            reports = [REPORT % (name.encode(), job["lease"].encode()) for job in jobs]
            for status in await conn.pipeline("/report", reports):
                stats["reported"] += status == 200
            stats["last"] = time.perf_counter()
        if reply.get("done"):
            return


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else float("nan")


async def run_load(
    transport: str,
    workers: int,
    tasks: int,
    slots: int,
    idle: float,
    task_time_paced: float,
    intervals: tuple[float, ...] = (5.0, 1.0),
) -> dict[str, Any]:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", transport],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        hello = json.loads(server.stdout.readline())
        host, port = hello["url"].split("//")[1].rsplit(":", 1)

        def ask(cmd: str) -> dict[str, Any]:
            assert server.stdin is not None and server.stdout is not None
            server.stdin.write(cmd + "\n")
            server.stdin.flush()
            out: dict[str, Any] = json.loads(server.stdout.readline())
            return out

        phase = {"over": False, "wait": 1.0, "task_time": 0.0}
        stats: dict[str, Any] = {}
        conns = [Conn(host, int(port), hello["token"]) for _ in range(workers)]
        loop = asyncio.get_running_loop()
        tasks_ = [
            asyncio.create_task(worker(i, c, slots, stats, phase)) for i, c in enumerate(conns)
        ]
        await asyncio.sleep(min(2.0, 0.002 * workers))  # let every worker connect and poll
        result: dict[str, Any] = {
            "transport": transport,
            "workers": workers,
            "tasks": tasks,
            "slots": slots,
        }
        for label, task_time in (("saturated", 0.0), ("paced", task_time_paced)):
            stats.update(latency=[], reported=0, first=None, last=None, submitted=float("inf"))
            phase["task_time"] = task_time
            cpu0 = (await loop.run_in_executor(None, ask, "cpu"))["cpu"]
            mine0 = time.process_time()
            stats["submitted"] = time.perf_counter()
            collected = (await loop.run_in_executor(None, ask, f"submit {tasks}"))["collected"]
            cpu1 = (await loop.run_in_executor(None, ask, "cpu"))["cpu"]
            mine1 = time.process_time()
            end = time.monotonic() + 10
            while stats["reported"] < collected and time.monotonic() < end:
                await asyncio.sleep(0.01)  # the last reply may trail the outcome
            elapsed = (stats["last"] or 0) - (stats["first"] or 0)
            result[label] = {
                "task_time_s": task_time,
                "collected": collected,
                "reported": stats["reported"],
                "tasks_per_s": round(tasks / elapsed, 1) if elapsed > 0 else None,
                "lease_p50_ms": round(_pct(stats["latency"], 50) * 1000, 2),
                "lease_p99_ms": round(_pct(stats["latency"], 99) * 1000, 2),
                "server_cpu_us_per_task": round((cpu1 - cpu0) / tasks * 1e6, 1),
                "client_cpu_us_per_task": round((mine1 - mine0) / tasks * 1e6, 1),
            }
        for wait in intervals:  # idle: default heartbeat interval (lease_timeout 30 s), and 1 s
            previous, phase["wait"] = phase["wait"], wait
            await asyncio.sleep(previous + 0.2)  # every worker now polls at this interval
            window = max(idle, 2 * wait)  # whole intervals, or the polls may all miss it
            c0 = (await loop.run_in_executor(None, ask, "cpu"))["cpu"]
            await asyncio.sleep(window)
            c1 = (await loop.run_in_executor(None, ask, "cpu"))["cpu"]
            result[f"idle_cpu_pct_every_{wait:g}s"] = round(100 * (c1 - c0) / window, 2)
        phase["over"] = True
        await loop.run_in_executor(None, ask, "cpu")
        for t in tasks_:
            t.cancel()
        await asyncio.gather(*tasks_, return_exceptions=True)
        for c in conns:
            c.close()
        return result
    finally:
        try:
            server.stdin.write("quit\n")
            server.stdin.flush()
        except OSError:
            pass
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", metavar="TRANSPORT", help=argparse.SUPPRESS)
    p.add_argument("--transport", choices=("asyncio", "threading", "both"), default="both")
    p.add_argument("--workers", type=int, default=1000)
    p.add_argument("--tasks", type=int, default=20000)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--idle", type=float, default=10.0, help="seconds of each idle measurement")
    p.add_argument(
        "--task-time",
        type=float,
        default=3.0,
        help="seconds a task 'runs' in the paced phase (default 3: 1,000 workers x 4 "
        "slots offer ~1,333 tasks/s)",
    )
    p.add_argument("--smoke", action="store_true", help="50 workers, 500 tasks, 1 s idle")
    args = p.parse_args()
    if args.serve:
        serve(args.serve, 30.0)
        return 0
    if args.smoke:
        args.workers, args.tasks, args.idle, args.task_time = 50, 500, 0.5, 0.1
    intervals = (0.5, 0.2) if args.smoke else (5.0, 1.0)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.workers + 100)), hard))
    transports = ("asyncio", "threading") if args.transport == "both" else (args.transport,)
    for t in transports:
        result = asyncio.run(
            asyncio.wait_for(
                run_load(
                    t, args.workers, args.tasks, args.slots, args.idle, args.task_time, intervals
                ),
                600,
            )
        )
        print(json.dumps(result), flush=True)
        if any(result[k]["reported"] != args.tasks for k in ("saturated", "paced")):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
