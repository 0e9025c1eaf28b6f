"""PyTorch backend: the checkpoint's predictor in eager mode, fp32, bf16 (CPU or GPU) or fp16 (GPU).

Low precision covers the network only: its output is cast back to float32 before the ab decoding
(softmax and expectation over the ab bins), because bf16's 8-bit mantissa would cost up to half an
ab unit in the expectation (110 * 2^-8), and the decoding is a small share of the time. Thread counts
are left to the caller (``torch.set_num_threads``): a worker process decides how many cores an engine
may use.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from models.checkpoint import Checkpoint, load_checkpoint
from models.engines.base import PRECISIONS, Engine, EngineUnavailableError, check_choice
from models.predictor import ABPredictor, DecodeOptions

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_bf16_problem() -> str | None:
    """Why bf16 would not pay off on this CPU, or None when it does.

    oneDNN runs bf16 on any AVX-512 CPU, but without native bf16 dot products (AVX512-BF16 or AMX)
    it emulates them and is slower than fp32, so "supported" alone is not enough.
    """
    if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return f"oneDNN has no bf16 kernels for this CPU (capability {torch.backends.cpu.get_cpu_capability()})"
    native = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    if not native:
        return "this CPU has no native bf16 instructions (AVX512-BF16 or AMX); bf16 would be emulated and slower"
    return None


def resolve_torch_device(device: str) -> str:
    """``auto`` -> ``cuda`` when PyTorch sees a GPU, else ``cpu``; ``cuda`` without a GPU is an error."""
    check_choice("device", device, ("auto", "cpu", "cuda"))
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineUnavailableError("device 'cuda' requested but PyTorch sees no CUDA GPU (use device='cpu')")
    return device


def resolve_torch_precision(precision: str, device: str) -> str:
    """``auto`` -> fp16 on CUDA, bf16 on CPUs with native bf16, else fp32; impossible choices raise."""
    check_choice("precision", precision, PRECISIONS)
    if device == "cuda":
        if precision == "auto":
            return "fp16"
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise EngineUnavailableError(f"{torch.cuda.get_device_name()} has no bf16 support; use fp16 or fp32")
        return precision
    if precision == "fp16":
        raise EngineUnavailableError("fp16 is a GPU precision; on CPU use fp32 or bf16")
    problem = cpu_bf16_problem()
    if precision == "auto":
        return "fp32" if problem else "bf16"
    if precision == "bf16" and problem:
        raise EngineUnavailableError(f"precision 'bf16' unavailable: {problem}; use precision='fp32'")
    return precision


class _Autocast(nn.Module):
    """Runs the wrapped network under autocast and hands ``ABPredictor`` a float32 result.

    Keeps the network's ``output``/``stride``/``output_stride`` attributes visible, since the predictor
    reads them, and keeps the ab decoding that follows outside autocast (see the module docstring).
    """

    def __init__(self, network: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.network = network
        self.device_type = device_type
        self.dtype = dtype
        self.output = network.output
        self.stride = network.stride
        self.output_stride = network.output_stride

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.network(L)
        return out.float()


class TorchEngine(Engine):
    """Eager PyTorch inference. ``channels_last`` is used whenever precision is reduced or on CUDA,
    where oneDNN's bf16 and cuDNN's fp16 convolutions are fastest in that layout."""

    name = "torch"

    def __init__(
        self,
        checkpoint: str | os.PathLike | Checkpoint,
        device: str = "auto",
        precision: str = "auto",
        decode: DecodeOptions | None = None,
    ) -> None:
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        device = resolve_torch_device(device)
        precision = resolve_torch_precision(precision, device)
        predictor: ABPredictor = ckpt.build_predictor(decode)
        network = predictor.model
        if precision != "fp32":
            predictor.model = _Autocast(network, device, _DTYPES[precision])
        self._channels_last = device == "cuda" or precision != "fp32"
        predictor = predictor.to(device)
        if self._channels_last:
            predictor = predictor.to(memory_format=torch.channels_last)
        self._predictor: ABPredictor | None = predictor.eval()
        self._device = torch.device(device)
        super().__init__(ckpt, device, precision, network.stride, network.output_stride, predictor.decode)

    @torch.inference_mode()
    def _infer(self, L: np.ndarray) -> np.ndarray:
        assert self._predictor is not None  # guarded by Engine.infer's closed check
        # torch.from_numpy warns on read-only arrays (decoded frames often are); those are copied.
        x = (torch.from_numpy(L) if L.flags.writeable else torch.tensor(L)).to(self._device)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ab = self._predictor(x)
        return np.ascontiguousarray(ab.float().cpu().numpy())

    def _release(self) -> None:
        self._predictor = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
