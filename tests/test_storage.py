"""worker.storage against real services: moto's HTTP S3 server and a real redis-server on loopback.

What matters here is what a job runner sees: the same results through file:// and s3://, writes that appear
only when complete, and failures classified so that retries are right (bad input and refused credentials fail
once, an unreachable or failing store retries) with messages that never carry secrets.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import threading
import time
import traceback
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import botocore.exceptions as boto_errors
import pytest

from models.files import PARTIAL_SUFFIX
from tests.services import LOOPBACK, RedisServer, S3Server, env_for_workers, free_port, s3_settings
from worker.errors import BadInputError, PermanentError, StorageError, TransientError
from worker.settings import Settings
from worker.storage import (
    MB,
    AccessDeniedError,
    ObjectInfo,
    ObjectNotFoundError,
    Storage,
    UnsafeKeyError,
    classify_os_error,
    classify_s3_error,
    content_type,
    join_uri,
    normalize_uri,
    parse_uri,
    relative_key,
)

BUCKET = "tinct-test"
SECRET = "tinct-secret-never-logged-7f3a"
UNKNOWN_KEY_ID = "AKIATINCTUNKNOWN0001"


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.make_bucket(BUCKET)


@pytest.fixture
def storage(s3_server: S3Server) -> Iterator[Storage]:
    with Storage(s3_settings(s3_server), connect_timeout_s=1.0, read_timeout_s=5.0) as store:
        yield store


def _client_error(code: str, status: int, operation: str = "GetObject") -> boto_errors.ClientError:
    """A ClientError shaped exactly as botocore builds it from a parsed S3 error response."""
    response = {
        "Error": {"Code": code, "Message": "server text"},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}, "RetryAttempts": 0},
    }
    return boto_errors.ClientError(response, operation)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------- URIs


def test_parse_uri_accepts_s3_file_uris_and_plain_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_uri("s3://bucket/a/b.jpg") == ("s3", "bucket", "a/b.jpg")
    assert parse_uri("S3://bucket") == ("s3", "bucket", "")
    assert parse_uri("s3://bucket/dir with space/%41.jpg") == ("s3", "bucket", "dir with space/%41.jpg")
    assert parse_uri("file:///mnt/archive/r1.mkv") == ("file", "", "/mnt/archive/r1.mkv")
    assert parse_uri("file://localhost/mnt/x") == ("file", "", "/mnt/x")
    assert parse_uri("/mnt/archive/../x") == ("file", "", "/mnt/x")
    monkeypatch.chdir(tmp_path)
    assert parse_uri("photos/a.jpg") == ("file", "", str(tmp_path / "photos" / "a.jpg"))
    assert parse_uri(tmp_path / "p.png") == ("file", "", str(tmp_path / "p.png"))
    assert normalize_uri("/a/b") == "file:///a/b"
    assert normalize_uri("s3://b/k") == "s3://b/k"


@pytest.mark.parametrize(
    "uri", ["", "gs://bucket/key", "http://host/x", "s3://", "s3:///key", "file://host/x", "file://", "a\x00b"]
)
def test_parse_uri_rejects_other_forms_with_a_clear_message(uri: str) -> None:
    with pytest.raises(ValueError, match="URI"):
        parse_uri(uri)


@pytest.mark.parametrize("prefix", ["s3://bkt/out", "s3://bkt/out/", "/srv/out", "file:///srv/out/"])
def test_join_uri_and_relative_key_are_inverse(prefix: str) -> None:
    joined = join_uri(prefix, "reels/r1/segment-0001.mkv")
    assert joined.endswith("/out/reels/r1/segment-0001.mkv")
    assert joined.startswith("s3://bkt/" if prefix.startswith("s3") else "file:///srv/")
    assert relative_key(prefix, joined) == "reels/r1/segment-0001.mkv"
    assert join_uri("s3://bkt", "x.jpg") == "s3://bkt/x.jpg"
    assert relative_key("s3://bkt", "s3://bkt/a/x.jpg") == "a/x.jpg"


@pytest.mark.parametrize(
    "outside", ["s3://bkt/outbox/x.jpg", "s3://other/out/x.jpg", "/srv/outbox/x", "s3://bkt/out/", "/srv/out"]
)
def test_relative_key_refuses_uris_outside_the_prefix(outside: str) -> None:
    prefix = "s3://bkt/out" if outside.startswith("s3") else "/srv/out"
    with pytest.raises(ValueError, match="is not inside"):
        relative_key(prefix, outside)


@pytest.mark.parametrize(
    "key",
    ["../x", "a/../../b", "/abs", "a\\b", "a//b", "a\x00b", "", "a/", "./a", "a/./b", "..", "a\nb", "k" * 1100],
)
@pytest.mark.parametrize("prefix", ["s3://bkt/out", "/srv/out"])
def test_join_uri_rejects_keys_that_could_escape_the_prefix(prefix: str, key: str) -> None:
    with pytest.raises(UnsafeKeyError) as caught:
        join_uri(prefix, key)
    error = caught.value
    assert isinstance(error, PermanentError) and not error.retryable
    assert "unsafe object key" in str(error)
    assert "\n" not in str(error) and "\x00" not in str(error)
    if key and key.isprintable() and len(key) < 100:
        assert str(error).startswith(key)  # names the offending key


# ------------------------------------------------------------------------------------------------ file side


def test_file_round_trip_stat_list_and_delete(tmp_path: Path) -> None:
    store = Storage(Settings())
    root = tmp_path / "out"
    put = store.put_bytes(root / "manifest.json", b'{"a": 1}')
    assert put.uri == f"file://{root}/manifest.json" and put.size == 8
    assert store.get_bytes(f"file://{root}/manifest.json") == b'{"a": 1}'
    source = tmp_path / "local.bin"
    source.write_bytes(os.urandom(3000))
    uploaded = store.upload(source, join_uri(root, "deep/a.bin"))
    assert uploaded == store.stat(root / "deep" / "a.bin")
    assert uploaded.size == 3000 and uploaded.last_modified is not None
    assert store.stat(root / "deep" / "a.bin").etag == uploaded.etag  # stable while unchanged

    copied = store.download(uploaded.uri, tmp_path / "work" / "copy.bin")
    assert copied == uploaded  # the stat of what was read
    assert (tmp_path / "work" / "copy.bin").read_bytes() == source.read_bytes()

    (root / "deep" / f".b.bin.123-abcd{PARTIAL_SUFFIX}").write_bytes(b"in progress")
    listed = [relative_key(root, info.uri) for info in store.list(root)]
    assert listed == ["deep/a.bin", "manifest.json"]
    assert list(store.list(tmp_path / "absent")) == []

    store.put_bytes(root / "manifest.json", b'{"a": 2}')  # rewritten by rename: a new identity
    assert store.stat(root / "manifest.json").etag != put.etag
    store.delete(root / "manifest.json")
    store.delete(root / "manifest.json")  # idempotent, as on S3
    assert not store.exists(root / "manifest.json")
    assert store.delete_prefix(root) == 1
    assert not (root / "deep" / "a.bin").exists()


def test_file_missing_and_directory_are_permanent(tmp_path: Path) -> None:
    store = Storage(Settings())
    with pytest.raises(ObjectNotFoundError, match="no such file"):
        store.stat(tmp_path / "nope.jpg")
    with pytest.raises(ObjectNotFoundError):
        store.download(tmp_path / "nope.jpg", tmp_path / "dest.jpg")
    assert not (tmp_path / "dest.jpg").exists()
    with pytest.raises(BadInputError, match="is a directory"):
        store.stat(tmp_path)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOENT, ObjectNotFoundError),
        (errno.ENOTDIR, ObjectNotFoundError),
        (errno.EACCES, AccessDeniedError),
        (errno.EISDIR, BadInputError),
        (errno.ENOSPC, StorageError),
        (errno.EIO, StorageError),
        (errno.ESTALE, StorageError),
        (errno.EDQUOT, StorageError),
    ],
)
def test_local_os_errors_are_classified(code: int, expected: type) -> None:
    error = classify_os_error("/data/x.tif", OSError(code, os.strerror(code)))
    assert type(error) is expected
    assert str(error).startswith("/data/x.tif: ")
    # A destination that vanished mid-write is the scratch disk's trouble, not bad input.
    vanished = classify_os_error("/w/x", OSError(errno.ENOENT, "gone"), missing_is_permanent=False)
    assert isinstance(vanished, StorageError)


# ----------------------------------------------------------------------------------------------- S3 side


def test_s3_round_trip_upload_download_stat_list_delete(storage: Storage, bucket: str, tmp_path: Path) -> None:
    payload = os.urandom(100_000)
    source = tmp_path / "in.bin"
    source.write_bytes(payload)
    uri = join_uri(bucket, "reels/r1/in.bin")
    info = storage.upload(source, uri, content_type="video/x-matroska", metadata={"tinct-job": "j1"})
    assert info.uri == "s3://tinct-test/reels/r1/in.bin"
    assert info.size == len(payload)
    assert info.etag == hashlib.md5(payload).hexdigest()  # a single PUT: S3's ETag is the MD5, unquoted
    assert info.last_modified is not None
    head = storage.s3_client.head_object(Bucket=BUCKET, Key="reels/r1/in.bin")
    assert head["ContentType"] == "video/x-matroska" and head["Metadata"] == {"tinct-job": "j1"}
    assert storage.stat(uri) == info and storage.exists(uri)

    downloaded = storage.download(uri, tmp_path / "work" / "out.bin")
    assert downloaded == info
    assert (tmp_path / "work" / "out.bin").read_bytes() == payload
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["out.bin"]  # no temp files left behind

    storage.put_bytes(join_uri(bucket, "reels/r1/manifest.json"), b"{}")
    storage.s3_client.put_object(Bucket=BUCKET, Key="reels/r1/folder/", Body=b"")  # a console "folder"
    storage.put_bytes(join_uri(bucket, "reels-old/x"), b"sibling, not inside reels/")
    listed = list(storage.list(join_uri(bucket, "reels")))
    assert [item.uri for item in listed] == [info.uri, "s3://tinct-test/reels/r1/manifest.json"]
    assert listed[0] == info
    assert storage.get_bytes("s3://tinct-test/reels/r1/manifest.json") == b"{}"

    storage.delete(uri)
    storage.delete(uri)  # idempotent
    assert not storage.exists(uri)
    assert storage.delete_prefix(join_uri(bucket, "reels")) == 2  # the manifest and the folder marker
    assert [item.uri for item in storage.list(bucket)] == ["s3://tinct-test/reels-old/x"]


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_list_named_lists_one_folders_objects_whose_names_start_so(backend: str, storage: Storage, bucket: str,
                                                                   tmp_path: Path) -> None:
    folder = join_uri(bucket if backend == "s3" else f"file://{tmp_path}", "in")
    for key in ("a.jpg", "a.b.png", "a.b/x.jpg", "ab.jpg", "a", "b.jpg", "sub/a.jpg"):
        storage.put_bytes(join_uri(folder, key), b"x")
    if backend == "file":
        (tmp_path / "in" / f"a.c.jpg.1-ab{PARTIAL_SUFFIX}").write_bytes(b"in progress")  # an unfinished write
    assert [info.uri for info in storage.list_named(join_uri(folder, "a."))] == [
        join_uri(folder, "a.b.png"), join_uri(folder, "a.jpg")]  # key order; not a.b/'s, ab.jpg nor sub/a.jpg
    assert list(storage.list_named(join_uri(folder, "c."))) == []
    assert list(storage.list_named(join_uri(folder, "absent/a."))) == []


def test_object_tags_are_read_where_a_head_counts_them_and_stored_by_every_upload(s3_server: S3Server, bucket: str,
                                                                                  tmp_path: Path) -> None:
    """What an archive's lifecycle and access rules key on (``retention``, ``collection``) reaches a copy as S3's own
    copies carry it: read with one request where the HEAD counts tags, written by a plain upload, a multipart one
    and the frames' uploads alike."""
    tags = {"retention": "permanent", "collection": "1950s press / radio", "rule": "a+b=c"}  # as URL encoding needs
    client = s3_server.client()
    client.put_object(Bucket=BUCKET, Key="in/tagged.png", Body=b"x", Tagging=urllib.parse.urlencode(tags))
    client.put_object(Bucket=BUCKET, Key="in/plain.png", Body=b"x")
    store = Storage(s3_settings(s3_server), multipart_threshold=1 * MB, multipart_chunksize=5 * MB)
    tagged, plain = store.stat(join_uri(bucket, "in/tagged.png")), store.stat(join_uri(bucket, "in/plain.png"))
    assert (tagged.tag_count, plain.tag_count) == (3, 0)
    assert store.tags(tagged) == tags and store.tags(plain) == {}
    (tmp_path / "small.png").write_bytes(b"small")
    (tmp_path / "large.mkv").write_bytes(os.urandom(5 * MB + 1000))  # two parts
    store.upload(tmp_path / "small.png", join_uri(bucket, "out/small.png"), tags=tags)
    store.upload(tmp_path / "large.mkv", join_uri(bucket, "out/large.mkv"), metadata={"a": "1"}, tags=tags)
    with store.uploads() as uploads:
        for i in range(3):
            (tmp_path / f"f{i}.png").write_bytes(b"frame")
            uploads.add(tmp_path / f"f{i}.png", join_uri(bucket, f"out/frames/f{i}.png"), {"a": "1"}, tags)
        uploads.finish()
    store.upload(tmp_path / "small.png", join_uri(bucket, "out/untagged.png"), tags={})
    stored = {key: {t["Key"]: t["Value"] for t in client.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]}
              for key in ("out/small.png", "out/large.mkv", "out/frames/f0.png", "out/frames/f2.png",
                          "out/untagged.png")}
    assert stored == {**{key: tags for key in list(stored)[:4]}, "out/untagged.png": {}}
    assert client.head_object(Bucket=BUCKET, Key="out/large.mkv")["Metadata"] == {"a": "1"}
    (tmp_path / "local.png").write_bytes(b"x")
    assert store.tags(store.stat(tmp_path / "local.png")) == {}  # a file has none
    store.upload(tmp_path / "small.png", tmp_path / "copy.png", tags=tags)  # and keeps none: nowhere to
    assert (tmp_path / "copy.png").read_bytes() == b"small"


def test_credentials_that_may_not_read_tags_carry_none_and_say_so_once(
        s3_server: S3Server, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    iam = s3_server.client("iam")
    iam.create_user(UserName="untagging")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:GetObjectTagging", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{BUCKET}/refused/*"}]}
    iam.put_user_policy(UserName="untagging", PolicyName="p", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="untagging")["AccessKey"]
    s3_server.client().put_object(Bucket=BUCKET, Key="in/a.png", Body=b"x", Tagging="retention=permanent")
    s3_server.client().put_object(Bucket=BUCKET, Key="in/b.png", Body=b"x", Tagging="retention=permanent")
    (tmp_path / "a.png").write_bytes(b"a")
    caplog.set_level(logging.WARNING, logger="worker.storage")
    with s3_server.enforce_auth():
        store = Storage(s3_settings(s3_server, s3_access_key_id=key["AccessKeyId"],
                                    s3_secret_access_key=key["SecretAccessKey"]))
        first = store.stat(join_uri(bucket, "in/a.png"))
        assert first.tag_count == 1 and store.tags(first) == {}
        assert store.tags(store.stat(join_uri(bucket, "in/b.png"))) == {}
        # An upload refused outright is not taken for a refusal of its tags: it fails, and tags are still sent.
        with pytest.raises(AccessDeniedError):
            store.upload(tmp_path / "a.png", join_uri(bucket, "refused/a.png"), tags={"retention": "permanent"})
        store.upload(tmp_path / "a.png", join_uri(bucket, "out/a.png"), tags={"retention": "permanent"})
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith(
        "s3://tinct-test/in/a.png: its tags are not carried to its copies, nor any object's: access denied"), warnings
    assert warnings[0].endswith("(s3:GetObjectTagging)")
    assert s3_server.client().get_object_tagging(Bucket=BUCKET, Key="out/a.png")["TagSet"] == [
        {"Key": "retention", "Value": "permanent"}]


def test_s3_multipart_upload_and_ranged_download(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    # s3transfer's smallest part is 5 MiB: a file just over it makes two parts with a 1 MiB threshold.
    payload = os.urandom(5 * MB + 100_000)
    source = tmp_path / "film.mkv"
    source.write_bytes(payload)
    store = Storage(s3_settings(s3_server), multipart_threshold=1 * MB, multipart_chunksize=5 * MB)
    info = store.upload(source, join_uri(bucket, "films/film.mkv"))
    assert info.size == len(payload)
    assert info.etag.endswith("-2"), info.etag  # S3 marks multipart objects by their part count
    assert store.stat(info.uri).etag == info.etag  # identity stable across stats

    target = tmp_path / "work" / "film.mkv"
    assert store.download(info.uri, target) == info
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(payload).digest()
    assert sorted(p.name for p in target.parent.iterdir()) == ["film.mkv"]


@pytest.mark.parametrize("side", ["s3", "file"])
def test_uploads_store_files_as_they_come_and_remove_each_once_stored(storage: Storage, bucket: str, tmp_path: Path,
                                                                      side: str) -> None:
    target = (join_uri(bucket, "staged") if side == "s3" else normalize_uri(tmp_path / "staged")) + "/"
    frames = tmp_path / "frames"
    frames.mkdir()
    payloads = {f"f_{i:03d}.dpx": os.urandom(1000 + i) for i in range(40)}
    with storage.uploads(in_flight=4) as uploads:
        for name, payload in payloads.items():
            (frames / name).write_bytes(payload)
            uploads.add(frames / name, join_uri(target, name))
            assert len(list(frames.iterdir())) <= 4  # a writer faster than the store waits: at most 4 on disk
        assert uploads.finish() == sum(len(p) for p in payloads.values())
    assert list(frames.iterdir()) == []
    listed = list(storage.list(target))
    assert [relative_key(target, info.uri) for info in listed] == sorted(payloads)
    assert all(storage.get_bytes(info.uri) == payloads[relative_key(target, info.uri)] for info in listed)


def test_objects_are_stored_with_their_media_type(storage: Storage, bucket: str, tmp_path: Path) -> None:
    """Results were stored as binary/octet-stream: a browser given a coloured photo's URL downloaded it instead of
    showing it. Each is now stored with its format's type, whichever way it is written, and keeps it when copied."""
    (tmp_path / "photo.JPG").write_bytes(b"jpeg")
    storage.upload(tmp_path / "photo.JPG", join_uri(bucket, "out/photo.JPG"))
    storage.upload(tmp_path / "photo.JPG", join_uri(bucket, "out/named.bin"))
    storage.put_bytes(join_uri(bucket, "out/report.json"), b"{}")
    with storage.uploads() as uploads:
        for name in ("f_001.dpx", "f_002.exr"):
            (tmp_path / name).write_bytes(b"frame")
            uploads.add(tmp_path / name, join_uri(bucket, f"staged/{name}"))
    storage.copy_listed([(info, join_uri(bucket, f"out/{relative_key(join_uri(bucket, 'staged'), info.uri)}"))
                         for info in storage.list(join_uri(bucket, "staged"))])
    types = {key: storage.s3_client.head_object(Bucket=BUCKET, Key=key)["ContentType"] for key in (
        "out/photo.JPG", "out/named.bin", "out/report.json", "out/f_001.dpx", "out/f_002.exr")}
    assert types == {"out/photo.JPG": "image/jpeg", "out/named.bin": "binary/octet-stream",
                     "out/report.json": "application/json", "out/f_001.dpx": "image/dpx",
                     "out/f_002.exr": "image/x-exr"}
    assert content_type("reel.MKV") == "video/x-matroska" and content_type("scan.jp2") == "image/jp2"


def test_a_failed_upload_is_raised_named_and_keeps_its_file(storage: Storage, bucket: str, tmp_path: Path) -> None:
    (tmp_path / "a.dpx").write_bytes(b"frame")
    with pytest.raises(PermanentError, match=r"s3://no-such-bucket/a\.dpx"), storage.uploads() as uploads:
        uploads.add(tmp_path / "a.dpx", "s3://no-such-bucket/a.dpx")
        uploads.finish()
    assert (tmp_path / "a.dpx").read_bytes() == b"frame"  # not stored: not removed


def test_leaving_uploads_on_an_error_cancels_the_queued_ones_and_the_error_stands(storage: Storage, bucket: str,
                                                                                  tmp_path: Path) -> None:
    # As a segment's frames stop when its job is cancelled: the error that left the block is the one raised.
    paths = []
    for i in range(40):
        paths.append(tmp_path / f"f_{i:03d}.dpx")
        paths[-1].write_bytes(os.urandom(200_000))
    with pytest.raises(RuntimeError, match="the job has ended"), storage.uploads(in_flight=40) as uploads:
        for path in paths:
            uploads.add(path, join_uri(bucket, f"staged/{path.name}"))
        raise RuntimeError("the job has ended")


@pytest.mark.parametrize("side", ["s3", "file"])
def test_copy_listed_copies_what_was_listed_and_a_file_replaced_since_is_refused(storage: Storage, bucket: str,
                                                                                 tmp_path: Path, side: str) -> None:
    root = bucket if side == "s3" else normalize_uri(tmp_path)
    for i in range(5):
        storage.put_bytes(join_uri(root, f"staged/f_{i}.dpx"), f"frame {i}".encode())
    listed = list(storage.list(join_uri(root, "staged")))
    storage.copy_listed([(info, join_uri(root, f"out/f_{i}.dpx")) for i, info in enumerate(listed)])
    storage.copy_listed([(info, join_uri(root, f"out/f_{i}.dpx")) for i, info in enumerate(listed)])  # again: the same
    assert [storage.get_bytes(join_uri(root, f"out/f_{i}.dpx")) for i in range(5)] == [
        f"frame {i}".encode() for i in range(5)]
    if side == "file":  # the copies share the staged frames' disk: links, not bytes written again
        assert os.stat(parse_uri(join_uri(root, "out/f_0.dpx"))[2]).st_nlink == 2
        assert sorted(os.listdir(tmp_path / "out")) == [f"f_{i}.dpx" for i in range(5)]  # no temporary names left
    if side == "s3":
        return  # S3 refuses a copy whose CopySourceIfMatch no longer holds; moto ignores the header, so not here
    time.sleep(0.01)
    storage.put_bytes(join_uri(root, "staged/f_3.dpx"), b"replaced since the listing")
    with pytest.raises(TransientError, match="staged/f_3.dpx: changed since it was listed"):
        storage.copy_listed([(listed[3], join_uri(root, "again/f_3.dpx"))])
    assert not storage.exists(join_uri(root, "again/f_3.dpx"))


@pytest.mark.parametrize("side", ["s3", "file"])
def test_delete_listed_removes_what_it_names_in_batches_and_raises_after_trying_all(
        storage: Storage, bucket: str, tmp_path: Path, side: str) -> None:
    root = bucket if side == "s3" else normalize_uri(tmp_path)
    names = [f"out/f_{i:04d}.dpx" for i in range(1005)] if side == "s3" else [f"out/f_{i}.dpx" for i in range(5)]
    for name in names + ["out/kept.dpx"]:
        storage.put_bytes(join_uri(root, name), b"frame")
    requests: list[str] = []
    if side == "s3":
        storage.s3_client.meta.events.register("before-call.s3.DeleteObjects", lambda **kw: requests.append("delete"))
    storage.delete_listed([join_uri(root, name) for name in names] + [join_uri(root, "out/never-there.dpx")])
    assert [item.uri for item in storage.list(join_uri(root, "out"))] == [join_uri(root, "out/kept.dpx")]
    if side == "s3":
        assert requests == ["delete", "delete"]  # 1000 keys a request
        return
    (tmp_path / "out" / "f_1.dpx").mkdir()  # in the way of one name: that one fails, the others go all the same
    for i in (0, 2):
        storage.put_bytes(join_uri(root, f"out/f_{i}.dpx"), b"frame")
    with pytest.raises(BadInputError, match=r"out/f_1.dpx: Is a directory"):
        storage.delete_listed([join_uri(root, f"out/f_{i}.dpx") for i in range(3)])
    assert sorted(os.listdir(tmp_path / "out")) == ["f_1.dpx", "kept.dpx"]


def test_listing_thousands_of_keys_is_paginated_lazy_and_fast(
    s3_server: S3Server, storage: Storage, bucket: str
) -> None:
    keys = [f"scans/{i:05d}.tif" for i in range(2500)]
    s3_server.seed_objects(BUCKET, keys)
    s3_server.seed_objects(BUCKET, ["scans/", "scans/sub/"])  # directory markers
    requests: list[str] = []
    storage.s3_client.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: requests.append("list"))

    lazy = storage.list(join_uri(bucket, "scans"))
    assert next(lazy).uri == "s3://tinct-test/scans/00000.tif"
    assert len(requests) == 1  # one page fetched for the first item, not the whole listing
    lazy.close()

    requests.clear()
    started = time.perf_counter()
    listed = list(storage.list(join_uri(bucket, "scans")))
    elapsed = time.perf_counter() - started
    assert [relative_key(join_uri(bucket, "scans"), item.uri) for item in listed] == [k[6:] for k in keys]
    assert len(requests) == 3  # 1000 keys a page
    assert all(item.size == 1 and item.etag for item in listed)
    assert elapsed < 5.0, f"listing 2,500 keys took {elapsed:.1f} s"  # about 0.7 s measured on 2 shared cores


def test_missing_objects_and_buckets_are_permanent(storage: Storage, bucket: str, tmp_path: Path) -> None:
    missing = join_uri(bucket, "nope.jpg")
    for call in (
        lambda: storage.stat(missing),
        lambda: storage.get_bytes(missing),
        lambda: storage.download(missing, tmp_path / "x.jpg"),
    ):
        with pytest.raises(ObjectNotFoundError) as caught:
            call()
        assert isinstance(caught.value, BadInputError) and not caught.value.retryable
        assert str(caught.value) == "s3://tinct-test/nope.jpg: no such object"
    assert not (tmp_path / "x.jpg").exists()
    assert storage.exists(missing) is False
    with pytest.raises(ObjectNotFoundError, match="no such bucket"):
        list(storage.list("s3://no-such-bucket/x"))
    with pytest.raises(ObjectNotFoundError):
        storage.upload(tmp_path / "absent.bin", missing)


def test_bucket_policy_denial_is_permanent(s3_server: S3Server, storage: Storage, bucket: str, tmp_path: Path) -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": f"arn:aws:s3:::{BUCKET}/private/*"}
        ],
    }
    s3_server.client().put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(policy))
    (tmp_path / "a.bin").write_bytes(b"abc")
    uri = join_uri(bucket, "private/a.bin")
    for call in (
        lambda: storage.stat(uri),
        lambda: storage.exists(uri),  # "unknown" is not "absent"
        lambda: storage.get_bytes(uri),
        lambda: storage.put_bytes(uri, b"x"),
        lambda: storage.upload(tmp_path / "a.bin", uri),
    ):
        with pytest.raises(AccessDeniedError) as caught:
            call()
        assert isinstance(caught.value, PermanentError) and not caught.value.retryable
        assert str(caught.value).startswith("s3://tinct-test/private/a.bin: access denied (")


def test_bad_credentials_are_permanent_and_never_leak(
    s3_server: S3Server, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    iam = s3_server.client("iam")
    iam.create_user(UserName="tinct")
    known_key_id = iam.create_access_key(UserName="tinct")["AccessKey"]["AccessKeyId"]
    caplog.set_level(logging.DEBUG)  # every logger, botocore's included
    cases = [(UNKNOWN_KEY_ID, "InvalidAccessKeyId"), (known_key_id, "SignatureDoesNotMatch")]
    with s3_server.enforce_auth():
        for key_id, code in cases:
            store = Storage(s3_settings(s3_server, s3_access_key_id=key_id, s3_secret_access_key=SECRET))
            assert SECRET not in repr(store) and key_id not in repr(store)
            for call in (
                lambda store=store: store.get_bytes(join_uri(bucket, "k")),
                lambda store=store: list(store.list(bucket)),
                lambda store=store: store.put_bytes(join_uri(bucket, "k"), b"x"),
            ):
                with pytest.raises(AccessDeniedError) as caught:
                    call()
                error = caught.value
                assert f"({code}, HTTP 403," in str(error)
                text = "".join(traceback.format_exception(error))  # the chained botocore error included
                assert SECRET not in text and key_id not in str(error)
    assert SECRET not in caplog.text
    ours = [record.getMessage() for record in caplog.records if record.name.startswith("worker.")]
    assert not any(UNKNOWN_KEY_ID in line or known_key_id in line for line in ours)


def test_s3_outage_is_transient_fast_and_recovers(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    store = Storage(s3_settings(s3_server, s3_secret_access_key=SECRET), connect_timeout_s=0.5)
    uri = join_uri(bucket, "r.bin")
    store.put_bytes(uri, b"before")  # a pooled keep-alive connection now exists
    (tmp_path / "up.bin").write_bytes(b"up")
    s3_server.stop()
    try:
        for call in (
            lambda: store.stat(uri),
            lambda: store.get_bytes(uri),
            lambda: store.download(uri, tmp_path / "down.bin"),
            lambda: store.upload(tmp_path / "up.bin", uri),
            lambda: list(store.list(bucket)),
        ):
            started = time.perf_counter()
            with pytest.raises(StorageError) as caught:
                call()
            assert time.perf_counter() - started < 5.0
            assert isinstance(caught.value, TransientError) and caught.value.retryable
            assert str(caught.value).startswith("s3://tinct-test/")
            assert s3_server.endpoint_url in str(caught.value) and SECRET not in str(caught.value)
        assert not (tmp_path / "down.bin").exists()
    finally:
        s3_server.start()
    assert store.get_bytes(uri) == b"before"  # same port, same data, same Storage
    assert store.upload(tmp_path / "up.bin", uri).size == 2


class _MisbehavingS3(BaseHTTPRequestHandler):
    """Answers every request with the server's configured failure: an S3 error document, or silence."""

    protocol_version = "HTTP/1.1"

    def _fail(self) -> None:
        status, code = self.server.failure  # type: ignore[attr-defined]
        if status == 0:  # hang until the client gives up
            self.server.release.wait(10)  # type: ignore[attr-defined]
            return
        body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>try later</Message></Error>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body) if self.command != "HEAD" else 0))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = _fail

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError"), (0, "hang")])
def test_throttling_server_errors_and_timeouts_are_transient(status: int, code: str) -> None:
    server = ThreadingHTTPServer((LOOPBACK, free_port()), _MisbehavingS3)
    server.daemon_threads = True
    server.failure = (status, code)  # type: ignore[attr-defined]
    server.release = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    settings = Settings(
        s3_endpoint_url=f"http://{LOOPBACK}:{server.server_address[1]}",
        s3_region="us-east-1",
        s3_access_key_id="testing",
        s3_secret_access_key=SECRET,
        s3_max_attempts=1,
    )
    try:
        store = Storage(settings, connect_timeout_s=0.5, read_timeout_s=0.3)
        started = time.perf_counter()
        with pytest.raises(StorageError) as caught:
            store.get_bytes("s3://bkt/k")
        assert time.perf_counter() - started < 5.0
        expected = "ReadTimeoutError" if status == 0 else f"{code}, HTTP {status}, GetObject"
        assert expected in str(caught.value) and caught.value.retryable
    finally:
        server.release.set()  # type: ignore[attr-defined]
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_client_error("NoSuchKey", 404), ObjectNotFoundError),
        (_client_error("404", 404, "HeadObject"), ObjectNotFoundError),
        (_client_error("NoSuchBucket", 404), ObjectNotFoundError),
        (_client_error("AccessDenied", 403), AccessDeniedError),
        (_client_error("403", 403, "HeadObject"), AccessDeniedError),
        (_client_error("InvalidAccessKeyId", 403), AccessDeniedError),
        (_client_error("SignatureDoesNotMatch", 403), AccessDeniedError),
        (_client_error("SlowDown", 503), StorageError),
        (_client_error("ServiceUnavailable", 503), StorageError),
        (_client_error("InternalError", 500), StorageError),
        (_client_error("RequestTimeout", 400), StorageError),
        (_client_error("Throttling", 400), StorageError),
        (_client_error("RequestTimeTooSkewed", 403), StorageError),
        (_client_error("ExpiredToken", 400), StorageError),
        (_client_error("PreconditionFailed", 412), StorageError),
        (_client_error("SomethingNew", 502), StorageError),
        (_client_error("InvalidObjectState", 403), BadInputError),
        (_client_error("EntityTooLarge", 400), BadInputError),
        (boto_errors.EndpointConnectionError(endpoint_url="http://x"), StorageError),
        (boto_errors.ConnectionClosedError(endpoint_url="http://x"), StorageError),
        (boto_errors.ReadTimeoutError(endpoint_url="http://x"), StorageError),
        (boto_errors.ConnectTimeoutError(endpoint_url="http://x"), StorageError),
        (boto_errors.ResponseStreamingError(error="reset"), StorageError),
        (boto_errors.NoCredentialsError(), AccessDeniedError),
        (boto_errors.ParamValidationError(report="Invalid bucket name"), BadInputError),
    ],
)
def test_s3_error_classification(error: Exception, expected: type) -> None:
    classified = classify_s3_error("s3://b/k", error, endpoint="http://store:9000")
    assert type(classified) is expected
    assert classified.retryable is issubclass(expected, TransientError)
    message = str(classified)
    assert message.startswith("s3://b/k: ") and "\n" not in message
    assert "server text" not in message  # our words and the code, not the server's free text


def test_classifying_a_non_s3_error_is_a_bug() -> None:
    with pytest.raises(TypeError):
        classify_s3_error("s3://b/k", KeyError("x"))


def test_storage_needs_both_keys_or_neither() -> None:
    with pytest.raises(ValueError, match="both") as caught:
        Storage(Settings(s3_access_key_id="AKIA", s3_secret_access_key=None))
    assert "AKIA" not in str(caught.value)


def test_object_info_is_a_value() -> None:
    info = ObjectInfo("s3://b/k", 3, "abc", None)
    assert info == ObjectInfo("s3://b/k", 3, "abc", None)
    with pytest.raises(AttributeError):
        info.size = 4  # type: ignore[misc]


# ------------------------------------------------------------------------------------- services for workers


def test_env_for_workers_points_subprocess_settings_at_the_services(
    redis_server: RedisServer, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    base = {"PATH": "/usr/bin", "AWS_PROFILE": "production", "TINCT_S3_ENDPOINT_URL": "https://real.example"}
    env = env_for_workers(redis_server, s3_server, work_dir=tmp_path, base=base, s3_max_attempts=1)
    assert env["PATH"] == "/usr/bin" and "AWS_PROFILE" not in env
    assert env["TINCT_REDIS_URL"] == redis_server.url
    assert env["AWS_ENDPOINT_URL"] == env["TINCT_S3_ENDPOINT_URL"] == s3_server.endpoint_url
    settings = Settings.from_env(env)
    assert settings.work_dir == tmp_path and settings.s3_max_attempts == 1
    # A worker reading this environment reaches moto through boto3's own credential chain (AWS_* variables).
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if name.startswith("AWS_"):
                patch.setenv(name, value)
        store = Storage(settings)
        store.put_bytes(join_uri(bucket, "from-env"), b"ok")
        assert store.get_bytes(join_uri(bucket, "from-env")) == b"ok"
    assert redis_server.client().ping()


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_redis_restart_keeps_the_append_only_queue(redis_server: RedisServer, how: str) -> None:
    client = redis_server.client()
    client.lpush("celery", "job-1", "job-2", "job-3")
    getattr(redis_server, how)()  # graceful SHUTDOWN, or SIGKILL as a crashed node
    assert not redis_server.running
    port = redis_server.port
    redis_server.start()
    assert redis_server.port == port
    assert client.lrange("celery", 0, -1) == [b"job-3", b"job-2", b"job-1"]  # the old client reconnects
    client.close()
