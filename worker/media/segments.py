"""Films in independent segments: plan them at keyframes, and join encoded segments into the output.

    segments = plan_segments(film, segment_frames=1440, warmup=12)
    ...each segment colorized on its own (another thread, process or machine) into a video-only file...
    join_segments(film, [paths...], "film-colour.mkv", provenance={...})

A segment is a range of frames ``[start, stop)`` that begins at a keyframe of the source (so decoding it
wastes nothing), plus ``warmup`` frames before ``start`` that are decoded, colorized and smoothed but not
encoded: they bring the temporal smoother's state at ``start`` to (within ``strength ** warmup``) what a
whole-film pass would have had there, so segment boundaries leave no visible seam in the colour. Encoders
place keyframes at scene cuts, where the smoother resets anyway.

The join remuxes the segments' packets in order, without re-encoding: each segment is a closed group of
pictures starting with a keyframe, encoded with identical settings, in the source's time base. The
source's audio, subtitle and data streams, its chapters and its container metadata are copied from the
source once, packet for packet, interleaved by time with the video, so memory stays flat. The join is the
only step that writes the final file, atomically.
"""

from __future__ import annotations

import heapq
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from models.files import atomic_path
from worker.errors import BadInputError
from worker.media.captions import CAPTION_CODECS, CEA608_CODEC
from worker.media.video_sink import (
    KEEP_TIMESTAMPS,
    PRORES_TAGS,
    EncodeOptions,
    aspect_loss,
    canonical_codec,
    container_for,
    plan_output,
    prores_profile,
    tag_colour,
)
from worker.media.video_source import INTERLACED_FIELDS, FilmInfo, stream_by_index

logger = logging.getLogger(__name__)

# Container options for the final file: MP4/MOV keep arbitrary metadata keys (our provenance tag) only with
# use_metadata_tags, and faststart moves the index to the front so players can start before the end arrives.
MUXER_OPTIONS = {"mp4": {"movflags": "+use_metadata_tags+faststart", **KEEP_TIMESTAMPS},
                 "mov": {"movflags": "+use_metadata_tags+faststart", **KEEP_TIMESTAMPS}, "matroska": KEEP_TIMESTAMPS}
PROVENANCE_KEY = "tinct"
# MPEG program and transport streams (DVDs, broadcast and tape captures) stamp packets with a running clock
# that starts wherever the recorder's was, often hours in. Their colour copy starts at zero, every stream
# shifted alike, as FFmpeg's own remuxing does: kept as they were, a two-minute capture would read as a film
# ten hours long whose picture starts at the end. Every other container's timestamps are kept exactly.
CLOCK_CONTAINERS = ("mpeg", "mpegts")
# Cover pictures a Matroska copy keeps as an attachment, by codec: (MIME type, file extension).
_COVER_TYPES = {"mjpeg": ("image/jpeg", ".jpg"), "png": ("image/png", ".png"), "bmp": ("image/bmp", ".bmp"),
                "webp": ("image/webp", ".webp")}
# Stream metadata the muxer writes itself (and that would be stale if copied).
_STALE_STREAM_TAGS = {"duration", "encoder", "number_of_frames", "number_of_bytes", "bps", "_statistics_tags",
                      "_statistics_writing_app", "_statistics_writing_date_utc"}


@dataclass(frozen=True)
class Segment:
    """Frames ``start .. stop - 1`` of a film (display order), preceded by ``warmup`` frames of context."""

    index: int
    start: int
    stop: int
    warmup: int

    @property
    def frames(self) -> int:
        return self.stop - self.start

    def as_dict(self) -> dict:
        return {"index": self.index, "start": self.start, "stop": self.stop, "warmup": self.warmup}


def plan_segments(film: FilmInfo, segment_frames: int, warmup: int = 0) -> list[Segment]:
    """Cut ``film`` into segments of about ``segment_frames`` frames, each starting at a keyframe.

    A boundary goes at the first keyframe at least ``segment_frames`` after the previous one; where keyframes
    are sparser than twice that (one long GOP), a boundary goes anywhere: decoding then starts at the
    keyframe before it, which costs time but stays exact. ``warmup`` is capped at the frames available.
    """
    if segment_frames < 1:
        raise ValueError(f"segment_frames must be at least 1, got {segment_frames}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    keyframe_indices = np.searchsorted(film.frame_pts, film.keyframe_pts)
    keyframe_indices = keyframe_indices[(keyframe_indices > 0) & (keyframe_indices < film.frames)]
    bounds = [0]
    while film.frames - bounds[-1] > segment_frames:
        wanted = bounds[-1] + segment_frames
        position = np.searchsorted(keyframe_indices, wanted)
        if position < keyframe_indices.size and keyframe_indices[position] < bounds[-1] + 2 * segment_frames:
            bound = int(keyframe_indices[position])
        else:
            bound = wanted
        if film.frames - bound < max(1, segment_frames // 4):  # never leave a sliver at the end
            break
        bounds.append(bound)
    bounds.append(film.frames)
    ranges = zip(bounds[:-1], bounds[1:], strict=True)
    return [Segment(i, start, stop, min(warmup, start)) for i, (start, stop) in enumerate(ranges)]


def join_segments(
    film: FilmInfo,
    segment_paths: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    provenance: dict | None = None,
) -> None:
    """Remux ``segment_paths`` (in order) with the source's other streams, chapters and metadata into
    ``output``, atomically. Raises BadInputError if a source stream cannot be copied into the output, or FFmpeg
    refuses to write the result (named by the film and the output, with FFmpeg's reason)."""
    container_name = container_for(output)
    with atomic_path(output) as tmp, film.open_streams() as source:
        segments = [av.open(os.fspath(p)) for p in segment_paths]
        try:
            with av.open(os.fspath(tmp), "w", format=container_name,
                         options=dict(MUXER_OPTIONS[container_name])) as out:
                video_out = _add_video(out, film, source, segments[0].streams.video[0])
                captions_out = _add_captions(out, segments[0], container_name)
                _report_alpha(film)
                codec = canonical_codec(segments[0].streams.video[0].codec_context.name)
                copies = _add_copies(out, film, source, output, codec, own_caption_track=captions_out is not None)
                _copy_metadata(out, source, provenance)
                _drop_untimable_timecode(out, video_out, film)
                packets = heapq.merge(_segment_packets(segments, video_out), _source_packets(source, copies),
                                      _caption_packets(segments, captions_out), key=lambda item: item[0])
                _mux_all(out, packets, film, _clock_start(film, source), video_out)
        except av.FFmpegError as exc:
            if exc.filename != os.fspath(tmp):
                raise  # reading the source or a segment failed: not a matter of the output
            advice = "" if container_name == "matroska" else "; try .mkv"
            raise BadInputError(film.path, f"its colour copy cannot be written as {Path(output).suffix} "
                                           f"({_ffmpeg_reason(exc)}){advice}") from exc
        finally:
            for segment in segments:
                segment.close()


#: MP4 and MOV count a timecode's frames in one byte.
MAX_TIMECODE_FPS = 255


def _drop_untimable_timecode(out, video_out, film: FilmInfo) -> None:
    """MP4 and MOV keep a timecode as a track that counts frames in one byte: for a film faster than 255 frames a
    second (a high-speed scan) FFmpeg fails the whole file at its end. Its timecode is left out, and said so."""
    rate = film.video.average_rate
    if out.format.name not in ("mp4", "mov") or not rate or rate <= MAX_TIMECODE_FPS:
        return
    for metadata in (out.metadata, video_out.metadata):
        for key in [k for k in metadata if k.lower() == "timecode"]:
            logger.warning("%s: its timecode %s is left out: %s timecode tracks count at most %d frames a second, "
                           "and it runs at %.0f; a .mkv copy keeps it", film.path, metadata.pop(key),
                           out.format.name.upper(), MAX_TIMECODE_FPS, float(rate))


def _ffmpeg_reason(exc: av.FFmpegError) -> str:
    """FFmpeg's words for a failure: its error and its last log line, without the scratch file's name."""
    detail = exc.log[2].strip() if exc.log else ""
    return f"{exc.strerror}: {detail}" if detail else str(exc.strerror)


def check_output(film: FilmInfo, output: str | os.PathLike, codec: str) -> None:
    """Fail before any colorizing if ``output``, written with ``codec``, cannot hold a stream of the source or the
    shape of its pixels: hours of work must not end at the join. Writes a header to memory only."""
    _check_output_streams(film, output, codec)
    aspect_lost = aspect_loss(film.video, codec, output)
    if aspect_lost:
        raise BadInputError(film.path, aspect_lost)


def _check_output_streams(film: FilmInfo, output: str | os.PathLike, codec: str) -> None:
    container_name = container_for(output)
    with film.open_streams() as source, av.open(io.BytesIO(), "w", format=container_name) as out:
        stream = out.add_stream("libx264", rate=24)  # a stand-in: every container Tinct writes takes H.264
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        _add_copies(out, film, source, output, codec, report=False)  # the join reports what it leaves out
        try:
            out.start_encoding()
        except av.FFmpegError as exc:
            raise BadInputError(film.path, f"its {describe_other_streams(film)} cannot be stored in "
                                f"{Path(output).suffix} ({exc.strerror or exc}); try .mkv or .mov") from exc


def describe_other_streams(film: FilmInfo) -> str:
    """The film's streams besides its video, as messages name them ("audio stream #1 (flac)")."""
    return ", ".join(f"{s.type} stream #{s.index} ({s.codec})" for s in film.other_streams) or "streams"


def _add_video(out, film: FilmInfo, source, template):
    stream = out.add_stream_from_template(template)
    stream.time_base = film.video.time_base
    if film.video.average_rate:
        # The container's frame rate (MP4/MOV write a timecode track by it) is the source's: a segment file knows
        # only its time base, which for raw DV is 1/60000, and MP4 refuses a 60000 fps timecode.
        stream.codec_context.framerate = film.video.average_rate
    # How its codes are read, again: NUT segments keep no colour tags, and FFV1 carries none itself.
    layout = plan_output(film.video, EncodeOptions(template.codec_context.name))
    tag_colour(stream.codec_context, film.video, layout)
    if layout.codec == "prores":  # its profile's code, which the segments do not keep
        stream.codec_context.codec_tag = PRORES_TAGS[prores_profile(film.video, layout.frame.chroma_shift)]
    source_stream = stream_by_index(source, film.video_index)
    _copy_stream_tags(source_stream, stream)
    if film.sequence is not None and film.sequence.timecode:
        stream.metadata["timecode"] = film.sequence.timecode  # a scan's reel timecode, for conforming
    if film.video.rotation:
        stream.set_display_rotation(film.video.rotation)
    if film.video.sample_aspect_ratio:
        stream.codec_context.sample_aspect_ratio = film.video.sample_aspect_ratio  # MP4/MOV store it in the container
    if film.video.field_order in INTERLACED_FIELDS:
        stream.codec_context.field_order = film.video.field_order  # Matroska's FieldOrder, QuickTime's fiel
    return stream


def _report_alpha(film: FilmInfo) -> None:
    """Film outputs are opaque (the colorizer works on lightness, and H.264, H.265 and FFV1 as Tinct writes them
    have no alpha plane): a source with one, such as ProRes 4444 with a matte, loses it, and is told so."""
    if any(component.is_alpha for component in av.VideoFormat(film.video.pix_fmt, 16, 16).components):
        logger.warning("%s: its alpha channel (%s) is left out: film outputs are opaque", film.path,
                       film.video.pix_fmt)


def _add_copies(out, film: FilmInfo, source, output, codec: str, report: bool = True,
                own_caption_track: bool = False) -> dict[int, object]:
    """Output streams for every non-video source stream (and further video streams), by source index, for a copy
    coded in ``codec``; ``report`` logs each stream left out. ``own_caption_track``: the copy has a caption track of
    its own, made from its frames' captions (``_add_captions``), which takes the source's track's place."""
    copies = {}
    for info in film.other_streams:
        src = stream_by_index(source, info.index)
        if info.index == film.caption_track and not _keeps_caption_track(out, film, output, codec, own_caption_track,
                                                                         report):
            continue
        if src.type == "attachment":
            _carry_attachment(out, film, src, report)
            continue
        if src.disposition & av.stream.Disposition.attached_pic:
            _carry_cover(out, film, src, info.codec, report)
            continue
        if src.type == "data" and src.codec_context is None:
            # QuickTime chapter and timecode tracks read back as codec-less data, which no muxer can take;
            # their content travels anyway: chapters through set_chapters, timecode as the video's tag.
            carried = src.metadata.get("timecode") or source.chapters()
            if report:
                log = logger.info if carried else logger.warning
                log("%s: data stream #%d has no codec FFmpeg can copy; %s", film.path, info.index,
                    "its chapters/timecode are carried over" if carried else "it is left out")
            continue
        try:
            dst = out.add_stream_from_template(src)
        except (ValueError, av.FFmpegError) as exc:
            holders = _containers_holding(src)
            advice = f"try {' or '.join(holders)}" if holders else "no container Tinct writes can hold it"
            raise BadInputError(film.path, f"{info.type} stream #{info.index} ({info.codec}) cannot be copied "
                                f"into {Path(output).suffix}: {exc}; {advice}") from exc
        dst.time_base = src.time_base
        _copy_stream_tags(src, dst)
        copies[info.index] = dst
    return copies


def _keeps_caption_track(out, film: FilmInfo, output, codec: str, own_caption_track: bool, report: bool) -> bool:
    """Whether the source's CEA-608 caption track (c608) is copied as it is: into a QuickTime file, which holds it,
    unless the copy has its own. MP4 and Matroska have no such track: an H.264 or H.265 copy carries its captions in
    its frames instead (``worker.media.video_source.caption_track_samples``), and any other copy is refused there,
    before any work, rather than lose them."""
    index = film.caption_track
    if out.format.name == "mov":
        if own_caption_track and report:
            logger.info("%s: its caption track (stream #%d) gives way to its copy's, made from the captions in its "
                        "frames", film.path, index)
        return not own_caption_track
    if codec in CAPTION_CODECS:
        if report:
            logger.info("%s: its CEA-608 caption track (stream #%d) is carried in its %s copy's frames (%s has no "
                        "caption track)", film.path, index, codec, Path(output).suffix)
        return False
    raise BadInputError(film.path, f"its CEA-608 caption track (stream #{index}, c608) has no place in a "
                        f"{Path(output).suffix} of {codec}: a .mov keeps the track, and H.264 and H.265 copies carry "
                        "its captions in their frames (--codec h264 or h265)")


def _carry_attachment(out, film: FilmInfo, src, report: bool) -> None:
    """A file attached to a Matroska film (the fonts its ASS subtitles are drawn in, notes, a checksum list) is
    attached to its .mkv copy, as it was. MP4 and MOV have no place for one: there it is left out, and said so."""
    name = src.name or f"attachment-{src.index}"
    if out.format.name != "matroska":
        if report:
            logger.warning("%s: its attached file %s (stream #%d) is left out: only a .mkv copy can keep it",
                           film.path, name, src.index)
        return
    out.add_attachment(name, src.mimetype or "application/octet-stream", bytes(src.data or b""))


def _carry_cover(out, film: FilmInfo, src, codec: str, report: bool) -> None:
    """A cover picture (a still flagged as an attached picture, as in many MP4s) goes where Matroska keeps cover art,
    an attachment, which players show as one. MP4/MOV copies cannot keep it: the muxer's metadata mode that keeps
    Tinct's provenance tag writes no cover, so it is left out, and said so."""
    mimetype, extension = _COVER_TYPES.get(codec, (None, None))
    if out.format.name != "matroska" or mimetype is None:
        if report:
            logger.warning("%s: its cover picture (stream #%d, %s) is left out: only a .mkv copy can keep it",
                           film.path, src.index, codec)
        return
    with film.open_streams() as again:  # the join's own reading of the source must not move
        picture = next(bytes(p) for p in again.demux(stream_by_index(again, src.index)) if p.size)
    out.add_attachment(src.metadata.get("filename") or f"cover{extension}", mimetype, picture)


def _containers_holding(src) -> list[str]:
    """The output suffixes whose containers take a copy of the source stream ``src`` (tried on empty files)."""
    holders = []
    for suffix, name in ((".mkv", "matroska"), (".mov", "mov"), (".mp4", "mp4")):
        with av.open(io.BytesIO(), "w", format=name) as trial:
            try:
                trial.add_stream_from_template(src)
            except (ValueError, av.FFmpegError):
                continue
        holders.append(suffix)
    return holders


def _copy_stream_tags(src, dst) -> None:
    for key, value in src.metadata.items():
        if key.lower() not in _STALE_STREAM_TAGS and not key.upper().startswith("DURATION"):
            dst.metadata[key] = value
    dst.disposition = src.disposition


def _copy_metadata(out, source, provenance: dict | None) -> None:
    for key, value in source.metadata.items():
        if key.lower() not in ("encoder", "major_brand", "minor_version", "compatible_brands", "duration"):
            out.metadata[key] = value
    if provenance is not None:
        out.metadata[PROVENANCE_KEY] = json.dumps(provenance, sort_keys=True, separators=(",", ":"))
    chapters = source.chapters()
    if chapters:
        out.set_chapters(chapters)


def _time(packet, time_base: Fraction) -> Fraction:
    stamp = packet.dts if packet.dts is not None else packet.pts
    return Fraction(stamp if stamp is not None else 0) * time_base


def _add_captions(out, segment, container_name: str):
    """The output's caption track, where the segments have one (a ProRes copy's CEA-608 captions, which its frames
    cannot hold: ``worker.media.captions``) and the output is a QuickTime file, which keeps it; else None."""
    if container_name != "mov" or not _caption_tracks(segment):
        return None
    stream = out.add_mux_stream(CEA608_CODEC)
    stream.time_base = _caption_tracks(segment)[0].time_base
    return stream


def _caption_tracks(segment) -> list:
    return [stream for stream in segment.streams
            if stream.type == "subtitle" and stream.codec.canonical_name == CEA608_CODEC]


def _caption_packets(segments: list, stream) -> Iterator[tuple[Fraction, object, object]]:
    if stream is None:
        return
    for segment in segments:
        for track in _caption_tracks(segment):
            for packet in segment.demux(track):
                if packet.size:
                    yield _time(packet, track.time_base), packet, stream


def _segment_packets(segments: list, stream) -> Iterator[tuple[Fraction, object, object]]:
    for segment in segments:
        video = segment.streams.video[0]
        packets = (packet for packet in segment.demux(video) if packet.size)
        for packet in _with_decode_timestamps(packets):
            yield _time(packet, video.time_base), packet, stream


def _with_decode_timestamps(packets: Iterator) -> Iterator:
    """NUT stores no decode timestamps: its demuxer derives them, except for the first few packets of a
    stream with B-frames (the reorder delay), which come back without one. Those get decode timestamps one
    frame step apart, ending a step before the first known one, as the encoder had them; a muxer needs them to
    order the stream, and the join to check that segments follow one another."""
    waiting = []
    for packet in packets:
        if packet.dts is None and packet.pts is not None:
            waiting.append(packet)
            continue
        if waiting:
            known = packet.dts if packet.dts is not None else packet.pts
            pts = sorted(p.pts for p in waiting + [packet] if p.pts is not None)
            steps = [b - a for a, b in zip(pts[:-1], pts[1:], strict=True) if b > a]
            step = min(steps) if steps else 1
            for back, early in enumerate(reversed(waiting), start=1):
                early.dts = min(early.pts, known - back * step)
            yield from waiting
            waiting = []
        yield packet
    yield from waiting


def _source_packets(source, copies: dict[int, object]) -> Iterator[tuple[Fraction, object, object]]:
    if not copies:
        return
    for packet in source.demux(*(stream_by_index(source, i) for i in copies)):
        if packet.size == 0:
            continue
        yield _time(packet, packet.stream.time_base), packet, copies[packet.stream.index]


def _rebase(packet, time_base: Fraction) -> None:
    """Express a packet's timestamps in ``time_base`` (what the muxer would do, done first so that the join's
    ordering checks see the numbers that are written)."""
    scale = Fraction(packet.time_base) / Fraction(time_base)
    for name in ("pts", "dts", "duration"):
        value = getattr(packet, name)
        if value is not None:
            setattr(packet, name, round(value * scale))
    packet.time_base = time_base


def _clock_start(film: FilmInfo, source) -> Fraction:
    """Seconds to take off every timestamp of the output: the source's start, for a clock-stamped container."""
    if film.container not in CLOCK_CONTAINERS or not source.start_time:
        return Fraction(0)
    return Fraction(source.start_time, av.time_base)


def _mux_all(out, packets: Iterator[tuple[Fraction, object, object]], film: FilmInfo, start: Fraction,
             colour) -> None:
    """Mux ``packets`` into ``out``, each shifted back by ``start``; the decode timestamps of ``colour``, the stream
    the segments were joined into, kept rising across their boundaries. A further video stream of the source
    (another angle, a preview) is a copy whose timestamps are its own."""
    out.start_encoding()  # the muxer fixes each stream's time base when it writes the header
    last_video_dts = None
    shifts = {stream: round(start / stream.time_base) for stream in out.streams}  # in each stream's time base
    for _, packet, stream in packets:
        _rebase(packet, stream.time_base)
        if shifts[stream]:
            packet.pts = None if packet.pts is None else packet.pts - shifts[stream]
            packet.dts = None if packet.dts is None else packet.dts - shifts[stream]
        if stream is colour and packet.dts is not None:
            # Each segment's encoder starts its decode timestamps a few frames early (the B-frame delay); at a
            # boundary that can fall at or before the previous segment's last one, in the output's time base.
            # Nudged forward a tick at a time, they stay at or before their frame's pts, which is what matters.
            if last_video_dts is not None and packet.dts <= last_video_dts:
                packet.dts = last_video_dts + 1
                if packet.pts is not None and packet.dts > packet.pts:
                    raise BadInputError(film.path, f"segments cannot be joined: decode timestamps overlap at "
                                        f"{float(packet.pts * stream.time_base):.3f} s")
            last_video_dts = packet.dts
        packet.stream = stream
        out.mux(packet)
