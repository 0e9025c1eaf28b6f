"""A finished job's results as one ZIP, streamed as it is written: ``GET /api/v1/jobs/{id}/archive.zip``.

A collection of hundreds of photos, or a film coloured into a run of frames, downloads in one go from a link that a
browser can follow by itself: a browser's download sends no ``Authorization`` header, so the link carries a ticket
instead (who, until when, and an HMAC of the job and that time keyed by the caller's token digest). Tickets keep no
state on the server, so every API process behind a load balancer honours the others', and a token replaced in the
tokens file voids its links. The archive is stored, not deflated (photos and films are compressed already), ZIP64,
and written entry by entry while each object is read in pieces: neither the server's memory nor its disk holds it.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import PurePosixPath

from worker.api.auth import Principal
from worker.errors import TinctError
from worker.storage import Storage, parse_uri, relative_key

log = logging.getLogger(__name__)


def ticket(principal: Principal, job_id: str, expires: int) -> str:
    """The signature a link to ``job_id``'s archive carries for ``principal`` until ``expires`` (epoch seconds)."""
    return hmac.new(principal.digest, f"archive:{job_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def ticket_holder(principals: Sequence[Principal], who: str, job_id: str, expires: int, signature: str,
                  now: float | None = None) -> Principal | None:
    """The principal named ``who`` where ``signature`` is its ticket for ``job_id`` until ``expires`` and that time
    has not passed; None otherwise (an unknown name, a forged or altered link, an old one)."""
    principal = next((p for p in principals if p.name == who), None)
    if principal is None or expires < (time.time() if now is None else now):
        return None
    return principal if hmac.compare_digest(ticket(principal, job_id, expires), signature) else None


def entry_names(folder: str, uris: Iterable[str]) -> list[tuple[str, str]]:
    """``(name in the archive, uri)`` for each result: its path under the job's output ``folder`` (a collection's
    sub-folders kept), or its file name where it lies elsewhere; a name met twice gets `` (2)`` before its suffix."""
    entries, taken = [], set()
    for uri in uris:
        try:
            name = relative_key(folder, uri)
        except ValueError:
            name = PurePosixPath(parse_uri(uri)[2]).name
        unique, n = name, 1
        while unique in taken:
            n += 1
            path = PurePosixPath(name)
            unique = str(path.with_name(f"{path.stem} ({n}){path.suffix}"))
        taken.add(unique)
        entries.append((unique, uri))
    return entries


class _Sink(io.RawIOBase):
    """What ZipFile writes into, drained by the response as it goes (a stream it cannot seek: ZipFile then writes
    each entry's sizes after its data)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._chunks.append(bytes(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def drain(self) -> Iterator[bytes]:
        if self._chunks:
            chunks, self._chunks = self._chunks, []
            yield b"".join(chunks)


def stream_zip(storage: Storage, entries: Sequence[tuple[str, str]]) -> Iterator[bytes]:
    """The archive of ``entries`` (name, uri), in pieces as it is written. An object that cannot be read midway ends
    the stream there: the client is left a ZIP without its closing directory, which no reader takes for whole."""
    sink = _Sink()
    stamp = time.localtime()[:6]
    try:
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, uri in entries:
                with archive.open(zipfile.ZipInfo(name, date_time=stamp), "w", force_zip64=True) as entry:
                    for chunk in storage.read_chunks(uri):
                        entry.write(chunk)
                        yield from sink.drain()
                yield from sink.drain()
        yield from sink.drain()
    except TinctError as exc:
        log.warning("archive of %d results cut short: %s", len(entries), exc)
        raise
