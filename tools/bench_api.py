"""``python -m tools bench-api``: latency of ``GET /api/v1/jobs/{id}`` and of the event stream under a bounded load.

Starts a ``redis-server`` and ``tinct serve`` on loopback (no worker: the job under test stays queued, so its event
stream stays open like a running job's), then, from another process, sends requests at a fixed rate for a fixed
time over keep-alive connections and reports p50/p90/p99/max latency, the rate achieved and every failure:

    python -m tools bench-api --rate 300 --seconds 10 --stream-rate 100

For the event stream, latency is the time from sending the request to the first ``event: job`` line (the client
then closes the stream, as a browser leaving the page does). Latency is measured from each request's scheduled
start, so a server that falls behind shows it in the tail instead of hiding it (no coordinated omission). Every
loop is bounded by count and time and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import statistics
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from tools.local_services import LOOPBACK, RedisServer, env_for_workers
from tools.runtime import write_json
from tools.serve_local import ApiServer

THREADS = 32


def _one(connection: http.client.HTTPConnection, path: str, headers: dict[str, str], stream: bool) -> bool:
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    if response.status != 200:
        response.read()
        return False
    if not stream:
        response.read()
        return True
    while True:  # read up to the first event, then drop the connection (the server notices and ends the stream)
        line = response.fp.readline()
        if not line:
            return False
        if line.startswith(b"event: job"):
            connection.close()
            return True


def run_load(port: int, path: str, token: str, rate: float, seconds: float, stream: bool) -> dict:
    """Send ``rate`` requests/s for ``seconds`` from ``THREADS`` threads; returns latencies (ms) and failures."""
    total = int(rate * seconds)
    began = time.perf_counter() + 0.2
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {token}"}

    def worker(offset: int) -> None:
        connection = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
        for index in range(offset, total, THREADS):
            scheduled = began + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                ok = _one(connection, path, headers, stream)
                error = "" if ok else "bad status or stream ended early"
            except (OSError, http.client.HTTPException) as exc:
                ok, error = False, type(exc).__name__
            elapsed = (time.perf_counter() - scheduled) * 1000
            if stream or not ok:
                connection.close()
                connection = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    failures.append(error)
        connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    return {"requests": total, "ok": len(latencies), "failures": failures, "wall_s": wall, "latencies_ms": latencies}


def summarize(name: str, result: dict) -> str:
    values = sorted(result["latencies_ms"])

    def pct(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    mean = statistics.fmean(values) if values else float("nan")
    worst = values[-1] if values else float("nan")
    return (f"{name:<22} {result['requests']:>6} req  {result['ok'] / result['wall_s']:>6.0f} req/s  "
            f"p50 {pct(0.5):6.1f} ms  p90 {pct(0.9):6.1f} ms  p99 {pct(0.99):6.1f} ms  max {worst:6.1f} ms  "
            f"mean {mean:5.1f} ms  failed {len(result['failures'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools bench-api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=300, help="GET job requests per second (default: %(default)s)")
    parser.add_argument("--stream-rate", type=float, default=100, help="event streams opened per second")
    parser.add_argument("--seconds", type=float, default=10, help="length of each phase (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not (0 < args.rate <= 2000 and 0 < args.stream_rate <= 1000 and 0 < args.seconds <= 120):
        parser.error("keep the load bounded: --rate up to 2000, --stream-rate up to 1000, --seconds up to 120")
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="tinct-bench-api-") as tmp_name:
        tmp = Path(tmp_name)
        photo = tmp / "photo.png"
        photo.write_bytes(bytes.fromhex("89504e470d0a1a0a"))  # the job needs an input to stat, never to read
        with RedisServer(tmp / "redis") as redis_server:
            env = env_for_workers(redis_server, base=os.environ, work_dir=tmp / "work", api_token=token)
            server = ApiServer(env, tmp / "serve.log")
            try:
                server.wait_ready()
                connection = http.client.HTTPConnection(LOOPBACK, server.port, timeout=30)
                body = json.dumps({"input": str(photo), "output": str(tmp / "out") + "/"})
                connection.request("POST", "/api/v1/jobs", body, {"Authorization": f"Bearer {token}",
                                                                  "Content-Type": "application/json"})
                job_id = json.loads(connection.getresponse().read())["id"]
                connection.close()
                results = {}
                with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:  # the load: another process
                    for name, path, rate, stream in (
                        ("GET /jobs/{id}", f"/api/v1/jobs/{job_id}", args.rate, False),
                        ("GET /jobs/{id}/events", f"/api/v1/jobs/{job_id}/events", args.stream_rate, True),
                    ):
                        results[name] = pool.submit(run_load, server.port, path, token, rate, args.seconds,
                                                    stream).result()
                        print(summarize(name, results[name]), flush=True)
            finally:
                server.stop()
    if args.json:
        summaries = {name: {k: v for k, v in r.items() if k != "latencies_ms"} for name, r in results.items()}
        write_json(args.json, summaries, indent=1)
    return 1 if any(r["failures"] for r in results.values()) else 0
