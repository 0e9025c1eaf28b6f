"""``tools evaluate --video`` on a generated colour clip: gray baseline, the model with smoothing off and on,
and the ground truth, scored through the real film pipeline."""

from __future__ import annotations

import json
import math

from tests.media import moving_scene, write_clip
from tools import evaluate
from tools.evaluate_video import GRAY_ROW, TRUTH_ROW, RowScores


def test_video_evaluation_rows_and_warping_error(tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "clips").mkdir()
    clip = write_clip(tmp_path / "clips" / "pan.mkv", moving_scene(12, 96, 64, cuts_at=(6,)), codec="ffv1",
                      pix_fmt="yuv444p")
    out = tmp_path / "video.json"
    assert evaluate.main(["--video", "--model", str(tiny_checkpoint), "--data", str(clip.path.parent),
                          "--engine", "torch", "--render-size", "64", "--smoothing", "0,0.8", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "warping error" in table and "mean of 1 clips" in table
    (result,) = json.loads(out.read_text())
    rows = result["rows"]
    assert list(rows) == [GRAY_ROW, rows_named(rows, "smoothing off"), rows_named(rows, "smoothing 0.8"), TRUTH_ROW]
    assert result["frames"] == 12 and result["cuts"] == [6]
    for name, row in rows.items():
        assert row["frames"] == 12 and math.isfinite(row["warping_error"]), name
    assert rows[GRAY_ROW]["colourfulness"] == 0 and rows[TRUTH_ROW]["colourfulness"] > 20
    model_off, model_on = rows[rows_named(rows, "smoothing off")], rows[rows_named(rows, "smoothing 0.8")]
    assert model_off["colourfulness"] > 0 and math.isfinite(model_off["psnr"])
    assert rows[GRAY_ROW]["delta_e"] > 5 and 0 < model_off["delta_e"] < 100 and math.isnan(rows[TRUTH_ROW]["delta_e"])
    assert "| CIEDE2000 |" in table
    assert model_on["warping_error"] <= model_off["warping_error"]


def rows_named(rows: dict, suffix: str) -> str:
    (name,) = [name for name in rows if name.endswith(suffix)]
    return name


def test_rows_average_psnr_over_the_same_frames():
    """A black opening is identical to the truth for the gray baseline (infinite PSNR, left out) but a finite, high
    PSNR for a model that tints it; averaging each row over its own finite frames would flatter the model."""
    gray, model = RowScores(psnr=[math.inf, 30.0, 20.0]), RowScores(psnr=[55.0, 24.0, 22.0])
    paired = {i for i in range(3) if math.isfinite(gray.psnr[i]) and math.isfinite(model.psnr[i])}
    assert gray.summary(paired)["psnr"] == 25.0 and gray.summary(paired)["identical_frames"] == 1
    assert model.summary(paired)["psnr"] == 23.0 and model.summary(paired)["identical_frames"] == 0
    assert model.summary()["psnr"] == (55.0 + 24.0 + 22.0) / 3  # unpaired: every finite frame of its own
