"""An independent ImageNet judge: does a colorized photo still look like what it shows?

The judge is the MobileNetV2 int8 TFLite classifier in ``../shared/data/eval/judge`` (1001 labels, index 0
is background), run with the PyPI package ``ai-edge-litert`` (the ``experiments`` extra). It is not part
of Tinct and never saw our training: on colour ImageNet photos it scores about 83% top-1 and on the same
photos in gray about 66%, so a colorizer that restores the colours a class is recognised by moves the
gray figure up.

Photos are scored where their ImageNet class is known: a folder of class folders, each folder named
either after an ImageNet label (its first synonym, e.g. ``daisy``) or after one of the clothing
dataset's classes, which ``FOLDER_TO_IMAGENET`` maps to the ImageNet labels that count as right (ImageNet
has no "pants", but "jean" is a correct answer for them). A hit is any accepted label in the top 1 or
top 5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tools.datasets import IMAGE_SUFFIXES

INPUT_SIDE = 224
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
        top1 = top5 = 0
        for rgb, ok in zip(images, accepted, strict=True):
            best = self.top5(rgb)
            top1 += int(best[0] in ok)
            top5 += int(bool(ok.intersection(best.tolist())))
        n = max(1, len(images))
        return {"top1": top1 / n, "top5": top5 / n, "images": len(images)}


def _prepare(rgb: np.ndarray) -> np.ndarray:
    """MobileNet's evaluation crop: short side to 256, centre 224x224, uint8 (the model quantizes itself)."""
    im = Image.fromarray(rgb)
    scale = 256 / min(im.size)
    im = im.resize((max(INPUT_SIDE, round(im.width * scale)), max(INPUT_SIDE, round(im.height * scale))),
                   Image.BICUBIC)
    left, top = (im.width - INPUT_SIDE) // 2, (im.height - INPUT_SIDE) // 2
    return np.asarray(im.crop((left, top, left + INPUT_SIDE, top + INPUT_SIDE)), dtype=np.uint8)


def labelled_photos(judge: ImageNetJudge, root: str | Path) -> list[LabelledPhoto]:
    """Every photo under ``root/<class>/`` whose class the judge can name; other folders are left out."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of class folders")
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
