"""A classic U-Net (Ronneberger et al. 2015) trained from scratch on L: the no-pretraining baseline.

Four downsamplings with double 3x3 conv blocks, a mirrored decoder that concatenates the encoder's
skips, and ab at full resolution. Bilinear upsampling replaces the paper's up-convolutions (as in
most modern ports): fewer parameters and no checkerboard artefacts in the chroma.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.color import normalize_l
from models.layers import ConvBNReLU, UpBlock, ab_head
from models.registry import register_model

DEPTH = 4  # downsamplings; stride = 2 ** DEPTH


@dataclass
class UNetConfig:
    base_channels: int = 32  # doubled at each downsampling: 32, 64, 128, 256, 512
    head: str = "regression"  # or "classification"

    def __post_init__(self) -> None:
        if self.base_channels < 1:
            raise ValueError(f"base_channels must be >= 1, got {self.base_channels}")


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(ConvBNReLU(c_in, c_out), ConvBNReLU(c_out, c_out))


@register_model("unet", UNetConfig)
class UNet(nn.Module):
    stride = 2**DEPTH
    output_stride = 1

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.base_channels * 2**i for i in range(DEPTH + 1)]
        self.inc = _double_conv(1, widths[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), _double_conv(widths[i], widths[i + 1])) for i in range(DEPTH)
        )
        self.up = nn.ModuleList(UpBlock(widths[i + 1], widths[i], widths[i]) for i in reversed(range(DEPTH)))
        self.head, self.output = ab_head(widths[0], config.head)

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        x = self.inc(normalize_l(L))
        skips = [x]
        for down in self.down:
            x = down(x)
            skips.append(x)
        skips.pop()  # the bottleneck is x itself
        for up in self.up:
            x = up(x, skips.pop())
        return self.head(x)
