"""Prometheus metrics of a worker process, served on ``TINCT_METRICS_PORT`` (``/metrics``).

Rates (frames/s, images/s, jobs/s) are what Prometheus computes from the counters (``rate(tinct_frames_total[1m])``);
stage latencies are histograms; queue depth is read from Redis and GPU state from NVML when the endpoint is scraped,
so neither is ever stale. GPU metrics need ``pynvml`` (``pip install .[gpu]``, the nvidia-ml-py package) and a GPU;
without either the worker simply exports none.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker.settings import GPU_QUEUE, IO_QUEUE

logger = logging.getLogger(__name__)

JOBS = Counter("tinct_jobs", "Jobs finished by this worker, by final state", ["state"])
IMAGES = Counter("tinct_images", "Photos colorized (each page of a multi-page document counts)")
FRAMES = Counter("tinct_frames", "Film frames colorized")
PIECES = Counter("tinct_pieces", "Pieces (photo batches, film segments) finished", ["kind"])
FAILURES = Counter("tinct_failures", "Failures, by kind: permanent (bad input) or transient (retried)", ["kind"])
# Pieces put back on their queue by worker.liveness: their worker went silent ("died") or was stopped and gave them
# back ("handed back"). Counted by the worker that re-queued them.
REQUEUED = Counter("tinct_pieces_requeued", "Pieces re-queued from a silent or stopping worker", ["reason"])
STAGE_SECONDS = Histogram(
    "tinct_stage_seconds", "Seconds per piece spent in each stage", ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
# How many photos a photo piece colours together, per call of the colorizer (which runs the network on those of one
# padded shape at once): a GPU node colouring collections wants these near its batch size, not 1.
PHOTO_BATCH = Histogram("tinct_photo_batch_photos", "Photos coloured together, per colour batch of a photo piece",
                        buckets=(1, 2, 4, 8, 16, 32, 64))

# Set when a model loads: how many frames or photos each network call of it takes (models.batching picks it from
# free GPU memory unless TINCT_BATCH_SIZE says), and on which engine and precision it runs.
BATCH_SIZE = Gauge("tinct_batch_size", "Frames or photos per network call of a loaded model",
                   ["model", "engine", "precision"])


class QueueDepthCollector(Collector):
    """``tinct_queue_depth{queue=...}``: messages waiting in each Celery queue (a Redis list per queue)."""

    def __init__(self, redis) -> None:
        self.redis = redis

    def collect(self):
        family = GaugeMetricFamily("tinct_queue_depth", "Tasks waiting in each queue", labels=["queue"])
        for queue in (GPU_QUEUE, IO_QUEUE):
            try:
                depth = self.redis.llen(queue)
            except Exception:  # noqa: BLE001 - a scrape must not fail because Redis blinked
                logger.debug("queue depth of %s unavailable", queue)
                continue
            family.add_metric([queue], depth)
        yield family


class GpuCollector(Collector):
    """Per-GPU utilisation, memory and temperature from NVML, labelled ``gpu`` (NVML index) and ``name``.

    NVML is opened on the first scrape, not at registration: a worker on a CPU node, or one without the optional
    ``pynvml``, must start and serve its other metrics as usual, so a missing library, driver or GPU is logged once
    at debug and the collector yields nothing from then on. A query that fails for one GPU (a sensor the board
    lacks, a GPU fallen off the bus) drops that value from this scrape only.

    Every GPU NVML sees is exported, whatever ``CUDA_VISIBLE_DEVICES`` says: the index is the node's physical
    numbering, which is what an operator matches against ``nvidia-smi`` and what stays unique per node.
    """

    def __init__(self, module: str = "pynvml") -> None:
        self._module_name = module
        self._nvml: ModuleType | None = None
        self._handles: list[Any] = []
        self._names: list[str] = []
        self._opened = False  # tried to open NVML: whatever the outcome, never again in this process
        self._lock = threading.Lock()  # the metrics server answers scrapes on concurrent threads

    def describe(self) -> list:
        """Nothing to declare up front, so registering does not open NVML (see the class docstring)."""
        return []

    def _open(self) -> None:
        self._opened = True
        try:
            nvml = importlib.import_module(self._module_name)
        except ImportError:
            logger.debug("no GPU metrics: %s is not installed (pip install .[gpu])", self._module_name)
            return
        try:
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
            handles = [nvml.nvmlDeviceGetHandleByIndex(index) for index in range(count)]
            names = [_text(nvml.nvmlDeviceGetName(handle)) for handle in handles]
        except Exception as exc:  # noqa: BLE001 - NVMLError, or a driver library that will not load
            logger.debug("no GPU metrics: NVML unavailable (%s)", exc)
            return
        if not handles:
            logger.debug("no GPU metrics: NVML sees no GPU")
            return
        self._nvml, self._handles, self._names = nvml, handles, names

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if not self._opened:
                self._open()
        nvml = self._nvml
        if nvml is None:
            return
        labels = ["gpu", "name"]
        utilization = GaugeMetricFamily("tinct_gpu_utilization_ratio",
                                        "Share of the last sample period a kernel ran on the GPU (0-1)", labels=labels)
        used = GaugeMetricFamily("tinct_gpu_memory_used_bytes", "GPU memory in use", labels=labels)
        total = GaugeMetricFamily("tinct_gpu_memory_total_bytes", "GPU memory installed", labels=labels)
        temperature = GaugeMetricFamily("tinct_gpu_temperature_celsius", "GPU core temperature", labels=labels)
        for index, (handle, name) in enumerate(zip(self._handles, self._names, strict=True)):
            values = [str(index), name]
            if (rates := _query(nvml.nvmlDeviceGetUtilizationRates, handle)) is not None:
                utilization.add_metric(values, rates.gpu / 100.0)
            if (memory := _memory(nvml, handle)) is not None:
                used.add_metric(values, float(memory.used))
                total.add_metric(values, float(memory.total))
            if (celsius := _query(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)) is not None:
                temperature.add_metric(values, float(celsius))
        yield from (utilization, used, total, temperature)


def _query(function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except Exception as exc:  # noqa: BLE001 - one unsupported or failing query must not fail the scrape
        logger.debug("NVML %s failed: %s", getattr(function, "__name__", function), exc)
        return None


def _memory(nvml: ModuleType, handle: Any) -> Any:
    """Memory in use as ``nvidia-smi`` counts it: NVML's v2 query leaves out what the driver reserves (about 0.5 GiB
    on an idle H100) that the v1 query counts as used; drivers older than the v2 query get v1."""
    version = getattr(nvml, "nvmlMemory_v2", None)
    if version is not None:
        try:
            return nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
        except Exception:  # noqa: BLE001 - NVML_ERROR_FUNCTION_NOT_FOUND / ARGUMENT_VERSION_MISMATCH: an older driver
            pass
    return _query(nvml.nvmlDeviceGetMemoryInfo, handle)


def _text(value: str | bytes) -> str:
    """Older pynvml releases return device names as bytes."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


_started = False


def serve_metrics(port: int, redis, collectors: tuple[Collector, ...] = ()) -> None:
    """Start the endpoint once per process (idempotent, for the worker's init signal), with ``collectors`` beside
    the queue depths and GPUs (the liveness module's stalled pieces)."""
    global _started
    if _started or not port:
        return
    REGISTRY.register(QueueDepthCollector(redis))
    REGISTRY.register(GpuCollector())
    for collector in collectors:
        REGISTRY.register(collector)
    start_http_server(port, addr="0.0.0.0")
    _started = True
    logger.info("metrics on :%d/metrics", port)
