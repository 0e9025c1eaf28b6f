"""What an ImageNet encoder sees in the colour crop, and how far a colorizer's encoder is from it in the gray one.

The colorizer's encoder only ever sees gray photos; ImageNet's frozen copy (the teacher) looks at the same crop in
colour. The distance between the two views, per level, is the label-free signal two commands train on:
``tools adapt-encoder`` (the encoder alone, before its decoder is trained on it) and ``tools train
--encoder-distill-weight`` (the same term kept beside the colour loss while the encoder trains for colour, so that
fine-tuning it does not cost what it recognises; docs/training.md, session 10 measured that cost without it).

Each level's distance is the squared difference divided by the teacher's own energy
(``tools.feature_loss.relative_distance``): the stride-16 and stride-32 feature maps by default, and the pooled
1280-d classifier embedding where the student has a classifier head of its own.
"""

from __future__ import annotations

import torch
from torch import nn

from models.checkpoint import Checkpoint, load_checkpoint
from models.color import merge_l_ab
from models.efficientnet_lite import INPUT_MEAN, INPUT_STD, EfficientNetLite, FrozenEfficientNetLite, encoder_of
from tools.feature_loss import relative_distance

# EfficientNetLite.features returns the maps at strides 2, 4, 8, 16 and 32, in that order
FEATURE_STRIDES = (2, 4, 8, 16, 32)
DEFAULT_STRIDES = (16, 32)  # what the photo shows, not its edges, which the lightness already fixes


class DistillError(ValueError):
    """A model or teacher the distillation cannot use. The message names which and why."""


def lite_encoder(checkpoint: Checkpoint, model: nn.Module) -> tuple[EfficientNetLite, str]:
    """The model's EfficientNet-Lite encoder and its variant; DistillError naming the file for any other model."""
    found = encoder_of(model)
    if found is None:
        raise DistillError(f"{checkpoint.path}: a {checkpoint.model_name!r} model has no EfficientNet-Lite encoder to "
                           "teach (the distillation teaches effnet_unet's ImageNet encoder)")
    return found


def check_strides(strides: tuple[int, ...], option: str) -> None:
    bad = [s for s in strides if s not in FEATURE_STRIDES]
    if bad or not strides:
        raise DistillError(f"{option} {' '.join(map(str, strides))}: choose among {FEATURE_STRIDES} "
                           f"({'not ' + ', '.join(map(str, bad)) if bad else 'at least one'})")


def build_teacher(variant: str, teacher_ref: str, teacher_path: str) -> tuple[FrozenEfficientNetLite, str]:
    """The frozen teacher and its description: ImageNet's weights from the installed package (``imagenet``), or the
    encoder of a checkpoint that kept its ImageNet classifier head (a global-context model whose encoder never
    trained, such as the campaign's candidate): on a machine without the weights' 20 MB package, the same teacher."""
    if teacher_ref == "imagenet":
        return FrozenEfficientNetLite(variant), f"ImageNet EfficientNet-{variant.capitalize()}"
    source = load_checkpoint(teacher_path)
    encoder, teacher_variant = lite_encoder(source, source.build_model())
    if teacher_variant != variant:
        raise DistillError(f"--teacher {teacher_ref}: its encoder is EfficientNet-{teacher_variant.capitalize()}, "
                           f"the student's {variant.capitalize()}")
    teacher = FrozenEfficientNetLite(variant, pretrained=False)
    unfilled = [k for k in teacher.state_dict() if k not in encoder.state_dict() and not k.startswith("_fc.")]
    if unfilled:
        layers = ", ".join(sorted({k.split(".")[0] for k in unfilled}))
        raise DistillError(f"--teacher {teacher_ref}: its encoder has no classifier head ({layers}), which the "
                           "embedding is read from")
    teacher.load_state_dict(encoder.state_dict(), strict=False)
    return teacher, f"the encoder of {source.label} ({teacher_ref})"


@torch.no_grad()
def teacher_view(teacher: FrozenEfficientNetLite, L: torch.Tensor,
                 ab: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The teacher's feature maps and pooled embedding of the colour crop (``L`` with ``ab``, Lab units)."""
    colour = (merge_l_ab(L.float(), ab.float()) - INPUT_MEAN) / INPUT_STD
    if L.is_contiguous(memory_format=torch.channels_last):
        colour = colour.contiguous(memory_format=torch.channels_last)
    features = teacher.features(colour)
    return features, teacher.pool(features[-1])


def distance_terms(seen: list[torch.Tensor] | tuple[torch.Tensor, ...], seen_embedding: torch.Tensor | None,
                   taught: list[torch.Tensor], taught_embedding: torch.Tensor,
                   strides: tuple[int, ...]) -> list[torch.Tensor]:
    """The relative distance of each level: ``strides``' feature maps, then the embedding (when the student has
    one)."""
    terms = [relative_distance(seen[FEATURE_STRIDES.index(s)], taught[FEATURE_STRIDES.index(s)]) for s in strides]
    if seen_embedding is not None:
        terms.append(relative_distance(seen_embedding, taught_embedding))
    return terms


def level_names(strides: tuple[int, ...]) -> list[str]:
    """The levels' names, in ``distance_terms``' order for a student with an embedding."""
    return [f"stride{s}" for s in strides] + ["embedding"]
