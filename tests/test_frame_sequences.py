"""Films scanned as numbered frames (worker.media.frame_sequences): real DPX, TIFF and PNG runs written by FFmpeg's own
encoders, through the real film job and CLI, with a tiny real model."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import OpenEXR
import pytest
import torch

from models.color import (
    BT709_CHROMATICITIES,
    YCBCR_WEIGHTS,
    bt709_from_primaries,
    cineon_to_linear,
    linear_to_srgb,
    log_luma_to_l_table,
    rgb_to_lab,
    srgb_to_linear,
    xyz_from_primaries,
    ycbcr_to_rgb_np,
)
from tests import media
from tests.media import gray_frames, luma_of, lumas, moving_scene, probe, read_frames, write_clip, write_frames
from tests.services import put_object
from tests.test_films import (
    _InterruptingColorizer,
    assert_shows_the_colour_chosen,
    colour_first_frame,
    is_coloured,
    run_cli,
)
from tools.local_services import s3_settings
from worker.cli import main
from worker.errors import BadInputError
from worker.films import FilmOptions, colorize_film, parts_folder
from worker.media.frame_sequences import (
    DPX_RATE_OFFSETS,
    dpx_timecode,
    find_sequence,
    folder_sequences,
    is_pattern,
    output_stem,
    parse_frame_rate,
)
from worker.media.frame_sink import FrameTarget, frames_layout
from worker.media.openexr import damage, read_exr_header
from worker.media.video_sink import EncodeOptions, plan_output
from worker.media.video_source import RUN_WINDOW_FRAMES, decode_frames, float_light, probe_film, with_log_choice
from worker.photos import plan_photos
from worker.settings import Settings
from worker.smoothing import SmoothingOptions
from worker.work import Runtime, as_stored

SIZE = (96, 64)
FIRST = 86400  # scanners number frames on from a reel's timecode or footage count, rarely from 0


def scene(frames: int, size: tuple[int, int] = SIZE, seed: int = 0) -> list[np.ndarray]:
    """Black-and-white frames at 16 bits, with low bits a depth cut would lose."""
    rng = np.random.default_rng(seed)
    return [(f.astype(np.uint16) << 8) | rng.integers(0, 256, f.shape, dtype=np.uint16)
            for f in gray_frames(moving_scene(frames, *size))]


def frame_times(path: Path) -> list[float]:
    video = probe(path).video
    return [float(p * video.time_base) for p in video.pts]


def test_a_folder_of_dpx_scans_is_one_film_at_the_rate_its_frames_declare(tmp_path, tiny_checkpoint):
    frames = [f >> 6 << 6 for f in scene(12)]  # 10-bit values: the scan's own
    write_frames(tmp_path / "scans" / "reel1", frames, rate=18.0)  # a silent film, scanned at its own speed
    photo = tmp_path / "scans" / "still.png"
    av.VideoFrame.from_ndarray((frames[0] >> 8).astype(np.uint8), format="gray").to_image().save(photo)
    out = tmp_path / "out"
    # Segments of a quarter second: the film is decoded in four pieces, each found in the run by seeking.
    assert run_cli(tiny_checkpoint, str(tmp_path / "scans"), "-o", str(out), "--codec", "ffv1",
                   "--segment-seconds", "0.25") == 0
    film = out / "reel1" / "scan.mkv"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["reel1", "reel1/scan.mkv", "still.png"]
    assert probe(film).pix_fmt == "yuv444p10le"  # a 10-bit scan stays 10-bit in an FFV1 master
    assert np.allclose(frame_times(film), [i / 18 for i in range(12)], atol=1e-3)
    for written, kept in zip(frames, lumas(film), strict=True):
        np.testing.assert_array_equal(kept, written >> 6)  # bit for bit
    assert is_coloured(film)


@pytest.mark.parametrize("name, pattern", [("%04d.tif", "%04d.tif"), ("%04d.tif", "####.tif"),
                                           ("frame.%d.png", "frame.%d.png")])
def test_a_pattern_names_a_tiff_or_png_run_and_frame_rate_sets_its_timing(tmp_path, tiny_checkpoint, name, pattern):
    codec, pix_fmt = ("tiff", "gray16le") if name.endswith(".tif") else ("png", "gray16be")
    frames = scene(8)
    write_frames(tmp_path / "reel2", frames, name=name, first=1, codec=codec, pix_fmt=pix_fmt)
    out = tmp_path / "out"
    assert run_cli(tiny_checkpoint, str(tmp_path / "reel2" / pattern), "-o", str(out), "--codec", "ffv1",
                   "--frame-rate", "23.976") == 0
    film = out / ("reel2.mkv" if name.startswith("%") else "frame.mkv")  # named by the prefix, else the folder
    assert film.exists() and probe(film).pix_fmt == "yuv444p16le"
    assert np.allclose(frame_times(film), [i * 1001 / 24000 for i in range(8)], atol=1e-3)
    for written, kept in zip(frames, lumas(film), strict=True):
        np.testing.assert_array_equal(kept, written)


def test_a_run_plays_at_24_fps_unless_its_frames_or_the_user_say_otherwise(tmp_path, tiny_checkpoint, caplog):
    # FFmpeg writes no industry headers: where a scanner's film header keeps its rate, its frames keep pixels.
    for path in write_frames(tmp_path / "reel3", scene(4)[:2], industry_headers=False):
        data = bytearray(path.read_bytes())
        struct.pack_into("<f" if data[:4] == b"XPDS" else ">f", data, DPX_RATE_OFFSETS["film header"], 25.0)
        path.write_bytes(bytes(data))
    write_frames(tmp_path / "reel3", scene(4)[2:], first=FIRST + 2)  # rate unset
    output = tmp_path / "reel3.mp4"
    assert run_cli(tiny_checkpoint, str(tmp_path / "reel3" / "scan_%07d.dpx"), "-o", str(output)) == 0
    assert np.allclose(frame_times(output), [i / 24 for i in range(4)], atol=1e-3)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("its frames do not say their frame rate; it plays at 24 fps (--frame-rate sets another)" in w
               for w in warnings), warnings


def test_a_run_with_missing_frames_fails_by_number_and_writes_nothing(tmp_path, tiny_checkpoint, caplog):
    paths = write_frames(tmp_path / "scans" / "reel1", scene(12), rate=24.0)
    for gone in (3, 5, 6, 7, 8, 9, 10):
        paths[gone].unlink()
    out = tmp_path / "out"
    assert run_cli(tiny_checkpoint, str(tmp_path / "scans"), "-o", str(out)) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"{tmp_path / 'scans' / 'reel1' / 'scan_%07d.dpx'}: 7 of frames 86400-86411 are missing "
                      "(86403, 86405, 86406, 86407, 86408 and 2 more); a film's frames must be contiguous, as a gap "
                      "would move every later frame's time"]
    assert not out.exists() or list(out.rglob("*")) == []


@pytest.mark.parametrize("damage, reason", [
    ("truncated", "truncated: 3000 bytes of the"),
    ("resized", "this frame is 48x32, the film's first is 96x64; a film's frames must all be one size"),
])
def test_a_damaged_dpx_frame_is_refused_by_its_file_before_any_work(tmp_path, tiny_checkpoint, caplog, damage,
                                                                     reason):
    paths = write_frames(tmp_path / "reel1", scene(8), rate=24.0)
    if damage == "truncated":  # a copy that stopped halfway
        paths[5].write_bytes(paths[5].read_bytes()[:3000])
    else:  # one frame rescanned at another resolution
        write_frames(tmp_path / "rescan", scene(1, (48, 32)), first=FIRST + 5, rate=24.0)
        os.replace(tmp_path / "rescan" / paths[5].name, paths[5])
    output = tmp_path / "out" / "reel1.mkv"
    assert run_cli(tiny_checkpoint, str(tmp_path / "reel1" / "scan_%07d.dpx"), "-o", str(output)) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"{paths[5]}: {reason}"), errors
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_rescanned_frame_or_another_rate_makes_another_source(tmp_path):
    # The resume manifest compares identities: segments coloured from the old frames or timing must not be reused.
    paths = write_frames(tmp_path / "reel1", scene(4), rate=24.0)
    pattern = str(tmp_path / "reel1" / "scan_%07d.dpx")
    before = probe_film(pattern, 1 << 30).identity()
    assert probe_film(pattern, 1 << 30).identity() == before
    assert probe_film(pattern, 1 << 30, Fraction(25)).identity() != before
    stat = paths[2].stat()
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert probe_film(pattern, 1 << 30).identity() != before


def test_a_folder_with_a_percent_sign_in_its_name_is_read(tmp_path, tiny_checkpoint):
    # FFmpeg reads a whole path as a pattern; the folder's own % must reach it doubled.
    write_frames(tmp_path / "100% nitrate", scene(3), rate=24.0)
    film = probe_film(tmp_path / "100% nitrate" / "scan_%07d.dpx", 1 << 30)
    assert film.frames == 3 and film.sequence.first == FIRST


def test_folder_runs_are_grouped_by_prefix_and_padding(tmp_path):
    names = ["a_0001.dpx", "a_0002.dpx", "b_8.dpx", "b_9.dpx", "b_10.dpx", "c_01.dpx", "c_2.dpx", "D_0.DPX",
             "D_1.DPX", "notes.txt", "x_0001.tif"]
    runs, rest = folder_sequences(tmp_path, names)
    assert runs[0] == str(tmp_path / "D_%d.DPX") and runs[1:3] == [str(tmp_path / "a_%04d.dpx"),
                                                                   str(tmp_path / "b_%d.dpx")]
    assert isinstance(runs[3], BadInputError) and "mix padded and unpadded lengths (1, 2 digits)" in str(runs[3])
    assert rest == ["notes.txt", "x_0001.tif"]  # TIFF runs are photos until named by a pattern


def test_patterns_names_and_rates():
    assert is_pattern("reel/scan_%07d.dpx") and is_pattern("reel/####.tif") and not is_pattern("reel/scan.dpx")
    assert output_stem("reel1/A001_C002_%07d.dpx") == "A001_C002" and output_stem("scans/reel1/%06d.tif") == "reel1"
    assert parse_frame_rate("23.976") == Fraction(24000, 1001) and parse_frame_rate("30000/1001") == Fraction(
        30000, 1001)
    assert parse_frame_rate("18") == 18 and parse_frame_rate("16.5") == Fraction(33, 2)
    for bad in ("0", "fast", "2000", "1/0"):
        with pytest.raises(ValueError):
            parse_frame_rate(bad)


def test_a_pattern_that_matches_nothing_names_itself(tmp_path):
    with pytest.raises(BadInputError, match=r"scan_%07d\.dpx: no frames match this pattern$"):
        find_sequence(tmp_path / "scan_%07d.dpx")


@pytest.mark.parametrize("output", ["one.png", "one.mkv", "out"])
def test_one_dpx_frame_named_alone_is_told_to_name_its_run(tmp_path, output):
    paths = write_frames(tmp_path / "reel1", scene(2), rate=24.0)
    plan = plan_photos([paths[1]], tmp_path / output)
    assert plan.tasks == [] and plan.films == []
    run = tmp_path / "reel1" / "scan_%07d.dpx"
    assert [f.reason for f in plan.failures] == [
        f"{paths[1]}: one frame of a film; name the run of frames to colorize it ({run})"]
    lone = paths[1].rename(tmp_path / "still.dpx")  # no number to be a run by (this raised IndexError)
    assert [f.reason for f in plan_photos([lone], tmp_path / output).failures] == [
        f"{lone}: one frame of a film; Tinct colours such frames as the runs of a film, named by the printf pattern "
        "of their numbered names (scan_%07d.dpx)"]


def test_a_folder_holding_one_run_may_be_given_a_film_name(tmp_path, tiny_checkpoint, capsys):
    write_frames(tmp_path / "reel1", scene(4), rate=24.0)
    (tmp_path / "reel1" / "scanner-log.xml").write_text("<scan/>")  # scanners leave notes beside the frames
    assert run_cli(tiny_checkpoint, str(tmp_path / "reel1"), "-o", str(tmp_path / "reel1.mov")) == 0
    assert probe(tmp_path / "reel1.mov").video.frame_count == 4
    write_frames(tmp_path / "reel1", scene(2), name="pickup_%04d.dpx", first=1, rate=24.0)
    assert run_cli(tiny_checkpoint, str(tmp_path / "reel1"), "-o", str(tmp_path / "both.mov")) == 2
    assert (f"{tmp_path / 'reel1'} holds 2 runs of frames; name one by its pattern, or give an output folder for "
            "all of them") in capsys.readouterr().err
    assert not (tmp_path / "both.mov").exists()


def log_scan(folder: Path, frames: int = 2) -> list[Path]:
    """A run of 10-bit log DPX frames, printing density as their headers say, codes from black (95) to white (685)."""
    codes = [(f.astype(np.float64) / 255 * 590 + 95).astype(np.uint16) << 6
             for f in gray_frames(moving_scene(frames, 96, 64))]
    paths = write_frames(folder, codes, rate=24.0)
    for path in paths:
        data = bytearray(path.read_bytes())
        data[801:803] = b"\x01\x01"  # image element 1's transfer and colorimetry: printing density
        path.write_bytes(bytes(data))
    return paths


def test_a_log_scan_is_said_to_be_log_and_its_frames_out_say_so_too(tmp_path, caplog, tiny_checkpoint):
    log_scan(tmp_path / "reel1")
    with caplog.at_level("INFO"):
        film = probe_film(tmp_path / "reel1" / "scan_%07d.dpx", 1 << 30)
    assert film.video.log_encoded
    assert "its frames are log-encoded (printing density), as scans for grading are: read as Cineon log" in caplog.text
    # Frames out keep the scan's log encoding, and say so: a grading or conform tool reads the header to know.
    assert run_cli(tiny_checkpoint, str(tmp_path / "reel1"), "-o", str(tmp_path / "colour" / "c_%07d.dpx")) == 0
    written = [(tmp_path / "colour" / f"c_{FIRST + i:07d}.dpx").read_bytes() for i in range(2)]
    assert [frame[801:803] for frame in written] == [b"\x01\x01"] * 2


def test_a_scan_is_read_as_log_or_not_as_asked_whatever_its_headers_say(tmp_path, tiny_checkpoint, caplog):
    # A TIFF run has nowhere to say it is log, and some DPX scanners do not fill the field in (or fill it wrongly).
    codes = [(f.astype(np.float64) / 255 * 590 + 95).astype(np.uint16) << 6
             for f in gray_frames(moving_scene(2, 96, 64))]
    write_frames(tmp_path / "tiff", codes, name="scan_%07d.tif", codec="tiff", pix_fmt="gray16le")
    run = tmp_path / "tiff" / "scan_%07d.tif"
    film = probe_film(run, 1 << 30)
    assert not film.video.log_encoded and with_log_choice(film, "cineon").video.log_encoded
    layout = frames_layout(with_log_choice(film, "cineon").video, FrameTarget.parse(str(tmp_path / "o_%07d.dpx")))
    frame = next(decode_frames(with_log_choice(film, "cineon"), layout.frame, 0, 1))
    np.testing.assert_allclose(frame.L, log_luma_to_l_table(16)[frame.luma.astype(np.int64)], atol=1e-4)
    out = tmp_path / "colour" / "c_%07d.dpx"
    assert run_cli(tiny_checkpoint, str(run), "-o", str(out), "--log", "cineon") == 0
    assert (tmp_path / "colour" / f"c_{FIRST:07d}.dpx").read_bytes()[801:803] == b"\x01\x01"  # the copy says log
    log_scan(tmp_path / "dpx")  # headers that say printing density, read as they look when asked
    assert not with_log_choice(probe_film(tmp_path / "dpx" / "scan_%07d.dpx", 1 << 30), "none").video.log_encoded
    source = write_clip(tmp_path / "reel.mkv", [c >> 8 for c in codes])
    with pytest.raises(BadInputError, match="is a film file; only a run of frames"):
        with_log_choice(probe_film(source.path, 1 << 30), "cineon")
    # A folder of scans may hold a film file too: the CLI reads it as it is, and says so.
    assert run_cli(tiny_checkpoint, str(source.path), "-o", str(tmp_path / "reel-colour.mkv"), "--log", "cineon") == 0
    assert f"{source.path}: a film file is read as it is; --log cineon applies to runs of frames" in caplog.text


def openexr_plate(folder: Path, frames: int = 2, half: bool = False) -> tuple[list[Path], list[np.ndarray]]:
    """A VFX plate: a run of OpenEXR frames of linear light (R = G = B), the light of a moving scene shown in sRGB,
    with a highlight four times display white in its top-left corner (400 of 6,144 pixels); in half floats (as most
    plates are, and as FFmpeg then decodes them, f16) or whole ones. Returns the frames and their light as stored
    (read back from the first plane: FFmpeg rounds to half floats its own way)."""
    folder.mkdir(parents=True, exist_ok=True)
    lights = []
    for index, shown in enumerate(gray_frames(moving_scene(frames, 96, 64))):
        light = srgb_to_linear(torch.from_numpy(shown.astype(np.float32) / 255)).numpy()
        light[:20, :20] = 4.0
        path = folder / f"plate_{index + 1:04d}.exr"
        with av.open(str(path), "w", format="image2") as out:
            stream = out.add_stream("exr", rate=24, options={"format": "half"} if half else {})
            stream.width, stream.height, stream.pix_fmt = 96, 64, "gbrpf32le"
            picture = av.VideoFrame(96, 64, "gbrpf32le")
            for plane in picture.planes:
                np.frombuffer(plane, np.float32).reshape(64, -1)[:, :96] = light
            out.mux(stream.encode(picture))
            out.mux(stream.encode())
        with av.open(str(path)) as stored:
            plane = next(stored.decode(video=0)).planes[0]
            dtype = np.dtype("<f2" if half else "<f4")
            lights.append(np.frombuffer(plane, dtype).reshape(64, -1)[:, :96].astype(np.float32))
    return sorted(folder.glob("plate_*.exr")), lights


@pytest.mark.parametrize("half", [True, False])
def test_a_run_of_openexr_frames_is_read_as_linear_light_through_the_srgb_curve(tmp_path, caplog, tiny_checkpoint,
                                                                                half):
    """An OpenEXR plate holds light, not codes: read as display codes, as before, its mid-grey (light 0.18) was code
    0.18, a dark, flat picture coloured as such. Its lightness is now the light through the sRGB curve, highlights
    above display white shown white (and said to be), and its copy is display-referred and tagged so."""
    paths, lights = openexr_plate(tmp_path / "vfx", half=half)
    with caplog.at_level("INFO"):
        film = probe_film(tmp_path / "vfx" / "plate_%04d.exr", 1 << 30)
    assert film.video.scene_linear and (film.video.color_trc, film.video.color_primaries) == (13, 1)  # sRGB, BT.709
    assert "its frames hold linear light (float, as OpenEXR's): read through the sRGB curve" in caplog.text
    assert film.video.highlights == pytest.approx(400 / 6144)
    layout = frames_layout(film.video, FrameTarget.parse(str(tmp_path / "o_%04d.tif")))
    assert layout.frame.bit_depth == 16
    for frame, light in zip(decode_frames(film, layout.frame, 0, 2), lights, strict=True):
        shown = linear_to_srgb(torch.from_numpy(light).clamp(0, 1)).numpy() * 65535
        assert np.abs(frame.luma.astype(np.int64) - np.rint(shown)).max() <= 1
        assert (frame.luma[:20, :20] == 65535).all()
    with pytest.raises(BadInputError, match="holds linear light .*, not log codes"):
        with_log_choice(film, "cineon")
    # A folder of plates is a film, as one of DPX scans is; its copy says it is sRGB, as its codes are.
    plan = plan_photos([tmp_path / "vfx"], tmp_path / "colour")
    assert [str(task.source) for task in plan.films] == [str(tmp_path / "vfx" / "plate_%04d.exr")]
    assert run_cli(tiny_checkpoint, str(tmp_path / "vfx"), "-o", str(tmp_path / "colour"), "--log", "cineon") == 0
    assert "its frames hold linear light, read through the sRGB curve; --log cineon applies to runs" in caplog.text
    assert "6.5% of a sampled frame is brighter than display white (1.0) and comes out white in a display-referred " \
           "copy, its detail lost; colour it into OpenEXR frames" in caplog.text
    copy = tmp_path / "colour" / "plate.mkv"
    assert (probe(copy).color_trc, probe(copy).color_primaries) == ("iec61966-2-1", "bt709") and is_coloured(copy)
    assert run_cli(tiny_checkpoint, str(paths[0]), "-o", str(tmp_path / "one")) == 1  # one frame alone: name its run


def test_a_plate_coloured_into_openexr_frames_keeps_its_own_light_highlights_too(tmp_path, tiny_checkpoint, caplog):
    """A plate comes back as a plate: linear light in half floats, each pixel's colour scaled to the plate's own
    luminance, the highlight at four times display white too (its display-referred copy is white there)."""
    _, lights = openexr_plate(tmp_path / "vfx", half=True)
    assert run_cli(tiny_checkpoint, str(tmp_path / "vfx"), "-o", str(tmp_path / "colour" / "plate_%04d.exr")) == 0
    assert "brighter than display white" not in caplog.text  # kept, not lost
    for number, light in enumerate(lights, start=1):
        with av.open(str(tmp_path / "colour" / f"plate_{number:04d}.exr")) as copy:
            frame = next(copy.decode(video=0))
        assert frame.format.name == "gbrpf16le"  # half floats, as the plate's
        rgb = float_light(frame)
        luminance = rgb @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
        np.testing.assert_allclose(luminance, light, rtol=2e-3, atol=2e-4)  # to the rounding of half floats
        assert np.abs(luminance[:20, :20] - 4.0).max() < 0.01
        chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
        assert (chroma > 0.05 * luminance).mean() > 0.2  # coloured, not gray


def test_a_log_scan_coloured_into_openexr_frames_is_its_linear_light(tmp_path, tiny_checkpoint):
    """Cineon log codes decoded as the light they stand for: reference white 685 is 1.0, and a frame's luminance
    follows its codes' light (to the non-constant luminance of the colour added)."""
    log_scan(tmp_path / "reel1", frames=1)
    assert run_cli(tiny_checkpoint, str(tmp_path / "reel1"), "-o", str(tmp_path / "colour" / "c_%07d.exr")) == 0
    with av.open(str(tmp_path / "colour" / f"c_{FIRST:07d}.exr")) as copy:
        rgb = float_light(next(copy.decode(video=0)))
    codes = read_frames(tmp_path / "reel1", [f"scan_{FIRST:07d}.dpx"])[0][..., 1]
    light = cineon_to_linear(torch.from_numpy(codes)).numpy()
    luminance = rgb @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    middle = light > 0.01  # the scene is dark: its light 0.009-0.05 (codes 300-480)
    assert middle.mean() > 0.3
    assert np.median(np.abs(luminance[middle] / light[middle] - 1)) < 0.1


# ACES2065-1's primaries (AP0) and white, as an ACES plate's chromaticities attribute names them, and the matrix from
# its linear light to BT.709's with Bradford adaptation of its white to D65, as the ACES documentation publishes it.
AP0_CHROMATICITIES = (0.7347, 0.2653, 0.0, 1.0, 0.0001, -0.077, 0.32168, 0.33767)
AP0_TO_BT709 = np.array([[2.52169, -1.13413, -0.38756], [-0.27648, 1.37272, -0.09624], [-0.01538, -0.15298, 1.16835]])


def library_plate(folder: Path, light: np.ndarray, frames: int = 2, chromaticities=None, tiled: bool = False,
                  parts: bool = False, comments: str | None = None, attributes=None) -> list[Path]:
    """A plate written by the OpenEXR library, the format's own writer (not FFmpeg's): half floats of ``light``
    ((H, W) written as Y alone, (H, W, 3) as R, G, B), scan lines or 32-pixel tiles, one part or a beauty with a
    depth part, naming ``chromaticities`` and carrying ``comments`` if given, and ``attributes(position)`` (a dict
    of header attributes for the frame at ``position``) if given."""
    folder.mkdir(parents=True, exist_ok=True)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    if comments is not None:
        header["comments"] = comments
    if tiled:
        tiles = OpenEXR.TileDescription()
        tiles.xSize, tiles.ySize, tiles.mode = 32, 32, OpenEXR.ONE_LEVEL
        header.update(type=OpenEXR.tiledimage, tiles=tiles)
    if chromaticities is not None:
        header["chromaticities"] = chromaticities
    channels = {"RGB" if light.ndim == 3 else "Y": light.astype(np.float16)}
    paths = [folder / f"plate_{number:04d}.exr" for number in range(1, frames + 1)]
    for position, path in enumerate(paths):
        if attributes is not None:
            header.update(attributes(position))
        if parts:
            depth = {"Z": np.ones(light.shape[:2], np.float32)}
            with OpenEXR.File([OpenEXR.Part(dict(header), channels, "beauty"),
                               OpenEXR.Part(dict(header), depth, "depth")]) as f:
                f.write(str(path))
        else:
            with OpenEXR.File(header, channels) as f:
                f.write(str(path))
    return paths


# ACEScg's (AP1, the working space compositing packages render in), and its matrix to BT.709 as published beside it.
AP1_CHROMATICITIES = (0.713, 0.293, 0.165, 0.830, 0.128, 0.044, 0.32168, 0.33767)
AP1_TO_BT709 = np.array([[1.70505, -0.62179, -0.08326], [-0.13026, 1.14080, -0.01055], [-0.02400, -0.12897, 1.15297]])


def test_bt709_from_primaries_is_the_published_aces_matrix():
    np.testing.assert_allclose(bt709_from_primaries(AP0_CHROMATICITIES), AP0_TO_BT709, atol=1e-4)
    np.testing.assert_allclose(bt709_from_primaries(AP1_CHROMATICITIES), AP1_TO_BT709, atol=1e-4)
    np.testing.assert_allclose(bt709_from_primaries(BT709_CHROMATICITIES), np.eye(3), atol=1e-9)


@pytest.mark.parametrize("layout", ["scan lines", "tiles", "gray", "two parts"])
def test_plates_the_openexr_library_writes_are_read_as_their_light(tmp_path, caplog, layout):
    """FFmpeg's encoder wrote every plate the other tests read: these are the format's own writer's, in the layouts
    compositing packages write (tiles; a Y channel alone; a beauty with its depth beside it, of which the first part
    alone is read, and said to be)."""
    light = np.tile(np.linspace(0.0, 2.0, 96, dtype=np.float32), (64, 1))
    stored = light.astype(np.float16).astype(np.float32)
    library_plate(tmp_path / "vfx", light if layout == "gray" else np.repeat(light[..., None], 3, axis=2),
                  tiled=layout == "tiles", parts=layout == "two parts")
    with caplog.at_level("INFO"):
        film = probe_film(tmp_path / "vfx" / "plate_%04d.exr", 1 << 30)
    assert film.video.scene_linear and film.frames == 2 and film.plate_chromaticities is None
    assert ("multi-part OpenEXR frames (parts beauty, depth): the first part, beauty, alone is read and coloured; "
            "the others are left out of the copy" in caplog.text) == (layout == "two parts")
    layout16 = frames_layout(film.video, FrameTarget.parse(str(tmp_path / "o_%04d.tif"))).frame
    for frame in decode_frames(film, layout16, 0, 2):
        shown = linear_to_srgb(torch.from_numpy(stored).clamp(0, 1)).numpy() * 65535
        assert np.abs(frame.luma.astype(np.int64) - np.rint(shown)).max() <= 1


def plate_attributes(position: int) -> dict:
    """What a camera and a compositing package write into a plate frame's header: its rate and timecode (the third
    frame from another take), its film's keycode, the owner, the capture date and a package's own attribute."""
    timecode = OpenEXR.TimeCode()
    timecode.hours, timecode.minutes, timecode.seconds, timecode.frame = (1, 0, 0, position) if position < 2 else (
        2, 0, 30, 4)
    keycode = OpenEXR.KeyCode(1, 21, 123456, 1000 + position // 16, position % 16 * 4, 4, 64)
    return {"framesPerSecond": Fraction(25), "timeCode": timecode, "keyCode": keycode, "owner": "A Film Archive",
            "capDate": "2026:03:02 10:11:12", "vfx/shot": "rl1_sc12_0010",
            "com.example.camera.lens.serialNumber": "LN-1234"}  # a name over 31 bytes: the file says it has those


def test_a_plates_rate_timecode_and_what_it_says_of_its_picture_go_with_its_copy(tmp_path, tiny_checkpoint):
    """A plate's frames say their rate and timecode (framesPerSecond, timeCode), which a run of OpenEXR frames had
    been read without (at 24 fps with a warning, and no timecode), and what else a camera and a compositing package
    keep in them (keycode, owner, capture date, a package's own), which its copy had lost: the copy's frames had
    FFmpeg's layout attributes alone. Now the run plays at its rate from its timecode (a DPX copy says both), and each
    OpenEXR copy carries its plate frame's attributes (its own keycode and timecode), the plate's comments with the
    provenance after them, read back by the OpenEXR library."""
    light = np.tile(np.linspace(0.05, 1.5, 96, dtype=np.float32), (64, 1))
    plates = library_plate(tmp_path / "vfx", np.repeat(light[..., None], 3, axis=2), frames=3,
                           comments="plate A, take 2", attributes=plate_attributes)
    run = find_sequence(tmp_path / "vfx" / "plate_%04d.exr")
    assert (run.frame_rate, run.rate_source, run.timecode) == (25, "its OpenEXR header", "01:00:00:00")
    out = tmp_path / "colour"
    assert run_cli(tiny_checkpoint, str(tmp_path / "vfx" / "plate_%04d.exr"), "-o", str(out / "c_%04d.exr")) == 0
    assert run_cli(tiny_checkpoint, str(tmp_path / "vfx" / "plate_%04d.exr"), "-o", str(out / "d_%04d.dpx")) == 0
    for position, plate in enumerate(plates, start=1):
        with OpenEXR.File(str(plate)) as source, OpenEXR.File(str(out / f"c_{position:04d}.exr")) as copy:
            before, after = source.header(), copy.header()
            for name in ("owner", "capDate", "vfx/shot", "com.example.camera.lens.serialNumber", "framesPerSecond"):
                assert after[name] == before[name], name
            assert after["keyCode"].count == before["keyCode"].count and after["keyCode"].perfOffset == before[
                "keyCode"].perfOffset
            fields = ("hours", "minutes", "seconds", "frame", "dropFrame")
            assert [getattr(after["timeCode"], f) for f in fields] == [getattr(before["timeCode"], f) for f in fields]
            assert re.fullmatch(r"plate A, take 2 \[colorized by Tinct \S+, model \S+\]", after["comments"])
    assert OpenEXR.File(str(out / "c_0003.exr")).header()["timeCode"].hours == 2  # the take's own
    # The copies hold a name over 31 bytes, and say so (OpenEXR's long-names flag), as the format requires of them.
    assert struct.unpack_from("<I", (out / "c_0001.exr").read_bytes(), 4)[0] & 0x400
    copy = find_sequence(out / "d_%04d.dpx")
    assert (copy.frame_rate, copy.timecode) == (25, "01:00:00:00")


def test_a_deep_openexr_run_is_refused_by_its_first_frame(tmp_path):
    (tmp_path / "vfx").mkdir()
    samples = np.empty((4, 4), dtype=object)
    for y, x in np.ndindex(4, 4):
        samples[y, x] = np.array([1.0, 2.0], dtype=np.float32)
    for number in (1, 2):
        with OpenEXR.File({"type": OpenEXR.deepscanline, "compression": OpenEXR.ZIPS_COMPRESSION},
                          {"Z": samples}) as f:
            f.write(str(tmp_path / "vfx" / f"deep_{number:04d}.exr"))
    with pytest.raises(BadInputError, match=r"deep_0001.exr: a deep OpenEXR frame \(several samples a pixel\), which "
                       r"cannot be decoded here: flatten the run first"):
        probe_film(tmp_path / "vfx" / "deep_%04d.exr", 1 << 30)


def left_unfinished(path: Path) -> None:
    """The OpenEXR frame ``path`` as a writer that stopped leaves it: its chunk tables still the zeros written
    first, to be filled in as the file is closed."""
    data = bytearray(path.read_bytes())
    chunks = read_exr_header(bytes(data)).chunks
    tables_end = chunks.start + 8 * sum(chunks.counts)
    data[chunks.start:tables_end] = bytes(tables_end - chunks.start)
    path.write_bytes(bytes(data))


CUT_SHORT = r"truncated: \d+ bytes of the \d+ its chunk tables lay out"  # inside its last chunk


@pytest.mark.parametrize("writer, fault, reason", [
    ("ffmpeg", "half copied", r"truncated: \d+ bytes, and its chunk tables have a chunk start at byte \d+"),
    ("tiles", "one byte short", CUT_SHORT),
    ("two parts", "one byte short", CUT_SHORT),
    ("long headers", "one byte short", CUT_SHORT),
    ("ffmpeg", "unfinished", r"unfinished: its chunk tables were never filled in \(the program writing it stopped "
                             r"before the end\)"),
], ids=["half-copied", "tiled-one-byte-short", "multi-part-one-byte-short", "headers-over-64-KB-one-byte-short",
        "unfinished"])
def test_an_openexr_frame_cut_short_or_left_unfinished_is_refused_by_its_file_before_any_work(
        tmp_path, tiny_checkpoint, caplog, writer, fault, reason):
    """FFmpeg decodes such a frame without a word, the chunks it lacks black: a half-copied plate was coloured and
    written out as if whole. An OpenEXR frame says no file size, as a DPX frame does; its chunk tables say where its
    chunks are, and the last one its own length (after headers of any length: notes or a preview image in them can
    take them past the first bytes read)."""
    if writer == "ffmpeg":
        paths, _ = openexr_plate(tmp_path / "vfx", frames=4)
    else:
        light = np.tile(np.linspace(0.0, 2.0, 96, dtype=np.float32), (64, 1))
        paths = library_plate(tmp_path / "vfx", np.repeat(light[..., None], 3, axis=2), frames=4,
                              tiled=writer == "tiles", parts=writer == "two parts",
                              comments="a grader's notes " * 8000 if writer == "long headers" else None)
    data = paths[2].read_bytes()
    if fault == "unfinished":
        left_unfinished(paths[2])
    else:
        paths[2].write_bytes(data[: len(data) // 2 if fault == "half copied" else len(data) - 1])
    assert run_cli(tiny_checkpoint, str(tmp_path / "vfx" / "plate_%04d.exr"), "-o", str(tmp_path / "out" / "p.mkv"),
                   "--recolor") == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and re.match(re.escape(f"{paths[2]}: ") + reason, errors[0]), errors
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("other", ["size", "primaries"])
def test_an_openexr_frame_of_another_size_or_in_other_primaries_is_refused_by_its_file_before_any_work(
        tmp_path, other):
    """A plate re-rendered at another resolution, or one frame of it exported in ACES among BT.709 frames: found by
    the frame's header, not hours into the run (and a frame in other primaries not at all before)."""
    light = np.repeat(np.tile(np.linspace(0.0, 2.0, 96, dtype=np.float32), (64, 1))[..., None], 3, axis=2)
    paths = library_plate(tmp_path / "vfx", light, frames=6)
    redone = library_plate(tmp_path / "redone", light[::2, ::2] if other == "size" else light, frames=6,
                           chromaticities=AP0_CHROMATICITIES if other == "primaries" else None)
    os.replace(redone[4], paths[4])
    reason = ("this frame is 48x32, the film's first is 96x64; a film's frames must all be one size" if other == "size"
              else "its primaries (red, green, blue and white at (0.7347, 0.2653), (0, 1), (0.0001, -0.077), "
                   "(0.3217, 0.3377)) are not its run's first frame's ((0.64, 0.33), (0.3, 0.6), (0.15, 0.06), "
                   "(0.3127, 0.329)): a run's frames must all be in one set of primaries")
    with pytest.raises(BadInputError) as refused:
        probe_film(tmp_path / "vfx" / "plate_%04d.exr", 1 << 30)
    assert str(refused.value) == f"{paths[4]}: {reason}"


def test_a_stored_openexr_frame_cut_short_is_refused_by_its_key_as_its_window_is_fetched(s3_server, tmp_path):
    """A compressed frame's stored size does not say whether it is whole, and reading each frame's chunk tables
    from the store before any work would take an hour of requests on a feature: a window's frames are checked once
    fetched, before any of them is read."""
    s3_server.make_bucket("plates")
    paths, _ = openexr_plate(tmp_path / "vfx", frames=8)
    for path in paths:
        put_object(s3_server, f"s3://plates/sh010/{path.name}", path.read_bytes())
    put_object(s3_server, f"s3://plates/sh010/{paths[6].name}", paths[6].read_bytes()[:10000])
    rt = Runtime(s3_settings(s3_server, work_dir=tmp_path / "work"))
    film = rt.film("s3://plates/sh010/plate_%04d.exr")  # its samples (frames 1, 3, 5, 6 and 8) are whole
    decoded = decode_frames(film, plan_output(film.video, EncodeOptions("ffv1")).frame, 0, film.frames)
    with pytest.raises(BadInputError) as refused:
        next(decoded)
    assert str(as_stored("s3://plates/sh010/plate_%04d.exr", Path(film.path), refused.value)).startswith(
        "s3://plates/sh010/plate_0007.exr: truncated: 10000 bytes")
    assert list((tmp_path / "work" / "frames").iterdir()) == []


@pytest.mark.parametrize("levels", ["ONE_LEVEL", "MIPMAP_LEVELS", "RIPMAP_LEVELS"])
@pytest.mark.parametrize("rounding", ["ROUND_DOWN", "ROUND_UP"])
def test_an_openexr_files_chunk_tables_are_read_where_and_as_long_as_its_writer_laid_them_out(tmp_path, levels,
                                                                                              rounding):
    """Against the OpenEXR library's own tables: tiles of each level mode and rounding on a size that halves
    unevenly. The first chunk it writes follows the tables, so their length is where the smallest offset is (the
    Python binding writes the full-size level alone, and leaves the others' offsets zero: unfinished)."""
    tiles = OpenEXR.TileDescription()
    tiles.xSize, tiles.ySize, tiles.mode, tiles.roundingMode = 16, 8, getattr(OpenEXR, levels), getattr(OpenEXR,
                                                                                                      rounding)
    with OpenEXR.File({"type": OpenEXR.tiledimage, "tiles": tiles, "compression": OpenEXR.ZIP_COMPRESSION},
                      {"RGB": np.ones((33, 97, 3), np.float16)}) as f:
        f.write(str(tmp_path / "t.exr"))
    data = (tmp_path / "t.exr").read_bytes()
    chunks = read_exr_header(data).chunks
    offsets = struct.unpack_from(f"<{sum(chunks.counts)}Q", data, chunks.start)
    assert min(offset for offset in offsets if offset) == chunks.start + 8 * sum(chunks.counts)
    with open(tmp_path / "t.exr", "rb") as f:
        found = damage(f, chunks, len(data))
    assert (found is None) == (levels == "ONE_LEVEL")


def test_an_aces_plate_is_read_in_its_primaries_and_comes_back_in_them_saying_so(tmp_path, tiny_checkpoint, caplog):
    """An ACES plate's values are AP0 light: read as BT.709's, as FFmpeg hands them over, a colour plate's lightness
    was off (AP0's red is far redder than BT.709's, and its luminance weights are other), and its OpenEXR copy, in
    BT.709 primaries under no chromaticities attribute, was read by an ACES pipeline as AP0 values, its colours
    wrong. The plate's light is now converted to BT.709 as it is read, and its copy back into AP0, saying so."""
    light = np.tile(np.linspace(0.02, 1.5, 96, dtype=np.float32), (64, 1))
    colour = np.repeat(light[..., None], 3, axis=2)
    colour[:16, :16] = (0.5, 0.2, 0.1)  # a colour in AP0
    library_plate(tmp_path / "aces", colour, chromaticities=AP0_CHROMATICITIES)
    library_plate(tmp_path / "bt709", colour)  # the same values, taken as BT.709's (no chromaticities)
    with caplog.at_level("INFO"):
        film = probe_film(tmp_path / "aces" / "plate_%04d.exr", 1 << 30)
    assert film.plate_chromaticities == pytest.approx(AP0_CHROMATICITIES, abs=1e-6)
    assert "its frames name their primaries (red, green, blue and white at (0.7347, 0.2653), (0, 1)" in caplog.text
    layout = frames_layout(film.video, FrameTarget.parse(str(tmp_path / "o_%04d.tif"))).frame
    luma = next(decode_frames(film, layout, 0, 1)).luma.astype(np.float64) / 65535
    patch = np.array((0.5, 0.2, 0.1), np.float16).astype(np.float64) @ AP0_TO_BT709.T
    red, blue = YCBCR_WEIGHTS[film.video.matrix]
    shown = linear_to_srgb(torch.from_numpy(patch.clip(0, 1))).numpy() @ np.array((red, 1 - red - blue, blue))
    assert np.abs(luma[:16, :16] - shown).max() < 2e-3  # the patch's lightness is its AP0 colour's
    assert np.abs(luma[32:] - luma_of_light(light[32:])).max() < 2e-3  # a neutral is a neutral in any primaries
    # Into OpenEXR frames: the same colour as the BT.709 plate's copy, expressed in AP0, under AP0's chromaticities.
    for name in ("aces", "bt709"):
        assert run_cli(tiny_checkpoint, str(tmp_path / name), "-o", str(tmp_path / f"{name}-out" / "p_%04d.exr"),
                       "--recolor") == 0
    with OpenEXR.File(str(tmp_path / "aces-out" / "p_0001.exr")) as aces, \
            OpenEXR.File(str(tmp_path / "bt709-out" / "p_0001.exr")) as bt709:
        assert aces.header()["chromaticities"] == pytest.approx(AP0_CHROMATICITIES, abs=1e-6)
        assert "chromaticities" not in bt709.header()
        aces_rgb = aces.channels()["RGB"].pixels.astype(np.float64)
        bt709_rgb = bt709.channels()["RGB"].pixels.astype(np.float64)
    neutral = np.s_[32:, :]  # the copies' colour differs only where the plates' lightness did (the patch)
    np.testing.assert_allclose((aces_rgb @ AP0_TO_BT709.T)[neutral], bt709_rgb[neutral], rtol=5e-3, atol=2e-3)
    luminance = aces_rgb @ xyz_from_primaries(AP0_CHROMATICITIES)[1]
    np.testing.assert_allclose(luminance[neutral], light[neutral], rtol=5e-3, atol=2e-4)  # the plate's own light
    chroma = bt709_rgb.max(axis=-1) - bt709_rgb.min(axis=-1)
    assert (chroma[neutral] > 0.05 * light[neutral]).mean() > 0.2  # coloured, not gray


def luma_of_light(light: np.ndarray) -> np.ndarray:
    """Full-range Y' in [0, 1] of neutral linear light, as a display shows it."""
    return linear_to_srgb(torch.from_numpy(light.astype(np.float16).astype(np.float32)).clamp(0, 1)).numpy()


# A Cineon frame written by ImageMagick (FFmpeg writes none), as film scanners of the 1990s wrote them: made by
# ``convert codes.png -set colorspace Log -depth 10 imagemagick-10bit.cin`` from a 16-bit PNG of ``cineon_codes()``.
CINEON_FRAME = Path(__file__).parent / "data" / "imagemagick-10bit.cin"


def cineon_codes() -> np.ndarray:
    """The 10-bit RGB codes the Cineon frame was made of (48x32): a ramp from Cineon black to white (95-685) in its
    top 24 rows, one from 0 to 1023 below, and a block of R 600, G 400, B 200 at the top left."""
    codes = np.tile(np.linspace(95, 685, 48).round(), (32, 1))
    codes[24:] = np.linspace(0, 1023, 48).round()
    rgb = np.repeat(codes[..., None], 3, axis=2)
    rgb[:4, :4] = (600, 400, 200)
    return rgb


def cineon_run(folder: Path, frames: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"scan_{FIRST + i:07d}.cin" for i in range(frames)]
    for path in paths:
        path.write_bytes(CINEON_FRAME.read_bytes())
    return paths


def test_a_run_of_cineon_frames_is_read_as_the_log_scan_it_is(tmp_path, caplog, tiny_checkpoint):
    """FFmpeg has no Cineon decoder: such a run was refused as unreadable. Its frames are read as the DPX frames
    they are, rewritten a window at a time in a scratch folder, as log scans."""
    scratch = set(Path(tempfile.gettempdir()).glob("tinct-cineon-*"))
    paths = cineon_run(tmp_path / "reel1")
    run = str(tmp_path / "reel1" / "scan_%07d.cin")
    assert folder_sequences(tmp_path / "reel1", sorted(p.name for p in paths)) == ([run], [])
    with caplog.at_level("INFO"):
        film = probe_film(run, 1 << 30)
    assert film.video.log_encoded and (film.frames, film.video.bit_depth, film.video.width) == (3, 10, 48)
    assert "Cineon frames, log-encoded (printing density) as every Cineon scan is" in caplog.text
    layout = frames_layout(film.video, FrameTarget.parse(str(tmp_path / "colour" / "c_%07d.dpx")))
    frames = list(decode_frames(film, layout.frame, 0, 3))
    assert [frame.index for frame in frames] == [0, 1, 2]
    assert np.abs(frames[0].luma[4:].astype(int) - cineon_codes()[4:, :, 0]).max() <= 2  # ImageMagick's rounding
    words = np.frombuffer(CINEON_FRAME.read_bytes(), ">u4", count=48 * 32, offset=2048).reshape(32, 48)
    np.testing.assert_array_equal(frames[0].luma[4:], (words[4:] >> 22) & 1023)  # gray: the scan's codes exactly
    assert abs(int(frames[0].luma[0, 0]) - luma_of(cineon_codes()[0, 0])) <= 2  # R, G and B in their order
    assert set(Path(tempfile.gettempdir()).glob("tinct-cineon-*")) == scratch  # rewritten frames go with their window
    assert run_cli(tiny_checkpoint, str(tmp_path / "reel1"), "-o", str(tmp_path / "colour" / "c_%07d.dpx")) == 0
    copies = [tmp_path / "colour" / f"c_{FIRST + i:07d}.dpx" for i in range(3)]
    assert [copy.read_bytes()[801:803] for copy in copies] == [b"\x01\x01"] * 3  # the copy says it is log too
    # A frame of a layout not read here, or cut short, is refused by its file before any work.
    header = bytearray(paths[1].read_bytes())
    header[198] = 16  # 16 bits a sample
    paths[1].write_bytes(bytes(header))
    with pytest.raises(BadInputError, match=r"scan_0086401.cin: a Cineon frame of 3 channels at 16 bits .*Tinct "
                       r"reads 10-bit RGB Cineon, the scanners' own layout: convert the run to DPX first"):
        find_sequence(run).check_frames()
    paths[1].write_bytes(CINEON_FRAME.read_bytes()[:5000])
    with pytest.raises(BadInputError, match=r"scan_0086401.cin: truncated: 5000 bytes of the 8192"):
        find_sequence(run).check_frames()


def little_endian_cineon(frame: bytes) -> bytes:
    """The big-endian Cineon ``frame`` as a little-endian writer stores it: its magic number reversed, the header's
    words that Tinct reads (the pixels' offset, the size, the padding and the frame rate) byte-swapped, and every
    32-bit word of pixels."""
    swapped = bytearray(frame)
    swapped[0:4] = frame[3::-1]
    for offset in (4, 200, 204, 684, 688, 1072):
        swapped[offset:offset + 4] = frame[offset:offset + 4][::-1]
    (start,) = struct.unpack_from(">I", frame, 4)
    swapped[start:] = np.frombuffer(frame, ">u4", offset=start).astype("<u4").tobytes()
    return bytes(swapped)


def test_a_little_endian_cineon_run_is_read_and_coloured_as_its_big_endian_twin(tmp_path, tiny_checkpoint):
    """The Cineon standard is big-endian, but some writers stored the words in their own machine's order, which the
    magic number says."""
    big = cineon_run(tmp_path / "big")
    little = cineon_run(tmp_path / "little")
    for path in little:
        path.write_bytes(little_endian_cineon(path.read_bytes()))
    assert little[0].read_bytes()[:4] == b"\xd7\x5f\x2a\x80"
    films = [probe_film(str(paths[0].parent / "scan_%07d.cin"), 1 << 30) for paths in (big, little)]
    assert films[0].video == films[1].video and films[0].fps == films[1].fps
    layout = frames_layout(films[0].video, FrameTarget.parse(str(tmp_path / "colour" / "c_%07d.dpx")))
    decoded = [[frame.luma for frame in decode_frames(film, layout.frame, 0, 3)] for film in films]
    for big_luma, little_luma in zip(*decoded, strict=True):
        np.testing.assert_array_equal(big_luma, little_luma)
    for name in ("big", "little"):
        assert run_cli(tiny_checkpoint, str(tmp_path / name), "-o", str(tmp_path / f"{name}-colour/c_%07d.dpx")) == 0
    copies = {name: read_frames(tmp_path / f"{name}-colour", [f"c_{FIRST + i:07d}.dpx" for i in range(3)])
              for name in ("big", "little")}
    for big_copy, little_copy in zip(copies["big"], copies["little"], strict=True):
        np.testing.assert_array_equal(big_copy, little_copy)


def test_a_log_scan_is_read_as_the_light_its_codes_stand_for_and_coloured_in_its_encoding(tmp_path):
    """The network reads a log scan's lightness as the light its codes stand for (not the flat picture the codes make
    shown as they are), and its colour is written into the copy log-encoded, channel by channel: read back as log,
    the copy shows the colour the network chose. Written as display colour on log lightness, as before, it showed
    that colour off by up to 9 units of ab where the network chose some 19."""
    log_scan(tmp_path / "reel1", frames=1)
    film = probe_film(tmp_path / "reel1" / "scan_%07d.dpx", 1 << 30)
    layout = frames_layout(film.video, FrameTarget.parse(str(tmp_path / "colour" / "c_%07d.dpx")))
    frame, chosen, coloured = colour_first_frame(film, layout)
    np.testing.assert_allclose(frame.L, log_luma_to_l_table(10)[frame.luma.astype(np.int64)], atol=1e-4)
    assert log_luma_to_l_table(10)[[95, 685]].tolist() == [0.0, 100.0]  # black and reference white
    log_rgb = ycbcr_to_rgb_np(coloured.luma, coloured.cb, coloured.cr, layout.matrix, layout.bit_depth,
                              layout.full_range)
    light = cineon_to_linear(torch.from_numpy(log_rgb.astype(np.float64)) * 1023).clamp(max=1.0)
    shown = rgb_to_lab(linear_to_srgb(light).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    assert_shows_the_colour_chosen(shown, frame, chosen, lightness_error=1.5, colour_error=1.0)  # the scan's own L


@pytest.mark.parametrize("suffix, drop_frame", [(".mov", False), (".mkv", False), (".mov", True)])
def test_a_scans_timecode_is_carried_into_its_copy(tmp_path, tiny_checkpoint, suffix, drop_frame):
    # Reel timecode 01:00:10:05 in the television header of the first frame, as scanners write it for conforming.
    code = 0x01001005 | (1 << 30 if drop_frame else 0)
    rate = 30000 / 1001 if drop_frame else 24.0
    write_frames(tmp_path / "reel1", scene(3), rate=rate, timecode=code)
    output = tmp_path / f"reel1{suffix}"
    assert run_cli(tiny_checkpoint, str(tmp_path / "reel1"), "-o", str(output)) == 0
    expected = "01:00:10;05" if drop_frame else "01:00:10:05"
    with av.open(str(output)) as copy:
        found = {**copy.metadata, **{k: v for s in copy.streams for k, v in s.metadata.items()}}
    assert found.get("timecode", found.get("TIMECODE")) == expected, found



# --- writing frames ----------------------------------------------------------------------------------------------


def test_a_dpx_run_colours_into_a_dpx_run_with_its_numbers_rate_and_timecodes(tmp_path, tiny_checkpoint):
    frames = [f >> 6 << 6 for f in scene(6)]
    write_frames(tmp_path / "scans" / "reel1", frames, rate=18.0, timecode=0x01001005)
    out = tmp_path / "colour" / "reel1"
    assert run_cli(tiny_checkpoint, str(tmp_path / "scans" / "reel1"), "-o", str(out / "scan_%07d.dpx"),
                   "--segment-seconds", "0.15") == 0
    names = [f"scan_{FIRST + i:07d}.dpx" for i in range(6)]
    assert sorted(p.name for p in (tmp_path / "colour").iterdir()) == ["reel1"]  # no work folder left
    assert sorted(p.name for p in out.iterdir()) == names
    colour = read_frames(out, names)
    for written, rgb in zip(frames, colour, strict=True):
        assert rgb.shape == (64, 96, 3) and rgb.max() > 255  # 10-bit R'G'B'
        # The scan's lightness, to the rounding of three channels (and where a colour was clipped to the gamut).
        assert np.percentile(np.abs(luma_of(rgb) - (written >> 6)), 99) <= 1.0
    assert np.abs(colour[3] - colour[3].mean(axis=-1, keepdims=True)).mean() > 4  # colour was added
    again = find_sequence(out / "scan_%07d.dpx")  # the copy is itself a run Tinct (and a conform) reads
    assert (again.first, again.count, again.frame_rate, again.rate_source) == (FIRST, 6, 18, "its DPX film header")
    assert again.timecode == "01:00:10:05"


@pytest.mark.parametrize("pix_fmt", ["gbrp10le", "rgb48be"], ids=["little-endian", "big-endian"])
def test_each_dpx_frames_copy_carries_what_its_scan_says_of_it_and_says_it_was_colorized(tmp_path, tiny_checkpoint,
                                                                                      pix_fmt):
    """A scan's DPX frames say which frame of the negative each is (the keycode: film maker, type, prefix, count and
    perforation offset; the frame's position), what was scanned (slate, project, copyright) and on what; a conform
    matches the copy back to the negative by them. The copies had every such field unset and said FFmpeg made
    them. Now each copy carries its own scan frame's fields (in the copy's byte order, a big-endian scan's too),
    names that frame and its time as its source, names itself, and gives the provenance sentence as its creator."""
    frames = [f >> 6 << 6 for f in scene(3)]
    scans = write_frames(tmp_path / "scans", frames, pix_fmt=pix_fmt, rate=24.0, timecode=0x01000000, scanner=True)
    scan = bytearray(scans[2].read_bytes())  # the last frame from another take: its timecode jumps
    struct.pack_into(">I" if scan[:4] == b"SDPX" else "<I", scan, 1920, 0x02003004)
    scans[2].write_bytes(bytes(scan))
    out = tmp_path / "colour"
    assert run_cli(tiny_checkpoint, str(tmp_path / "scans"), "-o", str(out / "c_%07d.dpx")) == 0
    for position, scan in enumerate(scans):
        copy = out / f"c_{FIRST + position:07d}.dpx"
        expected = media.read_dpx_fields(scan)
        assert expected["count"] == media.scanner_fields(position, 3)["count"] == b"1000"  # (the scan says it)
        carried = media.read_dpx_fields(copy)
        assert {k: v for k, v in carried.items() if k != "creation time"} == {
            k: v for k, v in expected.items() if k != "creation time"}
        assert carried["perforation offset"] == b"%02d" % (position * 4) and carried["frame position"] == position + 1
        header = copy.read_bytes()[:2048]
        assert header[1432:1532].rstrip(b"\0") == scan.name.encode()  # its source: the scan frame
        assert header[1532:1556].rstrip(b"\0") == b"2026:03:02:10:11:12Z"  # made when the scan was
        assert header[36:136].rstrip(b"\0") == copy.name.encode()
        assert header[160:260].rstrip(b"\0").decode().startswith("colorized by Tinct ")
        assert header[1720:1724] == b"\xff" * 4  # the held count, unset in the scan, stays unset
    # Each frame's timecode is its scan frame's, the jump too (counted on from the first, it had been 01:00:00:02).
    timecodes = [struct.unpack_from("<I", (out / f"c_{FIRST + i:07d}.dpx").read_bytes(), 1920)[0] for i in range(3)]
    assert timecodes == [0x01000000, 0x01000001, 0x02003004]
    again = find_sequence(out / "c_%07d.dpx")  # the rate and first timecode are still the run's
    assert (again.frame_rate, again.timecode) == (24, "01:00:00:00")


def test_a_dpx_scan_with_generic_headers_alone_and_under_2048_bytes_gives_its_copy_what_it_has(tmp_path,
                                                                                            tiny_checkpoint):
    """A scan with no film or television headers, 8x8 pixels, ends before byte 2048, where those would be: reading
    its timecode there had failed the whole run. Its copy names it as its source, and says no timecode."""
    write_frames(tmp_path / "scans", [np.full((8, 8), 30000, np.uint16)] * 2, industry_headers=False)
    assert (tmp_path / "scans" / f"scan_{FIRST:07d}.dpx").stat().st_size < 2048
    out = tmp_path / "colour"
    assert run_cli(tiny_checkpoint, str(tmp_path / "scans"), "-o", str(out / "c_%07d.dpx"), "--frame-rate", "24") == 0
    header = (out / f"c_{FIRST:07d}.dpx").read_bytes()[:2048]
    assert header[1432:1532].rstrip(b"\0") == f"scan_{FIRST:07d}.dpx".encode()
    assert header[1920:1924] == b"\xff" * 4


@pytest.mark.parametrize(("suffix", "fields"), [
    (".dpx", {"File:Creator": None, "File:SourceFileName": "scan_0086401.dpx", "File:ImageFileName": "c_0086401.dpx",
              "File:Project": "Reel 1 restoration", "File:InputDeviceName": "Scanity HDR",
              "File:SlateInformation": "Scene 12, take 3"}),
    (".tif", {"IFD0:ImageDescription": None, "IFD0:Software": "Tinct"}),
    (".png", {"PNG:Description": None, "PNG:Software": "Tinct"}),
    (".exr", {"OpenEXR:Comments": None}),
])
def test_every_frame_out_says_it_was_colorized_by_tinct(tmp_path, tiny_checkpoint, suffix, fields):
    """Photos carry the provenance sentence so an archive tells a colorized copy from an original; frames out
    carried none (FFmpeg's encoders name FFmpeg, where they name anyone). Each now says it in its format's own place
    (DPX's creator, TIFF's ImageDescription, PNG's Description, OpenEXR's comments), read here by exiftool, as an
    archive's tools read them; a DPX scan's fields go with its copy."""
    write_frames(tmp_path / "scans", [f >> 6 << 6 for f in scene(2)], rate=24.0, scanner=True)
    out = tmp_path / "colour"
    assert run_cli(tiny_checkpoint, str(tmp_path / "scans"), "-o", str(out / f"c_%07d{suffix}")) == 0
    read = json.loads(subprocess.run(["exiftool", "-json", "-a", "-G1", str(out / f"c_0086401{suffix}")],
                                     check=True, capture_output=True, text=True).stdout)[0]
    for name, value in fields.items():
        if value is None:  # the provenance sentence
            assert re.fullmatch(r"colorized by Tinct \S+, model \S+@\w+", read[name]), (name, read.get(name))
        else:
            assert str(read[name]).startswith(value), (name, read.get(name))
    assert probe(out / f"c_0086401{suffix}").width == 96  # FFmpeg still reads the frame


@pytest.mark.parametrize("suffix", [".dpx", ".tif", ".png", ".exr"])
def test_frames_keep_the_pixel_aspect_of_their_film(tmp_path, tiny_checkpoint, suffix):
    """A DV or anamorphic film's pixels are not square; its frames said nothing of it (DPX's pixel aspect ratio
    0:1), and a conform showed them unsqueezed. Each format now says it in its own field."""
    grays = [(f >> 8).astype(np.uint8) for f in scene(3)]
    source = write_clip(tmp_path / "dv.mkv", grays, sample_aspect_ratio=Fraction(16, 15))
    out = tmp_path / "frames" / f"f_%04d{suffix}"
    assert run_cli(tiny_checkpoint, str(source.path), "-o", str(out)) == 0
    first = out.parent / f"f_0000{suffix}"
    with av.open(str(first)) as frame:  # as FFmpeg's readers take it (a conform's, often)
        assert frame.streams.video[0].sample_aspect_ratio == Fraction(16, 15)
    if suffix == ".dpx":  # SMPTE 268M's own field, in the orientation header
        data = first.read_bytes()
        order = ">" if data[:4] == b"SDPX" else "<"
        assert struct.unpack_from(f"{order}II", data, 1628) == (16, 15)


def test_a_film_file_colours_into_frames_numbered_from_zero(tmp_path, tiny_checkpoint, caplog):
    grays = [(f >> 8).astype(np.uint8) for f in scene(5)]
    source = write_clip(tmp_path / "reel.mkv", grays, codec="ffv1", pix_fmt="gray", audio="flac")
    out = tmp_path / "frames"
    assert run_cli(tiny_checkpoint, str(source.path), "-o", str(out / "reel.%04d.png"), "--frame-rate", "18") == 0
    assert f"{source.path}: its audio stream #1 (flac) is left out: frames carry no sound or subtitles" in caplog.text
    assert f"{source.path}: keeps its own timing; a frame rate applies to runs of frames only" in caplog.text
    names = [f"reel.{i:04d}.png" for i in range(5)]
    assert sorted(p.name for p in out.iterdir()) == names
    for gray, rgb in zip(grays, read_frames(out, names), strict=True):
        assert rgb.max() <= 255 and np.percentile(np.abs(luma_of(rgb) - gray), 99) <= 1.0  # 8-bit stays 8-bit


@pytest.mark.parametrize("rate, timecode, expected", [
    (Fraction(24), "10:00:00:22", ["10:00:00:22", "10:00:00:23", "10:00:01:00", "10:00:01:01"]),
    # Drop-frame (29.97) skips the labels of frames 0 and 1 of each minute but every tenth.
    (Fraction(30000, 1001), "00:00:59;28", ["00:00:59;28", "00:00:59;29", "00:01:00;02", "00:01:00;03"]),
])
def test_a_film_files_timecode_is_counted_on_into_its_frames(tmp_path, tiny_checkpoint, rate, timecode, expected):
    grays = [(f >> 8).astype(np.uint8) for f in scene(4)]
    source = write_clip(tmp_path / "tape.mov", grays, fps=rate, timecode=timecode)  # a QuickTime timecode track
    out = tmp_path / "frames"
    assert run_cli(tiny_checkpoint, str(source.path), "-o", str(out / "tape_%04d.dpx")) == 0
    assert [dpx_timecode((out / f"tape_{i:04d}.dpx").read_bytes()[:2048], rate) for i in range(4)] == expected
    # OpenEXR frames say it in their timeCode attribute, as the OpenEXR library reads it, and their rate beside it.
    assert run_cli(tiny_checkpoint, str(source.path), "-o", str(out / "tape_%04d.exr")) == 0
    for i, label in enumerate(expected):
        with OpenEXR.File(str(out / f"tape_{i:04d}.exr")) as frame:
            code, fps = frame.header()["timeCode"], frame.header()["framesPerSecond"]
        separator = ";" if code.dropFrame else ":"
        assert f"{code.hours:02d}:{code.minutes:02d}:{code.seconds:02d}{separator}{code.frame:02d}" == label
        assert fps == rate


def test_frames_already_there_are_kept_unless_overwritten(tmp_path, tiny_checkpoint, capsys):
    write_frames(tmp_path / "reel1", scene(3), rate=24.0)
    target = str(tmp_path / "colour" / "c_%07d.tif")
    assert run_cli(tiny_checkpoint, str(tmp_path / "reel1"), "-o", target) == 0
    first = (tmp_path / "colour" / f"c_{FIRST:07d}.tif").stat().st_mtime_ns
    assert main(["colorize", str(tmp_path / "reel1"), "-o", target, "--model", str(tiny_checkpoint),
                 "--engine", "torch", "--render-size", "64"]) == 0
    assert "already exists" in capsys.readouterr().out
    assert (tmp_path / "colour" / f"c_{FIRST:07d}.tif").stat().st_mtime_ns == first
    assert run_cli(tiny_checkpoint, str(tmp_path / "reel1"), "-o", target, "--overwrite") == 0
    assert (tmp_path / "colour" / f"c_{FIRST:07d}.tif").stat().st_mtime_ns != first
    assert sorted(p.name for p in (tmp_path / "colour").iterdir()) == [f"c_{FIRST + i:07d}.tif" for i in range(3)]


def test_an_interrupted_run_of_frames_shows_nothing_and_resumes(tmp_path, colorizer):
    write_frames(tmp_path / "reel1", scene(24), rate=24.0)
    source, output = tmp_path / "reel1" / "scan_%07d.dpx", tmp_path / "colour" / "scan_%07d.dpx"
    options = FilmOptions(SmoothingOptions(0.5), segment_seconds=0.25)
    model, label = colorizer
    flaky = _InterruptingColorizer(model.engine, render_size=64, batch_size=4, fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        colorize_film(flaky, source, output, options, label)
    assert not (tmp_path / "colour").exists()  # not one frame where a conform would find it
    resumed = colorize_film(model, source, output, options, label)
    assert resumed.status == "done" and resumed.resumed_segments >= 1
    reference = tmp_path / "reference" / "scan_%07d.dpx"
    colorize_film(model, source, reference, options, label)
    names = [f"scan_{FIRST + i:07d}.dpx" for i in range(24)]
    for resumed_frame, whole in zip(read_frames(tmp_path / "colour", names),
                                    read_frames(tmp_path / "reference", names), strict=True):
        np.testing.assert_array_equal(resumed_frame, whole)
    assert not parts_folder(output).exists()


def test_a_frame_format_tinct_does_not_write_is_a_usage_error(tmp_path, tiny_checkpoint, capsys):
    write_frames(tmp_path / "reel1", scene(2), rate=24.0)
    assert run_cli(tiny_checkpoint, str(tmp_path / "reel1"), "-o", str(tmp_path / "out" / "c_%04d.jpg")) == 2
    assert "frames are written as .dpx, .exr, .png, .tif, .tiff, not '.jpg'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_frames_out_never_replace_the_frames_they_are_made_from(tmp_path, tiny_checkpoint, caplog):
    paths = write_frames(tmp_path / "reel1", scene(3), rate=24.0)
    before = [path.read_bytes() for path in paths]
    output = tmp_path / "reel1" / "scan_#######.dpx"  # the same files by another spelling of the pattern
    assert run_cli(tiny_checkpoint, str(tmp_path / "reel1" / "scan_%07d.dpx"), "-o", str(output), "--overwrite") == 1
    assert f"{output}: would replace the frames of its source" in caplog.text
    assert [path.read_bytes() for path in paths] == before


def test_a_folder_walk_points_out_a_film_scanned_as_tiffs(tmp_path, caplog):
    small = [np.full((8, 8), 1000 * i, np.uint16) for i in range(30)]
    write_frames(tmp_path / "scans" / "reel2", small, name="f_%04d.tif", first=1, codec="tiff", pix_fmt="gray16le")
    photos = write_frames(tmp_path / "scans" / "box", small, name="IMG_%04d.tif", first=1, codec="tiff",
                          pix_fmt="gray16le")
    photos[7].unlink()  # a photo collection's numbering has gaps: no film there
    plan = plan_photos([tmp_path / "scans"], tmp_path / "out")
    assert len(plan.tasks) == 59 and plan.films == []  # still photos, as asked
    run = tmp_path / "scans" / "reel2" / "f_%04d.tif"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"{run}: 30 numbered frames, colorized as photos one by one; name the run to colorize it as a "
                        f"film, with steady colour from frame to frame (tinct colorize '{run}' -o <film>.mkv)"]


# --- runs kept in an object store ----------------------------------------------------------------------------


def test_a_worker_reads_a_stored_run_a_window_at_a_time_and_keeps_none_of_it(s3_server, tmp_path):
    # A 2K reel in a bucket is some 180 GB: each worker fetches the frames it decodes (a segment with its warm-up),
    # into a folder of its own that goes when they are read.
    s3_server.make_bucket("scans")
    frames = [frame.astype(np.uint16) << 8 for frame in gray_frames(moving_scene(30, *SIZE))]  # exact at 10 bits
    for path in write_frames(tmp_path / "scan", frames, rate=25.0):
        put_object(s3_server, f"s3://scans/reel1/{path.name}", path.read_bytes())
    rt = Runtime(s3_settings(s3_server, work_dir=tmp_path / "work"))
    film = rt.film("s3://scans/reel1/scan_%07d.dpx")
    assert (film.frames, film.fps, film.video.bit_depth) == (30, 25.0, 10)
    fetched = tmp_path / "work" / "frames"
    assert list(fetched.iterdir()) == []  # the probe's samples are gone too
    layout = plan_output(film.video, EncodeOptions("ffv1")).frame

    def held() -> list[int]:
        return sorted(int(path.stem.removeprefix("scan_")) - FIRST for path in fetched.glob("*/*"))

    decoded = decode_frames(film, layout, 20, 26, warmup=3)  # a segment with its warm-up
    read = [next(decoded)]
    assert held() == list(range(17, 26))
    read += decoded
    assert [(frame.index, frame.pts, frame.warmup) for frame in read] == [(i, i, i < 20) for i in range(17, 26)]
    decoded = decode_frames(film, layout, 1, 30)  # longer than a window (RUN_WINDOW_FRAMES): two in turn
    read += [next(decoded) for _ in range(RUN_WINDOW_FRAMES)]
    assert held() == list(range(1, 1 + RUN_WINDOW_FRAMES))
    read.append(next(decoded))
    assert held() == list(range(1 + RUN_WINDOW_FRAMES, 30))
    read += decoded
    assert [frame.index for frame in read[9:]] == list(range(1, 30))
    for frame in read:
        np.testing.assert_array_equal(frame.luma, frames[frame.index] >> 6)  # the 10-bit scan, bit for bit
    assert list(fetched.iterdir()) == []
    assert not (tmp_path / "work" / "inputs").exists()


def test_a_stored_run_of_cineon_frames_is_read_a_window_at_a_time_and_keeps_none_of_it(s3_server, tmp_path):
    s3_server.make_bucket("scans")
    for path in cineon_run(tmp_path / "scan", frames=RUN_WINDOW_FRAMES + 2):
        put_object(s3_server, f"s3://scans/reel1/{path.name}", path.read_bytes())
    rt = Runtime(s3_settings(s3_server, work_dir=tmp_path / "work"))
    film = rt.film("s3://scans/reel1/scan_%07d.cin")
    assert film.video.log_encoded and film.frames == RUN_WINDOW_FRAMES + 2
    frames = list(decode_frames(film, plan_output(film.video, EncodeOptions("ffv1")).frame, 0, film.frames))
    words = np.frombuffer(CINEON_FRAME.read_bytes(), ">u4", count=48 * 32, offset=2048).reshape(32, 48)
    for frame in frames:  # two windows, each fetched and rewritten in its own folder
        np.testing.assert_array_equal(frame.luma[4:], (words[4:] >> 22) & 1023)
    assert list((tmp_path / "work" / "frames").iterdir()) == []


def test_a_worker_rewrites_a_cineon_run_in_a_folder_in_its_work_folder_not_the_system_temp_folder(tmp_path):
    # A server's temp folder is often a small RAM disk, and a 2K window rewritten is some 300 MB per worker process.
    cineon_run(tmp_path / "reel1", frames=RUN_WINDOW_FRAMES + 2)
    temp_before = set(Path(tempfile.gettempdir()).glob("tinct-cineon-*"))
    rt = Runtime(Settings(work_dir=tmp_path / "work"))
    film = rt.film(f"file://{tmp_path}/reel1/scan_%07d.cin")
    assert film.video.log_encoded and film.frames == RUN_WINDOW_FRAMES + 2
    rewritten = tmp_path / "work" / "frames"
    decoded = decode_frames(film, plan_output(film.video, EncodeOptions("ffv1")).frame, 0, film.frames)
    read = [next(decoded)]
    assert sorted(path.name for path in rewritten.glob("*/*")) == [
        f"scan_{FIRST + i:07d}.dpx" for i in range(RUN_WINDOW_FRAMES)]  # the first window, and it alone
    assert set(Path(tempfile.gettempdir()).glob("tinct-cineon-*")) == temp_before
    read += decoded
    words = np.frombuffer(CINEON_FRAME.read_bytes(), ">u4", count=48 * 32, offset=2048).reshape(32, 48)
    assert [frame.index for frame in read] == list(range(RUN_WINDOW_FRAMES + 2))
    for frame in read:
        np.testing.assert_array_equal(frame.luma[4:], (words[4:] >> 22) & 1023)
    assert list(rewritten.iterdir()) == []


def test_a_damaged_stored_dpx_frame_is_refused_by_its_key_from_its_header_alone(s3_server, tmp_path):
    s3_server.make_bucket("scans")
    paths = write_frames(tmp_path / "scan", scene(6), rate=24.0)
    for path in paths:
        put_object(s3_server, f"s3://scans/reel1/{path.name}", path.read_bytes())
    put_object(s3_server, f"s3://scans/reel1/{paths[4].name}", paths[4].read_bytes()[:3000])  # a copy cut short
    rt = Runtime(s3_settings(s3_server, work_dir=tmp_path / "work"))
    with pytest.raises(BadInputError) as refused:
        rt.film("s3://scans/reel1/scan_%07d.dpx")
    assert str(refused.value).startswith(f"s3://scans/reel1/{paths[4].name}: truncated: 3000 bytes of the ")


def test_a_worker_started_on_a_host_removes_the_frames_its_dead_processes_left(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                              check=True)
    frames = tmp_path / "work" / "frames"
    dead = frames / f"{finished.stdout.strip()}@{socket.gethostname()}@k1ll3d"  # a worker killed mid-segment
    live = frames / f"{os.getpid()}@{socket.gethostname()}@r3ad1ng"
    elsewhere = frames / f"{finished.stdout.strip()}@another-host@r3ad1ng"  # a work folder shared between hosts
    for folder in (dead, live, elsewhere):
        folder.mkdir(parents=True)
        (folder / "scan_0086400.dpx").write_bytes(b"SDPX")
    Runtime(Settings(work_dir=tmp_path / "work"))
    assert sorted(frames.iterdir()) == sorted([live, elsewhere])
