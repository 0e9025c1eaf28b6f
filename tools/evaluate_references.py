"""``python -m tools evaluate --video --references``: what reference frames buy a film, measured against its truth.

Each colour clip is made black and white (``tools.evaluate_video.write_gray_film``) and colorized through the film
pipeline twice at the same smoothing: automatically, and with the truth's first frame of every shot given as a
reference (the shots are those the smoother's cut test finds in the automatic pass; a reference never crosses a
cut, so each shot needs its own). Every frame is scored against the truth: PSNR and the warping error (Lai et al.),
beside the gray baseline and the truth's own warping error.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.color import rgb_to_lab_np
from models.colorizer import Colorizer
from tools.evaluate_video import (
    GRAY_ROW,
    TRUTH_ROW,
    RowScores,
    _frame_rgb,
    baseline_rows,
    find_clips,
    truth_frames,
    write_gray_film,
)
from worker.media.video_sink import EncodeOptions, plan_output
from worker.media.video_source import probe_film
from worker.pipeline import ColourFrame, colorize_frames
from worker.references import ReferenceField, ResolvedReference
from worker.smoothing import SmoothingOptions

log = logging.getLogger(__name__)

AUTOMATIC_ROW = "automatic"
REFERENCE_ROW = "first frame of each shot as reference"


@dataclass
class ReferenceClipResult:
    clip: str
    frames: int
    shots: int
    rows: dict[str, dict[str, float]]
    seconds: float


def _score(frames: Iterator[ColourFrame], truths: Iterator[tuple[int, np.ndarray]], layout, row: RowScores) -> None:
    for frame in frames:
        _, truth = next(truths)
        truth = truth[: frame.luma.shape[0], : frame.luma.shape[1]]
        row.add(_frame_rgb(frame, layout.matrix, layout.bit_depth, layout.full_range), truth)


def score_clip_references(colorizer: Colorizer, clip: Path, strength: float, max_frames: int,
                          work: Path) -> ReferenceClipResult:
    began = time.perf_counter()
    gray_path = work / f"{clip.stem}-gray.mkv"
    write_gray_film(clip, gray_path, max_frames)
    film = probe_film(gray_path, 1 << 40)
    layout = plan_output(film.video, EncodeOptions(codec="h264"))
    smoothing = SmoothingOptions(strength=strength)
    gray_row, truth_row = baseline_rows(clip, gray_path, max_frames)

    automatic: list[ColourFrame] = []
    times = colorize_frames(film, colorizer, layout, smoothing, automatic.append)
    auto_row = RowScores()
    _score(iter(automatic), truth_frames(clip, max_frames), layout, auto_row)
    automatic.clear()

    starts = [0, *times.cuts]
    references = []
    for index, (_, truth) in enumerate(truth_frames(clip, max_frames)):
        if index in starts:
            ab = rgb_to_lab_np(truth.astype(np.float64))[..., 1:].transpose(2, 0, 1)
            references.append(ResolvedReference(index, np.ascontiguousarray(ab, dtype=np.float32)))
    field = ReferenceField(film, layout.frame, colorizer, smoothing, references, 0, film.frames)
    guided: list[ColourFrame] = []
    colorize_frames(film, colorizer, layout, smoothing, guided.append, references=field)
    guided_row = RowScores()
    _score(iter(guided), truth_frames(clip, max_frames), layout, guided_row)

    rows = {GRAY_ROW: gray_row, AUTOMATIC_ROW: auto_row, REFERENCE_ROW: guided_row}
    paired = {i for i in range(len(gray_row.psnr)) if all(i < len(r.psnr) and math.isfinite(r.psnr[i])
                                                          for r in rows.values())}
    summary = {name: row.summary(paired) for name, row in rows.items()}
    summary[TRUTH_ROW] = truth_row.summary()
    return ReferenceClipResult(clip.name, film.frames, len(starts), summary, time.perf_counter() - began)


def evaluate_references(colorizer: Colorizer, data: str | Path, strength: float,
                        max_frames: int) -> list[ReferenceClipResult]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for clip in find_clips(data):
            log.info("scoring %s with and without references", clip)
            results.append(score_clip_references(colorizer, clip, strength, max_frames, Path(tmp)))
    return results


def references_table(results: list[ReferenceClipResult]) -> str:
    """Markdown: per clip, PSNR and warping error (x 1000) of gray, automatic, with references, and the truth's."""
    lines = ["| clip | frames | shots | gray PSNR | automatic PSNR | with references PSNR | automatic warp | "
             "with references warp | truth warp |", "|" + "---|" * 9]
    for r in results:
        rows = r.rows
        lines.append(f"| {r.clip} | {r.frames} | {r.shots} | {rows[GRAY_ROW]['psnr']:.2f} | "
                     f"{rows[AUTOMATIC_ROW]['psnr']:.2f} | {rows[REFERENCE_ROW]['psnr']:.2f} | "
                     f"{rows[AUTOMATIC_ROW]['warping_error']:.3f} | {rows[REFERENCE_ROW]['warping_error']:.3f} | "
                     f"{rows[TRUTH_ROW]['warping_error']:.3f} |")
    means = {name: np.mean([r.rows[name]["psnr"] for r in results]) for name in (GRAY_ROW, AUTOMATIC_ROW,
                                                                                 REFERENCE_ROW)}
    warps = {name: np.mean([r.rows[name]["warping_error"] for r in results]) for name in (AUTOMATIC_ROW,
                                                                                        REFERENCE_ROW, TRUTH_ROW)}
    lines.append(f"| mean | | | {means[GRAY_ROW]:.2f} | {means[AUTOMATIC_ROW]:.2f} | {means[REFERENCE_ROW]:.2f} | "
                 f"{warps[AUTOMATIC_ROW]:.3f} | {warps[REFERENCE_ROW]:.3f} | {warps[TRUTH_ROW]:.3f} |")
    return "\n".join(lines)
