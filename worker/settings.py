"""The service's settings: one typed object, read from environment variables here and nowhere else.

    settings = Settings.from_env()          # in entry points only; library code takes a Settings argument

Every variable is ``TINCT_<FIELD>`` in upper case (``TINCT_REDIS_URL``, ``TINCT_S3_ENDPOINT_URL``, ...). S3
credentials follow boto3's own chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance
roles) unless ``TINCT_S3_ACCESS_KEY_ID``/``TINCT_S3_SECRET_ACCESS_KEY`` are set; they are never logged and
never stored in job state (``Settings.__repr__`` hides them).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

GPU_QUEUE = "tinct.colorize"  # network work: one process per GPU (or a few per CPU node)
IO_QUEUE = "tinct.io"  # planning, fan-out, joins, bookkeeping: light, many at once
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SECRET_FIELDS = {"s3_access_key_id", "s3_secret_access_key", "webhook_secret", "api_token"}


@dataclass(frozen=True)
class GuidanceLimits:
    """What a restorer may send with one input: colour hints (points and regions) for a photo and the bytes of a
    hint file (``worker.hints``), reference frames for a film and the bytes of each reference picture
    (``worker.references``). Far more than anyone gives by hand, few enough that one input cannot make a job's
    validation, solve or pre-pass expensive. The service takes them from ``TINCT_MAX_HINTS`` and its neighbours
    (:attr:`Settings.guidance_limits`); these are the defaults."""

    max_hints: int = 1000
    max_hint_file_bytes: int = 1 << 20
    max_references: int = 200
    max_reference_file_bytes: int = 64 << 20  # a 4K frame as a 16-bit PNG is about 50 MB

    @classmethod
    def unlimited(cls) -> GuidanceLimits:
        """No limits: for a spec read back from the job store, which was checked against the limits of the service
        that took it (a lower limit set since must not make a queued job unreadable)."""
        return cls(sys.maxsize, sys.maxsize, sys.maxsize, sys.maxsize)


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Celery's Redis transport redelivers a task whose worker vanished after this many seconds; it must exceed
    # the longest task (a film segment), or a healthy task is delivered twice. Only the backstop: a lost worker's
    # pieces come back after liveness_window_s (worker.liveness).
    visibility_timeout_s: int = 3600
    # Pieces are planned to take at most piece_target_s on the slowest supported node, a CPU node colorizing about
    # slowest_megapixels_per_s (2 contended cores; worker.work bounds segments and photo batches by it), so the time
    # limits need only cover a piece that runs a few times slower than planned, not the 55 minutes of old.
    task_soft_time_limit_s: int = 600
    task_time_limit_s: int = 660
    piece_target_s: float = 240.0
    slowest_megapixels_per_s: float = 5.0
    # Liveness (worker.liveness): each worker process beats this often; one silent for longer than the window has
    # its pieces re-queued by the others. A piece whose worker dies max_piece_deaths times in a row fails its job.
    heartbeat_interval_s: float = 5.0
    liveness_window_s: float = 20.0
    max_piece_deaths: int = 3
    # After SIGTERM (scale-down, docker stop) the piece in hand gets this long to finish, then is handed back. The
    # orchestrator's grace period (terminationGracePeriodSeconds, stop_grace_period) must be longer.
    stop_grace_s: float = 30.0
    s3_endpoint_url: str | None = None  # MinIO, Ceph, R2...; None for AWS
    s3_region: str | None = None
    s3_access_key_id: str | None = field(default=None, repr=False)
    s3_secret_access_key: str | None = field(default=None, repr=False)
    s3_max_attempts: int = 8  # botocore's own retries (adaptive mode) before a StorageError reaches the task
    work_dir: Path = Path("/tmp/tinct-work")  # local scratch for downloads, segments and uploads
    cache_dir: Path = Path.home() / ".cache" / "tinct"
    default_model: str = "default"
    # Where published models live, a folder or s3://bucket/prefix/: a job's ``model="archive-1950s"`` loads
    # ``<model_store>/archive-1950s.pt`` (fetched into cache_dir/models, keyed by the object's ETag).
    model_store: str | None = None
    device: str = "auto"
    engine: str = "auto"
    precision: str = "auto"
    render_size: int | None = None  # None: each model's own render size (its checkpoint records it), else 256
    batch_size: int | None = None  # None ("auto"): as many as fit in GPU memory (models.batching), 8 on CPU
    # A model each colorize worker process loads when it starts (the GPU image: "default"), so that its TensorRT
    # engine is built or loaded, and the GPU initialised, before the first job rather than during it.
    preload_model: str | None = None
    collection_batch: int = 16  # photos per task at most when a collection is fanned out (fewer for large ones)
    segment_seconds: float = 60.0  # film segments fanned out to workers (shorter for large frames: piece_target_s)
    # A film or photo file over this fails before any download (a collection's photos one by one; runs of frames are
    # read a few frames at a time, so not bounded by it).
    max_input_bytes: int = 20 * 1024**3
    # Films downloaded to a node (work_dir/inputs, shared by its worker processes) are kept for their other segments
    # up to this many bytes, the least recently used removed first; those a worker process is using are always kept.
    input_cache_bytes: int = 40 * 1024**3
    job_ttl_s: int = 30 * 24 * 3600  # how long finished jobs are kept in Redis
    task_retries: int = 5  # transient failures (storage, Redis) per task, with exponential backoff
    retry_backoff_s: float = 2.0
    metrics_port: int = 0  # Prometheus endpoint of a worker; 0 = off
    log_format: str = "json"  # worker logs: "json" (one object per line, with the job id) or "text"
    webhook_secret: str | None = field(default=None, repr=False)
    # tinct serve (worker.api): one all-powerful bearer token, and/or a JSON file of named tokens with the input and
    # output prefixes each may use (worker.api.auth documents the format).
    api_token: str | None = field(default=None, repr=False)
    api_tokens_file: Path | None = None
    # Where POST /api/v1/uploads puts files (a folder or s3://bucket/prefix/, one sub-prefix per token), and the
    # default output prefix the console offers; a token may always read its inbox and write its results there.
    api_inbox: str | None = None
    api_results: str | None = None
    api_max_upload_bytes: int = 2 * 1024**3
    api_url_ttl_s: int = 900  # lifetime of the signed S3 URLs the API hands out for results
    # POST /api/v1/preview (the console's hint editor) colorizes a downscaled photo synchronously in the API process:
    # each token may start this many a second on average, with bursts of api_preview_burst.
    api_preview_rate: float = 1.0
    api_preview_burst: int = 5
    # What one job may carry besides its input (GuidanceLimits): colour hints per photo and their file's bytes,
    # reference frames per film and each reference picture's bytes.
    max_hints: int = GuidanceLimits.max_hints
    max_hint_file_bytes: int = GuidanceLimits.max_hint_file_bytes
    max_references: int = GuidanceLimits.max_references
    max_reference_file_bytes: int = GuidanceLimits.max_reference_file_bytes

    def __post_init__(self) -> None:
        if self.visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError(
                f"TINCT_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) must exceed TINCT_TASK_TIME_LIMIT_S "
                f"({self.task_time_limit_s}): a task still running when it expires is delivered a second time"
            )
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            raise ValueError("TINCT_TASK_SOFT_TIME_LIMIT_S must be below TINCT_TASK_TIME_LIMIT_S")
        if self.task_soft_time_limit_s < 2 * self.piece_target_s:
            raise ValueError(
                f"TINCT_TASK_SOFT_TIME_LIMIT_S ({self.task_soft_time_limit_s}) must be at least twice "
                f"TINCT_PIECE_TARGET_S ({self.piece_target_s:g}): a piece planned at that length must not hit the limit"
            )
        if self.piece_target_s <= 0 or self.slowest_megapixels_per_s <= 0:
            raise ValueError("TINCT_PIECE_TARGET_S and TINCT_SLOWEST_MEGAPIXELS_PER_S must be positive")
        if self.heartbeat_interval_s <= 0 or self.liveness_window_s < 3 * self.heartbeat_interval_s:
            raise ValueError(
                f"TINCT_LIVENESS_WINDOW_S ({self.liveness_window_s:g}) must be at least three heartbeats "
                f"(TINCT_HEARTBEAT_INTERVAL_S {self.heartbeat_interval_s:g}): one late beat must not re-queue a piece"
            )
        if self.max_piece_deaths < 1 or self.stop_grace_s < 0:
            raise ValueError("TINCT_MAX_PIECE_DEATHS must be at least 1 and TINCT_STOP_GRACE_S not negative")
        if self.model_store is not None and _SCHEME.match(self.model_store) and \
                not self.model_store.lower().startswith(("s3://", "file://")):
            raise ValueError(f"TINCT_MODEL_STORE must be a folder or s3://bucket/prefix/, got {self.model_store!r}")
        if self.log_format not in ("json", "text"):
            raise ValueError(f"TINCT_LOG_FORMAT must be json or text, got {self.log_format!r}")
        for name in ("max_hints", "max_hint_file_bytes", "max_references", "max_reference_file_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"TINCT_{name.upper()} must be at least 1, got {getattr(self, name)}")

    @property
    def guidance_limits(self) -> GuidanceLimits:
        """The ``max_*`` settings for hints and references, as ``worker.hints`` and ``worker.references`` take them."""
        return GuidanceLimits(self.max_hints, self.max_hint_file_bytes, self.max_references,
                              self.max_reference_file_bytes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``TINCT_*`` variables; raises ValueError naming the variable for a value of the wrong type."""
        environ = os.environ if environ is None else environ
        values = {}
        for spec in fields(cls):
            name = f"TINCT_{spec.name.upper()}"
            if name not in environ:
                continue
            raw = environ[name]
            values[spec.name] = _parse(name, raw, spec.type)
        return cls(**values)

    def public(self) -> dict:
        """The settings without secrets, for logs and ``tinct status``."""
        return {f.name: str(getattr(self, f.name)) for f in fields(self) if f.name not in _SECRET_FIELDS}


def _parse(name: str, raw: str, kind: object) -> object:
    kind = str(kind)
    if raw.strip().lower() == "auto" and "None" in kind:
        return None
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("Path"):
            return Path(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {kind.split(' ')[0]}") from None
    return raw or None
