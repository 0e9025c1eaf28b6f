"""The photo job: find photos, decode them, colorize them in batches across files, write the results.

The CLI (``tinct colorize``) runs it on local folders; the service will run the same job per task. One pass:

1. :func:`plan_photos` turns the inputs (files and folders, searched recursively) into tasks with deterministic
   output paths that mirror the input tree under the output folder;
2. :func:`colorize_photos` skips tasks whose output already exists and is newer than the photo and its hints (a
   rerun resumes where the last one stopped, and redoes a photo rescanned or re-hinted since),
   decodes the rest on a small thread pool, hands the colorizer batches of photos from many files at once (the
   network is fed batches, never one file at a time), and encodes the results on the same pool while the next
   batch is being colorized. Every output is written atomically, so an interrupted run leaves either a complete
   file or none under each output name.

A file that fails (bad input, failed write) is recorded with a one-line reason and the job carries on; the
:class:`PhotoSummary` says what was done, skipped and failed.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Literal, Protocol

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from models.colorizer import Colorizer as ModelColorizer
from models.engines import create_engine
from models.files import PARTIAL_SUFFIX, changed_since, unwritable_reason
from models.hints import ColourHints
from worker.errors import BadInputError, ModelError, TinctError, UnsupportedMediaError, one_line
from worker.hints import HINTS_SUFFIX, HintSpec, hints_provenance, load_hints_file, sidecar_path
from worker.media.frame_sequences import FOLDER_SEQUENCE_SUFFIXES, folder_sequences, is_pattern, output_stem, photo_runs
from worker.media.frame_sink import is_frame_output
from worker.media.images import (
    DEFAULT_MAX_PIXELS,
    EXTENSION_FORMATS,
    FORMAT_NAMES,
    InColourThroughout,
    Photo,
    copy_suffix,
    format_for_path,
    is_photo_name,
    lost_pages,
    read_pages,
    read_photo,
    unwritten_copy,
    write_document,
    write_photo,
)
from worker.media.video_sink import CONTAINERS
from worker.references import REFERENCES_SUFFIX
from worker.settings import GuidanceLimits

logger = logging.getLogger(__name__)

Status = Literal["done", "exists", "colour", "failed"]
# Files a folder scan hands to the film job. Outputs keep the containers Tinct writes; the rest get
# video_sink.fallback_container.
FILM_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".vob", ".ts", ".m2ts", ".mts",
                   ".m2t", ".mxf", ".wmv", ".flv", ".ogv", ".3gp", ".dv", ".nut"}
FILM_CONTAINERS = set(CONTAINERS)


class Colorizer(Protocol):
    """What the job needs from ``models.colorizer.Colorizer``: full-resolution L in, sRGB out, a batch at a time;
    ``hints`` (one ``ColourHints`` or None per photo) is only passed when some photo of the batch has hints."""

    def colorize(self, lightness: list[np.ndarray], hints: list[ColourHints | None] | None = None) -> list[np.ndarray]:
        ...


@dataclass(frozen=True)
class PhotoTask:
    """One photo to colorize, where its result goes, and its colour hint file if it has one (``worker.hints``)."""

    source: Path
    output: Path
    hints: Path | None = None


@dataclass(frozen=True)
class PhotoOutcome:
    """What happened to one task: ``done``, ``exists`` (output already there), ``colour`` (a colour photo, left
    alone) or ``failed`` (``reason`` is the one-line error, naming the file)."""

    task: PhotoTask
    status: Status
    reason: str = ""
    pictures: int = 0  # pictures coloured: 1 for a photo done, a document's page count


@dataclass(frozen=True)
class PhotoOptions:
    """How the job runs. ``batch_size`` photos (at most ``max_batch_pixels`` between them, so a batch of huge
    scans cannot exhaust memory) go to the colorizer together; ``workers`` threads decode and encode."""

    overwrite: bool = False
    recolor: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    batch_size: int = 8
    max_batch_pixels: int = 100_000_000
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    progress: bool = False
    limits: GuidanceLimits = field(default_factory=GuidanceLimits)  # how many hints, how large a hint file


@dataclass
class PhotoPlan:
    """Tasks found by :func:`plan_photos`, inputs that failed before decoding, films found beside the photos
    (for ``worker.films``), and how many folder entries were passed over because their extension is neither
    an image format Tinct reads nor a film's."""

    tasks: list[PhotoTask]
    failures: list[PhotoOutcome]
    ignored: int = 0
    films: list[PhotoTask] = field(default_factory=list)


@dataclass
class PhotoSummary:
    """The result of a job, in the order outcomes were recorded."""

    outcomes: list[PhotoOutcome]
    seconds: float
    ignored: int = 0

    def count(self, *statuses: Status) -> int:
        return sum(outcome.status in statuses for outcome in self.outcomes)

    @property
    def failed(self) -> list[PhotoOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == "failed"]

    @property
    def pictures(self) -> int:
        """Pictures coloured: photos, and every page of a document."""
        return sum(outcome.pictures for outcome in self.outcomes if outcome.status == "done")

    @property
    def images_per_second(self) -> float:
        return self.pictures / self.seconds if self.seconds > 0 else 0.0

    def report(self) -> str:
        """A few lines for people: the counts, then one line per failed file."""
        exists, colour = self.count("exists"), self.count("colour")
        skipped = f"skipped {exists + colour}"
        if exists + colour:
            skipped += f" ({exists} already done, {_plural(colour, 'colour photo')})"
        done = self.count("done")
        documents = sum(outcome.pictures > 1 for outcome in self.outcomes if outcome.status == "done")
        pages = f" ({self.pictures} pictures, each page of {_plural(documents, 'document')} one)" if documents else ""
        lines = [
            f"colorized {done}{pages}, {skipped}, failed {len(self.failed)} "
            f"in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s)"
        ]
        if self.ignored:
            verb = "is" if self.ignored == 1 else "are"
            lines.append(f"ignored {_plural(self.ignored, 'file')} that {verb} not {FORMAT_NAMES}")
        if self.failed:
            lines.append("failed:")
            lines.extend(f"  {outcome.reason}" for outcome in self.failed)
        return "\n".join(lines)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


# --- planning -------------------------------------------------------------------------------------------------


def output_suffix(output_format: str | None) -> str | None:
    """``"png"``, ``".JPG"``, ``"tiff"`` ... -> the extension to write, or None to keep each source's own.

    Raises ValueError for a format Tinct cannot write.
    """
    if not output_format:
        return None
    suffix = "." + output_format.lower().lstrip(".")
    if suffix not in EXTENSION_FORMATS:
        names = ", ".join(sorted({s.lstrip(".") for s in EXTENSION_FORMATS}))
        raise ValueError(f"unknown output format {output_format!r}; choose one of {names}")
    return suffix


def copy_name(mirrored: str, output_format: str | None) -> str:
    """The name (a path or URI) of the colour copy of a photo whose own name, mirrored into the output, is
    ``mirrored``: with the extension of ``output_format`` where one is asked for, else the photo's own where Tinct
    writes it (a GIF's copy is a PNG). The CLI, collections, bulk and the event triggers all name copies so."""
    suffix = output_suffix(output_format) or copy_suffix(mirrored)
    head, slash, name = mirrored.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{head}{slash}{stem}{suffix}"


def copy_owners(copies: Mapping[str, str]) -> dict[str, str]:
    """Which photo writes each copy, of photos (source -> its copy's name, in listing order) whose copies may share a
    name (``a.gif`` and ``a.png`` both make ``a.png``; with a format asked for, ``a.jpg`` and ``a.tif`` make one
    ``a.png``): one whose copy keeps its own extension (``a.png``), else the first listed. Written both, the last
    would silently win; collections, bulk and the event triggers fail the others before any work."""
    owners: dict[str, str] = {}
    for source in sorted(copies, key=lambda source: renamed_copy(source, copies[source])):  # stable: listing order
        owners.setdefault(copies[source], source)
    return owners


def shared_copy(source: str, copy: str, owner: str) -> BadInputError:
    """The failure of a photo whose copy's name ``owner`` keeps (:func:`copy_owners`)."""
    return BadInputError(source, f"its copy {copy} is also the copy of {owner}")


def renamed_copy(source: str, copy: str) -> bool:
    """Whether a copy's name has another extension than its source's."""
    return PurePath(source).suffix.lower() != PurePath(copy).suffix.lower()


def contradicted_format(output: str | os.PathLike, output_format: str | None) -> str | None:
    """Why a copy named ``output`` cannot be written in ``output_format`` (its extension names another format:
    ``r.png`` as ``jpg``), or None; ``a.jpeg`` is a JPEG as ``jpg`` asks. ValueError for an unknown format."""
    suffix = output_suffix(output_format)
    if suffix is None or format_for_path(output) == EXTENSION_FORMATS[suffix]:
        return None
    return f"format {output_format} contradicts the output file name {PurePath(output).name}"


def plan_photos(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    output_format: str | None = None,
    hints: str | os.PathLike | None = None,
    film_suffix: str = ".mkv",
) -> PhotoPlan:
    """Tasks for every photo under ``inputs``, with outputs mirroring each input folder's tree under ``output``.

    A single input file with an ``output`` that has an image extension is written exactly there; otherwise
    ``output`` is a folder. Folders are searched recursively for supported extensions (case-insensitive), skipping
    hidden entries (``.DS_Store``, AppleDouble ``._x.jpg`` files, our own unfinished temp files) and the output
    folder itself when it lies inside an input. Files named explicitly are tried whatever their extension.
    Output names keep the source's extension unless ``output_format`` is given. Two sources that would write
    the same output, or an output that would replace its own source, fail in the plan. A photo with a hint file
    beside it (``<file name>.hints.json``) is colorized with those hints; ``hints`` names the hint file of a
    single input photo instead. Films in folders keep their container where Tinct writes it and otherwise get
    ``film_suffix`` (see ``video_sink.fallback_container``). Runs of numbered DPX, Cineon and OpenEXR frames in folders,
    and runs named by their pattern, are films (``worker.media.frame_sequences``). Raises ValueError for arguments that
    cannot work (which the CLI reports as usage errors).
    """
    sources = [Path(p) for p in inputs]
    output = Path(output)
    output_suffix(output_format)  # an unknown format is a usage error before anything is read
    if not sources:
        raise ValueError("no inputs given")
    if hints is not None and not (len(sources) == 1 and sources[0].is_file()):
        raise ValueError("--hints names the hint file of one photo; for folders put <photo file name>.hints.json "
                         "beside each photo")
    # An output that cannot be made (a file in the way, no write permission) is refused now: otherwise every photo
    # would be colorized and then fail to be written, one line each, hours later on a large folder.
    if (reason := unwritable_reason(output)) is not None:
        raise ValueError(f"{output}: cannot be written, {reason}")
    if len(sources) == 1 and (is_film(output) or is_frame_output(output)) and not output.is_dir():
        # A film (or a run of frames, named by its pattern) as the output makes the input a film whatever its own
        # extension (.mka, .vob, none), and names the colour copy of a run of frames (named by its pattern, or the
        # one run in a folder).
        film = _single_film(sources[0])
        if film is not None:
            return _checked(PhotoPlan([], [], films=[PhotoTask(film, output)]))
    if (reason := unwritten_copy(output)) and not output.is_dir():
        raise ValueError(f"{output.name}: {reason}")
    if len(sources) == 1 and sources[0].is_file() and format_for_path(output) and not output.is_dir() \
            and sources[0].suffix.lower() not in FOLDER_SEQUENCE_SUFFIXES:
        if reason := contradicted_format(output, output_format):
            raise ValueError(f"--{reason}")
        return _checked(PhotoPlan([_photo_task(sources[0], output, hints)], []))
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output} exists and is not a folder (several inputs need an output folder)")

    plan = PhotoPlan([], [])
    for source in sources:
        if source.is_dir():
            for path in _walk(source, output, plan):
                _add(plan, path, output / path.relative_to(source), output_format, film_suffix)
        elif source.exists():
            _add(plan, source, output / source.name, output_format, film_suffix, hints)
        elif is_pattern(source):
            plan.films.append(PhotoTask(source, output / (output_stem(source) + film_suffix)))
        else:
            failure = BadInputError(source, "no such file or folder")
            plan.failures.append(PhotoOutcome(PhotoTask(source, output), "failed", str(failure)))
    return _checked(plan)


def _single_film(source: Path) -> Path | None:
    """The film ``source`` names when a film file or a run of frames is its output: itself, or the one run of frames
    in a folder (None for a folder without one, or for one DPX frame, which is told to name its run). ValueError for
    a folder of several runs, which one output cannot name."""
    if is_pattern(source) or (source.is_file() and source.suffix.lower() not in FOLDER_SEQUENCE_SUFFIXES):
        return source
    if not source.is_dir():
        return None
    runs, _ = folder_sequences(source, sorted(entry.name for entry in source.iterdir() if entry.is_file()))
    if len(runs) > 1:
        raise ValueError(f"{source} holds {len(runs)} runs of frames; name one by its pattern, or give an output "
                         "folder for all of them")
    if not runs:
        return None
    # A run that cannot be a film (a gap in it) is handed on all the same: the film job names what is wrong.
    return Path(runs[0].path if isinstance(runs[0], BadInputError) else runs[0])


def _walk(root: Path, output: Path, plan: PhotoPlan) -> Iterator[Path]:
    skip = output.resolve()
    for folder, dirs, files in os.walk(root, onerror=lambda exc: _unreadable_folder(exc, plan)):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != skip
                         and not is_reference_folder(d))  # a film's reference pictures are not photos to colorize
        runs, files = folder_sequences(here, sorted(name for name in files if not name.startswith(".")))
        for pattern, count in photo_runs(here, files):
            logger.warning("%s: %d numbered frames, colorized as photos one by one; name the run to colorize it as "
                           "a film, with steady colour from frame to frame (tinct colorize '%s' -o <film>.mkv)",
                           pattern, count, pattern)
        for run in runs:  # numbered DPX, Cineon or OpenEXR frames: each run is a film, named by its pattern
            if isinstance(run, BadInputError):
                plan.failures.append(PhotoOutcome(PhotoTask(Path(run.path), output), "failed", str(run)))
            else:
                yield Path(run)
        for name in files:
            if name.endswith((PARTIAL_SUFFIX, HINTS_SUFFIX)):
                continue
            if is_photo_name(name) or is_film(name):
                yield here / name
            else:
                plan.ignored += 1
                logger.debug("%s: not a supported image extension; ignored", here / name)


def _unreadable_folder(exc: OSError, plan: PhotoPlan) -> None:
    path = Path(exc.filename or "?")
    failure = BadInputError(path, f"cannot list folder: {exc.strerror or exc}")
    plan.failures.append(PhotoOutcome(PhotoTask(path, path), "failed", str(failure)))


def is_film(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in FILM_EXTENSIONS


def is_reference_folder(name: str) -> bool:
    """Whether a folder named ``name`` is a film's sidecar of reference pictures (``reel1.mp4.references``)."""
    return name.endswith(REFERENCES_SUFFIX) and is_film(name[: -len(REFERENCES_SUFFIX)])


def _add(plan: PhotoPlan, source: Path, mirrored: Path, output_format: str | None, film_suffix: str,
         hints: str | os.PathLike | None = None) -> None:
    if is_pattern(source):  # a run of frames: its film is named by the frames' prefix (see output_stem)
        plan.films.append(PhotoTask(source, mirrored.with_name(output_stem(source) + film_suffix)))
    elif source.suffix.lower() in FOLDER_SEQUENCE_SUFFIXES:  # one frame of a scanned film, named alone
        runs, _ = folder_sequences(source.parent, [source.name])
        how = (f"name the run of frames to colorize it ({runs[0]})" if runs else
               "Tinct colours such frames as the runs of a film, named by the printf pattern of their numbered names "
               "(scan_%07d" + source.suffix + ")")
        failure = BadInputError(source, f"one frame of a film; {how}")
        plan.failures.append(PhotoOutcome(PhotoTask(source, mirrored), "failed", str(failure)))
    elif is_film(source):
        kept = mirrored.suffix.lower() in FILM_CONTAINERS  # mp4, mov, mkv
        plan.films.append(PhotoTask(source, mirrored if kept else mirrored.with_suffix(film_suffix)))
    else:
        plan.tasks.append(_photo_task(source, Path(copy_name(str(mirrored), output_format)), hints))


def _photo_task(source: Path, output: Path, hints: str | os.PathLike | None) -> PhotoTask:
    """The task, with the named hint file or else the photo's sidecar if there is one."""
    if hints is not None:
        return PhotoTask(source, output, Path(hints))
    sidecar = sidecar_path(source)
    return PhotoTask(source, output, sidecar if sidecar.is_file() else None)


def _checked(plan: PhotoPlan) -> PhotoPlan:
    """Refuse outputs that would replace a source or be written twice: the second writer would silently win. Of
    sources with one output, one whose output keeps its own extension keeps it (``a.png`` over ``a.gif``), else the
    first."""
    claimed: dict[Path, Path] = {}
    sources = {task.source.resolve() for task in plan.tasks + plan.films}
    for kind in ("tasks", "films"):
        tasks: list[PhotoTask] = getattr(plan, kind)
        renamed = [renamed_copy(str(task.source), str(task.output)) for task in tasks]
        ranked = sorted(range(len(tasks)), key=renamed.__getitem__)  # stable: in the order found within each
        kept = []
        for i in ranked:
            task = tasks[i]
            target = task.output.resolve()
            if target in sources:
                reason = f"output {task.output} would replace a source file"
            elif target in claimed:
                reason = f"output {task.output} is also the output of {claimed[target]}"
            else:
                claimed[target] = task.source
                kept.append(i)
                continue
            plan.failures.append(PhotoOutcome(task, "failed", str(BadInputError(task.source, reason))))
        setattr(plan, kind, [tasks[i] for i in sorted(kept)])  # in the order found
    return plan


# --- running --------------------------------------------------------------------------------------------------


@contextmanager
def open_colorizer(
    model: str | os.PathLike = "default",
    engine: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    render_size: int | None = None,
    batch_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Iterator[tuple[Colorizer, str]]:
    """Load the model once and yield ``(colorizer, model label)``; the engine is closed afterwards. ``render_size``
    None is the model's own (``models.colorizer.preferred_render_size``); ``batch_size`` None is what fits
    (``models.batching``: as many as GPU memory holds, 8 on CPU). ``cache_dir``
    holds ONNX exports (``Settings.cache_dir / "onnx"``; None: ``~/.cache/tinct/onnx``).

    Any failure to load (missing or corrupt checkpoint, unknown engine, no GPU) becomes one :class:`ModelError`.
    """
    try:
        backend = create_engine(model=model, kind=engine, device=device, precision=precision, cache_dir=cache_dir,
                                render_sizes=[render_size] if render_size else None, max_batch=batch_size)
    except Exception as exc:  # noqa: BLE001 - every loading failure is reported the same way, in one line
        raise ModelError(model, str(exc) or type(exc).__name__) from exc
    try:
        try:
            colorizer = ModelColorizer(backend, render_size=render_size, batch_size=batch_size)
        except ValueError as exc:  # e.g. a render size below the model's stride
            raise ModelError(model, str(exc)) from exc
        label = backend.checkpoint.label
        logger.info("model %s on %s (%s engine)", label, backend.device, backend.name)
        yield colorizer, label
    finally:
        backend.close()


def colorize_photos(
    colorizer: Colorizer, plan: PhotoPlan, model_label: str, options: PhotoOptions | None = None
) -> PhotoSummary:
    """Run the job over ``plan`` and return its summary. Failures of single files are recorded, not raised;
    KeyboardInterrupt (and any unexpected error) stops the job after the encodes in flight have finished."""
    options = options or PhotoOptions()
    run = _Run(colorizer, model_label, options)
    started = time.perf_counter()
    bar = tqdm(total=len(plan.tasks) + len(plan.failures), unit="img", disable=not options.progress,
               dynamic_ncols=True, leave=False)
    with bar, logging_redirect_tqdm() if options.progress else nullcontext():
        run.bar = bar
        for failure in plan.failures:
            run.record(failure)
        run.execute(plan.tasks)
    return PhotoSummary(run.outcomes, time.perf_counter() - started, plan.ignored)


class _Run:
    """The state of one job: a decode queue ahead of the colorizer, a batch, and encodes behind it."""

    def __init__(self, colorizer: Colorizer, model_label: str, options: PhotoOptions) -> None:
        self.colorizer = colorizer
        self.model_label = model_label
        self.options = options
        self.outcomes: list[PhotoOutcome] = []
        self.bar: tqdm | None = None
        self.decodes: deque[tuple[PhotoTask, Future[tuple[Photo, ColourHints | None]]]] = deque()
        self.encodes: deque[tuple[PhotoTask, Future[Path]]] = deque()

    def record(self, outcome: PhotoOutcome) -> None:
        self.outcomes.append(outcome)
        if outcome.status == "failed":
            logger.error("%s", outcome.reason)
        elif outcome.status == "colour":
            logger.warning("%s", outcome.reason)
        else:
            logger.debug("%s: %s", outcome.task.source, outcome.status)
        if self.bar is not None:
            self.bar.update(1)

    def execute(self, tasks: list[PhotoTask]) -> None:
        todo = []
        for task in tasks:
            if self.options.overwrite or not task.output.exists():
                todo.append(task)
            elif changed := changed_since(task.output, (task.source, task.hints)):
                logger.info("%s: changed since %s was made; colouring it again", changed, task.output)
                todo.append(task)
            else:
                self.record(PhotoOutcome(task, "exists"))
        workers = max(1, self.options.workers)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tinct-io")
        try:
            self._pipeline(pool, iter(todo), workers)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM) or broken: stop decoding, but finish writing what is already
            # colorized, since that work is done; every write is atomic either way.
            for _, decoding in self.decodes:
                decoding.cancel()
            while self.encodes:
                self._finish_encode()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _pipeline(self, pool: ThreadPoolExecutor, tasks: Iterator[PhotoTask], workers: int) -> None:
        ahead = self.options.batch_size + workers  # decoded photos waiting, bounded so memory stays bounded
        decodes = self.decodes
        batch: list[tuple[PhotoTask, Photo, HintSpec | None]] = []
        while True:
            while len(decodes) < ahead and (task := next(tasks, None)) is not None:
                decoding = pool.submit(_read_with_hints, task, self.options.max_pixels, self.options.limits)
                decodes.append((task, decoding))
            if not decodes:
                break
            task, decoding = decodes.popleft()
            decoded = self._decoded(task, decoding)
            if decoded is None:
                continue
            photo, hints = decoded
            if photo.page_count > 1:  # a document: coloured and written a page at a time, here
                self._document(task, hints)
                continue
            pixels = sum(p.L.size for _, p, _ in batch)
            if batch and pixels + photo.L.size > self.options.max_batch_pixels:
                self._colorize(pool, batch)
                batch = []
            batch.append((task, photo, hints))
            if len(batch) >= self.options.batch_size:
                self._colorize(pool, batch)
                batch = []
        if batch:
            self._colorize(pool, batch)
        while self.encodes:
            self._finish_encode()

    def _decoded(
        self, task: PhotoTask, decoding: Future[tuple[Photo, HintSpec | None]]
    ) -> tuple[Photo, HintSpec | None] | None:
        try:
            photo, hints = decoding.result()
        except TinctError as exc:
            self.record(PhotoOutcome(task, "failed", str(exc)))
            return None
        except Exception as exc:  # noqa: BLE001 - one undecodable file must not stop an archive run
            self.record(PhotoOutcome(task, "failed", str(BadInputError(task.source, f"{type(exc).__name__}: {exc}"))))
            return None
        if colour := photo.colour_found():
            if not self.options.recolor:
                reason = f"{task.source}: already {colour}; skipped, use --recolor to colorize its lightness anyway"
                self.record(PhotoOutcome(task, "colour", reason))
                return None
            logger.info("%s: %s; recolorizing its lightness", task.source, colour)
        return photo, hints

    def _colorize(self, pool: ThreadPoolExecutor, batch: list[tuple[PhotoTask, Photo, HintSpec | None]]) -> None:
        lightness = [photo.L for _, photo, _ in batch]
        hints = [spec.colour_hints() if spec else None for _, _, spec in batch]
        try:
            if any(hints):
                results = self.colorizer.colorize(lightness, hints=hints)
            else:
                results = self.colorizer.colorize(lightness)
        except Exception as exc:  # noqa: BLE001 - recorded against each photo of the batch; the job goes on
            for task, _, _ in batch:
                self.record(PhotoOutcome(task, "failed", f"{task.source}: colorization failed: {one_line(exc)}"))
            return
        for (task, photo, photo_hints), rgb in zip(batch, results, strict=True):
            guidance = hints_provenance(len(photo_hints) if photo_hints else 0)
            future = pool.submit(write_photo, task.output, rgb, photo, self.model_label, photo.alpha, guidance)
            self.encodes.append((task, future))
        while len(self.encodes) > 2 * max(1, self.options.workers):
            self._finish_encode()

    def _document(self, task: PhotoTask, hints: HintSpec | None) -> None:
        """A multi-page TIFF document, read, coloured and written a page at a time (``images.write_document``), each
        page with its hints: its pages already in colour are kept as they are, unless recoloured; one in colour
        throughout is left alone."""
        try:
            coloured, kept = colour_document(self.colorizer, task.source, task.output, self.model_label,
                                             self.options.recolor, self.options.max_pixels, hints=hints)
        except InColourThroughout as exc:
            reason = (f"{task.source}: already {exc.description}; skipped, use --recolor to colorize its lightness "
                      "anyway")
            self.record(PhotoOutcome(task, "colour", reason))
        except TinctError as exc:
            self.record(PhotoOutcome(task, "failed", str(exc)))
        except Exception as exc:  # noqa: BLE001 - one document must not stop an archive run
            self.record(PhotoOutcome(task, "failed", f"{task.source}: {type(exc).__name__}: {one_line(exc)}"))
        else:
            if kept:
                logger.warning("%s: %s", task.source, kept)
            self.record(PhotoOutcome(task, "done", pictures=coloured))

    def _finish_encode(self) -> None:
        task, encoding = self.encodes.popleft()
        try:
            encoding.result()
        except TinctError as exc:
            self.record(PhotoOutcome(task, "failed", str(exc)))
        except Exception as exc:  # noqa: BLE001 - e.g. an encoder limit (WebP is at most 16383 pixels a side)
            reason = f"{task.output}: cannot write: {type(exc).__name__}: {one_line(exc)}"
            self.record(PhotoOutcome(task, "failed", reason))
        else:
            self.record(PhotoOutcome(task, "done", pictures=1))


def colour_document(colorizer: Colorizer, source: Path, output: Path, model_label: str, recolor: bool,
                    max_pixels: int, progress: Callable[[], None] = lambda: None, hints: HintSpec | None = None
                    ) -> tuple[int, str | None]:
    """Colour the multi-page TIFF document ``source`` into ``output`` a page at a time (``images.read_pages``,
    ``images.write_document``), each page with its ``hints`` (checked against the document beforehand:
    ``HintSpec.check_document``): a long document never lies in memory whole. Its pages already in colour are kept
    as they are unless ``recolor``; ``progress()`` is called as each page is done (a service worker's liveness).
    Returns the pages coloured, and those kept, in words (None where none was); raises
    ``images.InColourThroughout`` where every page was in colour, and the copy is not made."""
    coloured = 0
    guidance: dict[int, str] = {}  # each hinted page's provenance, said in that page's description

    def pages() -> Iterator[tuple[np.ndarray | None, Photo]]:
        nonlocal coloured
        with closing(read_pages(source, max_pixels)) as decoded:
            for number, page in enumerate(decoded, 1):
                page_hints = hints.page(number) if hints is not None else None
                if page.kept_colour is not None and not recolor:
                    yield None, page
                elif page_hints:
                    coloured += 1
                    guidance[number] = hints_provenance(len(page_hints))
                    yield colorizer.colorize([page.L], hints=[page_hints.colour_hints()])[0], page
                else:
                    coloured += 1
                    yield colorizer.colorize([page.L])[0], page
                progress()

    kept = write_document(output, pages(), model_label, guidance)
    if not kept:
        return coloured, None
    count = coloured + len(kept)
    numbers = ", ".join(str(number) for number in kept)
    several = len(kept) > 1
    said = (f"page{'s' if several else ''} {numbers} of {count} already in colour, kept as "
            f"{'they are' if several else 'it is'}")
    if unused := [number for number in kept if hints is not None and hints.page(number)]:
        said += (f"; the hints for page{'s' if len(unused) > 1 else ''} {', '.join(map(str, unused))} are not used "
                 "(recolour the document to colour it from its lightness with them)")
    return coloured, said


def _read_with_hints(task: PhotoTask, max_pixels: int, limits: GuidanceLimits) -> tuple[Photo, HintSpec | None]:
    """Decode a photo and its hint file, the hints checked against the photo's displayed size (a document's, page
    by page, against its pages'): a bad hint file, or a document its copy's format would cut to one page, fails its
    photo before anything is colorized or written."""
    photo = read_photo(task.source, max_pixels)
    if reason := lost_pages(photo, task.output):
        raise UnsupportedMediaError(task.source, reason)
    if task.hints is None:
        return photo, None
    spec = load_hints_file(task.hints, limits.max_hints, limits.max_hint_file_bytes)
    if photo.page_count > 1:
        spec.check_document(photo.document_sizes, task.hints)
    else:
        spec.check_bounds(*photo.size, task.hints)
    return photo, spec
