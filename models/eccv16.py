"""The colorization network of Zhang, Isola & Efros, "Colorful Image Colorization" (ECCV 2016).

Written after the authors' PyTorch port (richzhang/colorization, ``eccv16.py``): eight conv blocks,
ReLU after every convolution and BatchNorm closing blocks 1-7, downsampling by strided convolution at
the end of blocks 1-3, dilation 2 in blocks 5-6 for context, and a 4x4 transposed convolution that
brings block 8 back to 1/4 of the input, where a 1x1 convolution predicts a distribution over the ab
bins. Tinct's exact sRGB gamut has ``n_ab_bins()`` (261) bins where the paper's data hull had 313.

The default config is the full-size network: it is the speed and quality reference for benchmarks.
``width_multiplier`` only exists so that tests can build a thin copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.color import normalize_l
from models.layers import ab_head
from models.registry import register_model

# (channels, convs, stride of the last conv, dilation) for conv1..conv7, as in the paper.
BLOCKS = (
    (64, 2, 2, 1),
    (128, 2, 2, 1),
    (256, 3, 2, 1),
    (512, 3, 1, 1),
    (512, 3, 1, 2),
    (512, 3, 1, 2),
    (512, 3, 1, 1),
)
CONV8_CHANNELS = 256


@dataclass
class ECCV16Config:
    width_multiplier: float = 1.0
    head: str = "classification"  # the paper's; "regression" gives its L2 baseline

    def __post_init__(self) -> None:
        if self.width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be > 0, got {self.width_multiplier}")


def _conv_block(c_in: int, c_out: int, n: int, last_stride: int, dilation: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        stride = last_stride if i == n - 1 else 1
        layers += [
            nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, stride, padding=dilation, dilation=dilation),
            nn.ReLU(inplace=True),
        ]
    layers.append(nn.BatchNorm2d(c_out))
    return nn.Sequential(*layers)


@register_model("eccv16", ECCV16Config)
class ECCV16(nn.Module):
    stride = 8
    output_stride = 4

    def __init__(self, config: ECCV16Config) -> None:
        super().__init__()
        self.config = config

        def width(c: int) -> int:
            return max(4, round(c * config.width_multiplier))

        blocks = []
        c = 1
        for channels, n, last_stride, dilation in BLOCKS:
            blocks.append(_conv_block(c, width(channels), n, last_stride, dilation))
            c = width(channels)
        self.conv1, self.conv2, self.conv3, self.conv4, self.conv5, self.conv6, self.conv7 = blocks
        c8 = width(CONV8_CHANNELS)
        # The paper's conv8 has no BatchNorm before the prediction: it feeds the 1x1 output layer.
        self.conv8 = nn.Sequential(
            nn.ConvTranspose2d(c, c8, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c8, c8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c8, c8, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.head, self.output = ab_head(c8, config.head)

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        x = normalize_l(L)
        for block in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5, self.conv6, self.conv7, self.conv8):
            x = block(x)
        return self.head(x)
