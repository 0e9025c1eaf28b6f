"""``python -m tools probe``: the linear probe of encoders on generated photos filed in class folders."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from models.color import lab_to_rgb_np
from tools.datasets import in_holdout
from tools.probe_encoder import main

SPLIT = 0.3


def texture(seed: int, low: float = 35.0, high: float = 70.0, size: int = 48) -> np.ndarray:
    """A smooth random lightness pattern in [low, high]: photos that differ in everything but their class."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((6, 6))
    smooth = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
    return low + (high - low) * smooth.astype(np.float32) / 255


def photo(lightness: np.ndarray, a: float, b: float) -> Image.Image:
    lab = np.stack([lightness, np.full_like(lightness, a), np.full_like(lightness, b)], axis=-1)
    return Image.fromarray((lab_to_rgb_np(lab) * 255 + 0.5).astype(np.uint8))


def paired_seeds(classes: tuple[str, ...], count: int) -> list[int]:
    """Texture seeds whose photo falls on the same side of the split in every class, so every photo scored has its
    twins (the same lightness, another class) scored beside it."""
    seeds = (s for s in range(10_000) if len({in_holdout(f"{c}/t{s}.png", SPLIT) for c in classes}) == 1)
    return [next(seeds) for _ in range(count)]


def test_the_probe_reads_classes_that_gray_shows_and_not_those_only_colour_shows(tmp_path, tiny_checkpoint, capsys):
    # Classes told apart by lightness (dark, mid, bright textures, all of one colour) ...
    by_lightness = tmp_path / "lightness.zip"
    with zipfile.ZipFile(by_lightness, "w") as zf:
        for name, low, high in (("dark", 10.0, 30.0), ("mid", 45.0, 60.0), ("bright", 75.0, 90.0)):
            for seed in range(24):
                buffer = _png(photo(texture(seed, low, high), 10.0, 20.0))
                zf.writestr(f"train/{name}/t{seed}.png", buffer)
    out = tmp_path / "lightness.json"
    assert main([f"tiny={tiny_checkpoint}", "--data", str(by_lightness), "--val-split", str(SPLIT), "--per-class",
                 "24", "--size", "64", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {(r["model"], r["input"]): r for r in report["results"]}
    assert set(rows) == {("imagenet lite0", "gray"), ("imagenet lite0", "colour"), ("tiny", "gray")}
    assert rows[("tiny", "gray")]["feature"] == "stride-32 features (320-d)"
    assert report["setup"]["classes"] == 3 and report["setup"]["split_photos"] > 6
    assert all(r["top1"] >= 0.9 for r in rows.values()), rows
    table = capsys.readouterr().out
    assert "| tiny | gray | stride-32 features (320-d) |" in table and "chance 33.3%" in table

    # ... and classes told apart only by colour: every photo has a twin of the same lightness in the other class.
    by_colour = tmp_path / "colour"
    for name, (a, b) in (("red", (45.0, 25.0)), ("green", (-40.0, 30.0))):
        (by_colour / name).mkdir(parents=True)
        for seed in paired_seeds(("red", "green"), 24):
            photo(texture(seed), a, b).save(by_colour / name / f"t{seed}.png")
    out = tmp_path / "colour.json"
    assert main(["--data", str(by_colour), "--val-split", str(SPLIT), "--size", "64", "--out", str(out)]) == 0
    rows = {r["input"]: r["top1"] for r in json.loads(out.read_text())["results"]}
    assert rows["colour"] >= 0.9 and rows["gray"] <= 0.6, rows


def test_the_probe_refuses_photos_without_class_folders_in_one_line(tmp_path, tiny_checkpoint, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for seed in range(4):
        photo(texture(seed), 20.0, 10.0).save(flat / f"t{seed}.png")
    with pytest.raises(SystemExit) as exc:
        main([str(tiny_checkpoint), "--data", str(flat), "--no-imagenet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"python -m tools probe: error: {flat}: the probe needs photos filed in class folders "
                       "(<class>/<photo>), found 0 classes")
    with pytest.raises(SystemExit) as exc:
        main([str(tiny_checkpoint), "--data", "s3://photos/classes/", "--no-imagenet"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "python -m tools probe: error: --data s3://photos/classes/: the probe reads a local folder or .zip (copy the "
        "photos down first)")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
