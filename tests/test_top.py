"""``tinct top`` and the GPU metrics it shows: a real redis-server, moto S3 and a real ``tinct worker`` with its metrics
endpoint for the end-to-end view; synthetic snapshots for the rate arithmetic; a stand-in ``pynvml`` module for the
NVML -> Prometheus mapping (the real library needs a GPU; what is tested here is our mapping of its answers)."""

from __future__ import annotations

import io
import logging
import os
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from prometheus_client import CollectorRegistry, generate_latest

from tests.services import WorkerProcess, env_for_workers, free_port, s3_settings
from worker.app import create_app
from worker.cli import main
from worker.jobs import JobRecord, JobSpec
from worker.liveness import HeldPiece
from worker.metrics import GpuCollector
from worker.service import Service
from worker.settings import Settings
from worker.top import (
    Endpoint,
    Gpu,
    TopSnapshot,
    WorkerState,
    metrics_url,
    parse_metrics,
    rates,
    render,
    scrape,
    snapshot,
)

JOB_TIMEOUT_S = 60


def gray_png() -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((96, 64)).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_until(predicate, what: str, timeout: float = JOB_TIMEOUT_S, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout} s" + (f"; worker log:\n{log.read_text()[-3000:]}" if log else ""))


# --- end to end ----------------------------------------------------------------------------------------------


def test_top_shows_queues_worker_throughput_and_the_finished_job(tmp_path, redis_server, s3_server, tiny_checkpoint,
                                                                   monkeypatch, capsys):
    s3_server.make_bucket("scans")
    s3_server.make_bucket("colour")
    s3_server.client().put_object(Bucket="scans", Key="a.png", Body=gray_png())
    port = free_port()
    env = env_for_workers(redis_server, s3_server, work_dir=tmp_path / "work", base=os.environ, engine="torch",
                          device="cpu", render_size=64, metrics_port=port, s3_max_attempts=1, log_format="text")
    env["OMP_NUM_THREADS"] = "1"
    log = tmp_path / "worker.log"
    worker = WorkerProcess("w", env, log)
    try:
        url = metrics_url(f"127.0.0.1:{port}")
        baseline = wait_until(lambda: (endpoint := scrape(url, timeout=1.0)).ok and endpoint, "metrics endpoint up",
                              log=log)
        assert baseline.images == 0
        before = TopSnapshot(time.time(), endpoints=(baseline,))

        client = Service(s3_settings(s3_server, redis_url=redis_server.url))
        spec = JobSpec.from_dict({"input": "s3://scans/a.png", "output": "s3://colour/",
                                  "options": {"model": str(tiny_checkpoint), "render_size": 64}})
        job_id, _ = client.submit(spec)
        record = wait_until(lambda: (r := client.get(job_id)) and r.state in ("succeeded", "failed") and r,
                            f"job {job_id} finished", log=log)
        assert record.state == "succeeded", record.error

        # The library: rates between a scrape before the job and one after it, and the worker as Celery sees it.
        app = create_app(Settings(redis_url=redis_server.url))
        current = snapshot(client.redis, app, [url], previous=before, inspect_timeout=1.0)
        assert current.errors == () and current.queues == {"tinct.colorize": 0, "tinct.io": 0}
        assert [w.name.split("@")[0] for w in current.workers] == ["w"] and current.workers[0].replied
        assert current.endpoints[0].images == 1 and [job.id for job in current.jobs] == [job_id]
        rate = rates(current.endpoints[0], baseline)
        assert rate is not None and rate.images_per_s == pytest.approx(1 / rate.seconds) and rate.frames_per_s == 0
        frame = render(current, before)
        assert f"127.0.0.1:{port}" in frame and f"{rate.images_per_s:.2f}" in frame
        assert ("GPUS" in frame) == bool(current.endpoints[0].gpus)  # none without NVML and a GPU, never an error

        # The command, as an operator runs it.
        monkeypatch.setenv("TINCT_REDIS_URL", redis_server.url)
        assert main(["top", "--once", "--metrics", f"127.0.0.1:{port}", "--inspect-timeout", "0.5"]) == 0
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert "\x1b[" not in out  # not a terminal: no screen clearing
        assert any(line.split()[:3] == ["tinct.colorize", "0", "waiting"] for line in lines), out
        assert any(line.split()[:3] == ["tinct.io", "0", "waiting"] for line in lines), out
        assert any(line.strip().startswith("w@") and line.split()[-1] == "idle" for line in lines), out
        throughput = next(line.split() for line in lines if line.strip().startswith(f"127.0.0.1:{port}"))
        assert throughput[3:6] == ["1", "0", "1/0"], out  # images, frames, jobs ok/failed
        job_line = next(line.split() for line in lines if line.strip().startswith(job_id))
        assert job_line[1:5] == ["succeeded", "image", "1/1", "files"] and job_line[-1] == "s3://scans/a.png", out
    finally:
        worker.stop()


# --- rates and rendering ---------------------------------------------------------------------------------------


def _record(job_id: str, state: str, **progress) -> JobRecord:
    spec = JobSpec.from_dict({"input": f"s3://scans/{job_id}.mkv", "output": "s3://colour/"})
    return JobRecord(job_id, spec, state, 0.0, 0.0, **progress)


def test_render_computes_rates_from_two_snapshots():
    gpu = Gpu("0", "NVIDIA H100", utilization=0.87, memory_used=12 * 2**30, memory_total=80 * 2**30,
              temperature=61)
    earlier = TopSnapshot(1000.0, endpoints=(
        Endpoint("http://a:9100/metrics", at=50.0, images=10, frames=100, jobs={"succeeded": 3}),
        Endpoint("http://b:9100/metrics", at=50.5, images=50, frames=0),  # b restarts before the next scrape
        Endpoint("http://c:9100/metrics", at=50.0, images=7),
    ), workers=(WorkerState("w1@node", last_seen=990.0), WorkerState("w2@node", last_seen=995.0)))
    later = TopSnapshot(
        1002.0, queues={"tinct.colorize": 7, "tinct.io": 1}, in_flight=2,
        endpoints=(
            Endpoint("http://a:9100/metrics", at=52.0, images=14, frames=160, jobs={"succeeded": 4, "failed": 1},
                     gpus=(gpu,)),
            Endpoint("http://b:9100/metrics", at=52.5, images=6, frames=0),
            Endpoint("http://c:9100/metrics", at=52.0, error="connection refused"),
        ),
        workers=(WorkerState("w1@node", last_seen=1002.0), WorkerState("w2@node", replied=False, last_seen=995.0)),
        jobs=(_record("reel", "running", unit="frames", done=480, total=1440, fps=24.0, eta_s=40.0),),
    )
    a = rates(later.endpoints[0], earlier.endpoints[0])
    assert (a.images_per_s, a.frames_per_s, a.seconds) == (2.0, 30.0, 2.0)
    assert rates(later.endpoints[1], earlier.endpoints[1]).images_per_s == 3.0  # went down: counted from 0
    assert rates(later.endpoints[2], earlier.endpoints[2]) is None  # no good scrape to compare with
    assert rates(later.endpoints[0], None) is None

    frame = render(later, earlier)
    rows = _rows(frame)
    assert rows["a:9100"][1:] == ["2.00", "30.00", "14", "160", "4/1"]
    assert rows["b:9100"][1:] == ["3.00", "0.00", "6", "0", "0/0"]
    assert rows["c:9100"][1:] == ["unreachable:", "connection", "refused"]
    assert rows["all"][1:] == ["5.00", "30.00", "20", "160", "4/1"]
    assert rows["tinct.colorize"][1] == "7" and rows["tinct.io"][1] == "1" and rows["delivered,"][-1] == "2"
    assert rows["w1@node"][-1] == "idle" and " ".join(rows["w2@node"][1:4]) == "silent for 7"
    assert rows["reel"][1:] == ["running", "video", "480/1440", "frames", "24.0/s", "40", "s", "s3://scans/reel.mkv"]
    assert "util  87%  mem 12.0/80.0 GiB" in frame and "61 C" in frame
    assert all(len(line) <= 120 for line in frame.splitlines())

    first = render(later)  # no earlier snapshot: totals, but no rates
    assert _rows(first)["a:9100"][1:3] == ["-", "-"]


def test_render_marks_jobs_with_stalled_pieces_and_lists_them():
    stalled = HeldPiece("host:41", "w3@host", "tinct.colorize_segment", "reel", "segment-00004", silent_s=31.0,
                        idle_s=33.0, stalled=True)
    current = TopSnapshot(1002.0, stalled=(stalled,), jobs=(
        _record("reel", "running", unit="frames", done=480, total=1440, fps=24.0, eta_s=40.0),
        _record("photo", "running", unit="files", done=0, total=1)))
    frame = render(current)
    rows = _rows(frame)
    assert rows["reel"][1] == "stalled" and rows["photo"][1] == "running"
    assert "STALLED PIECES  1" in frame
    since = time.strftime("%H:%M:%S", time.localtime(stalled.since))
    line = next(line for line in frame.splitlines() if "segment-00004" in line)
    assert line.split() == ["reel", "segment-00004", "on", "w3@host", "since", since, "(worker", "silent", "31", "s)"]
    assert "STALLED" not in render(TopSnapshot(1002.0, jobs=current.jobs))


def _rows(frame: str) -> dict[str, list[str]]:
    """A frame's lines split into words, by their first word (the first line that starts with it)."""
    rows: dict[str, list[str]] = {}
    for line in frame.splitlines():
        if line.strip():
            rows.setdefault(line.split()[0], line.split())
    return rows


def test_metrics_url():
    assert metrics_url("gpu1:9100") == "http://gpu1:9100/metrics"
    assert metrics_url("http://gpu1:9100") == "http://gpu1:9100/metrics"
    assert metrics_url("https://gpu1/tinct/metrics") == "https://gpu1/tinct/metrics"


# --- GPU metrics ---------------------------------------------------------------------------------------------


def fake_nvml(*, init_error: Exception | None = None) -> types.ModuleType:
    """What pynvml answers for two GPUs, the second without a temperature sensor (a query NVML refuses)."""
    nvml = types.ModuleType("pynvml")
    nvml.NVML_TEMPERATURE_GPU = 0
    nvml.nvmlMemory_v2 = 0x2000028
    nvml.memory_versions = []

    def init() -> None:
        if init_error is not None:
            raise init_error

    def memory(handle: int, version: int | None = None) -> SimpleNamespace:
        nvml.memory_versions.append(version)
        return SimpleNamespace(used=(handle + 1) * 2**30, total=80 * 2**30)

    def temperature(handle: int, sensor: int) -> int:
        if handle == 1 or sensor != 0:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return 61

    nvml.nvmlInit = init
    nvml.nvmlDeviceGetCount = lambda: 2
    nvml.nvmlDeviceGetHandleByIndex = lambda index: index
    nvml.nvmlDeviceGetName = lambda handle: [b"NVIDIA H100 80GB HBM3", "NVIDIA A100"][handle]
    nvml.nvmlDeviceGetUtilizationRates = lambda handle: SimpleNamespace(gpu=[87, 5][handle], memory=40)
    nvml.nvmlDeviceGetMemoryInfo = memory
    nvml.nvmlDeviceGetTemperature = temperature
    return nvml


def test_gpu_collector_maps_nvml_to_the_four_metrics(monkeypatch):
    nvml = fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    registry = CollectorRegistry()
    registry.register(GpuCollector())
    samples = {(s.name, s.labels["gpu"], s.labels["name"]): s.value
               for family in registry.collect() for s in family.samples}
    assert samples == {
        ("tinct_gpu_utilization_ratio", "0", "NVIDIA H100 80GB HBM3"): 0.87,
        ("tinct_gpu_utilization_ratio", "1", "NVIDIA A100"): 0.05,
        ("tinct_gpu_memory_used_bytes", "0", "NVIDIA H100 80GB HBM3"): 2**30,
        ("tinct_gpu_memory_used_bytes", "1", "NVIDIA A100"): 2 * 2**30,
        ("tinct_gpu_memory_total_bytes", "0", "NVIDIA H100 80GB HBM3"): 80 * 2**30,
        ("tinct_gpu_memory_total_bytes", "1", "NVIDIA A100"): 80 * 2**30,
        ("tinct_gpu_temperature_celsius", "0", "NVIDIA H100 80GB HBM3"): 61,
    }
    assert set(nvml.memory_versions) == {nvml.nvmlMemory_v2}  # used memory as nvidia-smi counts it
    # ... and what tinct top reads back from the exposition text.
    endpoint = parse_metrics(generate_latest(registry).decode(), "http://gpu1:9100/metrics", 0.0)
    assert endpoint.gpus == (Gpu("0", "NVIDIA H100 80GB HBM3", 0.87, 2**30, 80 * 2**30, 61.0),
                             Gpu("1", "NVIDIA A100", 0.05, 2 * 2**30, 80 * 2**30, None))


@pytest.mark.parametrize("nvml", [None, fake_nvml(init_error=RuntimeError("NVML Shared Library Not Found"))],
                         ids=["not-installed", "no-driver"])
def test_gpu_collector_without_nvml_yields_nothing_and_logs_once(monkeypatch, caplog, nvml):
    monkeypatch.setitem(sys.modules, "pynvml", nvml)  # None: ``import pynvml`` raises ImportError
    registry = CollectorRegistry()
    registry.register(GpuCollector())
    with caplog.at_level(logging.DEBUG, logger="worker.metrics"):
        assert list(registry.collect()) == [] and list(registry.collect()) == []
    assert len([r for r in caplog.records if r.message.startswith("no GPU metrics")]) == 1
