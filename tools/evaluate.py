"""``python -m tools evaluate``: score colorization models against ground truth, gray baseline beside them.

For each colour photo in a folder (recursively) or a zip, the gray input is the photo's own lightness L
(``models.color``), every model colorizes it through the product's ``Colorizer`` (batched), and the
result is scored against the photo: PSNR, SSIM, mean CIEDE2000, colourfulness and its gap to the
truth's. The gray baseline (ab = 0, i.e. the input shown as it is) is always scored on the same
photos, and ground truth's colourfulness is reported, because PSNR and SSIM alone flatter a model
that predicts almost no colour: the gray image itself scores about 22.8 dB / 0.95 SSIM on BSDS500.

Library use: ``evaluate_models([...], data=...)`` returns an ``EvaluationResult`` with per-image and
mean figures, ``.table()`` (markdown) and ``.to_json()``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from models.checkpoint import load_checkpoint, resolve_checkpoint
from models.color import merge_l_ab, rgb_to_l
from models.colorizer import Colorizer
from models.engines import create_engine
from models.onnx_export import read_onnx_metadata
from models.predictor import DecodeOptions
from tools import metrics
from tools.contact_sheet import render_contact_sheet, thumbnail
from tools.datasets import DataError, iter_image_bytes
from tools.evaluate_video import DEFAULT_MAX_FRAMES, evaluate_videos, frames_arg, to_json, video_table
from tools.runtime import (
    add_runtime_arguments,
    apply_runtime_arguments,
    input_errors_exit,
    onnx_cache_dir,
    output_file,
    write_json,
)
from worker.media.images import upright
from worker.model_store import resolve_model
from worker.photos import open_colorizer
from worker.settings import Settings
from worker.smoothing import SmoothingOptions
from worker.storage import Storage

log = logging.getLogger(__name__)

GRAY_LABEL = "gray baseline (ab = 0)"
TRUTH_LABEL = "ground truth"
METRIC_KEYS = ("psnr", "ssim", "delta_e", "colourfulness", "colourfulness_gap")
MIN_SIDE = 11  # SSIM's Gaussian window has to fit inside the photo


# --- scoring ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageScores:
    """One colorization of one photo, scored against its ground truth."""

    psnr: float  # dB on sRGB floats in [0, 1]; inf for a pixel-perfect answer
    ssim: float
    delta_e: float  # mean CIEDE2000 over pixels
    colourfulness: float  # Hasler & Suesstrunk, of the colorization
    colourfulness_gap: float  # |colourfulness - truth's colourfulness|


def score_ab(
    L: np.ndarray, ab: np.ndarray, truth_rgb: np.ndarray, truth_colourfulness: float | None = None
) -> tuple[np.ndarray, ImageScores]:
    """Merge a predicted ``ab`` (2, H, W) with the input ``L`` (H, W) and score the sRGB result.

    Every row of the table (each model, the gray baseline with ab = 0) goes through this one function,
    so the rows differ only in their ab. Returns the sRGB image (H, W, 3) in [0, 1] and its scores.
    ``truth_colourfulness`` saves recomputing the truth's for every row (computed here when not given).
    """
    L_t = torch.as_tensor(np.asarray(L), dtype=torch.float64).reshape(1, 1, *L.shape[-2:])
    ab_t = torch.as_tensor(np.asarray(ab), dtype=torch.float64).reshape(1, 2, *L.shape[-2:])
    rgb = merge_l_ab(L_t, ab_t)[0].permute(1, 2, 0).numpy()
    c_ours = float(metrics.colourfulness(rgb))
    c_truth = float(metrics.colourfulness(truth_rgb)) if truth_colourfulness is None else truth_colourfulness
    scores = ImageScores(
        psnr=float(metrics.psnr(rgb, truth_rgb)),
        ssim=float(metrics.ssim(rgb, truth_rgb)),
        delta_e=float(metrics.delta_e_mean(rgb, truth_rgb)),
        colourfulness=c_ours,
        colourfulness_gap=abs(c_ours - c_truth),
    )
    return rgb, scores


def gray_input(truth_rgb: np.ndarray) -> np.ndarray:
    """The photo's lightness L (H, W) float32: what a black-and-white print of it would hold."""
    rgb = torch.from_numpy(np.ascontiguousarray(truth_rgb, dtype=np.float64)).permute(2, 0, 1)
    return rgb_to_l(rgb)[0].numpy().astype(np.float32)


# --- data ------------------------------------------------------------------------------------------


@dataclass
class TruthPhoto:
    name: str  # path, or "archive.zip!member"
    rgb: np.ndarray  # (H, W, 3) float64 in [0, 1]


def _decode_colour(data: bytes) -> np.ndarray | None:
    """Decoded sRGB photo, or None when it has no colour (evaluating a gray truth measures nothing)."""
    with Image.open(io.BytesIO(data)) as img:
        img = upright(img)
        if img.mode in ("1", "L", "LA", "I", "I;16", "F"):
            return None
        arr = np.asarray(img.convert("RGB"))
    if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
        return None
    return arr.astype(np.float64) / 255.0


def iter_truth_photos(data: str | os.PathLike, limit: int | None = None, skipped: list[str] | None = None,
                      keep: Callable[[str], bool] | None = None,
                      storage: Storage | None = None) -> Iterator[TruthPhoto]:
    """Colour photos under ``data`` in name order, decoded lazily. Unreadable files, gray photos and photos
    too small to score are skipped with a warning (and their names appended to ``skipped``), so one bad file
    in an archive's folder does not stop an evaluation. ``keep(name)``, when given, picks the photos to read
    (e.g. a training source's validation split) before anything is decoded; ``limit`` counts kept photos.
    ``data`` is a folder, a .zip or, with ``storage``, an ``s3://`` prefix (``tools.datasets.iter_image_bytes``)."""
    if limit is not None and limit <= 0:
        return
    count = 0
    for name, raw in iter_image_bytes(os.fspath(data), storage):
        if keep is not None and not keep(name):
            continue
        try:
            rgb = _decode_colour(raw)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            log.warning("skipping %s: not a readable image (%s)", name, exc)
            if skipped is not None:
                skipped.append(name)
            continue
        reason = "it has no colour to compare with" if rgb is None else None
        if rgb is not None and min(rgb.shape[:2]) < MIN_SIDE:
            reason = f"{rgb.shape[1]}x{rgb.shape[0]} is too small to score (at least {MIN_SIDE} px a side)"
        if reason is not None:
            log.warning("skipping %s: %s", name, reason)
            if skipped is not None:
                skipped.append(name)
            continue
        count += 1
        yield TruthPhoto(name, rgb)
        if limit is not None and count >= limit:
            return


# --- results ---------------------------------------------------------------------------------------


@dataclass
class RowResult:
    """One row of the table: a model, or the gray baseline."""

    label: str
    model: str  # what was asked for: "default", a path, or "gray"
    engine: str = ""
    per_image: list[ImageScores] = field(default_factory=list)
    seconds: float = 0.0  # time inside the colorizer (not decoding or scoring)

    def means(self) -> dict[str, float]:
        return {k: metrics.finite_mean([getattr(s, k) for s in self.per_image]) for k in METRIC_KEYS}


@dataclass
class EvaluationResult:
    data: str
    render_size: int | str  # the size every model rendered at, or "224/256" when their own sizes differ
    images: list[str]
    sizes: list[tuple[int, int]]  # (width, height) per image
    models: list[RowResult]
    gray: RowResult
    truth_colourfulness: list[float]
    skipped: list[str]
    seconds: float
    decode: dict[str, Any] = field(default_factory=dict)

    @property
    def image_count(self) -> int:
        return len(self.images)

    def table(self) -> str:
        """A markdown table: each model, the gray baseline, and ground truth's colourfulness."""
        header = "| | PSNR dB | SSIM | CIEDE2000 | colourfulness | gap to truth | s/image |"
        lines = [header, "|" + "---|" * 7]
        for row in [*self.models, self.gray]:
            m = row.means()
            per_image = f"{row.seconds / self.image_count:.3f}" if row is not self.gray and self.image_count else "-"
            lines.append(
                f"| {row.label} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['delta_e']:.2f} | "
                f"{m['colourfulness']:.2f} | {m['colourfulness_gap']:.2f} | {per_image} |"
            )
        c_truth = metrics.finite_mean(self.truth_colourfulness)
        lines.append(f"| {TRUTH_LABEL} | - | - | - | {c_truth:.2f} | 0 | - |")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``json.dump``; non-finite numbers (a perfect PSNR) are written as strings."""

        def row(r: RowResult) -> dict[str, Any]:
            return {"label": r.label, "model": r.model, "engine": r.engine, "seconds": r.seconds, "mean": r.means()}

        images = []
        for i, name in enumerate(self.images):
            images.append(
                {
                    "name": name,
                    "size": list(self.sizes[i]),
                    "truth_colourfulness": self.truth_colourfulness[i],
                    "gray": asdict(self.gray.per_image[i]),
                    "models": {r.label: asdict(r.per_image[i]) for r in self.models},
                }
            )
        truth = {"label": TRUTH_LABEL, "mean": {"colourfulness": metrics.finite_mean(self.truth_colourfulness)}}
        return _json_safe(
            {
                "data": self.data,
                "render_size": self.render_size,
                "image_count": self.image_count,
                "decode": self.decode,
                "models": [row(r) for r in self.models],
                "gray_baseline": row(self.gray),
                "truth": truth,
                "skipped": self.skipped,
                "seconds": self.seconds,
                "images": images,
            }
        )


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf" / "nan": strict JSON has no infinity
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# --- evaluation ------------------------------------------------------------------------------------


def _unique_labels(labels: list[str]) -> list[str]:
    """The same checkpoint given twice (e.g. with other decode settings) still gets distinct rows."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def _decode_options(model: str, overrides: dict[str, Any]) -> DecodeOptions:
    """The model's own decode options with ``overrides`` applied: ``--temperature`` alone keeps the
    checkpoint's method rather than silently resetting it to the library default."""
    if str(model) != "default" and Path(model).suffix.lower() == ".onnx":
        recorded = read_onnx_metadata(model).decode.to_dict()
    else:
        recorded = load_checkpoint(resolve_checkpoint(model)).decode
    return DecodeOptions(**{**DecodeOptions().to_dict(), **recorded, **overrides})


def _decode_suffix(decode: DecodeOptions) -> str:
    """How overridden decoding shows in a row label; the temperature only matters to the annealed mean."""
    text = f"annealed_mean, T={decode.temperature:g}" if decode.method == "annealed_mean" else decode.method
    if decode.rebalance > 0:
        text += f", rebalance {decode.rebalance:g}"
    return f" [{text}]"


def _render_sizes(colorizers: Sequence[Colorizer]) -> int | str:
    sizes = sorted({c.render_size for c in colorizers})
    return sizes[0] if len(sizes) == 1 else "/".join(str(s) for s in sizes)


def evaluate_models(
    models: Sequence[str],
    data: str | os.PathLike,
    render_size: int | None = None,
    limit: int | None = None,
    engine_kind: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 8,
    decode: dict[str, Any] | None = None,
    contact_sheet: str | os.PathLike | None = None,
    sheet_count: int = 12,
    cell_height: int = 160,
    keep: Callable[[str], bool] | None = None,
    on_photo: Callable[[str, list[np.ndarray]], None] | None = None,
    storage: Storage | None = None,
) -> EvaluationResult:
    """Colorize every colour photo under ``data`` (those ``keep`` accepts by name, when given) with each model and
    score it (see the module doc); ``storage`` reads an ``s3://`` prefix. ``on_photo(name, images)`` sees each
    scored photo's rows as sRGB in [0, 1] (gray, each model, truth): a further judgement of the same pictures without
    colorizing them again.

    Engines are opened once and closed afterwards (``evaluate_colorizers`` scores engines the caller holds open);
    photos are read lazily and colorized ``batch_size`` at a time, so memory stays bounded on large folders.
    ``decode`` (``{"method": ..., "temperature": ..., "rebalance": ...}``) overrides how classification heads turn
    bin probabilities into ab.
    """
    if not models:
        raise ValueError("evaluate needs at least one model")
    started = time.perf_counter()
    sheet_rows: list[list[Image.Image]] = []

    def see(name: str, images: list[np.ndarray]) -> None:
        if contact_sheet is not None and len(sheet_rows) < sheet_count:
            sheet_rows.append([thumbnail(x, cell_height) for x in images])
        if on_photo is not None:
            on_photo(name, images)

    with contextlib.ExitStack() as stack:
        colorizers = []
        for m in models:
            options = _decode_options(m, decode) if decode else None
            engine = create_engine(model=m, kind=engine_kind, device=device, precision=precision, decode=options,
                                   cache_dir=onnx_cache_dir())
            stack.callback(engine.close)
            colorizers.append(Colorizer(engine, render_size=render_size, batch_size=batch_size))
        result = evaluate_colorizers(models, colorizers, data, limit, batch_size, keep, see, decode, storage)
    if contact_sheet is not None:
        labels = [row.label for row in result.models]
        render_contact_sheet(sheet_rows, ["gray input", *labels, TRUTH_LABEL], contact_sheet, cell_height=cell_height)
    result.seconds = time.perf_counter() - started  # loading the models included
    return result


def evaluate_colorizers(
    models: Sequence[str],
    colorizers: Sequence[Colorizer],
    data: str | os.PathLike,
    limit: int | None = None,
    batch_size: int = 8,
    keep: Callable[[str], bool] | None = None,
    on_photo: Callable[[str, list[np.ndarray]], None] | None = None,
    decode: dict[str, Any] | None = None,
    storage: Storage | None = None,
) -> EvaluationResult:
    """``evaluate_models`` with the models' colorizers already open (``models`` names what each one loaded, for the
    record; ``decode`` is the override their engines were opened with, shown in the row labels): a caller that
    also draws or films with the same colorizers (``tools.scorecard``) loads each model once, not once per set."""
    if len(models) != len(colorizers) or not models:
        raise ValueError(f"evaluate needs one colorizer per model ({len(models)} models, {len(colorizers)} "
                         "colorizers)")
    started = time.perf_counter()
    engines = [c.engine for c in colorizers]
    # Two rows of the same weights (a checkpoint and a copy promoted with other decoding) are told apart by their
    # decoding rather than by a number.
    label_counts = Counter(e.checkpoint.label for e in engines)
    labels = _unique_labels([
        e.checkpoint.label + (_decode_suffix(e.decode) if decode or label_counts[e.checkpoint.label] > 1 else "")
        for e in engines
    ])
    rows = [
        RowResult(label, str(m), f"{e.name} {e.device} {e.precision}")
        for label, m, e in zip(labels, models, engines, strict=True)
    ]
    gray = RowResult(GRAY_LABEL, "gray")
    names: list[str] = []
    sizes: list[tuple[int, int]] = []
    truth_c: list[float] = []
    skipped: list[str] = []

    def flush(chunk: list[TruthPhoto]) -> None:
        Ls = [gray_input(p.rgb) for p in chunk]
        predictions = []
        for colorizer, row in zip(colorizers, rows, strict=True):
            t0 = time.perf_counter()
            predictions.append(colorizer.predict_ab(Ls))
            row.seconds += time.perf_counter() - t0
        for i, (photo, L) in enumerate(zip(chunk, Ls, strict=True)):
            c_truth = float(metrics.colourfulness(photo.rgb))
            gray_rgb, gray_scores = score_ab(L, np.zeros((2, *L.shape), np.float32), photo.rgb, c_truth)
            gray.per_image.append(gray_scores)
            ours = []
            for row, abs_ in zip(rows, predictions, strict=True):
                rgb, scores = score_ab(L, abs_[i], photo.rgb, c_truth)
                row.per_image.append(scores)
                ours.append(rgb)
            if on_photo is not None:
                on_photo(photo.name, [gray_rgb, *ours, photo.rgb])
            names.append(photo.name)
            sizes.append((photo.rgb.shape[1], photo.rgb.shape[0]))
            truth_c.append(c_truth)
        log.info("evaluated %d photos", len(names))

    chunk: list[TruthPhoto] = []
    for photo in iter_truth_photos(data, limit, skipped, keep, storage):
        chunk.append(photo)
        if len(chunk) == batch_size:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)
    if not names:
        raise DataError(f"{data}: no readable colour photos to evaluate ({len(skipped)} skipped)")
    return EvaluationResult(
        data=str(data),
        render_size=_render_sizes(colorizers),
        images=names,
        sizes=sizes,
        models=rows,
        gray=gray,
        truth_colourfulness=truth_c,
        skipped=skipped,
        seconds=time.perf_counter() - started,
        decode=dict(decode or {}),
    )


# --- command line ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, help="'default' or a checkpoint/.onnx path; repeatable")
    p.add_argument("--data", required=True, help="a folder (searched recursively) or a .zip of colour photos")
    p.add_argument("--render-size", type=int, default=None,
                   help="long side the network sees (default: each model's own, recorded in its checkpoint, else 256)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N photos (name order)")
    p.add_argument("--engine", default="auto", help="auto | torch | onnxruntime")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")
    p.add_argument("--batch-size", type=int, default=8, help="photos per colorizer call")
    p.add_argument("--decode-method", choices=("mode", "mean", "annealed_mean"), help="override the checkpoint's")
    p.add_argument("--temperature", type=float, help="annealed-mean temperature override (0.38 = Zhang et al.)")
    p.add_argument("--rebalance", type=float, help="decode-time class rebalancing override (0 = off; needs a model "
                   "that records its training data's ab prior)")
    p.add_argument("--contact-sheet", type=output_file, help="write a PNG grid: gray | each model | truth")
    p.add_argument("--sheet-count", type=int, default=12, help="photos on the contact sheet (default 12)")
    p.add_argument("--cell-height", type=int, default=160, help="contact-sheet cell height in pixels")
    p.add_argument("--json", type=output_file, help="write per-image and mean figures here")
    video = p.add_argument_group("films (--video)")
    video.add_argument("--video", action="store_true", help="--data holds colour video clips: score film "
                       "colorization per frame and its warping error, smoothing off and on (tools.evaluate_video)")
    video.add_argument("--smoothing", default=f"0,{SmoothingOptions().strength}",
                       help="comma-separated smoothing strengths to compare (default: %(default)s)")
    video.add_argument("--max-frames", type=frames_arg, default=DEFAULT_MAX_FRAMES,
                       help="score at most this many frames of each clip, or 'all' (default: %(default)s)")
    video.add_argument("--references", action="store_true", help="score the film with the truth's first frame of "
                       "each shot as a reference frame beside automatic, at the last --smoothing strength "
                       "(tools.evaluate_references)")
    hints = p.add_argument_group("colour hints (--hints)")
    hints.add_argument("--hints", action="store_true", help="score colorization with 0..N colour hints sampled "
                       "from the truth, beside automatic and gray (tools.evaluate_hints)")
    hints.add_argument("--hint-counts", default="0,1,2,5,10,20",  # tools.evaluate_hints.HINT_COUNTS
                       help="comma-separated hint counts (default: %(default)s)")
    hints.add_argument("--hint-bench", action="store_true",
                       help="also time a 1 MP photo end to end with and without 10 hints")
    add_runtime_arguments(p)
    return p


def _main_hints(args: argparse.Namespace) -> int:
    # Imported here: tools.evaluate_hints builds on this module's photo reading and scoring.
    from tools.evaluate_hints import bench_hint_cost, evaluate_hints, hints_table

    if len(args.model) != 1:
        raise SystemExit("--hints scores one model at a time")
    counts = [int(n) for n in args.hint_counts.split(",") if n.strip()]
    with open_colorizer(args.model[0], args.engine, args.device, args.precision, args.render_size,
                        args.batch_size, cache_dir=onnx_cache_dir()) as (colorizer, label):
        result = evaluate_hints(colorizer, label, args.data, counts, args.limit, args.batch_size)
        print(f"{len(result.images)} photos from {args.data}, model {label}: PSNR (dB) by number of hints\n")
        print(hints_table([result]))
        print(f"\nworst single-photo change with 1 hint: {result.worst_gain(1):+.2f} dB" if 1 in counts else "")
        summary = result.to_json()
        if args.hint_bench:
            with tempfile.TemporaryDirectory(prefix="tinct-hint-bench-") as workdir:
                cost = bench_hint_cost(colorizer, label, workdir)
            print(f"cost: {cost.line()}")
            summary["cost"] = {**cost.__dict__, "overhead": cost.overhead}
    if args.json:
        write_json(args.json, summary)
    return 0


def _main_references(args: argparse.Namespace, strength: float) -> int:
    # Imported here, as for --hints: the reference evaluation builds on tools.evaluate_video's pieces.
    from tools.evaluate_references import evaluate_references, references_table

    with open_colorizer(args.model[0], args.engine, args.device, args.precision, args.render_size,
                        args.batch_size, cache_dir=onnx_cache_dir()) as (colorizer, label):
        results = evaluate_references(colorizer, args.data, strength, args.max_frames)
    print(f"model {label}, smoothing {strength}: PSNR (dB) and warping error (x 1000)\n")
    print(references_table(results))
    if args.json:
        write_json(args.json, [r.__dict__ for r in results])
    return 0


def _main_video(args: argparse.Namespace) -> int:
    if len(args.model) != 1:
        raise SystemExit("--video scores one model at a time")
    strengths = [float(s) for s in args.smoothing.split(",") if s.strip()]
    if args.references:
        return _main_references(args, strengths[-1])
    with open_colorizer(args.model[0], args.engine, args.device, args.precision, args.render_size,
                        args.batch_size, cache_dir=onnx_cache_dir()) as (colorizer, label):
        results = evaluate_videos(colorizer, label, args.data, strengths, args.max_frames)
    print(video_table(results))
    if args.json:
        write_json(args.json, to_json(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_runtime_arguments(args)
    with input_errors_exit(parser):  # a missing model or data folder: one line, no traceback
        if args.video:
            return _main_video(args)
        if args.hints:
            return _main_hints(args)
        try:
            # s3:// photos and model-store names, read as tools train reads them
            storage = Storage(settings := Settings.from_env())
        except ValueError as exc:  # a TINCT_* variable of the wrong kind, named
            parser.error(str(exc))
        with storage:
            return _main_photos(args, settings, storage)


def _main_photos(args: argparse.Namespace, settings: Settings, storage: Storage) -> int:
    decode: dict[str, Any] = {}
    if args.decode_method is not None:
        decode["method"] = args.decode_method
    if args.temperature is not None:
        decode["temperature"] = args.temperature
    if args.rebalance is not None:
        decode["rebalance"] = args.rebalance
    result = evaluate_models(
        [resolve_model(m, settings, storage) for m in args.model],
        args.data,
        render_size=args.render_size,
        limit=args.limit,
        engine_kind=args.engine,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        decode=decode,
        contact_sheet=args.contact_sheet,
        sheet_count=args.sheet_count,
        cell_height=args.cell_height,
        storage=storage,
    )
    print(f"{result.image_count} photos from {result.data} at render size {result.render_size}"
          f"{f' ({len(result.skipped)} skipped)' if result.skipped else ''}, {result.seconds:.1f} s\n")
    print(result.table())
    if args.json:
        write_json(args.json, result.to_json(), allow_nan=False)
    if args.contact_sheet:
        print(f"\ncontact sheet: {args.contact_sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
