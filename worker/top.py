"""``tinct top``: a terminal view of the service (queues, workers, throughput, GPUs, jobs), refreshed in place.

    tinct top --metrics gpu1:9100 --metrics gpu2:9100      # a new frame every 2 s until Ctrl-C
    tinct top --once --metrics 127.0.0.1:9100               # one frame, for scripts and logs

Where each figure comes from, and why there:

* queues: Redis itself (LLEN of each Celery queue, and the size of the transport's ``unacked`` hash: tasks delivered
  to a worker and not yet acknowledged). The broker is the truth, and it can be read with every worker down.
* workers: Celery's remote control (``inspect().active()``), the only source that says what each worker is doing
  right now: task name and job id. One broadcast serves as the ping too. A worker in a solo pool (the default for
  ``tinct worker`` on the colorize queue) cannot answer while a task runs, so a worker seen once and silent now stays
  on the list, marked silent, instead of vanishing exactly when it is busiest.
* throughput: each worker's Prometheus endpoint (``TINCT_METRICS_PORT``), scraped on every frame; frames/s and
  images/s are the difference of ``tinct_frames_total``/``tinct_images_total`` over the time between two scrapes,
  as Prometheus' ``rate()`` computes them (a counter that went down belongs to a restarted worker: it counts from 0).
* GPUs: the same endpoints' ``tinct_gpu_*`` gauges (NVML, :mod:`worker.metrics`), where a worker exports them.
* jobs: the job store in Redis: running jobs first (progress, fps, ETA), then the most recent others; a running job
  with a stalled piece says ``stalled``.
* stalled pieces: the workers' heartbeats and held pieces in Redis (:mod:`worker.liveness`): a piece whose worker is
  silent, or that made no progress, for longer than the liveness window, with the worker and since when.

:func:`snapshot` gathers everything into a :class:`TopSnapshot` and never raises for a source it cannot read (it
records the reason instead: a monitor must keep showing what it can); :func:`render` turns two successive snapshots
into text and does no I/O, so it is tested with synthetic snapshots; :func:`run_top` is the loop.
"""

from __future__ import annotations

import argparse
import ast
import logging
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import kombu.pools
from prometheus_client.parser import text_string_to_metric_families

from worker.cli_args import positive_seconds
from worker.errors import one_line
from worker.jobs import KEY_PREFIX, JobRecord, JobStore, job_key
from worker.liveness import HeldPiece, held_pieces
from worker.settings import GPU_QUEUE, IO_QUEUE, Settings

if TYPE_CHECKING:
    import redis as redis_lib
    from celery import Celery

logger = logging.getLogger(__name__)

QUEUES = (GPU_QUEUE, IO_QUEUE)
UNACKED_KEY = "unacked"  # kombu's Redis transport: delivered messages awaiting their ack, all queues together
CLEAR_SCREEN = "\x1b[H\x1b[2J"
JOB_SCAN = 500  # newest jobs looked at to find the running ones; a running job older than this many is not shown
WIDTH = 120


@dataclass(frozen=True)
class Gpu:
    """One GPU as a worker's endpoint exports it; a value the endpoint left out is None."""

    index: str
    name: str
    utilization: float | None = None  # 0-1
    memory_used: float | None = None  # bytes
    memory_total: float | None = None
    temperature: float | None = None  # Celsius


@dataclass(frozen=True)
class Endpoint:
    """One scrape of one worker's ``/metrics``: the counters rates are computed from, and its GPUs."""

    url: str
    at: float  # time.monotonic() of the scrape: rates divide by the time between two scrapes of one endpoint
    images: float = 0.0
    frames: float = 0.0
    jobs: Mapping[str, float] = field(default_factory=dict)  # tinct_jobs_total by final state
    gpus: tuple[Gpu, ...] = ()
    error: str = ""  # why the scrape failed; the counters are then meaningless

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class ActiveTask:
    task: str
    task_id: str
    job_id: str | None  # every Tinct task takes the job id first; None for a task that does not


@dataclass(frozen=True)
class WorkerState:
    name: str  # Celery node name
    active: tuple[ActiveTask, ...] = ()
    replied: bool = True  # False: seen in an earlier frame, silent in this one
    last_seen: float = 0.0  # time.time() of its last reply


@dataclass(frozen=True)
class TopSnapshot:
    taken: float  # time.time()
    queues: Mapping[str, int] = field(default_factory=dict)
    in_flight: int | None = None  # delivered to a worker, not yet acknowledged
    workers: tuple[WorkerState, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    jobs: tuple[JobRecord, ...] = ()
    errors: tuple[str, ...] = ()  # sources that could not be read this time, with the reason
    stalled: tuple[HeldPiece, ...] = ()  # pieces whose worker is silent, or that made no progress, for a window


@dataclass(frozen=True)
class Rates:
    images_per_s: float
    frames_per_s: float
    seconds: float  # the window the rates are measured over


# --- gathering ---------------------------------------------------------------------------------------------


def metrics_url(address: str) -> str:
    """``host:port`` -> ``http://host:port/metrics``; a full URL is kept (with ``/metrics`` added if it has no path)."""
    if "://" not in address:
        address = f"http://{address}"
    scheme, rest = address.split("://", 1)
    return address if "/" in rest else f"{scheme}://{rest}/metrics"


def parse_metrics(text: str, url: str, at: float) -> Endpoint:
    """Read the figures ``tinct top`` shows from a worker's metrics in the Prometheus text format."""
    images = frames = 0.0
    jobs: dict[str, float] = {}
    gpus: dict[str, dict[str, Any]] = {}
    gauges = {"tinct_gpu_utilization_ratio": "utilization", "tinct_gpu_memory_used_bytes": "memory_used",
              "tinct_gpu_memory_total_bytes": "memory_total", "tinct_gpu_temperature_celsius": "temperature"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tinct_images_total":
                images = sample.value
            elif sample.name == "tinct_frames_total":
                frames = sample.value
            elif sample.name == "tinct_jobs_total":
                jobs[sample.labels.get("state", "")] = sample.value
            elif sample.name in gauges:
                index = sample.labels.get("gpu", "?")
                gpu = gpus.setdefault(index, {"index": index, "name": sample.labels.get("name", "")})
                gpu[gauges[sample.name]] = sample.value
    ordered = tuple(Gpu(**gpus[index]) for index in sorted(gpus, key=lambda i: (len(i), i)))
    return Endpoint(url, at, images, frames, jobs, ordered)


def scrape(url: str, timeout: float = 2.0) -> Endpoint:
    """One scrape; an endpoint that is down or answers garbage gives an Endpoint with ``error`` set."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8", errors="replace")
        return parse_metrics(text, url, time.monotonic())
    except Exception as exc:  # noqa: BLE001 - URLError, timeouts, a parse error: shown, never fatal for the view
        return Endpoint(url, time.monotonic(), error=one_line(getattr(exc, "reason", None) or exc))


def queue_depths(redis: redis_lib.Redis) -> tuple[dict[str, int], int]:
    """Messages waiting in each queue, and messages delivered but not yet acknowledged (all queues)."""
    with redis.pipeline(transaction=False) as pipe:
        for queue in QUEUES:
            pipe.llen(queue)
        pipe.hlen(UNACKED_KEY)
        *depths, in_flight = pipe.execute()
    return {queue: int(depth) for queue, depth in zip(QUEUES, depths, strict=True)}, int(in_flight)


def inspect_workers(app: Celery, timeout: float = 1.0, previous: Iterable[WorkerState] = ()) -> tuple[WorkerState, ...]:
    """The workers that answer a broadcast within ``timeout`` and their running tasks, plus the ``previous`` workers
    that did not answer this time (marked silent, with when they last did)."""
    now = time.time()
    try:
        replies = app.control.inspect(timeout=timeout).active() or {}
    except Exception:  # noqa: BLE001 - retried once below; a second failure is the caller's to report
        # kombu keeps broker connections in process-wide pools, and after a Redis restart the first broadcast on a
        # pooled connection fails ("Connection closed by server"): drop the pools and ask once more.
        _drop_broker_connections(app)
        replies = app.control.inspect(timeout=timeout).active() or {}
    workers = {name: WorkerState(name, tuple(_active_task(info) for info in tasks or ()), True, now)
               for name, tasks in replies.items()}
    for earlier in previous:
        if earlier.name not in workers:
            workers[earlier.name] = WorkerState(earlier.name, (), False, earlier.last_seen)
    return tuple(workers[name] for name in sorted(workers))


def _drop_broker_connections(app: Celery) -> None:
    """Close every pooled broker connection of ``app`` and of kombu, so the next use connects afresh: what Celery
    itself does to a forked child's pools (``Celery._after_fork``), for which it has no public call."""
    if app._pool is not None:
        app._pool.force_close_all()
    app._after_fork()
    kombu.pools.reset()


def _active_task(info: Mapping[str, Any]) -> ActiveTask:
    args = info.get("args") or ()
    if isinstance(args, str):  # a worker asked for safe output sends the arguments' repr
        try:
            args = ast.literal_eval(args)
        except (ValueError, SyntaxError):
            args = ()
    first = args[0] if isinstance(args, list | tuple) and args else None
    return ActiveTask(str(info.get("name", "?")), str(info.get("id", "")), first if isinstance(first, str) else None)


def recent_jobs(redis: redis_lib.Redis, limit: int = 10, scan: int = JOB_SCAN) -> list[JobRecord]:
    """Up to ``limit`` jobs: the running ones among the newest ``scan`` first, then the newest others.

    One sorted-set read and one pipelined state read per frame, so a store with many finished jobs costs little; a
    plain "newest ``limit``" would hide a long film behind the photos submitted after it.
    """
    ids = [raw.decode() for raw in redis.zrevrange(f"{KEY_PREFIX}jobs", 0, scan - 1)]
    with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(job_key(job_id), "state")
        states = pipe.execute()
    running = [job_id for job_id, state in zip(ids, states, strict=True) if state == b"running"]
    others = [job_id for job_id, state in zip(ids, states, strict=True) if state not in (None, b"running")]
    store = JobStore(redis)
    records = (store.get(job_id) for job_id in (running + others)[:limit])
    return [record for record in records if record is not None]


def snapshot(redis: redis_lib.Redis, app: Celery | None, metrics_urls: Sequence[str], *,
             previous: TopSnapshot | None = None, inspect_timeout: float = 1.0, job_limit: int = 10,
             scrape_timeout: float = 2.0, window_s: float = Settings.liveness_window_s) -> TopSnapshot:
    """Everything one frame shows. ``previous`` carries silent workers forward; ``app`` None skips Celery.

    The endpoints are scraped last, after the Celery broadcast has waited its timeout, so that a first frame whose
    baseline scrape was taken just before already has a window of about ``inspect_timeout`` to compute rates over.
    """
    taken = time.time()
    errors: list[str] = []
    queues: dict[str, int] = {}
    in_flight: int | None = None
    jobs: list[JobRecord] = []
    stalled: list[HeldPiece] = []
    try:
        queues, in_flight = queue_depths(redis)
        jobs = recent_jobs(redis, job_limit)
        stalled = [piece for piece in held_pieces(redis, window_s) if piece.stalled]
    except Exception as exc:  # noqa: BLE001 - Redis down or refusing: say so and show the rest
        errors.append(f"redis: {one_line(exc)}")
    workers: tuple[WorkerState, ...] = previous.workers if previous else ()
    if app is not None:
        try:
            workers = inspect_workers(app, inspect_timeout, workers)
        except Exception as exc:  # noqa: BLE001 - the broker is Redis: the same outage, seen by Celery
            errors.append(f"celery: {one_line(exc)}")
            workers = tuple(WorkerState(w.name, (), False, w.last_seen) for w in workers)
    endpoints = tuple(scrape(url, scrape_timeout) for url in metrics_urls)
    return TopSnapshot(taken, queues, in_flight, workers, endpoints, tuple(jobs), tuple(errors), tuple(stalled))


# --- formatting --------------------------------------------------------------------------------------------


def rates(current: Endpoint, previous: Endpoint | None) -> Rates | None:
    """images/s and frames/s between two scrapes of one endpoint; None without two good scrapes to compare."""
    if previous is None or not current.ok or not previous.ok or current.at <= previous.at:
        return None
    seconds = current.at - previous.at

    def increase(now: float, before: float) -> float:
        return now - before if now >= before else now  # a counter that went down: the worker restarted at 0

    return Rates(increase(current.images, previous.images) / seconds,
                 increase(current.frames, previous.frames) / seconds, seconds)


def render(current: TopSnapshot, previous: TopSnapshot | None = None) -> str:
    """The frame for ``current``; throughput needs ``previous`` (the snapshot before it) and shows "-" without."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(current.taken))
    lines = [f"tinct top  {stamp}"]
    lines += [f"  unavailable: {error}" for error in current.errors]
    lines += ["", "QUEUES"]
    lines += [f"  {queue:<22} {depth:>8} waiting" for queue, depth in current.queues.items()]
    if current.in_flight is not None:
        lines.append(f"  {'delivered, unacked':<22} {current.in_flight:>8}")
    lines += ["", *_workers(current), "", *_throughput(current, previous)]
    gpus = _gpus(current)
    if gpus:
        lines += ["", *gpus]
    lines += ["", *_jobs(current)]
    if current.stalled:
        lines += ["", *_stalled(current)]
    return "\n".join(_clip(line) for line in lines) + "\n"


def _workers(current: TopSnapshot) -> list[str]:
    replying = sum(worker.replied for worker in current.workers)
    lines = [f"WORKERS  {replying} replying" + (f", {len(current.workers) - replying} silent"
                                               if replying < len(current.workers) else "")]
    for worker in current.workers:
        if not worker.replied:
            silent = max(0.0, current.taken - worker.last_seen)
            lines.append(f"  {worker.name:<30} silent for {silent:.0f} s (busy in a solo pool, or gone)")
        elif not worker.active:
            lines.append(f"  {worker.name:<30} idle")
        for task in worker.active if worker.replied else ():
            job = f"job {task.job_id}" if task.job_id else f"task {task.task_id}"
            lines.append(f"  {worker.name:<30} {task.task:<24} {job}")
    if not current.workers:
        lines.append("  (none replied)")
    return lines


def _throughput(current: TopSnapshot, previous: TopSnapshot | None) -> list[str]:
    before = {endpoint.url: endpoint for endpoint in previous.endpoints} if previous else {}
    lines = [f"THROUGHPUT  {'':<26} {'images/s':>9} {'frames/s':>9} {'images':>10} {'frames':>10}  jobs ok/failed"]
    windows: list[float] = []
    total = [0.0] * 6
    for endpoint in current.endpoints:
        label = _label(endpoint)
        if not endpoint.ok:
            lines.append(f"  {label:<36} unreachable: {endpoint.error}")
            continue
        rate = rates(endpoint, before.get(endpoint.url))
        if rate is not None:
            windows.append(rate.seconds)
        values = (rate.images_per_s if rate else None, rate.frames_per_s if rate else None, endpoint.images,
                  endpoint.frames, endpoint.jobs.get("succeeded", 0.0), endpoint.jobs.get("failed", 0.0))
        total = [so_far + (value or 0.0) for so_far, value in zip(total, values, strict=True)]
        lines.append(_throughput_line(label, *values))
    if len(current.endpoints) > 1:
        lines.append(_throughput_line("all", *(total[:2] if windows else (None, None)), *total[2:]))
    if not current.endpoints:
        lines.append("  (no metrics endpoints: give --metrics HOST:PORT for each worker's TINCT_METRICS_PORT)")
    elif windows:
        lines.append(f"  rates over the last {min(windows):.1f} s")
    return lines


def _label(endpoint: Endpoint) -> str:
    return endpoint.url.removeprefix("http://").removesuffix("/metrics")


def _throughput_line(label: str, images_s: float | None, frames_s: float | None, images: float, frames: float,
                     ok: float, failed: float) -> str:
    def per_s(value: float | None) -> str:
        return f"{value:>9.2f}" if value is not None else f"{'-':>9}"

    return (f"  {label:<36} {per_s(images_s)} {per_s(frames_s)} {images:>10.0f} {frames:>10.0f}  "
            f"{ok:.0f}/{failed:.0f}")


def _gpus(current: TopSnapshot) -> list[str]:
    lines = []
    for endpoint in current.endpoints:
        label = _label(endpoint)
        for gpu in endpoint.gpus:
            util = f"{gpu.utilization * 100:>3.0f}%" if gpu.utilization is not None else "   -"
            memory = (f"{gpu.memory_used / 2**30:.1f}/{gpu.memory_total / 2**30:.1f} GiB"
                      if gpu.memory_used is not None and gpu.memory_total is not None else "-")
            celsius = f"{gpu.temperature:.0f} C" if gpu.temperature is not None else "-"
            lines.append(f"  {label:<22} gpu {gpu.index:<3} {gpu.name:<24} util {util}  mem {memory:<17} {celsius}")
    return ["GPUS", *lines] if lines else []


def _jobs(current: TopSnapshot) -> list[str]:
    lines = ["JOBS (running first, then the most recent)",
             f"  {'ID':<24}  {'STATE':<9}  {'KIND':<10}  {'PROGRESS':<22}  {'RATE':>9}  {'ETA':>7}  INPUT"]
    stalled_jobs = {piece.job_id for piece in current.stalled}
    for record in current.jobs:
        state = "stalled" if record.state == "running" and record.id in stalled_jobs else record.state
        progress = f"{record.done}/{record.total} {record.unit}" if record.total else ""
        rate = f"{record.fps:.1f}/s" if record.fps else "-"
        eta = f"{record.eta_s:.0f} s" if record.eta_s is not None and record.state == "running" else "-"
        lines.append(f"  {record.id:<24}  {state:<9}  {record.spec.kind:<10}  {progress:<22}  {rate:>9}  "
                     f"{eta:>7}  {record.spec.input}")
    if not current.jobs:
        lines.append("  (no jobs)")
    return lines


def _stalled(current: TopSnapshot) -> list[str]:
    lines = [f"STALLED PIECES  {len(current.stalled)} (worker silent, or no progress, for over the liveness window; "
             "a silent worker's pieces are re-queued)"]
    for piece in current.stalled:
        stamp = time.strftime("%H:%M:%S", time.localtime(piece.since))
        why = f"worker silent {piece.silent_s:.0f} s" if piece.silent_s > 0.5 * piece.idle_s else "no progress"
        lines.append(f"  {piece.job_id:<24}  {piece.piece:<16}  on {piece.node:<30}  since {stamp} ({why})")
    return lines


def _clip(line: str) -> str:
    """Frames stay within 120 columns so they do not wrap in a standard terminal (long URIs are cut)."""
    return line if len(line) <= WIDTH else line[: WIDTH - 3] + "..."


# --- the loop and the command ------------------------------------------------------------------------------


def run_top(redis: redis_lib.Redis, app: Celery | None, metrics_urls: Sequence[str], *, out: TextIO,
            interval: float = 2.0, once: bool = False, inspect_timeout: float = 1.0, job_limit: int = 10,
            frames: int | None = None, window_s: float = Settings.liveness_window_s) -> None:
    """Print a frame every ``interval`` seconds (the screen cleared first when ``out`` is a terminal), or one frame
    with ``once``. Every frame, the first included, shows rates: a baseline scrape is taken before it. ``frames``
    stops after that many (for tests); otherwise it runs until interrupted."""
    clear = not once and out.isatty()
    previous = TopSnapshot(time.time(), endpoints=tuple(scrape(url) for url in metrics_urls))
    shown = 0
    while True:
        began = time.monotonic()
        current = snapshot(redis, app, metrics_urls, previous=previous, inspect_timeout=inspect_timeout,
                           job_limit=job_limit, window_s=window_s)
        out.write((CLEAR_SCREEN if clear else "") + render(current, previous))
        out.flush()
        shown += 1
        if once or (frames is not None and shown >= frames):
            return
        previous = current
        time.sleep(max(0.0, interval - (time.monotonic() - began)))


def add_top_command(commands: argparse._SubParsersAction) -> None:
    """Register ``tinct top`` (kept here so that the command's options sit next to what they drive)."""
    top = commands.add_parser("top", help="a live view of queues, workers, throughput, GPUs and jobs")
    top.add_argument("--metrics", action="append", default=[], metavar="HOST:PORT",
                     help="a worker's metrics endpoint (its TINCT_METRICS_PORT); repeat for each worker")
    top.add_argument("--interval", type=positive_seconds, default=2.0, help="seconds between frames (%(default)s)")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--jobs", type=int, default=10, help="jobs shown (default: %(default)s)")
    top.add_argument("--inspect-timeout", type=positive_seconds, default=1.0,
                     help="seconds to wait for workers to answer (default: %(default)s)")
    top.set_defaults(run=_top)


def _top(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import redis as redis_lib

    from worker.app import create_app

    # The app is built from the settings read now, not worker.app's module-level one: that one took the
    # environment of whenever worker.app was first imported, and Redis and Celery must be the same server.
    settings = Settings.from_env()
    client = redis_lib.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        run_top(client, create_app(settings), [metrics_url(address) for address in args.metrics], out=sys.stdout,
                interval=args.interval, once=args.once, inspect_timeout=args.inspect_timeout, job_limit=args.jobs,
                window_s=settings.liveness_window_s)
    except KeyboardInterrupt:  # the way to leave a live view: not a failure
        pass
    finally:
        client.close()
    return 0
