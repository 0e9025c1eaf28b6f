"""Reference frames for films: parsed, validated and resolved here; carried through their shots by
``worker.smoothing.carry_reference`` (the maths in ``models.references``).

    tinct colorize film.mp4 -o out.mkv --reference 12.5=frame.png --reference frame:300=still.jpg

A reference names a frame, by time in seconds from the film's first frame (the frame shown at that moment) or as
``frame:N`` (display order, from 0), and a colour picture of that frame: an artist's colouring or a colour still,
resampled to the frame if its size differs. Only its chroma is used; the film's own lightness is kept.

In the service a job carries them as ``options.references``, ``[{"time": "12.5", "image": "s3://...", "sha256":
"..."}]``: the form is checked with the job spec (:func:`parse_job_references`), each picture fetched, checked and
hashed when the job is submitted (:func:`seal_references`: the hash enters the job id, so a corrected picture is a
new job), the times placed in the film by the job's planner and every segment's worker (:func:`load_job_references`).
``tinct bulk`` finds them beside a film in its sidecar folder, ``<film file name>.references/``, one picture per
reference named by its time: ``12.5.png`` (seconds) or ``frame_300.png`` (``frame:N``; also .jpg, .jpeg, .webp,
.tif, .tiff, and JPEG 2000: .jp2, .jpf, .j2k and the rest).

Every problem is a :class:`ReferenceError` whose one line names the film or image and the field: a time outside
the film, a frame that does not exist, a picture that is missing, too large, does not decode or is gray, two
references for one frame, more references than ``TINCT_MAX_REFERENCES``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.color import rgb_to_lab_np
from models.colorizer import Colorizer
from models.references import MIN_CONFIDENCE, ReferenceTrack, blend, combine, fade_per_frame, reference_cells
from worker.errors import BadInputError, FieldError, PermanentError
from worker.media.images import COLOUR_THRESHOLD, colour_score, open_image, shown_as_srgb
from worker.media.video_source import FilmInfo, FrameLayout, decode_frames
from worker.settings import GuidanceLimits
from worker.smoothing import FlowFrame, SmoothingOptions, carry_reference
from worker.storage import Storage, normalize_uri, parse_uri

# How many references a film may have (each decodes the frames it can reach, so this bounds a job's pre-pass) and
# how large a picture's file may be are settings, TINCT_MAX_REFERENCES and TINCT_MAX_REFERENCE_FILE_BYTES
# (worker.settings.GuidanceLimits); these are their defaults.
_LIMITS = GuidanceLimits()
MAX_REFERENCE_PIXELS = 8192 * 4352
REFERENCES_SUFFIX = ".references"  # a film's sidecar folder: <film file name>.references/
# An archive's colour still too: TIFF, or JPEG 2000 in any of its files.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".jp2", ".jpf", ".jpx", ".j2k", ".j2c", ".jpc")
_FRAME = re.compile(r"frame:(\d+)")
_SIDECAR_FRAME = re.compile(r"frame_(\d+)")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ReferenceError(FieldError):
    """A reference that cannot be used."""


@dataclass(frozen=True)
class FilmReference:
    """A reference as given: ``when`` (``"12.5"`` seconds or ``"frame:300"``) and the picture's path or URI; in a job,
    also the sha256 of the picture's bytes (recorded when the job was submitted)."""

    when: str
    image: str
    sha256: str | None = None

    def as_dict(self) -> dict[str, str]:
        data = {"time": self.when, "image": self.image}
        return data if self.sha256 is None else {**data, "sha256": self.sha256}


def parse_reference_arg(text: str) -> FilmReference:
    """``WHEN=IMAGE`` as the CLI takes it; ValueError naming what is wrong."""
    when, sep, image = text.partition("=")
    if not sep or not when.strip() or not image:
        raise ValueError(f"--reference takes TIME=IMAGE or frame:N=IMAGE (e.g. 12.5=frame.png), got {text!r}")
    return FilmReference(check_when(when.strip(), "--reference"), image)


def check_when(when: str, where: str) -> str:
    """A reference time's form without the film: seconds (a finite number >= 0) or ``frame:N``."""
    if _FRAME.fullmatch(when):
        return when
    try:
        seconds = float(when)
    except ValueError:
        raise ReferenceError(where, "time", f"not a time in seconds or frame:N: {when!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ReferenceError(where, "time", f"must be a number of seconds from 0, got {when!r}")
    return when


def frame_index(when: str, film: FilmInfo, field: str = "time") -> int:
    """The frame a reference names in ``film``; ReferenceError naming the film for one outside it."""
    match = _FRAME.fullmatch(when)
    if match:
        index = int(match.group(1))
        if index >= film.frames:
            raise ReferenceError(film.path, field, f"frame {index} is outside the film (frames 0 to {film.frames - 1})")
        return index
    seconds = float(when)
    base = film.video.time_base
    starts = (film.frame_pts - film.frame_pts[0]).astype(np.float64) * float(base)
    if seconds > film.duration:
        raise ReferenceError(film.path, field, f"{seconds:g} s is outside the film ({film.duration:.3f} s long)")
    # The frame on screen at that moment: the last one that starts at or before it.
    return int(np.searchsorted(starts, seconds + 1e-9, side="right") - 1)


def load_reference_image(source: str | os.PathLike | IO[bytes], where: str | None = None, field: str = "image",
                         max_bytes: int = _LIMITS.max_reference_file_bytes) -> np.ndarray:
    """A reference picture's chroma: ``(2, H, W)`` float32 ab in display orientation, from a path (at most
    ``max_bytes``) or an open file. ReferenceError naming ``where`` and ``field`` for a file that is missing or too
    large, does not decode or has no colour."""
    where = where or os.fspath(source)  # type: ignore[arg-type]
    try:
        if isinstance(source, str | os.PathLike) and (size := os.stat(source).st_size) > max_bytes:
            raise ReferenceError(where, field, _oversized(size, max_bytes))
        with open_image(source) as image:
            if image.width * image.height > MAX_REFERENCE_PIXELS:
                raise ReferenceError(where, field, f"{image.width}x{image.height} is larger than any film frame")
            pixels = np.asarray(shown_as_srgb(image))  # a phone photo in Display P3 shows its own colours
    except FileNotFoundError:
        raise ReferenceError(where, field, "no such file") from None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise ReferenceError(where, field, f"does not decode as a picture ({type(exc).__name__}: {exc})") from None
    score = colour_score(pixels)
    rgb = pixels.astype(np.float64) / 255.0
    if score <= COLOUR_THRESHOLD:
        raise ReferenceError(where, field, f"is gray (colour score {score:.1f}): a reference must show the colours")
    return np.ascontiguousarray(rgb_to_lab_np(rgb)[..., 1:].transpose(2, 0, 1), dtype=np.float32)


def _oversized(size: int, max_bytes: int) -> str:
    return f"{size} bytes, over the limit of {max_bytes} for a reference picture (TINCT_MAX_REFERENCE_FILE_BYTES)"


@dataclass(frozen=True)
class ResolvedReference:
    """A reference placed in its film: the frame and the picture's ab."""

    frame: int
    ab: np.ndarray


def reference_frames(references: Sequence[FilmReference], film: FilmInfo,
                     max_references: int = _LIMITS.max_references) -> list[int]:
    """The frame each reference names in ``film``; ReferenceError for one outside it, two for one frame, or more
    than ``max_references``."""
    if len(references) > max_references:
        raise ReferenceError(film.path, "references", _too_many(len(references), max_references))
    placed: dict[int, FilmReference] = {}
    frames = []
    for i, reference in enumerate(references):
        frame = frame_index(reference.when, film, f"references[{i}].time")
        if frame in placed:
            raise ReferenceError(film.path, f"references[{i}].time", f"{reference.when} is frame {frame}, which "
                                 f"{placed[frame].when}={placed[frame].image} already colours")
        placed[frame] = reference
        frames.append(frame)
    return frames


def _too_many(count: int, max_references: int) -> str:
    return f"{count} references, over the limit of {max_references} (TINCT_MAX_REFERENCES)"


def resolve_references(
    references: Sequence[FilmReference],
    film: FilmInfo,
    load: Callable[[FilmReference], np.ndarray],
    max_references: int = _LIMITS.max_references,
) -> list[ResolvedReference]:
    """Place every reference in ``film`` (:func:`reference_frames`), then ``load`` each picture's ab."""
    frames = reference_frames(references, film, max_references)
    resolved = [ResolvedReference(frame, load(reference)) for frame, reference in zip(frames, references, strict=True)]
    return sorted(resolved, key=lambda r: r.frame)


# --- in jobs -------------------------------------------------------------------------------------------------


def canonical_when(value: Any, where: str | os.PathLike, field: str) -> str:
    """A reference's time as a job or a sidecar's name gives it (a number of seconds, or text: seconds or
    ``frame:N``) in one spelling, so that one time is one job id: seconds as Python writes the float (``12`` ->
    ``"12.0"``), frames without leading zeros. ReferenceError naming ``where`` and ``field``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ReferenceError(where, field, f"expected seconds or \"frame:N\", got {json.dumps(value)}")
    text = value.strip() if isinstance(value, str) else str(value)
    try:
        check_when(text, where)
    except ReferenceError as exc:
        raise ReferenceError(where, field, exc.detail) from None
    match = _FRAME.fullmatch(text)
    return f"frame:{int(match.group(1))}" if match else repr(float(text))


def parse_job_references(value: Any, where: str, max_references: int = _LIMITS.max_references
                         ) -> tuple[FilmReference, ...]:
    """A job's ``options.references`` checked without the film or the pictures: a list of at most
    ``max_references`` objects ``{"time", "image"[, "sha256"]}``, no time given twice. ReferenceError whose field is
    ``references`` or ``references[i].<field>``."""
    if not isinstance(value, list):
        raise ReferenceError(where, "references", f"expected a list of {{\"time\", \"image\"}} objects, got "
                             f"{json.dumps(value)[:40]}")
    if len(value) > max_references:
        raise ReferenceError(where, "references", _too_many(len(value), max_references))
    given: dict[str, int] = {}
    references = []
    for i, item in enumerate(value):
        field = f"references[{i}]"
        if not isinstance(item, dict):
            raise ReferenceError(where, field, f"expected an object with time and image, got {json.dumps(item)[:40]}")
        unknown = sorted(set(item) - {"time", "image", "sha256"})
        if unknown:
            raise ReferenceError(where, f"{field}.{unknown[0]}", "unknown field (expected image, sha256, time)")
        for name in ("time", "image"):
            if name not in item:
                raise ReferenceError(where, f"{field}.{name}", "required")
        when = canonical_when(item["time"], where, f"{field}.time")
        if when in given:
            raise ReferenceError(where, f"{field}.time", f"{when} is given twice (also references[{given[when]}])")
        given[when] = i
        image = item["image"]
        if not isinstance(image, str) or not image.strip():
            raise ReferenceError(where, f"{field}.image", "expected a picture's path or s3:// URI")
        try:
            parse_uri(image)
        except ValueError as exc:
            raise ReferenceError(where, f"{field}.image", str(exc)) from None
        digest = item.get("sha256")
        if digest is not None and (not isinstance(digest, str) or not _SHA256.fullmatch(digest)):
            raise ReferenceError(where, f"{field}.sha256", "expected 64 lowercase hex digits (the picture's sha256)")
        references.append(FilmReference(when, image, digest))
    return tuple(references)


def fetch_reference(storage: Storage, uri: str, max_bytes: int, field: str = "image") -> bytes:
    """A reference picture's bytes from a folder or an object store: ReferenceError naming the picture and ``field``
    when it is missing, unreadable or over ``max_bytes``; a store's hiccup (TransientError) is left to the caller."""
    try:
        size = storage.stat(uri).size
        if size > max_bytes:
            raise ReferenceError(uri, field, _oversized(size, max_bytes))
        return storage.get_bytes(uri, max_bytes=max_bytes)
    except ReferenceError:
        raise
    except PermanentError as exc:
        raise ReferenceError(uri, field, exc.reason if isinstance(exc, BadInputError) else str(exc)) from None


def seal_references(references: Sequence[FilmReference], storage: Storage, limits: GuidanceLimits,
                    decode: bool = True) -> tuple[FilmReference, ...]:
    """The references as a submitted job carries them: each picture fetched (at most the limit's bytes) and, with
    ``decode``, found to decode and show colour; the sha256 of its bytes recorded (one given already must match), so
    that the job id changes with the picture and not only with its name; a local path made absolute, as workers
    must find it. ReferenceError naming the picture and ``references[i].image`` (or ``.sha256``)."""
    if len(references) > limits.max_references:
        raise ReferenceError("options", "references", _too_many(len(references), limits.max_references))
    sealed = []
    for i, reference in enumerate(references):
        field = f"references[{i}].image"
        image = normalize_uri(reference.image)
        data = fetch_reference(storage, image, limits.max_reference_file_bytes, field)
        if decode:
            load_reference_image(io.BytesIO(data), image, field)
        digest = hashlib.sha256(data).hexdigest()
        if reference.sha256 not in (None, digest):
            raise ReferenceError(image, f"references[{i}].sha256", f"the picture's bytes have sha256 {digest}")
        sealed.append(FilmReference(reference.when, image, digest))
    return tuple(sealed)


def job_references(raw: list | None) -> tuple[FilmReference, ...]:
    """A stored job's ``options.references`` (validated and counted when it was submitted)."""
    return parse_job_references(raw or [], "options.references", GuidanceLimits.unlimited().max_references)


def place_job_references(references: Sequence[FilmReference], film: FilmInfo, uri: str) -> list[int]:
    """The frames a job's references name in its film: ReferenceError naming the film's URI and
    ``options.references[i].time`` for one outside it or two on one frame (the planner's check, before any work)."""
    try:
        return reference_frames(references, film, GuidanceLimits.unlimited().max_references)
    except ReferenceError as exc:
        raise ReferenceError(uri, f"options.{exc.field}", exc.detail) from None


def load_job_references(references: Sequence[FilmReference], film: FilmInfo, uri: str,
                        fetch: Callable[[str], bytes]) -> list[ResolvedReference]:
    """A job's references placed in its film with their pictures' ab, every one of them (a segment is coloured by
    references in other segments too). ``fetch`` reads a picture's bytes, which must still have the sha256 recorded
    when the job was submitted: the job id promised those colours. ReferenceError naming the film's URI and
    ``options.references[i].<field>``."""
    frames = place_job_references(references, film, uri)
    resolved = []
    for i, (frame, reference) in enumerate(zip(frames, references, strict=True)):
        try:
            data = fetch(reference.image)
            digest = hashlib.sha256(data).hexdigest()
            if reference.sha256 not in (None, digest):
                raise ReferenceError(reference.image, "image", f"changed since the job was submitted (sha256 "
                                     f"{digest[:12]}..., the job's is {reference.sha256[:12]}...)")
            ab = load_reference_image(io.BytesIO(data), reference.image)
        except ReferenceError as exc:
            raise ReferenceError(uri, f"options.references[{i}].image", f"{exc.path}: {exc.detail}") from None
        resolved.append(ResolvedReference(frame, ab))
    return sorted(resolved, key=lambda r: r.frame)


def references_provenance(count: int) -> dict[str, int]:
    """What a film's provenance tag adds for ``count`` references: how many coloured it, not their paths."""
    return {"references": count} if count else {}


def references_guidance(count: int) -> str:
    """What the provenance sentence adds for ``count`` references ("" for none), as ``hints_provenance`` does for a
    photo's hints."""
    return f"{count} reference frame{'' if count == 1 else 's'}" if count else ""


def sidecar_references(pictures: Sequence[str], max_references: int = _LIMITS.max_references
                       ) -> tuple[FilmReference, ...]:
    """The references a film's sidecar folder gives, from its pictures' URIs (:func:`sidecar_reference`); the sha256s
    are left to :func:`seal_references`. ReferenceError naming the folder or the picture."""
    if len(pictures) > max_references:
        raise ReferenceError(pictures[0].rsplit("/", 1)[0] + "/", "references",
                             _too_many(len(pictures), max_references))
    given: dict[str, str] = {}
    for uri in pictures:
        reference = sidecar_reference(uri)
        if reference.when in given:
            raise ReferenceError(uri, "time", f"{reference.when} again ({given[reference.when]} gives that time)")
        given[reference.when] = uri
    return tuple(FilmReference(when, uri) for when, uri in given.items())


def folder_references(film: str | os.PathLike, max_references: int = _LIMITS.max_references
                      ) -> tuple[FilmReference, ...]:
    """The references in a local film's sidecar folder, ``<film file name>.references/`` beside it (the layout
    ``tinct bulk`` reads in an object store), or () when it has none. ReferenceError naming the folder or picture."""
    folder = Path(film).with_name(Path(film).name + REFERENCES_SUFFIX)
    if not folder.is_dir():
        return ()
    pictures = sorted(str(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return sidecar_references(pictures, max_references)


def sidecar_reference(uri: str) -> FilmReference:
    """A picture in a film's sidecar folder (``<film>.references/``) -> its reference: ``12.5.png`` is at 12.5 s,
    ``frame_300.png`` is frame 300 (``frame:N`` is no file name); ReferenceError naming the file otherwise."""
    name = uri.rsplit("/", 1)[-1]
    stem, dot, suffix = name.rpartition(".")
    if not dot or f".{suffix.lower()}" not in PICTURE_SUFFIXES:
        raise ReferenceError(uri, "image", "not a reference picture: name it <seconds>.png or frame_<N>.png "
                             f"(also {', '.join(PICTURE_SUFFIXES[1:])})")
    match = _SIDECAR_FRAME.fullmatch(stem)
    try:
        return FilmReference(canonical_when(f"frame:{match.group(1)}" if match else stem, uri, "time"), uri)
    except ReferenceError:
        raise ReferenceError(uri, "time", f"the name {name!r} is neither <seconds>{dot}{suffix} nor "
                             f"frame_<N>{dot}{suffix}") from None


class ReferenceField:
    """The references' colour and hold on every frame of ``first .. stop - 1`` they reach, computed up front.

    Each reference that can reach the range is followed through the frames around it (decoded again for this,
    render L only, no network), so a segment gets from a reference in another segment exactly what a whole-film
    pass gives it. References whose reach overlaps share that decode: each frame is decoded and rendered once, however
    many references reach it. ``lay(index, ab_grid)`` then blends them into a frame's grid ab after the temporal
    smoothing.
    """

    def __init__(self, film: FilmInfo, layout: FrameLayout, colorizer: Colorizer, smoothing: SmoothingOptions,
                 references: Sequence[ResolvedReference], first: int, stop: int) -> None:
        self.tracks: dict[int, list[ReferenceTrack]] = {}
        fade = fade_per_frame(film.fps)
        reach = math.ceil(math.log(MIN_CONFIDENCE) / math.log(fade))
        windows = [(reference, max(0, reference.frame - reach), min(film.frames, reference.frame + reach + 1))
                   for reference in references]
        windows = [w for w in windows if w[2] > first and w[1] < stop]
        for start, group_stop, group in _overlapping(windows):
            frames = _FlowFrames(film, layout, colorizer, start, group_stop)
            try:
                for reference, window_start, window_stop in group:
                    cells = reference_cells(reference.ab, *frames.geometry(reference.frame - start),
                                            colorizer.output_stride)
                    # Exactly the reference's own window, wherever the group begins: what it lays on is the same.
                    carried = carry_reference(frames.window(window_start - start, window_stop - start),
                                              reference.frame - window_start, cells, smoothing,
                                              colorizer.output_stride, fade)
                    for position, track in carried.items():
                        index = window_start + position
                        if first <= index < stop:
                            self.tracks.setdefault(index, []).append(track)
            finally:
                frames.close()

    def lay(self, index: int, ab_grid: np.ndarray) -> np.ndarray:
        """Frame ``index``'s grid ab ``(2, h, w)`` with the references that reach it laid on."""
        tracks = self.tracks.get(index)
        if not tracks:
            return ab_grid
        return blend(ab_grid, *combine(tracks))

    @property
    def frames(self) -> int:
        return len(self.tracks)


class _FlowFrames:
    """Frames ``start .. stop - 1`` of a film as ``FlowFrame``s, decoded (render L only) once and only as far as they
    are asked for: a reference whose shot ends early does not decode the rest of its reach."""

    def __init__(self, film: FilmInfo, layout: FrameLayout, colorizer: Colorizer, start: int, stop: int) -> None:
        self._decoder = _frames(film, layout, start, stop, colorizer.render_size)
        self._colorizer = colorizer
        self._frames: list[FlowFrame] = []
        self._geometry: tuple[tuple[int, int], tuple[int, int]] | None = None
        self.length = stop - start

    def get(self, position: int) -> FlowFrame:
        while len(self._frames) <= position:
            render = self._colorizer.render(next(self._decoder).network_L)  # the renders the pipeline infers on
            self._geometry = self._geometry or ((render.render_height, render.render_width), render.padded.shape)
            self._frames.append(FlowFrame.of(render.padded))
        return self._frames[position]

    def geometry(self, position: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The render's size and its padded size (as frame ``position``, which is decoded, has them)."""
        self.get(position)
        assert self._geometry is not None
        return self._geometry

    def window(self, start: int, stop: int) -> _FlowWindow:
        return _FlowWindow(self, start, stop)

    def close(self) -> None:
        self._decoder.close()


@dataclass(frozen=True)
class _FlowWindow(Sequence):
    """Positions ``start .. stop - 1`` of a ``_FlowFrames``, indexed from 0: what ``carry_reference`` reads."""

    frames: _FlowFrames
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, position: int) -> FlowFrame:  # type: ignore[override]  # no slices: read in order
        if not 0 <= position < len(self):
            raise IndexError(position)
        return self.frames.get(self.start + position)


def _overlapping(windows: list[tuple[ResolvedReference, int, int]]) -> Iterator[tuple[int, int, list]]:
    """Reference windows ``(reference, start, stop)`` gathered into runs whose frames overlap: ``(start, stop,
    windows)``, the run's first and past-last frame."""
    group: list[tuple[ResolvedReference, int, int]] = []
    group_stop = 0
    for window in sorted(windows, key=lambda w: w[1]):
        if group and window[1] >= group_stop:
            yield group[0][1], group_stop, group
            group = []
        group_stop = max(group_stop, window[2]) if group else window[2]
        group.append(window)
    if group:
        yield group[0][1], group_stop, group


def _frames(film: FilmInfo, layout: FrameLayout, start: int, stop: int, render_size: int) -> Iterator:
    frames = decode_frames(film, layout, start, stop, render_size=render_size)
    try:
        yield from frames
    finally:
        frames.close()

