"""Temporal smoothing of the network's ab for films: scene cuts and motion-compensated blending.

A colorization network sees every frame on its own, so its colours flicker: the same jacket drifts
between two blues from one frame to the next. ``TemporalSmoother`` removes most of that flicker on the
network's output grid, before the full-resolution guided upsampling, and never touches L.

For each frame t (render L ``L_t``, predicted grid ab ``p_t``) after the first of a shot:

1. The render L is normalized to zero mean and unit standard deviation (``_normalized_u8``), so global
   brightness changes (fades, flashes, the exposure hunting of handheld cameras) change neither the flow
   nor the photometric tests below.
2. DIS optical flow (``compute_flow``) from frame t to frame t-1 at render resolution; the previous
   normalized L is warped onto frame t (``warp``). The residual ``|L_t - warp(L_{t-1})|`` (in standard
   deviations, box-blurred so that single noisy pixels do not count) says where the flow explains the
   picture: a pixel is explained when its residual is at most ``explained_residual``.
3. Scene cut: at least ``cut_unexplained`` of the pixels are unexplained, or at least
   ``cut_unexplained_with_histogram`` are and the normalized-L histograms of the two frames are at least
   ``cut_histogram`` apart. The flow cue is the primary one (it separates real cuts, 60-80 % unexplained,
   from the worst motion within a shot, 22 %); the histogram cue lowers the bar where the tones changed
   too. A frame at a cut keeps its own prediction, and the state restarts from it.
4. Otherwise ``s_t = (1 - w) * p_t + w * warp(s_{t-1})`` with ``w = alpha(strength) * visibility``, where a
   cell's visibility is the fraction of its render pixels that are explained and whose flow lands inside
   the previous frame: occluded, newly uncovered and badly tracked regions take the current prediction.

Strength maps to the half-life of a colour error: ``alpha = 0.5 ** (1 / (strength * MAX_HALF_LIFE_FRAMES))``,
so a flicker decays to half in ``strength * 6`` frames (strength 0.5: 3 frames, alpha 0.79; strength 1:
6 frames, alpha 0.89). Half-life is what a viewer sees (how long a wrong colour lingers), and it is linear
in the slider, where alpha itself would crowd all the visible change into the top of its range.

Cost, measured on one core (``cv2.setNumThreads(1)``, ``OMP_NUM_THREADS=1``) over 120 frames of 01_dog
at a 256x144 render (padded to 256x160, output grid 64x40): 1.0-1.6 ms per frame (three runs on a shared
machine), of which DIS flow is 0.8 ms.

Measured with the shipped model on 90-120 frames of the tuning clips at render size, the warping error
(``tools.warping``) with smoothing off -> strength 0.5 -> strength 1 (the truth's own error in brackets):
bikes 0.75e-3 -> 0.35e-3 -> 0.33e-3 (0.32e-3), cockatoo 0.52e-3 -> 0.30e-3 -> 0.30e-3 (0.30e-3), 01_dog
0.48e-3 -> 0.20e-3 -> 0.19e-3 (0.21e-3), Big Buck Bunny 0.135e-3 -> 0.102e-3 -> 0.101e-3 (0.118e-3),
04_coffee 0.271e-3 -> 0.263e-3 -> 0.263e-3 (0.282e-3). The mean ab error against the truth fell (01_dog
6.51 -> 6.25 -> 6.04) or rose by less than 0.05 (Big Buck Bunny 11.88 -> 11.89 -> 11.93).

Cut detection on the evaluation clips (render long side 256, default options; frames counted from 0, a
cut at t is between frames t-1 and t), each call and each shot checked by eye:

=================================  =======================  ============================================
clip (frames, source size)         cuts called              notes
=================================  =======================  ============================================
bikes (250, 640x272)               30, 76, 137, 187, 242    all five hard cuts; worst non-cut 22 %
                                                            unexplained (fast motion, frame 102)
big_buck_bunny_0_30 (720, 720p)    283, 376, 551            its three cuts; not the fade-in from black
                                                            (0-30) nor a bird passing the lens (498)
a-bomb_blast_effects_part (360)    44, 134, 299             its three cuts (grainy black-and-white film;
                                                            no flash in this excerpt); worst non-cut 6 %
cockatoo (280, 720p handheld)      none                     worst 13 %: the bird's head fills the frame
01_dog, 04_coffee (720p handheld)  none                     worst 1 % and 2 %
carphone_pristine (120, 176x144)   none                     worst 1 %
chaplin (241, 640x360 b/w)         none                     one shot; worst 7 %
bottle-detection (1189, 640x360)   none                     one shot; worst 1 %
=================================  =======================  ============================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from models.references import ReferenceTrack

# --- optical flow, shared with tools.warping -----------------------------------------------------

# DIS "fast" preset for the smoother: 0.75 ms at 256x160 on one core. "ultrafast" (0.35 ms, no variational
# refinement) gave the same warping error on the tuning clips but less margin in the cut test (worst
# non-cut 24 % unexplained instead of 22 %, cockatoo 15 % instead of 13 %); "medium" (3.8 ms) improved the
# warping error by about 1 %. The metric in tools.warping, where accuracy matters more, uses "medium".
FLOW_PRESET = cv2.DISOPTICAL_FLOW_PRESET_FAST


def compute_flow(reference: np.ndarray, moving: np.ndarray, preset: int = FLOW_PRESET) -> np.ndarray:
    """Dense optical flow (DIS) such that ``reference(x) ~ moving(x + flow(x))``: ``(h, w, 2)`` float32 (x, y).

    Both images are ``(h, w)`` uint8. ``warp(moving, flow)`` then lines ``moving`` up with ``reference``.
    A fresh DIS object per call (about 0.05 ms): OpenCV's object keeps scratch buffers, so sharing one
    between the threads that encode segments in parallel would not be safe.
    """
    if reference.dtype != np.uint8 or moving.dtype != np.uint8:
        raise ValueError(f"flow images must be uint8, got {reference.dtype} and {moving.dtype}")
    if reference.ndim != 2 or reference.shape != moving.shape:
        raise ValueError(f"flow images must be 2-D and of one shape, got {reference.shape} and {moving.shape}")
    dis = cv2.DISOpticalFlow_create(preset)
    return dis.calc(np.ascontiguousarray(reference), np.ascontiguousarray(moving), None)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward warping: ``out(x) = image(x + flow(x))``, bilinear, edges replicated.

    ``image`` is ``(h, w)`` or ``(h, w, C)`` with C <= 4 (float32 or uint8); ``flow`` is ``(h, w, 2)`` as
    ``compute_flow`` returns it. Where ``x + flow(x)`` leaves the image the edge is repeated; use
    ``flow_inside`` to know where.
    """
    if flow.shape[:2] != image.shape[:2] or flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow {flow.shape} does not fit image {image.shape}: expected (h, w, 2)")
    map_x, map_y = _sample_positions(flow)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def flow_inside(flow: np.ndarray) -> np.ndarray:
    """``(h, w)`` bool: where ``x + flow(x)`` falls inside the image (the pixels a backward warp can fill)."""
    map_x, map_y = _sample_positions(flow)
    height, width = flow.shape[:2]
    return (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)


def _sample_positions(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    height, width = flow.shape[:2]
    map_x = flow[..., 0] + np.arange(width, dtype=np.float32)[None, :]
    map_y = flow[..., 1] + np.arange(height, dtype=np.float32)[:, None]
    return map_x.astype(np.float32, copy=False), map_y.astype(np.float32, copy=False)


# --- smoothing ------------------------------------------------------------------------------------

# Strength 1 halves a colour error every 6 frames (a quarter second at 24 fps): residual jitter of
# independent per-frame noise falls to sqrt((1 - a) / (1 + a)) = 23 % of the input. Longer memories
# make colours that genuinely change (a lamp switched on, an object the network only recognizes as it
# comes closer) lag visibly, and every warp of the state blurs it a little more.
MAX_HALF_LIFE_FRAMES = 6.0

# Normalized L is stored as uint8 (DIS needs 8-bit images): 128 + NORMALIZED_SCALE * (L - mean) / std,
# so +-4 standard deviations fit the byte and one level is 1/32 std, far below the thresholds below.
NORMALIZED_SCALE = 32.0
# A frame's standard deviation is taken as at least this (L units) when normalizing. Near-black frames of
# a fade have std below 1, and dividing by that turns compression noise into structure the flow cannot
# explain: fading in from black, Big Buck Bunny's opening (std 1.9 at frame 19) looked 32 % unexplained
# with a floor of 1 and 24 % with 2 (false cuts, or nearly), 11 % with 3. The price: in frames darker
# than this the tests see less contrast, so a cut between two nearly black frames (std below about 2.5)
# may go unnoticed, where colour is barely visible anyway.
MIN_NORMALIZED_STD = 3.0
# L slightly outside [0, 100] from float rounding is accepted; further out is a caller's bug (0-255 gray).
L_TOLERANCE = 0.01
# Histogram of normalized L: one bin per uint8 level.
_LEVELS = 256
# Residuals are box-averaged over this many render pixels (square) before thresholding: 5 px at a 256
# render is a small fraction of any object, but averages away film grain and blocking artefacts.
RESIDUAL_BLUR = 5


@dataclass(frozen=True)
class SmoothingOptions:
    """How strongly to smooth, and the thresholds of the cut and occlusion tests (see the module docstring).

    The threshold defaults were tuned on the clips listed in the module docstring; they are in units of
    the normalized L (standard deviations of the frame), so they do not depend on exposure or contrast.
    """

    # 0 = off (ab returned unchanged, no flow computed, no cuts reported), 1 = strongest.
    strength: float = 0.5
    # A render pixel is explained by the flow when its blurred residual is at most this many standard
    # deviations. Explained pixels carry the previous colour; unexplained ones (occlusions, newly uncovered
    # background, failed flow) take the current prediction; and many unexplained pixels make a cut. Cut
    # frames leave 60-80 % of pixels above 0.5, steady footage 0-5 %, fast handheld motion up to 22 %. On
    # the tuning clips with the shipped model, 0.15 and 0.25 cost warping error on fast motion (bikes:
    # 0.39e-3 and 0.36e-3 against 0.35e-3 at strength 0.5) and accuracy against the truth; 1.0 gained
    # little more (0.34e-3) and would let colour follow the flow across occlusions of similar brightness.
    explained_residual: float = 0.5
    # A cut when at least this fraction of the pixels is unexplained: between the worst non-cut seen while
    # tuning (22 %, fast motion in bikes; 13 % in handheld cockatoo) and the weakest real cut (60 %).
    cut_unexplained: float = 0.45
    # ... or when this lower fraction is unexplained and the tonal distribution changed too, the normalized-L
    # histograms being at least ``cut_histogram`` apart (Wasserstein-1, in standard deviations). Real cuts
    # measured 0.145-0.56 apart, fast motion within a shot up to 0.085; the non-cuts whose histograms did move
    # that much (a synthetic flash that clips highlights, a bird filling a handheld frame, Big Buck Bunny
    # fading in from black) left at most 18 % unexplained.
    # The histogram lowers the bar instead of vetoing, because two shots of one scene can have the same
    # histogram (a synthetic cut between two textures of one kind measured 0.03).
    cut_unexplained_with_histogram: float = 0.3
    cut_histogram: float = 0.1

    def __post_init__(self) -> None:
        values = {
            "strength": self.strength,
            "explained_residual": self.explained_residual,
            "cut_unexplained": self.cut_unexplained,
            "cut_unexplained_with_histogram": self.cut_unexplained_with_histogram,
            "cut_histogram": self.cut_histogram,
        }
        for name, value in values.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"SmoothingOptions.{name} must be a finite number, got {value!r}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"smoothing strength must lie in [0, 1] (0 = off, 1 = strongest), got {self.strength}")
        if not 0.0 <= self.cut_unexplained_with_histogram <= self.cut_unexplained <= 1.0:
            raise ValueError(
                "cut_unexplained_with_histogram <= cut_unexplained must be fractions of pixels in [0, 1], got "
                f"{self.cut_unexplained_with_histogram} and {self.cut_unexplained}"
            )
        for name in ("explained_residual", "cut_histogram"):
            if values[name] <= 0:
                raise ValueError(f"SmoothingOptions.{name} must be > 0, got {values[name]}")

    @property
    def alpha(self) -> float:
        """The most weight the warped previous colour gets (where fully visible): see the module docstring."""
        if self.strength == 0:
            return 0.0
        return 0.5 ** (1.0 / (self.strength * MAX_HALF_LIFE_FRAMES))


@dataclass
class _Frame:
    """What the smoother keeps of the last frame it emitted."""

    normalized: np.ndarray  # (h, w) uint8 normalized render L, the flow's input
    cdf: np.ndarray  # (_LEVELS,) float64 cumulative histogram of ``normalized``
    ab: np.ndarray  # (h // s, w // s, 2) float32 smoothed ab, channels-last for cv2.remap


@dataclass(frozen=True)
class _FrameMotion:
    """How frame t relates to frame t-1, as the cut test and the blend see it."""

    flow: np.ndarray  # (h, w, 2) render-resolution flow from frame t to frame t-1
    residual: np.ndarray  # (h, w) float32 blurred |normalized L_t - warped normalized L_{t-1}|, in std
    inside: np.ndarray  # (h, w) bool: the flow lands inside frame t-1
    unexplained: float  # fraction of the inside pixels whose residual exceeds ``explained_residual``
    histogram_distance: float  # Wasserstein-1 distance of the normalized-L histograms, in std


class TemporalSmoother:
    """Stateful, deterministic smoothing of grid ab over a film's frames in display order.

    One instance per film (or segment) and thread; ``reset()`` between films. State is carried across
    ``smooth`` calls, so any split of the frames into batches gives the same result.
    """

    def __init__(self, options: SmoothingOptions, output_stride: int) -> None:
        if not isinstance(options, SmoothingOptions):
            raise ValueError(f"options must be a SmoothingOptions, got {type(options).__name__}")
        if isinstance(output_stride, bool) or not isinstance(output_stride, int | np.integer) or output_stride < 1:
            raise ValueError(f"output_stride must be a positive integer, got {output_stride!r}")
        self.options = options
        self.output_stride = int(output_stride)
        self._alpha = options.alpha
        self._previous: _Frame | None = None

    def reset(self) -> None:
        """Forget the previous frame: the next frame starts a new film or segment (and is not a cut)."""
        self._previous = None

    def smooth(self, L_render: np.ndarray, ab_grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Smooth one batch of consecutive frames.

        ``L_render`` is ``(B, h, w)`` float32 in [0, 100] (the padded render L), ``ab_grid`` ``(B, 2, h // s,
        w // s)`` float32 with s the output stride. Returns the smoothed ab (same shape and dtype) and
        ``cuts``, ``(B,)`` bool, True where a frame starts a new shot. The first frame after ``reset()`` is
        never a cut; with strength 0 nothing is computed, ab is returned as given and no cut is reported.
        """
        self._check(L_render, ab_grid)
        batch = L_render.shape[0]
        cuts = np.zeros(batch, dtype=bool)
        if self._alpha == 0.0:
            return ab_grid, cuts  # the caller's array itself: nothing was computed
        out = np.empty_like(ab_grid)
        for i in range(batch):
            ab, cuts[i] = self._smooth_frame(L_render[i], ab_grid[i])
            out[i] = ab.transpose(2, 0, 1)
        return out, cuts

    # --- one frame ------------------------------------------------------------------------------------

    def _smooth_frame(self, L: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, bool]:
        normalized = _normalized_u8(L)
        cdf = _cumulative_histogram(normalized)
        predicted = np.ascontiguousarray(prediction.transpose(1, 2, 0))
        previous = self._previous
        if previous is not None and previous.normalized.shape != normalized.shape:
            raise ValueError(
                f"frame size changed from {previous.normalized.shape} to {normalized.shape} within one film: "
                "call reset() before a new film or segment"
            )
        cut = False
        smoothed = predicted
        if previous is not None:
            motion = _measure_motion(previous.normalized, previous.cdf, normalized, cdf, self.options)
            cut = _is_cut(motion, self.options)
            if not cut:
                smoothed = self._blend(predicted, previous.ab, motion)
        self._previous = _Frame(normalized, cdf, smoothed)
        return smoothed, cut

    def _blend(self, predicted: np.ndarray, previous_ab: np.ndarray, motion: _FrameMotion) -> np.ndarray:
        """``(1 - w) p + w warp(s_prev)`` on the output grid, ``w = alpha * visibility`` per cell."""
        cells_h, cells_w = predicted.shape[:2]
        flow, visibility = _cell_motion(motion, self.options, self.output_stride, cells_h, cells_w)
        carried = warp(previous_ab, flow)
        weight = (self._alpha * visibility)[..., None]
        return (predicted + weight * (carried - predicted)).astype(np.float32, copy=False)

    # --- checks ---------------------------------------------------------------------------------------

    def _check(self, L_render: np.ndarray, ab_grid: np.ndarray) -> None:
        for name, array in (("L_render", L_render), ("ab_grid", ab_grid)):
            if not isinstance(array, np.ndarray):
                raise ValueError(f"{name} must be a numpy array, got {type(array).__name__}")
            if array.dtype != np.float32:
                raise ValueError(f"{name} must be float32, got {array.dtype}")
        if L_render.ndim != 3:
            raise ValueError(f"L_render must be (B, h, w), got shape {L_render.shape}")
        batch, height, width = L_render.shape
        s = self.output_stride
        expected = (batch, 2, height // s, width // s)
        if ab_grid.shape != expected:
            raise ValueError(
                f"ab_grid has shape {ab_grid.shape}; for L_render {L_render.shape} and output stride {s} "
                f"expected {expected}"
            )
        if height // s == 0 or width // s == 0:
            raise ValueError(f"L_render {height}x{width} is smaller than one output cell ({s}x{s})")
        if batch:
            low, high = float(L_render.min()), float(L_render.max())
            if not (math.isfinite(low) and math.isfinite(high)) or low < -L_TOLERANCE or high > 100 + L_TOLERANCE:
                raise ValueError(f"L_render must lie in [0, 100], got [{low:.3g}, {high:.3g}]")


def _normalized_u8(L: np.ndarray) -> np.ndarray:
    """Render L -> uint8 ``128 + NORMALIZED_SCALE * (L - mean) / max(std, MIN_NORMALIZED_STD)``."""
    mean, std = cv2.meanStdDev(L)
    scale = NORMALIZED_SCALE / max(float(std[0, 0]), MIN_NORMALIZED_STD)
    return np.clip(L * scale + (128.0 - float(mean[0, 0]) * scale), 0, 255).astype(np.uint8)


def _cumulative_histogram(normalized: np.ndarray) -> np.ndarray:
    counts = np.bincount(normalized.ravel(), minlength=_LEVELS).astype(np.float64)
    return np.cumsum(counts) / normalized.size


def _cell_mean(values: np.ndarray, stride: int, cells_h: int, cells_w: int) -> np.ndarray:
    """Mean of ``values`` over each stride x stride cell of the output grid: ``(cells_h, cells_w)`` float32."""
    cropped = values[: cells_h * stride, : cells_w * stride]
    if stride == 1:
        return np.ascontiguousarray(cropped, dtype=np.float32)
    return cv2.resize(cropped, (cells_w, cells_h), interpolation=cv2.INTER_AREA)


def _measure_motion(
    previous: np.ndarray,
    previous_cdf: np.ndarray,
    current: np.ndarray,
    current_cdf: np.ndarray,
    options: SmoothingOptions,
) -> _FrameMotion:
    """Flow from ``current`` to ``previous`` (normalized uint8 L) and the statistics the cut test needs."""
    flow = compute_flow(current, previous)
    warped = warp(previous, flow)
    difference = cv2.absdiff(current, warped).astype(np.float32) * (1.0 / NORMALIZED_SCALE)
    residual = cv2.blur(difference, (RESIDUAL_BLUR, RESIDUAL_BLUR))
    inside = flow_inside(flow)
    inside_count = int(np.count_nonzero(inside))
    if inside_count == 0:
        unexplained = 1.0
    else:
        unexplained = np.count_nonzero((residual > options.explained_residual) & inside) / inside_count
    histogram_distance = float(np.abs(current_cdf - previous_cdf).sum() / NORMALIZED_SCALE)
    return _FrameMotion(flow, residual, inside, float(unexplained), histogram_distance)


def _cell_motion(
    motion: _FrameMotion, options: SmoothingOptions, stride: int, cells_h: int, cells_w: int
) -> tuple[np.ndarray, np.ndarray]:
    """The flow on the output grid, in cells (a cell's render pixels' mean flow), and each cell's visibility: the
    fraction of its render pixels that the flow explains and that land inside the other frame."""
    visible = (motion.residual <= options.explained_residual) & motion.inside
    visibility = _cell_mean(visible.astype(np.float32), stride, cells_h, cells_w)
    flow = np.stack([_cell_mean(motion.flow[..., c], stride, cells_h, cells_w) for c in range(2)], axis=-1) / stride
    return flow, visibility


@dataclass(frozen=True)
class FlowFrame:
    """One frame as the flow and the cut test see it: its normalized render L and that L's cumulative histogram.
    Small (a byte a render pixel), so the frames around several references can be kept once for all of them."""

    normalized: np.ndarray
    cdf: np.ndarray

    @classmethod
    def of(cls, L_render: np.ndarray) -> FlowFrame:
        normalized = _normalized_u8(L_render)
        return cls(normalized, _cumulative_histogram(normalized))


def carry_reference(
    frames: Sequence[FlowFrame],
    reference: int,
    cells: np.ndarray,
    options: SmoothingOptions,
    output_stride: int,
    fade: float,
) -> dict[int, ReferenceTrack]:
    """A reference frame's colours carried forward and backward through its shot (``models.references``).

    ``frames`` are consecutive frames (``FlowFrame.of`` their padded render L), the reference at position
    ``reference`` with its ``cells`` ``(2, h, w)``. Returns ``{position: track}`` for every frame the reference
    reaches: it stops at the first scene cut on each side (the very test the smoother makes between those two
    frames, so a reference never crosses a cut the smoother saw) and where its confidence has faded out. The result
    depends only on these frames, never on where a segment begins, so a film colorized in segments gets the same
    colours as one colorized whole.
    """
    # Frames are read in order and only as far as the reference reaches, so ``frames`` may decode lazily: a shot that
    # ends long before the reach is over costs no frames beyond its cut.
    cells_h, cells_w = cells.shape[1:]
    tracks = {reference: ReferenceTrack.start(cells)}
    track = tracks[reference]
    for t in range(reference + 1, len(frames)):
        before, after = frames[t - 1], frames[t]
        motion = _measure_motion(before.normalized, before.cdf, after.normalized, after.cdf, options)  # flow t -> t-1
        if _is_cut(motion, options):
            break
        track = track.step(*_cell_motion(motion, options, output_stride, cells_h, cells_w), fade)
        if not track.alive:
            break
        tracks[t] = track
    track = tracks[reference]
    for t in range(reference - 1, -1, -1):
        before, after = frames[t], frames[t + 1]
        # The cut test is the smoother's, made in its direction (flow from t+1 to t); carrying needs the flow
        # the other way, from frame t into frame t+1, whose colours are known.
        if _is_cut(_measure_motion(before.normalized, before.cdf, after.normalized, after.cdf, options), options):
            break
        motion = _measure_motion(after.normalized, after.cdf, before.normalized, before.cdf, options)  # flow t -> t+1
        track = track.step(*_cell_motion(motion, options, output_stride, cells_h, cells_w), fade)
        if not track.alive:
            break
        tracks[t] = track
    return tracks


def _is_cut(motion: _FrameMotion, options: SmoothingOptions) -> bool:
    """A hard cut: the flow cannot explain most of the picture, or much of it while the tones changed too."""
    if motion.unexplained >= options.cut_unexplained:
        return True
    tones_changed = motion.histogram_distance >= options.cut_histogram
    return tones_changed and motion.unexplained >= options.cut_unexplained_with_histogram
