"""What each model's encoder still recognises in gray: a linear probe on photos filed in class folders.

A colorizer paints what it recognises, and fine-tuning an ImageNet encoder for colour can cost it exactly that
(docs/training.md, session 10: the campaign candidate's encoder lost about 40% of what ImageNet's recognises in
gray). The probe embeds photos filed as ``<class>/<photo>`` (Tiny-ImageNet's training archive) in gray through
each model's encoder, fits a linear classifier on ``--per-class`` photos of each class outside the validation split,
and scores it on the split (the hash split of ``tools train --val-split``, so it never reports on photos it was
fitted on). ImageNet's untouched encoder is probed beside them, in gray and in colour: what a colorizer's encoder
starts from, and what colour adds.

    python -m tools probe models/weights/candidates/campaign-2026-12-04-lite2.pt \\
        --data ../shared/data/train/tiny_imagenet.zip --out docs/training/probe-encoder.json

The embedding probed is the one the model's colour reads: the encoder head's pooled 1,280-d embedding for a model
with global context (its frozen ImageNet copy's with ``context_encoder``), else the pooled stride-32 features (320-d
for Lite0) that feed the decoder.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.checkpoint import CheckpointError, load_checkpoint
from models.color import rgb_to_lab
from models.efficientnet_lite import INPUT_MEAN, INPUT_STD, EfficientNetLite, FrozenEfficientNetLite
from models.files import atomic_output
from tools.datasets import DataError, in_holdout, is_s3_uri, iter_image_bytes, relative_name
from tools.runtime import input_errors_exit, output_file
from worker.errors import one_line

log = logging.getLogger(__name__)

WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1)  # the classifier's L2 strength, chosen on a fifth of the fitting photos
BATCH = 64

Embed = Callable[[torch.Tensor], torch.Tensor]  # RGB batch (B, 3, H, W) in [0, 1] -> (B, D) embedding


@dataclass
class LabelledPhotos:
    images: torch.Tensor  # (N, 3, size, size) RGB, uint8 (a float copy of 10,000 photos would take gigabytes)
    labels: torch.Tensor  # (N,) class indices


@dataclass
class ProbeResult:
    model: str
    input: str  # gray | colour
    feature: str
    top1: float
    top5: float
    weight_decay: float


def load_labelled(source: str, size: int, val_split: float, per_class: int) -> tuple[LabelledPhotos, LabelledPhotos,
                                                                                      list[str]]:
    """(fitting photos, validation-split photos, class names) of a source filed in class folders: at most
    ``per_class`` photos of each class outside the split (in name order), every photo of the split."""
    fit_names: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    test_names: list[tuple[str, str, bytes]] = []
    for name, data in iter_image_bytes(source):
        inside = relative_name(source, name)
        folder = PurePosixPath(inside).parent.name
        if not folder:
            continue
        if in_holdout(inside, val_split):
            test_names.append((folder, inside, data))
        elif len(fit_names[folder]) < per_class:
            fit_names[folder].append((inside, data))
    classes = sorted(fit_names)
    if len(classes) < 2:
        raise DataError(f"{source}: the probe needs photos filed in class folders (<class>/<photo>), found "
                        f"{len(classes)} class{'es' if len(classes) != 1 else ''}")
    index = {c: i for i, c in enumerate(classes)}
    test_names = [t for t in test_names if t[0] in index]
    if not test_names:
        raise DataError(f"{source}: no photo of a known class falls in the validation split {val_split:g}; "
                        "raise --val-split")

    def stack(items: list[tuple[str, str, bytes]]) -> LabelledPhotos:
        images = [_square_rgb(inside, data, size) for _, inside, data in items]
        return LabelledPhotos(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
                              torch.tensor([index[c] for c, _, _ in items]))

    fit = stack([(c, inside, data) for c in classes for inside, data in fit_names[c]])
    return fit, stack(test_names), classes


def _square_rgb(name: str, data: bytes, size: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{name}: not a readable image ({one_line(exc)})") from exc


def gray_input(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> the gray input a colorizer's encoder sees (its lightness, as the pipeline keeps it)."""
    return EfficientNetLite.preprocess_l(rgb_to_lab(rgb)[:, :1])


def model_embedding(path: str) -> tuple[Embed, str]:
    """A checkpoint's encoder as an embedding of gray photos, and the name of the feature it gives."""
    model = load_checkpoint(path).build_model().eval()
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, EfficientNetLite):
        raise CheckpointError(f"{path}: {type(model).__name__} has no EfficientNet-Lite encoder to probe")
    if getattr(model.config, "context_encoder", False):
        copy = model.context_encoder
        return (lambda rgb: copy.embedding(gray_input(rgb))), "frozen ImageNet copy's head embedding (1280-d)"
    if hasattr(encoder, "_conv_head"):
        return (lambda rgb: encoder.embedding(gray_input(rgb))), "head embedding (1280-d)"
    channels = encoder.skip_channels[-1]
    return (lambda rgb: encoder.features(gray_input(rgb))[-1].mean(dim=(2, 3))), f"stride-32 features ({channels}-d)"


def embed(fn: Embed, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(images[i:i + BATCH].float() / 255) for i in range(0, len(images), BATCH)])


def linear_probe(fit_x: torch.Tensor, fit_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 classes: int) -> tuple[float, float, float]:
    """(top-1, top-5, weight decay) of a multinomial logistic regression on standardised features; the weight decay
    is chosen on a fifth of the fitting photos, the test photos only report."""
    mean, std = fit_x.mean(0), fit_x.std(0) + 1e-6
    fit_x, test_x = (fit_x - mean) / std, (test_x - mean) / std
    order = torch.randperm(len(fit_x), generator=torch.Generator().manual_seed(0))
    held, kept = order[: max(1, len(order) // 5)], order[max(1, len(order) // 5):]
    scores = {wd: _top_k(_fit(fit_x[kept], fit_y[kept], classes, wd), fit_x[held], fit_y[held], 1)
              for wd in WEIGHT_DECAYS}
    best = max(WEIGHT_DECAYS, key=lambda wd: (scores[wd], -wd))
    classifier = _fit(fit_x, fit_y, classes, best)
    return _top_k(classifier, test_x, test_y, 1), _top_k(classifier, test_x, test_y, min(5, classes)), best


def _fit(x: torch.Tensor, y: torch.Tensor, classes: int, weight_decay: float) -> torch.nn.Linear:
    classifier = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.LBFGS(classifier.parameters(), max_iter=300, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(classifier(x), y) + weight_decay * classifier.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return classifier


def _top_k(classifier: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, k: int) -> float:
    with torch.no_grad():
        return float((classifier(x).topk(k, dim=1).indices == y[:, None]).any(dim=1).float().mean())


def probe(models: dict[str, str], source: str, size: int, val_split: float, per_class: int,
          imagenet: bool) -> tuple[list[ProbeResult], dict]:
    start = time.time()
    fit, test, classes = load_labelled(source, size, val_split, per_class)
    log.info("%s: %d classes, %d photos to fit, %d of the split to score, at %d px", source, len(classes),
             len(fit.labels), len(test.labels), size)
    views: list[tuple[str, str, str, Embed]] = []
    if imagenet:
        reference = FrozenEfficientNetLite("lite0")
        views.append(("imagenet lite0", "gray", "head embedding (1280-d)",
                      lambda rgb: reference.embedding(gray_input(rgb))))
        views.append(("imagenet lite0", "colour", "head embedding (1280-d)",
                      lambda rgb: reference.embedding((rgb - INPUT_MEAN) / INPUT_STD)))
    for label, path in models.items():
        fn, feature = model_embedding(path)
        views.append((label, "gray", feature, fn))
    results = []
    for label, kind, feature, fn in views:
        top1, top5, wd = linear_probe(embed(fn, fit.images), fit.labels, embed(fn, test.images), test.labels,
                                      len(classes))
        results.append(ProbeResult(label, kind, feature, top1, top5, wd))
        log.info("%s (%s): top-1 %.1f%%, top-5 %.1f%%", label, kind, 100 * top1, 100 * top5)
    setup = {"source": source, "classes": len(classes), "fit_photos": len(fit.labels), "split_photos":
             len(test.labels), "val_split": val_split, "per_class": per_class, "size": size,
             "chance_top1": 1 / len(classes), "seconds": round(time.time() - start, 1)}
    return results, setup


def markdown(results: list[ProbeResult], setup: dict) -> str:
    lines = [f"Linear probe on {setup['source']}: {setup['classes']} classes, {setup['fit_photos']} photos fitted, "
             f"{setup['split_photos']} of the validation split scored, {setup['size']} px "
             f"(chance {100 * setup['chance_top1']:.1f}%)", "",
             "| model | input | feature | top-1 | top-5 |", "|---|---|---|---|---|"]
    lines += [f"| {r.model} | {r.input} | {r.feature} | {100 * r.top1:.1f}% | {100 * r.top5:.1f}% |" for r in results]
    return "\n".join(lines)


def _model_arg(text: str) -> tuple[str, str]:
    label, sep, path = text.partition("=")
    return (label, path) if sep and not Path(text).exists() else (Path(text).stem, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools probe", description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", type=_model_arg, metavar="[LABEL=]MODEL.pt",
                   help="checkpoints whose encoders to probe (in gray)")
    p.add_argument("--data", required=True, metavar="SOURCE", help="folder or .zip of photos in <class>/ folders")
    p.add_argument("--val-split", type=float, default=0.02, help="the split scored (default 0.02, the campaign's)")
    p.add_argument("--per-class", type=int, default=40, help="photos of each class fitted (default 40)")
    p.add_argument("--size", type=int, default=160, help="side the photos are resized to (default 160)")
    p.add_argument("--no-imagenet", dest="imagenet", action="store_false",
                   help="leave out ImageNet's untouched encoder (gray and colour)")
    p.add_argument("--out", type=output_file, help="also write the results as JSON here")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.models and not args.imagenet:
        p.error("nothing to probe: name a model or keep ImageNet's encoder")
    if not 0 < args.val_split < 1:
        p.error(f"--val-split: {args.val_split:g} is not a fraction between 0 and 1")
    if is_s3_uri(args.data):
        p.error(f"--data {args.data}: the probe reads a local folder or .zip (copy the photos down first)")
    with input_errors_exit(p):
        results, setup = probe(dict(args.models), args.data, args.size, args.val_split, args.per_class,
                               args.imagenet)
    print(markdown(results, setup))
    if args.out:
        with atomic_output(args.out) as sink:
            sink.write(json.dumps({"setup": setup, "results": [asdict(r) for r in results]}, indent=1).encode())
    return 0
