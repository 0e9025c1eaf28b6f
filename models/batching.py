"""How many images to give an engine per call when the caller does not say: ``Colorizer(batch_size=None)``.

On a CPU the batch hardly matters for speed (the cores are busy from batch 1), so it is
``DEFAULT_BATCH_SIZE``. On a GPU small batches leave it idle, so the batch is as large as free GPU memory
allows at the render size, up to ``MAX_AUTO_BATCH``:

* a TensorRT engine has its memory planned by its optimisation profiles: its largest batch is the answer;
* the PyTorch engine is measured once per process, engine and render size: the peak memory of one batch
  of 1 and one of 2 square renders gives the memory per image (activations grow linearly with the batch),
  and ``MEMORY_SHARE`` of what is free now, over that, is the batch, rounded down to a power of two.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from models.engines.base import Engine

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8
# Throughput stops growing here: on an H100 (fp16, 256x192) 4,654 img/s at batch 32 and 4,914 at 64; larger
# batches only add latency and frames held in memory.
MAX_AUTO_BATCH = 64
# Of the memory free when the model loads, what the network's activations may take: the rest is for the
# colour stage's full-resolution tiles, the allocator's fragmentation and anything else on the GPU.
MEMORY_SHARE = 0.5

_measured: dict[tuple, int] = {}  # (engine identity, render size) -> bytes per image, for this process


def batch_for_memory(free_bytes: int, per_image_bytes: int, limit: int = MAX_AUTO_BATCH,
                     share: float = MEMORY_SHARE) -> int:
    """The largest power of two at most ``limit`` whose images fit in ``share`` of ``free_bytes``; at least 1."""
    if per_image_bytes <= 0:
        return limit
    fits = int(free_bytes * share // per_image_bytes)
    batch = 1
    while batch * 2 <= min(fits, limit):
        batch *= 2
    return batch


def measure_bytes_per_image(engine: Engine, render_size: int) -> int:
    """Peak CUDA memory one more ``render_size`` square image adds to a forward pass of ``engine`` (PyTorch's
    allocator; see the module docstring)."""
    side = -(-render_size // engine.stride) * engine.stride
    peaks = []
    for batch in (1, 2):
        L = np.full((batch, 1, side, side), 50.0, dtype=np.float32)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        engine.infer(L)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - before)
    return max(peaks[1] - peaks[0], peaks[0] // 2, 1)


def pick_batch_size(engine: Engine, render_size: int) -> int:
    """The batch size for ``engine`` at ``render_size`` (see the module docstring)."""
    if engine.device != "cuda":
        return DEFAULT_BATCH_SIZE
    if engine.max_batch is not None:
        return min(engine.max_batch, MAX_AUTO_BATCH)
    key = (engine.name, engine.checkpoint.sha256, engine.precision, torch.cuda.current_device(), render_size)
    if key not in _measured:
        _measured[key] = measure_bytes_per_image(engine, render_size)
    free, _ = torch.cuda.mem_get_info()
    batch = batch_for_memory(free, _measured[key])
    log.info("batch size %d for %s at render size %d: %.0f MiB free, %.1f MiB per image", batch,
             engine.checkpoint.label, render_size, free / 2**20, _measured[key] / 2**20)
    return batch
