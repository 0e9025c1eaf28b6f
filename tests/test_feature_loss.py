"""The feature loss: a frozen ImageNet classifier compares the colorized photo with the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.checkpoint import load_checkpoint
from models.color import rgb_to_lab
from tests.conftest import gradient_image
from tools.feature_loss import FeatureLoss
from tools.train import TrainConfig, train

TINY_EFFNET = {"pretrained": False, "decoder_channels": [16, 16, 16]}


def _lab_batch(count: int, side: int) -> torch.Tensor:
    rgb = np.stack([gradient_image(side, side, seed=i) for i in range(count)]).astype(np.float32) / 255
    return rgb_to_lab(torch.from_numpy(rgb).permute(0, 3, 1, 2))


def test_feature_loss_is_zero_at_the_truth_and_grows_as_colour_departs() -> None:
    lab = _lab_batch(2, 64)
    L, ab = lab[:, :1], lab[:, 1:]
    loss = FeatureLoss()
    at_truth = float(loss(L, ab, ab))
    halfway = float(loss(L, ab * 0.5, ab))
    gray = float(loss(L, torch.zeros_like(ab), ab))
    assert at_truth < 1e-6
    assert 0 < halfway < gray
    # ab at a quarter of the resolution is enlarged to L's, as a network's stride-4 output is
    low = torch.nn.functional.avg_pool2d(ab, 4)
    assert float(loss(L, low, ab)) < halfway


def test_feature_loss_moves_colour_towards_the_truth_and_never_the_classifier() -> None:
    lab = _lab_batch(2, 64)
    L, ab = lab[:, :1], lab[:, 1:]
    loss = FeatureLoss()
    frozen = {k: v.clone() for k, v in loss.state_dict().items()}
    guess = torch.zeros(2, 2, 16, 16, requires_grad=True)  # at a network's stride-4 resolution
    optimizer = torch.optim.Adam([guess], lr=2.0)
    first = None
    for _ in range(60):
        value = loss(L, guess, ab)
        first = first if first is not None else float(value.detach())
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    assert float(loss(L, guess, ab).detach()) < 0.6 * first
    # The classifier alone does not pin each pixel's colour (the supervised loss does that), but where it moves a
    # gray guess is towards the truth's colours, not away from them.
    found = torch.nn.functional.interpolate(guess.detach(), size=ab.shape[-2:], mode="bilinear")
    assert float(torch.nn.functional.cosine_similarity(found.flatten(), ab.flatten(), dim=0)) > 0.2
    loss.train()
    assert not loss.net.training  # BatchNorm keeps ImageNet's statistics
    for name, value in loss.state_dict().items():
        torch.testing.assert_close(value, frozen[name])


def test_training_with_the_feature_loss_records_its_weight(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        Image.fromarray(gradient_image(72, 72, seed=i)).save(photos / f"p{i}.png")
    cfg = TrainConfig(model_options=TINY_EFFNET, data=[str(photos)], steps=2, batch_size=2, crop=64, loss="mix",
                      feature_weight=2.0, log_every=1, save_every=2, warmup_steps=1)
    ckpt = load_checkpoint(train(cfg, tmp_path / "run"))
    assert ckpt.provenance["feature_weight"] == 2.0
