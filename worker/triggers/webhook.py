"""``tinct webhook``: an HTTP endpoint for S3-shaped event notifications (MinIO, or any relay), authenticated by a
shared secret, that submits a job per new photo or film (:func:`serve_webhook`) through
:func:`worker.triggers.events.submit_events`.

A body that is no S3 event is refused (400); a transient failure (Redis or S3 hiccup) answers 503, so the sender
retries, and events already submitted from that body are found again on the retry.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker.errors import one_line
from worker.jobs import JobOptions
from worker.settings import GuidanceLimits
from worker.storage import normalize_uri
from worker.triggers.events import parse_s3_events, submit_events
from worker.triggers.mapping import Submitter, is_transient

logger = logging.getLogger(__name__)

#: A webhook body above this is refused unread. S3 and MinIO send one to a few records, a few KiB each.
MAX_WEBHOOK_BYTES = 1024 * 1024


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
            if is_transient(error):
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
