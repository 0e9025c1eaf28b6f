"""Building blocks shared by the architectures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.color import n_ab_bins


class ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> None:
        padding = dilation * (kernel // 2)
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """U-Net decoder step: upsample x2, concatenate the skip, two 3x3 convolutions."""

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(ConvBNReLU(c_in + c_skip, c_out), ConvBNReLU(c_out, c_out))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat((x, skip), dim=1))


def ab_head(c_in: int, head: str) -> tuple[nn.Module, str]:
    """The final 1x1 projection for a ``regression`` or ``classification`` head, and the output kind."""
    if head == "regression":
        return nn.Conv2d(c_in, 2, 1), "ab"
    if head == "classification":
        return nn.Conv2d(c_in, n_ab_bins(), 1), "logits"
    raise ValueError(f"unknown head {head!r}: use regression or classification")
