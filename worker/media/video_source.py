"""Film input: probe a file once (validate it, index its frames), then decode ranges of it as luma + L.

    film = probe_film("reel1.mkv")                 # FilmInfo: streams, colour, timing, every frame's pts
    for frame in decode_frames(film, layout, start=0, stop=film.frames, warmup=0, render_size=224):
        frame.luma, frame.L, frame.network_L       # output-ready luma codes, L at chroma resolution, L to infer from

The probe reads every packet of the video stream (demuxing only, no decoding: a few seconds per GB) so that
a film is refused before any work if its timestamps are missing or repeat, if it is shorter than it says
(truncated), or if a stream cannot be decoded; and so that segments can be planned at keyframes with exact
frame counts. A black-and-white film is its luma plane: the probe decodes a handful of frames to check that
it really is black and white (a colour film is skipped unless the caller asks to recolour it).

Decoding hands the pipeline two views of each frame:

* ``luma`` - the source's Y plane as the *output's* code values (same range; the bit depth shifted only if
  the output codec cannot carry the source's). The output's luma is this plane, so the lightness of the film
  is never touched: every detail, the grain and the exposure are the archive's own, bit for bit.
* ``L`` - Lab lightness at the output's chroma resolution (half size for 4:2:0), which is all the colour
  stages need: colour is only stored at chroma resolution.
* ``network_L`` - what the network reads: ``L`` itself when its long side reaches the colorizer's render size
  (the network sees a smaller copy anyway), else L at the source's full resolution. A small film (under twice
  the render size, e.g. CIF or QCIF footage) would otherwise show the network half the detail a photo of the
  same size gets: on a 176x144 clip that cost 2.5 dB of PSNR.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import struct
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import av.filter
import cv2
import numpy as np
import torch

from models.color import (
    BT709_LUMINANCE,
    BT2020_CHROMATICITIES,
    YCBCR_WEIGHTS,
    bt709_from_primaries,
    code_dtype,
    hdr_luma_to_l_table,
    linear_to_srgb_np,
    log_luma_to_l_table,
    luma_code_table,
    luma_to_l_table,
    video_rgb_to_linear,
    ycbcr_to_rgb_np,
)
from worker.errors import BadInputError, InputTooLargeError, UnsupportedMediaError
from worker.media.boxes import file_boxes
from worker.media.captions import (
    CAPTION_CODECS,
    CEA608,
    CEA608_CODEC,
    CEA708,
    caption_kinds,
    frame_captions,
    spread_over_frames,
)
from worker.media.frame_sequences import DPX_LOG_TRANSFERS, FrameSequence, ScratchFolder, find_sequence, is_pattern
from worker.media.images import COLOUR_PROBE_SIDE, COLOUR_THRESHOLD, colour_score

logger = logging.getLogger(__name__)

# FFmpeg's AVCOL_SPC_* codes that name a Y'CbCr matrix, mapped to models.color.YCBCR_WEIGHTS keys.
MATRIX_BY_COLORSPACE = {1: "bt709", 5: "bt601", 6: "bt601", 9: "bt2020", 10: "bt2020"}
COLORSPACE_BY_MATRIX = {"bt709": 1, "bt601": 6, "bt2020": 9}
RANGE_LIMITED, RANGE_FULL = 1, 2  # AVCOL_RANGE_MPEG, AVCOL_RANGE_JPEG
# FFmpeg's AVFieldOrder: progressive, or for a woven interlaced frame which field is coded first (the first letter)
# and which is shown first (the second).
FIELD_UNKNOWN, FIELD_PROGRESSIVE, FIELD_TT, FIELD_BB, FIELD_TB, FIELD_BT = range(6)
INTERLACED_FIELDS = (FIELD_TT, FIELD_BB, FIELD_TB, FIELD_BT)
# Decoders whose field order is their pictures' own header field.
FIELD_ORDER_CODECS = ("mpeg2video", "prores")
# Decoders whose stream-level field order is a guess (FFmpeg's H.264 parser reports "top first" for bottom-first
# streams too), but whose frames carry their own: read from the first frame (``_first_field``).
FRAME_FIELD_CODECS = ("h264",)
# Decoders that hand an interlaced stream's fields out one by one, each flagged interlaced (HEVC codes each field as a
# picture of its own, and FFmpeg does not pair them into frames): such a film is refused, with how to weave it.
FIELD_PICTURE_CODECS = ("hevc",)
# High-speed film scans run at a few hundred frames per second; a rate above this is a demuxer's time base.
MAX_PLAUSIBLE_FPS = 1000
# A film may end this much earlier than its container says before it counts as truncated: containers round
# durations, and the last frame's duration is often unknown. 1 s is far above rounding and far below a loss
# worth noticing... except for films shorter than that, where a quarter of the length is used instead.
TRUNCATION_TOLERANCE_S = 1.0
# FFmpeg's gray format of each luma bit depth the film path reads gray, paletted and RGB sources at.
GRAY_FORMATS = {8: "gray", 9: "gray9le", 10: "gray10le", 12: "gray12le", 14: "gray14le", 16: "gray16le"}
# Float frames, as FFmpeg decodes OpenEXR (half floats as f16, whole ones as f32): values of linear light (1.0 display
# white, highlights above it), tagged with the linear transfer (AVCOL_TRC_LINEAR) or none. FFmpeg's own conversions
# clip them to 0-1 as codes, and PyAV hands no f16 frame over as an array: their planes are read here.
LINEAR_FLOAT_FORMATS = frozenset(f"{name}{bits}{order}" for name in ("grayf", "gbrpf", "gbrapf")
                                 for bits in (16, 32) for order in ("le", "be"))
TRC_LINEAR, TRC_SRGB = 8, 13  # AVCOL_TRC_LINEAR, AVCOL_TRC_IEC61966_2_1
# High dynamic range video's transfers (AVCOL_TRC_SMPTE2084, AVCOL_TRC_ARIB_STD_B67): models.color's names, and the
# names graders use.
HDR_TRANSFER_CODES = {16: "pq", 18: "hlg"}
HDR_TRANSFER_NAMES = {"pq": "PQ, SMPTE ST 2084", "hlg": "HLG, ARIB STD-B67"}
PRIMARIES_BT2020 = 9  # AVCOL_PRI_BT2020: UHD and HDR video's primaries
UNSPECIFIED_TAGS = (0, 2)  # FFmpeg's "reserved" and "unspecified" codes of transfers, primaries and matrices
PRIMARIES_BT709 = 1  # AVCOL_PRI_BT709: OpenEXR's primaries where its header names none
# A display-referred copy of a run of linear light is warned about when more than this share of a sampled frame is
# brighter than display white (``highlights_lost``).
HIGHLIGHT_WARNING_SHARE = 0.005
# RGB formats whose luma is computed here, from PyAV's (H, W, channels) array: the indices of red, green and blue.
# PyAV hands big-endian samples over in the machine's order.
RGB_CHANNELS = {
    **dict.fromkeys(("gbrp", "gbrap", "rgb24", "rgba"), (0, 1, 2)),
    **dict.fromkeys((f"{name}{order}" for name in ("gbrp10", "gbrp12", "gbrp14", "gbrp16", "gbrap10", "gbrap12",
                                                  "gbrap16", "rgb48", "rgba64") for order in ("le", "be")), (0, 1, 2)),
    **dict.fromkeys(("bgr24", "bgra", "bgr48le", "bgr48be", "bgra64le", "bgra64be"), (2, 1, 0)),
}
# Steps per luma code value in the code -> L table: the average of a 2x2 block lands on quarter codes.
LUMA_SUBDIVISIONS = 4
DECODER_THREADS = 0
# How many frames the probe decodes (spread over the film) to tell black-and-white from colour film.
COLOUR_SAMPLE_FRAMES = 5
# Films are judged on the 97th percentile of chroma off the lightness-typical, where photos take the 90th: colour
# footage of a mostly gray scene (blue bottle caps before a gray wall: 11 here, 6.8 at the 90th) must not be
# recoloured as black and white, so colour in more than 3 % of a frame counts; toning, a cast and grain stay under 4
# (measured on eval/video, eval/bw and generated toned clips).
FILM_COLOUR_PERCENTILE = 97.0
# Audio streams are copied untouched, but a stream that does not decode means a damaged file: the probe
# decodes the first few packets of each audio stream to find out before any work is done.
AUDIO_PROBE_PACKETS = 8
# How many of its first frames a film must decode with rising timestamps (B-frames reorder within a few).
DISPLAY_ORDER_FRAMES = 8
# A run of frames is read this many at a time (a second of film): of a stored run, a worker holds a window's frames
# (300 MB of 2K DPX scans) where a segment's would be gigabytes.
RUN_WINDOW_FRAMES = 24


@dataclass(frozen=True)
class VideoFormat:
    """What the output's video stream must keep of the source's."""

    width: int
    height: int
    pix_fmt: str
    bit_depth: int
    chroma_shift: tuple[int, int] | None  # (log2 horizontal, log2 vertical) subsampling; None for gray/RGB
    full_range: bool
    matrix: str  # the Y'CbCr matrix the source's colour (and so the output's) is read with
    color_primaries: int
    color_trc: int
    colorspace: int  # as tagged (0 = unspecified), copied to the output
    color_range: int
    rotation: float  # degrees, from the display matrix
    time_base: Fraction
    average_rate: Fraction | None
    sample_aspect_ratio: Fraction | None
    field_order: int = FIELD_UNKNOWN  # FFmpeg's AVFieldOrder: interlaced video (tape captures) is woven fields
    # Cineon log codes (a DPX scan for grading, whose header says printing density or logarithmic): its lightness is
    # read through the log encoding, and its colour written in it (``models.color.log_luma_to_l_table``).
    log_encoded: bool = False
    # Float frames of linear light (OpenEXR): each channel is read through the sRGB curve, clipped at display white
    # (1.0), so the copy is display-referred and tagged sRGB (``color_trc``); its luma is those codes, not the
    # source's values bit for bit.
    scene_linear: bool = False
    highlights: float = 0.0  # of a scene-linear film: the largest share of a sampled frame brighter than white
    codec: str = ""  # FFmpeg's name of the decoder it needs (h264, hevc, ffv1, prores, dpx, ...)
    codec_profile: str | None = None  # FFmpeg's name of the codec's profile, where it says one (ProRes: "LT", "HQ")
    # HDR10's static metadata, as x265 takes it: the mastering display ("G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)", in
    # units of 0.00002 and 0.0001 nits) and the content light levels ("MaxCLL,MaxFALL"); None where it has none.
    mastering_display: str | None = None
    content_light: str | None = None
    # The closed captions its sampled frames carry: ("CEA-608",), ("CEA-608", "CEA-708")... (``worker.media.captions``)
    captions: tuple[str, ...] = ()

    @property
    def hdr_transfer(self) -> str | None:
        """"pq" or "hlg" for HDR video (``HDR_TRANSFER_CODES``), read as the light its codes stand for and
        coloured in its encoding; None for SDR."""
        return HDR_TRANSFER_CODES.get(self.color_trc)

    @property
    def bt2020(self) -> bool:
        """Whether its colours are of BT.2020's primaries (UHD and HDR video), which its colour is written in."""
        return self.color_primaries == PRIMARIES_BT2020


@dataclass(frozen=True)
class StreamInfo:
    index: int
    type: str
    codec: str


@dataclass(frozen=True)
class FrameIndex:
    """Every frame of a video stream, and for each keyframe the three ways a demuxer may be asked to seek to it."""

    frame_pts: np.ndarray  # int64, every frame's pts in display order (in the stream's time base)
    keyframe_pts: np.ndarray  # int64, pts of the keyframes (random-access points), ascending
    keyframe_dts: np.ndarray  # int64, each keyframe's dts (its pts where the container gives none)
    # int64, the byte position of each keyframe's packet, or of the last video packet before it where the demuxer
    # knows none (MPEG program streams pack several frames in one PES packet); -1 when neither is known
    keyframe_pos: np.ndarray


@dataclass
class FilmInfo:
    """A probed film: everything later stages need, without holding the file open."""

    path: str
    container: str
    video_index: int
    video_codec: str
    video: VideoFormat
    index: FrameIndex
    duration: float  # seconds, from the first frame's pts to the end of the last
    other_streams: list[StreamInfo] = field(default_factory=list)
    is_colour: bool = False
    sequence: FrameSequence | None = None  # a run of numbered frames (``path`` is its pattern), else None
    # The first frame's SMPTE timecode ("01:00:00:00", ";" before the frames for drop-frame): a run's DPX header's, or
    # a file's timecode tag (QuickTime and MXF timecode tracks read so); None where it has none.
    timecode: str | None = None

    @property
    def caption_track(self) -> int | None:
        """The file index of its CEA-608 caption track (QuickTime's c608, as broadcast masters carry captions beside
        ProRes or H.264 pictures), whose samples ride with the frames into an H.264 or H.265 copy; None where it has
        none."""
        return next((info.index for info in self.other_streams if info.codec == CEA608_CODEC), None)

    def open(self, start: int = 0, stop: int | None = None) -> AbstractContextManager[av.container.InputContainer]:
        """The film opened for reading: its file whole, or its run of frames from frame ``start`` to ``stop`` - 1
        (to its end if None), whose pts then count from ``start`` (``FrameSequence.open``)."""
        if self.sequence is not None:
            return self.sequence.open(start, stop)
        if start:
            raise ValueError("a film file opens at its start; seek to a frame instead")
        return _open(self.path)

    def open_streams(self) -> AbstractContextManager[av.container.InputContainer]:
        """The film opened for its streams and metadata, and to copy its other streams: of a run, its first frame
        will do (a stored run's others are not fetched)."""
        return self.open(0, 1)

    @property
    def plate_chromaticities(self) -> tuple[float, ...] | None:
        """An OpenEXR plate's own primaries, where they are not BT.709's (``FrameSequence.plate_chromaticities``)."""
        return self.sequence.plate_chromaticities if self.sequence is not None else None

    def frame_name(self, index: int) -> str:
        """How messages name frame ``index``: by its file too in a run of frames."""
        if self.sequence is not None:
            return f"frame {index} ({self.sequence.frame_path(index).name})"
        return f"frame {index}"

    def identity(self) -> dict:
        """What tells this very source from a changed one (a rerun must not resume work made from the old)."""
        if self.sequence is not None:
            return {"path": os.path.abspath(self.path), **self.sequence.identity()}
        stat = os.stat(self.path)
        return {"path": os.path.abspath(self.path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "frames": self.frames}

    @property
    def frame_pts(self) -> np.ndarray:
        return self.index.frame_pts

    @property
    def keyframe_pts(self) -> np.ndarray:
        return self.index.keyframe_pts

    @property
    def frames(self) -> int:
        return len(self.frame_pts)

    @property
    def fps(self) -> float:
        return self.frames / self.duration if self.duration > 0 else 0.0


@dataclass(frozen=True)
class FrameLayout:
    """How decoded frames are handed to the pipeline: the luma's code values and the chroma grid."""

    bit_depth: int  # of the output's luma (the source's, or what the output codec can carry)
    chroma_shift: tuple[int, int]  # of the output
    full_range: bool  # of the output's codes (the source's, or video range where the output codec stores no other)
    log_encoded: bool = False  # Cineon log codes, as the source's (``VideoFormat.log_encoded``)
    # Each frame's light handed on too (``SourceFrame.light``): a plate of linear light coloured into OpenEXR frames,
    # which keep its light, highlights above display white too.
    keeps_light: bool = False
    # HDR video's transfer, "pq" or "hlg" (``VideoFormat.hdr_transfer``), and BT.2020's primaries: the colour written
    # into the copy's chroma as that video holds it (``models.color.srgb_to_video_rgb``).
    transfer: str | None = None
    bt2020: bool = False

    def chroma_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the output's chroma planes (FFmpeg rounds subsampled sizes up)."""
        sx, sy = self.chroma_shift
        return -(-width >> sx), -(-height >> sy)


@dataclass
class SourceFrame:
    index: int  # position in the film (display order)
    pts: int
    luma: np.ndarray  # (H, W) uint8 or uint16 code values of the output's luma
    L: np.ndarray  # (h, w) float32 Lab L at the output's chroma resolution
    warmup: bool  # decoded only to warm the smoother up; not encoded
    network_L: np.ndarray  # float32 Lab L the network reads: ``L`` itself, or (H, W) for a small film
    light: np.ndarray | None = None  # (H, W) float32 luminance of a plate of linear light, where the layout keeps it
    captions: bytes | None = None  # its closed captions' cc_data, for the copy's coded frame (``media.captions``)


def _open(path: str) -> av.container.InputContainer:
    if os.path.isdir(path):
        raise BadInputError(path, "is a folder, not a film")
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise BadInputError(path, exc.strerror or str(exc)) from exc
    if size == 0:
        raise BadInputError(path, "empty file (0 bytes)")
    try:
        return av.open(path, metadata_errors="replace")
    except av.FFmpegError as exc:
        reason = _missing_index(path, size) or f"not a readable video file ({_ffmpeg_reason(exc)})"
        raise BadInputError(path, reason) from exc


# The boxes an MP4 or MOV file has at its top level (ISO/IEC 14496-12, QuickTime). Most writers put the index, moov,
# after the media, mdat, as they finish: a copy cut short, or a recording that stopped, has media and no index, which
# FFmpeg only calls invalid data.
_ISO_TOP_LEVEL_BOXES = frozenset({b"ftyp", b"pdin", b"moov", b"moof", b"mfra", b"mdat", b"free", b"skip", b"wide",
                                  b"uuid", b"meta", b"pnot", b"junk", b"styp", b"sidx"})


def _missing_index(path: str, size: int) -> str | None:
    """Why the MP4 or MOV file ``path`` (``size`` bytes), which FFmpeg could not open, holds media but no index, read
    from its top-level boxes by their lengths; None if it is no such file."""
    kinds, end = [], 0
    with open(path, "rb") as f:
        for kind, _, box_end in file_boxes(f, 0):
            if kind not in _ISO_TOP_LEVEL_BOXES:
                break
            kinds.append(kind)
            end = size if box_end is None else box_end
    if b"mdat" not in kinds or b"moov" in kinds:
        return None
    cut = f"; its {size} bytes end inside its media, which runs to byte {end}" if end > size else ""
    return ("truncated or unfinished: its media has no index (the moov box, which MP4 and MOV writers add as they "
            f"finish){cut}")


def _ffmpeg_reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(": '", 1)[0].strip() or type(exc).__name__


def probe_film(path: str | os.PathLike, max_pixels: int, frame_rate: Fraction | None = None,
               sequence: FrameSequence | None = None, scratch: ScratchFolder | None = None) -> FilmInfo:
    """Validate a film and index its frames. Raises a :class:`BadInputError` subclass, naming the file and
    the reason in one line, for anything the pipeline could not turn into a faithful colour copy. A ``path`` that
    names a run of numbered frames by its pattern (``reel1/scan_%07d.dpx``, see ``worker.media.frame_sequences``) is
    that run, played at ``frame_rate`` if given, else at the rate its frames declare; ``sequence`` is a run found
    and checked already (``stored_sequence``: a run in an object store), of which ``path`` is the pattern; a Cineon
    run found here is rewritten in ``scratch`` (``FrameSequence.scratch``)."""
    path = os.fspath(path)
    if sequence is None and is_pattern(path):
        sequence = find_sequence(path, frame_rate, scratch)
        sequence.check_frames()
    if sequence is not None:
        logger.info("%s: %s", path, sequence.describe())
    with _open_streams(path, sequence) as container:
        stream = film_stream(container)
        if stream is None:
            raise UnsupportedMediaError(path, _no_film_stream(container))
        codec_context = stream.codec_context
        codec_name = codec_context.name if codec_context is not None else "none"
        if codec_context is None or codec_name in ("none", ""):
            raise UnsupportedMediaError(path, f"video stream #{stream.index}: no decoder for its codec")
        width, height = codec_context.width, codec_context.height
        if width <= 0 or height <= 0:
            raise BadInputError(path, f"video stream #{stream.index} has no frame size ({width}x{height})")
        if width * height > max_pixels:
            raise InputTooLargeError(
                path, f"frames are {width}x{height} = {width * height / 1e6:.1f} MP, over the limit of "
                f"{max_pixels / 1e6:.0f} MP (raise --max-pixels if this is intended)"
            )
        if stream.time_base is None:
            raise BadInputError(path, "video stream has no time base")
        other = [StreamInfo(s.index, s.type, _codec_name(s)) for s in container.streams if s.index != stream.index]
        if sequence is not None:
            # A run's frames are its files, found and checked already: reading all of them to index the packets
            # would read a whole reel (a 2K DPX scan: 12 MB a frame) before any work.
            index = _sequence_index(sequence.count)
            duration = float(sequence.count / sequence.frame_rate)
        else:
            index = _index_packets(path, container, stream)
            duration = _duration(path, container, stream, index.frame_pts)
        video_index, container_name = stream.index, container.format.name
        timecode = sequence.timecode if sequence is not None else (
            stream.metadata.get("timecode") or container.metadata.get("timecode"))
        if sequence is not None:  # one video stream of frames stamped by their numbers, each a file to itself
            video, is_colour = _sample_run(path, sequence, index, container)
            if sequence.dpx_encoding is not None and sequence.dpx_encoding[0] in DPX_LOG_TRANSFERS:
                video = replace(video, log_encoded=True)
    if sequence is None:
        with _open(path) as container:
            _check_audio_decodes(path, container)
        with _open(path) as container:
            video, is_colour = _sample_frames(path, container, index)
    return FilmInfo(path, container_name, video_index, codec_name, video, index, duration, other, is_colour,
                    sequence, timecode)


def _open_streams(path: str, sequence: FrameSequence | None) -> AbstractContextManager[av.container.InputContainer]:
    return _open(path) if sequence is None else sequence.open(0, 1)


def index_frames(path: str | os.PathLike) -> FrameIndex:
    """The frame index of a film's video stream (:func:`film_stream`) alone (demuxing only): what
    :func:`decode_from` needs to find frames in a file that needs no other checks, such as Tinct's own output."""
    path = os.fspath(path)
    with _open(path) as container:
        stream = film_stream(container)
        if stream is None:
            raise UnsupportedMediaError(path, _no_film_stream(container))
        return _index_packets(path, container, stream)


def film_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The video stream a film's pictures are in, None if it has none: the one FFmpeg's players pick
    (``av_find_best_stream``: flagged default, holding more than one frame, then the highest bit rate), never a
    cover picture. An album-style cover, or a still put in a Matroska file as its first track, is one picture: a
    film's first video stream is not always its film."""
    moving = [stream for stream in container.streams.video
              if not stream.disposition & av.stream.Disposition.attached_pic]
    if not moving:
        return None
    best = container.streams.best("video")
    return best if best in moving else moving[0]


def _no_film_stream(container: av.container.InputContainer) -> str:
    """Why a file has no film to colour, for its one-line error."""
    covers = [f"#{stream.index}" for stream in container.streams.video]
    if covers:
        return (f"no video stream, only {'a cover picture (stream' if len(covers) == 1 else 'cover pictures (streams'}"
                f" {', '.join(covers)})")
    kinds = ", ".join(sorted({stream.type for stream in container.streams})) or "none"
    return f"no video stream (streams: {kinds})"


def _codec_name(stream: av.stream.Stream) -> str:
    codec_context = getattr(stream, "codec_context", None)
    name = getattr(codec_context, "name", None) or "unknown"
    return CEA608_CODEC if name == "cc_dec" else name  # a caption track's decoder's name says less than its codec's


def _index_packets(path: str, container, stream) -> FrameIndex:
    pts_list: list[int] = []
    keyframes: dict[int, tuple[int, int]] = {}  # pts -> (dts, byte position)
    last_pos = -1
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream flush packet
                continue
            if packet.pts is None:
                raise BadInputError(path, f"broken timestamps: video packet {len(pts_list)} has no pts")
            if packet.is_keyframe:
                pos = packet.pos if packet.pos is not None and packet.pos >= 0 else last_pos
                keyframes.setdefault(packet.pts, (packet.pts if packet.dts is None else packet.dts, pos))
            if packet.pos is not None and packet.pos >= 0:
                last_pos = packet.pos
            if packet.is_discard:
                # Before the start of an MP4 edit list: needed to decode what follows, never shown, so the
                # decoder drops its frame and the output has none either.
                continue
            pts_list.append(packet.pts)
    except av.FFmpegError as exc:
        raise BadInputError(path, f"unreadable after {len(pts_list)} video packets ({_ffmpeg_reason(exc)})") from exc
    if not pts_list:
        raise BadInputError(path, "the video stream has no frames")
    if not keyframes:
        raise BadInputError(path, "the video stream has no keyframe to start decoding from")
    frame_pts = np.sort(np.asarray(pts_list, dtype=np.int64))
    repeats = np.flatnonzero(np.diff(frame_pts) == 0)
    if repeats.size:
        at = int(frame_pts[repeats[0]])
        raise BadInputError(path, f"broken timestamps: {repeats.size + 1} video frames share pts {at} "
                            f"({float(at * stream.time_base):.3f} s)")
    keyframe_pts = sorted(keyframes)
    return FrameIndex(
        frame_pts,
        np.asarray(keyframe_pts, dtype=np.int64),
        np.asarray([keyframes[pts][0] for pts in keyframe_pts], dtype=np.int64),
        np.asarray([keyframes[pts][1] for pts in keyframe_pts], dtype=np.int64),
    )


def _sequence_index(count: int) -> FrameIndex:
    """A run of frames read by FFmpeg's image demuxer: frame i has pts i (in 1 / its rate), and each is a keyframe
    found by its number."""
    frames = np.arange(count, dtype=np.int64)
    return FrameIndex(frames, frames, frames, np.full(count, -1, dtype=np.int64))


def _duration(path: str, container, stream, frame_pts: np.ndarray) -> float:
    """Seconds of video, and a check that the file holds as much video as its header declares."""
    time_base = stream.time_base
    steps = np.diff(frame_pts)
    last_step = int(np.median(steps)) if steps.size else 0
    if last_step == 0 and stream.average_rate:
        last_step = round(1 / (stream.average_rate * time_base))
    end = float((frame_pts[-1] + last_step - frame_pts[0]) * time_base)
    declared = None
    if stream.duration:
        declared = float(stream.duration * time_base)
    elif "DURATION" in stream.metadata:  # Matroska writes each track's length as a tag
        declared = _parse_clock(stream.metadata["DURATION"])
    elif container.duration and len(container.streams) == 1:
        declared = container.duration / 1e6
    if declared:
        tolerance = min(TRUNCATION_TOLERANCE_S, declared / 4)
        if end < declared - tolerance:
            raise BadInputError(path, f"truncated: its video ends at {end:.2f} s but the file declares "
                                f"{declared:.2f} s ({len(frame_pts)} frames found)")
    return end


def _parse_clock(text: str) -> float | None:
    try:
        hours, minutes, seconds = text.strip().split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _check_audio_decodes(path: str, container) -> None:
    for stream in container.streams.audio:
        if stream.codec_context is None or stream.codec_context.name in ("none", ""):
            raise UnsupportedMediaError(path, f"audio stream #{stream.index}: no decoder for its codec")
        decoded = packets = 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                packets += 1
                decoded += len(packet.decode())
                if packets >= AUDIO_PROBE_PACKETS:
                    break
        except av.FFmpegError as exc:
            raise BadInputError(path, f"audio stream #{stream.index} ({stream.codec_context.name}) does not "
                                f"decode: {_ffmpeg_reason(exc)}") from exc
        if packets and not decoded and packets >= AUDIO_PROBE_PACKETS:
            raise BadInputError(path, f"audio stream #{stream.index} ({stream.codec_context.name}) yields no "
                                f"audio from its first {packets} packets")


def _sample_targets(index: FrameIndex) -> list[int]:
    """The pts of COLOUR_SAMPLE_FRAMES frames spread over the film, its first and last among them."""
    frame_pts = index.frame_pts
    return sorted({int(frame_pts[round(i * (len(frame_pts) - 1) / max(1, COLOUR_SAMPLE_FRAMES - 1))])
                   for i in range(COLOUR_SAMPLE_FRAMES)})


def _sample_frames(path: str, container, index: FrameIndex) -> tuple[VideoFormat, bool]:
    """Decode a few frames spread over the film: the first gives the exact format and rotation (which
    FFmpeg attaches to decoded frames), all of them tell black-and-white from colour."""
    stream = film_stream(container)
    _use_threads(stream)
    _check_display_times(path, container, stream, index)
    samples = ((target, _decode_at(path, container, stream, index, target)) for target in _sample_targets(index))
    return _judge_samples(path, stream, samples)


def _sample_run(path: str, sequence: FrameSequence, index: FrameIndex, head) -> tuple[VideoFormat, bool]:
    """``_sample_frames`` for a run of frames, ``head`` the run opened at its first frame: each other sampled frame
    is read from its own file (of a stored run, only those are fetched)."""
    one_frame = _sequence_index(1)
    stream = head.streams.video[0]

    def samples() -> Iterator[tuple[int, av.VideoFrame | None]]:
        for position in _sample_targets(index):
            if position == 0:
                yield 0, _decode_at(path, head, stream, one_frame, 0)
                continue
            with sequence.open(position, position + 1) as container:
                yield position, _decode_at(path, container, container.streams.video[0], one_frame, 0)

    return _judge_samples(path, stream, samples())


def _judge_samples(path: str, stream, samples: Iterable[tuple[int, av.VideoFrame | None]]) -> tuple[VideoFormat, bool]:
    """The film's exact format (from its first sampled frame) and whether it is in colour, from ``(pts, frame)``
    samples; BadInputError if one did not decode or is of another size than the first."""
    first = None
    colour_scores, highlight_shares, captions, captioned = [], [], set(), False
    for target, frame in samples:
        if frame is None:
            # The index has this frame, the decoder never produced it: damaged data that a frame-threaded
            # decoder skipped over without raising.
            raise BadInputError(path, f"video does not decode at {float(target * stream.time_base):.3f} s "
                                "(damaged video data)")
        if first is None:
            first = frame
        elif (frame.width, frame.height) != (first.width, first.height):
            # Decoding finds every such change; the sampled frames find most before any work is done.
            raise BadInputError(path, f"its frames change size, from {first.width}x{first.height} to "
                                f"{frame.width}x{frame.height} at {float(target * stream.time_base):.3f} s; a film's "
                                "frames must all be one size")
        colour_scores.append(_colour_score(frame))
        if (cc_data := frame_captions(frame)) is not None:
            captions, captioned = captions | caption_kinds(cc_data), True
        if frame.format.name in LINEAR_FLOAT_FORMATS:
            highlight_shares.append(_highlight_share(frame))
    if stream.codec_context.name in FIELD_PICTURE_CODECS and first.interlaced_frame:
        raise UnsupportedMediaError(path, "interlaced HEVC coded as field pictures, which FFmpeg decodes one field at "
                                    "a time: its copy would be half-height fields at twice the rate; weave them "
                                    "into frames first (ffmpeg -i IN -vf weave=first_field=top -c:v ffv1 OUT.mkv; "
                                    "first_field=bottom for bottom-first)")
    # Caption data whose sampled constructs are all padding (a service not yet begun) is taken for CEA-608's.
    video = replace(_video_format(stream, first), captions=tuple(sorted(captions)) or ((CEA608,) if captioned else ()))
    if video.scene_linear:
        logger.info("%s: its frames hold linear light (float, as OpenEXR's): read through the sRGB curve with 1.0 as "
                    "display white (OpenEXR frames out keep the light itself)", path)
        video = replace(video, highlights=max(highlight_shares))
    return video, max(colour_scores) > COLOUR_THRESHOLD


def highlights_lost(film: FilmInfo, keeps_light: bool) -> str | None:
    """What a copy of ``film`` loses, for a warning: a plate of linear light more than HIGHLIGHT_WARNING_SHARE of
    whose sampled frames is brighter than display white, coloured into a display-referred copy (all but OpenEXR
    frames, which keep its light: ``keeps_light``); None where it loses nothing."""
    if not film.video.scene_linear or keeps_light or film.video.highlights <= HIGHLIGHT_WARNING_SHARE:
        return None
    return (f"{100 * film.video.highlights:.1f}% of a sampled frame is brighter than display white (1.0) and comes "
            "out white in a display-referred copy, its detail lost; colour it into OpenEXR frames (name_%04d.exr) "
            "to keep it, or scale the frames' exposure down first")


def hdr_lost(film: FilmInfo, codec: str | None) -> str | None:
    """Why a copy of ``film`` is coloured only roughly, or loses what HDR10 says of it, for a warning: HDR video (PQ
    or HLG) coloured into frames (``codec`` None), which are written as SDR colour; or an HDR10 film's static
    metadata (mastering display, light levels), which only H.265 copies carry (x265 writes it), in another
    ``codec``. None where it loses nothing."""
    video = film.video
    if video.hdr_transfer is None:
        return None
    if codec is None:
        return (f"its frames are HDR ({HDR_TRANSFER_NAMES[video.hdr_transfer]}), and frames out are written in SDR "
                "colour: they keep its lightness, code for code, but on its HDR codes their colour shows more "
                "saturated than chosen (some 2.4 times, in PQ); colour it into a film file to keep its encoding")
    if codec != "h265" and (video.mastering_display or video.content_light):
        return (f"its HDR10 metadata (mastering display, light levels) is left out of its {codec} copy: only H.265 "
                "copies carry it (--codec h265 or source), and displays tone-map a copy without it by their own "
                "guess")
    return None


def captions_lost(film: FilmInfo, codec: str | None, output: str | os.PathLike | None) -> str | None:
    """Why closed captions in ``film``'s video are left out of its copy in ``codec`` as ``output`` (None: frames),
    for a warning; None where it has none or keeps them all (``worker.media.captions``)."""
    kinds = film.video.captions
    if not kinds or codec in CAPTION_CODECS:
        return None
    if codec == "prores" and output is not None and Path(output).suffix.lower() == ".mov":  # a c608 track
        if CEA708 not in kinds:
            return None
        return ("its CEA-708 captions are left out of its ProRes copy, whose QuickTime caption track holds CEA-608 "
                "alone" + (" (which it keeps)" if CEA608 in kinds else "") + "; H.264 and H.265 copies keep both")
    into = "its frames" if codec is None else f"its {codec} copy"
    also = " or, for CEA-608, ProRes in .mov" if CEA608 in kinds else ""
    return (f"its closed captions ({'/'.join(kinds)}, carried in its video) are left out of {into}: H.264 and H.265 "
            f"copies carry them (--codec h264 or h265){also}")


def copy_warnings(film: FilmInfo, keeps_light: bool, codec: str | None, output: str | os.PathLike) -> list[str]:
    """What a copy of ``film`` in ``codec`` (None: frames) as ``output`` loses or gets only roughly
    (``highlights_lost``, ``hdr_lost``, ``captions_lost``), for warnings before any work."""
    warnings = (highlights_lost(film, keeps_light), hdr_lost(film, codec), captions_lost(film, codec, output))
    return [warning for warning in warnings if warning]


def _check_display_times(path: str, container, stream, index: FrameIndex) -> None:
    """Refuse, by name, a film whose decoder hands frames out with decode-order times. AVI keeps H.264's
    B-frames in decode order without display times, so frames leave the decoder in display order stamped
    out of order; no frame could be matched to its place, and the film would fail later as "damaged"."""
    try:
        frames = decode_from(container, stream, index, int(index.frame_pts[0]))
        stamps = [frame.pts for frame in itertools.islice(frames, DISPLAY_ORDER_FRAMES) if frame.pts is not None]
    except av.FFmpegError:
        return  # damage: the sampling below names it
    if any(later <= earlier for earlier, later in itertools.pairwise(stamps)):
        raise UnsupportedMediaError(path, f"its {container.format.name} container has no display times for its "
                                    "B-frames, so its frames cannot be put in order; re-encode it first (e.g. to "
                                    ".mkv with -c:v ffv1)")


def _decode_at(path: str, container, stream, index: FrameIndex, target: int):
    """The frame with pts ``target`` (or the first the decoder gives after it)."""
    try:
        return next(decode_from(container, stream, index, target), None)
    except av.FFmpegError as exc:
        raise BadInputError(path, f"video does not decode at {float(target * stream.time_base):.3f} s (damaged video "
                            f"data: {_ffmpeg_reason(exc)})") from exc


def decode_from(container, stream, index: FrameIndex, target: int) -> Iterator[av.VideoFrame]:
    """Decoded frames of ``stream`` from pts ``target`` on, decoding from the last keyframe at or before it.

    Demuxers do not all seek alike. Matroska and MP4 look a time up in their own index of keyframes, exactly.
    MPEG program and transport streams (DVDs, broadcast and tape captures) have no index: they search the
    file's bytes for a packet whose decode time is at or before the time asked for, which can land after
    the keyframe's packet, or inside one, where the decoder makes up frames from a partial picture. So each
    seek is checked: it counts only if the first frame decoded at or after the keyframe is the one the index
    has there (the keyframe, or the first frame shown after it when an edit list hides it). Otherwise the
    keyframe is sought by its packet's byte position, then by its dts, then from ever earlier keyframes; the
    last try is handed on as it is, for the caller's frame checks to judge.
    """
    nearest = max(0, int(np.searchsorted(index.keyframe_pts, target, side="right")) - 1)
    tries = [(nearest, "pts"), (nearest, "pos"), (nearest, "dts")]
    earlier, step = nearest, 1
    while earlier > 0:  # 1, 2, 4, ... keyframes further back, down to the first
        earlier, step = max(0, earlier - step), step * 2
        tries.append((earlier, "pos"))
    tries = [(key, way if way != "pos" or index.keyframe_pos[key] >= 0 else "dts") for key, way in tries]
    tries = list(dict.fromkeys(tries))  # a keyframe without a byte position is tried by its dts once
    for attempt, (key, way) in enumerate(tries):
        last_try = attempt == len(tries) - 1
        if way == "pos":
            container.seek(int(index.keyframe_pos[key]), unsupported_byte_offset=True)
        else:
            stamps = index.keyframe_pts if way == "pts" else index.keyframe_dts
            container.seek(int(stamps[key]), stream=stream, backward=True, any_frame=False)
        key_pts = int(index.keyframe_pts[key])
        first_shown = index.frame_pts[min(len(index.frame_pts) - 1, np.searchsorted(index.frame_pts, key_pts))]
        checked = False
        for frame in container.decode(stream):
            if not checked:
                if frame.pts is None or frame.pts < key_pts:
                    continue  # before the keyframe: made up from a partial packet, or never shown
                if frame.pts != first_shown and not last_try:
                    break
                checked = True
            if frame.pts is None or frame.pts >= target:
                yield frame
        if checked or last_try:
            return


def _colour_score(frame) -> float:
    """The photos' measure (``worker.media.images.colour_score``) on a frame: a tint that depends on density alone, as
    in toned prints or a scanner's cast on black-and-white film, scores as black and white; scenes in colour do not.
    Its percentile is the films' own (FILM_COLOUR_PERCENTILE)."""
    shrink = min(1.0, COLOUR_PROBE_SIDE / max(frame.width, frame.height))  # a 35 MP scan is converted small
    rgb = frame.to_ndarray(format="rgb24", width=max(1, round(frame.width * shrink)),
                           height=max(1, round(frame.height * shrink)), interpolation="AREA")
    return colour_score(rgb, percentile=FILM_COLOUR_PERCENTILE)


def _plane(frame, index: int, bit_depth: int) -> np.ndarray:
    """Plane ``index`` of a planar frame as an (h, w) array view without the line padding."""
    plane = frame.planes[index]
    dtype = np.uint8 if bit_depth <= 8 else np.dtype("<u2")
    itemsize = np.dtype(dtype).itemsize
    data = np.frombuffer(plane, dtype=dtype)
    return data.reshape(-1, plane.line_size // itemsize)[: plane.height, : plane.width]


def _video_format(stream, frame) -> VideoFormat:
    fmt = frame.format
    codec_context = stream.codec_context
    # Planar Y'CbCr, or packed (an uncompressed capture's 2vuy); not a DCP's X'Y'Z', which has the same layout.
    is_yuv = not fmt.is_rgb and len(fmt.components) >= 3 and not fmt.name.startswith("xyz")
    is_gray = len(fmt.components) in (1, 2) and not fmt.is_rgb
    if is_yuv:
        probe = av.VideoFormat(fmt.name, 64, 64)
        chroma_shift = (int(math.log2(64 // probe.chroma_width())), int(math.log2(64 // probe.chroma_height())))
    else:
        chroma_shift = None
    bit_depth = fmt.components[0].bits if is_yuv else _gray_depth(fmt)
    color_range = frame.color_range or codec_context.color_range or 0
    if color_range == 0:
        # Untagged: YUV video is limited range by MPEG convention (yuvj formats are full by name); a gray
        # plane (FFV1 scans, image sequences) is full range, as every still-image gray format is.
        full_range = fmt.name.startswith("yuvj") or is_gray or fmt.is_rgb
    else:
        full_range = color_range == RANGE_FULL
    colorspace = frame.colorspace or codec_context.colorspace or 0
    # Untagged colour is read as players do: BT.709 from 720 lines up, BT.601 below.
    matrix = MATRIX_BY_COLORSPACE.get(colorspace, "bt709" if frame.height >= 720 else "bt601")
    color_trc = frame.color_trc or codec_context.color_trc or 0
    color_primaries = frame.color_primaries or codec_context.color_primaries or 0
    scene_linear = fmt.name in LINEAR_FLOAT_FORMATS and color_trc in (*UNSPECIFIED_TAGS, TRC_LINEAR)
    if scene_linear:  # read through the sRGB curve (``_linear_luma``): the copy is sRGB, as the frames are shown
        color_trc = TRC_SRGB
        color_primaries = PRIMARIES_BT709 if color_primaries in UNSPECIFIED_TAGS else color_primaries
    return VideoFormat(
        width=frame.width,
        height=frame.height,
        pix_fmt=fmt.name,
        bit_depth=bit_depth,
        chroma_shift=chroma_shift,
        full_range=full_range,
        matrix=matrix,
        color_primaries=color_primaries,
        color_trc=color_trc,
        colorspace=colorspace,
        color_range=color_range,
        rotation=float(frame.rotation or 0.0),
        time_base=Fraction(stream.time_base),
        average_rate=_frame_rate(stream),
        sample_aspect_ratio=Fraction(stream.sample_aspect_ratio) if stream.sample_aspect_ratio else None,
        field_order=_field_order(codec_context, frame),
        scene_linear=scene_linear,
        codec=codec_context.name,
        codec_profile=codec_context.profile or None,
        **_hdr10_metadata(frame, stream.container.name),
    )


def _hdr10_metadata(frame, name: str) -> dict[str, str]:
    """HDR10's static metadata on a decoded frame (FFmpeg's AVMasteringDisplayMetadata: the display's red, green and
    blue and its white point as CIE xy, and its least and greatest luminance, as rationals, then whether each is set;
    AVContentLightMetadata: MaxCLL and MaxFALL), as ``VideoFormat`` keeps it for x265; ``name`` is the film's."""
    found: dict[str, str] = {}
    if HDR_TRANSFER_CODES.get(frame.color_trc) != "pq":  # HDR10 is PQ's
        return found
    try:
        entries = list(frame.side_data)
    except ValueError:  # a kind of side data newer than PyAV's list of kinds, which it cannot hand over at all
        logger.warning("%s: its frames carry side data of a kind PyAV cannot read; any HDR10 metadata is left out "
                       "of its copy", name)
        return found
    for side_data in entries:
        kind, data = side_data.type, bytes(side_data)
        if kind == av.sidedata.sidedata.Type.MASTERING_DISPLAY_METADATA and len(data) >= 88:
            values = struct.unpack_from("=20i", data)
            ratio = [values[i] / values[i + 1] if values[i + 1] else 0.0 for i in range(0, 20, 2)]
            has_primaries, has_luminance = struct.unpack_from("=2i", data, 80)
            if has_primaries and has_luminance:
                (rx, ry, gx, gy, bx, by, wx, wy), (low, high) = ratio[:8], ratio[8:10]
                xy = [round(v * 50000) for v in (gx, gy, bx, by, rx, ry, wx, wy)]
                found["mastering_display"] = ("G({},{})B({},{})R({},{})WP({},{})".format(*xy)
                                              + f"L({round(high * 10000)},{round(low * 10000)})")
        elif kind == av.sidedata.sidedata.Type.CONTENT_LIGHT_LEVEL and len(data) >= 8:
            found["content_light"] = "{},{}".format(*struct.unpack_from("=2I", data))
    return found


def _frame_rate(stream) -> Fraction | None:
    """The stream's average frame rate, or FFmpeg's guess where the demuxer's is missing or absurd: PyAV reads raw DV
    (.dv) with a 1/60000 time base and reports 60000 fps, which MP4 refuses ("fps 60000 is too large")."""
    if stream.average_rate and 0 < stream.average_rate <= MAX_PLAUSIBLE_FPS:
        return Fraction(stream.average_rate)
    return Fraction(stream.guessed_rate) if stream.guessed_rate else None


def _field_order(codec_context, frame) -> int:
    if codec_context.name in FIELD_ORDER_CODECS:
        return codec_context.field_order or FIELD_UNKNOWN
    if codec_context.name in FRAME_FIELD_CODECS:
        return _first_field(frame) if frame.interlaced_frame else FIELD_UNKNOWN
    if codec_context.name == "dvvideo" and frame.height in (480, 576) and frame.interlaced_frame:
        # Standard-definition DV is bottom field first by its standard (IEC 61834); FFmpeg's decoder flags its
        # frames interlaced but the stream reports no order.
        return FIELD_BB
    return FIELD_UNKNOWN


LOG_CHOICES = ("auto", "cineon", "none")  # how a run's codes are read: as its DPX headers say, Cineon log, as shown


def with_log_choice(film: FilmInfo, choice: str) -> FilmInfo:
    """``film`` with its codes read as ``choice`` says (one of LOG_CHOICES): ``auto`` as its DPX headers say, which
    ``probe_film`` has done; ``cineon`` as Cineon log (a TIFF or PNG run of log scans, or DPX frames whose headers do
    not say it), ``none`` as they look. Only a run of frames is a scan to read so: BadInputError for a film file."""
    if choice not in LOG_CHOICES:
        raise ValueError(f"unknown log choice {choice!r}; choose one of {', '.join(LOG_CHOICES)}")
    if choice == "auto" or film.video.log_encoded == (choice == "cineon"):
        return film
    if film.sequence is None:
        raise BadInputError(film.path, "is a film file; only a run of frames (DPX, TIFF or PNG scans) is read as "
                            f"log or not at will (log {choice})")
    if film.video.scene_linear:
        raise BadInputError(film.path, "holds linear light (float frames, as OpenEXR's), not log codes; it is read "
                            f"through the sRGB curve (log {choice})")
    return replace(film, video=replace(film.video, log_encoded=choice == "cineon"))


def _first_field(frame: av.VideoFrame) -> int:
    """FIELD_TT or FIELD_BB: which field of the woven ``frame`` its decoder flagged as shown first. PyAV does not
    show that flag, but FFmpeg's filters keep it: the frame's lines are replaced by a marker (0 on even lines, the
    top field; nonzero on odd ones), then ``separatefields`` puts out the field shown first, whose marker says which
    it is, whatever the picture holds."""
    graph = av.filter.Graph()
    nodes = [graph.add("buffer", f"video_size={frame.width}x{frame.height}:pix_fmt={frame.format.name}:time_base=1/25"),
             graph.add("geq", "lum='mod(Y,2)*64'"), graph.add("separatefields"), graph.add("buffersink")]
    for upstream, downstream in itertools.pairwise(nodes):
        upstream.link_to(downstream)
    graph.configure()
    graph.push(frame)
    field = graph.pull()
    plane = field.planes[0]
    sample_bytes = 2 if field.format.components[0].bits > 8 else 1
    lines = np.frombuffer(bytes(plane), np.uint8).reshape(-1, plane.line_size)[:plane.height]
    return FIELD_BB if lines[:, :plane.width * sample_bytes].any() else FIELD_TT


# --- decoding ranges --------------------------------------------------------------------------------------


def decode_frames(film: FilmInfo, layout: FrameLayout, start: int, stop: int, warmup: int = 0,
                  render_size: int = 0) -> Iterator[SourceFrame]:
    """Frames ``start - warmup .. stop - 1`` (display order) of ``film``; the first ``warmup`` are flagged.
    ``render_size`` is the colorizer's: when the chroma resolution's long side is below it, each frame's
    ``network_L`` is L at full resolution (0: always the chroma resolution's ``L``).

    Decoding starts at the last keyframe at or before the first frame wanted, so any range can be decoded
    on its own (a segment on another machine). Frames are matched to the probe's index by pts, and a frame
    the decoder fails to produce is an error, never a silent gap: the output must have every frame.
    """
    first = max(0, start - warmup)
    wanted = film.frame_pts[first:stop]
    if wanted.size == 0:
        return
    video = film.video
    if video.log_encoded:
        table = log_luma_to_l_table(video.bit_depth, LUMA_SUBDIVISIONS)
    elif video.hdr_transfer:
        table = hdr_luma_to_l_table(video.hdr_transfer, video.bit_depth, video.full_range, LUMA_SUBDIVISIONS)
    else:
        table = luma_to_l_table(video.bit_depth, video.full_range, LUMA_SUBDIVISIONS)
    shift = layout.bit_depth - video.bit_depth
    # Luma is handed on at the output's depth and range: by a shift, exactly, when only the depth changes.
    recode = (luma_code_table(video.bit_depth, video.full_range, layout.bit_depth, layout.full_range)
              if layout.full_range != video.full_range else None)
    chroma_w, chroma_h = layout.chroma_size(video.width, video.height)
    full_detail = max(chroma_w, chroma_h) < render_size and (chroma_w, chroma_h) != (video.width, video.height)
    to_bt709 = plate_conversion(film.plate_chromaticities)
    track_captions = caption_track_samples(film, first, stop) if film.caption_track is not None else {}
    next_index = first
    for window_start, window_stop in _windows(film, first, stop):
        # A run of frames is opened at each window's first frame, whose pts is then 0.
        offset = window_start if film.sequence is not None else 0
        index = film.index if film.sequence is None else _sequence_index(window_stop - window_start)
        with film.open(offset, window_stop) as container:
            stream = stream_by_index(container, film.video_index)
            _use_threads(stream)
            try:
                for frame in decode_from(container, stream, index, int(film.frame_pts[window_start]) - offset):
                    if frame.pts is None:
                        raise BadInputError(film.path, f"broken timestamps: a decoded frame has no pts near frame "
                                            f"{next_index}")
                    expected = int(film.frame_pts[next_index])
                    if frame.pts + offset != expected:
                        raise BadInputError(film.path, f"frame {next_index} (pts {expected}) did not decode; the "
                                            f"decoder returned pts {frame.pts + offset} instead (damaged video data)")
                    if (frame.width, frame.height) != (video.width, video.height):
                        raise BadInputError(film.path, f"{film.frame_name(next_index)} is {frame.width}x"
                                            f"{frame.height}, its first is {video.width}x{video.height}; a film's "
                                            "frames must all be one size")
                    # A plate's float values are read once: for its luma, and for its light where that is kept.
                    values = as_bt709(float_light(frame), to_bt709) if video.scene_linear else None
                    luma_source = _luma(frame, video) if values is None else _linear_luma(values, video)
                    L = _lightness(luma_source, table, chroma_w, chroma_h)
                    network_L = _lightness(luma_source, table, video.width, video.height) if full_detail else L
                    if recode is not None:
                        luma = recode[luma_source]
                    else:
                        luma = luma_source if shift == 0 else _shift_depth(luma_source, shift, layout.bit_depth)
                    light = _luminance(values) if layout.keeps_light and values is not None else None
                    captions = (frame_captions(frame) if video.captions else None) or track_captions.get(next_index)
                    yield SourceFrame(next_index, expected, luma, L, warmup=next_index < start, network_L=network_L,
                                      light=light, captions=captions)
                    next_index += 1
                    if next_index >= window_stop:
                        break
            except av.FFmpegError as exc:
                reason = (f"video stops decoding at {film.frame_name(next_index)} (damaged video data: "
                          f"{_ffmpeg_reason(exc)})")
                raise BadInputError(film.path, reason) from exc
        if next_index < window_stop:
            raise BadInputError(film.path, f"video stops decoding after {next_index} of {film.frames} frames "
                                "(damaged or truncated video data)")


def caption_track_samples(film: FilmInfo, first: int, stop: int) -> dict[int, bytes]:
    """The CEA-608 captions of ``film``'s caption track (``FilmInfo.caption_track``) for frames ``first .. stop - 1``,
    by frame index: each sample's shared among the frames it lasts (``worker.media.captions.spread_over_frames``), one
    that lasts no frame's start (shorter than a frame) whole to the next frame shown. A frame's own captions (ATSC
    A/53 in its picture) go before these where it has both."""
    video_times = film.frame_pts
    time_base = film.video.time_base

    def frame_at(time: Fraction) -> int:  # the first frame shown at or after ``time``
        return int(np.searchsorted(video_times, math.ceil(time / time_base), side="left"))

    captions: dict[int, bytes] = {}
    with _open(film.path) as container:
        track = stream_by_index(container, film.caption_track)
        start = Fraction(int(video_times[first])) * time_base
        try:
            container.seek(int(start / track.time_base), stream=track, backward=True)
            for packet in container.demux(track):
                if packet.pts is None or not packet.size:
                    continue
                begins = Fraction(packet.pts) * track.time_base
                lasts_from, lasts_to = frame_at(begins), frame_at(begins + (packet.duration or 0) * track.time_base)
                if lasts_from >= stop:
                    break
                shares = spread_over_frames(bytes(packet), max(1, lasts_to - lasts_from))
                for index, share in enumerate(shares, start=lasts_from):
                    if first <= index < stop and share:
                        captions[index] = captions.get(index, b"") + share
        except av.FFmpegError as exc:
            raise BadInputError(film.path, f"its caption track (stream #{film.caption_track}) does not read from "
                                f"{float(start):.3f} s (damaged: {_ffmpeg_reason(exc)})") from exc
    return captions


def _windows(film: FilmInfo, first: int, stop: int) -> Iterator[tuple[int, int]]:
    """The frames ``first .. stop - 1`` in the ranges opened one after another: a film file's at once; a run's
    RUN_WINDOW_FRAMES at a time, which of a stored run is what a worker holds at once (fetched as the colouring of
    the window before goes on), whatever the length of the segment."""
    step = RUN_WINDOW_FRAMES if film.sequence is not None else stop - first
    for window_start in range(first, stop, step):
        yield window_start, min(stop, window_start + step)


def _use_threads(stream) -> None:
    """Frame and slice threads for the decoder. How many decides how damage shows: with a few, FFmpeg's H.264
    decoder raises on a corrupt packet; with many it may skip the frames silently, which the frame index
    catches instead. ``DECODER_THREADS`` = 0 lets FFmpeg choose (cores + 1)."""
    stream.thread_type = "AUTO"
    if DECODER_THREADS:
        stream.codec_context.thread_count = DECODER_THREADS


def stream_by_index(container, index: int):
    """The container's stream with file index ``index``."""
    for stream in container.streams:
        if stream.index == index:
            return stream
    raise IndexError(f"no stream #{index} in {container.name}")


def _gray_depth(fmt: av.VideoFormat) -> int:
    """The luma bit depth a gray, paletted or RGB source is read at: its samples' own where FFmpeg has a gray format
    of that depth (a 10-bit DPX scan stays 10-bit, a 16-bit FFV1 master 16-bit), else the next deeper one."""
    bits = max(component.bits for component in fmt.components[:3])
    return next((depth for depth in sorted(GRAY_FORMATS) if depth >= bits), max(GRAY_FORMATS))


def _luma(frame, video: VideoFormat) -> np.ndarray:
    """The frame's luma plane as code values in the source's own range and depth (a copy); of a plate of linear
    light, see ``_linear_luma``."""
    fmt = frame.format
    if video.chroma_shift is not None and not fmt.is_planar and (
            planar := planar_yuv(video.chroma_shift, video.bit_depth)) is not None:
        # Packed Y'CbCr (2vuy and YUY2 from capture cards, Y210): unpacked, code for code. Taken for gray, it was
        # turned into full-range gray by FFmpeg and then written as video range: a tape capture's copy 16 % too
        # contrasty, its blacks crushed.
        frame = frame.reformat(format=planar)
        fmt = frame.format
    own_plane = (fmt.is_planar and not fmt.is_rgb) or fmt.name == GRAY_FORMATS.get(video.bit_depth)
    if own_plane and fmt.components[0].bits == video.bit_depth:  # Y'CbCr's Y plane, or a gray frame's only plane
        return _plane(frame, fmt.components[0].plane, video.bit_depth).copy()
    if fmt.name in RGB_CHANNELS and fmt.components[0].bits == video.bit_depth:
        return _rgb_luma(frame, video)
    # Packed, paletted, gray-with-alpha or other RGB sources: FFmpeg converts to the luma we read with (full range
    # for RGB), at the depth the probe settled on.
    gray = frame.reformat(format=GRAY_FORMATS[video.bit_depth],
                          dst_color_range=RANGE_FULL if video.full_range else RANGE_LIMITED)
    return _plane(gray, 0, video.bit_depth).copy()


@lru_cache(maxsize=16)
def planar_yuv(chroma_shift: tuple[int, int], bit_depth: int) -> str | None:
    """FFmpeg's planar Y'CbCr format of this subsampling and depth (``yuv422p10le``), None where it has none: what a
    packed frame's samples are unpacked into as they are, and what an output is encoded in."""
    name = {(1, 1): "yuv420p", (1, 0): "yuv422p", (0, 0): "yuv444p", (2, 0): "yuv411p"}.get(chroma_shift)
    if name is None:
        return None
    if bit_depth > 8:
        name = f"{name}{bit_depth}le"
    try:
        return av.VideoFormat(name).name
    except ValueError:
        return None


def _rgb_luma(frame, video: VideoFormat) -> np.ndarray:
    """Full-range Y' of an RGB frame by the output's matrix. A black-and-white scan stored as RGB (R = G = B, as DPX
    scans are) keeps its values exactly; FFmpeg's fixed-point conversion moves them by up to 3 codes at 10 bits."""
    rgb = frame.to_ndarray()
    red, green, blue = RGB_CHANNELS[frame.format.name]
    weight_red, weight_blue = YCBCR_WEIGHTS[video.matrix]
    weight_green = 1.0 - weight_red - weight_blue
    luma = (rgb[..., red].astype(np.float32) * weight_red + rgb[..., green].astype(np.float32) * weight_green
            + rgb[..., blue].astype(np.float32) * weight_blue)
    return np.rint(luma).astype(code_dtype(video.bit_depth))


def _linear_luma(values: np.ndarray, video: VideoFormat) -> np.ndarray:
    """Full-range Y' of a frame of linear light (``VideoFormat.scene_linear``; its ``float_light`` values): each
    channel as shown (``shown_light``), then weighed by the output's matrix, as a display-referred RGB frame's is
    (``_rgb_luma``)."""
    shown = shown_light(values)
    if shown.ndim == 3:
        weight_red, weight_blue = YCBCR_WEIGHTS[video.matrix]
        shown = (shown[..., 0] * weight_red + shown[..., 1] * (1.0 - weight_red - weight_blue)
                 + shown[..., 2] * weight_blue)
    return np.rint(shown * ((1 << video.bit_depth) - 1)).astype(code_dtype(video.bit_depth))


def _highlight_share(frame) -> float:
    """The share of a frame of linear light brighter than display white in any channel."""
    light = float_light(frame)
    return float((light > 1.0).mean() if light.ndim == 2 else (light > 1.0).any(axis=-1).mean())


def shown_light(values: np.ndarray) -> np.ndarray:
    """Values of linear light as a display shows them, in [0, 1]: clipped at display white, through the sRGB curve; a
    NaN (a renderer's fault) black."""
    return linear_to_srgb_np(np.clip(np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0))


def shown_video(frame: av.VideoFrame) -> np.ndarray | None:
    """A decoded frame of HDR video (PQ, HLG) or of BT.2020's primaries as an SDR display shows it, 8-bit sRGB (H, W,
    3): its light relative to reference white, highlights clipped, in BT.709's primaries; None for other video, which
    FFmpeg shows as it is. Its Y'CbCr is read here, by its own matrix and range (swscale would not say which)."""
    transfer = HDR_TRANSFER_CODES.get(frame.color_trc)
    if (transfer is None and frame.color_primaries != PRIMARIES_BT2020) or frame.format.is_rgb \
            or len(frame.format.components) < 3:
        return None
    planes = [np.frombuffer(plane, "<u2").reshape(plane.height, -1)[:, :plane.width]
              for plane in frame.reformat(format="yuv444p16le").planes]
    matrix = MATRIX_BY_COLORSPACE.get(frame.colorspace, "bt2020")
    signal = torch.from_numpy(ycbcr_to_rgb_np(*planes, matrix, 16, frame.color_range == RANGE_FULL))
    light = video_rgb_to_linear(signal, transfer, channels=-1).numpy()
    primaries = BT2020_CHROMATICITIES if frame.color_primaries == PRIMARIES_BT2020 else None
    return np.rint(shown_light(as_bt709(light, plate_conversion(primaries))) * 255).astype(np.uint8)


def _luminance(values: np.ndarray) -> np.ndarray:
    """The luminance (H, W) float32 of a frame of linear light's ``float_light`` values in BT.709 primaries
    (``as_bt709``); a NaN reads as black."""
    light = values @ np.array(BT709_LUMINANCE, dtype=np.float32) if values.ndim == 3 else values
    return np.nan_to_num(light, nan=0.0, posinf=np.finfo(np.float32).max, neginf=0.0)


def plate_conversion(chromaticities: tuple[float, ...] | None) -> np.ndarray | None:
    """The float32 matrix that takes ``float_light`` values (H, W, 3) of a plate in these primaries (an ACES plate's)
    to BT.709's, as ``values @ matrix``; None for BT.709's own (``None``)."""
    return None if chromaticities is None else bt709_from_primaries(chromaticities).T.astype(np.float32)


def as_bt709(values: np.ndarray, conversion: np.ndarray | None) -> np.ndarray:
    """``float_light`` values in BT.709 primaries, by ``plate_conversion``'s matrix where there is one (a gray
    plate's one channel has no primaries to convert)."""
    return values if conversion is None or values.ndim == 2 else values @ conversion


def float_light(frame) -> np.ndarray:
    """A float frame's values (``LINEAR_FLOAT_FORMATS``) as float32: (H, W) of a gray one, (H, W, 3) red, green and
    blue of a colour one (its planes are green, blue, red, then alpha, which is left out)."""
    name = frame.format.name
    dtype = np.dtype(("<" if name.endswith("le") else ">") + ("f2" if "f16" in name else "f4"))

    def plane(index: int) -> np.ndarray:
        data = frame.planes[index]
        rows = np.frombuffer(data, dtype).reshape(-1, data.line_size // dtype.itemsize)
        return rows[: data.height, : data.width].astype(np.float32)

    return plane(0) if name.startswith("gray") else np.stack([plane(2), plane(0), plane(1)], axis=-1)


def _lightness(luma: np.ndarray, table: np.ndarray, width: int, height: int) -> np.ndarray:
    """Lab L at (height, width): area-averaged code values looked up in a table of quarter-code steps."""
    if luma.shape == (height, width):
        return table[luma.astype(np.intp) * LUMA_SUBDIVISIONS]
    small = cv2.resize(luma.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    return table[np.rint(small * LUMA_SUBDIVISIONS).astype(np.intp)]


def _shift_depth(luma: np.ndarray, shift: int, bit_depth: int) -> np.ndarray:
    if shift > 0:
        return (luma.astype(np.uint16) << shift).astype(np.uint16)
    rounded = (luma.astype(np.uint32) + (1 << (-shift - 1))) >> (-shift)
    return np.minimum(rounded, (1 << bit_depth) - 1).astype(code_dtype(bit_depth))
