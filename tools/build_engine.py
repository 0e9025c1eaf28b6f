"""``python -m tools build-engine [MODEL]``: build (or find in the cache) a model's TensorRT engine for this GPU.

Converts the checkpoint to ONNX (dynamic batch and size; fp16 network with float32 decoding by default)
and builds a TensorRT engine with one optimisation profile per render size, using and updating the
timing cache; see ``models.engines.tensorrt_engine``. The engine lands in the cache the workers read
(``TINCT_CACHE_DIR``/onnx/tensorrt), so a GPU node that runs this at start (or an image that runs it in a
build stage on the same GPU model) serves its first job without a build. An engine that is already
cached and current is only checked, not rebuilt (``--rebuild`` forces it).

After building, the engine is checked against the PyTorch fp32 engine on the same GPU: the ab
difference, relative to the ab range, must stay under ``--tolerance`` (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import torch

from models.checkpoint import CheckpointError, load_checkpoint, preferred_render_size, resolve_checkpoint
from models.engines import EngineUnavailableError, TensorRTEngine, TorchEngine
from models.engines.tensorrt_engine import DEFAULT_MAX_BATCH, TENSORRT_PRECISIONS, TensorRTBuildError
from tools.runtime import add_runtime_arguments, apply_runtime_arguments, onnx_cache_dir, positive_ints

PROG = "python -m tools build-engine"
# fp16 against fp32 on an H100 (PyTorch autocast): 1.6e-3 of the ab range; TensorRT's fp16 kernels sum in
# other orders, so the bar is the 1e-2.
DEFAULT_TOLERANCE = 1e-2


def check_against_torch(engine: TensorRTEngine, batch: int = 4, seed: int = 0) -> dict[str, float]:
    """ab of ``engine`` and of the PyTorch fp32 engine on the same L batches (one per profile, a film frame's
    shape at its render size): the largest and mean absolute differences, and the largest relative to the
    reference's ab range."""
    rng = np.random.default_rng(seed)
    worst = {"max_abs": 0.0, "mean_abs": 0.0, "max_relative": 0.0}
    with TorchEngine(engine.checkpoint, device="cuda", precision="fp32", decode=engine.decode,
                     cuda_graphs=False) as reference:
        for profile in engine.profiles:
            _, _, height, width = profile.opt_shape
            y, x = np.mgrid[0:height, 0:width].astype(np.float32)
            scene = 50 + 30 * np.sin(x / 11.0) * np.cos(y / 17.0)
            L = np.clip(scene[None, None] + rng.normal(0, 6, (min(batch, engine.max_batch or batch), 1, height, width)),
                        0, 100).astype(np.float32)
            expected, got = reference.infer(L), engine.infer(L)
            difference = np.abs(got - expected)
            span = float(expected.max() - expected.min()) or 1.0
            worst["max_abs"] = max(worst["max_abs"], float(difference.max()))
            worst["mean_abs"] = max(worst["mean_abs"], float(difference.mean()))
            worst["max_relative"] = max(worst["max_relative"], float(difference.max()) / span)
    return worst


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("model", nargs="?", default="default", help="'default' or a .pt checkpoint (default: default)")
    parser.add_argument("--precision", default="fp16", choices=TENSORRT_PRECISIONS, help="default: %(default)s")
    parser.add_argument("--render-sizes", default=None,
                        help="comma-separated render sizes to build profiles for, e.g. 256,384,512 "
                        "(default: the model's own render size)")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="largest batch (default: %(default)s)")
    parser.add_argument("--rebuild", action="store_true", help="build even if a current engine is cached")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest ab difference from PyTorch fp32, relative to the ab range (default: %(default)s)")
    parser.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch fp32")
    add_runtime_arguments(parser)
    return parser


def _render_sizes(text: str | None) -> list[int] | None:
    """``--render-sizes``, parsed here rather than by argparse so that a bad value is this tool's one-line error."""
    if text is None:
        return None
    try:
        sizes = positive_ints(text)
    except argparse.ArgumentTypeError:
        sizes = []
    if not sizes:
        raise ValueError(f"--render-sizes must be comma-separated whole numbers above 0, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_runtime_arguments(args)
    logging.getLogger("models").setLevel(logging.INFO)
    try:
        if args.max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, got {args.max_batch}")
        checkpoint = load_checkpoint(resolve_checkpoint(args.model))
        render_sizes = _render_sizes(args.render_sizes) or [preferred_render_size(checkpoint.provenance)]
        engine = TensorRTEngine(checkpoint, precision=args.precision, cache_dir=onnx_cache_dir(),
                                render_sizes=render_sizes, max_batch=args.max_batch, rebuild=args.rebuild)
    except (CheckpointError, EngineUnavailableError, TensorRTBuildError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (CheckpointError, EngineUnavailableError, ValueError)) else 1
    with engine:
        record, key = engine.plan_record, engine.plan_record["key"]
        print(f"{engine.plan_path}\n  {checkpoint.label} {args.precision} on {key['gpu']} "
              f"(compute {key['compute_capability']}), TensorRT {key['tensorrt']}; "
              f"built in {record['build_seconds']} s at {record['built_at']}")
        for profile in engine.profiles:
            print(f"  render {profile.render_size}: L from {profile.min_shape} to {profile.max_shape}, "
                  f"tuned for {profile.opt_shape}")
        if args.no_check:
            return 0
        worst = check_against_torch(engine)
        verdict = "ok" if worst["max_relative"] <= args.tolerance else "TOO FAR"
        print(f"  against PyTorch fp32 on {torch.cuda.get_device_name()}: max |ab diff| {worst['max_abs']:.3g}, "
              f"mean {worst['mean_abs']:.3g}, max relative to the ab range {worst['max_relative']:.2e} "
              f"(tolerance {args.tolerance:g}): {verdict}")
        return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
