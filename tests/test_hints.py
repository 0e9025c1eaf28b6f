"""Colour hints for photos: the propagation maths (models.hints) through a real Colorizer, hint files
(worker.hints) with every kind of bad input, and ``tinct colorize --hints`` / folder sidecars end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.color import delta_e_ciede2000_np, lab_to_rgb_np, rgb_to_lab_np
from models.colorizer import Colorizer
from models.engines import create_engine
from models.hints import (
    DECAY,
    FEW_HINTS,
    ColourHints,
    ColourPoint,
    ColourRegion,
    decay_for,
    hinted_grid,
    propagate_correction,
    rasterize,
)
from worker.cli import main
from worker.hints import HintError, HintSpec, load_hints_file, parse_hints
from worker.media.images import read_provenance

DARK, BRIGHT = 35.0, 75.0  # L of the two halves of the test scene, split by a hard edge at x = 64


def two_halves(height: int = 96, width: int = 128) -> np.ndarray:
    """L of a scene with two flat objects side by side: the edge between them is what a hint must not cross."""
    L = np.full((height, width), DARK, np.float32)
    L[:, width // 2 :] = BRIGHT
    return L


def hint_ab(hex_colour: str) -> tuple[float, float]:
    rgb = np.array([[[int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]]])
    _, a, b = rgb_to_lab_np(rgb)[0, 0]
    return float(a), float(b)


def in_gamut(L: float, ab: tuple[float, float]) -> bool:
    rgb = lab_to_rgb_np(np.array([[[L, *ab]]]), clip=False)
    return bool(((rgb >= 0) & (rgb <= 1)).all())


@pytest.fixture(scope="module")
def colorizer(tiny_checkpoint) -> Colorizer:
    engine = create_engine(model=tiny_checkpoint, kind="torch", device="cpu")
    yield Colorizer(engine, render_size=64)
    engine.close()


# --- the maths -------------------------------------------------------------------------------------------------


def test_rasterize_covers_discs_and_polygons_by_their_area():
    hints = ColourHints(points=(ColourPoint(30, 20, (10.0, 20.0), radius=6),),
                        regions=(ColourRegion(((60, 10), (90, 10), (90, 40), (60, 40)), (-30.0, 5.0)),))
    coverage, ab = rasterize(hints, 60, 100)
    disc = coverage[:, :50].sum()
    assert abs(disc - math.pi * 36) < 0.05 * math.pi * 36
    assert coverage[:, 50:].sum() == 31 * 31  # vertices on pixels 60 and 90: both edges included
    assert coverage[20, 30] == 1.0 and np.allclose(ab[:, 20, 30], (10.0, 20.0))
    assert np.allclose(ab[:, 25, 75], (-30.0, 5.0))
    # Scaled down 20x, the disc is far below a pixel but still marks the pixel holding its centre.
    small, _ = rasterize(hints, 3, 5, scale_y=0.05, scale_x=0.05)
    assert small[1, 1] == 1.0


def test_propagation_spreads_over_flat_ground_stops_at_edges_and_fades_with_distance():
    L = np.full((20, 40), 30.0)
    L[:, 20:] = 80.0
    coverage = np.zeros((20, 40))
    coverage[10, 5] = 1.0
    target = np.zeros((2, 20, 40))
    target[:, 10, 5] = (40.0, -20.0)
    correction = propagate_correction(L, coverage, target)
    assert np.allclose(correction[:, 10, 5], (40.0, -20.0), atol=0.5)  # held at the hint
    same_side = correction[0, :, :20]
    assert same_side[10, 15] > 10.0  # ten cells along the same object: a good share of the hint
    assert same_side[10, 15] < same_side[10, 8]  # fading with distance
    assert np.abs(correction[:, :, 21:]).max() < 2.0  # across the edge: next to nothing


def test_a_lone_hint_reaches_less_far_than_hints_among_others():
    """Two objects of one lightness side by side (no edge of L between them, a strip of 80 cells): one hint on the
    first must not repaint the second, while several hints keep the long reach that fills in between them."""
    assert decay_for(1) == FEW_HINTS * DECAY and decay_for(2) == FEW_HINTS * DECAY / 2
    assert decay_for(FEW_HINTS) == DECAY == decay_for(20)
    height, width = 9, 80
    L = np.full((height, width), 50.0, np.float32)
    network = torch.zeros(2, height, width)
    red = (40.0, 10.0)

    def spread(xs: list[int]) -> np.ndarray:
        hints = ColourHints(points=tuple(ColourPoint(x, 4, red, radius=0.5) for x in xs))
        return hinted_grid(network, L, 1, hints, (height, width), (height, width))[0, 4].numpy() / red[0]

    lone, many = spread([4]), spread([1, 2, 3, 4])
    assert lone[4] > 0.99 and many[4] > 0.99  # both held at the hint
    assert lone[8] > 0.3  # the hint's own object, next to it, takes its colour
    assert lone[24] < 0.12 and lone[24] < 0.5 * many[24]  # twenty cells on, the lone hint has all but faded
    assert many[24] > 0.2


def test_hints_are_honoured_at_their_pixels_and_spread_within_their_object_only(colorizer):
    L = two_halves()
    automatic = colorizer.predict_ab([L])[0]
    red = hint_ab("#b03a3a")
    assert in_gamut(DARK, red)
    hints = ColourHints(points=(ColourPoint(20, 48, red, radius=4),))
    hinted = colorizer.predict_ab([L], hints=[hints])[0]
    # At the hint's own pixels: the hint's chroma at the scan's lightness, to rounding.
    ys, xs = np.nonzero(rasterize(hints, *L.shape)[0] >= 1.0)
    wanted = np.stack([L[ys, xs], np.full(len(ys), red[0]), np.full(len(ys), red[1])], axis=-1)
    got = np.stack([L[ys, xs], hinted[0, ys, xs], hinted[1, ys, xs]], axis=-1)
    assert delta_e_ciede2000_np(wanted, got).max() < 0.5
    # The dark object takes the hint's colour well away from the point; the bright one keeps the network's.
    def moved(region: tuple[slice, slice]) -> float:
        wanted_shift = np.array(red)[:, None] - automatic[(slice(None), *region)].reshape(2, -1)
        shift = (hinted - automatic)[(slice(None), *region)].reshape(2, -1)
        return float((shift * wanted_shift).sum() / (wanted_shift**2).sum())

    assert moved((slice(10, 86), slice(30, 56))) > 0.5
    assert abs(moved((slice(10, 86), slice(72, 128)))) < 0.1


def test_regions_paint_their_polygon_and_no_hints_change_nothing(colorizer):
    L = two_halves()
    blue = hint_ab("#6080c0")
    assert in_gamut(BRIGHT, blue)
    region = ColourRegion(((80, 20), (120, 20), (120, 80), (80, 80)), blue)
    hinted = colorizer.colorize([L], hints=[ColourHints(regions=(region,))])[0]
    lab = rgb_to_lab_np(hinted.astype(np.float64))
    inside = lab[22:79, 82:119]
    assert delta_e_ciede2000_np(inside, np.array([BRIGHT, *blue])).max() < 1.0
    plain = colorizer.colorize([L])[0]
    assert np.array_equal(colorizer.colorize([L], hints=[None])[0], plain)
    assert np.array_equal(colorizer.colorize([L], hints=[ColourHints()])[0], plain)


def test_tiles_do_not_show_in_hinted_results(tiny_checkpoint):
    engine = create_engine(model=tiny_checkpoint, kind="torch", device="cpu")
    try:
        L = two_halves(120, 160)
        hints = ColourHints(points=(ColourPoint(30, 60, hint_ab("#b03a3a"), radius=9),))  # rows 51-69
        whole = Colorizer(engine, render_size=64).predict_ab([L], hints=[hints])[0]
        tiled = Colorizer(engine, render_size=64, tile_pixels=160 * 7).predict_ab([L], hints=[hints])[0]  # 7 rows
    finally:
        engine.close()
    assert np.abs(whole - tiled).max() < 1e-3


def test_hints_count_must_match_the_images(colorizer):
    with pytest.raises(ValueError, match="one \\(or None\\) per image"):
        colorizer.colorize([two_halves()], hints=[None, None])


# --- hint files --------------------------------------------------------------------------------------------------


def test_a_hint_file_saved_with_a_byte_order_mark_is_read(tmp_path):
    """Windows editors (Notepad before 2019, PowerShell's Out-File) start UTF-8 text with a byte-order mark, which
    is not JSON: such a hint file failed as "malformed JSON: Unexpected UTF-8 BOM"."""
    path = tmp_path / "scan.jpg.hints.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"points": [{"x": 5, "y": 5, "color": "#2a3f8f"}]}')
    assert load_hints_file(path).to_dict()["points"][0]["color"] == "#2a3f8f"


def test_a_hint_file_parses_to_canonical_form_and_ab():
    spec = parse_hints({"points": [{"x": 812, "y": 440, "color": "#2A3F8F"}, {"x": 120, "y": 95, "color": "#c8a27a",
                                                                               "radius": 6}],
                        "regions": [{"polygon": [[10, 10], [200, 10], [200, 90]], "color": "#8a1c1c"}]}, "h.json")
    assert len(spec) == 3
    assert spec.to_dict()["points"][0] == {"x": 812.0, "y": 440.0, "color": "#2a3f8f", "radius": 3.0}
    hints = spec.colour_hints()
    assert hints.points[0].ab == pytest.approx(hint_ab("#2a3f8f"), abs=1e-6)
    assert hints.regions[0].polygon == ((10.0, 10.0), (200.0, 10.0), (200.0, 90.0))
    assert parse_hints(spec.to_dict(), "again") == spec
    spec.check_bounds(1000, 500, "h.json")
    with pytest.raises(HintError, match=r"^p\.jpg: points\[0\]\.x: 812 is outside the photo \(800x500"):
        spec.check_bounds(800, 500, "p.jpg")
    with pytest.raises(HintError, match=r"regions\[0\]\.polygon\[1\]: \[200, 10\] is outside"):
        HintSpec(regions=spec.regions).check_bounds(150, 500, "p.jpg")


def test_a_documents_hints_parse_page_by_page_and_are_checked_against_its_pages():
    red = {"points": [{"x": 5, "y": 6, "color": "#c00"}]}
    blue = {"regions": [{"polygon": [[0, 0], [9, 0], [0, 9]], "color": "#00f"}]}
    spec = parse_hints({"pages": {"3": red, "1": blue}}, "album.hints.json")
    assert [number for number, _ in spec.pages] == [1, 3] and len(spec) == 2  # in page order
    assert spec.page(2) is None and spec.page(3).to_dict()["points"][0]["color"] == "#cc0000"
    assert spec.to_dict() == {"pages": {"1": spec.page(1).to_dict(), "3": spec.page(3).to_dict()}}
    assert parse_hints(spec.to_dict(), "again") == spec  # what a job stores reads back the same
    spec.check_document([(20, 10), (1, 1), (6, 7)], "album.tif")
    with pytest.raises(HintError, match=r"^album\.tif: pages\.3: the document has 2 pages$"):
        spec.check_document([(20, 10), (6, 7)], "album.tif")
    with pytest.raises(HintError, match=r"^album\.tif: pages\.3\.points\[0\]\.y: 6 is outside the page \(6x6"):
        spec.check_document([(20, 10), (1, 1), (6, 6)], "album.tif")
    with pytest.raises(HintError, match=r"^photo\.jpg: pages: hints page by page are for a multi-page TIFF document"):
        spec.check_bounds(100, 100, "photo.jpg")
    with pytest.raises(HintError, match=r"^album\.tif: colour hints place points on one picture, and its photo is a "
                                        r"2-page document: give them page by page"):
        parse_hints(red, "h").check_document([(20, 10), (6, 7)], "album.tif")
    with pytest.raises(HintError, match=r"pages: 3 hints, over the limit of 2"):
        parse_hints({"pages": {"1": red, "2": red, "3": red}}, "h", max_hints=2)


BAD_HINTS = {
    "malformed": ('{"points": [', ": malformed JSON: "),
    "not an object": ("[1, 2]", ": expected a JSON object"),
    "unknown field": ('{"points": [], "colour": 1}', ": colour: unknown field"),
    "unknown point field": ('{"points": [{"x": 1, "y": 1, "color": "#fff", "size": 2}]}', ": points[0].size: unknown"),
    "missing colour": ('{"points": [{"x": 1, "y": 1}]}', ": points[0].color: required"),
    "named colour": ('{"points": [{"x": 1, "y": 1, "color": "red"}]}', ": points[0].color: not an sRGB hex colour"),
    "short hex": ('{"points": [{"x": 1, "y": 1, "color": "#12345"}]}', ": points[0].color: not an sRGB hex colour"),
    "text coordinate": ('{"points": [{"x": "1", "y": 1, "color": "#fff"}]}', ": points[0].x: expected a number"),
    "NaN": ('{"points": [{"x": NaN, "y": 1, "color": "#fff"}]}', ": points[0].x: expected a number"),
    "zero radius": ('{"points": [{"x": 1, "y": 1, "color": "#fff", "radius": 0}]}', ": points[0].radius: must be"),
    "two vertices": ('{"regions": [{"polygon": [[0, 0], [5, 5]], "color": "#fff"}]}', ": regions[0].polygon: needs 3"),
    "collinear": ('{"regions": [{"polygon": [[0, 0], [5, 5], [9, 9]], "color": "#fff"}]}',
                  ": regions[0].polygon: degenerate"),
    "bow tie": ('{"regions": [{"polygon": [[0, 0], [20, 0], [0, 10], [20, 20]], "color": "#fff"}]}',
                ": regions[0].polygon: self-intersecting"),
    "bad vertex": ('{"regions": [{"polygon": [[0, 0], [5], [9, 9]], "color": "#fff"}]}',
                   ": regions[0].polygon[1]: expected [x, y]"),
    "points not a list": ('{"points": {"x": 1}}', ": points: expected a list"),
    "points beside pages": ('{"pages": {}, "points": []}', ": points: unknown field beside pages"),
    "pages not an object": ('{"pages": [1]}', ": pages: expected an object of pages by number"),
    "page zero": ('{"pages": {"0": {"points": []}}}', ": pages.0: not a page number (1 is the first page)"),
    "page by name": ('{"pages": {"cover": {"points": []}}}', ": pages.cover: not a page number"),
    "page not an object": ('{"pages": {"2": [1]}}', ": pages.2: expected a JSON object with points"),
    "bad point on a page": ('{"pages": {"2": {"points": [{"x": 1, "y": 1, "color": "red"}]}}}',
                            ": pages.2.points[0].color: not an sRGB hex colour"),
    "pages inside a page": ('{"pages": {"2": {"pages": {}}}}', ": pages.2.pages: unknown field"),
}


@pytest.mark.parametrize("case", sorted(BAD_HINTS))
def test_bad_hint_files_fail_with_one_line_naming_file_and_field(tmp_path, case):
    text, expected = BAD_HINTS[case]
    path = tmp_path / "scan.tif.hints.json"
    path.write_text(text)
    with pytest.raises(HintError) as caught:
        load_hints_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}{expected}"), message
    assert "\n" not in message


def test_too_many_hints_and_oversized_files_are_refused(tmp_path):
    points = [{"x": i % 50, "y": i // 50, "color": "#808080"} for i in range(11)]
    path = tmp_path / "many.hints.json"
    path.write_text(json.dumps({"points": points}))
    with pytest.raises(HintError, match=r"points: 11 hints, over the limit of 10"):
        load_hints_file(path, max_hints=10)
    path.write_text(" " * (1 << 20) + "{}")
    with pytest.raises(HintError, match=r"bytes, over the limit"):
        load_hints_file(path)


# --- tinct colorize ------------------------------------------------------------------------------------------------


def _scene_png(path: Path, height: int = 96, width: int = 128) -> None:
    gray = np.where(np.arange(width)[None, :] < width // 2, 80, 190).astype(np.uint8).repeat(height, axis=0)
    Image.fromarray(gray).save(path)


def _colorize_args(model: Path) -> list[str]:
    return ["--model", str(model), "--engine", "torch", "--device", "cpu", "--render-size", "64", "-q"]


def _lab(path: Path) -> np.ndarray:
    return rgb_to_lab_np(np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0)


def test_cli_hints_file_colours_a_photo_and_is_recorded_in_its_provenance(tmp_path, tiny_checkpoint):
    _scene_png(tmp_path / "scan.png")
    (tmp_path / "hints.json").write_text(json.dumps({"points": [{"x": 20, "y": 48, "color": "#b03a3a", "radius": 4}]}))
    out = tmp_path / "out.png"
    assert main(["colorize", str(tmp_path / "scan.png"), "-o", str(out), "--hints", str(tmp_path / "hints.json"),
                 *_colorize_args(tiny_checkpoint)]) == 0
    lab = _lab(out)
    wanted = np.array([lab[48, 20, 0], *hint_ab("#b03a3a")])
    assert delta_e_ciede2000_np(lab[46:51, 18:23], wanted).max() < 3.0  # through 8-bit PNG
    provenance = read_provenance(out)
    assert provenance is not None and provenance.guidance == "1 colour hint"
    assert provenance.model is not None and "colour hint" not in provenance.model


def test_cli_hints_follow_the_exif_orientation(tmp_path, tiny_checkpoint):
    """``x``, ``y`` are pixels of the photo as displayed: a scan stored sideways with EXIF orientation 6."""
    _scene_png(tmp_path / "upright.png")
    upright = Image.open(tmp_path / "upright.png")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back clockwise on display
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    (tmp_path / "sideways.jpg.hints.json").write_text(json.dumps({"points": [{"x": 20, "y": 48, "color": "#3a9a3a",
                                                                                "radius": 5}]}))
    assert main(["colorize", str(tmp_path / "sideways.jpg"), "-o", str(tmp_path / "out"), "--format", "png",
                 *_colorize_args(tiny_checkpoint)]) == 0
    lab = _lab(tmp_path / "out" / "sideways.png")
    assert lab.shape[:2] == (96, 128)
    assert delta_e_ciede2000_np(lab[47:50, 19:22], np.array([lab[48, 20, 0], *hint_ab("#3a9a3a")])).max() < 3.0


def test_cli_folder_sidecars_a_bad_one_fails_only_its_photo(tmp_path, tiny_checkpoint, capsys):
    scans = tmp_path / "scans"
    (scans / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/c.png"):
        _scene_png(scans / name)
    (scans / "a.png.hints.json").write_text(json.dumps({
        "points": [{"x": 20, "y": 48, "color": "#b03a3a"}],
        "regions": [{"polygon": [[80, 20], [120, 20], [120, 80]], "color": "#6080c0"}]}))
    (scans / "b.png.hints.json").write_text(json.dumps({"points": [{"x": 500, "y": 48, "color": "#b03a3a"}]}))
    out = tmp_path / "out"
    assert main(["colorize", str(scans), "-o", str(out), *_colorize_args(tiny_checkpoint)[:-1]]) == 1
    report = capsys.readouterr().out
    assert "colorized 2, skipped 0, failed 1" in report
    assert f"{scans / 'b.png.hints.json'}: points[0].x: 500 is outside the photo (128x96" in report
    assert "ignored" not in report  # sidecars are not counted as files Tinct cannot read
    assert not (out / "b.png").exists() and not list(out.glob("b.png*"))  # nothing under the output's name
    assert read_provenance(out / "a.png").guidance == "2 colour hints"
    assert read_provenance(out / "sub" / "c.png").guidance is None
    lab = _lab(out / "a.png")
    assert delta_e_ciede2000_np(lab[60, 110], np.array([lab[60, 110, 0], *hint_ab("#6080c0")])) < 3.0


def test_cli_hints_needs_one_input_photo(tmp_path, tiny_checkpoint, capsys):
    _scene_png(tmp_path / "a.png")
    (tmp_path / "h.json").write_text("{}")
    assert main(["colorize", str(tmp_path), "-o", str(tmp_path / "out"), "--hints", str(tmp_path / "h.json"),
                 *_colorize_args(tiny_checkpoint)]) == 2
    assert "--hints names the hint file of one photo" in capsys.readouterr().err


def test_cli_malformed_hints_file_fails_the_photo_with_one_line(tmp_path, tiny_checkpoint, capsys):
    _scene_png(tmp_path / "a.png")
    (tmp_path / "h.json").write_text('{"points": [{"x": 1, "y": 2, "color": "#zzzzzz"}]}')
    out = tmp_path / "a-colour.png"
    assert main(["colorize", str(tmp_path / "a.png"), "-o", str(out), "--hints", str(tmp_path / "h.json"),
                 *_colorize_args(tiny_checkpoint)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'h.json'}: points[0].color: not an sRGB hex colour" in err
    assert not out.exists()


def test_hint_ab_is_float_tensor_friendly():
    """The grid maths keep the network's dtype and device (a CUDA engine's ab stays on the GPU)."""
    from models.hints import hinted_grid

    ab = torch.zeros((2, 4, 4), dtype=torch.float32)
    padded = np.full((16, 16), 50.0, np.float32)
    out = hinted_grid(ab, padded, 4, ColourHints(points=(ColourPoint(2, 2, (20.0, 0.0)),)), (16, 16), (16, 16))
    assert out.dtype == torch.float32 and out.shape == (2, 4, 4) and out[0, 0, 0] > 15.0


# --- the measurement -------------------------------------------------------------------------------------------


def test_evaluate_hints_scores_counts_against_the_truth(tmp_path, tiny_checkpoint, capsys):
    from tests.conftest import gradient_image
    from tools.evaluate import main as evaluate_main
    from tools.evaluate_hints import sample_truth_hints

    for i in range(3):
        Image.fromarray(gradient_image(48, 64, seed=i)).save(tmp_path / f"p{i}.png")
    truth = gradient_image(48, 64, seed=0).astype(np.float64) / 255
    five, ten = sample_truth_hints(truth, 5), sample_truth_hints(truth, 10)
    assert ten.points[:5] == five.points  # nested: more hints add to the fewer
    x, y = int(ten.points[0].x), int(ten.points[0].y)
    patch = rgb_to_lab_np(truth)[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3]
    assert ten.points[0].ab == pytest.approx(tuple(patch[..., 1:].reshape(-1, 2).mean(axis=0)), abs=1e-6)
    out = tmp_path / "hints.json"
    assert evaluate_main(["--model", str(tiny_checkpoint), "--data", str(tmp_path), "--hints", "--engine", "torch",
                          "--device", "cpu", "--render-size", "64", "--hint-counts", "0,1,20", "--json", str(out)]) == 0
    assert "| data | photos | gray | automatic | 1 hints | 20 hints |" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["images"] == 3 and set(result["psnr"]) == {"0", "1", "20"}
    # An untrained model guesses noise; twenty true colours must beat it by a wide margin.
    assert result["gain_db"]["20"] > 3.0
