"""Batch-first, full-resolution colorization over any engine.

    colorizer = Colorizer(engine, render_size=256, batch_size=8)   # batch_size None: what fits (models.batching)
    ab_list = colorizer.predict_ab([L1, L2])     # (H, W) float32 L in [0, 100] -> (2, H, W) ab
    rgb_list = colorizer.colorize([L1, L2])      # -> (H, W, 3) float32 sRGB in [0, 1]

The network only ever sees a small copy of each image; the archive's pixels are never resampled.

1. Render: each L is area-downscaled so that its long side is ``render_size`` (aspect kept). A smaller
   image is left at its own size, unless the model asks for ``min_render_size``: then one whose long side
   is under it is enlarged (bilinear) to that size, capped at ``render_size``, because a network trained
   on objects at the scale of a full render misreads them in a thumbnail. Then it is reflect-padded on the
   bottom/right up to a multiple of ``engine.stride``. Reflection keeps the padding looking like the
   picture, so the network does not invent a colour for a black border. Any
   image of at least 1x1 is accepted: a dimension smaller than one stride block is padded up to one
   block, so a 17x301 panorama renders as 32x256 and a 1x1 image as one 32x32 block.
2. Infer: images whose padded shapes agree are stacked and run ``batch_size`` at a time, one
   ``engine.infer`` call per chunk.
3. Upsample: the fast guided filter (He & Sun 2015, arXiv:1505.00996). At the network's output grid,
   with the area-averaged render L as guide, the linear coefficients A, b of ``ab ~ A * L + b`` are
   fitted in each window; they are smooth, so they are bilinearly upsampled to the source size and
   applied to the *original* full-resolution L. Colour edges therefore follow L edges at full
   resolution instead of being smeared over ``source/render * output_stride`` pixels, as plain bilinear
   upsampling of ab would.
   A model promoted with a highlight roll-off (``models.color.HighlightRolloff``) then has its chroma rolled off
   towards white in each pixel's full-resolution L.
4. Merge: ``colorize`` joins the original L with the upsampled ab through ``models.color`` (never by
   resizing an RGB image), so the output's lightness is the input's except where an out-of-gamut
   colour is clipped to sRGB.

A restorer's colour hints (``models.hints``) enter between steps 2 and 3: propagated into the network's ab on
its output grid before the fit, then honoured exactly at their own pixels in the full-resolution step.

The full-resolution step runs in row tiles of about ``tile_pixels`` pixels, so its temporaries stay
near 100-200 MiB whatever the image size; everything at render size is negligible. Measured for one
6000x4000 image on CPU: ``colorize`` raised peak RSS by 460 MiB, of which 275 MiB is the RGB output
(plus the caller's 92 MiB input), in 3.5-8.5 s on 2 busy cores; ``predict_ab`` by 210 MiB (183 MiB
output) in 4 s. All torch maths run on the engine's device, so a CUDA engine
keeps upsampling and colour conversion on the GPU.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.batching import pick_batch_size
from models.checkpoint import (  # noqa: F401 - DEFAULT_RENDER_SIZE is part of this API
    DEFAULT_RENDER_SIZE,
    preferred_highlight_rolloff,
    preferred_min_render_size,
    preferred_render_size,
)
from models.color import L_CENT, HighlightRolloff, lab_to_rgb_fast_np, merge_l_ab
from models.engines.base import Engine
from models.hints import ColourHints, hinted_grid, honour_tile

# Guided-filter window radius, in cells of the network's output grid (a cell is output_stride render
# pixels): 2 gives 5x5-cell windows, about 8 % of a 256 px render, wide enough to fit a colour edge,
# narrow enough to keep neighbouring objects apart.
GUIDE_RADIUS = 2
# Guided-filter regularization, in L units squared. It bounds the slope |A| of colour on L in a window
# to sigma_ab / (2 sqrt(eps)), i.e. a tenth of the network's local ab noise per L unit, so film grain
# at full resolution cannot become colour noise, while a real edge (an L step of tens of units across
# the window, variance in the hundreds) is followed almost exactly. On a synthetic 30|80 L step at 16x
# the output-grid size, colour errors > 5 ab units cover 3 columns (8 with L grain of sigma 3) against
# 23 for bilinear; eps = 100 would widen that to 20.
GUIDE_EPS = 25.0
# Full-resolution pixels per row tile of the upsampling step (about 4 MiB per float32 channel).
TILE_PIXELS = 1 << 20
# L slightly outside [0, 100] from float rounding is accepted; anything further is a caller's bug
# (such as 0-255 gray values passed as L).
L_TOLERANCE = 0.01


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the (2r+1)^2 window around each pixel of ``(B, C, H, W)``; windows are cut at the border
    and divided by the pixels they hold (He's normalized box filter)."""
    if radius == 0:
        return x
    return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


def guided_filter_coefficients(
    guide: torch.Tensor, src: torch.Tensor, radius: int = GUIDE_RADIUS, eps: float = GUIDE_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window-averaged guided-filter coefficients (He et al. 2010, eq. 5-6 then 8).

    ``guide`` is ``(B, 1, h, w)``, ``src`` ``(B, C, h, w)``; returns ``A`` and ``b`` of ``src``'s shape such
    that ``A * guide + b`` is the filtered ``src``. Evaluating ``A * guide_full + b`` with bilinearly
    upsampled ``A``, ``b`` is the fast guided filter's upsampling. The guide should be centred (as
    ``L - L_CENT``): then the variance below loses no float32 precision to a large mean.
    """
    mean_i = box_mean(guide, radius)
    mean_p = box_mean(src, radius)
    cov_ip = box_mean(guide * src, radius) - mean_i * mean_p
    var_i = box_mean(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i.clamp(min=0.0) + eps)
    b = mean_p - a * mean_i
    return box_mean(a, radius), box_mean(b, radius)


def _axis_interpolation(
    start: int, stop: int, full: int, render: int, output_stride: int, cells: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear taps along one axis: for source pixels ``start:stop``, the two neighbouring output-grid
    cells and the weight of the second.

    Pixel centres map through the render resize (``full`` -> ``render`` pixels) to the output grid, where
    cell ``i`` covers render pixels ``[i * output_stride, (i + 1) * output_stride)``; beyond the first and
    last cell centres the nearest cell is used.
    """
    pos = (torch.arange(start, stop, device=device, dtype=torch.float64) + 0.5) * (render / full)
    pos = (pos / output_stride - 0.5).clamp(0.0, cells - 1)
    low = pos.floor().long()
    high = (low + 1).clamp(max=cells - 1)
    return low, high, (pos - low).to(torch.float32)


def upsample_tiles(
    L: np.ndarray | torch.Tensor,
    coefficients: torch.Tensor,
    render_size: tuple[int, int],
    output_stride: int,
    tile_pixels: int = TILE_PIXELS,
    device: torch.device | str = "cpu",
    highlight_rolloff: HighlightRolloff | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The full-resolution step of the fast guided filter, one row tile at a time.

    ``L`` is the source ``(H, W)`` L (numpy, or a tensor already on ``device``); ``coefficients`` is
    ``(4, cells_h, cells_w)``: A (for a and b) over b (for a and b) as ``guided_filter_coefficients`` returns
    them for the centred guide, cropped to the cells that cover the ``render_size`` image. Yields
    ``(row0, row1, ab)`` with ab ``(2, row1 - row0, W)``, rolled off towards white by ``highlight_rolloff``
    (in the same tile of L the guide uses) when there is one.
    """
    height, width = L.shape
    channels, cells_h, cells_w = coefficients.shape
    render_h, render_w = render_size
    # Along x, bilinear interpolation is a (cells_w, W) matrix with two non-zeros per column: one matmul
    # per tile does it, three to four times faster than gathering both taps at full resolution.
    x_low, x_high, x_weight = _axis_interpolation(0, width, width, render_w, output_stride, cells_w, device)
    columns = torch.arange(width, device=device)
    x_matrix = torch.zeros((cells_w, width), dtype=coefficients.dtype, device=device)
    x_matrix.index_put_((x_low, columns), 1 - x_weight, accumulate=True)
    x_matrix.index_put_((x_high, columns), x_weight, accumulate=True)
    rows = max(1, tile_pixels // width)
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        y_low, y_high, y_weight = _axis_interpolation(r0, r1, height, render_h, output_stride, cells_h, device)
        y_weight = y_weight[None, :, None]
        coeff_rows = coefficients[:, y_low] * (1 - y_weight) + coefficients[:, y_high] * y_weight
        coeff_full = (coeff_rows.reshape(-1, cells_w) @ x_matrix).reshape(channels, r1 - r0, width)
        L_tile = _to_device(L[r0:r1], device)
        ab = torch.addcmul(coeff_full[2:], coeff_full[:2], L_tile[None] - L_CENT)
        yield r0, r1, ab if highlight_rolloff is None else highlight_rolloff.apply(ab, L_tile)


def guided_upsample_ab(
    L: np.ndarray,
    L_cells: torch.Tensor,
    ab_cells: torch.Tensor,
    render_size: tuple[int, int],
    output_stride: int,
    radius: int = GUIDE_RADIUS,
    eps: float = GUIDE_EPS,
) -> torch.Tensor:
    """ab on the network's output grid -> ab at the source's full resolution, guided by the source L.

    ``L_cells`` ``(h, w)`` is the render L averaged over each output cell and ``ab_cells`` ``(2, h, w)`` the
    network's ab on those cells; the grid covers ``render_size`` render pixels (the last cells may
    overhang). The single-image form of what ``Colorizer`` does batched; returns ``(2, H, W)``.
    """
    a, b = guided_filter_coefficients((L_cells - L_CENT)[None, None], ab_cells[None], radius, eps)
    coefficients = torch.cat((a, b), dim=1)[0]
    ab = torch.empty((2, *L.shape), dtype=torch.float32, device=coefficients.device)
    for r0, r1, tile in upsample_tiles(L, coefficients, render_size, output_stride, device=coefficients.device):
        ab[:, r0:r1] = tile
    return ab


def _to_device(array: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.to(device, non_blocking=True)
    # torch.from_numpy shares memory and warns on read-only arrays (memory-mapped scans, decoded
    # frames); those are copied, which only ever happens per tile.
    tensor = torch.from_numpy(array) if array.flags.writeable else torch.tensor(array)
    return tensor.to(device, non_blocking=True)


@dataclass
class Render:
    """One image's trip through the network. After ``predict_grid``: its sizes, the padded render L and the
    network's ab on the padded output grid (``(2, padded_h / output_stride, padded_w / output_stride)``, on
    the engine's device). The film pipeline smooths ``ab_grid`` over time before ``fit`` turns it into the
    guided-filter coefficients (A for a and b stacked over b for a and b: ``(4, cells_h, cells_w)``)."""

    height: int
    width: int
    render_height: int
    render_width: int
    padded: np.ndarray
    ab_grid: torch.Tensor | None = None
    coefficients: torch.Tensor | None = None


class Colorizer:
    """Colorize lists of L images of any sizes at full resolution with one engine (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        render_size: int | None = None,
        batch_size: int | None = None,
        guide_radius: int = GUIDE_RADIUS,
        guide_eps: float = GUIDE_EPS,
        tile_pixels: int = TILE_PIXELS,
        min_render_size: int | None = None,
        highlight_rolloff: HighlightRolloff | None = None,
    ) -> None:
        if render_size is None:
            render_size = preferred_render_size(engine.checkpoint.provenance)
        if min_render_size is None:
            min_render_size = preferred_min_render_size(engine.checkpoint.provenance)
        if min_render_size < 0:
            raise ValueError(f"min_render_size must be >= 0 (0: never enlarge), got {min_render_size}")
        if render_size < engine.stride:
            raise ValueError(f"render_size {render_size} is smaller than the model stride {engine.stride}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if guide_radius < 0 or guide_eps <= 0:
            raise ValueError(f"guide_radius must be >= 0 and guide_eps > 0, got {guide_radius}, {guide_eps}")
        if tile_pixels < 1:
            raise ValueError(f"tile_pixels must be positive, got {tile_pixels}")
        self.engine = engine
        # None: the model's own (tools promote --highlight-rolloff), if it has one
        self.highlight_rolloff = highlight_rolloff or preferred_highlight_rolloff(engine.checkpoint.provenance)
        self.render_size = int(render_size)
        self.min_render_size = min(int(min_render_size), self.render_size)
        # None: as many as fit on the GPU, 8 on a CPU (models.batching)
        self.batch_size = int(batch_size) if batch_size is not None else pick_batch_size(engine, self.render_size)
        self.guide_radius = int(guide_radius)
        self.guide_eps = float(guide_eps)
        self.tile_pixels = int(tile_pixels)
        self.device = torch.device("cuda" if str(engine.device).startswith("cuda") else "cpu")

    @property
    def output_stride(self) -> int:
        return self.engine.output_stride

    # --- public API -----------------------------------------------------------------------------------

    def predict_ab(
        self, L_list: Sequence[np.ndarray], hints: Sequence[ColourHints | None] | None = None
    ) -> list[np.ndarray]:
        """ab at full resolution for each L: ``(H, W)`` float32 in [0, 100] -> ``(2, H, W)`` float32. ``hints``,
        one entry (or None) per image, are the restorer's known colours (``models.hints``)."""
        renders = self._hinted_renders(L_list, hints)
        return [self.upsample_ab(L, render, image_hints)
                for L, render, image_hints in zip(L_list, renders, hints or [None] * len(renders), strict=True)]

    def colorize(
        self, L_list: Sequence[np.ndarray], hints: Sequence[ColourHints | None] | None = None
    ) -> list[np.ndarray]:
        """sRGB for each L: ``(H, W)`` float32 in [0, 100] -> ``(H, W, 3)`` float32 in [0, 1]; ``hints`` as in
        ``predict_ab``."""
        renders = self._hinted_renders(L_list, hints)
        results = []
        for L, render, image_hints in zip(L_list, renders, hints or [None] * len(renders), strict=True):
            rgb = np.empty((render.height, render.width, 3), dtype=np.float32)
            for r0, r1, ab_tile in self._ab_tiles(L, render, image_hints):
                if self.device.type == "cpu":
                    # OpenCV's Lab -> sRGB: the same formulas (tested within 1e-3), and on a CPU the torch
                    # version was 60% of a 1-megapixel photo's colorization time (bench, issue 12).
                    lab = np.empty((r1 - r0, render.width, 3), dtype=np.float32)
                    lab[..., 0] = L[r0:r1]
                    lab[..., 1:] = ab_tile.permute(1, 2, 0).numpy()
                    rgb[r0:r1] = lab_to_rgb_fast_np(lab)
                    continue
                L_tile = self.to_device(L[r0:r1])[None, None]
                rgb[r0:r1] = merge_l_ab(L_tile, ab_tile[None])[0].permute(1, 2, 0).cpu().numpy()
            results.append(rgb)
        return results

    # --- the steps, public for the film pipeline (which smooths ab_grid between predict_grid and fit) -----

    def predict_grid(self, L_list: Sequence[np.ndarray]) -> list[Render]:
        """Steps 1-2 at render size: plan each render, batch by padded shape, infer; sets ``Render.ab_grid``."""
        self._check(L_list)
        renders = [self._render(L) for L in L_list]
        for chunk in self._chunks(renders):
            batch = np.stack([render.padded for render in chunk])[:, None]
            ab = self.engine.infer_tensor(batch).to(self.device)  # stays on the GPU with a CUDA engine
            for render, ab_grid in zip(chunk, ab, strict=True):
                render.ab_grid = ab_grid
        return renders

    def _hinted_renders(self, L_list: Sequence[np.ndarray], hints: Sequence[ColourHints | None] | None) -> list[Render]:
        """Steps 1-3 at grid size, with each image's hints propagated into its grid ab before the fit."""
        if hints is not None and len(hints) != len(L_list):
            raise ValueError(f"{len(hints)} hint sets for {len(L_list)} images: give one (or None) per image")
        renders = self.predict_grid(L_list)
        if hints is not None:
            self.apply_hints(renders, hints)
        self.fit(renders)
        return renders

    def apply_hints(self, renders: Sequence[Render], hints: Sequence[ColourHints | None]) -> None:
        """Propagate each render's hints into its ``ab_grid`` (``models.hints``, step 1), between ``predict_grid``
        and ``fit``. The full-resolution step takes the same hints in ``upsample_ab``."""
        for render, image_hints in zip(renders, hints, strict=True):
            if image_hints and render.ab_grid is not None:
                render.ab_grid = hinted_grid(render.ab_grid, render.padded, self.engine.output_stride, image_hints,
                                             (render.height, render.width), (render.render_height, render.render_width))

    def fit(self, renders: Sequence[Render]) -> None:
        """Step 3 at grid size: the guided-filter coefficients of each render's ``ab_grid``, batched."""
        output_stride = self.engine.output_stride
        for chunk in self._chunks(renders):
            if any(render.ab_grid is None for render in chunk):
                raise ValueError("fit() needs renders from predict_grid()")
            ab = torch.stack([render.ab_grid for render in chunk])  # type: ignore[misc]
            # The guide lives on the same grid as ab: each output cell is the mean of the render pixels it covers.
            guide = self.to_device(np.stack([render.padded for render in chunk])[:, None]) - L_CENT
            if output_stride > 1:
                guide = F.avg_pool2d(guide, output_stride)
            a, b = guided_filter_coefficients(guide, ab.to(guide.dtype), self.guide_radius, self.guide_eps)
            coefficients = torch.cat((a, b), dim=1)
            for render, coeff in zip(chunk, coefficients, strict=True):
                cells_h = math.ceil(render.render_height / output_stride)
                cells_w = math.ceil(render.render_width / output_stride)
                render.coefficients = coeff[:, :cells_h, :cells_w].contiguous()

    def upsample_ab(self, L: np.ndarray, render: Render, hints: ColourHints | None = None) -> np.ndarray:
        """Step 3 at the resolution of ``L``: ``(2, h, w)`` float32 ab guided by ``L``. ``L`` is the image's
        L at full resolution, or at any other resolution covering the same picture (the film pipeline passes
        it at chroma resolution, which is all a 4:2:0 video keeps of colour). ``hints`` (full resolution only)
        are honoured at their own pixels."""
        return self.upsample_ab_tensor(L, render, hints).cpu().numpy()

    def upsample_ab_tensor(
        self, L: np.ndarray | torch.Tensor, render: Render, hints: ColourHints | None = None
    ) -> torch.Tensor:
        """``upsample_ab`` leaving ab on the colorizer's device; ``L`` may already be there (the film
        pipeline's GPU path uploads each frame's L once and converts colour on the GPU)."""
        ab = torch.empty((2, *L.shape), dtype=torch.float32, device=self.device)
        for r0, r1, ab_tile in self._ab_tiles(L, render, hints):
            ab[:, r0:r1] = ab_tile
        return ab

    # --- steps ----------------------------------------------------------------------------------------

    def _chunks(self, renders: Sequence[Render]) -> Iterator[list[Render]]:
        """Renders grouped by padded shape (only equal shapes stack), ``batch_size`` at a time."""
        groups: dict[tuple[int, int], list[Render]] = defaultdict(list)
        for render in renders:
            groups[render.padded.shape].append(render)
        for group in groups.values():
            for start in range(0, len(group), self.batch_size):
                yield group[start : start + self.batch_size]

    def render(self, L: np.ndarray) -> Render:
        """Step 1 alone: the render plan and padded render L of one image, as ``predict_grid`` makes them (film
        references follow a shot's motion on exactly these renders, without running the network)."""
        return self._render(L)

    def _render(self, L: np.ndarray) -> Render:
        height, width = L.shape
        long_side = max(height, width)
        scale = min(1.0, self.render_size / long_side)
        if long_side < self.min_render_size:
            scale = self.min_render_size / long_side
        render_h, render_w = max(1, round(height * scale)), max(1, round(width * scale))
        small = L
        if (render_h, render_w) != (height, width):
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            small = cv2.resize(np.ascontiguousarray(L), (render_w, render_h), interpolation=interpolation)
        stride = self.engine.stride
        pad_h, pad_w = -render_h % stride, -render_w % stride
        padded = np.pad(small, ((0, pad_h), (0, pad_w)), mode="reflect") if pad_h or pad_w else small
        return Render(height, width, render_h, render_w, np.ascontiguousarray(padded, dtype=np.float32))

    def _ab_tiles(
        self, L: np.ndarray | torch.Tensor, render: Render, hints: ColourHints | None = None
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        if render.coefficients is None:
            raise ValueError("upsampling needs the coefficients from fit()")
        tiles = upsample_tiles(
            L,
            render.coefficients,
            (render.render_height, render.render_width),
            self.engine.output_stride,
            self.tile_pixels,
            self.device,
            self.highlight_rolloff,
        )
        if not hints:
            return tiles
        # Hint coordinates are full-resolution pixels: only images upsampled at their own size can honour them.
        if tuple(L.shape) != (render.height, render.width):
            raise ValueError("hints need ab upsampled at the image's own resolution")
        return ((r0, r1, honour_tile(tile, hints, r0, r1)) for r0, r1, tile in tiles)

    # --- helpers --------------------------------------------------------------------------------------

    def to_device(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``array`` on the colorizer's device (the engine's), without a copy when it is already there."""
        return _to_device(array, self.device)

    @staticmethod
    def _check(L_list: Sequence[np.ndarray]) -> None:
        """Reject bad input once, up front, naming the image: a job fails with a reason, not a stack trace."""
        if isinstance(L_list, np.ndarray) or not isinstance(L_list, Sequence):
            raise ValueError(f"L_list must be a list of (H, W) arrays, got {type(L_list).__name__}")
        if len(L_list) == 0:
            raise ValueError("L_list is empty: nothing to colorize")
        for i, L in enumerate(L_list):
            if not isinstance(L, np.ndarray):
                raise ValueError(f"image {i}: expected a numpy array, got {type(L).__name__}")
            if L.dtype != np.float32:
                raise ValueError(f"image {i}: L must be float32 in [0, 100], got dtype {L.dtype}")
            if L.ndim != 2:
                raise ValueError(f"image {i}: L must be 2-D (H, W), got shape {L.shape}")
            if L.size == 0:
                raise ValueError(f"image {i}: L is empty (shape {L.shape})")
            low, high = float(L.min()), float(L.max())
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError(f"image {i}: L contains NaN or infinity")
            if low < -L_TOLERANCE or high > 100.0 + L_TOLERANCE:
                raise ValueError(f"image {i}: L must lie in [0, 100], got [{low:.3g}, {high:.3g}]")
