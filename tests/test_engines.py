"""Engines: PyTorch and ONNX Runtime agree on the same checkpoint, precisions behave, the lifecycle holds.

Exports go to one session-wide cache under pytest's base temp dir (``TINCT_CACHE_DIR``), so each tiny
checkpoint is exported once per session however many modules need it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.engines import (
    EngineClosedError,
    EngineUnavailableError,
    OnnxRuntimeEngine,
    TorchEngine,
    create_engine,
    list_engines,
)
from models.engines.torch_engine import cpu_bf16_problem
from models.onnx_export import ensure_onnx
from models.predictor import DecodeOptions
from models.registry import create_model

SIZES = ((64, 96), (96, 32))  # multiples of both test models' strides (32 and 4)
PARITY_TOLERANCE = 1e-2  # ab units; fp32 graphs differ only in summation order


@pytest.fixture(scope="module")
def small_regression_checkpoint(tmp_path_factory) -> Path:
    """The regression head on the small ``regression`` architecture: it exports in seconds, where a second
    effnet_unet export would cost half a minute on a busy 2-core CI machine for the same head coverage
    (the classification case already covers effnet_unet's encoder and decoder)."""
    torch.manual_seed(2)
    model = create_model("regression", base_width=8, n_dilated=1, out_stride=4, head="regression")
    path = tmp_path_factory.mktemp("small-regression") / "small-regression.pt"
    save_checkpoint(path, model, provenance={"purpose": "tests"})
    return path


@pytest.fixture(scope="module", params=["classification", "regression"])
def head_checkpoint(request, tiny_checkpoint, small_regression_checkpoint) -> Path:
    return tiny_checkpoint if request.param == "classification" else small_regression_checkpoint


@pytest.fixture(scope="module")
def head_onnx(head_checkpoint) -> Path:
    return ensure_onnx(head_checkpoint)


def l_batch(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A plausible L batch: smooth structure plus texture, not uniform noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 50 + 30 * np.sin(x / 9.0) * np.cos(y / 13.0)
    L = base[None, None] + rng.normal(0, 8, (batch, 1, height, width))
    return np.clip(L, 0, 100).astype(np.float32)


def test_list_engines():
    assert list_engines() == ["onnxruntime", "tensorrt", "torch"]


def test_torch_and_onnxruntime_agree(head_checkpoint, head_onnx):
    with TorchEngine(head_checkpoint, device="cpu", precision="fp32") as torch_engine:
        with create_engine(head_onnx, device="cpu") as ort_engine:
            assert isinstance(ort_engine, OnnxRuntimeEngine)
            assert (ort_engine.stride, ort_engine.output_stride) == (torch_engine.stride, torch_engine.output_stride)
            assert ort_engine.checkpoint.label == torch_engine.checkpoint.label
            assert ort_engine.checkpoint.provenance == {"purpose": "tests"}
            for height, width in SIZES:
                L = l_batch(2, height, width)
                expected = torch_engine.infer(L)
                got = ort_engine.infer(L)
                stride = torch_engine.output_stride
                assert got.shape == expected.shape == (2, 2, height // stride, width // stride)
                assert got.dtype == np.float32
                assert np.abs(got - expected).max() < PARITY_TOLERANCE
                assert np.abs(expected).max() > 0.1  # the comparison is not between two zero maps


@pytest.mark.skipif(cpu_bf16_problem() is not None, reason=f"no bf16 on this CPU: {cpu_bf16_problem()}")
def test_torch_bf16_close_to_fp32(head_checkpoint):
    L = l_batch(2, 64, 64, seed=1)
    with TorchEngine(head_checkpoint, device="cpu", precision="fp32") as fp32:
        expected = fp32.infer(L)
    with TorchEngine(head_checkpoint, device="cpu", precision="bf16") as bf16:
        assert bf16.precision == "bf16"
        got = bf16.infer(L)
    assert got.dtype == np.float32
    # bf16 keeps 8 bits of mantissa through ~50 layers; the ab decoding itself stays float32.
    assert np.abs(got - expected).mean() < 0.5
    assert np.abs(got - expected).max() < 3.0


def test_cpu_precision_choices(tiny_checkpoint):
    with TorchEngine(tiny_checkpoint, device="cpu") as engine:
        assert engine.precision == ("fp32" if cpu_bf16_problem() else "bf16")
    with pytest.raises(EngineUnavailableError, match="fp16 is a GPU precision"):
        TorchEngine(tiny_checkpoint, device="cpu", precision="fp16")
    if cpu_bf16_problem():
        with pytest.raises(EngineUnavailableError, match="bf16"):
            TorchEngine(tiny_checkpoint, device="cpu", precision="bf16")
    with pytest.raises(EngineUnavailableError, match="float32 export"):
        OnnxRuntimeEngine(tiny_checkpoint, device="cpu", precision="bf16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_close_to_cpu_fp32(head_checkpoint):
    L = l_batch(2, 64, 96, seed=2)
    with TorchEngine(head_checkpoint, device="cpu", precision="fp32") as cpu:
        expected = cpu.infer(L)
    with create_engine(head_checkpoint, device="cuda") as gpu:
        assert (gpu.name, gpu.device, gpu.precision) == ("torch", "cuda", "fp16")
        got = gpu.infer(L)
    assert np.abs(got - expected).mean() < 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_cuda_without_gpu_is_a_clear_error(tiny_checkpoint):
    with pytest.raises(EngineUnavailableError, match="no CUDA GPU"):
        create_engine(tiny_checkpoint, kind="torch", device="cuda")


def test_create_engine_auto_choices(tiny_checkpoint, head_onnx):
    with create_engine(head_onnx) as engine:
        assert engine.name == "onnxruntime"
    if not torch.cuda.is_available():
        with create_engine(tiny_checkpoint) as engine:  # kind auto on CPU
            assert (engine.name, engine.device, engine.precision) == ("onnxruntime", "cpu", "fp32")
        with create_engine(tiny_checkpoint, precision="fp32", kind="torch") as engine:
            assert (engine.name, engine.device) == ("torch", "cpu")


def test_create_engine_rejects_unknown_choices(tiny_checkpoint, head_onnx, tmp_path):
    with pytest.raises(ValueError, match="engine kind 'tvm'.*onnxruntime, tensorrt, torch"):
        create_engine(tiny_checkpoint, kind="tvm")
    with pytest.raises(ValueError, match="device 'tpu'.*auto, cpu, cuda"):
        create_engine(tiny_checkpoint, device="tpu")
    with pytest.raises(ValueError, match="precision 'int8'.*fp32, bf16, fp16"):
        create_engine(tiny_checkpoint, precision="int8")
    with pytest.raises(ValueError, match="needs a .pt checkpoint"):
        create_engine(head_onnx, kind="torch")
    with pytest.raises(ValueError, match="tensorrt engine needs a .pt checkpoint"):
        create_engine(head_onnx, kind="tensorrt")
    with pytest.raises(ValueError, match="no such"):
        create_engine(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="no such checkpoint"):
        create_engine(tmp_path / "missing.pt")


def test_onnx_file_refuses_other_decode_options(tiny_checkpoint):
    path = ensure_onnx(tiny_checkpoint)
    with pytest.raises(ValueError, match="exported with decode"):
        create_engine(path, decode=DecodeOptions(method="mode"))


def test_lifecycle(tiny_checkpoint, tiny_regression_checkpoint):
    L = l_batch(1, 32, 32)
    engine = TorchEngine(tiny_regression_checkpoint, device="cpu", precision="fp32")
    assert not engine.closed and "open" in repr(engine)
    assert engine.infer(L).shape == (1, 2, 8, 8)
    engine.close()
    engine.close()  # idempotent
    assert engine.closed and "closed" in repr(engine)
    with pytest.raises(EngineClosedError, match="closed"):
        engine.infer(L)
    with OnnxRuntimeEngine(ensure_onnx(tiny_checkpoint), device="cpu") as ort_engine:
        assert ort_engine.infer(L).shape == (1, 2, 8, 8)
    with pytest.raises(EngineClosedError):
        ort_engine.infer(L)


@pytest.mark.parametrize(
    ("L", "message"),
    [
        (np.zeros((1, 32, 32), np.float32), r"shape \(B, 1, H, W\)"),
        (np.zeros((1, 3, 32, 32), np.float32), r"shape \(B, 1, H, W\)"),
        (np.zeros((1, 1, 40, 32), np.float32), "multiples of the model stride 32"),
        (np.zeros((1, 1, 16, 16), np.float32), "multiples of the model stride 32"),
        (np.zeros((1, 1, 32, 32), np.float64), "float32"),
        (np.zeros((0, 1, 32, 32), np.float32), "empty batch"),
        ([[0.0]], "numpy array"),
    ],
)
def test_bad_inputs_raise_value_error(tiny_regression_checkpoint, L, message):
    with TorchEngine(load_checkpoint(tiny_regression_checkpoint), device="cpu", precision="fp32") as engine:
        with pytest.raises(ValueError, match=message):
            engine.infer(L)
