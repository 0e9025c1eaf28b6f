"""``tools evaluate`` end to end on a tiny generated dataset with a tiny real checkpoint (no mocks)."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.color import rgb_to_lab
from tests.conftest import gradient_image
from tools import evaluate
from tools.contact_sheet import HEADER_HEIGHT, render_contact_sheet, sheet_size


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Four colour photos (PNG and JPEG, two in a subfolder), one unreadable file, one gray photo and one photo
    too small for SSIM's window."""
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(gradient_image(48, 64, seed=1)).save(root / "a.png")
    Image.fromarray(gradient_image(64, 48, seed=2)).save(root / "b.jpg", quality=95)
    Image.fromarray(gradient_image(40, 40, seed=3)).save(root / "sub" / "c.png")
    Image.fromarray(gradient_image(48, 72, seed=4)).save(root / "sub" / "d.jpeg", quality=90)
    (root / "broken.jpg").write_bytes(b"this is not a JPEG")
    Image.fromarray(gradient_image(32, 32, seed=5)[..., 0]).save(root / "gray.png")
    Image.fromarray(gradient_image(8, 8, seed=6)).save(root / "tiny.png")
    return root


def test_evaluate_cli_writes_table_json_and_contact_sheet(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "out" / "eval.json"
    sheet = tmp_path / "out" / "sheet.png"
    rc = evaluate.main([
        "--model", str(tiny_checkpoint), "--data", str(tiny_dataset), "--render-size", "64", "--engine", "torch",
        "--precision", "fp32", "--batch-size", "3", "--json", str(out_json), "--contact-sheet", str(sheet),
        "--sheet-count", "2", "--cell-height", "50",
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert evaluate.GRAY_LABEL in printed and evaluate.TRUTH_LABEL in printed and "| PSNR dB |" in printed

    result = json.loads(out_json.read_text())
    assert result["image_count"] == 4
    assert result["render_size"] == 64 and result["data"] == str(tiny_dataset)
    assert sorted(Path(s).name for s in result["skipped"]) == ["broken.jpg", "gray.png", "tiny.png"]
    (model,) = result["models"]
    assert model["label"].startswith("effnet_unet@")
    for row in (model, result["gray_baseline"]):
        assert set(row["mean"]) == set(evaluate.METRIC_KEYS)
        assert 0 < row["mean"]["psnr"] < 100 and 0 < row["mean"]["ssim"] <= 1
    gray = result["gray_baseline"]["mean"]
    truth_c = result["truth"]["mean"]["colourfulness"]
    assert gray["colourfulness"] < 0.5 < truth_c
    assert gray["colourfulness_gap"] == pytest.approx(truth_c - gray["colourfulness"], rel=1e-6)
    assert len(result["images"]) == 4 and set(result["images"][0]["models"]) == {model["label"]}
    assert result["seconds"] > 0

    with Image.open(sheet) as img:
        # 3 columns (gray | model | truth), 2 rows, cells 50 high and at least as wide as the widest photo
        # (a.png, 64x48) needs at that height, round(50 * 64 / 48) = 67, or as the model's label needs.
        width, height = img.size
        assert height == sheet_size(2, 3, 67, 50)[1] == HEADER_HEIGHT + 2 * (50 + 4) + 4
        assert width >= sheet_size(2, 3, 67, 50)[0] and (width - 4 * 4) % 3 == 0


def test_perfect_colour_scores_near_infinite_psnr_through_the_same_scoring(tiny_dataset: Path) -> None:
    photo = next(evaluate.iter_truth_photos(tiny_dataset))
    L = evaluate.gray_input(photo.rgb)
    truth_ab = rgb_to_lab(torch.from_numpy(photo.rgb).permute(2, 0, 1))[1:].numpy()
    rgb, perfect = evaluate.score_ab(L, truth_ab, photo.rgb)
    assert perfect.psnr > 60 and perfect.ssim > 0.9999 and perfect.delta_e < 0.01 and perfect.colourfulness_gap < 0.01
    assert np.abs(rgb - photo.rgb).max() < 1e-3
    _, gray = evaluate.score_ab(L, np.zeros_like(truth_ab), photo.rgb)
    assert gray.psnr < perfect.psnr and gray.colourfulness == pytest.approx(0.0, abs=0.5)


def test_limit_skips_and_missing_data_are_handled(tiny_dataset: Path, tmp_path: Path) -> None:
    skipped: list[str] = []
    names = [p.name for p in evaluate.iter_truth_photos(tiny_dataset, limit=3, skipped=skipped)]
    # Name order; the broken file and the gray photo are skipped on the way; nothing is read past the limit.
    assert names == [str(tiny_dataset / n) for n in ("a.png", "b.jpg", "sub/c.png")]
    assert [Path(s).name for s in skipped] == ["broken.jpg", "gray.png"]
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(tiny_dataset.rglob("*.*")):
            zf.write(path, path.relative_to(tiny_dataset).as_posix())
    from_zip = [p.name for p in evaluate.iter_truth_photos(archive)]
    assert from_zip == [f"{archive}!{n}" for n in ("a.png", "b.jpg", "sub/c.png", "sub/d.jpeg")]
    with pytest.raises(FileNotFoundError, match="not a folder or a .zip"):
        list(evaluate.iter_truth_photos(tmp_path / "nowhere"))


def test_cli_bad_input_is_one_line_naming_the_file(tiny_dataset: Path, tiny_checkpoint: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    not_a_zip = tmp_path / "photos.zip"
    not_a_zip.write_bytes(b"not a zip")
    (tmp_path / "empty").mkdir()
    for args, reason in (
        (["--model", str(tmp_path / "missing.pt"), "--data", str(tiny_dataset)], "missing.pt: no such checkpoint file"),
        (["--model", str(junk), "--data", str(tiny_dataset)], "junk.pt: not a readable checkpoint"),
        (["--model", str(tiny_checkpoint), "--data", str(tmp_path / "nowhere")], "nowhere: not a folder or a .zip"),
        (["--model", str(tiny_checkpoint), "--data", str(not_a_zip)], "photos.zip: not a readable .zip"),
        (["--model", str(tiny_checkpoint), "--data", str(tmp_path / "empty")], "empty: no readable colour photos"),
        (["--video", "--model", str(junk), "--data", str(tmp_path / "empty")], "cannot load model"),
        # refused before any photo is scored, not after: a file stands where the JSON's folder would be
        (["--model", str(tiny_checkpoint), "--data", str(tiny_dataset), "--json", str(junk / "eval.json")],
         f"argument --json: {junk / 'eval.json'}: {junk} is a file, not a folder"),
    ):
        with pytest.raises(SystemExit) as exc:
            evaluate.main([*args, "--render-size", "64"])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()  # argparse's own errors come after its usage lines
        assert err[-1].startswith("python -m tools evaluate: error: ") and reason in err[-1], err
        assert not any(line.startswith(("Traceback", "  File")) for line in err), err


def test_json_writes_infinite_psnr_as_a_string() -> None:
    assert evaluate._json_safe({"psnr": [math.inf, 1.5]}) == {"psnr": ["inf", 1.5]}


def test_contact_sheet_fits_mixed_shapes_and_checks_rows(tmp_path: Path) -> None:
    wide, tall = gradient_image(30, 60, seed=1), gradient_image(60, 30, seed=2)
    rows = [[wide[..., 0], wide / 255.0, wide], [tall[..., 0], tall / 255.0, tall]]
    labels = ["gray", "a-very-long-model-label@0123456789abcdef", "truth"]
    out = render_contact_sheet(rows, labels, tmp_path / "s.png", cell_height=40, cell_width=80)
    with Image.open(out) as img:
        assert img.size == sheet_size(2, 3, 80, 40)
        pixels = np.asarray(img)
    # The wide photo fills its cell's width; the cell beside the tall one is background on both sides.
    y = HEADER_HEIGHT + 40 + 4 + 20
    assert (pixels[y, 6] == (236, 236, 236)).all()
    # Without a cell width, columns widen to fit the longest label rather than cut it.
    with Image.open(render_contact_sheet(rows, labels, tmp_path / "auto.png", cell_height=40)) as img:
        assert img.size[0] > sheet_size(2, 3, 80, 40)[0] and img.size[1] == sheet_size(2, 3, 80, 40)[1]
    with pytest.raises(ValueError, match="do not have 3 images"):
        render_contact_sheet([rows[0][:2]], ["gray", "model", "truth"], tmp_path / "bad.png")
