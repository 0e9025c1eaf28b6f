"""Colour hints: a restorer's known colours, propagated over L and honoured exactly where they were placed.

    hints = ColourHints(points=(ColourPoint(812, 440, ab=(12.0, -40.0), radius=6),),
                        regions=(ColourRegion(((10, 10), (200, 10), (200, 90)), ab=(45.0, 30.0)),))
    rgb = colorizer.colorize([L], hints=[hints])[0]

Only chroma (ab) is ever taken from a hint: the scan's own L is kept, so a hint never changes its tones.
Coordinates are pixels of the image as displayed (origin top-left, x to the right): ``(x, y)`` is the
centre of column x, row y, and may be fractional. The maths, in two places of ``models.colorizer``'s flow:

1. On the network's output grid (at most ``render_size / output_stride`` cells a side, 56 for the
   default model), the correction ``d = ab - ab_network`` solves the sparse least-squares problem of
   Levin, Lischinski & Weiss (2004, "Colorization using optimization"):

       minimize  sum_edges w_ij (d_i - d_j)^2  +  DECAY * sum_i d_i^2  +  sum_i c_i (d_i - t_i)^2

   over 4-connected neighbours, with edge weights ``w_ij = exp(-(L_i - L_j)^2 / (2 sigma^2))`` from the cell
   means of L (so a correction spreads freely across flat L and stops at L edges), ``t_i`` the hint's
   ab minus the network's in cells the hint covers, and ``c_i`` a stiff weight there. The DECAY term is
   what "seeded by the network's prediction" means: far from every hint, and across edges, the
   correction fades to zero and the network's colour is kept. A lone hint reaches less far than one of
   many (DECAY is raised for fewer than ``FEW_HINTS`` hints, see ``decay_for``): between many hints each
   cell's correction is bounded by the hints around it, whereas one hint's correction, where its object
   ends in no edge of L, has nothing to stop it but the decay. One sparse factorization, two right-hand
   sides (a and b); a few milliseconds for a 56x56 grid.
2. After the guided-filter upsampling to full resolution, ab inside each hint's own pixels (its disc or
   polygon) is replaced by the hint's ab, feathered over ``FEATHER_PX`` pixels outside, so the hint is
   honoured at its pixels (CIEDE2000 against the hint's chroma at the scan's L is only rounding, where
   that colour is in sRGB gamut) whatever the grid's coarseness.

The constants were tuned on BSDS500 *train* photos (not the evaluation sets); docs/hints.md has the sweep.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch

# A point hint's footprint when the restorer gives no radius: a 7 px disc, big enough to click on, small
# enough to sit inside a button or an eye.
DEFAULT_RADIUS = 3.0
# Edge sensitivity of the propagation, in L units between neighbouring grid cells: a step of 2 sigma
# passes an eighth as much correction as flat ground; an object's edge (tens of units) almost none.
# How fast a correction fades with distance where L is flat: about 1 / sqrt(DECAY) cells (16 cells, a
# quarter of a 224 px render). Swept on 24 BSDS500 train photos (docs/hints.md): sigma 2 -> 4 -> 6 -> 8 at
# this decay gave +1.8 / +2.4 / +2.7 / +2.8 dB for 10 hints while the worst photo's change for 1 hint went
# 0.00 / -0.03 / -0.05 / -0.06 dB; a slower decay (0.001) spread further (+3.1 dB) but let one hint cost a
# photo up to 0.9 dB, where the hint's colour leaked onto neighbours of similar lightness.
EDGE_SIGMA = 6.0
DECAY = 0.004
# Fewer hints than this spread with DECAY * FEW_HINTS / n (n the number of hints): one hint reaches half as far (8
# cells), two 0.7 times as far. A hint's colour that leaks past its object (a gray stone's hint spreading over the
# warm water beside it) costs the photo; with many hints the hints around bound each other's spread, with one
# nothing does. On 100 BSDS500 train photos x 4 draws of one hint (docs/hints.md), the worst photo's change went
# from -0.47 dB (9 of 400 below -0.1 dB) to -0.09 dB (none), for a mean gain of +0.17 instead of +0.35 dB; five
# hints and more are unchanged.
FEW_HINTS = 4
# Weight of a covered cell's hint relative to one unit-weight edge: stiff enough that the cell takes the
# hint's colour, not so stiff that the factorization becomes ill-conditioned.
HINT_WEIGHT = 1000.0
# Width of the blend, in full-resolution pixels, between a hint's own pixels (its exact colour) and the
# propagated colour around them: hides the step without moving the hint.
FEATHER_PX = 2.0


@dataclass(frozen=True)
class ColourPoint:
    """A known colour at ``(x, y)``, over a disc of ``radius`` pixels."""

    x: float
    y: float
    ab: tuple[float, float]
    radius: float = DEFAULT_RADIUS


@dataclass(frozen=True)
class ColourRegion:
    """A known colour over a simple polygon (vertices in pixels, in order)."""

    polygon: tuple[tuple[float, float], ...]
    ab: tuple[float, float]


@dataclass(frozen=True)
class ColourHints:
    """Every hint of one image. Empty hints change nothing."""

    points: tuple[ColourPoint, ...] = ()
    regions: tuple[ColourRegion, ...] = ()

    def __len__(self) -> int:
        return len(self.points) + len(self.regions)


def rasterize(hints: ColourHints, height: int, width: int, scale_y: float = 1.0, scale_x: float = 1.0,
              row0: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The hints' footprints on a ``(height, width)`` canvas of rows ``row0..`` of the image resampled by
    ``scale_x``, ``scale_y`` (canvas pixel ``(r, c)`` is centred on image position ``((c + 0.5) / scale_x - 0.5,
    (r + row0 + 0.5) / scale_y - 0.5)``, pixel centres being whole numbers): coverage in [0, 1] ``(height, width)``
    float32 and the coverage-weighted hint ab ``(2, height, width)``. Later hints paint over earlier ones
    (regions first, then points, so a point can correct a detail inside a region). A region covers the pixels
    whose centres it holds; a disc is anti-aliased (fractional at its rim). Every footprint covers at least the
    pixel at its centre, however small the scale."""
    coverage = np.zeros((height, width), np.float32)
    ab = np.zeros((2, height, width), np.float32)
    # Each shape is drawn only inside its bounding box: a tile of a large scan holds few of the hints.
    shapes: list[tuple[np.ndarray, int, int, tuple[float, float]]] = []  # mask, top row, left column, ab
    for region in hints.regions:
        vertices = np.array([[(x + 0.5) * scale_x - 0.5, (y + 0.5) * scale_y - 0.5 - row0] for x, y in region.polygon])
        top, left, bottom, right = _box(vertices[:, 1].min(), vertices[:, 0].min(), vertices[:, 1].max(),
                                        vertices[:, 0].max(), height, width)
        if top >= bottom or left >= right:
            continue
        mask = np.zeros((bottom - top, right - left), np.uint8)
        # Pixels whose centres lie inside (cv2 draws in fixed point: 1/16-pixel precision for the vertices).
        cv2.fillPoly(mask, [np.round((vertices - (left, top)) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
        centre = vertices.mean(axis=0) - (left, top)
        _mark_centre(mask, *centre)  # a polygon narrower than a pixel at this scale
        shapes.append((mask.astype(np.float32), top, left, region.ab))
    for point in hints.points:
        cx, cy = (point.x + 0.5) * scale_x - 0.5, (point.y + 0.5) * scale_y - 0.5 - row0
        radius = point.radius * min(scale_x, scale_y)
        top, left, bottom, right = _box(cy - radius, cx - radius, cy + radius, cx + radius, height, width)
        if top >= bottom or left >= right:
            continue
        ys = np.arange(top, bottom, dtype=np.float32)[:, None]
        xs = np.arange(left, right, dtype=np.float32)[None, :]
        # Anti-aliased by distance: a pixel half inside the circle is half covered, so the disc's area is pi r^2.
        disc = np.clip(radius + 0.5 - np.hypot(xs - cx, ys - cy), 0.0, 1.0)
        _mark_centre(disc, cx - left, cy - top)
        shapes.append((disc, top, left, point.ab))
    for mask, top, left, colour in shapes:
        box = (slice(top, top + mask.shape[0]), slice(left, left + mask.shape[1]))
        keep = 1.0 - mask
        coverage[box] = mask + coverage[box] * keep
        for channel in range(2):
            ab[(channel, *box)] = mask * colour[channel] + ab[(channel, *box)] * keep
    return coverage, ab


def _box(top: float, left: float, bottom: float, right: float, height: int, width: int) -> tuple[int, int, int, int]:
    """Whole pixel rows/columns ``[top, bottom) x [left, right)`` holding a shape's extent (plus one pixel for
    anti-aliasing), clipped to the canvas."""
    return (max(0, int(math.floor(top)) - 1), max(0, int(math.floor(left)) - 1),
            min(height, int(math.ceil(bottom)) + 2), min(width, int(math.ceil(right)) + 2))


def _mark_centre(mask: np.ndarray, x: float, y: float) -> None:
    """Set the pixel holding canvas position ``(x, y)``, if it is on the canvas."""
    row, col = int(math.floor(y + 0.5)), int(math.floor(x + 0.5))
    if 0 <= row < mask.shape[0] and 0 <= col < mask.shape[1]:
        mask[row, col] = 1


def _edge_weights(L_cells: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    horizontal = np.exp(-np.diff(L_cells, axis=1) ** 2 / (2 * sigma**2))
    vertical = np.exp(-np.diff(L_cells, axis=0) ** 2 / (2 * sigma**2))
    return horizontal, vertical


def decay_for(hints: int, decay: float = DECAY) -> float:
    """The decay for an image with ``hints`` hints: ``decay`` from ``FEW_HINTS`` on, stronger (shorter reach) below."""
    return decay * max(1.0, FEW_HINTS / max(hints, 1))


def propagate_correction(
    L_cells: np.ndarray,
    coverage: np.ndarray,
    target: np.ndarray,
    sigma: float = EDGE_SIGMA,
    decay: float = DECAY,
    hint_weight: float = HINT_WEIGHT,
) -> np.ndarray:
    """Solve the least-squares problem of the module docstring on one grid.

    ``L_cells`` ``(h, w)`` is the cell mean of L; ``coverage`` ``(h, w)`` how much of each cell hints cover; ``target``
    ``(2, h, w)`` the correction wanted there (hint ab minus network ab). Returns the correction ``(2, h, w)``.
    """
    h, w = L_cells.shape
    n = h * w
    index = np.arange(n).reshape(h, w)
    horizontal, vertical = _edge_weights(L_cells.astype(np.float64), sigma)
    rows = np.concatenate((index[:, :-1].ravel(), index[:-1, :].ravel()))
    cols = np.concatenate((index[:, 1:].ravel(), index[1:, :].ravel()))
    weights = np.concatenate((horizontal.ravel(), vertical.ravel()))
    adjacency = scipy.sparse.coo_matrix((weights, (rows, cols)), shape=(n, n))
    adjacency = (adjacency + adjacency.T).tocsr()
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    # Any cell a hint touches is held to it: a 1-pixel point on a 20-pixel cell is still the restorer's word.
    held = hint_weight * (coverage.ravel() > 0)
    system = scipy.sparse.diags(degree + decay + held) - adjacency
    rhs = held[:, None] * target.reshape(2, n).T.astype(np.float64)
    solution = scipy.sparse.linalg.splu(system.tocsc()).solve(rhs)
    return solution.T.reshape(2, h, w).astype(np.float32)


def hinted_grid(
    ab_grid: torch.Tensor,
    padded_L: np.ndarray,
    output_stride: int,
    hints: ColourHints,
    image_size: tuple[int, int],
    render_size: tuple[int, int],
) -> torch.Tensor:
    """The network's ab on its output grid ``(2, h, w)`` with the hints propagated into it (step 1).

    ``padded_L`` is the render L as the network saw it (reflect-padded to whole cells); ``image_size`` and
    ``render_size`` are ``(height, width)`` of the full image and of its render, which map hint coordinates.
    """
    if not len(hints):
        return ab_grid
    height, width = image_size
    render_h, render_w = render_size
    padded_h, padded_w = padded_L.shape
    # Footprints at render resolution, then averaged over each cell: cells a hint only grazes are covered a little.
    coverage, hint_ab = rasterize(hints, padded_h, padded_w, render_h / height, render_w / width)
    coverage[render_h:], coverage[:, render_w:] = 0.0, 0.0  # the padding is a mirror, not the picture
    cells_h, cells_w = padded_h // output_stride, padded_w // output_stride

    def pool(x: np.ndarray) -> np.ndarray:
        return x.reshape(*x.shape[:-2], cells_h, output_stride, cells_w, output_stride).mean(axis=(-3, -1))

    cell_coverage = pool(coverage)
    cell_hint = pool(hint_ab) / np.maximum(cell_coverage, 1e-12)
    network = ab_grid.detach().float().cpu().numpy()
    target = np.where(cell_coverage > 0, cell_hint - network, 0.0)
    correction = propagate_correction(pool(padded_L), cell_coverage, target, EDGE_SIGMA, decay_for(len(hints)),
                                      HINT_WEIGHT)
    return ab_grid + torch.from_numpy(correction).to(ab_grid.device, ab_grid.dtype)


def honour_tile(ab_tile: torch.Tensor, hints: ColourHints, row0: int, row1: int) -> torch.Tensor:
    """Full-resolution ab rows ``row0:row1`` ``(2, rows, W)`` with each hint's own pixels set to its ab, feathered
    outwards over ``FEATHER_PX`` (step 2). Rasterized with a margin so the feather does not see the tile's cut."""
    if not len(hints):
        return ab_tile
    # The feather's Gaussian is cut at 3 sigma and the margin is exactly that wide: with OpenCV's own kernel size
    # (4 sigma for float images) the blur reached past the margin and showed the tile's cut where the propagated
    # colour beside a hint differs from the hint's.
    margin = int(math.ceil(3 * FEATHER_PX))
    kernel = (2 * margin + 1, 2 * margin + 1)
    top = max(0, row0 - margin)
    rows, width = row1 - row0, ab_tile.shape[-1]
    coverage, hint_ab = rasterize(hints, row1 + margin - top, width, row0=top)
    if not coverage.any():
        return ab_tile
    # Outside the footprints the hint colour is extended by normalized blurring, and the blend weight falls off
    # from 1 at the footprint's edge; inside, both are the hint's own.
    blurred = cv2.GaussianBlur(coverage, kernel, FEATHER_PX)
    weight = np.maximum(coverage, np.minimum(1.0, 2.0 * blurred))
    spread = np.stack([cv2.GaussianBlur(channel, kernel, FEATHER_PX) for channel in hint_ab])
    colour = np.where(coverage >= 1.0, hint_ab, spread / np.maximum(blurred, 1e-6))
    inside = slice(row0 - top, row0 - top + rows)
    weight_t = torch.from_numpy(np.ascontiguousarray(weight[inside])).to(ab_tile.device)
    colour_t = torch.from_numpy(np.ascontiguousarray(colour[:, inside])).to(ab_tile.device)
    return torch.lerp(ab_tile, colour_t.to(ab_tile.dtype), weight_t.to(ab_tile.dtype)[None])


def hint_count(hints: Sequence[ColourHints | None] | None) -> int:
    """How many hints a batch carries (0 for none): what provenance and metrics record."""
    return sum(len(h) for h in hints or () if h is not None)
