"""Sidecars: a photo's ``<name>.hints.json`` (``worker.hints``) and the pictures in a film's ``<name>.references/``
folder (``worker.references``), and how a trigger puts them into a job (:func:`with_sidecars`).

Every trigger sends a photo with its ``<name>.hints.json`` and a film with the pictures in its ``<name>.references/``
folder: bulk finds them in its listing (``worker.triggers.bulk``), an event looks beside its input
(:func:`sidecars_present`: a HEAD for a hint file, a listing for a folder). A sidecar is never an input itself; its
own event submits its photo or film again (:func:`sidecar_owner`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from worker.hints import HINTS_SUFFIX, parse_hints_bytes
from worker.jobs import JobSpec
from worker.media.images import is_photo_name
from worker.photos import is_reference_folder
from worker.references import REFERENCES_SUFFIX, seal_references, sidecar_references
from worker.settings import GuidanceLimits
from worker.storage import Storage


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


def reference_film(uri: str) -> str | None:
    """The film whose sidecar folder (``<film file name>.references/``) holds ``uri``, at any depth, or None."""
    parts = uri.split("/")
    for depth in range(len(parts) - 2, 0, -1):
        if is_reference_folder(parts[depth]):
            return "/".join([*parts[:depth], parts[depth][: -len(REFERENCES_SUFFIX)]])
    return None


def picture_film(uri: str) -> str | None:
    """The film ``uri`` is a reference picture of: right inside its ``<name>.references/`` folder, as hidden files
    (.DS_Store) and subfolders are no references; None otherwise."""
    film = reference_film(uri)
    if film is None or re.search(r"/[.]|/.*/", uri[len(film + REFERENCES_SUFFIX) :]):
        return None
    return film


def sidecar_owner(uri: str) -> str | None:
    """The photo whose hint file ``uri`` is, or the film whose reference picture it is; None for anything else."""
    if uri.endswith(HINTS_SUFFIX):
        photo = uri[: -len(HINTS_SUFFIX)]
        return photo if is_photo_name(photo) else None
    return picture_film(uri)


def sidecars_present(storage: Storage, spec: JobSpec) -> tuple[bool, list[str]]:
    """What an event's photo or film has beside it now, for :func:`with_sidecars`: one HEAD for a photo's hint file,
    one listing of a film's reference folder."""
    if spec.kind == "image":
        return storage.exists(spec.input + HINTS_SUFFIX), []
    listing = storage.list(spec.input + REFERENCES_SUFFIX)
    return False, [info.uri for info in listing if picture_film(info.uri) == spec.input]
