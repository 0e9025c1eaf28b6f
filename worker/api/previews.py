"""Before/after previews of a finished job, derived on demand from its input and output and cached on disk.

A photo gives one pair (the source's lightness, the colorized result), each at most ``PREVIEW_SIDE`` pixels on its
long side (a multi-page document, its first ``DOCUMENT_PAGES`` pages side by side); a film gives a strip of
``FILM_FRAMES`` pairs at evenly spaced times (a film coloured into a run of frames, a pair for each of
``FILM_FRAMES`` evenly spaced frames); a collection gives a pair for each of its photos, ``COLLECTION_PREVIEWS`` at
a time. Deriving them here rather than in the workers leaves the workers' hot path and their outputs untouched (an
archive's output prefix holds exactly what it asked for), and a preview costs one read of the input and the output
the first time anyone looks, nothing after: files are cached under ``<cache_dir>/previews/<job>/`` keyed by the
output's ETag, so a job run again with new outputs gets new previews.

:class:`HintPreviews` is the hint editor's: one photo (one page of a multi-page document) colorized at a small size
with a restorer's colour hints, synchronously, so the restorer sees what the hints do before submitting the full job,
and the same page in gray, to place the hints on.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import shutil
import threading
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePosixPath

import av
import numpy as np
from PIL import Image, ImageOps

from models.color import cineon_display_table
from models.files import atomic_output
from worker.errors import BadInputError, PermanentError, one_line
from worker.hints import HintError, HintSpec
from worker.jobs import JobRecord, JobSpec, film_output_uri, output_folder
from worker.media import tiff
from worker.media.frame_sequences import DPX_LOG_TRANSFERS, DPX_TRANSFER_OFFSET, is_pattern
from worker.media.frame_sink import FrameTarget
from worker.media.images import (
    DEFAULT_MAX_PIXELS,
    FORMAT_NAMES,
    PHOTO_SUFFIXES,
    open_image,
    read_page,
    read_pages,
    shown_as_srgb,
)
from worker.media.openexr import EXR_HEADER_BYTES, read_exr_header
from worker.media.video_source import (
    LINEAR_FLOAT_FORMATS,
    as_bt709,
    decode_from,
    film_stream,
    float_light,
    index_frames,
    plate_conversion,
    shown_light,
    shown_video,
)
from worker.settings import Settings
from worker.storage import Storage, join_uri, parse_uri
from worker.work import Runtime, collection_outputs, frames_target, photo_output_uri

PREVIEW_SIDE = 1024
FRAME_SIDE = 480  # a film strip shows several frames side by side: smaller ones load faster
FILM_FRAMES = 6
COLLECTION_PREVIEWS = 24
DOCUMENT_PAGES = 6  # a multi-page document's pair shows its first pages side by side
PAGE_GAP = 8
JPEG_QUALITY = 85
LOG_TRANSFERS = {bytes([code]) for code in DPX_LOG_TRANSFERS}  # a DPX header's transfer byte, when it is log


@dataclass(frozen=True)
class PreviewItem:
    """One before/after pair: a photo (``time`` None) or a film frame at ``time`` seconds."""

    index: int
    input: str
    output: str
    time: float | None = None

    @property
    def label(self) -> str:
        name = PurePosixPath(parse_uri(self.input)[2]).name
        return name if self.time is None else f"{name} @ {self.time:.1f} s"


class Previews:
    def __init__(self, storage: Storage, cache_dir: Path, scratch_dir: Path) -> None:
        self.storage = storage
        self.cache_dir = cache_dir
        self.scratch_dir = scratch_dir
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def items(self, record: JobRecord, start: int = 0, count: int = COLLECTION_PREVIEWS) -> list[PreviewItem]:
        """The pairs a finished job offers (none before it has succeeded): a collection's ``count`` from its photo
        ``start`` (a collection of hundreds is looked through a page at a time), every other job's all at once."""
        if record.state != "succeeded":
            return []
        spec = record.spec
        frames = frames_target(spec) if spec.kind == "video" else None
        if frames is not None:
            uris = _shown_frames(record, frames)
            return [PreviewItem(i, uri, uri) for i, uri in enumerate(uris)]
        if spec.kind == "video":
            times = self._film_times(record)
            return [PreviewItem(i, spec.input, film_output_uri(spec), t) for i, t in enumerate(times)]
        if spec.kind == "image":
            return [PreviewItem(0, spec.input, photo_output_uri(spec, spec.input))]
        photos = itertools.islice(collection_outputs(self.storage, record), start, start + count)
        return [PreviewItem(index, source, output) for index, (source, output) in enumerate(photos, start)]

    def item(self, record: JobRecord, index: int) -> PreviewItem | None:
        """Pair ``index`` of the job's, or None where it has no such pair."""
        if record.spec.kind == "collection":
            found = self.items(record, index, 1)
        else:
            found = self.items(record)[index:index + 1]
        return found[0] if found else None

    def image(self, record: JobRecord, item: PreviewItem, side: str) -> Path:
        """The cached JPEG of one side (``before`` or ``after``) of ``item``, made first if needed."""
        folder = self._folder(record, item.output)
        path = folder / f"{item.index}-{side}.jpg"
        if path.exists():
            return path
        with self._lock(record.id):
            if not path.exists():  # another request may have made it while this one waited
                if record.spec.kind == "video" and item.time is None:  # one of a run of frames
                    self._frame_pair(item, folder)
                elif record.spec.kind == "video":
                    self._film_strip(record, folder)
                else:
                    self._photo_pair(item, folder)
        if not path.exists():
            raise BadInputError(item.output, "no preview could be made for this frame")
        return path

    # --------------------------------------------------------------------------------------------- helpers

    def _folder(self, record: JobRecord, output: str) -> Path:
        etag = self.storage.stat(output).etag
        version = hashlib.sha256(f"{output}\0{etag}".encode()).hexdigest()[:16]
        return self.cache_dir / "previews" / record.id / version

    def _lock(self, job_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(job_id, threading.Lock())

    def _local(self, uri: str, name: str) -> tuple[Path, bool]:
        """A local path for ``uri``: the file itself, or a scratch download (True: delete it afterwards). Every call
        downloads to a file of its own: requests for one job arrive together (the console asks for a film's list and
        its frames at once), and a shared name let one request delete the download another was reading."""
        scheme, _, key = parse_uri(uri)
        if scheme == "file":
            return Path(key), False
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        local = self.scratch_dir / f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}-{uuid.uuid4().hex[:8]}-{name}"
        self.storage.download(uri, local)
        return local, True

    def _photo_pair(self, item: PreviewItem, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        suffix_in = PurePosixPath(parse_uri(item.input)[2]).suffix
        suffix_out = PurePosixPath(parse_uri(item.output)[2]).suffix
        source, drop_source = self._local(item.input, f"in{suffix_in}")
        result, drop_result = self._local(item.output, f"out{suffix_out}")
        try:
            # The source through the pipeline's own reader: 16-bit scans, orientation and odd modes are handled
            # once, and "before" shows exactly the lightness the colorizer kept. A document shows its first pages
            # side by side, each beside its colour copy's page at the same place.
            with closing(read_pages(source, DEFAULT_MAX_PIXELS)) as decoded:
                pages = list(itertools.islice(decoded, DOCUMENT_PAGES))
            befores = [Image.fromarray(np.clip(page.L * 2.55 + 0.5, 0, 255).astype(np.uint8)) for page in pages]
            with open_image(result) as opened:
                afters = []
                for number in range(min(len(pages), getattr(opened, "n_frames", 1))):
                    tiff.seek(opened, number)
                    afters.append(shown_as_srgb(opened))
            _save(_side_by_side(befores[:len(afters)]), folder / f"{item.index}-before.jpg", PREVIEW_SIDE)
            _save(_side_by_side(afters), folder / f"{item.index}-after.jpg", PREVIEW_SIDE)
        except OSError as exc:  # Pillow's "cannot identify image file" and friends
            raise BadInputError(item.output, f"cannot read for a preview ({one_line(exc)})") from exc
        finally:
            if drop_source:
                source.unlink(missing_ok=True)
            if drop_result:
                result.unlink(missing_ok=True)

    def _frame_pair(self, item: PreviewItem, folder: Path) -> None:
        """One frame of a run coloured into frames, and its lightness (the source's, which the frame keeps) in gray;
        a log-encoded DPX frame (its header says so) as a display shows it, read through the log encoding."""
        folder.mkdir(parents=True, exist_ok=True)
        frame, drop = self._local(item.output, "frame" + PurePosixPath(parse_uri(item.output)[2]).suffix)
        try:
            with open(frame, "rb") as header:
                head = header.read(EXR_HEADER_BYTES)
            log = frame.suffix.lower() == ".dpx" and head[DPX_TRANSFER_OFFSET:DPX_TRANSFER_OFFSET + 1] in LOG_TRANSFERS
            exr = read_exr_header(head) if frame.suffix.lower() == ".exr" else None
            conversion = plate_conversion(exr.chromaticities if exr is not None else None)
            with av.open(str(frame)) as container:
                after = _shown(next(container.decode(video=0)), log, conversion)
            _save(ImageOps.grayscale(after).convert("RGB"), folder / f"{item.index}-before.jpg", PREVIEW_SIDE)
            _save(after, folder / f"{item.index}-after.jpg", PREVIEW_SIDE)
        except (av.FFmpegError, OSError, StopIteration) as exc:
            raise BadInputError(item.output, f"cannot read the frame for a preview ({one_line(exc)})") from exc
        finally:
            if drop:
                frame.unlink(missing_ok=True)

    def _film_times(self, record: JobRecord, local_input: Path | None = None) -> list[float]:
        """Evenly spaced times inside the film (never its very first or last frame, often black). The film is read
        once per version of the input: the times are kept beside the job's previews, under the input's version,
        because every list of a film job's previews needs them and reading the duration meant downloading the
        whole film. ``local_input``: a copy of the input already at hand (the strip downloads one anyway)."""
        source_uri = _film_source(record.spec)
        version = self.storage.stat(source_uri).version_key()
        cached = self.cache_dir / "previews" / record.id / f"times-{version}.json"
        try:
            return [float(t) for t in json.loads(cached.read_text())]
        except (OSError, ValueError, TypeError):  # not made yet (or a torn file from a crash): read the film
            pass
        source, drop = (local_input, False) if local_input is not None else self._local(
            source_uri, "probe" + PurePosixPath(parse_uri(source_uri)[2]).suffix)
        try:
            duration = _duration(source)
        finally:
            if drop:
                source.unlink(missing_ok=True)
        times = [round(duration * (i + 0.5) / FILM_FRAMES, 3) for i in range(FILM_FRAMES)]
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(cached) as sink:
            sink.write(json.dumps(times).encode())
        return times

    def _film_strip(self, record: JobRecord, folder: Path) -> None:
        suffix_out = PurePosixPath(parse_uri(film_output_uri(record.spec))[2]).suffix
        result, drop_result = self._local(film_output_uri(record.spec), f"out{suffix_out}")
        if _film_source(record.spec) == record.spec.input:
            suffix_in = PurePosixPath(parse_uri(record.spec.input)[2]).suffix
            source, drop_source = self._local(record.spec.input, f"in{suffix_in}")
        else:
            source, drop_source = result, False
        staging = folder.with_name(folder.name + ".partial")
        try:
            times = self._film_times(record, source)
            staging.mkdir(parents=True, exist_ok=True)
            log = bool(record.metrics.get("log_encoded"))  # a log scan's copy, log-encoded too: shown as displayed
            for side, path in (("before", source), ("after", result)):
                for index, frame in enumerate(_frames_at(path, times, log)):
                    image = frame if side == "after" else ImageOps.grayscale(frame).convert("RGB")
                    _save(image, staging / f"{index}-{side}.jpg", FRAME_SIDE)
            if folder.exists():
                shutil.rmtree(folder)
            staging.rename(folder)  # the whole strip appears at once, so both sides always match
        except BadInputError as exc:  # raised about the scratch copy: named here by what the user gave
            raise BadInputError(record.spec.input, f"cannot read frames for a preview ({exc.reason})") from exc
        except (av.FFmpegError, OSError) as exc:
            raise BadInputError(record.spec.input, f"cannot read frames for a preview ({one_line(exc)})") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if drop_source:
                source.unlink(missing_ok=True)
            if drop_result:
                result.unlink(missing_ok=True)


def _shown_frames(record: JobRecord, frames: FrameTarget) -> list[str]:
    """The URIs of ``FILM_FRAMES`` evenly spaced frames of a film job's output run (none before it has finished)."""
    count, first = int(record.metrics.get("frames", 0)), int(record.metrics.get("first_frame", 0))
    folder = output_folder(record.spec)
    positions = sorted({int(count * (i + 0.5) / FILM_FRAMES) for i in range(FILM_FRAMES)}) if count else []
    return [join_uri(folder, frames.name(first + position)) for position in positions]


def _shown(frame: av.VideoFrame, log: bool, conversion: np.ndarray | None = None) -> Image.Image:
    """A decoded frame as a display shows it: as it is, a log-encoded one read through its log encoding, an OpenEXR
    one's linear light through the sRGB curve (in BT.709 primaries, by ``conversion`` where it names others), HDR
    and BT.2020 video's by ``shown_video``."""
    if frame.format.name in LINEAR_FLOAT_FORMATS:
        shown = shown_light(as_bt709(float_light(frame), conversion))
        return Image.fromarray(np.rint(shown * 255).astype(np.uint8))
    if (video := shown_video(frame)) is not None:  # HDR or BT.2020 video, as an SDR display shows its light
        return Image.fromarray(video)
    if not log:
        return frame.to_image()
    return Image.fromarray(cineon_display_table()[frame.to_ndarray(format="rgb48le")])


def _film_source(spec: JobSpec) -> str:
    """The film a film job's "before" frames are read from: its input, or for a run of frames (not one file to read
    at a time) the colour copy, whose lightness is the run's own, shown gray."""
    return film_output_uri(spec) if is_pattern(parse_uri(spec.input)[2]) else spec.input


def _side_by_side(pictures: list[Image.Image]) -> Image.Image:
    """``pictures`` in a row at one height (the tallest's, up to ``PREVIEW_SIDE``), a white gap between them; one
    picture as it is."""
    if len(pictures) == 1:
        return pictures[0]
    height = min(PREVIEW_SIDE, max(picture.height for picture in pictures))
    scaled = [picture.convert("RGB").resize((max(1, round(picture.width * height / picture.height)), height),
                                            Image.Resampling.LANCZOS) for picture in pictures]
    row = Image.new("RGB", (sum(p.width for p in scaled) + PAGE_GAP * (len(scaled) - 1), height), "white")
    left = 0
    for picture in scaled:
        row.paste(picture, (left, 0))
        left += picture.width + PAGE_GAP
    return row


def _save(image: Image.Image, path: Path, side: int) -> None:
    image = image.copy()
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    with atomic_output(path) as sink:
        sink.write(buffer.getvalue())


def _duration(path: Path) -> float:
    try:
        with av.open(str(path)) as container:
            stream = film_stream(container)
            if stream is None:
                raise PermanentError(f"{path.name}: has no video stream for a preview")
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / av.time_base
            frames = stream.frames or 0
            rate = float(stream.average_rate or 24)
            return frames / rate if frames else 1.0
    except av.FFmpegError as exc:
        raise PermanentError(f"{path.name}: cannot read the film for a preview ({one_line(exc)})") from exc


def _frames_at(path: Path, times: list[float], log: bool = False) -> list[Image.Image]:
    """The frame nearest each time, counted from the film's first frame (an MPEG transport stream's clock may
    start hours in, and Tinct's copy of it at zero), found through the film's frame index. Nearest, not the
    first at or after, so that the two sides agree though their containers round times differently."""
    index = index_frames(path)
    frames: list[Image.Image] = []
    with av.open(str(path)) as container:
        stream = film_stream(container)
        time_base = stream.time_base or Fraction(1, 1000)
        pts, last = index.frame_pts, len(index.frame_pts) - 1
        for seconds in times:
            wanted = int(pts[0]) + round(Fraction(seconds).limit_denominator(1000) / time_base)
            after = min(last, int(np.searchsorted(pts, wanted)))
            before = max(0, after - 1)
            target = int(pts[before] if wanted - pts[before] < pts[after] - wanted else pts[after])
            frame = next(decode_from(container, stream, index, target), None)
            if frame is not None:
                frames.append(_shown(frame, log))
    return frames


# ------------------------------------------------------------------------------------------------ hint previews

HINT_PREVIEW_SIDE = 512  # long side of a hint preview: a second or less on a CPU, enough to judge a colour
_CACHED_PAGES = 8


@dataclass(frozen=True)
class HintPreview:
    jpeg: bytes
    width: int  # the page's full size as displayed: the hint editor's coordinates
    height: int
    pages: int  # 1, or a multi-page TIFF document's pages, each previewed (and hinted) on its own


@dataclass(frozen=True)
class _ShownPage:
    """A photo's page (a picture's only one) as the hint editor shows it: its lightness at preview size."""

    lightness: np.ndarray  # float32 (h, w) in [0, 100], at most HINT_PREVIEW_SIDE on its long side
    width: int  # its full size as displayed
    height: int
    pages: int


class TokenBucket:
    """Per-caller rate limit: ``rate`` requests a second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._levels: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str) -> float:
        """0 when ``who`` may go now (and a token is spent), else the seconds until a token is free."""
        now = time.monotonic()
        with self._lock:
            level, last = self._levels.get(who, (float(self.burst), now))
            level = min(float(self.burst), level + (now - last) * self.rate)
            if level >= 1:
                self._levels[who] = (level - 1, now)
                return 0.0
            self._levels[who] = (level, now)
            return (1 - level) / self.rate if self.rate > 0 else 60.0


class HintPreviews:
    """``POST /api/v1/preview``: a photo colorized at ``HINT_PREVIEW_SIDE`` with a restorer's hints, synchronously, and
    ``GET /api/v1/preview/lightness``: the same photo in gray. A multi-page document is shown a page at a time.

    The model is loaded the way a worker loads it (:meth:`worker.work.Runtime.colorizer`: the same names, store and
    engine settings), once per process; the downscaled lightness is kept for the few pages being edited, so moving a
    hint costs one network pass and one hint solve, not a download and a decode. One preview runs at a
    time: the API process must keep answering everything else while it computes.
    """

    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.settings = settings
        self.storage = storage
        self.runtime = Runtime(settings)
        self._pages: dict[tuple[str, str, int], _ShownPage] = {}
        self._pages_guard = threading.Lock()  # requests come on several threads: the gray page and its colour at once
        self._lock = threading.Lock()

    def render(self, uri: str, hints: HintSpec, model: str, render_size: int | None, page: int = 1) -> HintPreview:
        """Page ``page`` of the photo at ``uri`` (a picture's only page is 1) colorized with ``hints``, that page's."""
        shown = self._page(uri, page)
        if hints.pages:  # a document's hints are edited, and previewed, a page at a time
            raise HintError("hints", "pages", "a preview shows one page: give the points and regions of the page it "
                                              "shows, and that page's number as page")
        hints.check_bounds(shown.width, shown.height, "hints")
        scale = shown.lightness.shape[1] / shown.width
        scaled = HintSpec(
            points=tuple((x * scale, y * scale, colour, max(1.0, radius * scale))
                         for x, y, colour, radius in hints.points),
            regions=tuple((tuple((x * scale, y * scale) for x, y in polygon), colour)
                          for polygon, colour in hints.regions),
        )
        with self._lock:
            loaded = self.runtime.colorizer(model, render_size)
            rgb = loaded.colorizer.colorize([shown.lightness],
                                            hints=[scaled.colour_hints() if len(scaled) else None])[0]
        return _preview(Image.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)), shown)

    def lightness(self, uri: str, page: int = 1) -> HintPreview:
        """Page ``page`` as the colorizer sees it, its lightness in gray, at the preview's size: the picture a
        restorer places points on, beside :meth:`render`'s colour."""
        shown = self._page(uri, page)
        return _preview(Image.fromarray(np.clip(shown.lightness * 2.55 + 0.5, 0, 255).astype(np.uint8)), shown)

    def _page(self, uri: str, page: int) -> _ShownPage:
        """The photo's page at preview size; cached by the object's identity and the page."""
        info = self.storage.stat(uri)
        key = (info.uri, info.etag, page)
        with self._pages_guard:
            cached = self._pages.get(key)
        if cached is not None:
            return cached
        if info.size > self.settings.max_input_bytes:
            raise BadInputError(uri, f"{info.size} bytes, over the limit of {self.settings.max_input_bytes}")
        suffix = PurePosixPath(parse_uri(uri)[2]).suffix.lower()
        if suffix not in PHOTO_SUFFIXES:
            raise BadInputError(uri, f"hint previews are for photos ({FORMAT_NAMES})")
        scheme, _, key_path = parse_uri(uri)
        local = Path(key_path)
        if scheme != "file":
            self.scratch().mkdir(parents=True, exist_ok=True)
            local = self.scratch() / f"{info.version_key()}-{uuid.uuid4().hex[:8]}{suffix}"
            self.storage.download(uri, local)
        try:
            photo = read_page(local, page, DEFAULT_MAX_PIXELS)
        except BadInputError as exc:  # said of the object asked for, not of the scratch copy
            raise type(exc)(uri, exc.reason) from exc
        finally:
            if scheme != "file":
                local.unlink(missing_ok=True)
        full = photo.L
        height, width = full.shape
        scale = min(1.0, HINT_PREVIEW_SIDE / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = np.asarray(Image.fromarray(full).resize(size, Image.Resampling.BOX), dtype=np.float32)
        shown = _ShownPage(small, width, height, photo.page_count)
        with self._pages_guard:
            if len(self._pages) >= _CACHED_PAGES:
                self._pages.pop(next(iter(self._pages)))
            self._pages[key] = shown
        return shown

    def scratch(self) -> Path:
        return self.settings.work_dir / "api-previews"


def _preview(image: Image.Image, shown: _ShownPage) -> HintPreview:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return HintPreview(buffer.getvalue(), shown.width, shown.height, shown.pages)
