"""``tools bench --gpu`` on CPU in a tiny configuration: real engines, a real film, real encodes.

The machinery is the same on a GPU; only out-of-memory cannot happen on a CPU, so that one is raised by a
real engine that pretends its device holds two frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.engines import TorchEngine
from tools import bench, bench_gpu
from tools.bench_gpu import FilmRate, NetworkRate, bench_engine_sizes, check_targets


def test_bench_gpu_on_cpu_times_runnable_engines_skips_the_rest_and_runs_the_film(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gpu.json"
    rc = bench.main([
        "--gpu", "--device", "cpu", "--model", str(tiny_checkpoint),
        "--gpu-engines", "torch:fp32,torch:fp16,onnxruntime:fp32,tensorrt:fp16",
        "--gpu-batch-sizes", "1,2", "--gpu-render-sizes", "64", "--gpu-frames", "4",
        "--gpu-film-size", "160x90", "--seconds", "0.5", "--render-size", "64", "--preset", "ultrafast",
        "--warmup", "1", "--repeats", "2", "--json", str(out),
    ])
    assert rc == 0
    data = json.loads(out.read_text())
    assert set(data) == {"system", "config", "engines", "rates", "skipped", "failed", "film", "targets"}
    assert {"gpu", "cuda_runtime", "tensorrt", "cpu", "torch", "onnxruntime"} <= set(data["system"])

    rates = {(r["engine"], r["precision"], r["render_size"], r["batch_size"]): r for r in data["rates"]}
    assert set(rates) == {(e, "fp32", 64, b) for e in ("torch", "onnxruntime") for b in (1, 2)}
    for rate in rates.values():
        assert rate["frames_per_s"] > 0 and len(rate["seconds"]) == 2 and rate["frames"] >= 4
        # A 16:9 frame at render 64 is 64x36, padded to the tiny model's stride of 32.
        assert rate["input_shape"] == [64, 64]

    skipped = {(s["engine"], s["precision"]): s["reason"] for s in data["skipped"]}
    assert set(skipped) == {("torch", "fp16"), ("tensorrt", "fp16")}
    assert "GPU precision" in skipped["torch", "fp16"]
    assert "NVIDIA GPUs only" in skipped["tensorrt", "fp16"]
    assert data["failed"] == []

    film = data["film"]
    assert film["size"] == "160x90" and film["frames"] == 12 and film["batch_size"] == 8  # the CPU default
    assert film["end_to_end_fps"] > 0 and film["floor_fps"] > 0
    assert film["floor_over_end_to_end"] == pytest.approx(film["floor_fps"] / film["end_to_end_fps"])
    assert set(film["busy_s"]) == {"decode", "network", "smoothing", "colour", "encode"}

    # Neither target's conditions (render 256, a 1080p film) were run, and the verdict says so.
    assert [t["met"] for t in data["targets"]] == [None, None]
    printed = capsys.readouterr().out
    assert "| torch | fp32 | 64 | 64x64 |" in printed and "| batch 1 | batch 2 |" in printed
    assert "film 160x90" in printed and "targets:" in printed and "not measured" in printed


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error path needs a machine without a CUDA GPU")
def test_bench_gpu_without_a_gpu_exits_2_with_one_line(tiny_checkpoint: Path, capsys) -> None:
    rc = bench.main(["--gpu", "--model", str(tiny_checkpoint)])
    assert rc == 2
    err = capsys.readouterr().err
    assert err == f"python -m tools bench --gpu: {bench_gpu.NO_GPU_MESSAGE}\n"
    assert "use --device cpu" in err


class SmallMemoryEngine(TorchEngine):
    """A real CPU engine whose device holds two frames: larger batches fail the way CUDA does."""

    def _infer(self, L: np.ndarray) -> torch.Tensor:
        if L.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super()._infer(L)


class BrokenAtBatch4Engine(TorchEngine):
    def _infer(self, L: np.ndarray) -> torch.Tensor:
        if L.shape[0] >= 4:
            raise RuntimeError("CUDNN_STATUS_EXECUTION_FAILED")
        return super()._infer(L)


def test_out_of_memory_skips_that_batch_and_larger_ones(tiny_checkpoint: Path) -> None:
    with SmallMemoryEngine(tiny_checkpoint, device="cpu", precision="fp32") as engine:
        rates, skipped, failed = bench_engine_sizes(engine, ("torch", "fp32"), [64], [8, 1, 4, 2], 2, 0, 1)
    assert [r.batch_size for r in rates] == [1, 2] and failed == []
    assert [(s.batch_size, s.out_of_memory) for s in skipped] == [(4, True), (8, True)]
    assert "out of memory" in skipped[0].reason and "batch 4" in skipped[1].reason


def test_other_errors_are_recorded_as_failed_and_keep_the_rates(tiny_checkpoint: Path) -> None:
    with BrokenAtBatch4Engine(tiny_checkpoint, device="cpu", precision="fp32") as engine:
        rates, skipped, failed = bench_engine_sizes(engine, ("torch", "fp32"), [64, 96], [1, 4], 1, 0, 1)
    assert [(r.render_size, r.batch_size) for r in rates] == [(64, 1)] and skipped == []
    assert failed == ["torch fp32 render 64 batch 4: RuntimeError: CUDNN_STATUS_EXECUTION_FAILED"]


def _network(fps: float, render_size: int = 256) -> NetworkRate:
    return NetworkRate("tensorrt", "fp16", render_size, (160, 256), 32, 1000, [1000 / fps])


def _film(size: str, e2e_fps: float, floor_fps: float) -> FilmRate:
    return FilmRate(size, 240, "torch", "fp16", 32, 256, e2e_fps, floor_fps, {})


def test_targets_are_judged_on_the_best_engine_at_256_and_a_1080p_film() -> None:
    network, film = check_targets([_network(400), _network(1250), _network(5000, 128)],
                                  _film("1920x1080", 100.0, 115.0), "default")
    assert network.met is True and "1250 frames/s" in network.measured
    assert film.met is True and film.measured == "1.15x"

    network, film = check_targets([_network(999)], _film("1920x1080", 100.0, 130.0), "default")
    assert network.met is False and film.met is False and "NOT met" in film.describe()

    network, film = check_targets([], None, "default")
    assert network.met is None and film.met is None and "not measured" in network.describe()
