"""JPEG 2000 files (``.jp2``), the format many archives keep their preservation masters in: what Pillow does not
read of a file's boxes, and the boxes its encoder does not write.

    boxes = read_jp2_boxes(f)        # Jp2Boxes(bits=12, signed=False, icc=b"...", exif=b"II*...", xmp=b"<?xpacket...")
    data = with_jp2_metadata(encoded, icc=..., exif=..., xmp=..., dpi=(600.0, 600.0))

Pillow (OpenJPEG) decodes a JP2 file's pixels and reads its capture resolution, but not the ICC profile in its
colour specification box, nor the EXIF and XMP that exiftool and archive tools keep in ``uuid`` boxes (XMP in an
``xml `` box too, where a writer put it there); and its encoder, like OpenCV's, writes none of them. A gray master
of 12 bits Pillow hands over shifted to 16; one in colour deeper than 8 it cuts to 8 bits, so ``worker.images``
reads that with OpenCV, at its precision, from ``bits`` here.

Layout (ISO/IEC 15444-1, annex I): a file is a list of boxes (``worker.boxes``). The header box
``jp2h`` holds the image header ``ihdr`` (size, components, their depth), ``bpcc`` where components differ in depth,
the colour specifications ``colr`` (the first is the one readers use: an enumerated space, or an ICC profile), and
the resolution box ``res `` (``resc``, capture resolution, and ``resd``, default display resolution, in points per
metre). The codestream ``jp2c`` follows.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from worker.boxes import box, boxes_in, file_boxes

JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
# The uuid boxes' identifiers: exiftool's (and the JPEG 2000 EXIF convention's) for EXIF in TIFF layout, and
# Adobe's for XMP.
EXIF_UUID = b"JpgTiffExif->JP2"
XMP_UUID = bytes.fromhex("be7acfcb97a942e89c71999491e3afac")
_ICC_METHODS = (2, 3)  # colr methods that carry a profile: restricted ICC (JP2's) and any ICC (JPX's)
_METRES_PER_INCH = 0.0254
# The codestream's main header (ISO/IEC 15444-1, annex A): markers from SOC to the first tile's SOT, each after the
# first two with a 16-bit length. COD's style of coding ends with the wavelet: 0 the irreversible 9/7 (lossy), 1 the
# reversible 5/3 (lossless, as masters are kept).
_SOC, _SOT, _COD = 0xFF4F, 0xFF90, 0xFF52
_COD_TRANSFORM = 9  # in COD's contents: Scod, then progression, layers (2 bytes), MCT, levels, block sizes, style
_MAIN_HEADER_BYTES = 1 << 16  # read of a codestream to find COD: it follows SIZ, before any tile
# The most of a header, uuid or XML box read: EXIF and XMP take kilobytes; a larger box (an embedded picture or
# georeferencing) is skipped, not read into memory.
_METADATA_BOX_LIMIT = 16 << 20


@dataclass(frozen=True)
class Jp2Boxes:
    """What a JP2 file's boxes say (``read_jp2_boxes``), its codestream's coding too."""

    bits: int  # the components' depth (the deepest, where they differ)
    signed: bool  # whether any component holds signed samples
    icc: bytes | None = None  # the first colour specification's profile, where it is one
    exif: bytes | None = None  # in TIFF layout ("II*\0..."), as Pillow's ``Image.Exif.load`` takes it
    xmp: bytes | None = None
    reversible: bool | None = None  # its wavelet: the reversible 5/3 (lossless) or not; None if unread
    compression: float | None = None  # how many times smaller the codestream is than its samples, 8 or 16-bit
    # Its resolution in dots per inch (x, y): the capture resolution, else the default display one (which Pillow
    # does not read); None where it gives neither.
    dpi: tuple[float, float] | None = None


def read_jp2_boxes(f: BinaryIO) -> Jp2Boxes | None:
    """What the boxes of the JP2 file open as ``f`` say, read box by box (the codestream is skipped, not read);
    None if it is not a JP2 file or says no depth. Boxes cut short are read as far as they go."""
    f.seek(0)
    if f.read(len(JP2_SIGNATURE)) != JP2_SIGNATURE:
        return None
    depths: list[int] = []
    icc = exif = xmp = xml_xmp = reversible = compression = dpi = None
    colour_seen = False
    samples = 0
    for kind, start, end in file_boxes(f, len(JP2_SIGNATURE)):
        if kind == b"jp2c":  # the codestream: its main header alone is read
            f.seek(start)
            reversible = _reversible(f.read(_MAIN_HEADER_BYTES if end is None else min(end - start,
                                                                                      _MAIN_HEADER_BYTES)))
            length = (end if end is not None else f.seek(0, 2)) - start
            compression = samples / length if samples and length > 0 else None
            continue
        if kind not in (b"jp2h", b"uuid", b"xml "):
            continue
        f.seek(start)
        contents = f.read(_METADATA_BOX_LIMIT + 1 if end is None else min(end - start, _METADATA_BOX_LIMIT + 1))
        if len(contents) > _METADATA_BOX_LIMIT:
            continue
        if kind == b"jp2h":
            for child, body in boxes_in(contents):
                if child == b"ihdr" and len(body) >= 11:
                    height, width, components, depth = struct.unpack_from(">IIHB", body)
                    depths = [depth] * components if depth != 0xFF else depths
                    samples = height * width * components
                elif child == b"bpcc":
                    depths = list(body)
                elif child == b"res ":
                    found = {name: _dpi(value) for name, value in boxes_in(body)}
                    dpi = found.get(b"resc") or found.get(b"resd")
                elif child == b"colr" and not colour_seen and len(body) >= 3:
                    colour_seen = True  # the first colour specification is the one to use
                    if body[0] in _ICC_METHODS and len(body) > 3:
                        icc = body[3:]
        elif kind == b"uuid" and len(contents) > 16:
            identifier, payload = contents[:16], contents[16:]
            if identifier == EXIF_UUID and exif is None:
                exif = payload[6:] if payload.startswith(b"Exif\0\0") else payload
            elif identifier == XMP_UUID and xmp is None:
                xmp = payload
        elif kind == b"xml " and xml_xmp is None and b"xmpmeta" in contents:
            xml_xmp = contents  # XMP some writers keep in an XML box instead of Adobe's uuid box
    if not depths:
        return None
    bits = max((d & 0x7F) + 1 for d in depths)
    return Jp2Boxes(bits=bits, signed=any(d & 0x80 for d in depths), icc=icc, exif=exif, xmp=xmp or xml_xmp,
                    reversible=reversible, compression=compression and compression * (1 if bits <= 8 else 2),
                    dpi=dpi)


def _dpi(resolution: bytes) -> tuple[float, float] | None:
    """A ``resc`` or ``resd`` box's contents (vertical, then horizontal, points per metre as N / D x 10^E) as dots
    per inch, horizontal first; None where it is malformed or says none."""
    if len(resolution) != 10:
        return None
    v_num, v_den, h_num, h_den, v_exp, h_exp = struct.unpack(">HHHHbb", resolution)
    if not (v_num and v_den and h_num and h_den):
        return None
    return h_num / h_den * 10.0 ** h_exp * _METRES_PER_INCH, v_num / v_den * 10.0 ** v_exp * _METRES_PER_INCH


def _reversible(main_header: bytes) -> bool | None:
    """Whether the codestream whose first bytes are ``main_header`` is coded with the reversible wavelet (from its
    COD marker); None where its main header does not say within those bytes."""
    if main_header[:2] != _SOC.to_bytes(2, "big"):
        return None
    position = 2
    while position + 4 <= len(main_header):
        marker, length = struct.unpack_from(">HH", main_header, position)
        if marker == _SOT:
            return None
        if marker == _COD and position + 4 + _COD_TRANSFORM < len(main_header):
            return main_header[position + 4 + _COD_TRANSFORM] == 1
        position += 2 + length
    return None


def with_jp2_metadata(data: bytes, icc: bytes | None = None, exif: bytes | None = None, xmp: bytes | None = None,
                      dpi: tuple[float, float] | None = None) -> bytes:
    """The JP2 file ``data`` (as OpenJPEG writes one, through Pillow or OpenCV) with ``icc`` as its colour
    specification (a restricted-ICC ``colr`` box in place of its enumerated one), ``dpi`` as its capture resolution,
    and ``exif`` (in TIFF layout, or after an "Exif\\0\\0" prefix) and ``xmp`` in uuid boxes after its codestream."""
    if not data.startswith(JP2_SIGNATURE):
        raise ValueError("not a JP2 file")
    out = [JP2_SIGNATURE]
    for kind, contents in boxes_in(data[len(JP2_SIGNATURE):]):
        if kind == b"jp2h":
            replaced = {b"res ", b"colr"} if icc else {b"res "}
            children = [(child, body) for child, body in boxes_in(contents) if child not in replaced]
            if icc:
                at = next(i for i, (child, _) in enumerate(children) if child == b"ihdr") + 1
                at += any(child == b"bpcc" for child, _ in children)  # colr follows ihdr and bpcc
                children.insert(at, (b"colr", bytes((2, 0, 0)) + icc))
            if dpi:
                children.append((b"res ", box(b"resc", _capture_resolution(dpi))))
            contents = b"".join(box(child, body) for child, body in children)
        out.append(box(kind, contents))
    if exif:
        out.append(box(b"uuid", EXIF_UUID + (exif[6:] if exif.startswith(b"Exif\0\0") else exif)))
    if xmp:
        out.append(box(b"uuid", XMP_UUID + xmp))
    return b"".join(out)


def _capture_resolution(dpi: tuple[float, float]) -> bytes:
    """A ``resc`` box's contents for ``dpi``: each direction's points per metre as N / 127 x 10^E, which is exactly
    a whole number of fifths of a dot per inch at E = 3 (Pillow reads N x 10^E / 5000 dpi); a larger E for a
    resolution past 13,107 dpi."""
    fields = []
    for value in (dpi[1], dpi[0]):  # vertical first
        exponent = 3
        while round(value * 5 * 10 ** (3 - exponent)) > 0xFFFF:
            exponent += 1
        fields.append((round(value * 5 * 10 ** (3 - exponent)), 127, exponent))
    (v_num, v_den, v_exp), (h_num, h_den, h_exp) = fields
    return struct.pack(">HHHHbb", v_num, v_den, h_num, h_den, v_exp, h_exp)
