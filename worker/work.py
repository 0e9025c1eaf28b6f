"""What the service's tasks do, as plain functions over a per-process :class:`Runtime` (``worker.tasks`` is the
thin Celery layer over these).

A job is planned once (``plan_job``), then done in pieces that many workers take in parallel:

* image: one piece, the photo;
* collection: the photos under the input prefix, in batches of ``collection_batch`` (one piece each);
* video: the film's segments (``worker.media.segments.plan_segments``), each colorized to a video-only file in a
  staging area beside the output; when the last one is done, one ``join_film`` remuxes them with the source's
  audio, subtitles and metadata into the output. A film coloured into a run of frames (an output named by a pattern,
  ``s3://out/reel1/scan_%07d.dpx``) stages each segment's frames as they are made, in a folder of the segment's own,
  and its join copies them into place inside the store.

Every step is idempotent, because a task whose worker died comes again (re-queued by ``worker.liveness`` once the
worker has been silent for the liveness window, or redelivered by the broker after its visibility timeout): a
finished piece is recorded in Redis and skipped if it comes again; outputs have deterministic names and appear
atomically (S3 multipart completion, or write-then-rename). A piece, the join and the job's completion are each
done under a lease (``worker.liveness.Lease``): a worker that was only paused and comes back after its piece was
given to another finds the lease gone and discards its result, so a piece is recorded once, the join runs once
and there is one output. A job's output appears only when all of it is done (a run of frames: none of its frames
before every segment is, and the job succeeds once the last is in place).

Pieces are bounded (``_segment_frames``, ``_photo_batches``) to about ``piece_target_s`` on the slowest supported
node, which is what the task time limits are set from (``worker.settings``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

import numpy as np
import redis

from models.colorizer import Colorizer
from models.engines import create_engine
from models.files import atomic_path
from models.hints import ColourHints
from worker import liveness, metrics
from worker.errors import (
    BadInputError,
    InputTooLargeError,
    ModelError,
    PermanentError,
    TinctError,
    UnsupportedMediaError,
    one_line,
)
from worker.films import DEFAULT_MAX_FILM_PIXELS, warmup_frames
from worker.hints import HintSpec, hints_provenance, job_document_hints, job_photo_hints
from worker.input_cache import HeldInput, InputCache
from worker.jobs import FINISHED, JobRecord, JobSpec, JobStore, film_output_uri, job_key, output_folder
from worker.liveness import Lease, Leases
from worker.media.frame_sequences import frame_number, is_pattern, stored_frames, stored_identity, stored_sequence
from worker.media.frame_sink import FrameTarget, FrameWriter, frames_layout, is_frame_output
from worker.media.images import (
    DEFAULT_MAX_PIXELS,
    InColourThroughout,
    Photo,
    is_photo_name,
    lost_pages,
    provenance_text,
    read_photo,
    write_photo,
)
from worker.media.segments import Segment, check_output, describe_other_streams, join_segments, plan_segments
from worker.media.video_sink import CODECS, EncodeOptions, OutputLayout, SegmentWriter, plan_output
from worker.media.video_source import FilmInfo, copy_warnings, probe_film, with_log_choice
from worker.model_store import resolve_model
from worker.photos import colour_document, copy_name, copy_owners, shared_copy
from worker.pipeline import ColourFrame, StageTimes, colorize_frames
from worker.references import (
    ReferenceField,
    ResolvedReference,
    fetch_reference,
    job_references,
    load_job_references,
    place_job_references,
    references_guidance,
    references_provenance,
)
from worker.settings import Settings
from worker.smoothing import SmoothingOptions
from worker.storage import ObjectInfo, Storage, join_uri, parse_uri, relative_key

logger = logging.getLogger(__name__)

STAGING = ".tinct-parts"  # beside a film's output: its encoded segments until the join
# In the work folder: the frames of stored runs being read, a folder per reading, named <pid>@<host>@... by the
# process that owns it (a worker killed mid-segment leaves its folder; the next worker started on the host removes it).
FRAMES_FOLDER = "frames"
# The fewest bytes a photo file spends per pixel (a strongly compressed JPEG): a batch's input bytes bound its pixels.
MIN_PHOTO_BYTES_PER_PIXEL = 0.1
# Probed films a worker process keeps (and whose downloads it holds on the node): a worker taking turns between the
# segments of a few films at once probes each once.
FILMS_KEPT = 4
# A run of frames' join copies this many at a time between two heartbeats (a few seconds on any store).
FRAMES_COPIED_AT_ONCE = 500
# A job's field naming the frames its join places ("86400-87839"), set before the first is copied: a job that ends
# failed or cancelled after that takes them back out (``_take_back_frames``).
PLACED_FRAMES = "placed_frames"


class Enqueue(Protocol):
    """How work.py hands pieces to the queues (implemented by worker.tasks with Celery)."""

    def photos(self, job_id: str, piece: str, inputs: list[str]) -> None: ...
    def segment(self, job_id: str, segment: dict) -> None: ...
    def join(self, job_id: str) -> None: ...


@dataclass
class _Loaded:
    colorizer: Colorizer
    label: str


@dataclass
class _Probed:
    film: FilmInfo
    held: HeldInput | None  # the node's copy of a stored film file, held while this process keeps its probe

    def present(self) -> bool:
        return self.held is None or self.held.present()

    def used(self) -> None:
        if self.held is not None:
            self.held.used()

    def release(self) -> None:
        if self.held is not None:
            self.held.release()


class Runtime:
    """What one worker process keeps between tasks: storage, Redis, and its loaded models (one load per
    process, keyed by model and render size; jobs only borrow them)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage = Storage(settings)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.store = JobStore(self.redis, settings.job_ttl_s)
        self.leases = Leases(self.redis, settings)
        self._models: dict[tuple[str, int], _Loaded] = {}
        self._sources: dict[tuple[str, int], str] = {}  # what each load was asked for: a model name, or its path
        # Probing reads every packet of a film: done once per film and process, not once per segment, for the last
        # FILMS_KEPT films this process coloured; a stored film's copy on the node is held while it is kept here.
        self._films: OrderedDict[tuple, _Probed] = OrderedDict()
        self.inputs = InputCache(settings.work_dir / "inputs", settings.input_cache_bytes)
        self._references: tuple[str, list[ResolvedReference]] | None = None  # the last film job's, by its id
        self._remove_orphan_frames()

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

    def local_copy(self, uri: str, folder: Path) -> tuple[Path, ObjectInfo]:
        """A local file with the photo's bytes (the file itself for file:// inputs, else a download into ``folder``,
        the caller's to remove), and the object's stat. One over ``max_input_bytes`` is refused before any
        download: a collection is checked photo by photo, as it is copied."""
        scheme, _, path = parse_uri(uri)
        info = self.storage.stat(uri)
        if info.size > self.settings.max_input_bytes:
            raise InputTooLargeError(uri, f"{info.size} bytes, over the limit of {self.settings.max_input_bytes} "
                                     "(TINCT_MAX_INPUT_BYTES)")
        if scheme == "file":
            return Path(path), info
        local = folder / f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}{PurePosixPath(path).suffix.lower()}"
        self.storage.download(uri, local, info)
        return local, info

    def source_labels(self, uri: str) -> tuple[Mapping[str, str], Mapping[str, str]]:
        """The user metadata and the object tags of the stored object ``uri``, which its copies carry (neither for a
        file, or for a run of frames: a listing carries none)."""
        scheme, _, path = parse_uri(uri)
        if scheme == "file" or is_pattern(path):
            return {}, {}
        info = self.storage.stat(uri)
        return info.metadata, self.storage.tags(info)

    def film(self, uri: str) -> FilmInfo:
        """The probed film at ``uri``: the node's copy of a stored film file (``inputs``), a file on a shared disk,
        a folder's run of frames, or a run kept in the object store (read through ``fetch_frames``, a few frames at
        a time); cached by version. Errors name it as stored."""
        scheme, _, path = parse_uri(uri)
        if not is_pattern(path):
            if scheme == "file":
                stat = Path(path).stat()
                return self._probed((path, stat.st_size, stat.st_mtime_ns), uri, Path(path),
                                    lambda: probe_film(path, DEFAULT_MAX_FILM_PIXELS))
            info = self.storage.stat(uri)
            local = self.inputs.path_for(info)

            def take() -> HeldInput:  # the version stat'ed: one stored since fails the copy, not taking its name
                return self.inputs.take(info, lambda target: self.storage.download(uri, target, info))

            return self._probed((uri, info.etag, info.size), uri, local,
                                lambda: probe_film(local, DEFAULT_MAX_FILM_PIXELS), take)
        frames = stored_frames(self.storage, uri)
        identity = stored_identity(uri, frames)
        if scheme == "file":
            return self._probed((uri, identity.etag), uri, Path(path),
                                lambda: probe_film(path, DEFAULT_MAX_FILM_PIXELS, scratch=self.frames_folder))
        # Named as if filed under the run's version, as a downloaded film is, though its frames are fetched elsewhere.
        folder = self.settings.work_dir / "inputs" / identity.version_key()

        def probe() -> FilmInfo:
            sequence = stored_sequence(self.storage, uri, frames, folder, functools.partial(self.fetch_frames, frames))
            return probe_film(sequence.pattern, DEFAULT_MAX_FILM_PIXELS, sequence=sequence)

        return self._probed((uri, identity.etag), uri, folder / PurePosixPath(path).name, probe)

    def _probed(self, key: tuple, uri: str, local: Path, probe: Callable[[], FilmInfo],
                take: Callable[[], HeldInput] | None = None) -> FilmInfo:
        """The film probed by ``probe`` under ``key``, from this process's last FILMS_KEPT; ``take`` holds the node's
        copy that ``local`` names first (and again if it has been taken away since)."""
        cached = self._films.get(key)
        if cached is not None and cached.present():
            self._films.move_to_end(key)
            cached.used()
            return cached.film
        if cached is not None:
            self._films.pop(key).release()
        held = take() if take is not None else None
        try:
            film = probe()
        except BaseException as exc:
            if held is not None:
                held.release()
            if isinstance(exc, BadInputError):
                raise as_stored(uri, local, exc) from exc
            raise
        self._films[key] = _Probed(film, held)
        while len(self._films) > FILMS_KEPT:
            self._films.popitem(last=False)[1].release()
        return film

    @contextlib.contextmanager
    def fetch_frames(self, frames: list[ObjectInfo], positions: range) -> Iterator[Path]:
        """A folder of this process's own holding the stored ``frames`` at ``positions``, removed on leaving: a worker
        holds the frames it is reading (a window of a segment, ``RUN_WINDOW_FRAMES`` at most; a probe's samples),
        never the whole reel."""
        with self.frames_folder() as folder:
            self.storage.download_listed([(frames[p], folder / frames[p].uri.rsplit("/", 1)[1]) for p in positions])
            yield folder

    @contextlib.contextmanager
    def frames_folder(self) -> Iterator[Path]:
        """An empty folder of this process's own in the work folder, for frames it reads (fetched, or a Cineon run's
        rewritten as DPX), removed on leaving; if the process is killed first, by the next Runtime on this host."""
        root = self.settings.work_dir / FRAMES_FOLDER
        root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}@{socket.gethostname()}@", dir=root))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _remove_orphan_frames(self) -> None:
        """Frames fetched by a process of this host that has died (killed mid-segment: its ``finally`` never ran)."""
        root = self.settings.work_dir / FRAMES_FOLDER
        if not root.is_dir():
            return
        for folder in root.iterdir():
            pid, host, _ = (folder.name.split("@", 2) + ["", ""])[:3]
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)

    def references(self, job_id: str, spec: JobSpec, film: FilmInfo) -> list[ResolvedReference]:
        """A film job's reference frames with their pictures' chroma: all of them, as a segment is coloured by
        references in other segments too (``worker.references.ReferenceField`` follows each from its own frame).
        Fetched once per job on this worker; only the last job's are kept, as a picture's ab at full size is large."""
        if self._references is None or self._references[0] != job_id:
            self._references = None  # the previous job's go before this one's are fetched

            def fetch(uri: str) -> bytes:
                return fetch_reference(self.storage, uri, self.settings.max_reference_file_bytes)

            self._references = (job_id, load_job_references(job_references(spec.options.references), film,
                                                            spec.input, fetch))
        return self._references[1]

    def scratch(self, job_id: str) -> Path:
        folder = self.settings.work_dir / "jobs" / job_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def as_stored(uri: str, local: Path, exc: BadInputError) -> BadInputError:
    """``exc`` about this worker's copy ``local`` of the input ``uri`` (a file, or a run of frames named by its
    pattern), named as stored instead: the input, or the frame at fault beside it."""
    if exc.path == os.fspath(local):
        return type(exc)(uri, exc.reason)
    if is_pattern(local.name) and Path(exc.path).parent == local.parent:
        return type(exc)(f"{uri.rsplit('/', 1)[0]}/{Path(exc.path).name}", exc.reason)
    return exc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
            _plan_photos(rt, record, [(spec.input, 0)], enqueue)
        elif spec.kind == "collection":
            inputs = [(info.uri, info.size) for info in rt.storage.list(spec.input) if is_photo_name(info.uri)]
            if not inputs:
                raise BadInputError(spec.input, "no photos under this prefix")
            _plan_photos(rt, record, _one_photo_per_copy(rt, record, inputs), enqueue, total=len(inputs))
        else:
            _plan_film(rt, record, enqueue)
    except PermanentError as exc:
        fail_job(rt, job_id, str(exc))


def _photo_batches(settings: Settings, inputs: list[tuple[str, int]]) -> list[list[str]]:
    """Photos (URI, bytes) in listing order, cut into batches of at most ``collection_batch`` photos and at most the
    bytes the slowest node colorizes in ``piece_target_s`` (bytes bound pixels from above: no photo file spends
    fewer than MIN_PHOTO_BYTES_PER_PIXEL); the same listing always gives the same batches."""
    budget = settings.piece_target_s * settings.slowest_megapixels_per_s * 1e6 * MIN_PHOTO_BYTES_PER_PIXEL
    batches: list[list[str]] = []
    used = 0.0
    for uri, size in inputs:
        if not batches or len(batches[-1]) >= settings.collection_batch or (used + size > budget and batches[-1]):
            batches.append([])
            used = 0.0
        batches[-1].append(uri)
        used += size
    return batches


def _mark_running(rt: Runtime, record: JobRecord, *, unit: str, total: int, pieces: int) -> bool:
    """A queued job's plan is made: it runs now, with its size. False if it ended meanwhile. Compared, not
    overwritten: a cancel that landed while the plan read its input (minutes, for a long film in S3) stands. A plan
    redelivered while the job runs changes nothing."""
    if record.state != "queued":
        return True
    return rt.store.update_unless_finished(record.id, state="running", unit=unit, total=total, done=0, pieces=pieces,
                                           started=time.time())


def _one_photo_per_copy(rt: Runtime, record: JobRecord, inputs: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """A collection's photos less those whose copy has the name another photo's has (:func:`photos.copy_owners`
    decides which keeps it); each of those fails before any work, naming the photo that keeps it."""
    copies = {uri: photo_output_uri(record.spec, uri) for uri, _ in inputs}
    owners = copy_owners(copies)
    for uri, copy in copies.items():
        if owners[copy] != uri:
            rt.store.mark_piece_failed(record.id, uri, str(shared_copy(uri, copy, owners[copy])))
    return [(uri, size) for uri, size in inputs if owners[copies[uri]] == uri]


def _plan_photos(rt: Runtime, record: JobRecord, inputs: list[tuple[str, int]], enqueue: Enqueue,
                 total: int | None = None) -> None:
    """Enqueue the pieces of a photo job's ``inputs`` (of ``total`` files, those refused at the plan counted)."""
    batches = _photo_batches(rt.settings, inputs)
    if not _mark_running(rt, record, unit="files", total=total or len(inputs), pieces=len(batches)):
        return
    for index, batch in enumerate(batches):
        piece = f"photos-{index:06d}"
        if not rt.store.piece_done(record.id, piece):
            enqueue.photos(record.id, piece, batch)


def _plan_film(rt: Runtime, record: JobRecord, enqueue: Enqueue) -> None:
    spec = record.spec
    film = job_film(rt, spec)
    options = _film_options(spec, film, report=True)
    if film.is_colour and not spec.options.recolor:
        raise BadInputError(spec.input, "a colour film; set options.recolor to colorize its lightness anyway")
    output = film_output_uri(spec)
    target = frames_target(spec)
    if target is None:
        try:  # hours of colour must not end at a join that cannot write the film
            check_output(film, output, options["encode"].codec)
        except BadInputError as exc:  # about the worker's copy of the film: named by the job's input instead
            raise BadInputError(spec.input, exc.reason) from exc
    elif film.other_streams:
        logger.info("job %s: %s %s left out of its frames: frames carry no sound or subtitles", record.id,
                    describe_other_streams(film), "is" if len(film.other_streams) == 1 else "are")
    keeps_light = target is not None and frames_layout(film.video, target).frame.keeps_light
    for warning in copy_warnings(film, keeps_light, options["encode"].codec if target is None else None, output):
        logger.warning("job %s: %s: %s", record.id, spec.input, warning)
    if spec.options.references:  # a time outside the film, or two on one frame, fails the job before any work
        place_job_references(job_references(spec.options.references), film, spec.input)
    segments = plan_segments(film, _segment_frames(rt.settings, film), warmup_frames(options["smoothing"]))
    rt.redis.set(f"tinct:job:{record.id}:segments", json.dumps([s.as_dict() for s in segments]),
                 ex=rt.settings.job_ttl_s)
    if not _mark_running(rt, record, unit="frames", total=film.frames, pieces=len(segments)):
        return
    for segment in segments:
        if not rt.store.piece_done(record.id, segment_piece(segment)):
            enqueue.segment(record.id, segment.as_dict())


def _segment_frames(settings: Settings, film: FilmInfo) -> int:
    """Frames per segment: ``segment_seconds`` of film, fewer for frames so large that the slowest node would take
    longer than ``piece_target_s`` (a 4K scan gets segments of a few seconds)."""
    by_time = round(settings.segment_seconds * (film.fps or 24))
    by_pixels = int(settings.piece_target_s * settings.slowest_megapixels_per_s * 1e6
                    / max(1, film.video.width * film.video.height))
    return max(1, min(by_time, by_pixels))


def segment_piece(segment: Segment) -> str:
    """A segment's piece name in Redis, and its file's name in the staging area."""
    return f"segment-{segment.index:05d}"


def collection_outputs(storage: Storage, record: JobRecord) -> Iterator[tuple[str, str]]:
    """``(input, output)`` for each photo of a collection job that did not fail, in its input's listing order: the
    job's own results, which its output folder may hold beside other jobs' (a folder of results is often shared)."""
    for info in storage.list(record.spec.input):
        if is_photo_name(info.uri) and info.uri not in record.failed_pieces:
            yield info.uri, photo_output_uri(record.spec, info.uri)


# --- photos ------------------------------------------------------------------------------------------------


def colorize_photos(rt: Runtime, job_id: str, piece: str, inputs: Sequence[str]) -> None:
    record = rt.store.get(job_id)
    if record is None or record.state in FINISHED:
        return
    if rt.store.piece_done(job_id, piece):
        # Redelivered after it was done: the worker may have died before the job's last step, so try that again.
        _after_pieces(rt, job_id, "photos")
        return
    lease = rt.leases.take(job_id, piece)
    if lease is None:
        return
    try:
        spec = record.spec
        loaded = rt.colorizer(spec.options.model, spec.options.render_size)
        liveness.progress()
        rt.store.update(job_id, model_label=loaded.label)  # which version of a named model made the outputs
        photos = _PhotoPiece(rt, loaded, spec, lease, rt.scratch(job_id))
        try:
            if not photos.colour(inputs):
                return
        except liveness.JobEnded:  # in a long document: its copy is not made
            logger.info("%s of job %s stopped in %s after %d of its %d photos: the job has ended", piece, job_id,
                        photos.current, photos.done, len(inputs))
            return
        except liveness.HandedOver:
            _discarded(lease, f"stopped in {photos.current}")
            return
        if lease.commit(photos.done) < 0:
            _discarded(lease)
            return
    finally:
        lease.release()
    metrics.PIECES.labels("photos").inc()
    _progress(rt, job_id)
    _after_pieces(rt, job_id, "photos")


@dataclass
class _ReadPhoto:
    """A photo of a piece, fetched, read and checked, waiting for its batch's colour."""

    uri: str
    output: str
    local: Path  # the node's copy of it
    source_metadata: Mapping[str, str]  # the stored photo's user metadata
    source_tags: Mapping[str, str]  # and its object tags
    photo: Photo
    hints: ColourHints | None
    seconds: float  # spent on it so far (fetch, read), for its stage time
    page_hints: HintSpec | None = None  # a multi-page document's, page by page


class _PhotoPiece:
    """A piece's photos, coloured in batches while others are fetched, decoded, encoded and stored in threads beside
    (``workers`` of them, as the CLI's photo runs): each photo read and checked on its own (a bad one fails alone), the
    network run on as many as the colorizer batches at once, then each written and stored. A photo at a time, each
    step after the last, had given a GPU node batches of one and left it idle while a photo was encoded. A
    multi-page document is coloured alone, a page at a time, as it comes."""

    def __init__(self, rt: Runtime, loaded: _Loaded, spec: JobSpec, lease: Lease, scratch: Path) -> None:
        self.rt, self.loaded, self.spec, self.lease, self.scratch = rt, loaded, spec, lease, scratch
        self.task = liveness.this_task()
        self.done = 0  # photos written by this delivery or an earlier one
        self.total = 0  # photos in the piece
        self.current = ""  # the photo being worked on, for a message when the piece stops
        self.workers = min(4, os.cpu_count() or 1)
        self.reads: deque[tuple[str, Future[_ReadPhoto]]] = deque()  # fetched and decoded ahead, in order
        self.batch: list[_ReadPhoto] = []
        self.writes: deque[tuple[_ReadPhoto, float, Future[float | None]]] = deque()  # encoded and stored, in order
        self.stop: str | None = None  # why the piece stopped: "handed over", "job ended"
        # A batch's network and colour must take well within the liveness window on the slowest node, or its piece
        # shows as stalled while it is coloured (``liveness.HeldPiece``).
        settings = rt.settings
        self.batch_pixels = settings.slowest_megapixels_per_s * 1e6 * settings.liveness_window_s / 2

    def colour(self, inputs: Sequence[str]) -> bool:
        """Colour every photo of ``inputs`` not done yet; False where the piece stopped (handed to another worker,
        or its job ended: said so), its photos after that point unwritten."""
        self.total = len(inputs)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="tinct-photo-io") as pool:
            finished = False
            try:
                self._colour_all(pool, iter(inputs))
                finished = True
            finally:
                self._settle(raise_errors=finished)
        if self.stop == "handed over":
            _discarded(self.lease)
        elif self.stop == "job ended":
            logger.info("%s of job %s stopped after %d of its %d photos: the job has ended", self.lease.piece,
                        self.lease.job_id, self.done, self.total)
        return self.stop is None

    def _colour_all(self, pool: ThreadPoolExecutor, inputs: Iterator[str]) -> None:
        """The photos in order: each, once read, into the batch (a document coloured at once), the batch coloured
        when full, the stores finished so far recorded; until the last, or until the piece stops."""
        while not self.stop:
            self._read_ahead(pool, inputs)
            if not self.reads:
                self._colour_batch(pool)
                return
            uri, reading = self.reads.popleft()
            self.current = uri
            if (stop := self._why_stop()) is not None:
                self.stop = stop
                return
            try:
                read = reading.result()
            except PermanentError as exc:
                self._failed(uri, exc)
                continue
            if read.photo.page_count > 1:  # a document: coloured and written a page at a time, here
                self._document(read)
                continue
            pixels = sum(r.photo.L.size for r in self.batch)
            if self.batch and pixels + read.photo.L.size > self.batch_pixels:
                self._colour_batch(pool)
            self.batch.append(read)
            self.task.progress()
            if len(self.batch) >= self.loaded.colorizer.batch_size:
                self._colour_batch(pool)
            self._collect_writes(block=False)

    def _read_ahead(self, pool: ThreadPoolExecutor, inputs: Iterator[str]) -> None:
        """Keep a photo per thread fetched and decoded ahead of the colorizer."""
        while len(self.reads) < self.workers and (uri := next(inputs, None)):
            if self.rt.store.file_done(self.lease.job_id, uri):
                self.done += 1  # written by an earlier delivery of this piece
                continue
            self.reads.append((uri, pool.submit(self._read, uri)))

    def _why_stop(self) -> str | None:
        """Why no more photos are to be written for the piece (its lease gone to another worker, its job cancelled
        or failed meanwhile), or None; checked before each upload, as a photo at a time did."""
        if not self.lease.held():
            return "handed over"
        return "job ended" if self.task.job_ended() else None

    def _read(self, uri: str) -> _ReadPhoto:
        """The photo at ``uri`` fetched, read and checked before any work: a bad hint, or a document its copy's
        format would cut to one page, fails it here."""
        began = time.perf_counter()
        local, info = self.rt.local_copy(uri, self.scratch)
        spec, output = self.spec, photo_output_uri(self.spec, uri)
        try:
            try:
                photo = read_photo(local, DEFAULT_MAX_PIXELS)
            except BadInputError as exc:  # about the worker's copy of the photo: named by its stored name instead
                raise type(exc)(uri, exc.reason) from exc
            if (colour := photo.colour_found()) and not spec.options.recolor:
                raise BadInputError(uri, f"already {colour}; set options.recolor to colorize its lightness anyway")
            if reason := lost_pages(photo, parse_uri(output)[2]):
                raise UnsupportedMediaError(uri, reason)
            # Before any work: a bad point fails it.
            if photo.page_count > 1:
                page_hints = job_document_hints(spec.options.hints, photo.document_sizes, uri)
                hints = None
            else:
                page_hints, hints = None, job_photo_hints(spec.options.hints, *photo.size, uri)
        except BaseException:
            self._drop(local)
            raise
        tags = self.rt.storage.tags(info)
        self.task.progress()
        return _ReadPhoto(uri, output, local, info.metadata, tags, photo, hints, time.perf_counter() - began,
                          page_hints)

    def _colour_batch(self, pool: ThreadPoolExecutor) -> None:
        """Colour the photos read so far together, and hand each to a thread to be written and stored."""
        if not self.batch:
            return
        began = time.perf_counter()
        batch, self.batch = self.batch, []
        lightness, hints = [read.photo.L for read in batch], [read.hints for read in batch]
        try:
            rgbs = self.loaded.colorizer.colorize(lightness, hints=hints) if any(hints) else \
                self.loaded.colorizer.colorize(lightness)
        except PermanentError as exc:  # failed against each photo of the batch, as one at a time did
            for read in batch:
                self._failed(read.uri, exc)
                self._drop(read.local)
            return
        share = (time.perf_counter() - began) / len(batch)
        metrics.PHOTO_BATCH.observe(len(batch))
        self.task.progress()
        for read, rgb in zip(batch, rgbs, strict=True):
            self.writes.append((read, share, pool.submit(self._write, read, rgb)))

    def _write(self, read: _ReadPhoto, rgb: np.ndarray) -> float | None:
        """Write and store one coloured photo (in a thread of the piece's); the seconds it took, or None where the
        piece stopped before it was stored."""
        began = time.perf_counter()
        try:
            if self._why_stop() is not None:
                return None
            guidance = hints_provenance(len(read.hints) if read.hints else 0)
            result = self._result_path(read.output)
            write_photo(result, rgb, read.photo, self.loaded.label, read.photo.alpha, guidance)
            self._store(result, read, guidance)
        finally:
            self._drop(read.local)
        self.task.progress()
        return time.perf_counter() - began

    def _collect_writes(self, block: bool) -> None:
        """Record the photos stored, in order: those finished, or (``block``) all. At most two a thread wait, of
        at most a batch's pixels between them: with the batch and the reads ahead, a piece of large scans holds two
        batches' pixels and a photo a thread, not the piece."""
        def waiting_pixels() -> int:
            return sum(read.photo.L.size for read, _, _ in self.writes)

        while self.writes and (block or self.writes[0][2].done() or len(self.writes) > 2 * self.workers
                               or waiting_pixels() > self.batch_pixels):
            read, share, writing = self.writes.popleft()
            self.current = read.uri
            try:
                seconds = writing.result()
            except PermanentError as exc:
                self._failed(read.uri, exc)
                continue
            if seconds is None:  # the piece stopped before it was stored: why, as its thread found
                self.stop = self.stop or self._why_stop()
                continue
            self._stored(read.uri, 1, read.seconds + share + seconds)

    def _settle(self, raise_errors: bool) -> None:
        """Finish what is in the threads: the stores under way recorded (``raise_errors``: a transient failure of
        one raised, for the piece to be tried again), the reads ahead dropped with their copies."""
        for read in self.batch:
            self._drop(read.local)
        self.batch = []
        while self.reads:
            _, reading = self.reads.popleft()
            if not reading.cancel() and reading.exception() is None:
                self._drop(reading.result().local)
        error = None
        while self.writes:
            try:
                self._collect_writes(block=True)
            except Exception as exc:  # noqa: BLE001 - the rest are recorded first; the first failure is raised after
                error = error or exc
        if error is not None and raise_errors:
            raise error

    def _document(self, read: _ReadPhoto) -> None:
        """A multi-page TIFF document, coloured and written a page at a time (``photos.colour_document``): its
        progress marked and its piece's hold checked page by page, so a cancelled job, or a piece handed to another
        worker, stops it at a page, its copy unmade (``liveness.JobEnded``, ``HandedOver``)."""
        began = time.perf_counter()
        uri = read.uri
        # Said as it starts: a long document is otherwise silent for minutes, its job's progress a file at its end.
        logger.info("%s: a %d-page document, coloured a page at a time", uri, read.photo.page_count)
        try:
            result = self._result_path(read.output)
            try:
                coloured, kept = colour_document(self.loaded.colorizer, read.local, result, self.loaded.label,
                                                 self.spec.options.recolor, DEFAULT_MAX_PIXELS, _page_done,
                                                 read.page_hints)
            except InColourThroughout as exc:
                raise BadInputError(uri, f"already {exc.description}; set options.recolor to colorize its lightness "
                                         "anyway") from exc
            except BadInputError as exc:  # about the worker's copy: named by its stored name instead
                raise type(exc)(uri, exc.reason) from exc
            if kept:
                logger.info("%s: %s", uri, kept)
            self._store(result, read, hints_provenance(len(read.page_hints) if read.page_hints else 0))
        except PermanentError as exc:
            self._failed(uri, exc)
            return
        finally:
            self._drop(read.local)
        self._stored(uri, coloured, read.seconds + time.perf_counter() - began)

    def _result_path(self, output: str) -> Path:
        suffix = PurePosixPath(parse_uri(output)[2]).suffix
        return self.scratch / f"{hashlib.sha256(output.encode()).hexdigest()[:16]}{suffix}"

    def _store(self, result: Path, read: _ReadPhoto, guidance: str) -> None:
        try:
            self.rt.storage.upload(result, read.output, metadata=output_metadata(
                read.source_metadata, self.loaded.label, guidance, read.uri), tags=read.source_tags)
        finally:
            result.unlink(missing_ok=True)

    def _stored(self, uri: str, pictures: int, seconds: float) -> None:
        self.rt.store.mark_file_done(self.lease.job_id, uri)
        self.done += 1
        metrics.IMAGES.inc(pictures)
        metrics.STAGE_SECONDS.labels("photo").observe(seconds)
        self.task.progress()

    def _failed(self, uri: str, exc: PermanentError) -> None:
        self.rt.store.mark_piece_failed(self.lease.job_id, uri, str(exc))
        metrics.FAILURES.labels("permanent").inc()
        self.task.progress()

    def _drop(self, local: Path) -> None:
        if local.is_relative_to(self.rt.settings.work_dir):
            local.unlink(missing_ok=True)


def photo_output_uri(spec: JobSpec, input_uri: str) -> str:
    if spec.kind == "collection":
        target = join_uri(spec.output, relative_key(spec.input, input_uri))
    elif spec.output.endswith("/"):
        target = join_uri(spec.output, PurePosixPath(parse_uri(input_uri)[2]).name)
    else:
        return spec.output
    return copy_name(target, spec.options.format)


def _page_done() -> None:
    task = liveness.this_task()
    task.progress()
    task.check_held()


# --- films -------------------------------------------------------------------------------------------------


def _film_options(spec: JobSpec, film: FilmInfo, report: bool = False) -> dict:
    """A film job's smoothing and encoder options, its codec resolved for its film (``EncodeOptions.for_film``; its
    choice logged where ``report``, by the planner): the same in every process, from the job's spec and its film
    alone. A run of frames out has no encoder."""
    encode = EncodeOptions(codec=spec.options.codec, crf=spec.options.crf, preset=spec.options.preset)
    if frames_target(spec) is None:
        encode = encode.for_film(film.video, film_output_uri(spec), report)
    return {"smoothing": SmoothingOptions(strength=spec.options.smoothing), "encode": encode}


def job_film(rt: Runtime, spec: JobSpec) -> FilmInfo:
    """A film job's film, probed once per process, its codes read as the job says (``options.log``)."""
    return with_log_choice(rt.film(spec.input), spec.options.log)


def frames_target(spec: JobSpec) -> FrameTarget | None:
    """The names of a film job's output frames (their folder aside), or None for an output that is one film file."""
    output = film_output_uri(spec)
    return FrameTarget.parse(PurePosixPath(parse_uri(output)[2]).name) if is_frame_output(output) else None


def remove_staging(rt: Runtime, spec: JobSpec, job_id: str) -> None:
    """Remove what a film job staged beside its output, and in a folder the staging folder too once no job has
    anything in it: the output's folder is left holding the output alone."""
    staging = staging_uri(spec, job_id)
    rt.storage.delete_prefix(staging)
    scheme, _, path = parse_uri(staging)
    if scheme == "file":
        with contextlib.suppress(OSError):  # another job's segments are there: it is theirs to leave
            os.rmdir(Path(path).parent)


def staging_uri(spec: JobSpec, job_id: str) -> str:
    return join_uri(output_folder(spec), f"{STAGING}/{job_id}") + "/"


def colorize_segment(rt: Runtime, job_id: str, segment_dict: dict, enqueue: Enqueue) -> None:
    segment = Segment(**segment_dict)
    piece = segment_piece(segment)
    record = rt.store.get(job_id)
    if record is None or record.state in FINISHED:
        return
    if rt.store.piece_done(job_id, piece):
        if _after_pieces(rt, job_id, "segments"):  # see colorize_photos
            enqueue.join(job_id)
        return
    lease = rt.leases.take(job_id, piece)
    if lease is None:
        return
    try:
        if not _colorize_segment(rt, record.spec, segment, lease):
            return
    finally:
        lease.release()
    if _discard_if_ended(rt, job_id):
        return
    _progress(rt, job_id)
    if _after_pieces(rt, job_id, "segments"):
        enqueue.join(job_id)


def _colorize_segment(rt: Runtime, spec: JobSpec, segment: Segment, lease: Lease) -> bool:
    """Colorize one segment into the staging area and record it; False if the result was discarded."""
    piece = segment_piece(segment)
    loaded = rt.colorizer(spec.options.model, spec.options.render_size)
    liveness.progress()
    began = time.perf_counter()
    film = job_film(rt, spec)
    options = _film_options(spec, film)
    target = frames_target(spec)
    layout = plan_output(film.video, options["encode"]) if target is None else frames_layout(film.video, target)
    # Each holder stages its own file (or folder of frames), named by its lease: a late result can never overwrite
    # the one recorded.
    part = f"{piece}.{lease.token.rsplit('|', 1)[1]}"
    if target is None:
        part += CODECS[options["encode"].codec].segment_suffix
    local = rt.scratch(lease.job_id) / part
    staged = join_uri(staging_uri(spec, lease.job_id), part)
    references = None
    if spec.options.references:
        references = ReferenceField(film, layout.frame, loaded.colorizer, options["smoothing"],
                                    rt.references(lease.job_id, spec, film), segment.start - segment.warmup,
                                    segment.stop)
        liveness.progress()
    task = liveness.this_task()  # the sink runs in the pipeline's encode thread, not in this one
    written = 0

    def colorize(write: Callable[[ColourFrame], None]) -> StageTimes:
        def sink(frame: ColourFrame) -> None:
            nonlocal written
            task.check_held()
            write(frame)
            written += 1
            task.progress()

        return colorize_frames(film, loaded.colorizer, layout, options["smoothing"], sink, segment.start,
                               segment.stop, segment.warmup, references)

    try:
        if target is None:
            with atomic_path(local) as tmp, SegmentWriter(tmp, film.video, layout, options["encode"]) as writer:
                times = colorize(lambda frame: writer.write(frame.pts, frame.luma, frame.cb, frame.cr, frame.captions))
        else:
            guidance = references_guidance(len(spec.options.references or ()))
            source_metadata, tags = rt.source_labels(spec.input)
            times = _colorize_to_frames(rt, film, target, layout, local, staged, colorize, output_metadata(
                source_metadata, loaded.label, guidance, spec.input, report=segment.index == 0), tags)
    except BadInputError as exc:  # about this worker's copy of the film
        raise as_stored(spec.input, Path(film.path), exc) from exc
    except liveness.HandedOver:  # the partial file is gone with atomic_path
        if target is not None:
            rt.storage.delete_prefix(staged)
        _discarded(lease, f"stopped after {written} of its {segment.frames} frames")
        return False
    except liveness.JobEnded:  # cancelled or failed meanwhile: its cleanup join removes what was staged before
        if target is not None:  # frames staged after that cleanup, too
            rt.storage.delete_prefix(staged)
        logger.info("%s of job %s stopped after %d of its %d frames: the job has ended", piece, lease.job_id,
                    written, segment.frames)
        return False
    if not lease.held():
        _unstage(rt, local, staged, target)
        _discarded(lease)
        return False
    if target is None:
        rt.storage.upload(local, staged)
        local.unlink(missing_ok=True)
    # The render size actually used (the model's own when the job named none), for the film's provenance tag.
    rt.store.update(lease.job_id, model_label=loaded.label, render_size=loaded.colorizer.render_size)
    if lease.commit(segment.frames, part) < 0:
        _unstage(rt, local, staged, target)
        _discarded(lease)
        return False
    metrics.FRAMES.inc(times.frames)
    for stage in ("decode", "network", "smoothing", "colour", "encode"):
        metrics.STAGE_SECONDS.labels(stage).observe(getattr(times, stage))
    metrics.STAGE_SECONDS.labels("segment").observe(time.perf_counter() - began)
    metrics.PIECES.labels("segments").inc()
    return True


def _colorize_to_frames(rt: Runtime, film: FilmInfo, target: FrameTarget, layout: OutputLayout, local: Path,
                        staged: str, colorize: Callable[[Callable[[ColourFrame], None]], StageTimes],
                        metadata: dict[str, str], tags: Mapping[str, str]) -> StageTimes:
    """A segment coloured into frames, each uploaded into the segment's staged folder as soon as it is written (a
    2K segment of a few hundred frames is gigabytes: the work folder holds a few at a time, not all of them), with
    ``metadata`` and ``tags``, which their copies into place keep."""
    writer = FrameWriter(local, target, film, layout, metadata["tinct"])
    try:
        with rt.storage.uploads() as uploads:
            def write(frame: ColourFrame) -> None:
                path = writer.write(frame.index, frame.luma, frame.cb, frame.cr, frame.light)
                uploads.add(path, join_uri(staged, path.name), metadata, tags)

            times = colorize(write)
            uploads.finish()
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return times


# Words of a user metadata key that describe the source's bytes rather than the picture: checksums (a fixity check
# that trusted one on the copy would take it for a corrupt file), sizes, file times, and s3cmd's record of them.
_BYTES_WORD = re.compile(r"md5|sha(1|224|256|384|512)?(sum)?|checksums?|hash|crc(32c?|64)?|fixity|digest|etag|size|"
                         r"bytes|length|[acm]time|s3cmd|attrs")
S3_METADATA_BYTES = 2048  # S3's limit on an object's user metadata: its keys' and values' UTF-8 bytes together


def output_metadata(source: Mapping[str, str], model_label: str, guidance: str, source_uri: str,
                    report: bool = True) -> dict[str, str]:
    """An output object's S3 user metadata: its source's (an archive's accession number, catalogue id, rights: what
    its catalogue knows the copy by), less the keys that describe the source's bytes, and the provenance sentence
    its file carries (``x-amz-meta-tinct``), where a catalogue or an ingest rule reads it with one HEAD request, not
    the file; a BMP result carries it nowhere else. A source key that does not fit beside the sentence within S3's
    2 KB is left out, said in the log where ``report`` (S3 would refuse the upload): once per copy, not per
    segment of a run of frames."""
    provenance = {"tinct": provenance_text(model_label, guidance)}
    room = S3_METADATA_BYTES - sum(len(k.encode()) + len(v.encode()) for k, v in provenance.items())
    kept: dict[str, str] = {}
    about_bytes, no_room = [], []
    for key, value in source.items():
        if key.lower() in provenance:
            continue  # a copy of a copy: the sentence is this one's
        if any(_BYTES_WORD.fullmatch(word) for word in re.split(r"[-_.]", key.lower())):
            about_bytes.append(key)
        elif (size := len(key.encode()) + len(value.encode())) > room:
            no_room.append(key)
        else:
            kept[key] = value
            room -= size
    if about_bytes and report:
        logger.info("%s: metadata %s not carried to its copy: it describes the source's bytes", source_uri,
                    ", ".join(about_bytes))
    if no_room and report:
        logger.warning("%s: metadata %s not carried to its copy: no room beside the provenance within S3's 2 KB",
                       source_uri, ", ".join(no_room))
    return {**kept, **provenance}


def _unstage(rt: Runtime, local: Path, staged: str, target: FrameTarget | None) -> None:
    """Remove a discarded segment: its encoded file, here and staged, or the frames it has staged."""
    if target is None:
        local.unlink(missing_ok=True)
        rt.storage.delete(staged)  # (a commit refused after the upload)
    else:
        rt.storage.delete_prefix(staged)


def _discarded(lease: Lease, how: str = "") -> None:
    logger.warning("%s of job %s was handed to another worker while this one was silent: %sthis result is discarded",
                   lease.piece, lease.job_id, f"{how}; " if how else "")


def _progress(rt: Runtime, job_id: str) -> None:
    """Frames (or files) per second since the job started, and the time left at that rate."""
    raw = rt.redis.hmget(f"tinct:job:{job_id}", "started", "total", "done")
    started, total, done = float(raw[0] or time.time()), float(raw[1] or 0), float(raw[2] or 0)
    elapsed = max(time.time() - started, 1e-6)
    fps = done / elapsed
    eta = (total - done) / fps if fps > 0 and total > done else 0.0
    rt.store.update(job_id, fps=round(fps, 2), eta_s=round(eta, 1))


def join_film(rt: Runtime, job_id: str) -> None:
    """Join a film's staged segments into its output; on a job that has finished, remove what is left staged (a
    cancelled job's segments, for which ``Service.cancel`` sends this task; a success whose joiner died after it)."""
    record = rt.store.get(job_id)
    if record is None or record.state in FINISHED:
        if record is not None:
            remove_staging(rt, record.spec, job_id)
            if record.state != "succeeded":
                _take_back_frames(rt, record)
        return
    lease = rt.leases.take(job_id, "join")
    if lease is None:
        return  # another worker is joining
    try:
        _join(rt, record, lease)
    finally:
        lease.release()


def _join(rt: Runtime, record: JobRecord, lease: Lease) -> None:
    job_id, spec = record.id, record.spec
    segments = [Segment(**s) for s in json.loads(rt.redis.get(f"tinct:job:{job_id}:segments") or "[]")]
    parts = {k.decode(): v.decode() for k, v in rt.redis.hgetall(job_key(job_id, ":parts")).items()}
    target = frames_target(spec)
    if target is not None:
        _publish_frames(rt, record, lease, target, segments, parts)
        return
    film = job_film(rt, spec)
    options = _film_options(spec, film)
    suffix = CODECS[options["encode"].codec].segment_suffix
    scratch = rt.scratch(job_id)
    staging = staging_uri(spec, job_id)
    logger.info("joining %d segments of job %s", len(segments), job_id)
    paths = []
    for segment in segments:
        # The file its lease holder recorded (a plain name: a piece recorded by a worker of an older release).
        name = parts.get(segment_piece(segment)) or f"{segment_piece(segment)}{suffix}"
        local = scratch / name
        rt.storage.download(join_uri(staging, name), local)
        liveness.progress()
        paths.append(local)
    output = film_output_uri(spec)
    final = scratch / f"output{PurePosixPath(parse_uri(output)[2]).suffix}"
    label, used_size = rt.redis.hmget(f"tinct:job:{job_id}", "model_label", "render_size")
    label = (label or b"").decode() or spec.options.model
    render_size = int(used_size) if used_size else spec.options.render_size
    provenance = {"model": label, "render_size": render_size, "smoothing": spec.options.smoothing,
                  **options["encode"].describe(), "job": job_id,
                  **references_provenance(len(spec.options.references or ()))}
    try:
        join_segments(film, paths, final, provenance)
    except BadInputError as exc:  # about the worker's copy of the film: named by the job's input instead
        raise BadInputError(spec.input, exc.reason) from exc
    if not lease.held():
        _discarded(lease)
        return
    guidance = references_guidance(len(spec.options.references or ()))
    source_metadata, tags = rt.source_labels(spec.input)
    info = rt.storage.upload(final, output, metadata=output_metadata(source_metadata, label, guidance, spec.input),
                             tags=tags)
    shutil.rmtree(scratch, ignore_errors=True)
    # Staging goes before the job is marked done, so whoever sees it succeeded sees no leftovers; only by the lease's
    # holder, so a joiner that lost its lease meanwhile never takes the segments from under the one that has it.
    if lease.held():
        remove_staging(rt, spec, job_id)
    job_metrics = {"frames": film.frames, "output_size": info.size}
    if film.video.log_encoded:  # the copy's codes are log too: a preview shows it through them
        job_metrics["log_encoded"] = True
    finish_job(rt, job_id, [output], job_metrics, lease=lease)


def _publish_frames(rt: Runtime, record: JobRecord, lease: Lease, target: FrameTarget, segments: Sequence[Segment],
                    parts: dict[str, str]) -> None:
    """A run of frames' join: every segment's staged frames copied into the output's folder, inside the store. None
    is copied before all are staged, and a joiner that dies midway leaves the copy to the next, which redoes it."""
    job_id, spec = record.id, record.spec
    staging = staging_uri(spec, job_id)
    output = film_output_uri(spec)
    folder = output_folder(spec)
    copies: list[tuple[ObjectInfo, str]] = []
    numbers: list[int] = []
    for segment in segments:
        part = join_uri(staging, parts[segment_piece(segment)]) + "/"
        staged = list(rt.storage.list(part))
        if len(staged) != segment.frames:  # removed by hand or by a lifecycle rule: no output can be made of them
            raise PermanentError(f"{part}: {len(staged)} of its segment's {segment.frames} frames are staged; "
                                 "submit the job again to colour them again")
        for info in staged:
            name = PurePosixPath(parse_uri(info.uri)[2]).name
            numbers.append(frame_number(name, target.prefix, target.digits, target.suffix))
            copies.append((info, join_uri(folder, name)))
        liveness.progress()
    logger.info("placing the %d frames of job %s in %s", len(copies), job_id, folder)
    rt.redis.hset(job_key(job_id), PLACED_FRAMES, f"{min(numbers)}-{max(numbers)}")  # a run is contiguous
    for start in range(0, len(copies), FRAMES_COPIED_AT_ONCE):
        rt.storage.copy_listed(copies[start:start + FRAMES_COPIED_AT_ONCE])
        liveness.progress()
    if not lease.held():
        _discarded(lease)  # the copies are the same frames the holder of the lease places
        return
    remove_staging(rt, spec, job_id)
    if not finish_job(rt, job_id, [output], {"frames": len(copies), "first_frame": min(numbers),
                                             "output_size": sum(info.size for info, _ in copies)}, lease=lease):
        _discard_if_ended(rt, job_id)  # cancelled while placing: the frames placed after its cleanup go too


def _take_back_frames(rt: Runtime, record: JobRecord) -> None:
    """Remove the frames a run of frames' join placed, or began to, for a job that then failed or was cancelled: a
    run left partly placed would look whole where it is part this job's, part missing or part an earlier job's, which
    go too (the job was to replace them). Nothing where the join had not begun placing."""
    placed = rt.redis.hget(job_key(record.id), PLACED_FRAMES)
    target = frames_target(record.spec)
    if placed is None or target is None:
        return
    first, last = (int(number) for number in placed.decode().split("-"))
    folder = output_folder(record.spec)
    rt.storage.delete_listed([join_uri(folder, target.name(number)) for number in range(first, last + 1)])
    logger.info("job %s: took the frames its join had placed back out of %s", record.id, folder)


# --- bookkeeping -------------------------------------------------------------------------------------------


def _after_pieces(rt: Runtime, job_id: str, kind: str) -> bool:
    """After a piece was recorded (or found recorded): once every piece is done and the job still runs, finish a
    photo job, or say (True) that a film's join is due. May run more than once per job (a piece redelivered after
    its worker died past this point): a job is finished only while it runs (atomically, so once), and the join's own
    lease makes a second join task return at once."""
    raw = rt.redis.hmget(job_key(job_id), "pieces", "state")
    total, state = int(float(raw[0] or 0)), (raw[1] or b"").decode()
    if state in FINISHED or rt.store.pieces_done(job_id) < total:
        return False
    if kind == "segments":
        return True
    finish_job(rt, job_id)
    return False


def finish_job(rt: Runtime, job_id: str, outputs: list[str] | None = None, job_metrics: dict | None = None,
               lease: Lease | None = None) -> bool:
    """Mark the job succeeded with its outputs (a photo's output, a collection's output prefix — listing 50,000
    URIs in the job state helps nobody — or the film's, given by the join), or failed if its only file failed.
    With a ``lease``, only while it is still held; never for a job that has finished. True if this call finished it.
    """
    record = rt.store.get(job_id)
    if record is None:
        return False
    if outputs is None:
        spec = record.spec
        outputs = [spec.output] if spec.kind == "collection" else [photo_output_uri(spec, spec.input)]
    job_metrics = job_metrics if job_metrics is not None else {"files": record.done}
    failed = record.failed_pieces
    if failed and record.spec.kind != "collection":
        return fail_job(rt, job_id, next(iter(failed.values())))
    error = f"{len(failed)} of {record.total} files failed (see failed_pieces)" if failed else ""
    started, label = rt.redis.hmget(f"tinct:job:{job_id}", "started", "model_label")
    job_metrics = dict(job_metrics, seconds=round(time.time() - float(started or time.time()), 3))
    if label:  # the checkpoint's label (architecture@weights hash): a named model can be published again
        job_metrics["model"] = label.decode()
    changes = {"state": "succeeded", "outputs": outputs, "metrics": job_metrics, "error": error, "eta_s": 0.0}
    if lease is not None:
        encoded = {name: json.dumps(value) if isinstance(value, list | dict) else str(value)
                   for name, value in {**changes, "updated": time.time()}.items()}
        if not lease.update_job(encoded):
            _discarded(lease)
            return False
        rt.store.expire(job_id)
    elif not rt.store.update_unless_finished(job_id, **changes):
        return False
    metrics.JOBS.labels("succeeded").inc()
    logger.info("job %s succeeded: %s", job_id, ", ".join(outputs))
    return True


def fail_job(rt: Runtime, job_id: str, reason: str) -> bool:
    """Fail a running job with a one-line reason; a job that has already finished is left as it is (a late task's
    error must not undo a success). True if this call failed it. A failed film's staged segments are removed."""
    if not rt.store.update_unless_finished(job_id, state="failed", error=one_line(reason)):
        return False
    metrics.JOBS.labels("failed").inc()
    metrics.FAILURES.labels("permanent").inc()
    logger.warning("job %s failed: %s", job_id, one_line(reason))
    _discard_if_ended(rt, job_id)
    return True


def _discard_if_ended(rt: Runtime, job_id: str) -> bool:
    """True if the job was cancelled or failed, after removing what a film job has staged. A segment that finishes
    after its job was cancelled or failed calls this once its file is staged, so whichever comes last, the cancel's
    cleanup (``join_film``) or the segment's upload, leaves nothing behind."""
    record = rt.store.get(job_id)
    if record is None or record.state not in FINISHED or record.state == "succeeded":
        return False
    if record.spec.kind == "video":
        try:
            remove_staging(rt, record.spec, job_id)
        except TinctError as exc:  # the job's outcome stands; its staged files are named in the warning's prefix
            logger.warning("job %s: its staged segments under %s were not removed: %s", job_id,
                           staging_uri(record.spec, job_id), one_line(exc))
        try:
            _take_back_frames(rt, record)
        except TinctError as exc:
            logger.warning("job %s: the frames its join placed in %s were not all taken back out: %s", job_id,
                           output_folder(record.spec), one_line(exc))
    return True


def describe_error(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, TinctError) else f"{type(exc).__name__}: {one_line(exc)}"
