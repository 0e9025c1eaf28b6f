"""The seed papers' architectures on natural photos, trained alike and scored alike.

Every row trains with the product's own loop (``tools.train``) on the same photos, steps, batch and crop,
then ``tools.evaluate`` scores all of them in one pass on the evaluation photos (BSDS500 val): PSNR,
SSIM, CIEDE2000, colourfulness and its gap to the truth's, with the gray baseline (ab = 0) on the same
photos. The shipped default model (trained much longer) is scored beside them as a reference, and the
ImageNet judge (``tools.judge``) classifies each row's colorization of photos of known ImageNet classes:
``eval/tiny_imagenet_val`` (its labels.csv names each photo's class). The judge used to read the clothing
photos, but on those it scores colour and gray alike, so it could not tell a colorizer from none.

Rows (the seed work each reproduces):

* frozen-encoder autoencoder (seed 000): an ImageNet encoder kept frozen, a decoder trained with L2;
* fusion with a classifier embedding (Deep Koalarization), L2;
* U-Net with L1, and U-Net with L1 plus a PatchGAN discriminator (pix2pix, GAN weight 0.01 = 1/100);
* ``effnet_unet`` with each head: regression (Huber); classification with class rebalancing at
  training time (Zhang et al., lambda 0.5); classification without it (lambda 1), decoded plainly and
  with the rebalancing moved to decoding time (``DecodeOptions.rebalance``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.checkpoint import load_checkpoint, save_checkpoint
from models.predictor import DecodeOptions
from tools.ab_prior import measure_ab_prior
from tools.evaluate import GRAY_LABEL, TRUTH_LABEL, evaluate_models
from tools.judge import ImageNetJudge, judge_models, labelled_photos
from tools.train import TrainConfig, train

log = logging.getLogger(__name__)

DECODE_REBALANCE = 0.35  # the decode-time rebalancing the default model ships with (see MODEL_CARD.md)


@dataclass(frozen=True)
class NaturalSettings:
    steps: int = 500
    batch_size: int = 12
    crop: int = 128
    render_size: int = 256
    eval_limit: int | None = None  # None: every evaluation photo
    seed: int = 0


@dataclass(frozen=True)
class NaturalSpec:
    key: str  # run folder name
    label: str
    model: str
    options: dict = field(default_factory=dict)
    loss: str = "auto"
    adversarial_weight: float = 0.0
    rebalance_lambda: float = 0.5
    decode_rebalance: float | None = None  # also score a copy decoded with this much decode-time rebalancing


SPECS = (
    NaturalSpec("frozen_autoencoder", "frozen-encoder autoencoder (EfficientNet-Lite0 frozen), L2", "effnet_unet",
                {"head": "regression", "freeze_encoder": True}, loss="l2"),
    NaturalSpec("fusion", "fusion with a classifier embedding (Deep Koalarization), L2", "fusion",
                {"head": "regression"}, loss="l2"),
    NaturalSpec("unet", "U-Net, L1", "unet", loss="l1"),
    NaturalSpec("pix2pix", "U-Net + PatchGAN (pix2pix), L1 + 0.01 GAN", "unet", loss="l1", adversarial_weight=0.01),
    NaturalSpec("effnet_regression", "effnet_unet, regression (Huber)", "effnet_unet", {"head": "regression"},
                loss="huber"),
    NaturalSpec("effnet_rebalanced", "effnet_unet, classification, rebalanced in training (lambda 0.5), T 0.38",
                "effnet_unet", {"head": "classification"}, rebalance_lambda=0.5),
    NaturalSpec("effnet_plain", "effnet_unet, classification, not rebalanced (lambda 1), T 0.38", "effnet_unet",
                {"head": "classification"}, rebalance_lambda=1.0, decode_rebalance=DECODE_REBALANCE),
)


def finished_row(run_dir: Path, settings: NaturalSettings) -> Path | None:
    """The row's checkpoint when an earlier run already trained it to the end with these settings, else None: an
    interrupted or split experiment trains only what is missing."""
    path = run_dir / "model.pt"
    if not path.is_file():
        return None
    provenance = load_checkpoint(path).provenance
    wanted = {"final": True, "steps": settings.steps, "batch_size": settings.batch_size, "crop": settings.crop}
    return path if all(provenance.get(k) == v for k, v in wanted.items()) else None


def train_row(spec: NaturalSpec, data: Sequence[str], settings: NaturalSettings, run_dir: Path) -> Path:
    done = finished_row(run_dir, settings)
    if done is not None:
        log.info("%s: already trained in %s", spec.label, run_dir)
        return done
    cfg = TrainConfig(
        model=spec.model, model_options=dict(spec.options), data=list(data), steps=settings.steps,
        batch_size=settings.batch_size, crop=settings.crop, loss=spec.loss, rebalance_lambda=spec.rebalance_lambda,
        adversarial_weight=spec.adversarial_weight, warmup_steps=min(100, max(1, settings.steps // 10)),
        log_every=max(1, settings.steps // 10), eval_every=10**9, save_every=10**9, seed=settings.seed,
        half_weights=False,
    )
    started = time.monotonic()
    path = train(cfg, run_dir)
    log.info("%s: trained in %.0f s", spec.label, time.monotonic() - started)
    return path


def with_decode_rebalance(checkpoint: Path, rebalance: float, data: Sequence[str], out: Path) -> Path:
    """A copy of ``checkpoint`` whose recorded decoding rebalances by ``rebalance`` (with the prior of ``data``
    where the checkpoint records none)."""
    ckpt = load_checkpoint(checkpoint)
    prior = ckpt.decode.get("ab_prior") or measure_ab_prior(data)
    decode = DecodeOptions(**{**ckpt.decode, "rebalance": rebalance, "ab_prior": prior})
    save_checkpoint(out, ckpt.build_model(), provenance=ckpt.provenance, decode=decode)
    return out


def judge_rows(models: Sequence[tuple[str, str]], judge_data: str, judge_model: str,
               render_size: int | None) -> dict[str, dict[str, float]]:
    """ImageNet judge top-1/top-5 for the gray photos, each model's colorization of them, and the truth, on the
    labelled photos of ``judge_data`` (``eval/tiny_imagenet_val`` and its labels.csv by default)."""
    judge = ImageNetJudge(judge_model)
    return judge_models(judge, labelled_photos(judge, judge_data), models, render_size=render_size)


def run_natural(data: Sequence[str], eval_data: str, settings: NaturalSettings, out: Path,
                judge_data: str | None = None, judge_model: str | None = None,
                specs: Sequence[NaturalSpec] = SPECS, reference: str | None = "default",
                train_only: bool = False, work_dir: Path | None = None) -> dict:
    """Train every row into ``work_dir/<key>`` (default ``out/runs``; rows already trained there with these
    settings are reused), then score them all (and ``reference``) on ``eval_data``; ``train_only`` stops after
    training.

    Writes ``out/natural_sheet.jpg`` (gray | each row | truth). The judge runs when ``judge_data`` and
    ``judge_model`` exist and ai-edge-litert is installed; otherwise the result says why it did not.
    """
    started = time.monotonic()
    runs = work_dir if work_dir is not None else out / "runs"
    models: list[tuple[str, str]] = []
    for spec in specs:
        path = train_row(spec, data, settings, runs / spec.key)
        models.append((spec.label, str(path)))
        if spec.decode_rebalance is not None:
            derived = with_decode_rebalance(path, spec.decode_rebalance, data, runs / spec.key / "decode_rebalanced.pt")
            models.append((f"{spec.label}, decode-time rebalancing {spec.decode_rebalance:g}", str(derived)))
    if train_only:
        return {"trained": [model for _, model in models], "seconds": time.monotonic() - started}
    if reference is not None:
        models.append(("shipped default model (reference, trained longer)", reference))
    evaluation = evaluate_models([m for _, m in models], eval_data, render_size=settings.render_size,
                                 limit=settings.eval_limit, engine_kind="torch", precision="fp32",
                                 contact_sheet=out / "natural_sheet.jpg", sheet_count=8, cell_height=120)
    means = {label: row.means() for (label, _), row in zip(models, evaluation.models, strict=True)}
    result = {
        "train_data": list(data),
        "eval_data": eval_data,
        "eval_images": evaluation.image_count,
        "rows": [{"label": label, "model": model, **means[label]} for label, model in models],
        "gray": evaluation.gray.means(),
        "truth_colourfulness": float(np.mean(evaluation.truth_colourfulness)),
        "contact_sheet": "natural_sheet.jpg",
    }
    if judge_data and judge_model:
        try:
            result["judge"] = judge_rows(models, judge_data, judge_model, settings.render_size)
            result["judge_data"] = judge_data
        except (FileNotFoundError, RuntimeError, ValueError) as exc:
            result["judge_skipped"] = str(exc)
            log.warning("ImageNet judge skipped: %s", exc)
    result["seconds"] = time.monotonic() - started
    return result


def natural_table(result: dict) -> str:
    judge = result.get("judge", {})

    def judge_cells(label: str) -> str:
        s = judge.get(label)
        return f"{100 * s['top1']:.1f}% / {100 * s['top5']:.1f}%" if s else "-"

    lines = [
        f"Scored on {result['eval_images']} photos of {result['eval_data']}; ground truth's colourfulness "
        f"{result['truth_colourfulness']:.2f}.",
        "",
        "| model | PSNR dB | SSIM | CIEDE2000 | colourfulness | colourfulness gap | judge top-1 / top-5 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in [{"label": GRAY_LABEL, **result["gray"]}, *result["rows"]]:
        lines.append(f"| {row['label']} | {row['psnr']:.2f} | {row['ssim']:.3f} | {row['delta_e']:.2f} | "
                     f"{row['colourfulness']:.2f} | {row['colourfulness_gap']:.2f} | {judge_cells(row['label'])} |")
    truth_c = result["truth_colourfulness"]
    lines.append(f"| {TRUTH_LABEL} | - | - | - | {truth_c:.2f} | 0 | {judge_cells(TRUTH_LABEL)} |")
    if "judge_skipped" in result:
        lines += ["", f"ImageNet judge not run: {result['judge_skipped']}"]
    return "\n".join(lines)
