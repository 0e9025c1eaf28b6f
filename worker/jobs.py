"""Jobs: a validated spec, a deterministic id, and the job's state in Redis.

    spec = JobSpec.from_dict({"input": "s3://scans/reel1.mkv", "output": "s3://out/", "options": {"smoothing": 0.5}})
    store = JobStore(redis_client)
    record = store.get(job_id)        # JobRecord: state, progress, outputs, metrics, failure

A job's id is derived from what it would produce: the input's identity (URI, ETag, size), the output URI and the
options that change the result. Submitting the same job again therefore finds the first one: done, running or
queued, it is returned instead of being redone; only a failed or cancelled job is run again.

States: ``queued`` -> ``running`` (progress: pieces, frames or files done, fps, ETA) -> ``succeeded`` (output URIs
and metrics) | ``failed`` (a one-line reason, and the failed pieces) | ``cancelled``.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import PurePosixPath
from typing import Any

from redis.exceptions import WatchError

from worker.errors import PermanentError, one_line
from worker.hints import HintError, parse_hints
from worker.media.frame_sequences import is_pattern, output_stem, split_pattern
from worker.media.frame_sink import FrameTarget, is_frame_output
from worker.media.images import PHOTO_SUFFIXES, unwritten_copy
from worker.media.video_sink import (
    CONTAINERS,
    SOURCE_CODEC,
    EncodeOptions,
    canonical_codec,
    container_problem,
    fallback_container,
)
from worker.media.video_source import LOG_CHOICES
from worker.photos import FILM_EXTENSIONS, contradicted_format, output_suffix
from worker.references import ReferenceError, parse_job_references
from worker.settings import GuidanceLimits
from worker.storage import join_uri, parse_uri

KINDS = ("image", "video", "collection")
ENCODER_OPTIONS = ("codec", "crf", "preset")  # a film file's alone: a run of frames is written in its suffix's format
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
KEY_PREFIX = "tinct:"
# A job's per-piece keys beside its hash: cleared when a failed job is submitted again, expired when it finishes.
# ``:parts`` (each film segment's staged file), ``:deaths`` and ``:requeued`` belong to worker.liveness.
PIECE_SUFFIXES = (":done", ":failed", ":files", ":parts", ":deaths", ":requeued")


def job_key(job_id: str, suffix: str = "") -> str:
    """A job's Redis hash (``tinct:job:<id>``), or with ``suffix`` one of its per-piece keys (``:done`` ...)."""
    return f"{KEY_PREFIX}job:{job_id}{suffix}"


class JobSpecError(PermanentError):
    """A job spec that cannot run: ``str()`` names the field and the reason."""

    def __init__(self, field_name: str, reason: str) -> None:
        self.field = field_name
        self.reason = one_line(reason)
        super().__init__(f"job spec: {field_name}: {self.reason}")


@dataclass(frozen=True)
class JobOptions:
    """What changes the result (and so the job id). Unset values take the worker's settings."""

    model: str = "default"
    render_size: int | None = None  # None: the model's own (recorded in its checkpoint), else 256
    smoothing: float = 0.5
    codec: str = SOURCE_CODEC  # each film's own where Tinct writes it, else H.264 (video_sink.EncodeOptions.for_film)
    crf: int | None = None
    preset: str = "medium"
    recolor: bool = False
    log: str = "auto"  # how a run of frames' codes are read (worker.media.video_source.LOG_CHOICES)
    format: str | None = None  # photo output format (jpg, png, tif, webp, bmp, jp2); None keeps the source's
    # A photo's colour hints (worker.hints), in canonical form; part of the id, so corrected hints are a new job.
    # Not hashed with the options (a dict is not hashable); compared and digested like every other field.
    hints: dict | None = field(default=None, hash=False)
    # A film's reference frames (worker.references): [{"time", "image", "sha256"}], the sha256 of each picture's bytes
    # recorded when the job is submitted (Service.submit), so a corrected picture, not only a renamed one, is a new job.
    references: list | None = field(default=None, hash=False)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class JobSpec:
    input: str
    output: str
    kind: str
    options: JobOptions = field(default_factory=JobOptions)

    @classmethod
    def from_dict(cls, data: Any, limits: GuidanceLimits | None = None, arriving: bool = True) -> JobSpec:
        """Validate a spec as it arrives from a CLI, a trigger or JSON; every problem is a JobSpecError. ``limits``
        (a service's ``Settings.guidance_limits``; the defaults when None) bound its hints and references.
        ``arriving=False`` reads a stored job back: checks added since it was taken must not make it unreadable."""
        if not isinstance(data, dict):
            raise JobSpecError("spec", f"expected a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"input", "output", "kind", "options"}
        if unknown:
            raise JobSpecError(sorted(unknown)[0], "unknown field")
        source = _uri_field(data, "input")
        output = _uri_field(data, "output")
        kind = data.get("kind") or infer_kind(source)
        if kind not in KINDS:
            raise JobSpecError("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind == "collection" and not source.endswith("/"):
            raise JobSpecError("input", "a collection's input is a prefix or folder ending in '/'")
        if kind == "collection" and not output.endswith("/"):
            raise JobSpecError("output", "a collection's output is a prefix or folder ending in '/'")
        options = parse_options(data.get("options") or {}, limits)
        if options.hints is not None and kind != "image":
            raise JobSpecError("options.hints", "hints belong to one photo (kind image); for a folder or prefix, "
                               "tinct bulk queues each photo with the <name>.hints.json beside it")
        if options.log != "auto" and not (kind == "video" and is_pattern(parse_uri(source)[2])):
            raise JobSpecError("options.log", "applies to a scan kept as a run of frames, named by its pattern "
                               "(s3://scans/reel1/scan_%07d.dpx)")
        if options.references is not None and kind != "video":
            raise JobSpecError("options.references", "references belong to one film (kind video); for a folder or "
                               "prefix, tinct bulk queues each film with the <name>.references/ folder beside it")
        spec = cls(source, output, kind, options)
        if arriving:
            check_film_encoding(spec)
            check_photo_format(spec)
            if kind == "image" and (reason := unwritten_copy(output)):
                raise JobSpecError("output", f"{output}: {reason}")
        return spec

    def to_dict(self) -> dict:
        return {"input": self.input, "output": self.output, "kind": self.kind, "options": asdict(self.options)}

    def job_id(self, etag: str, size: int) -> str:
        """Deterministic: the same input (by identity), output and options always give the same id."""
        identity = json.dumps([self.input, etag, size, self.output, self.kind, self.options.digest()])
        return hashlib.sha256(identity.encode()).hexdigest()[:24]


def output_folder(spec: JobSpec) -> str:
    """The folder (or prefix, ending in ``/``) a film job writes into: its film's, or its run of frames'."""
    return film_output_uri(spec).rsplit("/", 1)[0] + "/"


def film_output_uri(spec: JobSpec) -> str:
    """Where a film job writes: its output, or in an output folder the film's name with its own container (when
    Tinct writes it) or the one its codec falls back to (``video_sink.fallback_container``)."""
    if not spec.output.endswith("/"):
        return spec.output
    path = PurePosixPath(parse_uri(spec.input)[2])
    if is_pattern(path):  # a run of frames: named by its frames' prefix, or its folder
        stem, suffix = output_stem(path), ""
    else:
        stem, suffix = path.stem, path.suffix.lower()
    if suffix in CONTAINERS:
        return join_uri(spec.output, stem + suffix)
    try:
        codec = canonical_codec(spec.options.codec)
    except ValueError:  # refused at submission (check_film_encoding); a stored job keeps the old default
        codec = "h264"
    return join_uri(spec.output, stem + fallback_container(codec))


def check_film_encoding(spec: JobSpec) -> None:
    """A film's encoder options and output container, checked as the job arrives: found at the join, a mismatch
    would cost the whole film's colour. Other kinds pass."""
    if spec.kind != "video":
        return
    options = spec.options
    output = film_output_uri(spec)
    if is_frame_output(parse_uri(output)[2]):
        check_frames_output(spec, output)
        return
    try:
        codec = canonical_codec(options.codec)
    except ValueError as exc:
        raise JobSpecError("options.codec", str(exc)) from None
    try:
        EncodeOptions(codec=codec, crf=options.crf, preset=options.preset)
    except ValueError as exc:
        raise JobSpecError("options.crf" if options.crf is not None and "crf" in str(exc) else "options.preset",
                           str(exc)) from None
    problem = container_problem(output, codec)
    if problem:
        raise JobSpecError("output", f"{output}: {problem}")


def check_photo_format(spec: JobSpec) -> None:
    """A job's photo format (``options.format``), checked as the job arrives: one Tinct writes, and for one photo
    written to a name of its own, the format that name's extension says (a copy is written as its name says, so
    another format would be silently ignored). The CLI refuses the same contradiction."""
    check_format_name(spec.options.format)
    if spec.kind == "image" and not spec.output.endswith("/"):
        if reason := contradicted_format(parse_uri(spec.output)[2], spec.options.format):
            raise JobSpecError("options.format", reason)


def check_format_name(output_format: str | None) -> None:
    """Refuse a photo format Tinct does not write (``options.format``); None keeps each photo's own."""
    try:
        output_suffix(output_format)
    except ValueError as exc:
        raise JobSpecError("options.format", str(exc)) from None


def check_frames_output(spec: JobSpec, output: str) -> None:
    """A film coloured into a run of numbered frames (``s3://out/reel1/scan_%07d.dpx``): a format frames are written
    in, no film-file encoder options (they would be silently ignored), and never the source's own frames."""
    try:
        FrameTarget.parse(output)
    except ValueError as exc:
        raise JobSpecError("output", str(exc)) from None
    defaults = JobOptions()
    for name in ENCODER_OPTIONS:
        if getattr(spec.options, name) != getattr(defaults, name):
            raise JobSpecError(f"options.{name}", f"applies to film files; {output} is a run of frames, written in "
                               "the format its extension names")
    if is_pattern(parse_uri(spec.input)[2]) and _run_names(spec.input) == _run_names(output):
        raise JobSpecError("output", f"{output}: would replace the frames of its source, {spec.input}")


def _run_names(uri: str) -> tuple[str, str, str, str, str]:
    """What a run's frame names are made of, bar the number's width: two runs alike in this share frames' names."""
    scheme, bucket, key = parse_uri(uri)
    folder, name = posixpath.split(key)
    prefix, _, suffix = split_pattern(uri, name)
    return scheme, bucket, folder, prefix, suffix


def infer_kind(uri: str) -> str:
    if uri.endswith("/"):
        return "collection"
    if is_pattern(parse_uri(uri)[2]):  # a run of numbered frames (worker.media.frame_sequences): a film
        return "video"
    suffix = PurePosixPath(uri).suffix.lower()
    if suffix in FILM_EXTENSIONS:
        return "video"
    if suffix in PHOTO_SUFFIXES:
        return "image"
    raise JobSpecError("input", f"cannot tell the kind of {uri!r} from its name; give kind image, video or collection")


def _uri_field(data: dict, name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise JobSpecError(name, "required: an s3://bucket/key URI, a file:// URI or a path")
    if "\x00" in value:
        raise JobSpecError(name, "contains a NUL character")
    return value  # not stripped: an S3 key may really begin or end with a space


def parse_options(raw: Any, limits: GuidanceLimits | None = None) -> JobOptions:
    """Validate job options given as a dict (unset ones keep their defaults); hints and references within ``limits``
    (the defaults when None)."""
    if not isinstance(raw, dict):
        raise JobSpecError("options", f"expected an object, got {type(raw).__name__}")
    limits = limits or GuidanceLimits()
    known = {f.name: f for f in fields(JobOptions)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise JobSpecError(f"options.{key}", "unknown option")
        values[key] = _option_value(key, value, limits)
    return JobOptions(**values)


def _option_value(key: str, value: Any, limits: GuidanceLimits) -> Any:
    def bad(expected: str) -> JobSpecError:
        return JobSpecError(f"options.{key}", f"expected {expected}, got {value!r}")

    if key in ("model", "codec", "preset"):
        if not isinstance(value, str) or not value:
            raise bad("a non-empty string")
        return value
    if key == "format":
        if value is not None and not isinstance(value, str):
            raise bad("a format name or null")
        return value
    if key == "render_size":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 32 <= value <= 4096):
            raise bad("a whole number from 32 to 4096, or null for the model's own")
        return value
    if key == "crf":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 63):
            raise bad("a whole number from 0 to 63 or null")
        return value
    if key == "smoothing":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise bad("a number from 0 (off) to 1")
        return float(value)
    if key == "recolor":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if key == "log":
        if value not in LOG_CHOICES:
            raise bad(" or ".join(LOG_CHOICES))
        return value
    if key == "hints":
        if value is None:
            return None
        if len(json.dumps(value)) > limits.max_hint_file_bytes:
            raise JobSpecError("options.hints", f"over the limit of {limits.max_hint_file_bytes} bytes of JSON "
                               "(TINCT_MAX_HINT_FILE_BYTES)")
        try:
            spec = parse_hints(value, "options.hints", limits.max_hints)
        except HintError as exc:
            raise JobSpecError(f"options.hints.{exc.field}".rstrip("."), exc.detail) from None
        return spec.to_dict() if len(spec) else None
    if key == "references":
        if value is None:
            return None
        try:
            references = parse_job_references(value, "options.references", limits.max_references)
        except ReferenceError as exc:
            raise JobSpecError(f"options.{exc.field}", exc.detail) from None
        return [reference.as_dict() for reference in references] or None
    raise bad("a known option")  # unreachable: keys are checked against JobOptions' fields first


# --- state in Redis ---------------------------------------------------------------------------------------


@dataclass
class JobRecord:
    id: str
    spec: JobSpec
    state: str
    created: float
    updated: float
    unit: str = "pieces"  # what progress counts: files, frames or pieces
    done: int = 0
    total: int = 0
    fps: float = 0.0
    eta_s: float | None = None
    outputs: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    error: str = ""
    failed_pieces: dict[str, str] = field(default_factory=dict)
    source: dict = field(default_factory=dict)  # the input's identity when submitted: etag, size

    def to_dict(self) -> dict:
        data = asdict(self)
        data["spec"] = self.spec.to_dict()
        return data


def _parse_latest(raw: bytes | None) -> tuple[str | None, float]:
    """A ``tinct:latest`` value, ``"<as_of> <job id>"``, as (job id, as_of); a bare job id (written before the
    time was recorded) counts as the oldest possible."""
    if raw is None:
        return None, float("-inf")
    as_of, space, job_id = raw.decode().partition(" ")
    return (job_id, float(as_of)) if space else (as_of, float("-inf"))


class JobStore:
    """Job records in Redis hashes (``tinct:job:<id>``), an index by creation time, per-job piece sets, and the
    latest job per input and output (``tinct:latest:<hash>``).

    All values are JSON or plain strings: nothing is ever unpickled. Finished jobs expire after ``ttl_s``.
    """

    def __init__(self, redis, ttl_s: int = 30 * 24 * 3600) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    def create(self, job_id: str, spec: JobSpec, source: dict) -> tuple[JobRecord, bool]:
        """Record a new queued job; if one with this id exists and is not failed or cancelled, return it
        instead (``created`` False). Atomic against concurrent submissions of the same job."""
        now = time.time()
        key = job_key(job_id)
        record = JobRecord(job_id, spec, "queued", now, now, source=source)
        mapping = _encode(record)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    state = pipe.hget(key, "state")
                    if state is not None and state.decode() not in ("failed", "cancelled"):
                        pipe.unwatch()
                        existing = self.get(job_id)
                        assert existing is not None
                        return existing, False
                    pipe.multi()
                    pipe.delete(key, *(job_key(job_id, suffix) for suffix in PIECE_SUFFIXES))
                    pipe.hset(key, mapping=mapping)
                    pipe.zadd(f"{KEY_PREFIX}jobs", {job_id: now})
                    pipe.execute()
                    return record, True
                except WatchError:  # another submission of this job got in between: look again
                    continue

    def claim_latest(self, spec: JobSpec, job_id: str, as_of: float) -> tuple[str | None, str | None]:
        """Settle which job is the latest writing ``spec.output`` from ``spec.input``: the one whose submitter read
        the bucket last (``as_of``, epoch seconds: when the triggers read its sidecars), whatever order the
        submissions reach Redis in. Returns ``(displaced, newer)``: the job ``job_id`` replaced as the latest (None
        if none), or, when a job that read the bucket later is already the latest, that job (and ``job_id`` is not
        recorded). Atomic against concurrent claims."""
        target = hashlib.sha256(f"{spec.input}\0{spec.output}".encode()).hexdigest()[:32]
        key = f"{KEY_PREFIX}latest:{target}"
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    current, current_as_of = _parse_latest(pipe.get(key))
                    if current is not None and current != job_id and current_as_of > as_of:
                        pipe.unwatch()
                        return None, current
                    pipe.multi()
                    pipe.set(key, f"{as_of!r} {job_id}", ex=self.ttl_s)
                    pipe.execute()
                    return current, None
                except WatchError:  # another submission for this output got in between: look again
                    continue

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.redis.hgetall(job_key(job_id))
        if not raw:
            return None
        record = _decode(job_id, {k.decode(): v.decode() for k, v in raw.items()})
        failed = self.redis.hgetall(job_key(job_id, ":failed"))
        record.failed_pieces = {k.decode(): v.decode() for k, v in failed.items()}
        return record

    def update(self, job_id: str, **changes: Any) -> None:
        changes["updated"] = time.time()
        mapping = {name: _encode_value(value) for name, value in changes.items()}
        self.redis.hset(job_key(job_id), mapping=mapping)
        if changes.get("state") in FINISHED:
            self.expire(job_id)

    def expire(self, job_id: str) -> None:
        """Let a finished job's keys expire after ``ttl_s``."""
        with self.redis.pipeline(transaction=False) as pipe:  # one round trip, not seven
            for suffix in ("", *PIECE_SUFFIXES):
                pipe.expire(job_key(job_id, suffix), self.ttl_s)
            pipe.execute()

    def update_unless_finished(self, job_id: str, **changes: Any) -> bool:
        """:meth:`update` only while the job is not finished (atomic): a late or redelivered task must never turn a
        succeeded job into a failed one. True if written."""
        key = job_key(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    state = pipe.hget(key, "state")
                    if state is None or state.decode() in FINISHED:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hset(key, mapping={name: _encode_value(value)
                                            for name, value in {**changes, "updated": time.time()}.items()})
                    pipe.execute()
                    break
                except WatchError:  # the job changed meanwhile: look at its state again
                    continue
        if changes.get("state") in FINISHED:
            self.expire(job_id)
        return True

    def state(self, job_id: str) -> str | None:
        value = self.redis.hget(job_key(job_id), "state")
        return value.decode() if value is not None else None

    def states(self, job_ids: Sequence[str]) -> list[str | None]:
        """Each job's state (None for an unknown one), in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(job_key(job_id), "state")
            return [value.decode() if value is not None else None for value in pipe.execute()]

    def mark_piece_done(self, job_id: str, piece: str) -> int:
        """Record a finished piece; returns how many are done (a redelivered piece is counted once)."""
        key = job_key(job_id, ":done")
        with self.redis.pipeline() as pipe:
            pipe.sadd(key, piece)
            pipe.scard(key)
            _, count = pipe.execute()
        return int(count)

    def piece_done(self, job_id: str, piece: str) -> bool:
        return bool(self.redis.sismember(job_key(job_id, ":done"), piece))

    def pieces_done(self, job_id: str) -> int:
        return int(self.redis.scard(job_key(job_id, ":done")))

    def mark_file_done(self, job_id: str, uri: str) -> None:
        """One photo of a piece written: a redelivered piece skips it (its output might have been written by
        another job with other options, so the output's existence alone proves nothing)."""
        self.redis.sadd(job_key(job_id, ":files"), uri)

    def file_done(self, job_id: str, uri: str) -> bool:
        return bool(self.redis.sismember(job_key(job_id, ":files"), uri))

    def mark_piece_failed(self, job_id: str, piece: str, reason: str) -> None:
        self.redis.hset(job_key(job_id, ":failed"), piece, one_line(reason))

    def claim(self, job_id: str, step: str, ttl_s: int) -> bool:
        """True for exactly one caller per (job, step) within ``ttl_s``: e.g. the one that joins a film."""
        return bool(self.redis.set(job_key(job_id, f":claim:{step}"), "1", nx=True, ex=ttl_s))

    def release(self, job_id: str, step: str) -> None:
        self.redis.delete(job_key(job_id, f":claim:{step}"))

    def add_counter(self, job_id: str, name: str, amount: float) -> float:
        return float(self.redis.hincrbyfloat(job_key(job_id), name, amount))

    def recent(self, limit: int = 20) -> list[JobRecord]:
        ids = self.redis.zrevrange(f"{KEY_PREFIX}jobs", 0, limit - 1)
        records = [self.get(job_id.decode()) for job_id in ids]
        return [record for record in records if record is not None]


def _encode_value(value: Any) -> str:
    if isinstance(value, JobSpec):
        return json.dumps(value.to_dict())
    if isinstance(value, list | dict) or value is None:
        return json.dumps(value)
    return str(value)


def _encode(record: JobRecord) -> dict[str, str]:
    data = {f.name: getattr(record, f.name) for f in fields(record) if f.name not in ("id", "failed_pieces")}
    return {name: _encode_value(value) for name, value in data.items()}


def _decode(job_id: str, raw: dict[str, str]) -> JobRecord:
    # Checked as the service that took it checked it; a lower limit or a new check since must not make it unreadable.
    spec = JobSpec.from_dict(json.loads(raw["spec"]), GuidanceLimits.unlimited(), arriving=False)
    return JobRecord(
        id=job_id,
        spec=spec,
        state=raw.get("state", "queued"),
        created=float(raw.get("created", 0)),
        updated=float(raw.get("updated", 0)),
        unit=raw.get("unit", "pieces"),
        done=int(float(raw.get("done", 0))),
        total=int(float(raw.get("total", 0))),
        fps=float(raw.get("fps", 0)),
        eta_s=json.loads(raw["eta_s"]) if raw.get("eta_s") not in (None, "") else None,
        outputs=json.loads(raw.get("outputs", "[]")),
        metrics=json.loads(raw.get("metrics", "{}")),
        error=raw.get("error", ""),
        source=json.loads(raw.get("source", "{}")),
    )
