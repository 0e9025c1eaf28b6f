"""Contact sheets: a PNG grid of gray input | each model's colorization | ground truth, one photo per row.

Figures alone hide how a colorizer fails (sepia everywhere, colour bleeding over edges, blotches);
a sheet beside the numbers shows it at a glance. Every cell has the same box; images keep their
aspect ratio and are centred in it, so photos of different shapes line up in columns.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (236, 236, 236)  # light gray, so white photos still show their edges
TEXT_COLOUR = (0, 0, 0)
PADDING = 4
HEADER_HEIGHT = 20
LABEL_MARGIN = 2


def _to_pil(image: np.ndarray | Image.Image) -> Image.Image:
    """Float [0, 1] or uint8, (H, W), (H, W, 1) or (H, W, 3) -> an RGB Pillow image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"a contact-sheet cell must be (H, W) or (H, W, 3), got shape {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def thumbnail(image: np.ndarray | Image.Image, height: int) -> Image.Image:
    """A copy ``height`` pixels high (aspect kept, never enlarged), so a caller can keep many rows for a sheet
    without holding full-resolution float images."""
    img = _to_pil(image)
    if img.height > height:
        img = img.resize((max(1, round(img.width * height / img.height)), height), Image.Resampling.LANCZOS)
    return img


def _fit_label(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """Shorten a label with an ellipsis until it fits its column (checkpoint labels can be long)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def sheet_size(n_rows: int, n_cols: int, cell_width: int, cell_height: int) -> tuple[int, int]:
    """(width, height) in pixels of a sheet with this grid; what ``render_contact_sheet`` produces."""
    width = n_cols * cell_width + (n_cols + 1) * PADDING
    height = HEADER_HEIGHT + n_rows * (cell_height + PADDING) + PADDING
    return width, height


def render_contact_sheet(
    rows: Sequence[Sequence[np.ndarray | Image.Image]],
    labels: Sequence[str],
    out_path: str | os.PathLike,
    cell_height: int = 160,
    cell_width: int | None = None,
) -> Path:
    """Draw ``rows`` (each: gray, ours..., truth) under the column ``labels`` (``draw_contact_sheet``) and save it:
    JPEG (quality 90) for a ``.jpg``/``.jpeg`` path, small enough to commit, else PNG. Returns the path written."""
    sheet = draw_contact_sheet(rows, labels, cell_height, cell_width)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix.lower() in (".jpg", ".jpeg"):
        sheet.save(out_path, format="JPEG", quality=90)
    else:
        sheet.save(out_path, format="PNG")
    return out_path


def save_jpeg(image: Image.Image, out_path: str | os.PathLike, max_bytes: int, quality: int = 90,
              min_quality: int = 40) -> tuple[Path, int]:
    """Save ``image`` as the best-quality JPEG (from ``quality`` down to ``min_quality`` in steps of 5) that fits in
    ``max_bytes``, so sheets committed beside results stay small; the lowest quality is kept when none fits.
    Returns the path and the quality used."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    chosen, data = quality, b""
    for chosen in range(quality, min_quality - 1, -5):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=chosen, optimize=True, progressive=True)
        data = buffer.getvalue()
        if len(data) <= max_bytes:
            break
    out_path.write_bytes(data)
    return out_path, chosen


def draw_contact_sheet(
    rows: Sequence[Sequence[np.ndarray | Image.Image]],
    labels: Sequence[str],
    cell_height: int = 160,
    cell_width: int | None = None,
) -> Image.Image:
    """``rows`` (each: gray, ours..., truth) under the column ``labels`` as one RGB image.

    ``cell_width`` defaults to what the widest image needs at ``cell_height`` or the longest label needs,
    whichever is more (a given ``cell_width`` shortens long labels instead); every image is scaled to fit
    its cell without cropping.
    """
    if not rows:
        raise ValueError("a contact sheet needs at least one row")
    n_cols = len(labels)
    bad = [i for i, row in enumerate(rows) if len(row) != n_cols]
    if bad:
        raise ValueError(f"rows {bad} do not have {n_cols} images (one per label: {', '.join(labels)})")
    cells = [[_to_pil(image) for image in row] for row in rows]
    font = ImageFont.load_default()
    if cell_width is None:
        widest = max(img.width / img.height for row in cells for img in row)
        # Wide enough for the widest photo at cell_height and for every label (two rows of the same model
        # with different decoding differ only at the end of their labels).
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        label_width = max(math.ceil(measure.textlength(label, font=font)) for label in labels) + 2 * LABEL_MARGIN
        cell_width = max(1, round(cell_height * widest), label_width)

    sheet = Image.new("RGB", sheet_size(len(rows), n_cols, cell_width, cell_height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(labels):
        x0 = PADDING + c * (cell_width + PADDING)
        text = _fit_label(draw, label, font, cell_width - 2 * LABEL_MARGIN)
        draw.text((x0 + LABEL_MARGIN, 4), text, fill=TEXT_COLOUR, font=font)
    for r, row in enumerate(cells):
        y0 = HEADER_HEIGHT + r * (cell_height + PADDING)
        for c, img in enumerate(row):
            x0 = PADDING + c * (cell_width + PADDING)
            scale = min(cell_width / img.width, cell_height / img.height)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            fitted = img.resize(size, Image.Resampling.LANCZOS)
            sheet.paste(fitted, (x0 + (cell_width - size[0]) // 2, y0 + (cell_height - size[1]) // 2))
    return sheet
