"""``python -m tools promote``: turn a training run's checkpoint into a shippable one.

Shipping is a recorded step, not a file copy: the decoding chosen on the development set (method and
annealing temperature) is written into the checkpoint, the evaluation that justified it is attached to
its provenance (model, gray baseline and ground truth side by side), and the weights are stored in fp16
to keep the file small. Everything that serves the model reads these from the file alone.

    python -m tools promote runs/default/model.pt --temperature 0.6 \\
        --evaluation eval.json -o models/weights/tinct-default.pt

``--average-with OTHER.pt:0.3`` ships a weight average instead (Wortsman et al. 2022, "model soups"): 0.3 of
OTHER's weights and the rest of the run's, for two runs of one architecture where one continued the other (a
second run started from a candidate with another loss weight, say). Averaging such a pair lands between them,
often on a better PSNR/colour trade-off than either's decoding can reach; it is recorded in the provenance.
``--highlight-rolloff 80,95,0.4`` records a roll-off of chroma towards white (``models.color.HighlightRolloff``),
which every colorizer of the model then applies.

``--choose rebalance=0.3,0.6,1 --choose temperature=0.3,0.5`` chooses the decoding instead of taking it: every
combination is written as the checkpoint it would ship and scored on photos the run held out (its own sources'
``--val-split``, or ``--choose-on NAME=PATH``). The one the campaign's rule picks ships (the most release-4 checks
met, then the highest mean PSNR gain over gray) with the figures that chose it in its provenance
(``decoding_choice``; ``tools.choose_decoding``). ``--choice-card DIR`` keeps the grid's scorecard with its contact
sheets.

``-o`` may also be ``s3://bucket/prefix/NAME.pt``, to publish into a model store: workers with
``TINCT_MODEL_STORE=s3://bucket/prefix/`` then load it for jobs that ask for ``model="NAME"``. The object
appears in one upload (a single PUT, or a multipart upload that completes at once), so a worker never reads
half a checkpoint; the store's own settings (endpoint, credentials) come from ``TINCT_S3_*``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from models.checkpoint import (
    Checkpoint,
    is_model_name,
    load_checkpoint,
    preferred_highlight_rolloff,
    preferred_min_render_size,
    preferred_render_size,
    save_checkpoint,
)
from models.color import HighlightRolloff
from models.onnx_export import decode_tag
from models.predictor import DecodeOptions
from tools.ab_prior import measure_ab_prior
from tools.choose_decoding import (
    Choice,
    Decoding,
    GridAxis,
    grid,
    held_out_sets,
    local_photo_sets,
    score_and_choose,
)
from tools.runtime import input_errors_exit
from tools.scorecard import RELEASE4_TARGETS, PhotoSet, ScorecardOptions, Targets
from worker.settings import Settings
from worker.storage import Storage, parse_uri

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
    source: Path | Checkpoint, output: str | os.PathLike, decode: DecodeOptions | None = None,
    evaluation: dict[str, Any] | None = None, half: bool = True, storage: Storage | None = None,
    render_size: int | None = None, min_render_size: int | None = None,
    average_with: Sequence[tuple[Path, float]] = (), highlight_rolloff: HighlightRolloff | None = None,
    decoding_choice: dict[str, Any] | None = None,
) -> str:
    """Re-save ``source`` as ``output`` (a path, or an ``s3://`` URI with ``storage``) with the given decoding,
    evaluation and render size (the model's own from then on: ``models.colorizer.preferred_render_size``), its
    weights averaged with ``average_with``'s (each checkpoint with its share; ``source`` keeps the rest), and the
    figures that chose the decoding (``decoding_choice``, from ``tools.choose_decoding``); returns the new weights
    hash. ``source`` may be a checkpoint already loaded (a grid promotes one many times)."""
    ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source)
    decode = decode or DecodeOptions(**ckpt.decode)
    provenance = dict(ckpt.provenance)
    provenance["promoted_from"] = ckpt.label
    rolloff = None if highlight_rolloff is None or highlight_rolloff.is_identity else highlight_rolloff  # "off": none
    rerendered = ((render_size is not None and render_size != preferred_render_size(provenance))
                  or (min_render_size is not None and min_render_size != preferred_min_render_size(provenance))
                  or (highlight_rolloff is not None and rolloff != preferred_highlight_rolloff(provenance)))
    if decoding_choice is not None:
        provenance["decoding_choice"] = decoding_choice
    elif decode != DecodeOptions(**ckpt.decode) or rerendered or average_with:
        provenance.pop("decoding_choice", None)  # an earlier choice no longer describes what ships
    if evaluation is not None:
        provenance["evaluation"] = evaluation_summary(evaluation)
    if render_size is not None:
        if render_size < 32:
            raise ValueError(f"render size {render_size} is too small (at least 32)")
        provenance["render_size"] = render_size
    if min_render_size is not None:
        if min_render_size < 0:
            raise ValueError(f"min render size {min_render_size} must be >= 0 (0: never enlarge small photos)")
        provenance["min_render_size"] = min_render_size
    if highlight_rolloff is not None and rolloff is None:
        provenance.pop("highlight_rolloff", None)
    elif rolloff is not None:
        provenance["highlight_rolloff"] = dataclasses.asdict(rolloff)
    model = ckpt.build_model()
    if average_with:
        others = [(load_checkpoint(path), share) for path, share in average_with]
        model.load_state_dict(averaged_weights(ckpt, others), strict=True)
        provenance["weight_average"] = [{"model": ckpt.label, "share": 1 - sum(share for _, share in others)}] + [
            {"model": other.label, "share": share} for other, share in others]
    scheme, _, local_path = parse_uri(output)
    if scheme == "file":
        return save_checkpoint(local_path, model, provenance=provenance, decode=decode, half=half)
    if storage is None:
        raise ValueError(f"{output}: publishing to S3 needs object storage settings")
    with tempfile.TemporaryDirectory(prefix="tinct-promote-") as scratch:
        local = Path(scratch) / "model.pt"
        digest = save_checkpoint(local, model, provenance=provenance, decode=decode, half=half)
        storage.upload(local, os.fspath(output), content_type="application/octet-stream")
    return digest


def promote_choosing(
    source: Path | Checkpoint, output: str | os.PathLike, decodings: Sequence[Decoding], sets: Sequence[PhotoSet],
    decode: DecodeOptions | None = None, options: ScorecardOptions | None = None, card_dir: Path | None = None,
    targets: Targets = RELEASE4_TARGETS, storage: Storage | None = None, judge_dir: Path | None = None,
    **promote_options: Any,
) -> tuple[str, Choice]:
    """Promote ``source`` with the decoding of ``decodings`` that ``tools.choose_decoding``'s rule picks on ``sets``.

    Each decoding is first written as exactly the checkpoint it would ship as (``decode`` and ``promote_options``
    with the grid's values set: the same render sizes, roll-off, averaging and fp16 weights), so what is scored is
    what ships; then all of them are scored side by side (the card goes to ``card_dir`` when given) and the chosen
    one is written to ``output`` with the figures in its provenance. Returns the weights hash and the choice."""
    ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source)
    decode = decode or DecodeOptions(**ckpt.decode)
    options = options or ScorecardOptions(engine_kind="torch")
    with tempfile.TemporaryDirectory(prefix="tinct-choose-") as scratch:
        photo_sets = local_photo_sets(sets, storage, Path(scratch) / "photos")
        candidates = []
        for i, decoding in enumerate(decodings):
            path = Path(scratch) / "candidates" / f"{i:03d}.pt"
            promote(ckpt, path, decoding.apply(decode), **(promote_options | decoding.rendering()))
            candidates.append((decoding, path))
        choice = score_and_choose(candidates, photo_sets, card_dir or Path(scratch) / "card", options, targets,
                                  source=ckpt.path or ckpt.label, judge_dir=judge_dir)
    record = choice.record() | {"sets": [s | {"source": h.path} for s, h in zip(choice.sets, sets, strict=True)]}
    chosen = decodings[choice.chosen]
    digest = promote(ckpt, output, chosen.apply(decode), storage=storage, decoding_choice=record,
                     **(promote_options | chosen.rendering()))
    return digest, choice


def averaged_weights(ckpt: Checkpoint, others: Sequence[tuple[Checkpoint, float]]) -> dict[str, torch.Tensor]:
    """``ckpt``'s float32 weights averaged with ``others``' (each with its share, ``ckpt`` the rest). ValueError for a
    share outside (0, 1), shares that leave ``ckpt`` nothing, or another architecture (a model's name, config or
    weight names)."""
    own_share = 1.0 - sum(share for _, share in others)
    if any(not 0.0 < share < 1.0 for _, share in others) or own_share <= 0.0:
        raise ValueError(f"--average-with: each share must be in (0, 1) and together under 1, got "
                         f"{', '.join(f'{share:g}' for _, share in others)}")
    state = {name: tensor.float() * own_share if tensor.is_floating_point() else tensor
             for name, tensor in ckpt.state_dict.items()}
    for other, share in others:
        where = other.path or other.label
        same_architecture = (other.model_name, other.config) == (ckpt.model_name, ckpt.config)  # configs complete
        if not same_architecture or other.state_dict.keys() != state.keys():
            raise ValueError(f"--average-with {where}: another architecture ({other.model_name} {other.config}) "
                             f"than {ckpt.model_name} {ckpt.config}; only weights of one architecture average")
        for name, tensor in other.state_dict.items():
            if tensor.is_floating_point():
                state[name] += tensor.float() * share
    return state


def _average_arg(text: str) -> tuple[Path, float]:
    path, _, share = text.rpartition(":")
    try:
        if path:
            return Path(path), float(share)
    except ValueError:
        pass
    raise ValueError(f"--average-with {text}: expected PATH:SHARE, e.g. runs/other/model.pt:0.3")


def _targets(args: argparse.Namespace) -> Targets:
    """The checks the grid is held to: ``--min-psnr-gain`` and ``--colour-range``."""
    text = args.colour_range
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--colour-range {text}: expected LOW,HIGH, e.g. 0.7,1.15") from None
    if not 0 <= low < high:
        raise ValueError(f"--colour-range {text}: expected 0 <= LOW < HIGH")
    return dataclasses.replace(RELEASE4_TARGETS, psnr_over_gray_db=args.min_psnr_gain, colourfulness_ratio=(low, high))


def _check_choose_options(args: argparse.Namespace, axes: Sequence[GridAxis]) -> None:
    """ValueError for a grid axis that a fixed option also sets, or choosing options without a grid."""
    fixed = {"temperature": args.temperature, "rebalance": args.rebalance, "method": args.decode_method,
             "render-size": args.render_size, "min-render-size": args.min_render_size,
             "highlight-rolloff": args.highlight_rolloff}
    both = [axis.name for axis in axes if fixed[axis.name] is not None]
    if both:
        flag = "--decode-method" if both[0] == "method" else f"--{both[0]}"
        raise ValueError(f"{flag} and --choose {both[0]}=... both set it: give one")
    if not axes and (args.choose_on or args.choose_val_split is not None or args.choice_card or args.judge_model
                     or args.judge_classes):
        raise ValueError("--choose-on, --choose-val-split, --choice-card and the judge's options need a grid: "
                         "--choose AXIS=V1,V2,...")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools promote", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="a training run's model.pt")
    p.add_argument("-o", "--output", required=True,
                   help="where the shippable checkpoint goes: a .pt path, or s3://bucket/prefix/NAME.pt in a model "
                   "store")
    p.add_argument("--decode-method", choices=("mode", "mean", "annealed_mean"), help="default: keep the checkpoint's")
    p.add_argument("--temperature", type=float, help="annealed-mean temperature (default: keep the checkpoint's)")
    p.add_argument("--rebalance", type=float, help="decode-time class rebalancing strength (0 = off; default: keep "
                   "the checkpoint's); needs the training data's ab prior, recorded by tools.train or --ab-prior-from")
    p.add_argument("--ab-prior-from", action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="measure the ab prior from these colour photos (the model's training data) and record it; "
                   "for checkpoints trained before the prior was recorded")
    p.add_argument("--render-size", type=int, help="the render size the decoding was chosen at; colorizing with this "
                   "model uses it unless told otherwise (default: keep the checkpoint's)")
    p.add_argument("--min-render-size", type=int, help="enlarge photos whose long side is under this before the "
                   "network sees them (0: never; default: keep the checkpoint's)")
    p.add_argument("--highlight-rolloff", metavar="START,END,KEPT",
                   help="roll chroma off towards white: full up to lightness START, KEPT of it from END (e.g. "
                        "80,95,0.4; models.color.HighlightRolloff), or off; default: keep the checkpoint's")
    p.add_argument("--evaluation", type=Path, help="an `evaluate --json` report to attach to the provenance")
    p.add_argument("--average-with", action="append", default=[], metavar="PATH:SHARE",
                   help="average the weights with another checkpoint of the same architecture, SHARE of its weights "
                   "(repeatable; the checkpoint keeps the rest); recorded in the provenance")
    p.add_argument("--fp32", action="store_true", help="store float32 weights instead of fp16")
    choose = p.add_argument_group(
        "choosing the decoding on held-out photos",
        "score a grid of decodings on held-out photos and ship the one the campaign's rule picks: the most checks "
        "met on each set (PSNR gain over gray at least --min-psnr-gain, colourfulness within --colour-range of the "
        "truth's), then the highest mean PSNR gain")
    choose.add_argument("--choose", action="append", default=[], metavar="AXIS=V1,V2,...",
                        help="values to try for one setting: temperature, rebalance, method, render-size, "
                        "min-render-size or highlight-rolloff (START/END/KEPT or off) (repeatable; the grid is every "
                        "combination)")
    choose.add_argument("--choose-on", action="append", default=[], metavar="NAME=PATH",
                        help="photos to choose on, a folder, .zip or s3:// prefix (repeatable; default: the run's "
                        "own training sources at its --val-split)")
    choose.add_argument("--choose-val-split", type=float, metavar="F",
                        help="score only this held-out fraction (default: the run's --val-split for its own "
                        "sources, every photo of a --choose-on set)")
    choose.add_argument("--colour-range", default="{:g},{:g}".format(*RELEASE4_TARGETS.colourfulness_ratio),
                        metavar="LOW,HIGH", help="the colour check: colourfulness as a share of the truth's "
                        "(default: %(default)s, release 4's target)")
    choose.add_argument("--min-psnr-gain", type=float, default=RELEASE4_TARGETS.psnr_over_gray_db, metavar="DB",
                        help="the PSNR check: dB over the gray image (default: %(default)s, release 4's target)")
    choose.add_argument("--choice-card", type=Path, metavar="DIR",
                        help="keep the grid's scorecard (JSON, markdown, contact sheets) in this folder")
    choose.add_argument("--judge-model", type=Path, metavar="DIR",
                        help="report the ImageNet judge's top-1 beside the figures (not part of the rule): the folder "
                        "of its .tflite, e.g. ../shared/data/eval/judge; needs --judge-classes for photos filed in "
                        "class folders")
    choose.add_argument("--judge-classes", metavar="CSV", help="wnid -> judge_index table for sources filed in "
                        "<wnid>/ folders (Tiny-ImageNet's training archive), as tools scorecard takes it")
    choose.add_argument("--engine", default="torch", help="engine that scores the grid: torch (default) or "
                        "onnxruntime (exports every decoding to ONNX first)")
    choose.add_argument("--device", default="auto", help="auto | cpu | cuda")
    choose.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    output = args.output
    choice = None
    with input_errors_exit(p, OSError, ValueError, KeyError):
        if parse_uri(output)[0] == "s3" and not output.endswith(".pt"):
            raise ValueError(f"{output}: a published checkpoint is an object named NAME.pt (s3://bucket/prefix/NAME.pt)")
        axes = [GridAxis.parse(text) for text in args.choose]
        _check_choose_options(args, axes)
        settings = Settings.from_env()  # only S3 paths need them; read here, passed down
        with Storage(settings) as storage:
            ckpt = load_checkpoint(args.checkpoint)
            current = DecodeOptions(**ckpt.decode)
            decode = dataclasses.replace(  # whatever else the checkpoint's decoding records is kept
                current,
                method=args.decode_method or current.method,
                temperature=current.temperature if args.temperature is None else args.temperature,
                rebalance=current.rebalance if args.rebalance is None else args.rebalance,
                ab_prior=measure_ab_prior(args.ab_prior_from) if args.ab_prior_from else current.ab_prior,
            )
            evaluation = json.loads(args.evaluation.read_text()) if args.evaluation else None
            rest = {"evaluation": evaluation, "half": not args.fp32, "storage": storage,
                    "render_size": args.render_size, "min_render_size": args.min_render_size,
                    "average_with": [_average_arg(text) for text in args.average_with],
                    "highlight_rolloff": HighlightRolloff.parse(args.highlight_rolloff)
                    if args.highlight_rolloff else None}
            if axes:
                sets = held_out_sets(ckpt.provenance, args.choose_on, args.choose_val_split)
                options = ScorecardOptions(engine_kind=args.engine, device=args.device, precision=args.precision,
                                           judge_classes=args.judge_classes)
                decodings = grid(axes)
                digest, choice = promote_choosing(ckpt, output, decodings, sets, decode, options,
                                                  args.choice_card, _targets(args), judge_dir=args.judge_model,
                                                  **rest)
                decode = decodings[choice.chosen].apply(decode)
            else:
                digest = promote(ckpt, output, decode, **rest)
    if choice is not None:
        print(choice.table())
        misses = f"; it misses {'; '.join(choice.misses())}" if choice.misses() else ""
        print(f"\nchosen: {choice.decoding_label}, {choice.rows[choice.chosen]['checks_met']} of {choice.checks} "
              f"checks{misses} ({choice.engine}; every figure is in the checkpoint's provenance, decoding_choice)")
    name = PurePosixPath(output).stem if is_model_name(PurePosixPath(output).stem) else None
    log.info("wrote %s (weights sha256 %s, decode %s)%s", output, digest[:12], decode_tag(decode),
             f"; in a model store it is model={name}" if name else "")
    return 0
