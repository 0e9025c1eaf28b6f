"""Colour hint files and job options: parsed and validated here, turned into ``models.hints.ColourHints``.

    {"points": [{"x": 812, "y": 440, "color": "#2a3f8f"}, {"x": 120, "y": 95, "color": "#c8a27a", "radius": 6}],
     "regions": [{"polygon": [[10, 10], [200, 10], [200, 90]], "color": "#8a1c1c"}]}

A hint file sits beside its photo as ``<photo file name>.hints.json`` (``scan_0042.tif.hints.json``) or is named
with ``tinct colorize --hints``; a job carries the same object as ``options.hints``. ``x``, ``y`` are pixels of
the photo as displayed (after EXIF orientation, origin top-left), ``color`` is sRGB hex, ``radius`` pixels. A
multi-page TIFF document's hints are given page by page, each page's in its own pixels, its pages numbered from 1
(pages without hints are coloured as they would be without any):

    {"pages": {"3": {"points": [{"x": 410, "y": 220, "color": "#8a1c1c"}]}}}

Every problem is a :class:`HintError` whose message is one line naming the file (or job field) and the field
inside it, e.g. ``scan.tif.hints.json: points[2].color: not an sRGB hex colour like #2a3f8f: 'red'``. What can
be checked without the photo is checked by :func:`parse_hints`; coordinates against the photo's size by
:meth:`HintSpec.check_bounds`, once the photo is decoded.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.color import rgb_to_lab_np
from models.hints import DEFAULT_RADIUS, ColourHints, ColourPoint, ColourRegion
from worker.errors import FieldError
from worker.media.images import displayed_size, open_image
from worker.settings import GuidanceLimits

HINTS_SUFFIX = ".hints.json"
# How many hints a file may hold and how large it may be (a larger one is refused before it is parsed) are settings,
# TINCT_MAX_HINTS and TINCT_MAX_HINT_FILE_BYTES (worker.settings.GuidanceLimits); these are their defaults.
_LIMITS = GuidanceLimits()
MAX_POLYGON_VERTICES = 1000
MAX_RADIUS = 500.0
_HEX = re.compile(r"#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})")
_PAGE_NUMBER = re.compile(r"[1-9][0-9]{0,5}")  # from 1, as TIFF's PageNumber counts them for people


class HintError(FieldError):
    """A hint file or ``options.hints`` that cannot be used."""


@dataclass(frozen=True)
class HintSpec:
    """A validated hint document, kept in the user's terms (hex colours) so it can be stored in a job and hashed: one
    picture's points and regions, or a multi-page document's hints page by page (``pages``: page number from 1 and
    that page's hints, in page order)."""

    points: tuple[tuple[float, float, str, float], ...] = ()  # x, y, colour, radius
    regions: tuple[tuple[tuple[tuple[float, float], ...], str], ...] = ()  # polygon, colour
    pages: tuple[tuple[int, HintSpec], ...] = ()

    def __len__(self) -> int:
        return len(self.points) + len(self.regions) + sum(len(hints) for _, hints in self.pages)

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form (what enters a job's id): every field explicit, numbers as parsed."""
        if self.pages:
            return {"pages": {str(number): hints.to_dict() for number, hints in self.pages}}
        return {
            "points": [{"x": x, "y": y, "color": colour, "radius": radius} for x, y, colour, radius in self.points],
            "regions": [{"polygon": [list(v) for v in polygon], "color": colour} for polygon, colour in self.regions],
        }

    def page(self, number: int) -> HintSpec | None:
        """Page ``number``'s hints (from 1), or None where it has none."""
        return dict(self.pages).get(number)

    def check_bounds(self, width: int, height: int, where: str | os.PathLike, field: str = "") -> None:
        """Every point and polygon vertex inside a ``width`` x ``height`` photo (as displayed); HintError if not, or
        for hints given page by page, which belong to a document. ``field`` prefixes the fields named."""
        if self.pages:
            raise HintError(where, f"{field}pages", "hints page by page are for a multi-page TIFF document, and its "
                                                    "photo is one picture: give its points and regions")
        for i, (x, y, _, _) in enumerate(self.points):
            for name, value, size in (("x", x, width), ("y", y, height)):
                if not 0 <= value <= size - 1:
                    raise HintError(where, f"{field}points[{i}].{name}", f"{value:g} is outside the "
                                    f"{'page' if field else 'photo'} ({width}x{height}: {name} from 0 to {size - 1})")
        for i, (polygon, _) in enumerate(self.regions):
            for j, (x, y) in enumerate(polygon):
                if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
                    raise HintError(where, f"{field}regions[{i}].polygon[{j}]", f"[{x:g}, {y:g}] is outside the "
                                    f"{'page' if field else 'photo'} ({width}x{height})")

    def check_document(self, sizes: Sequence[tuple[int, int]], where: str | os.PathLike) -> None:
        """Every page's hints inside its page, of a document whose pages have the (upright) ``sizes``; HintError for
        a page it does not have, or for hints of one picture, which cannot say which page they are for."""
        if len(self.points) + len(self.regions):
            raise HintError(where, "", f"colour hints place points on one picture, and its photo is a "
                                       f"{len(sizes)}-page document: give them page by page "
                                       '({"pages": {"1": {"points": [...]}}})')
        for number, hints in self.pages:
            if number > len(sizes):
                raise HintError(where, f"pages.{number}", f"the document has {len(sizes)} pages")
            hints.check_bounds(*sizes[number - 1], where, f"pages.{number}.")

    def colour_hints(self) -> ColourHints:
        """The hints for ``models.hints``: each colour's chroma (ab) in CIE Lab."""
        colours = [colour for *_, colour, _ in self.points] + [colour for _, colour in self.regions]
        ab = _hex_to_ab(colours)
        points = tuple(ColourPoint(x, y, ab[i], radius) for i, (x, y, _, radius) in enumerate(self.points))
        offset = len(self.points)
        regions = tuple(ColourRegion(polygon, ab[offset + i]) for i, (polygon, _) in enumerate(self.regions))
        return ColourHints(points=points, regions=regions)


def _hex_to_ab(colours: list[str]) -> list[tuple[float, float]]:
    if not colours:
        return []
    rgb = np.array([[int(c[i : i + 2], 16) / 255.0 for i in (1, 3, 5)] for c in colours])
    lab = rgb_to_lab_np(rgb[None])[0]
    return [(float(a), float(b)) for _, a, b in lab]


def load_hints_file(path: str | os.PathLike, max_hints: int = _LIMITS.max_hints,
                    max_bytes: int = _LIMITS.max_hint_file_bytes) -> HintSpec:
    """Read and validate a hint file; HintError naming the file for anything wrong with it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise HintError(path, "", _oversized(size, max_bytes))
        data = path.read_bytes()
    except OSError as exc:
        raise HintError(path, "", f"cannot read: {exc.strerror or exc}") from None
    return parse_hints_bytes(data, path, max_hints, max_bytes)


def parse_hints_bytes(data: bytes, where: str | os.PathLike, max_hints: int = _LIMITS.max_hints,
                      max_bytes: int = _LIMITS.max_hint_file_bytes) -> HintSpec:
    """A hint file's bytes (from a folder or an object store) -> validated hints; HintError naming ``where``."""
    if len(data) > max_bytes:
        raise HintError(where, "", _oversized(len(data), max_bytes))
    try:
        document = json.loads(data.decode("utf-8-sig"))  # a byte-order mark, as Windows editors save one, is not JSON
    except UnicodeDecodeError as exc:
        raise HintError(where, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise HintError(where, "", f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return parse_hints(document, where, max_hints)


def _oversized(size: int, max_bytes: int) -> str:
    return f"{size} bytes, over the limit of {max_bytes} for a hint file (TINCT_MAX_HINT_FILE_BYTES)"


def sidecar_path(photo: str | os.PathLike) -> Path:
    """Where a photo's hint file sits: ``scan_0042.tif`` -> ``scan_0042.tif.hints.json``."""
    photo = Path(photo)
    return photo.with_name(photo.name + HINTS_SUFFIX)


def parse_hints(data: Any, where: str | os.PathLike, max_hints: int = _LIMITS.max_hints) -> HintSpec:
    """Validate a hint document (already decoded from JSON) without the photo; ``where`` names it in errors."""
    if not isinstance(data, dict):
        raise HintError(where, "", f"expected a JSON object with points and/or regions, or pages, got {_kind(data)}")
    if "pages" not in data:
        return _picture_hints(data, where, "", max_hints)
    beside = sorted(set(data) - {"pages"})
    if beside:
        raise HintError(where, beside[0], "unknown field beside pages (a document's hints are all given by page)"
                        if beside[0] in ("points", "regions") else "unknown field (a hint file has pages)")
    pages_raw = data["pages"]
    if not isinstance(pages_raw, dict):
        raise HintError(where, "pages", f"expected an object of pages by number, got {_kind(pages_raw)}")
    pages = []
    for key, page in pages_raw.items():
        if not _PAGE_NUMBER.fullmatch(key):
            raise HintError(where, f"pages.{key}", "not a page number (1 is the first page)")
        pages.append((int(key), _picture_hints(page, where, f"pages.{key}.", max_hints)))
    spec = HintSpec(pages=tuple(sorted(pages)))
    if len(spec) > max_hints:
        raise HintError(where, "pages", f"{len(spec)} hints, over the limit of {max_hints} (TINCT_MAX_HINTS)")
    return spec


def _picture_hints(data: Any, where: str | os.PathLike, field: str, max_hints: int) -> HintSpec:
    """One picture's points and regions; ``field`` prefixes the fields named in errors (a document's page's)."""
    if not isinstance(data, dict):
        raise HintError(where, field.rstrip("."), f"expected a JSON object with points and/or regions, got "
                                                  f"{_kind(data)}")
    unknown = sorted(set(data) - {"points", "regions"})
    if unknown:
        raise HintError(where, f"{field}{unknown[0]}", "unknown field (a hint file has points and regions, or pages)")
    points_raw = _list(data.get("points", []), where, f"{field}points")
    regions_raw = _list(data.get("regions", []), where, f"{field}regions")
    if len(points_raw) + len(regions_raw) > max_hints:
        raise HintError(where, f"{field}points" if len(points_raw) > len(regions_raw) else f"{field}regions",
                        f"{len(points_raw) + len(regions_raw)} hints, over the limit of {max_hints} (TINCT_MAX_HINTS)")
    points = tuple(_point(p, where, f"{field}points[{i}]") for i, p in enumerate(points_raw))
    regions = tuple(_region(r, where, f"{field}regions[{i}]") for i, r in enumerate(regions_raw))
    return HintSpec(points, regions)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


def _list(value: Any, where: str | os.PathLike, field: str) -> list:
    if not isinstance(value, list):
        raise HintError(where, field, f"expected a list, got {_kind(value)}")
    return value


def _fields(item: Any, where: str | os.PathLike, field: str, required: set[str], optional: set[str]) -> dict:
    if not isinstance(item, dict):
        raise HintError(where, field, f"expected an object, got {_kind(item)}")
    unknown = sorted(set(item) - required - optional)
    if unknown:
        expected = ", ".join(sorted(required | optional))
        raise HintError(where, f"{field}.{unknown[0]}", f"unknown field (expected {expected})")
    missing = sorted(required - set(item))
    if missing:
        raise HintError(where, f"{field}.{missing[0]}", "required")
    return item


def _number(value: Any, where: str | os.PathLike, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HintError(where, field, f"expected a number of pixels, got {json.dumps(value)}")
    return float(value)


def _colour(value: Any, where: str | os.PathLike, field: str) -> str:
    match = _HEX.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise HintError(where, field, f"not an sRGB hex colour like #2a3f8f: {json.dumps(value)}")
    digits = match.group(1).lower()
    return "#" + (digits if len(digits) == 6 else "".join(d * 2 for d in digits))


def _point(item: Any, where: str | os.PathLike, field: str) -> tuple[float, float, str, float]:
    item = _fields(item, where, field, {"x", "y", "color"}, {"radius"})
    x, y = _number(item["x"], where, f"{field}.x"), _number(item["y"], where, f"{field}.y")
    radius = _number(item.get("radius", DEFAULT_RADIUS), where, f"{field}.radius")
    if not 0 < radius <= MAX_RADIUS:
        raise HintError(where, f"{field}.radius", f"must be above 0 and at most {MAX_RADIUS:g} pixels, got {radius:g}")
    return x, y, _colour(item["color"], where, f"{field}.color"), radius


def _region(item: Any, where: str | os.PathLike, field: str) -> tuple[tuple[tuple[float, float], ...], str]:
    item = _fields(item, where, field, {"polygon", "color"}, set())
    raw = _list(item["polygon"], where, f"{field}.polygon")
    if not 3 <= len(raw) <= MAX_POLYGON_VERTICES:
        raise HintError(where, f"{field}.polygon", f"needs 3 to {MAX_POLYGON_VERTICES} vertices, got {len(raw)}")
    vertices = []
    for j, vertex in enumerate(raw):
        if not isinstance(vertex, list) or len(vertex) != 2:
            raise HintError(where, f"{field}.polygon[{j}]", f"expected [x, y], got {json.dumps(vertex)}")
        vertices.append((_number(vertex[0], where, f"{field}.polygon[{j}]"),
                         _number(vertex[1], where, f"{field}.polygon[{j}]")))
    polygon = tuple(vertices)
    crossing = _self_intersection(polygon)
    if abs(_signed_area(polygon)) < 0.5 and (crossing is None or len(polygon) == 3):
        raise HintError(where, f"{field}.polygon", "degenerate: its vertices enclose no area")
    if crossing is not None:
        raise HintError(where, f"{field}.polygon", f"self-intersecting: edges {crossing[0]} and {crossing[1]} cross")
    return polygon, _colour(item["color"], where, f"{field}.color")


def _signed_area(polygon: tuple[tuple[float, float], ...]) -> float:
    xs = np.array([p[0] for p in polygon])
    ys = np.array([p[1] for p in polygon])
    return 0.5 * float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))


def _self_intersection(polygon: tuple[tuple[float, float], ...]) -> tuple[int, int] | None:
    """The first pair of non-adjacent edges that touch or cross (edge i runs from vertex i to i + 1), or None.
    Quadratic in the vertices, which are limited to ``MAX_POLYGON_VERTICES``."""
    n = len(polygon)
    edges = [(polygon[i], polygon[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbours share a vertex by construction
            if _segments_touch(*edges[i], *edges[j]):
                return i, j
    return None


def _segments_touch(p1: tuple[float, float], p2: tuple[float, float], q1: tuple[float, float],
                    q2: tuple[float, float]) -> bool:
    def orientation(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    def on_segment(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> bool:
        return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])

    d1, d2 = orientation(q1, q2, p1), orientation(q1, q2, p2)
    d3, d4 = orientation(p1, p2, q1), orientation(p1, p2, q2)
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True
    return any(d == 0 and on_segment(a, b, c) for d, a, b, c in
               ((d1, q1, q2, p1), (d2, q1, q2, p2), (d3, p1, p2, q1), (d4, p1, p2, q2)))


def hints_provenance(count: int) -> str:
    """What the output's provenance tag adds for ``count`` hints ("" for none)."""
    return f"{count} colour hint{'' if count == 1 else 's'}" if count else ""


def job_photo_hints(raw: dict | None, width: int, height: int, uri: str) -> ColourHints | None:
    """A job's ``options.hints`` (validated when the job was submitted) checked against its photo's displayed size:
    None without hints; HintError naming the photo and ``options.hints.<field>`` for a point outside it."""
    spec = _job_hints(raw, uri, lambda spec: spec.check_bounds(width, height, uri))
    return spec.colour_hints() if spec is not None else None


def job_document_hints(raw: dict | None, sizes: Sequence[tuple[int, int]], uri: str) -> HintSpec | None:
    """A job's ``options.hints`` checked against its multi-page document's pages (their upright ``sizes``), as
    :func:`job_photo_hints` checks a photo's; each page's are then ``spec.page(number)``."""
    return _job_hints(raw, uri, lambda spec: spec.check_document(sizes, uri))


def _job_hints(raw: dict | None, uri: str, check: Callable[[HintSpec], None]) -> HintSpec | None:
    if not raw:
        return None
    try:
        spec = parse_hints(raw, uri, GuidanceLimits.unlimited().max_hints)  # counted when the job was submitted
        check(spec)
    except HintError as exc:
        raise HintError(uri, f"options.hints.{exc.field}".rstrip("."), exc.detail) from None
    return spec


def check_local_bounds(spec: HintSpec, photo: str, where: str | os.PathLike) -> None:
    """Check hints against ``photo``'s displayed size when it is a local file (a path or file:// URI) Pillow can open;
    anything else is left to the worker, which checks every photo's hints once it has decoded it (a document's
    pages, too: which pages a TIFF's are, pictures or a pyramid's levels, takes its reader)."""
    path = Path(photo[len("file://"):] if photo.startswith("file://") else photo)
    if "://" in photo[:10] and not photo.startswith("file://") or not path.is_file() or spec.pages:
        return
    try:
        with open_image(path) as image:
            width, height = displayed_size(image)
    except (OSError, ValueError):
        return  # not an image Pillow reads: the worker reports the photo itself
    spec.check_bounds(width, height, where)
