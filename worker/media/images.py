"""Decode and encode still photos: full-resolution lightness in, colorized sRGB out, metadata carried across.

Reading (:func:`read_photo`) turns any supported file into a :class:`Photo`: the lightness L of every pixel at
full resolution (8-bit and 16-bit sources; 16-bit keeps its precision), the alpha channel, and everything an
archive expects a derived copy to keep (EXIF with the orientation already applied to the pixels, ICC profile,
XMP, DPI, PNG text). Writing (:func:`write_photo`) encodes the colorizer's sRGB result next to that metadata,
adds a provenance tag that tells a colorized copy from an original, and replaces the destination atomically.

Pillow does the work wherever it can. Pillow holds 16-bit data only for single-channel images, so 16-bit
RGB(A) sources are decoded with OpenCV, and 16-bit RGB(A) results are written as PNG by OpenCV (with the
metadata chunks spliced in here) or as TIFF by a small writer built on Pillow's own TIFF directory encoder.
JPEG 2000 files' metadata boxes, which Pillow neither reads nor writes, are :mod:`worker.media.jpeg2000`'s: read as the
file is opened (:func:`open_image`), added to the encoded file as it is written.

Colour management: pixels are read in the colours their ICC profile gives them. An RGB profile of the matrix/TRC
kind (Adobe RGB, ProPhoto, Display P3: :mod:`worker.media.icc`) is carried verbatim, lightness is measured through it,
and the result is written back in its space, so the colours show as the colorizer made them and neutral greys keep
their exact values. Pixels under an sRGB profile, no profile, or an RGB profile of another kind are taken as sRGB.
Gray and CMYK profiles cannot describe an RGB result, so such sources are converted to sRGB through their profile
with LittleCMS, and the result is tagged sRGB.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import math
import os
import re
import struct
import threading
import tomllib
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, closing, contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import metadata
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Any, BinaryIO
from xml.sax.saxutils import escape as xml_escape

import cv2
import numpy as np
import torch
from PIL import (
    Image,
    ImageCms,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    TiffTags,
    UnidentifiedImageError,
)

from models import color
from models.files import atomic_output
from worker.errors import BadInputError, InputTooLargeError, StorageError, UnsupportedMediaError, one_line
from worker.media import iptc, tiff
from worker.media import xmp as xmp_lineage
from worker.media.icc import (
    RgbSpace,
    dcf_adobe_rgb_space,
    gray_luminance,
    has_lookup_tables,
    lookup_table_space,
    png_declared_space,
    rgb_space,
    sample_curve,
)
from worker.media.iptc import TIFF_IPTC_TAG, TIFF_RESOURCES_TAG, read_resources
from worker.media.jpeg2000 import (
    Jp2Boxes,
    bare_codestream,
    copy_options,
    lacks_jp2_header,
    read_jp2_boxes,
    with_jp2_metadata,
)
from worker.storage import content_type

logger = logging.getLogger(__name__)

# OpenJPEG, Pillow's and OpenCV's JPEG 2000 codec, codes a file on one thread unless OPJ_NUM_THREADS says more (it
# reads the variable as each file is opened): 24 MP masters colour end to end at 2.8 MP/s on one of this machine's
# two cores, 4.2 MP/s on both (``tools bench --photo-format jp2``). A value set by the user is kept.
os.environ.setdefault("OPJ_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                              else os.cpu_count() or 1))
# OpenCV prints its warnings raw to stderr, naming no file; those its image codecs give here are about what Tinct
# handles itself (a bare JPEG 2000 codestream names no colour space, and is taken as sRGB, as OpenCV says it does).
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

#: File extensions Tinct reads and writes, and the Pillow format name behind each.
EXTENSION_FORMATS: dict[str, str] = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG",
    ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP", ".bmp": "BMP",
    ".jp2": "JPEG2000", ".jpf": "JPEG2000", ".jpx": "JPEG2000", ".j2k": "JPEG2000", ".j2c": "JPEG2000",
    ".jpc": "JPEG2000",
}
#: JPEG 2000 codestreams stored alone, without JP2's boxes: a result so named is one too, and so carries no
#: profile (it is written in sRGB), EXIF, XMP nor resolution, and its provenance in a comment marker. A JPX file's
#: (.jpf) is written as JP2, which every JPX reader reads.
CODESTREAM_SUFFIXES = frozenset({".j2k", ".j2c", ".jpc"})
#: The extension used when a format has to be turned back into a file name.
FORMAT_EXTENSIONS: dict[str, str] = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "WEBP": ".webp", "BMP": ".bmp",
                                     "JPEG2000": ".jp2"}
#: Extensions Tinct reads but does not write: a GIF holds 256 colours, so its colour copy is a PNG
#: (:func:`copy_suffix`), lossless and as widely read.
READ_ONLY_FORMATS: dict[str, str] = {".gif": "GIF"}
#: Every extension a photo Tinct reads may have.
PHOTO_SUFFIXES = frozenset(EXTENSION_FORMATS) | frozenset(READ_ONLY_FORMATS)
#: The formats as messages name them.
FORMAT_NAMES = "JPEG, PNG, TIFF, WebP, BMP, JPEG 2000 or GIF"
#: Formats whose alpha channel is kept; JPEG and BMP results are flattened onto white (what a viewer shows).
ALPHA_FORMATS = frozenset({"PNG", "TIFF", "WEBP", "JPEG2000"})
#: Formats that can hold 16 bits per channel; a 16-bit source written to any other format becomes 8-bit.
SIXTEEN_BIT_FORMATS = frozenset({"PNG", "TIFF", "JPEG2000"})

DEFAULT_MAX_PIXELS = 200_000_000  # a 16k x 12k archive scan still fits; bombs and garbage headers do not
JPEG_QUALITY = 95  # a JPEG result of a source in another format; a JPEG source's copy keeps its quantization
#: libjpeg's quantization tables at quality 50 (ITU-T T.81 Annex K), in natural order, as Pillow hands tables over:
#: what a quality setting scales.
_IJG_LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
_IJG_CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, *(99,) * 32,
)
_JPEG_MARKER_BYTES = 65533  # the payload one JPEG APPn marker can hold (EXIF and XMP each get one)
WEBP_QUALITY = 95

#: A photo counts as colour when one pixel in ten (the 90th percentile) has a chroma more than this many Lab ab
#: units away from the typical chroma of pixels of the same lightness. Measuring against the lightness-wise typical
#: chroma, not against zero, keeps toned monochrome prints out: sepia, selenium, gold and cyanotype toning, split
#: toning and a scanner's colour cast give a chroma that is a function of density alone, so they score 1-5 however
#: strong the tint (a sepia print's mean chroma is 15-25). RGB-encoded greys score 0; JPEG and scanner chroma noise
#: 2-5. Colour photographs score 9-50 (scikit-image's samples: astronaut 42, rocket 18, coffee 17, chelsea the cat
#: 15, a retina photograph 8.6); a colour print faded to 30 % saturation scores 4-12 and may be taken for monochrome.
COLOUR_THRESHOLD = 7.0
COLOUR_PROBE_SIDE = 512  # the colour test runs on a copy this size: noise averages out, cost stays flat
_L_CHUNK_PIXELS = 1 << 21  # lightness is computed in slices so a 200 MP photo never needs float64 copies

_ORIENTATION = 0x0112
_BITS_PER_SAMPLE = 258
_PHOTOMETRIC = 262
_SAMPLES_PER_PIXEL = 277
_PLANAR_CONFIGURATION = 284
_SAMPLE_FORMAT = 339
_MIN_IS_WHITE = 0  # the Photometric value of gray TIFFs stored as a negative (0 is white), as fax and some scanners do
#: TIFF Photometric values: what they are called, and how many channels of colour they have (the rest are extra).
_PHOTOMETRIC_NAMES = {
    0: ("gray", 1), 1: ("gray", 1), 2: ("RGB", 3), 3: ("palette", 1), 4: ("mask", 1), 5: ("CMYK", 4),
    6: ("YCbCr", 3), 8: ("CIELab", 3), 9: ("ICCLab", 3), 10: ("ITULab", 3), 32844: ("LogL", 1), 32845: ("LogLuv", 3),
}
_COLOR_SPACE = 0xA001  # in the EXIF sub-directory: 1 sRGB, 0xFFFF uncalibrated
_INTEROP_IFD = 0xA005
_INTEROP_INDEX = 0x0001  # in the interoperability directory: "R98" DCF basic (sRGB), "R03" DCF option (Adobe RGB)
_SOFTWARE = 0x0131
_IMAGE_DESCRIPTION = 0x010E
_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_MAKER_NOTE = 0x927C
_XMP_TAG = 700
_ICC_TAG = 34675
_X_RESOLUTION, _Y_RESOLUTION, _RESOLUTION_UNIT, _YCBCR_POSITIONING = 282, 283, 296, 531
_NO_UNIT, _INCHES, _CENTIMETRES = 1, 2, 3  # ResolutionUnit's values
_PIXEL_X_DIMENSION, _PIXEL_Y_DIMENSION = 0xA002, 0xA003  # in the EXIF sub-directory: the picture's size
#: The EXIF sub-directory's tags of type UNDEFINED that Pillow's table of tag types lacks: it wrote their bytes back
#: as BYTE, which exiftool flags ("Non-standard format (int8u) for ExifIFD 0x9286 UserComment") and strict readers
#: may refuse. Added to that table once, here.
_EXIF_UNDEFINED_TAGS = {
    0x8828: "OECF", 0x9101: "ComponentsConfiguration", 0x927C: "MakerNote", 0x9286: "UserComment",
    0xA20C: "SpatialFrequencyResponse", 0xA300: "FileSource", 0xA301: "SceneType",
    0xA40B: "DeviceSettingDescription",
}
for _tag, _name in _EXIF_UNDEFINED_TAGS.items():
    TiffTags.TAGS_V2_GROUPS[_EXIF_IFD].setdefault(_tag, TiffTags.TagInfo(_tag, _name, TiffTags.UNDEFINED, 0))
#: TIFF tags that describe one file's pixel layout (or duplicate data carried separately): carrying them from a
#: TIFF source into another file's EXIF would describe pixels that are not there. (DocumentName, 269, is not one: the
#: document a scan was made from is its copy's too.)
_LAYOUT_TAGS = frozenset({
    254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 282, 283, 284, 286, 287,
    290, 291, 292, 293, 296, 297, 301, 317, 318, 319, 320, 321, 322, 323, 324, 325, 330, 332, 338, 339, 340,
    341, 347, 513, 514, 529, 530, 531, 532, _XMP_TAG, _ICC_TAG, 37724, 50341, TIFF_IPTC_TAG, TIFF_RESOURCES_TAG,
})
_EXTENDED_XMP_HEADER = b"http://ns.adobe.com/xmp/extension/\x00"
_HAS_EXTENDED_XMP = re.compile(rb'xmpNote:HasExtendedXMP\s*=\s*["\']([0-9A-Fa-f]{32})["\']'
                               rb'|<xmpNote:HasExtendedXMP>([0-9A-Fa-f]{32})</xmpNote:HasExtendedXMP>')
_XMP_ORIENTATION = re.compile(rb'(tiff:Orientation=")[0-9]"|(<tiff:Orientation>)[0-9](</tiff:Orientation>)')
_PROVENANCE = re.compile(r"colorized by Tinct (?P<version>[^\s,]+), model (?P<model>[^\]\r\n]+?)"
                         r"(?:, with (?P<guidance>[^\]\r\n]+))?(?=\]|\r|\n|$)")
_BRACKETED_PROVENANCE = re.compile(r"\s*\[colorized by Tinct [^\]]*\]")
_TRANSIENT_ERRNOS = frozenset({
    errno.EIO, errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETIMEDOUT, errno.ESTALE, errno.ENETDOWN,
    errno.ENETUNREACH, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENOSPC, errno.EDQUOT,
    errno.EMFILE, errno.ENFILE, errno.ENOMEM,
})
#: Temp files of unfinished writes end with this; folder scans skip them (they also start with a dot).


@lru_cache(maxsize=1)
def tinct_version() -> str:
    """The installed package version; in a source checkout that was never installed, pyproject's."""
    try:
        return metadata.version("tinct")
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        with suppress(OSError, tomllib.TOMLDecodeError, KeyError):
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
    return "unknown"


def provenance_text(model_label: str, guidance: str = "") -> str:
    """The sentence written into every output, e.g. ``colorized by Tinct 0.1.0, model effnet_unet@1a2b3c``;
    ``guidance`` records what a restorer gave besides the model (``..., with 3 colour hints``)."""
    text = f"colorized by Tinct {tinct_version()}, model {model_label}"
    return f"{text}, with {guidance}" if guidance else text


@dataclass
class Photo:
    """One decoded photo: what the colorizer needs (``L``) and what the encoder must carry to the result.

    ``L`` is float32 (H, W) in [0, 100] at full resolution, already in display orientation. ``alpha`` is the
    source's alpha channel (uint8 or uint16, same orientation) or None. ``exif`` is ready to be written back:
    orientation reset to 1, the source file's own layout tags removed. ``icc_profile`` is the profile that
    describes the *result* (the source's RGB profile, or sRGB where a gray/CMYK source was converted).
    ``had_colour`` says the source was already a colour photo (see ``COLOUR_THRESHOLD``; ``colour_score`` is
    the measured score). ``encoder`` holds format-specific hints (JPEG subsampling, TIFF compression, WebP
    losslessness) that are reused when the result has the source's format. ``document_sizes`` are a multi-page TIFF
    document's pages' sizes (``worker.media.tiff.document_pages``; empty for one picture): the photo is one of its
    pages, :func:`read_pages` gives every page, each a picture with its own metadata, and :func:`write_document` writes
    their copy, a TIFF of them all, a page at a time.
    """

    path: Path
    L: np.ndarray
    format: str
    mode: str
    bit_depth: int
    alpha: np.ndarray | None = None
    exif: bytes | None = None
    icc_profile: bytes | None = None
    xmp: bytes | None = None
    dpi: tuple[float, float] | None = None
    # A TIFF's resolution stated without a unit (ResolutionUnit 1: a pixel aspect), carried to a TIFF copy alone.
    resolution_without_unit: tuple[float, float] | None = None
    text: dict[str, str] = field(default_factory=dict)  # PNG text chunks, or a JPEG's comment as "Comment"
    # Photoshop image resources about its content: IPTC-IIM captions, credits, keywords (``worker.media.iptc``)
    resources: bytes | None = None
    # A JPEG's extended XMP: the packet its XMP continues in, over further segments, where the whole is over 64 KB
    # (``_extended_xmp``); Pillow reads the main packet alone.
    extended_xmp: bytes | None = None
    had_colour: bool = False
    colour_score: float = 0.0
    encoder: dict[str, Any] = field(default_factory=dict)
    document_sizes: tuple[tuple[int, int], ...] = ()
    # A document's page already in colour: its pixels as decoded (codes in ``icc_profile``'s space, at its depth),
    # which its copy keeps as they are unless the document is recoloured.
    kept_colour: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in display orientation."""
        return self.L.shape[1], self.L.shape[0]

    @property
    def page_count(self) -> int:
        """1, or a multi-page document's pages."""
        return max(1, len(self.document_sizes))

    def colour_found(self) -> str | None:
        """What makes it a colour photo, in words (``a colour photo (colour score 31.2)``), or None: a colour photo is
        left alone unless recoloured on purpose. (A document's pages are judged one by one as they are coloured:
        ``write_document``.)"""
        if self.page_count > 1 or not self.had_colour:
            return None
        return f"a colour photo (colour score {self.colour_score:.1f})"


@dataclass(frozen=True)
class Provenance:
    """The Tinct tag found in a file by :func:`read_provenance`."""

    software: str
    description: str
    version: str | None
    model: str | None
    guidance: str | None = None  # e.g. "3 colour hints": what the restorer gave besides the model


def format_for_path(path: str | os.PathLike) -> str | None:
    """The Pillow format name for a file name's extension, or None for an extension Tinct does not write."""
    return EXTENSION_FORMATS.get(Path(path).suffix.lower())


def is_photo_name(path: str | os.PathLike) -> bool:
    """Whether a file so named is a photo Tinct reads (by its extension)."""
    return PurePath(path).suffix.lower() in PHOTO_SUFFIXES


def unwritten_copy(path: str | os.PathLike) -> str | None:
    """Why a copy cannot be named ``path`` (a format Tinct reads but does not write), or None; the CLI and the
    service say it in these words."""
    if PurePath(path).suffix.lower() not in READ_ONLY_FORMATS:
        return None
    return "Tinct reads GIF but does not write it (a GIF holds 256 colours); name the copy .png, or give a folder"


def copy_suffix(path: str | os.PathLike) -> str:
    """The extension a colour copy of the photo ``path`` is written with (no format asked for): the photo's own,
    or ``.png`` for one Tinct does not write (a GIF)."""
    suffix = PurePath(path).suffix
    return suffix if suffix.lower() in EXTENSION_FORMATS else ".png"


@contextmanager
def open_image(source: str | os.PathLike | BinaryIO) -> Iterator[Image.Image]:
    """``Image.open`` on an open file rather than a name, for every picture Tinct decodes: a file named by
    ``source``, or ``source`` itself (bytes fetched from a store), a JPEG 2000 file's boxes read beside it.

    Given a name, Pillow 13 memory-maps an uncompressed single-strip TIFF at its upright size while its pixels
    lie stored sideways, and so scrambles a gray scan whose orientation tag turns it a quarter (5 to 8). From an
    open file it decodes the strip and turns it upright correctly.
    """
    with ExitStack() as stack:
        f = source if hasattr(source, "read") else stack.enter_context(open(source, "rb"))
        image = stack.enter_context(Image.open(f))
        if image.format == "JPEG2000":
            _with_jp2_boxes(image, f)
        yield image


def _with_jp2_boxes(image: Image.Image, f: BinaryIO) -> None:
    """A JP2 file's ICC profile, EXIF and XMP (``worker.media.jpeg2000``), which Pillow does not read, put where it
    keeps other formats' (``info``), so orientation, colour management and provenance work on it as on the others; and
    all that its boxes say, its depth and coding too, as ``info["jp2"]`` (:func:`_jp2_boxes`)."""
    position = f.tell()
    try:
        boxes = read_jp2_boxes(f)
    finally:
        f.seek(position)
    if boxes is None:
        return
    image.info["jp2"] = boxes
    if "dpi" not in image.info and boxes.dpi:  # Pillow reads the capture resolution alone
        image.info["dpi"] = boxes.dpi
    for key, value in (("icc_profile", boxes.icc), ("exif", boxes.exif and b"Exif\0\0" + boxes.exif),
                       ("xmp", boxes.xmp)):
        if value:
            image.info[key] = value


def _jp2_boxes(image: Image.Image) -> Jp2Boxes:
    """What a JP2 file's boxes say (``_with_jp2_boxes``); for one whose boxes do not say its depth (a bare
    codestream so named), the depth Pillow decodes it at, of unknown coding."""
    return image.info.get("jp2") or Jp2Boxes(bits=16 if image.mode.startswith("I;16") else 8, signed=False)


def upright(image: Image.Image) -> Image.Image:
    """``image`` as displayed, its EXIF orientation applied (its pixels are decoded here).

    Pillow turns a TIFF upright itself as it decodes it, and drops its orientation tag then, so turning an
    undecoded TIFF by that tag (``ImageOps.exif_transpose`` alone) mirrors or turns it a second time.
    """
    image.load()
    return ImageOps.exif_transpose(image)


def shown_as_srgb(image: Image.Image) -> Image.Image:
    """An opened 8-bit view of ``image`` (upright) in sRGB: a result written under its source's Adobe RGB or ProPhoto
    profile (see :mod:`worker.media.icc`) shows its colours in a browser, which takes untagged JPEG previews as sRGB."""
    rgb = upright(image).convert("RGB")
    space = rgb_space(image.info.get("icc_profile"))
    if space is None:
        return rgb
    return Image.fromarray(_quantize(space.to_srgb(np.asarray(rgb)), 8))


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened, undecoded image as displayed, from its header alone.

    Pillow already reports a TIFF's displayed size (it turns TIFFs upright as it decodes them); any other format's
    size is as stored, so a quarter turn in its EXIF orientation swaps the two.
    """
    width, height = image.size
    if image.format != "TIFF" and image.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):
        return height, width
    return width, height


# --- reading -------------------------------------------------------------------------------------------------

_limit_lock = threading.Lock()
_limit_users = 0
_limit_saved: int | None = None


@contextmanager
def _own_pixel_limit() -> Iterator[None]:
    """Replace Pillow's decompression-bomb guard by our exact per-call ``max_pixels`` check.

    Pillow's guard is one process-wide number (``Image.MAX_IMAGE_PIXELS``) that warns above it and fails above
    twice it, so it cannot express a per-call limit and would stop a 200 MP scan at its default 179 MP. While
    any ``read_photo`` runs the guard is switched off, and the previous value is restored when the last
    concurrent one finishes; nothing changes at import. Every image's size is checked before a pixel is decoded.
    """
    global _limit_users, _limit_saved
    with _limit_lock:
        if _limit_users == 0:
            _limit_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _limit_saved


def read_photo(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo:
    """Decode a photo fully (truncation is never hidden by lazy loading) into a :class:`Photo`; of a multi-page TIFF
    document, its first page (``page_count`` says how many it has: :func:`read_pages` reads them all).

    Raises :class:`BadInputError` (or its subclasses :class:`InputTooLargeError`, :class:`UnsupportedMediaError`)
    with a one-line reason naming the file for anything that is not a usable image, and :class:`StorageError`
    when the file system itself fails (an I/O error worth retrying).
    """
    with closing(_read(Path(path), max_pixels, only=0)) as pages:
        return next(pages)


def read_page(path: str | os.PathLike, number: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo:
    """Page ``number`` (from 1) of a multi-page TIFF document, alone, decoded as :func:`read_pages` decodes it (of any
    other file, its one picture is page 1); :class:`BadInputError` for a page the file does not have."""
    with closing(_read(Path(path), max_pixels, only=number - 1)) as pages:
        return next(pages)


def read_pages(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Photo]:
    """Every page of a multi-page TIFF document (or the one picture of any other file), decoded one at a time as
    :func:`read_photo` decodes a photo: a long document never lies in memory whole, and ``max_pixels`` holds for
    each page. A page already in colour has its pixels kept (``Photo.kept_colour``); what is wrong with a page is
    said of that page. Close it (``contextlib.closing``) where it is not read to its end."""
    return _read(Path(path), max_pixels)


def _read(path: Path, max_pixels: int, only: int | None = None) -> Iterator[Photo]:
    """Every page of ``path`` decoded, one at a time, or page ``only`` (from 0) alone."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadInputError(path, "no such file") from None
    except OSError as exc:
        raise _os_error(path, exc, "cannot read file") from exc
    if path.is_dir():
        raise BadInputError(path, "is a directory, not an image")
    if size == 0:
        raise BadInputError(path, "empty file (0 bytes)")
    with _own_pixel_limit(), ExitStack() as stack:
        with _decode_errors(path):
            im = stack.enter_context(open_image(path))
            sizes = _document_sizes(path, im, max_pixels)
        pages = max(1, len(sizes))
        if only is not None and only >= pages:
            raise BadInputError(path, f"page {only + 1}: the document has {pages} pages" if sizes else
                                f"page {only + 1}: the photo is one picture, not a multi-page document")
        for number in range(pages) if only is None else (only,):
            if number == 0:
                with _decode_errors(path):
                    source = _decode(path, im)
            else:
                source = _decode_page(path, im, number, len(sizes))
            photo = _photo(source)
            photo.document_sizes = sizes
            if sizes and photo.had_colour:  # a document's colour page: its copy keeps it as it is
                photo.kept_colour = source.pixels
            yield photo


# Pillow reports damaged metadata (an EXIF block or a TIFF directory cut short) as Python warnings, which Python
# prints as two raw lines naming Pillow's source; while Tinct reads a picture they are logged instead, as one line
# naming the picture (per thread: photos are read on several at once). Other warnings are shown as Python would.
_picture_read: ContextVar[Path | None] = ContextVar("tinct_picture_read", default=None)
_python_showwarning = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    picture = _picture_read.get()
    if picture is None or "PIL" not in Path(filename).parts:
        _python_showwarning(message, category, filename, lineno, file, line)
        return
    logger.warning("%s: %s", picture, one_line(message))


warnings.showwarning = _show_warning


@contextmanager
def _decode_errors(path: Path) -> Iterator[None]:
    """Turn whatever Pillow, libtiff or OpenCV raise for an unusable file into a one-line BadInputError (and what
    Pillow warns of into a logged line naming it)."""
    reading = _picture_read.set(path)
    try:
        yield
    except (BadInputError, StorageError):
        raise
    except UnidentifiedImageError:
        layout = _tiff_layout(path)
        if layout is not None:
            raise UnsupportedMediaError(
                path, f"a TIFF of {layout}, which Tinct cannot read; save it as 8 or 16-bit gray or RGB"
            ) from None
        raise BadInputError(path, f"not an image Tinct can read ({FORMAT_NAMES})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputTooLargeError(path, str(exc)) from exc
    except OSError as exc:
        _refuse_jpx_without_jp2_header(path)
        raise _os_error(path, exc, "cannot decode") from exc
    except (SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, ZeroDivisionError,
            struct.error, zlib.error, cv2.error, ImageCms.PyCMSError) as exc:
        # Pillow's format plugins report corrupt structures with all of these.
        _refuse_jpx_without_jp2_header(path)
        raise BadInputError(path, f"corrupt image data ({type(exc).__name__}: {exc})") from exc
    finally:
        _picture_read.reset(reading)


def _refuse_jpx_without_jp2_header(path: Path) -> None:
    """Name what OpenJPEG's failure on a JPX file that holds no JP2 header box means (it says only that a read came
    up short)."""
    try:
        with open(path, "rb") as f:
            lacking = lacks_jp2_header(f)
    except OSError:
        return
    if lacking:
        raise UnsupportedMediaError(path, "a JPX file without a JP2 header box (jp2h), which Tinct cannot read; save "
                                          "it as JP2") from None


def _os_error(path: Path, exc: OSError, what: str) -> BadInputError | StorageError:
    """Pillow reports decode failures as OSError without errno; real I/O failures carry one."""
    if exc.errno in _TRANSIENT_ERRNOS:
        return StorageError(path, f"{what}: {exc.strerror or exc}")
    if isinstance(exc, PermissionError):
        return BadInputError(path, "permission denied")
    if exc.errno is not None:
        return BadInputError(path, f"{what}: {exc.strerror or exc}")
    reason = str(exc)
    if "truncated" in reason:
        return BadInputError(path, f"truncated image ({reason})")
    return BadInputError(path, f"{what} ({reason})")


def _document_sizes(path: Path, im: Image.Image, max_pixels: int) -> tuple[tuple[int, int], ...]:
    """A multi-page TIFF document's pages' sizes (upright), or () for a file of one picture to colour. Refuses
    (before a pixel is decoded) a picture, or a document's page, over ``max_pixels``, and files of several frames
    that Tinct does not colour (an animation, a document whose pages bring previews of their own)."""
    width, height = im.size
    if width * height > max_pixels:
        raise InputTooLargeError(
            path, f"{width}x{height} is {width * height / 1e6:.1f} MP, over the limit of {max_pixels / 1e6:.1f} MP"
        )
    try:
        frames = getattr(im, "n_frames", 1)  # (a TIFF's pages are counted by reading every page's directory)
    except (SyntaxError, ValueError, EOFError, TypeError, KeyError, struct.error) as exc:
        raise BadInputError(path, f"damaged or cut short after its first picture: a further page's directory cannot "
                                  f"be read ({type(exc).__name__}: {exc})") from exc
    if frames == 1 or im.format == "MPO":
        return ()
    if im.format != "TIFF":
        raise UnsupportedMediaError(path, f"{frames} frames: only single still images and multi-page TIFF documents "
                                          "are supported")
    layouts = tiff.page_layouts(im)
    if tiff.reduced_pages(layouts) is not None:
        return ()  # a pyramid or a scanner's preview: the copy has them too (``worker.media.tiff``)
    sizes = tiff.document_pages(layouts)
    if sizes is None:
        raise UnsupportedMediaError(path, f"{frames} pages, of which some are reduced-resolution copies (previews) "
                                          "and some are pictures of their own; save its pages as one document "
                                          "without the previews, or as files of their own")
    for number, (width, height) in enumerate(sizes, 1):
        if width * height > max_pixels:
            raise InputTooLargeError(path, f"page {number} of {frames} is {width}x{height}, {width * height / 1e6:.1f} "
                                           f"MP, over the limit of {max_pixels / 1e6:.1f} MP")
    return tuple(sizes)


def _source_bit_depth(path: Path, im: Image.Image) -> int:
    if im.mode == "1":
        return 1
    if im.format == "PNG":
        with open(path, "rb") as f:
            header = f.read(26)
        return 16 if len(header) == 26 and header[24] == 16 else 8
    if im.format == "TIFF":
        bits = _tiff_sample_bits(im)
        formats = {int(f) for f in np.atleast_1d(im.tag_v2.get(_SAMPLE_FORMAT, (1,)))}
        if bits > 16 or formats != {1}:
            raise UnsupportedMediaError(path, f"{_describe_samples(bits, formats)} samples are not supported "
                                              "(unsigned 8 and 16-bit integers are)")
        return 16 if bits > 8 else 8
    if im.format == "JPEG2000":
        boxes = _jp2_boxes(im)
        if boxes.bits > 16 or boxes.signed:
            raise UnsupportedMediaError(path, f"{boxes.bits}-bit{' signed' if boxes.signed else ''} JPEG 2000 "
                                              "samples are not supported (unsigned, up to 16 bits, are)")
        return 16 if boxes.bits > 8 else 8
    return 16 if im.mode.startswith("I;16") else 8


def _tiff_sample_bits(im: Image.Image) -> int:
    return max(int(b) for b in np.atleast_1d(im.tag_v2.get(_BITS_PER_SAMPLE, (8,))))


def _describe_samples(bits: int, sample_formats: set[int]) -> str:
    kind = {1: "", 2: " signed", 3: " floating-point"}
    return f"{bits}-bit" + "".join(sorted(kind.get(f, f" format-{f}") for f in sample_formats))


def _tiff_layout(path: Path) -> str | None:
    """What a TIFF that Pillow cannot open holds, in words (``16-bit gray with alpha``); None if not a TIFF.

    Pillow recognises a TIFF by its header but refuses sample layouts it has no decoder for (10 and 14-bit
    samples, 16-bit gray with alpha, 16-bit floats), and says only that the file is not an image. It says the same
    of a TIFF cut short whose directory was written after its pixels, as most writers place it (libtiff, OpenCV,
    Pillow's compressed TIFFs): BadInputError says that it is truncated, before a layout read from a directory that
    is not there could be blamed.
    """
    try:
        with open(path, "rb") as f:
            header = f.read(8)
            if header[:4] not in TiffImagePlugin.PREFIXES:
                return None
            if header[2] == 43:  # BigTIFF: a 16-byte header
                header += f.read(8)
            ifd = TiffImagePlugin.ImageFileDirectory_v2(header)
            size = os.fstat(f.fileno()).st_size
            # A directory: its entry count, its entries, the next one's offset (BigTIFF's wider).
            count_bytes, entry_bytes, offset_bytes = (8, 20, 8) if header[2] == 43 else (2, 12, 4)
            f.seek(ifd.next)
            counted = f.read(count_bytes)
            entries = int.from_bytes(counted, "little" if header[:2] == b"II" else "big")
            if len(counted) < count_bytes or ifd.next + count_bytes + entries * entry_bytes + offset_bytes > size:
                raise BadInputError(path, f"truncated: {size} bytes, cut before the end of its TIFF directory (at "
                                          f"byte {ifd.next})")
            f.seek(ifd.next)
            ifd.load(f)
    except BadInputError:
        raise
    except Exception:  # noqa: BLE001 - a header too damaged to describe is reported as not an image
        return None
    bits = max((int(b) for b in np.atleast_1d(ifd.get(_BITS_PER_SAMPLE, (1,)))), default=1)
    formats = {int(f) for f in np.atleast_1d(ifd.get(_SAMPLE_FORMAT, (1,)))}
    photometric = int(ifd.get(_PHOTOMETRIC, -1))
    colour, channels = _PHOTOMETRIC_NAMES.get(photometric, (f"photometric {photometric}", 1))
    extra = int(ifd.get(_SAMPLES_PER_PIXEL, 1)) - channels
    with_extra = " with alpha" if extra == 1 else f" with {extra} extra channels" if extra > 1 else ""
    return f"{_describe_samples(bits, formats)} {colour}{with_extra}"


@dataclass
class _Source:
    """What decoding yields before any maths: pixels in display orientation plus the metadata to carry."""

    photo: Photo
    pixels: np.ndarray
    gray_lut: np.ndarray | None  # L per gray code for gray pixels; None for RGB pixels
    space: RgbSpace | None = None  # RGB pixels' profile where it is not sRGB (worker.media.icc)


def _decode_page(path: Path, im: Image.Image, page: int, pages: int) -> _Source:
    """A TIFF document's page ``page`` (from 0) of ``pages`` decoded; what is wrong with it said of that page."""
    try:
        with _decode_errors(path):
            tiff.seek(im, page)
            return _decode(path, im)
    except (BadInputError, StorageError) as exc:
        raise type(exc)(path, f"page {page + 1} of {pages}: {exc.reason}") from exc


def _decode(path: Path, im: Image.Image) -> _Source:
    """The picture ``im`` is on, decoded."""
    # Camera JPEGs with an embedded preview open as MPO (Multi-Picture): the first picture is the photo.
    fmt, mode = ("JPEG" if im.format == "MPO" else im.format or ""), im.mode
    if fmt not in FORMAT_EXTENSIONS and fmt not in READ_ONLY_FORMATS.values():
        raise UnsupportedMediaError(path, f"{fmt or 'unknown'} images are not supported ({FORMAT_NAMES})")
    bits = _source_bit_depth(path, im)
    sixteen_bit_colour = bits == 16 and mode in ("RGB", "RGBA", "RGBX", "LA")
    if fmt == "JPEG2000" and sixteen_bit_colour and mode == "LA":  # Pillow cuts it to 8 bits, OpenCV reads none
        raise UnsupportedMediaError(path, f"a JPEG 2000 image of {_jp2_boxes(im).bits}-bit gray with alpha, "
                                          "which Tinct cannot read; save it without its alpha, or as a 16-bit PNG")
    # Pillow turns a TIFF upright as it decodes it and drops its orientation tag: the DPI below needs the tag.
    tiff_orientation = int(im.tag_v2.get(_ORIENTATION, 1) or 1) if fmt == "TIFF" else 1
    if not sixteen_bit_colour:
        im.load()  # the full decode: truncated or corrupt data fails here, not later
    info = dict(im.info)
    icc = info.get("icc_profile") or None
    icc_space = _icc_colour_space(icc)
    # A PNG's gAMA and cHRM chunks count only where it has neither an ICC profile nor an sRGB chunk, as in browsers.
    declared = png_declared_space(info.get("gamma"), info.get("chromaticity")) if (
        fmt == "PNG" and icc is None and "srgb" not in info) else None
    try:
        exif = im.getexif()  # (for a PNG with EXIF after the pixels, this decodes them: truncation raises OSError)
        orientation = int(exif.get(_ORIENTATION, 1) or 1)
        tags = _exif_dict(exif)
        # A camera set to Adobe RGB says so in EXIF alone; the result is sRGB, and its EXIF will say that instead.
        dcf_adobe_rgb = icc is None and mode in ("RGB", "RGBA") and _says_adobe_rgb(tags)
        portable_exif = _portable_exif(tags, declare_srgb=dcf_adobe_rgb)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged EXIF block must not cost the photo itself
        logger.warning("%s: unreadable EXIF dropped (%s: %s)", path, type(exc).__name__, exc)
        orientation, portable_exif, dcf_adobe_rgb, tags = 1, None, False, {}

    alpha: np.ndarray | None = None
    gray_lut: np.ndarray | None = None
    if sixteen_bit_colour:
        # Pillow would hand us these 16-bit samples cut to 8 bits; OpenCV keeps them (and decodes fully).
        pixels, alpha = _decode_16bit_multichannel(path, im, orientation)
        if has_lookup_tables(icc):
            pixels, icc = _through_16bit_lookup_tables(path, pixels, icc), srgb_icc_profile()
        if icc_space == "GRAY" and _is_neutral(pixels):
            # 16-bit gray with alpha, which Pillow and OpenCV both hand over as RGBA: its gray profile still applies.
            pixels, gray_lut = pixels[..., 0], _gray_profile_lightness(path, icc, _gray_levels(im, bits))
            icc = srgb_icc_profile()
    else:
        levels = _gray_levels(im, bits)
        pixels, alpha, gray_lut, icc = _pillow_pixels(path, upright(im), mode, levels, icc, icc_space)
        if declared is not None and gray_lut is not None:  # its result is sRGB, each gray's lightness kept
            gray_lut = declared.gray_lightness(levels).astype(np.float32)
    if icc is not None and _icc_colour_space(icc) != "RGB":
        logger.debug("%s: dropping a %s ICC profile that cannot describe an RGB result", path, icc_space)
        icc = None
    dpi, unitless = _stated_resolution(im, fmt, tags)
    if (tiff_orientation if fmt == "TIFF" else orientation) in (5, 6, 7, 8):
        dpi, unitless = dpi and (dpi[1], dpi[0]), unitless and (unitless[1], unitless[0])
    photo = Photo(
        path=path, L=np.empty((0, 0), np.float32), format=fmt, mode=mode, bit_depth=bits, alpha=alpha,
        exif=portable_exif, icc_profile=icc, xmp=_reset_xmp_orientation(info.get("xmp")), dpi=dpi,
        resolution_without_unit=unitless,
        text=_source_text(im),
        encoder=_encoder_hints(im, path, (tiff_orientation if fmt == "TIFF" else orientation) in (5, 6, 7, 8)),
        resources=read_resources(im), extended_xmp=_extended_xmp(path, im, info.get("xmp")),
    )
    space = (None if gray_lut is not None else dcf_adobe_rgb_space() if dcf_adobe_rgb else declared
             or rgb_space(icc))
    return _Source(photo, pixels, gray_lut, space)


def _stated_resolution(im: Image.Image, fmt: str, exif: dict[int, Any]
                       ) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """(dots per inch, or None; a resolution stated without a unit, a pixel aspect, or None) as the file states
    them, not as Pillow guesses: it gives a TIFF without resolution tags 1 dpi, and a JPEG whose JFIF header states
    none (an aspect, as libjpeg's default) and whose EXIF has none 72 dpi, which a copy would then state. A TIFF's
    unit is inches where unstated (TIFF 6.0's default), and so is EXIF's."""
    if fmt == "TIFF":
        x, y, unit = im.tag_v2.get(_X_RESOLUTION), im.tag_v2.get(_Y_RESOLUTION), im.tag_v2.get(_RESOLUTION_UNIT)
    elif fmt == "JPEG":
        density, unit = im.info.get("jfif_density"), im.info.get("jfif_unit")
        if unit in (1, 2) and density:  # JFIF's units: 1 inches, 2 centimetres
            x, y, unit = density[0], density[1], unit + 1
        else:
            x, y, unit = exif.get(_X_RESOLUTION), exif.get(_Y_RESOLUTION), exif.get(_RESOLUTION_UNIT)
            if unit not in (None, _INCHES, _CENTIMETRES):  # EXIF's units are those two alone
                return None, None
    else:  # Pillow reads the others' as they are stated (a PNG's pHYs, a BMP's header, a JP2's boxes)
        dpi = im.info.get("dpi")
        return (float(dpi[0]), float(dpi[1])) if dpi and dpi[0] and dpi[1] else None, None
    try:
        x, y = float(x), float(y if y is not None else x)
    except (TypeError, ValueError, ZeroDivisionError):
        return None, None
    if not (x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y)):
        return None, None
    unit = _INCHES if unit is None else int(unit)
    if unit == _INCHES:
        return (x, y), None
    if unit == _CENTIMETRES:
        return (x * 2.54, y * 2.54), None
    return None, (x, y) if unit == _NO_UNIT else None


def _photo(source: _Source) -> Photo:
    """Lightness and the colour test, computed after the file is closed (they are pure maths on the pixels)."""
    photo, pixels = source.photo, source.pixels
    if source.gray_lut is not None:
        photo.L = source.gray_lut[pixels]
    elif _is_neutral(pixels):
        # A gray photo stored as RGB (common for scans): one table lookup per pixel instead of colour maths.
        top = np.iinfo(pixels.dtype).max
        levels = np.arange(top + 1) / top
        table = _gray_to_l_table(levels) if source.space is None else source.space.gray_lightness(levels)
        photo.L = table.astype(np.float32)[pixels[..., 0]]
    else:
        photo.L = _rgb_lightness(pixels, source.space)
        photo.colour_score = colour_score(pixels, source.space)
        photo.had_colour = photo.colour_score > COLOUR_THRESHOLD
    return photo


def _is_neutral(rgb: np.ndarray) -> bool:
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def _pillow_pixels(
    path: Path, im: Image.Image, mode: str, levels: np.ndarray, icc: bytes | None, icc_space: str | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, bytes | None]:
    """-> (pixels, alpha, L lookup table for gray pixels or None for RGB pixels, ICC profile of the result).

    ``levels`` is what each gray code means, 0 (black) to 1 (white): see :func:`_gray_levels`.
    """
    alpha = None
    if mode in ("1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N", "I"):
        if mode in ("LA", "La"):
            im = im.convert("LA")
            alpha = np.asarray(im.getchannel("A"))
            im = im.getchannel("L")
        pixels = np.asarray(im)
        if mode == "1":
            pixels = pixels.astype(np.uint8)
        elif len(levels) > 256:
            pixels = np.clip(pixels, 0, len(levels) - 1).astype(np.uint16)
        if icc_space == "GRAY":  # the result is RGB, and tagged sRGB
            return pixels, alpha, _gray_profile_lightness(path, icc, levels), srgb_icc_profile()
        return pixels, alpha, _gray_to_l_table(levels), icc
    if mode == "LAB":  # a CIELab TIFF, as Pillow hands it over: L in 0-255 for 0-100, a and b signed bytes
        lab = np.asarray(im)
        ab = np.ascontiguousarray(lab[..., 1:]).view(np.int8).astype(np.float32)
        if np.abs(ab).max() <= 1:  # gray (to a writer's rounding): its L channel is its lightness, exactly
            return np.ascontiguousarray(lab[..., 0]), None, np.arange(256, dtype=np.float32) * (100 / 255), \
                srgb_icc_profile()
        shown = np.concatenate([lab[..., :1].astype(np.float32) * (100 / 255), ab], axis=-1)
        return np.rint(color.lab_to_rgb_np(shown) * 255).astype(np.uint8), None, None, srgb_icc_profile()
    if mode == "CMYK":
        if icc_space == "CMYK":
            try:
                converted = ImageCms.profileToProfile(
                    im, ImageCms.ImageCmsProfile(io.BytesIO(icc)), _srgb_profile(), outputMode="RGB"
                )
                return np.asarray(converted), None, None, srgb_icc_profile()
            except (ImageCms.PyCMSError, OSError) as exc:
                logger.warning("%s: CMYK profile unusable (%s); converting without it", path, exc)
        return np.asarray(im.convert("RGB")), None, None, None
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode not in ("RGB", "RGBA", "RGBa", "RGBX", "YCbCr"):
        raise UnsupportedMediaError(path, f"pixel mode {mode} is not supported")
    if im.mode in ("RGBA", "RGBa"):
        im = im.convert("RGBA")
        rgba = np.asarray(im)
        rgb, alpha = np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
    else:
        rgb, alpha = np.asarray(im.convert("RGB")), None
    if has_lookup_tables(icc):
        return _through_lookup_tables(path, rgb, icc), alpha, None, srgb_icc_profile()
    return rgb, alpha, None, icc


def _through_lookup_tables(path: Path, rgb: np.ndarray, icc: bytes) -> np.ndarray:
    """8-bit RGB under a profile of look-up tables (a scanner calibrated on a target), as sRGB through LittleCMS,
    which applies the tables: the result is written in sRGB, under an sRGB profile. (Read as sRGB and written back
    under the scanner's profile, as before, the colours added were shown through the scanner's tables too.) Relative
    colorimetric, as a 16-bit scan's (``_through_16bit_lookup_tables``): the colours the scanner measured."""
    try:
        converted = ImageCms.profileToProfile(Image.fromarray(rgb), ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                              _srgb_profile(), outputMode="RGB",
                                              renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    except (ImageCms.PyCMSError, OSError) as exc:  # as for a CMYK profile: a damaged one costs its colours only
        logger.warning("%s: ICC profile's look-up tables unusable (%s); read as sRGB", path, exc)
        return rgb
    logger.info("%s: converted to sRGB through its profile's look-up tables; the result is sRGB", path)
    return np.asarray(converted)


def _through_16bit_lookup_tables(path: Path, rgb: np.ndarray, icc: bytes) -> np.ndarray:
    """16-bit RGB under a profile of look-up tables, as 16-bit sRGB through them
    (``worker.media.icc.lookup_table_space``: LittleCMS through Pillow converts 8-bit data only); the result is written
    in sRGB, under an sRGB profile."""
    try:
        tables = lookup_table_space(icc)
    except ValueError as exc:  # as _through_lookup_tables: a damaged profile costs its colours only
        logger.warning("%s: ICC profile's look-up tables unusable (%s); read as sRGB", path, exc)
        return rgb
    logger.info("%s: converted to sRGB through its profile's look-up tables; the result is sRGB", path)
    return np.rint(tables.to_srgb(rgb / 65535.0) * 65535.0).astype(np.uint16)


def _gray_levels(im: Image.Image, bits: int) -> np.ndarray:
    """What each code of a gray image Pillow decoded means, 0 (black) to 1 (white), indexed by code.

    Pillow hands 12-bit TIFF samples over unscaled (0-4095 in a 16-bit image), and 16-bit TIFFs that store
    white as 0 (Photometric MinIsWhite) uninverted; at 1 to 8 bits it scales and inverts them itself. JPEG 2000
    samples of fewer bits than Pillow's 8 or 16 it shifts up (12-bit white is 65520): each code means its top bits.
    """
    if im.mode == "1":
        return np.array([0.0, 1.0])
    if im.format == "JPEG2000":
        width, precision = (8 if im.mode in ("L", "LA") else 16), _jp2_boxes(im).bits
        if precision < width:
            return (np.arange(1 << width) >> (width - precision)) / ((1 << precision) - 1)
    if bits == 8 and im.mode != "I":
        return np.arange(256) / 255.0
    codes = np.arange(65536) / 65535.0
    if im.format == "TIFF":
        codes = np.minimum(np.arange(65536) / (2 ** _tiff_sample_bits(im) - 1), 1.0)
        if int(im.tag_v2.get(_PHOTOMETRIC, 1)) == _MIN_IS_WHITE:
            codes = 1.0 - codes
    return codes


def _decode_16bit_multichannel(
    path: Path, im: Image.Image, orientation: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """-> (RGB uint16 (H, W, 3), alpha uint16 (H, W) or None), upright, straight from the file with OpenCV (a
    document's later page alone, from its directory on)."""
    if im.format == "TIFF" and int(im.tag_v2.get(_PLANAR_CONFIGURATION, 1)) == 2:
        # OpenCV reads such a file's separate R, G and B planes as if they were interleaved pixels.
        raise UnsupportedMediaError(path, "16-bit colour stored as separate planes (PlanarConfiguration 2) is not "
                                          "supported; save it with interleaved pixels (Photoshop: Pixel Order "
                                          "Interleaved)")
    page = im.tell()
    if page:  # a TIFF document's later page
        decoded, pages = cv2.imreadmulti(os.fspath(path), start=page, count=1, flags=cv2.IMREAD_UNCHANGED)
        pixels = pages[0] if decoded and len(pages) == 1 else None
    else:
        pixels = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)  # TIFF: upright
    if pixels is None:
        im.load()  # let Pillow name what is wrong (usually truncation) ...
        raise BadInputError(path, "corrupt or truncated 16-bit pixel data")  # ... or say it ourselves
    if im.format == "JPEG2000" and (precision := _jp2_boxes(im).bits) < 16:
        # OpenCV hands JPEG 2000 samples over at their own precision (12-bit white is 4095): scaled to 16 bits.
        top = (1 << precision) - 1
        pixels = ((pixels.astype(np.uint32) * 65535 + top // 2) // top).astype(np.uint16)
    if pixels.shape[:2] != (im.size[1], im.size[0]):
        raise BadInputError(path, "16-bit pixel data does not match the image header")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    channels = pixels.shape[2]
    alpha = pixels[..., -1] if channels in (2, 4) else None
    if channels <= 2:
        rgb = np.repeat(pixels[..., :1], 3, axis=2)
    else:
        rgb = pixels[..., 2::-1]  # OpenCV's BGR -> RGB
    if im.format != "TIFF":  # OpenCV's TIFF reader turns the picture upright itself; its PNG reader does not
        rgb = _orient(rgb, orientation)
        alpha = None if alpha is None else _orient(alpha, orientation)
    return np.ascontiguousarray(rgb), None if alpha is None else np.ascontiguousarray(alpha)


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """The numpy twin of ``ImageOps.exif_transpose`` for arrays Pillow cannot hold (16-bit RGB)."""
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(pixels, -1)
    if orientation == 7:
        return pixels[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(pixels, 1)
    return pixels


def _gray_to_l_table(levels: np.ndarray) -> np.ndarray:
    """L for every possible gray code at once: gray images need one table lookup per pixel, not maths."""
    return color.gray_to_l(torch.from_numpy(np.asarray(levels, dtype=np.float64))).numpy().astype(np.float32)


def _rgb_lightness(rgb: np.ndarray, space: RgbSpace | None) -> np.ndarray:
    """L of RGB pixels, sRGB or in ``space``."""
    scale = 65535.0 if rgb.dtype == np.uint16 else 255.0
    height, width = rgb.shape[:2]
    L = np.empty((height, width), dtype=np.float32)
    for rows in _row_chunks(height, width):
        if space is None:
            unit = torch.from_numpy(rgb[rows].astype(np.float32) / scale)
            L[rows] = color.rgb_to_l(unit.movedim(-1, 0))[0].numpy()
        else:
            L[rows] = space.lightness(rgb[rows])
    return L


def _row_chunks(height: int, width: int) -> Iterator[slice]:
    """Row slices of about _L_CHUNK_PIXELS pixels: full-resolution maths never needs float64 copies of a 200 MP
    photo."""
    rows = max(1, _L_CHUNK_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        yield slice(top, top + rows)


def colour_score(rgb: np.ndarray, space: RgbSpace | None = None, percentile: float = 90.0) -> float:
    """How far a photo is from monochrome, in Lab ab units (see ``COLOUR_THRESHOLD`` for the scale); ``space`` is
    the pixels' RGB profile where it is not sRGB.

    The chroma of each pixel is compared with the median chroma of all pixels of similar lightness, so a tint
    that depends only on density (sepia and other toning, a colour cast) scores near zero; the score is the 90th
    ``percentile`` of that difference, so a small coloured stamp or label on a monochrome print does not count.
    """
    scale = 65535.0 if rgb.dtype == np.uint16 else 255.0
    height, width = rgb.shape[:2]
    shrink = COLOUR_PROBE_SIDE / max(height, width)
    small = np.ascontiguousarray(rgb)
    if shrink < 1:
        size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
        small = cv2.resize(small, size, interpolation=cv2.INTER_AREA)
    shown = small.astype(np.float64) / scale if space is None else space.to_srgb(small)
    lab = color.rgb_to_lab_np(shown).reshape(-1, 3)
    bands = np.clip((lab[:, 0] / 5.0).astype(np.int64), 0, 19)  # 20 lightness bands of 5 L units
    typical = np.zeros((20, 2))
    for band in np.unique(bands):
        typical[band] = np.median(lab[bands == band, 1:], axis=0)
    return float(np.percentile(np.linalg.norm(lab[:, 1:] - typical[bands], axis=1), percentile))


# --- colour profiles -------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@lru_cache(maxsize=1)
def srgb_icc_profile() -> bytes:
    """An sRGB ICC profile (LittleCMS's), embedded in results that were converted to sRGB from gray or CMYK."""
    return _srgb_profile().tobytes()


def _icc_colour_space(icc: bytes | None) -> str | None:
    """The data colour space from an ICC header (bytes 16-19): 'RGB', 'GRAY', 'CMYK', ..."""
    if not icc or len(icc) < 20:
        return None
    return icc[16:20].decode("ascii", "replace").strip()


def _gray_profile_lightness(path: Path, icc: bytes | None, levels: np.ndarray) -> np.ndarray:
    """L of each gray code (``levels``, fractions) under a gray ICC profile: exactly from its tone curve
    (``worker.media.icc.gray_luminance``), or through LittleCMS for a profile of another kind."""
    curve = gray_luminance(icc)
    if curve is not None:
        luminance = torch.from_numpy(sample_curve(curve, levels))
        return color.luminance_to_l(luminance).numpy().astype(np.float32)
    return _gray_to_l_table(_through_gray_profile(path, icc, levels))


def _through_gray_profile(path: Path, icc: bytes | None, levels: np.ndarray) -> np.ndarray:
    """Map gray codes (as fractions) through a gray ICC profile to the sRGB gray that looks the same.

    LittleCMS (through Pillow) converts 8-bit data, so the 256 codes are converted exactly and finer 16-bit
    levels are interpolated between them (tone curves are smooth; the interpolation stays monotonic).
    """
    try:
        ramp = Image.frombytes("L", (256, 1), bytes(range(256)))
        srgb = ImageCms.profileToProfile(
            ramp, ImageCms.ImageCmsProfile(io.BytesIO(icc)), _srgb_profile(), outputMode="RGB",
            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
        )
    except (ImageCms.PyCMSError, OSError, TypeError) as exc:
        logger.warning("%s: gray ICC profile unusable (%s); reading values as sRGB", path, exc)
        return levels
    table = np.asarray(srgb, dtype=np.float64)[0].mean(axis=1) / 255.0
    return np.interp(levels * 255.0, np.arange(256), table)


# --- metadata --------------------------------------------------------------------------------------------------


def _encoder_hints(im: Image.Image, path: Path, turned: bool) -> dict[str, Any]:
    """How the source was coded, for a copy in its format to be coded alike; ``turned``: its orientation swaps
    width and height."""
    if im.format in ("JPEG", "MPO"):
        return {**_jpeg_coding(im, turned), "progressive": bool(im.info.get("progressive"))}
    if im.format == "TIFF":  # its strips or tiles, compression and reduced pages (``worker.media.tiff``)
        coding = tiff.source_coding(im, turned)
        if (jpeg := tiff.first_jpeg(im, path)) is not None:  # a JPEG-compressed TIFF: its tables and sampling
            with jpeg:
                coding.update(_jpeg_coding(jpeg, turned))
        return coding
    if im.format == "WEBP":
        return {"lossless": _webp_is_lossless(path)}
    if im.format == "JPEG2000":  # a lossless master, or an access copy at its rate
        boxes = _jp2_boxes(im)
        return {"lossless": boxes.reversible is not False, "compression": boxes.compression, "coding": boxes.coding}
    return {}


def _jpeg_coding(jpeg: Image.Image, turned: bool) -> dict[str, Any]:
    """A JPEG's chroma subsampling (Pillow's name; None for gray) and the tables its copy is coded with."""
    sampling = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}.get(JpegImagePlugin.get_sampling(jpeg))
    return {"subsampling": sampling, "qtables": _copy_quantization(jpeg, turned)}


def _copy_quantization(im: Image.Image, turned: bool) -> list[list[int]] | None:
    """The quantization tables a JPEG source's copy is coded with: its own lightness table, so an access copy
    stays as small as it was and a master as fine (ImageMagick keeps a JPEG's quality too), and its chroma table,
    or for a gray source libjpeg's at the quality nearest its lightness table. Requantizing the lightness with the
    table it was quantized with costs it little more. None for a CMYK JPEG, whose tables are not for Y'CbCr."""
    tables = getattr(im, "quantization", None) or {}
    if im.mode not in ("L", "RGB") or 0 not in tables:
        return None
    luma = list(tables[0])
    chroma = list(tables[1]) if im.mode == "RGB" and 1 in tables else _ijg_table(_IJG_CHROMA_TABLE,
                                                                                   ijg_quality(luma))
    if turned:  # the copy's 8x8 blocks are the source's turned: so are their frequencies
        luma, chroma = _transposed_table(luma), _transposed_table(chroma)
    return [luma, chroma]


def ijg_quality(luma_table: list[int]) -> int:
    """The libjpeg quality (1-100) whose lightness table is nearest ``luma_table`` (natural order): a camera's or
    Photoshop's table is not libjpeg's, but is near one of its qualities."""
    return min(range(1, 101), key=lambda quality: sum(
        abs(ours - theirs) for ours, theirs in zip(_ijg_table(_IJG_LUMA_TABLE, quality), luma_table, strict=True)))


def _ijg_table(base: tuple[int, ...], quality: int) -> list[int]:
    """libjpeg's ``jpeg_quality_scaling``, limited to baseline's 8-bit entries."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [min(255, max(1, (entry * scale + 50) // 100)) for entry in base]


def _transposed_table(table: list[int]) -> list[int]:
    return [table[column * 8 + row] for row in range(8) for column in range(8)]


def _webp_is_lossless(path: Path) -> bool:
    """A WebP file is lossless when its image chunk is VP8L (lossy ones use VP8)."""
    with open(path, "rb") as f:
        header = f.read(12)
        while header[:4] == b"RIFF" and (chunk := f.read(8)) and len(chunk) == 8:
            kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if kind in (b"VP8L", b"VP8 "):
                return kind == b"VP8L"
            f.seek(size + (size & 1), os.SEEK_CUR)
    return False


def _source_text(im: Image.Image) -> dict[str, str]:
    """A PNG's text chunks, or a JPEG's or GIF's comment (a JPEG's COM marker, where some scanning workflows kept
    the caption; a GIF's comment extension) as PNG's "Comment" keyword: what a PNG or JPEG copy carries."""
    if im.format in ("JPEG", "MPO", "GIF"):
        comment = im.info.get("comment")
        if isinstance(comment, bytes):
            try:
                comment = comment.decode("utf-8")
            except UnicodeDecodeError:
                comment = comment.decode("latin-1")
        comment = (comment or "").rstrip("\x00")
        return {"Comment": comment} if comment.strip() else {}
    if im.format != "PNG":
        return {}
    text = getattr(im, "text", {}) or {}
    return {
        key: str(value) for key, value in text.items()
        if not key.startswith("Raw profile type") and key != "XML:com.adobe.xmp"
    }


def _copy_xmp(xmp: bytes, path: Path, size: tuple[int, int], channels: int, icc: bytes | None, description: str,
              software: str) -> bytes:
    """The source's XMP for its copy at ``path``: what it says of the source file's pixels, which a catalogue
    reads, made the copy's (a gray scan's XMP had called its colour copy Grayscale, in its own gray profile and
    format), and the copy's own document and instance IDs, derived from the source's (``worker.media.xmp``). Only
    properties it has are changed; a list (``tiff:BitsPerSample``) is left as it is."""
    width, height = size
    return xmp_lineage.derived_copy(_xmp_with(xmp, {
        "photoshop:ColorMode": "3",  # RGB (1 is Grayscale)
        "photoshop:ICCProfile": _profile_name(icc) if icc else None,
        "tiff:PhotometricInterpretation": "2",  # RGB
        "tiff:SamplesPerPixel": str(channels),
        "tiff:ImageWidth": str(width), "tiff:ImageLength": str(height),
        "exif:PixelXDimension": str(width), "exif:PixelYDimension": str(height),
        "dc:format": content_type(path.name),
    }), description, software)


def _xmp_with(xmp: bytes, values: dict[str, str | None]) -> bytes:
    """``xmp`` with each simple property named (by its usual prefix) set to its value, or removed where the value is
    None, in either of XMP's forms: an attribute of a description, or an element of its own."""
    for name, value in values.items():
        key = re.escape(name.encode())
        attribute = re.compile(rb"(\s" + key + rb"\s*=\s*)(\"[^\"]*\"|'[^']*')")
        element = re.compile(rb"(<" + key + rb">)[^<]*(</" + key + rb">)")
        if value is None:
            xmp = element.sub(b"", attribute.sub(b"", xmp))
            continue
        text = xml_escape(value, {'"': "&quot;"}).encode("utf-8")
        xmp = attribute.sub(lambda m, text=text: m.group(1) + m.group(2)[:1] + text + m.group(2)[:1], xmp)
        xmp = element.sub(lambda m, text=text: m.group(1) + text + m.group(2), xmp)
    return xmp


@lru_cache(maxsize=8)
def _profile_name(icc: bytes) -> str | None:
    """An ICC profile's description, as Photoshop names the profile in XMP."""
    try:
        return ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip() or None
    except (ImageCms.PyCMSError, OSError):
        return None


def _extended_xmp(path: Path, im: Image.Image, main: bytes | str | None) -> bytes | None:
    """A JPEG's extended XMP (XMP part 3): the packet named by its main packet's ``xmpNote:HasExtendedXMP`` (the
    packet's MD5), carried in APP1 segments each giving the packet's length and its piece's offset. exiftool and
    Photoshop write one when a photo's XMP passes 64 KB (long descriptions, Photoshop's document ancestors); its
    copies had lost it without a word. None where there is none, or it is not whole."""
    if im.format not in ("JPEG", "MPO") or not main:
        return None
    named = _HAS_EXTENDED_XMP.search(main.encode() if isinstance(main, str) else main)
    if named is None:
        return None
    guid = (named.group(1) or named.group(2)).upper()
    head = len(_EXTENDED_XMP_HEADER)
    pieces, total = {}, None
    for marker, data in getattr(im, "applist", []):
        if marker != "APP1" or not data.startswith(_EXTENDED_XMP_HEADER) or len(data) < head + 40:
            continue
        if data[head:head + 32].upper() != guid:
            continue
        total, offset = struct.unpack_from(">II", data, head + 32)
        pieces[offset] = data[head + 40:]
    if total is None:
        return None
    covered = sum(len(piece) for piece in pieces.values())
    if covered != total:  # (checked before the packet is made: a damaged length could ask for gigabytes)
        logger.warning("%s: its extended XMP is not whole (%d of %d bytes): left out", path, covered, total)
        return None
    packet = bytearray(total)
    for offset, piece in pieces.items():
        packet[offset:offset + len(piece)] = piece
    return bytes(packet[:total])


def _extended_xmp_segments(packet: bytes, main: bytes) -> bytes:
    """``packet`` as the APP1 segments of a JPEG's extended XMP, under the GUID ``main`` names it by."""
    named = _HAS_EXTENDED_XMP.search(main)
    guid = (named.group(1) or named.group(2)).upper() if named else \
        hashlib.md5(packet).hexdigest().upper().encode()  # noqa: S324 - XMP names the packet by its MD5
    step = _JPEG_MARKER_BYTES - len(_EXTENDED_XMP_HEADER) - 40
    segments = []
    for offset in range(0, len(packet), step):
        payload = _EXTENDED_XMP_HEADER + guid + struct.pack(">II", len(packet), offset) + packet[offset:offset + step]
        segments.append(b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload)
    return b"".join(segments)


def _reset_xmp_orientation(xmp: bytes | str | None) -> bytes | None:
    if not xmp:
        return None
    data = xmp.encode("utf-8") if isinstance(xmp, str) else bytes(xmp)
    return _XMP_ORIENTATION.sub(lambda m: (m.group(1) + b'1"') if m.group(1) else m.group(2) + b"1" + m.group(3), data)


def _portable_exif(exif: dict[int, Any], declare_srgb: bool = False) -> bytes | None:
    """EXIF (as :func:`_exif_dict` gives it) fit for another file: orientation 1 (pixels are already upright), no
    TIFF layout tags, no thumbnail; ``declare_srgb`` turns a DCF Adobe RGB declaration (see :func:`_says_adobe_rgb`)
    into an sRGB one."""
    tags = {tag: value for tag, value in exif.items() if tag not in _LAYOUT_TAGS}
    if _ORIENTATION in tags:
        tags[_ORIENTATION] = 1
    if declare_srgb:
        camera = tags[_EXIF_IFD]
        camera[_COLOR_SPACE] = 1
        camera[_INTEROP_IFD] = {**camera.get(_INTEROP_IFD, {}), _INTEROP_INDEX: "R98"}
    return _exif_bytes(tags) if tags else None


def _says_adobe_rgb(exif: dict[int, Any]) -> bool:
    """Whether EXIF (as :func:`_exif_dict` gives it) declares Adobe RGB the way cameras do, with no ICC profile:
    DCF's "option file", ColorSpace uncalibrated and interoperability index R03. Photoshop, Lightroom and most
    viewers honour it."""
    camera = exif.get(_EXIF_IFD, {})
    interop = camera.get(_INTEROP_IFD)
    index = interop.get(_INTEROP_INDEX) if isinstance(interop, dict) else None
    if isinstance(index, bytes):
        index = index.decode("ascii", "replace")
    return camera.get(_COLOR_SPACE) == 0xFFFF and isinstance(index, str) and index.strip("\0 ") == "R03"


def _exif_dict(exif: Image.Exif) -> dict[int, Any]:
    """EXIF as a plain dict: EXIF/GPS sub-directories as nested dicts, non-ASCII text as its original bytes.

    Pillow reads ASCII tags as latin-1 and writes str values back with ``encode("ascii", "replace")``; handing
    it the original bytes instead keeps non-English captions and names intact through the round trip.
    """
    tags: dict[int, Any] = {}
    for tag, value in exif.items():
        if tag in (_EXIF_IFD, _GPS_IFD):
            try:
                tags[tag] = _raw_text(_sub_ifd(exif, tag))
            except Exception as exc:  # noqa: BLE001 - a broken sub-directory is dropped, the rest is kept
                logger.debug("dropping unreadable EXIF sub-directory %#x: %s", tag, exc)
            continue
        tags[tag] = _raw_text(value)
    return tags


def _raw_text(value: Any) -> Any:
    if isinstance(value, str) and not value.isascii():
        return value.encode("latin-1", "replace")
    if isinstance(value, dict):
        return {tag: _raw_text(v) for tag, v in value.items()}
    return value


def _sub_ifd(exif: Image.Exif, tag: int) -> dict[int, Any]:
    value = exif.get(tag)
    if isinstance(value, dict):
        return dict(value)
    values = dict(exif.get_ifd(tag))
    if tag == _EXIF_IFD and _INTEROP_IFD in values:
        nested = dict(exif.get_ifd(_INTEROP_IFD))
        if nested:
            values[_INTEROP_IFD] = nested
        else:
            del values[_INTEROP_IFD]
    return values


def _exif_bytes(tags: dict[int, Any]) -> bytes:
    exif = Image.Exif()
    for tag, value in tags.items():
        exif[tag] = value
    return exif.tobytes()


def described(existing: Any, text: str) -> str:
    """An archive's caption is kept; the provenance sentence is appended in brackets (replacing an older one). A
    description that is its writer's record of the source's pixels (``records_pixels``) is not kept: it no longer
    says what the copy's pixels are, and text after it would break it for its readers."""
    if isinstance(existing, bytes):
        existing = existing.decode("utf-8", "replace")
    caption = _BRACKETED_PROVENANCE.sub("", str(existing or "")).strip().rstrip("\x00")
    if not caption or _PROVENANCE.fullmatch(caption) or records_pixels(caption):
        return text
    return f"{caption} [{text}]"


def records_pixels(description: str) -> bool:
    """Whether a TIFF's ImageDescription is the record its writer keeps of the array it stored, not a caption:
    tifffile's (JSON with the array's shape, which it writes into every TIFF it makes unless told not to, and by
    which it reads the pixels back), ImageJ's hyperstack header, OME-XML. Of a gray scan, each says one channel; a
    colour copy has three, and tifffile refuses to read a copy whose JSON has text after it."""
    if description.startswith("ImageJ=") or (description.startswith("<?xml") and "<OME" in description[:512]):
        return True
    if not description.startswith("{"):
        return False
    try:
        record = json.loads(description)
    except ValueError:
        return False
    return isinstance(record, dict) and "shape" in record


def _tagged_exif(like: Photo, description: str, software: str, fmt: str) -> dict[int, Any]:
    """The source's portable EXIF plus Software and the provenance sentence in ImageDescription, for a copy in
    ``fmt``."""
    tags: dict[int, Any] = {}
    if like.exif:
        exif = Image.Exif()
        exif.load(like.exif)
        tags = _exif_dict(exif)
    full = described(_text(tags.get(_IMAGE_DESCRIPTION)), description)
    tags[_SOFTWARE] = software
    tags[_IMAGE_DESCRIPTION] = full if full.isascii() else full.encode("utf-8")
    if like.dpi:  # the copy's resolution, which EXIF's first directory must state (the source file's are dropped)
        tags[_X_RESOLUTION], tags[_Y_RESOLUTION], tags[_RESOLUTION_UNIT] = like.dpi[0], like.dpi[1], _INCHES
    elif like.resolution_without_unit and fmt == "TIFF":  # (EXIF's ResolutionUnit has no such value)
        (tags[_X_RESOLUTION], tags[_Y_RESOLUTION]), tags[_RESOLUTION_UNIT] = like.resolution_without_unit, _NO_UNIT
    if isinstance(tags.get(_EXIF_IFD), dict):
        # The copy's size, upright (a turned source's was the other way), which EXIF requires of compressed pictures
        # and does not allow in a TIFF.
        camera = {tag: value for tag, value in tags[_EXIF_IFD].items()
                  if tag not in (_PIXEL_X_DIMENSION, _PIXEL_Y_DIMENSION)}
        if fmt != "TIFF":
            camera[_PIXEL_X_DIMENSION], camera[_PIXEL_Y_DIMENSION] = like.size
        tags[_EXIF_IFD] = camera
    return tags


def read_provenance(path: str | os.PathLike) -> Provenance | None:
    """The Tinct provenance tag of a file (from EXIF, TIFF tags or PNG text), or None for an untagged file."""
    with _own_pixel_limit(), _decode_errors(Path(path)), open_image(path) as im:
        exif = im.getexif()
        texts = getattr(im, "text", {}) if im.format == "PNG" else {}
        comment = im.info.get("comment") if im.format == "JPEG2000" else None  # a bare codestream's only words
        software = str(texts.get("Software") or _text(exif.get(_SOFTWARE)))
        description = str(texts.get("Description") or _text(exif.get(_IMAGE_DESCRIPTION)) or _text(comment))
    match = _PROVENANCE.search(description)
    if not match and not software.startswith("Tinct"):
        return None
    return Provenance(
        software=software, description=description,
        version=match.group("version") if match else None, model=match.group("model").strip() if match else None,
        guidance=match.group("guidance") if match else None,
    )


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\x00")
    return "" if value is None else str(value)


# --- writing ---------------------------------------------------------------------------------------------------


def write_photo(
    path: str | os.PathLike,
    rgb: np.ndarray,
    like: Photo,
    provenance: str,
    alpha: np.ndarray | None = None,
    guidance: str = "",
) -> Path:
    """Encode a colorized result next to its source's metadata and replace ``path`` atomically.

    ``rgb`` is float (H, W, 3) sRGB in [0, 1] (the colorizer's output for ``like``); ``provenance`` is the
    model's label, recorded as "colorized by Tinct <version>, model <label>" in ImageDescription (after any
    caption the source had) and PNG Description text, with EXIF Software "Tinct <version>". The format follows
    the extension of ``path`` (the source's format for an unknown extension). 16-bit sources give 16-bit PNG,
    TIFF and JPEG 2000 results. ``alpha`` (uint8, uint16 or float in [0, 1], e.g. ``like.alpha``) is stored where
    the format has an alpha channel (PNG, TIFF, WebP, JPEG 2000); JPEG and BMP results are composited onto white
    instead, which is how the transparent photo looks on a page. BMP has no place for metadata: BMP results keep
    their DPI only.
    ``guidance`` (e.g. "3 colour hints") is added to the provenance sentence. A multi-page document's copy is
    :func:`write_document`'s.
    """
    path = Path(path)
    fmt = format_for_path(path) or like.format
    if like.page_count > 1:
        raise ValueError(f"{like.path}: a {like.page_count}-page document is written by write_document")
    codestream = fmt == "JPEG2000" and path.suffix.lower() in CODESTREAM_SUFFIXES
    pixels = _result_pixels(rgb, like, alpha, fmt, codestream)
    software, description = f"Tinct {tinct_version()}", provenance_text(provenance, guidance)
    encode = _encoder_for(path, fmt, pixels, like, description, software, codestream)
    if like.resources and (fmt in ("WEBP", "BMP") or codestream):
        _left_out(path, "IPTC (caption, credit, keywords)",
                  f"a {'JPEG 2000 codestream' if codestream else fmt} file has no place for it")
    if fmt == like.format == "TIFF" and like.encoder.get("sub_images"):
        _left_out(path, f"pyramid of {like.encoder['sub_images']} sub-images (SubIFDs, where libvips --subifd and "
                        "OME-TIFF keep reduced-resolution levels)", "a copy's reduced-resolution levels are pages")
    if like.extended_xmp and fmt != "JPEG":
        _left_out(path, f"extended XMP ({len(like.extended_xmp) // 1024} KB)",
                  "it continues a JPEG's XMP over further segments, which only a JPEG copy keeps")
    try:
        with atomic_output(path) as f:
            encode(f)
    except OSError as exc:
        if exc.errno in _TRANSIENT_ERRNOS:
            raise StorageError(path, f"cannot write: {exc.strerror or exc}") from exc
        raise
    return path


def lost_pages(photo: Photo, output: str | os.PathLike) -> str | None:
    """Why a copy of ``photo`` at ``output`` would lose pages (a multi-page document, copied to a format of one
    picture), or None: asked before colouring, so that a document is refused whole rather than cut to a page."""
    fmt = format_for_path(output) or photo.format
    if photo.page_count == 1 or fmt == "TIFF":
        return None
    return (f"a {photo.page_count}-page TIFF document, whose pages only a TIFF copy keeps: not copied as "
            f"{PurePath(output).name}")


class InColourThroughout(Exception):
    """A document found in colour on every page as it was written (``write_document``): its copy is not made."""

    def __init__(self, scores: Sequence[float]) -> None:
        self.description = (f"a {len(scores)}-page document in colour on every page (colour scores "
                            f"{', '.join(f'{score:.1f}' for score in scores)})")
        super().__init__(self.description)


def write_document(
    path: str | os.PathLike, pages: Iterable[tuple[np.ndarray | None, Photo]], provenance: str,
    page_guidance: Mapping[int, str] = MappingProxyType({}),
) -> list[int]:
    """A multi-page TIFF document's copy at ``path``, written a page at a time as ``pages`` gives them (the colour
    result for each page, with the page as :func:`read_pages` decoded it; None for a page already in colour, kept as
    it is): no more than a page or two lies in memory, however long the document. Every page keeps its own size,
    orientation, depth, coding and metadata, and is numbered as a page of the document; its description says what
    guided its colour besides the model (``page_guidance``, by page number from 1, read as each page is written, so
    ``pages`` may fill it as it goes: ``3 colour hints``). Returns the numbers (from 1) of the pages kept in their
    own colour. Raises :class:`InColourThroughout` where every page was, and the copy is not made; as
    :func:`write_photo`, the copy appears whole or not at all."""
    path = Path(path)
    software = f"Tinct {tinct_version()}"
    kept: list[int] = []
    scores: list[float] = []
    with atomic_output(path) as f:
        writer = None
        for number, (rgb, page) in enumerate(pages):
            if writer is None:  # a BigTIFF where its pages' samples, uncoded, could pass classic TIFF's 4 GB
                writer = tiff.Writer(f, big=_document_bytes(page) + tiff.DIRECTORY_ROOM >= tiff.BIGTIFF_FROM)
            if rgb is None:
                kept.append(number + 1)
            scores.append(page.colour_score)
            pixels = _result_pixels(rgb, page, page.alpha, "TIFF")
            description = provenance_text(provenance, page_guidance.get(number + 1, ""))
            writer.add_page(_tiff_page(path, pixels, page, description, software), JPEG_QUALITY, number,
                            page.page_count)
        if len(kept) == len(scores):
            raise InColourThroughout(scores)
    return kept


def _document_bytes(page: Photo) -> int:
    """An upper bound of a document's copy's pixel bytes: its pages' pixels uncoded, as 16-bit RGBA, with a tenth
    more for coding that expands them."""
    return int(sum(width * height for width, height in page.document_sizes or [page.size]) * 8 * 1.1)


def _result_pixels(rgb: np.ndarray | None, like: Photo, alpha: np.ndarray | None, fmt: str,
                   codestream: bool = False) -> np.ndarray:
    """A colour result as the samples its copy in ``fmt`` stores: in the profile the copy is tagged with, its alpha
    beside it or composited onto white where the format has none, at 8 or 16 bits as the source was. None: a
    document's page kept in its own colour (a TIFF's), its pixels as they were."""
    if rgb is None:
        if like.kept_colour is None:
            raise ValueError(f"{like.path}: no colour result for a page that has no colour of its own")
        kept = like.kept_colour
        return kept if alpha is None else np.concatenate((kept, _quantize(_unit_alpha(alpha), kept.itemsize * 8)[
            ..., None]), axis=2)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    if alpha is not None:
        alpha = _unit_alpha(alpha)
        if alpha.shape != rgb.shape[:2]:
            raise ValueError(f"alpha shape {alpha.shape} does not match the image {rgb.shape[:2]}")
        if fmt not in ALPHA_FORMATS:
            rgb = rgb * alpha[..., None] + (1.0 - alpha[..., None])
            alpha = None
    # BMP results and bare codestreams carry no profile: they stay sRGB.
    space = rgb_space(like.icc_profile) if fmt != "BMP" and not codestream else None
    if space is not None:
        rgb = _to_space(rgb, space)
    bits = 16 if like.bit_depth == 16 and fmt in SIXTEEN_BIT_FORMATS else 8
    return _quantize(rgb if alpha is None else np.concatenate((rgb, alpha[..., None]), axis=2), bits)


def _to_space(rgb: np.ndarray, space: RgbSpace) -> np.ndarray:
    """sRGB in [0, 1] -> the same colours in ``space``'s codes, the profile the result is tagged with."""
    converted = np.empty(rgb.shape, dtype=np.float32)
    for rows in _row_chunks(*rgb.shape[:2]):
        converted[rows] = space.from_srgb(rgb[rows])
    return converted


def _unit_alpha(alpha: np.ndarray) -> np.ndarray:
    alpha = np.asarray(alpha)
    if alpha.dtype == np.uint8:
        return alpha.astype(np.float32) / 255.0
    if alpha.dtype == np.uint16:
        return alpha.astype(np.float32) / 65535.0
    return np.clip(alpha.astype(np.float32), 0.0, 1.0)


def _quantize(values: np.ndarray, bits: int) -> np.ndarray:
    top = 65535.0 if bits == 16 else 255.0
    scaled = np.clip(values, 0.0, 1.0) * top + 0.5
    return scaled.astype(np.uint16 if bits == 16 else np.uint8)


def _left_out(path: Path, what: str, why: str) -> None:
    logger.warning("%s: its source's %s is left out: %s", path, what, why)


def _encoder_for(
    path: Path, fmt: str, pixels: np.ndarray, like: Photo, description: str, software: str,
    codestream: bool = False,
) -> Callable[[BinaryIO], None]:
    """How to write ``pixels`` (``_result_pixels``) as a copy of ``like`` in ``fmt``."""
    hints = like.encoder if fmt == like.format else {}
    like, exif = _copy_metadata(path, fmt, pixels, like, description, software, codestream)
    texts = {**like.text, "Software": software, "Description": described(like.text.get("Description"), description)}
    if like.resources:
        texts[iptc.PNG_TEXT_KEY] = iptc.png_text(like.resources)
    if pixels.dtype == np.uint16 and fmt == "PNG":
        return lambda f: f.write(_png16(pixels, _exif_bytes(exif), like, texts))
    if fmt == "JPEG2000" and codestream:
        return lambda f: f.write(bare_codestream(_jp2(pixels, hints), comment=description))
    if fmt == "JPEG2000":
        return lambda f: f.write(with_jp2_metadata(_jp2(pixels, hints), icc=like.icc_profile, exif=_exif_bytes(exif),
                                                   xmp=like.xmp, dpi=like.dpi, iptc=iptc.iim(like.resources)))
    if fmt == "TIFF":
        page = tiff.Page(pixels, lambda header: _tiff_directory(exif, like, header), like.dpi, hints)
        return lambda f: tiff.write(f, page, JPEG_QUALITY)
    image = Image.fromarray(pixels, "RGBA" if pixels.shape[2] == 4 else "RGB")
    options: dict[str, Any] = {}
    if fmt != "BMP" and like.icc_profile:
        options["icc_profile"] = like.icc_profile
    if like.dpi and fmt != "WEBP":
        options["dpi"] = like.dpi
    if fmt == "JPEG":
        # Pillow scales given tables by the quality, as libjpeg does: the source's tables go without one.
        coding = {"qtables": hints["qtables"]} if hints.get("qtables") else {"quality": JPEG_QUALITY}
        options.update(
            coding, subsampling=hints.get("subsampling") or "4:2:0",
            progressive=bool(hints.get("progressive")),
            # libjpeg centres its chroma samples: EXIF's YCbCrPositioning 1, which a JPEG's EXIF must state
            exif=_jpeg_exif({**exif, _YCBCR_POSITIONING: 1}, path, description),
        )
        if like.xmp and len(like.xmp) < _JPEG_MARKER_BYTES - 64:
            options["xmp"] = like.xmp
        elif like.xmp:  # (Adobe's extended XMP would split it, moving properties out of the main packet)
            _left_out(path, f"XMP ({len(like.xmp) // 1024} KB)", "over the 64 KB a JPEG segment holds")
        extra = b""
        if like.resources and (segment := iptc.jpeg_segment(like.resources)):
            extra += segment
        elif like.resources:
            _left_out(path, "IPTC (caption, credit, keywords)", "over the 64 KB a JPEG segment holds")
        if like.extended_xmp and "xmp" in options:
            extra += _extended_xmp_segments(like.extended_xmp, like.xmp)
        if extra:
            options["extra"] = extra
        if like.text.get("Comment"):
            options["comment"] = like.text["Comment"]
    elif fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        for key, value in texts.items():
            info.add_text(key, value)
        if like.xmp:
            info.add_itxt("XML:com.adobe.xmp", like.xmp.decode("utf-8", "replace"))
        options.update(pnginfo=info, exif=_exif_bytes(exif))
    elif fmt == "WEBP":
        lossless = bool(hints.get("lossless"))
        options.update(lossless=lossless, quality=100 if lossless else WEBP_QUALITY, exif=_exif_bytes(exif))
        if like.xmp:
            options["xmp"] = like.xmp
    return lambda f: image.save(f, format=fmt, **options)


def _copy_metadata(path: Path, fmt: str, pixels: np.ndarray, like: Photo, description: str, software: str,
                   codestream: bool = False) -> tuple[Photo, dict[int, Any]]:
    """``like`` with its XMP fit for its copy at ``path``, and the copy's EXIF tags, the provenance among them."""
    if like.xmp:
        profile = like.icc_profile if fmt != "BMP" and not codestream else None
        like = replace(like, xmp=_copy_xmp(like.xmp, path, like.size, pixels.shape[2], profile, description,
                                           software))
    return like, _tagged_exif(like, description, software, fmt)


def _tiff_page(path: Path, pixels: np.ndarray, like: Photo, description: str, software: str) -> tiff.Page:
    """A document's page, ``like``, as its TIFF copy's page: its own metadata and coding."""
    like, exif = _copy_metadata(path, "TIFF", pixels, like, description, software)
    return tiff.Page(pixels, lambda header: _tiff_directory(exif, like, header), like.dpi, like.encoder)


def _jp2(pixels: np.ndarray, hints: dict[str, Any]) -> bytes:
    """RGB or RGBA ``pixels`` (8 or 16-bit) as a JP2 file: lossless (the reversible 5/3 wavelet, as masters are
    kept), or, from a lossy JPEG 2000 source (``hints``, an access copy), the irreversible 9/7 at the source's
    compression. OpenJPEG encodes through Pillow at 8 bits, coded as the source was
    (``worker.media.jpeg2000.copy_options``), and through OpenCV at 16 (Pillow holds no 16-bit RGB), which takes no
    option but the rate. Neither writes the source's profile, EXIF, XMP or resolution, which ``worker.media.jpeg2000``
    adds."""
    lossless = hints.get("lossless", True)
    compression = hints.get("compression")
    if pixels.dtype == np.uint16:
        # OpenCV takes the rate in thousandths of the samples' size: 1000, lossless (not its default), else lossy.
        rate = 1000 if lossless or compression is None else max(1, min(999, round(1000 / compression)))
        ok, encoded = cv2.imencode(".jp2", np.ascontiguousarray(pixels[..., [2, 1, 0, 3][: pixels.shape[2]]]),
                                   [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, rate])
        if not ok:
            raise OSError(f"OpenCV could not encode a {pixels.shape[1]}x{pixels.shape[0]} 16-bit JPEG 2000 image")
        return encoded.tobytes()
    buffer = io.BytesIO()
    options = copy_options(hints.get("coding"), (pixels.shape[1], pixels.shape[0]), lossless, compression)
    Image.fromarray(pixels, "RGBA" if pixels.shape[2] == 4 else "RGB").save(buffer, format="JPEG2000", **options)
    return buffer.getvalue()


def _tiff_directory(tags: dict[int, Any], like: Photo, header: bytes = b"II*\x00\x08\x00\x00\x00"
                    ) -> TiffImagePlugin.ImageFileDirectory_v2:
    """EXIF tags (sub-directories included), XMP and ICC as one TIFF directory, for Pillow or our 16-bit writer;
    ``header`` is the file's (a BigTIFF's, for BigTIFF's wider entries)."""
    ifd = TiffImagePlugin.ImageFileDirectory_v2(ifh=header)
    for tag, value in tags.items():
        ifd[tag] = value
    if like.icc_profile:
        ifd[_ICC_TAG] = like.icc_profile
    if like.xmp:
        ifd[_XMP_TAG] = like.xmp
    for tag, (kind, value) in iptc.tiff_tags(like.resources).items() if like.resources else ():
        ifd.tagtype[tag] = kind
        ifd[tag] = value
    return ifd


def _jpeg_exif(tags: dict[int, Any], path: Path, provenance: str) -> bytes:
    """JPEG keeps EXIF in one 64 KB marker: drop the maker note, then everything but the provenance (the Software
    tag and the ``provenance`` sentence as the description: a caption can be the overflow), if it overflows,
    saying so, for the JPEG at ``path``."""
    limit = _JPEG_MARKER_BYTES - 8
    data = _exif_bytes(tags)
    if len(data) > limit and isinstance(tags.get(_EXIF_IFD), dict):
        tags = {**tags, _EXIF_IFD: {k: v for k, v in tags[_EXIF_IFD].items() if k != _MAKER_NOTE}}
        data = _exif_bytes(tags)
    if len(data) > limit:
        _left_out(path, "EXIF", "over the 64 KB a JPEG segment holds; only the provenance is written")
        data = _exif_bytes({_SOFTWARE: tags[_SOFTWARE], _IMAGE_DESCRIPTION: provenance})
    return data


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png16(pixels: np.ndarray, exif: bytes, like: Photo, texts: dict[str, str]) -> bytes:
    """A 16-bit RGB(A) PNG: OpenCV encodes the pixels, the metadata chunks are inserted after IHDR."""
    order = [2, 1, 0, 3] if pixels.shape[2] == 4 else [2, 1, 0]
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(pixels[..., order]), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise OSError("OpenCV could not encode the 16-bit PNG")
    data = encoded.tobytes()
    chunks = []
    if like.icc_profile:
        chunks.append(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(like.icc_profile)))
    if like.dpi:
        ppm = [max(1, round(d / 0.0254)) for d in like.dpi]
        chunks.append(_png_chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1)))
    chunks.append(_png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    chunks.extend(_png_text_chunks(texts))
    if like.xmp:
        chunks.append(_png_chunk(b"iTXt", b"XML:com.adobe.xmp" + b"\x00" * 5 + like.xmp))
    return _png_with_chunks(data, chunks)


def png_with_text(data: bytes, texts: dict[str, str]) -> bytes:
    """``data``, a PNG file another encoder wrote (FFmpeg's frames), with ``texts`` ("Software", "Description"...)."""
    return _png_with_chunks(data, _png_text_chunks(texts))


def _png_text_chunks(texts: dict[str, str]) -> list[bytes]:
    """A tEXt chunk per text, or an iTXt (UTF-8) where it is not Latin-1."""
    chunks = []
    for key, value in texts.items():
        try:
            chunks.append(_png_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1")))
        except UnicodeEncodeError:
            chunks.append(_png_chunk(b"iTXt", key.encode("latin-1", "replace") + b"\x00" * 5 + value.encode("utf-8")))
    return chunks


def _png_with_chunks(data: bytes, chunks: list[bytes]) -> bytes:
    """The PNG file ``data`` with ``chunks`` inserted right after its header chunk (IHDR)."""
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, CRC
    return data[:ihdr_end] + b"".join(chunks) + data[ihdr_end:]
