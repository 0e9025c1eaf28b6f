"""``python -m tools <verb> ...``: thin dispatch to one module per verb, each with ``main(argv)``."""

from __future__ import annotations

import importlib
import sys

VERBS = {
    "train": ("tools.train", "train or fine-tune a model on folders, zips or s3:// prefixes of colour photos"),
    "adapt-encoder": ("tools.adapt_encoder", "teach a model's ImageNet encoder to see in gray what it sees in colour "
                      "(distillation)"),
    "evaluate": ("tools.evaluate", "score a model against ground truth with the gray baseline beside it"),
    "scorecard": ("tools.scorecard", "models side by side on every dev set and film, gray and truth beside, verdict"),
    "probe": ("tools.probe_encoder", "what each model's encoder recognises in gray: a linear probe on class folders"),
    "bench": ("tools.bench", "images/s and megapixels/s per engine and batch size"),
    "export": ("tools.export", "export a checkpoint to ONNX (dynamic batch and size)"),
    "build-engine": ("tools.build_engine", "build a model's TensorRT engine for this GPU (cached, checked)"),
    "pack-data": ("tools.pack_data", "a byte-budgeted copy of training sources (same names, whole split) to carry"),
    "promote": ("tools.promote", "make a run's checkpoint shippable: decoding, evaluation, fp16 weights"),
    "experiments": ("tools.experiments", "rerun the seed papers' comparisons (CIFAR-10 judge, natural photos)"),
    "serve-local": ("tools.serve_local", "redis-server, a worker and tinct serve on loopback (make serve)"),
    "bench-api": ("tools.bench_api", "latency of GET job and the event stream under a bounded loopback load"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        lines = [f"  {verb:<12} {help_}" for verb, (_, help_) in VERBS.items()]
        print("usage: python -m tools <verb> [options]\n\nverbs:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(VERBS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
