"""``python -m tools bench``: images/s and megapixels/s per engine, precision and batch size
(``--video``: film frames/s, see ``tools.bench_video``; ``--service``: jobs/s, overhead per job and queue latency
through Redis, S3 and real workers, and a film's speed-up on more workers, see ``tools.bench_service``;
``--gpu``: network frames/s per engine, batch and render size on a GPU, and a 1080p film against its
decode+encode floor, see ``tools.bench_gpu``; ``--train``: a training step's stages and crops/s per setup, see
``tools.bench_train``).

Three measurements, because each answers a different question:

* **network** - ``engine.infer`` alone on batches already at the render size: what the backend and
  precision are worth, and the ceiling for everything else. Megapixels are those the network sees.
* **end to end** - decode a JPEG from disk, colorize it at full resolution through the ``Colorizer``
  (resize, infer, ab upsampling guided by L, merge), encode a JPEG: what a user of ``tinct colorize``
  gets. Megapixels are the photos' own. Photos are generated (about ``--megapixels`` each) in a temp
  folder, so the figures do not depend on anyone's data; ``--photo-format`` makes them PNG, TIFF or JPEG 2000
  (lossless, as masters are kept) instead.
* the same two for the **comparison architecture** (``eccv16``, full size, random weights: its speed
  does not depend on what it learned), with the speed ratio default / comparison.

Warm-up runs are not timed; every figure is the median of ``--repeats`` timed runs. The output names
the CPU, core count, torch/ONNX Runtime versions and thread counts, because rates mean nothing without
them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.checkpoint import save_checkpoint
from models.colorizer import Colorizer
from models.engines import Engine, EngineUnavailableError, create_engine
from models.registry import config_class, create_model
from tools.bench_service import (
    BenchError,
    ServiceBenchUnavailable,
    add_service_arguments,
    print_and_save_service,
    run_service_bench,
)
from tools.bench_train import SETUPS as TRAIN_SETUPS
from tools.bench_train import add_train_arguments, run_train_bench, train_bench_table
from tools.bench_video import add_video_arguments, print_and_save, run_video_bench
from tools.runtime import (
    add_runtime_arguments,
    apply_runtime_arguments,
    input_errors_exit,
    onnx_cache_dir,
    output_file,
    positive_ints,
    write_json,
)
from worker.media.images import read_photo, write_photo

log = logging.getLogger(__name__)

JPEG_QUALITY = 90
PHOTO_FORMATS = ("jpg", "png", "tif", "jp2")
PHOTO_ASPECT = 1.5  # 3:2, the commonest camera and scan shape


# --- environment -----------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def system_info() -> dict[str, Any]:
    """What a reader needs to compare two benchmark runs: hardware, library versions, thread counts."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    return info


# --- test photos -----------------------------------------------------------------------------------


def photo_size(megapixels: float) -> tuple[int, int]:
    """(width, height) of a 3:2 photo of about ``megapixels``."""
    width = max(16, round(math.sqrt(megapixels * 1e6 * PHOTO_ASPECT)))
    return width, max(16, round(width / PHOTO_ASPECT))


def make_test_photos(folder: Path, count: int, megapixels: float, seed: int = 0, suffix: str = ".jpg") -> list[Path]:
    """Write ``count`` black-and-white photos of about ``megapixels`` (what Tinct is given): smooth gradients, blocks
    and noise, so the encoder and decoder do realistic work (a flat image would compress to nothing). A JPEG at
    quality 90 (``suffix`` .jpg), else in the format ``suffix`` names, losslessly (an archive's JPEG 2000 master)."""
    rng = np.random.default_rng(seed)
    width, height = photo_size(megapixels)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        phase = rng.uniform(0, 2 * np.pi, 3)
        img = np.stack([0.5 + 0.4 * np.sin(x / (40 + 13 * c) + y / (57 + 7 * c) + phase[c]) for c in range(3)], -1)
        for _ in range(6):
            y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
            img[y0 : y0 + height // 5, x0 : x0 + width // 5] = rng.random(3)
        img += rng.normal(0.0, 0.03, img.shape).astype(np.float32)
        path = folder / f"bench-{i:03d}{suffix}"
        rgb = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
        rgb.convert("L").save(path, **({"quality": JPEG_QUALITY} if suffix == ".jpg" else {}))
        paths.append(path)
    return paths


def network_input_shape(render_size: int, stride: int, photo: tuple[int, int] | None = None) -> tuple[int, int]:
    """(H, W) the network sees for a 3:2 landscape photo, as ``Colorizer`` renders it: the long side scaled to
    ``render_size`` (never up: a ``photo`` (width, height) smaller than that keeps its size), then both sides
    padded up to a multiple of the stride."""

    def up(n: float) -> int:
        return max(stride, math.ceil(n / stride) * stride)

    width, height = photo or (render_size, render_size / PHOTO_ASPECT)
    scale = min(1.0, render_size / max(width, height))
    return up(max(1, round(height * scale))), up(max(1, round(width * scale)))


# --- timing ----------------------------------------------------------------------------------------


@dataclass
class Rate:
    """One timed configuration."""

    arch: str  # "default" (the model under test) or the comparison architecture's name
    model: str  # checkpoint label
    engine: str
    precision: str
    case: str  # "network" or "end_to_end"
    batch_size: int
    images: int  # images per timed run
    megapixels: float  # per timed run: network input pixels (network) or photo pixels (end to end)
    seconds: list[float] = field(default_factory=list)  # every timed run

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def images_per_s(self) -> float:
        return self.images / self.median_s

    @property
    def megapixels_per_s(self) -> float:
        return self.megapixels / self.median_s

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(median_s=self.median_s, images_per_s=self.images_per_s, megapixels_per_s=self.megapixels_per_s)
        return out


def _timed(run: Callable[[], None], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times


def bench_network(
    engine: Engine, batch_size: int, n_images: int, render_size: int, warmup: int, repeats: int,
    photo: tuple[int, int] | None = None,
) -> tuple[list[float], int, float]:
    """Time ``engine.infer`` on ceil(n_images / batch_size) full batches of what the colorizer would feed it
    for a ``photo`` (width, height). -> (times, images, megapixels)."""
    h, w = network_input_shape(render_size, engine.stride, photo)
    rng = np.random.default_rng(0)
    L = rng.uniform(0.0, 100.0, (batch_size, 1, h, w)).astype(np.float32)
    calls = max(1, math.ceil(n_images / batch_size))

    def run() -> None:
        for _ in range(calls):
            engine.infer(L)

    images = calls * batch_size
    return _timed(run, warmup, repeats), images, images * h * w / 1e6


def bench_end_to_end(
    engine: Engine, photos: Sequence[Path], out_dir: Path, batch_size: int, render_size: int, warmup: int, repeats: int
) -> tuple[list[float], int, float]:
    """Time decode -> colorize (full resolution) -> encode for all ``photos``. -> (times, images, megapixels)."""
    colorizer = Colorizer(engine, render_size=render_size, batch_size=batch_size)
    provenance = engine.checkpoint.label
    out_dir.mkdir(parents=True, exist_ok=True)

    def run() -> None:
        for start in range(0, len(photos), batch_size):
            group = [read_photo(p) for p in photos[start : start + batch_size]]
            rgbs = colorizer.colorize([ph.L for ph in group])
            for ph, rgb in zip(group, rgbs, strict=True):
                write_photo(out_dir / ph.path.name, rgb, like=ph, provenance=provenance)

    pixels = 0
    for path in photos:
        with Image.open(path) as img:
            pixels += img.width * img.height
    return _timed(run, warmup, repeats), len(photos), pixels / 1e6


# --- the benchmark ---------------------------------------------------------------------------------


@dataclass
class BenchResult:
    system: dict[str, Any]
    config: dict[str, Any]
    rates: list[Rate]
    engines: list[dict[str, Any]]  # what each (arch, engine, precision) really ran: label, device, threads
    skipped: list[str]  # configurations that cannot run here, with the reason

    def ratios(self) -> list[dict[str, Any]]:
        """Speed of the default model over the comparison architecture, for every configuration both ran."""
        by_key = {(r.arch, r.engine, r.precision, r.case, r.batch_size): r for r in self.rates}
        out = []
        for (arch, eng, prec, case, bs), r in by_key.items():
            if arch != "default":
                continue
            for (arch2, eng2, prec2, case2, bs2), other in by_key.items():
                if arch2 != "default" and (eng2, prec2, case2, bs2) == (eng, prec, case, bs):
                    out.append({"versus": arch2, "engine": eng, "precision": prec, "case": case, "batch_size": bs,
                                "speed_ratio": r.images_per_s / other.images_per_s})
        return out

    def table(self) -> str:
        s = self.system
        lines = [
            f"CPU: {s['cpu']} ({s['cpus_usable']} of {s['cpu_count']} cores usable); torch {s['torch']} "
            f"({s['torch_threads']} threads, {s['torch_interop_threads']} inter-op); onnxruntime {s['onnxruntime']}",
            f"render size {self.config['render_size']}, photos {self.config['photo_size'][0]}x"
            f"{self.config['photo_size'][1]} {self.config['photo_format']}, {self.config['images']} images, "
            f"median of {self.config['repeats']} after {self.config['warmup']} warm-up",
            "",
        ]
        for e in self.engines:
            lines.append(f"- {e['arch']}: {e['model']} on {e['engine']} {e['device']} {e['precision']}, "
                         f"{e['threads']} threads")
        lines += [
            "",
            "| model | engine | precision | batch | network img/s | network MP/s | end to end img/s | MP/s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        cells: dict[tuple, dict[str, Rate]] = {}
        for r in self.rates:
            # The model under test by its checkpoint label (which release, or which candidate), not its role.
            shown = r.model if r.arch == "default" else r.arch
            cells.setdefault((shown, r.engine, r.precision, r.batch_size), {})[r.case] = r
        for (shown, eng, prec, bs), cases in cells.items():
            net, e2e = cases.get("network"), cases.get("end_to_end")
            lines.append(
                f"| {shown} | {eng} | {prec} | {bs} | "
                f"{_fmt(net, 'images_per_s')} | {_fmt(net, 'megapixels_per_s')} | "
                f"{_fmt(e2e, 'images_per_s')} | {_fmt(e2e, 'megapixels_per_s')} |"
            )
        ratios = self.ratios()
        if ratios:
            lines += ["", "| speed of the model under test / comparison | engine | precision | batch | network "
                      "| end to end |", "|---|---|---|---|---|---|"]
            grouped: dict[tuple, dict[str, float]] = {}
            for q in ratios:
                grouped.setdefault((q["versus"], q["engine"], q["precision"], q["batch_size"]), {})[q["case"]] = (
                    q["speed_ratio"]
                )
            for (versus, eng, prec, bs), by_case in grouped.items():
                net, e2e = by_case.get("network"), by_case.get("end_to_end")
                lines.append(f"| vs {versus} | {eng} | {prec} | {bs} | {_ratio(net)} | {_ratio(e2e)} |")
        if self.skipped:
            lines += ["", *(f"skipped: {why}" for why in self.skipped)]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "config": self.config,
            "engines": self.engines,
            "rates": [r.to_dict() for r in self.rates],
            "ratios": self.ratios(),
            "skipped": self.skipped,
        }


def _fmt(rate: Rate | None, attr: str) -> str:
    return "-" if rate is None else f"{getattr(rate, attr):.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def comparison_checkpoint(arch: str, folder: Path, config: dict[str, Any] | None = None) -> Path:
    """A randomly initialised checkpoint of ``arch``, full size unless ``config`` overrides it (tests build a
    thin one). Speed does not depend on the weights; the fixed seed keeps the hash, and so any cached ONNX
    export of it, the same from run to run."""
    torch.manual_seed(0)
    overrides = {"pretrained": False} if "pretrained" in _config_fields(arch) else {}
    overrides.update(config or {})
    path = folder / f"{arch}-random.pt"
    save_checkpoint(path, create_model(arch, **overrides), provenance={"purpose": "benchmark comparison"})
    return path


def _config_fields(arch: str) -> set[str]:
    return {f.name for f in dataclasses.fields(config_class(arch))}


def _bench_engine(
    arch: str, engine: Engine, photos: Sequence[Path], out_dir: Path, batch_sizes: Sequence[int], images: int,
    render_size: int, warmup: int, repeats: int, photo: tuple[int, int],
) -> list[Rate]:
    """Network and (when there are photos) end-to-end rates of one engine at every batch size."""
    rates = []
    label, name, precision = engine.checkpoint.label, engine.name, engine.precision
    for bs in batch_sizes:
        log.info("%s %s %s batch %d: network", arch, name, precision, bs)
        times, n, mp = bench_network(engine, bs, images, render_size, warmup, repeats, photo)
        rates.append(Rate(arch, label, name, precision, "network", bs, n, mp, times))
        if photos:
            log.info("%s %s %s batch %d: end to end", arch, name, precision, bs)
            # One untimed pass over all photos is warm-up enough: the network is already warm.
            times, n, mp = bench_end_to_end(engine, photos, out_dir, bs, render_size, min(warmup, 1), repeats)
            rates.append(Rate(arch, label, name, precision, "end_to_end", bs, n, mp, times))
    return rates


def run_bench(
    model: str = "default",
    engines: Sequence[str] = ("torch", "onnxruntime"),
    precisions: Sequence[str] = ("auto",),
    batch_sizes: Sequence[int] = (1, 4, 8),
    render_size: int = 256,
    megapixels: float = 1.0,
    images: int = 8,
    compare: str | None = "eccv16",
    compare_config: dict[str, Any] | None = None,
    warmup: int = 1,
    repeats: int = 3,
    device: str = "auto",
    end_to_end: bool = True,
    photo_format: str = "jpg",
) -> BenchResult:
    """Run every (architecture, engine, precision, batch size) configuration; see the module doc. The end-to-end
    photos are JPEGs, or of ``photo_format`` (``jp2``, ``tif``, ``png``: written losslessly, read and written so).

    A configuration this machine cannot run (fp16 on CPU, a missing runtime) is recorded in
    ``skipped`` with its reason instead of stopping the benchmark.
    """
    rates: list[Rate] = []
    engine_rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tinct-bench-") as tmp:
        tmp_dir = Path(tmp)
        photos = make_test_photos(tmp_dir / "in", images, megapixels, suffix=f".{photo_format}") if end_to_end else []
        archs: list[tuple[str, str]] = [("default", model)]
        if compare:
            archs.append((compare, str(comparison_checkpoint(compare, tmp_dir, compare_config))))
        for arch, model_ref in archs:
            for kind in engines:
                for precision in precisions:
                    try:
                        engine = create_engine(model=model_ref, kind=kind, device=device, precision=precision,
                                               cache_dir=onnx_cache_dir())
                    except (EngineUnavailableError, ImportError) as exc:
                        skipped.append(f"{arch} on {kind} {precision}: {exc}")
                        log.warning("skipping %s on %s %s: %s", arch, kind, precision, exc)
                        continue
                    with engine:
                        engine_rows.append({
                            "arch": arch, "model": engine.checkpoint.label, "engine": engine.name,
                            "device": engine.device, "precision": engine.precision,
                            # Both backends follow torch's count: the ONNX Runtime engine copies it into its
                            # session options when it is created.
                            "threads": torch.get_num_threads(),
                        })
                        rates += _bench_engine(arch, engine, photos, tmp_dir / "out", batch_sizes, images, render_size,
                                               warmup, repeats, photo_size(megapixels))
    config = {
        "model": model,
        "engines": list(engines),
        "precisions": list(precisions),
        "batch_sizes": list(batch_sizes),
        "render_size": render_size,
        "network_input_before_padding": list(network_input_shape(render_size, 1, photo_size(megapixels))),
        "megapixels": megapixels,
        "photo_size": list(photo_size(megapixels)),
        "photo_format": photo_format,
        "images": images,
        "compare": compare,
        "compare_config": dict(compare_config or {}),
        "warmup": warmup,
        "repeats": repeats,
        "device": device,
    }
    return BenchResult(system_info(), config, rates, engine_rows, skipped)


# --- command line ----------------------------------------------------------------------------------


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="'default' or a checkpoint path")
    p.add_argument("--engines", default="torch,onnxruntime", help="comma-separated backends")
    p.add_argument("--precisions", default="auto", help="comma-separated: auto, fp32, bf16, fp16")
    p.add_argument("--batch-sizes", type=positive_ints, default="1,4,8", help="comma-separated batch sizes")
    p.add_argument("--render-size", type=int, default=256, help="long side the network sees (never upscaled)")
    p.add_argument("--megapixels", type=float, default=1.0, help="size of each generated end-to-end test photo")
    p.add_argument("--photo-format", default="jpg", choices=PHOTO_FORMATS,
                   help="format of the end-to-end test photos (jpg at quality 90; the others lossless)")
    p.add_argument("--images", type=int, default=8, help="images per timed run")
    p.add_argument("--compare", default="eccv16", help="comparison architecture ('none' to skip)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--network-only", action="store_true", help="skip the end-to-end measurement")
    p.add_argument("--json", type=output_file, help="write all timings here")
    add_video_arguments(p)
    add_service_arguments(p)
    add_train_arguments(p)
    # Imported here, not at the top: tools.bench_gpu builds on this module's helpers.
    from tools.bench_gpu import add_gpu_arguments

    add_gpu_arguments(p)
    add_runtime_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_runtime_arguments(args)
    if args.gpu:
        from tools.bench_gpu import GpuUnavailable, print_and_save_gpu, run_gpu_bench  # see build_parser

        try:
            gpu_result = run_gpu_bench(args)
        except GpuUnavailable as exc:
            print(f"python -m tools bench --gpu: {exc}", file=sys.stderr)
            return 2
        print_and_save_gpu(gpu_result, args.json)
        return 1 if gpu_result.failed else 0
    if args.video:
        print_and_save(run_video_bench(args), args.json)
        return 0
    if args.train:
        unknown = set(_csv(args.train_setups)) - set(TRAIN_SETUPS)
        if unknown:
            print(f"python -m tools bench --train: unknown setup {', '.join(sorted(unknown))} (use "
                  f"{', '.join(TRAIN_SETUPS)})", file=sys.stderr)
            return 2
        timings = run_train_bench(args.train_crops, args.train_steps, _csv(args.train_setups), args.train_rounds)
        print(train_bench_table(timings))
        if args.json:
            write_json(args.json, [t.to_dict() for t in timings])
        return 0
    if args.service:
        try:
            print_and_save_service(run_service_bench(args), args.json)
        except (ServiceBenchUnavailable, BenchError) as exc:
            print(f"python -m tools bench --service: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, ServiceBenchUnavailable) else 1
        return 0
    with input_errors_exit(parser):  # a missing or unreadable --model: one line, no traceback
        result = run_bench(
            model=args.model,
            engines=_csv(args.engines),
            precisions=_csv(args.precisions),
            batch_sizes=args.batch_sizes,
            render_size=args.render_size,
            megapixels=args.megapixels,
            images=args.images,
            compare=None if args.compare.lower() in ("", "none") else args.compare,
            warmup=args.warmup,
            repeats=args.repeats,
            device=args.device,
            end_to_end=not args.network_only,
            photo_format=args.photo_format,
        )
    print(result.table())
    if args.json:
        write_json(args.json, result.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
