"""An independent ImageNet judge: does a colorized photo still look like what it shows?

The judge is the MobileNetV2 int8 TFLite classifier in ``../shared/data/eval/judge`` (1001 labels, index 0
is background), run with the PyPI package ``ai-edge-litert`` (the ``experiments`` extra). It is not part
of Tinct and never saw our training: on colour ImageNet photos it scores about 83% top-1 and on the same
photos in gray about 66%, so a colorizer that restores the colours a class is recognised by moves the
gray figure up.

Photos are scored where their ImageNet class is known: either a folder with a ``labels.csv`` (columns
``file`` and ``judge_index``, the label's index in the judge's 1001, as in ``eval/tiny_imagenet_val``), or a
folder of class folders, each folder named either after an ImageNet label (its first synonym, e.g. ``daisy``)
or after one of the clothing dataset's classes, which ``FOLDER_TO_IMAGENET`` maps to the ImageNet labels that
count as right (ImageNet has no "pants", but "jean" is a correct answer for them). A hit is any accepted label
in the top 1 or top 5.

``judge_models`` scores the gray input, the truth and each model's colorization of the same photos: the rows a
table needs (``tools.experiments_natural``). ``JudgeTally`` scores such rows one photo at a time, beside a loop that
colorizes the photos anyway (``tools.scorecard`` through ``evaluate_colorizers(on_photo=...)``).
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.color import merge_l_ab
from models.colorizer import Colorizer
from models.engines import create_engine
from tools.datasets import IMAGE_SUFFIXES
from tools.evaluate import GRAY_LABEL, TRUTH_LABEL, gray_input

log = logging.getLogger(__name__)

INPUT_SIDE = 224
CROP_FROM_SIDE = 256  # photos smaller than this are judged whole (``_prepare``)
LABELS_CSV = "labels.csv"  # file,judge_index,...: a flat folder of photos whose judge label is known
# clothing-dataset-small's classes -> the ImageNet labels (first synonym) that name them correctly.
FOLDER_TO_IMAGENET: dict[str, tuple[str, ...]] = {
    "dress": ("gown", "overskirt", "hoopskirt", "miniskirt", "abaya", "kimono", "sarong"),
    "hat": ("cowboy hat", "sombrero", "bonnet", "shower cap", "bathing cap"),
    "longsleeve": ("jersey", "sweatshirt", "cardigan"),
    "outwear": ("trench coat", "fur coat", "lab coat", "cardigan", "poncho", "bulletproof vest", "sweatshirt",
                "military uniform"),
    "pants": ("jean", "suit"),
    "shirt": ("jersey", "sweatshirt", "cardigan", "suit"),
    "shoes": ("running shoe", "Loafer", "sandal", "clog", "cowboy boot"),
    "shorts": ("swimming trunks", "jean", "miniskirt"),
    "skirt": ("miniskirt", "overskirt", "hoopskirt", "sarong"),
    "t-shirt": ("jersey", "sweatshirt"),
}


@dataclass(frozen=True)
class LabelledPhoto:
    name: str
    rgb: np.ndarray  # (H, W, 3) uint8
    accepted: frozenset[int]  # ImageNet label indices that count as right


class ImageNetJudge:
    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        tflite = sorted(model_dir.glob("*.tflite"))
        labels = sorted(model_dir.glob("*labels*.txt"))
        if not tflite or not labels:
            raise FileNotFoundError(f"{model_dir}: needs a .tflite classifier and its labels .txt")
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise RuntimeError("the ImageNet judge needs ai-edge-litert (pip install .[experiments])") from exc
        self.labels = [line.strip() for line in labels[0].read_text().splitlines()]
        self._interpreter = Interpreter(model_path=str(tflite[0]), num_threads=1)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._by_name = {label.split(",")[0].strip(): i for i, label in enumerate(self.labels)}

    def label_indices(self, names: Sequence[str]) -> frozenset[int]:
        missing = [n for n in names if n not in self._by_name]
        if missing:
            raise ValueError(f"not ImageNet labels of this judge: {', '.join(missing)}")
        return frozenset(self._by_name[n] for n in names)

    def accepted_for_folder(self, folder: str) -> frozenset[int] | None:
        if folder in FOLDER_TO_IMAGENET:
            return self.label_indices(FOLDER_TO_IMAGENET[folder])
        return frozenset({self._by_name[folder]}) if folder in self._by_name else None

    def top5(self, rgb: np.ndarray) -> np.ndarray:
        """The five most likely label indices for one photo, best first."""
        self._interpreter.set_tensor(self._input["index"], _prepare(rgb)[None])
        self._interpreter.invoke()
        scores = self._interpreter.get_tensor(self._output["index"])[0].astype(np.float32)
        return np.argsort(-scores, kind="stable")[:5]

    def score(self, images: Sequence[np.ndarray], accepted: Sequence[frozenset[int]]) -> dict[str, float]:
        tally = JudgeTally(self, ["images"])
        for rgb, ok in zip(images, accepted, strict=True):
            tally.add([rgb], ok)
        return tally.scores()["images"]


class JudgeTally:
    """Top-1/top-5 of each row (``rows``: labels in the order ``add`` is given pictures), one photo at a time."""

    def __init__(self, judge: ImageNetJudge, rows: Sequence[str]) -> None:
        self.judge = judge
        self._top1 = dict.fromkeys(rows, 0)
        self._top5 = dict.fromkeys(rows, 0)
        self.images = 0
        self.seconds = 0.0

    def add(self, pictures: Sequence[np.ndarray], accepted: frozenset[int]) -> None:
        """One photo's rows, sRGB in [0, 1] or uint8, in the order of ``rows``."""
        started = time.perf_counter()
        for row, rgb in zip(self._top1, pictures, strict=True):
            best = self.judge.top5(rgb if rgb.dtype == np.uint8 else as_uint8(rgb))
            self._top1[row] += int(best[0] in accepted)
            self._top5[row] += int(bool(accepted.intersection(best.tolist())))
        self.images += 1
        self.seconds += time.perf_counter() - started

    def scores(self) -> dict[str, dict[str, float]]:
        n = max(1, self.images)
        return {row: {"top1": self._top1[row] / n, "top5": self._top5[row] / n, "images": self.images}
                for row in self._top1}


def _prepare(rgb: np.ndarray) -> np.ndarray:
    """The judge's 224x224 uint8 input (the model quantizes itself).

    A photo at least ``CROP_FROM_SIDE`` on its short side gets MobileNet's evaluation crop: short side to 256,
    centre 224x224. A smaller photo (Tiny-ImageNet's 64 px) is enlarged whole to 224x224, as the data README
    measured the judge's gray and colour baselines: the evaluation crop would cut an eighth off each side of a
    thumbnail whose object fills it, and it costs the truth 3.8 and the gray 2.1 points of top-1 on
    tiny_imagenet_val (15.9% / 7.5% cropped against 19.7% / 9.6% whole, bicubic both)."""
    im = Image.fromarray(rgb)
    if min(im.size) < CROP_FROM_SIDE:
        return np.asarray(im.resize((INPUT_SIDE, INPUT_SIDE), Image.BICUBIC), dtype=np.uint8)
    scale = CROP_FROM_SIDE / min(im.size)
    im = im.resize((max(INPUT_SIDE, round(im.width * scale)), max(INPUT_SIDE, round(im.height * scale))),
                   Image.BICUBIC)
    left, top = (im.width - INPUT_SIDE) // 2, (im.height - INPUT_SIDE) // 2
    return np.asarray(im.crop((left, top, left + INPUT_SIDE, top + INPUT_SIDE)), dtype=np.uint8)


def read_labels_csv(root: str | Path) -> dict[str, int]:
    """``root/labels.csv`` as {file name: judge label index}; an empty dict when the folder has none."""
    path = Path(root) / LABELS_CSV
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"file", "judge_index"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: needs the columns file and judge_index (missing {', '.join(sorted(missing))})")
        return {row["file"]: int(row["judge_index"]) for row in reader}


def read_class_table(path: str | Path) -> dict[str, int]:
    """{class folder name: judge label index} from a CSV with the columns wnid and judge_index (tiny_imagenet_val's
    ``labels.csv`` is one): how photos filed under ``<wnid>/`` folders, as Tiny-ImageNet's training archive files
    them, are judged. Only the table is read, no photo; a wnid given two indices is an error."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"wnid", "judge_index"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: needs the columns wnid and judge_index (missing {', '.join(sorted(missing))})")
        table: dict[str, int] = {}
        for row in reader:
            index = int(row["judge_index"])
            if table.setdefault(row["wnid"], index) != index:
                raise ValueError(f"{path}: {row['wnid']} is given judge indices {table[row['wnid']]} and {index}")
    return table


def labelled_photos(judge: ImageNetJudge, root: str | Path) -> list[LabelledPhoto]:
    """Every photo ``root/labels.csv`` names, or else every photo under ``root/<class>/`` whose class the judge can
    name (other folders are left out)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of class folders")
    labels = read_labels_csv(root)
    if labels:
        photos = []
        for name in sorted(labels):
            with Image.open(root / name) as im:
                photos.append(LabelledPhoto(name, np.asarray(im.convert("RGB")), frozenset({labels[name]})))
        return photos
    photos = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        accepted = judge.accepted_for_folder(folder.name)
        if accepted is None:
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(path) as im:
                    photos.append(LabelledPhoto(f"{folder.name}/{path.name}", np.asarray(im.convert("RGB")), accepted))
    if not photos:
        known = ", ".join(FOLDER_TO_IMAGENET)
        raise ValueError(f"{root}: no class folder the judge knows (ImageNet labels or {known})")
    return photos


def as_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def gray_rgb(L: np.ndarray) -> np.ndarray:
    """The gray baseline as a photo: L merged with ab = 0 through the same colour maths as every row."""
    rgb = merge_l_ab(torch.from_numpy(L)[None, None], torch.zeros(1, 2, *L.shape))[0].permute(1, 2, 0).numpy()
    return as_uint8(rgb)


def judge_models(judge: ImageNetJudge, photos: Sequence[LabelledPhoto], models: Sequence[tuple[str, str]],
                 render_size: int | None = None, engine_kind: str = "torch", device: str = "auto",
                 precision: str = "fp32", batch_size: int = 8) -> dict[str, dict[str, float]]:
    """Top-1/top-5 for the gray photos, each ``(label, model)``'s colorization of them, and the truth, keyed by row
    label (``GRAY_LABEL``, each model's label, ``TRUTH_LABEL``). Each model is loaded once, colorizes every photo
    ``batch_size`` at a time and is closed before the next is loaded."""
    accepted = [p.accepted for p in photos]
    Ls = [gray_input(p.rgb / 255.0) for p in photos]
    scores = {
        GRAY_LABEL: judge.score([gray_rgb(L) for L in Ls], accepted),
        TRUTH_LABEL: judge.score([p.rgb for p in photos], accepted),
    }
    for label, model in models:
        with create_engine(model=model, kind=engine_kind, device=device, precision=precision) as engine:
            colorizer = Colorizer(engine, render_size=render_size, batch_size=batch_size)
            rgbs = [as_uint8(rgb) for start in range(0, len(Ls), batch_size)
                    for rgb in colorizer.colorize(Ls[start:start + batch_size])]
        scores[label] = judge.score(rgbs, accepted)
        log.info("judge %s: %s", label, scores[label])
    return scores
