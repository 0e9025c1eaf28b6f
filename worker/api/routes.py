"""The HTTP API's routes under ``/api/v1``: jobs (submit, list, read, cancel, events), uploads, results, previews.

Every route is a thin shell over :class:`worker.service.Service` and :mod:`worker.jobs`, exactly as ``tinct
submit/status/jobs/cancel`` are: a job spec is validated by :meth:`JobSpec.from_dict` and queued by
:meth:`Service.submit`, whatever door it came in by. What this module adds is the caller: a bearer token
(:mod:`worker.api.auth`) that must be allowed to read the input and write the output, and that sees only the jobs
it submitted. Errors are ``{"detail": "<field>: <reason>"}`` on one line, with the field named where there is one.

Blocking calls (Redis, S3, Pillow) run in plain ``def`` routes, which Starlette runs in its thread pool; only the
event stream is ``async``, so an idle stream holds no thread.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from worker.api import archives
from worker.api.auth import Principal, authenticate, own_folder
from worker.api.previews import COLLECTION_PREVIEWS, HintPreview, HintPreviews, Previews, TokenBucket
from worker.errors import BadInputError, ModelError, PermanentError, TinctError, TransientError, one_line
from worker.hints import HintError, parse_hints
from worker.jobs import (
    FINISHED,
    KEY_PREFIX,
    STATES,
    JobRecord,
    JobSpec,
    JobSpecError,
    output_folder,
    parse_options,
)
from worker.media.frame_sequences import frame_number
from worker.media.images import PHOTO_SUFFIXES
from worker.model_store import published_models
from worker.photos import FILM_EXTENSIONS
from worker.service import QueueError, Service
from worker.settings import Settings
from worker.storage import Storage, join_uri, parse_uri, relative_key
from worker.work import collection_outputs, frames_target

JOB_ID = r"^[0-9a-f]{24}$"
MAX_JOBS_PAGE = 200
EVENT_POLL_S = 0.5
EVENT_HEARTBEAT_S = 15.0
MAX_RESULTS = 1000
_UPLOAD_NAME = re.compile(r"^[^/\\\x00-\x1f\x7f]{1,200}$")
_CHUNK = 1024 * 1024


@dataclass
class ApiState:
    """What every request shares: settings, the service client, the tokens, previews."""

    settings: Settings
    service: Service
    principals: list[Principal]
    previews: Previews
    hint_previews: HintPreviews
    preview_bucket: TokenBucket
    insecure_local: bool = False

    @property
    def storage(self) -> Storage:
        return self.service.storage


def api_state(request: Request) -> ApiState:
    return request.app.state.tinct


def caller(request: Request) -> Principal:
    """The authenticated principal, or 401. With ``--insecure-local`` and no tokens, loopback callers are admin."""
    state = api_state(request)
    if state.insecure_local and not state.principals:
        return Principal("local", admin=True)
    principal = authenticate(state.principals, request.headers.get("authorization"))
    if principal is None:
        reason = "missing bearer token" if not request.headers.get("authorization") else "invalid bearer token"
        raise HTTPException(401, f"authorization: {reason}", headers={"WWW-Authenticate": "Bearer"})
    return principal


State = Annotated[ApiState, Depends(api_state)]
Caller = Annotated[Principal, Depends(caller)]
JobId = Annotated[str, PathParam(pattern=JOB_ID, description="a job id (24 hex digits)")]

public = APIRouter(prefix="/api/v1")
router = APIRouter(prefix="/api/v1", dependencies=[Depends(caller)])


@public.get("/health", tags=["service"], summary="Liveness and Redis reachability (no token needed)")
def health(state: State) -> JSONResponse:
    try:
        state.service.redis.ping()
    except Exception as exc:  # any Redis failure means "not ready"; the reason is one line without the URL
        return JSONResponse({"status": "unavailable", "redis": type(exc).__name__}, status_code=503)
    return JSONResponse({"status": "ok", "redis": "ok"})


# ------------------------------------------------------------------------------------------------------- jobs


def job_view(record: JobRecord) -> dict[str, Any]:
    spec = record.spec
    return {
        "id": record.id,
        "state": record.state,
        "kind": spec.kind,
        "input": spec.input,
        "output": spec.output,
        "options": spec.to_dict()["options"],
        "progress": {"unit": record.unit, "done": record.done, "total": record.total, "fps": record.fps,
                     "eta_s": record.eta_s},
        "outputs": record.outputs,
        "metrics": record.metrics,
        "error": record.error,
        "failures": [{"item": item, "reason": reason} for item, reason in record.failed_pieces.items()],
        "created_at": record.created,
        "updated_at": record.updated,
    }


_PICTURE_HINTS = {
    "points": {"type": "array", "items": {"type": "object", "required": ["x", "y", "color"], "properties": {
        "x": {"type": "number"}, "y": {"type": "number"}, "color": {"type": "string", "example": "#2a3f8f"},
        "radius": {"type": "number"}}}},
    "regions": {"type": "array", "items": {"type": "object", "required": ["polygon", "color"], "properties": {
        "polygon": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        "color": {"type": "string"}}}},
}
HINTS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **_PICTURE_HINTS,
        "pages": {"type": "object", "description": "a multi-page TIFF document's hints, page by page (instead of "
                  "points and regions): page number from 1 -> that page's points and regions, in its own pixels",
                  "additionalProperties": {"type": "object", "additionalProperties": False,
                                           "properties": _PICTURE_HINTS}},
    },
}
REFERENCES_SCHEMA = {
    "type": "array",
    "description": "a film's reference frames: colour pictures of frames, carried through their shots",
    "items": {"type": "object", "required": ["time", "image"], "additionalProperties": False, "properties": {
        "time": {"type": ["number", "string"], "description": "seconds from the first frame, or frame:N",
                 "example": "12.5"},
        "image": {"type": "string", "description": "the picture: s3://bucket/key or a path the token may read"},
        "sha256": {"type": "string", "description": "the picture's bytes' sha256 (recorded at submission)"}}},
}
JOB_SPEC_SCHEMA = {
    "type": "object",
    "required": ["input", "output"],
    "additionalProperties": False,
    "properties": {
        "input": {"type": "string", "description": "s3://bucket/key, a prefix ending in '/', or a folder path"},
        "output": {"type": "string", "description": "output URI; ending in '/' means a folder or prefix"},
        "kind": {"type": "string", "enum": ["image", "video", "collection"]},
        "options": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "model": {"type": "string"},
                "render_size": {"type": ["integer", "null"], "minimum": 32, "maximum": 4096},
                "smoothing": {"type": "number", "minimum": 0, "maximum": 1},
                "codec": {"type": "string", "description": "source (the default: each film's own where Tinct "
                          "writes it, else h264), h264, h265, ffv1 or prores"},
                "crf": {"type": ["integer", "null"], "minimum": 0, "maximum": 63},
                "preset": {"type": "string"},
                "recolor": {"type": "boolean"},
                "format": {"type": ["string", "null"], "description": "photos' copy format: jpg, png, tif, webp, "
                           "bmp or jp2, naming each copy so in a folder; null keeps each photo's own (a GIF's copy is "
                           "a PNG)"},
                "hints": {**HINTS_SCHEMA, "type": ["object", "null"],
                          "description": "a photo's colour hints (a document's, page by page)"},
                "references": {**REFERENCES_SCHEMA, "type": ["array", "null"]},
            },
        },
    },
}


def _owners_key(job_id: str) -> str:
    return f"{KEY_PREFIX}api:owners:{job_id}"


def _index_key(principal: Principal) -> str:
    return f"{KEY_PREFIX}api:jobs:{principal.name}"


def _authorize_spec(principal: Principal, spec: JobSpec) -> None:
    if not principal.may_read(spec.input):
        raise HTTPException(403, f"input: {spec.input} is outside the input prefixes of token '{principal.name}'")
    for i, reference in enumerate(spec.options.references or ()):  # a film's reference pictures are read as inputs
        if not principal.may_read(reference["image"]):
            raise HTTPException(403, f"options.references[{i}].image: {reference['image']} is outside the input "
                                f"prefixes of token '{principal.name}'")
    if not principal.may_write(spec.output):
        raise HTTPException(403, f"output: {spec.output} is outside the output prefixes of token '{principal.name}'")


@router.post(
    "/jobs", tags=["jobs"], status_code=201,
    summary="Submit a job (the queue's JSON spec); resubmitting the same job returns it (200)",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": JOB_SPEC_SCHEMA}}}},
    responses={200: {"description": "the same job, already submitted"}, 403: {"description": "outside prefixes"},
               422: {"description": "invalid spec: one line naming the field"}},
)
async def submit_job(request: Request, state: State, principal: Caller) -> JSONResponse:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise HTTPException(422, f"body: not valid JSON ({one_line(exc)})") from None
    try:
        spec = JobSpec.from_dict(data, state.settings.guidance_limits)  # the queue's own validation, one line
    except JobSpecError as exc:
        raise HTTPException(422, f"{exc.field}: {exc.reason}") from None
    for name in ("input", "output"):  # a URI storage cannot parse is a bad request, whoever sends it
        try:
            parse_uri(getattr(spec, name))
        except ValueError as exc:
            raise HTTPException(422, f"{name}: {one_line(exc)}") from None
    _authorize_spec(principal, spec)
    return await anyio.to_thread.run_sync(_submit, state, principal, spec)


def _submit(state: ApiState, principal: Principal, spec: JobSpec) -> JSONResponse:
    try:
        job_id, created = state.service.submit(spec)  # also fetches and checks a film's reference pictures
    except TransientError as exc:
        raise HTTPException(503, f"queue: {exc}; retry later") from None
    except JobSpecError as exc:
        raise HTTPException(422, f"{exc.field}: {exc.reason}") from None
    except ValueError as exc:  # as on the CLI (tinct submit): a spec storage refuses before any job exists
        raise HTTPException(422, f"spec: {one_line(exc)}") from None
    record = state.service.get(job_id)
    if record is None:  # expired between the two calls: only a misconfigured TTL could do this
        raise HTTPException(503, "queue: the job vanished as it was submitted; retry")
    with state.service.redis.pipeline(transaction=False) as pipe:
        pipe.sadd(_owners_key(job_id), principal.name)
        pipe.expire(_owners_key(job_id), state.settings.job_ttl_s)
        pipe.zadd(_index_key(principal), {job_id: record.created})
        # Finished jobs expire from Redis after job_ttl_s; their ids leave the token's index with them.
        pipe.zremrangebyscore(_index_key(principal), 0, time.time() - state.settings.job_ttl_s)
        pipe.execute()
    return JSONResponse({**job_view(record), "created": created}, status_code=201 if created else 200)


def _job(state: ApiState, principal: Principal, job_id: str) -> JobRecord:
    record = state.service.get(job_id)
    if record is None:
        raise HTTPException(404, f"job: no job {job_id}")
    if not principal.admin and not state.service.redis.sismember(_owners_key(job_id), principal.name):
        raise HTTPException(403, f"job: {job_id} was not submitted with token '{principal.name}'")
    return record


@router.get("/jobs", tags=["jobs"], summary="Jobs this token submitted, newest first, paged")
def list_jobs(
    state: State, principal: Caller,
    job_state: Annotated[str | None, Query(alias="state", description=f"one of {', '.join(STATES)}")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_JOBS_PAGE)] = 20,
    cursor: Annotated[int, Query(ge=0, le=10**9, description="the 'next' of the previous page")] = 0,
) -> dict[str, Any]:
    if job_state is not None and job_state not in STATES:
        raise HTTPException(422, f"state: must be one of {', '.join(STATES)}, got {job_state!r}")
    index = f"{KEY_PREFIX}jobs" if principal.admin else _index_key(principal)
    jobs: list[dict[str, Any]] = []
    position = cursor
    while len(jobs) < limit:
        ids = [i.decode() for i in state.service.redis.zrevrange(index, position, position + 4 * limit - 1)]
        if not ids:
            position = -1
            break
        for offset, job_id in enumerate(ids):
            record = state.service.get(job_id)
            if record is not None and (job_state is None or record.state == job_state):
                jobs.append(job_view(record))
            if len(jobs) == limit:
                position += offset + 1
                break
        else:
            position += len(ids)
    return {"jobs": jobs, "next": None if position < 0 else position}


@router.get("/jobs/{job_id}", tags=["jobs"], summary="A job: state, progress, ETA, outputs, failures")
def get_job(job_id: JobId, state: State, principal: Caller) -> dict[str, Any]:
    return job_view(_job(state, principal, job_id))


@router.delete("/jobs/{job_id}", tags=["jobs"], summary="Cancel a queued or running job (a finished one is kept)")
def cancel_job(job_id: JobId, state: State, principal: Caller) -> dict[str, Any]:
    _job(state, principal, job_id)
    record = state.service.cancel(job_id)
    if record is None:
        raise HTTPException(404, f"job: no job {job_id}")
    return job_view(record)


@router.get(
    "/jobs/{job_id}/events", tags=["jobs"],
    summary="Server-sent events: a 'job' event with the job on every change, until it has finished",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def job_events(job_id: JobId, request: Request, state: State, principal: Caller) -> StreamingResponse:
    await anyio.to_thread.run_sync(_job, state, principal, job_id)

    async def stream():
        last_update = None
        last_sent = time.monotonic()
        yield "retry: 2000\n\n"
        queue_away = False
        while True:
            try:
                record = await anyio.to_thread.run_sync(state.service.get, job_id)
            except QueueError as exc:
                # Redis restarting (from its append-only file) or out of reach for a moment: the stream stays open
                # and says so once, and the next answer carries on where it left off.
                if not queue_away:
                    queue_away = True
                    yield f": queue unreachable, retrying ({one_line(exc)})\n\n"
                if await request.is_disconnected():
                    return
                await asyncio.sleep(EVENT_POLL_S)
                continue
            queue_away = False
            if record is None:
                yield f"event: gone\ndata: {json.dumps({'id': job_id})}\n\n"
                return
            if record.updated != last_update:
                last_update = record.updated
                last_sent = time.monotonic()
                yield f"event: job\ndata: {json.dumps(job_view(record))}\n\n"
            if record.state in FINISHED:
                return
            if time.monotonic() - last_sent > EVENT_HEARTBEAT_S:  # keeps proxies from closing an idle stream
                last_sent = time.monotonic()
                yield ": still running\n\n"
            if await request.is_disconnected():
                return
            await asyncio.sleep(EVENT_POLL_S)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# ---------------------------------------------------------------------------------------------------- results


def _results(state: ApiState, record: JobRecord, limit: int | None = MAX_RESULTS) -> list[tuple[str | None, str]]:
    """A finished job's outputs (its first ``limit``), each with the photo it is the copy of (None for a film's
    outputs and frames)."""
    if record.state != "succeeded":
        return []
    frames = frames_target(record.spec) if record.spec.kind == "video" else None
    if frames is not None:  # the job's own frames: their folder may hold other runs, or a longer one coloured before
        first, count = int(record.metrics.get("first_frame", 0)), int(record.metrics.get("frames", 0))
        folder = output_folder(record.spec)
        uris = []
        for info in state.storage.list(folder):
            number = frame_number(relative_key(folder, info.uri), frames.prefix, frames.digits, frames.suffix)
            if number is not None and first <= number < first + count:
                uris.append((None, info.uri))
                if len(uris) == limit:
                    break
        return uris
    if record.spec.kind == "image":
        return [(record.spec.input, output) for output in record.outputs]
    if record.spec.kind != "collection":
        return [(None, output) for output in record.outputs]
    return list(itertools.islice(collection_outputs(state.storage, record), limit))


@router.get("/jobs/{job_id}/results", tags=["results"],
            summary="A finished job's outputs, each with a URL (a short-lived signed S3 URL, or a path here) and, "
                    "where it is a photo's copy, that photo (input)")
def list_results(job_id: JobId, state: State, principal: Caller) -> dict[str, Any]:
    record = _job(state, principal, job_id)
    results = []
    for index, (source, uri) in enumerate(_results(state, record)):
        result = {"uri": uri, "name": PurePosixPath(parse_uri(uri)[2]).name,
                  "url": _result_url(state, job_id, index, uri)}
        if source is not None:  # a photo's copy: the hint editor corrects it from its source
            result["input"] = source
        results.append(result)
    return {"results": results, "expires_in_s": state.settings.api_url_ttl_s}


def _result_url(state: ApiState, job_id: str, index: int, uri: str) -> str:
    scheme, bucket, key = parse_uri(uri)
    if scheme != "s3":
        return f"/api/v1/jobs/{job_id}/results/{index}"
    return state.storage.s3_client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=state.settings.api_url_ttl_s)


@router.post("/jobs/{job_id}/archive", tags=["results"],
             summary="A link that downloads a finished job's results as one ZIP, every one of them (no token needed "
                     "to follow it; valid TINCT_API_URL_TTL_S)")
def archive_link(job_id: JobId, state: State, principal: Caller) -> dict[str, Any]:
    record = _job(state, principal, job_id)
    if not _results(state, record, limit=1):
        raise HTTPException(409, f"job: {job_id} has no results to download ({record.state})")
    expires = int(time.time()) + state.settings.api_url_ttl_s
    query = urllib.parse.urlencode({"who": principal.name, "expires": expires,
                                    "sig": archives.ticket(principal, job_id, expires)})
    return {"url": f"/api/v1/jobs/{job_id}/archive.zip?{query}", "expires_in_s": state.settings.api_url_ttl_s}


@public.get("/jobs/{job_id}/archive.zip", tags=["results"],
            summary="A finished job's results as one ZIP, streamed as it is written (the link POST .../archive gives)",
            response_class=StreamingResponse, responses={200: {"content": {"application/zip": {}}}})
def archive_download(job_id: JobId, state: State,
                     who: Annotated[str, Query(max_length=64, description="the token's name the link was made for")],
                     expires: Annotated[int, Query(ge=0, le=2**40, description="epoch seconds")],
                     sig: Annotated[str, Query(max_length=128, description="the link's signature")]) -> Any:
    if state.insecure_local and not state.principals:
        principal: Principal | None = Principal("local", admin=True)
    else:
        principal = archives.ticket_holder(state.principals, who, job_id, expires, sig)
    if principal is None:
        raise HTTPException(403, "sig: not a valid link, or an expired one: ask for a new one (POST .../archive)")
    record = _job(state, principal, job_id)
    spec = record.spec  # named in the archive by their paths under the job's output folder (a collection's tree)
    folder = spec.output if spec.output.endswith("/") else spec.output.rsplit("/", 1)[0] + "/"
    entries = archives.entry_names(folder, [uri for _, uri in _results(state, record, None)])
    name = f"{PurePosixPath(parse_uri(spec.input.rstrip('/'))[2]).stem or 'results'}-colour.zip"
    disposition = f"attachment; filename*=UTF-8''{urllib.parse.quote(name)}"
    return StreamingResponse(archives.stream_zip(state.storage, entries), media_type="application/zip",
                             headers={"Content-Disposition": disposition, "Cache-Control": "no-store"})


@router.get("/jobs/{job_id}/results/{index}", tags=["results"],
            summary="One output: streamed from a folder, or a redirect to its signed S3 URL",
            response_class=FileResponse, responses={307: {"description": "redirect to a signed S3 URL"}})
def get_result(job_id: JobId, index: Annotated[int, PathParam(ge=0, le=MAX_RESULTS)], state: State,
               principal: Caller) -> Any:
    record = _job(state, principal, job_id)
    uris = [uri for _, uri in _results(state, record)]
    if index >= len(uris):
        raise HTTPException(404, f"index: job {job_id} has {len(uris)} results")
    scheme, _, key = parse_uri(uris[index])
    if scheme == "s3":
        return RedirectResponse(_result_url(state, job_id, index, uris[index]), status_code=307)
    if not Path(key).is_file():
        raise HTTPException(404, f"index: result {index} is no longer there")
    return FileResponse(key, filename=Path(key).name)


@router.get("/jobs/{job_id}/previews", tags=["previews"],
            summary="Before/after pairs: one per photo (a collection's a page at a time), a strip of frames per film")
def list_previews(job_id: JobId, state: State, principal: Caller,
                  start: Annotated[int, Query(ge=0, le=10**7, description="a collection's first photo shown: the "
                                              "'next' of the previous page")] = 0) -> dict[str, Any]:
    record = _job(state, principal, job_id)
    with _preview_errors_as_409():
        items = state.previews.items(record, start, COLLECTION_PREVIEWS + 1)  # one more: is there a next page?
    base = f"/api/v1/jobs/{job_id}/previews"
    more = record.spec.kind == "collection" and len(items) > COLLECTION_PREVIEWS
    photos = record.spec.kind != "video"  # a photo's pair names the photo and its copy: the hint editor's target
    return {"kind": record.spec.kind, "next": start + COLLECTION_PREVIEWS if more else None, "previews": [
        {"index": item.index, "label": item.label, "time": item.time,
         **({"input": item.input, "output": item.output} if photos else {}),
         "before": f"{base}/{item.index}/before.jpg", "after": f"{base}/{item.index}/after.jpg"}
        for item in items[:COLLECTION_PREVIEWS]]}


@contextmanager
def _preview_errors_as_409() -> Iterator[None]:
    """What deriving a job's previews can meet: the storage (503, retry) or its files (409, they cannot be shown)."""
    try:
        yield
    except TransientError as exc:
        raise HTTPException(503, f"storage: {exc}") from None
    except PermanentError as exc:
        raise HTTPException(409, f"previews: {exc}") from None


@router.get("/jobs/{job_id}/previews/{index}/{side}.jpg", tags=["previews"], summary="One preview image (JPEG)",
            response_class=FileResponse, responses={200: {"content": {"image/jpeg": {}}}})
def get_preview(job_id: JobId, index: Annotated[int, PathParam(ge=0, le=10**7)],
                side: Annotated[str, PathParam(pattern="^(before|after)$")], state: State,
                principal: Caller) -> FileResponse:
    record = _job(state, principal, job_id)
    with _preview_errors_as_409():
        item = state.previews.item(record, index)
    if item is None:
        raise HTTPException(404, f"index: job {job_id} has no preview {index}")
    with _preview_errors_as_409():
        path = state.previews.image(record, item, side)
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


# ---------------------------------------------------------------------------------------------------- uploads


def upload_name(name: str) -> str:
    """A plain file name with a photo or film extension, else 422 naming the problem."""
    if not _UPLOAD_NAME.match(name) or name in (".", "..") or name.startswith("."):
        raise HTTPException(422, "name: a plain file name (no '/', '\\', control characters or leading '.')")
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in PHOTO_SUFFIXES and suffix not in FILM_EXTENSIONS:
        raise HTTPException(422, f"name: {suffix or 'no extension'} is not a photo or film extension")
    return name


@router.post(
    "/uploads", tags=["uploads"], status_code=201,
    summary="Stream one photo or film (the raw bytes as the body) into this token's inbox; returns its URI",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    responses={413: {"description": "over TINCT_API_MAX_UPLOAD_BYTES"}, 422: {"description": "bad name"}},
)
async def upload(request: Request, state: State, principal: Caller,
                 name: Annotated[str, Query(max_length=200, description="the file's name, e.g. scan-0001.tif")]
                 ) -> JSONResponse:
    settings = state.settings
    if not settings.api_inbox:
        raise HTTPException(404, "uploads: no inbox is configured (TINCT_API_INBOX)")
    name = upload_name(name)
    limit = settings.api_max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body: {declared} bytes, over the upload limit of {limit} "
                            "(TINCT_API_MAX_UPLOAD_BYTES)")
    # A folder of its own per upload: two uploads of "scan.tif" never overwrite each other.
    folder = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"
    target = join_uri(own_folder(settings.api_inbox, principal), f"{folder}/{name}")
    scratch = settings.work_dir / "api-uploads"
    scratch.mkdir(parents=True, exist_ok=True)
    local = scratch / f"{secrets.token_hex(8)}{PurePosixPath(name).suffix.lower()}"
    size = 0
    try:
        with local.open("wb") as sink:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"body: over the upload limit of {limit} bytes "
                                        "(TINCT_API_MAX_UPLOAD_BYTES)")
                await anyio.to_thread.run_sync(sink.write, chunk)
        if size == 0:
            raise HTTPException(422, "body: empty upload")
        try:
            info = await anyio.to_thread.run_sync(state.storage.upload, local, target)
        except TransientError as exc:
            raise HTTPException(503, f"storage: {exc}") from None
        except TinctError as exc:
            raise HTTPException(409, f"storage: {exc}") from None
    finally:
        local.unlink(missing_ok=True)
    return JSONResponse({"uri": info.uri, "name": name, "size": info.size}, status_code=201)


@router.get("/whoami", tags=["service"], summary="The token's name and the prefixes it may read and write")
def whoami(state: State, principal: Caller) -> dict[str, Any]:
    settings = state.settings
    return {
        "name": principal.name, "admin": principal.admin,
        "inputs": list(principal.inputs), "outputs": list(principal.outputs),
        "uploads": bool(settings.api_inbox),
        "results": own_folder(settings.api_results, principal) if settings.api_results else None,
        "max_upload_bytes": settings.api_max_upload_bytes,
    }


@router.get("/models", tags=["service"],
            summary="The models a job may name: default (the shipped one) and those published to the model store")
def list_models(state: State, principal: Caller) -> dict[str, Any]:
    try:
        published = published_models(state.settings, state.storage)
    except TransientError as exc:
        raise HTTPException(503, f"model store: {exc}") from None
    except PermanentError as exc:  # a store named wrong (no such bucket) or refused to these credentials
        raise HTTPException(409, f"model store: {exc}") from None
    return {"models": [{"name": "default", "size": None, "published": None}] + [
        {"name": model.name, "size": model.size, "published": model.published} for model in published]}


# ---------------------------------------------------------------------------------------------- hint previews

PAGE_FIELD = {"type": "integer", "minimum": 1, "maximum": 999_999,
              "description": "the page shown, from 1: a multi-page TIFF document is previewed and hinted a page at a "
                             "time (the response's X-Photo-Pages says how many it has); 1, the default, for a photo"}
PREVIEW_SCHEMA = {
    "type": "object",
    "required": ["input"],
    "additionalProperties": False,
    "properties": {
        "input": {"type": "string", "description": "the photo: s3://bucket/key or a path"},
        "page": PAGE_FIELD,
        "hints": {**HINTS_SCHEMA, "description": "the shown page's points and regions (not hints page by page)"},
        "options": {"type": "object", "additionalProperties": False, "properties": {
            "model": {"type": "string"}, "render_size": {"type": ["integer", "null"], "minimum": 32, "maximum": 4096}}},
    },
}
PREVIEW_HEADERS = ("X-Photo-Width/Height: the page's full size, the hints' coordinates; X-Photo-Pages: its "
                   "document's pages")


@router.post(
    "/preview", tags=["previews"],
    summary="The photo colorized at about 512 px with colour hints, at once (the hint editor's preview; rate-limited)",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": PREVIEW_SCHEMA}}}},
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": PREVIEW_HEADERS},
               429: {"description": "too many previews; Retry-After says when to try again"}},
)
async def hint_preview(request: Request, state: State, principal: Caller) -> Response:
    try:
        data = json.loads(await request.body())
    except ValueError as exc:
        raise HTTPException(422, f"body: not valid JSON ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise HTTPException(422, f"body: expected a JSON object, got {type(data).__name__}")
    unknown = set(data) - {"input", "page", "hints", "options"}
    if unknown:
        raise HTTPException(422, f"{sorted(unknown)[0]}: unknown field")
    source = _preview_source(data.get("input"))
    page = data.get("page", 1)
    if type(page) is not int or not PAGE_FIELD["minimum"] <= page <= PAGE_FIELD["maximum"]:
        raise HTTPException(422, f"page: a page number from 1, got {json.dumps(page)}")
    raw_options = data.get("options") or {}
    if not isinstance(raw_options, dict) or set(raw_options) - {"model", "render_size"}:
        raise HTTPException(422, "options: only model and render_size apply to a preview")
    try:
        options = parse_options(raw_options)  # the jobs' own validation of these options
    except JobSpecError as exc:
        raise HTTPException(422, f"{exc.field}: {exc.reason}") from None
    try:
        hints = parse_hints(data.get("hints") or {}, "hints")
    except HintError as exc:
        raise HTTPException(422, f"hints.{exc.field}: {exc.detail}".replace("hints.: ", "hints: ")) from None
    _admit_preview(state, principal, source)
    with _preview_errors():
        preview = await anyio.to_thread.run_sync(state.hint_previews.render, source, hints, options.model,
                                                 options.render_size, page)
    return _preview_response(preview)


@router.get(
    "/preview/lightness", tags=["previews"],
    summary="The photo as the colorizer sees it, its lightness in gray at about 512 px (the picture the hint editor "
            "places points on; rate-limited with the previews)",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": PREVIEW_HEADERS},
               429: {"description": "too many previews; Retry-After says when to try again"}},
)
def preview_lightness(
    state: State, principal: Caller,
    source: Annotated[str, Query(alias="input", max_length=2000, description="the photo: s3://bucket/key or a path")],
    page: Annotated[int, Query(ge=PAGE_FIELD["minimum"], le=PAGE_FIELD["maximum"],
                               description=PAGE_FIELD["description"])] = 1,
) -> Response:
    source = _preview_source(source)
    _admit_preview(state, principal, source)
    with _preview_errors():
        preview = state.hint_previews.lightness(source, page)
    return _preview_response(preview)


def _preview_source(source: Any) -> str:
    if not isinstance(source, str) or not source.strip():
        raise HTTPException(422, "input: required: an s3://bucket/key URI or a path")
    try:
        parse_uri(source)
    except ValueError as exc:
        raise HTTPException(422, f"input: {one_line(exc)}") from None
    return source


def _admit_preview(state: ApiState, principal: Principal, source: str) -> None:
    """The caller may read ``source`` and has a preview left in its rate limit; 403 or 429 if not."""
    if not principal.may_read(source):
        raise HTTPException(403, f"input: {source} is outside the input prefixes of token '{principal.name}'")
    wait = state.preview_bucket.take(principal.name)
    if wait > 0:
        raise HTTPException(429, f"preview: too many previews; try again in {wait:.1f} s",
                            headers={"Retry-After": str(max(1, round(wait)))})


@contextmanager
def _preview_errors() -> Iterator[None]:
    """What making a preview can meet, as the API says it: the field at fault, 422, or the storage, 503."""
    try:
        yield
    except HintError as exc:
        raise HTTPException(422, f"hints.{exc.field}: {exc.detail}") from None
    except ModelError as exc:
        raise HTTPException(422, f"options.model: {exc}") from None
    except BadInputError as exc:
        raise HTTPException(422, f"input: {exc}") from None
    except TransientError as exc:
        raise HTTPException(503, f"storage: {exc}") from None


def _preview_response(preview: HintPreview) -> Response:
    return Response(preview.jpeg, media_type="image/jpeg", headers={
        "X-Photo-Width": str(preview.width), "X-Photo-Height": str(preview.height),
        "X-Photo-Pages": str(preview.pages), "Cache-Control": "no-store"})
