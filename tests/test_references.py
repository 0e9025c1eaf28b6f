"""Film reference frames: a colour picture of one frame carried forward and backward through its shot, never across
a cut, the same in segments as whole; bad references fail their film with one line. Generated clips, known colours,
the tiny real model and the real CLI."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms

import worker.references
from models.color import lab_to_rgb_np, rgb_to_lab_np
from models.references import ReferenceTrack, blend, combine, reference_cells
from tests.icc_profiles import PROPHOTO, gamma_curve, matrix_trc_profile
from tests.media import decode_rgb, gray_frames, moving_scene, probe, write_clip
from worker.cli import main
from worker.films import FilmOptions, colorize_film
from worker.media.video_sink import EncodeOptions, plan_output
from worker.media.video_source import probe_film
from worker.references import (
    ReferenceError,
    ReferenceField,
    ResolvedReference,
    frame_index,
    load_reference_image,
    parse_reference_arg,
    sidecar_reference,
)
from worker.smoothing import SmoothingOptions

FRAMES, CUT, REFERENCE = 36, 24, 12
SIZE = (128, 96)


def soft_chroma(frame: np.ndarray) -> np.ndarray:
    """The frame with its chroma blurred (its L kept): colours that vary over objects, not within a few pixels, so
    that they live on the network's output grid (8 source pixels a cell here) as a film's colours do."""
    lab = rgb_to_lab_np(frame.astype(np.float64) / 255)
    for channel in (1, 2):
        lab[..., channel] = cv2.GaussianBlur(lab[..., channel], (0, 0), 8)
    return np.clip(np.rint(lab_to_rgb_np(lab) * 255), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, list[np.ndarray], Path]:
    """A black-and-white clip of two shots (cut at frame 24), its colour truth, and frame 12 of the truth as a PNG."""
    folder = tmp_path_factory.mktemp("scene")
    truth = [soft_chroma(frame) for frame in moving_scene(FRAMES, *SIZE, cuts_at=(CUT,))]
    clip = write_clip(folder / "film.mkv", gray_frames(truth), codec="ffv1", gop=6, bframes=0)
    reference = folder / "frame12.png"
    # At twice the frame's size: a still scanned at its own resolution is resampled to the frame.
    Image.fromarray(truth[REFERENCE]).resize((2 * SIZE[0], 2 * SIZE[1]), Image.Resampling.BICUBIC).save(reference)
    return clip.path, truth, reference


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def film(colorizer, source: Path, output: Path, segment_seconds: float = 100.0, references=()) -> list[np.ndarray]:
    options = FilmOptions(SmoothingOptions(0.5), EncodeOptions("ffv1"), segment_seconds=segment_seconds,
                          references=tuple(references))
    outcome = colorize_film(colorizer[0], source, output, options, colorizer[1])
    assert outcome.status == "done", outcome.reason
    return decode_rgb(output)


def test_a_reference_colours_its_shot_both_ways_and_stops_at_the_cut(tmp_path, colorizer, scene):
    source, truth, picture = scene
    automatic = film(colorizer, source, tmp_path / "auto.mkv")
    guided = film(colorizer, source, tmp_path / "ref.mkv", references=[parse_reference_arg(f"0.5={picture}")])
    gain = [psnr(g, t) - psnr(a, t) for g, a, t in zip(guided, automatic, truth, strict=True)]
    # The reference frame shows the picture's colours (an untrained model's own guess is far off: about 25 dB).
    assert psnr(guided[REFERENCE], truth[REFERENCE]) > 31.0 and gain[REFERENCE] > 6.0
    assert min(gain[:REFERENCE]) > 2.0  # carried backward to the shot's first frame
    assert min(gain[REFERENCE + 1 : CUT]) > 2.0  # and forward to its last, fading with distance
    assert gain[REFERENCE - 1] > gain[0] and gain[REFERENCE + 1] > gain[CUT - 1]
    for index in range(CUT, FRAMES):  # the next shot is colorized exactly as without the reference
        np.testing.assert_array_equal(guided[index], automatic[index])


def test_segments_give_what_a_whole_pass_gives_with_a_reference_in_another_segment(tmp_path, colorizer, scene):
    source, _, picture = scene
    references = [parse_reference_arg(f"frame:{REFERENCE}={picture}")]
    whole = np.stack(film(colorizer, source, tmp_path / "whole.mkv", references=references)).astype(np.int32)
    # 0.25 s segments are 6 frames: frames 0-5 are coloured by a reference that lies in a later segment.
    parts = np.stack(film(colorizer, source, tmp_path / "parts.mkv", 0.25, references)).astype(np.int32)
    assert whole.shape == parts.shape
    assert np.abs(whole - parts).max() <= 2 and np.abs(whole - parts).mean() < 0.05


def test_references_share_one_lazy_decode_and_lay_what_each_lays_alone(colorizer, scene, monkeypatch):
    source, truth, _ = scene
    film_info = probe_film(source, 1 << 40)
    layout = plan_output(film_info.video, EncodeOptions("ffv1")).frame
    references = [ResolvedReference(index, truth_ab(truth[index])) for index in (REFERENCE, 30)]
    decoded = []
    real_frames = worker.references._frames

    def counting(*args):
        for frame in real_frames(*args):
            decoded.append(frame.index)
            yield frame

    monkeypatch.setattr(worker.references, "_frames", counting)
    both = ReferenceField(film_info, layout, colorizer[0], SmoothingOptions(0.5), references, 0, FRAMES)
    assert sorted(decoded) == list(range(FRAMES))  # every frame once, for both references
    decoded.clear()
    alone = [ReferenceField(film_info, layout, colorizer[0], SmoothingOptions(0.5), [r], 0, FRAMES) for r in references]
    # Alone, the first reference decodes its shot and the cut's first frame, not the rest of its reach.
    assert decoded == [*range(CUT + 1), *range(FRAMES)]
    assert set(both.tracks) == set(alone[0].tracks) | set(alone[1].tracks) == set(range(FRAMES))
    for index, tracks in both.tracks.items():
        (expected,) = [t for field in alone for t in field.tracks.get(index, [])]  # a cut lies between the two
        (track,) = tracks
        np.testing.assert_array_equal(track.positions, expected.positions)
        np.testing.assert_array_equal(track.confidence, expected.confidence)


def truth_ab(frame: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb_to_lab_np(frame.astype(np.float64) / 255)[..., 1:].transpose(2, 0, 1),
                                dtype=np.float32)


def test_reference_maths_blend_by_confidence():
    ab = np.zeros((2, 4, 6), np.float32)
    ab[0] = 30.0
    cells = reference_cells(ab, (16, 24), (16, 24), 4)
    assert cells.shape == (2, 4, 6) and np.allclose(cells[0], 30.0)
    start = ReferenceTrack.start(cells)
    moved = start.step(np.zeros((4, 6, 2), np.float32), np.full((4, 6), 0.5, np.float32), 0.9)
    assert np.allclose(moved.confidence, 0.45)
    other = ReferenceTrack(-cells, moved.positions, np.full((4, 6), 0.45, np.float32))  # the opposite colour
    colour, held = combine([moved, other])
    assert np.allclose(colour, 0.0, atol=1e-5) and np.allclose(held, 1 - 0.55**2)
    laid = blend(np.full((2, 4, 6), 10.0, np.float32), *combine([start]))
    assert np.allclose(laid, cells)  # full confidence: the reference's own colour
    # A pan of one cell a frame for three frames: the colours move three cells, sampled once, not blurred thrice.
    stripes = np.zeros((2, 4, 6), np.float32)
    stripes[:, :, 1] = 40.0
    track = ReferenceTrack.start(stripes)
    for _ in range(3):
        track = track.step(np.full((4, 6, 2), (-1.0, 0.0), np.float32), np.ones((4, 6), np.float32), 1.0)
    assert np.allclose(track.ab[:, :, 4], 40.0) and np.allclose(track.ab[:, :, 5], 0.0)


def test_reference_times_and_pictures_are_checked(tmp_path, scene):
    source, truth, picture = scene
    info = probe_film(source, 1 << 30)
    assert frame_index("0.5", info) == 12 and frame_index("frame:35", info) == 35 and frame_index("0", info) == 0
    with pytest.raises(ReferenceError, match=r"time: 9 s is outside the film \(1.500 s long\)"):
        frame_index("9", info)
    with pytest.raises(ReferenceError, match=r"time: frame 36 is outside the film \(frames 0 to 35\)"):
        frame_index("frame:36", info)
    ab = load_reference_image(picture)
    assert ab.shape == (2, 2 * SIZE[1], 2 * SIZE[0])
    Image.fromarray(gray_frames([truth[0]]).__next__()).save(tmp_path / "gray.png")
    with pytest.raises(ReferenceError, match=r"gray.png: image: is gray"):
        load_reference_image(tmp_path / "gray.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ReferenceError, match=r"broken.png: image: does not decode"):
        load_reference_image(tmp_path / "broken.png")
    for text in ("12.5", "=x.png", "soon=x.png", "-1=x.png"):
        with pytest.raises((ValueError, ReferenceError)):
            parse_reference_arg(text)


def test_a_reference_picture_is_read_as_it_shows(tmp_path):
    # References are often phone photos (Display P3) or sideways scans: their colours go through their profile,
    # and a TIFF is turned upright once (Pillow turns TIFFs as it decodes them).
    colours = np.random.default_rng(3).integers(60, 200, (12, 20, 3), dtype=np.uint8)
    expected = rgb_to_lab_np(colours / 255.0)[..., 1:].transpose(2, 0, 1)
    profile = matrix_trc_profile(PROPHOTO, gamma_curve(1.8))
    cms, srgb = ImageCms.ImageCmsProfile(io.BytesIO(profile)), ImageCms.createProfile("sRGB")
    ImageCms.profileToProfile(Image.fromarray(colours), srgb, cms, outputMode="RGB").save(
        tmp_path / "wide.png", icc_profile=profile)
    error = np.abs(load_reference_image(tmp_path / "wide.png") - expected)
    assert error.mean() < 1 and error.max() < 4  # (8-bit ProPhoto codes are coarse)
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(colours)))  # stored turned a quarter to the left
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned back clockwise
    sideways.save(tmp_path / "sideways.tif", exif=exif.tobytes())
    assert np.abs(load_reference_image(tmp_path / "sideways.tif") - expected).max() < 0.5
    # An archive's colour still kept as JPEG 2000, its profile in a box Pillow does not read (tagged here by
    # exiftool), fetched from a store as bytes, as a service's worker reads it: read through its profile too.
    still = tmp_path / "still.jp2"
    ImageCms.profileToProfile(Image.fromarray(colours), srgb, cms, outputMode="RGB").save(still, irreversible=False)
    (tmp_path / "prophoto.icc").write_bytes(profile)
    subprocess.run(["exiftool", "-q", "-overwrite_original", f"-ICC_Profile<={tmp_path / 'prophoto.icc'}", str(still)],
                   check=True)
    error = np.abs(load_reference_image(io.BytesIO(still.read_bytes()), "s3://stills/still.jp2") - expected)
    assert error.mean() < 1 and error.max() < 4
    assert sidecar_reference("s3://scans/reel.mkv.references/frame_12.jp2").when == "frame:12"


@pytest.mark.parametrize(("references", "expected"), [
    (["9={picture}"], "references[0].time: 9 s is outside the film"),
    (["frame:99={picture}"], "references[0].time: frame 99 is outside the film"),
    (["0.5={picture}", "frame:12={picture}"], "references[1].time: frame:12 is frame 12, which 0.5="),
    (["0={gray}"], "gray.png: image: is gray"),
    (["0={missing}"], "missing.png: image: no such file"),
])
def test_cli_bad_references_fail_the_film_with_one_line_and_write_nothing(tmp_path, tiny_checkpoint, scene, capsys,
                                                                          references, expected):
    source, truth, picture = scene
    gray = tmp_path / "gray.png"
    Image.fromarray(next(gray_frames([truth[0]]))).save(gray)
    args = []
    for text in references:
        args += ["--reference", text.format(picture=picture, gray=gray, missing=tmp_path / "missing.png")]
    output = tmp_path / "out.mkv"
    assert main(["colorize", str(source), "-o", str(output), *args, "--model", str(tiny_checkpoint), "--engine",
                 "torch", "--render-size", "64", "--codec", "ffv1", "-q"]) == 1
    err = capsys.readouterr().err
    assert expected in err and len([line for line in err.splitlines() if expected in line]) == 1
    assert not output.exists() and not list(tmp_path.glob(".out.mkv*"))


def test_cli_reference_needs_a_single_film(tmp_path, tiny_checkpoint, scene, capsys):
    source, _, picture = scene
    assert main(["colorize", str(source.parent), "-o", str(tmp_path / "out"), "--reference", f"0={picture}",
                 "--model", str(tiny_checkpoint), "-q"]) == 2
    assert "--reference names frames of one film" in capsys.readouterr().err
    assert main(["colorize", str(source), "-o", str(tmp_path / "o.mkv"), "--reference", "soon"]) == 2


def test_cli_folder_takes_each_films_sidecar_references(tmp_path, tiny_checkpoint, scene, capsys):
    """``tinct colorize FOLDER`` gives a film the pictures of its ``<film>.references/`` folder (as ``tinct bulk``
    does in an object store); a film with a bad sidecar fails with one line naming the picture, and the others go on."""
    source, truth, picture = scene
    folder = tmp_path / "reels"
    folder.mkdir()
    for name in ("guided.mkv", "plain.mkv", "broken.mkv"):
        (folder / name).write_bytes(source.read_bytes())
    (folder / "guided.mkv.references").mkdir()
    (folder / "guided.mkv.references" / "frame_12.png").write_bytes(picture.read_bytes())
    (folder / "broken.mkv.references").mkdir()
    (folder / "broken.mkv.references" / "soon.png").write_bytes(picture.read_bytes())
    out = tmp_path / "out"
    assert main(["colorize", str(folder), "-o", str(out), "--model", str(tiny_checkpoint), "--engine", "torch",
                 "--render-size", "64", "--codec", "ffv1"]) == 1
    err = capsys.readouterr().err
    assert "guided.mkv: 1 reference frame(s) from guided.mkv.references/" in err
    assert len([line for line in err.splitlines() if "soon.png: time: the name 'soon.png' is neither" in line]) == 1
    assert not list(out.glob("broken*")) and not list(out.glob(".broken*"))
    guided, plain = decode_rgb(out / "guided.mkv"), decode_rgb(out / "plain.mkv")
    assert psnr(guided[REFERENCE], truth[REFERENCE]) > 31.0
    assert psnr(guided[REFERENCE], truth[REFERENCE]) - psnr(plain[REFERENCE], truth[REFERENCE]) > 6.0
    assert json.loads(probe(out / "guided.mkv").tag("tinct"))["references"] == 1
    assert "references" not in json.loads(probe(out / "plain.mkv").tag("tinct"))


def test_evaluate_references_scores_first_frame_references_against_the_truth(tmp_path, tiny_checkpoint, capsys):
    from tools import evaluate
    from tools.evaluate_references import AUTOMATIC_ROW, REFERENCE_ROW

    truth = [soft_chroma(frame) for frame in moving_scene(30, *SIZE, cuts_at=(15,))]
    (tmp_path / "clips").mkdir()
    write_clip(tmp_path / "clips" / "scene.mkv", truth, codec="ffv1", pix_fmt="yuv444p")
    out = tmp_path / "refs.json"
    assert evaluate.main(["--video", "--references", "--model", str(tiny_checkpoint), "--data",
                          str(tmp_path / "clips"), "--engine", "torch", "--device", "cpu", "--render-size", "64",
                          "--json", str(out)]) == 0
    assert "| scene.mkv | 30 | 2 |" in capsys.readouterr().out  # two shots: a reference for each
    rows = json.loads(out.read_text())[0]["rows"]
    assert rows[REFERENCE_ROW]["psnr"] > rows[AUTOMATIC_ROW]["psnr"] + 3.0
