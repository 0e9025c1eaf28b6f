"""The error tree of the Tinct worker, split by what a caller should do about a failure.

Like dramatiq's ``Retry``/``throws`` and httpx's documented exception tree, every error the photo and
film pipelines raise on purpose is a :class:`TinctError`, and which branch it sits on answers the one
question a job runner has to decide:

* :class:`PermanentError` -- the input or the request is wrong (not an image, truncated, too large, a
  model that cannot load). Retrying gives the same answer, so the job fails once with a clear reason.
* :class:`TransientError` -- the world hiccupped (a full disk, a network share that went away, an
  object store timeout). The same job may well succeed later, so the service retries with backoff.

Messages are single lines that name the file, because they end up in one-line CLI reports, task
results and log lines that operators grep.
"""

from __future__ import annotations

import os


class TinctError(Exception):
    """Base of every error Tinct raises deliberately; ``str(error)`` is one line fit for a report."""

    #: Whether running the same job again may succeed (the service retries only these).
    retryable: bool = False


class PermanentError(TinctError):
    """The job cannot succeed as asked: fail it once, never retry."""

    retryable = False


class TransientError(TinctError):
    """A temporary failure outside the input (I/O, storage, network): the job may be retried later."""

    retryable = True


def one_line(text: object) -> str:
    """Collapse a message onto one line.

    Library messages (Pillow, libtiff, OS errors) sometimes span lines; reports must not.
    """
    return " ".join(str(text).split())


class BadInputError(PermanentError):
    """An input file that cannot be used: ``str()`` is ``"<path>: <reason>"`` on one line."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = one_line(reason)
        super().__init__(f"{self.path}: {self.reason}")


class FieldError(BadInputError):
    """A document with a field that cannot be used (a hint file, a film's references, given as a file or in a job's
    options): ``str()`` is ``"<where>: <field>: <reason>"``; ``field`` and ``detail`` (the reason alone) let a caller
    name the field in its own terms, as a job spec's ``options.`` or the HTTP API's 422 does."""

    def __init__(self, where: str | os.PathLike, field: str, reason: str) -> None:
        self.field = field
        self.detail = reason
        super().__init__(where, f"{field}: {reason}" if field else reason)


class UnsupportedMediaError(BadInputError):
    """A readable image of a kind Tinct does not handle (e.g. an animation, 32-bit float samples)."""


class InputTooLargeError(BadInputError):
    """An image with more pixels than the configured limit (also Pillow's decompression-bomb guard)."""


def frame_size_error(path: str | os.PathLike, size: tuple[int, int], first: tuple[int, int]) -> BadInputError:
    """The refusal of a frame of a run of frames (``worker.media.frame_sequences``) whose header says another size than
    its run's first frame's, by name before any work, as a rescan at another resolution is."""
    return BadInputError(path, f"this frame is {size[0]}x{size[1]}, the film's first is {first[0]}x{first[1]}; a "
                         "film's frames must all be one size")


class ModelError(PermanentError):
    """A model or engine that cannot be loaded (missing or corrupt checkpoint, unavailable backend)."""

    def __init__(self, model: str | os.PathLike, reason: str) -> None:
        self.model = os.fspath(model)
        self.reason = one_line(reason)
        super().__init__(f"cannot load model {self.model}: {self.reason}")


class StorageError(TransientError):
    """Reading or writing a file failed for a reason outside the image itself (disk full, I/O error, a
    network share or object store that went away). Transient: the same job succeeds once storage is healthy.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = one_line(reason)
        super().__init__(f"{self.path}: {self.reason}")
