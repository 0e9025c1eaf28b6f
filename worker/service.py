"""The service's client side: submit jobs, read their state, cancel them (what ``tinct submit/status/jobs/cancel``
and the triggers use). It talks to Redis and storage only; tasks are sent by name, so a client needs no model.

    service = Service(Settings.from_env())
    job_id, created = service.submit(JobSpec.from_dict({...}))
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import kombu.exceptions
import redis
from celery import Celery

from worker.errors import BadInputError, InputTooLargeError, TinctError, TransientError, one_line
from worker.films import DEFAULT_MAX_FILM_PIXELS
from worker.jobs import JobRecord, JobSpec, JobSpecError, JobStore
from worker.media.frame_sequences import is_pattern, stored_frames, stored_identity
from worker.media.video_source import probe_film
from worker.references import FilmReference, ReferenceError, job_references, reference_frames, seal_references
from worker.settings import GPU_QUEUE, IO_QUEUE, Settings
from worker.storage import ObjectInfo, Storage, check_relative_key, parse_uri

logger = logging.getLogger(__name__)


class QueueError(TransientError):
    """Redis (the job store and the broker) could not be reached; the request may be retried."""

    def __init__(self, url: str, reason: str) -> None:
        host = url.rsplit("@", 1)[-1]  # never the password of a redis://user:password@host URL
        super().__init__(f"job queue {host}: {reason}")


#: What Redis and the Celery broker raise when they cannot be reached or answer with an error.
QUEUE_FAILURES = (redis.RedisError, kombu.exceptions.OperationalError)


@contextmanager
def reaching_the_queue(settings: Settings) -> Iterator[None]:
    """Redis failures inside the block become one :class:`QueueError` naming the queue (never its password)."""
    try:
        yield
    except QUEUE_FAILURES as exc:
        raise QueueError(settings.redis_url, one_line(exc)) from exc


class Service:
    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.storage = Storage(settings)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.store = JobStore(self.redis, settings.job_ttl_s)
        if app is None:
            from worker.app import create_app

            app = create_app(settings)
        self.app = app

    def identity(self, spec: JobSpec) -> ObjectInfo:
        """The input's identity: one HEAD for a file or object; for a collection or a run of frames, a digest of its
        listing (keys, ETags, sizes), so the same one resubmitted is the same job and a changed one is not."""
        if _is_run(spec):  # a run of frames: a digest of them too
            return stored_identity(spec.input, stored_frames(self.storage, spec.input))
        if spec.kind != "collection":
            return self.storage.stat(spec.input)
        digest = hashlib.sha256()
        size = 0
        for info in self.storage.list(spec.input):
            digest.update(f"{info.uri}\0{info.etag}\0{info.size}\n".encode())
            size += info.size
        return ObjectInfo(spec.input, size, digest.hexdigest(), None)

    def submit(self, spec: JobSpec, identity: ObjectInfo | None = None,
               supersede_as_of: float | None = None) -> tuple[str, bool]:
        """Queue ``spec`` and return ``(job_id, created)``; an identical job already queued, running or done is
        returned instead (``created`` False). An input that is missing, unreadable or too large gives a job in
        the ``failed`` state with the reason, so that every submission can be looked up. Bad references (a missing,
        oversized, undecodable or gray picture; for a film in a folder, a time outside it) raise JobSpecError and
        queue nothing (:meth:`checked_references`).

        ``supersede_as_of`` (the triggers: they read a job's options off the bucket, so the submission that read it
        last is the current one; epoch seconds, taken before reading the sidecars) cancels the unfinished job for
        the same input and output that read the bucket earlier, e.g. a film queued as it arrived, before its
        reference pictures: two jobs racing to one output would leave whichever finished last, and the older one is
        work for nothing. Submissions can reach Redis out of that order (two webhook deliveries at once), so a new
        job that read the bucket before the current one is the one cancelled, and never planned."""
        spec = self.checked_references(spec)
        try:
            _check_output(spec.output)
            identity = identity or self.identity(spec)
            # What a worker copies whole: a film or photo file. A collection's photos are checked one by one as
            # they are copied, and a run of frames is fetched a window at a time.
            if identity.size > self.settings.max_input_bytes and spec.kind != "collection" and not _is_run(spec):
                raise InputTooLargeError(spec.input, f"{identity.size} bytes, over the limit of "
                                         f"{self.settings.max_input_bytes} (TINCT_MAX_INPUT_BYTES)")
        except TinctError as exc:
            if exc.retryable:
                raise
            job_id = spec.job_id("unreadable", -1)
            with reaching_the_queue(self.settings):
                record, created = self.store.create(job_id, spec, {})
                if created:
                    self.store.update(job_id, state="failed", error=str(exc))
            return job_id, created
        job_id = spec.job_id(identity.etag, identity.size)
        # Redis is the queue too: a hiccup here is worth retrying, and a retry finds the job if it got in.
        with reaching_the_queue(self.settings):
            _, created = self.store.create(job_id, spec, {"etag": identity.etag, "size": identity.size})
            if created:
                superseding = supersede_as_of is not None
                displaced, newer = self.store.claim_latest(
                    spec, job_id, supersede_as_of if superseding else time.time())
                if superseding and newer is not None:
                    self.cancel(job_id, f"superseded by job {newer} (same input and output, its sidecars read later)")
                    return job_id, created
                if superseding and displaced not in (None, job_id):
                    self.cancel(displaced, f"superseded by job {job_id} (same input and output)")
                self.app.send_task("tinct.plan", args=[job_id], queue=IO_QUEUE)
        return job_id, created

    def checked_references(self, spec: JobSpec) -> JobSpec:
        """``spec`` with its film references as the job carries them (``worker.references.seal_references``: every
        picture fetched, checked and its bytes' sha256 recorded, which enters the job id) and, for a film in a folder,
        placed in it now; an object's film is probed by its planner, which fails the job before any work. JobSpecError
        naming ``options.references[i].<field>``; a spec without references comes back as it is."""
        if not spec.options.references:
            return spec
        try:
            references = seal_references(job_references(spec.options.references), self.storage,
                                         self.settings.guidance_limits)
            _place_in_local_film(spec.input, references, self.settings.max_references)
        except ReferenceError as exc:
            raise JobSpecError(f"options.{exc.field}", exc.detail if exc.field == "references"
                               else f"{exc.path}: {exc.detail}") from None
        options = replace(spec.options, references=[reference.as_dict() for reference in references])
        return replace(spec, options=options)

    def job_states(self, job_ids: Sequence[str]) -> list[str | None]:
        with reaching_the_queue(self.settings):
            return self.store.states(job_ids)

    def get(self, job_id: str) -> JobRecord | None:
        with reaching_the_queue(self.settings):
            return self.store.get(job_id)

    def cancel(self, job_id: str, reason: str = "cancelled by request") -> JobRecord | None:
        """Mark a job cancelled with ``reason``: queued pieces are skipped when they arrive; a piece already running
        stops at its next frame or photo once its worker's heartbeat sees the cancel (within a heartbeat interval),
        and a film's segments staged so far are removed. The job's progress stays where it was. A finished job is
        left as it is (atomically: a job finishing now stays succeeded)."""
        with reaching_the_queue(self.settings):
            cancelled = self.store.update_unless_finished(job_id, state="cancelled", error=reason)
            record = self.store.get(job_id)
        if cancelled and record is not None and record.spec.kind == "video":
            # A film may have segments staged already: its join task, on a finished job, removes them (a segment
            # still running removes its own file when it sees the job cancelled; worker.work._discard_if_ended).
            try:
                self.app.send_task("tinct.join_film", args=[job_id], queue=IO_QUEUE)
            except QUEUE_FAILURES as exc:  # the job is cancelled all the same
                logger.warning("job %s: cancelled, but its staged segments stay until a cleanup: %s", job_id,
                               one_line(exc))
        return record

    def recent(self, limit: int = 20) -> list[JobRecord]:
        with reaching_the_queue(self.settings):
            return self.store.recent(limit)

    def queue_depths(self) -> dict[str, int]:
        with reaching_the_queue(self.settings):
            return {queue: int(self.redis.llen(queue)) for queue in (GPU_QUEUE, IO_QUEUE)}


def _place_in_local_film(uri: str, references: Sequence[FilmReference], max_references: int) -> None:
    """Check the references' times against a film in a folder (``tinct submit reel.mkv --reference ...``): a bad time
    is refused before anything is queued. A film that cannot be probed is left to its worker to report."""
    scheme, _, path = parse_uri(uri)
    if scheme != "file":
        return
    try:
        film = probe_film(path, DEFAULT_MAX_FILM_PIXELS)
    except BadInputError:
        return
    reference_frames(references, film, max_references)


def _check_output(uri: str) -> None:
    """An output key must not climb out of its bucket's folders (``s3://out/../x``): outputs come from specs that
    users, events and webhooks write."""
    scheme, _, key = parse_uri(uri)
    if scheme == "s3" and key.strip("/"):
        check_relative_key(key.rstrip("/"))


def _is_run(spec: JobSpec) -> bool:
    """Whether the job's input is a film scanned as a run of frames, named by its pattern."""
    return spec.kind == "video" and is_pattern(parse_uri(spec.input)[2])
