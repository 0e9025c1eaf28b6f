"""The ab prior: how often each ab bin occurs in a set of colour photos.

Class rebalancing needs it twice: training with rebalancing weights (``tools.train``), and decoding with
them (``DecodeOptions.rebalance``), for which a checkpoint records its training data's prior. Counted on
augmented crops pooled 4x4, the scale a classification head predicts at.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.color import ab_histogram
from tools.datasets import Augment, BatchSampler, PhotoBank, SourceSpec


def ab_counts(batches: Iterator[tuple[object, torch.Tensor]], count: int) -> np.ndarray:
    """Bin counts (Q,) over ``count`` batches of ``(anything, ab (B, 2, H, W))``."""
    total: torch.Tensor | None = None
    for _ in range(count):
        _, ab = next(batches)
        hist = ab_histogram(F.avg_pool2d(ab, 4))
        total = hist if total is None else total + hist
    if total is None or float(total.sum()) <= 0:
        raise ValueError("no pixels to count an ab prior from")
    return total.numpy()


def measure_ab_prior(sources: Sequence[str], crop: int = 160, batches: int = 40, batch_size: int = 16,
                     seed: int = 0) -> tuple[float, ...]:
    """The bin frequencies (summing to 1) of the colour photos in ``sources`` (``path[:weight]`` as in training)."""
    bank = PhotoBank([SourceSpec.parse(s) for s in sources], short_side=int(crop * 1.15))
    counts = ab_counts(BatchSampler(bank, batch_size, Augment(crop=crop), seed=seed), batches)
    return tuple(float(p) for p in counts / counts.sum())
