"""TensorRT backend: a checkpoint's ONNX export built into a TensorRT engine for this GPU, cached.

    engine = TensorRTEngine("default", render_sizes=(256,), max_batch=64)   # builds once, then loads
    ab = engine.infer(L)

Building (``build_plan``, also ``python -m tools build-engine``):

* The graph is the checkpoint's export (``models.onnx_export``) at the engine's precision: for fp16 the
  network's weights and layers are fp16 in the ONNX graph itself and the ab decoding stays float32. The
  network is built *strongly typed*, so TensorRT keeps exactly those types. That is the only way to ask
  TensorRT 11 for reduced precision (its builder flags FP16/BF16 are gone), and on TensorRT 10 it keeps
  the decoding's softmax and expectation out of fp16. bf16 is not offered: see
  ``models.onnx_export.EXPORT_PRECISIONS``.
* One optimisation profile per render size in use: batch 1..``max_batch``, height and width from one
  stride block up to the render size (the colorizer never renders larger), tuned for a 16:9 film frame at
  ``opt_batch``. A batch is run with the smallest profile that holds it.
* A timing cache per GPU model and TensorRT version is loaded before and saved after every build, so a
  rebuild (another model, another render size) re-times only layers it has not seen.

The engine cache (``<cache_dir>/tensorrt/``) keys a plan by the ONNX graph's sha256 (the checkpoint,
decoding and precision), the GPU model and compute capability, the TensorRT version and this module's
``PLAN_FORMAT``; a ``.json`` beside each plan records that key and the profiles. A plan whose key does not
match exactly, that TensorRT refuses to load, or whose profiles do not cover the render sizes and batch
asked for, is rebuilt (with the union of the old and new render sizes, so alternating requests do not
rebuild forever) and never used. Files appear atomically; the record is written after the plan.

TensorRT is an optional extra (``pip install '.[gpu]'``) and is imported only when this engine is built,
so CPU machines never need it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import Checkpoint, load_checkpoint, preferred_render_size
from models.engines.base import PRECISIONS, Engine, EngineUnavailableError, check_choice
from models.engines.cuda_io import PinnedUploader
from models.files import atomic_output
from models.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    OnnxMetadata,
    default_cache_dir,
    ensure_onnx,
    read_onnx_metadata,
)
from models.predictor import DecodeOptions

log = logging.getLogger(__name__)

TENSORRT_PRECISIONS = ("fp16", "fp32")
DEFAULT_MAX_BATCH = 64
# Bumped when what build_plan produces changes meaning (profiles, typing): older plans are rebuilt.
PLAN_FORMAT = 1
# Scratch memory the builder may give a layer's tactics; TensorRT takes less when it can.
WORKSPACE_BYTES = 4 << 30
FILM_ASPECT = 16 / 9  # what the optimisation profiles are tuned for: film frames at the render size
INSTALL_HINT = "pip install '.[gpu]' on a machine with an NVIDIA GPU (TensorRT 10 or 11 for CUDA 12/13)"


class TensorRTBuildError(RuntimeError):
    """TensorRT could not parse or build the model; the message carries TensorRT's own reasons."""


# --- optimisation profiles (pure: tested without TensorRT) ------------------------------------------


@dataclass(frozen=True)
class Profile:
    """The L shapes one optimisation profile serves: ``(batch, 1, height, width)`` from ``min_shape`` to
    ``max_shape``, tuned for ``opt_shape``."""

    render_size: int
    min_shape: tuple[int, int, int, int]
    opt_shape: tuple[int, int, int, int]
    max_shape: tuple[int, int, int, int]

    def covers(self, shape: Sequence[int]) -> bool:
        return len(shape) == 4 and all(
            low <= n <= high for low, n, high in zip(self.min_shape, shape, self.max_shape, strict=True)
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        return cls(int(data["render_size"]), *(tuple(int(n) for n in data[k]) for k in
                                               ("min_shape", "opt_shape", "max_shape")))  # type: ignore[arg-type]


def _blocks(pixels: float, stride: int) -> int:
    """``pixels`` rounded up to whole stride blocks, at least one."""
    return max(stride, math.ceil(pixels / stride) * stride)


def plan_profiles(render_sizes: Sequence[int], stride: int, max_batch: int,
                  opt_batch: int | None = None) -> list[Profile]:
    """One profile per distinct render size, smallest first (see the module docstring)."""
    if not render_sizes:
        raise ValueError("at least one render size is needed to build a TensorRT engine")
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    opt_batch = min(max_batch, opt_batch or max_batch)
    profiles = []
    for size in sorted(set(int(s) for s in render_sizes)):
        if size < stride:
            raise ValueError(f"render size {size} is smaller than the model stride {stride}")
        side = _blocks(size, stride)
        film_height = _blocks(size / FILM_ASPECT, stride)
        profiles.append(Profile(
            render_size=size,
            min_shape=(1, 1, stride, stride),
            opt_shape=(opt_batch, 1, film_height, side),
            max_shape=(max_batch, 1, side, side),
        ))
    return profiles


def pick_profile(profiles: Sequence[Profile], shape: Sequence[int]) -> int | None:
    """Index of the smallest profile that holds ``shape`` (the tightest tuning), or None."""
    fitting = [i for i, p in enumerate(profiles) if p.covers(shape)]
    return min(fitting, key=lambda i: (profiles[i].render_size, profiles[i].max_shape[0])) if fitting else None


# --- the engine cache (pure: tested without TensorRT) -----------------------------------------------


@dataclass(frozen=True)
class PlanKey:
    """Everything a built plan depends on; a cached plan is used only when all of it matches."""

    onnx_sha256: str  # the exported graph: checkpoint weights, decoding, precision
    precision: str
    gpu: str  # torch.cuda.get_device_name()
    compute_capability: str  # "9.0"
    tensorrt: str  # tensorrt.__version__
    plan_format: int = PLAN_FORMAT

    def file_stem(self) -> str:
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-")
        return (f"{self.onnx_sha256[:16]}-{self.precision}-{gpu}-sm{self.compute_capability.replace('.', '')}"
                f"-trt{self.tensorrt}")

    def timing_cache_name(self) -> str:
        """Timing caches hold per-layer timings of one GPU model and TensorRT version, whatever the model."""
        return self.file_stem().split("-", 2)[2] + ".timing"


def plan_record(key: PlanKey, profiles: Sequence[Profile], build_seconds: float) -> dict[str, Any]:
    """What the ``.json`` beside a plan says about it."""
    return {"key": asdict(key), "profiles": [asdict(p) for p in profiles], "build_seconds": round(build_seconds, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def stale_reason(record: dict[str, Any] | None, key: PlanKey, render_sizes: Sequence[int],
                 max_batch: int) -> str | None:
    """Why the plan with this ``record`` cannot serve (``key``, ``render_sizes``, ``max_batch``), or None if it can."""
    if record is None:
        return "no engine built yet"
    recorded = record.get("key")
    if recorded != asdict(key):
        changed = sorted(k for k, v in asdict(key).items() if not isinstance(recorded, dict) or recorded.get(k) != v)
        return f"built for another {', '.join(changed)}"
    try:
        profiles = [Profile.from_dict(p) for p in record["profiles"]]
    except (KeyError, TypeError, ValueError):
        return "its record is unreadable"
    built_sizes = {p.render_size for p in profiles}
    missing = sorted(set(int(s) for s in render_sizes) - built_sizes)
    if missing:
        return f"no profile for render size {', '.join(map(str, missing))}"
    if min(p.max_shape[0] for p in profiles if p.render_size in set(render_sizes)) < max_batch:
        return f"built for smaller batches than {max_batch}"
    return None


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def engine_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """Plans live in ``tensorrt/`` inside the ONNX cache they are built from (``TINCT_CACHE_DIR``/onnx)."""
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "tensorrt"


# --- TensorRT itself ---------------------------------------------------------------------------------


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or EngineUnavailableError saying how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineUnavailableError(f"TensorRT is not installed ({exc}); {INSTALL_HINT}") from None
    return tensorrt


def require_tensorrt_gpu() -> Any:
    """The ``tensorrt`` module when TensorRT and a CUDA GPU are both here; else EngineUnavailableError saying which
    is missing. Checked before any export, so a machine without them fails in a second, not after a minute."""
    trt = import_tensorrt()
    if not torch.cuda.is_available():
        raise EngineUnavailableError("TensorRT needs a CUDA GPU, and PyTorch sees none")
    return trt


def current_plan_key(onnx_path: Path, precision: str) -> PlanKey:
    """The key a plan built now, on this GPU, from ``onnx_path`` would have."""
    trt = require_tensorrt_gpu()
    major, minor = torch.cuda.get_device_capability()
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    return PlanKey(digest, precision, torch.cuda.get_device_name(), f"{major}.{minor}", trt.__version__)


def tensorrt_logger(trt: Any) -> Any:
    """A TensorRT logger that forwards to ``logging`` (defined here, not at import: its base class is TensorRT's)."""
    severity = trt.ILogger.Severity
    levels = {severity.INTERNAL_ERROR: logging.ERROR, severity.ERROR: logging.ERROR, severity.WARNING: logging.WARNING,
              severity.INFO: logging.DEBUG, severity.VERBOSE: logging.DEBUG}

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, level: Any, msg: str) -> None:
            log.log(levels.get(level, logging.INFO), "TensorRT: %s", msg)

    return Logger()


def build_plan(onnx_path: Path, plan_path: Path, key: PlanKey, profiles: Sequence[Profile],
               timing_cache_path: Path | None = None, workspace_bytes: int = WORKSPACE_BYTES) -> dict[str, Any]:
    """Build a serialized TensorRT engine from ``onnx_path`` with ``profiles`` and write it (and its record) atomically.

    Returns the record. Raises TensorRTBuildError with the parser's or builder's messages when it fails.
    """
    trt = import_tensorrt()
    logger = tensorrt_logger(trt)
    began = time.perf_counter()
    builder = trt.Builder(logger)
    # Strongly typed: the precision is the graph's own (see the module docstring). On TensorRT 11 this is the
    # only mode and the flag is accepted and ignored.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"{onnx_path}: TensorRT could not parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for profile in profiles:
        optimisation = builder.create_optimization_profile()
        optimisation.set_shape(INPUT_NAME, profile.min_shape, profile.opt_shape, profile.max_shape)
        config.add_optimization_profile(optimisation)
    timings = timing_cache_path.read_bytes() if timing_cache_path and timing_cache_path.is_file() else b""
    timing_cache = config.create_timing_cache(timings)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    log.info("building TensorRT %s engine from %s for render sizes %s (batch up to %d); this takes minutes",
             key.precision, onnx_path.name, [p.render_size for p in profiles], profiles[0].max_shape[0])
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log lines above)")
    with atomic_output(plan_path) as f:
        f.write(memoryview(serialized))
    if timing_cache_path is not None:
        with atomic_output(timing_cache_path) as f:
            f.write(memoryview(config.get_timing_cache().serialize()))
    record = plan_record(key, profiles, time.perf_counter() - began)
    with atomic_output(plan_path.with_suffix(".json")) as f:
        f.write((json.dumps(record, indent=2) + "\n").encode())
    log.info("built %s in %.0f s", plan_path, record["build_seconds"])
    return record


def ensure_plan(checkpoint: Checkpoint, decode: DecodeOptions | None, precision: str, render_sizes: Sequence[int],
                max_batch: int, cache_dir: str | os.PathLike | None = None, rebuild: bool = False,
                ) -> tuple[Path, dict[str, Any], OnnxMetadata]:
    """A cached plan for the checkpoint that serves ``render_sizes`` up to ``max_batch``, built first when there is
    none or it is stale (see the module docstring). Returns the plan's path, its record and what the ONNX graph it
    was built from says about itself (strides, decoding)."""
    require_tensorrt_gpu()
    onnx_path = ensure_onnx(checkpoint, decode, cache_dir, precision=precision)
    meta = read_onnx_metadata(onnx_path)
    key = current_plan_key(onnx_path, precision)
    folder = engine_cache_dir(cache_dir)
    plan_path = folder / f"{key.file_stem()}.plan"
    record = read_record(plan_path.with_suffix(".json")) if plan_path.is_file() else None
    reason = "a rebuild was asked for" if rebuild else stale_reason(record, key, render_sizes, max_batch)
    if reason is None:
        assert record is not None
        return plan_path, record, meta
    sizes, batch = set(render_sizes), max_batch
    if record is not None and record.get("key") == asdict(key):  # same engine, more shapes: keep the old ones too
        try:
            old = [Profile.from_dict(p) for p in record.get("profiles", [])]
        except (KeyError, TypeError, ValueError):
            old = []
        sizes |= {p.render_size for p in old}
        batch = max([batch, *(p.max_shape[0] for p in old)])
    log.info("TensorRT engine %s: %s; building it", plan_path.name, reason)
    profiles = plan_profiles(sorted(sizes), meta.stride, batch)
    record = build_plan(onnx_path, plan_path, key, profiles, folder / key.timing_cache_name())
    return plan_path, record, meta


class TensorRTEngine(Engine):
    """A cached TensorRT plan of the checkpoint, run on the current CUDA device (see the module docstring).

    ``render_sizes`` are the render sizes the engine must serve (default: the model's own, as the colorizer
    uses it) and ``max_batch`` the largest batch; a batch outside every profile is a ValueError naming the
    shapes the engine was built for. ``rebuild`` builds the plan even when a current one is cached.
    """

    name = "tensorrt"

    def __init__(
        self,
        checkpoint: str | os.PathLike | Checkpoint,
        device: str = "auto",
        precision: str = "auto",
        decode: DecodeOptions | None = None,
        cache_dir: str | os.PathLike | None = None,
        render_sizes: Sequence[int] | None = None,
        max_batch: int | None = None,
        rebuild: bool = False,
    ) -> None:
        check_choice("device", device, ("auto", "cpu", "cuda"))
        check_choice("precision", precision, PRECISIONS)
        if device == "cpu":
            raise EngineUnavailableError("TensorRT runs on NVIDIA GPUs only; on CPU use kind='onnxruntime' or 'torch'")
        precision = "fp16" if precision == "auto" else precision
        if precision not in TENSORRT_PRECISIONS:
            raise EngineUnavailableError(
                f"TensorRT engines are built in {' or '.join(TENSORRT_PRECISIONS)}, not {precision} "
                "(see models.onnx_export.EXPORT_PRECISIONS for why not bf16)"
            )
        trt = require_tensorrt_gpu()
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        render_sizes = tuple(render_sizes or (preferred_render_size(ckpt.provenance),))
        max_batch = int(max_batch or DEFAULT_MAX_BATCH)
        plan_path, record, meta = ensure_plan(ckpt, decode, precision, render_sizes, max_batch, cache_dir, rebuild)
        self._logger = tensorrt_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if engine is None:  # written by another TensorRT build or damaged: never trusted, rebuilt
            log.warning("TensorRT could not load %s; rebuilding it", plan_path)
            plan_path, record, meta = ensure_plan(ckpt, decode, precision, render_sizes, max_batch, cache_dir,
                                                  rebuild=True)
            engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
            if engine is None:
                raise TensorRTBuildError(f"{plan_path}: TensorRT cannot load the engine it has just built")
        self._engine = engine
        self._context = engine.create_execution_context()
        self.profiles = [Profile.from_dict(p) for p in record["profiles"]]
        self.plan_path = plan_path
        self.plan_record = record  # the key it was built for, when, and how long it took
        self._profile_index: int | None = None
        self._device = torch.device("cuda", torch.cuda.current_device())
        self._uploader: PinnedUploader | None = PinnedUploader(self._device)
        super().__init__(ckpt, "cuda", precision, meta.stride, meta.output_stride, meta.decode)
        self.max_batch = max(p.max_shape[0] for p in self.profiles)

    def _infer(self, L: np.ndarray) -> torch.Tensor:
        assert self._uploader is not None  # guarded by Engine.infer's closed check
        index = pick_profile(self.profiles, L.shape)
        if index is None:
            built = ", ".join(f"render {p.render_size} (up to {p.max_shape[0]}x{p.max_shape[2]}x{p.max_shape[3]})"
                              for p in self.profiles)
            raise ValueError(
                f"tensorrt engine: input {tuple(L.shape)} is outside the engine's optimisation profiles ({built}); "
                "build one for it with python -m tools build-engine --render-sizes ... --max-batch ..."
            )
        stream = torch.cuda.current_stream(self._device)
        if index != self._profile_index:
            self._context.set_optimization_profile_async(index, stream.cuda_stream)
            self._profile_index = index
        x = self._uploader.upload(L)
        ab = torch.empty(self.output_shape(L.shape[0], L.shape[2], L.shape[3]), dtype=torch.float32,
                         device=self._device)
        if not self._context.set_input_shape(INPUT_NAME, tuple(L.shape)):
            raise RuntimeError(f"TensorRT refused input shape {tuple(L.shape)} for {self.plan_path.name}")
        self._context.set_tensor_address(INPUT_NAME, x.data_ptr())
        self._context.set_tensor_address(OUTPUT_NAME, ab.data_ptr())
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {self.plan_path.name} on input {tuple(L.shape)}")
        return ab

    def _release(self) -> None:
        if self._uploader is not None:
            self._uploader.close()
            self._uploader = None
        self._context = None
        self._engine = None
        torch.cuda.empty_cache()
