"""Training data: colour photos from folders, zip files or S3 prefixes, held in memory, augmented per sample.

Colour photos are decoded once and kept at a modest size (the short side a little above the crop
size), because a CPU-bound training run on a few thousand photos spends more time decoding JPEGs
than computing gradients otherwise. Augmentation (flips, random zoom, shear, crop) runs on the
cached pixels; the Lab conversion runs batched in torch through ``models.color``.

An ``s3://bucket/prefix/`` source is listed and read through ``worker.storage`` (the endpoint and
credentials of the ``Storage`` the caller passes), one object at a time, straight into memory: an
archive fine-tunes on its own colour material where it already keeps it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from models.color import rgb_to_lab
from worker.errors import BadInputError, one_line
from worker.storage import MB, Storage, normalize_uri

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".jpf", ".jpx", ".j2k", ".j2c",
                  ".jpc"}
# Larger objects under an S3 prefix are skipped, not read into memory: training keeps a ~200 px copy of each.
MAX_PHOTO_BYTES = 512 * MB


class DataError(ValueError):
    """A training source that cannot be used (missing, empty, no colour photos): one line naming the source."""


@dataclass
class Augment:
    crop: int = 160
    zoom: tuple[float, float] = (1.0, 1.6)  # >1 zooms in (crops a smaller region)
    shear: float = 0.15
    hflip: bool = True
    # A photo whose short side is under ``min_object_side`` pixels is enlarged so that it covers at least that
    # many crop pixels: a 64 px Tiny-ImageNet photo then teaches its object at about the size a 224 px render
    # shows a whole photo's subject, instead of as a thumbnail. 0 leaves photos at the crop's own scale.
    min_object_side: int = 0


SPLITS = ("all", "train", "val")


def in_holdout(name: str, holdout: float) -> bool:
    """Whether the photo called ``name`` (its path inside its source) belongs to the validation split."""
    if holdout <= 0:
        return False
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < holdout


@dataclass
class SourceSpec:
    """``path[:weight]``: a folder, .zip or ``s3://bucket/prefix/`` of colour photos, optionally oversampled
    ``weight`` times. An S3 source stays a string (``Path`` would fold its ``//``); a prefix whose name really ends
    in ``:<number>`` is written with its trailing slash (``s3://b/scans:2/``)."""

    path: Path | str
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        head, sep, tail = text.rpartition(":")
        if sep and tail.replace(".", "", 1).isdigit():
            text, weight = head, float(tail)
        else:
            weight = 1.0
        return cls(text if is_s3_uri(text) else Path(text), weight)


def is_s3_uri(source: Path | str) -> bool:
    return isinstance(source, str) and source[:5].lower() == "s3://"


def iter_image_bytes(source: Path | str, storage: Storage | None = None) -> Iterator[tuple[str, bytes]]:
    """``(name, encoded bytes)`` for every image in a folder (recursive), .zip or S3 prefix, in name order.
    ``relative_name(source, name)`` is the name inside the source.

    A missing folder is FileNotFoundError and a file that is not a zip a :class:`DataError`; a zip member that cannot
    be read is skipped with a warning. S3 prefixes need ``storage``; a missing bucket, refused credentials or
    an unreachable store raise the storage's own one-line errors, and an empty prefix is a :class:`DataError`.
    """
    if is_s3_uri(source):
        yield from _iter_s3_images(str(source), storage)
        return
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".zip":
        try:
            archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{source}: not a readable .zip ({one_line(exc)})") from exc
        with archive:
            for name in sorted(archive.namelist()):
                if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                try:
                    data = archive.read(name)
                except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, zlib.error) as exc:
                    # one damaged member is one photo fewer, as an undecodable photo is
                    log.warning("%s!%s: skipped, not readable from the zip (%s)", source, name, one_line(exc))
                    continue
                yield f"{source}!{name}", data
    elif source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                yield str(path), path.read_bytes()
    else:
        raise FileNotFoundError(f"{source}: not a folder or a .zip of images (nor an s3://bucket/prefix/)")


def relative_name(source: Path | str, name: str) -> str:
    """The part of a name from :func:`iter_image_bytes` below its source (zip member, path in the folder, key below
    the prefix): what the validation split hashes, the same wherever the data lies."""
    if is_s3_uri(source):
        prefix = normalize_uri(str(source))
        return name[len(prefix):].lstrip("/") if name.startswith(prefix) else name
    _, bang, member = name.partition("!")
    if bang:
        return member
    try:
        return Path(name).relative_to(source).as_posix()
    except ValueError:
        return name


def _iter_s3_images(uri: str, storage: Storage | None) -> Iterator[tuple[str, bytes]]:
    if storage is None:
        raise DataError(f"{uri}: an S3 source needs object storage settings (TINCT_S3_*)")
    listed = [info for info in storage.list(uri) if PurePosixPath(info.uri).suffix.lower() in IMAGE_SUFFIXES]
    if not listed:
        raise DataError(f"{normalize_uri(uri)}: no images under this prefix")
    for info in listed:
        if info.size > MAX_PHOTO_BYTES:
            log.warning("%s: skipped, %d bytes is over the %d MB read into memory", info.uri, info.size,
                        MAX_PHOTO_BYTES // MB)
            continue
        try:
            yield info.uri, storage.get_bytes(info.uri, max_bytes=MAX_PHOTO_BYTES)
        except BadInputError as exc:  # deleted since the listing: one photo fewer, not a failed run
            log.warning("%s", exc)


def _decode_rgb(name: str, data: bytes, short_side: int) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            scale = short_side / min(im.size)
            if scale < 1:
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        log.warning("%s: skipped, not a readable image (%s)", name, exc)
        return None


class PhotoBank:
    """All training photos, decoded once into memory (uint8 RGB). ``storage`` reads ``s3://`` sources.

    ``split`` picks the photos of each source: ``all``, ``train`` (those outside the validation split of
    ``holdout``, see :func:`in_holdout`) or ``val`` (those inside it).

    Every source must contribute at least one colour photo: a folder of gray scans or an empty prefix given by
    mistake is a :class:`DataError` naming it, not a run that silently trains on the other sources only.
    """

    def __init__(self, sources: list[SourceSpec], short_side: int, min_chroma: float = 2.0,
                 storage: Storage | None = None, split: str = "all", holdout: float = 0.0) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        if split != "all" and not 0 < holdout < 1:
            raise ValueError(f"a {split} split needs a holdout fraction between 0 and 1, not {holdout}")
        self.images: list[np.ndarray] = []
        self.sampling_weights: list[float] = []
        self.names: list[str] = []
        self.source_counts: list[tuple[str, int]] = []
        skipped_gray = 0
        for spec in sources:
            count = seen = gray = 0
            for name, data in iter_image_bytes(spec.path, storage):
                if split != "all" and in_holdout(relative_name(spec.path, name), holdout) != (split == "val"):
                    continue
                seen += 1
                rgb = _decode_rgb(name, data, short_side)
                if rgb is None or min(rgb.shape[:2]) < 16:
                    continue
                if _mean_chroma(rgb) < min_chroma:  # gray photos teach the network nothing about colour
                    gray += 1
                    continue
                self.images.append(rgb)
                self.sampling_weights.append(spec.weight)
                self.names.append(name)
                count += 1
            if count == 0:
                raise DataError(f"{_shown(spec.path)}: no usable colour photos ({seen} images: {gray} gray, "
                                f"{seen - gray} unreadable or under 16 px)")
            skipped_gray += gray
            self.source_counts.append((_shown(spec.path), count))
            log.info("%s: %d photos (weight %.1f%s)", _shown(spec.path), count, spec.weight,
                     "" if split == "all" else f", {split} split")
        if not self.images:
            raise DataError("no training sources given")
        log.info("photo bank: %d photos, %d gray ones skipped", len(self.images), skipped_gray)

    @classmethod
    def from_arrays(cls, images: list[np.ndarray], source: str = "in memory") -> PhotoBank:
        """A bank of photos already in memory (uint8 RGB), each sampled with weight 1: for benches and tests."""
        bank = cls.__new__(cls)
        bank.images = list(images)
        bank.sampling_weights = [1.0] * len(bank.images)
        bank.names = [f"{source}/{i}" for i in range(len(bank.images))]
        bank.source_counts = [(source, len(bank.images))]
        return bank

    def __len__(self) -> int:
        return len(self.images)

    def describe(self) -> dict:
        """For provenance: how many photos in all, and how many each source gave."""
        return {"photos": len(self.images),
                "sources": [{"source": source, "photos": count} for source, count in self.source_counts]}


def _shown(source: Path | str) -> str:
    return normalize_uri(source) if is_s3_uri(source) else os.fspath(source)


def _mean_chroma(rgb: np.ndarray) -> float:
    small = cv2.resize(rgb, (32, 32), interpolation=cv2.INTER_AREA)
    lab = rgb_to_lab(torch.from_numpy(small).permute(2, 0, 1).float() / 255.0)
    return float(lab[1:].norm(dim=0).mean())


def augment_crop(rgb: np.ndarray, aug: Augment, rng: np.random.Generator) -> np.ndarray:
    """One random zoom + shear + flip + crop of ``aug.crop`` pixels square, as a single affine warp."""
    h, w = rgb.shape[:2]
    base = max(aug.crop, aug.min_object_side) / min(h, w)  # the short side covers the crop (or the object size)
    scale = base * rng.uniform(*aug.zoom)
    shear = rng.uniform(-aug.shear, aug.shear)
    flip = -1.0 if aug.hflip and rng.random() < 0.5 else 1.0
    # Maps source pixels to crop pixels: x' = s*flip*x + s*shear*y + tx, y' = s*y + ty.
    m = np.array([[scale * flip, scale * shear, 0.0], [0.0, scale, 0.0]])
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], dtype=np.float64) @ m.T
    lo, hi = corners.min(0), corners.max(0)
    # Choose a crop window inside the warped image (or centred when the warp is smaller).
    tx = -lo[0] - rng.uniform(0, max(hi[0] - lo[0] - aug.crop, 0))
    ty = -lo[1] - rng.uniform(0, max(hi[1] - lo[1] - aug.crop, 0))
    m[:, 2] = (tx, ty)
    return cv2.warpAffine(rgb, m, (aug.crop, aug.crop), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


class BatchSampler:
    """Endless random batches of Lab crops: yields (L (B,1,S,S), ab (B,2,S,S)) float32 tensors."""

    def __init__(self, bank: PhotoBank, batch_size: int, aug: Augment, seed: int | Sequence[int] = 0) -> None:
        self.bank = bank
        self.batch_size = batch_size
        self.aug = aug
        self.rng = np.random.default_rng(seed)
        p = np.asarray(bank.sampling_weights, dtype=np.float64)
        self.p = p / p.sum()

    def __iter__(self) -> BatchSampler:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.rng.choice(len(self.bank), size=self.batch_size, p=self.p)
        crops = np.stack([augment_crop(self.bank.images[i], self.aug, self.rng) for i in idx])
        rgb = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
        lab = rgb_to_lab(rgb)
        return lab[:, :1].contiguous(), lab[:, 1:].contiguous()

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class SamplerStream(torch.utils.data.IterableDataset):
    """Batches from worker processes: each ``torch.utils.data.DataLoader`` worker runs its own
    :class:`BatchSampler` over a copy of the bank from its own seed ``(seed, worker id)``. For a GPU, where one
    process sampling photos cannot keep up with the network."""

    def __init__(self, bank: PhotoBank, batch_size: int, aug: Augment, seed: Sequence[int]) -> None:
        self.bank, self.batch_size, self.aug, self.seed = bank, batch_size, aug, list(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        worker = torch.utils.data.get_worker_info()
        return BatchSampler(self.bank, self.batch_size, self.aug, seed=[*self.seed, worker.id if worker else 0])
