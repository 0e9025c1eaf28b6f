"""``python -m tools bench --service``: the Celery/Redis service end to end, on real services on loopback.

A real ``redis-server`` and moto's real HTTP S3 server are started (``tools.local_services``), and ``tinct worker``
runs as subprocesses exactly as deployed (solo pool, both queues, events on). Two questions:

* **Photos: what does the service cost beyond the colorization?** ``--photos`` small generated gray PNGs are put in
  S3 and submitted as image jobs through :class:`worker.service.Service` to one worker. jobs/s is the photo count
  over the wall time from the first submit to the last job's success (its own ``updated`` stamp, written by the
  worker). The same photos are then colorized in this process the way the worker does it (``read_photo``,
  ``Colorizer.colorize`` on one photo, ``write_photo``; same engine and render size); the **overhead per job** is
  the wall time per job minus that. Celery's task events (the stream Flower reads; the worker always sends them)
  split it into time inside the two tasks of a photo job (``tinct.plan`` and ``tinct.colorize_photos``: S3
  HEAD/GET/PUT and Redis bookkeeping) and time between tasks (the broker's dispatch, the worker idle).
* **A collection**: the same photos as one collection job (a prefix, fanned out in pieces of up to
  ``TINCT_COLLECTION_BATCH`` photos, each piece coloured in batches of the worker's batch size): photos/s from its
  submit to its success, against the photos as separate jobs above.
* **Queue latency**: ``--latency-jobs`` photos submitted one at a time to an idle worker, so nothing waits behind
  anything: the submit call, the job record's ``created`` -> ``started`` (the plan task running), and each task's
  sent -> started from its events. The queue overhead per photo is the two hops together. The job record alone
  cannot give the second hop: nothing in it records when the colorize piece began (events can).
* **A scan kept as frames** (``--scan-frames``): a generated run of 10-bit DPX frames in S3, coloured on one warm
  worker into a film file and into DPX frames: each job's wall time, its join, and the peak size of the worker's
  work folder (sampled every 0.1 s), which a worker reading a run a window at a time keeps to a few windows whatever
  the reel's length.
* **Films: does a film go faster on more workers?** One generated black-and-white film (``tools.bench_video``) in
  S3, cut into segments of ``--segment-seconds``, is colorized with each worker count of ``--film-workers``
  (Redis flushed and fresh workers between runs; every worker has loaded its model before the clock starts).
  The speed-up is bounded by the cores: the output names how many this process may use.

Needs the dev extra (moto's S3 server: ``pip install -e .[dev]``) and ``redis-server`` on PATH.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from celery import Celery
from celery.events.receiver import EventReceiver
from PIL import Image

from tools.bench_video import FPS, make_test_film, make_test_scan
from tools.runtime import frame_size, onnx_cache_dir, write_json
from worker.app import create_app
from worker.jobs import FINISHED, JobRecord, JobSpec, job_key
from worker.media.images import DEFAULT_MAX_PIXELS, read_photo, write_photo
from worker.photos import open_colorizer
from worker.service import Service
from worker.settings import Settings

if TYPE_CHECKING:
    from tools.local_services import RedisServer, S3Server, WorkerProcess

log = logging.getLogger(__name__)

IN_BUCKET = "bench-in"
OUT_BUCKET = "bench-out"
WORKER_START_TIMEOUT_S = 120.0
PHOTO_JOB_TIMEOUT_S = 120.0  # one photo job, or the tail of a batch after its last submit, plus per photo below
FILM_JOB_TIMEOUT_S = 1800.0
POLL_S = 0.05  # how often job states are read; timings come from the records' own stamps, not from polling
IDLE_BEFORE_LATENCY_JOB_S = 0.2  # let the worker finish acknowledging and block on the empty queue again
WARMUP_ROUNDS = 10
_JOB_ID = re.compile(r"[0-9a-f]{24}")  # worker.jobs.JobSpec.job_id: the first argument of every task


class ServiceBenchUnavailable(RuntimeError):
    """Something the service benchmark needs is not installed; ``str()`` says what and how to get it."""


# --- Celery task events ----------------------------------------------------------------------------------


@dataclass
class TaskTimes:
    """One task as its events tell it. Stamps are ``time.time()`` on this machine, in the client (sent) or the
    worker (the rest), so they compare directly with job records' stamps."""

    uuid: str
    name: str = ""
    job_id: str = ""
    hostname: str = ""
    sent: float | None = None
    received: float | None = None
    started: float | None = None
    succeeded: float | None = None
    runtime: float | None = None  # seconds inside the task function, measured by the worker

    @property
    def queue_s(self) -> float | None:
        """Sent -> started: the hop through Redis to a worker, plus any wait behind other tasks."""
        return None if self.sent is None or self.started is None else self.started - self.sent


class _Receiver(EventReceiver):
    """Celery's event receiver, telling when it is consuming, so no event of the benchmark is lost to a late
    subscription (Redis delivers events by PUBLISH: whoever is not subscribed yet never sees them)."""

    def __init__(self, *args: Any, ready: threading.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ready = ready

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, wakeup: bool = True,
                         **kwargs: Any) -> None:
        super().on_consume_ready(connection, channel, consumers, wakeup=wakeup, **kwargs)
        self._ready.set()


class TaskEvents:
    """Celery's task and worker events, captured in a thread for the benchmark's whole life.

    They time what job records cannot: each hop through the queue (sent -> started) and each task's run, per
    task, with the worker that ran it. Workers send them anyway (``tinct worker`` passes ``--events``).
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._tasks: dict[str, TaskTimes] = {}
        self._hosts: set[str] = set()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._receiver: _Receiver | None = None
        self._thread = threading.Thread(target=self._run, name="celery-events", daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> TaskEvents:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"could not listen to Celery events: {self._error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            with self.app.connection_for_read() as connection:
                self._receiver = _Receiver(connection, handlers={"*": self._on_event}, app=self.app,
                                           ready=self._ready)
                self._receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # noqa: BLE001 - reported by __enter__ or by the waits that find nothing
            self._error = exc
            self._ready.set()

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type", ""))
        with self._lock:
            if kind.startswith("worker-"):
                self._hosts.add(str(event.get("hostname", "")))
                return
            uuid = event.get("uuid")
            if not kind.startswith("task-") or not uuid:
                return
            task = self._tasks.setdefault(uuid, TaskTimes(uuid))
            if event.get("name"):
                task.name = str(event["name"])
            if not task.job_id and event.get("args"):
                found = _JOB_ID.search(str(event["args"]))
                task.job_id = found.group(0) if found else ""
            stamp = float(event.get("timestamp", 0.0))
            if kind == "task-sent":
                task.sent = stamp
            elif kind in ("task-received", "task-started", "task-succeeded"):
                task.hostname = str(event.get("hostname", task.hostname))
                setattr(task, kind.removeprefix("task-"), stamp)
                if kind == "task-succeeded":
                    task.runtime = float(event.get("runtime", 0.0))

    def hosts(self) -> set[str]:
        with self._lock:
            return set(self._hosts)

    def tasks(self, job_ids: Sequence[str], name: str | None = None) -> list[TaskTimes]:
        wanted = set(job_ids)
        with self._lock:
            found = [asdict(t) for t in self._tasks.values() if t.job_id in wanted and name in (None, t.name)]
        return [TaskTimes(**t) for t in found]

    def wait_complete(self, job_ids: Sequence[str], names: Sequence[str], timeout: float = 10.0) -> None:
        """Wait until every job has a finished task of each name (a job's state can be read before the events of
        its last task arrive)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = {(t.job_id, t.name) for t in self.tasks(job_ids) if t.succeeded is not None and t.sent is not None}
            if all((job, name) in done for job in job_ids for name in names):
                return
            time.sleep(POLL_S)
        raise RuntimeError(f"Celery events for {len(job_ids)} jobs incomplete after {timeout:.0f} s "
                           f"(events listener: {self._error!r})")


# --- workers -----------------------------------------------------------------------------------------------


class BenchError(RuntimeError):
    """A job failed or hung during the benchmark; the message carries the workers' log tails."""


@dataclass
class Services:
    """What every phase shares: the servers, the event stream, where workers log, how they are configured."""

    redis: RedisServer
    s3: S3Server
    events: TaskEvents
    folder: Path
    worker_env: Callable[[str], dict[str, str]]
    workers: list[WorkerProcess]

    def service(self) -> Service:
        from tools.local_services import s3_settings

        return Service(s3_settings(self.s3, redis_url=self.redis.url))

    def start_workers(self, count: int, prefix: str) -> list[WorkerProcess]:
        from tools.local_services import WorkerProcess  # moto is a dev dependency: imported only when benchmarking

        started = [WorkerProcess(f"{prefix}-{i + 1}", self.worker_env(f"{prefix}-{i + 1}"),
                               self.folder / f"{prefix}-{i + 1}.log") for i in range(count)]
        self.workers += started
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while not all(any(w.owns(h) for h in self.events.hosts()) for w in started):
            for worker in started:
                if worker.process.poll() is not None:
                    raise BenchError(f"worker {worker.name} exited ({worker.process.returncode}):\n"
                                     f"{worker.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"workers did not come online in {WORKER_START_TIMEOUT_S:.0f} s:\n"
                                 + "\n".join(w.log_tail() for w in started))
            time.sleep(POLL_S)
        return started

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    def logs(self) -> str:
        return "\n".join(f"--- {w.name} ---\n{w.log_tail()}" for w in self.workers)


# --- jobs --------------------------------------------------------------------------------------------------


@dataclass
class JobTimes:
    """A finished job's stamps from its record in Redis (``created`` by the submit, ``started`` by the plan task,
    ``updated`` by the worker's last write: the success)."""

    job_id: str
    state: str
    created: float
    started: float
    updated: float
    error: str


def job_times(service: Service, job_id: str) -> JobTimes:
    # ``started`` is kept in the job's hash but not in JobRecord; work.py reads it the same way.
    raw = service.redis.hmget(job_key(job_id), "state", "created", "started", "updated", "error")
    state, created, started, updated, error = (value.decode() if value is not None else "" for value in raw)
    return JobTimes(job_id, state, float(created or 0), float(started or 0), float(updated or 0), error)


def wait_finished(services: Services, service: Service, job_ids: Sequence[str], timeout: float) -> list[JobTimes]:
    """Wait for every job to finish; raise BenchError, with the workers' logs, if one failed or time ran out."""
    deadline = time.monotonic() + timeout
    while True:
        states = service.job_states(job_ids)
        if all(state in FINISHED for state in states):
            break
        if time.monotonic() > deadline:
            waiting = sum(state not in FINISHED for state in states)
            raise BenchError(f"{waiting} of {len(job_ids)} jobs unfinished after {timeout:.0f} s\n{services.logs()}")
        time.sleep(POLL_S)
    times = [job_times(service, job_id) for job_id in job_ids]
    failed = [t for t in times if t.state != "succeeded"]
    if failed:
        raise BenchError(f"{len(failed)} of {len(times)} jobs {failed[0].state}: {failed[0].error}\n{services.logs()}")
    return times


def photo_spec(input_uri: str, output_uri: str, options: dict[str, Any]) -> JobSpec:
    return JobSpec.from_dict({"input": input_uri, "output": output_uri, "kind": "image", "options": options})


def warm_up(services: Services, service: Service, workers: Sequence[WorkerProcess], photo_uri: str,
            options: dict[str, Any], label: str) -> int:
    """Run photo jobs until every worker has colorized one, so that model loading (and an ONNX export, the first
    time) is never timed. Which idle worker takes a task is up to Redis, hence rounds of one job per worker;
    returns the jobs it took."""
    jobs = 0
    for round_ in range(WARMUP_ROUNDS):
        ids = [service.submit(photo_spec(photo_uri, f"s3://{OUT_BUCKET}/warmup/{label}-{round_}-{i}/", options))[0]
               for i in range(len(workers))]
        jobs += len(ids)
        wait_finished(services, service, ids, PHOTO_JOB_TIMEOUT_S)
        services.events.wait_complete(ids, ["tinct.colorize_photos"])
        warmed = {t.hostname for t in services.events.tasks(_all_warmup_ids(service), "tinct.colorize_photos")}
        if all(any(w.owns(h) for h in warmed) for w in workers):
            return jobs
    raise BenchError(f"not every worker took a warm-up job in {WARMUP_ROUNDS} rounds\n{services.logs()}")


def _all_warmup_ids(service: Service) -> list[str]:
    return [r.id for r in service.recent(1000) if "/warmup/" in r.spec.output]


# --- photos ------------------------------------------------------------------------------------------------


def make_gray_photos(folder: Path, count: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """``count`` black-and-white PNGs: gradients, blocks and grain, so that decode and encode do real work (a flat
    image compresses to nothing), and each photo differs (each is its own job, with its own identity)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        phase = rng.uniform(0, 2 * np.pi)
        image = 0.5 + 0.35 * np.sin(x / rng.uniform(15, 40) + y / rng.uniform(20, 50) + phase)
        for _ in range(4):
            y0, x0 = rng.integers(0, max(1, height // 2)), rng.integers(0, max(1, width // 2))
            image[y0 : y0 + height // 4, x0 : x0 + width // 4] = rng.random()
        image += rng.normal(0.0, 0.03, image.shape)
        path = folder / f"p{i:04d}.png"
        Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8), mode="L").save(path)
        paths.append(path)
    return paths


def measure_in_process(photos: Sequence[Path], out_dir: Path, model: str, engine: str, device: str,
                       precision: str, render_size: int, repeats: int) -> dict[str, Any]:
    """Milliseconds per photo for what a photo job's colorize task does besides storage and bookkeeping: decode,
    colorize one photo, encode (``worker.work._PhotoPiece`` on a piece of one photo, without the S3 GET/PUT), with
    the worker's engine settings.

    One untimed pass warms the engine; each stage's figure is the median over ``repeats`` passes of its mean per
    photo.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    passes: list[dict[str, float]] = []
    with open_colorizer(model, engine=engine, device=device, precision=precision, render_size=render_size,
                        batch_size=Settings().batch_size, cache_dir=onnx_cache_dir()) as (colorizer, label):
        for index in range(repeats + 1):
            stages = {"decode": 0.0, "colorize": 0.0, "encode": 0.0}
            for path in photos:
                t0 = time.perf_counter()
                photo = read_photo(path, DEFAULT_MAX_PIXELS)
                t1 = time.perf_counter()
                rgb = colorizer.colorize([photo.L])[0]
                t2 = time.perf_counter()
                write_photo(out_dir / path.name, rgb, photo, label, photo.alpha)
                t3 = time.perf_counter()
                stages["decode"] += t1 - t0
                stages["colorize"] += t2 - t1
                stages["encode"] += t3 - t2
            if index:  # the first pass is the warm-up
                passes.append({name: seconds / len(photos) * 1000 for name, seconds in stages.items()})
        engine_info = {"model": label, "engine": colorizer.engine.name, "device": str(colorizer.engine.device),
                       "precision": colorizer.engine.precision}
    per_stage = {name: statistics.median(p[name] for p in passes) for name in ("decode", "colorize", "encode")}
    return {**engine_info, "ms_per_photo": {**per_stage, "total": sum(per_stage.values())}}


def measure_storage(service: Service, inputs: Sequence[str], folder: Path) -> dict[str, float]:
    """Milliseconds per photo for the S3 calls a colorize task makes, made the same way from this process: HEAD of
    the output (already done?), HEAD of the input (its identity), then ``Storage.download`` (HEAD, GET, fsync) and
    ``Storage.upload`` (PUT, HEAD). This is the storage share of the in-task overhead; the rest is Redis and
    Celery. moto serves from this process too, so client and server share one interpreter here (in the service
    they do not): if anything, an upper bound."""
    folder.mkdir(parents=True, exist_ok=True)
    storage = service.storage
    storage.stat(inputs[0])  # the client is created on first use, as a worker's is before its first job
    per_photo = []
    for index, uri in enumerate(inputs):
        output, local = f"s3://{OUT_BUCKET}/storage-probe/{index}.png", folder / f"{index}.png"
        began = time.perf_counter()
        storage.exists(output)
        storage.stat(uri)
        storage.download(uri, local)
        storage.upload(local, output)
        per_photo.append((time.perf_counter() - began) * 1000)
    return {"requests": "HEAD x4, GET, PUT", "ms_per_photo": statistics.median(per_photo)}


def run_photo_throughput(services: Services, service: Service, inputs: Sequence[str], options: dict[str, Any],
                         in_process_ms: float, storage_ms: float) -> dict[str, Any]:
    """All photos submitted at once to one warm worker: jobs/s, and the overhead per job split by task events."""
    t0 = time.time()
    ids = [service.submit(photo_spec(uri, f"s3://{OUT_BUCKET}/photos/", options))[0] for uri in inputs]
    submit_s = time.time() - t0
    times = wait_finished(services, service, ids, PHOTO_JOB_TIMEOUT_S + 10.0 * len(ids))
    wall_s = max(t.updated for t in times) - t0
    names = ["tinct.plan", "tinct.colorize_photos"]
    services.events.wait_complete(ids, names)
    tasks = services.events.tasks(ids)
    task_ms = {name: 1000 * statistics.fmean(t.runtime or 0.0 for t in tasks if t.name == name) for name in names}
    ms_per_job = wall_s / len(ids) * 1000
    in_tasks_ms = sum(task_ms.values())
    return {
        "jobs": len(ids),
        "workers": 1,
        "wall_s": wall_s,
        "submit_s": submit_s,
        "jobs_per_s": len(ids) / wall_s,
        "ms_per_job": ms_per_job,
        "task_ms": task_ms,  # mean run time of each task of a photo job, in the worker
        "overhead_ms_per_job": ms_per_job - in_process_ms,
        "in_tasks_overhead_ms": in_tasks_ms - in_process_ms,  # S3 HEAD/GET/PUT, Redis bookkeeping, events
        "s3_ms": storage_ms,  # of which S3, as measured from this process (measure_storage)
        "redis_celery_in_tasks_ms": in_tasks_ms - in_process_ms - storage_ms,
        "between_tasks_ms": ms_per_job - in_tasks_ms,  # broker dispatch: the worker between two tasks
    }


def run_collection(services: Services, service: Service, prefix: str, photos: int,
                   options: dict[str, Any]) -> dict[str, Any]:
    """The photos under ``prefix`` as one collection job on the warm worker: photos/s from its submit to its
    success (its record's ``updated`` stamp)."""
    t0 = time.time()
    job_id, _ = service.submit(JobSpec.from_dict({"input": prefix, "output": f"s3://{OUT_BUCKET}/collection/",
                                                  "options": options}))
    (times,) = wait_finished(services, service, [job_id], PHOTO_JOB_TIMEOUT_S + 10.0 * photos)
    wall_s = times.updated - t0
    return {"photos": photos, "wall_s": wall_s, "photos_per_s": photos / wall_s}


def run_photo_latency(services: Services, service: Service, inputs: Sequence[str],
                      options: dict[str, Any]) -> dict[str, Any]:
    """Photos submitted one at a time to an idle worker: how long each hop through the queue takes when nothing
    waits ahead of it (medians)."""
    ids, submit_ms = [], []
    for uri in inputs:
        time.sleep(IDLE_BEFORE_LATENCY_JOB_S)
        began = time.perf_counter()
        job_id, _ = service.submit(photo_spec(uri, f"s3://{OUT_BUCKET}/latency/", options))
        submit_ms.append((time.perf_counter() - began) * 1000)
        wait_finished(services, service, [job_id], PHOTO_JOB_TIMEOUT_S)
        ids.append(job_id)
    services.events.wait_complete(ids, ["tinct.plan", "tinct.colorize_photos"])
    records = [job_times(service, job_id) for job_id in ids]
    plan = [t.queue_s for t in services.events.tasks(ids, "tinct.plan")]
    colorize = [t.queue_s for t in services.events.tasks(ids, "tinct.colorize_photos")]
    per_photo = {
        "submit_ms": statistics.median(submit_ms),
        # from the job records alone: submitted -> plan task writing "running"
        "created_to_started_ms": statistics.median((t.started - t.created) * 1000 for t in records),
        "plan_queue_ms": statistics.median(1000 * q for q in plan if q is not None),
        "colorize_queue_ms": statistics.median(1000 * q for q in colorize if q is not None),
        "job_ms": statistics.median((t.updated - t.created) * 1000 for t in records),
    }
    per_photo["queue_ms_per_photo"] = per_photo["plan_queue_ms"] + per_photo["colorize_queue_ms"]
    return {"jobs": len(ids), **per_photo}


# --- films -------------------------------------------------------------------------------------------------


def run_film(services: Services, film_uri: str, workers: int, options: dict[str, Any], photo_uri: str,
             photo_options: dict[str, Any], label: str) -> dict[str, Any]:
    """One film job on ``workers`` fresh, warm workers over a flushed Redis: wall time and who did what. ``label``
    names this run's workers and output, unique per run so that nothing of an earlier run is taken for its own."""
    services.stop_workers()
    services.redis.flush()
    service = services.service()
    started = services.start_workers(workers, label)
    warm_up(services, service, started, photo_uri, photo_options, label)
    spec = JobSpec.from_dict({"input": film_uri, "output": f"s3://{OUT_BUCKET}/{label}/", "kind": "video",
                              "options": options})
    cpu_before = [w.cpu_seconds() for w in started]
    t0 = time.time()
    job_id, _ = service.submit(spec)
    (times,) = wait_finished(services, service, [job_id], FILM_JOB_TIMEOUT_S)
    cpu_s = {w.name: w.cpu_seconds() - before for w, before in zip(started, cpu_before, strict=True)}
    record: JobRecord | None = service.get(job_id)
    assert record is not None
    services.events.wait_complete([job_id], ["tinct.join_film"])
    segments = services.events.tasks([job_id], "tinct.colorize_segment")
    (join,) = services.events.tasks([job_id], "tinct.join_film")
    per_worker = {w.name: [s for s in segments if w.owns(s.hostname)] for w in started}
    services.stop_workers()
    wall_s = times.updated - t0
    return {
        "workers": workers,
        "wall_s": wall_s,
        "frames": record.total,
        "segments": len(segments),
        "fps": record.total / wall_s,
        "segments_per_worker": {name: len(tasks) for name, tasks in per_worker.items()},
        "segment_busy_s": {name: sum(t.runtime or 0.0 for t in tasks) for name, tasks in per_worker.items()},
        "join_s": join.runtime,
        "plan_to_done_s": record.metrics.get("seconds"),
        "worker_cpu_s": cpu_s,
        "cores_busy": sum(cpu_s.values()) / wall_s,
    }


# --- the benchmark -----------------------------------------------------------------------------------------


def _local_services() -> Any:
    """``tools.local_services``, or a clear message: moto's server is a dev dependency, not the product's."""
    try:
        import tools.local_services as local_services
    except ImportError as exc:
        raise ServiceBenchUnavailable(
            f"--service needs moto's S3 server, a dev dependency ({exc}): pip install -e .[dev]") from exc
    if shutil.which(local_services.REDIS_BINARY) is None:
        raise ServiceBenchUnavailable(f"--service needs {local_services.REDIS_BINARY} on PATH "
                                      "(e.g. apt-get install redis-server)")
    return local_services


def _model_ref(model: str) -> str:
    """A checkpoint path made absolute (workers run elsewhere); a model name as it is."""
    return str(Path(model).resolve()) if Path(model).suffix in (".pt", ".onnx") and Path(model).exists() else model


def _system() -> dict[str, Any]:
    # tools.bench imports this module for its options, so its system_info is imported when it is needed.
    from tools.bench import system_info

    info = system_info()
    info["load_average"] = list(os.getloadavg())
    return info


@contextmanager
def local_services(folder: Path, args: argparse.Namespace) -> Iterator[Services]:
    """Redis, moto S3 and the event listener for the benchmark's life; every worker is stopped on the way out."""
    services_module = _local_services()
    with services_module.RedisServer(folder / "redis") as redis_server, services_module.S3Server() as s3_server:
        settings = services_module.s3_settings(s3_server, redis_url=redis_server.url)
        worker_settings: dict[str, object] = {"engine": args.engine, "device": args.device,
                                              "precision": args.precision, "segment_seconds": args.segment_seconds}
        # The ONNX export made here for the in-process measurement is the one the workers load.
        worker_settings["cache_dir"] = str(onnx_cache_dir().parent)

        def worker_env(name: str) -> dict[str, str]:
            env = services_module.env_for_workers(redis_server, s3_server, work_dir=folder / f"work-{name}",
                                                  base=os.environ, **worker_settings)
            if args.threads:
                env["OMP_NUM_THREADS"] = str(args.threads)  # torch (and ONNX Runtime after it) in the worker
            return env

        with TaskEvents(create_app(settings)) as events:
            services = Services(redis_server, s3_server, events, folder, worker_env, [])
            try:
                yield services
            finally:
                services.stop_workers()


def run_service_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Photos (throughput, overhead, queue latency) on one worker, then the film on each worker count."""
    _local_services()  # fail before any work when moto or redis-server is missing
    model = _model_ref(args.model)
    width, height = frame_size(args.photo_size)
    photo_options = {"model": model, "render_size": args.render_size}
    results: dict[str, Any] = {
        "system": _system(),
        "config": {"model": args.model, "engine": args.engine, "device": args.device, "precision": args.precision,
                   "render_size": args.render_size, "photos": args.photos, "photo_size": [width, height],
                   "latency_jobs": args.latency_jobs, "repeats": args.repeats,
                   "worker_threads": str(args.threads or os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads())},
    }
    with tempfile.TemporaryDirectory(prefix="tinct-bench-service-") as tmp:
        folder = Path(tmp)
        photos = make_gray_photos(folder / "photos", args.photos, width, height)
        log.info("colorizing %d photos in this process (reference)", len(photos))
        in_process = measure_in_process(photos, folder / "in-process", model, args.engine, args.device,
                                        args.precision, args.render_size, max(1, args.repeats))
        results["in_process"] = in_process
        with local_services(folder, args) as services:
            s3 = services.s3
            s3.make_bucket(IN_BUCKET)
            s3.make_bucket(OUT_BUCKET)
            inputs = []
            for path in photos:
                s3.client().upload_file(str(path), IN_BUCKET, f"photos/{path.name}")
                inputs.append(f"s3://{IN_BUCKET}/photos/{path.name}")
            service = services.service()
            results["s3_in_process"] = measure_storage(service, inputs, folder / "s3-probe")
            worker = services.start_workers(1, "photos")
            log.info("warming up the photo worker")
            warm_up(services, service, worker, inputs[0], photo_options, "photos")
            log.info("%d photo jobs at once", len(inputs))
            results["photos"] = run_photo_throughput(services, service, inputs, photo_options,
                                                     in_process["ms_per_photo"]["total"],
                                                     results["s3_in_process"]["ms_per_photo"])
            log.info("the %d photos as one collection", len(inputs))
            results["collection"] = run_collection(services, service, f"s3://{IN_BUCKET}/photos/", len(inputs),
                                                   photo_options)
            log.info("%d photo jobs one at a time", args.latency_jobs)
            results["latency"] = run_photo_latency(services, service, inputs[: args.latency_jobs], photo_options)
            services.stop_workers()
            if args.scan_frames:
                results["scan"] = _bench_scan(services, args, model, inputs[0], photo_options)
            if not args.no_film:
                results["film"] = _bench_film(services, args, model, inputs[0], photo_options)
    return results


class _PeakSize:
    """The largest total size of the files under ``folder``, sampled every 0.1 s while the block runs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="tinct-bench-peak", daemon=True)

    def __enter__(self) -> _PeakSize:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            total = 0
            for path in self.folder.rglob("*"):
                try:
                    total += path.stat().st_size if path.is_file() else 0
                except FileNotFoundError:  # a frame read and removed between the listing and the stat
                    continue
            self.bytes = max(self.bytes, total)


def _bench_scan(services: Services, args: argparse.Namespace, model: str, photo_uri: str,
                photo_options: dict[str, Any]) -> dict[str, Any]:
    """The scan's run in S3, coloured by one warm worker into a film file, then into DPX frames."""
    width, height = frame_size(args.scan_size)
    frames = make_test_scan(services.folder / "scan", width, height, args.scan_frames)
    for path in frames:
        services.s3.client().upload_file(str(path), IN_BUCKET, f"scan/reel1/{path.name}")
    run = f"s3://{IN_BUCKET}/scan/reel1/scan_%07d.dpx"
    base = {"model": model, "render_size": args.render_size, "smoothing": args.smoothing}
    jobs = {"film": (f"s3://{OUT_BUCKET}/scan-film/", {**base, "codec": args.codec, "crf": args.crf,
                                                        "preset": args.preset}),
            "DPX frames": (f"s3://{OUT_BUCKET}/scan-frames/scan_%07d.dpx", base)}
    services.stop_workers()
    services.redis.flush()
    service = services.service()
    workers = services.start_workers(1, "scan")
    warm_up(services, service, workers, photo_uri, photo_options, "scan")
    runs = {}
    for label, (output, options) in jobs.items():
        log.info("the scan into %s", label)
        spec = JobSpec.from_dict({"input": run, "output": output, "kind": "video", "options": options})
        with _PeakSize(services.folder / "work-scan-1") as peak:
            t0 = time.time()
            job_id, _ = service.submit(spec)
            (times,) = wait_finished(services, service, [job_id], FILM_JOB_TIMEOUT_S)
        services.events.wait_complete([job_id], ["tinct.join_film"])
        (join,) = services.events.tasks([job_id], "tinct.join_film")
        record = service.get(job_id)
        assert record is not None
        runs[label] = {"wall_s": times.updated - t0, "join_s": join.runtime, "work_peak_mb": peak.bytes / 1e6,
                       "segments": len(services.events.tasks([job_id], "tinct.colorize_segment")),
                       "output_mb": record.metrics["output_size"] / 1e6}
    services.stop_workers()
    return {"size": f"{width}x{height}", "frames": len(frames), "input_mb": sum(p.stat().st_size for p in frames) / 1e6,
            "segment_seconds": args.segment_seconds, "codec": args.codec, "runs": runs}


def _bench_film(services: Services, args: argparse.Namespace, model: str, photo_uri: str,
                photo_options: dict[str, Any]) -> dict[str, Any]:
    width, height = frame_size(args.film_size)
    path = make_test_film(services.folder / "film.mp4", width, height, args.film_seconds)
    services.s3.client().upload_file(str(path), IN_BUCKET, "films/film.mp4")
    options = {"model": model, "render_size": args.render_size, "smoothing": args.smoothing, "codec": args.codec,
               "crf": args.crf, "preset": args.preset}
    runs = []
    for index, workers in enumerate(int(n) for n in args.film_workers.split(",") if n.strip()):
        log.info("film on %d worker(s)", workers)
        runs.append(run_film(services, f"s3://{IN_BUCKET}/films/film.mp4", workers, options, photo_uri,
                             photo_options, f"film{index + 1}-{workers}w"))
    for run in runs:
        run["speedup"] = runs[0]["wall_s"] / run["wall_s"]
    return {"size": f"{width}x{height}", "seconds": args.film_seconds, "frames": round(args.film_seconds * FPS),
            "segment_seconds": args.segment_seconds, "options": options, "runs": runs}


# --- command line and report ---------------------------------------------------------------------------------


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "service (--service; needs the dev extra, pip install -e .[dev], and redis-server on PATH)")
    group.add_argument("--service", action="store_true",
                       help="benchmark the Celery/Redis service end to end on local Redis, moto S3 and real workers")
    group.add_argument("--photos", type=int, default=50, help="photo jobs submitted at once to one worker")
    group.add_argument("--photo-size", default="256x171", help="size of the generated gray photos")
    group.add_argument("--latency-jobs", type=int, default=10, help="photo jobs submitted one at a time")
    group.add_argument("--engine", default="auto", help="the workers' engine (TINCT_ENGINE): auto, torch, onnxruntime")
    group.add_argument("--precision", default="auto", help="the workers' precision (TINCT_PRECISION)")
    group.add_argument("--film-size", default="640x360",
                       help="size of the generated test film (encoded with --codec, --preset, --crf, --smoothing)")
    group.add_argument("--film-seconds", type=float, default=20.0, help="length of the test film")
    group.add_argument("--segment-seconds", type=float, default=4.0, help="film segment length (TINCT_SEGMENT_SECONDS)")
    group.add_argument("--film-workers", default="1,2", help="worker counts to colorize the film with")
    group.add_argument("--no-film", action="store_true", help="no film on 1 and more workers")
    group.add_argument("--scan-frames", type=int, default=0,
                       help="also colour a generated run of this many 10-bit DPX frames kept in S3, into a film and "
                       "into DPX frames (0: none)")
    group.add_argument("--scan-size", default="2048x1556", help="size of the scan's frames (2K full aperture)")


def service_table(results: dict[str, Any]) -> str:
    s, c, ip = results["system"], results["config"], results["in_process"]
    ms = ip["ms_per_photo"]
    photos, latency, collection = results["photos"], results["latency"], results["collection"]
    lines = [
        f"CPU: {s['cpu']} ({s['cpus_usable']} of {s['cpu_count']} cores usable, load average "
        f"{s['load_average'][0]:.2f} at start); torch {s['torch']}, onnxruntime {s['onnxruntime']}; "
        f"worker threads {c['worker_threads']}",
        f"model {ip['model']} on {ip['engine']} {ip['device']} {ip['precision']}, render size {c['render_size']}; "
        f"local redis-server, moto S3 over HTTP, `tinct worker` processes (solo pool, both queues)",
        "",
        "| photos | size | workers | jobs/s | ms per job | in process: decode + colorize + encode | "
        "overhead per job | of which S3 calls | rest of the tasks (Redis, Celery) | between tasks (dispatch) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {photos['jobs']} | {c['photo_size'][0]}x{c['photo_size'][1]} PNG | {photos['workers']} | "
        f"**{photos['jobs_per_s']:.1f}** | {photos['ms_per_job']:.1f} | {ms['total']:.1f} ({ms['decode']:.1f} + "
        f"{ms['colorize']:.1f} + {ms['encode']:.1f}) | **{photos['overhead_ms_per_job']:.1f}** | "
        f"{photos['s3_ms']:.1f} | {photos['redis_celery_in_tasks_ms']:.1f} | {photos['between_tasks_ms']:.1f} |",
        "",
        f"The same {collection['photos']} photos as one collection job: "
        f"**{collection['photos_per_s']:.1f} photos/s** ({collection['wall_s']:.1f} s from submit to success).",
        "",
        f"Queue latency, {latency['jobs']} photo jobs one at a time on an idle worker (median ms):",
        "",
        "| submit call | job created -> planned | plan: sent -> started | colorize: sent -> started | "
        "queue per photo | submit -> done |",
        "|---|---|---|---|---|---|",
        f"| {latency['submit_ms']:.1f} | {latency['created_to_started_ms']:.1f} | {latency['plan_queue_ms']:.1f} | "
        f"{latency['colorize_queue_ms']:.1f} | **{latency['queue_ms_per_photo']:.1f}** | {latency['job_ms']:.1f} |",
    ]
    scan = results.get("scan")
    if scan:
        lines += [
            "",
            f"A scan in S3: {scan['frames']} DPX frames of {scan['size']}, 10-bit ({scan['input_mb']:.0f} MB), "
            f"segments of {scan['segment_seconds']:g} s, one warm worker:",
            "",
            "| into | wall s | segments | join s | work folder peak MB | output MB |",
            "|---|---|---|---|---|---|",
        ]
        for label, run in scan["runs"].items():
            into = f"a {scan['codec']} film" if label == "film" else label
            lines.append(f"| {into} | {run['wall_s']:.1f} | {run['segments']} | {run['join_s']:.2f} | "
                         f"**{run['work_peak_mb']:.0f}** | {run['output_mb']:.0f} |")
    film = results.get("film")
    if film:
        runs = film["runs"]
        lines += [
            "",
            f"Film {film['size']}, {film['seconds']:g} s ({runs[0]['frames']} frames), segments of "
            f"{film['segment_seconds']:g} s ({runs[0]['segments']} segments), {film['options']['codec']} "
            f"{film['options']['preset']}, smoothing {film['options']['smoothing']}; "
            f"{s['cpus_usable']} CPU cores:",
            "",
            "| workers | wall s | fps | speed-up | segments per worker | segment busy s per worker | join s | "
            "worker CPU s | cores busy |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for run in runs:
            lines.append(
                f"| {run['workers']} | {run['wall_s']:.1f} | {run['fps']:.1f} | **{run['speedup']:.2f}x** | "
                f"{' / '.join(str(n) for n in run['segments_per_worker'].values())} | "
                f"{' / '.join(f'{b:.1f}' for b in run['segment_busy_s'].values())} | {run['join_s']:.2f} | "
                f"{' / '.join(f'{c:.1f}' for c in run['worker_cpu_s'].values())} | {run['cores_busy']:.2f} |")
    return "\n".join(lines)


def print_and_save_service(results: dict[str, Any], json_path: str | None) -> None:
    print(service_table(results))
    if json_path:
        write_json(json_path, results)
