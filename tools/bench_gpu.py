"""``python -m tools bench --gpu``: what a GPU node is worth, network alone and on a real film.

Two measurements, against the two targets a GPU worker has to meet (on one H100):

* **network only** - ``engine.infer`` on batches of what the colorizer feeds the network for a 16:9 film
  frame (1920x1080 scaled so that its long side is the render size, padded to the model's stride), for
  every engine and precision (``--gpu-engines torch:fp32,torch:fp16,tensorrt:fp16``), batch size
  (``--gpu-batch-sizes``, 1..64) and render size (``--gpu-render-sizes 256,384,512``). ``infer`` returns
  numpy, so every timed call includes the host-device copies and ends synchronised with the GPU: these
  are frames/s a caller can really have. Target: at least 1,000 frames/s at render size 256 for the
  best engine, so that one GPU serves many CPU encoders.
* **film** - a generated 1920x1080 film (``--gpu-film-size``, ``--seconds``) colorized end to end by
  ``worker.films.colorize_film`` with the engine a worker would pick on this device (kind and precision
  ``auto``) at ``--gpu-film-batch`` frames per ``infer``, beside the decode+encode-only floor on the same
  film (``tools.bench_video``). Target: end to end within 1.2x of the floor, i.e. the network is never
  the bottleneck; encoding is (a datacentre GPU has no NVENC).

A configuration this machine cannot run (a backend not installed or not registered, fp16 on CPU) is
recorded in ``skipped`` with its reason; a batch size that runs out of GPU memory is too, and so are the
larger batches of that configuration. Anything else that goes wrong in one configuration is recorded in
``failed`` (the command then exits 1) so that the other configurations' figures are not lost.

``--device cpu`` runs the same machinery on the CPU, which is how the tests exercise it.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from models.engines import KINDS, PRECISIONS, Engine, EngineUnavailableError, create_engine
from tools.bench import bench_network, network_input_shape, system_info
from tools.bench_video import bench_size
from tools.runtime import frame_size, onnx_cache_dir, positive_ints, write_json
from worker.media.video_sink import EncodeOptions
from worker.photos import open_colorizer
from worker.smoothing import SmoothingOptions

log = logging.getLogger(__name__)

FILM_FRAME = (1920, 1080)  # (width, height) the network-only inputs are shaped for
NETWORK_TARGET_FPS = 1000.0
NETWORK_TARGET_RENDER_SIZE = 256
FILM_TARGET_RATIO = 1.2  # end to end at most this much slower than decode+encode alone
FILM_TARGET_SIZE = "1920x1080"
# Frames per infer in the film run unless --gpu-film-batch says: on CUDA what a worker picks (models.batching).
FILM_BATCH: dict[str, int | None] = {"cuda": None, "cpu": 8}
# Engines tune themselves per input shape in their first calls (cuDNN's algorithm search on the first, the torch
# engine's CUDA-graph capture on the third), so warm-up makes at least this many calls whatever the batch size.
MIN_WARMUP_CALLS = 3

NO_GPU_MESSAGE = "no CUDA GPU visible to PyTorch (use --device cpu to exercise the benchmark on CPU)"


class GpuUnavailable(RuntimeError):
    """``--gpu`` asked for CUDA and PyTorch sees no GPU."""


# --- results ---------------------------------------------------------------------------------------


@dataclass
class NetworkRate:
    """One timed (engine, precision, render size, batch size)."""

    engine: str  # the backend that ran, as create_engine names it
    precision: str  # the arithmetic it really used
    render_size: int
    input_shape: tuple[int, int]  # (H, W) the network saw, after padding to the stride
    batch_size: int
    frames: int  # frames per timed run (whole batches, so at least --gpu-frames)
    seconds: list[float] = field(default_factory=list)  # every timed run

    @property
    def frames_per_s(self) -> float:
        return self.frames / statistics.median(self.seconds)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "median_s": statistics.median(self.seconds), "frames_per_s": self.frames_per_s}


@dataclass
class Skipped:
    """A configuration (or one batch size of it) that did not run, and why."""

    engine: str  # as asked: kind, not necessarily a registered backend
    precision: str
    reason: str
    render_size: int | None = None  # None: the whole configuration
    batch_size: int | None = None
    out_of_memory: bool = False

    def describe(self) -> str:
        where = "" if self.render_size is None else f" render {self.render_size} batch {self.batch_size}"
        return f"{self.engine} {self.precision}{where}: {self.reason}"


@dataclass
class FilmRate:
    size: str
    frames: int
    engine: str
    precision: str
    batch_size: int
    render_size: int
    end_to_end_fps: float
    floor_fps: float  # decode + encode only: the rate no colorizer can beat
    ms_per_frame: dict[str, float]  # busy time per stage and frame; stages overlap, so they add up to more

    @property
    def floor_over_end_to_end(self) -> float:
        return self.floor_fps / self.end_to_end_fps if self.end_to_end_fps else float("inf")

    @property
    def busy_s(self) -> dict[str, float]:
        return {stage: ms * self.frames / 1000 for stage, ms in self.ms_per_frame.items()}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "floor_over_end_to_end": self.floor_over_end_to_end, "busy_s": self.busy_s}


@dataclass
class TargetCheck:
    """One of the issue's two targets: what was measured, and whether it is met (None: not measured)."""

    goal: str
    measured: str  # the figure, or why there is none
    met: bool | None

    def describe(self) -> str:
        if self.met is None:
            return f"{self.goal}: not measured ({self.measured})"
        return f"{self.goal}: {self.measured} - {'met' if self.met else 'NOT met'}"


@dataclass
class GpuBenchResult:
    system: dict[str, Any]
    config: dict[str, Any]
    engines: list[dict[str, Any]]  # what each requested (kind, precision) really ran as
    rates: list[NetworkRate]
    skipped: list[Skipped]
    failed: list[str]
    film: FilmRate | None

    def targets(self) -> list[TargetCheck]:
        return check_targets(self.rates, self.film, self.config["model"])

    def table(self) -> str:
        s = self.system
        if self.config["device"] == "cuda":
            device = f"{s['gpu']} ({s['gpu_memory_gib']} GiB)"
        else:
            device = f"CPU {s['cpu']} ({s['cpus_usable']} cores usable)"
        lines = [
            f"{device}; torch {s['torch']} (CUDA {s['cuda_runtime']}, cuDNN {s['cudnn']}); "
            f"TensorRT {s['tensorrt']}; onnxruntime {s['onnxruntime']}",
            f"model {self.config['model']}; {self.config['frames']} frames per timed run, median of "
            f"{self.config['repeats']} after {self.config['warmup']} warm-up",
        ]
        for e in self.engines:
            lines.append(f"- {e['requested']}: {e['engine']} {e['precision']} on {e['device']}")
        batch_sizes = self.config["batch_sizes"]
        lines += [
            "",
            "network only, frames/s at each batch size (a 16:9 frame at the render size, input HxW after padding):",
            "",
            "| engine | precision | render | input | " + " | ".join(f"batch {b}" for b in batch_sizes) + " |",
            "|---|---|---|---|" + "---|" * len(batch_sizes),
        ]
        rows: dict[tuple[str, str, int], dict[int, str]] = {}
        shapes: dict[tuple[str, str, int], tuple[int, int]] = {}
        for r in self.rates:
            key = (r.engine, r.precision, r.render_size)
            rows.setdefault(key, {})[r.batch_size] = f"{r.frames_per_s:.1f}"
            shapes[key] = r.input_shape
        for skip in self.skipped:
            if skip.render_size is not None:
                key = (skip.engine, skip.precision, skip.render_size)
                rows.setdefault(key, {})[skip.batch_size] = "OOM" if skip.out_of_memory else "-"
        for key, cells in rows.items():
            shape = shapes.get(key)
            input_text = f"{shape[0]}x{shape[1]}" if shape else "-"
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {input_text} | "
                         + " | ".join(cells.get(b, "-") for b in batch_sizes) + " |")
        lines.append("")
        if self.film:
            f = self.film
            ms = ", ".join(f"{stage} {value:.1f}" for stage, value in f.ms_per_frame.items())
            lines.append(
                f"film {f.size}, {f.frames} frames, {f.engine} {f.precision} batch {f.batch_size} render "
                f"{f.render_size}: end to end {f.end_to_end_fps:.1f} fps, floor (decode+encode) {f.floor_fps:.1f} "
                f"fps, floor / end to end {f.floor_over_end_to_end:.2f}x; busy ms/frame: {ms}"
            )
        else:
            lines.append("film: not run")
        lines += [f"skipped: {skip.describe()}" for skip in self.skipped]
        lines += [f"FAILED: {why}" for why in self.failed]
        lines += ["", "targets: " + "; ".join(check.describe() for check in self.targets())]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "config": self.config,
            "engines": self.engines,
            "rates": [r.to_dict() for r in self.rates],
            "skipped": [asdict(s) for s in self.skipped],
            "failed": self.failed,
            "film": self.film.to_dict() if self.film else None,
            "targets": [asdict(t) for t in self.targets()],
        }


def check_targets(rates: Sequence[NetworkRate], film: FilmRate | None, model: str) -> list[TargetCheck]:
    """The issue's two targets against what this run measured."""
    network_goal = (f"network >= {NETWORK_TARGET_FPS:.0f} frames/s at render {NETWORK_TARGET_RENDER_SIZE} "
                    f"(model {model}, best engine)")
    at_target_size = [r for r in rates if r.render_size == NETWORK_TARGET_RENDER_SIZE]
    if at_target_size:
        best = max(at_target_size, key=lambda r: r.frames_per_s)
        network = TargetCheck(network_goal, f"{best.frames_per_s:.0f} frames/s ({best.engine} {best.precision} "
                              f"batch {best.batch_size})", best.frames_per_s >= NETWORK_TARGET_FPS)
    else:
        network = TargetCheck(network_goal, f"render size {NETWORK_TARGET_RENDER_SIZE} did not run", None)
    film_goal = f"{FILM_TARGET_SIZE} film end to end within {FILM_TARGET_RATIO}x of the decode+encode floor"
    if film is None:
        film_check = TargetCheck(film_goal, "the film did not run", None)
    elif film.size != FILM_TARGET_SIZE:
        film_check = TargetCheck(film_goal, f"the film was {film.size}", None)
    else:
        film_check = TargetCheck(film_goal, f"{film.floor_over_end_to_end:.2f}x",
                                 film.floor_over_end_to_end <= FILM_TARGET_RATIO)
    return [network, film_check]


# --- environment -----------------------------------------------------------------------------------


def gpu_system_info() -> dict[str, Any]:
    """``tools.bench.system_info`` plus the GPU, CUDA, cuDNN and TensorRT versions."""
    info = system_info()
    gpu = torch.cuda.is_available()
    info["gpu"] = torch.cuda.get_device_name(0) if gpu else None
    info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if gpu else None
    info["cuda_runtime"] = torch.version.cuda
    info["cudnn"] = torch.backends.cudnn.version() if gpu else None
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = None
    return info


# --- network only ----------------------------------------------------------------------------------


def _is_out_of_memory(exc: BaseException) -> bool:
    # PyTorch has its own type; ONNX Runtime and TensorRT only say so in the message.
    text = str(exc).lower()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text or "failed to allocate" in text


def bench_engine_sizes(
    engine: Engine, requested: tuple[str, str], render_sizes: Sequence[int], batch_sizes: Sequence[int],
    frames: int, warmup: int, repeats: int,
) -> tuple[list[NetworkRate], list[Skipped], list[str]]:
    """Time one engine at every render size and batch size. -> (rates, skipped, failed).

    Batch sizes run smallest first: once one runs out of memory the larger ones would too, so they are
    recorded as skipped without trying (an OOM can leave the allocator fragmented and slow the rest down).
    Any other error ends this engine's run and is recorded in ``failed``.
    """
    rates: list[NetworkRate] = []
    skipped: list[Skipped] = []
    kind, precision = requested
    for render_size in render_sizes:
        shape = network_input_shape(render_size, engine.stride, FILM_FRAME)
        out_of_memory_at: int | None = None
        for bs in sorted(batch_sizes):
            if out_of_memory_at is not None:
                skipped.append(Skipped(kind, precision, f"batch {out_of_memory_at} already ran out of memory",
                                       render_size, bs, out_of_memory=True))
                continue
            log.info("%s %s render %d batch %d", engine.name, engine.precision, render_size, bs)
            calls_per_run = math.ceil(frames / bs)
            warmup_runs = max(warmup, math.ceil(MIN_WARMUP_CALLS / calls_per_run)) if warmup else 0
            try:
                times, n, _ = bench_network(engine, bs, frames, render_size, warmup_runs, repeats, FILM_FRAME)
            except Exception as exc:  # noqa: BLE001 - out of memory has no common type across backends
                if engine.device == "cuda":
                    torch.cuda.empty_cache()
                if not _is_out_of_memory(exc):
                    log.exception("%s %s render %d batch %d failed", kind, precision, render_size, bs)
                    return rates, skipped, [f"{kind} {precision} render {render_size} batch {bs}: "
                                            f"{type(exc).__name__}: {exc}"]
                out_of_memory_at = bs
                skipped.append(Skipped(kind, precision, f"out of memory: {str(exc).splitlines()[0]}", render_size, bs,
                                       out_of_memory=True))
                continue
            rates.append(NetworkRate(engine.name, engine.precision, render_size, shape, bs, n, times))
    return rates, skipped, []


def bench_networks(
    model: str, configurations: Sequence[tuple[str, str]], device: str, render_sizes: Sequence[int],
    batch_sizes: Sequence[int], frames: int, warmup: int, repeats: int,
) -> tuple[list[dict[str, Any]], list[NetworkRate], list[Skipped], list[str]]:
    """Every (kind, precision) in turn, one engine alive at a time so each has the whole GPU memory.
    -> (engine rows, rates, skipped, failed)."""
    engine_rows: list[dict[str, Any]] = []
    rates: list[NetworkRate] = []
    skipped: list[Skipped] = []
    failed: list[str] = []
    for kind, precision in configurations:
        if kind not in KINDS:
            reason = f"engine kind {kind!r} is not in models.engines (available: {', '.join(KINDS[1:])})"
            skipped.append(Skipped(kind, precision, reason))
            continue
        try:
            # TensorRT builds its optimisation profiles for exactly these shapes; the others ignore them.
            engine = create_engine(model=model, kind=kind, device=device, precision=precision,
                                   cache_dir=onnx_cache_dir(), render_sizes=render_sizes, max_batch=max(batch_sizes))
        except (EngineUnavailableError, ImportError, OSError) as exc:  # OSError: a runtime's shared library
            log.warning("skipping %s %s: %s", kind, precision, exc)
            skipped.append(Skipped(kind, precision, str(exc) or type(exc).__name__))
            continue
        except Exception as exc:  # noqa: BLE001 - e.g. a TensorRT build that fails: the other engines still run
            log.exception("%s %s could not be created", kind, precision)
            failed.append(f"{kind} {precision}: {type(exc).__name__}: {exc}")
            continue
        with engine:
            engine_rows.append({"requested": f"{kind}:{precision}", "engine": engine.name, "device": engine.device,
                                "precision": engine.precision, "model": engine.checkpoint.label})
            more_rates, more_skipped, more_failed = bench_engine_sizes(
                engine, (kind, precision), render_sizes, batch_sizes, frames, warmup, repeats)
        rates += more_rates
        skipped += more_skipped
        failed += more_failed
    return engine_rows, rates, skipped, failed


# --- film ------------------------------------------------------------------------------------------


def bench_film(
    model: str, device: str, size: tuple[int, int], seconds: float, batch_size: int | None, render_size: int,
    encode: EncodeOptions, smoothing: SmoothingOptions,
) -> FilmRate:
    """A generated film end to end with the engine a worker would use here, and its decode+encode floor."""
    with open_colorizer(model, device=device, render_size=render_size, batch_size=batch_size,
                        cache_dir=onnx_cache_dir()) as (colorizer, label):
        engine = colorizer.engine
        batch_size = colorizer.batch_size
        log.info("film %dx%d on %s %s %s, batch %d", *size, engine.name, engine.precision, engine.device, batch_size)
        rates = bench_size(colorizer, label, size[0], size[1], seconds, encode, smoothing)
    return FilmRate(rates.size, rates.frames, engine.name, engine.precision, batch_size, colorizer.render_size,
                    rates.end_to_end_fps, rates.floor_fps, rates.stages)


# --- command line ----------------------------------------------------------------------------------


def engine_configurations(text: str) -> list[tuple[str, str]]:
    """``torch:fp32,tensorrt:fp16`` -> [(kind, precision)]; a kind without a precision means ``auto``. Kinds
    are not checked here (one may not be registered yet, see ``bench_networks``); precisions are."""
    pairs = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        kind, _, precision = item.partition(":")
        precision = precision or "auto"
        if precision not in PRECISIONS:
            raise argparse.ArgumentTypeError(f"unknown precision {precision!r} in {item!r}; "
                                             f"valid: {', '.join(PRECISIONS)}")
        pairs.append((kind, precision))
    return pairs


def film_size(text: str) -> tuple[int, int] | None:
    """``1920x1080`` -> (1920, 1080); empty: no film."""
    return frame_size(text) if text.strip() else None


def add_gpu_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("GPU (--gpu; also takes --model, --device, --warmup, --repeats, and for the film "
                                      "--render-size and the video options --seconds, --codec, --preset, --crf, "
                                      "--smoothing)")
    group.add_argument("--gpu", action="store_true",
                       help="network frames/s per engine, batch and render size, and a 1080p film against its floor "
                            "(on CUDA unless --device cpu)")
    group.add_argument("--gpu-engines", type=engine_configurations,
                       default=engine_configurations("torch:fp32,torch:fp16,tensorrt:fp16"),
                       help="comma-separated kind:precision pairs ('' for no network-only runs)")
    group.add_argument("--gpu-batch-sizes", type=positive_ints, default=[1, 2, 4, 8, 16, 32, 64],
                       help="comma-separated batch sizes for the network-only runs")
    group.add_argument("--gpu-render-sizes", type=positive_ints, default=[256, 384, 512],
                       help="comma-separated render sizes (long side of the frame the network sees)")
    group.add_argument("--gpu-frames", type=int, default=256, help="frames per timed network-only run")
    group.add_argument("--gpu-film-size", type=film_size, default=(1920, 1080),
                       help="WIDTHxHEIGHT of the generated film ('' for no film)")
    group.add_argument("--gpu-film-batch", type=int, default=None,
                       help=f"frames per infer in the film run (default: as many as fit in GPU memory on CUDA, "
                            f"{FILM_BATCH['cpu']} on CPU)")


def gpu_device(requested: str) -> str:
    """``--gpu`` means CUDA unless ``--device cpu`` says otherwise; CUDA without a GPU raises GpuUnavailable."""
    if requested == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise GpuUnavailable(NO_GPU_MESSAGE)
    return "cuda"


def run_gpu_bench(args: argparse.Namespace) -> GpuBenchResult:
    """Everything ``--gpu`` measures, from parsed ``tools.bench`` arguments (see the module doc)."""
    device = gpu_device(args.device)
    film_batch = args.gpu_film_batch or FILM_BATCH[device]
    encode = EncodeOptions(codec=args.codec, crf=args.crf, preset=args.preset)
    smoothing = SmoothingOptions(strength=args.smoothing)
    engine_rows, rates, skipped, failed = bench_networks(
        args.model, args.gpu_engines, device, args.gpu_render_sizes, args.gpu_batch_sizes, args.gpu_frames,
        args.warmup, args.repeats)
    film = None
    if args.gpu_film_size:
        try:
            film = bench_film(args.model, device, args.gpu_film_size, args.seconds, film_batch, args.render_size,
                              encode, smoothing)
        except Exception as exc:  # noqa: BLE001 - keep the network figures, which took most of the time
            log.exception("film failed")
            failed.append(f"film: {type(exc).__name__}: {exc}")
    config = {
        "model": args.model,
        "device": device,
        "engines": [f"{kind}:{precision}" for kind, precision in args.gpu_engines],
        "batch_sizes": sorted(args.gpu_batch_sizes),
        "render_sizes": list(args.gpu_render_sizes),
        "network_frame": list(FILM_FRAME),
        "frames": args.gpu_frames,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "film_size": "x".join(map(str, args.gpu_film_size)) if args.gpu_film_size else None,
        "film_seconds": args.seconds,
        "film_batch": film.batch_size if film else film_batch,
        "film_render_size": args.render_size,
        "encode": encode.describe(),
        "smoothing": smoothing.strength,
    }
    return GpuBenchResult(gpu_system_info(), config, engine_rows, rates, skipped, failed, film)


def print_and_save_gpu(result: GpuBenchResult, json_path: str | None) -> None:
    print(result.table())
    if json_path:
        write_json(json_path, result.to_json())
