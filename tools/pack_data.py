"""``python -m tools pack-data``: a byte-budgeted copy of training sources, for a machine the data cannot reach.

A GPU lent for a few minutes receives only what travels with the checkout (docs/training.md: 64 MiB, the checkout
included), and the training sources are several times that. This packs each ``--data`` source into one zip of
``-o DIR`` that ``tools train --data DIR/<name>.zip`` reads like the original:

* **the same names**: every photo keeps its name inside its source (``tools.datasets.relative_name``), so the
  validation split is the same photos (``--val-split`` hashes the name) and a run on the pack is chosen and
  compared exactly as one on the originals (docs/protocol.md);
* **the whole validation split** of ``--val-split F`` is always carried (it is small, and the run's validation
  line needs it); training photos fill the rest of ``--budget-mb``, picked by a hash of the name that is
  independent of the split's, the same fraction from every source, so the data mix is kept;
* **no larger than training reads them**: a photo whose short side is over ``--short-side`` (the photo bank's
  side: ``max(1.15 x crop, --min-object-side)``, 128 for the campaign's recipe) is downscaled as the bank would
  and re-encoded in its own format; the others are copied byte for byte.

``--budget-mb room`` packs what is left of ``--travel-mib`` (the device's 64 MiB) beside the checkout that travels
with it: the files git tracks and the untracked ones it does not ignore, as they are in the working tree, measured
at pack time (a checkout grows between sessions; a carry over the limit is refused on the device, which wastes its
start). A number packs that many MiB, and the line it prints says what the two carry together.

``DIR/pack.json`` records what was carried from each source and the command. Zips are written beside their final
name and renamed, so an interrupted pack never leaves a zip that looks finished.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import shlex
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from models.files import atomic_output
from tools.datasets import SourceSpec, in_holdout, is_s3_uri, iter_image_bytes, relative_name
from tools.runtime import input_errors_exit
from worker.settings import Settings
from worker.storage import Storage

log = logging.getLogger("tools.pack_data")

MB = 1024 * 1024
# What the device machine receives, the checkout and the carried paths together (docs/training.md, "Ready for a GPU").
TRAVEL_MIB = 64.0
# Left free under a ``room`` budget: pack.json and the carry's own bookkeeping.
ROOM_MARGIN = 256 * 1024
# The device counts what travels by file-system blocks, not bytes: on 2026-12-04 it refused a checkout and pack of
# 66.9 MB in bytes (under its 67.1) that took 67.6 MB in 4 KiB blocks, and took one of 64.4 MB in blocks.
TRAVEL_BLOCK = 4096
# Re-encoding settings by extension: each photo stays in the format its name says.
_ENCODERS = {".jpg": ("JPEG", {"quality": 90}), ".jpeg": ("JPEG", {"quality": 90}),
             ".webp": ("WEBP", {"quality": 90}), ".png": ("PNG", {"optimize": True}),
             ".bmp": ("BMP", {}), ".tif": ("TIFF", {"compression": "tiff_deflate"}),
             ".tiff": ("TIFF", {"compression": "tiff_deflate"})}


class PackError(ValueError):
    """A pack that cannot be made as asked (a budget below the validation split, two sources with one name)."""


@dataclass
class _Photo:
    source: int  # index into the sources
    name: str  # relative name inside its source: what the validation split hashes
    data: bytes
    in_val: bool
    rank: float  # the pack's own hash of the name in [0, 1): training photos are carried in this order


# What a stored zip member costs beside its bytes: its local header (30 bytes) and its central-directory entry (46),
# each with the name; and the end-of-directory record once per zip.
_MEMBER_OVERHEAD, _ZIP_OVERHEAD = 30 + 46, 22


def _cost(photo: _Photo) -> int:
    return len(photo.data) + _MEMBER_OVERHEAD + 2 * len(photo.name.encode("utf-8"))


def pack_rank(name: str) -> float:
    """Where a training photo falls in the pack's order: a hash independent of the validation split's."""
    digest = hashlib.sha1(b"tinct-pack\0" + name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _fitted(name: str, data: bytes, short_side: int) -> bytes | None:
    """``data`` as it travels: unchanged when its short side is within ``short_side``, else downscaled (bicubic, as
    the photo bank does) and re-encoded in the format of its extension; None when it is not a readable image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            scale = short_side / min(im.size)
            if scale >= 1:
                return data
            fmt, params = _ENCODERS.get(PurePosixPath(name).suffix.lower(), ("PNG", {}))
            rgb = im.convert("RGB").resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                                           Image.BICUBIC)
            out = io.BytesIO()
            rgb.save(out, fmt, **params)
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        log.warning("%s: skipped, not a readable image (%s)", name, exc)
        return None


def _zip_name(source: Path | str) -> str:
    if is_s3_uri(source):
        return PurePosixPath(str(source).rstrip("/")).name + ".zip"
    path = Path(source)
    return path.stem + ".zip" if path.suffix.lower() == ".zip" else path.name + ".zip"


def pack(sources: list[str], out_dir: Path, budget_mb: float, short_side: int = 128, val_split: float = 0.0,
         storage: Storage | None = None, command: str = "") -> dict:
    """Write one zip per source under ``out_dir`` (see the module doc) and return the manifest; ``storage`` reads
    ``s3://`` sources, ``command`` is recorded in it."""
    specs = [SourceSpec.parse(s) for s in sources]
    zip_names = [_zip_name(spec.path) for spec in specs]
    clash = sorted({n for n in zip_names if zip_names.count(n) > 1})
    if clash:
        raise PackError(f"two sources would both be packed as {clash[0]}: rename one folder")
    photos: list[_Photo] = []
    for index, spec in enumerate(specs):
        count = 0
        for full_name, data in iter_image_bytes(spec.path, storage):
            name = relative_name(spec.path, full_name)
            fitted = _fitted(full_name, data, short_side)
            if fitted is not None:
                photos.append(_Photo(index, name, fitted, in_holdout(name, val_split), pack_rank(name)))
                count += 1
        log.info("%s: %d photos read", zip_names[index], count)
    budget = int(budget_mb * MB)  # the zips' sizes on disk, all together
    val_bytes = sum(_cost(p) for p in photos if p.in_val) + _ZIP_OVERHEAD * len(specs)
    if val_bytes > budget:
        raise PackError(f"--budget-mb {budget_mb:g}: the validation split alone is {val_bytes / MB:.1f} MB")
    # Training photos in the pack's hash order until the budget is spent: about the same fraction of every source.
    carried, used = [p for p in photos if p.in_val], val_bytes
    for photo in sorted((p for p in photos if not p.in_val), key=lambda p: p.rank):
        if used + _cost(photo) > budget:
            break
        carried.append(photo)
        used += _cost(photo)

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"budget_mb": budget_mb, "short_side": short_side, "val_split": val_split, "bytes": 0,
                "command": command, "sources": []}
    for index, spec in enumerate(specs):
        mine = sorted((p for p in carried if p.source == index), key=lambda p: p.name)
        total_train = sum(1 for p in photos if p.source == index and not p.in_val)
        train_carried = sum(1 for p in mine if not p.in_val)
        with atomic_output(out_dir / zip_names[index]) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            for photo in mine:
                zf.writestr(photo.name, photo.data)  # images are compressed already
        manifest["sources"].append({
            "source": os.fspath(spec.path), "zip": zip_names[index], "photos": len(mine),
            "val_photos": len(mine) - train_carried, "train_photos": train_carried,
            "train_fraction": round(train_carried / total_train, 4) if total_train else 0.0,
            "bytes": (out_dir / zip_names[index]).stat().st_size,
        })
        manifest["bytes"] += manifest["sources"][-1]["bytes"]
        log.info("%s: %d training photos of %d (%.0f%%) and %d validation photos, %.1f MB", zip_names[index],
                 train_carried, total_train, 100 * train_carried / max(1, total_train), len(mine) - train_carried,
                 manifest["sources"][-1]["bytes"] / MB)
    with atomic_output(out_dir / "pack.json") as f:
        f.write(json.dumps(manifest, indent=2).encode())
    return manifest


def travel_size(path: Path) -> int:
    """What one file counts for against the travel limit: its size in whole ``TRAVEL_BLOCK`` blocks."""
    return -(-path.stat().st_size // TRAVEL_BLOCK) * TRAVEL_BLOCK


def checkout_bytes(leave_out: Path) -> int:
    """What travels with the git checkout around the working directory, in the device's blocks (``travel_size``):
    tracked files and untracked ones git does not ignore, as they are in the working tree, and a ``shared/`` folder
    at its top (the device takes that whole), without anything under ``leave_out`` (the pack itself)."""
    try:
        top = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                                  check=True).stdout.strip())
        listed = subprocess.run(["git", "-C", str(top), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise PackError(f"{Path.cwd()}: not in a git checkout, so the room beside it is unknown "
                        "(give --budget-mb a number)") from exc
    files = {top / os.fsdecode(r) for r in listed.split(b"\0") if r}  # a set: an unmerged file is listed per stage
    files.update((top / "shared").rglob("*"))
    leave_out = leave_out.resolve()
    # is_file: a tracked file deleted from the working tree is listed but does not travel.
    return sum(travel_size(f) for f in files if f.is_file() and not f.resolve().is_relative_to(leave_out))


def _budget_arg(text: str) -> float | str:
    if text == "room":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a number of MiB or 'room', got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools pack-data", description=__doc__.splitlines()[0])
    p.add_argument("--data", action="append", required=True, metavar="SOURCE",
                   help="folder, .zip or s3://bucket/prefix/ of colour photos, as tools train takes them; repeat "
                   "(a :WEIGHT is ignored here: give it to tools train)")
    p.add_argument("-o", "--out", type=Path, required=True, help="folder for the zips and pack.json")
    p.add_argument("--budget-mb", type=_budget_arg, required=True, metavar="MIB|room",
                   help="the pack's size in MiB, all sources together; 'room': what --travel-mib leaves beside the "
                   "checkout")
    p.add_argument("--travel-mib", type=float, default=TRAVEL_MIB,
                   help="what travels to the device, checkout and pack together (default: %(default)g)")
    p.add_argument("--short-side", type=int, default=128, help="downscale photos whose short side is larger "
                   "(tools train's photo bank side: max(1.15 x --crop, --min-object-side))")
    p.add_argument("--val-split", type=float, default=0.0, metavar="FRACTION",
                   help="the training runs' validation split, carried whole (docs/protocol.md)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.short_side < 16 or not 0 <= args.val_split < 1 or not args.travel_mib > 0:
        p.error("--short-side must be at least 16, --val-split a fraction below 1 and --travel-mib positive")
    argv = sys.argv[1:] if argv is None else argv
    # A missing source, an empty prefix, a budget below the split: one line naming it, no traceback.
    with input_errors_exit(p, ValueError):
        budget_mb, beside = args.budget_mb, None
        if budget_mb == "room":
            beside = checkout_bytes(args.out)
            room = args.travel_mib * MB - beside - ROOM_MARGIN
            if room <= 0:
                raise PackError(f"--budget-mb room: the checkout alone is {beside / MB:.1f} MiB of the "
                                f"{args.travel_mib:g} that travel")
            budget_mb = room / MB
            log.info("the checkout is %.1f MiB: %.1f MiB left for the pack", beside / MB, budget_mb)
        with Storage(Settings.from_env()) as storage:  # for s3:// sources, as tools train reads them
            manifest = pack(args.data, args.out, budget_mb, args.short_side, args.val_split, storage,
                            command=shlex.join(["python", "-m", "tools", "pack-data", *argv]))
    print(f"{args.out}: {manifest['bytes'] / MB:.1f} MB in {len(manifest['sources'])} zips (pack.json)"
          + _travel_line(beside, args))
    return 0


def _travel_line(beside: int | None, args: argparse.Namespace) -> str:
    """What the checkout and the pack carry together, where the pack lies in a git checkout ('' elsewhere)."""
    if beside is None:
        try:
            beside = checkout_bytes(args.out)
        except PackError:
            return ""
    total = (beside + sum(travel_size(f) for f in args.out.iterdir() if f.is_file())) / MB
    verdict = "within" if total <= args.travel_mib else "OVER"
    return f"; with the checkout {total:.1f} MiB, {verdict} the {args.travel_mib:g} that travel"


if __name__ == "__main__":
    sys.exit(main())
