"""``python -m tools experiments`` end to end at smoke scale, on generated data (CI has no ../shared/data)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.color import lab_to_rgb
from tests.conftest import SHARED_JUDGE, gradient_image, needs_shared_judge
from tools.experiments import main as experiments_main
from tools.experiments_cifar import CifarSettings, run_cifar

# Two classes that differ only in colour: the same lightness texture, blue for one, green for the other.
CLASS_AB = {"airplane": (5.0, -45.0), "frog": (-45.0, 40.0)}


def _tile(ab: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    L = 55 + 15 * rng.standard_normal((1, 32, 32))
    lab = np.concatenate([L, np.full((1, 32, 32), ab[0]), np.full((1, 32, 32), ab[1])]).astype(np.float32)
    rgb = lab_to_rgb(torch.from_numpy(lab)[None])[0].permute(1, 2, 0).numpy()
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def cifar_zip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cifar") / "cifar10.zip"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        for split, count in (("train", 40), ("test", 12)):
            for cls, ab in CLASS_AB.items():
                for i in range(count):
                    buffer = io.BytesIO()
                    Image.fromarray(_tile(ab, rng)).save(buffer, format="PNG")  # lossless: colour is the only cue
                    zf.writestr(f"{split}/{cls}/{i:04d}.jpg", buffer.getvalue())
    return path


def test_cifar_judge_sees_colour_that_gray_lacks(cifar_zip: Path) -> None:
    settings = CifarSettings(judge_epochs=12, judge_width=8, colorizer_steps=4, transfer_steps=2, batch_size=16)
    result = run_cifar(cifar_zip, settings)
    rows = {row["label"]: row for row in result["rows"]}
    assert result["train_images"] == 80 and result["test_images"] == 24
    assert rows["ground truth (colour)"]["judge_accuracy"] >= 0.9  # colour alone names the class
    assert rows["grayscale (ab = 0)"]["judge_accuracy"] <= 0.65  # without it the judge can only guess
    assert rows["grayscale (ab = 0)"]["colourfulness"] < 1.0
    labels = list(rows)
    assert labels[0].startswith("grayscale") and labels[-1].startswith("ground truth")
    assert "regression (L2)" in rows and "classification, mode" in rows and "classification, mean (T=1)" in rows
    assert {"classification, annealed mean T=0.38", "classification, annealed mean T=0.89"} <= set(rows)
    assert any(label.startswith("transfer") for label in rows)
    assert all(0.0 <= row["judge_accuracy"] <= 1.0 for row in rows.values())


def test_experiments_command_writes_both_parts(cifar_zip: Path, tmp_path: Path) -> None:
    photos, scored = tmp_path / "photos", tmp_path / "scored"
    photos.mkdir()
    scored.mkdir()
    for i in range(4):
        Image.fromarray(gradient_image(80, 96, seed=i)).save(photos / f"p{i}.png")
    for i in range(2):
        Image.fromarray(gradient_image(72, 88, seed=10 + i)).save(scored / f"e{i}.png")
    out = tmp_path / "results"
    code = experiments_main(["--preset", "smoke", "--cifar", str(cifar_zip), "--train", str(photos),
                             "--eval", str(scored), "--judge-model", str(tmp_path / "no-judge"), "--out", str(out),
                             "--work-dir", str(tmp_path / "work")])
    assert code == 0
    cifar = json.loads((out / "cifar.json").read_text())
    natural = json.loads((out / "natural.json").read_text())
    assert cifar["preset"] == natural["preset"] == "smoke"
    assert natural["eval_images"] == 2
    labels = [row["label"] for row in natural["rows"]]
    assert any("pix2pix" in label for label in labels) and any("fusion" in label for label in labels)
    assert any("decode-time rebalancing" in label for label in labels)
    assert labels[-1].startswith("shipped default model")
    assert all(np.isfinite(row["psnr"]) for row in natural["rows"])
    assert "no-judge" in natural["judge_skipped"]  # said plainly, not silently left out
    table = (out / "natural.md").read_text()
    assert "gray baseline (ab = 0)" in table and "ImageNet judge not run" in table
    assert (out / "natural_sheet.jpg").stat().st_size > 0

    unet = tmp_path / "work" / "natural" / "unet" / "model.pt"  # a rerun reuses rows trained with the same settings
    before = unet.stat().st_mtime_ns
    assert experiments_main(["--part", "natural", "--preset", "smoke", "--rows", "unet", "--train-only",
                             "--train", str(photos), "--out", str(out), "--work-dir", str(tmp_path / "work")]) == 0
    assert unet.stat().st_mtime_ns == before
    with pytest.raises(SystemExit, match="unknown rows nope"):
        experiments_main(["--part", "natural", "--preset", "smoke", "--rows", "nope", "--out", str(out)])

    (out / "cifar.md").unlink()  # --tables-only rebuilds the tables from the results, training nothing
    assert experiments_main(["--tables-only", "--out", str(out)]) == 0
    assert "gap closed" in (out / "cifar.md").read_text()
    with pytest.raises(SystemExit, match="no results to tabulate"):
        experiments_main(["--tables-only", "--out", str(tmp_path / "empty")])


def test_experiments_report_missing_data_in_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        experiments_main(["--part", "cifar", "--preset", "smoke", "--cifar", str(tmp_path / "none.zip"),
                          "--out", str(tmp_path)])
    assert "none.zip: no such CIFAR-10 zip" in str(exited.value.code)
    assert not (tmp_path / "cifar.json").exists()
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(SystemExit) as exited:  # before any training, not after it
        experiments_main(["--part", "cifar", "--preset", "smoke", "--cifar", str(tmp_path / "none.zip"),
                          "--out", str(tmp_path / "a-file" / "results")])
    assert exited.value.code == 2
    assert f"error: --out {tmp_path / 'a-file' / 'results'}: " in capsys.readouterr().err


@needs_shared_judge
def test_clothing_classes_map_to_real_imagenet_labels() -> None:
    from tools.judge import FOLDER_TO_IMAGENET, ImageNetJudge

    judge = ImageNetJudge(SHARED_JUDGE)
    for folder, names in FOLDER_TO_IMAGENET.items():
        assert len(judge.accepted_for_folder(folder)) == len(names)
    assert judge.accepted_for_folder("daisy") == judge.label_indices(["daisy"])
    assert judge.accepted_for_folder("not-a-class") is None


def test_judge_sees_a_thumbnail_whole_and_a_large_photo_through_the_evaluation_crop() -> None:
    from tools.judge import INPUT_SIDE, _prepare

    thumbnail = np.zeros((64, 64, 3), np.uint8)
    thumbnail[:8, :8] = 255  # a white corner the evaluation crop would cut off
    judged = _prepare(thumbnail)
    assert judged.shape == (INPUT_SIDE, INPUT_SIDE, 3) and judged.dtype == np.uint8
    assert judged[:20, :20].mean() > 200

    large = np.zeros((300, 400, 3), np.uint8)
    large[:20, :20] = 255  # outside the centre 224 of the photo scaled to a 256 short side
    large[140:160, 190:210] = 255  # the centre survives
    judged = _prepare(large)
    assert judged.shape == (INPUT_SIDE, INPUT_SIDE, 3)
    assert judged[:10, :10].max() == 0 and judged[105:119, 105:119].mean() > 200
