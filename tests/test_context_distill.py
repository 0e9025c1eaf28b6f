"""Distilling the whole-picture embedding: a frozen ImageNet encoder's view of the colour crop teaches the model's
view of the gray one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import load_checkpoint
from models.color import rgb_to_lab
from models.efficientnet_lite import EfficientNetLite
from models.registry import create_model
from tests.conftest import gradient_image
from tools.context_distill import HEAD_LAYERS, ContextDistillation
from tools.train import TrainConfig, main, train

# A small decoder on the ImageNet encoder (pretrained, as any real parent is), with the embedding to distil.
TINY_CONTEXT = {"decoder_channels": [16, 16, 16], "global_context": True}


def _lab_batch(count: int, side: int) -> torch.Tensor:
    rgb = np.stack([gradient_image(side, side, seed=i) for i in range(count)]).astype(np.float32) / 255
    return rgb_to_lab(torch.from_numpy(rgb).permute(0, 3, 1, 2))


def test_a_gray_photo_is_seen_alike_and_colour_is_what_the_distance_measures() -> None:
    # The teacher and an untouched ImageNet student see a gray photo identically (the gray input the encoder is
    # given is the colour crop's own gray rendering), so the loss measures only what colour adds to the picture.
    distil = ContextDistillation()
    student = create_model("effnet_unet", global_context=True, decoder_channels=(16, 16, 16)).eval()
    lab = _lab_batch(2, 96)
    L, ab = lab[:, :1], lab[:, 1:]
    with torch.no_grad():
        out, embedding = student.colour_and_embedding(L)
        torch.testing.assert_close(out, student(L))  # the training path is the inference path
        torch.testing.assert_close(embedding, student.encoder.embedding(EfficientNetLite.preprocess_l(L)))
        at_gray = float(distil(embedding, L, torch.zeros_like(ab)))
        at_colour = float(distil(embedding, L, ab))
    assert at_gray < 1e-4 < 0.05 < at_colour
    distil.train()
    assert not distil.teacher.training  # BatchNorm keeps ImageNet's statistics


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for i in range(4):
        Image.fromarray(gradient_image(72, 72, seed=i)).save(root / f"p{i}.png")
    return root


def test_distillation_trains_the_head_towards_the_colour_view_while_the_encoder_stays_frozen(photos, tmp_path) -> None:
    start = train(TrainConfig(model_options=TINY_CONTEXT, data=[str(photos)], steps=0, batch_size=2, crop=64),
                  tmp_path / "start")
    assert main(["--init", str(start), "--data", str(photos), "--steps", "30", "--batch-size", "4", "--crop", "64",
                 "--warmup-steps", "1", "--lr", "1e-3", "--context-distill-weight", "5",
                 "--freeze-encoder-steps", "30", "--run-dir", str(tmp_path / "run")]) == 0
    child = load_checkpoint(tmp_path / "run" / "model.pt")
    assert child.provenance["context_distill_weight"] == 5.0
    before, after = load_checkpoint(start).state_dict, child.state_dict
    moved = {name for name, t in before.items() if name.startswith("encoder.") and t.is_floating_point()
             and not torch.allclose(t.float(), after[name].float(), atol=1e-6, rtol=0)}
    # The head's weights and BatchNorm affine terms learn; its statistics and the encoder's body stay as they were.
    assert moved == {"encoder._conv_head.weight", "encoder._bn1.weight", "encoder._bn1.bias"}, moved
    assert all(name.startswith(HEAD_LAYERS) for name in moved)

    # And the head learned what it was asked: the gray crops' embedding is nearer the colour crops' than before.
    distil = ContextDistillation()
    lab = _lab_batch(4, 64)
    L, ab = lab[:, :1], lab[:, 1:]
    with torch.no_grad():
        distance = [float(distil(ckpt.build_model().eval().colour_and_embedding(L)[1], L, ab))
                    for ckpt in (load_checkpoint(start), child)]
    assert distance[1] < 0.8 * distance[0], distance


def test_a_model_without_the_embedding_refuses_distillation_in_one_line(photos, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(photos), "--steps", "1", "--batch-size", "2", "--crop", "64", "--set", "pretrained=false",
              "--set", "decoder_channels=[16,16,16]", "--context-distill-weight", "1",
              "--run-dir", str(tmp_path / "bad")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "context_distill_weight 1 needs a model with the whole-picture embedding" in err, err
    assert not (tmp_path / "bad" / "model.pt").exists()
