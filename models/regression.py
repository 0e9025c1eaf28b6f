"""The seed work's dilated-convolution regression CNN: the simplest Tinct baseline.

A VGG-like stack halves the resolution to 1/4 or 1/8, a few dilated 3x3 convolutions (dilation 2
and 4, alternating) widen the receptive field for context without losing more resolution, and
upsampling convolutions bring ab back up. The regression head predicts ab / AB_NORM directly; the
loss (L2 or Huber) is a training choice, not part of the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.color import normalize_l
from models.layers import ConvBNReLU, ab_head
from models.registry import register_model

DILATIONS = (2, 4)  # cycled over the context layers


@dataclass
class RegressionConfig:
    base_width: int = 64  # channels at full resolution; doubled at each downsampling, capped at 4x
    downsample: int = 4  # 4 or 8: the deepest feature map is 1/downsample of the input
    n_dilated: int = 4  # dilated 3x3 context layers at the deepest resolution
    out_stride: int = 1  # ab comes out at 1/out_stride (the colorizer upsamples it guided by L)
    head: str = "regression"  # or "classification"

    def __post_init__(self) -> None:
        if self.downsample not in (4, 8):
            raise ValueError(f"downsample must be 4 or 8, got {self.downsample}")
        if self.out_stride not in (1, 2, 4) or self.out_stride > self.downsample:
            raise ValueError(f"out_stride must be 1, 2 or 4 and at most downsample, got {self.out_stride}")
        if self.base_width < 1 or self.n_dilated < 0:
            raise ValueError("base_width must be >= 1 and n_dilated >= 0")


def _log2(n: int) -> int:
    return n.bit_length() - 1


@register_model("regression", RegressionConfig)
class RegressionCNN(nn.Module):
    def __init__(self, config: RegressionConfig) -> None:
        super().__init__()
        self.config = config
        self.stride = config.downsample
        self.output_stride = config.out_stride
        w = config.base_width

        layers: list[nn.Module] = [ConvBNReLU(1, w), ConvBNReLU(w, w)]
        c = w
        for _ in range(_log2(config.downsample)):
            c_next = min(c * 2, 4 * w)
            layers += [ConvBNReLU(c, c_next, stride=2), ConvBNReLU(c_next, c_next)]
            c = c_next
        self.encoder = nn.Sequential(*layers)

        self.context = nn.Sequential(
            *(ConvBNReLU(c, c, dilation=DILATIONS[i % len(DILATIONS)]) for i in range(config.n_dilated))
        )

        ups: list[nn.Module] = []
        for _ in range(_log2(config.downsample) - _log2(config.out_stride)):
            c_next = max(c // 2, w)
            # Upsample then convolve rather than a transposed conv: no checkerboard artefacts in ab.
            ups += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), ConvBNReLU(c, c_next)]
            c = c_next
        self.decoder = nn.Sequential(*ups, ConvBNReLU(c, c))
        self.head, self.output = ab_head(c, config.head)

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        x = self.encoder(normalize_l(L))
        x = self.context(x)
        return self.head(self.decoder(x))
