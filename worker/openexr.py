"""What FFmpeg does not read of an OpenEXR file's header, and the one attribute its encoder does not write.

    header = read_exr_header(path.read_bytes()[:EXR_HEADER_BYTES])   # None if it is no OpenEXR file
    header.chromaticities, header.parts, header.deep                  # (0.7347, 0.2653, ...) for an ACES plate
    data = with_chromaticities(encoded_frame, header.chromaticities)   # FFmpeg's frame, saying the plate's primaries

A plate's primaries are its ``chromaticities`` attribute: an ACES plate's are AP0's or AP1's, and a file without
one is BT.709, as OpenEXR has it. FFmpeg reads the pixels as they are and says nothing of them, so Tinct reads the
attribute here: ``worker.video_source`` converts a plate's light to BT.709 as it is read, and ``worker.frame_sink``
converts its copy back and has the attribute added to each frame it writes. A multi-part file (a beauty with its
depth or AOVs) is read by FFmpeg as its first part alone, and a deep one not at all; their part names and flags are
read here to say so. Layout: the OpenEXR file layout document (magic, version flags, then each part's attributes,
each ``name\\0 type\\0 size value``, a part's list ended by a null byte and a multi-part file's list of parts by
another; then the chunks' offset tables).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

EXR_MAGIC = b"\x76\x2f\x31\x01"
# Enough for the headers of the files compositing packages write, with their metadata; a longer one is read as far
# as this goes (a chromaticities attribute after it counts as missing).
EXR_HEADER_BYTES = 1 << 16
_TILED, _LONG_NAMES, _DEEP, _MULTIPART = 0x200, 0x400, 0x800, 0x1000
# Scan lines per chunk of each compression (OpenEXR's numbering: none, RLE, ZIPS, ZIP, PIZ, PXR24, B44, B44A, DWAA,
# DWAB): how many offsets a scan-line part's table holds.
_LINES_PER_CHUNK = (1, 1, 1, 16, 32, 16, 32, 32, 32, 256)


@dataclass(frozen=True)
class ExrHeader:
    chromaticities: tuple[float, ...] | None  # red, green, blue and white as CIE xy; None where the file names none
    parts: tuple[str, ...]  # the parts' names, of a multi-part file (FFmpeg reads the first alone); () otherwise
    deep: bool  # deep data (samples per pixel), which FFmpeg does not read


def read_exr_header(head: bytes) -> ExrHeader | None:
    """The header at the start of an OpenEXR file, ``head`` its first bytes; None if it is not one."""
    if head[:4] != EXR_MAGIC or len(head) < 8:
        return None
    (version,) = struct.unpack_from("<I", head, 4)
    parts, position = [], 8
    while position < len(head):
        part, position = _attributes(head, position)
        if not part:  # the empty header that ends a multi-part file's list
            break
        parts.append(part)
        if not version & _MULTIPART:
            break
    first = parts[0] if parts else {}
    chromaticities = None
    if len(value := first.get(("chromaticities", "chromaticities"), b"")) == 32:
        numbers = struct.unpack("<8f", value)
        chromaticities = numbers if all(map(math.isfinite, numbers)) else None
    names = tuple(part.get(("name", "string"), b"").decode("utf-8", "replace") for part in parts)
    part_types = {part.get(("type", "string"), b"").decode("ascii", "replace") for part in parts}
    return ExrHeader(chromaticities=chromaticities, parts=names if version & _MULTIPART else (),
                     deep=bool(version & _DEEP) or any(kind.startswith("deep") for kind in part_types))


def with_chromaticities(data: bytes, chromaticities: tuple[float, ...]) -> bytes:
    """A single-part scan-line OpenEXR file (as FFmpeg's encoder writes one) saying ``chromaticities``: the attribute
    added at the end of its header, and every chunk's offset moved past it."""
    if data[:4] != EXR_MAGIC or struct.unpack_from("<I", data, 4)[0] & (_TILED | _DEEP | _MULTIPART):
        raise ValueError("not a single-part scan-line OpenEXR file")
    attributes, end = _attributes(data, 8)
    if ("chromaticities", "chromaticities") in attributes:
        raise ValueError("its header already names its chromaticities")
    x_min, y_min, x_max, y_max = struct.unpack("<4i", attributes[("dataWindow", "box2i")])
    chunks = math.ceil((y_max - y_min + 1) / _LINES_PER_CHUNK[attributes[("compression", "compression")][0]])
    attribute = b"chromaticities\0chromaticities\0" + struct.pack("<i8f", 32, *chromaticities)
    header_end = end - 1  # the null byte that ends the list
    offsets = [offset + len(attribute) for offset in struct.unpack_from(f"<{chunks}Q", data, end)]
    return b"".join([data[:header_end], attribute, b"\0", struct.pack(f"<{chunks}Q", *offsets),
                     data[end + 8 * chunks:]])


def _attributes(data: bytes, position: int) -> tuple[dict[tuple[str, str], bytes], int]:
    """The attributes of the header at ``position``, by (name, type), and where the byte after its end is; a header
    cut short by ``data``'s end is read as far as it goes."""
    attributes = {}
    while position < len(data) and data[position] != 0:
        name_end = data.find(b"\0", position)
        type_end = data.find(b"\0", name_end + 1)
        if name_end < 0 or type_end < 0 or type_end + 5 > len(data):
            return attributes, len(data)
        (size,) = struct.unpack_from("<i", data, type_end + 1)
        value_start = type_end + 5
        name, kind = data[position:name_end].decode("latin-1"), data[name_end + 1:type_end].decode("latin-1")
        attributes[(name, kind)] = data[value_start:value_start + size]
        position = value_start + size
    return attributes, position + 1
