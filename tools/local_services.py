"""Real services on loopback: a ``redis-server`` process and moto's HTTP server (S3 and SQS), for the tests and
for ``python -m tools bench --service``.

Tinct's service is measured and tested against the real things, as rq's tests run against a real Redis: queues,
restarts and outages (and their costs) behave as they do in production only when the wire protocol and the
process boundaries are real. This module lives in ``tools`` because tools may not import ``tests``; the pytest
fixtures over it stay in ``tests/services.py``. It needs the dev extra (``pip install -e .[dev]``: moto's server
and werkzeug) and a ``redis-server`` binary on PATH::

    with RedisServer(tmp / "redis") as redis_server, S3Server() as s3_server:
        settings = s3_settings(s3_server, redis_url=redis_server.url)
        env = env_for_workers(redis_server, s3_server, base=os.environ)   # for ``tinct worker`` subprocesses

Each server picks a free loopback port, so parallel runs do not collide.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import redis
from botocore.config import Config
from moto.core import DEFAULT_ACCOUNT_ID
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from moto.server import ThreadedMotoServer
from redis.backoff import NoBackoff
from redis.retry import Retry
from werkzeug.serving import make_server

from worker.settings import Settings

LOOPBACK = "127.0.0.1"
REDIS_BINARY = "redis-server"
# moto accepts any credentials while its IAM checks are off (the default); these are the values its docs use.
S3_ACCESS_KEY_ID = "testing"
S3_SECRET_ACCESS_KEY = "testing"
S3_REGION = "us-east-1"
START_TIMEOUT_S = 15.0

_moto_log = logging.getLogger("tools.local_services.moto")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago.

    The kernel picks it (bind to port 0), so parallel test runs do not collide on fixed ports. Another process can
    still take it before the server binds; the servers below retry with a new port when that happens on first
    start.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


# ------------------------------------------------------------------------------------------------------ Redis


def _start_on_port(server: RedisServer | S3Server, try_start: Callable[[], bool]) -> bool:
    """Run ``try_start`` on ``server.port``; True once it started. A port another process grabbed since
    :func:`free_port` is replaced (up to 3 tries) on the first start only: a restart must keep its port, because
    clients and worker subprocesses already hold the URL."""
    for _attempt in range(3):
        if try_start():
            server._port_fixed = True
            return True
        if server._port_fixed:
            return False
        server.port = free_port()
    return False


class RedisServer:
    """A real ``redis-server`` on a loopback port, with an append-only file fsynced on every write.

    ``--appendonly yes --appendfsync always`` makes every acknowledged write survive a crash, so a test can
    SIGKILL Redis mid-job, start it again on the same port and directory, and check the queue is intact; that is
    the durability the service relies on for Celery's broker. ``--save ''`` turns off RDB snapshots, which would
    otherwise fork a child at unpredictable moments on a 2-core machine.
    """

    def __init__(self, directory: str | os.PathLike, port: int | None = None, binary: str = REDIS_BINARY) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._port_fixed = port is not None
        self.port = port if port is not None else free_port()
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new redis-py client for this server (short timeouts, so a stopped server fails fast)."""
        options: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}
        options.update(kwargs)
        return redis.Redis(host=LOOPBACK, port=self.port, db=0, **options)

    def _admin_client(self) -> redis.Redis:
        # redis-py retries connection errors with exponential backoff by default: right for applications, but it
        # turns "is it up yet?" polling and SHUTDOWN (whose connection always drops) into seconds of sleeping.
        return self.client(socket_connect_timeout=0.5, socket_timeout=5.0, retry=Retry(NoBackoff(), 0))

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start (or restart) the server on the same port and directory; returns when it answers PING (see
        :func:`_start_on_port` for the port)."""
        if self.running or _start_on_port(self, self._spawn):
            return
        raise RuntimeError(f"redis-server did not start on port {self.port}: {self._log_tail()}")

    def _spawn(self) -> bool:
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        client = self._admin_client()
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False  # exited: usually the port was taken
                try:
                    if client.ping():
                        return True
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                time.sleep(0.02)
        finally:
            client.close()
        self.kill()
        return False

    def stop(self) -> None:
        """Graceful shutdown: SHUTDOWN fsyncs the append-only file and exits."""
        if not self.running:
            return
        client = self._admin_client()
        try:
            client.shutdown()
        except (redis.ConnectionError, redis.TimeoutError):
            pass  # already going away
        finally:
            client.close()
        self._reap(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, as a crashed node or an OOM kill would: no chance to flush anything beyond what is fsynced."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=START_TIMEOUT_S)

    def _reap(self, fallback: signal.Signals) -> None:
        assert self.process is not None
        try:
            self.process.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.send_signal(fallback)
            self.process.wait(timeout=START_TIMEOUT_S)

    def flush(self) -> None:
        """Empty every database (between tests)."""
        client = self._admin_client()
        try:
            client.flushall()
        finally:
            client.close()

    def close(self) -> None:
        """Stop for good (session teardown); kills if a graceful stop fails."""
        try:
            self.stop()
        finally:
            self.kill()

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "no log written"
        return " | ".join(lines[-5:]) or "empty log"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------------- S3


class _TrackingHandler(MotoRequestHandler):
    """moto's request handler, remembering its connection so a stop can cut it.

    The server speaks HTTP/1.1 keep-alive, and shutting down the listening socket leaves established connections
    being served by their handler threads: boto3's pooled connections would keep working and "S3 down" would be
    a lie. Requests are logged at DEBUG instead of werkzeug's stderr lines.
    """

    def setup(self) -> None:
        super().setup()
        self.server.tinct_connections.add(self.connection)  # type: ignore[attr-defined]

    def finish(self) -> None:
        self.server.tinct_connections.discard(self.connection)  # type: ignore[attr-defined]
        super().finish()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        _moto_log.debug("%s %s", self.requestline, code)


class _StoppableMotoServer(ThreadedMotoServer):
    """``ThreadedMotoServer`` that really goes away on :meth:`stop` and fails loudly when it cannot bind.

    Upstream's ``stop`` leaves the listening socket open (connections queue up and time out instead of being
    refused) and keep-alive connections alive, and its ``start`` waits forever if the port is taken (werkzeug
    exits the server thread). This subclass closes both and reports bind failures.
    """

    def __init__(self, port: int) -> None:
        super().__init__(ip_address=LOOPBACK, port=port, verbose=False)
        self.bind_error: BaseException | None = None

    def _server_entry(self) -> None:
        try:
            app = DomainDispatcherApplication(create_backend_app)
            server = make_server(self._ip_address, self._port, app, True, request_handler=_TrackingHandler)
        except BaseException as error:  # werkzeug calls sys.exit(1) when the port is taken
            self.bind_error = error
            self._server_ready_event.set()
            return
        server.tinct_connections = set()  # type: ignore[attr-defined]
        self._server = server
        self._server_ready_event.set()
        server.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        server = self._server
        super().stop()
        if server is None:
            return
        server.server_close()
        for connection in list(server.tinct_connections):  # type: ignore[attr-defined]
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server = None


class S3Server:
    """moto's real HTTP server (S3, SQS and every other service moto fakes) on a loopback port, in this process.

    State lives in moto's in-process backends, so :meth:`stop` followed by :meth:`start` on the same port models
    an object store that went away for a while and came back with its data. :meth:`reset` empties it.
    """

    def __init__(self, port: int | None = None) -> None:
        self._port_fixed = port is not None
        self.port = port if port is not None else free_port()
        self._server: _StoppableMotoServer | None = None
        self._clients: dict[str, Any] = {}

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Start (or restart) on the same port; a port taken since :func:`free_port` is replaced on first start."""
        if self._server is not None:
            return
        attempt: _StoppableMotoServer | None = None

        def try_start() -> bool:
            nonlocal attempt
            attempt = _StoppableMotoServer(self.port)
            attempt.start()
            return attempt.bind_error is None

        if _start_on_port(self, try_start):
            self._server = attempt
            return
        raise RuntimeError(f"moto server could not bind port {self.port}: {attempt.bind_error!r}")

    def stop(self) -> None:
        """Take the endpoint away: new connections are refused and open ones are cut; the data stays."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def reset(self) -> None:
        """Forget every bucket, object, queue and IAM user, and turn credential checks off again."""
        self._moto_api("reset", b"")
        self._moto_api("reset-auth", b"inf")

    @contextmanager
    def enforce_auth(self) -> Iterator[None]:
        """Inside the block, moto checks credentials and IAM policies as AWS does.

        By default moto accepts any keys and allows everything. With checks on, unknown access keys fail with
        ``InvalidAccessKeyId``, a wrong secret with ``SignatureDoesNotMatch``, and a known user without a policy
        with ``AccessDenied``: the real error paths for credential trouble. Create IAM users and keys before
        entering (the switch applies to every request, setup included). The switch is process-wide in moto.
        """
        self._moto_api("reset-auth", b"0")
        try:
            yield
        finally:
            self._moto_api("reset-auth", b"inf")

    def _moto_api(self, action: str, body: bytes) -> None:
        # text/plain: werkzeug would parse a form body and hide it from moto.
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/{action}", data=body, method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def credentials_env(self) -> dict[str, str]:
        """AWS variables that make any boto3 client in a subprocess use the fake credentials and region."""
        return {
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_ACCESS_KEY,
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_REGION": S3_REGION,
        }

    def client(self, service: str = "s3", **kwargs: Any) -> Any:
        """A boto3 client for ``service`` ("s3", "sqs", "iam", ...) at this endpoint, for test setup and assertions.

        Without ``kwargs`` the client is cached: creating one loads botocore's service model (a few hundred ms),
        and boto3 clients are safe to share between threads. Closing it is harmless (botocore reopens its pool).
        """
        if not kwargs and service in self._clients:
            return self._clients[service]
        options: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "region_name": S3_REGION,
            "config": Config(s3={"addressing_style": "path"}),
            "aws_access_key_id": S3_ACCESS_KEY_ID,
            "aws_secret_access_key": S3_SECRET_ACCESS_KEY,
        }
        options.update(kwargs)
        client = boto3.session.Session().client(service, **options)
        if not kwargs:
            self._clients[service] = client
        return client

    def make_bucket(self, name: str) -> str:
        """Create a bucket (idempotent) and return its URI, ``s3://<name>/``."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return f"s3://{name}/"

    def seed_objects(self, bucket: str, keys: Iterable[str], body: bytes = b"x") -> int:
        """Put many objects straight into moto's in-process backend, bypassing HTTP (thousands a second).

        For tests that need a large bucket (listing, pagination) but are not about uploads; the objects are
        indistinguishable from uploaded ones over the HTTP API.
        """
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]  # S3 backends are per account and partition
        count = 0
        for key in keys:
            backend.put_object(bucket, key, body)
            count += 1
        return count

    def close(self) -> None:
        self.stop()
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def s3_settings(server: S3Server, **overrides: Any) -> Settings:
    """Settings pointing at ``server`` with the fake credentials, and one botocore retry instead of eight.

    A single retry keeps the retry path exercised while a test of an outage fails in about a second rather than
    after botocore's full adaptive backoff. ``overrides`` are :class:`Settings` fields.
    """
    values: dict[str, Any] = {
        "s3_endpoint_url": server.endpoint_url,
        "s3_region": S3_REGION,
        "s3_access_key_id": S3_ACCESS_KEY_ID,
        "s3_secret_access_key": S3_SECRET_ACCESS_KEY,
        "s3_max_attempts": 1,
    }
    values.update(overrides)
    return Settings(**values)


# Variables a developer's shell may carry that would point a test or bench worker at real infrastructure.
_LEAKY_PREFIXES = ("TINCT_", "AWS_")


def env_for_workers(
    redis_server: RedisServer | None = None,
    s3_server: S3Server | None = None,
    *,
    work_dir: str | os.PathLike | None = None,
    base: Mapping[str, str] | None = None,
    **settings: object,
) -> dict[str, str]:
    """Environment variables that point Celery worker subprocesses at these services.

    Returns only the ``TINCT_*``/``AWS_*`` variables when ``base`` is None (merge them yourself); with ``base``
    (typically ``os.environ``) returns a complete environment in which the caller's own ``TINCT_*`` and ``AWS_*``
    variables (a profile, real keys, a real endpoint) are dropped first, so a test or a benchmark can never reach
    real AWS. ``AWS_ENDPOINT_URL`` sends every boto3 client in the worker (S3 and the SQS trigger) to moto.
    ``settings`` are extra :class:`Settings` fields, written as ``TINCT_<FIELD>``.
    """
    env: dict[str, str] = {}
    if base is not None:
        env.update({name: value for name, value in base.items() if not name.startswith(_LEAKY_PREFIXES)})
    # Isolate from ~/.aws: a developer's default profile must not leak into tests.
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    if redis_server is not None:
        env["TINCT_REDIS_URL"] = redis_server.url
    if s3_server is not None:
        env.update(s3_server.credentials_env())
        env["AWS_ENDPOINT_URL"] = s3_server.endpoint_url
        env["TINCT_S3_ENDPOINT_URL"] = s3_server.endpoint_url
        env["TINCT_S3_REGION"] = S3_REGION
    if work_dir is not None:
        env["TINCT_WORK_DIR"] = os.fspath(work_dir)
    for name, value in settings.items():
        env[f"TINCT_{name.upper()}"] = str(value)
    return env


class LoggedProcess:
    """A subprocess whose output goes to ``log_path``: what tests and tools quote when it misbehaves."""

    log_path: Path

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.text().splitlines()[-lines:]) or "(no log)"


class WorkerProcess(LoggedProcess):
    """``tinct worker`` as deployed (solo pool for the colorize queue, events on) in its own process group, logging
    to a file that tests and benchmarks read or quote when something goes wrong."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path, queues: str = "colorize,io") -> None:
        self.name = name
        self.log_path = log_path
        command = [sys.executable, "-m", "worker.cli", "worker", "--queues", queues, "--hostname", f"{name}@%h",
                   "--loglevel", "INFO"]
        with log_path.open("ab") as log_file:
            self.process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def owns(self, hostname: str) -> bool:
        return hostname.split("@", 1)[0] == self.name

    def cpu_seconds(self) -> float:
        """User + system CPU time of the worker process, all its threads (x264's, PyAV's, ONNX Runtime's) included:
        with the wall time it tells how many cores one worker already keeps busy. Linux ``/proc``; NaN elsewhere."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15

    def kill(self) -> None:
        """SIGKILL, as an OOM killer or a lost node would: no warm shutdown, the task in hand is not acknowledged."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM to the worker's own process group), SIGKILL if it hangs."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
