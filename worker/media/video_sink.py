"""Film output: the encoder settings a film gets, and the writer of one segment's colorized video.

    layout = plan_output(film.video, EncodeOptions(codec="h264", crf=18))
    with SegmentWriter(path, film.video, layout) as writer:
        writer.write(pts, luma, cb, cr)

A segment is video only, in NUT or QuickTime (which keep any time base exactly, so frame timing survives to the
final container untouched); ``worker.media.segments.join_segments`` remuxes segments into the output and copies the
source's other streams. Every segment starts with a keyframe and references nothing outside itself.

Output format rules (the source's look is kept; only colour is added):

* same size, frame timing, rotation and colour tags (range, matrix, primaries, transfer);
* same pixel aspect ratio (``aspect_loss`` names the one combination that cannot keep it);
* luma bit depth kept where the codec can carry it (x264 8/10, x265 up to 12, FFV1 up to 16); ProRes is
  always 10-bit;
* chroma subsampling kept for Y'CbCr sources (4:2:0 stays 4:2:0); black-and-white sources without chroma
  (gray, RGB) get 4:2:0, or 4:4:4 for FFV1 masters; odd frame sizes get 4:4:4 with x264/x265, which cannot
  subsample an odd size; ProRes is 4:2:2 (HQ) or 4:4:4 (4444) for 4:4:4 sources.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import av.filter
import numpy as np

from worker.media.captions import CAPTION_CODECS, CEA608, CEA608_CODEC, captioned_packet, cea608_constructs
from worker.media.video_source import (
    COLORSPACE_BY_MATRIX,
    FIELD_BT,
    FIELD_TT,
    INTERLACED_FIELDS,
    RANGE_FULL,
    RANGE_LIMITED,
    FrameLayout,
    VideoFormat,
    planar_yuv,
)

# Muxers shift a stream whose first decode timestamp is negative (x264's B-frame delay makes it so) to start
# at zero, which would move every frame off the source's timing; the segments and the final file keep them.
KEEP_TIMESTAMPS = {"avoid_negative_ts": "disabled"}

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CodecSpec:
    encoder: str
    depths: tuple[int, ...]  # luma bit depths it encodes, ascending
    chroma: tuple[tuple[int, int], ...]  # chroma subsamplings it encodes (log2 x, log2 y)
    needs_even_size_for_subsampling: bool
    crf: bool  # takes a constant-quality setting
    preset: bool
    # Container of the intermediate segment files: NUT keeps any time base exactly; FFmpeg's NUT muxer has no
    # ProRes tag, so ProRes segments go in QuickTime (which also keeps the time base).
    segment_format: str = "nut"
    # Whether it stores full-range video. ProRes is video range by definition: decoders read every ProRes frame so,
    # whatever the container says, so a full-range source (a gray master, a scan) is recoded to video range for it.
    full_range: bool = True

    @property
    def segment_suffix(self) -> str:
        return {"nut": ".nut", "mov": ".mov"}[self.segment_format]


CODECS = {
    "h264": CodecSpec("libx264", (8, 10), ((1, 1), (1, 0), (0, 0)), True, True, True),
    "h265": CodecSpec("libx265", (8, 10, 12), ((1, 1), (1, 0), (0, 0)), True, True, True),
    "ffv1": CodecSpec("ffv1", (8, 10, 12, 16), ((1, 1), (1, 0), (0, 0)), False, False, False),
    "prores": CodecSpec("prores_ks", (10,), ((1, 0), (0, 0)), True, False, False, segment_format="mov",
                        full_range=False),
}
CODEC_ALIASES = {"x264": "h264", "libx264": "h264", "avc": "h264", "x265": "h265", "libx265": "h265",
                 "hevc": "h265", "prores_ks": "prores"}
DEFAULT_CRF = {"h264": 18, "h265": 20}  # visually lossless for film grain at 8 bits; x265's scale runs higher
DEFAULT_PRESET = "medium"
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
# Containers an output file name may ask for, and the codecs each can hold.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
CONTAINER_CODECS = {"mp4": {"h264", "h265"}, "mov": {"h264", "h265", "prores"},
                    "matroska": {"h264", "h265", "ffv1", "prores"}}
PRORES_PROFILES = {(1, 0): "3", (0, 0): "4"}  # HQ for 4:2:2, 4444 for 4:4:4
# prores_ks's profile numbers, by FFmpeg's names of the profiles a ProRes film is in: a copy keeps its source's
# (an LT access copy's copy had been HQ, twice its size; a Proxy's, three and a half times), in its chroma's family.
PRORES_PROFILE_NUMBERS = {"Proxy": "0", "LT": "1", "Standard": "2", "HQ": "3", "4444": "4", "XQ": "5"}
# Each profile's four-character code, by which Apple's decoders (QuickTime, Final Cut) know it: the join must say it,
# as segments in NUT keep none (every copy had said apch, HQ: a 4444 copy too).
PRORES_TAGS = {"0": "apco", "1": "apcs", "2": "apcn", "3": "apch", "4": "ap4h", "5": "ap4x"}
# The default: each film in its own codec where Tinct writes that one, so a lossless master (FFV1) is not made lossy
# and an edit master (ProRes) stays one, as a photo keeps its own coding; FFV1 for the other lossless codecs tape
# captures and masters come in (uncompressed 2vuy and v210 from capture cards, HuffYUV, Ut Video, MagicYUV, ...),
# which Tinct does not write (ProRes where the container cannot hold FFV1: a capture named .mov); H.264 for the rest
# (MPEG-2, DV, VP9, scans).
SOURCE_CODEC = "source"
LOSSLESS_DECODERS = frozenset({
    "rawvideo", "v210", "v410", "v308", "v408", "r210", "r10k", "ayuv", "y41p", "yuv4", "012v", "huffyuv", "ffvhuff",
    "utvideo", "magicyuv", "lagarith", "qtrle", "png", "zlib", "mszh",
})
CODECS_BY_DECODER = {"h264": "h264", "hevc": "h265", "ffv1": "ffv1", "prores": "prores",
                     **dict.fromkeys(LOSSLESS_DECODERS, "ffv1")}
FALLBACK_CODEC = "h264"


def canonical_codec(name: str) -> str:
    """A codec's name as Tinct keys it (``CODECS``, or ``SOURCE_CODEC``), from any of its usual names."""
    key = CODEC_ALIASES.get(name.lower(), name.lower())
    if key == SOURCE_CODEC:
        return key
    if key not in CODECS:
        raise ValueError(f"unknown codec {name!r}; choose {SOURCE_CODEC} or one of {', '.join(CODECS)}")
    if key == "prores" and key not in available_codecs():
        raise ValueError("this build of FFmpeg has no ProRes encoder")
    return key


def fallback_container(codec: str) -> str:
    """The suffix a film gets when its own container is not one Tinct writes (AVI, MXF, DV, MPEG, ...): QuickTime for
    ProRes, its home, where editing software looks for it and which keeps its pixels' shape (Matroska cannot);
    Matroska otherwise, which holds any codec the film's audio and subtitles may use (and every codec a film copied
    in its own codec may be in)."""
    return ".mov" if codec == "prores" else ".mkv"


def available_codecs() -> list[str]:
    names = []
    for key, spec in CODECS.items():
        try:
            av.codec.Codec(spec.encoder, "w")
        except (av.codec.codec.UnknownCodecError, ValueError):
            continue
        names.append(key)
    return names


@dataclass(frozen=True)
class EncodeOptions:
    codec: str = "h264"
    crf: int | None = None  # None: the codec's default (DEFAULT_CRF); lossless codecs ignore it
    preset: str = DEFAULT_PRESET

    def __post_init__(self) -> None:
        object.__setattr__(self, "codec", canonical_codec(self.codec))
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.crf is not None:
            if self.codec != SOURCE_CODEC and not CODECS[self.codec].crf:
                raise ValueError(f"crf does not apply to {self.codec} (lossless or fixed-quality)")
            top = 63 if self.codec == "h264" else 51  # "source": x265's top, within x264's, for a film of either
            if not 0 <= self.crf <= top:
                raise ValueError(f"crf must be between 0 and {top} for {self.codec}, got {self.crf}")

    def for_film(self, video: VideoFormat, output: str | os.PathLike, report: bool = True) -> EncodeOptions:
        """These options for one film going to ``output``: ``SOURCE_CODEC`` becomes the film's own codec where Tinct
        writes it, ``output``'s container holds it and it keeps the shape of the film's pixels, else H.264 (logged
        where ``report``); a CRF then applies only where that codec takes one (a lossless master's copy ignores
        it)."""
        if self.codec != SOURCE_CODEC:
            return self
        codec = CODECS_BY_DECODER.get(video.codec, FALLBACK_CODEC)
        why_not = _unwritable(video, codec, output)
        if why_not:
            # A lossless capture the output's container cannot hold as FFV1 (a v210 capture named .mov): ProRes where
            # it can, intra-frame and 10-bit 4:2:2 or 4:4:4 as the capture was, the edit master an editing suite
            # makes of one; H.264 is a long-GOP access copy.
            fallback = "prores" if video.codec in LOSSLESS_DECODERS and not _unwritable(video, "prores", output) \
                else FALLBACK_CODEC
            if report:
                wanted = "its source's codec" if video.codec not in LOSSLESS_DECODERS else \
                    f"lossless FFV1, as its source ({video.codec}) is lossless"
                logger.warning("%s: written as %s rather than %s: %s", output, fallback, wanted, why_not)
            codec = fallback
        return EncodeOptions(codec, self.crf if CODECS[codec].crf else None, self.preset)

    @property
    def quality(self) -> int | None:
        return self.crf if self.crf is not None else DEFAULT_CRF.get(self.codec)

    def describe(self) -> dict:
        spec = CODECS[self.codec]
        described: dict = {"codec": self.codec}
        if spec.crf:
            described["crf"] = self.quality
        if spec.preset:
            described["preset"] = self.preset
        return described


@dataclass(frozen=True)
class OutputLayout:
    """The output video's pixel format and the frame layout the pipeline produces for it."""

    codec: str
    pix_fmt: str
    frame: FrameLayout
    matrix: str

    @property
    def bit_depth(self) -> int:
        return self.frame.bit_depth

    @property
    def full_range(self) -> bool:
        return self.frame.full_range


def _unwritable(video: VideoFormat, codec: str, output: str | os.PathLike) -> str | None:
    """Why ``video`` cannot be written in ``codec`` as ``output``, or None."""
    return (container_problem(output, codec) or aspect_loss(video, codec, output)
            or ("this build of FFmpeg has no encoder for it" if codec not in available_codecs() else None))


def container_for(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in CONTAINERS:
        raise ValueError(f"{path}: films are written as .mp4, .mov or .mkv, not {suffix or 'no extension'!r}")
    return CONTAINERS[suffix]


def check_container(path: str | os.PathLike, codec: str) -> None:
    problem = container_problem(path, codec)
    if problem:
        raise ValueError(f"{path}: {problem}")


def container_problem(path: str | os.PathLike, codec: str) -> str | None:
    """Why a film written as ``path`` cannot hold ``codec`` (a canonical name), or None."""
    suffix = Path(path).suffix.lower()
    if suffix not in CONTAINERS:
        return f"films are written as .mp4, .mov or .mkv, not {suffix or 'no extension'!r}"
    if codec != SOURCE_CODEC and codec not in CONTAINER_CODECS[CONTAINERS[suffix]]:  # that one: H.264 where need be
        holders = sorted({suffix for suffix, name in CONTAINERS.items() if codec in CONTAINER_CODECS[name]})
        return f"{codec} cannot be stored in {Path(path).suffix}; use {' or '.join(holders)}"
    return None


def aspect_loss(video: VideoFormat, codec: str, output: str | os.PathLike) -> str | None:
    """Why ``output`` would show ``video``'s frames at the wrong shape, or None when it keeps their pixel aspect
    ratio. H.264 and H.265 carry it in their bitstream, FFV1 in every frame's slice headers (``_frame_stamper``),
    and MP4/MOV in the container; ProRes has no field for it, and Matroska's is out of PyAV's reach."""
    sar = video.sample_aspect_ratio
    if not sar or sar == 1 or codec != "prores" or container_for(output) != "matroska":
        return None
    return (f"its pixels are not square ({sar.numerator}:{sar.denominator}, as from DV or DVD) and ProRes in .mkv "
            "cannot record it; write .mov")


def _frame_stamper(video: VideoFormat, layout: OutputLayout):
    """A function that stamps on each frame what its encoder reads from frames rather than its settings, or None when
    nothing needs stamping: an interlaced source's field order (FFV1 and ProRes code it per frame, x264 codes
    interlaced frames as fields, and decoders then flag them so players deinterlace) and, for FFV1, the pixel aspect
    ratio (written into its slice headers; PyAV cannot reach Matroska's own field for it)."""
    stamps = []
    if video.field_order in INTERLACED_FIELDS:
        stamps.append(("setfield", "tff" if video.field_order in (FIELD_TT, FIELD_BT) else "bff"))  # shown first
    sar = video.sample_aspect_ratio
    if layout.codec == "ffv1" and sar and sar != 1:
        stamps.append(("setsar", f"{sar.numerator}/{sar.denominator}"))
    if not stamps:
        return None
    graph = av.filter.Graph()
    nodes = [graph.add("buffer", f"video_size={video.width}x{video.height}:pix_fmt={layout.pix_fmt}:"
                       f"time_base={video.time_base.numerator}/{video.time_base.denominator}")]
    nodes += [graph.add(name, arguments) for name, arguments in stamps]
    nodes.append(graph.add("buffersink"))
    for upstream, downstream in itertools.pairwise(nodes):
        upstream.link_to(downstream)
    graph.configure()

    def stamped(frame: av.VideoFrame) -> av.VideoFrame:
        graph.push(frame)
        return graph.pull()

    return stamped


def plan_output(video: VideoFormat, options: EncodeOptions) -> OutputLayout:
    spec = CODECS[options.codec]
    depth = next((d for d in spec.depths if d >= video.bit_depth), spec.depths[-1])
    if video.chroma_shift is not None:
        chroma = video.chroma_shift
    else:
        chroma = (0, 0) if options.codec == "ffv1" else (1, 1)
    odd = video.width % 2 or video.height % 2
    if chroma not in spec.chroma or (odd and chroma != (0, 0) and spec.needs_even_size_for_subsampling):
        chroma = (1, 0) if (1, 0) in spec.chroma and not odd else (0, 0)
    pix_fmt = planar_yuv(chroma, depth)
    full_range = video.full_range and spec.full_range
    frame = FrameLayout(depth, chroma, full_range, video.log_encoded, transfer=video.hdr_transfer, bt2020=video.bt2020)
    return OutputLayout(options.codec, pix_fmt, frame, video.matrix)


def prores_profile(video: VideoFormat, chroma: tuple[int, int]) -> str:
    """prores_ks's profile for a copy of ``video`` at ``chroma``: a ProRes film's own where it is of that chroma's
    family (Proxy to HQ for 4:2:2, 4444 and XQ for 4:4:4), else HQ or 4444."""
    own = PRORES_PROFILE_NUMBERS.get(video.codec_profile or "") if video.codec == "prores" else None
    if own is not None and (own in ("4", "5")) == (chroma == (0, 0)):
        return own
    return PRORES_PROFILES[chroma]


def tag_colour(codec_context, video: VideoFormat, layout: OutputLayout) -> None:
    """Say in the output stream how its codes are to be read: range, matrix, primaries and transfer. The encoder
    writes them in its bitstream where it has a place for them (H.264, H.265), the container in its own (Matroska's
    Colour, QuickTime's colr), which for FFV1 is the only one: without it, players read full-range codes as video
    range, too dark and too contrasty."""
    codec_context.color_range = RANGE_FULL if layout.full_range else RANGE_LIMITED
    codec_context.colorspace = video.colorspace or COLORSPACE_BY_MATRIX[layout.matrix]
    codec_context.color_primaries = video.color_primaries
    codec_context.color_trc = video.color_trc


class SegmentWriter:
    """Encodes one segment's frames (luma + chroma code planes) into a video-only file at ``path``.

    Not atomic by itself: callers write under ``models.files.atomic_path`` so that only finished segments
    ever carry their final name.
    """

    def __init__(self, path: str | os.PathLike, video: VideoFormat, layout: OutputLayout, options: EncodeOptions,
                 frame_rate: Fraction | None = None) -> None:
        self.layout = layout
        self.time_base = video.time_base
        self.frames = 0
        self._captions: dict[int, bytes] = {}  # by pts: frames given to the encoder whose coded frame is still to come
        self._container = av.open(os.fspath(path), mode="w", format=CODECS[layout.codec].segment_format,
                                  options=dict(KEEP_TIMESTAMPS))
        try:
            self._stream = self._add_stream(video, layout, options, frame_rate or video.average_rate)
            self._stamp = _frame_stamper(video, layout)
            # ProRes has no place for captions in its frames: its segments keep the CEA-608 ones as a QuickTime
            # caption track, which the join keeps in a .mov (``worker.media.captions``).
            self._caption_track = None
            if CEA608 in video.captions and layout.codec == "prores":
                self._caption_track = self._container.add_mux_stream(CEA608_CODEC)
                self._caption_track.time_base = video.time_base
                rate = frame_rate or video.average_rate or Fraction(24)
                self._frame_ticks = max(1, round(1 / (rate * video.time_base)))
        except BaseException:
            self._container.close()
            raise

    def _add_stream(self, video: VideoFormat, layout: OutputLayout, options: EncodeOptions,
                    frame_rate: Fraction | None):
        spec = CODECS[layout.codec]
        stream = self._container.add_stream(spec.encoder, rate=frame_rate or Fraction(24))
        codec_context = stream.codec_context
        codec_context.width, codec_context.height = video.width, video.height
        codec_context.pix_fmt = layout.pix_fmt
        codec_context.time_base = video.time_base
        stream.time_base = video.time_base
        if video.sample_aspect_ratio:
            codec_context.sample_aspect_ratio = video.sample_aspect_ratio
        if video.field_order in INTERLACED_FIELDS:
            codec_context.field_order = video.field_order  # the container's flag (Matroska FieldOrder, QuickTime fiel)
        tag_colour(codec_context, video, layout)
        encoder_options: dict[str, str] = {}
        if spec.crf:
            encoder_options["crf"] = str(options.quality)
        if spec.preset:
            encoder_options["preset"] = options.preset
        if layout.codec in ("h264", "prores") and video.field_order in INTERLACED_FIELDS:
            encoder_options["flags"] = "+ildct+ilme"  # field coding: each frame's two fields stay apart
        if layout.codec == "h265":
            # Closed GOPs and no informational SEI noise: segments must join into one valid stream. An HDR10 film's
            # static metadata goes with it, so displays tone-map the copy as they do the source.
            params = ["open-gop=0", "log-level=error"]
            if video.mastering_display:
                params.append(f"master-display={video.mastering_display}")
            if video.content_light:
                params.append(f"max-cll={video.content_light}")
            encoder_options["x265-params"] = ":".join(params)
        elif layout.codec == "ffv1":
            encoder_options.update({"level": "3", "slicecrc": "1", "g": "1"})  # intra-only, checksummed slices
        elif layout.codec == "prores":
            encoder_options["profile"] = prores_profile(video, layout.frame.chroma_shift)
        codec_context.options = encoder_options
        return stream

    def write(self, pts: int, luma: np.ndarray, cb: np.ndarray, cr: np.ndarray, captions: bytes | None = None) -> None:
        """One frame, at ``pts``; ``captions``, its source frame's closed captions, go into its coded frame where the
        codec has a place for them (``worker.media.captions``)."""
        if captions and self.layout.codec in CAPTION_CODECS:
            self._captions[pts] = captions
        elif captions and self._caption_track is not None and (cea608 := cea608_constructs(captions)):
            sample = av.Packet(cea608)
            sample.stream, sample.time_base, sample.pts, sample.dts = self._caption_track, self.time_base, pts, pts
            sample.duration = self._frame_ticks  # (QuickTime drops a last sample that lasts no time)
            self._container.mux(sample)
        frame = av.VideoFrame(luma.shape[1], luma.shape[0], self.layout.pix_fmt)
        for plane, data in zip(frame.planes, (luma, cb, cr), strict=True):
            _fill_plane(plane, data)
        frame.pts = pts
        frame.time_base = self.time_base
        frame.color_range = self._stream.codec_context.color_range
        frame.colorspace = self._stream.codec_context.colorspace
        if self._stamp is not None:
            frame = self._stamp(frame)
        for packet in self._stream.encode(frame):
            self._mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        try:
            for packet in self._stream.encode(None):
                self._mux(packet)
        finally:
            self._container.close()

    def _mux(self, packet: av.Packet) -> None:
        """Mux ``packet``, its frame's captions put in it first (encoders hand coded frames out with their pts,
        in coding order)."""
        captions = self._captions.pop(packet.pts, None) if self._captions else None
        self._container.mux(captioned_packet(packet, captions, self.layout.codec) if captions else packet)

    def abort(self) -> None:
        self._container.close()

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _fill_plane(plane, data: np.ndarray) -> None:
    """Copy an (h, w) array into an FFmpeg plane in place (its rows may be padded to ``line_size`` bytes)."""
    view = np.frombuffer(plane, dtype=data.dtype).reshape(-1, plane.line_size // data.dtype.itemsize)
    view[: data.shape[0], : data.shape[1]] = data
