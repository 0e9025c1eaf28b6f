"""Atomic file output, the one implementation every writer in Tinct uses (photos, checkpoints, ONNX
exports, training state): bytes appear under the final name only when they are complete; and whether an output is
older than what it was made from."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

# Temp files are hidden siblings with this suffix, so folder scans can recognise and skip them.
PARTIAL_SUFFIX = ".tinct-partial"


def unwritable_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` could not be written with the folders it lacks made, or None: a file where a folder must be, or
    a folder without write permission (or on a read-only file system). Nothing is created: callers ask before long
    work, so that it is not done for an output that cannot be kept."""
    path = Path(path)
    existing = path
    while not existing.exists():
        existing = existing.parent
    if existing != path and not existing.is_dir():
        return f"{existing} is a file, not a folder"
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable"
    return None


def changed_since(made: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> Path | None:
    """The first of ``inputs`` modified after ``made`` was written, or None (``made`` missing counts as never made:
    None too; a missing input is not a change). How a rerun tells a copy still current from one whose source was
    rescanned, or whose hints were edited, since it was made: as make does, by modification time."""
    try:
        made_at = os.stat(made).st_mtime_ns
    except FileNotFoundError:
        return None
    for source in inputs:
        if source is None:
            continue
        try:
            if os.stat(source).st_mtime_ns > made_at:
                return Path(source)
        except FileNotFoundError:
            continue
    return None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path next to ``path`` for a library that writes by file name; renamed over ``path`` when the
    block completes, removed when it raises (or is interrupted).

    Same directory, so ``os.replace`` is atomic. Not ``mkstemp``: that creates files 0600, and outputs
    shared by several workers or users must keep the umask's permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is not None and os.fspath(exc.filename) == os.fspath(tmp):
            # Name the file the caller asked for (its user never heard of the hidden temp file), same errno and type.
            raise type(exc)(exc.errno, f"{exc.strerror} (writing {tmp.name})", os.fspath(path)) from exc
        raise


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file object whose bytes appear under ``path`` only when the block completes; flushed and
    fsynced before the rename, so a crash right after cannot leave an empty file under the final name."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
