"""The ASGI application behind ``tinct serve``: the API under ``/api/v1``, the console at ``/``.

    app = create_app(Settings.from_env())          # uvicorn.run(app, ...) does the rest (worker.api.serve)

One line per error, naming the field, whatever raised it: FastAPI's own request validation (a query parameter of
the wrong type) is rewritten to the same ``{"detail": "<field>: <reason>"}`` shape as the routes' own errors.
Requests are counted and timed per route template for Prometheus (``GET /api/v1/metrics``) in a registry of the
API's own, so the API process never shows the workers' counters at zero.
"""

from __future__ import annotations

import logging
import time
from importlib import resources
from pathlib import Path

import redis
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.api.auth import Principal, load_principals
from worker.api.previews import HintPreviews, Previews, TokenBucket
from worker.api.routes import ApiState, caller, public, router
from worker.errors import one_line
from worker.media.images import tinct_version
from worker.service import QueueError, Service
from worker.settings import Settings

log = logging.getLogger("tinct.api")
STATIC = Path(str(resources.files("worker.api") / "static"))
QUEUE_RETRY_AFTER_S = 5  # what a 503 for an unreachable Redis asks a client to wait: a restart takes seconds
# The console needs nothing from elsewhere: scripts, styles and images from this origin only (previews are blob:
# URLs made from authenticated fetches), and it may not be framed by another site.
_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
_SECURITY_HEADERS = [
    (b"content-security-policy", _CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class _Metrics:
    """Counts and times requests, adds the security headers. Plain ASGI: Starlette's BaseHTTPMiddleware would run
    each request in an extra task and gets in the way of the event stream."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter("tinct_api_requests", "API requests by route and status",
                                ["method", "route", "status"], registry=registry)
        self.seconds = Histogram("tinct_api_request_seconds", "API request time to the response's first byte",
                                 ["method", "route"], registry=registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))

    @staticmethod
    def _route(scope: Scope) -> str:
        # Label by template (/api/v1/jobs/{job_id}), never the raw path: ids would explode the series count. The
        # router records the matched route in the (shared) scope before the endpoint runs.
        route = scope.get("route")
        return getattr(route, "path", "unmatched")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = {"code": 500}
        timed = {"done": False}
        method = scope["method"]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = list(message.get("headers", [])) + _SECURITY_HEADERS
                if not timed["done"]:
                    timed["done"] = True
                    self.seconds.labels(method, self._route(scope)).observe(time.perf_counter() - began)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.requests.labels(method, self._route(scope), str(status["code"])).inc()


def create_app(settings: Settings, service: Service | None = None, principals: list[Principal] | None = None,
               insecure_local: bool = False) -> FastAPI:
    """The application; ``principals`` default to the settings' tokens (:func:`load_principals`)."""
    service = service or Service(settings)
    principals = load_principals(settings) if principals is None else principals
    app = FastAPI(
        title="Tinct API", version=tinct_version(),
        description="Colorize black-and-white photos and films: submit jobs, follow them, fetch results and "
        "before/after previews. Every route but /api/v1/health, this document and an archive's signed link needs "
        "`Authorization: Bearer <token>`.",
        openapi_url="/api/v1/openapi.json", docs_url=None, redoc_url=None,  # both load scripts from a CDN
    )
    app.state.tinct = ApiState(
        settings=settings, service=service, principals=principals, insecure_local=insecure_local,
        previews=Previews(service.storage, settings.cache_dir, settings.work_dir / "api-previews"),
        hint_previews=HintPreviews(settings, service.storage),
        preview_bucket=TokenBucket(settings.api_preview_rate, settings.api_preview_burst),
    )
    app.include_router(public)
    app.include_router(router)
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)

    @app.get("/api/v1/metrics", tags=["service"], summary="Prometheus metrics of this API process (token needed)",
             response_class=Response)
    def metrics(request: Request) -> Response:
        caller(request)  # a token is needed, as everywhere but health, the OpenAPI document and the console
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def console() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(RequestValidationError)
    async def one_line_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = exc.errors()[0] if exc.errors() else {}
        location = [str(part) for part in error.get("loc", ()) if part not in ("query", "path", "body", "header")]
        field = ".".join(location) or "request"
        return JSONResponse({"detail": f"{field}: {one_line(error.get('msg', 'invalid'))}"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": one_line(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    # Redis out of reach, wherever a route met it (the service's calls, or the owners and job index it reads itself):
    # 503 with the queue named and a hint to retry, as a submission says it, not a bare 500.
    @app.exception_handler(QueueError)
    async def queue_unreachable(request: Request, exc: QueueError) -> JSONResponse:
        return JSONResponse({"detail": f"queue: {one_line(exc)}; retry later"}, status_code=503,
                            headers={"Retry-After": str(QUEUE_RETRY_AFTER_S)})

    @app.exception_handler(redis.RedisError)
    async def redis_unreachable(request: Request, exc: redis.RedisError) -> JSONResponse:
        return await queue_unreachable(request, QueueError(settings.redis_url, one_line(exc)))

    app.add_middleware(_Metrics, registry=registry)
    return app
