"""S3 event notifications: parsed from what SQS, SNS or a MinIO webhook delivers (:func:`parse_s3_events`), and
submitted, each photo or film with its sidecars (:func:`submit_events`) -- the one path both event triggers,
``worker.triggers.sqs`` and ``worker.triggers.webhook``, take.

An event's identity (ETag, size) spares a HEAD per object; an event for a sidecar submits its photo or film again.
A permanently bad event is rejected with its reason; a transient failure propagates, for the sender to redeliver.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from worker.errors import TinctError, one_line
from worker.jobs import JobOptions
from worker.settings import GuidanceLimits
from worker.storage import ObjectInfo, ObjectNotFoundError, Storage, format_uri
from worker.triggers.mapping import Submitter, check_copy_name_free, eligibility, is_transient, job_spec_for
from worker.triggers.sidecars import sidecar_owner, sidecars_present, with_sidecars

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class S3Event:
    """One ``ObjectCreated`` record: the object's bucket and decoded key, and its identity when the event has it."""

    bucket: str
    key: str
    size: int | None
    etag: str | None
    event_name: str  # without MinIO's "s3:" prefix, e.g. "ObjectCreated:Put"

    @property
    def uri(self) -> str:
        return format_uri("s3", self.bucket, self.key)

    def identity(self) -> ObjectInfo | None:
        """The ObjectInfo to submit with, so the service makes no HEAD request; None when the event lacks it."""
        if self.size is None or not self.etag:
            return None
        return ObjectInfo(self.uri, self.size, self.etag, None)


def parse_s3_events(body: str | bytes | Mapping[str, Any]) -> list[S3Event]:
    """The ``ObjectCreated`` events in an S3 event notification, as SQS, SNS or a MinIO webhook deliver it.

    Accepts the AWS shape (``Records[].s3.bucket.name``, ``.object.key`` URL-encoded with ``+`` for spaces), the
    same wrapped in an SNS ``Notification`` envelope, and MinIO's webhook payload (the same records plus
    top-level ``EventName``/``Key``; its event names carry an ``s3:`` prefix). AWS's ``s3:TestEvent`` and events
    other than ``ObjectCreated:*`` give no events. Anything else raises ``ValueError`` saying what is wrong.
    """
    data = _load_json(body, "message body")
    if data.get("Type") is not None or "TopicArn" in data:
        data = _unwrap_sns(data)
    if data.get("Event") == "s3:TestEvent":
        return []
    records = data.get("Records")
    if not isinstance(records, list):
        raise ValueError("not an S3 event notification: no 'Records' list")
    events = []
    for index, record in enumerate(records):
        event = _parse_record(record, index)
        if event is not None:
            events.append(event)
    return events


def _load_json(body: str | bytes | Mapping[str, Any], what: str) -> dict[str, Any]:
    if isinstance(body, Mapping):
        return dict(body)
    if isinstance(body, bytes | bytearray):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{what} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not isinstance(body, str):
        raise ValueError(f"{what} must be JSON text, got {type(body).__name__}")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} is not JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} is JSON but not an object (got {type(data).__name__})")
    return data


def _unwrap_sns(data: dict[str, Any]) -> dict[str, Any]:
    kind = data.get("Type")
    if kind != "Notification":
        raise ValueError(f"an SNS {kind!r} message, not a Notification: confirm subscriptions in SNS itself")
    message = data.get("Message")
    if not isinstance(message, str):
        raise ValueError("SNS notification without a 'Message' string")
    inner = _load_json(message, "SNS message")
    if inner.get("Type") is not None:
        raise ValueError("SNS notification wraps another SNS envelope")
    return inner


def _parse_record(record: Any, index: int) -> S3Event | None:
    where = f"Records[{index}]"
    if not isinstance(record, dict):
        raise ValueError(f"{where} is not an object")
    name = record.get("eventName")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where} has no eventName")
    name = name.removeprefix("s3:")
    if not name.startswith("ObjectCreated:"):
        return None
    s3 = record.get("s3")
    bucket = s3.get("bucket") if isinstance(s3, dict) else None
    obj = s3.get("object") if isinstance(s3, dict) else None
    if not isinstance(bucket, dict) or not isinstance(obj, dict):
        raise ValueError(f"{where} has no s3.bucket and s3.object")
    bucket_name = bucket.get("name")
    raw_key = obj.get("key")
    if not isinstance(bucket_name, str) or not bucket_name:
        raise ValueError(f"{where} has no s3.bucket.name")
    if not isinstance(raw_key, str) or not raw_key:
        raise ValueError(f"{where} has no s3.object.key")
    size = obj.get("size")
    if isinstance(size, bool) or not isinstance(size, int | None) or (size is not None and size < 0):
        raise ValueError(f"{where} has an invalid s3.object.size {size!r}")
    etag = obj.get("eTag", obj.get("etag"))
    if etag is not None and not isinstance(etag, str):
        raise ValueError(f"{where} has an invalid s3.object.eTag {etag!r}")
    try:
        # S3 URL-encodes keys in events, spaces as '+' (and a literal '+' as %2B); MinIO escapes '/' too.
        key = unquote_plus(raw_key, errors="strict")
    except UnicodeDecodeError:
        raise ValueError(f"{where} has a key that is not URL-encoded UTF-8: {raw_key!r}") from None
    return S3Event(bucket_name, key, size, etag.strip('"') if etag else None, name)


@dataclass(frozen=True)
class SubmittedJob:
    job_id: str
    input: str
    output: str
    created: bool

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.job_id, "input": self.input, "output": self.output, "created": self.created}


@dataclass
class EventResults:
    """What one delivery (an SQS message, a webhook POST) led to. ``rejected`` holds permanently bad events with
    their reasons: redelivering them cannot help, so they are reported and dropped."""

    jobs: list[SubmittedJob] = field(default_factory=list)
    skipped: int = 0  # unsupported extensions, keys under the output prefix, sidecars of inputs not there yet
    rejected: list[tuple[str, str]] = field(default_factory=list)


def submit_events(
    submitter: Submitter,
    events: Iterable[S3Event],
    output_prefix: str,
    options: JobOptions,
    limits: GuidanceLimits | None = None,
) -> EventResults:
    """Submit a job for every eligible event, with the sidecars beside its photo or film at that moment, as bulk
    takes them (:func:`with_sidecars`, within ``limits``). An event for a sidecar submits its photo or film again with
    the sidecars now there (a new job id), or nothing when that photo or film is not there yet: its own event will
    take the sidecar. Transient errors propagate: the caller leaves the delivery to be retried, which is harmless for
    the events already submitted because submission is idempotent."""
    results = EventResults()
    limits = limits or GuidanceLimits()
    for event in events:
        owner = sidecar_owner(event.uri)
        uri = owner or event.uri
        verdict = eligibility(uri, output_prefix)
        if verdict != "eligible":
            logger.debug("skipping %s (%s)", event.uri, verdict)
            results.skipped += 1
            continue
        try:
            read_at = time.time()  # before the sidecars are looked at: what this submission knows is this fresh
            spec = job_spec_for(uri, None, output_prefix, options)
            check_copy_name_free(submitter.storage, spec)
            identity = event.identity() if owner is None else _stat_if_present(submitter.storage, owner)
            if owner is not None and identity is None:
                logger.info(
                    "sidecar %s: %s is not there yet, nothing queued (its own event will take the sidecar)",
                    event.uri,
                    owner,
                )
                results.skipped += 1
                continue
            spec = with_sidecars(spec, submitter.storage, limits, *sidecars_present(submitter.storage, spec))
            job_id, created = submitter.submit(spec, identity, supersede_as_of=read_at)
        except (TinctError, ValueError) as error:
            if is_transient(error):
                raise
            logger.warning("rejected event for %s: %s", uri, one_line(error))
            results.rejected.append((uri, one_line(error)))
            continue
        logger.info("%s job %s for %s", "submitted" if created else "found", job_id, uri)
        results.jobs.append(SubmittedJob(job_id, spec.input, spec.output, created))
    return results


def _stat_if_present(storage: Storage, uri: str) -> ObjectInfo | None:
    try:
        return storage.stat(uri)
    except ObjectNotFoundError:
        return None
