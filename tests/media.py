"""Generated media for the film pipeline's tests: clips written with PyAV, a reader for assertions, bad inputs.

The project commits no large media (DESIGN.md), so every test clip is made here, in milliseconds, from
deterministic numpy content. Three parts:

- content: `moving_scene` (a panning textured background, a moving object, hard cuts where asked) and
  `luma`/`gray_frames` for black-and-white clips;
- files: `write_clip` writes a real file (codec, pixel format, variable frame rate, colour tags, rotation, audio,
  subtitles, timecode track, chapters, metadata) and returns a `ClipInfo` read back from the file, after checking
  that the container kept what was asked for (so a test never passes because a feature was silently dropped);
- assertions: `probe`, `decode_rgb` and `decode_native` read an output file the way a test wants to check it;
- `make_bad_inputs` writes one small file per way an input can be broken, with what PyAV does on each.

Import it in tests as ``from tests.media import ...`` (pytest's ``pythonpath = ["."]`` makes ``tests`` a
namespace package); use that one spelling so the module is imported once.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import av.filter
import av.logging
import numpy as np
from av.subtitles.subtitle import SubtitleSet
from av.video.reformatter import Colorspace as SwsMatrix

# FFmpeg's own names (av_color_*_name) for the colour tags, so probe output reads like ffprobe's.
COLOR_RANGES: dict[str, int] = {"unknown": 0, "tv": 1, "pc": 2}
COLORSPACES: dict[str, int] = {
    "rgb": 0, "bt709": 1, "unknown": 2, "fcc": 4, "bt470bg": 5, "smpte170m": 6, "smpte240m": 7, "ycgco": 8,
    "bt2020nc": 9, "bt2020c": 10,
}  # fmt: skip
COLOR_PRIMARIES: dict[str, int] = {
    "bt709": 1, "unknown": 2, "bt470m": 4, "bt470bg": 5, "smpte170m": 6, "smpte240m": 7, "film": 8, "bt2020": 9,
    "smpte428": 10, "smpte431": 11, "smpte432": 12, "ebu3213": 22,
}  # fmt: skip
COLOR_TRCS: dict[str, int] = {
    "bt709": 1, "unknown": 2, "gamma22": 4, "gamma28": 5, "smpte170m": 6, "smpte240m": 7, "linear": 8,
    "log100": 9, "log316": 10, "iec61966-2-4": 11, "bt1361e": 12, "iec61966-2-1": 13, "bt2020-10": 14,
    "bt2020-12": 15, "smpte2084": 16, "smpte428": 17, "arib-std-b67": 18,
}  # fmt: skip
# Friendlier spellings accepted on input only.
_ALIASES = {"bt601": "smpte170m", "limited": "tv", "mpeg": "tv", "full": "pc", "jpeg": "pc"}
# swscale's matrix for each tagged colourspace: the pixels must be converted with the matrix the tag declares.
_SWS_MATRIX = {
    1: SwsMatrix.ITU709, 4: SwsMatrix.FCC, 5: SwsMatrix.ITU601, 6: SwsMatrix.ITU601, 7: SwsMatrix.SMPTE240M,
    9: SwsMatrix.BT2020, 10: SwsMatrix.BT2020,
}  # fmt: skip

_ENCODER_DEFAULTS: dict[str, dict[str, str]] = {
    "libx265": {"x265-params": "log-level=error"},  # x265 logs to stderr itself, past av.logging
    "mpeg4": {"qmax": "4"},  # its default 200 kb/s drifts by 10+ levels within 12 frames even at 64x48
}
AUDIO_RATE = 48_000
COVER_RGB = (200, 120, 40)  # write_clip's cover picture
TONE_HZ = (440.0, 660.0)  # left, right: different so a channel swap is visible
SUBTITLE_TEXTS = ("Tinct cue one", "Tinct cue two")
_ASS_HEADER = (
    b"[Script Info]\nScriptType: v4.00+\nPlayResX: 384\nPlayResY: 288\n\n[V4+ Styles]\n"
    b"Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, "
    b"Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, "
    b"MarginR, MarginV, Encoding\n"
    b"Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0\n\n"
    b"[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
)


# ----------------------------------------------------------------------------------------------------------- content


def moving_scene(
    frames: int, width: int, height: int, *, cuts_at: Iterable[int] = (), seed: int = 0
) -> Iterator[np.ndarray]:
    """Yield `frames` colour frames (H, W, 3) uint8 of a scene that moves like film does.

    A smooth, colourful texture pans by a whole number of pixels per frame (so the true optical flow of the
    background is known exactly) and a shaded disc moves across it at its own speed, bouncing off the edges.
    At each index in `cuts_at` a new scene starts: new texture, palette, pan direction and object. Scenes
    alternate between a darker and a brighter palette, so every cut is a large jump in luma as well as in colour
    (cut detection on black-and-white input sees it too). Deterministic for a given `seed`.
    """
    cuts = sorted(set(cuts_at))
    if any(not 0 < cut < frames for cut in cuts):
        raise ValueError(f"cuts_at must lie in 1..{frames - 1}, got {cuts}")
    starts = [0, *cuts]
    ends = [*cuts, frames]
    for scene, (start, end) in enumerate(zip(starts, ends, strict=True)):
        yield from _scene_frames(end - start, width, height, np.random.default_rng((seed, scene)), bright=scene % 2)


def _scene_frames(count: int, width: int, height: int, rng: np.random.Generator, bright: int) -> Iterator[np.ndarray]:
    pan = (int(rng.choice([-2, 2])), int(rng.choice([-1, 1])))  # (x, y) pixels per frame
    margin_x, margin_y = abs(pan[0]) * count + 1, abs(pan[1]) * count + 1
    canvas = _texture(rng, height + margin_y, width + margin_x, bright)
    x0 = margin_x - 1 if pan[0] < 0 else 0
    y0 = margin_y - 1 if pan[1] < 0 else 0

    radius = max(3.0, min(width, height) / 6)
    hue = rng.random()
    colour = 255 * np.array([_hue_channel(hue + shift) for shift in (0.0, 2 / 3, 1 / 3)], np.float32)
    centre = np.array([rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)])
    velocity = np.array([rng.choice([-3, -2, 2, 3]), rng.choice([-2, -1, 1, 2])], np.float64)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for t in range(count):
        x, y = x0 + pan[0] * t, y0 + pan[1] * t
        frame = canvas[y : y + height, x : x + width].copy()
        cx = _bounce(centre[0] + velocity[0] * t, radius, width - radius)
        cy = _bounce(centre[1] + velocity[1] * t, radius, height - radius)
        dist = np.hypot(xx - cx, yy - cy)
        alpha = np.clip(radius - dist + 0.5, 0.0, 1.0)[..., None]  # anti-aliased edge
        shade = (0.7 + 0.3 * np.cos(np.minimum(dist / radius, 1.0) * np.pi))[..., None]  # texture for the flow
        frame = frame * (1 - alpha) + colour * shade * alpha
        yield np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def _texture(rng: np.random.Generator, height: int, width: int, bright: int) -> np.ndarray:
    """Sum of low-frequency plane waves: smooth (flow-friendly) but textured everywhere, float32 (H, W, 3)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    def field() -> np.ndarray:
        total = np.zeros((height, width), np.float32)
        for _ in range(4):
            wavelength = rng.uniform(10.0, 36.0)
            angle = rng.uniform(0, np.pi)
            phase = rng.uniform(0, 2 * np.pi)
            total += np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / wavelength) + phase)
        return total / 4  # roughly -1..1

    base = rng.uniform(140, 170, 3) if bright else rng.uniform(60, 90, 3)
    shared = field()  # luma structure common to all channels
    return np.stack([base[c] + 35 * shared + 50 * field() for c in range(3)], axis=-1).astype(np.float32)


def _hue_channel(h: float) -> float:
    """One channel of a fully saturated colour at hue `h` (0..1): a vivid object on any background."""
    return float(np.clip(abs((h % 1.0) * 6 - 3) - 1, 0.0, 1.0))


def _bounce(position: float, low: float, high: float) -> float:
    """Reflect `position` into [low, high], as an object bouncing between two walls."""
    span = high - low
    if span <= 0:
        return low
    offset = (position - low) % (2 * span)
    return low + (offset if offset <= span else 2 * span - offset)


def luma(frame: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an RGB frame, (H, W) uint8: what a black-and-white print of the frame shows."""
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(frame.astype(np.float32) @ weights), 0, 255).astype(np.uint8)


def gray_frames(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Black-and-white version of a clip: `luma` of each frame, ready for `write_clip`."""
    for frame in frames:
        yield luma(frame)


# -------------------------------------------------------------------------------------------------------- read back


@dataclass(frozen=True)
class Chapter:
    start: float  # seconds
    end: float
    title: str


@dataclass(frozen=True)
class StreamInfo:
    """One stream as a test sees it. `pts` is display order for video (decoded frames), file order otherwise."""

    index: int
    type: str  # video, audio, subtitle, data, attachment
    codec: str | None  # FFmpeg decoder name; None when FFmpeg has no decoder (e.g. an mp4 chapter track)
    time_base: Fraction | None
    packet_count: int
    frame_count: int  # video: frames decoded; other streams: packets
    pts: tuple[int | None, ...]
    keyframe_pts: tuple[int | None, ...]  # packets flagged as keyframes, file order: where segments may start
    packet_sha256: tuple[str, ...]  # per packet payload, non-video streams only (video payloads change on re-encode)
    payload_sha256: str  # over all packet payloads in file order: equal digests mean a bit-exact copy
    metadata: dict[str, str]
    sample_rate: int | None = None
    channels: int | None = None


@dataclass(frozen=True)
class ProbeInfo:
    """A media file as read back with PyAV, for assertions on the pipeline's outputs."""

    path: Path
    format_name: str
    duration: float | None  # seconds, as the container declares it
    metadata: dict[str, str]
    chapters: tuple[Chapter, ...]
    streams: tuple[StreamInfo, ...]
    # First video stream, or zeros/None when there is none.
    width: int
    height: int
    pix_fmt: str | None
    color_range: str
    colorspace: str
    color_primaries: str
    color_trc: str
    # Counter-clockwise degrees from the display matrix, exactly as VideoFrame.rotation reports it: in -180..90,
    # so 270 reads back as -90 and 180 as -180; compare modulo 360.
    rotation: int

    def of_type(self, kind: str) -> tuple[StreamInfo, ...]:
        return tuple(stream for stream in self.streams if stream.type == kind)

    @property
    def video(self) -> StreamInfo | None:
        streams = self.of_type("video")
        return streams[0] if streams else None

    def tag(self, key: str) -> str | None:
        """Container tag by case-insensitive key: Matroska upper-cases every key but `title`."""
        folded = {name.casefold(): value for name, value in self.metadata.items()}
        return folded.get(key.casefold())


def probe(path: str | os.PathLike[str]) -> ProbeInfo:
    """Read every stream of a (small) file: demuxes all packets and decodes the video streams."""
    path = Path(path)
    with av.open(str(path)) as container:
        streams = list(container.streams)
        packets: dict[int, list[bytes]] = {s.index: [] for s in streams}
        packet_pts: dict[int, list[int | None]] = {s.index: [] for s in streams}
        keyframe_pts: dict[int, list[int | None]] = {s.index: [] for s in streams}
        frame_pts: dict[int, list[int | None]] = {s.index: [] for s in streams if s.type == "video"}
        rotation: dict[int, int] = {}
        for packet in container.demux():
            index = packet.stream.index
            if packet.size:  # PyAV ends each stream with an empty flush packet
                packets[index].append(bytes(packet))
                packet_pts[index].append(packet.pts)
                if packet.is_keyframe:
                    keyframe_pts[index].append(packet.pts)
            if index in frame_pts and packet.stream.codec_context is not None:
                for frame in packet.decode():
                    frame_pts[index].append(frame.pts)
                    rotation.setdefault(index, frame.rotation)
        infos = tuple(
            _stream_info(s, packets[s.index], frame_pts.get(s.index), packet_pts[s.index], keyframe_pts[s.index])
            for s in streams
        )
        video = next((s for s in streams if s.type == "video" and s.codec_context is not None), None)
        ctx = video.codec_context if video is not None else None
        return ProbeInfo(
            path=path,
            format_name=container.format.name,
            duration=container.duration / 1_000_000 if container.duration is not None else None,
            metadata=dict(container.metadata),
            chapters=_read_chapters(container),
            streams=infos,
            width=ctx.width if ctx else 0,
            height=ctx.height if ctx else 0,
            pix_fmt=ctx.pix_fmt if ctx else None,
            color_range=_name(COLOR_RANGES, ctx.color_range if ctx else 0),
            colorspace=_name(COLORSPACES, ctx.colorspace if ctx else 2),
            color_primaries=_name(COLOR_PRIMARIES, ctx.color_primaries if ctx else 2),
            color_trc=_name(COLOR_TRCS, ctx.color_trc if ctx else 2),
            rotation=rotation.get(video.index, 0) if video is not None else 0,
        )


def _stream_info(
    stream: av.stream.Stream,
    payloads: list[bytes],
    frame_pts: list[int | None] | None,
    packet_pts: list[int | None],
    keyframe_pts: list[int | None],
) -> StreamInfo:
    ctx = stream.codec_context
    total = hashlib.sha256()
    for payload in payloads:
        total.update(payload)
    is_video = stream.type == "video"
    audio = stream.type == "audio" and ctx is not None
    return StreamInfo(
        index=stream.index,
        type=stream.type,
        codec=ctx.name if ctx is not None else None,
        time_base=stream.time_base,
        packet_count=len(payloads),
        frame_count=len(frame_pts) if frame_pts is not None else len(payloads),
        pts=tuple(frame_pts if frame_pts is not None else packet_pts),
        keyframe_pts=tuple(keyframe_pts),
        packet_sha256=() if is_video else tuple(hashlib.sha256(p).hexdigest() for p in payloads),
        payload_sha256=total.hexdigest(),
        metadata=dict(stream.metadata),
        sample_rate=ctx.sample_rate if audio else None,
        channels=ctx.layout.nb_channels if audio else None,
    )


def _read_chapters(container: av.container.Container) -> tuple[Chapter, ...]:
    return tuple(
        Chapter(
            start=float(chapter["start"] * chapter["time_base"]),
            end=float(chapter["end"] * chapter["time_base"]),
            title=chapter["metadata"].get("title", ""),
        )
        for chapter in container.chapters()
    )


def _name(table: Mapping[str, int], value: int) -> str:
    return next((name for name, number in table.items() if number == value), str(value))


@dataclass(frozen=True)
class FrameInfo:
    """How a player is told to show a video's first frame."""

    aspect: Fraction | None  # pixel aspect ratio: the frame's own (from its bitstream), else its stream's; None: unsaid
    fields: str  # "progressive", or which field of an interlaced frame comes first: "top first", "bottom first"


def first_frame_info(path: str | os.PathLike[str]) -> FrameInfo:
    """What the decoder says of the first video frame, as FFmpeg's showinfo filter logs it ("sar:16/15", "i:T")."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        from_container = container.streams.video[0].sample_aspect_ratio
    av.logging.set_level(av.logging.INFO)
    try:
        with av.logging.Capture() as logs:
            _filter_frame(frame, "showinfo")
    finally:
        av.logging.set_level(None)
    line = next(message for _, name, message in logs if name == "showinfo" and " sar:" in message)
    num, den = (int(part) for part in line.split(" sar:", 1)[1].split()[0].split("/"))
    fields = {"P": "progressive", "T": "top first", "B": "bottom first"}[line.split(" i:", 1)[1][0]]
    return FrameInfo(Fraction(num, den) if num and den else from_container or None, fields)


def lumas(path: Path) -> list[np.ndarray]:
    """Every frame's Y plane as stored (uint8, or uint16 for more than 8 bits), in any planar pixel format, or the Y
    samples of packed 2vuy (``uyvy422``: U Y V Y), as capture cards store uncompressed video."""
    planes = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            plane = frame.planes[0]
            dtype = np.uint8 if frame.format.components[0].bits <= 8 else np.dtype("<u2")
            rows = np.frombuffer(plane, dtype).reshape(plane.height, -1)
            if frame.format.name == "uyvy422":
                planes.append(rows[:, 1 : 2 * frame.width : 2].copy())
                continue
            planes.append(rows[:, : plane.width].copy())
    return planes


def decode_rgb(path: str | os.PathLike[str], stream: int = 0) -> list[np.ndarray]:
    """Every frame of a video stream as (H, W, 3) uint8 RGB, converted with the frame's own colour tags.

    The stored orientation is kept (rotation is metadata, see `ProbeInfo.rotation`). Small clips only.
    """
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=stream)]


def decode_native(path: str | os.PathLike[str], stream: int = 0) -> list[np.ndarray]:
    """Every frame in its decoded pixel format (`VideoFrame.to_ndarray()`): uint16 for 10-bit, planes stacked.

    For checks that RGB conversion would hide: 10-bit samples really above 255, chroma really neutral.
    """
    with av.open(str(path)) as container:
        return [frame.to_ndarray() for frame in container.decode(video=stream)]


# ------------------------------------------------------------------------------------------------------------ write


@dataclass(frozen=True)
class ClipInfo:
    """What `write_clip` wrote, as read back from the file (container time base, not the encoder's)."""

    path: Path
    frame_count: int
    pts: tuple[int | None, ...]  # video, display order
    time_base: Fraction
    width: int
    height: int
    pix_fmt: str
    duration: float  # seconds: end of the last frame
    audio_sha256: tuple[str, ...]  # per audio stream, over its packet payloads in file order
    subtitle_payloads: tuple[tuple[bytes, ...], ...]  # per subtitle stream
    chapters: tuple[Chapter, ...]
    metadata: dict[str, str]
    probe: ProbeInfo = field(repr=False)

    @property
    def times(self) -> list[float]:
        """Frame presentation times in seconds."""
        return [float(p * self.time_base) for p in self.pts if p is not None]


def write_clip(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    *,
    fps: Fraction | int = Fraction(24),
    codec: str = "libx264",
    pix_fmt: str | None = None,
    gop: int | None = None,
    bframes: int | None = None,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    color_range: str | None = None,
    colorspace: str | None = None,
    color_primaries: str | None = None,
    color_trc: str | None = None,
    rotation: int = 0,
    sample_aspect_ratio: Fraction | None = None,
    interlaced: str | None = None,
    audio: str | None = None,
    subtitles: str | None = None,
    timecode: str | None = None,
    chapters: Sequence[tuple[float, str]] = (),
    metadata: Mapping[str, str] | None = None,
    encoder_options: Mapping[str, str] | None = None,
    container_options: Mapping[str, str] | None = None,
    hidden_frames: int = 0,
    cover: bool = False,
    captions: bool = False,
    caption_track: int = 0,
) -> ClipInfo:
    """Encode `frames` into a real file; the container comes from the suffix (.mp4 .mkv .mov .avi .webm ...).

    Frames are (H, W, 3) RGB or (H, W) gray, uint8, or uint16 for more than 8 bits (full 16-bit scale: shift a
    10-bit value left by 6). Gray frames written to a yuv pixel format get exactly neutral chroma; gray pixel
    formats default to `color_range="pc"`, because gray samples are full-range luma and an untagged H.264
    4:0:0 stream decodes as limited-range yuv420p.

    - `pix_fmt`: None picks yuv420p, or the codec's first format when it has no yuv420p (prores_ks: yuv422p10le).
    - `pts`: per-frame timestamps in `time_base` (default 1/fps) for variable frame rate; default evenly spaced.
    - colour tags use FFmpeg's names (`COLOR_RANGES`, `COLORSPACES`, ...; also "bt601", "limited", "full");
      the RGB->YUV conversion uses the matrix and range the tags declare, so tagged files decode correctly.
    - `rotation`: counter-clockwise degrees, stored as a display matrix (mp4, mov, mkv, webm; not avi).
    - `sample_aspect_ratio`: the pixels' width to height (DV and DVD footage is not square: PAL 4:3 is 16:15), set
      on the encoder: H.264 and H.265 write it into the bitstream; read it back with `first_frame_info`.
    - `interlaced`: "top first" or "bottom first": the frames are flagged as woven fields in that order and coded as
      fields (H.264, MPEG-2, ProRes), as a tape capture is; `first_frame_info` reads the order back.
    - `audio`: an audio codec ("aac", "libopus", "flac", "pcm_s16le", ...) for a stereo 48 kHz tone
      (`TONE_HZ`) as long as the video.
    - `subtitles`: "mov_text" (mp4/mov), "srt"/"subrip"/"ass"/"webvtt" (mkv), "webvtt" (webm): the two
      `SUBTITLE_TEXTS` cues at 10-40 % and 50-90 % of the clip. (mov_text adds empty 2-byte gap packets.)
    - `timecode`: "HH:MM:SS:FF" written as a QuickTime tmcd track (mp4/mov only), which PyAV reads back as a
      data stream without a codec: the data stream a pipeline must carry or drop deliberately.
    - `chapters`: (start seconds, title); each ends where the next starts, the last at the end of the clip.
      mp4/mov also store them as a text track that reads back as one more data stream.
    - `metadata`: container tags. mp4/mov keep only the standard keys (title, comment, artist, ...) unless
      `container_options={"movflags": "use_metadata_tags"}`; mkv upper-cases keys other than title.
    - `hidden_frames` (mp4/mov): the first N frames lie before the start of an edit list, as in a film trimmed at its
      head without re-encoding: encoded (what follows needs them to decode), flagged discard, never shown. Their pts
      are negative (default spacing) and the muxer writes the edit list; the file shows the other frames from 0.
    - `captions` (libx264, libx265, mpeg2video): closed captions in every coded frame, `clip_captions(n)` for the n-th
      frame shown, as ATSC A/53 SEI messages or MPEG-2 user data (as broadcast, AVCHD and DVD-era video carries
      CEA-608/708), which FFmpeg's decoder
      hands back with each frame (A53_CC side data: `worker.media.captions.frame_captions`).
    - `caption_track` (mov): a QuickTime closed-caption track (c608), as broadcast masters carry CEA-608 beside their
      pictures, holding each shown frame's CEA-608 pair (`clip_captions(n)[:3]`), a sample for every `caption_track`
      frames (1: a sample a frame) holding theirs in order.
    - `cover` (mp4/mov): a 32x32 JPEG cover picture, a stream flagged as an attached picture (`COVER_RGB`), as many
      MP4s carry one.
    - `.mpg` and `.ts` (MPEG program and transport streams, as from DVDs and broadcast captures) shift every
      timestamp by the same offset, so their timestamps are checked from the first frame's.
    - `encoder_options`: codec options over `_ENCODER_DEFAULTS` (mpeg4 qmax=4, quiet x265). Lossy codecs at 4:2:0
      miss the source by a few levels on average and tens at a saturated edge; use ffv1 for exact pixel checks.

    Raises ValueError when the file does not hold what was asked (a container that drops rotation, chapters,
    tags or timestamps), so a test cannot pass on a silently missing feature.
    """
    path = Path(path)
    fps = Fraction(fps)
    time_base = time_base or 1 / fps
    arrays = list(frames)  # small clips: knowing the length up front gives the duration for chapters and audio
    if not arrays:
        raise ValueError("write_clip needs at least one frame")
    if pts is not None and len(pts) != len(arrays):
        raise ValueError(f"{len(pts)} pts for {len(arrays)} frames")
    height, width = arrays[0].shape[:2]
    frame_step = 1 / (fps * time_base)  # one frame period in time_base units
    if not 0 <= hidden_frames < len(arrays) or (hidden_frames and path.suffix.lower() not in (".mp4", ".mov")):
        raise ValueError(f"hidden_frames needs an .mp4 or .mov and fewer than {len(arrays)}, got {hidden_frames}")
    written_pts = list(pts) if pts is not None else [
        round((index - hidden_frames) * frame_step) for index in range(len(arrays))
    ]
    duration = float((written_pts[-1] + frame_step) * time_base)
    pix_fmt = pix_fmt or _default_pix_fmt(codec)
    gray_target = pix_fmt.startswith("gray")
    color_range = color_range or ("pc" if gray_target else None)
    tags = {
        "color_range": _lookup(COLOR_RANGES, color_range),
        "colorspace": _lookup(COLORSPACES, colorspace),
        "color_primaries": _lookup(COLOR_PRIMARIES, color_primaries),
        "color_trc": _lookup(COLOR_TRCS, color_trc),
    }
    options = {**_ENCODER_DEFAULTS.get(codec, {}), **({"flags": "+ildct+ilme"} if interlaced else {}),
               **(encoder_options or {})}
    fields = {None: None, "top first": "tff", "bottom first": "bff"}.get(interlaced, "?")
    if fields == "?":
        raise ValueError(f'interlaced must be "top first" or "bottom first", not {interlaced!r}')

    container_options = {**({"use_editlist": "1"} if hidden_frames else {}), **(container_options or {})}
    with av.open(str(path), "w", options=container_options) as out:
        video = out.add_stream(codec, rate=fps, options=options)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.time_base = time_base
        video.codec_context.time_base = time_base
        if gop is not None:
            video.codec_context.gop_size = gop
        if bframes is not None:
            video.codec_context.max_b_frames = bframes
        for name, value in tags.items():
            if value is not None:
                setattr(video.codec_context, name, value)
        if rotation:
            video.set_display_rotation(rotation)
        if sample_aspect_ratio is not None:
            video.codec_context.sample_aspect_ratio = sample_aspect_ratio
        if timecode is not None:
            if out.format.name not in ("mp4", "mov"):
                raise ValueError(f"a timecode track needs mp4 or mov, not {out.format.name}")
            video.metadata["timecode"] = timecode
        audio_stream = out.add_stream(audio, rate=AUDIO_RATE, layout="stereo") if audio else None
        if audio_stream is not None and audio in ("libopus", "opus"):
            audio_stream.bit_rate = 96_000  # libopus warns and guesses without one
        subtitle_stream = out.add_stream(subtitles) if subtitles else None
        if subtitle_stream is not None:
            subtitle_stream.codec_context.subtitle_header = _ASS_HEADER
        out.metadata.update(metadata or {})
        if chapters:
            out.set_chapters(_chapter_entries(chapters, duration))
        caption_stream = None
        if caption_track:
            if out.format.name != "mov":
                raise ValueError(f"a caption track needs mov, not {out.format.name}")
            caption_stream = out.add_mux_stream("eia_608")
            caption_stream.time_base = time_base
        cover_stream = None
        if cover:
            if out.format.name not in ("mp4", "mov"):
                raise ValueError(f"a cover picture needs mp4 or mov, not {out.format.name}")
            cover_stream = out.add_stream("mjpeg")
            cover_stream.width, cover_stream.height, cover_stream.pix_fmt = 32, 32, "yuvj420p"
            cover_stream.disposition = av.stream.Disposition.attached_pic

        for index, (array, frame_pts) in enumerate(zip(arrays, written_pts, strict=True)):
            if array.shape[:2] != (height, width):
                raise ValueError(f"frame {index} is {array.shape}, the first frame was {arrays[0].shape}")
            frame = _video_frame(array, pix_fmt, tags)
            if fields is not None:
                frame = _filter_frame(frame, "setfield", fields)
            frame.pts, frame.time_base = frame_pts, time_base
            out.mux(_captioned(video.encode(frame), written_pts, hidden_frames) if captions else video.encode(frame))
        out.mux(_captioned(video.encode(), written_pts, hidden_frames) if captions else video.encode())
        if audio_stream is not None:
            out.mux(audio_stream.encode(_tone(duration)))
            out.mux(audio_stream.encode())
        if subtitle_stream is not None:
            _write_cues(out, subtitle_stream, duration)
        if caption_stream is not None:
            _write_caption_samples(out, caption_stream, written_pts[hidden_frames:], caption_track, frame_step)
        if cover_stream is not None:
            picture = av.VideoFrame.from_ndarray(np.full((32, 32, 3), COVER_RGB, np.uint8), format="rgb24")
            for packet in cover_stream.encode(picture.reformat(format="yuvj420p")) + cover_stream.encode():
                packet.pts = packet.dts = None  # an attached picture has no place in time
                out.mux(packet)

    if cover and not has_cover(path):
        raise ValueError(f"{path.name}: the cover picture was not kept")
    info = probe(path)
    shown_pts = written_pts[hidden_frames:]
    _check_written(info, path, shown_pts, time_base, rotation, chapters, metadata, audio, subtitles, timecode)
    video_info = info.video
    assert video_info is not None and video_info.time_base is not None
    return ClipInfo(
        path=path,
        frame_count=video_info.frame_count,
        pts=video_info.pts,
        time_base=video_info.time_base,
        width=info.width,
        height=info.height,
        pix_fmt=info.pix_fmt or "",
        duration=duration,
        audio_sha256=tuple(s.payload_sha256 for s in info.of_type("audio")),
        subtitle_payloads=tuple(_subtitle_payloads(path, s.index) for s in info.of_type("subtitle")),
        chapters=info.chapters,
        metadata=info.metadata,
        probe=info,
    )


def clip_captions(shown: int) -> bytes:
    """The closed captions `write_clip(captions=True)` gives the `shown`-th frame shown: a CEA-608 pair (two
    letters, odd parity, field 1) and a CEA-708 packet's first bytes, as cc_data constructs."""
    def odd_parity(byte: int) -> int:
        return byte | (0x80 if bin(byte).count("1") % 2 == 0 else 0)

    letters = (ord("A") + shown % 26, ord("a") + shown // 26 % 26)
    return bytes([0xFC, odd_parity(letters[0]), odd_parity(letters[1]), 0xFF, 0x02, shown % 251])


def _write_caption_samples(out, stream, shown_pts: Sequence[int], frames_each: int, frame_step: float) -> None:
    """A caption track's samples: the CEA-608 pairs of `frames_each` shown frames apiece, lasting as long as they."""
    for first in range(0, len(shown_pts), frames_each):
        shown = range(first, min(first + frames_each, len(shown_pts)))
        sample = av.Packet(b"".join(clip_captions(n)[:3] for n in shown))
        sample.stream, sample.time_base = stream, stream.time_base
        sample.pts = sample.dts = shown_pts[first]
        sample.duration = round(len(shown) * frame_step)
        out.mux(sample)


def _captioned(packets: list[av.Packet], written_pts: Sequence[int], hidden_frames: int) -> list[av.Packet]:
    """Each coded frame with its captions (`clip_captions`), by the place its pts has among the frames shown."""
    from worker.media.captions import captioned_packet, repacked  # Tinct's SEI: FFmpeg's decoder is the judge of both

    captioned = []
    for packet in packets:
        captions = clip_captions(list(written_pts).index(packet.pts) - hidden_frames)
        encoder = packet.stream.codec_context.name
        if encoder == "mpeg2video":
            captioned.append(repacked(packet, _mpeg2_captioned(bytes(packet), captions)))
        else:
            captioned.append(captioned_packet(packet, captions, {"libx264": "h264", "libx265": "h265"}[encoder]))
    return captioned


def _mpeg2_captioned(picture: bytes, captions: bytes) -> bytes:
    """An MPEG-2 picture with its captions as ATSC A/53 user data (user_data_start_code, "GA94", cc_data) after its
    picture header and extensions, before its first slice, as broadcast MPEG-2 carries them."""
    slices = [picture.find(b"\x00\x00\x01" + bytes([code])) for code in range(0x01, 0xB0)]
    first_slice = min(position for position in slices if position >= 0)
    user_data = b"\x00\x00\x01\xb2GA94\x03" + bytes([0x40 | len(captions) // 3, 0xFF]) + captions + b"\xff"
    return picture[:first_slice] + user_data + picture[first_slice:]


def read_frames(folder: Path, names: list[str]) -> list[np.ndarray]:
    """The frames of a run, each file decoded as it is stored (R'G'B' at its own depth)."""
    frames = []
    for name in names:
        with av.open(str(folder / name)) as container:
            frames.append(next(container.decode(video=0)).to_ndarray().astype(np.int64))
    return frames


def luma_of(rgb: np.ndarray, matrix: tuple[float, float] = (0.299, 0.114)) -> np.ndarray:
    """Y' of R'G'B' by the matrix whose red and blue weights are given (BT.601's by default)."""
    red, blue = matrix
    return red * rgb[..., 0] + (1 - red - blue) * rgb[..., 1] + blue * rgb[..., 2]


def write_frames(folder: Path, frames: list[np.ndarray], *, name: str = "scan_%07d.dpx", first: int = 86400,
                 codec: str = "dpx", pix_fmt: str = "gbrp10le", rate: float | None = None,
                 industry_headers: bool = True, timecode: int | None = None, scanner: bool = False) -> list[Path]:
    """A film scanner's run: one file per 16-bit gray frame, named by the printf pattern ``name`` from ``first`` on,
    by FFmpeg's image muxer. DPX frames get the film and television headers a scanner writes, declaring ``rate`` in
    the film header and ``timecode`` (SMPTE 12M BCD, counted on per frame) in the television header; None: unset.
    ``scanner``: each DPX frame also says what a film scanner says of it (``SCANNER_FIELDS``, the keycode counted
    on per frame: ``scanner_fields``)."""
    folder.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape
    pattern = os.path.join(str(folder).replace("%", "%%"), name)  # the muxer reads the folder as a pattern too
    with av.open(pattern, "w", format="image2", options={"start_number": str(first)}) as out:
        stream = out.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="gray16le").reformat(format=pix_fmt)
            picture.pts = index
            out.mux(stream.encode(picture))
        out.mux(stream.encode())
    paths = [folder / (name % (first + i)) for i in range(len(frames))]
    if codec == "dpx" and industry_headers:
        for position, path in enumerate(paths):
            _add_dpx_industry_headers(path, rate, timecode)
            timecode = None if timecode is None else timecode + 1  # frames 00-09 of one second: BCD counts on
            if scanner:
                _add_scanner_fields(path, scanner_fields(position, len(paths)))
    return paths


# SMPTE 268M fields a film scanner fills in: name -> (offset, struct format). Strings are ASCII, NUL-padded.
SCANNER_FIELDS = {
    "creation time": (136, "24s"), "project": (260, "200s"), "copyright": (460, "200s"),
    "x offset": (1408, "I"), "input device": (1556, "32s"), "input serial": (1588, "32s"),
    "film maker": (1664, "2s"), "film type": (1666, "2s"), "perforation offset": (1668, "2s"), "prefix": (1670, "6s"),
    "count": (1676, "4s"), "format": (1680, "32s"), "frame position": (1712, "I"), "sequence length": (1716, "I"),
    "shutter angle": (1728, "f"), "frame id": (1732, "32s"), "slate": (1764, "100s"), "user bits": (1924, "I"),
}


def scanner_fields(position: int, frames: int) -> dict[str, object]:
    """What a scanner writes into the frame at ``position`` of a run of ``frames``: 35 mm keycodes count a foot of 16
    frames, each frame four perforations on from the last."""
    return {
        "creation time": b"2026:03:02:10:11:12Z", "project": b"Reel 1 restoration", "copyright": b"(c) A Film Archive",
        "x offset": 12, "input device": b"Scanity HDR", "input serial": b"SN-0042", "film maker": b"01",
        "film type": b"21", "perforation offset": b"%02d" % (position % 16 * 4), "prefix": b"123456",
        "count": b"%04d" % (1000 + position // 16), "format": b"Academy", "frame position": position + 1,
        "sequence length": frames, "shutter angle": 180.0, "frame id": b"reel1", "slate": b"Scene 12, take 3",
        "user bits": 0x12345678,
    }


def _add_scanner_fields(path: Path, values: dict[str, object]) -> None:
    data = bytearray(path.read_bytes())
    order = {b"SDPX": ">", b"XPDS": "<"}[bytes(data[:4])]
    for name, value in values.items():
        offset, layout = SCANNER_FIELDS[name]
        struct.pack_into(order + layout, data, offset, value)
    path.write_bytes(bytes(data))


def read_dpx_fields(path: Path) -> dict[str, object]:
    """The ``SCANNER_FIELDS`` of a DPX frame, strings without their padding."""
    data = path.read_bytes()[:2048]
    order = {b"SDPX": ">", b"XPDS": "<"}[data[:4]]
    fields = {name: struct.unpack_from(order + layout, data, offset)[0]
              for name, (offset, layout) in SCANNER_FIELDS.items()}
    return {name: value.rstrip(b"\0") if isinstance(value, bytes) else value for name, value in fields.items()}


def _add_dpx_industry_headers(path: Path, rate: float | None, timecode: int | None = None) -> None:
    """FFmpeg writes the 1664 bytes of generic headers alone; scanners add the 384 of the film and television
    headers (SMPTE 268M), every field unset (all ones) but the film header's frame rate and the television header's
    timecode (SMPTE 12M BCD)."""
    data = bytearray(path.read_bytes())
    order = {b"SDPX": ">", b"XPDS": "<"}[bytes(data[:4])]
    generic, industry = 1664, 384
    assert struct.unpack_from(f"{order}I", data, 4)[0] == generic
    data[generic:generic] = b"\xff" * industry
    struct.pack_into(f"{order}I", data, 4, generic + industry)  # where the image data starts
    struct.pack_into(f"{order}I", data, 16, len(data))  # the file's size
    struct.pack_into(f"{order}I", data, 28, industry)  # the industry headers' size
    struct.pack_into(f"{order}I", data, 808, generic + industry)  # image element 1's data offset
    if rate is not None:
        struct.pack_into(f"{order}f", data, 1724, rate)  # SMPTE 268M: the film header's frame rate
    if timecode is not None:
        struct.pack_into(f"{order}I", data, 1920, timecode)  # the television header's timecode
    path.write_bytes(bytes(data))


def _default_pix_fmt(codec: str) -> str:
    formats = [f.name for f in (av.Codec(codec, "w").video_formats or ())]
    return "yuv420p" if not formats or "yuv420p" in formats else formats[0]


def _lookup(table: Mapping[str, int], name: str | None) -> int | None:
    if name is None:
        return None
    key = _ALIASES.get(name, name)
    if key not in table:
        raise ValueError(f"unknown colour tag {name!r}; known: {sorted(table)}")
    return table[key]


def has_cover(path: str | os.PathLike[str]) -> bool:
    """Whether a file carries a cover picture (an attached picture, which Matroska keeps as an attachment)."""
    with av.open(str(path)) as container:
        return any(stream.disposition & av.stream.Disposition.attached_pic for stream in container.streams)


def _filter_frame(frame: av.VideoFrame, name: str, arguments: str | None = None) -> av.VideoFrame:
    """``frame`` through one FFmpeg filter: PyAV can neither set nor read a frame's field order or pixel aspect ratio,
    FFmpeg's setfield filter sets one and its showinfo filter logs both."""
    graph = av.filter.Graph()
    source = graph.add("buffer", f"video_size={frame.width}x{frame.height}:pix_fmt={frame.format.name}:time_base=1/25")
    step, sink = graph.add(name, arguments), graph.add("buffersink")
    source.link_to(step)
    step.link_to(sink)
    graph.configure()
    graph.push(frame)
    return graph.pull()


def _video_frame(array: np.ndarray, pix_fmt: str, tags: Mapping[str, int | None]) -> av.VideoFrame:
    """An encoder-ready frame whose pixels were converted with the matrix and range its tags declare."""
    source_format = {
        (np.dtype(np.uint8), 2): "gray",
        (np.dtype(np.uint8), 3): "rgb24",
        (np.dtype(np.uint16), 2): "gray16le",
        (np.dtype(np.uint16), 3): "rgb48le",
    }.get((array.dtype, array.ndim))
    if source_format is None:
        raise ValueError(f"frames must be uint8/uint16 (H, W) or (H, W, 3), got {array.dtype} {array.shape}")
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=source_format)
    space, value_range = tags["colorspace"], tags["color_range"]
    frame = frame.reformat(
        format=pix_fmt,
        dst_colorspace=_SWS_MATRIX.get(space) if space is not None else None,
        dst_color_range=value_range or None,
    )
    for name, value in tags.items():
        if value is not None:
            setattr(frame, name, value)
    return frame


def _tone(duration: float) -> av.AudioFrame:
    """Stereo sine tone covering `duration`; PyAV re-chunks and converts it for the encoder."""
    samples = max(1, round(duration * AUDIO_RATE))
    t = np.arange(samples, dtype=np.float64) / AUDIO_RATE
    tone = np.stack([0.3 * np.sin(2 * np.pi * hz * t) for hz in TONE_HZ]).astype(np.float32)
    frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="stereo")
    frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, 0, Fraction(1, AUDIO_RATE)
    return frame


def _chapter_entries(chapters: Sequence[tuple[float, str]], duration: float) -> list[dict]:
    starts = [start for start, _ in chapters]
    if starts != sorted(starts) or starts[0] < 0 or starts[-1] >= duration:
        raise ValueError(f"chapter starts must increase within the clip (0..{duration:.3f} s): {starts}")
    ends = [*starts[1:], duration]
    return [
        {
            "id": number,
            "start": round(start * 1000),
            "end": round(end * 1000),
            "time_base": Fraction(1, 1000),
            "metadata": {"title": title},
        }
        for number, ((start, title), end) in enumerate(zip(chapters, ends, strict=True), start=1)
    ]


def _write_cues(out: av.container.OutputContainer, stream: av.stream.Stream, duration: float) -> None:
    time_base = stream.time_base or Fraction(1, 1000)  # set by the muxer once the header is written
    for order, (text, (start, end)) in enumerate(zip(SUBTITLE_TEXTS, ((0.1, 0.4), (0.5, 0.9)), strict=True)):
        start_s, end_s = start * duration, end * duration
        dialogue = f"{order},0,Default,,0,0,0,,{text}".encode()
        cue = SubtitleSet.create(dialogue, 0, round((end_s - start_s) * 1000), round(start_s * 1_000_000))
        packet = stream.codec_context.encode_subtitle(cue)
        packet.stream = stream
        packet.time_base = time_base
        packet.pts = packet.dts = round(start_s / time_base)
        packet.duration = round((end_s - start_s) / time_base)
        out.mux(packet)


def _subtitle_payloads(path: Path, index: int) -> tuple[bytes, ...]:
    with av.open(str(path)) as container:
        return tuple(bytes(p) for p in container.demux(container.streams[index]) if p.size)


# MPEG program and transport stream muxers start their clock later than the first pts they are given (a decoder's
# buffering delay), so every timestamp comes back shifted by the same amount.
_SHIFTING_CLOCK_FORMATS = ("mpeg", "mpegts")


def _check_written(
    info: ProbeInfo,
    path: Path,
    written_pts: Sequence[int],
    time_base: Fraction,
    rotation: int,
    chapters: Sequence[tuple[float, str]],
    metadata: Mapping[str, str] | None,
    audio: str | None,
    subtitles: str | None,
    timecode: str | None,
) -> None:
    """Fail loudly when the container dropped or changed something `write_clip` was asked to store."""
    problems: list[str] = []
    video = info.video
    if video is None or video.frame_count != len(written_pts):
        problems.append(f"{len(written_pts)} frames written, {video.frame_count if video else 0} decoded")
    elif video.time_base is not None:
        tolerance = max(time_base, video.time_base)
        wanted = [p * time_base for p in written_pts]
        got = [(p or 0) * video.time_base for p in video.pts]
        if info.format_name in _SHIFTING_CLOCK_FORMATS:
            wanted = [w - wanted[0] for w in wanted]
            got = [g - got[0] for g in got]
        if any(abs(w - g) > tolerance for w, g in zip(wanted, got, strict=True)):
            problems.append(f"timestamps not kept: wanted {[float(w) for w in wanted]}, got {[float(g) for g in got]}")
    if info.rotation % 360 != rotation % 360:
        problems.append(f"rotation {rotation} written, {info.rotation} read back")
    if [c.title for c in info.chapters] != [title for _, title in chapters]:
        problems.append(f"chapters {list(chapters)} written, {info.chapters} read back")
    missing = [key for key in metadata or {} if info.tag(key) is None]
    if missing:
        problems.append(f"tags {missing} dropped (mp4/mov need movflags=use_metadata_tags for custom keys)")
    if audio and not info.of_type("audio"):
        problems.append("no audio stream")
    if subtitles and not info.of_type("subtitle"):
        problems.append("no subtitle stream")
    if timecode and not any(s.metadata.get("timecode") == timecode for s in info.of_type("data")):
        problems.append("no timecode data stream")
    if problems:
        raise ValueError(f"{path.name} ({info.format_name}): " + "; ".join(problems))


# ------------------------------------------------------------------------------------------------------ bad inputs


def make_bad_inputs(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Write one small broken file per case into `folder`; returns {file name: path}.

    What PyAV 18.1 (FFmpeg 8.1) does with each, measured; this is what a pipeline turns into one-line errors.
    Exception messages are "[Errno N] <strerror>: '<file or FFmpeg call>'"; PyAV appends
    "; last error log: [component] ..." only when `av.logging.set_level(...)` enabled FFmpeg's log (it is off by
    default), so match on the exception class and errno, not on the tail. InvalidDataError has errno
    1094995529 (AVERROR_INVALIDDATA); DecoderNotFoundError has errno 1128613112.

    ======================  =======================================================================================
    zero_byte.mp4           `av.open` raises av.error.InvalidDataError "[Errno 1094995529] Invalid data found when
                            processing input: '<path>'" (log: "[mov,mp4,...] moov atom not found").
    not_a_video.mp4         plain text: same as zero_byte (the .mp4 suffix sends it to the mov demuxer).
    truncated.mp4           moov atom at the end (no faststart), file cut in half: same InvalidDataError on
                            `av.open` ("moov atom not found"); nothing is decodable.
    truncated.mkv           H.264 without B-frames, 24 frames at 24 fps, cut at 60 %: opens; `container.duration`
                            still declares the whole clip (1_000_000 us) and so does the stream tag
                            metadata["DURATION"] ("00:00:01.000000000"); `stream.duration` is None and
                            `stream.frames` is 0 (Matroska stores no count). Demux and decode just stop early,
                            WITHOUT an exception: 9 frames, pts 0..333 of 1/1000 (FFmpeg logs "File ended
                            prematurely" at info level only). Detect it by comparing the end of the last frame
                            (0.375 s) with `container.duration`.
    garbage_middle.mkv      H.264 (with B-frames), container structure intact, the payloads of the 11th-13th
                            packets (file order) overwritten with random bytes: opens and demuxes all 24 packets;
                            `container.decode(video=0)` yields 8 frames (pts 0..292) and then raises
                            InvalidDataError "...: 'avcodec_send_packet()'" on the 11th packet (pts 500; log:
                            "[h264] Invalid NAL unit size", "Error splitting the input into NAL units."). Decoding
                            packet by packet, each of the 3 bad packets raises and the other 21 frames decode.
                            (Garbage that keeps the NAL length prefixes is mostly concealed by the h264 decoder
                            and may never raise; this file is the detectable kind.)
    no_video.mka            FLAC audio only: opens; `container.streams.video` is (); `streams.video[0]` and
                            `container.decode(video=0)` raise IndexError "tuple index out of range".
    unsupported_codec.mkv   FFV1 with its Matroska CodecID patched to "V_TNCT": opens; the stream has
                            type "video" but `stream.codec_context` is None (repr "<av.VideoStream #0
                            video/<nocodec> ...>", so `codec_context.width` raises AttributeError on NoneType);
                            demux works; `packet.decode()`, `stream.decode()` and `container.decode(video=0)` raise
                            av.error.DecoderNotFoundError "[Errno 1128613112] Decoder not found".
    huge_dimensions.mkv     FFV1 gray 256x256 with PixelWidth/PixelHeight patched to 16000x16000: opens;
                            `codec_context.width/height` report 16000x16000 (pix_fmt "gray") before any decoding,
                            so a size limit can refuse it there; decoding raises InvalidDataError
                            "...: 'avcodec_send_packet()'" at once (the payload is far too small; no big allocation).
    invalid_dimensions.mkv  the same patched to 65535x65535 (beyond FFmpeg's image-size limit): opens, but
                            `codec_context.width/height` are 0 and `pix_fmt` is None (FFmpeg refused the size while
                            probing: "Picture size 65535x65535 is invalid"); decoding raises InvalidDataError
                            "...: 'avcodec_open2(\\"ffv1\\", {})'".
    broken_timestamps.mkv   intra-only FFV1, 10 frames whose pts (1/1000) are 0 42 83 83 125 42 167 208 250 292:
                            a repeat at frame 3 and a jump back at frame 5. No exception anywhere; packets come out
                            with dts == pts (Matroska stores one timestamp per block) and decoded `frame.pts` are
                            exactly that list. A pipeline must check monotonicity itself. (Missing pts cannot be
                            stored in Matroska: every block has a timestamp.)
    broken_audio.mkv        valid FFV1 video (12 frames) + FLAC stereo, 0.5 s in 6 packets, whose payloads are
                            random bytes (codec header intact): opens and demuxes; video decodes fully; each of
                            the 6 audio `packet.decode()` calls (and so `container.decode(audio=0)` at once)
                            raises InvalidDataError "...: 'avcodec_send_packet()'" (log: "[flac] invalid sync
                            code", "decode_frame() failed"). Note: garbage Opus packets decode silently to noise,
                            and garbage AAC raises with a different log line per packet.
    b_frames_in.avi         H.264 with B-frames, 24 frames in AVI, which stores decode order only: opens, demuxes
                            and decodes all 24 frames without an exception, but packets carry pts = dts + 1 in
                            decode order, so decoded frames come out in display order with pts 1 3 2 4 6 5 8 ...:
                            the frames are fine and nothing says where each belongs.
    size_change.ts          MPEG-TS of two H.264 runs joined byte by byte (as broadcast captures and concatenated
                            recordings are), 64x48 then 32x24 from frame 12, timestamps rising throughout: opens,
                            demuxes and decodes without an exception; decoded frames simply change size.
    brief_size_change.ts    the same with 32x24 for frames 14-19 of 48 alone: between the frames a probe that
                            samples 5 frames decodes, so only decoding everything finds it.
    ======================  =======================================================================================
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    makers = {
        "zero_byte.mp4": _zero_byte,
        "not_a_video.mp4": _not_a_video,
        "truncated.mp4": _truncated_mp4,
        "truncated.mkv": _truncated_mkv,
        "garbage_middle.mkv": _garbage_middle,
        "no_video.mka": _no_video,
        "unsupported_codec.mkv": _unsupported_codec,
        "huge_dimensions.mkv": lambda path: _patched_dimensions(path, 16000),
        "invalid_dimensions.mkv": lambda path: _patched_dimensions(path, 65535),
        "broken_timestamps.mkv": _broken_timestamps,
        "broken_audio.mkv": _broken_audio,
        "b_frames_in.avi": _b_frames_in_avi,
        "size_change.ts": lambda path: _size_change(path, [(12, 64), (12, 32)]),
        "brief_size_change.ts": lambda path: _size_change(path, [(14, 64), (6, 32), (28, 64)]),
    }
    paths = {}
    for name, make in makers.items():
        paths[name] = folder / name
        make(paths[name])
    return paths


BROKEN_PTS = (0, 42, 83, 83, 125, 42, 167, 208, 250, 292)  # broken_timestamps.mkv, time base 1/1000


def _size_change(path: Path, runs: Sequence[tuple[int, int]]) -> None:
    """MPEG-TS runs of (frames, width) black-and-white H.264 at 24 fps, 4:3, joined byte by byte, timestamps rising
    on from run to run."""
    data, start = b"", 0
    for part, (frames, width) in enumerate(runs):
        piece = path.with_name(f"{path.stem}.part{part}.ts")
        scene = gray_frames(moving_scene(frames, width, width * 3 // 4))
        # No B-frames: their delay would shift a run's timestamps onto the previous run's.
        write_clip(piece, scene, pts=range(start, start + frames), time_base=Fraction(1, 24), bframes=0)
        data += piece.read_bytes()
        piece.unlink()
        start += frames
    path.write_bytes(data)


def _zero_byte(path: Path) -> None:
    """An empty file: an upload that never received its bytes."""
    path.write_bytes(b"")


def _not_a_video(path: Path) -> None:
    """Text behind a video suffix: a mislabelled object in a bucket."""
    path.write_text("This is a shot list, not a film.\n" * 8)


def _truncated_mp4(path: Path) -> None:
    """An mp4 cut in half. FFmpeg writes the moov atom (the index) at the end unless asked for faststart, so the
    first half has the header and media data but no index: an interrupted upload of a typical camera file."""
    whole = path.with_name(path.stem + ".whole.mp4")
    write_clip(whole, moving_scene(24, 64, 48))
    data = whole.read_bytes()
    whole.unlink()
    if data.find(b"moov") < len(data) // 2:
        raise AssertionError("expected the moov atom in the second half")
    path.write_bytes(data[: len(data) // 2])


def _truncated_mkv(path: Path) -> None:
    """An mkv cut at 60 %: the header (with the declared duration) survives, the last clusters do not."""
    whole = path.with_name(path.stem + ".whole.mkv")
    write_clip(whole, moving_scene(24, 64, 48), bframes=0)  # no reordering: the frames that survive are a prefix
    data = whole.read_bytes()
    whole.unlink()
    path.write_bytes(data[: len(data) * 6 // 10])


def _garbage_middle(path: Path) -> None:
    """Random bytes over the payloads of three packets in the middle, block headers kept: bit rot in the media
    data of a file whose container is intact."""
    write_clip(path, moving_scene(24, 64, 48))
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(7)
    with av.open(str(path)) as container:
        packets = [(p.pos, bytes(p)) for p in container.demux(video=0) if p.size]
    for pos, payload in packets[10:13]:
        offset = data.find(payload, pos)
        if offset < 0:
            raise AssertionError(f"packet payload not found at {pos}")
        data[offset : offset + len(payload)] = rng.integers(0, 256, len(payload), dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _b_frames_in_avi(path: Path) -> None:
    """H.264 with B-frames in AVI, which has no display times: valid, but its frames cannot be put in order."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.max_b_frames = 2
        for index, array in enumerate(gray_frames(moving_scene(24, 64, 48))):
            frame = _video_frame(array, "yuv420p", {"colorspace": None, "color_range": None})
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def _no_video(path: Path) -> None:
    """Audio only: someone submitted the soundtrack instead of the film."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("flac", rate=AUDIO_RATE, layout="stereo")
        out.mux(stream.encode(_tone(0.1)))
        out.mux(stream.encode())


def _patch_once(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    if len(old) != len(new) or data.count(old) != 1:
        raise AssertionError(f"{path.name}: expected exactly one {old!r} to patch in place")
    path.write_bytes(data.replace(old, new))


def _unsupported_codec(path: Path) -> None:
    """A video stream in a codec FFmpeg cannot decode: the Matroska CodecID "V_FFV1" becomes "V_TNCT"."""
    write_clip(path, gray_frames(moving_scene(4, 64, 48)), codec="ffv1", pix_fmt="gray")
    _patch_once(path, b"\x86\x86V_FFV1", b"\x86\x86V_TNCT")  # CodecID element (0x86), 6 bytes


def _patched_dimensions(path: Path, size: int) -> None:
    """A header that declares absurd frame dimensions over a few hundred bytes of data: a decompression bomb or
    a corrupt header. Written at 256x256 so PixelWidth (0xB0) and PixelHeight (0xBA) take two bytes each, then
    patched in place to `size`."""
    write_clip(path, (np.full((256, 256), 100 + i, np.uint8) for i in range(2)), codec="ffv1", pix_fmt="gray")
    for element in (b"\xb0", b"\xba"):
        _patch_once(path, element + b"\x82\x01\x00", element + b"\x82" + size.to_bytes(2, "big"))


def _broken_timestamps(path: Path) -> None:
    """Intra-only frames muxed with `BROKEN_PTS`: a repeated and a backwards presentation timestamp, as left by
    a bad capture or a careless edit. The dts are all 0 so the muxer (which only requires dts <= pts and
    non-decreasing dts in Matroska) accepts them; Matroska keeps only the pts."""
    time_base = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "gray"
        stream.time_base = stream.codec_context.time_base = time_base
        packets = []
        for index, array in enumerate(gray_frames(moving_scene(len(BROKEN_PTS), 64, 48))):
            frame = av.VideoFrame.from_ndarray(array, format="gray")
            frame.pts, frame.time_base = round(index * 1000 / 24), time_base
            packets += stream.encode(frame)
        packets += stream.encode()
        for packet, pts in zip(packets, BROKEN_PTS, strict=True):
            packet.time_base, packet.pts, packet.dts = time_base, pts, 0
            out.mux(packet)


def _broken_audio(path: Path) -> None:
    """Valid video, but every FLAC audio packet replaced by random bytes of the same length (the codec header
    stays valid): a damaged soundtrack on an otherwise good film."""
    source = path.with_name(path.stem + ".source.mkv")
    write_clip(source, moving_scene(12, 64, 48), codec="ffv1", audio="flac")
    rng = np.random.default_rng(11)
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is None:
                continue  # the empty end-of-stream packets
            target = streams[packet.stream.index]
            if packet.stream.type == "audio":
                garbage = av.Packet(rng.integers(0, 256, packet.size, dtype=np.uint8).tobytes())
                garbage.pts, garbage.dts, garbage.duration = packet.pts, packet.dts, packet.duration
                garbage.time_base = packet.time_base
                packet = garbage
            packet.stream = target
            out.mux(packet)
    source.unlink()
