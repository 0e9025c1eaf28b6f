"""Host -> GPU input copies for the CUDA backends (PyTorch and TensorRT), overlapped with compute.

A batch of L arrives as a numpy array in pageable memory. Copying pageable memory to the GPU is
synchronous and goes through a driver bounce buffer; copying from page-locked ("pinned") memory is a
DMA transfer that can run while the GPU computes. So each batch is first copied (by the CPU, at memory
speed) into a pinned buffer kept per input shape, then sent on a dedicated copy stream; the compute
stream waits for that copy only, so the upload of batch n + 1 overlaps the network on batch n whenever
the caller does not wait for batch n's result in between (``Engine.infer_tensor`` does not wait).

A pinned buffer is reused only after its previous copy has finished (an event per buffer), so a fast
caller can never overwrite a batch still in flight.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

# Pinned buffers kept, one per input shape: a film uses one shape, photos of mixed sizes a few. Page-locked
# memory is taken from the OS for good, so the count is bounded.
PINNED_SHAPES = 4


class PinnedUploader:
    """Uploads float32 numpy batches to ``device`` through pinned buffers on a side stream (see the module doc)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._copy_stream = torch.cuda.Stream(device=device)
        self._buffers: OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.cuda.Event | None]] = OrderedDict()

    def upload(self, array: np.ndarray, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """``array`` as a tensor on the GPU, ready for kernels queued on the current stream after this call."""
        shape = tuple(array.shape)
        pinned, in_flight = self._buffers.pop(shape, (None, None))
        if pinned is None:
            pinned = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        elif in_flight is not None:
            in_flight.synchronize()  # the previous batch of this shape is still being copied out of it
        pinned.numpy()[...] = array  # also copies read-only arrays (decoded frames often are)
        with torch.cuda.stream(self._copy_stream):
            on_device = pinned.to(self.device, non_blocking=True).contiguous(memory_format=memory_format)
            copied = torch.cuda.Event()
            copied.record(self._copy_stream)
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(copied)
        # Allocated on the copy stream, used on the compute stream: tell the caching allocator, or it could
        # hand the memory to the next upload while the network still reads it.
        on_device.record_stream(compute)
        self._buffers[shape] = (pinned, copied)
        while len(self._buffers) > PINNED_SHAPES:
            _, (_, old_event) = self._buffers.popitem(last=False)
            if old_event is not None:
                old_event.synchronize()
        return on_device

    def close(self) -> None:
        for _, event in self._buffers.values():
            if event is not None:
                event.synchronize()
        self._buffers.clear()
