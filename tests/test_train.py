"""The training loop on tiny generated data: every loss kind runs, resume continues, outputs load."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import load_checkpoint
from models.predictor import DecodeOptions
from tests.conftest import gradient_image
from tools.datasets import Augment, BatchSampler, PhotoBank, SourceSpec, augment_crop
from tools.train import STATE_FILE, TrainConfig, colour_loss, main, train

TINY_EFFNET = {"pretrained": False, "decoder_channels": [16, 16, 16]}


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    for i in range(6):
        Image.fromarray(gradient_image(48 + 8 * i, 64, seed=i)).save(root / ("sub" if i % 2 else ".") / f"p{i}.png")
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(root / "gray.png")  # no colour: skipped
    (root / "broken.jpg").write_bytes(b"not a jpeg")  # unreadable: skipped with a warning
    return root


def test_photo_bank_reads_folders_and_zips(photo_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(photo_dir.rglob("*.png")):
            zf.write(path, path.relative_to(photo_dir).as_posix())
    folder = PhotoBank([SourceSpec(photo_dir)], short_side=40)
    zipped = PhotoBank([SourceSpec.parse(f"{archive}:2")], short_side=40)
    assert len(folder) == len(zipped) == 6  # the gray photo and the broken file are left out
    assert zipped.sampling_weights == [2.0] * 6
    assert all(min(im.shape[:2]) <= 40 for im in folder.images)


def test_source_spec_weights() -> None:
    assert SourceSpec.parse("data/a:3") == SourceSpec(Path("data/a"), 3.0)
    assert SourceSpec.parse("data/a") == SourceSpec(Path("data/a"), 1.0)


def test_augment_crop_shape_and_content() -> None:
    rgb = gradient_image(50, 70)
    rng = np.random.default_rng(0)
    crops = [augment_crop(rgb, Augment(crop=32), rng) for _ in range(20)]
    assert all(c.shape == (32, 32, 3) and c.dtype == np.uint8 for c in crops)
    assert len({c.tobytes() for c in crops}) == 20  # random: no two crops alike
    square = gradient_image(50, 50)  # no zoom, shear or flip, and no room to move: the crop is the photo
    plain = augment_crop(square, Augment(crop=50, zoom=(1.0, 1.0), shear=0.0, hflip=False), rng)
    np.testing.assert_array_equal(plain, square)


def test_sampler_yields_lab_batches(photo_dir: Path) -> None:
    sampler = BatchSampler(PhotoBank([SourceSpec(photo_dir)], short_side=40), 3, Augment(crop=32), seed=1)
    L, ab = next(sampler)
    assert L.shape == (3, 1, 32, 32) and ab.shape == (3, 2, 32, 32)
    assert 0 <= float(L.min()) and float(L.max()) <= 100
    assert float(ab.abs().mean()) > 5  # the photos are colourful


def test_classification_loss_prefers_the_truth() -> None:
    ab = torch.full((1, 2, 4, 4), 30.0)
    from models.color import soft_encode_ab

    right = torch.log(soft_encode_ab(ab) + 1e-6)
    wrong = torch.log(soft_encode_ab(-ab) + 1e-6)
    assert colour_loss(right, ab, "classification", None) < colour_loss(wrong, ab, "classification", None)


@pytest.mark.parametrize(
    ("options", "loss", "adversarial"),
    [
        ({"head": "classification"}, "auto", 0.0),
        ({"head": "regression"}, "huber", 0.0),
        ({"head": "regression"}, "l1", 0.05),
    ],
)
def test_training_runs_and_writes_a_loadable_checkpoint(photo_dir, tmp_path, options, loss, adversarial) -> None:
    cfg = TrainConfig(model_options=TINY_EFFNET | options, data=[str(photo_dir)], val=[str(photo_dir)],
                      steps=3, batch_size=2, crop=64, loss=loss, adversarial_weight=adversarial,
                      log_every=1, eval_every=3, save_every=3, warmup_steps=1)
    path = train(cfg, tmp_path / "run")
    ckpt = load_checkpoint(path)
    assert ckpt.provenance["steps"] == 3 and ckpt.provenance["final"] is True
    assert {"val_ab_rmse", "val_ab_rmse_gray"} <= set(ckpt.provenance["metrics"])
    model = ckpt.build_model()
    assert model.config.head == options["head"]


def test_training_learns_a_constant_colour(tmp_path: Path) -> None:
    """On photos that are all one hue the loss must fall: the loop really optimizes."""
    root = tmp_path / "orange"
    root.mkdir()
    for i in range(4):
        img = np.zeros((64, 64, 3), np.uint8)
        img[...] = (200, 120, 40)
        img[:, : 16 + 8 * i] = (150, 90, 30)  # same hue, different lightness
        Image.fromarray(img).save(root / f"{i}.png")
    cfg = TrainConfig(model_options=TINY_EFFNET | {"head": "regression"}, data=[str(root)], val=[str(root)],
                      steps=40, batch_size=4, crop=64, lr=3e-3, loss="l2", log_every=40, eval_every=40,
                      save_every=40, warmup_steps=1)
    metrics = load_checkpoint(train(cfg, tmp_path / "run")).provenance["metrics"]
    assert metrics["val_ab_rmse"] < 0.5 * metrics["val_ab_rmse_gray"]


def test_resume_continues_from_the_saved_step(photo_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = TrainConfig(model_options=TINY_EFFNET, data=[str(photo_dir)], steps=2, batch_size=2, crop=64,
                      save_every=2, warmup_steps=1)
    train(cfg, run)
    first = torch.load(run / STATE_FILE, weights_only=True)
    train(TrainConfig(**(vars(cfg) | {"steps": 4})), run, resume=True)
    second = torch.load(run / STATE_FILE, weights_only=True)
    assert (first["step"], second["step"]) == (2, 4)
    assert second["sampler"] != first["sampler"]  # the sampler's RNG moved on instead of restarting
    assert load_checkpoint(run / "model.pt").provenance["steps"] == 4


def test_cli_rejects_unknown_model_options(photo_dir: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(photo_dir), "--run-dir", str(tmp_path), "--set", "colour=blue"])
    assert exc.value.code == 2
    assert "no option colour" in capsys.readouterr().err


def test_cli_requires_data_for_a_new_run(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--run-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert "--data is required" in capsys.readouterr().err


def test_fine_tuning_starts_from_a_checkpoint(photo_dir: Path, tmp_path: Path) -> None:
    parent_cfg = TrainConfig(model_options=TINY_EFFNET | {"head": "regression"}, data=[str(photo_dir)], steps=2,
                             batch_size=2, crop=64, warmup_steps=1)
    parent = load_checkpoint(train(parent_cfg, tmp_path / "parent"))
    child_cfg = TrainConfig(data=[str(photo_dir)], steps=1, batch_size=2, crop=64, lr=1e-9, warmup_steps=1,
                            init_from=str(parent.path))
    child = load_checkpoint(train(child_cfg, tmp_path / "child"))
    assert child.config == parent.config  # the parent's architecture, not the defaults
    assert child.provenance["init_from"]["label"] == parent.label
    assert child.provenance["init_from"]["steps"] == 2
    for name, tensor in parent.state_dict.items():  # a near-zero learning rate: weights barely move
        if tensor.is_floating_point() and "running" not in name:
            torch.testing.assert_close(child.state_dict[name], tensor, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="holds a 'effnet_unet' model"):
        train(TrainConfig(model="unet", data=[str(photo_dir)], init_from=str(parent.path)), tmp_path / "bad")


def test_cli_fine_tunes_with_the_parents_architecture_and_settings(photo_dir: Path, tmp_path: Path, capsys) -> None:
    parent_cfg = TrainConfig(model="unet", model_options={"base_channels": 4}, data=[str(photo_dir)], steps=1,
                             batch_size=2, crop=64, warmup_steps=1, decode_temperature=0.6)
    parent = load_checkpoint(train(parent_cfg, tmp_path / "parent"))
    common = ["--data", str(photo_dir), "--steps", "1", "--batch-size", "2", "--crop", "64", "--warmup-steps", "1"]
    # --init-from is the old spelling of --init; no --model: the parent's architecture, not effnet_unet's default.
    assert main(["--init-from", str(parent.path), "--run-dir", str(tmp_path / "child"), *common]) == 0
    child = load_checkpoint(tmp_path / "child" / "model.pt")
    assert (child.model_name, child.config) == (parent.model_name, parent.config)
    assert DecodeOptions(**child.decode) == DecodeOptions(**parent.decode) and child.provenance["lr"] == 3e-4
    assert child.provenance["init_from"]["checkpoint"] == str(parent.path)
    with pytest.raises(SystemExit) as exc:
        main(["--init", str(parent.path), "--model", "effnet_unet", "--run-dir", str(tmp_path / "bad"), *common])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("holds a 'unet' model, not 'effnet_unet' (a fine-tune keeps its parent's architecture: "
                            "leave out --model)")
