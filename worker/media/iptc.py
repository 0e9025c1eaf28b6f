"""IPTC-IIM, the captions, credits, copyright notices and keywords archives have kept in their photos since the
1990s, and the Photoshop image resources that carry it, from a source to its copy.

Where it lives: in a JPEG's APP13 segment ("Photoshop 3.0" image resources; the IIM is resource 0x0404), in a
TIFF's tags 33723 (the IIM itself) and 34377 (image resources), in a PNG's "Raw profile type iptc" text (the hex
dump ImageMagick and exiftool write), in a JP2's uuid box (``worker.media.jpeg2000``; the IIM alone). Pillow writes none
of them, so JPEG copies lost their IPTC without a word; and it reads tag 33723 as one number where Photoshop and
exiftool store LONGs, so TIFF copies carried 7 bytes of it, which exiftool reads as bad IPTC data.

Only the resources about the picture's content travel: the IIM, its digest, the copyright flag, the URL and the
legacy caption. The others describe the source's pixels (thumbnails, resolution, layers, channels, print
settings) and would be wrong about the copy's. XMP, where newer software keeps the same fields, travels beside
this (``worker.media.images``). Everything is carried byte for byte: the IIM's digest stays true.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from PIL import Image, TiffTags

IPTC_NAA = 0x0404
#: The image resources carried: legacy caption, IPTC-NAA record, copyright flag, URL, IPTC digest (an MD5 of the
#: IIM that Photoshop compares with XMP's to see whether other software changed one of the two).
CARRIED_RESOURCES = frozenset({0x03F0, IPTC_NAA, 0x040A, 0x040B, 0x0425})
TIFF_IPTC_TAG = 33723
TIFF_RESOURCES_TAG = 34377
PNG_TEXT_KEY = "Raw profile type iptc"
_APP13_HEADER = b"Photoshop 3.0\x00"
_RESOURCE_SIGNATURE = b"8BIM"
_IIM_TAG_MARKER = 0x1C  # every IIM dataset starts with it
_MARKER_BYTES = 65533  # the payload one JPEG marker segment can hold

# Pillow's table of TIFF tags calls the IPTC tag one value: it read Photoshop's and exiftool's LONGs as the first of
# them (warning "tag 33723 had too many entries") and wrote back one. As any number of LONGs, its values are read
# and written whole.
TiffTags.TAGS_V2[TIFF_IPTC_TAG] = TiffTags.TagInfo(TIFF_IPTC_TAG, "IptcNaaInfo", TiffTags.LONG, 0)


@dataclass(frozen=True)
class Resource:
    """One Photoshop image resource: its id, its Pascal-string name (usually empty) and its data."""

    id: int
    name: bytes
    data: bytes


def read_resources(im: Image.Image) -> bytes | None:
    """The carried image resources of a JPEG, TIFF, PNG or JP2 file that Pillow opened, as image resource bytes;
    None if it has none."""
    resources: list[Resource] = []
    if im.format in ("JPEG", "MPO"):
        # A block over one segment's size continues in the next APP13 (exiftool and Photoshop split it so).
        block = b"".join(data[len(_APP13_HEADER):] for marker, data in getattr(im, "applist", [])
                         if marker == "APP13" and data.startswith(_APP13_HEADER))
        resources = parse_resources(block)
    elif im.format == "TIFF":
        block = im.tag_v2.get(TIFF_RESOURCES_TAG)
        resources = parse_resources(bytes(block)) if isinstance(block, bytes | tuple) else []
        iim = _tiff_iim(im)
        if iim and not any(resource.id == IPTC_NAA for resource in resources):
            resources.append(Resource(IPTC_NAA, b"", iim))
    elif im.format == "PNG":
        resources = _png_resources(im.info.get(PNG_TEXT_KEY))
    elif im.format == "JPEG2000":
        record = getattr(im.info.get("jp2"), "iptc", None)  # read from its uuid box by worker.media.jpeg2000
        resources = [Resource(IPTC_NAA, b"", record)] if record else []
    carried = [resource for resource in resources if resource.id in CARRIED_RESOURCES]
    return resources_bytes(carried) if carried else None


def parse_resources(block: bytes) -> list[Resource]:
    """Image resources in ``block``; a damaged one ends the list (what came before it is kept)."""
    resources, at = [], 0
    while at + 12 <= len(block) and block[at:at + 4] == _RESOURCE_SIGNATURE:
        ident = struct.unpack_from(">H", block, at + 4)[0]
        name_length = block[at + 6]
        name = block[at + 7:at + 7 + name_length]
        at += 6 + ((1 + name_length + 1) & ~1)  # the name and its length byte, padded to even
        if at + 4 > len(block):
            break
        size = struct.unpack_from(">I", block, at)[0]
        data = block[at + 4:at + 4 + size]
        if len(data) < size:
            break
        resources.append(Resource(ident, name, data))
        at += 4 + size + (size & 1)
    return resources


def resources_bytes(resources: list[Resource]) -> bytes:
    out = bytearray()
    for resource in resources:
        name = bytes([len(resource.name)]) + resource.name
        out += _RESOURCE_SIGNATURE + struct.pack(">H", resource.id) + name + b"\x00" * (len(name) & 1)
        out += struct.pack(">I", len(resource.data)) + resource.data + b"\x00" * (len(resource.data) & 1)
    return bytes(out)


def iim(block: bytes | None) -> bytes | None:
    """The IPTC-IIM record in carried resources, if any."""
    return next((resource.data for resource in parse_resources(block or b"") if resource.id == IPTC_NAA), None)


def jpeg_segment(block: bytes) -> bytes | None:
    """``block`` as a JPEG APP13 segment (marker included), for Pillow's ``extra``; None if it does not fit one
    (an IIM of over 64 KB: a caption is a few hundred bytes)."""
    payload = _APP13_HEADER + block
    if len(payload) > _MARKER_BYTES:
        return None
    return b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload


def tiff_tags(block: bytes) -> dict[int, tuple[int, bytes | tuple[int, ...]]]:
    """``block`` as the tags of a little-endian TIFF, each (TIFF type, value), placed as exiftool reads them as
    standard: the IIM in its own tag, as LONGs (Photoshop's type; the IIM padded to whole LONGs), and the other
    resources, if any, in theirs, as BYTEs."""
    tags: dict[int, tuple[int, bytes | tuple[int, ...]]] = {}
    record = iim(block)
    if record:
        padded = record + b"\x00" * (-len(record) % 4)
        tags[TIFF_IPTC_TAG] = (4, struct.unpack(f"<{len(padded) // 4}I", padded))
    others = [resource for resource in parse_resources(block) if resource.id != IPTC_NAA]
    if others:
        tags[TIFF_RESOURCES_TAG] = (1, resources_bytes(others))
    return tags


def png_text(block: bytes) -> str:
    """``block`` as a PNG text, in the form ImageMagick and exiftool write and read: a type line, the length, and
    the bytes in hex, 36 to a line."""
    data = block.hex()
    lines = "\n".join(data[i:i + 72] for i in range(0, len(data), 72))
    return f"\nIPTC profile\n{len(block):8d}\n{lines}\n"


def _png_resources(text: str | bytes | None) -> list[Resource]:
    if not text:
        return []
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    lines = text.strip().split("\n")
    try:
        data = bytes.fromhex("".join(lines[2:]))  # after the type line and the length line
    except ValueError:
        return []
    if data.startswith(_APP13_HEADER):
        data = data[len(_APP13_HEADER):]
    if data.startswith(_RESOURCE_SIGNATURE):  # exiftool writes image resources here
        return parse_resources(data)
    if data[:1] == bytes([_IIM_TAG_MARKER]):  # ImageMagick may write the bare IIM
        return [Resource(IPTC_NAA, b"", data)]
    return []


def _tiff_iim(im: Image.Image) -> bytes | None:
    """Tag 33723's bytes, as the file stores them: as LONGs (in its byte order), or as BYTEs or UNDEFINED."""
    value = im.tag_v2.get(TIFF_IPTC_TAG)
    if isinstance(value, tuple) and im.tag_v2.tagtype.get(TIFF_IPTC_TAG) == TiffTags.LONG:
        value = struct.pack(f"{'<' if im.tag_v2.prefix == b'II' else '>'}{len(value)}I", *value)
    elif isinstance(value, tuple | int):
        value = bytes(value if isinstance(value, tuple) else (value,))
    return value if isinstance(value, bytes) and value[:1] == bytes([_IIM_TAG_MARKER]) else None
