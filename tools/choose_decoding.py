"""Choosing a checkpoint's decoding on photos its training run held out (``tools promote --choose``).

A decoding (annealed-mean temperature, decode-time rebalancing, method, render sizes, highlight roll-off) costs
nothing to change and moves a model's colour more than most retraining does, so it is chosen, not guessed, and never
on the photos the model is then reported on (docs/protocol.md). This module does what the campaign and
docs/finetune.md did by hand: ``tools.promote`` writes each decoding of a grid as the checkpoint it would ship,
:func:`score_and_choose` scores them side by side with ``tools.scorecard`` on held-out photos (by default the
training sources' validation split, the photos ``tools train --val-split`` kept out) and applies the campaign's rule
(:func:`apply_rule`: the most release checks met, then the highest mean PSNR gain over gray). The figures that
decided travel in the shipped checkpoint's provenance (``decoding_choice``), with the muted photos' line beside
them: the split's stand-in for the films' plain scenes, which no training source measures.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from models.color import HighlightRolloff
from models.predictor import DecodeOptions
from tools.datasets import IMAGE_SUFFIXES, SourceSpec, in_holdout, is_s3_uri, relative_name
from tools.scorecard import (
    GRAY,
    RELEASE4_TARGETS,
    ModelSpec,
    PhotoSet,
    ScorecardOptions,
    Targets,
    muted_figures,
    run_scorecard,
)
from worker.errors import TinctError
from worker.storage import Storage, check_relative_key, normalize_uri

log = logging.getLogger(__name__)

DECODE_METHODS = ("mode", "mean", "annealed_mean")
# Under this many held-out photos a choice is warned about. On the scenes tune's 157 (docs/finetune.md) the chosen
# decoding's figures carried over to the development set within 0.07 dB and 0.06 of the colour ratio; a few dozen
# photos leave the grid's neighbours inside each other's noise.
FEW_PHOTOS = 50


def _temperature(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("a temperature is > 0")
    return value


def _rebalance(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("a rebalancing strength is >= 0 (0: off)")
    return value


def _method(text: str) -> str:
    if text not in DECODE_METHODS:
        raise ValueError(f"a method is one of {', '.join(DECODE_METHODS)}")
    return text


def _render_size(text: str) -> int:
    value = int(text)
    if value < 32:
        raise ValueError("a render size is at least 32")
    return value


def _min_render_size(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("a size small photos are enlarged to is >= 0 (0: never)")
    return value


def _highlight_rolloff(text: str) -> HighlightRolloff:
    # START/END/KEPT: the commas of promote's own --highlight-rolloff separate the grid's values here
    return HighlightRolloff.parse(text.replace("/", ","))


# What a grid may vary, and how each value is read: the decoding's own fields (DecodeOptions), and the rendering
# (tools.promote's keywords: what the network sees, and the roll-off after it), chosen with the decoding so far.
AXES: dict[str, Callable[[str], Any]] = {
    "temperature": _temperature, "rebalance": _rebalance, "method": _method, "render-size": _render_size,
    "min-render-size": _min_render_size, "highlight-rolloff": _highlight_rolloff,
}
DECODE_AXES = ("temperature", "rebalance", "method")
RENDER_AXES = {"render-size": "render_size", "min-render-size": "min_render_size",
               "highlight-rolloff": "highlight_rolloff"}


@dataclass(frozen=True)
class GridAxis:
    """``temperature=0.3,0.5,0.7``: one setting and the values a grid tries for it."""

    name: str
    values: tuple[Any, ...]

    @classmethod
    def parse(cls, text: str) -> GridAxis:
        name, sep, listed = text.partition("=")
        name = name.strip().replace("_", "-")
        if not sep or name not in AXES:
            raise ValueError(f"--choose {text}: expected AXIS=V1,V2,... with AXIS one of {', '.join(AXES)}")
        values = []
        for item in (v.strip() for v in listed.split(",")):
            if not item:
                continue
            try:
                value = AXES[name](item)
            except ValueError as exc:
                raise ValueError(f"--choose {text}: {item!r} is not a {name} ({exc})") from None
            if value not in values:
                values.append(value)
        if not values:
            raise ValueError(f"--choose {text}: no values to try")
        return cls(name, tuple(values))


@dataclass(frozen=True)
class Decoding:
    """One point of a grid: the value it sets for each axis (everything else is the base checkpoint's)."""

    settings: tuple[tuple[str, Any], ...]

    @property
    def label(self) -> str:
        return ", ".join(f"{name} {_shown(value)}" for name, value in self.settings)

    def apply(self, decode: DecodeOptions) -> DecodeOptions:
        """``decode`` with this point's decoding fields set (DecodeOptions' own checks apply: ValueError)."""
        return dataclasses.replace(decode, **{name: value for name, value in self.settings if name in DECODE_AXES})

    def rendering(self) -> dict[str, Any]:
        """This point's rendering (sizes, highlight roll-off), as ``tools.promote.promote``'s keyword arguments."""
        return {RENDER_AXES[name]: value for name, value in self.settings if name in RENDER_AXES}

    def to_dict(self) -> dict[str, Any]:
        return {name.replace("-", "_"): _shown(value) if isinstance(value, HighlightRolloff) else value
                for name, value in self.settings}


def _shown(value: Any) -> str:
    if isinstance(value, HighlightRolloff):
        return "off" if value.is_identity else f"{value.start:g}/{value.end:g}/{value.kept:g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def grid(axes: Sequence[GridAxis]) -> list[Decoding]:
    """Every combination of the axes' values, the first axis varying slowest (the order ties are broken in)."""
    names = [axis.name for axis in axes]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"--choose names {', '.join(repeated)} twice: list every value in one --choose")
    if not axes:
        raise ValueError("a grid needs at least one --choose AXIS=V1,V2,...")
    return [Decoding(tuple(zip(names, values, strict=True)))
            for values in itertools.product(*(axis.values for axis in axes))]


# --- where the grid is scored ----------------------------------------------------------------------------------


def _source_name(source: str, taken: set[str]) -> str:
    stem = PurePosixPath(source.rstrip("/")).name if is_s3_uri(source) else Path(source).name
    stem = Path(stem).stem if stem.lower().endswith(".zip") else stem
    name, n = stem or "photos", 2
    while name in taken:
        name, n = f"{stem}-{n}", n + 1
    taken.add(name)
    return name


def _same_source(a: str, b: str) -> bool:
    if is_s3_uri(a) or is_s3_uri(b):
        return is_s3_uri(a) and is_s3_uri(b) and normalize_uri(a).rstrip("/") == normalize_uri(b).rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def held_out_sets(provenance: dict[str, Any], extra: Sequence[str] = (), val_split: float | None = None
                  ) -> list[PhotoSet]:
    """The sets a checkpoint's decoding is chosen on, each a folder, .zip or ``s3://`` prefix with the fraction of it
    that training held out (0 scores every photo, for a collection the model never trained on): ``extra``
    (``NAME=PATH``; scored whole, or at ``val_split``) when given, else its training run's own sources at the run's
    validation split (``val_split``, if given, may be smaller, never larger: the larger split's extra photos were
    trained on). ValueError, one line, when there is nothing honest to choose on."""
    run_split = float(provenance.get("val_split") or 0.0)
    trained_on = [str(SourceSpec.parse(text).path) for text in provenance.get("data") or []]
    if val_split is not None and not 0 <= val_split < 1:
        raise ValueError(f"--choose-val-split {val_split:g}: a fraction in [0, 1)")
    if extra:
        sets = []
        for text in extra:
            photo_set = PhotoSet.parse(text, val_split or 0.0)
            if any(_same_source(photo_set.path, source) for source in trained_on) and not (
                    0 < photo_set.val_split <= run_split):
                fix = (f"choose on its held-out split, --choose-val-split {run_split:g}" if run_split > 0
                       else "choose on photos it did not train on")
                raise ValueError(f"--choose-on {text}: the run trained on these photos; {fix}")
            sets.append(photo_set)
        return sets
    if not trained_on:
        raise ValueError("the checkpoint records no training data: name the photos to choose on, --choose-on NAME=PATH")
    if run_split <= 0:
        raise ValueError("its training run held no photos out (tools train --val-split F), and choosing on photos "
                         "it trained on would flatter every decoding: name others with --choose-on NAME=PATH")
    split = run_split if val_split is None else val_split
    if not 0 < split <= run_split:
        raise ValueError(f"--choose-val-split {split:g}: the run held out {run_split:g}; a larger split holds photos "
                         "it trained on, and 0 holds all of them")
    taken: set[str] = set()
    return [PhotoSet(_source_name(source, taken), source, split) for source in trained_on]


def local_photo_sets(sets: Sequence[PhotoSet], storage: Storage | None, scratch: Path) -> list[PhotoSet]:
    """``sets`` as the scorecard reads them. A local folder or .zip is read where it lies (the set as it is); of an
    ``s3://`` prefix only the held-out photos are downloaded (into ``scratch/NAME/``, under the names the split
    hashes, so the scorecard's split keeps every one of them)."""
    photo_sets = []
    for s in sets:
        if not is_s3_uri(s.path):
            photo_sets.append(s)
            continue
        if storage is None:
            raise ValueError(f"{s.path}: choosing on S3 photos needs object storage settings (TINCT_S3_*)")
        folder, count = scratch / s.name, 0
        for info in storage.list(s.path):
            name = relative_name(s.path, info.uri)
            if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if s.val_split > 0 and not in_holdout(name, s.val_split):
                continue
            try:
                check_relative_key(name)
            except TinctError as exc:
                log.warning("%s: not scored (%s)", info.uri, exc)
                continue
            storage.download(info.uri, folder / name)
            count += 1
        if count == 0:
            held = f"in its {s.val_split:g} held-out split" if s.val_split > 0 else "under it"
            raise ValueError(f"{normalize_uri(s.path)}: no photos {held} to choose on")
        log.info("choosing on %d photos of %s", count, s.path)
        photo_sets.append(PhotoSet(s.name, str(folder), s.val_split))
    return photo_sets


# --- the rule --------------------------------------------------------------------------------------------------


@dataclass
class Choice:
    """A grid's figures on the held-out sets, the release checks each decoding meets there, and the one chosen."""

    rows: list[dict[str, Any]]  # per decoding, in grid order: label, settings, per-set figures and checks, mean, muted
    sets: list[dict[str, Any]]  # name, val_split, photos, gray PSNR, truth's colourfulness
    targets: Targets
    chosen: int
    engine: str = ""  # what scored them, e.g. "torch cpu bf16": figures compare only within one arithmetic

    @property
    def decoding_label(self) -> str:
        return self.rows[self.chosen]["label"]

    @property
    def checks(self) -> int:
        return 2 * len(self.sets)

    def misses(self) -> list[str]:
        """The checks the chosen decoding fails, in words (empty when it meets every one)."""
        low, high = self.targets.colourfulness_ratio
        out = []
        for name, f in self.rows[self.chosen]["sets"].items():
            if not f["psnr_check"]:
                out.append(f"{name} PSNR {f['psnr_gain']:+.2f} dB (at least +{self.targets.psnr_over_gray_db:g})")
            if not f["colour_check"]:
                out.append(f"{name} colour {f['colourfulness_ratio']:.3f} (within {low:g}-{high:g})")
        return out

    def record(self) -> dict[str, Any]:
        """What the shipped checkpoint carries (``provenance["decoding_choice"]``)."""
        return {
            "rule": "most release checks met on the held-out sets (each: PSNR gain over gray at least "
                    "psnr_over_gray_db, colourfulness within colourfulness_ratio of the truth's), then the highest "
                    "mean PSNR gain over the sets, then the earlier in the grid",
            "psnr_over_gray_db": self.targets.psnr_over_gray_db,
            "colourfulness_ratio": list(self.targets.colourfulness_ratio),
            "sets": self.sets, "grid": self.rows, "chosen": self.decoding_label, "engine": self.engine,
        }

    def table(self) -> str:
        """Markdown: one line per decoding, each set's PSNR gain / colour ratio, the checks, the mean, the muted."""
        names = [s["name"] for s in self.sets]
        judged = [s for s in self.sets if "judge_gray_top1" in s]
        lines = ["| decoding | " + " | ".join(f"{n} ({s['photos']}): PSNR vs gray / colour ratio"
                                              for n, s in zip(names, self.sets, strict=True))
                 + " | checks met | mean PSNR gain | muted photos: PSNR vs gray / colour ratio |"
                 + "".join(f" {s['name']}: judge (gray {100 * s['judge_gray_top1']:.1f}%) |" for s in judged),
                 "|---|" + "---|" * (len(names) + 3 + len(judged))]
        for i, row in enumerate(self.rows):
            cells = [f"**{row['label']}** (chosen)" if i == self.chosen else row["label"]]
            # three decimals for the ratio: the checks cut at the range's ends, and 0.698 must not read as 0.70
            cells += [f"{row['sets'][n]['psnr_gain']:+.2f} / {row['sets'][n]['colourfulness_ratio']:.3f}"
                      for n in names]
            cells += [f"{row['checks_met']} of {self.checks}", f"{row['mean_psnr_gain']:+.2f}"]
            muted = row.get("muted")
            cells.append(f"{muted['psnr_gain']:+.2f} / {muted['colourfulness_ratio']:.2f} ({muted['photos']})"
                         if muted else "-")
            cells += [f"{100 * row['sets'][s['name']]['judge_top1']:.1f}%" for s in judged]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def apply_rule(card: dict[str, Any], decodings: Sequence[Decoding], targets: Targets = RELEASE4_TARGETS) -> Choice:
    """The campaign's rule (docs/training.md) on a scorecard of ``decodings`` (labelled by their ``label``): count
    the release checks each meets on each set (PSNR at least ``targets.psnr_over_gray_db`` over gray, colourfulness
    within ``targets.colourfulness_ratio`` of the truth's); among those meeting the most, the highest PSNR gain
    averaged over the sets with equal weight (each source is its own kind of picture, and a large one does not
    outvote a small one); ties to the earlier in the grid."""
    low, high = targets.colourfulness_ratio
    labels = [d.label for d in decodings]
    muted = muted_figures(card["sets"], labels)
    sets = [{"name": s["name"], "val_split": s["val_split"], "photos": s["images"],
             "gray_psnr": s["rows"][GRAY]["psnr"], "truth_colourfulness": s["rows"]["truth"]["colourfulness"]}
            | ({"judge_gray_top1": s["judge"][GRAY]["top1"], "judge_truth_top1": s["judge"]["truth"]["top1"]}
               if "judge" in s else {})
            for s in card["sets"]]
    rows = []
    for d in decodings:
        per_set = {}
        for s in card["sets"]:
            gain = s["rows"][d.label]["psnr"] - s["rows"][GRAY]["psnr"]
            ratio = s["rows"][d.label]["colourfulness_ratio"]
            per_set[s["name"]] = {"psnr_gain": gain, "colourfulness_ratio": ratio,
                                  "psnr_check": gain >= targets.psnr_over_gray_db, "colour_check": low <= ratio <= high}
            if "judge" in s:  # reported beside the checks, as the campaign read it; not part of the rule
                per_set[s["name"]]["judge_top1"] = s["judge"][d.label]["top1"]
        mean_gain = float(sum(f["psnr_gain"] for f in per_set.values()) / len(per_set))
        rows.append({
            "label": d.label, "settings": d.to_dict(), "sets": per_set, "mean_psnr_gain": mean_gain,
            "checks_met": sum(f["psnr_check"] + f["colour_check"] for f in per_set.values()),
            "muted": ({"photos": muted["pooled"]["photos"], **muted["pooled"][d.label]} if muted else None),
        })

    def rank(i: int) -> tuple[int, float, int]:
        gain = rows[i]["mean_psnr_gain"]
        return rows[i]["checks_met"], gain if math.isfinite(gain) else -math.inf, -i

    return Choice(rows, sets, targets, max(range(len(rows)), key=rank))


def score_and_choose(candidates: Sequence[tuple[Decoding, Path]], photo_sets: Sequence[PhotoSet],
                     card_dir: Path, options: ScorecardOptions, targets: Targets = RELEASE4_TARGETS,
                     source: str = "", judge_dir: Path | None = None) -> Choice:
    """Score each candidate checkpoint (``source`` with a decoding written in) on ``photo_sets``, write the card to
    ``card_dir`` and apply the rule; a chosen decoding that misses checks is warned about, naming them. With
    ``judge_dir`` (and ``options.judge_classes`` for sources filed in class folders) the ImageNet judge's top-1 is
    reported beside the figures (``tools.scorecard``)."""
    # The card names the model each row decodes, not the scratch file it was scored from.
    models = [ModelSpec(decoding.label, str(path), f"{source}, {decoding.label}" if source else "")
              for decoding, path in candidates]
    log.info("scoring %d decodings on %s", len(models), ", ".join(s.name for s in photo_sets))
    card = run_scorecard(models, card_dir, eval_root=None, sets=(), extra_sets=photo_sets, video=False, bw=False,
                         options=options, judge_dir=judge_dir)
    photos = sum(s["images"] for s in card.data["sets"])
    if photos < FEW_PHOTOS:
        log.warning("choosing on %d held-out photos: differences between decodings may be noise at so few; hold "
                    "out more (tools train --val-split) or add --choose-on sets", photos)
    choice = apply_rule(card.data, [decoding for decoding, _ in candidates], targets)
    choice.engine = card.data["models"][0]["engine"]
    if choice.misses():
        log.warning("no decoding tried meets every check; the chosen one (%s) misses: %s", choice.decoding_label,
                    "; ".join(choice.misses()))
    return choice
