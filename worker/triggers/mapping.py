"""What every trigger shares: the :class:`Submitter` protocol they submit to, which objects they take
(:func:`eligibility`) and the job each becomes (:func:`output_uri_for`, :func:`job_spec_for`).

Every trigger maps an input object to its output the same way (:func:`output_uri_for`: the output prefix plus the
input's key relative to the input prefix, or the whole key for events), takes only photo and film extensions, and
never takes a key under the output prefix, so an event configured on the output bucket cannot make Tinct colorize
its own results forever. The input's identity (ETag, size) comes from the listing or the event, never from a HEAD
per object, and the job id derives from it: the same object reached by a sweep, a redelivered SQS message and a
webhook retry is one job, because :meth:`Submitter.submit` is idempotent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import PurePosixPath
from typing import Literal, Protocol

import redis.exceptions

from worker.errors import TinctError
from worker.jobs import JobOptions, JobSpec, JobSpecError, check_film_encoding, check_format_name
from worker.media.images import PHOTO_SUFFIXES, is_photo_name
from worker.photos import FILM_EXTENSIONS, copy_name, copy_owners, shared_copy
from worker.storage import ObjectInfo, Storage, join_uri, parse_uri, relative_key
from worker.triggers.sidecars import reference_film

#: What bulk and the event triggers take; everything else is counted as unsupported and skipped.
SUPPORTED_EXTENSIONS = PHOTO_SUFFIXES | frozenset(FILM_EXTENSIONS)

# Failures a Submitter may raise that mean "try again later". Submitters are meant to wrap Redis errors in
# TransientError, but a connection error that escapes unwrapped is still an outage, not a bad request.
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

Eligibility = Literal["eligible", "unsupported", "own_output"]


class Submitter(Protocol):
    """What the triggers need from the service; :class:`worker.service.Service` satisfies it.

    Implementations must be thread-safe: the webhook serves requests on many threads and bulk submits
    concurrently.
    """

    storage: Storage

    def submit(self, spec: JobSpec, identity: ObjectInfo | None = None,
               supersede_as_of: float | None = None) -> tuple[str, bool]:
        """Queue ``spec`` and return ``(job_id, created)``; the same input identity, output and options return the
        existing job with ``created`` False. ``identity`` (from a listing or an event) spares a HEAD request.
        ``supersede_as_of``: when the submitter read the bucket for this spec's sidecars (epoch seconds); of the
        unfinished jobs for one input and output, the one that read it last runs and the others are cancelled (the
        triggers always ask: their options come from the bucket's sidecars, so the newest view is current).
        Raises :class:`JobSpecError`/``PermanentError`` for bad specs, ``TransientError`` for hiccups."""
        ...

    def job_states(self, job_ids: Sequence[str]) -> list[str | None]:
        """The state of each job (None for unknown ids), in one Redis round trip."""
        ...


def is_transient(error: BaseException) -> bool:
    if isinstance(error, TinctError):
        return error.retryable
    return isinstance(error, _TRANSIENT_ERRORS)


def output_uri_for(input_uri: str, input_prefix: str | None, output_prefix: str, output_format: str | None = None
                   ) -> str:
    """The output URI of ``input_uri``: ``output_prefix`` plus the input's key relative to ``input_prefix``, a
    photo's named as its copy is (:func:`worker.photos.copy_name`: in ``output_format`` where one is asked for; a
    GIF's copy is a PNG).

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
    if is_photo_name(relative):
        relative = copy_name(relative, output_format)
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
    if reference_film(input_uri) is not None:
        return "unsupported"  # a film's reference picture (worker.references) is not a photo to colorize
    return "eligible"


def check_copy_name_free(storage: Storage, spec: JobSpec) -> None:
    """Refuse a photo job whose copy is renamed (a GIF's is a PNG; with a format asked for, ``a.jpg``'s is
    ``a.png``) when a photo beside its input keeps that name (:func:`worker.photos.copy_owners`: ``a.png`` itself,
    else the first in key order of those renamed into it), as a collection and the CLI do: one job would overwrite
    the other's copy. One listing of the input's namesakes (``a.*``), for renamed photos alone."""
    if spec.kind != "image":
        return
    source, output_format = spec.input, spec.options.format
    copy = copy_name(source, output_format)
    if copy == source:
        return
    stem = source[: -len(PurePosixPath(source).suffix)]
    namesakes = {info.uri for info in storage.list_named(stem + ".") if is_photo_name(info.uri)} | {source}
    copies = {uri: copy_name(uri, output_format) for uri in sorted(namesakes)}  # key order, as S3 lists
    owner = copy_owners({uri: name for uri, name in copies.items() if name == copy})[copy]
    if owner != source:
        raise shared_copy(source, spec.output, owner)


def job_spec_for(input_uri: str, input_prefix: str | None, output_prefix: str, options: JobOptions) -> JobSpec:
    """The job for one eligible object. Permanent errors (:class:`JobSpecError`, unsafe keys) name the reason."""
    check_format_name(options.format)
    output = output_uri_for(input_uri, input_prefix, output_prefix, options.format)
    spec = JobSpec.from_dict({"input": input_uri, "output": output})
    if spec.input != input_uri or spec.output != output:
        # Job specs strip surrounding whitespace; a key that has some would silently name another object.
        raise JobSpecError("input", f"{input_uri!r}: a key with leading or trailing whitespace cannot be a job input")
    # How a scan's codes are read is a run's option (bulk's runs keep it); a photo or film file is read as it is.
    spec = JobSpec(spec.input, spec.output, spec.kind, replace(options, log=JobOptions().log))
    check_film_encoding(spec)  # with the trigger's own codec and preset, not the defaults checked above
    return spec
