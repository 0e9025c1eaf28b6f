"""The Celery app: how Tinct's tasks travel over Redis (``celery -A worker.app worker``, or ``tinct worker``).

Settings that make a crash safe, and why:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged only when it has finished, so a
  worker killed mid-film (kill -9, OOM, a lost node) leaves its task in Redis to be delivered again. That is
  only correct because every task is idempotent (``worker.work``: deterministic outputs, finished pieces
  recorded in Redis and skipped).
* ``worker_prefetch_multiplier = 1``: a worker holds no task beyond those it runs, never a queue's worth, so a
  slow GPU node does not sit on work an idle one could do. With late acks the tasks a worker runs are still
  unacknowledged and count against its prefetch limit (concurrency x 1): a worker of concurrency 1 given six
  tasks holds one in Redis's ``unacked`` hash and leaves five queued (tried on Celery 5.7).
* the Redis transport's ``visibility_timeout`` above the longest task: an unacknowledged task is redelivered
  after it, so it must not expire while a healthy worker is still colorizing a segment.
* JSON only, for tasks, results and events: nothing a worker receives is ever unpickled.
* two queues: ``tinct.colorize`` for network work (one worker process per GPU) and ``tinct.io`` for planning,
  joins and bookkeeping (light; many at once), so a long film never blocks the job that would fan out the next.
* task events on, so Flower and ``celery events`` see the workers.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from worker.settings import GPU_QUEUE, IO_QUEUE, Settings


def create_app(settings: Settings) -> Celery:
    app = Celery("tinct", broker=settings.redis_url, include=["worker.tasks"])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_ignore_result=True,  # job state lives in worker.jobs.JobStore, not in Celery results
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # How often a worker looks for tasks whose worker vanished (and puts them back once the timeout has
            # passed): kombu's default is every 100 s; a quarter of the timeout, at most 10 s, recovers a lost
            # film segment promptly for the price of one cheap sorted-set query.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        # Each queue its own direct exchange and routing key: a bare Queue(name) would take the default
        # queue's exchange and key, and tasks sent to it would land in the default queue.
        task_queues=tuple(
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in (GPU_QUEUE, IO_QUEUE)
        ),
        task_default_queue=IO_QUEUE,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    app.tinct_settings = settings
    return app


# The module-level app that ``celery -A worker.app`` and the tasks use; its settings come from the environment.
app = create_app(Settings.from_env())
