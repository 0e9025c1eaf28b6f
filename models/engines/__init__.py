"""Inference backends behind one lifecycle, and the one factory that picks and builds them.

    from models.engines import create_engine
    with create_engine("default") as engine:        # or a .pt checkpoint, or a .onnx export
        ab = engine.infer(L)                        # (B, 1, H, W) float32 -> (B, 2, h, w) float32

One file per backend; ``create_engine`` is the only place that knows them all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from models.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint
from models.engines.base import (
    DEVICES,
    PRECISIONS,
    Engine,
    EngineClosedError,
    EngineUnavailableError,
    check_choice,
)
from models.engines.onnxruntime_engine import OnnxRuntimeEngine
from models.engines.tensorrt_engine import TensorRTEngine, import_tensorrt
from models.engines.torch_engine import TorchEngine
from models.predictor import DecodeOptions

log = logging.getLogger(__name__)

__all__ = [
    "DEVICES",
    "ENGINES",
    "KINDS",
    "PRECISIONS",
    "Engine",
    "EngineClosedError",
    "EngineUnavailableError",
    "OnnxRuntimeEngine",
    "TensorRTEngine",
    "TorchEngine",
    "create_engine",
    "list_engines",
]

ENGINES: dict[str, type[Engine]] = {"onnxruntime": OnnxRuntimeEngine, "tensorrt": TensorRTEngine, "torch": TorchEngine}
KINDS = ("auto", *ENGINES)

# What kind="auto" runs on a CPU: ONNX Runtime, faster by 2x or more. Measured for the default-size
# effnet_unet (create_model("effnet_unet", pretrained=False)) at render size 256x256, batch 8, one process
# per engine, on a 2-core AMD EPYC (Zen 4, AVX512-BF16) shared with other jobs (medians of 6 runs, over
# 3 rounds): ONNX Runtime fp32 30-65 ms/image (best 27), PyTorch bf16 100-290 (best 62), PyTorch fp32
# 145-380 (best 72). Eager PyTorch runs BatchNorm and ReLU6 as separate kernels (~20 % of its time);
# ONNX Runtime folds them into the convolutions.
CPU_DEFAULT_KIND = "onnxruntime"


def list_engines() -> list[str]:
    """The backend names ``create_engine(kind=...)`` accepts (besides ``"auto"``)."""
    return sorted(ENGINES)


def create_engine(
    model: str | os.PathLike = "default",
    kind: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    decode: DecodeOptions | None = None,
    cache_dir: str | os.PathLike | None = None,
    render_sizes: Sequence[int] | None = None,
    max_batch: int | None = None,
) -> Engine:
    """Build an engine for ``model``: ``"default"`` (the shipped checkpoint), a ``.pt`` checkpoint or a
    ``.onnx`` export. Names in a model store are resolved to a local path by the caller
    (``worker.model_store.resolve_model``): ``models`` never reaches for storage.

    ``kind="auto"`` picks ONNX Runtime for a ``.onnx`` file. For a checkpoint on CUDA it picks TensorRT
    (fp16) where TensorRT is installed, falling back to PyTorch with a warning if it fails, and
    PyTorch (fp16, CUDA graphs) otherwise; on CPU ``CPU_DEFAULT_KIND``, unless a reduced ``precision`` is
    asked for, which only PyTorch has there. ``device="auto"`` means CUDA when PyTorch sees a GPU.
    ``render_sizes`` and ``max_batch`` are the shapes the engine must serve: TensorRT builds its
    optimisation profiles for them (default: the model's render size, batch 64); the other backends take
    any shape and ignore them. ``cache_dir`` is the ONNX export cache (TensorRT plans go in its
    ``tensorrt/``). Unknown choices raise ValueError naming the valid ones; choices this machine cannot
    honour raise EngineUnavailableError (a ValueError).
    """
    check_choice("engine kind", kind, KINDS)
    check_choice("device", device, DEVICES)
    check_choice("precision", precision, PRECISIONS)
    is_onnx = str(model) != "default" and Path(model).suffix.lower() == ".onnx"
    if is_onnx:
        if kind in ("torch", "tensorrt"):
            raise ValueError(f"{model}: the {kind} engine needs a .pt checkpoint, not an ONNX file")
        if not Path(model).is_file():
            raise ValueError(f"{model}: no such ONNX file")
        return OnnxRuntimeEngine(model, device=device, precision=precision, decode=decode)
    checkpoint: Checkpoint = load_checkpoint(resolve_checkpoint(model))

    def tensorrt_engine() -> TensorRTEngine:
        return TensorRTEngine(checkpoint, device=device, precision=precision, decode=decode, cache_dir=cache_dir,
                              render_sizes=render_sizes, max_batch=max_batch)

    if kind == "auto":
        on_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if on_cuda and precision in ("auto", "fp16", "fp32") and _tensorrt_installed():
            try:
                return tensorrt_engine()
            except Exception as exc:  # noqa: BLE001 - "auto" means the best engine that works; kind="tensorrt" raises
                log.warning("TensorRT could not run %s (%s: %s); using the PyTorch CUDA engine", checkpoint.label,
                            type(exc).__name__, exc)
        if on_cuda or precision in ("bf16", "fp16"):
            kind = "torch"
        else:
            kind = CPU_DEFAULT_KIND
    if kind == "onnxruntime":  # the export of a checkpoint is cached in cache_dir (default: ~/.cache/tinct/onnx)
        return OnnxRuntimeEngine(checkpoint, device=device, precision=precision, decode=decode, cache_dir=cache_dir)
    if kind == "tensorrt":
        return tensorrt_engine()
    return ENGINES[kind](checkpoint, device=device, precision=precision, decode=decode)


def _tensorrt_installed() -> bool:
    try:
        import_tensorrt()
    except EngineUnavailableError:
        return False
    return True
