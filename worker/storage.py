"""File and S3 storage behind one interface, so the pipeline reads inputs and writes outputs by URI alone.

    storage = Storage(settings)
    info = storage.download("s3://archive/reels/r1.mkv", work_dir / "r1.mkv")   # or file:///mnt/archive/r1.mkv
    storage.upload(work_dir / "out.mkv", join_uri("s3://archive/colorized", relative_key(prefix, info.uri)))

URIs are ``s3://bucket/key``, ``file:///absolute/path`` or a plain local path. As in the AWS CLI, fsspec and
smart_open, the part after the scheme is taken literally (no percent-decoding): S3 keys and file names are
byte-for-byte what the user typed. Object storage is boto3 against any S3-compatible endpoint (AWS, MinIO, Ceph,
R2, moto in tests).

Why the care with errors: a job runner retries exactly the :class:`~worker.errors.TransientError` branch, so every
failure here is classified once, in :func:`classify_s3_error` and :func:`classify_os_error`. A missing object or a
refused credential fails the job once with a clear reason; a throttled, unreachable or failing object store
(after botocore's own adaptive retries) becomes a :class:`~worker.errors.StorageError` and the task retries later.
Messages name the URI, fit on one line and never carry credentials: they are built from our own words plus the
error code, not from the server's free text or the client's configuration. botocore's own loggers (``botocore``,
``boto3``, ``s3transfer``, ``urllib3``) print request headers at DEBUG, including the ``Authorization`` header
with the access key id, so deployments keep them at WARNING; this module logs URIs and sizes only.

Writes are atomic on both sides: a local file appears under its final name only when complete
(:func:`models.files.atomic_path`), and an S3 object appears only when its single PUT or its multipart upload
completes (S3 semantics; s3transfer aborts the multipart upload on failure).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import re
import stat as stat_module
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, MutableSequence, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from models.files import PARTIAL_SUFFIX, atomic_output, atomic_path
from worker.errors import BadInputError, PermanentError, StorageError, TinctError, one_line
from worker.settings import Settings

log = logging.getLogger(__name__)

MB = 1024**2
# S3 refuses keys longer than this many UTF-8 bytes; reject them before any upload starts.
MAX_KEY_BYTES = 1024
# DeleteObjects takes at most this many keys per request.
_DELETE_BATCH = 1000

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: The media type an object is stored with, by its name's suffix: what Tinct writes. Without one, S3 stores
#: binary/octet-stream, and a browser or an image server given the object's URL downloads it instead of showing it.
#: (Python's ``mimetypes`` knows half of these, and the rest from whatever /etc/mime.types the machine has.)
CONTENT_TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".tif": "image/tiff", ".tiff": "image/tiff",
    ".webp": "image/webp", ".bmp": "image/bmp",
    ".jp2": "image/jp2", ".jpf": "image/jpx", ".jpx": "image/jpx", ".j2k": "image/j2c", ".j2c": "image/j2c",
    ".jpc": "image/j2c",
    ".dpx": "image/dpx", ".exr": "image/x-exr",
    ".mp4": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
    ".json": "application/json",
}


def content_type(key: str) -> str | None:
    """The media type of an object named ``key`` (see :data:`CONTENT_TYPES`); None for a suffix not there."""
    return CONTENT_TYPES.get(os.path.splitext(key)[1].lower())


def _typed(key: str, given: str | None = None) -> dict[str, Any]:
    """S3's ContentType argument for an object: ``given``, else the key's; none where neither is known."""
    kind = given or content_type(key)
    return {"ContentType": kind} if kind else {}


# --------------------------------------------------------------------------------------------------- errors


class ObjectNotFoundError(BadInputError):
    """The object, file or bucket does not exist: permanent, and the one error :meth:`Storage.exists` swallows."""


class AccessDeniedError(PermanentError):
    """The credentials in use may not read or write this object (refused, unknown or mismatched keys).

    Permanent because retrying with the same credentials gives the same answer; an operator fixes the policy or
    the keys and resubmits. ``str()`` is ``"<uri>: access denied (...)"`` and never contains the keys themselves.
    """

    def __init__(self, path: str | os.PathLike, reason: str = "access denied") -> None:
        self.path = os.fspath(path)
        self.reason = one_line(reason)
        super().__init__(f"{self.path}: {self.reason}")


class UnsafeKeyError(BadInputError):
    """An object key from user input or an S3 event that could escape its output prefix (``..``, absolute,
    backslashes, empty segments, control characters). ``str()`` names the offending key."""


# S3 error codes by what a job runner should do about them. HEAD responses carry no body, so botocore reports
# their bare HTTP status as the code ("404", "403").
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404", "NoSuchVersion"})
_ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "403",
        "Forbidden",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidSecurity",
        "InvalidToken",
    }
)
# Retryable whatever their status: throttling, server trouble, clock skew (botocore re-syncs on retry), expired
# temporary credentials (instance roles refresh them), and a body corrupted or cut short in flight.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestThrottled",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "ExpiredToken",
        "RequestExpired",
        "BadDigest",
        "IncompleteBody",
        "OperationAborted",
        "NoSuchUpload",
        # A ranged download saw the object change between parts (IfMatch): the next attempt reads the new version.
        "PreconditionFailed",
        "412",
    }
)
_TRANSIENT_STATUS = frozenset({408, 409, 412, 429})


@functools.cache
def _s3_library() -> SimpleNamespace:
    """boto3, botocore and s3transfer, imported on first S3 use: work on local files alone (``tinct colorize`` on
    folders, ``tools train`` on a lent GPU machine where botocore is not installed and its 17 MB wheel would not fit
    what travels there) never needs them. Also the exception groups :func:`classify_s3_error` sorts."""
    import boto3
    import botocore.exceptions as errors
    from boto3.s3.transfer import TransferConfig, create_transfer_manager
    from botocore.config import Config
    from s3transfer.exceptions import RetriesExceededError as TransferRetriesExceededError
    from s3transfer.subscribers import BaseSubscriber

    class KnownObject(BaseSubscriber):
        """Hands s3transfer the size and ETag we already fetched, so a download skips its own HEAD request and its
        ranged GETs carry ``IfMatch`` for exactly the version we stat'ed (a mid-download overwrite fails instead
        of producing a file spliced from two versions)."""

        def __init__(self, size: int, etag: str) -> None:
            self._size = size
            self._etag = etag

        def on_queued(self, future: Any, **kwargs: Any) -> None:
            future.meta.provide_transfer_size(self._size)
            future.meta.provide_object_etag(self._etag)

    retries_exceeded = (TransferRetriesExceededError, boto3.exceptions.RetriesExceededError)
    return SimpleNamespace(
        boto3=boto3, errors=errors, Config=Config, TransferConfig=TransferConfig,
        create_transfer_manager=create_transfer_manager, KnownObject=KnownObject,
        retries_exceeded=retries_exceeded,
        # Client-side configuration problems: the deployment is wrong, not the world, so retrying cannot help.
        permanent=(errors.ParamValidationError, errors.ValidationError, errors.NoRegionError, errors.ProfileNotFound,
                   errors.ConfigParseError, errors.InvalidConfigError, errors.UnknownServiceError,
                   errors.InvalidDNSNameError, errors.InvalidS3AddressingStyleError,
                   errors.InvalidRetryConfigurationError),
        # Everything a call to the store can raise: what each S3 method catches and classifies.
        remote=(errors.ClientError, errors.BotoCoreError, *retries_exceeded),
    )


def classify_s3_error(uri: str, error: BaseException, *, endpoint: str | None = None) -> TinctError:
    """The Tinct error for a failed boto3/s3transfer call on ``uri``: permanent or transient, one line, no secrets.

    ``endpoint`` (without credentials) is named when the store cannot be reached. Exceptions that are not
    boto3/botocore/s3transfer errors are a caller bug and raise ``TypeError`` rather than being hidden as storage
    trouble.
    """
    where = endpoint or "the object store"
    s3 = _s3_library()
    if isinstance(error, s3.errors.ClientError):
        details = error.response.get("Error", {}) or {}
        code = str(details.get("Code") or "")
        status = int((error.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode") or 0)
        shown_code = "" if code == str(status) else code  # HEAD errors have no body: the code is just the status
        parts = (shown_code, f"HTTP {status}" if status else "", error.operation_name)
        label = ", ".join(part for part in parts if part)
        if code in _TRANSIENT_CODES:
            return StorageError(uri, f"object store refused for now ({label}); retry later")
        if code in _NOT_FOUND_CODES or (status == 404 and not code):
            return ObjectNotFoundError(uri, "no such bucket" if code == "NoSuchBucket" else "no such object")
        if code in _ACCESS_DENIED_CODES or (status == 403 and not code):
            hint = {
                "InvalidAccessKeyId": ": the access key id is not known to the object store",
                "SignatureDoesNotMatch": ": the secret key does not match the access key id",
            }.get(code, "")
            return AccessDeniedError(uri, f"access denied{hint} ({label})")
        if status >= 500 or status in _TRANSIENT_STATUS or status == 0:
            return StorageError(uri, f"object store error ({label}); retry later")
        return BadInputError(uri, f"rejected by the object store ({label})")
    if isinstance(error, s3.errors.NoCredentialsError | s3.errors.PartialCredentialsError):
        return AccessDeniedError(uri, "access denied: no complete S3 credentials are configured")
    if isinstance(error, s3.permanent):
        # botocore's validation messages name parameters and values (bucket, key), never credentials.
        return BadInputError(uri, f"invalid S3 request: {error}")
    if isinstance(error, s3.errors.ConnectTimeoutError | s3.errors.EndpointConnectionError):
        return StorageError(uri, f"cannot reach {where} ({type(error).__name__}); retry later")
    if isinstance(error, s3.errors.BotoCoreError):
        # Read timeouts, dropped connections, truncated bodies, checksum mismatches, credential refresh hiccups.
        return StorageError(uri, f"object store connection failed ({type(error).__name__} talking to {where})")
    if isinstance(error, s3.retries_exceeded):
        cause = type(getattr(error, "last_exception", None) or error).__name__
        return StorageError(uri, f"download kept failing ({cause} talking to {where}); retry later")
    raise TypeError(f"not an S3 client error: {type(error).__name__}")


def classify_os_error(path: str | os.PathLike, error: OSError, *, missing_is_permanent: bool = True) -> TinctError:
    """The Tinct error for a local ``OSError`` on ``path``.

    A missing source is bad input; a missing *destination* directory means the scratch space vanished under us,
    so writers pass ``missing_is_permanent=False``. Permission problems are permanent (an operator must fix them);
    a full disk, an I/O error or a network share that went away are transient.
    """
    code = error.errno
    reason = one_line(error.strerror or type(error).__name__)
    if code in (errno.ENOENT, errno.ENOTDIR) and missing_is_permanent:
        return ObjectNotFoundError(path, "no such file")
    if code in (errno.EACCES, errno.EPERM):
        return AccessDeniedError(path, f"access denied ({reason})")
    if code in (errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL):
        return BadInputError(path, reason)
    return StorageError(path, reason)


# ------------------------------------------------------------------------------------------------------ URIs


@dataclass(frozen=True)
class ObjectInfo:
    """What the pipeline needs to know about a stored object, in the same shape for files and S3.

    ``etag`` is S3's ETag without quotes (an MD5 for single-PUT objects, ``<hash>-<parts>`` for multipart). For
    files it is a fingerprint of ``(st_dev, st_ino, st_size, st_mtime_ns)``, not a content hash: hashing a 20 GiB
    film on every stat would cost minutes, and every rewrite Tinct or a scanner does (write-then-rename, or an
    in-place rewrite that moves the mtime) changes it. Two identical copies of a file therefore differ in etag,
    which only costs a redundant colorization, never a wrong reuse.
    """

    uri: str
    size: int
    etag: str
    last_modified: float | None
    # An S3 object's user metadata (``x-amz-meta-*``: an archive's accession number, rights), from a HEAD; none from
    # a listing or for a file. Not part of its identity.
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    # How many object tags it has, as its HEAD counts them (read with Storage.tags); 0 from a listing or for a file.
    tag_count: int = field(default=0, compare=False, repr=False)

    def version_key(self) -> str:
        """A short file-name-safe key for this version of the object (URI, ETag, size): local copies are filed
        under it, so a changed object is fetched again and an unchanged one never."""
        return hashlib.sha256(f"{self.uri}\0{self.etag}\0{self.size}".encode()).hexdigest()[:20]


def parse_uri(uri: str | os.PathLike) -> tuple[str, str, str]:
    """Split a URI into ``(scheme, bucket, key)``: ``("s3", bucket, key)`` or ``("file", "", absolute_path)``.

    Plain paths (relative ones are made absolute against the working directory) and ``file:///abs`` or
    ``file://localhost/abs`` are accepted; anything else raises ``ValueError`` naming the URI and the accepted
    forms. The S3 key may be empty (a bucket used as a prefix).
    """
    text = os.fspath(uri)
    if not isinstance(text, str):
        raise ValueError(f"storage URI must be text, not {type(text).__name__}")
    if not text:
        raise ValueError("empty storage URI: expected s3://bucket/key, file:///absolute/path or a local path")
    if "\x00" in text:
        raise ValueError(f"storage URI {text!r} contains a NUL character")
    match = _SCHEME.match(text)
    if match is None:
        return "file", "", os.path.abspath(text)
    scheme = match.group(1).lower()
    rest = text[match.end() :]
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        if not bucket or _CONTROL.search(bucket) or " " in bucket:
            raise ValueError(f"storage URI {text!r} has no valid bucket name: expected s3://bucket/key")
        return "s3", bucket, key
    if scheme == "file":
        host, slash, path = rest.partition("/")
        if host not in ("", "localhost") or not slash:
            raise ValueError(f"storage URI {text!r} is not a local absolute file URI: expected file:///absolute/path")
        return "file", "", os.path.normpath("/" + path)
    raise ValueError(
        f"unsupported storage URI scheme {scheme!r} in {text!r}: expected s3://bucket/key, "
        "file:///absolute/path or a local path"
    )


def format_uri(scheme: str, bucket: str, key: str) -> str:
    """The normalized URI for the parts :func:`parse_uri` returns (the inverse of ``parse_uri``)."""
    if scheme == "s3":
        return f"s3://{bucket}/{key}"
    if scheme == "file":
        return f"file://{key}"
    raise ValueError(f"unsupported storage scheme {scheme!r}")


def normalize_uri(uri: str | os.PathLike) -> str:
    """``uri`` in the one spelling Tinct stores and compares (``s3://bucket/key`` or ``file:///abs/path``)."""
    return format_uri(*parse_uri(uri))


def check_relative_key(relative: str) -> str:
    """``relative`` if it is a safe relative object key, else :class:`UnsafeKeyError` naming it.

    Output keys are built from user input and S3 event keys, and S3 accepts almost any key: ``../x`` is a valid
    S3 key that becomes a path traversal the moment it is joined onto a local directory, and ``a//b`` or
    ``a\\b`` map to different files on different systems. Rejecting these up front keeps every output inside its
    prefix on both backends.
    """
    if not isinstance(relative, str) or not relative:
        raise UnsafeKeyError(repr(relative), "unsafe object key: empty")
    shown = repr(relative) if _CONTROL.search(relative) else relative
    if "\x00" in relative:
        raise UnsafeKeyError(shown, "unsafe object key: contains a NUL character")
    if _CONTROL.search(relative):
        raise UnsafeKeyError(shown, "unsafe object key: contains a control character")
    if "\\" in relative:
        raise UnsafeKeyError(shown, "unsafe object key: contains a backslash")
    if relative.startswith("/"):
        raise UnsafeKeyError(shown, "unsafe object key: absolute, expected a key relative to the prefix")
    segments = relative.split("/")
    if any(segment == "" for segment in segments):
        raise UnsafeKeyError(shown, "unsafe object key: empty path segment ('//' or a trailing '/')")
    if any(segment in (".", "..") for segment in segments):
        raise UnsafeKeyError(shown, "unsafe object key: '.' or '..' segment escapes or aliases the prefix")
    if len(relative.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise UnsafeKeyError(shown[:80] + "...", f"unsafe object key: longer than {MAX_KEY_BYTES} bytes")
    return relative


def join_uri(prefix: str | os.PathLike, relative: str) -> str:
    """The normalized URI of ``relative`` under the folder ``prefix``; unsafe keys raise :class:`UnsafeKeyError`.

    The prefix is trusted (operator configuration); only ``relative`` is checked. ``s3://b/out`` and
    ``s3://b/out/`` both name the folder ``out/``.
    """
    check_relative_key(relative)
    scheme, bucket, base = parse_uri(prefix)
    if scheme == "s3":
        folder = base.rstrip("/")
        return format_uri("s3", bucket, f"{folder}/{relative}" if folder else relative)
    return format_uri("file", "", os.path.join(base, *relative.split("/")))


def relative_key(prefix: str | os.PathLike, uri: str | os.PathLike) -> str:
    """The key of ``uri`` relative to the folder ``prefix`` (the inverse of :func:`join_uri`), ``/``-separated.

    ``ValueError`` when ``uri`` is not inside ``prefix`` (another scheme or bucket, or a sibling such as
    ``in-old/x`` for the prefix ``in``). The result is not checked for safety: :func:`join_uri` does that when it
    is used to build an output key.
    """
    p_scheme, p_bucket, p_key = parse_uri(prefix)
    scheme, bucket, key = parse_uri(uri)
    if (scheme, bucket) == (p_scheme, p_bucket):
        if scheme == "s3":
            folder = p_key.rstrip("/")
            head = f"{folder}/" if folder else ""
        else:
            head = p_key.rstrip(os.sep) + os.sep
        if key.startswith(head) and len(key) > len(head):
            remainder = key[len(head) :]
            return remainder if scheme == "s3" else remainder.replace(os.sep, "/")
    raise ValueError(f"{normalize_uri(uri)} is not inside {normalize_uri(prefix)}")


# --------------------------------------------------------------------------------------------------- storage


class Storage:
    """Files and S3 objects by URI, with one error tree (see the module docstring).

    The boto3 client is created on first S3 use, so file-only work never needs credentials or an endpoint, and
    re-created in a forked child (a Celery prefork worker must not share the parent's pooled sockets). Timeouts
    and transfer sizes are constructor arguments because :class:`Settings` does not carry them; tests use them
    for fast failures and small multipart uploads. s3transfer never goes below 5 MiB parts, so a
    ``multipart_threshold`` under that yields a one-part multipart upload of a small file.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        multipart_threshold: int = 64 * MB,
        multipart_chunksize: int = 16 * MB,
        max_concurrency: int = 4,
    ) -> None:
        if bool(settings.s3_access_key_id) != bool(settings.s3_secret_access_key):
            raise ValueError("set both TINCT_S3_ACCESS_KEY_ID and TINCT_S3_SECRET_ACCESS_KEY, or neither")
        self._settings = settings
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._transfer_options = {
            "multipart_threshold": multipart_threshold,
            "multipart_chunksize": multipart_chunksize,
            "max_concurrency": max_concurrency,
            "use_threads": max_concurrency > 1,
            # The CRT client ignores parts of our botocore Config; keep one, predictable transfer path.
            "preferred_transfer_client": "classic",
        }
        self._max_pool = max(10, 2 * max_concurrency)
        # Whether these credentials were refused reading or writing object tags: asked once, said once (tags()).
        self._tags_refused = {"read": False, "write": False}
        self._tags_guard = threading.Lock()
        self._lock = threading.Lock()
        self._client: Any = None
        self._client_pid = 0
        self.endpoint = _endpoint_label(settings.s3_endpoint_url)

    def __repr__(self) -> str:
        # Never the settings or the client: both can reveal credentials.
        return f"Storage(endpoint={self.endpoint!r})"

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled S3 connections (a later call opens new ones)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self._client_pid == os.getpid():
            client.close()

    @property
    def s3_client(self) -> Any:
        """The boto3 S3 client (created on first use): for callers that need raw S3, such as presigned URLs."""
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                self._client = self._make_client()
                self._client_pid = os.getpid()
            return self._client

    def _transfer_manager(self) -> Any:
        s3 = _s3_library()
        return s3.create_transfer_manager(self.s3_client, s3.TransferConfig(**self._transfer_options))

    def _make_client(self) -> Any:
        settings = self._settings
        config = _s3_library().Config(
            retries={"mode": "adaptive", "max_attempts": settings.s3_max_attempts},
            connect_timeout=self._connect_timeout_s,
            read_timeout=self._read_timeout_s,
            max_pool_connections=self._max_pool,
            tcp_keepalive=True,
            # MinIO, Ceph, moto and most S3-compatible stores are reached by IP or a single host name, where
            # virtual-hosted bucket names (bucket.host) do not resolve.
            s3={"addressing_style": "path"} if settings.s3_endpoint_url else None,
            user_agent_extra="tinct",
        )
        credentials: dict[str, str] = {}
        if settings.s3_access_key_id and settings.s3_secret_access_key:
            credentials = {
                "aws_access_key_id": settings.s3_access_key_id,
                "aws_secret_access_key": settings.s3_secret_access_key,
            }
        # A session per Storage: boto3's default session is shared module state and not thread-safe to create.
        session = _s3_library().boto3.session.Session()
        log.debug("creating S3 client for %s", self.endpoint)
        return session.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            config=config,
            **credentials,
        )

    def _s3_error(self, uri: str, error: BaseException) -> TinctError:
        return classify_s3_error(uri, error, endpoint=self.endpoint)

    # ----------------------------------------------------------------------------------------------- reads

    def stat(self, uri: str | os.PathLike) -> ObjectInfo:
        """Size, etag and modification time of one object; :class:`ObjectNotFoundError` when it is missing."""
        scheme, bucket, key = parse_uri(uri)
        if scheme == "file":
            return _file_info(key)
        uri = format_uri(scheme, bucket, key)
        if not key:
            raise BadInputError(uri, "names a bucket, not an object")
        try:
            head = self.s3_client.head_object(Bucket=bucket, Key=key)
        except _s3_library().remote as error:
            raise self._s3_error(uri, error) from error
        return ObjectInfo(uri, int(head["ContentLength"]), _unquote(head.get("ETag", "")), _timestamp(head),
                          head.get("Metadata") or {}, int(head.get("TagCount") or 0))

    def tags(self, info: ObjectInfo) -> dict[str, str]:
        """The object tags of a stat'ed object (``{"retention": "permanent"}``), which its copies carry as S3's own
        copies do: one GetObjectTagging where its HEAD counted any, none otherwise. Credentials that may not read
        tags (no ``s3:GetObjectTagging``) give none, said in the log once: a copy without them beats no copy."""
        if info.tag_count == 0 or self._tags_refused["read"]:
            return {}
        _, bucket, key = parse_uri(info.uri)
        try:
            tag_set = self.s3_client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
        except _s3_library().remote as error:
            failure = self._s3_error(info.uri, error)
            if not isinstance(failure, AccessDeniedError):
                raise failure from error
            self._refuse_tags("read", f"{info.uri}: its tags are not carried to its copies, nor any object's: "
                                      f"{failure.reason} (s3:GetObjectTagging)")
            return {}
        return {tag["Key"]: tag["Value"] for tag in tag_set}

    def _refuse_tags(self, which: str, message: str) -> None:
        with self._tags_guard:
            if self._tags_refused[which]:
                return
            self._tags_refused[which] = True
        log.warning("%s", message)

    def exists(self, uri: str | os.PathLike) -> bool:
        """Whether the object exists. Access denied and store outages still raise: "unknown" is not "absent"."""
        try:
            self.stat(uri)
        except ObjectNotFoundError:
            return False
        return True

    def download(self, uri: str | os.PathLike, local_path: str | os.PathLike, info: ObjectInfo | None = None
                 ) -> ObjectInfo:
        """Copy an object to ``local_path`` atomically and return the stat of the version copied (``info``, when the
        caller has stat'ed it already: that version, or a failure).

        Streams in parts (ranged GETs above the multipart threshold, pinned to one ETag) straight into a temp
        file beside ``local_path``, so memory stays flat for films and a failed download leaves nothing under the
        final name. Errors on the local side name ``local_path``; errors reading the source name ``uri``.
        """
        local_path = Path(local_path)
        scheme, bucket, key = parse_uri(uri)
        if scheme == "file":
            return self._copy_file(key, local_path, name=format_uri("file", "", key), describe="source")
        info = info or self.stat(uri)
        try:
            with atomic_path(local_path) as tmp, open(tmp, "wb") as sink:
                with self._transfer_manager() as manager:
                    future = manager.download(
                        bucket, key, sink, subscribers=[_s3_library().KnownObject(info.size, f'"{info.etag}"')]
                    )
                    future.result()
                sink.flush()
                os.fsync(sink.fileno())
        except _s3_library().remote as error:
            raise self._s3_error(info.uri, error) from error
        except OSError as error:
            raise classify_os_error(local_path, error, missing_is_permanent=False) from error
        log.debug("downloaded %s (%d bytes) to %s", info.uri, info.size, local_path)
        return info

    def download_listed(self, objects: Sequence[tuple[ObjectInfo, str | os.PathLike]]) -> None:
        """Copy objects whose listing is at hand (the frames of a scanned film) to local files, several at a time
        through one transfer manager: no HEAD per object, and each copy pinned to the ETag listed, so a frame
        replaced since the listing fails the copy instead of mixing versions. Each file appears whole or not at
        all; a failure leaves the others as they got, for a caller that copies into a folder of its own."""
        files = [(info, local) for info, local in objects if parse_uri(info.uri)[0] == "file"]
        for info, local in files:
            self._copy_file(parse_uri(info.uri)[2], Path(local), name=info.uri, describe="source")
        stored = [(info, local) for info, local in objects if parse_uri(info.uri)[0] != "file"]
        if not stored:
            return
        s3 = _s3_library()
        copying = None
        try:
            with self._transfer_manager() as manager:
                futures = []
                for info, local in stored:
                    _, bucket, key = parse_uri(info.uri)
                    Path(local).parent.mkdir(parents=True, exist_ok=True)
                    # To a file name, s3transfer writes beside it and renames when the object is in.
                    futures.append((info, manager.download(bucket, key, os.fspath(local),
                                                           subscribers=[s3.KnownObject(info.size, f'"{info.etag}"')])))
                for info, future in futures:
                    copying = info  # what an error names
                    future.result()
        except s3.remote as error:
            raise self._s3_error(copying.uri if copying else stored[0][0].uri, error) from error
        except OSError as error:
            raise classify_os_error(stored[0][1], error, missing_is_permanent=False) from error

    def get_head(self, uri: str | os.PathLike, size: int) -> bytes:
        """The first ``size`` bytes of an object (all of it if it is shorter): a file format's header, read
        without its data."""
        scheme, bucket, key = parse_uri(uri)
        uri = format_uri(scheme, bucket, key)
        if scheme == "file":
            try:
                with open(key, "rb") as source:
                    return source.read(size)
            except OSError as error:
                raise classify_os_error(uri, error) from error
        try:
            response = self.s3_client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{size - 1}")
        except _s3_library().remote as error:
            if getattr(error, "response", {}).get("Error", {}).get("Code") == "InvalidRange":
                return b""  # an empty object has no first byte to range from
            raise self._s3_error(uri, error) from error
        return self._read_body(uri, response)

    def get_bytes(self, uri: str | os.PathLike, *, max_bytes: int = 64 * MB) -> bytes:
        """The whole content of a small object (a manifest, a job record); over ``max_bytes`` is bad input."""
        scheme, bucket, key = parse_uri(uri)
        uri = format_uri(scheme, bucket, key)
        if scheme == "file":
            try:
                with open(key, "rb") as source:
                    size = os.fstat(source.fileno()).st_size
                    if size > max_bytes:
                        raise BadInputError(uri, f"{size} bytes, more than the {max_bytes} expected here")
                    return source.read()
            except OSError as error:
                raise classify_os_error(uri, error) from error
        try:
            response = self.s3_client.get_object(Bucket=bucket, Key=key)
        except _s3_library().remote as error:
            raise self._s3_error(uri, error) from error
        size = int(response.get("ContentLength") or 0)
        if size > max_bytes:
            response["Body"].close()
            raise BadInputError(uri, f"{size} bytes, more than the {max_bytes} expected here")
        return self._read_body(uri, response)

    def read_chunks(self, uri: str | os.PathLike, chunk_size: int = MB) -> Iterator[bytes]:
        """An object's bytes in pieces of at most ``chunk_size``, as they arrive (one GET on S3): a large one is
        passed on (into an archive a caller downloads) without lying in memory whole."""
        scheme, bucket, key = parse_uri(uri)
        uri = format_uri(scheme, bucket, key)
        if scheme == "file":
            try:
                with open(key, "rb") as source:
                    while chunk := source.read(chunk_size):
                        yield chunk
            except OSError as error:
                raise classify_os_error(uri, error) from error
            return
        try:
            response = self.s3_client.get_object(Bucket=bucket, Key=key)
        except _s3_library().remote as error:
            raise self._s3_error(uri, error) from error
        with self._reading(uri, response) as body:
            yield from body.iter_chunks(chunk_size)

    def _read_body(self, uri: str, response: Mapping[str, Any]) -> bytes:
        """The body of a GET response, read whole and closed; errors while streaming it classified."""
        with self._reading(uri, response) as body:
            return body.read()

    @contextmanager
    def _reading(self, uri: str, response: Mapping[str, Any]) -> Iterator[Any]:
        """The body of a GET response, closed afterwards; errors while streaming it classified."""
        body = response["Body"]
        try:
            yield body
        except _s3_library().remote as error:
            raise self._s3_error(uri, error) from error
        except OSError as error:  # a raw socket error while streaming the body: the network, not our disk
            raise StorageError(uri, f"object store connection failed while reading ({type(error).__name__})") from error
        finally:
            body.close()

    def list(self, prefix_uri: str | os.PathLike) -> Iterator[ObjectInfo]:
        """Every object under the folder ``prefix_uri``, lazily, page by page (1000 keys a request on S3).

        Folder semantics on both backends: ``s3://b/in`` lists ``in/...``, never ``inbox/...``. Directory
        markers (keys ending in ``/``, made by consoles and some sync tools) and Tinct's own partial files are
        skipped. A missing folder lists nothing, like an S3 prefix with no keys; a missing bucket raises
        :class:`ObjectNotFoundError`. S3 lists in key order; files in sorted depth-first order.
        """
        scheme, bucket, key = parse_uri(prefix_uri)
        if scheme == "file":
            yield from _walk_files(key)
            return
        yield from self._listed(bucket, _folder_prefix(key))

    def list_named(self, name_prefix_uri: str | os.PathLike) -> Iterator[ObjectInfo]:
        """The objects in one folder whose names start with the last part of ``name_prefix_uri``, in key order:
        ``s3://b/in/a.`` lists ``in/a.jpg`` and ``in/a.b.png``, never ``in/a.b/x.jpg`` nor ``in/ab.jpg``. One
        request on S3 for a few namesakes."""
        scheme, bucket, key = parse_uri(name_prefix_uri)
        if scheme == "file":
            folder, _, start = key.rpartition(os.sep)
            yield from _walk_files(folder or os.sep, names_starting=start)
            return
        yield from self._listed(bucket, key, delimiter="/")

    def _listed(self, bucket: str, prefix: str, delimiter: str = "") -> Iterator[ObjectInfo]:
        for listed_key, entry in self._iter_keys(bucket, prefix, delimiter):
            if not listed_key.endswith("/"):
                yield ObjectInfo(
                    format_uri("s3", bucket, listed_key),
                    int(entry.get("Size", 0)),
                    _unquote(entry.get("ETag", "")),
                    _timestamp(entry),
                )

    def _iter_keys(self, bucket: str, prefix: str, delimiter: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
        """``(key, listing entry)`` for every key starting with ``prefix`` (none past a ``delimiter`` after it)."""
        uri = format_uri("s3", bucket, prefix)
        try:
            pages = self.s3_client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix, Delimiter=delimiter, PaginationConfig={"PageSize": 1000}
            )
            for page in pages:
                for entry in page.get("Contents", ()):
                    yield entry["Key"], entry
        except _s3_library().remote as error:
            raise self._s3_error(uri, error) from error

    # ---------------------------------------------------------------------------------------------- writes

    def upload(
        self,
        local_path: str | os.PathLike,
        uri: str | os.PathLike,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        """Store ``local_path`` at ``uri`` and return the stored object's stat.

        S3: boto3's managed transfer, multipart above the threshold, so the object appears only when the upload
        completes and a failure leaves the previous version (or nothing). Files: copy beside the target, fsync,
        rename. ``content_type`` (by default the key's: :func:`content_type`), ``metadata`` and ``tags`` are S3
        object attributes; files have nowhere to keep them. Credentials that may not tag what they write (no
        ``s3:PutObjectTagging``) store it untagged, said in the log once.
        """
        local_path = Path(local_path)
        scheme, bucket, key = parse_uri(uri)
        if scheme == "file":
            source = os.fspath(local_path.absolute())
            return self._copy_file(source, Path(key), name=os.fspath(local_path), describe="target")
        uri = format_uri(scheme, bucket, key)
        if not key or key.endswith("/"):
            raise BadInputError(uri, "names a folder, not an object")
        extra = self._upload_args(key, content_type, metadata, tags)
        try:
            if not local_path.is_file():
                raise ObjectNotFoundError(local_path, "no such file (or not a regular file)")
            with self._transfer_manager() as manager:
                manager.upload(os.fspath(local_path), bucket, key, extra_args=extra).result()
        except _s3_library().remote as error:
            failure = self._s3_error(uri, error)
            if not (isinstance(failure, AccessDeniedError) and "Tagging" in extra):
                raise failure from error
            stored = self.upload(local_path, uri, content_type, metadata)  # refused for its tags, or not at all
            self._refuse_tags("write", f"{uri}: stored without its source's tags, as every copy will be: "
                                       f"{failure.reason} (s3:PutObjectTagging)")
            return stored
        except OSError as error:  # botocore's errors are checked first: some of them are OSError subclasses
            raise classify_os_error(local_path, error) from error
        info = self.stat(uri)
        log.debug("uploaded %s (%d bytes) to %s", local_path, info.size, info.uri)
        return info

    def _upload_args(self, key: str, content_type: str | None, metadata: Mapping[str, str] | None,
                     tags: Mapping[str, str] | None) -> dict[str, Any]:
        """An upload's S3 attributes: its content type, user metadata and tags (unless tagging was refused)."""
        extra = _typed(key, content_type)
        if metadata:
            extra["Metadata"] = dict(metadata)
        if tags and not self._tags_refused["write"]:
            extra["Tagging"] = urllib.parse.urlencode(tags)
        return extra

    def uploads(self, in_flight: int = 16) -> Uploads:
        """Files stored one by one as they are made (a segment's frames), several at a time; see :class:`Uploads`."""
        return Uploads(self, in_flight)

    def copy_listed(self, objects: Sequence[tuple[ObjectInfo, str]]) -> None:
        """Copy objects whose listing is at hand (a film's staged frames) to the URIs beside them, each pinned to the
        version listed: a source replaced since fails its copy instead of being copied.

        S3: CopyObject inside the store (no bytes pass through this process), several at a time through one transfer
        manager, with no HEAD per object. Files: a hard link where both names share a disk (else a copy), under a
        temporary name renamed into place. Either way each target appears whole, and copying again is harmless, so
        a copy cut short is finished by running it again."""
        for info, target in objects:
            if parse_uri(info.uri)[0] == "file" or parse_uri(target)[0] == "file":
                self._copy_one_file(info, target)
        stored = [(info, target) for info, target in objects
                  if parse_uri(info.uri)[0] != "file" and parse_uri(target)[0] != "file"]
        if not stored:
            return
        s3 = _s3_library()
        copying = stored[0][0].uri
        try:
            with self._transfer_manager() as manager:
                futures = []
                for info, target in stored:
                    _, bucket, key = parse_uri(info.uri)
                    _, target_bucket, target_key = parse_uri(target)
                    futures.append((info, manager.copy(
                        {"Bucket": bucket, "Key": key}, target_bucket, target_key,
                        extra_args={"CopySourceIfMatch": f'"{info.etag}"'},
                        subscribers=[s3.KnownObject(info.size, f'"{info.etag}"')])))
                for info, future in futures:
                    copying = info.uri  # what an error names
                    future.result()
        except s3.remote as error:
            raise self._s3_error(copying, error) from error
        log.debug("copied %d objects", len(stored))

    def _copy_one_file(self, info: ObjectInfo, target: str) -> None:
        """``copy_listed`` where either side is a file (a store to a folder and back goes through a download)."""
        source_scheme, _, source = parse_uri(info.uri)
        target_scheme, _, target_path = parse_uri(target)
        if source_scheme != "file":
            raise BadInputError(target, f"copies from {info.uri} into a folder are not supported")
        if target_scheme != "file":
            self.upload(source, target)
            return
        if _file_info(source, name=info.uri) != info:
            raise StorageError(info.uri, "changed since it was listed")
        with suppress(OSError):
            if os.path.samefile(source, target_path):  # linked already (a copy run again): a rename would not replace
                return  # a name by another name of the same file, and would leave the temporary link behind
        try:
            with atomic_path(target_path) as tmp:
                os.link(source, tmp)
            return
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise classify_os_error(target, error, missing_is_permanent=False) from error
        self._copy_file(source, Path(target_path), name=info.uri, describe="target")

    def put_bytes(self, uri: str | os.PathLike, data: bytes, content_type: str | None = None) -> ObjectInfo:
        """Store a small object in one request (S3) or one atomic write (files); returns its stat. ``content_type``
        as for :meth:`upload`."""
        scheme, bucket, key = parse_uri(uri)
        uri = format_uri(scheme, bucket, key)
        if scheme == "file":
            try:
                with atomic_output(key) as sink:
                    sink.write(data)
            except OSError as error:
                raise classify_os_error(uri, error, missing_is_permanent=False) from error
            return _file_info(key)
        if not key or key.endswith("/"):
            raise BadInputError(uri, "names a folder, not an object")
        extra = _typed(key, content_type)
        try:
            response = self.s3_client.put_object(Bucket=bucket, Key=key, Body=bytes(data), **extra)
        except _s3_library().remote as error:
            raise self._s3_error(uri, error) from error
        return ObjectInfo(uri, len(data), _unquote(response.get("ETag", "")), None)

    def delete(self, uri: str | os.PathLike) -> None:
        """Remove one object. Idempotent, as S3's DeleteObject is: deleting a missing object is not an error."""
        scheme, bucket, key = parse_uri(uri)
        uri = format_uri(scheme, bucket, key)
        if scheme == "file":
            try:
                os.unlink(key)
            except FileNotFoundError:
                pass
            except OSError as error:
                raise classify_os_error(uri, error) from error
            return
        if not key:
            raise BadInputError(uri, "names a bucket, not an object")
        try:
            self.s3_client.delete_object(Bucket=bucket, Key=key)
        except _s3_library().remote as error:
            raise self._s3_error(uri, error) from error

    def delete_listed(self, uris: Sequence[str]) -> None:
        """Remove the objects ``uris`` name, missing ones being no error (as for ``delete``): on S3 in batched
        DeleteObjects, 1000 keys a request. Every one is tried; the first failure is raised once all have been."""
        failure: TinctError | None = None
        keys_by_bucket: dict[str, list[str]] = {}
        for uri in uris:
            scheme, bucket, key = parse_uri(uri)
            if scheme != "file":
                keys_by_bucket.setdefault(bucket, []).append(key)
                continue
            try:
                self.delete(uri)
            except TinctError as error:
                failure = failure or error
        for bucket, keys in keys_by_bucket.items():
            for start in range(0, len(keys), _DELETE_BATCH):
                try:
                    self._delete_batch(bucket, keys[start:start + _DELETE_BATCH])
                except TinctError as error:
                    failure = failure or error
        if failure is not None:
            raise failure

    def delete_prefix(self, prefix_uri: str | os.PathLike) -> int:
        """Remove everything under the folder ``prefix_uri`` (directory markers included); returns the count.

        S3: batched DeleteObjects, 1000 keys a request. Files: the listed files, then the directories left empty
        (the folder itself too, so the prefix reads as absent on both backends).
        """
        scheme, bucket, key = parse_uri(prefix_uri)
        if scheme == "file":
            return _delete_tree(key)
        deleted = 0
        batch: MutableSequence[str] = []
        for listed_key, _entry in self._iter_keys(bucket, _folder_prefix(key)):
            batch.append(listed_key)
            if len(batch) == _DELETE_BATCH:
                deleted += self._delete_batch(bucket, batch)
                batch = []
        if batch:
            deleted += self._delete_batch(bucket, batch)
        return deleted

    def _delete_batch(self, bucket: str, keys: Sequence[str]) -> int:
        request = {"Objects": [{"Key": key} for key in keys], "Quiet": True}
        try:
            response = self.s3_client.delete_objects(Bucket=bucket, Delete=request)
        except _s3_library().remote as error:
            raise self._s3_error(format_uri("s3", bucket, keys[0]), error) from error
        failures = response.get("Errors") or []
        if failures:
            # Per-key failures come back inside a 200 response; classify the first as if it had been raised.
            first = failures[0]
            fake = _s3_library().errors.ClientError(
                {"Error": {"Code": first.get("Code", ""), "Message": ""}, "ResponseMetadata": {}}, "DeleteObjects"
            )
            raise self._s3_error(format_uri("s3", bucket, first.get("Key", "")), fake)
        return len(keys)

    # ------------------------------------------------------------------------------------------- file side

    def _copy_file(self, source: str, target: Path, *, name: str, describe: str) -> ObjectInfo:
        """Copy ``source`` to ``target`` atomically and return the stat of ``describe`` ("source" or "target").

        A source that changes while it is read (a scanner still writing, an operator replacing a reel) fails the
        copy before the rename, as transient: the next attempt reads the finished file.
        """
        before = _file_info(source, name=name)
        try:
            reader = open(source, "rb")
        except OSError as error:
            raise classify_os_error(name, error) from error
        with reader:
            try:
                with atomic_output(target) as writer:
                    while True:
                        try:
                            chunk = reader.read(4 * MB)
                        except OSError as error:
                            raise classify_os_error(name, error) from error
                        if not chunk:
                            break
                        writer.write(chunk)
                    if _file_info(source, name=name) != before:
                        raise StorageError(name, "changed while it was being copied; retry once it is stable")
            except OSError as error:  # writing, fsyncing or renaming the target
                raise classify_os_error(target, error, missing_is_permanent=False) from error
        log.debug("copied %s (%d bytes) to %s", name, before.size, target)
        return before if describe == "source" else _file_info(os.fspath(target))


class Uploads:
    """Files stored as they are made, each local file removed once it is stored: a segment's frames, uploaded while
    the next ones are coloured. Up to ``in_flight`` uploads run at once through one transfer manager; ``add`` waits
    while that many are unfinished, so a writer faster than the store keeps at most that many files on disk.

        with storage.uploads() as uploads:
            for path, uri in frames:
                uploads.add(path, uri)      # the first failure is raised here or at the end of the block
            stored = uploads.finish()       # bytes stored

    Leaving the block on an error cancels what is still queued; what was stored stays (the caller's to remove, as
    for any upload). Used from one thread at a time. Folders as targets get a plain atomic copy, one at a time."""

    def __init__(self, storage: Storage, in_flight: int) -> None:
        self._storage = storage
        self._in_flight = max(1, in_flight)
        self._manager: Any = None  # made on the first S3 upload: a folder-only job needs no client
        self._pending: list[tuple[Path, str, Any, dict | None]] = []  # in order of adding
        self.stored = 0

    def __enter__(self) -> Uploads:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if self._manager is None:
            return
        if exc_type is not None:
            # Each one cancelled here: TransferManager.shutdown(cancel=True) hands its message on as the exception
            # type (s3transfer 0.x), so it raised TypeError over the error that left the block.
            for _, _, future, _ in self._pending:
                future.cancel()
        self._manager.shutdown()
        self._manager = None

    def add(self, local_path: str | os.PathLike, uri: str, metadata: Mapping[str, str] | None = None,
            tags: Mapping[str, str] | None = None) -> None:
        """Store ``local_path`` at ``uri`` (with S3 ``metadata`` and ``tags``, as :meth:`Storage.upload` does),
        waiting while ``in_flight`` are unfinished."""
        local_path = Path(local_path)
        scheme, bucket, key = parse_uri(uri)
        if scheme == "file":
            self.stored += self._storage.upload(local_path, uri).size
            local_path.unlink(missing_ok=True)
            return
        if self._manager is None:
            self._manager = self._storage._transfer_manager()
        size = local_path.stat().st_size
        extra = self._storage._upload_args(key, None, metadata, tags)
        future = self._manager.upload(os.fspath(local_path), bucket, key, extra_args=extra)
        # A tagged upload keeps its metadata, to be stored again without the tags where tagging is refused.
        untagged = dict(metadata or {}) if "Tagging" in extra else None
        self._pending.append((local_path, format_uri(scheme, bucket, key), future, untagged))
        while len(self._pending) >= self._in_flight or (self._pending and self._pending[0][2].done()):
            self._settle()
        self.stored += size

    def finish(self) -> int:
        """Wait for every upload; the bytes stored."""
        while self._pending:
            self._settle()
        return self.stored

    def _settle(self) -> None:
        local_path, uri, future, untagged = self._pending.pop(0)
        try:
            future.result()
        except _s3_library().remote as error:
            failure = self._storage._s3_error(uri, error)
            if not (isinstance(failure, AccessDeniedError) and untagged is not None):
                raise failure from error
            # Refused for its tags (no s3:PutObjectTagging), or not at all: stored again without them, as every
            # later one will be once that works.
            self._storage.upload(local_path, uri, metadata=untagged)
            self._storage._refuse_tags("write", f"{uri}: stored without its source's tags, as every copy will be: "
                                                f"{failure.reason} (s3:PutObjectTagging)")
        except OSError as error:
            raise classify_os_error(local_path, error) from error
        local_path.unlink(missing_ok=True)


def _endpoint_label(endpoint_url: str | None) -> str:
    """The endpoint for messages and repr, with any ``user:password@`` removed."""
    if not endpoint_url:
        return "AWS S3"
    return re.sub(r"//[^/@]*@", "//", endpoint_url)


def _unquote(etag: str) -> str:
    return etag.strip('"')


def _timestamp(entry: Mapping[str, Any]) -> float | None:
    stamp = entry.get("LastModified")
    return stamp.timestamp() if stamp is not None else None


def _file_fingerprint(st: os.stat_result) -> str:
    identity = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()
    return hashlib.sha256(identity).hexdigest()[:32]


def _file_info(path: str, *, name: str | None = None) -> ObjectInfo:
    uri = format_uri("file", "", path)
    try:
        st = os.stat(path)
    except OSError as error:
        raise classify_os_error(name or uri, error) from error
    if stat_module.S_ISDIR(st.st_mode):
        raise BadInputError(name or uri, "is a directory, not a file")
    return ObjectInfo(uri, st.st_size, _file_fingerprint(st), st.st_mtime)


def _folder_prefix(key: str) -> str:
    """The S3 prefix of the folder ``key`` (``in`` -> ``in/``; the bucket's root is the empty prefix)."""
    folder = key.rstrip("/")
    return f"{folder}/" if folder else ""


def _walk_files(root: str, names_starting: str | None = None) -> Iterator[ObjectInfo]:
    """Regular files under ``root`` in sorted depth-first order, without following directory symlinks (a loop
    would never end) and without Tinct's in-progress partial files; or, ``names_starting`` given, the files in
    ``root`` itself whose names start with it."""
    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as error:
        raise classify_os_error(format_uri("file", "", root), error) from error
    for entry in entries:
        if entry.name.endswith(PARTIAL_SUFFIX):
            continue
        if names_starting is not None and not entry.name.startswith(names_starting):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                if names_starting is None:
                    yield from _walk_files(entry.path)
            elif entry.is_file():
                st = entry.stat()
                yield ObjectInfo(format_uri("file", "", entry.path), st.st_size, _file_fingerprint(st), st.st_mtime)
        except FileNotFoundError:
            continue  # removed between the scan and the stat: it is simply not there any more
        except OSError as error:
            raise classify_os_error(format_uri("file", "", entry.path), error) from error


def _delete_tree(root: str) -> int:
    deleted = 0
    for info in list(_walk_files(root)):
        path = parse_uri(info.uri)[2]
        try:
            os.unlink(path)
            deleted += 1
        except FileNotFoundError:
            continue
        except OSError as error:
            raise classify_os_error(info.uri, error) from error
    for directory, _dirs, _files in os.walk(root, topdown=False):
        with suppress(OSError):
            os.rmdir(directory)  # only succeeds when empty: partial files of running writers keep theirs
    return deleted


__all__ = [
    "AccessDeniedError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "Storage",
    "UnsafeKeyError",
    "Uploads",
    "check_relative_key",
    "classify_os_error",
    "classify_s3_error",
    "format_uri",
    "join_uri",
    "normalize_uri",
    "parse_uri",
    "relative_key",
]
