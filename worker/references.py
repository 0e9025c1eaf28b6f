"""Reference frames for films: parsed, validated and resolved here; carried through their shots by
``worker.smoothing.carry_reference`` (the maths in ``models.references``).

    tinct colorize film.mp4 -o out.mkv --reference 12.5=frame.png --reference frame:300=still.jpg

A reference names a frame, by time in seconds from the film's first frame (the frame shown at that moment) or as
``frame:N`` (display order, from 0), and a colour picture of that frame: an artist's colouring or a colour still,
resampled to the frame if its size differs. Only its chroma is used; the film's own lightness is kept.

Every problem is a :class:`ReferenceError` whose one line names the film or image and the field: a time outside
the film, a frame that does not exist, a picture that does not decode or is gray, two references for one frame.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.color import rgb_to_lab_np
from models.colorizer import Colorizer
from models.references import MIN_CONFIDENCE, ReferenceTrack, blend, combine, fade_per_frame, reference_cells
from worker.errors import BadInputError
from worker.images import COLOUR_THRESHOLD, colour_score
from worker.smoothing import SmoothingOptions, carry_reference
from worker.video_source import FilmInfo, FrameLayout, decode_frames

# Far more than an artist colours for one film, few enough to bound a job's pre-pass (each reference decodes the
# frames it can reach).
MAX_REFERENCES = 200
MAX_REFERENCE_PIXELS = 8192 * 4352
_FRAME = re.compile(r"frame:(\d+)")


class ReferenceError(BadInputError):
    """A reference that cannot be used: one line naming where and which field."""

    def __init__(self, where: str | os.PathLike, field: str, reason: str) -> None:
        self.field = field
        self.detail = reason
        super().__init__(where, f"{field}: {reason}" if field else reason)


@dataclass(frozen=True)
class FilmReference:
    """A reference as given: ``when`` (``"12.5"`` seconds or ``"frame:300"``) and the picture's path or URI."""

    when: str
    image: str

    def as_dict(self) -> dict[str, str]:
        return {"time": self.when, "image": self.image}


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


def load_reference_image(path: str | os.PathLike, where: str | None = None) -> np.ndarray:
    """A reference picture's chroma: ``(2, H, W)`` float32 ab in display orientation. ReferenceError for a file that
    does not decode, is too large or has no colour."""
    where = where or os.fspath(path)
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_REFERENCE_PIXELS:
                raise ReferenceError(where, "image", f"{image.width}x{image.height} is larger than any film frame")
            pixels = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except FileNotFoundError:
        raise ReferenceError(where, "image", "no such file") from None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise ReferenceError(where, "image", f"does not decode as a picture ({type(exc).__name__}: {exc})") from None
    score = colour_score(pixels)
    rgb = pixels.astype(np.float64) / 255.0
    if score <= COLOUR_THRESHOLD:
        raise ReferenceError(where, "image", f"is gray (colour score {score:.1f}): a reference must show the colours")
    return np.ascontiguousarray(rgb_to_lab_np(rgb)[..., 1:].transpose(2, 0, 1), dtype=np.float32)


@dataclass(frozen=True)
class ResolvedReference:
    """A reference placed in its film: the frame and the picture's ab."""

    frame: int
    ab: np.ndarray


def resolve_references(
    references: Sequence[FilmReference],
    film: FilmInfo,
    load: Callable[[FilmReference], np.ndarray],
) -> list[ResolvedReference]:
    """Place every reference in ``film`` (``load`` fetches a picture's ab) and refuse two for one frame."""
    if len(references) > MAX_REFERENCES:
        raise ReferenceError(film.path, "references", f"{len(references)}, over the limit of {MAX_REFERENCES}")
    resolved: dict[int, FilmReference] = {}
    out = []
    for i, reference in enumerate(references):
        frame = frame_index(reference.when, film, f"references[{i}].time")
        if frame in resolved:
            raise ReferenceError(film.path, f"references[{i}].time", f"{reference.when} is frame {frame}, which "
                                 f"{resolved[frame].when}={resolved[frame].image} already colours")
        resolved[frame] = reference
        out.append(ResolvedReference(frame, load(reference)))
    return sorted(out, key=lambda r: r.frame)


class ReferenceField:
    """The references' colour and hold on every frame of ``first .. stop - 1`` they reach, computed up front.

    Each reference that can reach the range is followed through the frames around it (decoded again for this,
    render L only, no network), so a segment gets from a reference in another segment exactly what a whole-film
    pass gives it. ``lay(index, ab_grid)`` then blends them into a frame's grid ab after the temporal smoothing.
    """

    def __init__(self, film: FilmInfo, layout: FrameLayout, colorizer: Colorizer, smoothing: SmoothingOptions,
                 references: Sequence[ResolvedReference], first: int, stop: int) -> None:
        self.tracks: dict[int, list[ReferenceTrack]] = {}
        fade = fade_per_frame(film.fps)
        reach = math.ceil(math.log(MIN_CONFIDENCE) / math.log(fade))
        for reference in references:
            window = (max(0, reference.frame - reach), min(film.frames, reference.frame + reach + 1))
            if window[1] <= first or window[0] >= stop:
                continue
            renders = [colorizer.render(frame.L) for frame in _frames(film, layout, *window)]
            cells = reference_cells(reference.ab, (renders[0].render_height, renders[0].render_width),
                                    renders[0].padded.shape, colorizer.output_stride)
            carried = carry_reference([r.padded for r in renders], reference.frame - window[0], cells, smoothing,
                                      colorizer.output_stride, fade)
            for position, track in carried.items():
                index = window[0] + position
                if first <= index < stop:
                    self.tracks.setdefault(index, []).append(track)

    def lay(self, index: int, ab_grid: np.ndarray) -> np.ndarray:
        """Frame ``index``'s grid ab ``(2, h, w)`` with the references that reach it laid on."""
        tracks = self.tracks.get(index)
        if not tracks:
            return ab_grid
        return blend(ab_grid, *combine(tracks))

    @property
    def frames(self) -> int:
        return len(self.tracks)


def _frames(film: FilmInfo, layout: FrameLayout, start: int, stop: int) -> Iterator:
    frames = decode_frames(film, layout, start, stop)
    try:
        yield from frames
    finally:
        frames.close()

