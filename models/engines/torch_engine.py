"""PyTorch backend: the checkpoint's predictor in eager mode, fp32, bf16 (CPU or GPU) or fp16 (GPU).

On CUDA it is the fast path for GPU nodes without TensorRT:

* fp16 by default (autocast; bf16 on request), channels_last, cuDNN autotuning for the few shapes a
  worker sees (a film is one shape);
* inputs go through pinned buffers on a copy stream that overlaps the previous batch's compute
  (``models.engines.cuda_io``), and ``infer_tensor`` leaves ab on the GPU for the colorizer;
* CUDA graphs: once an input shape has been seen ``GRAPH_AFTER_CALLS`` times (every batch of a film; photos
  of one size), the forward pass is captured and then replayed as one launch. At small batches the GPU
  otherwise idles between a hundred small kernel launches (measured on an H100 before graphs: 176 img/s at
  batch 1 against 4,900 at batch 64). Shapes seen once or twice (photos of assorted sizes) run eagerly,
  because a capture costs a few forward passes and a pool of GPU memory.

``torch.compile`` is not used: it recompiles for every new input shape (minutes per shape on the
first call, a cache that is hard to ship), while graphs plus cuDNN give the launch savings without that.

Low precision covers the network only: its output is cast back to float32 before the ab decoding
(softmax and expectation over the ab bins), because bf16's 8-bit mantissa would cost up to half an
ab unit in the expectation (110 * 2^-8), and the decoding is a small share of the time. Thread counts
are left to the caller (``torch.set_num_threads``): a worker process decides how many cores an engine
may use.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, OrderedDict

import numpy as np
import torch
from torch import nn

from models.checkpoint import Checkpoint, load_checkpoint
from models.engines.base import PRECISIONS, Engine, EngineUnavailableError, check_choice
from models.engines.cuda_io import PinnedUploader
from models.predictor import NETWORK_DTYPES, ABPredictor, DecodeOptions

log = logging.getLogger(__name__)

# A shape is captured as a CUDA graph on its third call: a film's batches repeat one shape from the second
# batch on, a stream of photos of assorted sizes rarely does.
GRAPH_AFTER_CALLS = 3
# Captured graphs kept (each holds a private pool of activation memory); the least recently used goes.
GRAPH_SHAPES = 4
_SHAPES_COUNTED = 256  # distinct shapes whose calls are counted before the count starts over
_GRAPH_WARMUP_RUNS = 2  # eager runs on a side stream before capture, as CUDA graph capture requires


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
        # No weight-cast cache: its cached tensors would outlive a CUDA graph capture (and an inference engine
        # has nothing to gain from it: the weights never change between calls).
        with torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=False):
            out = self.network(L)
        return out.float()


class _CapturedForward:
    """One input shape's forward pass as a CUDA graph: static input and output tensors, replayed."""

    def __init__(self, predictor: nn.Module, shape: tuple[int, ...], device: torch.device,
                 memory_format: torch.memory_format) -> None:
        self.input = torch.zeros(shape, device=device).contiguous(memory_format=memory_format)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up (cuDNN autotuning, lazy allocations) off the capture
            for _ in range(_GRAPH_WARMUP_RUNS):
                predictor(self.input)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the film pipeline's colour stage keeps using the GPU from its own thread while a batch is
        # captured; the default ("global") mode would make that thread's synchronising calls fail mid-capture.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.output = predictor(self.input)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        self.input.copy_(x)
        self.graph.replay()
        return self.output.clone()  # the next replay overwrites the static output


class TorchEngine(Engine):
    """PyTorch inference. ``channels_last`` is used whenever precision is reduced or on CUDA,
    where oneDNN's bf16 and cuDNN's fp16 convolutions are fastest in that layout. ``cuda_graphs=False``
    turns graph capture off (see the module docstring)."""

    name = "torch"

    def __init__(
        self,
        checkpoint: str | os.PathLike | Checkpoint,
        device: str = "auto",
        precision: str = "auto",
        decode: DecodeOptions | None = None,
        cuda_graphs: bool = True,
    ) -> None:
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        device = resolve_torch_device(device)
        precision = resolve_torch_precision(precision, device)
        predictor: ABPredictor = ckpt.build_predictor(decode)
        network = predictor.model
        if precision != "fp32":
            predictor.model = _Autocast(network, device, NETWORK_DTYPES[precision])
        self._channels_last = device == "cuda" or precision != "fp32"
        predictor = predictor.to(device)
        if self._channels_last:
            predictor = predictor.to(memory_format=torch.channels_last)
        self._predictor: ABPredictor | None = predictor.eval().requires_grad_(False)
        self._device = torch.device(device)
        self._memory_format = torch.channels_last if self._channels_last else torch.contiguous_format
        on_cuda = self._device.type == "cuda"
        self._uploader = PinnedUploader(self._device) if on_cuda else None
        self.cuda_graphs = bool(cuda_graphs) and on_cuda
        self._calls_per_shape: Counter[tuple[int, ...]] = Counter()
        self._graphs: OrderedDict[tuple[int, ...], _CapturedForward] = OrderedDict()
        if on_cuda:
            # A worker sees few input shapes (one per film), so cuDNN's per-shape algorithm search pays off.
            torch.backends.cudnn.benchmark = True
        super().__init__(ckpt, device, precision, network.stride, network.output_stride, predictor.decode)

    @property
    def captured_shapes(self) -> list[tuple[int, ...]]:
        """Input shapes currently replayed as CUDA graphs (least recently used first)."""
        return list(self._graphs)

    @torch.inference_mode()
    def _infer(self, L: np.ndarray) -> torch.Tensor:
        assert self._predictor is not None  # guarded by Engine.infer's closed check
        if self._uploader is not None:
            x = self._uploader.upload(L, self._memory_format)
        else:
            # torch.from_numpy warns on read-only arrays (decoded frames often are); those are copied.
            x = torch.from_numpy(L) if L.flags.writeable else torch.tensor(L)
            x = x.contiguous(memory_format=self._memory_format)
        graph = self._graph_for(tuple(L.shape)) if self.cuda_graphs else None
        ab = graph.run(x) if graph is not None else self._predictor(x)
        return ab.float()

    def _graph_for(self, shape: tuple[int, ...]) -> _CapturedForward | None:
        """The captured graph for ``shape``, capturing it on its GRAPH_AFTER_CALLS-th call; None to run eagerly."""
        graph = self._graphs.get(shape)
        if graph is not None:
            self._graphs.move_to_end(shape)
            return graph
        if len(self._calls_per_shape) > _SHAPES_COUNTED:  # a long run of photos of assorted sizes
            self._calls_per_shape.clear()
        self._calls_per_shape[shape] += 1
        if self._calls_per_shape[shape] < GRAPH_AFTER_CALLS:
            return None
        assert self._predictor is not None
        try:
            graph = _CapturedForward(self._predictor, shape, self._device, self._memory_format)
        except RuntimeError as exc:  # an op that cannot be captured: keep going eagerly, and say so once
            log.warning("CUDA graph capture failed for input %s (%s); running %s eagerly from now on",
                        shape, exc, self.checkpoint.label)
            self.cuda_graphs = False
            return None
        self._graphs[shape] = graph
        while len(self._graphs) > GRAPH_SHAPES:
            self._graphs.popitem(last=False)
        return graph

    def _release(self) -> None:
        self._predictor = None
        self._graphs.clear()
        if self._uploader is not None:
            self._uploader.close()
            self._uploader = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
