"""``python -m tools export CHECKPOINT -o model.onnx``: a checkpoint's predictor as one ONNX file.

The file has dynamic batch, height and width (multiples of the model stride) and carries the
checkpoint's identity and decode options in its metadata; ``create_engine("model.onnx")`` runs it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from models.checkpoint import load_checkpoint, resolve_checkpoint
from models.onnx_export import ONNX_OPSET, export_onnx, read_onnx_metadata
from models.predictor import DecodeOptions
from tools.runtime import input_errors_exit

DECODE_METHODS = ("annealed_mean", "mean", "mode")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .pt checkpoint, or 'default' for the shipped model")
    parser.add_argument("-o", "--output", required=True, type=Path, help="where to write the .onnx file")
    parser.add_argument(
        "--decode-method",
        choices=DECODE_METHODS,
        help="how classification heads turn bin logits into ab (default: as recorded in the checkpoint)",
    )
    parser.add_argument(
        "--temperature", type=float, help="annealed-mean temperature (default: as recorded in the checkpoint)"
    )
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default {ONNX_OPSET})")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.output.suffix.lower() != ".onnx":
        parser.error(f"output {args.output} must end in .onnx (engines pick the backend by suffix)")
    if args.temperature is not None and args.temperature <= 0:
        parser.error(f"--temperature must be > 0, got {args.temperature}")
    with input_errors_exit(parser, OSError):  # a missing checkpoint, an output folder that cannot be written
        checkpoint = load_checkpoint(resolve_checkpoint(args.checkpoint))
        recorded = DecodeOptions(**checkpoint.decode)
        decode = DecodeOptions(
            method=args.decode_method or recorded.method,
            temperature=args.temperature if args.temperature is not None else recorded.temperature,
        )
        path = export_onnx(checkpoint, args.output, decode=decode, opset=args.opset)
    meta = read_onnx_metadata(path)
    logging.info(
        "wrote %s: %s, decode %s (T=%g), stride %d, output stride %d, %.1f MB",
        path,
        checkpoint.label,
        meta.decode.method,
        meta.decode.temperature,
        meta.stride,
        meta.output_stride,
        path.stat().st_size / 1e6,
    )
    return 0
