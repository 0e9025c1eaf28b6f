"""The API's test stack: a real redis-server, moto's S3, one real ``tinct worker`` and ``tinct serve``, all on
loopback, with named tokens limited to their prefixes (shared by the API, security and browser tests).

Module-scoped in its users: starting a worker and the API costs seconds (both import the pipeline), and the tests
of one module are written to share one stack (distinct inputs, so their jobs never collide). The stack has Redis
and moto servers of its own, so the session fixtures' per-test flushes never touch its queue.
"""

from __future__ import annotations

import io
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

from tests.media import gray_frames, moving_scene
from tools.local_services import RedisServer, S3Server, WorkerProcess, env_for_workers
from tools.serve_local import ApiServer

S3_SECRET = "s3cr3t-Tinct-api-5e1d"  # the services' S3 secret key: never in a response, a log line or a page
MAX_UPLOAD_BYTES = 400_000


@dataclass
class ApiStack:
    url: str
    tokens: dict[str, str]  # name -> token
    s3: S3Server
    worker: WorkerProcess
    server: ApiServer
    folders: dict[str, Path]
    model: Path
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    def client(self, name: str | None) -> httpx.Client:
        """An HTTP client sending ``name``'s token (None: no token at all)."""
        key = name or ""
        if key not in self.clients:
            headers = {"Authorization": f"Bearer {self.tokens[name]}"} if name else {}
            self.clients[key] = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        return self.clients[key]

    def logs(self) -> str:
        return self.worker.text() + self.server.text()


def gray_png(seed: int = 0, width: int = 96, height: int = 64) -> bytes:
    frame = next(gray_frames(moving_scene(1, width, height, seed=seed)))
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


@contextmanager
def api_stack(tmp: Path, model: Path) -> Iterator[ApiStack]:
    folders = {name: tmp / name for name in ("in", "out", "work", "cache")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    tokens = {name: secrets.token_urlsafe(24) for name in ("admin", "alice", "bob", "carol")}
    tokens_file = tmp / "tokens.json"
    tokens_file.write_text(json.dumps({"tokens": [
        {"name": "alice", "token": tokens["alice"], "inputs": ["s3://scans/alice/"], "outputs": ["s3://colour/alice/"]},
        {"name": "bob", "token": tokens["bob"], "inputs": ["s3://scans/bob/"], "outputs": ["s3://colour/bob/"]},
        {"name": "carol", "token": tokens["carol"], "inputs": [str(folders["in"])], "outputs": [str(folders["out"])]},
    ]}))
    with RedisServer(tmp / "redis") as redis_server, S3Server() as s3:
        for bucket in ("scans", "colour", "inbox", "models"):
            s3.make_bucket(bucket)
        # The model published to the store under a name, as an archive publishes a tuned one (and what is not one).
        s3.client().put_object(Bucket="models", Key="archive-1950s.pt", Body=model.read_bytes())
        s3.client().put_object(Bucket="models", Key="notes.txt", Body=b"not a model")
        base = env_for_workers(redis_server, s3, base=os.environ, log_format="text", cache_dir=folders["cache"])
        base["TINCT_MODEL_STORE"] = "s3://models/"
        base["AWS_SECRET_ACCESS_KEY"] = S3_SECRET  # moto takes any key while its auth checks are off
        base["OMP_NUM_THREADS"] = "1"
        worker_env = dict(base, TINCT_ENGINE="torch", TINCT_DEVICE="cpu", TINCT_WORK_DIR=str(folders["work"]),
                          TINCT_SEGMENT_SECONDS="0.5", TINCT_RETRY_BACKOFF_S="0.5", TINCT_S3_MAX_ATTEMPTS="1")
        worker = WorkerProcess("api-test", worker_env, tmp / "worker.log")
        serve_env = dict(base, TINCT_API_TOKEN=tokens["admin"], TINCT_API_TOKENS_FILE=str(tokens_file),
                         TINCT_API_INBOX="s3://inbox/", TINCT_API_RESULTS="s3://colour/results/",
                         TINCT_API_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES), TINCT_WORK_DIR=str(tmp / "serve-work"),
                         TINCT_S3_ACCESS_KEY_ID="testing", TINCT_S3_SECRET_ACCESS_KEY=S3_SECRET,
                         TINCT_ENGINE="torch", TINCT_DEVICE="cpu")  # hint previews load the model as workers do
        server = ApiServer(serve_env, tmp / "serve.log", extra_args=("--access-log",))
        stack = ApiStack(server.url, tokens, s3, worker, server, folders, model)
        try:
            server.wait_ready()
            yield stack
        finally:
            for client in stack.clients.values():
                client.close()
            server.stop()
            worker.stop()
