"""How jobs arrive: a bulk sweep of a prefix, S3 event notifications through SQS, and a webhook -- three front ends
over one small protocol, :class:`Submitter` (the service object satisfies it).

    report = bulk(service, "s3://scans/reels/", "s3://colorized/reels/", JobOptions(), dry_run=True)
    counts = listen_sqs(service, "sqs://tinct-events", "s3://colorized/", JobOptions(), stop=stop_event)
    server, thread = serve_webhook(service, "0.0.0.0", 8080, secret, "s3://colorized/", JobOptions())

Every trigger maps an input object to its output the same way (:func:`output_uri_for`: the output prefix plus the
input's key relative to the input prefix, or the whole key for events), takes only photo and film extensions, and
never takes a key under the output prefix, so an event configured on the output bucket cannot make Tinct colorize
its own results forever. The input's identity (ETag, size) comes from the listing or the event, never from a HEAD
per object, and the job id derives from it: the same object reached by a sweep, a redelivered SQS message and a
webhook retry is one job, because :meth:`Submitter.submit` is idempotent.

Every trigger sends a photo with its ``<name>.hints.json`` and a film with the pictures in its ``<name>.references/``
folder (:func:`with_sidecars`): bulk finds them in its listing, an event looks beside its input (a HEAD for a hint
file, a listing for a folder). A sidecar is never an input itself; its own event submits its photo or film again.

Failures follow :mod:`worker.errors`: a permanently bad key or message is reported (and an SQS message deleted) with
its reason; a transient one (Redis or S3 hiccup) is left for the sender to redeliver -- the SQS message stays on the
queue, the webhook answers 503 -- and a bulk run stops early with a report that says a rerun resumes.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import unquote_plus, urlsplit

import boto3
import botocore.exceptions as boto_errors
import redis.exceptions

from worker.errors import TinctError, TransientError, one_line
from worker.hints import HINTS_SUFFIX, parse_hints_bytes
from worker.images import EXTENSION_FORMATS
from worker.jobs import JobOptions, JobSpec, JobSpecError
from worker.photos import FILM_EXTENSIONS, is_reference_folder
from worker.references import REFERENCES_SUFFIX, seal_references, sidecar_references
from worker.settings import GuidanceLimits
from worker.storage import (
    ObjectInfo,
    ObjectNotFoundError,
    Storage,
    format_uri,
    join_uri,
    normalize_uri,
    parse_uri,
    relative_key,
)

logger = logging.getLogger(__name__)

#: What bulk and the event triggers take; everything else is counted as unsupported and skipped.
SUPPORTED_EXTENSIONS = frozenset(EXTENSION_FORMATS) | frozenset(FILM_EXTENSIONS)
#: Job ids checked per ``job_states`` call: one Redis round trip each, and a bounded amount of listing held in memory.
BULK_BATCH = 500
#: Concurrent submissions in a bulk run: each is a few Redis round trips plus a task publish, mostly waiting.
BULK_CONCURRENCY = 8
#: Failure reasons a report keeps (all are counted): a prefix full of bad keys must not make the report unbounded.
MAX_FAILURES_KEPT = 100
#: A webhook body above this is refused unread. S3 and MinIO send one to a few records, a few KiB each.
MAX_WEBHOOK_BYTES = 1024 * 1024
#: SQS long polls for at most 20 s and hands out at most 10 messages a receive.
SQS_MAX_WAIT_S = 20
SQS_MAX_MESSAGES = 10
#: The longest pause after consecutive transient failures in the SQS listener.
MAX_BACKOFF_S = 60.0

# Failures a Submitter may raise that mean "try again later". Submitters are meant to wrap Redis errors in
# TransientError, but a connection error that escapes unwrapped is still an outage, not a bad request.
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_SQS_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}(\.fifo)?$")
_AWS_SQS_HOST = re.compile(r"^sqs\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$")

_RESUME = "; run again to resume (jobs already submitted are found, not redone)"

Eligibility = Literal["eligible", "unsupported", "own_output"]
_T = TypeVar("_T")


class Submitter(Protocol):
    """What the triggers need from the service; :class:`worker.service.Service` satisfies it.

    Implementations must be thread-safe: the webhook serves requests on many threads and bulk submits
    concurrently.
    """

    storage: Storage

    def submit(self, spec: JobSpec, identity: ObjectInfo | None = None) -> tuple[str, bool]:
        """Queue ``spec`` and return ``(job_id, created)``; the same input identity, output and options return the
        existing job with ``created`` False. ``identity`` (from a listing or an event) spares a HEAD request.
        Raises :class:`JobSpecError`/``PermanentError`` for bad specs, ``TransientError`` for hiccups."""
        ...

    def job_states(self, job_ids: Sequence[str]) -> list[str | None]:
        """The state of each job (None for unknown ids), in one Redis round trip."""
        ...


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, TinctError):
        return error.retryable
    return isinstance(error, _TRANSIENT_ERRORS)


# ---------------------------------------------------------------------------------------------------- mapping


def output_uri_for(input_uri: str, input_prefix: str | None, output_prefix: str) -> str:
    """The output URI of ``input_uri``: ``output_prefix`` plus the input's key relative to ``input_prefix``.

    With no input prefix (event-driven triggers) the relative part is the whole key. :func:`join_uri` checks the
    relative part, so an event key such as ``../../etc/x.jpg`` raises :class:`~worker.storage.UnsafeKeyError`
    (permanent) instead of escaping the output prefix. ``ValueError`` when the input is not inside the prefix.
    """
    if input_prefix is not None:
        relative = relative_key(input_prefix, input_uri)
    else:
        scheme, _bucket, relative = parse_uri(input_uri)
        if scheme != "s3":
            raise ValueError(f"{input_uri}: an input without a prefix must be an s3:// object")
    return join_uri(output_prefix, relative)


def is_within(uri: str, folder: str) -> bool:
    """Whether ``uri`` is the folder ``folder`` or anything under it (same scheme and bucket, folder semantics:
    ``s3://b/out`` contains ``out/x`` but not ``outbox/x``)."""
    scheme, bucket, key = parse_uri(uri)
    f_scheme, f_bucket, f_key = parse_uri(folder)
    if (scheme, bucket) != (f_scheme, f_bucket):
        return False
    separator = "/" if scheme == "s3" else os.sep
    head = f_key.rstrip(separator)
    return not head or key == head or key.startswith(head + separator)


def eligibility(input_uri: str, output_prefix: str) -> Eligibility:
    """Whether a trigger takes ``input_uri``: ``own_output`` for anything under the output prefix (checked first, so
    our own results never loop back in), ``unsupported`` for anything that is not a photo or film by extension, or is
    a picture in a film's ``<name>.references/`` folder."""
    if is_within(input_uri, output_prefix):
        return "own_output"
    if PurePosixPath(parse_uri(input_uri)[2]).suffix.lower() not in SUPPORTED_EXTENSIONS:
        return "unsupported"
    if _reference_film(input_uri) is not None:
        return "unsupported"  # a film's reference picture (worker.references) is not a photo to colorize
    return "eligible"


def job_spec_for(input_uri: str, input_prefix: str | None, output_prefix: str, options: JobOptions) -> JobSpec:
    """The job for one eligible object. Permanent errors (:class:`JobSpecError`, unsafe keys) name the reason."""
    output = output_uri_for(input_uri, input_prefix, output_prefix)
    spec = JobSpec.from_dict({"input": input_uri, "output": output})
    if spec.input != input_uri or spec.output != output:
        # Job specs strip surrounding whitespace; a key that has some would silently name another object.
        raise JobSpecError("input", f"{input_uri!r}: a key with leading or trailing whitespace cannot be a job input")
    return JobSpec(spec.input, spec.output, spec.kind, options)


def _retrying(call: Callable[[], _T], what: str, attempts: int = 3, first_delay_s: float = 0.5) -> _T:
    """``call()``, retried with exponential backoff on transient errors: a bulk run should ride out a Redis
    failover of a second or two rather than stop and make an operator rerun it."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as error:
            if not _is_transient(error) or attempt == attempts - 1:
                raise
            delay = first_delay_s * 2**attempt
            logger.warning("%s failed (%s); retrying in %.1f s", what, one_line(error), delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # the last attempt returns or raises


# ------------------------------------------------------------------------------------------------------- bulk


@dataclass
class BulkReport:
    """What a bulk run did; ``report()`` is the CLI's paragraph. In a dry run ``submitted`` counts the jobs that
    would have been submitted."""

    prefix: str
    output_prefix: str
    dry_run: bool = False
    listed: int = 0
    eligible: int = 0
    already_done: int = 0
    already_queued: int = 0  # queued or running
    submitted: int = 0
    unsupported: int = 0
    own_outputs: int = 0  # keys under the output prefix, never taken as inputs
    failed: int = 0  # keys that could not be submitted, plus the listing itself when it failed
    failures: list[tuple[str, str]] = field(default_factory=list)  # (uri, reason), the first MAX_FAILURES_KEPT
    stopped: str = ""  # why the run ended before the end of the listing; empty when it did not
    seconds: float = 0.0

    @property
    def keys_per_minute(self) -> float:
        """Listed keys per minute of wall time, listing, state checks and submissions included."""
        return self.listed * 60.0 / self.seconds if self.seconds > 0 else 0.0

    def fail(self, uri: str, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append((uri, one_line(reason)))

    def report(self) -> str:
        verb = "would submit" if self.dry_run else "submitted"
        text = (
            f"{'Dry run: ' if self.dry_run else ''}{self.prefix} -> {self.output_prefix}: listed {self.listed:,} "
            f"objects in {self.seconds:.1f} s ({self.keys_per_minute:,.0f} keys/min); {self.eligible:,} photos and "
            f"films: {verb} {self.submitted:,}, {self.already_done:,} already done, {self.already_queued:,} already "
            f"queued or running; skipped {self.unsupported:,} unsupported and {self.own_outputs:,} under the output "
            f"prefix; {self.failed:,} failed."
        )
        if self.failures:
            shown = "; ".join(f"{uri}: {reason}" for uri, reason in self.failures[:5])
            more = f" (and {self.failed - 5:,} more)" if self.failed > 5 else ""
            text += f" Failures: {shown}{more}."
        if self.stopped:
            text += f" Stopped early: {self.stopped}."
        return text


@dataclass(frozen=True)
class _Candidate:
    info: ObjectInfo
    spec: JobSpec
    job_id: str


def bulk(
    submitter: Submitter,
    prefix_uri: str,
    output_prefix: str,
    options: JobOptions,
    dry_run: bool = False,
    *,
    batch_size: int = BULK_BATCH,
    concurrency: int = BULK_CONCURRENCY,
    limits: GuidanceLimits | None = None,
) -> BulkReport:
    """Submit a job for every photo and film under ``prefix_uri``, writing under ``output_prefix``, each photo with
    the hints and each film with the reference pictures beside it (:class:`_Sidecars`, within ``limits``).

    The listing is consumed lazily; job ids come from the listing's ETag and size (no HEAD per object) and are
    checked ``batch_size`` at a time with one ``job_states`` call, so a rerun over a prefix of 100,000 objects
    mostly reads Redis and submits only what is new, failed or cancelled. A dry run checks but submits nothing.
    ``ValueError`` for a bad URI or an input prefix inside the output prefix (every key would be skipped).
    """
    if batch_size < 1 or concurrency < 1:
        raise ValueError("batch_size and concurrency must be at least 1")
    prefix = normalize_uri(prefix_uri)
    output = normalize_uri(output_prefix)
    if is_within(prefix, output):
        raise ValueError(f"the input prefix {prefix} is inside the output prefix {output}: nothing would be taken")
    report = BulkReport(prefix, output, dry_run)
    started = time.monotonic()
    listing = iter(submitter.storage.list(prefix))
    pending: list[_Candidate] = []
    sidecars = _Sidecars(submitter.storage, report, limits or GuidanceLimits())
    with ThreadPoolExecutor(concurrency, thread_name_prefix="tinct-bulk") as pool:
        while not report.stopped:
            try:
                info = next(listing, None)
            except Exception as error:
                if not isinstance(error, TinctError):
                    raise
                report.fail(prefix, f"listing failed: {error}")
                report.stopped = f"the listing failed after {report.listed:,} objects ({one_line(error)})"
                if error.retryable:
                    report.stopped += _RESUME
                break
            if info is None:
                pending.extend(sidecars.release(None))
                break
            report.listed += 1
            pending.extend(sidecars.release(info))
            if sidecars.is_sidecar(info):
                continue
            candidate = _candidate(info, prefix, output, options, report)
            if candidate is not None and candidate.spec.kind in ("image", "video"):
                sidecars.wait(candidate)
            elif candidate is not None:
                pending.append(candidate)
            if len(pending) >= batch_size:
                _submit_batch(submitter, pending, report, pool)
                pending = []
        if pending and not report.stopped:
            _submit_batch(submitter, pending, report, pool)
    report.seconds = time.monotonic() - started
    logger.debug("%s", report.report())  # the CLI prints it; services log it at debug
    return report


def _candidate(
    info: ObjectInfo, prefix: str, output: str, options: JobOptions, report: BulkReport
) -> _Candidate | None:
    verdict = eligibility(info.uri, output)
    if verdict == "own_output":
        report.own_outputs += 1
        return None
    if verdict == "unsupported":
        report.unsupported += 1
        return None
    report.eligible += 1
    try:
        spec = job_spec_for(info.uri, prefix, output, options)
    except (TinctError, ValueError) as error:
        report.fail(info.uri, str(error))
        return None
    return _Candidate(info, spec, spec.job_id(info.etag, info.size))


class _Sidecars:
    """Sidecars met in a bulk listing: photos' hint files (``<name>.hints.json``, ``worker.hints``) and films' folders
    of reference pictures (``<name>.references/12.5.png``, ``worker.references``).

    A listing is in key order and a sidecar's key is its input's key plus a suffix, so sidecars come after their
    input, usually right after it. An input waits here until the listing has passed where its sidecars would be (or
    has ended); it then goes on with them in its options (so they enter its job id: a reference picture by the
    sha256 of its bytes), or as it is. A sidecar that cannot be read or is invalid fails its input, with the
    sidecar's name and field, and the run goes on. Reference pictures are only hashed here; whether they decode and
    show colour is checked when the film's job is submitted (``Service.submit``), so a rerun decodes none of them.
    """

    def __init__(self, storage: Storage, report: BulkReport, limits: GuidanceLimits) -> None:
        self.storage = storage
        self.report = report
        self.limits = limits
        self.waiting: deque[_Candidate] = deque()
        self.hints: set[str] = set()
        self.pictures: dict[str, list[str]] = {}  # a film's URI -> the pictures in its reference folder

    @staticmethod
    def is_sidecar(info: ObjectInfo) -> bool:
        return info.uri.endswith(HINTS_SUFFIX) or _reference_film(info.uri) is not None

    def wait(self, candidate: _Candidate) -> None:
        self.waiting.append(candidate)

    def release(self, info: ObjectInfo | None) -> list[_Candidate]:
        """The waiting inputs whose sidecars' place the listing has passed with ``info`` (all of them at the end)."""
        if info is not None:
            film = _picture_film(info.uri)
            if info.uri.endswith(HINTS_SUFFIX):
                self.hints.add(info.uri)
            elif film is not None:
                self.pictures.setdefault(film, []).append(info.uri)
        ready = []
        while self.waiting and (info is None or _past_sidecars(self.waiting[0], info.uri)):
            candidate = self._with_sidecars(self.waiting.popleft())
            if candidate is not None:
                ready.append(candidate)
        return ready

    def _with_sidecars(self, candidate: _Candidate) -> _Candidate | None:
        uri = candidate.info.uri
        has_hints = uri + HINTS_SUFFIX in self.hints
        self.hints.discard(uri + HINTS_SUFFIX)
        try:
            spec = with_sidecars(candidate.spec, self.storage, self.limits, has_hints, self.pictures.pop(uri, []))
        except TinctError as error:
            if error.retryable:
                raise
            self.report.fail(uri, str(error))
            return None
        if spec is candidate.spec:
            return candidate
        return _Candidate(candidate.info, spec, spec.job_id(candidate.info.etag, candidate.info.size))


def with_sidecars(
    spec: JobSpec, storage: Storage, limits: GuidanceLimits, has_hints: bool, pictures: Sequence[str]
) -> JobSpec:
    """``spec`` with its input's sidecars in its options, so that they enter its job id: a photo's
    ``<name>.hints.json`` (when ``has_hints``) read and validated; a film's reference ``pictures`` (the URIs in its
    ``<name>.references/`` folder) named by time and hashed. Pictures are not decoded here: ``Service.submit``
    checks them. ``spec`` itself when it has none. Bulk and the event triggers both come here; a bad sidecar raises
    a permanent error naming the file and field, a store's hiccup a :class:`TransientError`."""
    if spec.kind == "image" and has_hints:
        sidecar = spec.input + HINTS_SUFFIX
        data = storage.get_bytes(sidecar, max_bytes=limits.max_hint_file_bytes)
        hints = parse_hints_bytes(data, sidecar, limits.max_hints, limits.max_hint_file_bytes)
        return replace(spec, options=replace(spec.options, hints=hints.to_dict() if len(hints) else None))
    if spec.kind == "video" and pictures:
        references = sidecar_references(pictures, limits.max_references)
        sealed = seal_references(references, storage, limits, decode=False)
        return replace(spec, options=replace(spec.options, references=[reference.as_dict() for reference in sealed]))
    return spec


def _reference_film(uri: str) -> str | None:
    """The film whose sidecar folder (``<film file name>.references/``) holds ``uri``, at any depth, or None."""
    parts = uri.split("/")
    for depth in range(len(parts) - 2, 0, -1):
        if is_reference_folder(parts[depth]):
            return "/".join([*parts[:depth], parts[depth][: -len(REFERENCES_SUFFIX)]])
    return None


def _picture_film(uri: str) -> str | None:
    """The film ``uri`` is a reference picture of: right inside its ``<name>.references/`` folder, as hidden files
    (.DS_Store) and subfolders are no references; None otherwise."""
    film = _reference_film(uri)
    if film is None or re.search(r"/[.]|/.*/", uri[len(film + REFERENCES_SUFFIX) :]):
        return None
    return film


def _past_sidecars(candidate: _Candidate, uri: str) -> bool:
    """Whether the listing, at ``uri``, has passed every key that could be a sidecar of ``candidate``."""
    if candidate.spec.kind == "image":
        return candidate.info.uri + HINTS_SUFFIX <= uri
    folder = candidate.info.uri + REFERENCES_SUFFIX + "/"
    return uri > folder and not uri.startswith(folder)


def _submit_batch(submitter: Submitter, batch: list[_Candidate], report: BulkReport, pool: ThreadPoolExecutor) -> None:
    """Check one batch's states with a single call, then submit what is not already done, queued or running."""
    ids = [candidate.job_id for candidate in batch]
    try:
        states = _retrying(lambda: submitter.job_states(ids), "checking job states")
    except Exception as error:
        if not _is_transient(error):
            raise
        for candidate in batch:
            report.fail(candidate.info.uri, f"could not check its job: {error}")
        report.stopped = f"job states could not be read ({one_line(error)}){_RESUME}"
        return
    if len(states) != len(ids):
        raise RuntimeError(f"job_states returned {len(states)} states for {len(ids)} ids")
    todo: list[_Candidate] = []
    for candidate, state in zip(batch, states, strict=True):
        if state == "succeeded":
            report.already_done += 1
        elif state in ("queued", "running"):
            report.already_queued += 1
        else:  # new, failed or cancelled: submitting runs it (again)
            todo.append(candidate)
    if report.dry_run:
        report.submitted += len(todo)
        return
    outage = threading.Event()
    outcomes = pool.map(lambda candidate: _submit_one(submitter, candidate, outage), todo)
    for candidate, outcome in zip(todo, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            report.fail(candidate.info.uri, str(outcome))
            if _is_transient(outcome) and not report.stopped:
                report.stopped = f"submitting failed ({one_line(outcome)}){_RESUME}"
            continue
        job_id, created = outcome
        if job_id != candidate.job_id:
            logger.debug(
                "submit gave job %s for %s, the listing's identity gave %s: already-done checks will miss it",
                job_id,
                candidate.info.uri,
                candidate.job_id,
            )
        if created:
            report.submitted += 1
        else:  # submitted by someone else between the state check and now
            report.already_queued += 1


def _submit_one(submitter: Submitter, candidate: _Candidate, outage: threading.Event) -> tuple[str, bool] | Exception:
    """One submission, transient errors retried; a failure is returned, not raised, so one bad key does not
    abandon the rest of its batch in the pool. Once a submission has failed through all its retries (``outage``),
    the rest of the batch is not attempted: each would wait out the same retries against the same outage."""
    if outage.is_set():
        return TransientError("not attempted: submitting stopped after an outage")
    try:
        return _retrying(lambda: submitter.submit(candidate.spec, candidate.info), f"submitting {candidate.info.uri}")
    except Exception as error:
        if _is_transient(error):
            outage.set()
            return error
        if isinstance(error, TinctError):
            return error
        raise


# -------------------------------------------------------------------------------------------------- S3 events


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
        owner = _sidecar_owner(event.uri)
        uri = owner or event.uri
        verdict = eligibility(uri, output_prefix)
        if verdict != "eligible":
            logger.debug("skipping %s (%s)", event.uri, verdict)
            results.skipped += 1
            continue
        try:
            spec = job_spec_for(uri, None, output_prefix, options)
            identity = event.identity() if owner is None else _stat_if_present(submitter.storage, owner)
            if owner is not None and identity is None:
                logger.info(
                    "sidecar %s: %s is not there yet, nothing queued (its own event will take the sidecar)",
                    event.uri,
                    owner,
                )
                results.skipped += 1
                continue
            spec = with_sidecars(spec, submitter.storage, limits, *_sidecars_present(submitter.storage, spec))
            job_id, created = submitter.submit(spec, identity)
        except (TinctError, ValueError) as error:
            if _is_transient(error):
                raise
            logger.warning("rejected event for %s: %s", uri, one_line(error))
            results.rejected.append((uri, one_line(error)))
            continue
        logger.info("%s job %s for %s", "submitted" if created else "found", job_id, uri)
        results.jobs.append(SubmittedJob(job_id, spec.input, spec.output, created))
    return results


def _sidecar_owner(uri: str) -> str | None:
    """The photo whose hint file ``uri`` is, or the film whose reference picture it is; None for anything else."""
    if uri.endswith(HINTS_SUFFIX):
        photo = uri[: -len(HINTS_SUFFIX)]
        return photo if PurePosixPath(photo).suffix.lower() in EXTENSION_FORMATS else None
    return _picture_film(uri)


def _stat_if_present(storage: Storage, uri: str) -> ObjectInfo | None:
    try:
        return storage.stat(uri)
    except ObjectNotFoundError:
        return None


def _sidecars_present(storage: Storage, spec: JobSpec) -> tuple[bool, list[str]]:
    """What an event's photo or film has beside it now, for :func:`with_sidecars`: one HEAD for a photo's hint file,
    one listing of a film's reference folder."""
    if spec.kind == "image":
        return storage.exists(spec.input + HINTS_SUFFIX), []
    listing = storage.list(spec.input + REFERENCES_SUFFIX)
    return False, [info.uri for info in listing if _picture_film(info.uri) == spec.input]


# ------------------------------------------------------------------------------------------------------- SQS


def parse_sqs_uri(uri: str) -> str:
    """The queue name in ``sqs://queue-name``; ``ValueError`` for anything else."""
    if not uri.startswith("sqs://"):
        raise ValueError(f"{uri!r} is not an sqs://queue-name URI")
    name = uri[len("sqs://") :].rstrip("/")
    if not _SQS_QUEUE_NAME.match(name):
        raise ValueError(f"{uri!r}: an SQS queue name is 1-80 letters, digits, '-' or '_' (and '.fifo')")
    return name


def make_sqs_client(queue: str) -> Any:
    """A boto3 SQS client for ``queue`` (an ``sqs://`` URI or a queue URL).

    For an AWS queue URL the region comes from its host; any other http(s) URL (ElasticMQ, LocalStack, moto) is
    its own endpoint (in boto3's configured region, else us-east-1). ``sqs://`` names use boto3's configuration
    chain (``AWS_REGION``, ``AWS_ENDPOINT_URL``...).
    """
    session = boto3.session.Session()
    if queue.startswith("sqs://"):
        return session.client("sqs")
    parts = urlsplit(queue)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{queue!r} is neither an sqs://queue-name URI nor an http(s) queue URL")
    aws = _AWS_SQS_HOST.match(parts.hostname)
    if aws:
        return session.client("sqs", region_name=aws.group(1))
    # Self-hosted queues ignore the region, but SigV4 signing needs one: boto3's configured one, else a default.
    region = session.region_name or "us-east-1"
    return session.client("sqs", endpoint_url=f"{parts.scheme}://{parts.netloc}", region_name=region)


def resolve_queue_url(client: Any, queue: str) -> str:
    """The queue URL for ``sqs://name`` (one GetQueueUrl call), or ``queue`` itself when it already is a URL."""
    if queue.startswith(("http://", "https://")):
        return queue
    name = parse_sqs_uri(queue)
    try:
        return str(client.get_queue_url(QueueName=name)["QueueUrl"])
    except boto_errors.ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
            raise ValueError(f"no SQS queue named {name!r} for these credentials and region") from None
        raise


@dataclass
class ListenCounts:
    """What an SQS listener did until it was stopped."""

    messages: int = 0
    events: int = 0  # ObjectCreated events in those messages
    submitted: int = 0  # new jobs
    existing: int = 0  # events whose job already existed: duplicates and redeliveries
    skipped: int = 0  # unsupported extensions, keys under the output prefix, sidecars of inputs not there yet
    rejected: int = 0  # permanently bad events (unsafe keys, bad specs), logged with their reasons
    malformed: int = 0  # messages that were not S3 events: logged and deleted
    retried: int = 0  # messages left on the queue after a transient failure, for SQS to redeliver
    receive_errors: int = 0

    def __str__(self) -> str:
        return (
            f"{self.messages} messages, {self.events} events: {self.submitted} jobs submitted, {self.existing} "
            f"already known, {self.skipped} skipped, {self.rejected} rejected, {self.malformed} malformed messages "
            f"dropped, {self.retried} left for redelivery, {self.receive_errors} receive errors"
        )


def listen_sqs(
    submitter: Submitter,
    queue_url: str,
    output_prefix: str,
    options: JobOptions,
    *,
    stop: threading.Event,
    wait_s: int = SQS_MAX_WAIT_S,
    sqs_client: Any = None,
    limits: GuidanceLimits | None = None,
) -> ListenCounts:
    """Long-poll an SQS queue of S3 event notifications and submit a job per new photo or film until ``stop``.

    A message is deleted only once all its events were submitted or were permanently bad; after a transient
    failure it stays, and SQS redelivers it after its visibility timeout (and moves it to a dead-letter queue
    after the queue's maxReceiveCount, if one is configured). ``stop`` is noticed between long polls, so a stop
    takes up to ``wait_s`` seconds; messages received but not yet handled are released for immediate redelivery.
    """
    if not 0 <= wait_s <= SQS_MAX_WAIT_S:
        raise ValueError(f"wait_s must be 0 to {SQS_MAX_WAIT_S} seconds (SQS's longest poll), got {wait_s}")
    output = normalize_uri(output_prefix)
    client = sqs_client if sqs_client is not None else make_sqs_client(queue_url)
    url = resolve_queue_url(client, queue_url)
    counts = ListenCounts()
    failures_in_a_row = 0
    logger.info("listening for S3 events on %s; outputs under %s", url, output)
    while not stop.is_set():
        try:
            response = client.receive_message(
                QueueUrl=url, MaxNumberOfMessages=SQS_MAX_MESSAGES, WaitTimeSeconds=wait_s
            )
        except (boto_errors.BotoCoreError, boto_errors.ClientError) as error:
            counts.receive_errors += 1
            failures_in_a_row += 1
            delay = min(2.0**failures_in_a_row, MAX_BACKOFF_S)
            logger.warning("receiving from %s failed (%s); trying again in %.0f s", url, one_line(error), delay)
            stop.wait(delay)
            continue
        messages = response.get("Messages", [])
        for index, message in enumerate(messages):
            if stop.is_set():
                _release(client, url, messages[index:])
                break
            counts.messages += 1
            if _handle_message(submitter, message, output, options, counts, limits):
                failures_in_a_row = 0
                _delete(client, url, message)
                continue
            # A transient failure: the rest of this batch would most likely fail the same way. They stay
            # invisible until their visibility timeout, which is the backoff SQS gives them.
            counts.retried += 1
            failures_in_a_row += 1
            stop.wait(min(2.0**failures_in_a_row, MAX_BACKOFF_S))
            break
    logger.info("stopped listening on %s: %s", url, counts)
    return counts


def _handle_message(
    submitter: Submitter,
    message: Mapping[str, Any],
    output: str,
    options: JobOptions,
    counts: ListenCounts,
    limits: GuidanceLimits | None,
) -> bool:
    """Handle one message; True when it may be deleted (done, or permanently bad), False to leave it."""
    message_id = message.get("MessageId", "?")
    try:
        events = parse_s3_events(message.get("Body", ""))
    except ValueError as error:
        counts.malformed += 1
        logger.warning("dropping SQS message %s: %s", message_id, one_line(error))
        return True
    counts.events += len(events)
    try:
        results = submit_events(submitter, events, output, options, limits)
    except Exception as error:
        # Transient by type, or unexpected: either way redelivery (then the dead-letter queue) is the safe
        # answer for a daemon, rather than dying or dropping an event.
        if _is_transient(error):
            logger.warning("SQS message %s left for redelivery: %s", message_id, one_line(error))
        else:
            logger.exception("SQS message %s left for redelivery after an unexpected error", message_id)
        return False
    counts.submitted += sum(job.created for job in results.jobs)
    counts.existing += sum(not job.created for job in results.jobs)
    counts.skipped += results.skipped
    counts.rejected += len(results.rejected)
    return True


def _delete(client: Any, url: str, message: Mapping[str, Any]) -> None:
    try:
        client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    except (boto_errors.BotoCoreError, boto_errors.ClientError) as error:
        # The message comes back after its visibility timeout; submitting it again finds the same jobs.
        logger.warning(
            "could not delete SQS message %s (%s); it will be redelivered", message.get("MessageId"), one_line(error)
        )


def _release(client: Any, url: str, messages: Sequence[Mapping[str, Any]]) -> None:
    """Make unhandled messages visible again now, so another listener takes them without waiting out the
    visibility timeout."""
    for message in messages:
        try:
            client.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
        except (boto_errors.BotoCoreError, boto_errors.ClientError) as error:
            logger.debug("could not release SQS message %s: %s", message.get("MessageId"), one_line(error))


# ---------------------------------------------------------------------------------------------------- webhook


@dataclass(frozen=True)
class _WebhookConfig:
    submitter: Submitter
    secret: bytes
    output_prefix: str
    options: JobOptions
    max_body_bytes: int
    limits: GuidanceLimits | None


class _WebhookServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not keep the process alive at shutdown

    def __init__(self, address: tuple[str, int], config: _WebhookConfig) -> None:
        self.config = config
        super().__init__(address, _WebhookHandler)


class _WebhookHandler(BaseHTTPRequestHandler):
    """POST: S3-shaped event notifications (MinIO, or any relay), authenticated by a shared secret. GET /healthz
    for probes. HEAD answers too, because MinIO checks that a webhook target is up with a HEAD request."""

    server: _WebhookServer
    server_version = "tinct-webhook"
    sys_version = ""
    timeout = 30  # seconds a slow client may hold a thread

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/healthz":
            self._reply(HTTPStatus.OK, {"status": "ok"})
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_HEAD(self) -> None:
        status = HTTPStatus.OK if self.path.split("?", 1)[0] in ("/", "/healthz") else HTTPStatus.NOT_FOUND
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        config = self.server.config
        # Authenticate before reading a byte of the body: unauthenticated senders get nothing parsed.
        if not self._authorized(config.secret):
            self._reply(
                HTTPStatus.UNAUTHORIZED,
                {"error": "missing or wrong secret"},
                {"WWW-Authenticate": 'Bearer realm="tinct"'},
            )
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
            return
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError(length_header)
        except ValueError:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": "invalid Content-Length"})
            return
        if length > config.max_body_bytes:
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {config.max_body_bytes} bytes"})
            return
        body = self.rfile.read(length)
        if len(body) != length:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": "body shorter than its Content-Length"})
            return
        try:
            events = parse_s3_events(body)
        except ValueError as error:
            logger.warning("webhook: malformed body from %s: %s", self.client_address[0], one_line(error))
            self._reply(HTTPStatus.BAD_REQUEST, {"error": one_line(error)})
            return
        try:
            results = submit_events(config.submitter, events, config.output_prefix, config.options, config.limits)
        except Exception as error:
            # 503 and 500 both make MinIO (and most senders) retry, which is what a hiccup needs; the event is
            # not lost, and events already submitted from this body are found again on the retry.
            if _is_transient(error):
                logger.warning("webhook: submitting failed for now: %s", one_line(error))
                self._reply(
                    HTTPStatus.SERVICE_UNAVAILABLE, {"error": "temporarily unavailable; retry"}, {"Retry-After": "30"}
                )
            else:
                logger.exception("webhook: unexpected error while submitting")
                self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})
            return
        self._reply(
            HTTPStatus.OK,
            {
                "jobs": [job.to_dict() for job in results.jobs],
                "skipped": results.skipped,
                "rejected": [{"input": uri, "reason": reason} for uri, reason in results.rejected],
            },
        )

    def _authorized(self, secret: bytes) -> bool:
        """``Authorization: Bearer <secret>``, or the bare secret (MinIO sends an ``auth_token`` that already has
        a scheme, such as ``Token abc``, as it is). Constant-time comparisons, so timing reveals nothing."""
        value = self.headers.get("Authorization", "").strip().encode("utf-8", "surrogateescape")
        scheme, _, token = value.partition(b" ")
        bearer = scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), secret)
        return hmac.compare_digest(value, secret) or bearer

    def _reply(self, status: HTTPStatus, payload: dict[str, Any], headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        # The request line only: never headers, where the secret travels.
        logger.debug("webhook %s: %s", self.client_address[0], format % args)


def serve_webhook(
    submitter: Submitter,
    host: str,
    port: int,
    secret: str,
    output_prefix: str,
    options: JobOptions,
    *,
    max_body_bytes: int = MAX_WEBHOOK_BYTES,
    limits: GuidanceLimits | None = None,
) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve the webhook on ``host:port`` (0 picks a free port: see ``server.server_address``) in a daemon thread.

    Replies: 200 ``{"jobs": [{"id", "input", "output", "created"}], "skipped": n, "rejected": [...]}``; 401 without
    the secret; 400 for a body that is not an S3 event notification; 411/413 for a missing or oversized body; 503
    when the service is briefly unavailable (the sender retries). ``ValueError`` without a secret: an open
    endpoint would let anyone queue GPU work. Stop with ``server.shutdown(); server.server_close()``.
    """
    if not isinstance(secret, str) or not secret.strip():
        raise ValueError("the webhook needs a shared secret (TINCT_WEBHOOK_SECRET); refusing to serve without one")
    config = _WebhookConfig(
        submitter, secret.strip().encode("utf-8"), normalize_uri(output_prefix), options, max_body_bytes, limits
    )
    server = _WebhookServer((host, port), config)
    thread = threading.Thread(target=server.serve_forever, name="tinct-webhook", daemon=True)
    thread.start()
    logger.info("webhook listening on %s:%d; outputs under %s", host, server.server_address[1], config.output_prefix)
    return server, thread
