"""Real services for tests: pytest fixtures over :mod:`tools.local_services` (a ``redis-server`` process and
moto's HTTP server, S3 and SQS, on loopback ports).

Tinct's service is tested against the real things, as rq's tests run against a real Redis: queues, restarts and
outages behave as they do in production only when the wire protocol and the process boundaries are real. The
servers themselves live in ``tools.local_services`` so that ``python -m tools bench --service`` can start them too
(tools may not import tests); this module re-exports them, so tests keep importing everything from here. Use the
fixtures ``redis_server`` and ``s3_server`` by name: ``tests/conftest.py`` registers this module as a plugin, and a
fixture starts its server only when a test asks for it, so tests that do not need the services pay nothing::

    from tests.services import s3_settings

    def test_something(redis_server, s3_server):
        settings = s3_settings(s3_server, redis_url=redis_server.url)

Each fixture starts its server once per test session (the first test that asks) and hands every test a clean one:
Redis flushed, moto's state reset, a server a previous test stopped or killed started again. Worker subprocesses
get the same services through :func:`env_for_workers`.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator

import pytest

from tools.local_services import (
    LOOPBACK,
    REDIS_BINARY,
    S3_ACCESS_KEY_ID,
    S3_REGION,
    S3_SECRET_ACCESS_KEY,
    START_TIMEOUT_S,
    RedisServer,
    S3Server,
    WorkerProcess,
    env_for_workers,
    free_port,
    s3_settings,
)

__all__ = [
    "LOOPBACK",
    "REDIS_BINARY",
    "S3_ACCESS_KEY_ID",
    "S3_REGION",
    "S3_SECRET_ACCESS_KEY",
    "START_TIMEOUT_S",
    "RedisServer",
    "S3Server",
    "WorkerProcess",
    "env_for_workers",
    "JOB_TIMEOUT_S",
    "free_port",
    "get_object",
    "wait_for_job",
    "put_object",
    "redis_server",
    "redis_server_fixture",
    "s3_server",
    "s3_server_fixture",
    "s3_settings",
]

# --------------------------------------------------------------------------------------------------- fixtures

_REDIS_KEY = pytest.StashKey[RedisServer]()
_S3_KEY = pytest.StashKey[S3Server]()
_lock = threading.Lock()


@pytest.fixture(name="redis_server")
def redis_server_fixture(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    """The session's real Redis, running and flushed for this test.

    One server per session (started on first use, stopped at the end) keeps the suite fast; flushing before each
    test keeps tests independent. A test may stop, kill or restart it: the next test gets it running again.
    Function-scoped with the session state kept in ``config.stash``, so importing this one name is enough.
    """
    config = request.config
    with _lock:
        server = config.stash.get(_REDIS_KEY, None)
        if server is None:
            server = RedisServer(tmp_path_factory.mktemp("redis"))
            config.stash[_REDIS_KEY] = server
            config.add_cleanup(server.close)
    server.start()
    server.flush()
    yield server


@pytest.fixture(name="s3_server")
def s3_server_fixture(request: pytest.FixtureRequest) -> Iterator[S3Server]:
    """The session's moto server (S3 and SQS over real HTTP), running and empty for this test."""
    config = request.config
    with _lock:
        server = config.stash.get(_S3_KEY, None)
        if server is None:
            server = S3Server()
            config.stash[_S3_KEY] = server
            config.add_cleanup(server.close)
    server.start()
    server.reset()
    yield server


# Short names, so ``from tests.services import redis_server, s3_server`` also works. pytest finds a fixture by its
# registered name whatever the attribute is called; importing the ``*_fixture`` names instead keeps ruff's F811
# quiet in modules whose tests take ``redis_server``/``s3_server`` arguments.
redis_server = redis_server_fixture
s3_server = s3_server_fixture


def put_object(s3: S3Server, uri: str, data: bytes, metadata: dict[str, str] | None = None,
               tags: dict[str, str] | None = None) -> None:
    """Write ``data`` to ``s3://bucket/key`` on the test server, as a user's upload would (with ``metadata``, as an
    archive's ingest writes its catalogue's fields, and ``tags``, as its lifecycle and access rules set them)."""
    bucket, key = uri[len("s3://"):].split("/", 1)
    s3.client().put_object(Bucket=bucket, Key=key, Body=data, Metadata=metadata or {},
                           Tagging=urllib.parse.urlencode(tags or {}))


def get_object(s3: S3Server, uri: str) -> bytes:
    bucket, key = uri[len("s3://"):].split("/", 1)
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


JOB_TIMEOUT_S = 120  # a service test's job, from submit to a final state, on a busy 2-core machine


def wait_until(condition: Callable[[], object], timeout: float, what: str | Callable[[], str],
               poll: float = 0.1) -> object:
    """``condition()``'s first true value within ``timeout``; else fail with ``what`` (a callable is asked at the
    failure, so a worker's log it quotes is the log as the wait ended, not as it began)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"not within {timeout:.0f} s: {what() if callable(what) else what}")


def wait_for_job(client, job_id: str, timeout: float = JOB_TIMEOUT_S):
    """The job's record once it is finished (succeeded, failed or cancelled); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = client.get(job_id)
        if record is not None and record.state in ("succeeded", "failed", "cancelled"):
            return record
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {client.get(job_id)}")
