"""``python -m tools scorecard MODEL [MODEL...]``: every model decision's report card, models side by side.

One call scores several models on every development set in ``../shared/data/eval`` and on any extra sets
(``--data NAME=PATH``; with ``--val-split F`` only each one's validation split, as training held it out), always
with the gray baseline (ab = 0) and the truth beside every number:

* photo sets (``tools.evaluate``): PSNR, CIEDE2000, colourfulness and its ratio to the truth's; on a set
  whose folder has a ``labels.csv`` (``tiny_imagenet_val``) also the ImageNet judge's top-1 (``tools.judge``)
  for the gray input, the truth and each model's colorization; and on a ``--data`` set filed in class folders
  (Tiny-ImageNet's training archive, ``<wnid>/``) the same, its classes named by ``--judge-classes CSV``, so that
  the judge can also choose on the validation split;
* colour film clips (``eval/video``, ``tools.evaluate_video``): per-frame PSNR, CIEDE2000 (on one pixel in 2x2,
  ``DELTA_E_STRIDE``), colourfulness and the warping error through the product's film pipeline with its default
  smoothing;
* contact sheets (``tools.contact_sheet``): per photo set the photos where the models beat gray most and where
  they lose to it most (ranked by the models' mean CIEDE2000 gain over gray), and frames of the genuine
  black-and-white films (``eval/bw``; no truth there, so they are for looking at only);
* a verdict against release 4's targets (``RELEASE4_TARGETS``).

It writes ``scorecard.json`` (every figure, the settings, the time taken), ``scorecard.md`` (the tables,
rebuilt from the JSON by ``scorecard_markdown``) and ``sheets/*.jpg``. The experiments, the model card and
CI's smoke test call ``run_scorecard``; the verb is a thin shell over it.

What chooses and what reports (``docs/protocol.md``): the development sets here are for reporting only;
decisions are taken on the validation split carved from the training data, which ``--data`` scores the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from models.colorizer import Colorizer
from tools import metrics
from tools.contact_sheet import draw_contact_sheet, save_jpeg, thumbnail
from tools.datasets import in_holdout, is_s3_uri, relative_name
from tools.evaluate import (
    EvaluationResult,
    _json_safe,
    evaluate_colorizers,
    gray_input,
    iter_truth_photos,
)
from tools.evaluate_video import (
    DEFAULT_MAX_FRAMES,
    DELTA_E_STRIDE,
    GRAY_ROW,
    TRUTH_ROW,
    WHOLE_CLIPS_SCOPE,
    find_clips,
    frames_arg,
    frames_scope,
    row_name,
    score_clips,
)
from tools.judge import ImageNetJudge, JudgeTally, gray_rgb, read_class_table, read_labels_csv
from tools.runtime import INPUT_ERRORS, add_runtime_arguments, apply_runtime_arguments, onnx_cache_dir, write_json
from worker.photos import open_colorizer
from worker.smoothing import SmoothingOptions

log = logging.getLogger(__name__)

DEFAULT_EVAL_ROOT = Path("../shared/data/eval")
DEV_SETS = ("tiny_imagenet_val", "faces_utk_val", "scenes_intel_val", "bsds500_val")
VIDEO_DIR, BW_DIR, JUDGE_DIR = "video", "bw", "judge"
GRAY, TRUTH = "gray", "truth"  # row keys beside the models' labels
SHEET_BYTES = 400_000  # each committed contact sheet stays under this
# Hasler & Suesstrunk's scale calls a colourfulness of 15 "slightly colourful" and 33 "moderately colourful"; a
# photo whose truth scores under MUTED_BELOW is little more than slightly colourful (plain walls, overcast streets,
# faded prints). There a confident colour costs the most PSNR, as it does on the colour clips' plain scenes, so
# the muted photos of the validation split stand in for the films' PSNR target, which no training source can
# measure (docs/protocol.md).
MUTED_BELOW = 20.0


@dataclass(frozen=True)
class Targets:
    """Release 4's floor on the development sets (issue 12)."""

    psnr_over_gray_db: float = 0.5  # each photo set: PSNR at least this far above gray's
    colourfulness_ratio: tuple[float, float] = (0.7, 1.15)  # vivid where the truth is, never garish
    judge_over_gray_points: float = 3.0  # judge top-1, percentage points above gray's
    film_psnr_below_gray_db: float = 2.5  # films' mean PSNR at most this far below gray's
    film_warping_ratio: float = 1.1  # films' mean warping error at most this times the truth's


RELEASE4_TARGETS = Targets()


@dataclass(frozen=True)
class ModelSpec:
    """A model to score and its short column label: ``release1=/path/release1.pt``, ``default`` or a path.
    ``shown`` is what the card calls it where ``model`` is a scratch file (``tools promote --choose`` scores each
    decoding from one); empty, the card names ``model``."""

    label: str
    model: str
    shown: str = ""

    def record(self) -> dict[str, str]:
        return {"label": self.label, "model": self.shown or self.model}

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        label, sep, model = text.partition("=")
        if not sep:
            model, label = text, (text if text == "default" else Path(text).stem)
        if not label or not model:
            raise ValueError(f"{text!r}: expected MODEL or LABEL=MODEL")
        if label in (GRAY, TRUTH):
            raise ValueError(f"{text!r}: the labels {GRAY!r} and {TRUTH!r} name the baseline rows")
        return cls(label, model)


@dataclass(frozen=True)
class PhotoSet:
    """A scored set of colour photos: a folder (searched recursively) or a .zip, as ``tools.evaluate`` reads.

    ``val_split`` > 0 keeps only the photos that ``tools.datasets``' hash split puts in the validation split of
    that fraction: the photos ``tools train --val-split`` held out of the same source."""

    name: str
    path: str
    val_split: float = 0.0

    @classmethod
    def parse(cls, text: str, val_split: float = 0.0) -> PhotoSet:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{text!r}: expected NAME=PATH (a folder or a .zip of colour photos)")
        if not 0 <= val_split < 1:
            raise ValueError(f"a validation split is a fraction in [0, 1), not {val_split}")
        return cls(name, path, val_split)

    def keep(self) -> Callable[[str], bool] | None:
        """Which photos (by the name ``tools.evaluate`` reads them under) the set scores; None: all."""
        if self.val_split <= 0:
            return None
        return lambda name: in_holdout(relative_name(self.path, name), self.val_split)


@dataclass(frozen=True)
class ScorecardOptions:
    limit: int | None = None  # photos per set, in name order (None: all)
    frames: int = DEFAULT_MAX_FRAMES  # frames per film clip
    smoothing: float = SmoothingOptions().strength  # the film path's shipped default
    bw_frames: int = 4  # frames per black-and-white film on its sheet
    sheet_count: int = 6  # photos on each of a set's best and worst sheets
    cell_height: int = 128
    render_size: int | None = None  # None: each model's own
    engine_kind: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 8
    judge_classes: str | None = None  # CSV of wnid -> judge_index for --data sets filed in class folders


@dataclass
class Scorecard:
    """What ``run_scorecard`` measured, as the plain data it writes to ``scorecard.json``."""

    data: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        return scorecard_markdown(self.data)


# --- photo sets ------------------------------------------------------------------------------------------------


def _row_means(evaluation: EvaluationResult, labels: Sequence[str]) -> dict[str, dict[str, float]]:
    c_truth = metrics.finite_mean(evaluation.truth_colourfulness)
    rows: dict[str, dict[str, float]] = {}
    for key, row in [(GRAY, evaluation.gray), *zip(labels, evaluation.models, strict=True)]:
        m = row.means()
        rows[key] = {"psnr": m["psnr"], "ssim": m["ssim"], "delta_e": m["delta_e"],
                     "colourfulness": m["colourfulness"], "colourfulness_ratio": m["colourfulness"] / c_truth,
                     "seconds": row.seconds}
    rows[TRUTH] = {"colourfulness": c_truth, "colourfulness_ratio": 1.0}
    return rows


def _rank_by_gain(evaluation: EvaluationResult) -> list[int]:
    """Photo indices from where the models (on average) beat gray most in CIEDE2000 to where they lose most."""
    gains = []
    for i, gray in enumerate(evaluation.gray.per_image):
        gains.append(float(np.mean([gray.delta_e - row.per_image[i].delta_e for row in evaluation.models])))
    return sorted(range(len(gains)), key=lambda i: (-gains[i], i))


def _per_image(evaluation: EvaluationResult, labels: Sequence[str]) -> list[dict[str, Any]]:
    """Compact per-photo figures (rounded: they are for paired comparisons, not for reprinting)."""
    out = []
    for i, name in enumerate(evaluation.images):
        entry: dict[str, Any] = {"name": name, "truth_colourfulness": round(evaluation.truth_colourfulness[i], 3)}
        for key, row in [(GRAY, evaluation.gray), *zip(labels, evaluation.models, strict=True)]:
            s = row.per_image[i]
            entry[key] = {"psnr": round(s.psnr, 3), "delta_e": round(s.delta_e, 3),
                          "colourfulness": round(s.colourfulness, 3)}
        out.append(entry)
    return out


def _photo_labels(photo_set: PhotoSet, judge_classes: str | None) -> Callable[[str], int | None] | None:
    """How the judge learns a photo's class (a name from ``iter_truth_photos`` -> a judge label index, or None for
    a photo it cannot judge), or None when the set has no labels: a folder's ``labels.csv`` names each file; else,
    with ``judge_classes``, a photo filed under a ``<wnid>/`` folder takes that class."""
    root = Path(photo_set.path)
    labels = read_labels_csv(root) if root.is_dir() else {}
    if labels:
        return lambda name: labels.get(Path(name).relative_to(root).as_posix())
    if judge_classes:
        classes = read_class_table(judge_classes)

        def by_folder(name: str) -> int | None:
            folder, slash, _ = relative_name(photo_set.path, name).partition("/")
            return classes.get(folder) if slash else None

        return by_folder
    return None


class _SetJudge:
    """The ImageNet judge over one photo set's scored pictures, fed by ``evaluate_colorizers(on_photo=...)``: the
    judge sees exactly the photos (and the very colorizations) the other figures come from, colorized once."""

    def __init__(self, label_of: Callable[[str], int | None], labels: Sequence[str], judge_dir: Path | None,
                 set_name: str) -> None:
        self.label_of = label_of
        self.labelled = 0
        self.skipped = "no judge model given" if judge_dir is None else ""
        self.tally: JudgeTally | None = None
        if judge_dir is not None:
            try:
                self.tally = JudgeTally(ImageNetJudge(judge_dir), [GRAY, *labels, TRUTH])
            except (FileNotFoundError, RuntimeError) as exc:
                log.warning("ImageNet judge skipped on %s: %s", set_name, exc)
                self.skipped = str(exc)

    def see(self, name: str, pictures: list[np.ndarray]) -> None:
        label = self.label_of(name)
        if label is None:
            return
        self.labelled += 1
        if self.tally is not None:
            self.tally.add(pictures, frozenset({label}))

    def result(self) -> dict[str, Any]:
        if not self.labelled:
            return {}  # no photo in a known class (judged by class folder): faces, scenes
        if self.tally is None:
            return {"judge_skipped": self.skipped, "judge_images": self.labelled}
        scores = self.tally.scores()
        ordered = {GRAY: scores.pop(GRAY), TRUTH: scores.pop(TRUTH), **scores}
        return {"judge": ordered, "judge_images": self.labelled, "judge_seconds": self.tally.seconds}


def _sheet_rows(photo_set: PhotoSet, names: Sequence[str], colorizers: Sequence[Colorizer],
                cell_height: int) -> dict[str, list[Image.Image]]:
    """gray | each model | truth thumbnails for the named photos, colorized again (only these few, and only these
    are decoded: the photos the scoring skipped are not read, nor warned about, twice)."""
    wanted, rows = set(names), {}
    for photo in iter_truth_photos(photo_set.path, keep=wanted.__contains__):
        L = gray_input(photo.rgb)
        ours = [colorizer.colorize([L])[0] for colorizer in colorizers]
        rows[photo.name] = [thumbnail(x, cell_height) for x in (gray_rgb(L), *ours, photo.rgb)]
        if len(rows) == len(wanted):
            break
    return rows


def score_photo_set(photo_set: PhotoSet, models: Sequence[ModelSpec], colorizers: Sequence[Colorizer],
                    out: Path, judge_dir: Path | None, options: ScorecardOptions) -> dict[str, Any]:
    """One photo set: means per row, the judge where the set is labelled, and its best and worst sheets."""
    labels = [m.label for m in models]
    label_of = _photo_labels(photo_set, options.judge_classes)
    judge = _SetJudge(label_of, labels, judge_dir, photo_set.name) if label_of is not None else None
    evaluation = evaluate_colorizers([m.model for m in models], colorizers, photo_set.path, options.limit,
                                     options.batch_size, photo_set.keep(), judge.see if judge is not None else None)
    result: dict[str, Any] = {
        "name": photo_set.name, "data": photo_set.path, "val_split": photo_set.val_split,
        "images": evaluation.image_count,
        "skipped": len(evaluation.skipped), "render_size": evaluation.render_size,
        "rows": _row_means(evaluation, labels),
    }
    result |= judge.result() if judge is not None else {}
    ranked = _rank_by_gain(evaluation)
    count = min(options.sheet_count, len(ranked) // 2) or 1
    best = [evaluation.images[i] for i in ranked[:count]]
    worst = [evaluation.images[i] for i in reversed(ranked[-count:])]  # the very worst first
    thumbs = _sheet_rows(photo_set, best + worst, colorizers, options.cell_height)
    columns = ["gray input", *labels, "ground truth"]
    result["sheets"] = {}
    for kind, names in (("best", best), ("worst", worst)):
        sheet = draw_contact_sheet([thumbs[n] for n in names], columns, cell_height=options.cell_height)
        path, quality = save_jpeg(sheet, out / "sheets" / f"{photo_set.name}_{kind}.jpg", SHEET_BYTES)
        result["sheets"][kind] = {"path": path.relative_to(out).as_posix(), "photos": names, "jpeg_quality": quality}
    result["seconds"] = evaluation.seconds
    result["per_image"] = _per_image(evaluation, labels)
    return result


# --- films -----------------------------------------------------------------------------------------------------


def _film_rows(rows: dict[str, dict[str, float]], labels: Sequence[str], strength: float) -> dict[str, dict]:
    keys = {GRAY: GRAY_ROW, **{label: row_name(label, strength) for label in labels}, TRUTH: TRUTH_ROW}
    out = {}
    for key, name in keys.items():
        r = rows[name]
        out[key] = {"psnr": r["psnr"], "delta_e": r["delta_e"], "colourfulness": r["colourfulness"],
                    "warping_error": r["warping_error"], "frames": r["frames"],
                    "identical_frames": r["identical_frames"]}
    return out


def score_films(clips: Path, models: Sequence[ModelSpec], colorizers: Sequence[Colorizer],
                options: ScorecardOptions) -> dict[str, Any]:
    """PSNR, CIEDE2000, colourfulness and warping error per clip and their mean over clips, gray and truth beside."""
    started = time.perf_counter()
    labels = [m.label for m in models]
    results = score_clips(list(zip(colorizers, labels, strict=True)), clips, [options.smoothing], options.frames)
    per_clip = [{"clip": r.clip, "size": r.size, "frames": r.frames, "cuts": r.cuts, "seconds": r.seconds,
                 "rows": _film_rows(r.rows, labels, options.smoothing)} for r in results]
    return {"data": str(clips), "frames_per_clip": options.frames, "smoothing": options.smoothing,
            "delta_e_stride": DELTA_E_STRIDE, "clips": per_clip, "mean": films_mean(per_clip, labels),
            "seconds": time.perf_counter() - started}


def films_mean(per_clip: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each row's figures averaged over the clips (every clip counts once, whatever its length). A card made before
    the films' CIEDE2000 was scored has none: its mean is NaN, shown as "-"."""
    return {key: {metric: _finite_mean([clip["rows"][key].get(metric, math.nan) for clip in per_clip])
                  for metric in ("psnr", "delta_e", "colourfulness", "warping_error")}
            for key in [GRAY, *labels, TRUTH]}


def _finite_mean(values: Sequence[float | str]) -> float:
    # float(): a card read back from JSON holds non-finite figures as the strings "nan" and "inf".
    finite = [float(v) for v in values if math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else math.nan


def _spread_frames(path: Path, count: int) -> Iterator[tuple[int, np.ndarray]]:
    """``count`` frames spread evenly over the film (index, sRGB float64 (H, W, 3)): the middle of each of
    ``count`` equal stretches, so the sheet shows the film rather than its opening seconds."""
    with av.open(str(path)) as container:
        total = sum(1 for _ in container.decode(container.streams.video[0]))
    wanted = sorted({min(total - 1, int((i + 0.5) * total / count)) for i in range(count)})
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(container.streams.video[0])):
            if index in wanted:
                yield index, frame.to_ndarray(format="rgb24").astype(np.float64) / 255.0
            if index >= wanted[-1]:
                return


def bw_sheet(films: Path, models: Sequence[ModelSpec], colorizers: Sequence[Colorizer], out: Path,
             options: ScorecardOptions) -> dict[str, Any]:
    """Frames of genuine black-and-white films, colorized by each model as photos (no smoothing: it changes
    flicker, not how one frame looks). There is no truth, so no figure: the sheet is for looking at."""
    rows, listed = [], []
    for film in find_clips(films):
        indices = []
        for index, rgb in _spread_frames(film, options.bw_frames):
            L = gray_input(rgb)
            ours = [colorizer.colorize([L])[0] for colorizer in colorizers]
            rows.append([thumbnail(x, options.cell_height) for x in (gray_rgb(L), *ours)])
            indices.append(index)
        listed.append({"film": film.name, "frames": indices})
    sheet = draw_contact_sheet(rows, ["black-and-white film", *(m.label for m in models)],
                               cell_height=options.cell_height)
    path, quality = save_jpeg(sheet, out / "sheets" / "bw_films.jpg", SHEET_BYTES)
    return {"data": str(films), "sheet": path.relative_to(out).as_posix(), "jpeg_quality": quality, "films": listed}


# --- verdict ---------------------------------------------------------------------------------------------------


def _check(checks: list[dict], what: str, target: str, model: str, value: float, passed: bool) -> None:
    checks.append({"check": what, "target": target, "model": model, "value": value,
                   "passed": bool(passed) if math.isfinite(value) else False})


def verdict(result: dict[str, Any], targets: Targets = RELEASE4_TARGETS) -> dict[str, Any]:
    """Each model against ``targets`` on every scored photo set and on the films; parts not scored are named."""
    labels = [m["label"] for m in result["models"]]
    checks: list[dict] = []
    low, high = targets.colourfulness_ratio
    for s in result["sets"]:
        gray_psnr = float(s["rows"][GRAY]["psnr"])  # float(): "nan"/"inf" strings in a card read back from JSON
        for label in labels:
            row = s["rows"][label]
            gain = float(row["psnr"]) - gray_psnr
            _check(checks, f"{s['name']}: PSNR - gray's", f">= +{targets.psnr_over_gray_db:g} dB", label, gain,
                   gain >= targets.psnr_over_gray_db)
            ratio = float(row["colourfulness_ratio"])
            _check(checks, f"{s['name']}: colourfulness / truth's", f"{low:g} - {high:g}", label, ratio,
                   low <= ratio <= high)
            if "judge" in s:
                gain = 100 * (s["judge"][label]["top1"] - s["judge"][GRAY]["top1"])
                _check(checks, f"{s['name']}: judge top-1 - gray's", f">= +{targets.judge_over_gray_points:g} points",
                       label, gain, gain >= targets.judge_over_gray_points)
    films = result.get("films")
    if films:
        mean = films["mean"]
        for label in labels:
            gap = float(mean[label]["psnr"]) - float(mean[GRAY]["psnr"])
            _check(checks, "films: mean PSNR - gray's", f">= -{targets.film_psnr_below_gray_db:g} dB", label, gap,
                   gap >= -targets.film_psnr_below_gray_db)
            ratio = float(mean[label]["warping_error"]) / float(mean[TRUTH]["warping_error"])
            _check(checks, "films: warping error / truth's", f"<= {targets.film_warping_ratio:g}", label, ratio,
                   ratio <= targets.film_warping_ratio)
    not_scored = [name for name in DEV_SETS if name not in {s["name"] for s in result["sets"]}]
    if not films:
        not_scored.append("films")
    if not any("judge" in s for s in result["sets"]):
        not_scored.append("ImageNet judge")
    summary = {label: sum(1 for c in checks if c["model"] == label and not c["passed"]) for label in labels}
    return {"targets": dataclasses.asdict(targets), "checks": checks, "misses": summary, "not_scored": not_scored,
            "films_scope": _films_scope(films) if films and "frames_per_clip" in films else None}


# --- the whole card --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _colorizers(models: Sequence[ModelSpec], options: ScorecardOptions) -> Iterator[list[Colorizer]]:
    with contextlib.ExitStack() as stack:
        colorizers = []
        for m in models:
            colorizer, _ = stack.enter_context(open_colorizer(
                m.model, options.engine_kind, options.device, options.precision, options.render_size,
                options.batch_size, cache_dir=onnx_cache_dir()))
            colorizers.append(colorizer)
        yield colorizers


def run_scorecard(models: Sequence[ModelSpec], out: str | Path, eval_root: str | Path | None = DEFAULT_EVAL_ROOT,
                  sets: Sequence[str] | None = None, extra_sets: Sequence[PhotoSet] = (), video: bool = True,
                  bw: bool = True, options: ScorecardOptions | None = None, judge_dir: str | Path | None = None,
                  targets: Targets = RELEASE4_TARGETS) -> Scorecard:
    """Score ``models`` on ``sets`` of ``eval_root`` (default: every dev set), ``extra_sets``, the film clips of
    ``eval_root/video`` and the black-and-white films of ``eval_root/bw``; write ``out/scorecard.json``,
    ``out/scorecard.md`` and ``out/sheets/``. The judge is ``judge_dir`` (default ``eval_root/judge``); where it
    cannot run, the card says why. A dev set or film folder missing under ``eval_root`` is an error (a card that
    silently leaves a set out would read as complete)."""
    if not models:
        raise ValueError("the scorecard needs at least one model")
    duplicate = sorted({m.label for m in models if [n.label for n in models].count(m.label) > 1})
    if duplicate:
        raise ValueError(f"two models labelled {', '.join(duplicate)}: give each a LABEL=MODEL")
    options = options or ScorecardOptions()
    out = Path(out)
    root = Path(eval_root) if eval_root is not None else None
    chosen = list(DEV_SETS if sets is None else sets)
    unknown = [name for name in chosen if name not in DEV_SETS]
    if unknown:
        raise ValueError(f"unknown dev sets {', '.join(unknown)} (known: {', '.join(DEV_SETS)})")
    if root is None and (chosen or video or bw):
        raise ValueError("dev sets, films and black-and-white films need eval_root")
    photo_sets = [PhotoSet(name, str(root / name)) for name in chosen] + list(extra_sets)  # type: ignore[operator]
    for needed in [Path(s.path) for s in photo_sets] + [root / d for d, on in ((VIDEO_DIR, video), (BW_DIR, bw))
                                                        if on and root is not None]:
        if not needed.exists():
            raise FileNotFoundError(f"{needed}: not found")
    judge = Path(judge_dir) if judge_dir is not None else (root / JUDGE_DIR if root is not None else None)

    started = time.perf_counter()
    result: dict[str, Any] = {
        "models": [m.record() for m in models], "eval_root": str(root) if root else None,
        "options": dataclasses.asdict(options), "sets": [],
    }
    with _colorizers(models, options) as colorizers:
        result["models"] = [{**m.record(), "checkpoint": c.engine.checkpoint.label,
                             "engine": f"{c.engine.name} {c.engine.device} {c.engine.precision}",
                             "render_size": c.render_size} for m, c in zip(models, colorizers, strict=True)]
        # The card is written after every part, marked unfinished until the end: a long run that is stopped (a
        # busy machine, a session's end) keeps what it scored, and the parts can be merged (merge_scorecards).
        for photo_set in photo_sets:
            log.info("scoring photo set %s (%s)", photo_set.name, photo_set.path)
            result["sets"].append(score_photo_set(photo_set, models, colorizers, out, judge, options))
            _write(out, result, targets, started, finished=False)
        if video and root is not None:
            log.info("scoring film clips in %s", root / VIDEO_DIR)
            result["films"] = score_films(root / VIDEO_DIR, models, colorizers, options)
            _write(out, result, targets, started, finished=False)
        if bw and root is not None:
            result["bw"] = bw_sheet(root / BW_DIR, models, colorizers, out, options)
    return _write(out, result, targets, started, finished=True)


def _write(out: Path, result: dict[str, Any], targets: Targets, started: float, finished: bool) -> Scorecard:
    result["verdict"] = verdict(result, targets)
    result["seconds"] = time.perf_counter() - started
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) if finished else None
    data = _json_safe(result)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "scorecard.json", data, indent=1, allow_nan=False)
    card = Scorecard(data)
    (out / "scorecard.md").write_text(card.markdown() + "\n")
    return card


def read_card(folder: str | Path) -> dict[str, Any]:
    """A card's JSON from its folder: ``scorecard.json``, or ``scorecard.json.gz`` (how the repository keeps the
    cards in docs/, whose per-photo figures compress tenfold). FileNotFoundError naming the folder if neither."""
    folder = Path(folder)
    if (folder / "scorecard.json").is_file():
        return json.loads((folder / "scorecard.json").read_text())
    if (folder / "scorecard.json.gz").is_file():
        with gzip.open(folder / "scorecard.json.gz", "rt") as f:
            return json.load(f)
    raise FileNotFoundError(f"{folder}: no scorecard.json (or scorecard.json.gz) to read")


def merge_scorecards(parts: Sequence[str | Path], out: str | Path, targets: Targets = RELEASE4_TARGETS) -> Scorecard:
    """One card from several cards of the same models that scored different parts (photo sets here, films there:
    parts run side by side, or in different sessions). Sheets are copied into ``out``; the verdict is redone
    over everything. A set, the films or the black-and-white sheet scored by two parts is an error."""
    if not parts:
        raise ValueError("nothing to merge")
    out = Path(out)
    cards = [(Path(p), read_card(p)) for p in parts]
    first = cards[0][1]

    def models_of(card: dict[str, Any]) -> list[tuple[str, str]]:
        return [(m["label"], m["model"]) for m in card["models"]]

    for path, card in cards[1:]:
        if models_of(card) != models_of(first):
            raise ValueError(f"{path} scores {models_of(card)}, not {models_of(first)}: only cards of the same models "
                             "merge")
    merged: dict[str, Any] = {"models": first["models"], "eval_root": first["eval_root"], "options": first["options"],
                              "sets": [], "parts": []}
    sheets: list[tuple[Path, str]] = []
    for path, card in cards:
        for s in card["sets"]:
            if s["name"] in {t["name"] for t in merged["sets"]}:
                raise ValueError(f"{s['name']} is scored by two of the parts")
            merged["sets"].append(s)
            sheets += [(path, sheet["path"]) for sheet in s.get("sheets", {}).values()]
        if card.get("films"):
            merged["films"] = _merge_films(merged.get("films"), card["films"], [m["label"] for m in first["models"]])
        if card.get("bw"):
            if "bw" in merged:
                raise ValueError("the black-and-white films are scored by two of the parts")
            merged["bw"] = card["bw"]
        if card.get("bw"):
            sheets.append((path, card["bw"]["sheet"]))
        scored = [s["name"] for s in card["sets"]] + [part for part in ("films", "bw") if card.get(part)]
        merged["parts"].append({"card": str(path), "options": card["options"], "seconds": card["seconds"],
                                "finished_at": card["finished_at"], "scored": scored})
    for path, relative in sheets:
        if path.resolve() != out.resolve():
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path / relative, out / relative)
    merged["verdict"] = verdict(merged, targets)
    merged["seconds"] = sum(card["seconds"] for _, card in cards)
    finished = [card["finished_at"] for _, card in cards]
    merged["finished_at"] = None if None in finished else max(finished)
    out.mkdir(parents=True, exist_ok=True)
    merged = _json_safe(merged)
    write_json(out / "scorecard.json", merged, indent=1, allow_nan=False)
    card = Scorecard(merged)
    (out / "scorecard.md").write_text(card.markdown() + "\n")
    return card


def _merge_films(films: dict[str, Any] | None, more: dict[str, Any], labels: Sequence[str]) -> dict[str, Any]:
    """Clips scored by different parts (a long film list split over processes) as one films table; the parts must
    have scored alike (frames per clip, smoothing), and each clip once."""
    if films is None:
        return more
    for key in ("frames_per_clip", "smoothing", "delta_e_stride"):
        if films.get(key) != more.get(key):
            raise ValueError(f"film parts differ in {key} ({films.get(key)} and {more.get(key)}): they do not average")
    clips = films["clips"] + more["clips"]
    twice = sorted({c["clip"] for c in clips if [d["clip"] for d in clips].count(c["clip"]) > 1})
    if twice:
        raise ValueError(f"film clips scored by two of the parts: {', '.join(twice)}")
    clips.sort(key=lambda c: c["clip"])
    return {**films, "data": f"{films['data']}, {more['data']}", "clips": clips, "mean": films_mean(clips, labels),
            "seconds": films["seconds"] + more["seconds"]}


# --- markdown --------------------------------------------------------------------------------------------------


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None or isinstance(value, str) or not math.isfinite(value) else format(value, fmt)


def _signed(value: Any, fmt: str) -> str:
    return "-" if value is None or isinstance(value, str) or not math.isfinite(value) else format(value, "+" + fmt)


def _set_table(s: dict[str, Any], labels: Sequence[str]) -> list[str]:
    judge = s.get("judge", {})
    head = f"### {s['name']} ({s['images']} photos"
    head += f", validation split {s['val_split']:g} of {s['data']}" if s.get("val_split") else ""
    head += f", judge on {s['judge_images']}" if judge else ""
    head += f", render size {s['render_size']})"
    lines = [head, "", "| row | PSNR dB | vs gray | CIEDE2000 | colourfulness | / truth's |"
             + (" judge top-1 | vs gray |" if judge else ""),
             "|---|---|---|---|---|---|" + ("---|---|" if judge else "")]
    gray = s["rows"][GRAY]
    for key, name in [(GRAY, "gray (ab = 0)"), *((label, label) for label in labels), (TRUTH, "truth")]:
        row = s["rows"][key]
        cells = [name, _num(row.get("psnr"), ".2f"),
                 _signed(row["psnr"] - gray["psnr"], ".2f") if key not in (GRAY, TRUTH) else "-",
                 _num(row.get("delta_e"), ".2f") if key != TRUTH else "0",
                 _num(row["colourfulness"], ".1f"), _num(row["colourfulness_ratio"], ".2f")]
        if judge:
            top1 = judge[key]["top1"]
            cells += [f"{100 * top1:.1f}%",
                      _signed(100 * (top1 - judge[GRAY]["top1"]), ".1f") if key not in (GRAY, TRUTH) else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if "judge_skipped" in s:
        lines += ["", f"ImageNet judge not run: {s['judge_skipped']}"]
    sheets = s.get("sheets", {})
    if sheets:
        lines += ["", f"Contact sheets: [best]({sheets['best']['path']}), [worst]({sheets['worst']['path']})"]
    return lines


def _lattice(films: dict[str, Any]) -> str:
    stride = films.get("delta_e_stride")  # absent from cards made before the films' CIEDE2000 was scored
    return "; no CIEDE2000" if stride is None else f"; CIEDE2000 on one pixel in {stride}x{stride}"


def _films_scope(films: dict[str, Any]) -> str:
    return frames_scope(films["frames_per_clip"], [clip["frames"] for clip in films.get("clips", [])])


def _films_table(films: dict[str, Any], labels: Sequence[str]) -> list[str]:
    lines = [f"### Film clips ({len(films['clips'])} clips, {_films_scope(films)}, "
             f"smoothing {films['smoothing']:g}{_lattice(films)})", "",
             "| clip | PSNR: gray | " + " | ".join(labels) + " | CIEDE2000: gray | " + " | ".join(labels)
             + " | colourfulness: truth | " + " | ".join(labels)
             + " | warping x1000: truth | gray | " + " | ".join(labels) + " |",
             "|---|" + "---|" * (5 + 4 * len(labels))]

    def row(name: str, rows: dict[str, dict]) -> str:
        cells = [name, _num(rows[GRAY]["psnr"], ".2f"), *(_num(rows[la]["psnr"], ".2f") for la in labels),
                 _num(rows[GRAY].get("delta_e"), ".2f"), *(_num(rows[la].get("delta_e"), ".2f") for la in labels),
                 _num(rows[TRUTH]["colourfulness"], ".1f"), *(_num(rows[la]["colourfulness"], ".1f") for la in labels),
                 _num(rows[TRUTH]["warping_error"], ".3f"), _num(rows[GRAY]["warping_error"], ".3f"),
                 *(_num(rows[la]["warping_error"], ".3f") for la in labels)]
        return "| " + " | ".join(cells) + " |"

    for clip in films["clips"]:
        lines.append(row(f"{clip['clip']} ({clip['size']}, {clip['frames']} fr)", clip["rows"]))
    lines.append(row(f"**mean of {len(films['clips'])} clips**", films["mean"]))
    return lines


def muted_figures(sets: Sequence[dict[str, Any]], labels: Sequence[str],
                  below: float = MUTED_BELOW) -> dict[str, Any] | None:
    """Each model's PSNR gain over gray and colourfulness ratio on the photos whose truth's colourfulness is under
    ``below``, per set and pooled over ``sets`` (from their per-photo figures), or None when no photo is that
    muted. The ratio is of the means, as on every set's rows."""

    def figures(photos: list[dict[str, Any]]) -> dict[str, Any]:
        truth = float(np.mean([p["truth_colourfulness"] for p in photos]))
        gray = float(np.mean([p[GRAY]["psnr"] for p in photos]))
        out: dict[str, Any] = {"photos": len(photos), "gray_psnr": gray, "truth_colourfulness": truth}
        for label in labels:
            out[label] = {"psnr_gain": float(np.mean([p[label]["psnr"] for p in photos])) - gray,
                          "colourfulness_ratio": float(np.mean([p[label]["colourfulness"] for p in photos])) / truth}
        return out

    per_set, pooled = {}, []
    for s in sets:
        muted = [p for p in s.get("per_image", []) if p["truth_colourfulness"] < below]
        if muted:
            per_set[s["name"]] = figures(muted)
            pooled += muted
    if not pooled:
        return None
    return {"below": below, "sets": per_set, "pooled": figures(pooled),
            "of_photos": sum(len(s.get("per_image", [])) for s in sets)}


def _muted_table(data: dict[str, Any], labels: Sequence[str]) -> list[str]:
    muted = muted_figures(data["sets"], labels)
    if muted is None:
        return []
    pooled = muted["pooled"]
    lines = [f"**Muted photos**: those whose truth's colourfulness is under {muted['below']:g} ({pooled['photos']} "
             f"of {muted['of_photos']}), where a confident colour costs most; on the validation split they stand in "
             "for the films' plain scenes (docs/protocol.md).", "",
             "| muted photos of | photos | gray PSNR | truth colourfulness | "
             + " | ".join(f"{la}: PSNR vs gray / colour ratio" for la in labels) + " |",
             "|---|---|---|---|" + "---|" * len(labels)]
    for name, f in [*muted["sets"].items(), ("**all sets**", pooled)]:
        cells = [name, str(f["photos"]), _num(f["gray_psnr"], ".2f"), _num(f["truth_colourfulness"], ".1f")]
        cells += [f"{_signed(f[la]['psnr_gain'], '.2f')} / {_num(f[la]['colourfulness_ratio'], '.2f')}"
                  for la in labels]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _summary_table(data: dict[str, Any], labels: Sequence[str]) -> list[str]:
    """One line per set: each model's PSNR gain over gray and colourfulness ratio, the judge's gain."""
    lines = ["| set | gray PSNR | " + " | ".join(f"{la}: PSNR vs gray / colour ratio" for la in labels)
             + " | judge: gray / truth | " + " | ".join(f"{la}: judge" for la in labels) + " |",
             "|---|---|" + "---|" * (2 * len(labels) + 1)]
    for s in data["sets"]:
        gray = s["rows"][GRAY]
        cells = [s["name"], _num(gray["psnr"], ".2f")]
        cells += [f"{_signed(s['rows'][la]['psnr'] - gray['psnr'], '.2f')} / {s['rows'][la]['colourfulness_ratio']:.2f}"
                  for la in labels]
        judge = s.get("judge")
        cells.append(f"{100 * judge[GRAY]['top1']:.1f}% / {100 * judge[TRUTH]['top1']:.1f}%" if judge else "-")
        cells += [f"{100 * judge[la]['top1']:.1f}%" if judge else "-" for la in labels]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _verdict_lines(v: dict[str, Any], labels: Sequence[str]) -> list[str]:
    not_scored = [f"- not scored, so not checked: {', '.join(v['not_scored'])}"] if v["not_scored"] else []
    if not v["checks"]:  # e.g. the black-and-white films' sheet alone: no figure to hold against a target
        return ["Nothing scored here has a target: no model is judged by this card."] + not_scored
    lines = ["| check | target | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    by_check: dict[tuple[str, str], dict[str, dict]] = {}
    for c in v["checks"]:
        by_check.setdefault((c["check"], c["target"]), {})[c["model"]] = c
    for (check, target), per_model in by_check.items():
        cells = []
        for label in labels:
            c = per_model[label]
            value = _num(c["value"], ".2f")
            cells.append(f"{value} {'pass' if c['passed'] else '**miss**'}")
        lines.append(f"| {check} | {target} | " + " | ".join(cells) + " |")
    lines.append("")
    scope = v.get("films_scope")  # absent from cards made before the whole clips could be scored
    if scope not in (None, WHOLE_CLIPS_SCOPE):
        lines.append(f"- films: {scope}; release 4's film target is on the whole clips (`--frames all`)")
    for label in labels:
        misses = v["misses"][label]
        lines.append(f"- **{label}**: " + ("meets every target checked" if not misses else
                                           f"misses {misses} of {sum(1 for c in v['checks'] if c['model'] == label)}"
                                           " targets checked"))
    return lines + not_scored


def _parts_lines(data: dict[str, Any]) -> list[str]:
    """Where a merged card's parts came from: each ran on its own, and its time is its own."""
    if not data.get("parts"):
        return []
    def scope(part: dict[str, Any]) -> str:
        options, scored = part["options"], part["scored"]
        photos = [name for name in scored if name not in ("films", "bw")]
        text = [f"first {options['limit']} photos a set" if options.get("limit") else "every photo"] if photos else []
        text += [frames_scope(options["frames"])] if "films" in scored else []
        return ", ".join(text + [f"{part['seconds'] / 60:.1f} min"])

    return ["Merged from parts scored side by side: " + "; ".join(
        f"{', '.join(p['scored'])} ({scope(p)})" for p in data["parts"]) + "."]


def scorecard_markdown(data: dict[str, Any]) -> str:
    """The card's tables from its JSON (``scorecard.json``), so they can be rebuilt without rescoring."""
    labels = [m["label"] for m in data["models"]]
    options = data["options"]
    minutes = data.get("seconds", 0) / 60
    took = "the parts' times summed" if data.get("parts") else "after"
    status = (f"Finished {data['finished_at']}, {took} {minutes:.1f} min." if data.get("finished_at")
              else f"**Unfinished**: {minutes:.1f} min in, these parts so far.")
    lines = ["# Scorecard", "",
             "Models: " + "; ".join(f"**{m['label']}** = `{m['model']}` ({m.get('checkpoint', '')}, "
                                    f"{m.get('engine', '')}, render {m.get('render_size', '-')})"
                                    for m in data["models"]) + ".",
             (status if data.get("parts") else f"Photos per set: {options['limit'] or 'all'}. {status}"),
             *_parts_lines(data), "",
             "Gray = the input shown as it is (ab = 0); truth = the colour photo. PSNR and CIEDE2000 against the "
             "truth; colourfulness (Hasler & Suesstrunk) with its ratio to the truth's; judge = the independent "
             "ImageNet classifier's top-1 on the picture.", "", "## Summary", ""]
    lines += _summary_table(data, labels)
    muted = _muted_table(data, labels)
    lines += ["", *muted] if muted else []
    lines += ["", "## Photo sets", ""]
    for s in data["sets"]:
        lines += _set_table(s, labels) + [""]
    if data.get("films"):
        lines += ["## Films", ""] + _films_table(data["films"], labels) + [""]
    if data.get("bw"):
        bw = data["bw"]
        films = "; ".join(f"{f['film']} frames {', '.join(str(i) for i in f['frames'])}" for f in bw["films"])
        lines += ["## Genuine black-and-white films", "",
                  f"No truth exists, so no figures: [contact sheet]({bw['sheet']}) ({films}; each frame colorized "
                  "as a photo).", ""]
    lines += ["## Verdict against release 4's targets", ""] + _verdict_lines(data["verdict"], labels)
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools scorecard", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="'default', a checkpoint/.onnx path or a model-store name, optionally LABEL=MODEL")
    p.add_argument("--eval-root", default=str(DEFAULT_EVAL_ROOT),
                   help="the development data: dev sets, video/, bw/, judge/ (default: %(default)s)")
    p.add_argument("--sets", default="all", help=f"comma-separated dev sets ({', '.join(DEV_SETS)}), 'all' or "
                   "'none' (default: all)")
    p.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                   help="an extra photo set (a folder or .zip); repeatable")
    p.add_argument("--val-split", type=float, default=0.0, metavar="F",
                   help="score only the validation split of each --data set: the fraction F that tools.datasets' "
                   "hash split holds out (as tools train --val-split F does); 0: every photo")
    p.add_argument("--limit", type=int, help="score only the first N photos of each set (name order)")
    p.add_argument("--no-video", action="store_true", help="skip the colour film clips")
    p.add_argument("--no-bw", action="store_true", help="skip the black-and-white films' contact sheet")
    p.add_argument("--frames", type=frames_arg, default=DEFAULT_MAX_FRAMES,
                   help="frames scored per film clip, or 'all': the whole clips, which release 4's film target "
                   "is on (default: %(default)s; on the development clips a third of the whole clips' time)")
    p.add_argument("--bw-frames", type=int, default=ScorecardOptions.bw_frames,
                   help="frames per black-and-white film on its sheet (default: %(default)s)")
    p.add_argument("--smoothing", type=float, default=ScorecardOptions.smoothing,
                   help="film smoothing strength (default: the product's, %(default)s)")
    p.add_argument("--sheet-count", type=int, default=ScorecardOptions.sheet_count,
                   help="photos on each best/worst sheet (default: %(default)s)")
    p.add_argument("--cell-height", type=int, default=ScorecardOptions.cell_height, help="contact-sheet cell height")
    p.add_argument("--out", type=Path, default=Path("runs/scorecard"),
                   help="folder for scorecard.json, scorecard.md and sheets/ (default: %(default)s)")
    p.add_argument("--judge-model", help="folder with the judge's .tflite (default: EVAL_ROOT/judge)")
    p.add_argument("--judge-classes", metavar="CSV",
                   help="judge --data photos filed in <wnid>/ folders (Tiny-ImageNet's training archive) by this "
                   "table's wnid and judge_index columns, e.g. EVAL_ROOT/tiny_imagenet_val/labels.csv (only the "
                   "table is read)")
    p.add_argument("--render-size", type=int, help="long side the network sees (default: each model's own)")
    p.add_argument("--engine", default="auto", help="auto | torch | onnxruntime")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")
    p.add_argument("--batch-size", type=int, default=8, help="photos per colorizer call")
    p.add_argument("--tables-only", action="store_true", help="score nothing: rewrite OUT/scorecard.md from its JSON")
    p.add_argument("--merge", nargs="+", type=Path, metavar="DIR",
                   help="score nothing: merge the cards in these folders (same models, different parts) into OUT")
    add_runtime_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_runtime_arguments(args)
    if args.tables_only:
        try:
            table = scorecard_markdown(read_card(args.out))
        except FileNotFoundError as exc:
            raise SystemExit(f"scorecard: {exc}: no results to tabulate") from None
        (args.out / "scorecard.md").write_text(table + "\n")
        print(table)
        return 0
    if args.merge:
        try:
            card = merge_scorecards(args.merge, args.out)
        except (FileNotFoundError, ValueError) as exc:
            raise SystemExit(f"scorecard: {exc}") from None
        print(card.markdown())
        return 0
    if not args.models:
        raise SystemExit("scorecard: name at least one MODEL")
    sets = (DEV_SETS if args.sets == "all" else () if args.sets == "none"
            else tuple(s for s in args.sets.split(",") if s.strip()))
    options = ScorecardOptions(limit=args.limit, frames=args.frames, smoothing=args.smoothing, bw_frames=args.bw_frames,
                               sheet_count=args.sheet_count, cell_height=args.cell_height,
                               render_size=args.render_size, engine_kind=args.engine, device=args.device,
                               precision=args.precision, batch_size=args.batch_size,
                               judge_classes=args.judge_classes)
    try:
        photo_sets = [PhotoSet.parse(d, args.val_split) for d in args.data]
        remote = [f"{s.name}={s.path}" for s in photo_sets if is_s3_uri(s.path)]
        if remote:
            raise ValueError(f"--data {remote[0]}: the scorecard reads local folders and .zip files "
                             "(tools promote --choose-on downloads an S3 source's held-out photos to choose on)")
        card = run_scorecard([ModelSpec.parse(m) for m in args.models], args.out, args.eval_root, sets,
                             photo_sets, video=not args.no_video, bw=not args.no_bw,
                             options=options, judge_dir=args.judge_model)
    except (*INPUT_ERRORS, ValueError) as exc:  # a missing set or model, an unreadable checkpoint
        raise SystemExit(f"scorecard: {exc}") from None
    print(card.markdown())
    print(f"\nwritten: {args.out / 'scorecard.json'}, {args.out / 'scorecard.md'}, {args.out / 'sheets'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
