"""ONNX Runtime backend: the exported predictor (``models.onnx_export``) in one InferenceSession.

Given a checkpoint it runs the cached export of that checkpoint (exporting it once per cache); given
a ``.onnx`` file it runs that file, whose metadata supplies the provenance. The graph is float32;
ONNX Runtime fuses Conv+BN+Clip itself with ``ORT_ENABLE_ALL``. A file exported with ``--precision fp16``
runs as it is (fp16 network, float32 decoding) and reports that precision.

Intra-op threads follow ``torch.get_num_threads()`` so that a worker sets one knob
(``torch.set_num_threads``) for whichever backend it ends up with.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from models.checkpoint import Checkpoint, load_checkpoint
from models.engines.base import PRECISIONS, Engine, EngineUnavailableError, check_choice
from models.onnx_export import ensure_onnx, read_onnx_metadata
from models.predictor import DecodeOptions

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def resolve_ort_device(device: str) -> str:
    """``auto`` -> ``cuda`` when this onnxruntime build has the CUDA provider, else ``cpu``."""
    check_choice("device", device, ("auto", "cpu", "cuda"))
    has_cuda = CUDA_PROVIDER in ort.get_available_providers()
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if device == "cuda" and not has_cuda:
        raise EngineUnavailableError(
            "device 'cuda' requested but this onnxruntime build has no CUDAExecutionProvider "
            f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use device='cpu'"
        )
    return device


class OnnxRuntimeEngine(Engine):
    """ONNX Runtime inference of a Tinct export, on the CPU or CUDA execution provider."""

    name = "onnxruntime"

    def __init__(
        self,
        model: str | os.PathLike | Checkpoint,
        device: str = "auto",
        precision: str = "auto",
        decode: DecodeOptions | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        check_choice("precision", precision, PRECISIONS)
        device = resolve_ort_device(device)
        if isinstance(model, Checkpoint) or Path(model).suffix.lower() != ".onnx":
            if precision not in ("auto", "fp32"):
                raise EngineUnavailableError(
                    f"the onnxruntime engine runs a checkpoint's float32 export; precision {precision!r} needs "
                    "kind='torch' or 'tensorrt' (or an ONNX file exported with that precision)"
                )
            ckpt = model if isinstance(model, Checkpoint) else load_checkpoint(model)
            onnx_path = ensure_onnx(ckpt, decode, cache_dir)
            meta = read_onnx_metadata(onnx_path)
        else:
            onnx_path = Path(model)
            meta = read_onnx_metadata(onnx_path)
            if decode is not None and decode != meta.decode:
                raise ValueError(
                    f"{onnx_path} was exported with decode {meta.decode}, not {decode}; export it again "
                    "with those options or pass the .pt checkpoint"
                )
            if precision not in ("auto", meta.precision):
                raise EngineUnavailableError(
                    f"{onnx_path} holds a {meta.precision} graph, not {precision}; export it again with --precision"
                )
            ckpt = meta.to_checkpoint()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        # No busy-waiting between ops: a worker decodes and encodes on the same cores, and spinning threads
        # starve them (and each other). On the shared 2-core test machine, turning spinning off took
        # effnet_unet at 256 px from 57-59 to 30-37 ms/image.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # warnings about unused initializers etc. are the exporter's business
        providers = [CUDA_PROVIDER, CPU_PROVIDER] if device == "cuda" else [CPU_PROVIDER]
        self._session: ort.InferenceSession | None = ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=providers
        )
        if device == "cuda" and self._session.get_providers()[0] != CUDA_PROVIDER:
            raise EngineUnavailableError(f"onnxruntime could not start the CUDA provider for {onnx_path}")
        self.onnx_path = onnx_path
        self._input_name = self._session.get_inputs()[0].name
        self._output_name = self._session.get_outputs()[0].name
        super().__init__(ckpt, device, meta.precision, meta.stride, meta.output_stride, meta.decode)

    def _infer(self, L: np.ndarray) -> torch.Tensor:
        assert self._session is not None  # guarded by Engine.infer's closed check
        (ab,) = self._session.run([self._output_name], {self._input_name: L})
        # Host memory either way: the CUDA provider copies its output back to numpy.
        return torch.from_numpy(np.ascontiguousarray(ab, dtype=np.float32))

    def _release(self) -> None:
        self._session = None
