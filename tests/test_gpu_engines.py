"""GPU paths: TensorRT engines (profiles, engine cache, fp16 export, the engine itself), the PyTorch CUDA fast
path and batch sizing.

What needs no GPU runs everywhere: profile planning, the cache's staleness rules, the fp16 ONNX graph
(run by ONNX Runtime on the CPU against PyTorch fp32), batch sizing arithmetic, and the one-line errors a
machine without TensorRT or a GPU gives. The engines themselves run only where TensorRT and a CUDA GPU
are present (the skip reasons say which is missing).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from models.batching import DEFAULT_BATCH_SIZE, MAX_AUTO_BATCH, batch_for_memory, pick_batch_size
from models.colorizer import Colorizer
from models.engines import EngineUnavailableError, OnnxRuntimeEngine, TorchEngine, create_engine
from models.engines.tensorrt_engine import (
    PLAN_FORMAT,
    PlanKey,
    Profile,
    engine_cache_dir,
    pick_profile,
    plan_profiles,
    plan_record,
    stale_reason,
)
from models.onnx_export import cached_onnx_path, ensure_onnx, export_onnx, read_onnx_metadata
from tools.build_engine import main as build_engine_main
from worker.settings import Settings

try:
    import tensorrt  # noqa: F401

    HAVE_TENSORRT = True
except ImportError:
    HAVE_TENSORRT = False
HAVE_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA GPU (none visible to PyTorch)")
needs_tensorrt = pytest.mark.skipif(
    not (HAVE_CUDA and HAVE_TENSORRT),
    reason=f"needs TensorRT and a CUDA GPU (TensorRT {'found' if HAVE_TENSORRT else 'missing'}, "
           f"GPU {'found' if HAVE_CUDA else 'missing'})",
)


def l_batch(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    scene = 50 + 30 * np.sin(x / 9.0) * np.cos(y / 13.0)
    return np.clip(scene[None, None] + rng.normal(0, 6, (batch, 1, height, width)), 0, 100).astype(np.float32)


def relative_difference(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / (expected.max() - expected.min()))


# --- optimisation profiles and the engine cache (no TensorRT needed) ------------------------------------------


def test_profiles_cover_every_render_of_their_size_and_nothing_larger():
    profiles = plan_profiles([384, 256, 256], stride=32, max_batch=64, opt_batch=16)
    assert [p.render_size for p in profiles] == [256, 384]
    small = profiles[0]
    assert small.min_shape == (1, 1, 32, 32)
    assert small.max_shape == (64, 1, 256, 256)
    assert small.opt_shape == (16, 1, 160, 256)  # a 16:9 frame: 144 rows padded to whole 32-pixel blocks
    for shape in [(1, 1, 256, 160), (64, 1, 32, 256), (8, 1, 224, 224)]:  # portrait, panorama, square
        assert small.covers(shape)
    assert not small.covers((65, 1, 256, 256)) and not small.covers((1, 1, 288, 256))
    assert profiles[1].max_shape == (64, 1, 384, 384)
    assert plan_profiles([250], stride=32, max_batch=8)[0].max_shape == (8, 1, 256, 256)  # rounded up to blocks


def test_a_batch_runs_on_the_tightest_profile_that_holds_it():
    profiles = plan_profiles([512, 256], stride=32, max_batch=32)
    assert pick_profile(profiles, (4, 1, 160, 256)) == 0
    assert pick_profile(profiles, (4, 1, 288, 512)) == 1
    assert pick_profile(profiles, (33, 1, 160, 256)) is None
    assert pick_profile(profiles, (1, 1, 544, 512)) is None


def test_profile_planning_rejects_impossible_requests():
    with pytest.raises(ValueError, match="at least one render size"):
        plan_profiles([], stride=32, max_batch=8)
    with pytest.raises(ValueError, match="smaller than the model stride"):
        plan_profiles([16], stride=32, max_batch=8)
    with pytest.raises(ValueError, match="max_batch"):
        plan_profiles([256], stride=32, max_batch=0)


KEY = PlanKey("ab" * 32, "fp16", "NVIDIA H100 80GB HBM3", "9.0", "11.4.0.106")


def test_plan_key_names_files_by_model_gpu_and_tensorrt_version():
    assert KEY.file_stem() == f"{'ab' * 8}-fp16-nvidia-h100-80gb-hbm3-sm90-trt11.4.0.106"
    assert KEY.timing_cache_name() == "nvidia-h100-80gb-hbm3-sm90-trt11.4.0.106.timing"  # shared by every model
    assert KEY.plan_format == PLAN_FORMAT


def test_a_cached_plan_is_used_only_when_everything_it_depends_on_matches():
    profiles = plan_profiles([256, 384], stride=32, max_batch=64)
    record = json.loads(json.dumps(plan_record(KEY, profiles, 93.4)))  # as read back from disk
    assert stale_reason(record, KEY, [256], 64) is None
    assert stale_reason(record, KEY, [256, 384], 32) is None
    assert stale_reason(None, KEY, [256], 64) == "no engine built yet"
    assert stale_reason(record, replace(KEY, tensorrt="10.16.1.11"), [256], 64) == "built for another tensorrt"
    assert stale_reason(record, replace(KEY, gpu="NVIDIA A100", compute_capability="8.0"), [256], 64) == (
        "built for another compute_capability, gpu")
    assert stale_reason(record, replace(KEY, onnx_sha256="cd" * 32), [256], 64) == "built for another onnx_sha256"
    assert stale_reason(record, replace(KEY, plan_format=PLAN_FORMAT + 1), [256], 64) == "built for another plan_format"
    assert stale_reason(record, KEY, [512], 64) == "no profile for render size 512"
    assert stale_reason(record, KEY, [256], 128) == "built for smaller batches than 128"
    assert stale_reason({"key": asdict(KEY), "profiles": [{"oops": 1}]}, KEY, [256], 64) == "its record is unreadable"
    assert [Profile.from_dict(p) for p in record["profiles"]] == profiles


def test_engine_cache_lives_beside_the_onnx_exports(tmp_path):
    assert engine_cache_dir(tmp_path / "onnx") == tmp_path / "onnx" / "tensorrt"


# --- the fp16 graph TensorRT builds from (checked with ONNX Runtime on the CPU) ---------------------------------


@pytest.fixture(scope="module")
def fp16_onnx(tiny_checkpoint) -> Path:
    return ensure_onnx(tiny_checkpoint, precision="fp16")


def test_fp16_export_is_typed_fp16_inside_and_float32_at_its_edges(fp16_onnx, tiny_checkpoint):
    graph = onnx.load(str(fp16_onnx)).graph
    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [i.type.tensor_type.elem_type for i in graph.input] == [float32]
    assert [o.type.tensor_type.elem_type for o in graph.output] == [float32]
    weights = Counter(t.data_type for t in graph.initializer if len(t.dims) == 4)  # convolution kernels
    assert set(weights) == {float16}
    meta = read_onnx_metadata(fp16_onnx)
    assert meta.precision == "fp16"
    assert fp16_onnx == cached_onnx_path(meta.to_checkpoint(), precision="fp16") != cached_onnx_path(
        meta.to_checkpoint())
    assert ensure_onnx(tiny_checkpoint, precision="fp16") == fp16_onnx  # cached, not exported again


def test_fp16_export_agrees_with_pytorch_fp32(fp16_onnx, tiny_checkpoint):
    L = l_batch(2, 64, 96)
    with TorchEngine(tiny_checkpoint, device="cpu", precision="fp32") as reference:
        expected = reference.infer(L)
    with OnnxRuntimeEngine(fp16_onnx, device="cpu") as engine:
        assert engine.precision == "fp16"
        got = engine.infer(L)
    assert np.abs(expected).max() > 0.1
    assert relative_difference(got, expected) < 1e-2


def test_bf16_exports_are_refused_with_the_reason(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="unsupported export precision 'bf16'"):
        export_onnx(tiny_checkpoint, tmp_path / "m.onnx", precision="bf16")
    with pytest.raises(EngineUnavailableError, match="fp16 or fp32, not bf16"):
        create_engine(tiny_checkpoint, kind="tensorrt", device="cuda", precision="bf16")


def test_an_fp16_file_refuses_to_be_run_as_another_precision(fp16_onnx):
    with pytest.raises(EngineUnavailableError, match="holds a fp16 graph, not fp32"):
        OnnxRuntimeEngine(fp16_onnx, device="cpu", precision="fp32")


# --- machines without TensorRT or a GPU ---------------------------------------------------------------------------


@pytest.mark.skipif(HAVE_CUDA and HAVE_TENSORRT, reason="checks the errors of a machine without TensorRT or a GPU")
def test_tensorrt_unavailable_is_a_clear_error_before_any_work(tiny_checkpoint, onnx_cache, capsys):
    with pytest.raises(EngineUnavailableError, match="TensorRT is not installed|needs a CUDA GPU"):
        create_engine(tiny_checkpoint, kind="tensorrt")
    with pytest.raises(EngineUnavailableError, match="NVIDIA GPUs only"):
        create_engine(tiny_checkpoint, kind="tensorrt", device="cpu")
    assert build_engine_main([str(tiny_checkpoint), "--render-sizes", "64"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("python -m tools build-engine: ") and "\n" not in error
    assert not engine_cache_dir(onnx_cache).exists()  # nothing was built, nothing half-written


def test_build_engine_rejects_bad_arguments(capsys):
    assert build_engine_main(["default", "--render-sizes", "256,big"]) == 2
    assert "--render-sizes must be comma-separated whole numbers" in capsys.readouterr().err
    assert build_engine_main(["default", "--max-batch", "0"]) == 2
    assert "--max-batch must be at least 1" in capsys.readouterr().err
    assert build_engine_main(["/nowhere/model.pt"]) == 2
    assert "/nowhere/model.pt" in capsys.readouterr().err


# --- batch sizing ---------------------------------------------------------------------------------------------


def test_batch_for_memory_is_the_largest_power_of_two_that_fits():
    mib = 1 << 20
    assert batch_for_memory(free_bytes=8000 * mib, per_image_bytes=100 * mib) == 32  # 40 fit in half of it
    assert batch_for_memory(free_bytes=80_000 * mib, per_image_bytes=100 * mib) == MAX_AUTO_BATCH
    assert batch_for_memory(free_bytes=150 * mib, per_image_bytes=100 * mib) == 1  # never zero
    assert batch_for_memory(free_bytes=0, per_image_bytes=100 * mib) == 1
    assert batch_for_memory(free_bytes=8000 * mib, per_image_bytes=100 * mib, limit=16) == 16


def test_cpu_engines_get_the_default_batch(tiny_checkpoint):
    with TorchEngine(tiny_checkpoint, device="cpu", precision="fp32") as engine:
        assert pick_batch_size(engine, 256) == DEFAULT_BATCH_SIZE
        assert Colorizer(engine).batch_size == DEFAULT_BATCH_SIZE
        assert Colorizer(engine, batch_size=3).batch_size == 3


def test_batch_size_setting_accepts_auto():
    assert Settings.from_env({}).batch_size is None
    assert Settings.from_env({"TINCT_BATCH_SIZE": "auto"}).batch_size is None
    assert Settings.from_env({"TINCT_BATCH_SIZE": "16"}).batch_size == 16
    with pytest.raises(ValueError, match="TINCT_BATCH_SIZE"):
        Settings.from_env({"TINCT_BATCH_SIZE": "lots"})


# --- the PyTorch CUDA fast path (GPU only) ------------------------------------------------------------------------


@needs_cuda
def test_cuda_graph_replays_match_eager_and_leave_ab_on_the_gpu(tiny_checkpoint):
    L = l_batch(4, 64, 96)
    with TorchEngine(tiny_checkpoint, device="cuda", precision="fp16", cuda_graphs=False) as eager:
        expected = eager.infer(L)
    with TorchEngine(tiny_checkpoint, device="cuda", precision="fp16") as engine:
        results = [engine.infer(L) for _ in range(4)]  # captured on the third call, replayed on the fourth
        assert engine.captured_shapes == [L.shape]
        ab = engine.infer_tensor(L[:, :, :, :64].copy())
        assert ab.device.type == "cuda" and ab.dtype == torch.float32
        read_only = L.copy()
        read_only.flags.writeable = False
        np.testing.assert_allclose(engine.infer(read_only), results[0], atol=1e-3)
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-2)


@needs_cuda
def test_cuda_fp16_within_one_percent_of_fp32(tiny_checkpoint):
    L = l_batch(8, 128, 224, seed=3)
    with TorchEngine(tiny_checkpoint, device="cuda", precision="fp32") as fp32:
        expected = fp32.infer(L)
    with TorchEngine(tiny_checkpoint, device="cuda", precision="fp16") as fp16:
        got = fp16.infer(L)
    assert relative_difference(got, expected) < 1e-2


@needs_cuda
def test_auto_batch_on_a_gpu_fits_in_free_memory(tiny_checkpoint):
    with TorchEngine(tiny_checkpoint, device="cuda", precision="fp16") as engine:
        batch = pick_batch_size(engine, 256)
        assert 1 <= batch <= MAX_AUTO_BATCH and batch & (batch - 1) == 0
        assert Colorizer(engine, render_size=256).batch_size == batch


# --- TensorRT itself (TensorRT and a GPU only) --------------------------------------------------------------------


@needs_tensorrt
def test_tensorrt_engine_parity_lifecycle_and_cache(tiny_checkpoint, onnx_cache):
    from models.engines import EngineClosedError, TensorRTEngine

    L = l_batch(4, 64, 96)
    with TorchEngine(tiny_checkpoint, device="cuda", precision="fp32") as reference:
        expected = reference.infer(L)
    engine = create_engine(tiny_checkpoint, kind="tensorrt", render_sizes=[96], max_batch=8)
    assert isinstance(engine, TensorRTEngine)
    assert (engine.device, engine.precision, engine.max_batch) == ("cuda", "fp16", 8)
    plan, record = engine.plan_path, engine.plan_path.with_suffix(".json")
    assert plan.parent == engine_cache_dir(onnx_cache) and record.is_file()
    assert relative_difference(engine.infer(L), expected) < 1e-2
    assert engine.infer_tensor(L).device.type == "cuda"
    with pytest.raises(ValueError, match="outside the engine's optimisation profiles"):
        engine.infer(l_batch(9, 64, 96))
    engine.close()
    engine.close()
    with pytest.raises(EngineClosedError):
        engine.infer(L)

    built = plan.stat().st_mtime_ns
    with create_engine(tiny_checkpoint, kind="tensorrt", render_sizes=[96], max_batch=8):
        assert plan.stat().st_mtime_ns == built  # current: loaded, not rebuilt
    stale = json.loads(record.read_text())
    stale["key"]["tensorrt"] = "0.0.0"
    record.write_text(json.dumps(stale))
    with create_engine(tiny_checkpoint, kind="tensorrt", render_sizes=[96], max_batch=8) as rebuilt:
        assert plan.stat().st_mtime_ns != built  # a stale plan is rebuilt, never used
        assert relative_difference(rebuilt.infer(L), expected) < 1e-2
    with create_engine(tiny_checkpoint, kind="tensorrt", render_sizes=[64], max_batch=8) as wider:
        assert [p.render_size for p in wider.profiles] == [64, 96]  # the old render size is kept


@needs_tensorrt
def test_build_engine_cli_builds_and_checks(tiny_checkpoint, capsys):
    assert build_engine_main([str(tiny_checkpoint), "--render-sizes", "64,128", "--max-batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "render 64" in out and "render 128" in out and ": ok" in out
