"""``python -m tools promote``: turn a training run's checkpoint into a shippable one.

Shipping is a recorded step, not a file copy: the decoding chosen on the development set (method and
annealing temperature) is written into the checkpoint, the evaluation that justified it is attached to
its provenance (model, gray baseline and ground truth side by side), and the weights are stored in fp16
to keep the file small. Everything that serves the model reads these from the file alone.

    python -m tools promote runs/default/model.pt --temperature 0.6 \\
        --evaluation eval.json -o models/weights/tinct-default.pt
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.predictor import DecodeOptions

log = logging.getLogger("tools.promote")


def evaluation_summary(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The part of an ``evaluate --json`` report worth carrying in a checkpoint: data, size, and the mean
    metrics of each model row, the gray baseline and the truth (per-image figures stay in the report)."""
    return {
        "data": evaluation["data"],
        "image_count": evaluation["image_count"],
        "render_size": evaluation["render_size"],
        "models": {row["label"]: row["mean"] for row in evaluation["models"]},
        "gray_baseline": evaluation["gray_baseline"]["mean"],
        "truth": evaluation["truth"]["mean"],
    }


def promote(
    source: Path, output: Path, decode: DecodeOptions | None = None, evaluation: dict[str, Any] | None = None,
    half: bool = True,
) -> str:
    """Re-save ``source`` as ``output`` with the given decoding and evaluation; returns the new weights hash."""
    ckpt = load_checkpoint(source)
    decode = decode or DecodeOptions(**ckpt.decode)
    provenance = dict(ckpt.provenance)
    provenance["promoted_from"] = ckpt.label
    if evaluation is not None:
        provenance["evaluation"] = evaluation_summary(evaluation)
    return save_checkpoint(output, ckpt.build_model(), provenance=provenance, decode=decode, half=half)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools promote", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="a training run's model.pt")
    p.add_argument("-o", "--output", type=Path, required=True, help="where the shippable checkpoint goes")
    p.add_argument("--decode-method", choices=("mode", "mean", "annealed_mean"), help="default: keep the checkpoint's")
    p.add_argument("--temperature", type=float, help="annealed-mean temperature (default: keep the checkpoint's)")
    p.add_argument("--evaluation", type=Path, help="an `evaluate --json` report to attach to the provenance")
    p.add_argument("--fp32", action="store_true", help="store float32 weights instead of fp16")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        current = DecodeOptions(**load_checkpoint(args.checkpoint).decode)
        decode = DecodeOptions(
            method=args.decode_method or current.method,
            temperature=current.temperature if args.temperature is None else args.temperature,
        )
        evaluation = json.loads(args.evaluation.read_text()) if args.evaluation else None
        digest = promote(args.checkpoint, args.output, decode, evaluation, half=not args.fp32)
    except (CheckpointError, OSError, ValueError, KeyError) as exc:
        p.exit(2, f"promote: error: {exc}\n")
    log.info("wrote %s (weights sha256 %s, decode %s)", args.output, digest[:12], decode)
    return 0
