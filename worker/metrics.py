"""Prometheus metrics of a worker process, served on ``TINCT_METRICS_PORT`` (``/metrics``).

Rates (frames/s, images/s, jobs/s) are what Prometheus computes from the counters (``rate(tinct_frames_total[1m])``);
stage latencies are histograms; queue depth is read from Redis when the endpoint is scraped, so it is never stale.
"""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker.settings import GPU_QUEUE, IO_QUEUE

logger = logging.getLogger(__name__)

JOBS = Counter("tinct_jobs", "Jobs finished by this worker, by final state", ["state"])
IMAGES = Counter("tinct_images", "Photos colorized")
FRAMES = Counter("tinct_frames", "Film frames colorized")
PIECES = Counter("tinct_pieces", "Pieces (photo batches, film segments) finished", ["kind"])
FAILURES = Counter("tinct_failures", "Failures, by kind: permanent (bad input) or transient (retried)", ["kind"])
STAGE_SECONDS = Histogram(
    "tinct_stage_seconds", "Seconds per piece spent in each stage", ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)


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


_started = False


def serve_metrics(port: int, redis) -> None:
    """Start the endpoint once per process (idempotent, for the worker's init signal)."""
    global _started
    if _started or not port:
        return
    REGISTRY.register(QueueDepthCollector(redis))
    start_http_server(port, addr="0.0.0.0")
    _started = True
    logger.info("metrics on :%d/metrics", port)
