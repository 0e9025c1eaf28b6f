"""``python -m tools evaluate --video --data CLIPS``: temporal quality of film colorization.

For each colour clip (a file, or every video file in a folder), the clip is grayed (its Lab lightness,
written losslessly as an 8-bit gray film with the clip's own timing), colorized through the product's film
pipeline (``worker.pipeline.colorize_frames``: decode, network, smoothing, chroma at 4:2:0, the source's
luma kept) with smoothing off and on, and every frame is scored against the truth:

* PSNR (dB, sRGB), CIEDE2000 and colourfulness per frame, averaged over the clip (frames identical to the truth,
  whose PSNR is infinite, are counted apart, and every row's PSNR and CIEDE2000 are averaged over the same frames:
  those no row reproduced exactly). CIEDE2000, the perceptual difference the photo sets report too, is taken
  on every other pixel of every other row (``DELTA_E_STRIDE``);
* the warping error of Lai et al. (ECCV 2018) (``tools.warping``): flow from the ground truth, occlusions
  masked, mean squared difference of consecutive output frames over the unoccluded pixels.

Beside the model rows: the gray baseline (ab = 0: no colour, so no colour flicker, but not a colorization)
and the ground truth, whose own warping error is the floor set by real change in the footage and flow
errors. A smoothing that brings the model's warping error towards the truth's, without costing PSNR or
colourfulness, removes flicker without washing colour out.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch

from models.color import l_to_gray, rgb_to_l, ycbcr_to_rgb_np
from models.colorizer import Colorizer
from tools import metrics
from tools.warping import WarpingError
from worker.media.video_sink import EncodeOptions, plan_output
from worker.media.video_source import probe_film
from worker.pipeline import ColourFrame, colorize_frames
from worker.smoothing import SmoothingOptions

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v"}
GRAY_ROW = "gray baseline (ab = 0)"
TRUTH_ROW = "ground truth"
# Frames scored per clip by default: the first 150 keep a scorecard of the development clips near 20 minutes for
# two models on 2 CPU cores; the whole clips (WHOLE_CLIPS, `--frames all`), which release 4's film target names,
# take about an hour there.
DEFAULT_MAX_FRAMES = 150
WHOLE_CLIPS = 0
WHOLE_CLIPS_SCOPE = "whole clips"
# The warping error is printed x 1000: Lai et al.'s tables use the same scale (e.g. 0.0290 -> 29.0).
WARP_SCALE = 1000.0
# A frame's CIEDE2000 is the mean over every DELTA_E_STRIDE-th pixel of every DELTA_E_STRIDE-th row: a whole 720p
# frame costs 0.2-0.3 s here (minutes a model on the development clips), the lattice a quarter of that, and its mean
# was within 0.004 of the whole frame's on every development clip (gray and a tinted truth, frame 30 of each).
DELTA_E_STRIDE = 2


def frame_delta_e(rgb: np.ndarray, truth: np.ndarray) -> float:
    """Mean CIEDE2000 between two sRGB frames (H, W, 3), on the ``DELTA_E_STRIDE`` lattice."""
    step = DELTA_E_STRIDE
    return float(metrics.delta_e_mean(rgb[::step, ::step], truth[::step, ::step]))


@dataclass
class RowScores:
    psnr: list[float] = field(default_factory=list)
    colourfulness: list[float] = field(default_factory=list)
    warping: WarpingError = field(default_factory=WarpingError)
    delta_e: list[float] = field(default_factory=list)

    def add(self, rgb: np.ndarray, truth: np.ndarray) -> None:
        """Score one colorized frame against its truth (both sRGB (H, W, 3), the same size)."""
        self.psnr.append(float(metrics.psnr(rgb, truth)))
        self.colourfulness.append(float(metrics.colourfulness(rgb)))
        self.warping.update(rgb, truth)
        self.delta_e.append(frame_delta_e(rgb, truth))

    def summary(self, paired: set[int] | None = None) -> dict[str, float]:
        # Frames identical to the truth (black frames of a fade) have infinite PSNR; they are left out of the
        # mean, which would otherwise be infinite, and counted. ``paired``: the frames every row of the clip scored
        # finitely, so that a row is not averaged over frames another row left out (a black opening is infinite
        # for the gray baseline but a finite 50-60 dB for a model tinting it, which would flatter the model).
        used = [p for i, p in enumerate(self.psnr) if math.isfinite(p) and (paired is None or i in paired)]
        delta_e = [d for i, d in enumerate(self.delta_e) if paired is None or i in paired]
        return {
            "psnr": float(np.mean(used)) if used else math.nan,
            "delta_e": float(np.mean(delta_e)) if delta_e else math.nan,
            "identical_frames": sum(1 for p in self.psnr if not math.isfinite(p)),
            "colourfulness": float(np.mean(self.colourfulness)) if self.colourfulness else math.nan,
            "warping_error": self.warping.value * WARP_SCALE if self.warping.pairs else math.nan,
            "frames": len(self.colourfulness),
        }


@dataclass
class ClipResult:
    clip: str
    size: str
    frames: int
    rows: dict[str, dict[str, float]]
    cuts: list[int]
    seconds: float


def find_clips(data: str | Path) -> list[Path]:
    data = Path(data)
    if data.is_file():
        return [data]
    clips = sorted(p for p in data.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not clips:
        raise FileNotFoundError(f"no video clips ({', '.join(sorted(VIDEO_SUFFIXES))}) under {data}")
    return clips


def frames_arg(text: str) -> int:
    """``--frames``/``--max-frames`` (an argparse ``type=``): a positive count, or ``all`` for WHOLE_CLIPS."""
    if text.strip().lower() == "all":
        return WHOLE_CLIPS
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of frames or 'all', got {text!r}")
    return count


def frames_scope(max_frames: int, scored: Sequence[int] = ()) -> str:
    """How much of each clip was scored, for a table's heading: the whole clips when nothing limited them or when
    every clip ended before the limit (``scored``: the frames each clip gave)."""
    whole = max_frames == WHOLE_CLIPS or (len(scored) > 0 and all(n < max_frames for n in scored))
    return WHOLE_CLIPS_SCOPE if whole else f"first {max_frames} frames a clip"


def truth_frames(path: Path, max_frames: int) -> Iterator[tuple[int, np.ndarray]]:
    """(pts, sRGB float32 (H, W, 3)) of the first ``max_frames`` frames (every frame for WHOLE_CLIPS), in display
    order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if max_frames != WHOLE_CLIPS and index >= max_frames:
                return
            yield frame.pts, frame.to_ndarray(format="rgb24").astype(np.float32) / 255.0


def write_gray_film(truth: Path, output: Path, max_frames: int) -> int:
    """The truth's Lab lightness as a lossless full-range 8-bit gray film (FFV1), with the truth's timing."""
    with av.open(str(truth)) as source:
        src = source.streams.video[0]
        rate, time_base = src.average_rate or 24, src.time_base
        width, height = src.codec_context.width, src.codec_context.height
    count = 0
    with av.open(str(output), "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "gray"
        stream.codec_context.time_base = time_base
        stream.codec_context.color_range = 2  # full range: gray code = round(255 * sRGB gray)
        for pts, rgb in truth_frames(truth, max_frames):
            gray = _gray_of(rgb)[: stream.height, : stream.width]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(gray), format="gray")
            frame.pts, frame.time_base, frame.color_range = pts, time_base, 2
            for packet in stream.encode(frame):
                out.mux(packet)
            count += 1
        for packet in stream.encode():
            out.mux(packet)
    return count


def baseline_rows(clip: Path, gray_path: Path, max_frames: int) -> tuple[RowScores, RowScores]:
    """The gray baseline's scores (``gray_path``, written by ``write_gray_film``) and the truth's own (its
    colourfulness and warping error: no PSNR or colour difference against itself)."""
    gray_row, truth_row = RowScores(), RowScores()
    for (_, truth), (_, gray) in zip(truth_frames(clip, max_frames), truth_frames(gray_path, max_frames),
                                     strict=True):
        truth = truth[: gray.shape[0], : gray.shape[1]]
        gray_row.psnr.append(float(metrics.psnr(gray, truth)))
        gray_row.colourfulness.append(0.0)  # ab = 0 by construction; the film's codec adds no colour to measure
        gray_row.warping.update(gray, truth)
        gray_row.delta_e.append(frame_delta_e(gray, truth))
        truth_row.colourfulness.append(float(metrics.colourfulness(truth)))
        truth_row.warping.update(truth, truth)
    return gray_row, truth_row


def _gray_of(rgb: np.ndarray) -> np.ndarray:
    L = rgb_to_l(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    return np.rint(l_to_gray(L)[0, 0].numpy() * 255.0).astype(np.uint8)


def _frame_rgb(frame: ColourFrame, matrix: str, bit_depth: int, full_range: bool) -> np.ndarray:
    """A colorized frame as a player shows it: chroma upsampled bilinearly to the luma's size."""
    height, width = frame.luma.shape
    cb = cv2.resize(frame.cb, (width, height), interpolation=cv2.INTER_LINEAR)
    cr = cv2.resize(frame.cr, (width, height), interpolation=cv2.INTER_LINEAR)
    return ycbcr_to_rgb_np(frame.luma, cb, cr, matrix, bit_depth, full_range)


def row_name(label: str, strength: float) -> str:
    """The row of one model at one smoothing strength in a ``ClipResult``."""
    return f"{label}, smoothing {'off' if strength == 0 else strength}"


def evaluate_clip(colorizer: Colorizer, label: str, clip: Path, strengths: list[float], max_frames: int,
                  work: Path) -> ClipResult:
    return score_clip([(colorizer, label)], clip, strengths, max_frames, work)


def score_clip(models: Sequence[tuple[Colorizer, str]], clip: Path, strengths: list[float], max_frames: int,
               work: Path) -> ClipResult:
    """Every ``(colorizer, label)`` at every smoothing strength on one clip, beside the gray baseline and the truth
    (which are scored once, whatever the number of models)."""
    began = time.perf_counter()
    gray_path = work / f"{clip.stem}-gray.mkv"
    write_gray_film(clip, gray_path, max_frames)
    film = probe_film(gray_path, 1 << 40)
    layout = plan_output(film.video, EncodeOptions(codec="h264"))
    rows: dict[str, RowScores] = {}

    gray_row, truth_row = baseline_rows(clip, gray_path, max_frames)
    rows[GRAY_ROW] = gray_row

    cuts: list[int] = []
    for (colorizer, label), strength in itertools.product(models, strengths):
        row = RowScores()
        truths = truth_frames(clip, max_frames)

        def sink(frame: ColourFrame, row: RowScores = row, truths: Iterator = truths) -> None:
            _, truth = next(truths)
            truth = truth[: frame.luma.shape[0], : frame.luma.shape[1]]
            row.add(_frame_rgb(frame, layout.matrix, layout.bit_depth, layout.full_range), truth)

        times = colorize_frames(film, colorizer, layout, SmoothingOptions(strength=strength), sink)
        if strength > 0:
            cuts = times.cuts
        rows[row_name(label, strength)] = row
    paired = {i for i in range(len(gray_row.psnr))
              if all(i < len(r.psnr) and math.isfinite(r.psnr[i]) for r in rows.values())}
    rows[TRUTH_ROW] = truth_row
    return ClipResult(clip.name, f"{film.video.width}x{film.video.height}", film.frames,
                      {name: row.summary(paired) for name, row in rows.items()}, cuts, time.perf_counter() - began)


def evaluate_videos(colorizer: Colorizer, label: str, data: str | Path, strengths: list[float],
                    max_frames: int = DEFAULT_MAX_FRAMES) -> list[ClipResult]:
    return score_clips([(colorizer, label)], data, strengths, max_frames)


def score_clips(models: Sequence[tuple[Colorizer, str]], data: str | Path, strengths: list[float],
                max_frames: int = DEFAULT_MAX_FRAMES) -> list[ClipResult]:
    """``score_clip`` for every clip under ``data`` (a file or a folder), in name order."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for clip in find_clips(data):
            log.info("scoring %s", clip)
            results.append(score_clip(models, clip, strengths, max_frames, Path(tmp)))
    return results


def video_table(results: list[ClipResult]) -> str:
    """Markdown: one block of rows per clip, then the mean over clips."""
    lines = ["| clip | row | PSNR dB | CIEDE2000 | colourfulness | warping error x1000 |", "|---|---|---|---|---|---|"]
    names = list(results[0].rows) if results else []
    for result in results:
        for name in names:
            r = result.rows[name]
            psnr, delta_e = ("", "") if name == TRUTH_ROW else (f"{r['psnr']:.2f}", f"{r['delta_e']:.2f}")
            lines.append(f"| {result.clip} ({result.size}, {result.frames} fr) | {name} | {psnr} | {delta_e} | "
                         f"{r['colourfulness']:.1f} | {r['warping_error']:.2f} |")
    for name in names:
        mean = {key: _finite_mean([res.rows[name][key] for res in results])
                for key in ("psnr", "delta_e", "colourfulness", "warping_error")}
        psnr, delta_e = ("", "") if name == TRUTH_ROW else (f"{mean['psnr']:.2f}", f"{mean['delta_e']:.2f}")
        lines.append(f"| **mean of {len(results)} clips** | {name} | {psnr} | {delta_e} | "
                     f"{mean['colourfulness']:.1f} | {mean['warping_error']:.2f} |")
    return "\n".join(lines)


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def to_json(results: list[ClipResult]) -> list[dict[str, Any]]:
    return [{"clip": r.clip, "size": r.size, "frames": r.frames, "rows": r.rows, "cuts": r.cuts,
             "seconds": r.seconds} for r in results]
