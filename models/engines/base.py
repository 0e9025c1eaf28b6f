"""What every inference backend shares: one lifecycle and one ``infer`` contract.

Construct = load once (weights, sessions, device memory); ``infer(L) -> ab`` any number of times;
``close()`` releases it (idempotent; also as a context manager). Workers create an engine per process
and let jobs borrow it, so construction may be slow but ``infer`` must not re-load anything.

``infer`` takes an L batch ``(B, 1, H, W)`` float32 in [0, 100] with H and W multiples of
``engine.stride`` and returns ab ``(B, 2, H / output_stride, W / output_stride)`` float32 in Lab
units. ``infer_tensor`` returns the same ab as a torch tensor where the engine computed it (a CUDA
tensor on a GPU engine, without waiting for the GPU), for callers that go on working on the device:
the colorizer upsamples and converts colour there, so only the finished chroma crosses the bus back.

Inputs are checked here, once, with messages that say what was expected, so that a backend never fails
deep inside a runtime with a shape error nobody can read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import ClassVar

import numpy as np
import torch

from models.checkpoint import Checkpoint
from models.predictor import DecodeOptions

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class EngineUnavailableError(ValueError):
    """The requested backend, device or precision cannot run here (no GPU, no bf16 support, fp16 on CPU).

    A ValueError because it is a bad option for this machine: permanent, retrying will not help,
    choosing another device or precision will.
    """


class EngineClosedError(RuntimeError):
    """``infer`` was called on an engine after ``close()``."""


def check_choice(what: str, value: str, choices: tuple[str, ...] | list[str]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid choices: {', '.join(choices)}")
    return value


class Engine(ABC):
    """Base of all backends. Subclasses set the attributes in ``__init__`` and implement ``_infer``/``_release``.

    Attributes:
        name: backend name (``"torch"``, ``"onnxruntime"``), as ``create_engine(kind=...)`` takes it.
        device: where the network runs (``"cpu"`` or ``"cuda"``, the current CUDA device; pick a GPU with
            ``CUDA_VISIBLE_DEVICES``, one worker process per GPU).
        precision: the arithmetic actually used (``"fp32"``, ``"bf16"``, ``"fp16"``), never ``"auto"``.
        stride: H and W given to ``infer`` must be multiples of this.
        output_stride: ab comes out at 1/output_stride of the input size.
        checkpoint: the model's ``Checkpoint``; its ``label`` and ``provenance`` go into outputs.
        decode: how classification logits are turned into ab (part of the engine's identity).
        max_batch: the largest batch ``infer`` accepts, or None for any (TensorRT's profiles set one).
    """

    name: ClassVar[str]

    def __init__(
        self,
        checkpoint: Checkpoint,
        device: str,
        precision: str,
        stride: int,
        output_stride: int,
        decode: DecodeOptions,
    ) -> None:
        self.checkpoint = checkpoint
        self.device = device
        self.precision = precision
        self.stride = int(stride)
        self.output_stride = int(output_stride)
        self.decode = decode
        self.max_batch: int | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def output_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        """The ab shape ``infer`` returns for an input of ``(batch, 1, height, width)``."""
        return batch, 2, height // self.output_stride, width // self.output_stride

    def check_input(self, L: np.ndarray) -> None:
        """Raise ValueError unless ``L`` is what ``infer`` accepts (see the module docstring)."""
        if not isinstance(L, np.ndarray):
            raise ValueError(f"{self.name} engine: L must be a numpy array, got {type(L).__name__}")
        if L.dtype != np.float32:
            raise ValueError(f"{self.name} engine: L must be float32, got {L.dtype}")
        if L.ndim != 4 or L.shape[1] != 1:
            raise ValueError(f"{self.name} engine: L must have shape (B, 1, H, W), got {L.shape}")
        batch, _, height, width = L.shape
        if batch < 1:
            raise ValueError(f"{self.name} engine: empty batch (shape {L.shape})")
        if height < self.stride or width < self.stride or height % self.stride or width % self.stride:
            raise ValueError(
                f"{self.name} engine: H and W must be positive multiples of the model stride {self.stride}, "
                f"got {height}x{width} (pad the image; models.colorizer.Colorizer does)"
            )

    def infer(self, L: np.ndarray) -> np.ndarray:
        """L ``(B, 1, H, W)`` float32 in [0, 100] -> ab ``(B, 2, H/output_stride, W/output_stride)`` float32."""
        return np.ascontiguousarray(self.infer_tensor(L).cpu().numpy())

    def infer_tensor(self, L: np.ndarray) -> torch.Tensor:
        """``infer``'s ab as a float32 torch tensor on the engine's device (see the module docstring). The
        tensor is the caller's: the engine never writes to it again."""
        if self._closed:
            raise EngineClosedError(f"{self.name} engine for {self.checkpoint.label} is closed")
        self.check_input(L)
        ab = self._infer(np.ascontiguousarray(L))
        expected = self.output_shape(*L.shape[:1], *L.shape[2:])
        if tuple(ab.shape) != expected or ab.dtype != torch.float32:
            raise RuntimeError(
                f"{self.name} engine returned ab of shape {tuple(ab.shape)} {ab.dtype}, expected {expected} float32"
            )
        return ab

    @abstractmethod
    def _infer(self, L: np.ndarray) -> torch.Tensor:
        """The backend's forward pass on an already checked, C-contiguous batch; returns float32 ab on the
        engine's device."""

    @abstractmethod
    def _release(self) -> None:
        """Free the backend's resources (sessions, modules, device memory); called once by ``close``."""

    def close(self) -> None:
        """Release the backend; further ``infer`` calls raise EngineClosedError. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<{type(self).__name__} {self.checkpoint.label} device={self.device} precision={self.precision} "
            f"stride={self.stride}/{self.output_stride} {state}>"
        )
