"""Deep Koalarization (Baldassarre, Gonzalez Morin & Rodes-Guirao, 2017): a conv encoder on L fused
with a global embedding from a frozen ImageNet classifier.

The classifier sees the whole picture at 224x224 and says what it is about (a beach, a portrait),
which local convolutions cannot; its embedding is projected, tiled over the encoder's 1/8 feature map,
concatenated and mixed by a 1x1 "fusion" convolution, and a conv decoder upsamples to ab. The paper's
Inception-ResNet-v2 is replaced by the EfficientNet-Lite0 whose ImageNet weights ship with Tinct's
dependencies (1280-d embedding), kept frozen as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.color import normalize_l
from models.efficientnet_lite import HEAD_CHANNELS, EfficientNetLite, EfficientNetLiteConfig
from models.layers import ConvBNReLU, ab_head
from models.registry import register_model


@dataclass
class FusionConfig:
    base_channels: int = 64  # the paper's widths are multiples of 64: encoder 64..512, fusion 256
    out_stride: int = 2  # 2: the paper's last x2 upsampling of ab is left to the L-guided upsampler
    classifier_size: int = 224  # the classifier's input resolution, as it was trained
    head: str = "regression"  # or "classification"
    pretrained: bool = True  # ImageNet weights for the classifier (checkpoints carry their own)

    def __post_init__(self) -> None:
        if self.out_stride not in (1, 2):
            raise ValueError(f"out_stride must be 1 or 2, got {self.out_stride}")
        if self.base_channels < 1:
            raise ValueError(f"base_channels must be >= 1, got {self.base_channels}")
        if self.classifier_size < 32 or self.classifier_size % 32:
            raise ValueError(f"classifier_size must be a multiple of 32, got {self.classifier_size}")


@register_model("fusion", FusionConfig)
class Fusion(nn.Module):
    stride = 8

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.output_stride = config.out_stride
        b = config.base_channels
        # The paper's encoder: (channels, stride) of each 3x3 conv, down to 1/8 and 4b channels.
        plan = ((b, 2), (2 * b, 1), (2 * b, 2), (4 * b, 1), (4 * b, 2), (8 * b, 1), (8 * b, 1), (4 * b, 1))
        layers, c = [], 1
        for c_out, stride in plan:
            layers.append(ConvBNReLU(c, c_out, stride=stride))
            c = c_out
        self.encoder = nn.Sequential(*layers)

        self.classifier = EfficientNetLite(EfficientNetLiteConfig(pretrained=config.pretrained))
        del self.classifier._fc  # only the embedding is used; the 1000-way layer would be dead weight
        self.classifier.requires_grad_(False)

        fused = 4 * b
        self.project = nn.Linear(HEAD_CHANNELS, fused)
        self.fuse = nn.Sequential(nn.Conv2d(c + fused, fused, 1), nn.ReLU(inplace=True))

        decoder = [ConvBNReLU(fused, 2 * b), nn.Upsample(scale_factor=2, mode="nearest")]
        decoder += [ConvBNReLU(2 * b, b), ConvBNReLU(b, b), nn.Upsample(scale_factor=2, mode="nearest")]
        decoder += [ConvBNReLU(b, b // 2 or 1)]
        c = b // 2 or 1
        if config.out_stride == 1:
            decoder += [nn.Upsample(scale_factor=2, mode="nearest"), ConvBNReLU(c, c)]
        self.decoder = nn.Sequential(*decoder)
        self.head, self.output = ab_head(c, config.head)

    def train(self, mode: bool = True) -> Fusion:
        super().train(mode)
        self.classifier.eval()  # frozen means frozen: BatchNorm statistics stay ImageNet's
        return self

    def embed(self, L: torch.Tensor) -> torch.Tensor:
        """The frozen classifier's global embedding of the whole picture, (B, 1280)."""
        size = (self.config.classifier_size, self.config.classifier_size)
        x = F.interpolate(EfficientNetLite.preprocess_l(L), size=size, mode="bilinear", align_corners=False)
        return self.classifier.embedding(x)

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        local = self.encoder(normalize_l(L))
        glob = self.project(self.embed(L))
        tiled = glob[:, :, None, None].expand(-1, -1, *local.shape[-2:])
        x = self.fuse(torch.cat((local, tiled), dim=1))
        return self.head(self.decoder(x))
