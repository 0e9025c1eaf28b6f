"""The film path end to end on generated clips: real PyAV encode/decode, a tiny real model, the real CLI."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from models.color import (
    BT2020_CHROMATICITIES,
    bt709_from_primaries,
    hdr_luma_to_l_table,
    linear_to_pq,
    linear_to_srgb,
    luma_to_l_table,
    rgb_to_lab,
    video_rgb_to_linear,
    ycbcr_to_rgb_np,
)
from models.colorizer import Colorizer
from tests.media import (
    COVER_RGB,
    clip_captions,
    decode_native,
    decode_rgb,
    first_frame_info,
    gray_frames,
    has_cover,
    lumas,
    make_bad_inputs,
    moving_scene,
    probe,
    write_clip,
)
from worker.cli import main
from worker.errors import BadInputError
from worker.films import FilmOptions, colorize_film, parts_folder
from worker.media.captions import frame_captions
from worker.media.segments import plan_segments
from worker.media.video_sink import EncodeOptions, plan_output
from worker.media.video_source import FIELD_BB, FIELD_TT, decode_frames, probe_film, shown_video
from worker.photos import open_colorizer
from worker.pipeline import _colour, _colour_on_device, _Stages, colorize_frames
from worker.smoothing import SmoothingOptions

SIZE = (96, 64)
FIELD_ORDERS = {"top first": FIELD_TT, "bottom first": FIELD_BB}  # FFmpeg's, for fields shown first


def bw_clip(path: Path, frames: int = 24, size: tuple[int, int] = SIZE, cuts_at=(), **options):
    return write_clip(path, gray_frames(moving_scene(frames, *size, cuts_at=cuts_at)), **options)


def run_cli(tiny_checkpoint, *args: str) -> int:
    return main(["colorize", *args, "--model", str(tiny_checkpoint), "--engine", "torch", "--render-size", "64",
                 "-q"])


def grays(path: Path) -> list[np.ndarray]:
    """Every frame's gray values as stored: the Y or gray plane, or green of R = G = B (in the machine's order)."""
    with av.open(str(path)) as container:
        if not container.streams.video[0].codec_context.format.is_rgb:
            return lumas(path)
        return [frame.to_ndarray()[..., 1] for frame in container.decode(video=0)]


def is_coloured(path: Path) -> bool:
    frames = decode_rgb(path)
    rgb = frames[len(frames) // 2].astype(np.int32)
    return float(np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).mean()) > 1.0


# --- faithful output -------------------------------------------------------------------------------------


def test_mp4_film_keeps_frames_vfr_timing_audio_subtitles_chapters_and_rotation(tmp_path, tiny_checkpoint):
    # Variable frame rate: gaps of 1, 2 and 3 ticks of 1/24 s.
    pts = np.cumsum([0] + [1, 2, 3] * 7)[:20].tolist()
    source = bw_clip(tmp_path / "reel.mp4", frames=20, pts=pts, time_base=Fraction(1, 24), audio="aac",
                     subtitles="mov_text", chapters=[(0.0, "Opening"), (1.0, "Chase")], rotation=90,
                     metadata={"title": "Reel one"}, colorspace="bt709", color_range="tv",
                     color_primaries="bt709", color_trc="bt709")
    output = tmp_path / "reel-colour.mp4"
    assert run_cli(tiny_checkpoint, str(source.path), "-o", str(output), "--smoothing", "0.5") == 0
    out = probe(output)
    src = source.probe
    assert out.video.frame_count == source.frame_count == 20
    np.testing.assert_allclose([float(p * out.video.time_base) for p in out.video.pts], source.times, atol=1e-6)
    assert (out.width, out.height) == (source.width, source.height)
    assert out.rotation % 360 == src.rotation % 360 == 90
    assert (out.color_range, out.colorspace, out.color_primaries, out.color_trc) == (
        src.color_range, src.colorspace, src.color_primaries, src.color_trc)
    assert [s.payload_sha256 for s in out.of_type("audio")] == [s.payload_sha256 for s in src.of_type("audio")]
    assert [s.payload_sha256 for s in out.of_type("subtitle")] == [s.payload_sha256 for s in src.of_type("subtitle")]
    assert [(c.start, c.title) for c in out.chapters] == [(c.start, c.title) for c in src.chapters]
    assert out.tag("title") == "Reel one"
    provenance = json.loads(out.tag("tinct"))
    assert provenance["model"].startswith("effnet_unet@") and provenance["smoothing"] == 0.5
    assert is_coloured(output)
    assert not parts_folder(output).exists()


def test_mkv_film_luma_is_bit_exact_and_audio_subtitles_copied(tmp_path, tiny_checkpoint):
    source = bw_clip(tmp_path / "reel.mkv", frames=16, codec="ffv1", audio="flac", subtitles="srt",
                     metadata={"title": "Reel two"})
    output = tmp_path / "out" / "reel.mkv"
    assert run_cli(tiny_checkpoint, str(source.path), "-o", str(output), "--codec", "ffv1") == 0
    out = probe(output)
    assert out.video.codec == "ffv1" and out.video.frame_count == 16
    assert out.video.pts == source.probe.video.pts
    for before, after in zip(lumas(source.path), lumas(output), strict=True):
        np.testing.assert_array_equal(after, before)  # the Y plane, untouched
    assert [s.payload_sha256 for s in out.of_type("audio")] == [s.payload_sha256 for s in source.probe.of_type("audio")]
    assert [s.payload_sha256 for s in out.of_type("subtitle")] == [
        s.payload_sha256 for s in source.probe.of_type("subtitle")]
    assert out.tag("title") == "Reel two"


def muxed(path: Path, *clips: Path) -> Path:
    """Every stream of ``clips`` in one file at ``path``, in their order, packets interleaved by time."""
    with contextlib.ExitStack() as sources, av.open(str(path), "w") as out:
        packets = []
        for clip in clips:
            source = sources.enter_context(av.open(str(clip)))
            for stream in source.streams:
                copy = out.add_stream_from_template(stream)
                packets += [(packet, copy) for packet in source.demux(stream) if packet.size]

        def when(item) -> float:
            packet = item[0]
            return float((packet.dts if packet.dts is not None else packet.pts) * packet.time_base)

        for packet, copy in sorted(packets, key=when):
            packet.stream = copy
            out.mux(packet)
    return path


def test_a_further_video_stream_is_copied_as_it_is_beside_the_coloured_one(tmp_path, tiny_checkpoint):
    """A film with a second video stream (another angle, a preview) is coloured in its film (here its first, the
    larger) and keeps the second packet for packet. The join had taken the copy's timestamps for the coloured
    stream's, and failed the film as "segments cannot be joined"."""
    reel = bw_clip(tmp_path / "reel.mkv", frames=16, audio="flac")  # H.264 with B-frames
    angle = bw_clip(tmp_path / "angle.mkv", frames=16, size=(48, 32))
    source = muxed(tmp_path / "two-angles.mkv", reel.path, angle.path)
    before = probe(source)
    assert [s.type for s in before.streams] == ["video", "audio", "video"]
    output = tmp_path / "out.mkv"
    assert run_cli(tiny_checkpoint, str(source), "-o", str(output), "--segment-seconds", "0.25") == 0
    after = probe(output)
    assert after.video.frame_count == 16 and after.video.pts == before.video.pts and is_coloured(output)
    assert [(s.type, s.payload_sha256) for s in after.streams[1:]] == [
        (s.type, s.payload_sha256) for s in before.streams[1:]]


def test_a_still_picture_before_the_film_is_copied_and_the_film_coloured(tmp_path, tiny_checkpoint):
    """A Matroska film whose first video track is a still (a poster, a title card put in as a track of one frame)
    was taken for the film: refused as "truncated", or, where the file's durations allowed, coloured as a film of
    one frame beside its film copied uncoloured, without a word. The film is the stream FFmpeg's players pick,
    which holds more than one frame; the still goes with it packet for packet."""
    still = write_clip(tmp_path / "still.mkv", gray_frames(moving_scene(1, 48, 32)), codec="mjpeg",
                       pix_fmt="yuvj420p")
    reel = bw_clip(tmp_path / "reel.mkv", frames=16, audio="flac")
    source = muxed(tmp_path / "poster-first.mkv", still.path, reel.path)
    before = probe(source)
    assert [(s.type, s.codec) for s in before.streams] == [("video", "mjpeg"), ("video", "h264"), ("audio", "flac")]
    output = tmp_path / "out.mkv"
    assert run_cli(tiny_checkpoint, str(source), "-o", str(output), "--segment-seconds", "0.25") == 0
    after = probe(output)
    assert after.video.frame_count == 16 and after.video.pts == before.streams[1].pts and is_coloured(output)
    assert [(s.type, s.payload_sha256) for s in after.streams[1:]] == [
        (s.type, s.payload_sha256) for s in (before.streams[0], before.streams[2])]


def test_a_file_whose_only_picture_is_its_cover_is_refused_by_name(tmp_path, tiny_checkpoint, capsys):
    """Sound with a cover picture has no film to colour: it is refused as such. The cover had been taken for the
    film, and failed it as "broken timestamps"."""
    with_cover = bw_clip(tmp_path / "with-cover.mp4", frames=8, audio="aac", cover=True)
    song = tmp_path / "song.mp4"
    with av.open(str(with_cover.path)) as source, av.open(str(song), "w") as out:
        kept = [stream for stream in source.streams if stream.type == "audio"
                or stream.disposition & av.stream.Disposition.attached_pic]
        copies = {stream.index: out.add_stream_from_template(stream) for stream in kept}
        for stream in kept:
            copies[stream.index].disposition = stream.disposition
        for packet in source.demux(*kept):
            if packet.size:
                packet.stream = copies[packet.stream.index]
                out.mux(packet)
    assert has_cover(song)
    assert run_cli(tiny_checkpoint, str(song), "-o", str(tmp_path / "out.mp4")) != 0
    assert f"{song}: no video stream, only a cover picture (stream #" in capsys.readouterr().err
    assert not (tmp_path / "out.mp4").exists()


def with_attachment(clip: Path, path: Path, name: str, mimetype: str, data: bytes) -> Path:
    """``clip`` remuxed into the Matroska file ``path`` with a file attached, as a font or a note is attached."""
    with av.open(str(clip)) as source, av.open(str(path), "w") as out:
        copies = {stream.index: out.add_stream_from_template(stream) for stream in source.streams}
        out.add_attachment(name, mimetype, data)
        for packet in source.demux():
            if packet.size:
                packet.stream = copies[packet.stream.index]
                out.mux(packet)
    return path


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_files_attached_to_a_film_go_with_its_matroska_copy_and_are_said_left_out_elsewhere(tmp_path,
                                                                                              tiny_checkpoint,
                                                                                              caplog, suffix):
    """Matroska films carry attached files: the fonts their ASS subtitles are drawn in, notes. They were dropped
    without a word."""
    font = b"\x00\x01\x00\x00 a font's bytes"
    source = with_attachment(bw_clip(tmp_path / "reel.mkv", frames=8).path, tmp_path / "attached.mkv",
                             "Archive Serif.ttf", "application/x-truetype-font", font)
    output = tmp_path / f"out{suffix}"
    assert run_cli(tiny_checkpoint, str(source), "-o", str(output)) == 0
    with av.open(str(output)) as copy:
        attached = [(s.name, s.mimetype, bytes(s.data)) for s in copy.streams if s.type == "attachment"]
    if suffix == ".mkv":
        assert attached == [("Archive Serif.ttf", "application/x-truetype-font", font)]
    else:
        assert attached == []
        said = "its attached file Archive Serif.ttf (stream #1) is left out: only a .mkv copy can keep it"
        assert said in caplog.text


@pytest.mark.parametrize("pix_fmt, out_depth, codec", [
    ("yuv420p10le", 10, "ffv1"), ("gray", 8, "ffv1"), ("gray10le", 10, "ffv1"), ("gray12le", 12, "ffv1"),
    ("gray16le", 16, "ffv1"),
    # Black-and-white scans stored as RGB (R = G = B), as DPX scans are; PNG in QuickTime stores big-endian samples.
    ("gbrp10le", 10, "ffv1"), ("gbrp16le", 16, "ffv1"), ("rgb48be", 16, "png"),
])
def test_deep_gray_and_rgb_sources_decode_and_keep_their_luma(tmp_path, colorizer, pix_fmt, out_depth, codec):
    # 12 and 16-bit gray FFV1 masters came out nearly black (their luma was read as 10-bit codes), and RGB sources
    # at 8 bits, moved by up to 3 codes; the luma plane of a gray or R = G = B source is its values, bit for bit.
    rng = np.random.default_rng(0)
    frames = list(gray_frames(moving_scene(8, *SIZE)))
    if pix_fmt != "gray":
        # Full 16-bit scale, as write_clip takes it, with low bits that a depth cut would lose.
        frames = [(f.astype(np.uint16) << 8) | rng.integers(0, 256, f.shape, dtype=np.uint16) for f in frames]
    source = write_clip(tmp_path / f"src{'.mov' if codec == 'png' else '.mkv'}", frames, codec=codec, pix_fmt=pix_fmt)
    output = tmp_path / "out.mkv"
    outcome = film_job(colorizer, source.path, output, FilmOptions(encode=EncodeOptions("ffv1")))
    assert outcome.status == "done"
    out = probe(output)
    assert out.pix_fmt.startswith("yuv") and out.pix_fmt.endswith(f"p{out_depth}le" if out_depth > 8 else "p")
    for before, after in zip(grays(source.path), lumas(output), strict=True):
        np.testing.assert_array_equal(after, before)
    assert is_coloured(output)


@pytest.mark.parametrize("suffix, codec", [
    (".mkv", "ffv1"), (".mov", "prores"), (".mkv", "prores"), (".mp4", "h264"), (".mkv", "h265"),
])
def test_a_full_range_source_is_as_light_in_every_copy_as_players_read_it(tmp_path, colorizer, suffix, codec):
    # Gray FFV1 masters and scans are full range. FFV1 copies did not say so (their NUT segments keep no tags, and
    # FFV1 has no place for them), and ProRes is read as video range whatever it holds: players showed both darker
    # and harsher, by 8 codes on average here. ProRes copies are now recoded to video range.
    frames = list(gray_frames(moving_scene(6, *SIZE)))
    source = write_clip(tmp_path / "master.mkv", frames, codec="ffv1", pix_fmt="gray")
    output = tmp_path / f"out{suffix}"
    assert film_job(colorizer, source.path, output, FilmOptions(encode=EncodeOptions(codec))).status == "done"
    with av.open(str(output)) as container:
        shown = [frame.to_ndarray(format="gray") for frame in container.decode(video=0)]  # read by the copy's tags
    for before, after in zip(frames, shown, strict=True):
        assert np.abs(after.astype(int) - before).mean() < 2.0


@pytest.mark.parametrize("suffix, codec, decoder", [
    (".mp4", "h264", "h264"), (".mkv", "h265", "hevc"), (".mov", "prores", "prores"), (".mkv", "ffv1", "ffv1"),
])
def test_codecs_and_containers(tmp_path, colorizer, suffix, codec, decoder):
    source = bw_clip(tmp_path / "src.mp4", frames=6)
    output = tmp_path / f"out{suffix}"
    options = FilmOptions(encode=EncodeOptions(codec, preset="ultrafast"))
    assert film_job(colorizer, source.path, output, options).status == "done"
    out = probe(output)
    assert out.video.codec == decoder and out.video.frame_count == 6
    assert np.allclose([float(p * out.video.time_base) for p in out.video.pts], source.times, atol=1e-3)


@pytest.mark.parametrize("source, codec, pix_fmt, output, decoder", [
    ("master.mkv", "ffv1", "gray", "out.mkv", "ffv1"),  # a lossless master stays lossless
    ("edit.mov", "prores_ks", None, "out.mov", "prores"),  # an edit master stays ProRes
    ("dvd.mkv", "mpeg2video", None, "out.mkv", "h264"),  # a codec Tinct does not write: H.264
    ("master.mkv", "ffv1", "gray", "out.mp4", "h264"),  # its own, which MP4 cannot hold: H.264, and said so
    # A capture card's uncompressed 8-bit 2vuy and 10-bit v210, which Tinct does not write: lossless FFV1, 4:2:2 kept
    # (they had become H.264; the 2vuy's luma, taken for gray, 16 % more contrasty), or where a .mov cannot hold
    # FFV1, ProRes HQ, 10-bit 4:2:2 and intra-frame as the capture (it had become long-GOP H.264), said so
    ("capture.mov", "rawvideo", "uyvy422", "out.mkv", "ffv1"),
    ("capture.mov", "v210", "yuv422p10le", "out.mkv", "ffv1"),
    ("capture.mov", "v210", "yuv422p10le", "out.mov", "prores"),
    ("capture.mov", "v210", "yuv422p10le", "out.mp4", "h264"),  # MP4 holds neither
])
def test_a_film_is_copied_in_its_own_codec_by_default(tmp_path, tiny_checkpoint, caplog, source, codec, pix_fmt,
                                                      output, decoder):
    clip = bw_clip(tmp_path / source, frames=4, codec=codec, pix_fmt=pix_fmt)
    assert run_cli(tiny_checkpoint, str(clip.path), "-o", str(tmp_path / output), "--crf", "20") == 0  # H.264's alone
    copy = probe(tmp_path / output).video
    assert copy.codec == decoder
    if decoder == "ffv1":
        assert all(np.array_equal(a, b) for a, b in zip(lumas(tmp_path / output), lumas(clip.path), strict=True))
    if source == "capture.mov":
        with av.open(str(tmp_path / output)) as copied:
            context = copied.streams.video[0].codec_context
            assert context.pix_fmt.startswith("yuv422p")
            if decoder == "prores":
                assert (context.profile, context.codec_tag, context.pix_fmt) == ("HQ", "apch", "yuv422p10le")
    fell_back = "out.mp4: written as h264 rather than its source's codec: ffv1 cannot be stored in .mp4; use .mkv"
    assert (fell_back in caplog.text) == (output.endswith(".mp4") and codec == "ffv1")
    lossless = {"out.mov": "out.mov: written as prores rather than lossless FFV1, as its source (v210) is lossless: "
                           "ffv1 cannot be stored in .mov; use .mkv",
                "out.mp4": "out.mp4: written as h264 rather than lossless FFV1, as its source (v210) is lossless: "
                           "ffv1 cannot be stored in .mp4; use .mkv"}
    for name, said in lossless.items():
        assert (said in caplog.text) == (codec == "v210" and output == name)


def shown_captions(path: Path) -> list[bytes | None]:
    """Each frame's closed captions as FFmpeg's decoder hands them over, in the order the frames are shown."""
    with av.open(str(path)) as container:
        return [frame_captions(frame) for frame in container.decode(video=0)]


@pytest.mark.parametrize("source, output, codec, decoder", [
    ("broadcast.ts", "copy.mp4", "source", "h264"),  # a transport stream's H.264 with B-frames, into MP4
    ("broadcast.ts", "copy.mkv", "h265", "hevc"),
    ("recording.mpg", "copy.mp4", "source", "h264"),  # MPEG-2's A/53 user data (broadcast recordings), into H.264
    ("broadcast.ts", "copy.mov", "prores", "prores"),  # CEA-608 as a QuickTime caption track; CEA-708 said left out
    ("avchd.mkv", "copy.mkv", "ffv1", "ffv1"),  # no place for them: said so
])
def test_closed_captions_ride_with_their_frames_into_an_h264_or_h265_copy(tmp_path, tiny_checkpoint, caplog, source,
                                                                         output, codec, decoder):
    """Broadcast and tape captures carry CEA-608/708 captions in each coded picture (ATSC A/53), which a copy coded
    from colour numbers had lost without a word. Each frame's captions now go into its coded frame, B-frames
    reordered and segments joined, where FFmpeg's decoder finds them; a ProRes copy in a .mov has its CEA-608 ones
    in a QuickTime caption track (c608), a sample a frame; a copy with no place for them says so."""
    clip = bw_clip(tmp_path / source, frames=30, gop=12, bframes=2, captions=True,
                   codec="mpeg2video" if source.endswith(".mpg") else "libx264")
    expected = [clip_captions(shown) for shown in range(30)]
    assert shown_captions(clip.path) == expected
    out = tmp_path / output
    assert run_cli(tiny_checkpoint, str(clip.path), "-o", str(out), "--codec", codec, "--segment-seconds", "0.4") == 0
    assert probe(out).video.codec == decoder and is_coloured(out)
    if codec == "ffv1":
        assert (f"{clip.path}: its closed captions (CEA-608/CEA-708, carried in its video) are left out of its ffv1 "
                "copy: H.264 and H.265 copies carry them (--codec h264 or h265) or, for CEA-608, ProRes in .mov"
                ) in caplog.text
        assert shown_captions(out) == [None] * 30
    elif codec == "prores":
        assert (f"{clip.path}: its CEA-708 captions are left out of its ProRes copy, whose QuickTime caption track "
                "holds CEA-608 alone (which it keeps)") in caplog.text
        with av.open(str(out)) as copied:
            track = next(stream for stream in copied.streams if stream.type == "subtitle")
            assert track.codec.canonical_name == "eia_608" and track.codec_context.codec_tag == "c608"
            samples = [(packet.pts, bytes(packet)) for packet in copied.demux(track) if packet.size]
        assert [sample for _, sample in sorted(samples)] == [captions[:3] for captions in expected]  # CEA-608's
    else:
        assert shown_captions(out) == expected and "captions" not in caplog.text


def caption_samples(path: Path) -> list[tuple[int, bytes]]:
    """A file's caption track's samples (c608, as FFmpeg reads them: CEA-608 constructs), by pts."""
    with av.open(str(path)) as container:
        track = next(stream for stream in container.streams if stream.type == "subtitle")
        assert track.codec.canonical_name == "eia_608" and track.codec_context.codec_tag == "c608"
        return sorted((packet.pts, bytes(packet)) for packet in container.demux(track) if packet.size)


@pytest.mark.parametrize("output, codec, frames_each", [
    ("copy.mp4", "h264", 1),  # a broadcast master's sample a frame, into MP4, which has no caption track
    ("copy.mkv", "h265", 2),  # samples lasting two frames: a pair for each frame, in order
    ("copy.mov", "source", 1),  # a .mov keeps the track as it is, and the H.264 frames carry them too
    ("copy.mov", "prores", 2),
])
def test_a_caption_track_rides_into_the_frames_of_a_copy_in_a_container_without_one(tmp_path, tiny_checkpoint, caplog,
                                                                                    output, codec, frames_each):
    """Broadcast masters (ProRes or H.264 in .mov) carry CEA-608 captions as a QuickTime caption track (c608), which
    MP4 and Matroska cannot hold: an .mp4 or .mkv copy had been refused ("cannot be copied into .mp4: 'mp4' format
    does not support 'cc_dec' codec; try .mov"). Its samples now go into the H.264 or H.265 copy's frames, where
    MP4 and Matroska players find captions, each frame the pairs it is shown with; a .mov copy keeps the track."""
    master = bw_clip(tmp_path / "master.mov", frames=30, gop=12, bframes=2, caption_track=frames_each)
    track = caption_samples(master.path)
    assert len(track) == -(-30 // frames_each) and shown_captions(master.path) == [None] * 30
    out = tmp_path / output
    with caplog.at_level(logging.INFO, logger="worker.media.segments"):
        assert run_cli(tiny_checkpoint, str(master.path), "-o", str(out), "--codec", codec, "--segment-seconds",
                       "0.4") == 0
    assert is_coloured(out)
    if out.suffix == ".mov":
        assert caption_samples(out) == track
    else:
        with av.open(str(out)) as copied:
            assert [stream.type for stream in copied.streams] == ["video"]
        assert (f"{master.path}: its CEA-608 caption track (stream #1) is carried in its {codec} copy's frames "
                f"({out.suffix} has no caption track)") in caplog.text
    in_frames = [clip_captions(shown)[:3] for shown in range(30)] if codec != "prores" else [None] * 30
    assert shown_captions(out) == in_frames


def test_a_copy_with_a_caption_track_of_its_own_takes_no_second(tmp_path, tiny_checkpoint, caplog):
    """A film carrying captions both in its frames and in a caption track, coloured into ProRes in a .mov, whose
    caption track is made from its frames' captions: that one track, not the source's beside it."""
    master = bw_clip(tmp_path / "master.mov", frames=12, captions=True, caption_track=2)
    out = tmp_path / "copy.mov"
    with caplog.at_level(logging.INFO, logger="worker.media.segments"):
        assert run_cli(tiny_checkpoint, str(master.path), "-o", str(out), "--codec", "prores") == 0
    with av.open(str(out)) as copied:
        assert [stream.type for stream in copied.streams] == ["video", "subtitle"]
    assert [sample for _, sample in caption_samples(out)] == [clip_captions(shown)[:3] for shown in range(12)]
    assert (f"{master.path}: its caption track (stream #1) gives way to its copy's, made from the captions in its "
            "frames") in caplog.text


@pytest.mark.parametrize("codec", ["ffv1", "prores"])
def test_a_copy_that_would_lose_a_caption_track_is_refused_before_any_work(tmp_path, tiny_checkpoint, caplog, codec):
    """An FFV1 or ProRes copy in a .mkv has no place for a caption track's captions (neither a track nor its frames):
    refused up front by name, with where they would go, rather than dropped or failed at the join."""
    master = bw_clip(tmp_path / "master.mov", frames=6, caption_track=1)
    out = tmp_path / "copy.mkv"
    assert run_cli(tiny_checkpoint, str(master.path), "-o", str(out), "--codec", codec) == 1
    assert not out.exists()
    assert (f"{master.path}: its CEA-608 caption track (stream #1, c608) has no place in a .mkv of {codec}: "
            "a .mov keeps the track, and H.264 and H.265 copies carry its captions in their frames (--codec h264 or "
            "h265)") in caplog.text


@pytest.mark.parametrize("profile, pix_fmt, name, tag", [
    ("0", "yuv422p10le", "Proxy", "apco"), ("1", "yuv422p10le", "LT", "apcs"), ("4", "yuv444p10le", "4444", "ap4h"),
])
def test_a_prores_film_is_copied_in_its_own_profile_and_says_which(tmp_path, tiny_checkpoint, profile, pix_fmt, name,
                                                                   tag):
    """A ProRes copy had always been coded HQ (an LT access copy's copy twice its size, a Proxy's three and a half
    times) and always tagged apch, HQ's code, by which Apple's decoders know a ProRes stream: a 4444 copy too."""
    source = bw_clip(tmp_path / "edit.mov", frames=4, codec="prores_ks", pix_fmt=pix_fmt,
                     encoder_options={"profile": profile})
    for output in (tmp_path / "out.mov", tmp_path / "out.mkv"):
        assert run_cli(tiny_checkpoint, str(source.path), "-o", str(output), "--codec", "prores") == 0
        with av.open(str(output)) as copy:
            context = copy.streams.video[0].codec_context
            assert (context.profile, context.codec_tag) == (name, tag), output.name


def test_codec_that_the_container_cannot_hold_is_a_usage_error(tmp_path, tiny_checkpoint, capsys):
    source = bw_clip(tmp_path / "src.mkv", frames=4)
    assert run_cli(tiny_checkpoint, str(source.path), "-o", str(tmp_path / "out.mp4"), "--codec", "ffv1") == 2
    assert "ffv1 cannot be stored in .mp4; use .mkv\n" in capsys.readouterr().err  # the one container that holds it
    assert not (tmp_path / "out.mp4").exists()


def test_a_stream_the_output_container_cannot_hold_fails_the_film_before_any_work(tmp_path, tiny_checkpoint, capsys):
    source = bw_clip(tmp_path / "subtitled.mkv", frames=4, subtitles="srt")
    assert run_cli(tiny_checkpoint, str(source.path), "-o", str(tmp_path / "out.mp4")) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "subtitle stream" in line]
    # SubRip goes into Matroska only (QuickTime's own text is another codec), so that is the one suggestion.
    assert errors[0].endswith(": subtitle stream #1 (srt) cannot be copied into .mp4: 'mp4' format does not support "
                              "'srt' codec; try .mkv"), errors
    assert not (tmp_path / "out.mp4").exists() and not parts_folder(tmp_path / "out.mp4").exists()


def test_a_cover_picture_becomes_a_matroska_attachment_and_is_reported_where_it_cannot_go(tmp_path, colorizer,
                                                                                          caplog):
    source = bw_clip(tmp_path / "with-cover.mp4", frames=6, cover=True)
    options = FilmOptions(SmoothingOptions(0.5), EncodeOptions("h264"))
    assert film_job(colorizer, source.path, tmp_path / "colour.mkv", options).status == "done"
    assert has_cover(tmp_path / "colour.mkv")  # read back from its attachment, as players show it
    cover = decode_rgb(tmp_path / "colour.mkv", stream=1)
    assert len(cover) == 1 and np.abs(cover[0].mean(axis=(0, 1)) - COVER_RGB).max() < 4  # the picture itself
    with caplog.at_level("WARNING"):
        assert film_job(colorizer, source.path, tmp_path / "colour.mp4", options).status == "done"
    assert "its cover picture (stream #1, mjpeg) is left out: only a .mkv copy can keep it" in caplog.text


def test_a_films_alpha_channel_is_reported_where_it_is_left_out(tmp_path, colorizer, caplog):
    # ProRes 4444 carries a matte; the colour copy is opaque, and the user must hear it from Tinct, not a player.
    source = bw_clip(tmp_path / "matte.mov", frames=4, codec="prores_ks", pix_fmt="yuva444p10le")
    options = FilmOptions(SmoothingOptions(0.5), EncodeOptions("prores"))
    with caplog.at_level("WARNING"):
        assert film_job(colorizer, source.path, tmp_path / "colour.mov", options).status == "done"
    assert "matte.mov: its alpha channel (yuva444p" in caplog.text  # (the decoder's bit depth)
    assert "is left out: film outputs are opaque" in caplog.text
    caplog.clear()
    opaque = bw_clip(tmp_path / "opaque.mov", frames=4, codec="prores_ks", pix_fmt="yuv422p10le")
    with caplog.at_level("WARNING"):
        assert film_job(colorizer, opaque.path, tmp_path / "opaque-colour.mov", options).status == "done"
    assert "alpha" not in caplog.text


def colour_first_frame(film, layout):
    """The shipped model's colour for ``film``'s first frame as the film path writes it into ``layout``: (the frame,
    the ab chosen on its chroma grid, the chroma written), the GPU path's maths checked against the CPU's on the way
    (here on the CPU)."""
    with open_colorizer("default", engine="torch", render_size=128, batch_size=4) as (col, _):
        frame = next(decode_frames(film, layout.frame, 0, 1, 0, col.render_size))
        renders = col.predict_grid([frame.network_L])
        col.fit(renders)
        chosen = col.upsample_ab(frame.L, renders[0])
        coloured = _colour(col, layout, frame, renders[0])
        on_device = _colour_on_device(col, layout, frame, renders[0])
    for plane in ("cb", "cr"):
        assert np.abs(getattr(coloured, plane).astype(int) - getattr(on_device, plane).astype(int)).max() <= 1
    return frame, chosen, coloured


def assert_shows_the_colour_chosen(shown: np.ndarray, frame, chosen: np.ndarray, lightness_error: float,
                                   colour_error: float) -> None:
    """``shown``, a copy's frame read back as Lab, keeps ``frame``'s lightness and shows the ab ``chosen`` for it, to
    those errors at the 99th percentile (the colour over the frame's coloured midtones, a fifth of it at least)."""
    assert np.percentile(np.abs(shown[..., 0] - frame.L), 99) < lightness_error
    coloured_pixels = (np.hypot(*chosen) > 5) & (frame.L > 15) & (frame.L < 95)
    assert coloured_pixels.mean() > 0.2
    error = np.hypot(shown[..., 1] - chosen[0], shown[..., 2] - chosen[1])[coloured_pixels]
    assert np.percentile(error, 99) < colour_error, np.percentile(error, [50, 99])


@pytest.mark.parametrize("transfer, trc", [("pq", "smpte2084"), ("hlg", "arib-std-b67"), (None, "bt709")])
def test_hdr_video_is_read_as_the_light_its_codes_stand_for_and_coloured_in_its_encoding(tmp_path, transfer, trc):
    """HDR video (a B&W classic's HDR release, an HLG broadcast) is read as the light its codes stand for, reference
    white at lightness 100, not as the dark, flat picture its codes make on an SDR display; and its colour is written
    as it holds colour, in BT.2020's primaries and its own transfer: read back so, the copy shows the colour the
    network chose. Read and written as SDR in BT.709's primaries, as before, the colour shown was some 61 units of ab
    off the one chosen (2.4 times as saturated) in PQ, and 16 in HLG and in SDR video of BT.2020's primaries."""
    # Gray from dark to a little past reference white (PQ's 58 % signal, HLG's 75 %), 12-bit, video range, as UHD
    # masters are.
    low, top = {"pq": (0.3, 0.62), "hlg": (0.1, 0.8), None: (0.05, 1.0)}[transfer]
    frames = [((low + f.astype(np.float64) / 255 * (top - low)) * 65535).astype(np.uint16)
              for f in gray_frames(moving_scene(1, 96, 64))]
    clip = write_clip(tmp_path / "hdr.mkv", frames, codec="ffv1", pix_fmt="yuv444p12le", color_range="tv",
                      colorspace="bt2020nc", color_primaries="bt2020", color_trc=trc)
    film = probe_film(clip.path, 1 << 30)
    assert film.video.hdr_transfer == transfer and film.video.bt2020
    layout = plan_output(film.video, EncodeOptions("ffv1"))
    table = hdr_luma_to_l_table(transfer, 12, False) if transfer else luma_to_l_table(12, False)
    white = {"pq": 0.5807, "hlg": 0.75, None: 1.0}[transfer]  # BT.2408's reference white, as signal
    assert table[round(256 + white * 3504)] == pytest.approx(100.0, abs=0.2)  # 12-bit video range: 256 + 3504 x
    frame, chosen, coloured = colour_first_frame(film, layout)
    np.testing.assert_allclose(frame.L, table[frame.luma.astype(np.int64)], atol=1e-4)
    signal = ycbcr_to_rgb_np(coloured.luma, coloured.cb, coloured.cr, layout.matrix, layout.bit_depth,
                             layout.full_range)
    signal = torch.from_numpy(signal.astype(np.float64)).permute(2, 0, 1)
    light = video_rgb_to_linear(signal, transfer)
    bt709 = torch.einsum("ij,jhw->ihw", torch.from_numpy(bt709_from_primaries(BT2020_CHROMATICITIES)), light)
    shown = rgb_to_lab(linear_to_srgb(bt709.clamp(0.0, 1.0))).permute(1, 2, 0).numpy()
    # The film's own lightness: its luma is kept code for code, so a coloured pixel's light moves a little off its
    # gray's, as Y'CbCr's luma is not luminance (most where PQ is steep).
    lightness_error, colour_error = {"pq": (2.5, 1.5), "hlg": (1.5, 1.0), None: (1.5, 1.0)}[transfer]  # 99th pct
    assert_shows_the_colour_chosen(shown, frame, chosen, lightness_error, colour_error)


def test_hdr_video_coloured_into_frames_is_said_to_be_coloured_in_sdr(tmp_path, tiny_checkpoint, caplog):
    frames = [(f.astype(np.uint16) << 8) // 2 for f in gray_frames(moving_scene(3, 96, 64))]
    clip = write_clip(tmp_path / "hdr.mkv", frames, codec="ffv1", pix_fmt="yuv444p12le", color_range="tv",
                      colorspace="bt2020nc", color_primaries="bt2020", color_trc="smpte2084")
    said = "its frames are HDR (PQ, SMPTE ST 2084), and frames out are written in SDR colour"
    assert run_cli(tiny_checkpoint, str(clip.path), "-o", str(tmp_path / "colour.mkv")) == 0
    assert said not in caplog.text  # a film file keeps its encoding
    assert run_cli(tiny_checkpoint, str(clip.path), "-o", str(tmp_path / "frames" / "c_%04d.dpx")) == 0
    assert said in caplog.text


def hdr10_metadata(path: Path) -> dict[str, bytes]:
    """The first frame's HDR10 side data as FFmpeg decodes it (its structs' bytes), by type."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return {str(data.type): bytes(data) for data in frame.side_data
                if "MASTERING" in str(data.type) or "LIGHT" in str(data.type)}


def test_an_hdr10_films_static_metadata_goes_with_its_h265_copy_and_is_said_left_out_of_others(tmp_path,
                                                                                             tiny_checkpoint, caplog):
    """The mastering display and light levels an HDR10 release carries tell displays how to tone-map it; a copy
    without them is shown by the display's own guess. x265 writes them; they were left out."""
    params = ("log-level=error:hdr10=1:master-display=G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)"
              "L(10000000,1):max-cll=1000,400")
    frames = [(f.astype(np.uint16) << 8) // 2 for f in gray_frames(moving_scene(4, 96, 64))]
    clip = write_clip(tmp_path / "hdr10.mkv", frames, codec="libx265", pix_fmt="yuv420p10le", colorspace="bt2020nc",
                      color_primaries="bt2020", color_trc="smpte2084", encoder_options={"x265-params": params})
    source = hdr10_metadata(clip.path)
    assert len(source) == 2
    assert run_cli(tiny_checkpoint, str(clip.path), "-o", str(tmp_path / "colour.mkv")) == 0  # its own codec, H.265
    assert hdr10_metadata(tmp_path / "colour.mkv") == source
    assert "HDR10 metadata" not in caplog.text
    assert run_cli(tiny_checkpoint, str(clip.path), "-o", str(tmp_path / "master.mkv"), "--codec", "ffv1") == 0
    assert "its HDR10 metadata (mastering display, light levels) is left out of its ffv1 copy" in caplog.text


def test_a_preview_shows_hdr_video_as_the_light_it_stands_for(tmp_path):
    """The web console's film previews: HDR video as an SDR display shows its light, reference white as white and
    half of it as half (sRGB 188), not its codes as they are (PQ's reference white would be sRGB 148)."""
    signal = linear_to_pq(torch.tensor([1.0, 0.5], dtype=torch.float64)).numpy()  # reference white, half of it
    codes = np.round(signal * 65535).astype(np.uint16)  # gray at full scale; written in video range
    frame = np.repeat(codes, [48, 48])[None, :].repeat(64, axis=0)
    clip = write_clip(tmp_path / "hdr.mkv", [frame], codec="ffv1", pix_fmt="yuv444p12le", color_range="tv",
                      colorspace="bt2020nc", color_primaries="bt2020", color_trc="smpte2084")
    with av.open(str(clip.path)) as container:
        shown = shown_video(next(container.decode(video=0)))
    assert np.abs(shown[:, :48].astype(int) - 255).max() <= 1 and np.abs(shown[:, 48:].astype(int) - 188).max() <= 1
    sdr = bw_clip(tmp_path / "sdr.mkv", frames=1, codec="ffv1")
    with av.open(str(sdr.path)) as container:
        assert shown_video(next(container.decode(video=0))) is None  # shown as it is


def test_colour_film_is_skipped_unless_recolor(tmp_path, colorizer):
    source = write_clip(tmp_path / "colour.mp4", moving_scene(6, *SIZE))
    output = tmp_path / "out.mkv"
    assert film_job(colorizer, source.path, output, FilmOptions()).status == "colour"
    assert not output.exists()
    assert film_job(colorizer, source.path, output, FilmOptions(recolor=True)).status == "done"


@pytest.mark.parametrize("look", ["sepia toning", "a blue cast"])
def test_a_toned_black_and_white_film_is_colorized_as_a_toned_print_is(tmp_path, colorizer, look):
    # Toning and a scanner's cast tint black and white by density alone: the photos' colour test calls such a print
    # black and white, but the films' called the film colour and skipped it.
    frames = [g[..., None].astype(float) for g in gray_frames(moving_scene(6, *SIZE))]
    if look == "sepia toning":
        frames = [f * np.array([1.0, 0.88, 0.7]) for f in frames]
    else:
        frames = [f + np.array([-6.0, 0.0, 8.0]) for f in frames]
    source = write_clip(tmp_path / "toned.mp4", [np.clip(f, 0, 255).astype(np.uint8) for f in frames])
    assert film_job(colorizer, source.path, tmp_path / "out.mkv", FilmOptions()).status == "done"


def test_colour_footage_of_a_mostly_gray_scene_is_still_a_colour_film(tmp_path, colorizer):
    # Blue caps on bottles before a gray wall: colour in a few percent of the frame, which the photos' 90th
    # percentile does not see. Recoloured as black and white, the film would lose them.
    frames = [np.repeat(g[..., None], 3, axis=2) for g in gray_frames(moving_scene(6, *SIZE))]
    for frame in frames:
        frame[20:36, 30:46] = (30, 60, 200)  # 4 % of the frame
    source = write_clip(tmp_path / "bottles.mp4", frames)
    assert film_job(colorizer, source.path, tmp_path / "out.mkv", FilmOptions()).status == "colour"


def test_folder_with_photos_and_films(tmp_path, tiny_checkpoint):
    from PIL import Image

    (tmp_path / "in" / "reels").mkdir(parents=True)
    bw_clip(tmp_path / "in" / "reels" / "a.avi", frames=4, codec="mpeg4")
    Image.fromarray(next(gray_frames(moving_scene(1, 64, 48)))).save(tmp_path / "in" / "still.png")
    assert run_cli(tiny_checkpoint, str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 0
    assert probe(tmp_path / "out" / "reels" / "a.mkv").video.frame_count == 4  # .avi is written as Matroska
    assert (tmp_path / "out" / "still.png").exists()
    assert run_cli(tiny_checkpoint, str(tmp_path / "in"), "-o", str(tmp_path / "prores"), "--codec", "prores") == 0
    assert probe(tmp_path / "prores" / "reels" / "a.mov").video.frame_count == 4  # ProRes goes into QuickTime


# --- smoothing, cuts and segments --------------------------------------------------------------------------


def test_pipeline_reports_synthetic_cuts(tmp_path, colorizer):
    source = bw_clip(tmp_path / "cuts.mkv", frames=30, size=(128, 96), cuts_at=(10, 21), codec="ffv1")
    film = probe_film(source.path, 1 << 30)
    layout = plan_output(film.video, EncodeOptions("ffv1"))
    frames = []
    times = colorize_frames(film, colorizer[0], layout, SmoothingOptions(strength=0.5), frames.append)
    assert [f.index for f in frames] == list(range(30))
    assert times.cuts == [10, 21]


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv420p10le"])
def test_colour_stage_on_the_device_matches_the_opencv_path(tmp_path, colorizer, pix_fmt):
    """The GPU path's colour maths (torch: upsampling, Lab -> RGB, Cb/Cr codes), run here on the CPU, gives the
    code values of the CPU path (OpenCV's Lab conversion) to within one code value."""
    frames = list(gray_frames(moving_scene(4, 128, 96)))
    if pix_fmt.endswith("10le"):
        frames = [f.astype(np.uint16) << 8 for f in frames]
    source = write_clip(tmp_path / "src.mkv", frames, codec="ffv1", pix_fmt=pix_fmt)
    film = probe_film(source.path, 1 << 30)
    layout = plan_output(film.video, EncodeOptions("ffv1"))
    cpu_frames: list = []
    colorize_frames(film, colorizer[0], layout, SmoothingOptions(strength=0.5), cpu_frames.append)
    decoded = list(decode_frames(film, layout.frame, 0, film.frames, 0, colorizer[0].render_size))
    renders = colorizer[0].predict_grid([frame.network_L for frame in decoded])
    colorizer[0].fit(renders)
    device_frames = [_colour_on_device(colorizer[0], layout, f, r) for f, r in zip(decoded, renders, strict=True)]
    assert device_frames[0].cb.dtype == cpu_frames[0].cb.dtype == (np.uint8 if layout.bit_depth == 8 else np.uint16)
    # Frame 0 is never smoothed, so both paths colour the same network output.
    for plane in ("cb", "cr"):
        cpu, device = getattr(cpu_frames[0], plane).astype(int), getattr(device_frames[0], plane).astype(int)
        assert np.abs(cpu - device).max() <= 1
        assert np.abs(cpu - (1 << (layout.bit_depth - 1))).max() > 2  # actually coloured, not gray


def test_a_small_film_shows_the_network_its_full_resolution(tmp_path):
    """4:2:0 at 96x64 stores colour at 48x32, below the render's 64 px: the network reads the frame's L at full
    resolution (as the photo path would), not the half-size L its colour is stored at; a film whose chroma planes
    reach the render is read at chroma resolution, with nothing extra decoded. (The shipped model: a random one
    colours every input alike.)"""
    source = bw_clip(tmp_path / "small.mkv", frames=3, size=(96, 64), codec="ffv1", pix_fmt="yuv420p")
    film = probe_film(source.path, 1 << 30)
    layout = plan_output(film.video, EncodeOptions("ffv1"))
    with open_colorizer("default", engine="torch", render_size=64, batch_size=4) as (col, _):
        _check_small_film(film, layout, col)


def _check_small_film(film, layout, col: Colorizer) -> None:
    decoded = list(decode_frames(film, layout.frame, 0, film.frames, 0, render_size=col.render_size))
    assert decoded[0].L.shape == (32, 48) and decoded[0].network_L.shape == (64, 96)
    np.testing.assert_allclose(cv2.resize(decoded[0].network_L, (48, 32), interpolation=cv2.INTER_AREA),
                               decoded[0].L, atol=0.5)  # the same picture, four times the pixels
    assert all(f.network_L is f.L for f in decode_frames(film, layout.frame, 0, film.frames, 0, render_size=48))

    coloured: list = []
    colorize_frames(film, col, layout, SmoothingOptions(strength=0.0), coloured.append)

    def colour_from(L: np.ndarray) -> np.ndarray:
        renders = col.predict_grid([L])
        col.fit(renders)
        frame = _colour(col, layout, decoded[0], renders[0])
        return np.stack((frame.cb, frame.cr)).astype(int)

    ours = np.stack((coloured[0].cb, coloured[0].cr)).astype(int)
    assert np.array_equal(ours, colour_from(decoded[0].network_L))
    assert np.abs(ours - colour_from(decoded[0].L)).max() > 2  # reading the half-size L colours it differently


def test_plan_segments_starts_at_keyframes_and_caps_warmup(tmp_path):
    source = bw_clip(tmp_path / "gop.mkv", frames=40, gop=8, bframes=0)
    film = probe_film(source.path, 1 << 30)
    segments = plan_segments(film, segment_frames=10, warmup=5)
    assert [s.start for s in segments] == [0, 16, 32]
    assert [s.stop for s in segments] == [16, 32, 40]
    assert [s.warmup for s in segments] == [0, 5, 5]
    assert plan_segments(film, segment_frames=1000)[0].frames == 40


@pytest.mark.parametrize("strength", [0.0, 0.5])
def test_film_in_segments_equals_film_processed_whole(tmp_path, colorizer, strength):
    source = bw_clip(tmp_path / "src.mkv", frames=48, size=(128, 96), gop=6, bframes=0)
    whole, parts = tmp_path / "whole.mkv", tmp_path / "parts.mkv"
    encode = EncodeOptions("ffv1")
    smoothing = SmoothingOptions(strength=strength)
    film_job(colorizer, source.path, whole, FilmOptions(smoothing, encode, segment_seconds=100))
    outcome = film_job(colorizer, source.path, parts, FilmOptions(smoothing, encode, segment_seconds=0.5))
    assert outcome.status == "done"
    a, b = np.stack(decode_native(whole)).astype(np.int32), np.stack(decode_native(parts)).astype(np.int32)
    assert a.shape == b.shape and a.shape[0] == 48
    assert probe(whole).video.pts == probe(parts).video.pts
    if strength == 0:
        np.testing.assert_array_equal(a, b)
    else:
        # Warm-up frames bring the smoother within 1 % of a whole-film pass: at most a code value or two.
        assert np.abs(a - b).max() <= 2 and np.abs(a - b).mean() < 0.05


def test_an_mp4_trimmed_by_its_edit_list_gives_the_frames_it_shows(tmp_path, colorizer):
    # A film cut at its head without re-encoding keeps the frames before the cut (what follows needs them to
    # decode) behind an edit list; players start at the cut, and so must the colour copy, whole or in segments.
    source = bw_clip(tmp_path / "trimmed.mp4", frames=40, size=(128, 96), gop=12, bframes=2, hidden_frames=5)
    film = probe_film(source.path, 1 << 30)
    assert len(film.frame_pts) == 35 and film.keyframe_pts[0] < 0 == film.frame_pts[0]  # the first keyframe hidden
    assert film.duration == pytest.approx(35 / 24)
    shown = np.stack(lumas(source.path))
    assert len(shown) == 35
    for segment_seconds in (100, 0.5):  # one segment; segments starting at the later keyframes
        output = tmp_path / f"colour-{segment_seconds}.mkv"
        options = FilmOptions(SmoothingOptions(0.5), EncodeOptions("ffv1"), segment_seconds=segment_seconds)
        outcome = film_job(colorizer, source.path, output, options)
        assert (outcome.status, outcome.frames) == ("done", 35)
        # The pipeline keeps the source's luma bit-exact, so each output frame must be the shown frame at its place.
        np.testing.assert_array_equal(np.stack(lumas(output)), shown)
        assert probe(output).video.pts[0] == 0


@pytest.mark.parametrize("suffix, codec", [(".mkv", "h264"), (".mp4", "h265"), (".mkv", "ffv1"), (".mov", "prores")])
def test_non_square_pixels_keep_their_shape(tmp_path, colorizer, suffix, codec):
    # DV and DVD footage has non-square pixels: a copy that loses the ratio shows every frame squeezed. H.264 and
    # H.265 carry it in their bitstream, MOV in the container, FFV1 in each frame's slice headers.
    source = bw_clip(tmp_path / "dv.mkv", frames=12, sample_aspect_ratio=Fraction(16, 15))
    assert first_frame_info(source.path).aspect == Fraction(16, 15)
    output = tmp_path / f"colour{suffix}"
    options = FilmOptions(SmoothingOptions(0.5), EncodeOptions(codec), segment_seconds=0.25)  # joined segments
    assert film_job(colorizer, source.path, output, options).status == "done"
    assert first_frame_info(output).aspect == Fraction(16, 15)


@pytest.mark.parametrize("source_codec, fields", [
    ("mpeg2video", "top first"), ("prores_ks", "bottom first"),
    # Broadcast and camera captures (AVCHD, 1080i off air): H.264 says its field order in each frame, while FFmpeg's
    # parser reports "top first" for every stream. Copies of bottom-first ones were flagged progressive.
    ("libx264", "bottom first"),
])
@pytest.mark.parametrize("suffix, codec", [(".mkv", "ffv1"), (".mov", "prores"), (".mp4", "h264")])
def test_an_interlaced_film_stays_interlaced(tmp_path, colorizer, source_codec, fields, suffix, codec):
    # Tape captures are interlaced: each frame weaves two fields taken a field apart in time. Flagged progressive,
    # a copy is shown combed wherever something moves; flagged as its source was, players deinterlace it alike.
    source = bw_clip(tmp_path / "tape.mkv", frames=12, codec=source_codec, interlaced=fields)
    assert first_frame_info(source.path).fields == fields
    output = tmp_path / f"colour{suffix}"
    options = FilmOptions(SmoothingOptions(0.5), EncodeOptions(codec), segment_seconds=0.25)  # joined segments
    assert film_job(colorizer, source.path, output, options).status == "done"
    assert first_frame_info(output).fields == fields  # the frames say so (as the codec codes them)
    if suffix != ".mp4":  # and so do Matroska's FieldOrder and QuickTime's fiel (MP4 has no such field)
        with av.open(str(output)) as after:
            assert after.streams.video[0].codec_context.field_order == FIELD_ORDERS[fields]


def test_interlaced_hevc_coded_as_field_pictures_is_refused_with_how_to_weave_it(tmp_path):
    # x265 codes each field as a picture of its own, and FFmpeg hands them out one by one: coloured as they came, a
    # 1080i broadcast became a 540-line film at 50 frames a second.
    source = bw_clip(tmp_path / "broadcast.mkv", frames=4, codec="libx265",
                     encoder_options={"x265-params": "interlace=tff:log-level=error"})
    with pytest.raises(BadInputError) as refused:
        probe_film(source.path, 1 << 30)
    assert str(refused.value).startswith(f"{source.path}: interlaced HEVC coded as field pictures, which FFmpeg "
                                         "decodes one field at a time")
    assert "ffmpeg -i IN -vf weave=first_field=top" in str(refused.value)
    progressive = bw_clip(tmp_path / "progressive.mkv", frames=4, codec="libx265",
                          encoder_options={"x265-params": "log-level=error"})
    assert probe_film(progressive.path, 1 << 30).frames == 4


@pytest.mark.parametrize("fields", ["top first", "bottom first"])
def test_an_interlaced_h264_films_field_order_is_read_from_its_frames_whatever_they_show(tmp_path, fields):
    flat = [np.full((64, 96), 40, np.uint8)] * 2  # both fields alike: the order cannot be seen in the picture
    for name, frames in (("scene", gray_frames(moving_scene(2, 96, 64))), ("flat", flat)):
        source = write_clip(tmp_path / f"{name}.mkv", frames, codec="libx264", interlaced=fields)
        assert probe_film(source.path, 10**8).video.field_order == FIELD_ORDERS[fields]
    progressive = write_clip(tmp_path / "progressive.mkv", flat, codec="libx264")
    assert probe_film(progressive.path, 10**8).video.field_order not in FIELD_ORDERS.values()


@pytest.mark.parametrize("container, suffix, codec", [(".avi", ".mkv", "ffv1"), (".dv", ".mp4", "h264")])
def test_a_dv_capture_stays_bottom_field_first(tmp_path, colorizer, container, suffix, codec):
    # DV, the tape format archives hold most of, is interlaced bottom field first by its standard, but FFmpeg reports
    # no field order for it: its copies were flagged progressive, and players showed them combed. (Raw .dv into MP4
    # failed outright: PyAV reads its rate as 60000 fps.)
    source = bw_clip(tmp_path / f"tape{container}", frames=4, size=(720, 576), codec="dvvideo", pix_fmt="yuv420p",
                     fps=25)
    assert first_frame_info(source.path).fields == "bottom first"  # FFmpeg's decoder says so, frame by frame
    output = tmp_path / f"colour{suffix}"
    options = FilmOptions(SmoothingOptions(0.5), EncodeOptions(codec))
    assert film_job(colorizer, source.path, output, options).status == "done"
    assert first_frame_info(output).fields == "bottom first"


def test_a_high_speed_scans_timecode_is_kept_only_where_the_container_can_count_it(tmp_path, colorizer, caplog):
    # MP4 and MOV count a timecode's frames in one byte: a 1000 fps scan's timecode made FFmpeg fail the whole file
    # at its end, after every frame was coloured, naming a scratch file ("Invalid argument ... returned 22").
    source = bw_clip(tmp_path / "high-speed.mkv", frames=12, fps=1000, metadata={"TIMECODE": "01:00:00:00"})
    with caplog.at_level("WARNING"):
        outcome = film_job(colorizer, source.path, tmp_path / "colour.mp4", FilmOptions(encode=EncodeOptions("h264")))
    assert outcome.status == "done" and probe(tmp_path / "colour.mp4").video.frame_count == 12
    assert "its timecode 01:00:00:00 is left out: MP4 timecode tracks count at most 255 frames a second" in caplog.text
    outcome = film_job(colorizer, source.path, tmp_path / "colour.mkv", FilmOptions(encode=EncodeOptions("ffv1")))
    assert outcome.status == "done"
    with av.open(str(tmp_path / "colour.mkv")) as kept:
        assert kept.metadata.get("TIMECODE") == "01:00:00:00"


def test_prores_in_matroska_is_refused_for_non_square_pixels(tmp_path, colorizer):
    source = bw_clip(tmp_path / "dv.mkv", frames=6, sample_aspect_ratio=Fraction(16, 15))
    output = tmp_path / "colour.mkv"
    with pytest.raises(BadInputError, match=r"not square \(16:15.*ProRes in \.mkv cannot record it; write \.mov"):
        film_job(colorizer, source.path, output, FilmOptions(SmoothingOptions(0.5), EncodeOptions("prores")))
    assert not output.exists() and not parts_folder(output).exists()


@pytest.mark.parametrize("suffix, codec", [(".ts", "libx264"), (".mpg", "mpeg2video")])
def test_mpeg_transport_and_program_streams_decode_from_any_keyframe(tmp_path, colorizer, suffix, codec):
    # Broadcast captures (.ts) and DVD rips (.mpg) seek by a search of the file's bytes for a decode timestamp,
    # which lands after a keyframe's packet when asked for its (later) display time: the probe used to call such
    # films damaged, and a segment starting at a later keyframe could not start.
    source = bw_clip(tmp_path / f"capture{suffix}", frames=40, size=(128, 96), codec=codec, gop=6, bframes=2)
    film = probe_film(source.path, 1 << 30)
    assert film.frames == 40 and film.keyframe_pts.size == 7
    shown = np.stack(lumas(source.path))
    outputs = []
    for segment_seconds in (100, 0.5):
        output = tmp_path / f"colour-{segment_seconds}.mkv"
        options = FilmOptions(SmoothingOptions(0.0), EncodeOptions("ffv1"), segment_seconds=segment_seconds)
        outcome = film_job(colorizer, source.path, output, options)
        assert (outcome.status, outcome.frames) == ("done", 40)
        np.testing.assert_array_equal(np.stack(lumas(output)), shown)
        outputs.append(np.stack(decode_native(output)))
        # The recorder's clock start is dropped (as FFmpeg's remuxing does); the frames keep their spacing.
        shifted = [float((p - source.pts[0]) * source.time_base) for p in source.pts]
        video = probe(output).video
        assert video.pts[0] == 0
        np.testing.assert_allclose([float(p * video.time_base) for p in video.pts], shifted,
                                   atol=1.5 * float(video.time_base))
    np.testing.assert_array_equal(*outputs)


# --- interruption and resume -------------------------------------------------------------------------------


class _InterruptingColorizer(Colorizer):
    """Raises KeyboardInterrupt (as Ctrl-C would) on its ``fail_at``-th network batch."""

    def __init__(self, *args, fail_at: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls, self.fail_at = 0, fail_at

    def predict_grid(self, L_list):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return super().predict_grid(L_list)


def test_interrupted_film_leaves_no_output_and_resumes(tmp_path, colorizer):
    source = bw_clip(tmp_path / "src.mkv", frames=36, gop=6, bframes=0)
    output, reference = tmp_path / "out.mkv", tmp_path / "reference.mkv"
    options = FilmOptions(SmoothingOptions(0.5), EncodeOptions("ffv1"), segment_seconds=0.5)
    model, label = colorizer
    flaky = _InterruptingColorizer(model.engine, render_size=64, batch_size=4, fail_at=6)
    with pytest.raises(KeyboardInterrupt):
        colorize_film(flaky, source.path, output, options, label)
    assert not output.exists()
    kept = sorted(p.name for p in parts_folder(output).iterdir())
    assert "manifest.json" in kept and any(name.startswith("segment-") for name in kept)
    assert not any("partial" in name for name in kept)
    resumed = colorize_film(model, source.path, output, options, label)
    assert resumed.status == "done" and resumed.resumed_segments >= 1
    colorize_film(model, source.path, reference, options, label)
    np.testing.assert_array_equal(np.stack(decode_native(output)), np.stack(decode_native(reference)))
    assert not parts_folder(output).exists()


def test_ctrl_c_in_the_cli_then_rerun(tmp_path, tiny_checkpoint):
    source = bw_clip(tmp_path / "long.mkv", frames=480, size=(160, 96), gop=12, bframes=0)
    output = tmp_path / "out.mkv"
    command = [sys.executable, "-m", "worker.cli", "colorize", str(source.path), "-o", str(output), "--model",
               str(tiny_checkpoint), "--engine", "torch", "--render-size", "64", "--segment-seconds", "1", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(parts_folder(output).glob("segment-*.nut")) and process.poll() is None:
        assert time.monotonic() < deadline, "no segment was finished in time"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the job finished before the interrupt arrived")
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and not output.exists()
    assert subprocess.run(command, env=env).returncode == 0
    assert probe(output).video.frame_count == 480 and not parts_folder(output).exists()


def test_a_rerun_redoes_a_film_or_a_run_of_frames_changed_since_its_copy(tmp_path, tiny_checkpoint, caplog):
    """A rerun skipped a film whose copy existed, though the film (or one frame of a scanned run) had been replaced
    since: the copy stayed stale without a word. As make decides, a copy older than what it was made from is
    redone; one still current is not."""
    film = bw_clip(tmp_path / "reel.mkv", frames=8).path
    run = tmp_path / "run"
    run.mkdir()
    for number, frame in enumerate(gray_frames(moving_scene(6, *SIZE)), start=1):
        cv2.imwrite(str(run / f"scan_{number:04d}.png"), frame)
    copies = {film: tmp_path / "out" / "reel.mkv", run / "scan_%04d.png": tmp_path / "out" / "c_%04d.png"}

    def colour(source: Path) -> None:
        assert run_cli(tiny_checkpoint, str(source), "-o", str(copies[source]),
                       *(("--frame-rate", "24") if source != film else ())) == 0

    for source in copies:
        colour(source)
    made = {source: _made(copy) for source, copy in copies.items()}
    for source, copy in copies.items():  # still current: skipped
        colour(source)
        assert _made(copy) == made[source]
    later = max(made.values()) + 10**9
    for changed in (film, run / "scan_0003.png"):
        os.utime(changed, ns=(later, later))
    with caplog.at_level(logging.INFO, logger="worker.films"):
        for source, copy in copies.items():
            colour(source)
            assert _made(copy) > made[source]
    assert f"{film}: changed since {copies[film]} was made; colouring it again" in caplog.text
    assert f"{run / 'scan_0003.png'}: changed since" in caplog.text


def _made(copy: Path) -> int:
    """When a copy was written: a film file's time, or a run's oldest frame's."""
    if "%" not in copy.name:
        return copy.stat().st_mtime_ns
    return min(frame.stat().st_mtime_ns for frame in copy.parent.glob("c_*.png"))


def test_an_interrupt_between_two_stage_starts_stops_the_started_stage():
    # A film's stages start one after another; Ctrl-C can land between two starts (the CLI test above sends it
    # as a segment ends, just when the next one's stages start). The stage already running must be stopped and
    # joined before the interrupt propagates: left running as a daemon thread inside torch into interpreter
    # exit, it aborts the process instead of letting it exit 130.
    stages = _Stages()
    never_fed: queue.Queue = queue.Queue()

    def targets():
        yield "waiting", lambda: stages.get(never_fed)
        raise KeyboardInterrupt  # what Python's SIGINT handler raises in the main thread

    with pytest.raises(KeyboardInterrupt):
        stages.run(targets())
    assert len(stages.threads) == 1 and not stages.threads[0].is_alive()


# --- bad input ---------------------------------------------------------------------------------------------


BAD_INPUT_REASONS = {
    "zero_byte.mp4": "empty file",
    "not_a_video.mp4": "not a readable video file",
    "truncated.mp4": "truncated or unfinished: its media has no index (the moov box, which MP4 and MOV writers add as "
                     "they finish); its ",
    "truncated.mkv": "truncated",
    "garbage_middle.mkv": "decod",
    "no_video.mka": "no video stream",
    "unsupported_codec.mkv": "no decoder",
    "huge_dimensions.mkv": "over the limit",
    "invalid_dimensions.mkv": "no frame size",
    "broken_timestamps.mkv": "broken timestamps",
    "broken_audio.mkv": "audio stream #1",
    "b_frames_in.avi": "no display times for its B-frames",
    "size_change.ts": "frames change size, from 64x48 to 32x24 at",
    "brief_size_change.ts": "frame 14 is 32x24, its first is 64x48; a film's frames must all be one size",
}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    return make_bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("name", sorted(BAD_INPUT_REASONS))
def test_bad_input_fails_with_one_clear_line_and_leaves_nothing(tmp_path, tiny_checkpoint, bad_inputs, name,
                                                                 caplog):
    output = tmp_path / "out.mkv"
    assert run_cli(tiny_checkpoint, str(bad_inputs[name]), "-o", str(output)) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert str(bad_inputs[name]) in errors[0] and BAD_INPUT_REASONS[name] in errors[0], errors[0]
    assert list(tmp_path.iterdir()) == []  # no output, no work folder, no temp file


@pytest.mark.parametrize("threads", [1, 17])
def test_damaged_video_is_caught_whatever_the_decoder_threads(tmp_path, colorizer, bad_inputs, threads, monkeypatch):
    # FFmpeg's H.264 decoder raises on the damaged packets with few threads and silently drops frames with many
    # (measured: 17 threads on a 16-core machine); both must end as the same clear error.
    monkeypatch.setattr("worker.media.video_source.DECODER_THREADS", threads)
    with pytest.raises(BadInputError, match="damaged video data"):
        film_job(colorizer, bad_inputs["garbage_middle.mkv"], tmp_path / "out.mkv", FilmOptions(recolor=True))
    assert list(tmp_path.iterdir()) == []


def film_job(colorizer, source, output, options: FilmOptions):
    model, label = colorizer
    return colorize_film(model, source, output, options, label)
