"""The generated test media are what tests/media.py says they are: read back with PyAV, not trusted."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from tests.media import (
    BROKEN_PTS,
    SUBTITLE_TEXTS,
    decode_native,
    decode_rgb,
    gray_frames,
    luma,
    make_bad_inputs,
    moving_scene,
    probe,
    write_clip,
)

INVALID_DATA = 1094995529  # AVERROR_INVALIDDATA as PyAV's errno


@pytest.fixture(scope="module")
def scene() -> list[np.ndarray]:
    return list(moving_scene(12, 64, 48, seed=3))


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    return make_bad_inputs(tmp_path_factory.mktemp("bad"))


# ----------------------------------------------------------------------------------------------------------- content


def test_moving_scene_is_deterministic_rgb():
    first = list(moving_scene(5, 80, 48, seed=1))
    assert len(first) == 5 and all(f.shape == (48, 80, 3) and f.dtype == np.uint8 for f in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, moving_scene(5, 80, 48, seed=1), strict=True))
    assert not np.array_equal(first[0], next(moving_scene(5, 80, 48, seed=2)))
    assert np.ptp(first[0].reshape(-1, 3).astype(int), axis=0).min() > 60  # colourful, not a flat field


def test_cuts_are_hard_and_visible_in_luma():
    frames = list(gray_frames(moving_scene(16, 96, 64, cuts_at=(5, 11), seed=4)))
    change = [np.abs(b.astype(int) - a).mean() for a, b in zip(frames, frames[1:], strict=False)]
    cuts = [change[4], change[10]]
    others = [c for i, c in enumerate(change) if i not in (4, 10)]
    assert min(cuts) > 3 * max(others)
    with pytest.raises(ValueError, match="cuts_at"):
        list(moving_scene(4, 32, 32, cuts_at=(4,)))


def test_background_flow_is_the_whole_pixel_pan():
    """Optical flow recovers the pan (2 px across, 1 px down or up per frame) that the generator applies."""
    frames = list(gray_frames(moving_scene(4, 96, 64, seed=0)))
    flow = cv2.calcOpticalFlowFarneback(frames[1], frames[2], None, 0.5, 3, 15, 3, 5, 1.2, 0)
    dx, dy = np.median(flow[..., 0]), np.median(flow[..., 1])
    assert abs(abs(dx) - 2) < 0.25 and abs(abs(dy) - 1) < 0.25


def test_luma_uses_rec601_weights():
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], np.uint8)
    assert luma(pixels).tolist() == [[76, 150, 29, 255]]


# ------------------------------------------------------------------------------------------------------------ write


@pytest.mark.parametrize(
    "name, options, pix_fmt, exact",
    [
        ("h264.mp4", {}, "yuv420p", False),
        ("ffv1.mkv", {"codec": "ffv1", "pix_fmt": "yuv444p"}, "yuv444p", True),
        ("prores.mov", {"codec": "prores_ks"}, "yuv422p10le", False),
        ("hevc10.mkv", {"codec": "libx265", "pix_fmt": "yuv420p10le"}, "yuv420p10le", False),
        ("mpeg4.avi", {"codec": "mpeg4"}, "yuv420p", False),
        ("vp9.webm", {"codec": "libvpx-vp9"}, "yuv420p", False),
    ],
)
def test_write_clip_round_trips(tmp_path, scene, name, options, pix_fmt, exact):
    clip = write_clip(tmp_path / name, scene, **options)
    assert (clip.frame_count, clip.width, clip.height, clip.pix_fmt) == (12, 64, 48, pix_fmt)
    assert clip.times == pytest.approx([i / 24 for i in range(12)], abs=1e-3)
    assert clip.duration == pytest.approx(0.5)
    decoded = np.stack(decode_rgb(clip.path)).astype(int)
    error = np.abs(decoded - np.stack(scene))
    assert error.max() <= 3 if exact else error.mean() < 8


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_variable_frame_rate_timestamps_survive(tmp_path, scene, suffix):
    pts = [0, 40, 80, 100, 180, 200, 300, 310, 400, 450, 460, 600]
    clip = write_clip(tmp_path / f"vfr{suffix}", scene, pts=pts, time_base=Fraction(1, 1000), bframes=2)
    assert clip.times == pytest.approx([p / 1000 for p in pts], abs=1e-3)
    assert clip.duration == pytest.approx(0.6 + 1 / 24)


def test_gop_and_bframes_reach_the_encoder(tmp_path, scene):
    clip = write_clip(tmp_path / "gop.mp4", scene, gop=4, bframes=0)
    video = clip.probe.video
    assert video is not None
    assert [video.pts.index(p) for p in video.keyframe_pts] == [0, 4, 8]
    with av.open(str(clip.path)) as container:  # no B-frames: decode order is display order
        order = [p.pts for p in container.demux(video=0) if p.size]
    assert order == sorted(order)


@pytest.mark.parametrize("suffix, rotation", [(".mp4", 90), (".mkv", 270), (".mov", 180)])
def test_rotation_is_a_display_matrix(tmp_path, scene, suffix, rotation):
    clip = write_clip(tmp_path / f"rot{suffix}", scene, rotation=rotation)
    assert clip.probe.rotation % 360 == rotation
    assert (clip.width, clip.height) == (64, 48)  # stored unrotated
    with av.open(str(clip.path)) as container:
        assert next(container.decode(video=0)).rotation % 360 == rotation


def test_avi_cannot_rotate(tmp_path, scene):
    with pytest.raises(ValueError, match="rotation 90 written, 0 read back"):
        write_clip(tmp_path / "rot.avi", scene, codec="mpeg4", rotation=90)


@pytest.mark.parametrize(
    "tags",
    [
        {"colorspace": "bt709", "color_primaries": "bt709", "color_trc": "bt709", "color_range": "tv"},
        {"colorspace": "smpte170m", "color_primaries": "smpte170m", "color_trc": "smpte170m", "color_range": "pc"},
        {"colorspace": "bt470bg", "color_primaries": "bt470bg", "color_trc": "gamma28", "color_range": "tv"},
    ],
)
def test_colour_tags_are_stored_and_honoured(tmp_path, scene, tags):
    clip = write_clip(tmp_path / "tags.mkv", scene, codec="ffv1", pix_fmt="yuv444p", **tags)
    stored = {k: getattr(clip.probe, k) for k in tags}
    assert stored == tags
    # The pixels were converted with the tagged matrix and range, so a tag-aware decode gets the source back.
    assert np.abs(np.stack(decode_rgb(clip.path)).astype(int) - np.stack(scene)).max() <= 3


def test_colour_tags_in_h264_mp4(tmp_path, scene):
    clip = write_clip(tmp_path / "tags.mp4", scene, colorspace="bt709", color_primaries="bt709", color_trc="bt709")
    assert (clip.probe.colorspace, clip.probe.color_primaries, clip.probe.color_trc) == ("bt709",) * 3
    assert clip.probe.color_range == "tv"  # x264 writes a VUI once any tag is set, and limited range is its default
    with pytest.raises(ValueError, match="unknown colour tag"):
        write_clip(tmp_path / "bad.mp4", scene, colorspace="bt710")


@pytest.mark.parametrize(
    "suffix, audio, codec",
    [(".mp4", "aac", "aac"), (".mkv", "libopus", "opus"), (".mkv", "flac", "flac"), (".mov", "pcm_s16le", "pcm_s16le")],
)
def test_audio_tone_spans_the_clip_and_copies_bit_exactly(tmp_path, scene, suffix, audio, codec):
    clip = write_clip(tmp_path / f"audio{suffix}", scene, audio=audio)
    (stream,) = clip.probe.of_type("audio")
    assert (stream.codec, stream.sample_rate, stream.channels) == (codec, 48_000, 2)
    assert clip.audio_sha256 == (stream.payload_sha256,) and len(stream.packet_sha256) == stream.packet_count
    with av.open(str(clip.path)) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
    assert samples / 48_000 == pytest.approx(clip.duration, abs=0.03)  # encoder padding/priming aside

    # What a pipeline test does: copy the packets elsewhere, compare digests.
    copy = tmp_path / f"copy{suffix}"
    with av.open(str(clip.path)) as source, av.open(str(copy), "w") as out:
        target = out.add_stream_from_template(source.streams.audio[0])
        for packet in source.demux(audio=0):
            if packet.size:
                packet.stream = target
                out.mux(packet)
    assert probe(copy).of_type("audio")[0].payload_sha256 == clip.audio_sha256[0]


@pytest.mark.parametrize(
    "suffix, subtitles, codec", [(".mp4", "mov_text", "mov_text"), (".mkv", "srt", "srt"), (".mkv", "ass", "ssa")]
)
def test_subtitle_cues(tmp_path, scene, suffix, subtitles, codec):
    clip = write_clip(tmp_path / f"subs{suffix}", scene, subtitles=subtitles)
    (stream,) = clip.probe.of_type("subtitle")
    assert stream.codec == codec
    payloads = b"".join(clip.subtitle_payloads[0])
    assert all(text.encode() in payloads for text in SUBTITLE_TEXTS)
    with av.open(str(clip.path)) as container:
        texts = [cue.dialogue for packet in container.demux(subtitles=0) for cue in packet.decode()]
    assert [t.decode() for t in texts] == list(SUBTITLE_TEXTS)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov", ".webm"])
def test_chapters_and_metadata(tmp_path, scene, suffix):
    codec = "libvpx-vp9" if suffix == ".webm" else "libx264"
    clip = write_clip(
        tmp_path / f"chapters{suffix}",
        scene,
        codec=codec,
        chapters=[(0.0, "Reel one"), (0.25, "Reel two")],
        metadata={"title": "Test film", "tinct_source": "generated"},
        container_options={"movflags": "use_metadata_tags"} if suffix in (".mp4", ".mov") else None,
    )
    assert [(c.start, c.end, c.title) for c in clip.chapters] == [(0.0, 0.25, "Reel one"), (0.25, 0.5, "Reel two")]
    assert clip.probe.tag("title") == "Test film" and clip.probe.tag("tinct_source") == "generated"
    # mp4/mov also keep chapters as a text track, which PyAV lists as a codec-less data stream.
    assert len(clip.probe.of_type("data")) == (1 if suffix in (".mp4", ".mov") else 0)


def test_dropped_features_fail_loudly(tmp_path, scene):
    with pytest.raises(ValueError, match="tags \\['tinct_source'\\] dropped"):
        write_clip(tmp_path / "tags.mp4", scene, metadata={"tinct_source": "x"})
    with pytest.raises(ValueError, match="chapters"):
        write_clip(tmp_path / "chapters.avi", scene, codec="mpeg4", chapters=[(0.0, "One")])
    with pytest.raises(ValueError, match="timecode track needs mp4 or mov"):
        write_clip(tmp_path / "tc.mkv", scene, timecode="01:00:00:00")


@pytest.mark.parametrize("suffix", [".mov", ".mp4"])
def test_timecode_is_a_data_stream(tmp_path, scene, suffix):
    clip = write_clip(tmp_path / f"tc{suffix}", scene, timecode="01:00:00:00")
    (data,) = clip.probe.of_type("data")
    assert data.codec is None and data.metadata["timecode"] == "01:00:00:00" and data.packet_count == 1


@pytest.mark.parametrize(
    "name, options, decoded_format",
    [
        ("gray.mkv", {"codec": "ffv1", "pix_fmt": "gray"}, "gray"),
        ("gray.mp4", {"pix_fmt": "gray"}, "yuvj420p"),  # H.264 4:0:0 decodes as 4:2:0 with neutral chroma
        ("gray-hevc.mkv", {"codec": "libx265", "pix_fmt": "gray"}, "gray"),
        ("gray-in-yuv.mp4", {}, "yuv420p"),
    ],
)
def test_gray_clips_are_really_gray(tmp_path, scene, name, options, decoded_format):
    gray = list(gray_frames(scene))
    clip = write_clip(tmp_path / name, gray, **options)
    assert clip.pix_fmt == decoded_format
    native = decode_native(clip.path)
    if decoded_format.startswith("yuv"):
        assert all(np.all(frame[clip.height :] == 128) for frame in native)  # U and V planes below Y
    rgb = np.stack(decode_rgb(clip.path)).astype(int)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    error = np.abs(rgb[..., 0] - np.stack(gray))
    assert error.max() == 0 if options.get("codec") == "ffv1" else error.mean() < 3


def test_ten_bit_is_really_ten_bit(tmp_path, scene):
    # Values 1, 5, 9, 13 of 1023 have no 8-bit equivalent: they survive only if the file is 10-bit.
    levels = [np.full((48, 64), (4 * k + 1) << 6, np.uint16) for k in range(4)]
    clip = write_clip(tmp_path / "gray10.mkv", levels, codec="ffv1", pix_fmt="gray10le")
    assert clip.pix_fmt == "gray10le"
    assert [np.unique(frame).tolist() for frame in decode_native(clip.path)] == [[1], [5], [9], [13]]

    colour = write_clip(tmp_path / "colour10.mp4", scene, codec="libx265", pix_fmt="yuv420p10le")
    native = decode_native(colour.path)[0]
    assert native.dtype == np.uint16 and native.max() > 255 and np.mean(native % 4 != 0) > 0.5


def test_write_clip_rejects_what_it_cannot_encode(tmp_path, scene):
    with pytest.raises(ValueError, match="at least one frame"):
        write_clip(tmp_path / "empty.mp4", [])
    with pytest.raises(ValueError, match="3 pts for 12 frames"):
        write_clip(tmp_path / "pts.mp4", scene, pts=[0, 1, 2])
    with pytest.raises(ValueError, match="frames must be uint8/uint16"):
        write_clip(tmp_path / "float.mp4", [np.zeros((16, 16, 3), np.float32)])


# ------------------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("name", ["zero_byte.mp4", "not_a_video.mp4", "truncated.mp4"])
def test_unreadable_files_fail_on_open(bad, name):
    with pytest.raises(av.error.InvalidDataError) as caught:
        av.open(str(bad[name]))
    assert caught.value.errno == INVALID_DATA
    assert bad[name].name in str(caught.value)


def test_truncated_mkv_ends_early_without_an_error(bad):
    with av.open(str(bad["truncated.mkv"])) as container:
        stream = container.streams.video[0]
        assert container.duration == 1_000_000 and stream.metadata["DURATION"] == "00:00:01.000000000"
        assert stream.duration is None and stream.frames == 0
        pts = [frame.pts for frame in container.decode(video=0)]
        declared = container.duration / 1_000_000
    assert pts == [round(i * 1000 / 24) for i in range(9)]
    last_end = (pts[-1] + 1000 / 24) / 1000
    assert last_end < 0.5 * declared  # how a pipeline notices


def test_garbage_middle_fails_in_decode(bad):
    with av.open(str(bad["garbage_middle.mkv"])) as container:
        assert sum(1 for p in container.demux(video=0) if p.size) == 24
    with av.open(str(bad["garbage_middle.mkv"])) as container:
        decoded = []
        with pytest.raises(av.error.InvalidDataError, match="avcodec_send_packet"):
            for frame in container.decode(video=0):
                decoded.append(frame.pts)
    assert decoded == [round(i * 1000 / 24) for i in range(8)]


def test_no_video_has_no_video_stream(bad):
    with av.open(str(bad["no_video.mka"])) as container:
        assert container.streams.video == () and container.streams.audio[0].codec_context.name == "flac"
        with pytest.raises(IndexError):
            container.streams.video[0]
        with pytest.raises(IndexError):
            next(container.decode(video=0))


def test_unsupported_codec_has_no_decoder(bad):
    with av.open(str(bad["unsupported_codec.mkv"])) as container:
        stream = container.streams.video[0]
        assert stream.type == "video" and stream.codec_context is None and "<nocodec>" in repr(stream)
        packet = next(p for p in container.demux(stream) if p.size)
        with pytest.raises(av.error.DecoderNotFoundError, match="Decoder not found"):
            packet.decode()


def test_huge_dimensions_are_declared_before_decoding(bad):
    with av.open(str(bad["huge_dimensions.mkv"])) as container:
        context = container.streams.video[0].codec_context
        assert (context.width, context.height, context.pix_fmt) == (16000, 16000, "gray")
        with pytest.raises(av.error.InvalidDataError, match="avcodec_send_packet"):
            next(container.decode(video=0))


def test_invalid_dimensions_read_as_zero(bad):
    with av.open(str(bad["invalid_dimensions.mkv"])) as container:
        context = container.streams.video[0].codec_context
        assert (context.width, context.height, context.pix_fmt) == (0, 0, None)
        with pytest.raises(av.error.InvalidDataError, match="avcodec_open2"):
            next(container.decode(video=0))


def test_broken_timestamps_come_through_unchanged(bad):
    with av.open(str(bad["broken_timestamps.mkv"])) as container:
        assert [(p.pts, p.dts) for p in container.demux(video=0) if p.size] == [(p, p) for p in BROKEN_PTS]
    with av.open(str(bad["broken_timestamps.mkv"])) as container:
        assert tuple(frame.pts for frame in container.decode(video=0)) == BROKEN_PTS


def test_broken_audio_fails_only_in_audio_decode(bad):
    with av.open(str(bad["broken_audio.mkv"])) as container:
        assert len(list(container.decode(video=0))) == 12
    with av.open(str(bad["broken_audio.mkv"])) as container:
        failures = 0
        for packet in container.demux(audio=0):
            if packet.size:
                with pytest.raises(av.error.InvalidDataError, match="avcodec_send_packet"):
                    packet.decode()
                failures += 1
    assert failures == 6
