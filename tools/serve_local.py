"""``python -m tools serve-local`` (``make serve``): Tinct on this machine, to try the console in a browser.

Starts a ``redis-server`` (the Debian package, as the tests use), one ``tinct worker`` and ``tinct serve`` on
loopback, with a folder store under ``--data`` (uploads in ``inbox/``, results in ``results/``), prints the URL and
a fresh token, and stops all three on Ctrl-C. The worker's log goes to ``<data>/worker.log``, the API's to
``<data>/serve.log``, so this terminal shows Tinct's own lines only.

:class:`ApiServer` (``tinct serve`` as a subprocess, ready when its health check answers) is shared with the tests
and ``python -m tools bench-api``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tools.local_services import LOOPBACK, LoggedProcess, RedisServer, WorkerProcess, env_for_workers, free_port

START_TIMEOUT_S = 60.0  # tinct serve imports the pipeline (torch) before it binds: seconds on a busy machine


class ApiServer(LoggedProcess):
    """``tinct serve`` in its own process group on a loopback port, logging to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        command = [sys.executable, "-m", "worker.cli", "serve", "--host", LOOPBACK, "--port", str(self.port),
                   *extra_args]
        with log_path.open("ab") as log_file:
            self.process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tinct serve exited ({self.process.returncode}): {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/v1/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"tinct serve did not answer in {timeout:.0f} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools serve-local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("serve-data"),
                        help="folder for Redis, uploads, results and logs (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="the console's port (default: %(default)s)")
    args = parser.parse_args(argv)
    data = args.data.absolute()
    for folder in ("inbox", "results", "work", "redis"):
        (data / folder).mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    redis_server = RedisServer(data / "redis")
    worker = server = None
    try:
        print("starting redis-server, a worker and tinct serve ...", flush=True)
        redis_server.start()
        env = env_for_workers(redis_server, work_dir=data / "work", base=os.environ, log_format="text")
        worker = WorkerProcess("local", env, data / "worker.log")
        serve_env = dict(env, TINCT_API_TOKEN=token, TINCT_API_INBOX=str(data / "inbox"),
                         TINCT_API_RESULTS=str(data / "results"))
        server = ApiServer(serve_env, data / "serve.log", port=args.port)
        server.wait_ready()
        print(f"\nTinct is running. Open this URL (it signs you in):\n\n    {server.url}/#token={token}\n\n"
              f"API token: {token}\n(curl -H 'Authorization: Bearer <token>' {server.url}/api/v1/jobs)\n"
              f"Uploads land in {data / 'inbox'}, results in {data / 'results'}; logs: {data}/*.log\n"
              "Press Ctrl-C to stop.", flush=True)
        while not stop.is_set():
            if worker.process.poll() is not None or server.process.poll() is not None:
                print(f"a process stopped; see {data}/worker.log and {data}/serve.log", file=sys.stderr)
                return 1
            stop.wait(0.5)
        return 0
    except RuntimeError as exc:
        print(f"serve-local: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping ...", flush=True)
        if server is not None:
            server.stop()
        if worker is not None:
            worker.stop()
        redis_server.close()
