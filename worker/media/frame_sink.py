"""Film output as numbered frames: a colour copy a finishing or conform pipeline takes back frame for frame.

    target = FrameTarget.parse("colour/reel1/scan_%07d.dpx")       # the run to write, named by its pattern
    layout = frames_layout(film.video, target)                      # 4:4:4 at the depth the format keeps
    with FrameWriter(work_folder, target, film, layout) as writer:
        writer.write(frame.index, frame.luma, frame.cb, frame.cr)   # one file per frame, each written atomically

Each frame keeps its number: a run of frames gets its own numbers back (``scan_0086400.dpx`` colours into
``scan_0086400.dpx`` of the output's pattern), a film file's frames are numbered from 0. Frames are R'G'B' computed
from the pipeline's Y'CbCr planes by the inverse of the matrix their luma was read with, so the lightness is the
source's: a black-and-white scan stored as R = G = B comes back with the same values wherever no colour was added.

Formats, by the output's suffix: DPX keeps 8, 10, 12 or 16 bits; TIFF and PNG keep 8 bits, or 16 for deeper
sources. OpenEXR frames hold linear light, in half floats (ZIP-compressed, as plates are): the copy's R'G'B' decoded
by the transfer its codes were read with (the sRGB curve; Cineon's for a log scan), and a plate of linear light's
copy keeps the plate's own light, each pixel's colour scaled to its luminance, highlights above display white too.
DPX frames get the film and television headers a scanner writes: the frame rate, and each frame's timecode where the
source has one (a run's DPX header, a file's timecode track), counted on as drop-frame where it is so; a DPX run's
copy keeps its transfer characteristic and colorimetric specification (a log scan's copy says it is log), and each
frame's copy what its scan said of it (``DPX_CARRIED_FIELDS``: its keycode, frame position, slate, project,
copyright, the scanner), with the scan frame's name and time as its source's. OpenEXR frames say their rate and
timecode, and each from a plate what its plate frame's header says of the picture (``worker.media.openexr``). Every
frame says it was colorized by Tinct, in its format's own field (``FrameWriter._with_metadata``); a DPX frame names
itself."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from models.color import BT709_LUMINANCE, cineon_to_linear, code_dtype, srgb_to_linear_np, ycbcr_to_rgb_np
from models.files import atomic_output
from worker.errors import BadInputError
from worker.media import tiff
from worker.media.frame_sequences import (
    DPX_DATA_OFFSET,
    DPX_GENERIC_HEADER_BYTES,
    DPX_HEADER_BYTES,
    DPX_LOG_TRANSFERS,
    DPX_MAGIC,
    DPX_RATE_OFFSETS,
    DPX_TIMECODE_OFFSET,
    DPX_TRANSFER_OFFSET,
    frame_name,
    frame_number,
    is_pattern,
    split_pattern,
)
from worker.media.images import described, png_with_text, tinct_version
from worker.media.openexr import (
    EXR_MAGIC,
    chromaticities_value,
    exr_comments,
    exr_timecode,
    frames_per_second_value,
    picture_attributes,
    timecode_value,
    with_attributes,
)
from worker.media.video_sink import OutputLayout
from worker.media.video_source import FilmInfo, FrameLayout, VideoFormat, plate_conversion

# Per output suffix: the image encoder, and its pixel format for each bit depth it keeps.
FRAME_FORMATS = {
    ".dpx": ("dpx", {8: "rgb24", 10: "gbrp10le", 12: "gbrp12le", 16: "rgb48le"}),
    ".tif": ("tiff", {8: "rgb24", 16: "rgb48le"}),
    ".tiff": ("tiff", {8: "rgb24", 16: "rgb48le"}),
    ".png": ("png", {8: "rgb24", 16: "rgb48be"}),
    ".exr": ("exr", {16: "gbrpf32le"}),  # from the pipeline's 16-bit codes, as linear light
}
# OpenEXR frames as plates are stored: half floats, each block of 16 lines ZIP-compressed.
EXR_OPTIONS = {"format": "half", "compression": "zip16"}
EXR_BLACK = 1e-6  # a pixel darker than this has no colour to scale to its plate's light: it is given the light, gray
DPX_INDUSTRY_HEADER_BYTES = DPX_HEADER_BYTES - DPX_GENERIC_HEADER_BYTES
DPX_INDUSTRY_SIZE_OFFSET = 28  # U32: how many bytes of industry headers follow the generic ones
DPX_ELEMENT_DATA_OFFSET = 808  # U32: where image element 1's data starts
PRINTING_DENSITY = (1, 1)  # SMPTE 268M transfer characteristic and colorimetric specification of a Cineon log scan
# What a scan's DPX frame says of itself besides its pixels, carried into its copy's headers field for field: (offset,
# struct format) in SMPTE 268M's file header (project name, copyright), orientation header (where the picture lies in
# the scan: offsets, centre, original size; the scanner's name and serial; borders; the scanned size), film header
# (the keycode: film maker, film type, perforation offset, prefix, count; format; frame position, sequence length,
# held count; shutter angle; frame id; slate) and television header (user bits; interlace, field, signal standard;
# sampling rates; time offset, gamma, black and white levels, integration time). Numbers are moved as integers of
# their width, so an unset one (all ones) stays unset whatever its type and byte order.
DPX_CARRIED_FIELDS = (
    (260, "200s"), (460, "200s"),
    (1408, "6I"), (1556, "32s32s"), (1620, "4H"), (1636, "2I"),
    (1664, "2s2s2s6s4s32s"), (1712, "3I"), (1728, "I"), (1732, "32s100s"),
    (1924, "I"), (1928, "3B"), (1932, "2I"), (1944, "7I"),
)
DPX_FILE_NAME = (36, 100)  # file header: the file's own name
DPX_CREATION_TIME = (136, 24)  # file header: when the file was made ("YYYY:MM:DD:hh:mm:ssLTZ")
DPX_CREATOR = (160, 100)  # file header: who made it
DPX_SOURCE_NAME = (1432, 100)  # orientation header: the file the picture was made from
DPX_SOURCE_TIME = (1532, 24)  # orientation header: when that file was made
_DPX_UNSET = 0xFFFFFFFF  # a 32-bit DPX field not filled in
_TIFF_DESCRIPTION, _TIFF_SOFTWARE = 270, 305


@dataclass(frozen=True)
class FrameTarget:
    """Where a colour copy's frames go: a folder and the printf pattern of their names."""

    folder: Path
    prefix: str
    digits: int
    suffix: str

    @classmethod
    def parse(cls, path: str | os.PathLike) -> FrameTarget:
        """The target named by the pattern ``path``; ValueError (a usage error) for a name no frames can have."""
        path = os.fspath(path)
        folder, name = os.path.split(path)
        try:
            prefix, digits, suffix = split_pattern(path, name)
        except BadInputError as exc:
            raise ValueError(str(exc)) from None
        if suffix.lower() not in FRAME_FORMATS:
            raise ValueError(f"{path}: frames are written as {', '.join(sorted(FRAME_FORMATS))}, not "
                             f"{suffix or 'no extension'!r}")
        return cls(Path(folder or "."), prefix, digits, suffix)

    def frame_path(self, number: int) -> Path:
        return self.folder / self.name(number)

    def name(self, number: int) -> str:
        return frame_name(self.prefix, self.digits, self.suffix, number)

    def existing(self) -> list[Path]:
        """Files in the folder already named as this target's frames."""
        if not self.folder.is_dir():
            return []
        return sorted(entry for entry in self.folder.iterdir()
                      if frame_number(entry.name, self.prefix, self.digits, self.suffix) is not None)


def is_frame_output(path: str | os.PathLike) -> bool:
    """Whether an output names a run of frames (a pattern), not a film file."""
    return is_pattern(path)


def frames_layout(video: VideoFormat, target: FrameTarget) -> OutputLayout:
    """4:4:4 (colour at every pixel, as R'G'B' frames hold it), at the deepest depth the format keeps up to the
    source's; full or limited range and the matrix as the source's luma was read."""
    encoder, formats = FRAME_FORMATS[target.suffix.lower()]
    depth = next((d for d in sorted(formats) if d >= video.bit_depth), max(formats))
    pix_fmt = "yuv444p" if depth == 8 else f"yuv444p{depth}le"
    keeps_light = video.scene_linear and encoder == "exr"
    return OutputLayout(encoder, pix_fmt, FrameLayout(depth, (0, 0), video.full_range, video.log_encoded, keeps_light),
                        video.matrix)


class FrameWriter:
    """Writes colour frames as files named by ``target`` into ``folder`` (a work folder; see ``publish``)."""

    def __init__(self, folder: Path, target: FrameTarget, film: FilmInfo, layout: OutputLayout,
                 provenance: str = "") -> None:
        """``provenance``: the sentence every frame gives in its format's own field
        (``worker.media.images.provenance_text``; "": none)."""
        self.folder = folder
        self.target = target
        self.layout = layout
        self.first = film.sequence.first if film.sequence is not None else 0
        self._sequence = film.sequence
        self._provenance = provenance
        self._software = f"Tinct {tinct_version()}"
        self._rate = film.sequence.frame_rate if film.sequence is not None else film.video.average_rate
        self._timecode = film.timecode
        self._dpx_encoding = film.sequence.dpx_encoding if film.sequence is not None else None
        if layout.frame.log_encoded and (self._dpx_encoding or (0,))[0] not in DPX_LOG_TRANSFERS:
            self._dpx_encoding = PRINTING_DENSITY  # a scan read as log by choice, not by its headers
        encoder, formats = FRAME_FORMATS[target.suffix.lower()]
        self._pix_fmt = formats[layout.bit_depth]
        self._encoder = av.CodecContext.create(encoder, "w")
        self._encoder.width, self._encoder.height = film.video.width, film.video.height
        self._encoder.pix_fmt = self._pix_fmt
        self._encoder.time_base = Fraction(1, 24)  # required of every encoder; a still's encoder ignores it
        if film.video.sample_aspect_ratio:
            # An anamorphic scan's frames say their squeeze as it does (DPX's and OpenEXR's pixel aspect ratio, PNG's
            # pHYs, TIFF's resolutions): left unset, a conform showed them unsqueezed.
            self._encoder.sample_aspect_ratio = film.video.sample_aspect_ratio
        self._linear_out = encoder == "exr"  # frames of linear light, not codes
        # A plate in primaries of its own (an ACES plate) gets its copy back in them, saying so as the plate does.
        self._plate_chromaticities = film.plate_chromaticities if self._linear_out else None
        to_bt709 = plate_conversion(self._plate_chromaticities)
        self._from_bt709 = None if to_bt709 is None else np.linalg.inv(to_bt709)
        if self._linear_out:
            self._encoder.options = dict(EXR_OPTIONS)
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, index: int, luma: np.ndarray, cb: np.ndarray, cr: np.ndarray,
              light: np.ndarray | None = None) -> Path:
        """Frame ``index`` of the film (display order), as its own file: its path. ``light``: the luminance of a
        plate of linear light, which an OpenEXR frame keeps (``FrameLayout.keeps_light``)."""
        layout = self.layout
        rgb = ycbcr_to_rgb_np(luma, cb, cr, layout.matrix, layout.bit_depth, layout.full_range)
        if self._linear_out:
            frame = av.VideoFrame.from_ndarray(self._linear(rgb, light), format=self._pix_fmt)
        else:
            np.rint(np.multiply(rgb, (1 << layout.bit_depth) - 1, out=rgb), out=rgb)  # in place: a frame is large
            codes = rgb.astype(code_dtype(layout.bit_depth))
            frame = av.VideoFrame.from_ndarray(codes, format=self._pix_fmt)  # codes at the format's own depth
        frame.pts = index
        data = self._with_metadata(b"".join(bytes(packet) for packet in self._encoder.encode(frame)), index)
        path = self.folder / self.target.name(self.first + index)
        with atomic_output(path) as f:
            f.write(data)
        return path

    def _with_metadata(self, data: bytes, index: int) -> bytes | bytearray:
        """Frame ``index`` as FFmpeg's encoder wrote it (``data``), with what it writes of none: a DPX frame's film
        and television headers, its scan frame's fields and its own name, a plate's primaries, and the provenance
        sentence in each format's own place (DPX's creator, TIFF's ImageDescription and Software, PNG's Description
        and Software texts, OpenEXR's comments)."""
        suffix = self.target.suffix.lower()
        # The scan's or plate's own frame, whose headers a DPX or OpenEXR copy carries on.
        source = (self._sequence.frame_header(index) or b"") if self._sequence is not None and suffix in (
            ".dpx", ".exr") else b""
        if suffix == ".exr":  # (its provenance goes in its comments, with the rest of its attributes)
            return with_attributes(data, self._exr_attributes(index, source if source[:4] == EXR_MAGIC else b""))
        if suffix == ".dpx":  # every header field set in one copy of the frame, which is megabytes
            out = self._with_industry_headers(data, index)
            if source[:4] in DPX_MAGIC and len(source) >= DPX_GENERIC_HEADER_BYTES:
                _carry_source_fields(out, source, self._sequence.frame_path(index).name)
            _set_text(out, DPX_FILE_NAME, self.target.name(self.first + index))
            if self._provenance:
                _set_text(out, DPX_CREATOR, self._provenance)
            return out
        if not self._provenance:
            return data
        if suffix == ".png":
            return png_with_text(data, {"Software": self._software, "Description": self._provenance})
        return tiff.with_text(data, {_TIFF_DESCRIPTION: self._provenance, _TIFF_SOFTWARE: self._software})

    def _exr_attributes(self, index: int, source: bytes) -> dict[tuple[str, str], bytes]:
        """What an OpenEXR frame's header says beyond FFmpeg's: a plate's primaries; what its plate frame's header
        (``source``, b"" where it is no OpenEXR frame) says of the picture (owner, capture date, keycode, camera,
        a pipeline's own); its timecode (the plate frame's own, else counted on from the film's first) and rate;
        and its comments, the plate's with the provenance sentence after them."""
        attributes = picture_attributes(source)
        if self._plate_chromaticities is not None:
            attributes[("chromaticities", "chromaticities")] = chromaticities_value(self._plate_chromaticities)
        own = exr_timecode(source)
        counted = _timecode_bcd(self._timecode, index, self._rate) if self._timecode and self._rate else None
        if own is not None or counted is not None:
            attributes[("timeCode", "timecode")] = timecode_value(*(own or (counted, 0)))
        if self._rate:
            attributes[("framesPerSecond", "rational")] = frames_per_second_value(Fraction(self._rate))
        comments = exr_comments(source)
        if self._provenance or comments:
            text = described(comments, self._provenance) if self._provenance else comments
            attributes[("comments", "string")] = text.encode("utf-8")
        return attributes

    def _linear(self, rgb: np.ndarray, light: np.ndarray | None) -> np.ndarray:
        """R'G'B' in [0, 1] as linear light: through the transfer its codes were read with, then, for a plate's
        copy, each pixel scaled to the plate's own luminance (its chromaticity, the colour added, kept), in the
        plate's own primaries."""
        if self.layout.frame.log_encoded:
            linear = cineon_to_linear(torch.from_numpy(rgb) * 1023.0).numpy().astype(np.float32)
        else:
            linear = srgb_to_linear_np(rgb)
        if light is not None:
            luminance = linear @ np.array(BT709_LUMINANCE, dtype=np.float32)
            lit = luminance > EXR_BLACK
            scale = np.divide(light, luminance, out=np.zeros_like(light), where=lit)
            linear = np.where(lit[..., None], linear * scale[..., None], light[..., None]).astype(np.float32)
        return linear if self._from_bt709 is None else linear @ self._from_bt709

    def _with_industry_headers(self, data: bytes, index: int) -> bytearray:
        """FFmpeg's DPX frame ``data`` copied, with the film and television headers it does not write: they carry
        the frame rate and the frame's timecode, all else unset (all ones), as SMPTE 268M says."""
        order = DPX_MAGIC[data[:4]]
        (data_offset,) = struct.unpack_from(f"{order}I", data, 4)
        out = bytearray(data)
        if data_offset != DPX_GENERIC_HEADER_BYTES:
            return out  # a layout this code does not know: left as FFmpeg wrote it
        out[DPX_GENERIC_HEADER_BYTES:DPX_GENERIC_HEADER_BYTES] = b"\xff" * DPX_INDUSTRY_HEADER_BYTES
        struct.pack_into(f"{order}I", out, 4, DPX_HEADER_BYTES)
        struct.pack_into(f"{order}I", out, 16, len(out))
        struct.pack_into(f"{order}I", out, DPX_INDUSTRY_SIZE_OFFSET, DPX_INDUSTRY_HEADER_BYTES)
        struct.pack_into(f"{order}I", out, DPX_ELEMENT_DATA_OFFSET, DPX_HEADER_BYTES)
        if self._rate:
            for offset in DPX_RATE_OFFSETS.values():
                struct.pack_into(f"{order}f", out, offset, float(self._rate))
        code = _timecode_bcd(self._timecode, index, self._rate) if self._timecode and self._rate else None
        if code is not None:
            struct.pack_into(f"{order}I", out, DPX_TIMECODE_OFFSET, code)
        if self._dpx_encoding is not None:  # a log scan's copy says it is log, as its lightness still is
            out[DPX_TRANSFER_OFFSET:DPX_TRANSFER_OFFSET + 2] = bytes(self._dpx_encoding)
        return out


def _carry_source_fields(out: bytearray, source: bytes, source_name: str) -> None:
    """Set in the DPX frame ``out`` what its scan's DPX ``source`` (its first 2048 bytes, in either byte order) says
    of itself (``DPX_CARRIED_FIELDS``) and its timecode where it has one, and the scan's file name ``source_name``
    and creation time as its source's."""
    order, source_order = DPX_MAGIC[bytes(out[:4])], DPX_MAGIC[source[:4]]
    # The film and television headers (from byte 1664) are there where both files' pixels start after them: a scan
    # with the generic headers alone has pixels there (and may end before byte 2048), and gives the file and
    # orientation headers' fields only.
    industry = len(source) >= DPX_HEADER_BYTES and all(
        struct.unpack_from(f"{byte_order}I", header, DPX_DATA_OFFSET)[0] >= DPX_HEADER_BYTES
        for byte_order, header in ((order, out), (source_order, source)))
    for offset, layout in DPX_CARRIED_FIELDS:
        if industry or offset < DPX_GENERIC_HEADER_BYTES:
            struct.pack_into(order + layout, out, offset, *struct.unpack_from(source_order + layout, source, offset))
    time_at, time_bytes = DPX_CREATION_TIME
    out[DPX_SOURCE_TIME[0]:DPX_SOURCE_TIME[0] + time_bytes] = source[time_at:time_at + time_bytes]
    _set_text(out, DPX_SOURCE_NAME, source_name)
    if industry:  # the frame's own timecode: counting on from the run's first misses a break in it
        (timecode,) = struct.unpack_from(f"{source_order}I", source, DPX_TIMECODE_OFFSET)
        if timecode != _DPX_UNSET:
            struct.pack_into(f"{order}I", out, DPX_TIMECODE_OFFSET, timecode)


def _set_text(out: bytearray, field: tuple[int, int], text: str) -> None:
    """Set the DPX ASCII field at ``field`` (offset, length) of ``out`` to ``text``: cut to fit, NUL-padded (a full
    field needs no NUL)."""
    offset, length = field
    out[offset:offset + length] = text.encode("ascii", "replace")[:length].ljust(length, b"\0")


def publish(folder: Path, target: FrameTarget, first: int, count: int) -> None:
    """Move the finished frames from the work ``folder`` to the target's: the whole folder at once where the target's
    does not exist yet (one rename, so no partial run ever shows), else frame by frame."""
    if not target.folder.exists():
        target.folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder, target.folder)
        return
    for index in range(count):
        name = target.name(first + index)
        os.replace(folder / name, target.folder / name)


def _timecode_bcd(start: str, index: int, rate: Fraction) -> int | None:
    """SMPTE 12M BCD of the timecode ``index`` frames after ``start`` (bit 30 set for drop-frame, as FFmpeg reads
    it); None for a label that does not parse, a drop-frame one at a rate other than 29.97, or a rate above 30, whose
    frames 12M counts in pairs, which this writer does not.

    Drop-frame timecode counts as if at 30 fps, and skips the labels of the first two frames of every minute but every
    tenth, so that it keeps to the clock."""
    fps = round(rate)
    drop = ";" in start
    parts = start.replace(";", ":").split(":")
    if fps > 30 or len(parts) != 4 or not all(part.isdigit() for part in parts):
        return None
    hours, minutes, seconds, frames = (int(part) for part in parts)
    if drop:
        if rate != Fraction(30000, 1001):
            return None
        skipped = 2
        whole_minutes = hours * 60 + minutes
        count = (whole_minutes * 60 + seconds) * fps + frames - skipped * (whole_minutes - whole_minutes // 10)
        count += index
        per_ten_minutes = 600 * fps - 9 * skipped
        per_minute = 60 * fps - skipped
        tens, rest = divmod(count, per_ten_minutes)
        count += 9 * skipped * tens + (skipped * ((rest - skipped) // per_minute) if rest > skipped else 0)
    else:
        count = ((hours * 60 + minutes) * 60 + seconds) * fps + frames + index
    frames, count = count % fps, count // fps
    seconds, count = count % 60, count // 60
    minutes, hours = count % 60, (count // 60) % 24
    code = 1 << 30 if drop else 0
    for value, shift in ((hours, 24), (minutes, 16), (seconds, 8), (frames, 0)):
        code |= ((value // 10) << 4 | value % 10) << shift
    return code
