"""What every ``python -m tools`` verb shares: logging verbosity, torch's thread count, argument types and how bad
input ends a command."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import CheckpointError
from models.engines.base import EngineUnavailableError
from models.files import atomic_output, unwritable_reason
from tools.datasets import DataError
from worker.errors import TinctError, one_line
from worker.settings import Settings

#: What bad input raises in the code the verbs share: a checkpoint, a data source, a model or store the worker's code
#: refuses, a backend this machine lacks. Each message names the file, source or field and the reason.
INPUT_ERRORS: tuple[type[Exception], ...] = (
    TinctError, CheckpointError, DataError, EngineUnavailableError, FileNotFoundError)


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=int, help="torch (and so ONNX Runtime) intra-op threads; 1 is faster on a busy machine"
    )
    parser.add_argument("-v", "--verbose", action="store_true")


def frame_size(text: str) -> tuple[int, int]:
    """``1920x1080`` -> (1920, 1080): the size of a generated test photo or film (an argparse ``type=``)."""
    try:
        width, height = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"expected a positive WIDTHxHEIGHT, got {text!r}")
    return width, height


def write_json(path: str | os.PathLike, data: Any, indent: int = 2, **dumps: Any) -> None:
    """``data`` as indented JSON at ``path`` (its folder made): the whole file or, if anything fails, none of it."""
    with atomic_output(path) as sink:
        sink.write((json.dumps(data, indent=indent, **dumps) + "\n").encode())


def output_file(text: str) -> Path:
    """A file a verb writes when its work is done (an argparse ``type=``): refused at once, not after the work, when
    its folder cannot be made there (a file in the way, no write permission). Nothing is created yet."""
    path = Path(text)
    reason = unwritable_reason(path)
    if reason is not None:
        raise argparse.ArgumentTypeError(f"{path}: {reason}")
    return path


def positive_ints(text: str) -> list[int]:
    """``1,2,4`` -> [1, 2, 4] (an argparse ``type=``); empty items are ignored."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def onnx_cache_dir() -> Path:
    """Where the tools keep ONNX exports: the same folder as the CLI and workers (``TINCT_CACHE_DIR``/onnx)."""
    return Settings.from_env().cache_dir / "onnx"


def apply_runtime_arguments(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.threads:
        # Before any engine exists: the ONNX Runtime engine takes its thread count from torch's.
        torch.set_num_threads(args.threads)


@contextlib.contextmanager
def input_errors_exit(parser: argparse.ArgumentParser, *more: type[Exception]) -> Iterator[None]:
    """Inside the block, bad input ends the command as argparse's own errors do: one line on stderr,
    ``<prog>: error: <what>: <why>``, exit status 2, no traceback. ``more`` adds a verb's own error types."""
    try:
        yield
    except (*INPUT_ERRORS, *more) as exc:
        parser.exit(2, f"{parser.prog}: error: {one_line(exc)}\n")
