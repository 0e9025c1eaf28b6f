"""``python -m tools bench --train``: where a training step's time goes, and crops/s per setup.

A training step is sampling (augmentation, Lab conversion), the forward pass, the loss (soft-encoding, class
rebalancing, the mix loss's decoded L1 term), the backward pass, the optimizer step and the EMA update. Each is
timed on its own, on generated photos (no data set needed), for a few setups of ``tools.train``:

* ``baseline``: what training did before issue 12 (NCHW tensors, the whole network trained, no EMA, the
  classification loss against a dense soft-encoded target: a distance to every bin for every pixel);
* ``channels_last``: NHWC convolutions (oneDNN's preferred layout on CPU), EMA on, the mix loss;
* ``frozen_encoder``: the same during ``--freeze-encoder-steps`` (no gradients through the pretrained encoder).

    python -m tools bench --train --train-crops 64,128 --train-steps 8
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.color import quantize_ab, soft_encode_ab
from models.registry import create_model
from tools.datasets import Augment, BatchSampler, PhotoBank
from tools.runtime import positive_ints
from tools.train import WeightAverage, _downsample_ab, _set_encoder_frozen, colour_loss, measure_class_weights

STAGES = ("sample", "forward", "loss", "backward", "step", "ema")
SETUPS = {
    "baseline": {"channels_last": False, "frozen": False, "ema": False, "loss": "dense_classification"},
    "channels_last": {"channels_last": True, "frozen": False, "ema": True, "loss": "mix"},
    "frozen_encoder": {"channels_last": True, "frozen": True, "ema": True, "loss": "mix"},
}
# Batch sizes per crop size that tools.train runs use on this machine (README): 32 at 64 px, 16 at 128 px.
DEFAULT_BATCH = {64: 32, 96: 24, 128: 16}


@dataclass
class TrainStepTiming:
    setup: str
    crop: int
    batch_size: int
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, summed over the timed steps
    steps: int = 0

    @property
    def crops_per_s(self) -> float:
        return self.steps * self.batch_size / max(sum(self.seconds.values()), 1e-9)

    def share(self, stage: str) -> float:
        return self.seconds.get(stage, 0.0) / max(sum(self.seconds.values()), 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {"setup": self.setup, "crop": self.crop, "batch_size": self.batch_size, "steps": self.steps,
                "crops_per_s": self.crops_per_s, "seconds": self.seconds}


def generated_photo_bank(count: int = 24, side: int = 160, seed: int = 0) -> PhotoBank:
    """A bank of smooth random colour photos, made in memory (the bench needs no data set)."""
    rng = np.random.default_rng(seed)
    photos = []
    for _ in range(count):
        small = torch.from_numpy(rng.integers(0, 256, size=(3, 6, 6))).float()[None]
        photo = torch.nn.functional.interpolate(small, size=(side, side), mode="bicubic", align_corners=False)
        photos.append(photo[0].clamp(0, 255).permute(1, 2, 0).to(torch.uint8).numpy())
    return PhotoBank.from_arrays(photos, source="generated")


def dense_classification_loss(out: torch.Tensor, ab: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """The classification loss as ``tools.train`` computed it before issue 12, kept here as the bench's reference:
    the same value as ``colour_loss(..., "classification")`` up to ab rounding, at the old cost."""
    ab = _downsample_ab(ab, out.shape[-2:])
    nll = -(soft_encode_ab(ab) * torch.log_softmax(out.float(), dim=1)).sum(dim=1)
    return (nll * class_weights[quantize_ab(ab)]).mean()


def time_training_step(setup: str, crop: int, batch_size: int, steps: int, warmup: int = 2,
                       model_options: dict[str, Any] | None = None, bank: PhotoBank | None = None) -> TrainStepTiming:
    """Run ``warmup + steps`` training steps of ``effnet_unet`` in ``setup`` and time each stage."""
    options = SETUPS[setup]
    torch.manual_seed(0)
    bank = bank or generated_photo_bank(side=max(160, crop * 2))
    sampler = BatchSampler(bank, batch_size, Augment(crop=crop), seed=0)
    model = create_model("effnet_unet", **(model_options or {}))
    if options["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    _set_encoder_frozen(model, options["frozen"])
    class_weights, _ = measure_class_weights(sampler, batches=2, lam=0.5)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ema = WeightAverage(model, 0.999) if options["ema"] else None
    timing = TrainStepTiming(setup, crop, batch_size, {stage: 0.0 for stage in STAGES})
    for i in range(warmup + steps):
        marks = [time.perf_counter()]
        L, ab = next(sampler)
        if options["channels_last"]:
            L = L.contiguous(memory_format=torch.channels_last)
        marks.append(time.perf_counter())
        out = model(L)
        marks.append(time.perf_counter())
        if options["loss"] == "dense_classification":
            value = dense_classification_loss(out, ab, class_weights)
        else:
            value = colour_loss(out, ab, options["loss"], class_weights, l1_weight=10.0)
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        if ema is not None:
            ema.update(model, i)
        marks.append(time.perf_counter() if ema is not None else marks[-1])
        if i >= warmup:
            for stage, start, end in zip(STAGES, marks[:-1], marks[1:], strict=True):
                timing.seconds[stage] += end - start
            timing.steps += 1
    return timing


def run_train_bench(crops: list[int], steps: int, setups: list[str], rounds: int = 2) -> list[TrainStepTiming]:
    """Each setup at each crop size, ``rounds`` times interleaved, keeping each one's fastest round: on a shared
    machine the other load comes and goes, and the fastest round is the one least disturbed by it."""
    results = []
    for crop in crops:
        bank = generated_photo_bank(side=max(160, crop * 2))
        best: dict[str, TrainStepTiming] = {}
        for _ in range(rounds):
            for setup in setups:
                timing = time_training_step(setup, crop, DEFAULT_BATCH.get(crop, 16), steps, bank=bank)
                if setup not in best or timing.crops_per_s > best[setup].crops_per_s:
                    best[setup] = timing
        results += [best[setup] for setup in setups]
    return results


def train_bench_table(results: list[TrainStepTiming]) -> str:
    lines = ["| crop | batch | setup | crops/s | " + " | ".join(STAGES) + " |",
             "|---|---|---|---|" + "---|" * len(STAGES)]
    for r in results:
        shares = " | ".join(f"{100 * r.share(stage):.0f}%" for stage in STAGES)
        lines.append(f"| {r.crop} | {r.batch_size} | {r.setup} | {r.crops_per_s:.1f} | {shares} |")
    return "\n".join(lines)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training steps (--train)")
    g.add_argument("--train", action="store_true", help="time a training step's stages (tools.train) instead")
    g.add_argument("--train-crops", type=positive_ints, default=[64, 128], help="crop sizes (default: 64,128)")
    g.add_argument("--train-steps", type=int, default=8, help="timed steps per setup, after 2 warm-up steps")
    g.add_argument("--train-setups", default=",".join(SETUPS), help=f"comma-separated, of {', '.join(SETUPS)}")
    g.add_argument("--train-rounds", type=int, default=2, help="interleaved rounds; each setup's fastest is kept")
