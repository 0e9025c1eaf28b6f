"""``python -m tools evaluate --hints``: how much a restorer's colour points buy, measured against the truth.

For each colour photo, hints are sampled from the truth the way Zhang et al. (2017, "Real-time user-guided
image colorization") simulate a user: random pixels, each given the truth's chroma averaged over a small
patch around it. The photo is colorized with the first N of one fixed sequence of sampled hints, for each
N in ``HINT_COUNTS`` (0 is the automatic result), and scored by PSNR against the truth beside the gray
baseline. The sequence is drawn per photo from a seeded generator, so runs are repeatable and the counts
are nested: 10 hints are the 5 hints plus 5 more.

The network runs once per photo; only the hint steps (grid propagation, fit, upsampling) run per count,
and their time is reported as the cost of hints.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.color import merge_l_ab, rgb_to_lab_np
from models.colorizer import Colorizer
from models.hints import ColourHints, ColourPoint
from tools import metrics
from tools.evaluate import gray_input, iter_truth_photos
from worker.photos import PhotoOptions, colorize_photos, plan_photos

log = logging.getLogger(__name__)

HINT_COUNTS = (0, 1, 2, 5, 10, 20)
# The truth's chroma is averaged over a (2r+1)^2 patch, and the hint covers a disc of the same size: Zhang et
# al. sample patches of 1-9 px; 5 px is what a click on a detail gives.
PATCH_RADIUS = 2
SEED = 13


def sample_truth_hints(truth_rgb: np.ndarray, count: int, seed: int = SEED) -> ColourHints:
    """``count`` point hints at uniformly random pixels of ``truth_rgb`` (H, W, 3), each with the truth's mean
    ab over the patch around it. Deterministic in ``seed``, and nested: the first k of ``count`` hints are the
    hints for k."""
    height, width = truth_rgb.shape[:2]
    rng = np.random.default_rng(seed)
    # One draw of (y, x) per hint in turn, so the first k hints do not depend on how many follow.
    positions = [(int(rng.integers(height)), int(rng.integers(width))) for _ in range(count)]
    lab = rgb_to_lab_np(truth_rgb)
    points = []
    for y, x in positions:
        patch = lab[max(0, y - PATCH_RADIUS) : y + PATCH_RADIUS + 1, max(0, x - PATCH_RADIUS) : x + PATCH_RADIUS + 1]
        a, b = patch[..., 1].mean(), patch[..., 2].mean()
        points.append(ColourPoint(float(x), float(y), (float(a), float(b)), radius=PATCH_RADIUS + 0.5))
    return ColourHints(points=tuple(points))


def _psnr(L: np.ndarray, ab: np.ndarray, truth_rgb: np.ndarray) -> float:
    L_t = torch.as_tensor(L, dtype=torch.float64)[None, None]
    ab_t = torch.as_tensor(ab, dtype=torch.float64)[None]
    rgb = merge_l_ab(L_t, ab_t)[0].permute(1, 2, 0).numpy()
    return float(metrics.psnr(rgb, truth_rgb))


@dataclass
class HintResult:
    """One data set: PSNR per photo for gray and for each hint count (0 = automatic)."""

    data: str
    label: str
    counts: tuple[int, ...]
    images: list[str] = field(default_factory=list)
    gray: list[float] = field(default_factory=list)
    psnr: dict[int, list[float]] = field(default_factory=dict)
    network_s: float = 0.0  # the automatic path: network, fit, upsampling
    hint_s: float = 0.0  # the extra work of hints at every non-zero count

    def mean(self, count: int) -> float:
        return float(np.mean(self.psnr[count]))

    def gain(self, count: int) -> float:
        return self.mean(count) - self.mean(0)

    def worst_gain(self, count: int) -> float:
        """The largest loss (most negative change) any one photo sees from ``count`` hints."""
        return float(np.min(np.array(self.psnr[count]) - np.array(self.psnr[0])))

    def to_json(self) -> dict[str, Any]:
        return {"data": self.data, "model": self.label, "images": len(self.images),
                "gray_psnr": float(np.mean(self.gray)),
                "psnr": {str(n): self.mean(n) for n in self.counts},
                "gain_db": {str(n): self.gain(n) for n in self.counts},
                "worst_image_gain_db": {str(n): self.worst_gain(n) for n in self.counts},
                "network_s": self.network_s, "hint_s": self.hint_s}


def evaluate_hints(
    colorizer: Colorizer,
    label: str,
    data: str | os.PathLike,
    counts: Sequence[int] = HINT_COUNTS,
    limit: int | None = None,
    batch_size: int = 8,
) -> HintResult:
    """Score ``colorizer`` with 0..N truth-sampled hints on every colour photo under ``data`` (module doc)."""
    counts = tuple(sorted(set(counts) | {0}))
    result = HintResult(str(data), label, counts, psnr={n: [] for n in counts})
    chunk: list[Any] = []

    def flush() -> None:
        Ls = [gray_input(p.rgb) for p in chunk]
        started = time.perf_counter()
        renders = colorizer.predict_grid(Ls)
        automatic = [replace(r) for r in renders]
        colorizer.fit(automatic)
        for photo, L, render in zip(chunk, Ls, automatic, strict=True):
            result.psnr[0].append(_psnr(L, colorizer.upsample_ab(L, render), photo.rgb))
            result.gray.append(_psnr(L, np.zeros((2, *L.shape), np.float32), photo.rgb))
            result.images.append(photo.name)
        result.network_s += time.perf_counter() - started
        most = max(counts)
        sampled = [sample_truth_hints(p.rgb, most) for p in chunk]
        for count in counts[1:]:
            started = time.perf_counter()
            hints = [ColourHints(points=s.points[:count]) for s in sampled]
            hinted = [replace(r) for r in renders]
            colorizer.apply_hints(hinted, hints)
            colorizer.fit(hinted)
            abs_ = [colorizer.upsample_ab(L, r, h) for L, r, h in zip(Ls, hinted, hints, strict=True)]
            result.hint_s += time.perf_counter() - started
            for photo, L, ab in zip(chunk, Ls, abs_, strict=True):
                result.psnr[count].append(_psnr(L, ab, photo.rgb))
        chunk.clear()

    for photo in iter_truth_photos(data, limit):
        chunk.append(photo)
        if len(chunk) == batch_size:
            flush()
    if chunk:
        flush()
    if not result.images:
        raise ValueError(f"{data}: no readable colour photos to evaluate")
    log.info("%s: %d photos", data, len(result.images))
    return result


def hints_table(results: Sequence[HintResult]) -> str:
    """Markdown: one row per data set, mean PSNR for gray, automatic and each hint count, gains in brackets."""
    counts = results[0].counts
    head = "| data | photos | gray | automatic | " + " | ".join(f"{n} hints" for n in counts[1:]) + " |"
    lines = [head, "|" + "---|" * (4 + len(counts) - 1)]
    for r in results:
        cells = [f"{r.mean(n):.2f} ({r.gain(n):+.2f})" for n in counts[1:]]
        lines.append(f"| {os.path.basename(r.data.rstrip('/'))} | {len(r.images)} | {np.mean(r.gray):.2f} | "
                     f"{r.mean(0):.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class HintCost:
    """End-to-end seconds per photo (decode, colorize, encode, as ``tinct colorize`` runs it), median of runs."""

    width: int
    height: int
    hints: int
    automatic_s: float
    hinted_s: float

    @property
    def overhead(self) -> float:
        return self.hinted_s / self.automatic_s - 1.0

    def line(self) -> str:
        return (f"{self.width}x{self.height} ({self.width * self.height / 1e6:.1f} MP), {self.hints} hints: "
                f"{self.automatic_s:.3f} s automatic, {self.hinted_s:.3f} s with hints ({self.overhead:+.1%})")


def bench_hint_cost(colorizer: Colorizer, label: str, workdir: str | os.PathLike, megapixels: float = 1.0,
                    hints: int = 10, repeats: int = 5) -> HintCost:
    """Time the photo job on one generated photo of ``megapixels`` (4:3) with and without a sidecar of ``hints``
    points and one region, alternating the two so that a busy machine's drift hits both alike."""
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(width * 3 / 4))
    folder = Path(workdir)
    (folder / "auto").mkdir(parents=True, exist_ok=True)
    (folder / "hinted").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    y, x = np.mgrid[0:height, 0:width]
    gray = 128 + 60 * np.sin(x / 37.0) * np.cos(y / 53.0) + rng.normal(0, 4, (height, width))
    for name in ("auto", "hinted"):
        Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8)).save(folder / name / "scan.png")
    points = [{"x": int(rng.integers(0, width)), "y": int(rng.integers(0, height)), "color": "#8a5a3c"}
              for _ in range(hints - 1)]
    regions = [{"polygon": [[10, 10], [width // 3, 20], [width // 4, height // 3]], "color": "#3c5a8a"}]
    (folder / "hinted" / "scan.png.hints.json").write_text(json.dumps({"points": points, "regions": regions}))
    times: dict[str, list[float]] = {"auto": [], "hinted": []}
    for _ in range(repeats):
        for name in ("auto", "hinted"):
            plan = plan_photos([folder / name / "scan.png"], folder / f"{name}-out.png")
            started = time.perf_counter()
            summary = colorize_photos(colorizer, plan, label, PhotoOptions(overwrite=True, workers=1))
            times[name].append(time.perf_counter() - started)
            if summary.failed:
                raise RuntimeError(summary.report())
    return HintCost(width, height, hints, float(np.median(times["auto"])), float(np.median(times["hinted"])))
