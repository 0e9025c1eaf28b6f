"""TIFF copies coded as their sources were, so that the image server and the ingest profile that took a source take
its copy too: the source's strips or tiles (of its tile size), its compression, and its reduced-resolution pages.

    coding = source_coding(im, turned=False)   # {"compression": "jpeg", "tile": (256, 256), "reduced": [(642, 962)]}
    jpeg = first_jpeg(im, path)                # a JPEG-compressed TIFF's first tile as a JPEG, for its tables
    write(f, Page(pixels, directory, dpi, coding), jpeg_quality)  # pixels: (H, W, 3 or 4) uint8/uint16, upright
    Writer(f, big).add_page(page, jpeg_quality, number, count)      # a document's pages, one at a time
    data = with_text(encoded, {270: "colorized by Tinct ..."})  # a TIFF another encoder wrote (FFmpeg's), described

An archive's image server (IIPImage, Cantaloupe: the IIIF servers) serves a large TIFF from its tiles and zooms
through its pyramid, the same picture at half, a quarter... of its size in further pages; a copy in strips without
the pyramid is read whole for every view. So a copy keeps the source's tile size and has a page for each reduced page
of the source, at its size, made again from the colour result (a scanner's gray preview page becomes a colour one).
Compression follows the source where a baseline reader decodes it: uncompressed, LZW and PackBits stay so (archives'
baseline-TIFF ingest profiles, and exiftool's validation, refuse Adobe deflate), and a JPEG-compressed source (the
usual pyramid for an image server) gives JPEG at the source's quantization (deflate copies were 4.6 times the size).
Anything else (deflate, old-style JPEG, CCITT fax) becomes Adobe deflate with the horizontal predictor; so do 16-bit
and transparent copies of a JPEG source, which JPEG's 8-bit Y'CbCr cannot hold.

A multi-page document (an album's pages, a print's front and back, a scanning batch kept as one file: pages that
are pictures of their own, ``document_pages``) is coloured page by page, and its copy has every page, in its order,
each coded as its source page was and numbered (PageNumber) as a page of the document, written as it comes
(``Writer``).

Written here, not by libtiff through Pillow, which cannot write the EXIF and GPS sub-directories beside the pixels
nor 16-bit RGB; Pillow's TIFF directory encoder writes each directory (the tag types and the sub-directories), and
libtiff through Pillow codes the LZW and PackBits segments (``_libtiff_coded``).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
from PIL import Image, TiffImagePlugin, TiffTags

NONE, LZW, JPEG, DEFLATE, PACKBITS = 1, 5, 7, 8, 32773  # TIFF's Compression codes a copy is written with
# Pillow's names (``im.info["compression"]``) of the compressions a copy keeps; any other becomes Adobe deflate.
KEPT_COMPRESSIONS = {"raw": NONE, "tiff_lzw": LZW, "packbits": PACKBITS, "jpeg": JPEG}
_LIBTIFF_NAMES = {LZW: "tiff_lzw", PACKBITS: "packbits"}
BIGTIFF_FROM = 1 << 32  # a TIFF result this large or more is a BigTIFF
DIRECTORY_ROOM = 1 << 24  # what its directories may take besides its pixels (EXIF, XMP and a profile: KBs to MBs)
_STRIP_BYTES = 1 << 18  # a strip's size before compression, where the source's coding sets none

_NEW_SUBFILE_TYPE, _REDUCED_RESOLUTION, _DOCUMENT_PAGE = 254, 1, 2  # NewSubfileType and its bits
_PAGE_NUMBER = 297
_PAGE_INFO = ("dpi", "resolution", "icc_profile")  # what Pillow puts in ``info`` from a page's directory
_STRIP_OFFSETS, _ROWS_PER_STRIP, _STRIP_BYTE_COUNTS = 273, 278, 279
_TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS, _TILE_BYTE_COUNTS = 322, 323, 324, 325
_SUB_IFDS, _JPEG_TABLES = 330, 347
_PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR = 2, 6
_YCBCR_SUBSAMPLING, _REFERENCE_BLACK_WHITE = 530, 532
# A JPEG copy's chroma sampling as TIFF states it (horizontal, vertical), by Pillow's name for it.
_SUBSAMPLING_FACTORS = {"4:4:4": (1, 1), "4:2:2": (2, 1), "4:2:0": (2, 2)}
_JPEG_BLOCK = 16  # tiles and JPEG strips come in multiples of it (TIFF 6.0: tiles; libjpeg: 4:2:0's 16-row MCUs)


PageLayout = tuple[tuple[int, int], bool]  # a page's size (upright) and whether it is flagged a reduced copy


def reduced_pages(pages: list[PageLayout]) -> list[tuple[int, int]] | None:
    """The sizes (width, height) of a TIFF's pages (``page_layouts``'s) after its first, where every one is a
    reduced-resolution copy of the first: flagged so (NewSubfileType bit 0, as scanners mark a preview page and
    libvips and GDAL a pyramid's levels), or halving page after page from the first (ImageMagick 6 flags its
    pyramids' levels as pages). None where a page is a picture of its own (a second photo, the back of a print),
    which a copy of the first would lose."""
    (first, _), *further = pages
    sizes = [size for size, _ in further]
    if all(reduced for _, reduced in further):
        return sizes if all(w <= first[0] and h <= first[1] for w, h in sizes) else None
    previous = first
    for size in sizes:
        if not all(side in (before // 2, (before + 1) // 2) for side, before in zip(size, previous, strict=True)):
            return None
        previous = size
    return sizes


def document_pages(pages: list[PageLayout]) -> list[tuple[int, int]] | None:
    """The sizes (width, height) of all a TIFF's pages (``page_layouts``'s), where none is flagged a
    reduced-resolution copy of another: a multi-page document whose every page is a picture to colour. None where
    some are (a document whose pages each bring a preview, say), which Tinct does not sort out. Ask where
    ``reduced_pages`` gave None."""
    return None if any(reduced for _, reduced in pages) else [size for size, _ in pages]


def page_layouts(im: Image.Image) -> list[PageLayout]:
    """Every page's size (upright) and whether it is flagged a reduced-resolution copy (NewSubfileType bit 0), read
    from their directories (one walk through the file, which ``reduced_pages`` and ``document_pages`` judge); ``im``
    is left on the page it was on (a document's page being decoded)."""
    current, pages = im.tell(), []
    try:
        for page in range(getattr(im, "n_frames", 1)):
            seek(im, page)
            pages.append((im.size, bool(int(im.tag_v2.get(_NEW_SUBFILE_TYPE, 0)) & _REDUCED_RESOLUTION)))
    finally:
        seek(im, current)
    return pages


def seek(im: Image.Image, page: int) -> None:
    """``im.seek(page)``, leaving nothing of the page before in ``im.info``: Pillow 13 sets a page's resolution and
    ICC profile there where the page has them, and keeps the last page's where it has none."""
    if page != im.tell():
        for key in _PAGE_INFO:
            im.info.pop(key, None)
        im.seek(page)


def source_coding(im: Image.Image, turned: bool) -> dict[str, Any]:
    """How the TIFF page ``im`` is on is coded, for its copy: the compression (Pillow's name), the tile size (width,
    height) where it is tiled, else its rows per strip, for the first page the sizes of its reduced-resolution pages
    (``reduced_pages``), and the number of its sub-images (SubIFDs, which a copy leaves out); ``turned``: its
    orientation swaps width and height, which the upright copy's tiles then do too (Pillow gives the pages' sizes
    upright already)."""
    coding: dict[str, Any] = {"compression": im.info.get("compression", "raw")}
    tags = im.tag_v2
    if _TILE_WIDTH in tags and _TILE_LENGTH in tags:
        tile = (int(tags[_TILE_WIDTH]), int(tags[_TILE_LENGTH]))
        coding["tile"] = tile[::-1] if turned else tile
    elif _ROWS_PER_STRIP in tags and not turned:
        coding["rows_per_strip"] = int(tags[_ROWS_PER_STRIP])
    if im.tell() == 0 and getattr(im, "n_frames", 1) > 1 and (sizes := reduced_pages(page_layouts(im))):
        coding["reduced"] = sizes
    if _SUB_IFDS in tags:  # images inside the first page's directory (a pyramid as libvips --subifd, OME-TIFF write it)
        coding["sub_images"] = len(np.atleast_1d(tags[_SUB_IFDS]))
    return coding


def first_jpeg(im: Image.Image, path: Path) -> Image.Image | None:
    """A JPEG-compressed TIFF's first strip or tile as a JPEG file (its JPEGTables, where the segments leave their
    tables there, put in front), opened: its quantization tables and chroma sampling are the source's. None where
    the TIFF is not JPEG-compressed or the segment is not a JPEG Pillow reads."""
    tags = im.tag_v2
    offsets = tags.get(_TILE_OFFSETS) or tags.get(_STRIP_OFFSETS)
    counts = tags.get(_TILE_BYTE_COUNTS) or tags.get(_STRIP_BYTE_COUNTS)
    if im.info.get("compression") != "jpeg" or not offsets or not counts:
        return None
    with open(path, "rb") as f:
        f.seek(int(np.atleast_1d(offsets)[0]))
        segment = f.read(int(np.atleast_1d(counts)[0]))
    tables = bytes(tags.get(_JPEG_TABLES, b""))
    # Tables are a JPEG stream of their own (SOI, DQT/DHT, EOI): its EOI and the segment's SOI are dropped.
    stream = tables[:-2] + segment[2:] if tables.startswith(b"\xff\xd8") and segment.startswith(b"\xff\xd8") \
        else segment
    try:
        jpeg = Image.open(io.BytesIO(stream), formats=["JPEG"])
        jpeg.quantization  # noqa: B018 - read here, where a damaged segment fails
    except Exception:  # noqa: BLE001 - a segment Pillow cannot read: the copy is coded at the default quality
        return None
    return jpeg


@dataclass(frozen=True)
class Page:
    """A picture of a copy: its ``pixels``, (H, W, 3 or 4) uint8 or uint16, upright; ``directory(header)``, its
    directory with its metadata (EXIF, XMP, profile...) for a file that begins with ``header`` (the layout tags are
    added by ``write``); its resolution; and its source page's ``coding`` (``source_coding``'s, plus for JPEG the
    ``qtables`` and ``subsampling`` Pillow's JPEG encoder takes)."""

    pixels: np.ndarray
    directory: Callable[[bytes], TiffImagePlugin.ImageFileDirectory_v2]
    dpi: tuple[float, float] | None
    coding: dict[str, Any]


@dataclass(frozen=True)
class _Directory:
    """One directory as written: a page or one of its reduced pages, coded."""

    pixels: np.ndarray
    tags: Callable[[bytes], TiffImagePlugin.ImageFileDirectory_v2]  # its tags but the layout's, for a file's header
    dpi: tuple[float, float] | None
    compression: int
    tile: tuple[int, int] | None
    subsampling: str | None
    segments: list[bytes]
    rows_per_strip: int


def write(f: BinaryIO, page: Page, jpeg_quality: int) -> None:
    """A TIFF of ``page``, coded by its ``coding`` (``jpeg_quality`` where a JPEG source's tables are unknown) and
    followed by its reduced pages, which carry the layout and the resolution alone, as image servers and scanners
    write them."""
    directories = _directories(page, jpeg_quality)
    # Classic TIFF counts bytes in 32 bits; a result past that (a map scanned at a gigapixel, in 16-bit colour) is a
    # BigTIFF, which libtiff, Pillow, OpenCV and exiftool read (older readers do not: only where it is needed).
    writer = Writer(f, big=sum(len(s) for d in directories for s in d.segments) + DIRECTORY_ROOM >= BIGTIFF_FROM)
    writer.add(directories, last=True)


class Writer:
    """A TIFF written a page at a time, each page's directory and pixels as it comes (a document's pages, which are
    coloured one at a time so that a long document never lies in memory whole): ``big`` for a BigTIFF, which must be
    known before the first byte."""

    def __init__(self, f: BinaryIO, big: bool) -> None:
        self.f, self.big = f, big
        self.header = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) if big else b"II*\x00" + struct.pack("<I", 8)
        f.write(self.header)
        self.position = len(self.header)

    def add_page(self, page: Page, jpeg_quality: int, number: int, count: int) -> None:
        """Page ``number`` (from 0) of a document of ``count``, numbered as a document's (NewSubfileType's page bit,
        PageNumber)."""
        self.add(_directories(page, jpeg_quality, number, count), last=number == count - 1)

    def add(self, directories: Sequence[_Directory], last: bool) -> None:
        """``directories`` (a page and its reduced pages), each followed by its pixels; ``last``: no page follows."""
        header, big = self.header, self.big
        for index, directory in enumerate(directories):
            ifd, segments, tile = directory.tags(header), directory.segments, directory.tile
            _layout_tags(ifd, directory.pixels, directory.compression, tile, directory.rows_per_strip,
                         directory.subsampling)
            if directory.dpi:
                ifd[282], ifd[283], ifd[296] = directory.dpi[0], directory.dpi[1], 2
            relative = [int(x) for x in np.cumsum([0] + [len(s) for s in segments[:-1]])]
            offsets_tag, counts_tag = (_TILE_OFFSETS, _TILE_BYTE_COUNTS) if tile else (_STRIP_OFFSETS,
                                                                                        _STRIP_BYTE_COUNTS)
            # Pillow's encoder adds where the data begins (right after the directory) to strip offsets, not to tile
            # offsets: those are made absolute here, from the directory's length, which their values do not change.
            ifd[offsets_tag], ifd[counts_tag] = tuple(relative), tuple(len(s) for s in segments)
            ifd.tagtype[offsets_tag] = ifd.tagtype[counts_tag] = TiffTags.LONG8 if big else TiffTags.LONG
            if tile:
                data_start = self.position + len(ifd.tobytes(self.position))
                ifd[offsets_tag] = tuple(data_start + r for r in relative)
            encoded = bytearray(ifd.tobytes(self.position))
            data_end = self.position + len(encoded) + sum(len(s) for s in segments)
            next_page = data_end + (data_end & 1)  # a directory begins on a word boundary
            if not (last and index == len(directories) - 1):  # the next directory follows this one's pixels
                count_format, entry_bytes = ("<Q", 20) if big else ("<H", 12)
                (entries,) = struct.unpack_from(count_format, encoded)
                struct.pack_into("<Q" if big else "<I", encoded,
                                 struct.calcsize(count_format) + entry_bytes * entries, next_page)
            self.f.write(encoded)
            for segment in segments:
                self.f.write(segment)
            self.f.write(b"\0" * (next_page - data_end))
            self.position = next_page


def _directories(page: Page, jpeg_quality: int, number: int = 0, count: int = 1) -> list[_Directory]:
    """``page`` (page ``number`` of a document of ``count``) and its reduced pages, coded."""
    pixels, coding = page.pixels, page.coding
    compression = KEPT_COMPRESSIONS.get(coding.get("compression"), DEFLATE)
    if compression == JPEG and (pixels.dtype != np.uint8 or pixels.shape[2] != 3):
        compression = DEFLATE  # JPEG codes 8-bit Y'CbCr, without alpha
    jpeg_options: dict[str, Any] = {}
    if compression == JPEG:
        subsampling = coding.get("subsampling") or "4:2:0"
        jpeg_options = {"subsampling": subsampling, **(
            {"qtables": coding["qtables"]} if coding.get("qtables") else {"quality": jpeg_quality})}
    tile = coding.get("tile")
    if tile is not None:  # TIFF 6.0 wants tiles in multiples of 16; a source's that are not are rounded up
        tile = tuple(max(_JPEG_BLOCK, -(-side // _JPEG_BLOCK) * _JPEG_BLOCK) for side in tile)

    def numbered(header: bytes) -> TiffImagePlugin.ImageFileDirectory_v2:
        ifd = page.directory(header)
        if count > 1:
            ifd[_NEW_SUBFILE_TYPE], ifd[_PAGE_NUMBER] = _DOCUMENT_PAGE, (number, count)
        return ifd

    def reduced(header: bytes) -> TiffImagePlugin.ImageFileDirectory_v2:
        ifd = TiffImagePlugin.ImageFileDirectory_v2(ifh=header)
        ifd[_NEW_SUBFILE_TYPE] = _REDUCED_RESOLUTION
        return ifd

    directories = []
    for level, level_pixels in enumerate(_with_reductions(pixels, coding.get("reduced", ()))):
        dpi = page.dpi
        if dpi and level:  # a reduced page covers the same paper: its resolution is reduced with it
            dpi = (dpi[0] * level_pixels.shape[1] / pixels.shape[1], dpi[1] * level_pixels.shape[0] / pixels.shape[0])
        segments, rows_per_strip = _segments(level_pixels, compression, tile, coding.get("rows_per_strip"),
                                             jpeg_options)
        directories.append(_Directory(level_pixels, reduced if level else numbered, dpi, compression, tile,
                                      jpeg_options.get("subsampling"), segments, rows_per_strip))
    return directories


def with_text(data: bytes, texts: dict[int, str]) -> bytes:
    """``data``, a classic TIFF of one page (as FFmpeg's encoder writes its frames), with the ASCII tags ``texts``
    (ImageDescription 270, Software 305...) set. Its directory is written again right after the header and its
    strips follow, their offsets moved with them: Pillow's directory encoder places strips after the directory."""
    header, offset_format = data[:8], "<I" if data[:2] == b"II" else ">I"
    (first_directory,) = struct.unpack_from(offset_format, header, 4)
    ifd = TiffImagePlugin.ImageFileDirectory_v2(header)
    f = io.BytesIO(data)
    f.seek(first_directory)
    ifd.load(f)
    if ifd.next:
        raise ValueError("a TIFF of more than one page")
    list(ifd.values())  # every tag decoded: the encoder writes those it holds decoded, and drops the rest
    for tag, text in texts.items():
        ifd[tag] = text
    # What lay between the header and the directory (the strips, and the values the old directory pointed to) is
    # kept as it was: the strips' offsets become offsets into it, to which the encoder adds where it lands.
    ifd[_STRIP_OFFSETS] = tuple(int(offset) - len(header) for offset in np.atleast_1d(ifd[_STRIP_OFFSETS]))
    directory = ifd.tobytes(len(header))
    return header[:4] + struct.pack(offset_format, len(header)) + directory + data[
        len(header):first_directory]


def _with_reductions(pixels: np.ndarray, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """``pixels`` and a copy of it at each of ``sizes``, each made by area averaging from the smallest page already
    made that is at least twice its size (a pyramid level from the level above, as image servers' pyramids are)."""
    pages = [pixels]
    for width, height in sizes:
        larger = [p for p in pages if p.shape[1] >= 2 * width and p.shape[0] >= 2 * height] or [pixels]
        base = min(larger, key=lambda p: p.shape[0] * p.shape[1])
        pages.append(cv2.resize(base, (max(1, width), max(1, height)), interpolation=cv2.INTER_AREA))
    return pages


def _layout_tags(ifd: TiffImagePlugin.ImageFileDirectory_v2, page: np.ndarray, compression: int,
                 tile: tuple[int, int] | None, rows_per_strip: int, subsampling: str | None) -> None:
    height, width, channels = page.shape
    ifd[256], ifd[257] = width, height
    ifd[258] = (8 * page.dtype.itemsize,) * channels
    ifd[259] = compression
    ifd[277] = channels
    ifd[284] = 1  # contiguous samples
    if compression == JPEG:
        # Y'CbCr, as libtiff writes a JPEG-compressed RGB TIFF: its readers have libjpeg turn it into RGB.
        ifd[262] = _PHOTOMETRIC_YCBCR
        ifd[_YCBCR_SUBSAMPLING] = _SUBSAMPLING_FACTORS[subsampling or "4:2:0"]
        ifd[_REFERENCE_BLACK_WHITE] = (0.0, 255.0, 128.0, 255.0, 128.0, 255.0)  # JPEG's full-range Y'CbCr
    else:
        ifd[262] = _PHOTOMETRIC_RGB
    if compression in (LZW, DEFLATE):
        ifd[317] = 2  # horizontal differencing
    if channels == 4:
        ifd[338] = (2,)  # unassociated alpha
    if tile:
        ifd[_TILE_WIDTH], ifd[_TILE_LENGTH] = tile
    else:
        ifd[_ROWS_PER_STRIP] = rows_per_strip


def _segments(page: np.ndarray, compression: int, tile: tuple[int, int] | None, source_rows: int | None,
              jpeg_options: dict[str, Any]) -> tuple[list[bytes], int]:
    """The page's strips (with the rows in each) or tiles, coded: tiles are whole, the edge ones padded. Strips are
    of about ``_STRIP_BYTES``; JPEG's, each a JPEG stream of its own, of the source's height (``source_rows``), in
    whole 16-row blocks."""
    height, width, channels = page.shape
    if tile:
        tile_width, tile_height = tile
        # JPEG's edge tiles are padded with their edge pixels (no edge to ring at), the others' with zeros (the
        # predictor's differences there are zeros, which cost nothing).
        padded = np.pad(page, ((0, -height % tile_height), (0, -width % tile_width), (0, 0)),
                        mode="edge" if compression == JPEG else "constant")
        blocks = [padded[top:top + tile_height, left:left + tile_width]
                  for top in range(0, height, tile_height) for left in range(0, width, tile_width)]
        rows_per_strip = 0
    else:
        rows_per_strip = max(1, _STRIP_BYTES // (width * channels * page.dtype.itemsize))
        if compression == JPEG:
            rows = min(source_rows or rows_per_strip, height)
            rows_per_strip = max(_JPEG_BLOCK, -(-rows // _JPEG_BLOCK) * _JPEG_BLOCK)
        blocks = [page[top:top + rows_per_strip] for top in range(0, height, rows_per_strip)]
    return [_coded(block, compression, jpeg_options) for block in blocks], rows_per_strip


def _coded(block: np.ndarray, compression: int, jpeg_options: dict[str, Any]) -> bytes:
    if compression == JPEG:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(block), "RGB").save(buffer, "JPEG", **jpeg_options)
        return buffer.getvalue()
    sample = block.dtype.newbyteorder("<")
    coded = block.astype(sample)
    if compression in (LZW, DEFLATE):
        coded[:, 1:] -= block[:, :-1].astype(sample)  # predictor 2, which wraps around
    if compression == DEFLATE:
        return zlib.compress(coded.tobytes(), 6)
    if compression in _LIBTIFF_NAMES:
        return _libtiff_coded(coded, _LIBTIFF_NAMES[compression])
    return coded.tobytes()


def _libtiff_coded(block: np.ndarray, compression: str) -> bytes:
    """A strip's or tile's bytes LZW or PackBits-coded, by libtiff through Pillow, which codes whole pictures only:
    written as an 8-bit gray picture of one strip, whose strip is then read back. Both code a row's bytes whatever
    its samples (PackBits row by row, as TIFF requires)."""
    rows = block.shape[0]
    as_bytes = np.ascontiguousarray(block).view(np.uint8).reshape(rows, -1)
    buffer = io.BytesIO()
    Image.fromarray(as_bytes, "L").save(buffer, "TIFF", compression=compression, tiffinfo={_ROWS_PER_STRIP: rows})
    with Image.open(buffer) as coded:
        (offset,), (length,) = coded.tag_v2[_STRIP_OFFSETS], coded.tag_v2[_STRIP_BYTE_COUNTS]
    return buffer.getbuffer()[offset:offset + length].tobytes()
