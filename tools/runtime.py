"""Options every ``python -m tools`` verb shares: logging verbosity and torch's thread count."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from worker.settings import Settings


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=int, help="torch (and so ONNX Runtime) intra-op threads; 1 is faster on a busy machine"
    )
    parser.add_argument("-v", "--verbose", action="store_true")


def onnx_cache_dir() -> Path:
    """Where the tools keep ONNX exports: the same folder as the CLI and workers (``TINCT_CACHE_DIR``/onnx)."""
    return Settings.from_env().cache_dir / "onnx"


def apply_runtime_arguments(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.threads:
        # Before any engine exists: the ONNX Runtime engine takes its thread count from torch's.
        torch.set_num_threads(args.threads)
