"""worker.triggers against real services: moto's HTTP server for S3 listings and SQS, a real redis-server for jobs.

The submitter under test is :class:`StoreSubmitter`, a small Submitter over the real :class:`JobStore` and
:meth:`JobSpec.job_id` (Redis-backed idempotency, not a mock), so "a duplicate event gives one job" and "a rerun
skips finished jobs" are checked the way the service will behave. Event payloads follow the shapes AWS (S3 to SQS,
S3 to SNS to SQS) and MinIO (webhook) document, with URL-encoded keys.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import quote_plus

import pytest
import redis

from tests.services import s3_settings
from worker.errors import StorageError
from worker.hints import parse_hints_bytes
from worker.jobs import JobOptions, JobSpec, JobSpecError, JobStore, film_output_uri
from worker.service import Service
from worker.settings import Settings
from worker.storage import ObjectInfo, Storage, UnsafeKeyError, parse_uri
from worker.triggers.bulk import BulkReport, bulk
from worker.triggers.events import S3Event, parse_s3_events, submit_events
from worker.triggers.mapping import eligibility, is_within, job_spec_for, output_uri_for
from worker.triggers.sqs import listen_sqs, make_sqs_client, parse_sqs_uri
from worker.triggers.webhook import serve_webhook

SECRET = "hook-secret-7f3a9c"
OPTIONS = JobOptions(smoothing=0.25)


class StoreSubmitter:
    """The service's submit path without Celery: identity -> ``JobSpec.job_id`` -> ``JobStore.create`` in Redis.

    Records what it created and how many HEAD requests it had to make (the triggers should need none), and can be
    told to fail the next few submissions with a transient error, as a Redis or S3 hiccup would.
    """

    def __init__(self, storage: Storage, client: redis.Redis) -> None:
        self.storage = storage
        self.store = JobStore(client)
        self.created: list[JobSpec] = []
        self.stat_calls = 0
        self.state_calls = 0
        self.fail_next = 0
        self._lock = threading.Lock()

    def submit(self, spec: JobSpec, identity: ObjectInfo | None = None,
               supersede_as_of: float | None = None) -> tuple[str, bool]:
        # Superseding is the service's (tested against the real Service below); this double records creations.
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                raise StorageError("redis", "injected outage")
            if identity is None:
                self.stat_calls += 1
        identity = identity or self.storage.stat(spec.input)
        job_id = spec.job_id(identity.etag, identity.size)
        _, created = self.store.create(job_id, spec, {"etag": identity.etag, "size": identity.size})
        if created:
            with self._lock:
                self.created.append(spec)
        return job_id, created

    def job_states(self, job_ids: Sequence[str]) -> list[str | None]:
        self.state_calls += 1
        with self.store.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(f"tinct:job:{job_id}", "state")
            return [value.decode() if value is not None else None for value in pipe.execute()]


@pytest.fixture
def submitter(redis_server, s3_server) -> Iterator[StoreSubmitter]:  # noqa: F811
    client = redis_server.client()
    with Storage(s3_settings(s3_server, redis_url=redis_server.url)) as storage:
        yield StoreSubmitter(storage, client)
    client.close()


def put(s3_server, bucket: str, key: str, body: bytes = b"scan") -> ObjectInfo:  # noqa: F811
    client = s3_server.client()
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body)
        head = client.head_object(Bucket=bucket, Key=key)
    finally:
        client.close()
    return ObjectInfo(f"s3://{bucket}/{key}", head["ContentLength"], head["ETag"].strip('"'), None)


def aws_record(bucket: str, key: str, size: int, etag: str, name: str = "ObjectCreated:Put") -> dict[str, Any]:
    """One record as S3 sends it to SQS/SNS: the key URL-encoded with '+' for spaces, '/' kept."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-11-22T19:30:00.123Z",
        "eventName": name,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "203.0.113.7"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "tinct-new-scans",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                       "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(key, safe="/"), "size": size, "eTag": etag, "sequencer": "0055AED6DCD90281E5"},
        },
    }  # fmt: skip


def minio_payload(bucket: str, key: str, size: int, etag: str) -> dict[str, Any]:
    """MinIO's webhook body: top-level EventName/Key plus one record whose key is fully URL-encoded ('/' too)."""
    record = {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "awsRegion": "",
        "eventTime": "2026-11-22T19:30:00.000Z",
        "eventName": "s3:ObjectCreated:Put",
        "userIdentity": {"principalId": "minioadmin"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "Config",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "minioadmin"}, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(key, safe=""), "size": size, "eTag": etag, "contentType": "image/jpeg",
                       "userMetadata": {"content-type": "image/jpeg"}, "sequencer": "17A9C6B2D5E0F7A1"},
        },
        "source": {"host": "10.0.0.5", "port": "", "userAgent": "MinIO (linux; amd64) minio-go/v7.0.70"},
    }  # fmt: skip
    return {"EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/{key}", "Records": [record]}


def sns_wrap(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:tinct-scans",
        "Subject": "Amazon S3 Notification",
        "Message": json.dumps(message),
        "Timestamp": "2026-11-22T19:30:00.200Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858fiTDN6bkk=",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-example.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=example",
    }


TEST_EVENT = {
    "Service": "Amazon S3",
    "Event": "s3:TestEvent",
    "Time": "2026-11-22T19:29:00.000Z",
    "Bucket": "scans",
    "RequestId": "5582815E1AEA5ADF",
    "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
}


# ---------------------------------------------------------------------------------------------------- mapping


def test_output_mapping_mirrors_the_key_and_refuses_traversal():
    assert output_uri_for("s3://scans/in/sub/a b.jpg", "s3://scans/in/", "s3://out/c") == "s3://out/c/sub/a b.jpg"
    assert output_uri_for("s3://scans/in/a.jpg", "s3://scans/in", "s3://out/") == "s3://out/a.jpg"
    assert output_uri_for("s3://scans/reels/r1.mkv", None, "s3://out/colour/") == "s3://out/colour/reels/r1.mkv"
    with pytest.raises(UnsafeKeyError, match=r"\.\."):
        output_uri_for("s3://scans/../../etc/x.jpg", None, "s3://out/")
    with pytest.raises(UnsafeKeyError):
        output_uri_for("s3://scans/in/../x.jpg", "s3://scans/in/", "s3://out/")
    with pytest.raises(ValueError, match="not inside"):
        output_uri_for("s3://scans/inbox/a.jpg", "s3://scans/in/", "s3://out/")


def test_a_film_is_checked_with_the_triggers_own_codec():
    ffv1 = JobOptions(codec="ffv1")
    assert job_spec_for("s3://scans/r1.mkv", None, "s3://out/", ffv1).options.codec == "ffv1"
    with pytest.raises(JobSpecError, match=r"output: s3://out/r1.mp4: ffv1 cannot be stored in \.mp4; use \.mkv"):
        job_spec_for("s3://scans/r1.mp4", None, "s3://out/", ffv1)
    assert job_spec_for("s3://scans/a.jpg", None, "s3://out/", ffv1).kind == "image"  # photos have no codec


def test_eligibility_takes_photos_and_films_and_never_our_outputs():
    out = "s3://scans/colorized"
    assert eligibility("s3://scans/a/Photo.JPG", out) == "eligible"
    assert eligibility("s3://scans/reel.mkv", out) == "eligible"
    assert eligibility("s3://scans/scan.tiff", out) == "eligible"
    assert eligibility("s3://scans/notes.txt", out) == "unsupported"
    assert eligibility("s3://scans/README", out) == "unsupported"
    assert eligibility("s3://scans/reel.mkv.references/12.5.png", out) == "unsupported"  # a film's reference picture
    assert eligibility("s3://scans/album.references/12.5.png", out) == "eligible"  # a folder that only looks like one
    assert eligibility("s3://scans/colorized/a.jpg", out) == "own_output"
    assert eligibility("s3://scans/colorized-old/a.jpg", out) == "eligible"  # a sibling, not under the prefix
    assert eligibility("s3://other/colorized/a.jpg", out) == "eligible"
    assert is_within("s3://scans/x.jpg", "s3://scans/") and not is_within("s3://scans/x.jpg", "s3://scan/")


# ------------------------------------------------------------------------------------------------------- bulk


def test_bulk_submits_eligible_keys_skips_outputs_and_refuses_traversal(submitter, s3_server):  # noqa: F811
    s3_server.make_bucket("scans")
    for key in ("in/a.jpg", "in/sub/b b.TIF", "in/reel.mkv", "in/notes.txt", "in/colorized/a.jpg",
                "in/../evil.jpg", "in/x/../../y.png"):  # fmt: skip
        put(s3_server, "scans", key)

    report = bulk(submitter, "s3://scans/in/", "s3://scans/in/colorized/", OPTIONS)

    assert (report.listed, report.eligible, report.submitted) == (7, 5, 3)
    assert (report.unsupported, report.own_outputs, report.already_done, report.already_queued) == (1, 1, 0, 0)
    assert report.failed == 2 and {uri for uri, _ in report.failures} == {
        "s3://scans/in/../evil.jpg",
        "s3://scans/in/x/../../y.png",
    }
    assert all("unsafe object key" in reason for _, reason in report.failures)
    created = {spec.input: spec for spec in submitter.created}
    assert set(created) == {"s3://scans/in/a.jpg", "s3://scans/in/sub/b b.TIF", "s3://scans/in/reel.mkv"}
    assert created["s3://scans/in/sub/b b.TIF"].output == "s3://scans/in/colorized/sub/b b.TIF"
    assert created["s3://scans/in/reel.mkv"].kind == "video" and created["s3://scans/in/a.jpg"].kind == "image"
    assert all(spec.options == OPTIONS for spec in submitter.created)
    assert submitter.stat_calls == 0  # identities came from the listing: no HEAD per object
    assert report.keys_per_minute > 0 and "submitted 3" in report.report() and "2 failed" in report.report()


def test_a_gif_beside_the_png_its_copy_is_named_after_is_left_to_the_png_by_bulk_and_by_events(
        submitter, webhook, s3_server):  # noqa: F811
    """A GIF's copy is a PNG: ``a.gif`` beside ``a.png`` would be two jobs writing one ``a.png``, the later
    overwriting the other's. Bulk (from its listing) and the event triggers (one listing of ``a.*`` per GIF) leave
    the name to the PNG and fail the GIF in one line; a GIF alone is submitted as any photo."""
    s3_server.make_bucket("scans")
    for key in ("web/a.gif", "web/a.png", "web/b.gif"):
        put(s3_server, "scans", key)
    report = bulk(submitter, "s3://scans/web/", "s3://out/", OPTIONS)
    assert {spec.input: spec.output for spec in submitter.created} == {"s3://scans/web/a.png": "s3://out/a.png",
                                                                         "s3://scans/web/b.gif": "s3://out/b.png"}
    assert report.failures == [("s3://scans/web/a.gif", "s3://scans/web/a.gif: its copy s3://out/a.png is also the "
                                "copy of s3://scans/web/a.png")]
    gif = put(s3_server, "scans", "web/a.gif", b"again")
    status, reply = post(webhook, json.dumps(minio_payload("scans", "web/a.gif", gif.size, gif.etag)), SECRET)
    assert status == 200 and reply["jobs"] == []
    assert reply["rejected"] == [{"input": "s3://scans/web/a.gif", "reason": "s3://scans/web/a.gif: its copy "
                                  "s3://out/web/a.png is also the copy of s3://scans/web/a.png"}]


def test_a_format_names_the_copies_of_bulk_and_events_and_photos_renamed_into_one_copy_write_it_once(
        submitter, s3_server):  # noqa: F811
    """With a format asked for, a copy is named in its extension (``a.jpg`` -> ``a.png``: the format had been
    silently ignored) and photos whose copies share a name write it once, as in a collection: the one whose copy
    keeps its name (``b.png``), else the first in key order (``a.jpg``), the others failing in one line. Bulk sorts
    this out from its listing, waiting where other keys lie between namesakes (``a.k/``, ``a.b.jpg``); events
    with one listing of the namesakes, and the same outcome whichever comes first."""
    s3_server.make_bucket("scans")
    keys = ("web/a.b.jpg", "web/a.jpg", "web/a.jpg.hints.json", "web/a.k/x.jpg", "web/a.tif", "web/b.png",
            "web/b.tif", "web/c.jpg", "web/reel.mkv")
    objects = {key: put(s3_server, "scans", key, json.dumps(HINTS).encode() if key.endswith(".json") else b"scan")
               for key in keys}
    as_png = replace(OPTIONS, format="png")

    report = bulk(submitter, "s3://scans/", "s3://out/", as_png)  # events name copies by their whole keys

    created = {spec.input: spec for spec in submitter.created}
    assert {uri: spec.output for uri, spec in created.items()} == {
        "s3://scans/web/a.b.jpg": "s3://out/web/a.b.png", "s3://scans/web/a.jpg": "s3://out/web/a.png",
        "s3://scans/web/a.k/x.jpg": "s3://out/web/a.k/x.png", "s3://scans/web/b.png": "s3://out/web/b.png",
        "s3://scans/web/c.jpg": "s3://out/web/c.png", "s3://scans/web/reel.mkv": "s3://out/web/reel.mkv"}
    assert created["s3://scans/web/a.jpg"].options.hints is not None  # its hint file still found it
    assert report.failures == [
        ("s3://scans/web/a.tif", "s3://scans/web/a.tif: its copy s3://out/web/a.png is also the copy of "
                                 "s3://scans/web/a.jpg"),
        ("s3://scans/web/b.tif", "s3://scans/web/b.tif: its copy s3://out/web/b.png is also the copy of "
                                 "s3://scans/web/b.png")]
    assert submitter.stat_calls == 0

    results = submit_events(submitter, [S3Event("scans", key, objects[key].size, objects[key].etag, "ObjectCreated:Put")
                                        for key in ("web/a.tif", "web/b.tif", "web/a.jpg", "web/b.png")],
                            "s3://out/", as_png)
    assert [(job.input, job.output, job.created) for job in results.jobs] == [
        ("s3://scans/web/a.jpg", "s3://out/web/a.png", False), ("s3://scans/web/b.png", "s3://out/web/b.png", False)]
    assert results.rejected == [(uri, reason) for uri, reason in report.failures]
    with pytest.raises(JobSpecError, match="options.format: unknown output format 'gif'"):
        bulk(submitter, "s3://scans/", "s3://out/", replace(OPTIONS, format="gif"))


def test_bulk_over_a_folder_sorts_out_copies_that_would_share_a_name_from_its_walk(redis_server, tmp_path):  # noqa: F811
    """A folder is walked in sorted order, a folder's files and subfolders together, so a photo's namesakes lie in
    one run of its walk as they do in an S3 listing (``a.k/`` among them)."""
    for key in ("a.b.jpg", "a.jpg", "a.k/x.jpg", "a.tif", "b.png", "b.tif"):
        (tmp_path / "in" / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / key).write_bytes(b"scan")
    client = redis_server.client()
    with Storage(Settings(redis_url=redis_server.url)) as storage:
        submitter = StoreSubmitter(storage, client)
        report = bulk(submitter, f"file://{tmp_path}/in/", f"file://{tmp_path}/out/", replace(OPTIONS, format="png"))
    client.close()
    inputs, outputs = f"file://{tmp_path}/in/", f"file://{tmp_path}/out/"
    assert sorted((spec.input[len(inputs):], spec.output[len(outputs):]) for spec in submitter.created) == [
        ("a.b.jpg", "a.b.png"), ("a.jpg", "a.png"), ("a.k/x.jpg", "a.k/x.png"), ("b.png", "b.png")]
    assert report.failures == [(f"{inputs}a.tif", f"{inputs}a.tif: its copy {outputs}a.png is also the copy of "
                                                  f"{inputs}a.jpg"),
                               (f"{inputs}b.tif", f"{inputs}b.tif: its copy {outputs}b.png is also the copy of "
                                                  f"{inputs}b.png")]


def test_bulk_rerun_skips_done_and_queued_and_reruns_failed(submitter, s3_server):  # noqa: F811
    s3_server.make_bucket("scans")
    for key in ("in/a.jpg", "in/b.jpg", "in/c.jpg"):
        put(s3_server, "scans", key)
    bulk(submitter, "s3://scans/in/", "s3://out/", OPTIONS)
    ids = {record.spec.input: record.id for record in submitter.store.recent()}
    submitter.store.update(ids["s3://scans/in/a.jpg"], state="succeeded")
    submitter.store.update(ids["s3://scans/in/b.jpg"], state="failed", error="decoder crashed")
    submitter.created.clear()

    again = bulk(submitter, "s3://scans/in/", "s3://out/", OPTIONS)

    assert (again.already_done, again.already_queued, again.submitted, again.failed) == (1, 1, 1, 0)
    assert [spec.input for spec in submitter.created] == ["s3://scans/in/b.jpg"]  # a failed job runs again
    assert submitter.store.state(ids["s3://scans/in/b.jpg"]) == "queued"


def test_bulk_dry_run_submits_nothing(submitter, s3_server):  # noqa: F811
    s3_server.make_bucket("scans")
    for key in ("a.jpg", "b.mov", "c.txt"):
        put(s3_server, "scans", key)

    report = bulk(submitter, "s3://scans/", "s3://out/", OPTIONS, dry_run=True)

    assert (report.eligible, report.submitted, report.unsupported) == (2, 2, 1)
    assert submitter.created == [] and submitter.store.recent() == []
    assert report.report().startswith("Dry run:") and "would submit 2" in report.report()


def test_bulk_thousands_of_keys_in_batches(submitter, s3_server, caplog):  # noqa: F811
    """A few thousand generated keys over real HTTP listing and real Redis: one job_states call per 500 ids, every
    photo submitted once, a rerun submits nothing. The rate is reported, not asserted (shared CI machines)."""
    s3_server.make_bucket("archive")
    photos = [f"scans/box{i // 250:02d}/{i:05d}.jpg" for i in range(3000)]
    s3_server.seed_objects("archive", photos + [f"scans/box00/{i}.xml" for i in range(100)])
    caplog.set_level(logging.DEBUG, logger="worker.triggers")  # the report is logged at debug (the CLI prints it)

    report = bulk(submitter, "s3://archive/scans", "s3://archive/colorized", OPTIONS)

    assert (report.listed, report.eligible, report.submitted, report.unsupported) == (3100, 3000, 3000, 100)
    assert submitter.state_calls == 6 and submitter.stat_calls == 0
    assert len(submitter.created) == 3000 and len({spec.output for spec in submitter.created}) == 3000
    assert report.seconds > 0 and "keys/min" in caplog.text

    submitter.created.clear()
    rerun = bulk(submitter, "s3://archive/scans", "s3://archive/colorized", OPTIONS)
    assert (rerun.already_queued, rerun.submitted, len(submitter.created)) == (3000, 0, 0)


def test_bulk_refuses_an_input_inside_the_output_and_reports_a_missing_bucket(submitter):
    with pytest.raises(ValueError, match="inside the output prefix"):
        bulk(submitter, "s3://scans/out/sub/", "s3://scans/out", OPTIONS)
    report = bulk(submitter, "s3://no-such-bucket/in/", "s3://out/", OPTIONS)
    assert report.failed == 1 and "no such bucket" in report.stopped and "run again" not in report.stopped


def test_bulk_stops_on_a_lasting_outage_and_says_a_rerun_resumes(submitter, s3_server):  # noqa: F811
    s3_server.make_bucket("scans")
    s3_server.seed_objects("scans", [f"{i}.jpg" for i in range(10)])
    submitter.fail_next = 1000  # Redis stays down: every attempt fails

    report = bulk(submitter, "s3://scans/", "s3://out/", OPTIONS, concurrency=2)

    attempts = 1000 - submitter.fail_next
    assert attempts <= 2 * 3  # the two in flight used their retries; the rest of the batch was not attempted
    assert (report.failed, report.submitted) == (10, 0) and "injected outage" in report.stopped
    assert "run again to resume" in report.report()
    submitter.fail_next = 0
    assert bulk(submitter, "s3://scans/", "s3://out/", OPTIONS).submitted == 10


# -------------------------------------------------------------------------------------------------- S3 events


def test_parse_aws_event_decodes_keys_and_keeps_only_created_objects():
    keys = ["photos/Grandad 1931 (Rome)+1.jpg", "photos/été/Noël à Paris.tif", "reels/100%.mkv"]
    records = [aws_record("scans", key, 1000 + i, f"etag{i}") for i, key in enumerate(keys)]
    records.append(aws_record("scans", "photos/gone.jpg", 0, "x", name="ObjectRemoved:Delete"))
    body = json.dumps({"Records": records})
    assert '"photos/Grandad+1931+%28Rome%29%2B1.jpg"' in body  # what S3 really sends

    events = parse_s3_events(body)

    assert [event.key for event in events] == keys
    assert events[0] == S3Event("scans", keys[0], 1000, "etag0", "ObjectCreated:Put")
    assert events[1].uri == "s3://scans/photos/été/Noël à Paris.tif"
    assert events[2].identity() == ObjectInfo("s3://scans/reels/100%.mkv", 1002, "etag2", None)
    assert parse_s3_events(body.encode()) == events == parse_s3_events(json.loads(body))


def test_parse_sns_wrapped_minio_and_test_events():
    record = aws_record("scans", "a b/c.png", 5, '"quoted-etag"', name="ObjectCreated:CompleteMultipartUpload")
    [wrapped] = parse_s3_events(json.dumps(sns_wrap({"Records": [record]})))
    assert (wrapped.key, wrapped.etag, wrapped.event_name) == ("a b/c.png", "quoted-etag", record["eventName"])

    [minio] = parse_s3_events(json.dumps(minio_payload("scans", "dir/summer 1950+.jpg", 42, "abc123")))
    assert (minio.bucket, minio.key, minio.size, minio.etag) == ("scans", "dir/summer 1950+.jpg", 42, "abc123")
    assert minio.event_name == "ObjectCreated:Put"

    assert parse_s3_events(json.dumps(TEST_EVENT)) == []
    assert parse_s3_events(json.dumps(sns_wrap(TEST_EVENT))) == []
    assert parse_s3_events('{"Records": []}') == []


def test_event_without_identity_leaves_it_to_the_submitter():
    record = aws_record("scans", "a.jpg", 1, "e")
    del record["s3"]["object"]["size"], record["s3"]["object"]["eTag"]
    [event] = parse_s3_events({"Records": [record]})
    assert event.identity() is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("hello", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        ("[1, 2]", "not an object"),
        ('{"foo": 1}', "no 'Records'"),
        ('{"Records": [3]}', r"Records\[0\] is not an object"),
        ('{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {}}}]}',
         "no s3.object.key"),
        ('{"Records": [{"s3": {}}]}', "no eventName"),
        ('{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, '
         '"object": {"key": "a.jpg", "size": "big"}}}]}', "invalid s3.object.size"),
        ('{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, '
         '"object": {"key": "%C3%28.jpg"}}}]}', "not URL-encoded UTF-8"),
        ('{"Type": "SubscriptionConfirmation", "Message": "confirm", "TopicArn": "arn"}', "not a Notification"),
        ('{"Type": "Notification", "Message": "{not json"}', "SNS message is not JSON"),
    ],
)  # fmt: skip
def test_malformed_bodies_raise_a_clear_value_error(body, message):
    with pytest.raises(ValueError, match=message):
        parse_s3_events(body)


# ------------------------------------------------------------------------------------------------------- SQS


def test_sqs_uris_and_clients():
    assert parse_sqs_uri("sqs://tinct-events") == "tinct-events"
    assert parse_sqs_uri("sqs://jobs.fifo") == "jobs.fifo"
    for bad in ("sqs://", "sqs://a/b", "https://x", "sqs://white space"):
        with pytest.raises(ValueError):
            parse_sqs_uri(bad)
    aws = make_sqs_client("https://sqs.eu-west-1.amazonaws.com/123456789012/tinct-events")
    assert aws.meta.region_name == "eu-west-1"
    local = make_sqs_client("http://127.0.0.1:9324/000000000000/tinct-events")
    assert local.meta.endpoint_url == "http://127.0.0.1:9324"
    with pytest.raises(ValueError):
        make_sqs_client("ftp://example.com/q")


def _run_listener(submitter, sqs, queue: str, until_empty_url: str, output: str = "s3://out/") -> Any:
    """Run listen_sqs in a thread until the queue is drained (nothing visible or in flight), then stop it.

    Drained means two empty readings in a row: moto counts the visible and the in-flight messages one after the other,
    so a message whose visibility timeout ends between the two counts is in neither (seen under a loaded CPU)."""
    stop = threading.Event()
    result: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("counts", listen_sqs(submitter, queue, output, OPTIONS, stop=stop,
                                                              wait_s=1, sqs_client=sqs)),
    )  # fmt: skip
    thread.start()
    deadline = time.monotonic() + 20
    empty_readings = 0
    try:
        while time.monotonic() < deadline:
            attributes = sqs.get_queue_attributes(
                QueueUrl=until_empty_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            empty_readings = 0 if any(int(value) for value in attributes.values()) else empty_readings + 1
            if empty_readings == 2:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the queue was not drained: {attributes}")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    return result["counts"]


def test_sqs_messages_are_submitted_deleted_and_duplicates_give_one_job(submitter, s3_server):  # noqa: F811
    s3_server.make_bucket("scans")
    info = put(s3_server, "scans", "new scans/Noël 1950.jpg", b"pixels")
    sqs = s3_server.client("sqs")
    url = sqs.create_queue(QueueName="tinct-events")["QueueUrl"]
    created = {"Records": [aws_record("scans", "new scans/Noël 1950.jpg", info.size, info.etag)]}
    bodies = [
        json.dumps(TEST_EVENT),  # the first message S3 sends when notifications are configured
        json.dumps(created),
        json.dumps(sns_wrap(created)),  # the same upload delivered again (S3 delivers at least once)
        "this is not an event",
        json.dumps({"Records": [aws_record("scans", "../../etc/cron.jpg", 1, "e"),
                                aws_record("scans", "notes.txt", 1, "e"),
                                aws_record("out", "colour.jpg", 1, "e")]}),  # our own output bucket
    ]  # fmt: skip
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=body)

    counts = _run_listener(submitter, sqs, "sqs://tinct-events", url)

    assert (counts.messages, counts.events, counts.submitted, counts.existing) == (5, 5, 1, 1)
    assert (counts.malformed, counts.rejected, counts.skipped, counts.retried) == (1, 1, 2, 0)
    assert [spec.input for spec in submitter.created] == ["s3://scans/new scans/Noël 1950.jpg"]
    assert submitter.created[0].output == "s3://out/new scans/Noël 1950.jpg"
    [record] = submitter.store.recent()
    assert record.source == {"etag": info.etag, "size": info.size} and submitter.stat_calls == 0
    assert "1 jobs submitted" in str(counts)
    sqs.close()


def test_sqs_transient_failure_leaves_the_message_for_redelivery(submitter, s3_server):  # noqa: F811
    sqs = s3_server.client("sqs")
    url = sqs.create_queue(QueueName="retry-events", Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Records": [aws_record("scans", "a.jpg", 3, "e1")]}))
    submitter.fail_next = 1

    counts = _run_listener(submitter, sqs, url, url)

    assert (counts.messages, counts.retried, counts.submitted) == (2, 1, 1)  # received twice, submitted once
    assert len(submitter.store.recent()) == 1
    sqs.close()


def test_an_event_and_a_bulk_sweep_of_the_same_object_are_one_job(submitter, s3_server):  # noqa: F811
    s3_server.make_bucket("scans")
    info = put(s3_server, "scans", "reels/r1.mp4", b"film")
    sqs = s3_server.client("sqs")
    url = sqs.create_queue(QueueName="one-job")["QueueUrl"]
    sqs.send_message(
        QueueUrl=url, MessageBody=json.dumps({"Records": [aws_record("scans", "reels/r1.mp4", info.size, info.etag)]})
    )
    _run_listener(submitter, sqs, url, url)

    report = bulk(submitter, "s3://scans/", "s3://out/", OPTIONS)

    assert (report.already_queued, report.submitted, len(submitter.created)) == (1, 0, 1)
    sqs.close()


# --------------------------------------------------------------------------------------------------- webhook


@pytest.fixture
def webhook(submitter) -> Iterator[str]:
    server, thread = serve_webhook(submitter, "127.0.0.1", 0, SECRET, "s3://out/", OPTIONS, max_body_bytes=8192)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def post(url: str, body: bytes | str, authorization: str | None = None) -> tuple[int, dict[str, Any]]:
    data = body.encode() if isinstance(body, str) else body
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_webhook_needs_the_secret_and_submits_with_it(webhook, submitter, caplog):
    caplog.set_level(logging.DEBUG)
    body = json.dumps(minio_payload("scans", "inbox/Oma und Opa 1962.jpg", 2048, "d41d8cd98f00b204e9800998ecf8427e"))

    assert post(webhook, body)[0] == 401
    assert post(webhook, body, "Bearer wrong-secret")[0] == 401
    assert post(webhook, body, f"Basic {SECRET}")[0] == 401
    assert submitter.created == []

    status, reply = post(webhook, body, f"Bearer {SECRET}")
    assert status == 200 and reply["skipped"] == 0 and reply["rejected"] == []
    [job] = reply["jobs"]
    assert job["created"] is True and job["input"] == "s3://scans/inbox/Oma und Opa 1962.jpg"
    assert job["output"] == "s3://out/inbox/Oma und Opa 1962.jpg"
    assert [spec.input for spec in submitter.created] == [job["input"]]

    status, again = post(webhook, body, SECRET)  # the bare token, as some senders send it; a retried delivery
    assert status == 200 and again["jobs"][0] == {**job, "created": False}
    assert len(submitter.store.recent()) == 1 and submitter.stat_calls == 0
    assert SECRET not in caplog.text


def test_webhook_rejects_bad_bodies_and_reports_skips(webhook, submitter):
    auth = f"Bearer {SECRET}"
    assert post(webhook, "{not json", auth)[0] == 400
    status, reply = post(webhook, '{"foo": 1}', auth)
    assert status == 400 and "Records" in reply["error"]
    assert post(webhook, b"x" * 9000, auth)[0] == 413
    assert post(webhook, json.dumps(TEST_EVENT), auth) == (200, {"jobs": [], "skipped": 0, "rejected": []})

    records = [aws_record("scans", "a/../../b.jpg", 1, "e"), aws_record("scans", "list.csv", 1, "e")]
    status, reply = post(webhook, json.dumps({"Records": records}), auth)
    assert status == 200 and reply["jobs"] == [] and reply["skipped"] == 1
    assert reply["rejected"][0]["input"] == "s3://scans/a/../../b.jpg" and "unsafe" in reply["rejected"][0]["reason"]

    submitter.fail_next = 1
    assert post(webhook, json.dumps({"Records": [aws_record("scans", "c.jpg", 1, "e")]}), auth)[0] == 503
    assert submitter.created == []


def test_webhook_health_and_refuses_to_start_without_a_secret(webhook, submitter):
    with urllib.request.urlopen(f"{webhook}/healthz", timeout=5) as response:
        assert response.status == 200 and json.loads(response.read()) == {"status": "ok"}
    for secret in ("", "   "):
        with pytest.raises(ValueError, match="secret"):
            serve_webhook(submitter, "127.0.0.1", 0, secret, "s3://out/", OPTIONS)


def test_report_paragraph_lists_failures_and_stop_reason():
    report = BulkReport("s3://a/", "s3://b/", listed=10, eligible=8, submitted=5, seconds=2.0, stopped="x; run again")
    for index in range(7):
        report.fail(f"s3://a/{index}.jpg", "bad\nkey")
    text = report.report()
    assert "\n" not in text and "300 keys/min" in text and "(and 2 more)" in text and "Stopped early: x" in text


# -------------------------------------------------------------------------------------------- sidecars in events

HINTS = {"points": [{"x": 4, "y": 3, "color": "#2a3f8f"}]}


def created_body(*infos: ObjectInfo) -> str:
    """An S3 event notification with an ObjectCreated record per object."""
    return json.dumps({"Records": [aws_record(*parse_uri(info.uri)[1:], info.size, info.etag) for info in infos]})


def jobs_by_input(submitter: StoreSubmitter) -> dict[str, list[JobSpec]]:
    specs: dict[str, list[JobSpec]] = {}
    for spec in submitter.created:
        specs.setdefault(spec.input, []).append(spec)
    return specs


def test_sqs_events_send_a_photo_with_its_hints_and_a_later_hint_file_requeues_it(submitter, s3_server, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="worker.triggers")
    s3_server.make_bucket("scans")
    hints_bytes = json.dumps(HINTS).encode()
    expected_hints = parse_hints_bytes(hints_bytes, "test").to_dict()
    a = put(s3_server, "scans", "box/a.jpg", b"photo a")
    a_hints = put(s3_server, "scans", "box/a.jpg.hints.json", hints_bytes)
    b = put(s3_server, "scans", "box/b.jpg", b"photo b")
    sqs = s3_server.client("sqs")
    url = sqs.create_queue(QueueName="sidecar-events")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=created_body(a, a_hints))  # a photo and its hints: one hinted job
    sqs.send_message(QueueUrl=url, MessageBody=created_body(b))  # b's hints come later

    first = _run_listener(submitter, sqs, url, url)

    assert (first.events, first.submitted, first.existing, first.rejected) == (3, 2, 1, 0)
    specs = jobs_by_input(submitter)
    [a_job], [b_plain] = specs["s3://scans/box/a.jpg"], specs["s3://scans/box/b.jpg"]
    assert a_job.options.hints == expected_hints and b_plain.options.hints is None
    assert a_job.job_id(a.etag, a.size) != replace(a_job, options=OPTIONS).job_id(a.etag, a.size)

    b_hints = put(s3_server, "scans", "box/b.jpg.hints.json", hints_bytes)
    orphan = put(s3_server, "scans", "box/c.jpg.hints.json", hints_bytes)  # no box/c.jpg yet
    sqs.send_message(QueueUrl=url, MessageBody=created_body(b_hints, orphan))

    second = _run_listener(submitter, sqs, url, url)

    assert (second.events, second.submitted, second.skipped, second.rejected) == (2, 1, 1, 0)
    b_plain, b_hinted = jobs_by_input(submitter)["s3://scans/box/b.jpg"]
    assert b_hinted.options.hints == expected_hints
    assert b_hinted.job_id(b.etag, b.size) != b_plain.job_id(b.etag, b.size)  # the hints enter the job id
    assert len(submitter.created) == 3 and "s3://scans/box/c.jpg" not in jobs_by_input(submitter)
    assert "s3://scans/box/c.jpg is not there yet, nothing queued" in caplog.text
    # A sweep computes the same ids: both hinted jobs are found, none is new.
    report = bulk(submitter, "s3://scans/", "s3://out/", OPTIONS)
    assert (report.submitted, report.already_queued, report.failed) == (0, 2, 0)
    sqs.close()


def test_a_later_sidecar_supersedes_the_job_queued_without_it_in_the_real_service(redis_server, s3_server):  # noqa: F811
    # The photo's event queues it plain; its hint file's event queues it again with the hints. Both would write
    # s3://out/box/p.jpg, and whichever finished last would win: the plain job is cancelled instead.
    s3_server.make_bucket("scans")
    service = Service(s3_settings(s3_server, redis_url=redis_server.url))
    photo = put(s3_server, "scans", "box/p.jpg", b"photo")
    [plain] = submit_events(service, parse_s3_events(created_body(photo)), "s3://out/", OPTIONS).jobs
    hint_file = put(s3_server, "scans", "box/p.jpg.hints.json", json.dumps(HINTS).encode())
    [hinted] = submit_events(service, parse_s3_events(created_body(hint_file)), "s3://out/", OPTIONS).jobs

    assert hinted.created and hinted.job_id != plain.job_id and hinted.output == plain.output
    superseded = service.get(plain.job_id)
    assert superseded.state == "cancelled"
    assert superseded.error == f"superseded by job {hinted.job_id} (same input and output)"
    assert service.get(hinted.job_id).state == "queued"
    # The same event again finds the hinted job and cancels nothing; a sweep agrees.
    [again] = submit_events(service, parse_s3_events(created_body(hint_file)), "s3://out/", OPTIONS).jobs
    report = bulk(service, "s3://scans/", "s3://out/", OPTIONS)
    assert not again.created and (report.submitted, report.already_queued) == (0, 1)
    assert service.get(hinted.job_id).state == "queued"
    # A finished job is never touched, and a submission that does not ask to supersede (tinct submit, the API)
    # leaves the earlier job alone.
    service.store.update(hinted.job_id, state="succeeded")
    other = put(s3_server, "scans", "box/q.jpg", b"photo q")
    [q_plain] = submit_events(service, parse_s3_events(created_body(other)), "s3://out/", OPTIONS).jobs
    _, created = service.submit(replace(JobSpec.from_dict({"input": other.uri, "output": q_plain.output}),
                                        options=JobOptions(smoothing=0.75)))
    assert created and service.get(q_plain.job_id).state == "queued"
    photo_again = put(s3_server, "scans", "box/p.jpg", b"photo, scanned again")
    [rescan] = submit_events(service, parse_s3_events(created_body(photo_again)), "s3://out/", OPTIONS).jobs
    assert rescan.created and service.get(hinted.job_id).state == "succeeded"


def test_the_submission_that_read_the_bucket_last_wins_whatever_order_it_arrives_in(redis_server, s3_server):  # noqa: F811
    # Two webhook deliveries at once: the photo's event read no hint file, the hint file's event read it; the
    # hinted submission reaches Redis first. The plain one, arriving second with the older view, is the one
    # cancelled (and never planned), not the hinted job.
    s3_server.make_bucket("scans")
    service = Service(s3_settings(s3_server, redis_url=redis_server.url))
    photo = put(s3_server, "scans", "box/p.jpg", b"photo")
    plain = job_spec_for(photo.uri, None, "s3://out/", OPTIONS)
    hinted = replace(plain, options=replace(plain.options, hints=HINTS))
    read_plain, read_hinted = time.time(), time.time() + 0.5
    hinted_id, created = service.submit(hinted, photo, supersede_as_of=read_hinted)
    assert created
    plain_id, created = service.submit(plain, photo, supersede_as_of=read_plain)
    assert created and plain_id != hinted_id
    assert service.get(hinted_id).state == "queued"
    late = service.get(plain_id)
    assert late.state == "cancelled"
    assert late.error == f"superseded by job {hinted_id} (same input and output, its sidecars read later)"
    # A submission that read the bucket later still supersedes the hinted job in the usual way.
    rescan = replace(plain, options=replace(plain.options, smoothing=0.75))
    rescan_id, _ = service.submit(rescan, photo, supersede_as_of=read_hinted + 1)
    assert service.get(hinted_id).state == "cancelled" and service.get(rescan_id).state == "queued"


def test_sqs_a_bad_hint_file_fails_its_photo_in_one_line_and_the_listener_goes_on(submitter, s3_server, caplog):  # noqa: F811
    s3_server.make_bucket("scans")
    bad = put(s3_server, "scans", "bad.jpg", b"photo")
    bad_hints = put(s3_server, "scans", "bad.jpg.hints.json", b'{"points": [{"x": 1, "y": 2, "color": "blue"}]}')
    good = put(s3_server, "scans", "good.jpg", b"photo")
    sqs = s3_server.client("sqs")
    url = sqs.create_queue(QueueName="bad-sidecars")["QueueUrl"]
    for info in (bad, bad_hints, good):
        sqs.send_message(QueueUrl=url, MessageBody=created_body(info))

    counts = _run_listener(submitter, sqs, url, url)

    assert (counts.messages, counts.rejected, counts.submitted, counts.retried) == (3, 2, 1, 0)
    assert [spec.input for spec in submitter.created] == ["s3://scans/good.jpg"]
    reason = 's3://scans/bad.jpg.hints.json: points[0].color: not an sRGB hex colour like #2a3f8f: "blue"'
    rejections = [record.getMessage() for record in caplog.records if "rejected event" in record.getMessage()]
    assert rejections == [f"rejected event for s3://scans/bad.jpg: {reason}"] * 2
    sqs.close()


def test_webhook_events_send_a_film_with_its_reference_folder(webhook, submitter, s3_server, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="worker.triggers")
    auth = f"Bearer {SECRET}"
    s3_server.make_bucket("scans")
    film = put(s3_server, "scans", "reels/r.mkv", b"film")
    pictures = {"reels/r.mkv.references/0.5.png": b"still one", "reels/r.mkv.references/frame_12.png": b"still two"}
    for key, data in pictures.items():
        put(s3_server, "scans", key, data)
    put(s3_server, "scans", "reels/r.mkv.references/.hidden.png", b"not a reference")
    put(s3_server, "scans", "reels/r.mkv.references/old/3.png", b"not a reference either")

    status, reply = post(webhook, created_body(film), auth)
    assert status == 200 and reply["rejected"] == [] and [job["input"] for job in reply["jobs"]] == [film.uri]
    [with_two] = submitter.created
    assert [(ref["time"], ref["image"]) for ref in with_two.options.references] == [
        ("0.5", "s3://scans/reels/r.mkv.references/0.5.png"),
        ("frame:12", "s3://scans/reels/r.mkv.references/frame_12.png"),
    ]
    assert all(len(ref["sha256"]) == 64 for ref in with_two.options.references)

    # A picture added later queues the film again with every picture now there: a new job id.
    later = put(s3_server, "scans", "reels/r.mkv.references/2.png", b"still three")
    status, reply = post(webhook, created_body(later), auth)
    assert status == 200 and reply["jobs"][0]["input"] == film.uri and reply["jobs"][0]["created"] is True
    assert len(submitter.created[-1].options.references) == 3

    # A picture for a film not uploaded yet queues nothing; a badly named one fails its film in one line.
    orphan = put(s3_server, "scans", "reels/s.mkv.references/1.png", b"still")
    bad = put(s3_server, "scans", "reels/r.mkv.references/soon.png", b"still")
    status, reply = post(webhook, created_body(orphan, bad), auth)
    assert status == 200 and reply["jobs"] == [] and reply["skipped"] == 1 and len(submitter.created) == 2
    reason = "s3://scans/reels/r.mkv.references/soon.png: time: the name 'soon.png' is neither <seconds>.png nor"
    [rejected] = reply["rejected"]
    assert rejected["input"] == film.uri and rejected["reason"].startswith(reason)
    assert "s3://scans/reels/s.mkv is not there yet, nothing queued" in caplog.text


def test_bulk_can_colour_each_run_into_frames_named_as_its_own(submitter, s3_server):  # noqa: F811
    s3_server.make_bucket("scans")
    for key in [f"in/reel1/scan_{n:07d}.dpx" for n in range(86400, 86403)] + [
            "in/0001.dpx", "in/0002.dpx", "in/tape.mkv", "in/vfx/plate_0001.exr", "in/vfx/plate_0002.exr",
            "in/old/scan_01.cin", "in/old/scan_02.cin"]:
        put(s3_server, "scans", key, body=key.encode())
    # The codec is the film file's (a run of frames has no encoder), the log reading the scans' (a film is no scan,
    # nor is an OpenEXR plate, which holds linear light). Tinct writes no Cineon: a Cineon run's frames come out as
    # DPX (which says printing density, as Cineon's all are).
    options = replace(OPTIONS, codec="ffv1", log="cineon")
    report = bulk(submitter, "s3://scans/in/", "s3://out/", options, runs_to_frames=True)
    created = {spec.input: spec for spec in submitter.created}
    assert {uri: (spec.output, spec.options.codec, spec.options.log) for uri, spec in created.items()} == {
        "s3://scans/in/reel1/scan_%07d.dpx": ("s3://out/reel1/scan_%07d.dpx", "source", "cineon"),
        "s3://scans/in/%04d.dpx": ("s3://out/%04d.dpx", "source", "cineon"),
        "s3://scans/in/tape.mkv": ("s3://out/tape.mkv", "ffv1", "auto"),
        "s3://scans/in/vfx/plate_%04d.exr": ("s3://out/vfx/plate_%04d.exr", "source", "auto"),
        "s3://scans/in/old/scan_%02d.cin": ("s3://out/old/scan_%02d.dpx", "source", "cineon")}
    assert all(spec.options.smoothing == 0.25 for spec in created.values()) and report.failures == []
    again = bulk(submitter, "s3://scans/in/", "s3://out/", options, runs_to_frames=True)  # a rerun finds them
    assert again.submitted == 0 and again.already_queued == 5


def test_bulk_makes_each_run_of_dpx_frames_one_film_job(submitter, s3_server):  # noqa: F811
    s3_server.make_bucket("scans")
    for key in [f"in/reel1/scan_{n:07d}.dpx" for n in range(86400, 86405)] + [
            "in/reel1/scanner-log.txt", "in/a.jpg", "in/0001.dpx", "in/0002.dpx",  # a run right in the prefix
            "in/reel2/s_01.dpx", "in/reel2/s_03.dpx"]:  # a run with a frame lost
        put(s3_server, "scans", key, body=key.encode())
    report = bulk(submitter, "s3://scans/in/", "s3://out/", OPTIONS)
    created = {spec.input: spec for spec in submitter.created}
    assert set(created) == {"s3://scans/in/reel1/scan_%07d.dpx", "s3://scans/in/a.jpg", "s3://scans/in/%04d.dpx"}
    run = created["s3://scans/in/reel1/scan_%07d.dpx"]
    assert run.kind == "video" and run.output == "s3://out/reel1/" and film_output_uri(run) == "s3://out/reel1/scan.mkv"
    assert film_output_uri(created["s3://scans/in/%04d.dpx"]) == "s3://out/in.mkv"
    assert (report.listed, report.eligible, report.submitted, report.unsupported) == (11, 4, 3, 1)
    assert report.failures == [("s3://scans/in/reel2/s_%02d.dpx", "s3://scans/in/reel2/s_%02d.dpx: 1 of frames 1-3 "
                                "are missing (2); a film's frames must be contiguous, as a gap would move every later "
                                "frame's time")]
    assert submitter.stat_calls == 0  # the runs' identities came from the listing too
    again = bulk(submitter, "s3://scans/in/", "s3://out/", OPTIONS)  # a rerun finds the same jobs
    assert again.submitted == 0 and again.already_queued == 3
