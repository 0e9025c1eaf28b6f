"""Published models by name: ``model="archive-1950s"`` loads ``<model_store>/archive-1950s.pt``.

An archive fine-tunes the shipped model on its own colour material (``python -m tools train --init default``),
publishes the checkpoint into the model store (``python -m tools promote ... -o s3://models/archive-1950s.pt``) and
names it in jobs; every worker and ``tinct colorize`` then loads the same file. The store is a folder or an
``s3://bucket/prefix/`` (``Settings.model_store``, ``TINCT_MODEL_STORE``).

A named checkpoint is copied into ``Settings.cache_dir / "models" / <name>/`` under a key derived from the object's
identity (URI, ETag, size), so a model published again under the same name is fetched again, and a worker never
keeps colorizing with the version it happened to load first. Copies appear atomically (``Storage.download`` writes
through ``models.files``, then one rename), so worker processes sharing a node never read a half-written file. Old
versions stay in the cache (another process may be about to load one) until an operator clears it.

``default`` and paths (``.pt`` checkpoints, ``.onnx`` exports) pass through untouched: ``models`` resolves those, and
verifies every checkpoint's weights against their sha256 when it loads them.
"""

from __future__ import annotations

import logging
import os
import secrets
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from models.checkpoint import is_model_name
from models.files import PARTIAL_SUFFIX
from worker.errors import ModelError
from worker.settings import Settings
from worker.storage import ObjectInfo, ObjectNotFoundError, Storage, join_uri, normalize_uri, relative_key

log = logging.getLogger(__name__)

CACHE_FOLDER = "models"


def model_uri(store: str, name: str) -> str:
    """Where the model ``name`` lives in ``store``: ``<store>/<name>.pt``."""
    return join_uri(store, f"{name}.pt")


def resolve_model(model: str | os.PathLike, settings: Settings, storage: Storage) -> str:
    """A reference ``models.engines.create_engine`` accepts: ``default`` and paths unchanged, a model name replaced
    by the local path of its current version (fetched on first use).

    A name with no store configured, or missing from the store, is a :class:`ModelError` naming the model and the
    store (permanent: the job fails once); a store that cannot be reached is the storage's transient error.
    """
    text = os.fspath(model)
    if not is_model_name(text):
        return text
    store = settings.model_store
    if not store:
        raise ModelError(text, "a model name needs a model store: set TINCT_MODEL_STORE to a folder or "
                         "s3://bucket/prefix/ (or give 'default' or a path to a .pt checkpoint)")
    uri = model_uri(store, text)
    try:
        info = storage.stat(uri)
    except ObjectNotFoundError:
        raise ModelError(text, f"not in the model store {store} (no {normalize_uri(uri)})") from None
    return os.fspath(_fetch(text, info, settings.cache_dir / CACHE_FOLDER, storage))


@dataclass(frozen=True)
class PublishedModel:
    """A model in the store, as a job names it."""

    name: str
    size: int
    published: float | None  # when this version was stored (epoch seconds)


def published_models(settings: Settings, storage: Storage) -> list[PublishedModel]:
    """The models a job may name from the store (``<store>/<name>.pt``, not in a sub-folder), by name; none without
    a store. One listing of the store: the store's unreachable is the storage's transient error."""
    if not settings.model_store:
        return []
    models = []
    for info in storage.list(settings.model_store):
        name = relative_key(settings.model_store, info.uri)
        if name.endswith(".pt") and is_model_name(name[:-3]):
            models.append(PublishedModel(name[:-3], info.size, info.last_modified))
    return sorted(models, key=lambda model: model.name)


def _cached_path(folder: Path, name: str, info: ObjectInfo) -> Path:
    return folder / name / f"{info.version_key()}.pt"


def _fetch(name: str, info: ObjectInfo, folder: Path, storage: Storage) -> Path:
    local = _cached_path(folder, name, info)
    if local.is_file():
        return local
    # Downloaded under a private name first and filed under the version actually read: if the model is published
    # again between our look and the download, the bytes still land under the key of the version they are.
    private = local.with_name(f".{os.getpid()}-{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
    try:
        fetched = storage.download(info.uri, private)
        local = _cached_path(folder, name, fetched)
        os.replace(private, local)
    finally:
        with suppress(OSError):
            private.unlink()
    log.info("model %s fetched from %s (%d bytes)", name, fetched.uri, fetched.size)
    return local
