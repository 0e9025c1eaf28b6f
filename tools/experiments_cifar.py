"""The CS230 seed comparison on CIFAR-10, scored by a classifier that judges the colorized test images.

The seed paper trained one network on 32x32 CIFAR-10 colour images with an L2 regression head, with a
classification head (decoded by its mode and by the annealed mean), and with a transfer-learning
encoder, then asked a separately trained colour classifier how often it still recognised the class of
each colorized test image: grayscale 22%, regression 46%, classification 57%, annealed mean 65%,
transfer 63%, ground truth 80%. This module reproduces that protocol:

* the judge is a small VGG-style classifier trained here on the colour *training* images only (it
  never sees a test image), its accuracy on the colour test set reported as the ceiling;
* every colorizer trains on the L and ab of the same training images; regression and classification
  share one backbone (``regression`` with ``head=regression`` / ``head=classification``), so the head is
  the only difference; classification uses the product's soft-encoded, class-rebalanced loss;
* the annealed mean is swept over temperatures (0.38 is Zhang et al.'s, 0.89 the seed paper's);
* the transfer model is ``effnet_unet`` with its ImageNet-pretrained EfficientNet-Lite0 encoder; 32 px
  is too small for an ImageNet encoder, so it sees L upsampled to 64 px and its ab is pooled back to
  32 px (the L the judge sees is always the original);
* each colorized test set is also scored with PSNR and colourfulness, gray and truth beside it.
"""

from __future__ import annotations

import io
import logging
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from models.color import AB_NORM, ANNEAL_T_SEED, ANNEAL_T_ZHANG, decode_ab, merge_l_ab, rgb_to_lab
from models.files import atomic_output
from models.registry import create_model
from tools import metrics
from tools.train import colour_loss, measure_class_weights, warmup_cosine

log = logging.getLogger(__name__)

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TEMPERATURES = (0.2, ANNEAL_T_ZHANG, 0.6, ANNEAL_T_SEED)
# The seed paper's judge accuracies (CS230 "Image Colorization", table of classifier accuracy on the test set).
SEED_PAPER = {"grayscale": 22, "regression": 46, "classification": 57, "annealed mean": 65, "transfer": 63,
              "ground truth": 80}


@dataclass(frozen=True)
class CifarSettings:
    judge_epochs: int = 12
    judge_width: int = 32  # channels of the judge's first block (x2, x4 deeper)
    colorizer_steps: int = 3000
    transfer_steps: int = 1500
    batch_size: int = 64
    train_per_class: int | None = None  # None: all 5,000 training images of each class
    test_per_class: int | None = None  # None: all 1,000 test images of each class
    seed: int = 0


# --- data ------------------------------------------------------------------------------------------------------


def load_cifar(zip_path: str | Path, split: str, per_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb (N, 32, 32, 3) uint8, labels (N,) int64)`` for ``split`` ("train" or "test") of the JPEG zip
    (``<split>/<class>/<n>.jpg``); the first ``per_class`` images of each class in name order."""
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise FileNotFoundError(f"{zip_path}: no such CIFAR-10 zip")
    images: list[np.ndarray] = []
    labels: list[int] = []
    with zipfile.ZipFile(zip_path) as zf:
        by_class: dict[str, list[str]] = {}
        for name in sorted(zf.namelist()):
            parts = name.split("/")
            if len(parts) == 3 and parts[0] == split and parts[1] in CIFAR_CLASSES and parts[2]:
                by_class.setdefault(parts[1], []).append(name)
        if not by_class:
            raise ValueError(f"{zip_path}: no {split}/<class>/ images (expected CIFAR-10 class folders)")
        for cls, names in sorted(by_class.items()):
            for name in names[:per_class]:
                with Image.open(io.BytesIO(zf.read(name))) as im:
                    rgb = np.asarray(im.convert("RGB").resize((32, 32)), dtype=np.uint8)
                images.append(rgb)
                labels.append(CIFAR_CLASSES.index(cls))
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def to_lab(rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W, 3) -> L (N, 1, H, W), ab (N, 2, H, W) in Lab units."""
    lab = rgb_to_lab(torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0)
    return lab[:, :1].contiguous(), lab[:, 1:].contiguous()


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(n, size=batch_size, replace=n < batch_size)


def _flip_half(*tensors: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    mask = torch.from_numpy(rng.random(tensors[0].shape[0]) < 0.5)
    return tuple(torch.where(mask.view(-1, 1, 1, 1), t.flip(-1), t) for t in tensors)


def _ab_samples(ab: torch.Tensor, rng: np.random.Generator, batch_size: int = 256):
    """Endless ``(None, ab batch)`` pairs, the shape ``measure_class_weights`` reads."""
    while True:
        yield None, ab[torch.from_numpy(_batches(len(ab), batch_size, rng))]


# --- the judge -------------------------------------------------------------------------------------------------


class JudgeNet(nn.Module):
    """A VGG-style CIFAR-10 classifier on RGB: three blocks of two 3x3 conv + BN + ReLU, max-pooled, then a
    global average and one linear layer. Small enough to train on a CPU in minutes."""

    MEAN = (0.49, 0.48, 0.45)
    STD = (0.25, 0.24, 0.26)

    def __init__(self, width: int = 48, classes: int = len(CIFAR_CLASSES)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in (width, 2 * width, 4 * width):
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, classes)
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """``rgb`` (B, 3, H, W) in [0, 1] -> class logits (B, classes)."""
        x = self.features((rgb - self.mean) / self.std)
        return self.classifier(x.mean(dim=(2, 3)))


def _random_crop(rgb: torch.Tensor, rng: np.random.Generator, pad: int = 4) -> torch.Tensor:
    padded = F.pad(rgb, (pad, pad, pad, pad), mode="reflect")
    h, w = rgb.shape[-2:]
    dy, dx = rng.integers(0, 2 * pad + 1, size=2)
    return padded[..., dy : dy + h, dx : dx + w]


def train_judge(rgb: np.ndarray, labels: np.ndarray, settings: CifarSettings) -> JudgeNet:
    """Train the judge on colour images (flips and 4-pixel shifts, SGD with momentum, one-cycle cosine)."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    judge = JudgeNet(settings.judge_width)
    images = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
    targets = torch.from_numpy(labels)
    per_epoch = max(1, len(images) // settings.batch_size)
    steps = settings.judge_epochs * per_epoch
    optimizer = torch.optim.SGD(judge.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    judge.train()
    started = time.monotonic()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 0.1 * warmup_cosine(step, steps, warmup=per_epoch // 2 or 1)
        idx = torch.from_numpy(_batches(len(images), settings.batch_size, rng))
        (x,) = _flip_half(images[idx], rng=rng)
        loss = F.cross_entropy(judge(_random_crop(x, rng)), targets[idx], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % per_epoch == 0:
            log.info("judge epoch %d/%d  loss %.3f  %.0f s", (step + 1) // per_epoch, settings.judge_epochs,
                     loss.item(), time.monotonic() - started)
    return judge.eval()


@torch.no_grad()
def judge_accuracy(judge: JudgeNet, rgb: torch.Tensor, labels: np.ndarray, batch_size: int = 500) -> float:
    """Fraction of images (B, 3, H, W in [0, 1]) the judge labels correctly."""
    correct = 0
    for start in range(0, len(rgb), batch_size):
        predicted = judge(rgb[start : start + batch_size]).argmax(dim=1).numpy()
        correct += int((predicted == labels[start : start + batch_size]).sum())
    return correct / len(rgb)


# --- the colorizers --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColorizerSpec:
    label: str
    model: str
    options: dict
    steps_field: str = "colorizer_steps"
    render: int = 32  # L is upsampled to this size before the network (the transfer model needs more pixels)


def colorizer_specs() -> list[ColorizerSpec]:
    # One small backbone for both heads, so the head is the only difference. The classification head
    # predicts at half resolution: 261 bins per pixel at 32x32 cost more than the whole backbone.
    small = {"base_width": 16, "downsample": 4, "n_dilated": 2, "out_stride": 2}
    return [
        ColorizerSpec("regression (L2)", "regression", small | {"head": "regression"}),
        ColorizerSpec("classification", "regression", small | {"head": "classification"}),
        ColorizerSpec("transfer (ImageNet EfficientNet-Lite0 encoder)", "effnet_unet",
                      {"head": "classification", "pretrained": True}, steps_field="transfer_steps", render=64),
    ]


def _render(L: torch.Tensor, size: int) -> torch.Tensor:
    return L if L.shape[-1] == size else F.interpolate(L, size=(size, size), mode="bilinear", align_corners=False)


def train_colorizer(spec: ColorizerSpec, L: torch.Tensor, ab: torch.Tensor, settings: CifarSettings) -> nn.Module:
    """Train one colorizer on the training images' L -> ab (flips; AdamW, warm-up and cosine decay)."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = create_model(spec.model, **spec.options)
    loss_kind = "classification" if model.output == "logits" else "l2"
    class_weights = None
    if loss_kind == "classification":
        class_weights, _ = measure_class_weights(_ab_samples(ab, rng), batches=20, lam=0.5)
    steps = getattr(settings, spec.steps_field)
    encoder, rest = [], []
    for name, p in model.named_parameters():
        (encoder if spec.model == "effnet_unet" and name.startswith("encoder.") else rest).append(p)
    groups = [{"params": rest, "lr": 2e-3}] + ([{"params": encoder, "lr": 2e-4}] if encoder else [])
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-4)
    base = [g["lr"] for g in groups]
    model.train()
    started = time.monotonic()
    for step in range(steps):
        for group, lr in zip(optimizer.param_groups, base, strict=True):
            group["lr"] = lr * warmup_cosine(step, steps, warmup=min(200, steps // 10 or 1))
        idx = torch.from_numpy(_batches(len(L), settings.batch_size, rng))
        L_b, ab_b = _flip_half(L[idx], ab[idx], rng=rng)
        # colour_loss pools the 32 px truth down to the output's size where the model's output is smaller
        loss = colour_loss(model(_render(L_b, spec.render)), ab_b, loss_kind, class_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % max(1, steps // 5) == 0:
            log.info("%s: step %d/%d  loss %.4f  %.0f s", spec.label, step + 1, steps, loss.item(),
                     time.monotonic() - started)
    return model.eval()


@torch.no_grad()
def predict_ab(model: nn.Module, L: torch.Tensor, render: int, decode: Callable[[torch.Tensor], torch.Tensor],
               batch_size: int = 500) -> torch.Tensor:
    """ab (N, 2, 32, 32) in Lab units for test L (N, 1, 32, 32); ``decode`` turns raw outputs into ab."""
    out = []
    for start in range(0, len(L), batch_size):
        L_b = L[start : start + batch_size]
        ab = decode(model(_render(L_b, render)))
        out.append(F.interpolate(ab, size=L_b.shape[-2:], mode="bilinear", align_corners=False)
                   if ab.shape[-2:] != L_b.shape[-2:] else ab)
    return torch.cat(out)


def decoders(model: nn.Module) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """Every decoding the comparison reports for a model: one for regression, mode + annealed means + mean
    for classification."""
    if model.output == "ab":
        return [("", lambda out: out.float() * AB_NORM)]
    rows: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [("mode", lambda out: decode_ab(out, "mode"))]
    for t in TEMPERATURES:
        rows.append((f"annealed mean T={t:g}", lambda out, t=t: decode_ab(out, "annealed_mean", t)))
    rows.append(("mean (T=1)", lambda out: decode_ab(out, "mean")))
    return rows


# --- the comparison --------------------------------------------------------------------------------------------


@dataclass
class CifarRow:
    label: str
    judge_accuracy: float
    psnr: float | None = None
    colourfulness: float | None = None
    seed_paper: int | None = None


def _score(L: torch.Tensor, ab: torch.Tensor, truth_rgb: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """The colorized images (B, 3, H, W) for the judge, their mean PSNR and colourfulness."""
    rgb = merge_l_ab(L, ab).clamp(0, 1)
    channels_last = rgb.permute(0, 2, 3, 1)  # tools.metrics takes (B, H, W, 3)
    psnr = float(np.mean(metrics.psnr(channels_last, truth_rgb.permute(0, 2, 3, 1))))
    colourful = float(np.mean(metrics.colourfulness(channels_last)))
    return rgb, psnr, colourful


def cached_judge(rgb: np.ndarray, labels: np.ndarray, settings: CifarSettings, work_dir: Path | None) -> JudgeNet:
    """The judge for these training images and settings: loaded from ``work_dir/judge.pt`` when it was trained
    with exactly them (the costliest step of a rerun), else trained and saved there."""
    key = {"judge_epochs": settings.judge_epochs, "judge_width": settings.judge_width, "seed": settings.seed,
           "batch_size": settings.batch_size, "images": len(rgb), "labels_sum": int(labels.sum()),
           "pixels_sum": int(rgb.sum(dtype=np.int64))}
    path = work_dir / "judge.pt" if work_dir is not None else None
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["key"] == key:
            judge = JudgeNet(settings.judge_width)
            judge.load_state_dict(saved["state"])
            log.info("judge loaded from %s", path)
            return judge.eval()
    judge = train_judge(rgb, labels, settings)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as f:
            torch.save({"key": key, "state": judge.state_dict()}, f)
    return judge


def run_cifar(zip_path: str | Path, settings: CifarSettings, work_dir: Path | None = None) -> dict:
    """Train the judge and the colorizers, colorize the test set, and score every row (see the module doc).
    ``work_dir`` keeps the trained judge for reruns."""
    t0 = time.monotonic()
    train_rgb, train_labels = load_cifar(zip_path, "train", settings.train_per_class)
    test_rgb, test_labels = load_cifar(zip_path, "test", settings.test_per_class)
    log.info("CIFAR-10: %d training and %d test images", len(train_rgb), len(test_rgb))
    judge = cached_judge(train_rgb, train_labels, settings, work_dir)
    L_train, ab_train = to_lab(train_rgb)
    L_test, ab_test = to_lab(test_rgb)
    truth = torch.from_numpy(test_rgb).permute(0, 3, 1, 2).float() / 255.0

    rows: list[CifarRow] = []
    gray_rgb, gray_psnr, gray_c = _score(L_test, torch.zeros_like(ab_test), truth)
    rows.append(CifarRow("grayscale (ab = 0)", judge_accuracy(judge, gray_rgb, test_labels), gray_psnr, gray_c,
                         SEED_PAPER["grayscale"]))
    for spec in colorizer_specs():
        model = train_colorizer(spec, L_train, ab_train, settings)
        for suffix, decode in decoders(model):
            ab = predict_ab(model, L_test, spec.render, decode)
            rgb, psnr, colourful = _score(L_test, ab, truth)
            label = f"{spec.label}, {suffix}" if suffix else spec.label
            rows.append(CifarRow(label, judge_accuracy(judge, rgb, test_labels), psnr, colourful,
                                 _seed_figure(spec, suffix)))
            log.info("%s: judge %.1f%%", label, 100 * rows[-1].judge_accuracy)
    rows.append(CifarRow("ground truth (colour)", judge_accuracy(judge, truth, test_labels), None,
                         float(np.mean(metrics.colourfulness(truth.permute(0, 2, 3, 1)))), SEED_PAPER["ground truth"]))
    return {
        "settings": settings.__dict__,
        "train_images": len(train_rgb),
        "test_images": len(test_rgb),
        "rows": [row.__dict__ for row in rows],
        "seconds": time.monotonic() - t0,
    }


def _seed_figure(spec: ColorizerSpec, suffix: str) -> int | None:
    if spec.model == "effnet_unet":
        return SEED_PAPER["transfer"] if suffix == f"annealed mean T={ANNEAL_T_ZHANG:g}" else None
    if spec.options.get("head") == "regression":
        return SEED_PAPER["regression"]
    if suffix == "mode":
        return SEED_PAPER["classification"]
    if suffix == f"annealed mean T={ANNEAL_T_SEED:g}":
        return SEED_PAPER["annealed mean"]
    return None


def cifar_table(result: dict) -> str:
    """The results as markdown. "Gap closed" is how far a row moves the judge from gray toward ground truth
    ((row - gray) / (truth - gray)): judges differ in how much they rely on colour, so that share, not the raw
    accuracy, is what compares with the seed paper's (whose judge scored gray 22% and truth 80%)."""
    gray, truth = result["rows"][0]["judge_accuracy"], result["rows"][-1]["judge_accuracy"]
    seed_gray, seed_truth = SEED_PAPER["grayscale"], SEED_PAPER["ground truth"]
    lines = [
        "| colorization of the test images | judge accuracy | gap closed | seed paper (gap closed) | PSNR dB "
        "| colourfulness |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        closed = f"{(row['judge_accuracy'] - gray) / (truth - gray):.0%}" if truth > gray else "-"
        seed = row["seed_paper"]
        seed_text = f"{seed}% ({(seed - seed_gray) / (seed_truth - seed_gray):.0%})" if seed is not None else ""
        psnr = f"{row['psnr']:.2f}" if row["psnr"] is not None else "-"
        colourful = f"{row['colourfulness']:.1f}" if row["colourfulness"] is not None else "-"
        lines.append(f"| {row['label']} | {100 * row['judge_accuracy']:.1f}% | {closed} | {seed_text} | {psnr} "
                     f"| {colourful} |")
    return "\n".join(lines)
