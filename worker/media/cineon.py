"""Kodak Cineon frames (``.cin``): the film scanner format of the 1990s that DPX grew from, still on archives' shelves.

FFmpeg has no Cineon decoder, but a Cineon frame of 10-bit RGB (the scanners' own layout: each pixel one 32-bit word,
red in its top ten bits, then green, then blue) holds its pixels exactly as a DPX frame does (SMPTE 268M's
"method A" filling). So a run of Cineon frames is read as DPX frames: ``as_dpx`` writes each frame's pixels, byte
for byte, behind a DPX header that says the same (printing density, as every Cineon frame is), and FFmpeg's DPX
decoder reads those. ``worker.media.frame_sequences`` does that a window of frames at a time, into a scratch folder.

    size = check_cineon_frame(path, header, os.path.getsize(path), None, run)   # refused by name if unreadable
    as_dpx(path, scratch / "scan_0086400.dpx")

Other layouts (8, 12 or 16 bits, one channel, separate planes, padded lines) are refused by name, with how to
convert them; Cineon's header offsets are Kodak's (Cineon Image File Format, 4.5).
"""

from __future__ import annotations

import logging
import math
import os
import struct
from fractions import Fraction
from pathlib import Path

from models.files import atomic_output
from worker.errors import BadInputError, frame_size_error

logger = logging.getLogger(__name__)

CINEON_MAGIC = {b"\x80\x2a\x5f\xd7": ">", b"\xd7\x5f\x2a\x80": "<"}
CINEON_HEADER_BYTES = 2048  # the generic header (1024 bytes), then the motion picture industry header
_DATA_OFFSET = 4  # U32: where the pixels start
_ORIENTATION = 192  # U8: 0 is left to right, top to bottom
_CHANNELS = 193  # U8
_BITS = 198  # U8: channel 1's bits per sample
_SIZE = 200  # U32 pixels per line, then U32 lines
_LAYOUT = 680  # U8 interleave (0: by pixel), U8 packing (5: 32-bit words, filled from the top), U8 sign, U8 sense
_PADDING = 684  # U32 end-of-line padding, then U32 end-of-image padding
_FRAME_RATE = 1072  # R32 in the motion picture industry header; 0 or all ones where unset
_FILLED_WORDS = 5

# DPX fields written (SMPTE 268M offsets, as worker.media.frame_sequences reads them).
_DPX_HEADER_BYTES = 2048
_DPX_FILM_RATE = 1724


def cineon_order(header: bytes) -> str | None:
    """The byte order (a struct prefix) of the Cineon frame whose first bytes are ``header``; None if it is none."""
    order = CINEON_MAGIC.get(header[:4])
    return order if order is not None and len(header) >= _FRAME_RATE + 4 else None


def check_cineon_frame(name: str | os.PathLike, header: bytes, size: int, film_size: tuple[int, int] | None,
                       film: str) -> tuple[int, int]:
    """The (width, height) of the Cineon frame ``name`` from its ``header`` (its first bytes) and stored ``size``.
    BadInputError naming the frame if it is no Cineon file, of a layout not read here, cut short, or not
    ``film_size`` (the run ``film``'s first frame's)."""
    order = cineon_order(header)
    if order is None:
        raise BadInputError(name, "not a Cineon file (no Cineon header)")
    width, height = struct.unpack_from(f"{order}II", header, _SIZE)
    channels, bits, orientation = header[_CHANNELS], header[_BITS], header[_ORIENTATION]
    interleave, packing = header[_LAYOUT], header[_LAYOUT + 1]
    line_padding, image_padding = struct.unpack_from(f"{order}II", header, _PADDING)
    if (channels, bits, interleave, packing) != (3, 10, 0, _FILLED_WORDS) or line_padding or image_padding:
        raise BadInputError(name, f"a Cineon frame of {channels} channels at {bits} bits (interleave {interleave}, "
                            f"packing {packing}, padding {line_padding}/{image_padding}); Tinct reads 10-bit RGB "
                            "Cineon, the scanners' own layout: convert the run to DPX first")
    if orientation != 0:
        raise BadInputError(name, f"a Cineon frame stored in orientation {orientation} (not left to right, top to "
                            "bottom): convert the run to DPX first")
    (data_offset,) = struct.unpack_from(f"{order}I", header, _DATA_OFFSET)
    needed = data_offset + 4 * width * height
    if size < needed:
        raise BadInputError(name, f"truncated: {size} bytes of the {needed} its header's {width}x{height} pixels need")
    if film_size is None:
        logger.info("%s: Cineon frames, log-encoded (printing density) as every Cineon scan is: read as Cineon log "
                    "(white at code 685 of 1023, black at 95), and the copy keeps the log encoding, its colour too",
                    film)
    elif (width, height) != film_size:
        raise frame_size_error(name, (width, height), film_size)
    return width, height


def cineon_frame_rate(header: bytes) -> Fraction | None:
    """The frame rate a Cineon frame's motion picture industry header declares; None where it is unset."""
    order = cineon_order(header)
    if order is None:
        return None
    (rate,) = struct.unpack_from(f"{order}f", header, _FRAME_RATE)
    return Fraction(rate).limit_denominator(1001) if math.isfinite(rate) and 1 <= rate <= 1000 else None


def as_dpx(source: Path, target: Path) -> None:
    """Write the Cineon frame ``source`` (checked by ``check_cineon_frame``) as the DPX frame ``target``: its pixels
    byte for byte, in its byte order, behind a DPX header of the same size and layout that says printing density."""
    with open(source, "rb") as f:
        header = f.read(CINEON_HEADER_BYTES)
        order = cineon_order(header)
        if order is None:
            raise BadInputError(source, "not a Cineon file (no Cineon header)")
        width, height = struct.unpack_from(f"{order}II", header, _SIZE)
        (data_offset,) = struct.unpack_from(f"{order}I", header, _DATA_OFFSET)
        f.seek(data_offset)
        pixels = f.read(4 * width * height)
    if len(pixels) < 4 * width * height:
        raise BadInputError(source, "truncated while it was read")
    rate = cineon_frame_rate(header)
    with atomic_output(target) as sink:
        sink.write(_dpx_header(order, width, height, len(pixels), rate))
        sink.write(pixels)


def _dpx_header(order: str, width: int, height: int, data_bytes: int, rate: Fraction | None) -> bytes:
    """A DPX header (SMPTE 268M, with the industry headers) for one element of 10-bit RGB filled into 32-bit words
    from the top, printing density; the fields it leaves unset are all ones, as the standard has them."""
    header = bytearray(b"\xff" * _DPX_HEADER_BYTES)
    header[0:4] = b"SDPX" if order == ">" else b"XPDS"
    struct.pack_into(f"{order}I", header, 4, _DPX_HEADER_BYTES)  # where the pixels start
    header[8:16] = b"V2.0\0\0\0\0"
    # The file's size, a new frame (ditto key 1), the generic and industry headers' sizes, no user data.
    struct.pack_into(f"{order}IIIII", header, 16, _DPX_HEADER_BYTES + data_bytes, 1, 1664, 384, 0)
    header[36:768] = bytes(732)  # file name, time, creator, project, copyright: none
    struct.pack_into(f"{order}HHII", header, 768, 0, 1, width, height)  # left to right, top to bottom; one element
    struct.pack_into(f"{order}IIfIf", header, 780, 0, 95, 0.0, 685, 2.048)  # unsigned; Cineon's black and white
    header[800:804] = bytes([50, 1, 1, 10])  # RGB, printing density (transfer and colorimetry), 10 bits
    struct.pack_into(f"{order}HHIII", header, 804, 1, 0, _DPX_HEADER_BYTES, 0, 0)  # filled, unencoded, no padding
    header[820:852] = bytes(32)  # no description
    header[1408:1724] = bytes(316)  # no source information, film maker, format or key numbers
    if rate is not None:
        struct.pack_into(f"{order}f", header, _DPX_FILM_RATE, float(rate))
    return bytes(header)
