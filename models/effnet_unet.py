"""U-Net decoder on an ImageNet-pretrained EfficientNet-Lite encoder (Lite0, or the larger Lite2): Tinct's default
family.

Transfer learning as in the seed papers: the encoder brings ImageNet semantics (what is sky, skin,
grass), the decoder learns colour from them. ``freeze_encoder`` reproduces the frozen-encoder setup.

``global_context`` adds Iizuka et al.'s (2016) global fusion in its cheapest form: the encoder's own ImageNet
classifier head (the 1x1 convolution to 1280 channels that the classification layer reads, kept with its
pretrained weights) is pooled over the whole picture, and a linear layer turns that embedding into a scale and
shift of every stride-32 feature the decoder starts from. The decoder's 3x3 convolutions see a few cells of a
224 px render; the embedding says what the whole picture is (a pool, a pocket watch, a fox), which is what
picks blue over orange. The layer starts at zero, so a grown model starts as its parent (``tools train --init
PARENT --set global_context=true``).

``decoder_context`` feeds the same embedding a second time, as a scale and shift of the decoder's stride-16
features (after they have met the encoder's stride-16 skip), where Iizuka et al. fuse it: the stride-32 fusion
can only say what the picture is before the decoder sees the finer map, this one after. Also zero at the start,
so a global-context model grows into one (``--set decoder_context=true``).

``context_encoder`` takes the embedding from a frozen copy of ImageNet's encoder run on the same gray input, instead
of the colour encoder's own head: fine-tuning the colour encoder cost the campaign candidate's embedding 40% of what
ImageNet's recognises in gray (``python -m tools probe``, docs/training.md session 10), and a copy that never learns
cannot lose it. It costs a second encoder pass (about half the network's work again at a 224 px render) and 3.4M
frozen parameters (6.7 MB in fp16). Growing a global-context model into one drops the colour encoder's head, which
nothing reads any more, and keeps its context layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.efficientnet_lite import (
    HEAD_CHANNELS,
    LITE_VARIANTS,
    EfficientNetLite,
    EfficientNetLiteConfig,
    FrozenEfficientNetLite,
)
from models.layers import ConvBNReLU, UpBlock, ab_head
from models.registry import register_model


@dataclass
class EffnetUNetConfig:
    head: str = "classification"  # or "regression"
    decoder_channels: tuple[int, ...] = (128, 64, 48)  # at strides 16, 8, 4 (then 32 at 2 if out_stride == 2)
    out_stride: int = 4  # 4 or 2: ab comes out at 1/out_stride of the input, upsampled later guided by L
    freeze_encoder: bool = False
    pretrained: bool = True
    encoder: str = "lite0"  # lite0 | lite2 (models.efficientnet_lite.LITE_VARIANTS)
    global_context: bool = False  # scale and shift the stride-32 features by the whole picture's ImageNet embedding
    decoder_context: bool = False  # and the decoder's stride-16 features too (needs global_context)
    context_encoder: bool = False  # the embedding from a frozen ImageNet copy of the encoder (needs global_context)

    def __post_init__(self) -> None:
        self.decoder_channels = tuple(self.decoder_channels)
        if self.out_stride not in (2, 4):
            raise ValueError(f"out_stride must be 2 or 4, got {self.out_stride}")
        if self.encoder not in LITE_VARIANTS:
            raise ValueError(f"unknown encoder {self.encoder!r}: use one of {sorted(LITE_VARIANTS)}")
        if len(self.decoder_channels) != 3:
            raise ValueError("decoder_channels needs three entries (strides 16, 8, 4)")
        if self.decoder_context and not self.global_context:
            raise ValueError("decoder_context needs global_context (both read the same embedding)")
        if self.context_encoder and not self.global_context:
            raise ValueError("context_encoder needs global_context (it makes the embedding the context layers read)")


@register_model("effnet_unet", EffnetUNetConfig)
class EffnetUNet(nn.Module):
    stride = 32

    def __init__(self, config: EffnetUNetConfig) -> None:
        super().__init__()
        self.config = config
        self.output_stride = config.out_stride
        self.encoder = EfficientNetLite(EfficientNetLiteConfig(variant=config.encoder, pretrained=config.pretrained))
        # The classifier's head layers are not part of the encoder path; dropping them keeps the
        # checkpoint small and strict loading honest. Global context keeps the embedding (not the classes).
        del self.encoder._fc
        if not config.global_context or config.context_encoder:
            del self.encoder._conv_head, self.encoder._bn1
        if config.context_encoder:
            self.context_encoder = FrozenEfficientNetLite(config.encoder, pretrained=config.pretrained)
            del self.context_encoder._fc
        c16, c8, c4 = config.decoder_channels
        s2, s4, s8, s16, s32 = self.encoder.skip_channels
        if config.global_context:
            self.context = nn.Linear(HEAD_CHANNELS, 2 * s32)
            nn.init.zeros_(self.context.weight)  # identity at the start: a grown model begins as its parent
            nn.init.zeros_(self.context.bias)
        if config.decoder_context:
            self.context16 = nn.Linear(HEAD_CHANNELS, 2 * c16)
            nn.init.zeros_(self.context16.weight)
            nn.init.zeros_(self.context16.bias)
        self.up16 = UpBlock(s32, s16, c16)
        self.up8 = UpBlock(c16, s8, c8)
        self.up4 = UpBlock(c8, s4, c4)
        c_last = c4
        if config.out_stride == 2:
            self.up2 = UpBlock(c4, s2, 32)
            c_last = 32
        self.refine = ConvBNReLU(c_last, c_last)
        self.head, self.output = ab_head(c_last, config.head)
        if config.freeze_encoder:
            self.encoder.requires_grad_(False)

    def superseded_parent_layers(self) -> tuple[str, ...]:
        """Weights of a parent that this config no longer reads, which growing the parent into it may drop (see
        ``tools.train.grow_model``): the colour encoder's head, once a frozen copy makes the embedding."""
        return ("encoder._conv_head.", "encoder._bn1.") if self.config.context_encoder else ()

    def adopt_decoder(self, parent_state: dict[str, torch.Tensor]) -> list[str]:
        """Load the decoder of ``parent_state`` (an effnet_unet on another encoder variant) onto this model, whose
        encoder keeps its own weights. What reads only the decoder's own features is carried over: every decoder
        convolution but the first step's first, the refinement and the head, and of each later step's first
        convolution only the input channels that read the step before it. What reads the encoder starts as
        constructed: the context layers (the embedding is the encoder's), the first step's first convolution
        (stride-32 and -16 features) and the skip channels of every other step, even where their count matches
        (Lite0's stride-4 channels are not Lite2's). Returns the names of the tensors that start fresh in whole or
        in part. Why: a decoder trained from nothing needs more steps than a CPU session has, and one moved over
        starts from what its parent learnt (docs/training.md, session 13)."""
        own = self.state_dict()
        decoder_inputs = {"up8": self.config.decoder_channels[0], "up4": self.config.decoder_channels[1],
                          "up2": self.config.decoder_channels[2]}
        fresh, carried = [], {}
        for name, tensor in own.items():
            if name.startswith(("encoder.", "context_encoder.", "context.", "context16.", "up16.conv.0.")):
                if not name.startswith(("encoder.", "context_encoder.")):
                    fresh.append(name)
                continue
            theirs = parent_state.get(name)
            step = name.split(".", 1)[0]
            if name == f"{step}.conv.0.0.weight" and step in decoder_inputs:
                if theirs is None or theirs.shape[0] != tensor.shape[0]:
                    raise ValueError(f"{name}: the parent's decoder has another shape")
                kept = decoder_inputs[step]
                merged = tensor.clone()
                merged[:, :kept] = theirs[:, :kept]
                carried[name] = merged
                fresh.append(name)
            elif theirs is not None and theirs.shape == tensor.shape:
                carried[name] = theirs
            else:
                raise ValueError(f"{name}: the parent's decoder has another shape "
                                 f"({None if theirs is None else tuple(theirs.shape)} against {tuple(tensor.shape)})")
        self.load_state_dict(carried, strict=False)
        return fresh

    def train(self, mode: bool = True) -> EffnetUNet:
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()  # frozen means frozen: BatchNorm statistics stay ImageNet's
        return self

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        return self.colour_and_embedding(L)[0]

    def colour_and_embedding(self, L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The colour output and the whole picture's embedding the context layers read (None without
        ``global_context``): training losses on the embedding need it without a second pass."""
        out, _, embedding = self.colour_and_encoding(L)
        return out, embedding

    def colour_and_encoding(self, L: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...],
                                                           torch.Tensor | None]:
        """The colour output, the encoder's feature maps (strides 2 to 32, before any context modulation) and the
        embedding the context layers read: what a loss on the encoder's view of the photo needs, from one pass."""
        x = EfficientNetLite.preprocess_l(L)
        encoded = self.encoder.features(x)
        f2, f4, f8, f16, f32 = encoded
        embedding = None
        if self.config.global_context:
            embedding = self.context_encoder.embedding(x) if self.config.context_encoder else self.encoder.pool(f32)
            f32 = _modulate(f32, self.context(embedding))
        x = self.up16(f32, f16)
        if self.config.decoder_context:
            x = _modulate(x, self.context16(embedding))
        x = self.up8(x, f8)
        x = self.up4(x, f4)
        if self.config.out_stride == 2:
            x = self.up2(x, f2)
        return self.head(self.refine(x)), tuple(encoded), embedding


def _modulate(features: torch.Tensor, scale_shift: torch.Tensor) -> torch.Tensor:
    """``features * (1 + scale) + shift``, per channel; ``scale_shift`` is (N, 2C), scales first."""
    scale, shift = scale_shift.chunk(2, dim=1)
    return features * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
