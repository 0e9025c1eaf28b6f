"""What the service's tasks do, as plain functions over a per-process :class:`Runtime` (``worker.tasks`` is the
thin Celery layer over these).

A job is planned once (``plan_job``), then done in pieces that many workers take in parallel:

* image: one piece, the photo;
* collection: the photos under the input prefix, in batches of ``collection_batch`` (one piece each);
* video: the film's segments (``worker.segments.plan_segments``), each colorized to a video-only file in a
  staging area beside the output; when the last one is done, one ``join_film`` remuxes them with the source's
  audio, subtitles and metadata into the output.

Every step is idempotent, because ``acks_late`` redelivers a task whose worker died: a finished piece is
recorded in Redis and skipped if it comes again; outputs have deterministic names and appear atomically (S3
multipart completion, or write-then-rename); the join and the final bookkeeping run once per job (a Redis
claim). A job's output appears only when all of it is done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

import redis

from models.colorizer import Colorizer
from models.engines import create_engine
from models.files import atomic_path
from worker import metrics
from worker.errors import BadInputError, ModelError, PermanentError, TinctError, one_line
from worker.films import DEFAULT_MAX_FILM_PIXELS, warmup_frames
from worker.images import DEFAULT_MAX_PIXELS, EXTENSION_FORMATS, read_photo, write_photo
from worker.jobs import FINISHED, JobRecord, JobSpec, JobStore
from worker.model_store import resolve_model
from worker.photos import output_suffix
from worker.pipeline import ColourFrame, colorize_frames
from worker.segments import Segment, join_segments, plan_segments
from worker.settings import Settings
from worker.smoothing import SmoothingOptions
from worker.storage import ObjectInfo, Storage, join_uri, parse_uri, relative_key
from worker.video_sink import CODECS, CONTAINERS, EncodeOptions, SegmentWriter, plan_output
from worker.video_source import FilmInfo, probe_film

logger = logging.getLogger(__name__)

STAGING = ".tinct-parts"  # beside a film's output: its encoded segments until the join


class Enqueue(Protocol):
    """How work.py hands pieces to the queues (implemented by worker.tasks with Celery)."""

    def photos(self, job_id: str, piece: str, inputs: list[str]) -> None: ...
    def segment(self, job_id: str, segment: dict) -> None: ...
    def join(self, job_id: str) -> None: ...


@dataclass
class _Loaded:
    colorizer: Colorizer
    label: str


class Runtime:
    """What one worker process keeps between tasks: storage, Redis, and its loaded models (one load per
    process, keyed by model and render size; jobs only borrow them)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage = Storage(settings)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.store = JobStore(self.redis, settings.job_ttl_s)
        self._models: dict[tuple[str, int], _Loaded] = {}
        self._sources: dict[tuple[str, int], str] = {}  # what each load was asked for: a model name, or its path
        # Probing reads every packet of a film: done once per film and process, not once per segment.
        self._films: dict[tuple[str, int, int], FilmInfo] = {}

    def colorizer(self, model: str, render_size: int) -> _Loaded:
        """The loaded model for ``model`` (``default``, a path, or a name in the model store) at ``render_size``.

        A name is looked up in the store on every call (one HEAD), so a model published again under the same name
        is used from the next piece on; the version it replaces is closed instead of kept loaded beside it.
        """
        source = resolve_model(model, self.settings, self.storage)
        key = (source, render_size)
        if key not in self._models:
            for stale in [k for k in self._models if self._sources.get(k) == model and k[0] != source]:
                self._models.pop(stale).colorizer.engine.close()
                self._sources.pop(stale, None)
            try:
                engine = create_engine(model=source, kind=self.settings.engine, device=self.settings.device,
                                       precision=self.settings.precision, cache_dir=self.settings.cache_dir / "onnx",
                                       render_sizes=[render_size] if render_size else None,
                                       max_batch=self.settings.batch_size)
            except Exception as exc:  # noqa: BLE001 - every loading failure is one ModelError
                raise ModelError(model, str(exc) or type(exc).__name__) from exc
            try:
                colorizer = Colorizer(engine, render_size=render_size, batch_size=self.settings.batch_size)
            except ValueError as exc:
                engine.close()
                raise ModelError(model, str(exc)) from exc
            self._models[key] = _Loaded(colorizer, engine.checkpoint.label)
            metrics.BATCH_SIZE.labels(engine.checkpoint.label, engine.name, engine.precision).set(colorizer.batch_size)
            self._sources[key] = model
            logger.info("model %s (%s) loaded on %s (%s)", model, engine.checkpoint.label, engine.device, engine.name)
        return self._models[key]

    def local_copy(self, uri: str, info: ObjectInfo | None = None) -> Path:
        """A local file with the object's bytes: the file itself for file:// inputs, else a download cached
        by identity in the work folder (several segments of one film on one worker download it once)."""
        scheme, _, path = parse_uri(uri)
        if scheme == "file":
            return Path(path)
        info = info or self.storage.stat(uri)
        local = self.settings.work_dir / "inputs" / f"{info.version_key()}{PurePosixPath(path).suffix.lower()}"
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            self.storage.download(uri, local)
        return local

    def film(self, uri: str) -> FilmInfo:
        """The probed film at ``uri`` (its local copy), cached by the copy's path, size and mtime."""
        local = self.local_copy(uri)
        stat = local.stat()
        key = (str(local), stat.st_size, stat.st_mtime_ns)
        if key not in self._films:
            self._films[key] = probe_film(local, DEFAULT_MAX_FILM_PIXELS)
        return self._films[key]

    def scratch(self, job_id: str) -> Path:
        folder = self.settings.work_dir / "jobs" / job_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder


# --- planning ----------------------------------------------------------------------------------------------


def plan_job(rt: Runtime, job_id: str, enqueue: Enqueue) -> None:
    record = rt.store.get(job_id)
    if record is None or record.state in FINISHED:
        return  # cancelled, or redelivered after the job ended
    # A plan redelivered while the job runs (its worker died mid-plan) enqueues again every piece not yet done;
    # a piece that then arrives twice is harmless, as pieces are idempotent.
    spec = record.spec
    try:
        if spec.kind == "image":
            _plan_photos(rt, record, [spec.input], enqueue)
        elif spec.kind == "collection":
            inputs = [info.uri for info in rt.storage.list(spec.input) if _is_photo(info.uri)]
            if not inputs:
                raise BadInputError(spec.input, "no photos under this prefix")
            _plan_photos(rt, record, inputs, enqueue)
        else:
            _plan_film(rt, record, enqueue)
    except PermanentError as exc:
        fail_job(rt, job_id, str(exc))


def _plan_photos(rt: Runtime, record: JobRecord, inputs: list[str], enqueue: Enqueue) -> None:
    size = rt.settings.collection_batch
    batches = [inputs[i : i + size] for i in range(0, len(inputs), size)]
    if record.state == "queued":
        rt.store.update(record.id, state="running", unit="files", total=len(inputs), done=0, pieces=len(batches),
                        started=time.time())
    for index, batch in enumerate(batches):
        piece = f"photos-{index:06d}"
        if not rt.store.piece_done(record.id, piece):
            enqueue.photos(record.id, piece, batch)


def _plan_film(rt: Runtime, record: JobRecord, enqueue: Enqueue) -> None:
    spec = record.spec
    film = rt.film(spec.input)
    options = _film_options(spec)
    if film.is_colour and not spec.options.recolor:
        raise BadInputError(spec.input, "a colour film; set options.recolor to colorize its lightness anyway")
    segment_frames = max(1, round(rt.settings.segment_seconds * (film.fps or 24)))
    segments = plan_segments(film, segment_frames, warmup_frames(options["smoothing"]))
    rt.redis.set(f"tinct:job:{record.id}:segments", json.dumps([s.as_dict() for s in segments]),
                 ex=rt.settings.job_ttl_s)
    if record.state == "queued":
        rt.store.update(record.id, state="running", unit="frames", total=film.frames, done=0,
                        pieces=len(segments), started=time.time())
    for segment in segments:
        if not rt.store.piece_done(record.id, segment_piece(segment)):
            enqueue.segment(record.id, segment.as_dict())


def segment_piece(segment: Segment) -> str:
    """A segment's piece name in Redis, and its file's name in the staging area."""
    return f"segment-{segment.index:05d}"


def _is_photo(uri: str) -> bool:
    return PurePosixPath(uri).suffix.lower() in EXTENSION_FORMATS


# --- photos ------------------------------------------------------------------------------------------------


def colorize_photos(rt: Runtime, job_id: str, piece: str, inputs: Sequence[str]) -> None:
    record = rt.store.get(job_id)
    if record is None or record.state in FINISHED:
        return
    if rt.store.piece_done(job_id, piece):
        # Redelivered after it was done: the worker may have died before the job's last step, so try that again.
        _finish_piece(rt, job_id, piece, "photos")
        return
    spec = record.spec
    loaded = rt.colorizer(spec.options.model, spec.options.render_size)
    rt.store.update(job_id, model_label=loaded.label)  # which version of a named model made the outputs
    scratch = rt.scratch(job_id)
    done = 0
    for uri in inputs:
        began = time.perf_counter()
        try:
            if rt.store.file_done(job_id, uri):
                done += 1  # written by an earlier delivery of this piece
                continue
            _colorize_one_photo(rt, loaded, uri, photo_output_uri(spec, uri), scratch, spec)
            rt.store.mark_file_done(job_id, uri)
            done += 1
            metrics.IMAGES.inc()
        except PermanentError as exc:
            rt.store.mark_piece_failed(job_id, uri, str(exc))
            metrics.FAILURES.labels("permanent").inc()
        metrics.STAGE_SECONDS.labels("photo").observe(time.perf_counter() - began)
    _progress(rt, job_id, rt.store.add_counter(job_id, "done", done))
    _finish_piece(rt, job_id, piece, "photos")


def photo_output_uri(spec: JobSpec, input_uri: str) -> str:
    if spec.kind == "collection":
        target = join_uri(spec.output, relative_key(spec.input, input_uri))
    elif spec.output.endswith("/"):
        target = join_uri(spec.output, PurePosixPath(parse_uri(input_uri)[2]).name)
    else:
        return spec.output
    suffix = output_suffix(spec.options.format)
    return _with_suffix(target, suffix) if suffix else target


def _with_suffix(uri: str, suffix: str) -> str:
    """``uri`` with the extension of its last path component replaced by ``suffix``."""
    head, slash, name = uri.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{head}{slash}{stem}{suffix}"


def _colorize_one_photo(rt: Runtime, loaded: _Loaded, uri: str, output: str, scratch: Path, spec: JobSpec) -> None:
    local = rt.local_copy(uri)
    try:
        photo = read_photo(local, DEFAULT_MAX_PIXELS)
        if photo.had_colour and not spec.options.recolor:
            raise BadInputError(uri, f"already a colour photo (colour score {photo.colour_score:.1f}); set "
                                "options.recolor to colorize its lightness anyway")
        rgb = loaded.colorizer.colorize([photo.L])[0]
        suffix = PurePosixPath(parse_uri(output)[2]).suffix
        result = scratch / f"{hashlib.sha256(output.encode()).hexdigest()[:16]}{suffix}"
        write_photo(result, rgb, photo, loaded.label, photo.alpha)
        rt.storage.upload(result, output)
        result.unlink(missing_ok=True)
    finally:
        if local.is_relative_to(rt.settings.work_dir):
            local.unlink(missing_ok=True)


# --- films -------------------------------------------------------------------------------------------------


def _film_options(spec: JobSpec) -> dict:
    return {
        "smoothing": SmoothingOptions(strength=spec.options.smoothing),
        "encode": EncodeOptions(codec=spec.options.codec, crf=spec.options.crf, preset=spec.options.preset),
    }


def film_output_uri(spec: JobSpec) -> str:
    if not spec.output.endswith("/"):
        return spec.output
    name = PurePosixPath(parse_uri(spec.input)[2])
    suffix = name.suffix.lower() if name.suffix.lower() in CONTAINERS else ".mkv"
    return join_uri(spec.output, name.stem + suffix)


def staging_uri(spec: JobSpec, job_id: str) -> str:
    output = film_output_uri(spec)
    parent = output.rsplit("/", 1)[0] + "/"
    return join_uri(parent, f"{STAGING}/{job_id}") + "/"


def colorize_segment(rt: Runtime, job_id: str, segment_dict: dict, enqueue: Enqueue) -> None:
    segment = Segment(**segment_dict)
    piece = segment_piece(segment)
    record = rt.store.get(job_id)
    if record is None or record.state in FINISHED:
        return
    if rt.store.piece_done(job_id, piece):
        if _finish_piece(rt, job_id, piece, "segments", finalize=False):  # see colorize_photos
            enqueue.join(job_id)
        return
    spec = record.spec
    options = _film_options(spec)
    loaded = rt.colorizer(spec.options.model, spec.options.render_size)
    began = time.perf_counter()
    film = rt.film(spec.input)
    layout = plan_output(film.video, options["encode"])
    suffix = CODECS[options["encode"].codec].segment_suffix
    local = rt.scratch(job_id) / f"{piece}{suffix}"
    with atomic_path(local) as tmp, SegmentWriter(tmp, film.video, layout, options["encode"]) as writer:

        def sink(frame: ColourFrame) -> None:
            writer.write(frame.pts, frame.luma, frame.cb, frame.cr)

        times = colorize_frames(film, loaded.colorizer, layout, options["smoothing"], sink, segment.start,
                                segment.stop, segment.warmup)
    rt.storage.upload(local, join_uri(staging_uri(spec, job_id), local.name))
    local.unlink(missing_ok=True)
    metrics.FRAMES.inc(times.frames)
    for stage in ("decode", "network", "smoothing", "colour", "encode"):
        metrics.STAGE_SECONDS.labels(stage).observe(getattr(times, stage))
    metrics.STAGE_SECONDS.labels("segment").observe(time.perf_counter() - began)
    # The render size actually used (the model's own when the job named none), for the film's provenance tag.
    rt.store.update(job_id, model_label=loaded.label, render_size=loaded.colorizer.render_size)
    _progress(rt, job_id, rt.store.add_counter(job_id, "done", segment.frames))
    if _finish_piece(rt, job_id, piece, "segments", finalize=False):
        enqueue.join(job_id)


def _progress(rt: Runtime, job_id: str, done: float) -> None:
    """Frames (or files) per second since the job started, and the time left at that rate."""
    raw = rt.redis.hmget(f"tinct:job:{job_id}", "started", "total")
    started, total = float(raw[0] or time.time()), float(raw[1] or 0)
    elapsed = max(time.time() - started, 1e-6)
    fps = done / elapsed
    eta = (total - done) / fps if fps > 0 and total > done else 0.0
    rt.store.update(job_id, fps=round(fps, 2), eta_s=round(eta, 1))


def join_film(rt: Runtime, job_id: str) -> None:
    record = rt.store.get(job_id)
    if record is None or record.state in FINISHED:
        return
    if not rt.store.claim(job_id, "join", _claim_ttl(rt)):
        return  # another delivery is joining
    try:
        spec = record.spec
        segments = [Segment(**s) for s in json.loads(rt.redis.get(f"tinct:job:{job_id}:segments") or "[]")]
        options = _film_options(spec)
        suffix = CODECS[options["encode"].codec].segment_suffix
        scratch = rt.scratch(job_id)
        staging = staging_uri(spec, job_id)
        paths = []
        for segment in segments:
            name = f"{segment_piece(segment)}{suffix}"
            local = scratch / name
            rt.storage.download(join_uri(staging, name), local)
            paths.append(local)
        film = rt.film(spec.input)
        output = film_output_uri(spec)
        final = scratch / f"output{PurePosixPath(parse_uri(output)[2]).suffix}"
        label, used_size = rt.redis.hmget(f"tinct:job:{job_id}", "model_label", "render_size")
        label = (label or b"").decode() or spec.options.model
        render_size = int(used_size) if used_size else spec.options.render_size
        provenance = {"model": label, "render_size": render_size, "smoothing": spec.options.smoothing,
                      **options["encode"].describe(), "job": job_id}
        join_segments(film, paths, final, provenance)
        info = rt.storage.upload(final, output)
        rt.storage.delete_prefix(staging)
        shutil.rmtree(scratch, ignore_errors=True)
        finish_job(rt, job_id, [output], {"frames": film.frames, "output_size": info.size})
    except BaseException:
        rt.store.release(job_id, "join")
        raise


# --- bookkeeping -------------------------------------------------------------------------------------------


def _claim_ttl(rt: Runtime) -> int:
    """A claim lasts as long as a task can be in flight: if its holder dies, the redelivered task (which comes
    only after the visibility timeout) can take the claim again instead of finding the job stuck."""
    return rt.settings.visibility_timeout_s


def _finish_piece(rt: Runtime, job_id: str, piece: str, kind: str, finalize: bool = True) -> bool:
    """Record a piece; True (once per job) when it was the last one."""
    count = rt.store.mark_piece_done(job_id, piece)
    metrics.PIECES.labels(kind).inc()
    total = int(float(rt.redis.hget(f"tinct:job:{job_id}", "pieces") or 0))
    if count < total or not rt.store.claim(job_id, "last-piece", _claim_ttl(rt)):
        return False
    if finalize:
        finish_job(rt, job_id)
    return True


def finish_job(rt: Runtime, job_id: str, outputs: list[str] | None = None, job_metrics: dict | None = None) -> None:
    """Mark the job succeeded with its outputs (a photo's output, a collection's output prefix — listing 50,000
    URIs in the job state helps nobody — or the film's, given by the join), or failed if its only file failed."""
    record = rt.store.get(job_id)
    if record is None:
        return
    if outputs is None:
        spec = record.spec
        outputs = [spec.output] if spec.kind == "collection" else [photo_output_uri(spec, spec.input)]
    job_metrics = job_metrics if job_metrics is not None else {"files": record.done}
    failed = record.failed_pieces
    if failed and record.spec.kind != "collection":
        fail_job(rt, job_id, next(iter(failed.values())))
        return
    error = f"{len(failed)} of {record.total} files failed (see failed_pieces)" if failed else ""
    started, label = rt.redis.hmget(f"tinct:job:{job_id}", "started", "model_label")
    job_metrics = dict(job_metrics, seconds=round(time.time() - float(started or time.time()), 3))
    if label:  # the checkpoint's label (architecture@weights hash): a named model can be published again
        job_metrics["model"] = label.decode()
    rt.store.update(job_id, state="succeeded", outputs=outputs, metrics=job_metrics, error=error, eta_s=0.0)
    metrics.JOBS.labels("succeeded").inc()
    logger.info("job %s succeeded: %s", job_id, ", ".join(outputs))


def fail_job(rt: Runtime, job_id: str, reason: str) -> None:
    rt.store.update(job_id, state="failed", error=one_line(reason))
    metrics.JOBS.labels("failed").inc()
    metrics.FAILURES.labels("permanent").inc()
    logger.warning("job %s failed: %s", job_id, one_line(reason))


def describe_error(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, TinctError) else f"{type(exc).__name__}: {one_line(exc)}"
