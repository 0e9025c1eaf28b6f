"""Argument types shared by the ``tinct`` subcommands (argparse ``type=`` callables with one-line errors)."""

from __future__ import annotations

import argparse

from worker.errors import TinctError
from worker.references import FilmReference, parse_reference_arg


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def reference(text: str) -> FilmReference:
    """``TIME=IMAGE`` or ``frame:N=IMAGE`` (``tinct colorize --reference``, ``tinct submit --reference``)."""
    try:
        return parse_reference_arg(text)
    except (ValueError, TinctError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
