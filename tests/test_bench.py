"""``tools bench`` in a tiny configuration: real engines, real JPEG round trips, no mocks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tools import bench
from tools.bench_service import _PeakSize
from worker.media.images import read_photo


def test_bench_tiny_configuration_reports_positive_rates_and_the_comparison(tiny_checkpoint: Path) -> None:
    result = bench.run_bench(
        model=str(tiny_checkpoint), engines=["torch"], precisions=["fp32", "fp16"], batch_sizes=[1, 2],
        render_size=64, megapixels=0.02, images=2, compare="eccv16", compare_config={"width_multiplier": 0.125},
        warmup=1, repeats=2, device="cpu",
    )
    # fp16 is a GPU precision: recorded as skipped with the reason, not a crash.
    assert any("fp16" in why for why in result.skipped)
    keys = {(r.arch, r.case, r.batch_size) for r in result.rates}
    assert keys == {(a, c, b) for a in ("default", "eccv16") for c in ("network", "end_to_end") for b in (1, 2)}
    for rate in result.rates:
        assert len(rate.seconds) == 2 and rate.images_per_s > 0 and rate.megapixels_per_s > 0
    assert {q["case"] for q in result.ratios()} == {"network", "end_to_end"}

    data = json.loads(json.dumps(result.to_json()))
    assert set(data) == {"system", "config", "engines", "rates", "ratios", "skipped"}
    assert {"cpu", "cpu_count", "torch", "torch_threads", "onnxruntime"} <= set(data["system"])
    assert data["config"]["render_size"] == 64 and data["config"]["photo_size"] == list(bench.photo_size(0.02))
    rate_keys = {"images_per_s", "megapixels_per_s", "median_s", "engine", "precision", "batch_size", "case"}
    assert rate_keys <= set(data["rates"][0])
    assert all(q["speed_ratio"] > 0 for q in data["ratios"])
    table = result.table()
    label = next(r.model for r in result.rates if r.arch == "default")
    assert label.startswith("effnet_unet@")  # the model under test by its label, not as "default" (release 3's name)
    assert f"| {label} | torch | fp32 | 2 |" in table and "vs eccv16" in table and "CPU:" in table


def test_bench_end_to_end_reads_and_writes_the_photo_format_asked_for(tiny_checkpoint: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert bench.main(["--model", str(tiny_checkpoint), "--engines", "torch", "--precisions", "fp32", "--batch-sizes",
                       "1", "--render-size", "64", "--megapixels", "0.02", "--images", "2", "--compare", "none",
                       "--repeats", "1", "--device", "cpu", "--photo-format", "jp2", "--json", str(out)]) == 0
    assert " jp2, 2 images" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["config"]["photo_format"] == "jp2"
    assert {r["case"] for r in data["rates"]} == {"network", "end_to_end"}
    paths = bench.make_test_photos(tmp_path / "photos", 1, 0.02, suffix=".jp2")
    assert read_photo(paths[0]).format == "JPEG2000"


def test_bench_cli_network_only_writes_json(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    rc = bench.main([
        "--model", str(tiny_checkpoint), "--engines", "torch", "--precisions", "fp32", "--batch-sizes", "2",
        "--render-size", "64", "--images", "2", "--compare", "none", "--warmup", "0", "--repeats", "1",
        "--network-only", "--json", str(out),
    ])
    assert rc == 0
    data = json.loads(out.read_text())
    ((rate),) = data["rates"]
    assert rate["case"] == "network" and rate["images"] == 2 and rate["images_per_s"] > 0
    assert data["ratios"] == []


def test_bench_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    for args, reason in (
        (["--model", str(tmp_path / "missing.pt")], "missing.pt: no such checkpoint file"),
        (["--batch-sizes", "4,x"], "argument --batch-sizes: expected comma-separated integers, got '4,x'"),
        (["--json", str(tmp_path / "a-file" / "bench.json")], "a-file is a file, not a folder"),
    ):
        with pytest.raises(SystemExit) as exc:
            bench.main([*args, "--engines", "torch", "--compare", "none", "--network-only"])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("python -m tools bench: error: ") and reason in err[-1], err
        assert not any("Traceback" in line for line in err)


def test_photo_and_network_shapes() -> None:
    width, height = bench.photo_size(1.0)
    assert abs(width * height - 1e6) < 2e4 and width > height
    assert bench.network_input_shape(256, 32) == (192, 256)  # 256 x 171 padded to the stride
    assert bench.network_input_shape(100, 32) == (96, 128)
    assert bench.network_input_shape(256, 32, photo=(150, 100)) == (128, 160)  # never upscaled


def test_bench_video_reports_floor_end_to_end_stages_and_memory(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "video.json"
    rc = bench.main(["--video", "--model", str(tiny_checkpoint), "--render-size", "64", "--sizes", "96x64",
                     "--seconds", "1", "--memory-seconds", "0.5,1", "--preset", "ultrafast", "--reference-frames", "0",
                     "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    ((row),) = data["sizes"]
    assert row["size"] == "96x64" and row["frames"] == 24
    assert row["floor_fps"] > 0 and row["end_to_end_fps"] > 0
    assert set(row["ms_per_frame"]) == {"decode", "network", "smoothing", "colour", "encode"}
    assert all(ms > 0 for ms in row["ms_per_frame"].values())
    # The same film again with a reference picture at its first frame: its rate and what it costs per frame.
    assert row["reference_frames"] == [0] and row["with_references_fps"] > 0
    assert row["reference_cost"] == row["end_to_end_fps"] / row["with_references_fps"] - 1
    runs = data["memory"]["runs"]
    assert [r["seconds"] for r in runs] == [0.5, 1.0] and all(r["peak_rss_mib"] > 0 for r in runs)


def test_bench_service_photos_through_redis_s3_and_a_worker(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The service benchmark end to end on real Redis, moto S3 and a ``tinct worker`` subprocess (film skipped, a
    small scan of DPX frames in)."""
    out = tmp_path / "service.json"
    rc = bench.main(["--service", "--no-film", "--model", str(tiny_checkpoint), "--engine", "torch", "--device", "cpu",
                     "--render-size", "64", "--photos", "3", "--photo-size", "96x64", "--latency-jobs", "2",
                     "--repeats", "1", "--threads", "1", "--scan-frames", "6", "--scan-size", "96x64",
                     "--segment-seconds", "0.125", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert "film" not in data and data["config"]["photos"] == 3
    scan = data["scan"]
    assert scan["frames"] == 6 and set(scan["runs"]) == {"film", "DPX frames"}
    for run in scan["runs"].values():  # (a frame this small stays in the work folder too briefly to be sampled)
        assert run["segments"] == 2 and run["wall_s"] > run["join_s"] > 0 and run["work_peak_mb"] >= 0
    assert scan["runs"]["DPX frames"]["output_mb"] > scan["runs"]["film"]["output_mb"]  # 10-bit RGB, uncompressed
    in_process = data["in_process"]["ms_per_photo"]
    assert all(in_process[stage] > 0 for stage in ("decode", "colorize", "encode"))
    photos = data["photos"]
    assert photos["jobs"] == 3 and photos["jobs_per_s"] > 0
    assert set(photos["task_ms"]) == {"tinct.plan", "tinct.colorize_photos"}
    assert all(ms > 0 for ms in photos["task_ms"].values())
    # The overhead and its parts add up to the wall time per job.
    assert abs(photos["ms_per_job"] - in_process["total"] - photos["overhead_ms_per_job"]) < 1e-6
    parts = photos["s3_ms"] + photos["redis_celery_in_tasks_ms"] + photos["between_tasks_ms"]
    assert abs(parts - photos["overhead_ms_per_job"]) < 1e-6 and data["s3_in_process"]["ms_per_photo"] > 0
    latency = data["latency"]
    assert latency["jobs"] == 2 and latency["plan_queue_ms"] > 0 and latency["colorize_queue_ms"] > 0
    collection = data["collection"]
    assert collection["photos"] == 3 and collection["photos_per_s"] == 3 / collection["wall_s"] > 0
    assert latency["queue_ms_per_photo"] == latency["plan_queue_ms"] + latency["colorize_queue_ms"]
    assert 0 < latency["created_to_started_ms"] < latency["job_ms"]


def test_the_service_benchmarks_work_folder_peak_sees_files_that_come_and_go(tmp_path: Path) -> None:
    with _PeakSize(tmp_path) as peak:
        (tmp_path / "frames").mkdir()
        (tmp_path / "frames" / "a.dpx").write_bytes(bytes(3_000_000))
        time.sleep(0.35)
        (tmp_path / "frames" / "a.dpx").unlink()
        (tmp_path / "b.dpx").write_bytes(bytes(1_000_000))
        time.sleep(0.35)
    assert peak.bytes == 3_000_000
