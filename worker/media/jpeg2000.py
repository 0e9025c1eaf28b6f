"""JPEG 2000 files (``.jp2``), the format many archives keep their preservation masters in: what Pillow does not
read of a file's boxes, and the boxes its encoder does not write.

    boxes = read_jp2_boxes(f)        # Jp2Boxes(bits=12, signed=False, icc=b"...", exif=b"II*...", xmp=b"<?xpacket...")
    options = copy_options(boxes.coding, (width, height), lossless=True, compression=boxes.compression)
    data = with_jp2_metadata(encoded, icc=..., exif=..., xmp=..., dpi=(600.0, 600.0))

Pillow (OpenJPEG) decodes a JP2 file's pixels and reads its capture resolution, but not the ICC profile in its
colour specification box, nor the EXIF and XMP that exiftool and archive tools keep in ``uuid`` boxes (XMP in an
``xml `` box too, where a writer put it there); and its encoder, like OpenCV's, writes none of them. A gray master
of 12 bits Pillow hands over shifted to 16; one in colour deeper than 8 it cuts to 8 bits, so ``worker.media.images``
reads that with OpenCV, at its precision, from ``bits`` here. How its codestream is coded (``Coding``: tiles,
levels, progression, layers) is read from its main header, for a copy coded as it was (``copy_options``).

Layout (ISO/IEC 15444-1, annex I): a file is a list of boxes (``worker.media.boxes``). The header box
``jp2h`` holds the image header ``ihdr`` (size, components, their depth), ``bpcc`` where components differ in depth,
the colour specifications ``colr`` (the first is the one readers use: an enumerated space, or an ICC profile), and
the resolution box ``res `` (``resc``, capture resolution, and ``resd``, default display resolution, in points per
metre). The codestream ``jp2c`` follows.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

from worker.media.boxes import box, boxes_in, file_boxes

JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
# The uuid boxes' identifiers: exiftool's (and the JPEG 2000 EXIF convention's) for EXIF in TIFF layout, Adobe's
# for XMP, and for IPTC-IIM exiftool's and the one Adobe's JPEG 2000 plug-in for Photoshop wrote.
EXIF_UUID = b"JpgTiffExif->JP2"
XMP_UUID = bytes.fromhex("be7acfcb97a942e89c71999491e3afac")
IPTC_UUIDS = (bytes.fromhex("33c7a4d2b81d4723a0baf1a3e097ad38"), bytes.fromhex("09a14e97c0b442e0bebf36df6f0ce36f"))
_ICC_METHODS = (2, 3)  # colr methods that carry a profile: restricted ICC (JP2's) and any ICC (JPX's)
_METRES_PER_INCH = 0.0254
# The codestream's main header (ISO/IEC 15444-1, annex A): markers from SOC to the first tile's SOT, each after the
# first two with a 16-bit length. SIZ gives the image's and the tiles' sizes and offsets on the reference grid; COD
# the default coding: its style (bit 0: precinct sizes follow), progression order, quality layers, multiple-component
# transform, wavelet levels, code-block size, and the wavelet itself: 0 the irreversible 9/7 (lossy), 1 the reversible
# 5/3 (lossless, as masters are kept). A tile-part header (SOT to SOD) may list its packets' lengths (PLT).
_SOC, _SIZ, _COD, _PLT, _COM, _SOT, _SOD = 0xFF4F, 0xFF51, 0xFF52, 0xFF58, 0xFF64, 0xFF90, 0xFF93
_BARE_CODESTREAM = b"\xff\x4f\xff\x51"  # a file that starts with SOC and SIZ: a codestream stored alone
_SIZ_COMPONENTS = 40  # in a codestream, where SIZ's component count is: after SOC, SIZ's marker, length and grid
_COM_LATIN = 1  # a comment marker's registration value for text in ISO 8859-15
PROGRESSIONS = ("LRCP", "RLCP", "RPCL", "PCRL", "CPRL")
_MAIN_HEADER_BYTES = 1 << 16  # read of a codestream for its main header and its first tile-part header's
_MAX_LAYERS = 100  # OpenJPEG codes at most 100 quality layers
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
    coding: Coding | None = None  # how its codestream is coded; None if its main header was not read
    compression: float | None = None  # how many times smaller the codestream is than its samples, 8 or 16-bit
    # Its resolution in dots per inch (x, y): the capture resolution, else the default display one (which Pillow
    # does not read); None where it gives neither.
    dpi: tuple[float, float] | None = None
    iptc: bytes | None = None  # IPTC-IIM (``worker.media.iptc``)

    @property
    def reversible(self) -> bool | None:
        """Its wavelet: the reversible 5/3 (lossless) or not; None if unread."""
        return self.coding.reversible if self.coding else None


@dataclass(frozen=True)
class Coding:
    """How a codestream is coded (its SIZ and COD markers, ``read_coding``): what a copy coded as it was needs. An
    archive's access copies are laid out for its image server (tiles, precincts and a progression order for reading
    regions at any zoom, quality layers for streaming), and its masters by its preservation profile."""

    reversible: bool  # the reversible 5/3 wavelet (lossless) or the irreversible 9/7
    layers: int  # quality layers
    progression: str  # one of PROGRESSIONS
    levels: int  # wavelet decomposition levels (resolutions less one)
    code_block: tuple[int, int]  # code-block width and height
    precinct: tuple[int, int] | None  # the full resolution's precincts; None: one precinct per resolution
    size: tuple[int, int]  # the image's width and height
    tile: tuple[int, int]  # the tiles' width and height (the image's size where it is one tile)
    offset: tuple[int, int]  # the image's offset on the reference grid
    tile_offset: tuple[int, int]  # the first tile's offset on it
    plt: bool  # whether the first tile-part lists its packets' lengths, for servers to find them without decoding

    @property
    def tiled(self) -> bool:
        """Whether the image is cut into more than one tile."""
        return self.tile[0] < self.size[0] + self.offset[0] - self.tile_offset[0] or \
            self.tile[1] < self.size[1] + self.offset[1] - self.tile_offset[1]


def read_jp2_boxes(f: BinaryIO) -> Jp2Boxes | None:
    """What the boxes of the JP2 (or JPX) file open as ``f`` say, read box by box (the codestream is skipped, not
    read); for a codestream stored alone (``.j2k``), what its main header says. None if it is neither, or says no
    depth. Boxes cut short are read as far as they go."""
    f.seek(0)
    signature = f.read(len(JP2_SIGNATURE))
    if signature.startswith(_BARE_CODESTREAM):
        f.seek(0)
        return _bare_codestream(f.read(_MAIN_HEADER_BYTES), f.seek(0, 2))
    if signature != JP2_SIGNATURE:
        return None
    depths: list[int] = []
    icc = exif = xmp = xml_xmp = coding = compression = dpi = iptc = None
    colour_seen = False
    samples = 0
    for kind, start, end in file_boxes(f, len(JP2_SIGNATURE)):
        if kind == b"jp2c":  # the codestream: its main header alone is read
            f.seek(start)
            coding = read_coding(f.read(_MAIN_HEADER_BYTES if end is None else min(end - start, _MAIN_HEADER_BYTES)))
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
            elif identifier in IPTC_UUIDS and iptc is None:
                iptc = payload
        elif kind == b"xml " and xml_xmp is None and b"xmpmeta" in contents:
            xml_xmp = contents  # XMP some writers keep in an XML box instead of Adobe's uuid box
    if not depths:
        return None
    bits, signed = _depth(depths)
    return Jp2Boxes(bits=bits, signed=signed, icc=icc, exif=exif, xmp=xmp or xml_xmp, coding=coding,
                    compression=compression and compression * (1 if bits <= 8 else 2), dpi=dpi, iptc=iptc)


def _depth(depths) -> tuple[int, bool]:
    """The deepest component's bits, and whether any is signed, from depth bytes as JP2's header and a codestream's
    SIZ code them: bit 7 signed, then the depth less one."""
    return max((d & 0x7F) + 1 for d in depths), any(d & 0x80 for d in depths)


def lacks_jp2_header(f: BinaryIO) -> bool:
    """Whether the file open as ``f`` is of JP2's family but holds no JP2 header box (``jp2h``): a JPX file laid out
    for JPX readers alone (its header in JPX's own boxes), which JP2 readers, OpenJPEG's among them, cannot read."""
    f.seek(0)
    if f.read(len(JP2_SIGNATURE)) != JP2_SIGNATURE:
        return False
    return all(kind != b"jp2h" for kind, _, _ in file_boxes(f, len(JP2_SIGNATURE)))


def _bare_codestream(main_header: bytes, length: int) -> Jp2Boxes | None:
    """What a codestream stored alone says in its main header (``main_header``, of a file of ``length`` bytes): its
    components' depths, after SIZ's grid, and its coding. It has no boxes: no profile, EXIF, XMP or resolution."""
    if len(main_header) < _SIZ_COMPONENTS + 2:
        return None
    (components,) = struct.unpack_from(">H", main_header, _SIZ_COMPONENTS)
    depths = main_header[_SIZ_COMPONENTS + 2:_SIZ_COMPONENTS + 2 + 3 * components:3]
    coding = read_coding(main_header)
    if not components or len(depths) < components or coding is None:
        return None
    bits, signed = _depth(depths)
    samples = coding.size[0] * coding.size[1] * components
    return Jp2Boxes(bits=bits, signed=signed, coding=coding, compression=samples / length * (1 if bits <= 8 else 2))


def _dpi(resolution: bytes) -> tuple[float, float] | None:
    """A ``resc`` or ``resd`` box's contents (vertical, then horizontal, points per metre as N / D x 10^E) as dots
    per inch, horizontal first; None where it is malformed or says none."""
    if len(resolution) != 10:
        return None
    v_num, v_den, h_num, h_den, v_exp, h_exp = struct.unpack(">HHHHbb", resolution)
    if not (v_num and v_den and h_num and h_den):
        return None
    return h_num / h_den * 10.0 ** h_exp * _METRES_PER_INCH, v_num / v_den * 10.0 ** v_exp * _METRES_PER_INCH


def read_coding(main_header: bytes) -> Coding | None:
    """How the codestream whose first bytes are ``main_header`` is coded (its SIZ and COD markers, and whether its
    first tile-part header holds PLT); None where those bytes do not say."""
    if main_header[:2] != _SOC.to_bytes(2, "big"):
        return None
    grid = default = None
    plt = in_tile_part = False
    position = 2
    while position + 4 <= len(main_header):
        marker, length = struct.unpack_from(">HH", main_header, position)
        contents = main_header[position + 4:position + 2 + length]
        if len(contents) < length - 2 or marker == _SOD:
            break
        if marker == _SIZ and len(contents) >= 36:
            grid = struct.unpack_from(">8I", contents, 2)  # after Rsiz: Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, ...
        elif marker == _COD and len(contents) >= 10 and not in_tile_part:
            default = contents
        elif marker == _PLT:
            plt = True
        elif marker == _SOT:
            in_tile_part = True
        position += 2 + length
    if grid is None or default is None or default[1] >= len(PROGRESSIONS):
        return None
    width, height, x_offset, y_offset, tile_width, tile_height, tile_x, tile_y = grid
    style, progression, layers, _mct, levels, block_width, block_height, _block_style, wavelet = \
        struct.unpack_from(">BBHBBBBBB", default)
    precinct = None
    if style & 1 and len(default) >= 10 + levels + 1:
        exponents = default[10 + levels]  # the last resolution's, the full one: PPy in the high nibble, PPx low
        precinct = (1 << (exponents & 0xF), 1 << (exponents >> 4))
    return Coding(reversible=wavelet == 1, layers=layers, progression=PROGRESSIONS[progression], levels=levels,
                  code_block=(1 << (block_width + 2), 1 << (block_height + 2)), precinct=precinct,
                  size=(width - x_offset, height - y_offset), tile=(tile_width, tile_height),
                  offset=(x_offset, y_offset), tile_offset=(tile_x, tile_y), plt=plt)


def copy_options(coding: Coding | None, size: tuple[int, int], lossless: bool,
                 compression: float | None) -> dict[str, Any]:
    """Pillow's options for an RGB or RGBA copy, ``size`` (width, height), of a source coded as ``coding`` says:
    its tiles, wavelet levels, progression order, code blocks, precincts, packet-length markers and number of quality
    layers. Lossless (the reversible wavelet) where ``lossless`` or the source's ``compression`` is unknown, else the
    irreversible one at that compression. Layers below the last are spaced each twice the one below it in bytes, as
    archival profiles space them: the source's own rates are not in its headers.

    A copy is always coded with the multiple-component transform (JPEG 2000's YCbCr): without it, the default of
    both Pillow and OpenCV, each of red, green and blue carries every detail of the lightness: colour copies of 24
    gray BSDS500 masters were 58% larger lossless, and 6 dB further from the colour at the same compression.
    Pillow writes neither SOP nor EPH markers nor a TLM index, nor per-resolution precinct sizes: below the full
    resolution, each resolution's precincts are half the size of the one above."""
    lossless = lossless or compression is None
    options: dict[str, Any] = {"irreversible": not lossless, "mct": 1}
    layers = min(coding.layers, _MAX_LAYERS) if coding and compression else 1
    if layers > 1 or not lossless:
        rates = [compression * 2.0 ** (layers - 1 - layer) for layer in range(layers)]
        if lossless:
            rates[-1] = 0  # OpenJPEG's "as many bytes as it takes": the last layer lossless
        options.update(quality_mode="rates", quality_layers=rates)
    if coding is None:
        return options
    options.update(num_resolutions=coding.levels + 1, progression=coding.progression,
                   codeblock_size=coding.code_block, plt=coding.plt)
    if coding.precinct:
        options["precinct_size"] = coding.precinct
    if size == coding.size:  # not turned upright: the reference grid's offsets still mean what they meant
        if coding.tiled:
            options.update(tile_size=coding.tile, tile_offset=coding.tile_offset)
        if coding.offset != (0, 0):
            options["offset"] = coding.offset
    elif coding.tiled:
        options["tile_size"] = coding.tile[::-1]
    return options


def with_jp2_metadata(data: bytes, icc: bytes | None = None, exif: bytes | None = None, xmp: bytes | None = None,
                      dpi: tuple[float, float] | None = None, iptc: bytes | None = None) -> bytes:
    """The JP2 file ``data`` (as OpenJPEG writes one, through Pillow or OpenCV) with ``icc`` as its colour
    specification (a restricted-ICC ``colr`` box in place of its enumerated one), ``dpi`` as its capture resolution,
    and ``exif`` (in TIFF layout, or after an "Exif\\0\\0" prefix), ``xmp`` and ``iptc`` (IPTC-IIM) in uuid boxes
    after its codestream."""
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
    if iptc:
        out.append(box(b"uuid", IPTC_UUIDS[0] + iptc))
    return b"".join(out)


def bare_codestream(data: bytes, comment: str | None = None) -> bytes:
    """The codestream of the JP2 file ``data`` (its ``jp2c`` box) stored alone, as ``.j2k`` files hold one, with
    ``comment`` in a comment marker (COM) after SIZ: a codestream has no boxes, and so no other place for words. No
    offset in a codestream counts from its start (tile-parts give their own lengths), so a marker can go in."""
    codestream = next(contents for kind, contents in boxes_in(data[len(JP2_SIGNATURE):]) if kind == b"jp2c")
    if not comment:
        return codestream
    text = comment.encode("iso-8859-15", "replace")[:0xFFFF - 4]
    (siz_length,) = struct.unpack_from(">H", codestream, 4)
    after_siz = 4 + siz_length
    return (codestream[:after_siz] + struct.pack(">HHH", _COM, 4 + len(text), _COM_LATIN) + text
            + codestream[after_siz:])


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
