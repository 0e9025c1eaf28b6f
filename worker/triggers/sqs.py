"""``tinct listen``: long-polls an SQS queue of S3 event notifications and submits a job per new photo or film
(:func:`listen_sqs`), through :func:`worker.triggers.events.submit_events`.

A message is deleted once its events were submitted or were permanently bad (or it was no S3 event at all); after a
transient failure (Redis or S3 hiccup) it stays on the queue for SQS to redeliver.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions as boto_errors

from worker.errors import one_line
from worker.jobs import JobOptions
from worker.settings import GuidanceLimits
from worker.storage import normalize_uri
from worker.triggers.events import parse_s3_events, submit_events
from worker.triggers.mapping import Submitter, is_transient

logger = logging.getLogger(__name__)

#: SQS long polls for at most 20 s and hands out at most 10 messages a receive.
SQS_MAX_WAIT_S = 20
SQS_MAX_MESSAGES = 10
#: The longest pause after consecutive transient failures in the SQS listener.
MAX_BACKOFF_S = 60.0

_SQS_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}(\.fifo)?$")
_AWS_SQS_HOST = re.compile(r"^sqs\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$")


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
        if is_transient(error):
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
