"""``python -m tools experiments``: rerun the seed papers' comparisons from the shared data.

Two parts, each writing ``<out>/<part>.json`` (every figure, the settings, the time taken) and
``<out>/<part>.md`` (its table); ``docs/experiments.md`` discusses the committed results:

* ``cifar``: the CS230 comparison on CIFAR-10 judged by a classifier (``tools.experiments_cifar``);
* ``natural``: architectures and heads trained on the shared colour photos and scored on BSDS500 val with
  ``tools.evaluate`` (``tools.experiments_natural``).

``--preset`` sets the scale: ``smoke`` runs in seconds on tiny inputs (CI), ``standard`` is what the committed
tables used (about an hour per part on a 2-core CPU), ``full`` trains long enough to be worth a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from tools import experiments_cifar, experiments_natural
from tools.experiments_cifar import CifarSettings
from tools.experiments_natural import NaturalSettings
from tools.runtime import write_json

log = logging.getLogger(__name__)

PRESETS: dict[str, tuple[CifarSettings, NaturalSettings]] = {
    "smoke": (
        CifarSettings(judge_epochs=2, judge_width=8, colorizer_steps=6, transfer_steps=2, batch_size=16),
        NaturalSettings(steps=3, batch_size=2, crop=64, render_size=64, eval_limit=None),
    ),
    "standard": (
        CifarSettings(judge_epochs=10, colorizer_steps=3000, transfer_steps=600),
        NaturalSettings(),
    ),
    "full": (
        CifarSettings(judge_epochs=40, judge_width=64, colorizer_steps=30_000, transfer_steps=20_000),
        NaturalSettings(steps=20_000, batch_size=32, crop=224),
    ),
}
PARTS = ("cifar", "natural")
SHARED = Path("../shared/data")


def write_part(out: Path, part: str, result: dict, table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result = result | {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(out / f"{part}.json", result)
    (out / f"{part}.md").write_text(table + "\n")


TABLES = {"cifar": experiments_cifar.cifar_table, "natural": experiments_natural.natural_table}


def rewrite_tables(out: Path, parts: tuple[str, ...]) -> int:
    for part in parts:
        source = out / f"{part}.json"
        if not source.is_file():
            raise SystemExit(f"experiments: {source}: no results to tabulate (run the part first)")
        table = TABLES[part](json.loads(source.read_text()))
        (out / f"{part}.md").write_text(table + "\n")
        print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools experiments", description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=(*PARTS, "all"), default="all")
    p.add_argument("--preset", choices=tuple(PRESETS), default="standard")
    p.add_argument("--cifar", default=str(SHARED / "train/cifar10.zip"), help="CIFAR-10 JPEG zip")
    p.add_argument("--train", action="append", default=None, metavar="PATH[:WEIGHT]",
                   help="colour photos for the natural part (default: flowers and BSDS500 train/test)")
    p.add_argument("--eval", default=str(SHARED / "eval/bsds500_val"), help="scored photos for the natural part")
    p.add_argument("--judge-data", default=str(SHARED / "eval/tiny_imagenet_val"),
                   help="photos of known ImageNet classes for the ImageNet judge (natural part): a folder with a "
                   "labels.csv, or of class folders")
    p.add_argument("--judge-model", default=str(SHARED / "eval/judge"), help="folder with the judge's .tflite")
    p.add_argument("--out", type=Path, default=Path("docs/experiments"), help="results: JSON, tables, contact sheet")
    p.add_argument("--work-dir", type=Path, default=Path("runs/experiments"),
                   help="trained models and the judge, kept for reruns (not results: never commit them)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--rows", help="natural part: only these rows (comma-separated keys: "
                   f"{', '.join(s.key for s in experiments_natural.SPECS)})")
    p.add_argument("--train-only", action="store_true",
                   help="natural part: train the rows and stop (a later run reuses them and scores everything)")
    p.add_argument("--tables-only", action="store_true",
                   help="train nothing: rewrite each part's .md table from its .json results in --out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cifar_settings, natural_settings = PRESETS[args.preset]
    parts = PARTS if args.part == "all" else (args.part,)
    if args.tables_only:
        return rewrite_tables(args.out, parts)
    try:
        args.out.mkdir(parents=True, exist_ok=True)  # an --out that cannot be written: said now, not after training
    except OSError as exc:
        p.error(f"--out {args.out}: {exc.strerror}")
    try:
        if "cifar" in parts:
            result = experiments_cifar.run_cifar(args.cifar, cifar_settings, args.work_dir / "cifar")
            result |= {"preset": args.preset}
            write_part(args.out, "cifar", result, experiments_cifar.cifar_table(result))
            print(experiments_cifar.cifar_table(result))
        if "natural" in parts:
            train = args.train or [str(SHARED / "train/flowers"), str(SHARED / "train/bsds500/train:4"),
                                   str(SHARED / "train/bsds500/test:4")]
            specs = experiments_natural.SPECS
            if args.rows:
                wanted = set(args.rows.split(","))
                unknown = wanted - {s.key for s in specs}
                if unknown:
                    raise ValueError(f"--rows: unknown rows {', '.join(sorted(unknown))}")
                specs = tuple(s for s in specs if s.key in wanted)
            result = experiments_natural.run_natural(train, args.eval, natural_settings, args.out,
                                                     judge_data=args.judge_data, judge_model=args.judge_model,
                                                     specs=specs, train_only=args.train_only,
                                                     work_dir=args.work_dir / "natural")
            if args.train_only:
                print("trained: " + ", ".join(result["trained"]))
                return 0
            result |= {"preset": args.preset, "settings": dataclasses.asdict(natural_settings)}
            write_part(args.out, "natural", result, experiments_natural.natural_table(result))
            print(experiments_natural.natural_table(result))
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"experiments: {exc}") from None
    return 0
