"""The pix2pix 70x70 PatchGAN discriminator (Isola et al. 2017), conditioned on L.

It judges (L, ab) pairs patch by patch: each output logit sees a 70x70 window of the input, so it
penalizes implausible local colour (washed-out, blotchy) and leaves global consistency to the
generator's own loss. For adversarial training only: ``output == "score"``, and ``ABPredictor``
refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.color import AB_NORM, normalize_l
from models.registry import register_model

KERNEL = 4
PADDING = 1
LEAKY_SLOPE = 0.2


@dataclass
class PatchGANConfig:
    base_channels: int = 64  # C64-C128-C256-C512
    n_layers: int = 3  # strided layers after the first; 3 gives the 70x70 receptive field
    norm: str = "batch"  # or "instance"

    def __post_init__(self) -> None:
        if self.norm not in ("batch", "instance"):
            raise ValueError(f"unknown norm {self.norm!r}: use batch or instance")
        if self.n_layers < 1 or self.base_channels < 1:
            raise ValueError("n_layers and base_channels must be >= 1")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.InstanceNorm2d(channels)  # pix2pix's: no affine, no running statistics


@register_model("patchgan", PatchGANConfig)
class PatchGAN(nn.Module):
    output = "score"

    def __init__(self, config: PatchGANConfig) -> None:
        super().__init__()
        self.config = config
        # Biases are redundant before BatchNorm's affine shift, but not before affine-free InstanceNorm.
        bias = config.norm == "instance"
        b = config.base_channels
        layers: list[nn.Module] = [nn.Conv2d(3, b, KERNEL, 2, PADDING), nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]
        c = b
        self.strides = [2]
        for i in range(1, config.n_layers + 1):
            stride = 2 if i < config.n_layers else 1
            c_out = b * min(2**i, 8)
            layers += [
                nn.Conv2d(c, c_out, KERNEL, stride, PADDING, bias=bias),
                _norm(config.norm, c_out),
                nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            ]
            self.strides.append(stride)
            c = c_out
        layers.append(nn.Conv2d(c, 1, KERNEL, 1, PADDING))
        self.strides.append(1)
        self.net = nn.Sequential(*layers)
        self.stride = 2**config.n_layers
        self.output_stride = self.stride  # nominal: each 4x4 stride-1 conv also trims one pixel, see score_size

    def score_size(self, height: int, width: int) -> tuple[int, int]:
        """The exact spatial size of the score map for an input of ``height`` x ``width``."""

        def out(n: int) -> int:
            for s in self.strides:
                n = (n + 2 * PADDING - KERNEL) // s + 1
            return n

        return out(height), out(width)

    def forward(self, L: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        """L (B, 1, H, W) in [0, 100] and ab (B, 2, h, w) in Lab units -> patch logits (B, 1, H', W').

        ab may come at a generator's output stride; it is resized to L's size so that the
        discriminator judges colour against the full-resolution lightness it must agree with.
        """
        if ab.shape[-2:] != L.shape[-2:]:
            ab = F.interpolate(ab, size=L.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat((normalize_l(L), ab / AB_NORM), dim=1)
        return self.net(x)
