"""What FFmpeg does not read of an OpenEXR file's header, the attributes its encoder does not write, and whether a
file is whole.

    head, header = exr_head(functools.partial(storage.get_head, uri))  # the headers whole; None: no OpenEXR file
    header.chromaticities, header.parts, header.deep                   # (0.7347, 0.2653, ...) for an ACES plate
    exr_frame_rate(head), exr_timecode(head)                            # Fraction(24000, 1001), (0x01000000, 0)
    picture_attributes(head)                                            # {("owner", "string"): b"...", ...}
    data = with_attributes(frame, {("comments", "string"): b"..."})    # FFmpeg's frame, with what it does not say
    with open(path, "rb") as f:
        reason = damage(f, header.chunks, os.path.getsize(path))       # "truncated: ..." if half copied, else None

A plate's primaries are its ``chromaticities`` attribute: an ACES plate's are AP0's or AP1's, and a file without
one is BT.709, as OpenEXR has it. FFmpeg reads the pixels as they are and says nothing of them, so Tinct reads the
attribute here: ``worker.media.video_source`` converts a plate's light to BT.709 as it is read, and
``worker.media.frame_sink`` converts its copy back and has the attribute added to each frame it writes. A plate's rate
and timecode are its ``framesPerSecond`` and ``timeCode``, read here for the run; what else a frame's header says of
the picture (owner, capture date, keycode, the camera's and lens's settings, a pipeline's own metadata:
``picture_attributes``) goes with its copy, as compositing packages pass it on. A multi-part file (a beauty with its
depth or AOVs) is read by FFmpeg as its first part alone, and a deep one not at all; their part names and flags are
read here to say so. And FFmpeg decodes a frame cut short (half copied, or left by a writer that stopped) without a
word, its missing chunks black: ``damage`` finds such a frame by its chunk offset tables, as a DPX frame is found
by the file size its header declares.

Layout, from the OpenEXR file layout document: magic, version flags, then each part's attributes (each
``name\\0 type\\0 size value``), a part's list ended by a null byte and a multi-part file's list of parts by another;
then each part's chunk offset table, a 64-bit offset per chunk, written as zeros and filled in as the writer
closes the file; then the chunks, each its part's number (in a multi-part file), its scan line or tile
coordinates, its byte count and its bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

EXR_MAGIC = b"\x76\x2f\x31\x01"
# Enough for the headers of the files compositing packages write, with their metadata; a longer one (a large
# preview image in it) is read again further, four times as far each time, up to EXR_HEADER_LIMIT (``exr_head``).
EXR_HEADER_BYTES = 1 << 16
EXR_HEADER_LIMIT = 1 << 24
_TILED, _LONG_NAMES, _DEEP, _MULTIPART = 0x200, 0x400, 0x800, 0x1000
_SHORT_NAME_BYTES = 31  # the longest attribute name or type a file without the long-names flag may have
# Scan lines per chunk of each compression (OpenEXR's numbering: none, RLE, ZIPS, ZIP, PIZ, PXR24, B44, B44A, DWAA,
# DWAB): how many offsets a scan-line part's table holds.
_LINES_PER_CHUNK = (1, 1, 1, 16, 32, 16, 32, 32, 32, 256)
# A tiled part's levels (the tile description's low four bits) and how their sizes round (the next four).
_ONE_LEVEL, _MIPMAP_LEVELS, _RIPMAP_LEVELS = 0, 1, 2
_ROUND_DOWN = 0
# Attributes of how a file's pixels are laid out and coded (a copy's are its encoder's own), of what a copy states
# anew (its primaries, rate, timecode, comments), or of pixels a copy does not have (a preview, other views).
LAYOUT_ATTRIBUTES = frozenset({
    "channels", "compression", "dataWindow", "displayWindow", "lineOrder", "pixelAspectRatio", "screenWindowCenter",
    "screenWindowWidth", "tiles", "type", "name", "version", "chunkCount", "view", "multiView", "preview",
    "deepImageState", "maxSamplesPerPixel", "dwaCompressionLevel", "originalDataWindow", "chromaticities",
    "framesPerSecond", "timeCode", "comments",
})
_TIMECODE_DROP_FRAME = 1 << 6  # OpenEXR's timeCode: SMPTE 12M's digits as DPX has them, the drop-frame flag here
_FFMPEG_DROP_FRAME = 1 << 30  # where FFmpeg's (and ``worker.media.frame_sink``'s) timecodes flag it


@dataclass(frozen=True)
class ChunkTables:
    """Where an OpenEXR file's chunk offset tables are: from byte ``start``, one after another, each part's
    ``counts[part]`` 64-bit offsets."""
    start: int
    counts: tuple[int, ...]  # chunks per part, in the parts' order
    tiled: tuple[bool, ...]  # whether each part is tiled (its chunks then say four tile coordinates, not a line)
    multipart: bool  # whether each chunk starts with its part's number


@dataclass(frozen=True)
class ExrHeader:
    chromaticities: tuple[float, ...] | None  # red, green, blue and white as CIE xy; None where the file names none
    parts: tuple[str, ...]  # the parts' names, of a multi-part file (FFmpeg reads the first alone); () otherwise
    deep: bool  # deep data (samples per pixel), which FFmpeg does not read
    size: tuple[int, int] | None = None  # the first part's data window, width and height
    whole: bool = True  # whether the bytes read held the headers to their end
    # Where its pixels are, to tell a whole file from one cut short (``damage``); None where the bytes read end
    # inside the headers, or a part's chunks cannot be counted (a deep part's).
    chunks: ChunkTables | None = None


def read_exr_header(head: bytes) -> ExrHeader | None:
    """The header at the start of an OpenEXR file, ``head`` its first bytes; None if it is not one."""
    if head[:4] != EXR_MAGIC or len(head) < 8:
        return None
    (version,) = struct.unpack_from("<I", head, 4)
    parts, position, whole = [], 8, False
    while position is not None and position < len(head):
        part, position = _attributes(head, position)
        if position is None:
            break
        if not part:  # the empty header that ends a multi-part file's list
            whole = True
            break
        parts.append(part)
        if not version & _MULTIPART:
            whole = True
            break
    first = parts[0] if parts else {}
    chromaticities = None
    if len(value := first.get(("chromaticities", "chromaticities"), b"")) == 32:
        numbers = struct.unpack("<8f", value)
        chromaticities = numbers if all(map(math.isfinite, numbers)) else None
    names = tuple(part.get(("name", "string"), b"").decode("utf-8", "replace") for part in parts)
    part_types = {part.get(("type", "string"), b"").decode("ascii", "replace") for part in parts}
    deep = bool(version & _DEEP) or any(kind.startswith("deep") for kind in part_types)
    size = None
    if len(window := first.get(("dataWindow", "box2i"), b"")) == 16:
        x_min, y_min, x_max, y_max = struct.unpack("<4i", window)
        size = (x_max - x_min + 1, y_max - y_min + 1)
    chunks = None
    if whole and parts and not deep:
        multipart = bool(version & _MULTIPART)
        counts = [_chunk_count(part, multipart) for part in parts]
        if None not in counts:
            chunks = ChunkTables(position, tuple(counts), tuple(("tiles", "tiledesc") in part for part in parts),
                                 multipart)
    return ExrHeader(chromaticities=chromaticities, parts=names if version & _MULTIPART else (), deep=deep,
                     size=size, whole=whole, chunks=chunks)


def exr_head(read: Callable[[int], bytes], first: int = EXR_HEADER_BYTES) -> tuple[bytes, ExrHeader | None]:
    """An OpenEXR file's first bytes, enough to hold its headers whole (``first`` of them, then four times as many
    while its headers go on, up to EXR_HEADER_LIMIT), and its header read from them (None if it is no OpenEXR
    file); ``read(n)`` gives its first ``n`` bytes (fewer at its end)."""
    size = first
    while True:
        head = read(size)
        header = read_exr_header(head)
        if header is None or header.whole or len(head) < size or size >= EXR_HEADER_LIMIT:
            return head, header
        size *= 4


def damage(f: BinaryIO, chunks: ChunkTables, size: int) -> str | None:
    """Why the OpenEXR file open as ``f`` (``size`` bytes, its headers' ``chunks``) is not whole, else None: its
    chunk tables never filled in (its writer stopped before the end), or pointing past its end, or its last chunk
    cut short (a frame half copied)."""
    total = sum(chunks.counts)
    f.seek(chunks.start)
    table = f.read(8 * total)
    if len(table) < 8 * total:
        return f"truncated: {size} bytes, which end inside its chunk tables"
    offsets = struct.unpack(f"<{total}Q", table)
    if 0 in offsets:  # written as zeros first, filled in as the writer closes the file
        return "unfinished: its chunk tables were never filled in (the program writing it stopped before the end)"
    last = max(offsets)
    if min(offsets) < chunks.start + 8 * total:
        return f"damaged: its chunk tables point inside its headers (to byte {min(offsets)})"
    if last >= size:
        return f"truncated: {size} bytes, and its chunk tables have a chunk start at byte {last}"
    f.seek(last)
    head = f.read(4 + 16 + 4)  # the last chunk's part number, coordinates and byte count, as far as its kind has
    part = struct.unpack_from("<i", head)[0] if chunks.multipart and len(head) >= 4 else 0
    if not 0 <= part < len(chunks.counts):
        return f"damaged: its last chunk, at byte {last}, names no part of it ({part})"
    # a tile says its x, y and level x, y; a scan-line chunk its first line
    count_at = (4 if chunks.multipart else 0) + (16 if chunks.tiled[part] else 4)
    if len(head) < count_at + 4:
        return f"truncated: {size} bytes, which end inside its last chunk's header (at byte {last})"
    (byte_count,) = struct.unpack_from("<i", head, count_at)
    end = last + count_at + 4 + byte_count
    if byte_count < 0 or end > size:
        return f"truncated: {size} bytes of the {end} its chunk tables lay out"
    return None


def exr_frame_rate(head: bytes) -> Fraction | None:
    """The rate an OpenEXR file's ``framesPerSecond`` gives (``head``: its first bytes), None where it gives none."""
    value = _first_part(head).get(("framesPerSecond", "rational"), b"")
    if len(value) != 8:
        return None
    numerator, denominator = struct.unpack("<iI", value)
    return Fraction(numerator, denominator) if numerator > 0 and denominator else None


def exr_timecode(head: bytes) -> tuple[int, int] | None:
    """An OpenEXR file's ``timeCode`` as SMPTE 12M BCD, the drop-frame flag at bit 30 (as DPX headers read by FFmpeg
    and ``worker.media.frame_sequences.timecode_label`` have it), and its user bits; None where it has none."""
    value = _first_part(head).get(("timeCode", "timecode"), b"")
    if len(value) != 8:
        return None
    code, user_bits = struct.unpack("<II", value)
    drop = _FFMPEG_DROP_FRAME if code & _TIMECODE_DROP_FRAME else 0
    return (code & 0x3F7F7F3F) | drop, user_bits  # the digits alone (the flags between them cleared), and the flag


def timecode_value(code: int, user_bits: int = 0) -> bytes:
    """An OpenEXR ``timeCode`` attribute's value for SMPTE 12M BCD ``code`` (drop-frame flagged at bit 30)."""
    drop = _TIMECODE_DROP_FRAME if code & _FFMPEG_DROP_FRAME else 0
    return struct.pack("<II", (code & ~_FFMPEG_DROP_FRAME) | drop, user_bits)


def picture_attributes(head: bytes) -> dict[tuple[str, str], bytes]:
    """What a single-part OpenEXR file's header (``head``, its first bytes) says of its picture rather than of how
    its pixels are stored (``LAYOUT_ATTRIBUTES``): the owner, capture date, keycode, a camera's and lens's settings,
    a compositing package's own; by (name, type), their values as stored (OpenEXR is little-endian throughout)."""
    return {key: value for key, value in _first_part(head).items() if key[0] not in LAYOUT_ATTRIBUTES}


def chromaticities_value(chromaticities: tuple[float, ...]) -> bytes:
    """A ``chromaticities`` attribute's value: red, green, blue and white as CIE xy."""
    return struct.pack("<8f", *chromaticities)


def frames_per_second_value(rate: Fraction) -> bytes:
    """A ``framesPerSecond`` attribute's value: the rate as a rational (24000/1001 for 23.976)."""
    return struct.pack("<iI", rate.numerator, rate.denominator)


def exr_comments(head: bytes) -> str | None:
    """An OpenEXR file's ``comments`` (``head``: its first bytes), None where it has none."""
    value = _first_part(head).get(("comments", "string"))
    return None if value is None else value.decode("utf-8", "replace")


def with_attributes(data: bytes, attributes: dict[tuple[str, str], bytes]) -> bytes:
    """``data``, a single-part scan-line OpenEXR file (as FFmpeg's encoder writes one), with ``attributes`` (by
    (name, type), each value as OpenEXR stores it) added at the end of its header, and every chunk's offset moved
    past them; one its header has already (by name) is left as it is."""
    if data[:4] != EXR_MAGIC or struct.unpack_from("<I", data, 4)[0] & (_TILED | _DEEP | _MULTIPART):
        raise ValueError("not a single-part scan-line OpenEXR file")
    existing, end = _attributes(data, 8)
    names = {name for name, _ in existing}
    chunks = _chunk_count(existing, multipart=False)
    attribute = b"".join(f"{name}\0{kind}\0".encode() + struct.pack("<i", len(value)) + value
                         for (name, kind), value in attributes.items() if name not in names)
    header_end = end - 1  # the null byte that ends the list
    offsets = [offset + len(attribute) for offset in struct.unpack_from(f"<{chunks}Q", data, end)]
    (version,) = struct.unpack_from("<I", data, 4)
    if any(len(name.encode()) > _SHORT_NAME_BYTES or len(kind.encode()) > _SHORT_NAME_BYTES
           for name, kind in attributes):
        version |= _LONG_NAMES  # readers refuse a name over 31 bytes in a file that does not say it has them
    return b"".join([data[:4], struct.pack("<I", version), data[8:header_end], attribute, b"\0",
                     struct.pack(f"<{chunks}Q", *offsets), data[end + 8 * chunks:]])


def _chunk_count(part: dict[tuple[str, str], bytes], multipart: bool) -> int | None:
    """How many chunks the part's offset table lists (OpenEXR's layout rules), or None if its header does not say
    enough. A multi-part file's parts say it (``chunkCount``); a single part's follows from its data window and its
    compression's lines per chunk, or its tiles' size and levels."""
    if multipart:
        value = part.get(("chunkCount", "int"), b"")
        return struct.unpack("<i", value)[0] if len(value) == 4 else None
    window, compression = part.get(("dataWindow", "box2i"), b""), part.get(("compression", "compression"), b"")
    if len(window) != 16:
        return None
    x_min, y_min, x_max, y_max = struct.unpack("<4i", window)
    width, height = x_max - x_min + 1, y_max - y_min + 1
    tiles = part.get(("tiles", "tiledesc"))
    if tiles is None:
        if len(compression) != 1 or compression[0] >= len(_LINES_PER_CHUNK):
            return None
        return math.ceil(height / _LINES_PER_CHUNK[compression[0]])
    if len(tiles) != 9:
        return None
    tile_width, tile_height, mode = struct.unpack("<IIB", tiles)
    levels, round_down = mode & 0x0F, (mode >> 4) == _ROUND_DOWN

    def level_sides(side: int, count: int) -> list[int]:  # a side's length at each level, halved and rounded
        return [max(1, side >> level if round_down else -(-side >> level)) for level in range(count)]

    def level_count(side: int) -> int:  # levels down to one pixel: log2 of the side, rounded as the part says
        return (side.bit_length() - 1 if round_down else (side - 1).bit_length()) + 1

    def tiles_at(level_width: int, level_height: int) -> int:
        return math.ceil(level_width / tile_width) * math.ceil(level_height / tile_height)

    if levels == _ONE_LEVEL:
        return tiles_at(width, height)
    if levels == _MIPMAP_LEVELS:  # both sides halved together, as many times as the longer one can be
        count = level_count(max(width, height))
        return sum(map(tiles_at, level_sides(width, count), level_sides(height, count)))
    if levels == _RIPMAP_LEVELS:  # every level of the width with every level of the height
        return sum(tiles_at(w, h) for w in level_sides(width, level_count(width))
                   for h in level_sides(height, level_count(height)))
    return None


def _first_part(head: bytes) -> dict[tuple[str, str], bytes]:
    """The attributes of an OpenEXR file's first part (``head``: its first bytes); {} if it is no OpenEXR file."""
    if head[:4] != EXR_MAGIC or len(head) < 8:
        return {}
    return _attributes(head, 8)[0]


def _attributes(data: bytes, position: int) -> tuple[dict[tuple[str, str], bytes], int | None]:
    """The attributes of the header at ``position``, by (name, type), and where the byte after its end is (None
    where ``data`` ends first: such a header is read as far as it goes)."""
    attributes = {}
    while position < len(data) and data[position] != 0:
        name_end = data.find(b"\0", position)
        type_end = data.find(b"\0", name_end + 1)
        if name_end < 0 or type_end < 0 or type_end + 5 > len(data):
            return attributes, None
        (size,) = struct.unpack_from("<i", data, type_end + 1)
        value_start = type_end + 5
        name, kind = data[position:name_end].decode("latin-1"), data[name_end + 1:type_end].decode("latin-1")
        if size < 0 or value_start + size > len(data):
            return attributes, None
        attributes[(name, kind)] = data[value_start:value_start + size]
        position = value_start + size
    return attributes, (position + 1 if position < len(data) else None)
