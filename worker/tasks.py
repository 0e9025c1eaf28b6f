"""Celery tasks: thin wrappers that route each step of a job to its queue and map errors to retries.

Transient errors (storage, Redis, network) retry with exponential backoff up to ``TINCT_TASK_RETRIES`` times, then
fail the job with the last reason; permanent errors fail the job at once and are never retried; the task itself
then ends normally, so the worker goes on serving. The work is in :mod:`worker.work`.

Liveness (:mod:`worker.liveness`) hangs off Celery's signals here: every worker process starts its heartbeat at
init, records each task it runs (``task_prerun``/``task_postrun``), hands its piece back when a SIGTERM's grace runs
out (``worker_shutting_down``), and leaves the set of workers on a clean shutdown.
"""

from __future__ import annotations

import logging
import time

import redis
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from worker import liveness, metrics, work
from worker.app import app
from worker.errors import PermanentError, TransientError
from worker.logs import job_context, use_json_logs
from worker.media.segments import Segment
from worker.settings import GPU_QUEUE, IO_QUEUE

logger = logging.getLogger(__name__)

_runtime: work.Runtime | None = None


def runtime() -> work.Runtime:
    """This process's Runtime (storage clients, Redis, loaded models), created on first use."""
    global _runtime
    if _runtime is None:
        _runtime = work.Runtime(app.tinct_settings)
    return _runtime


@worker_init.connect
@worker_process_init.connect
def _start_process(sender: object = None, **_: object) -> None:
    """Connect storage and Redis, start the heartbeat and the metrics endpoint once per worker process, before the
    first task. Models load on the first task that needs them and stay loaded for the process's life."""
    rt = runtime()
    # Its own client with timeouts: a beat must fail fast when Redis is away, never hang the liveness thread.
    beats = redis.Redis.from_url(rt.settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    liveness.start(rt.settings, beats, _publish, node=str(getattr(sender, "hostname", "") or ""))
    metrics.serve_metrics(rt.settings.metrics_port, rt.redis,
                          (liveness.StalledCollector(rt.redis, rt.settings.liveness_window_s),))


def _publish(name: str, args: list, queue: str, task_id: str) -> str:
    """How the liveness thread puts a task taken from a silent worker back on its queue, under the id it chose."""
    return str(app.send_task(name, args=args, queue=queue, task_id=task_id).id)


def _piece(name: str, args: tuple) -> str:
    """The piece a task works on, as the job store names it."""
    if name == "tinct.colorize_photos":
        return str(args[1])
    if name == "tinct.colorize_segment":
        return work.segment_piece(Segment(**args[1]))
    return {"tinct.plan": "plan", "tinct.join_film": "join"}.get(name, name)


@task_prerun.connect
def _hold(task_id: str = "", task: object = None, args: tuple = (), **_: object) -> None:
    heartbeat = liveness.current()
    name = str(getattr(task, "name", ""))
    if heartbeat is None or not name.startswith("tinct."):
        return
    request = task.request  # type: ignore[union-attr]
    queue = (request.delivery_info or {}).get("routing_key") or task.queue  # type: ignore[union-attr]
    tag = (request.properties or {}).get("delivery_tag")
    job_id = args[0] if args and isinstance(args[0], str) else ""
    heartbeat.hold(task_id, name, list(args), queue, job_id, _piece(name, args), str(request.hostname or ""), tag)


@task_postrun.connect
def _release(task_id: str = "", **_: object) -> None:
    heartbeat = liveness.current()
    if heartbeat is not None:
        heartbeat.release(task_id)


@worker_shutting_down.connect
def _grace_on_stop(how: str = "", **_: object) -> None:
    """SIGTERM (warm shutdown): the piece in hand has stop_grace_s to finish, then it is handed back."""
    if how == "Warm":
        liveness.grace_then_hand_back(app.tinct_settings.stop_grace_s)


@worker_shutdown.connect
@worker_process_shutdown.connect
def _leave(**_: object) -> None:
    heartbeat = liveness.current()
    if heartbeat is not None:
        heartbeat.stop()


@worker_ready.connect
def _preload_in_solo_worker(sender: object = None, **_: object) -> None:
    """The solo pool (one colorize task at a time, the GPU default) runs tasks in this very process. Loaded once
    the worker is ready, when logging is set up; a task that arrives meanwhile waits for the load to finish."""
    if type(getattr(sender, "pool", None)).__module__ == "celery.concurrency.solo":
        _preload_model()


@worker_process_init.connect
def _preload_in_pool_process(**_: object) -> None:
    """Other pools run tasks in forked children: load there, never in the parent (CUDA does not survive a fork)."""
    _preload_model()


def _preload_model() -> None:
    rt = runtime()
    model = rt.settings.preload_model
    if not model:
        return
    try:
        rt.colorizer(model, None)  # what a job that names no render size gets; logs "model ... loaded"
    except Exception:  # noqa: BLE001 - a model that cannot load fails the jobs that ask for it, with the reason
        logger.exception("could not preload model %s; jobs that use it will report why", model)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _structured_logs(logger: logging.Logger, **_: object) -> None:
    if app.tinct_settings.log_format == "json":
        use_json_logs(logger)


class _CeleryEnqueue:
    def photos(self, job_id: str, piece: str, inputs: list[str]) -> None:
        colorize_photos.apply_async((job_id, piece, inputs), queue=GPU_QUEUE)

    def segment(self, job_id: str, segment: dict) -> None:
        colorize_segment.apply_async((job_id, segment), queue=GPU_QUEUE)

    def join(self, job_id: str) -> None:
        join_film.apply_async((job_id,), queue=IO_QUEUE)


ENQUEUE = _CeleryEnqueue()
TRANSIENT = (TransientError, redis.ConnectionError, redis.TimeoutError)
REDIS_AWAY = (redis.ConnectionError, redis.TimeoutError)


def _run(task, job_id: str, step, *args) -> None:
    with job_context(job_id):
        _run_step(task, job_id, step, *args)


def _run_step(task, job_id: str, step, *args, waited: int = 0) -> None:
    rt = runtime()
    try:
        step(rt, job_id, *args)
    except TRANSIENT as exc:
        metrics.FAILURES.labels("transient").inc()
        retries = task.request.retries + waited
        if retries >= rt.settings.task_retries:
            work.fail_job(rt, job_id, f"gave up after {retries} retries: {work.describe_error(exc)}")
            return
        countdown = rt.settings.retry_backoff_s * 2**retries
        logger.warning("job %s: %s; retry %d in %.1f s", job_id, work.describe_error(exc), retries + 1, countdown)
        if isinstance(exc, REDIS_AWAY):
            # Redis is the broker too: a retry could not be published while it is away, and the piece would go
            # with the failed task. Wait here instead, still holding the piece and its message; steps are idempotent.
            time.sleep(countdown)
            _run_step(task, job_id, step, *args, waited=waited + 1)
            return
        raise task.retry(exc=exc, countdown=countdown) from None
    except PermanentError as exc:
        work.fail_job(rt, job_id, str(exc))
    except SoftTimeLimitExceeded:
        work.fail_job(rt, job_id, f"{task.name} ran past the time limit of {rt.settings.task_soft_time_limit_s} s")
    except Exception as exc:
        # A bug, not the input's fault: fail the job with what happened (so it never hangs), keep the traceback.
        logger.exception("job %s: %s failed", job_id, task.name)
        work.fail_job(rt, job_id, f"internal error in {task.name}: {work.describe_error(exc)}")


@app.task(name="tinct.plan", bind=True, queue=IO_QUEUE)
def plan(self, job_id: str) -> None:
    _run(self, job_id, work.plan_job, ENQUEUE)


@app.task(name="tinct.colorize_photos", bind=True, queue=GPU_QUEUE)
def colorize_photos(self, job_id: str, piece: str, inputs: list[str]) -> None:
    _run(self, job_id, work.colorize_photos, piece, inputs)


@app.task(name="tinct.colorize_segment", bind=True, queue=GPU_QUEUE)
def colorize_segment(self, job_id: str, segment: dict) -> None:
    _run(self, job_id, work.colorize_segment, segment, ENQUEUE)


@app.task(name="tinct.join_film", bind=True, queue=IO_QUEUE)
def join_film(self, job_id: str) -> None:
    _run(self, job_id, work.join_film)
