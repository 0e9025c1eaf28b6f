"""Warping error: how much a colorized film flickers (Lai et al., ECCV 2018, "Learning Blind Video Temporal
Consistency").

For each pair of consecutive frames of one shot, the ground truth's optical flow from frame t to frame t-1
carries the *output's* frame t-1 onto frame t, and the mean squared difference over the pixels the flow can
be trusted on is the pair's error; the film's error is the mean over pairs:

    E_t = sum(M * ||O_t - warp(O_{t-1})||^2) / (3 * sum(M))

with O in sRGB [0, 1]. The 3 is the number of channels: it makes E the per-channel mean that Lai's released
evaluation computes (its occlusion mask is read back as a three-channel image, so its pixel count is three
times the pixel count), so numbers here compare with published ones; the formula in the paper omits it.

* The flow is computed on the truth, as Lai does (FlowNet2 there; DIS with the accurate "medium" preset
  here), so the metric does not depend on the output it judges. Scoring the truth against itself gives the
  truth's own warping error: the floor left by real changes in the footage and by flow errors, which
  evaluation prints beside the model's output with smoothing off and on.
* M excludes occlusions and motion boundaries by the forward-backward consistency test of Ruder et al.
  (GCPR 2016), which Lai uses, and the pixels whose flow leaves the frame (content that just came into
  view has nothing to be compared with).
* Flow is computed on the truth's gray at full resolution up to ``MAX_FLOW_SIDE`` pixels on the long side,
  and on an area-downscaled copy above that, then scaled back up. Flow resolution moves the numbers: the
  truth's own error on the first frames of 01_dog (1280x720) is 5.8e-5 with flow at full resolution,
  7.4e-5 at 1024 and 13e-5 at 640 pixels wide (coarser flow, larger warping residuals), so compare
  numbers measured with one setting only. Cost on one core at 1280x720: 275 ms per frame (two DIS flows
  of 90 ms each, the rest is the consistency test and the warp); 9 ms at 256x144.

``WarpingError`` is a streaming accumulator (only the previous frame is kept), so a whole film never has
to be in memory; ``score_sequence`` scores lists of frames in one call.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import cv2
import numpy as np

from worker.smoothing import compute_flow, flow_inside, warp

# DIS "medium": finest scale 1 (the "fast" preset of the smoother stops at scale 2, a quarter of the
# resolution) and more iterations; about 5x the cost of "fast", affordable for evaluation.
METRIC_FLOW_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
# Long side above which the truth is downscaled for flow: DAVIS (854x480, Lai's benchmark) and 720p are
# used as they are; 1080p and larger scans, at 2.25x the cost and more, are brought down to 1280.
MAX_FLOW_SIDE = 1280
# Ruder et al. (2016), as in Lai's released code: a pixel is occluded where following the flow
# back and forth misses by more than 1 % of the squared motion plus half a pixel squared, and sits on a
# motion boundary where the squared flow gradient exceeds 1 % of the squared motion plus 0.002.
CONSISTENCY_RELATIVE = 0.01
CONSISTENCY_ABSOLUTE = 0.5
BOUNDARY_RELATIVE = 0.01
BOUNDARY_ABSOLUTE = 0.002
# Frames may be sRGB floats a little outside [0, 1] from rounding; further out is a caller's bug
# (0-255 values, Lab).
RGB_TOLERANCE = 1e-3


def truth_gray(rgb: np.ndarray) -> np.ndarray:
    """sRGB ``(H, W, 3)`` floats in [0, 1] -> ``(H, W)`` uint8 gray, the flow's input."""
    gray = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    return np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8)


def consistent_mask(flow_back: np.ndarray, flow_forward: np.ndarray) -> np.ndarray:
    """Ruder et al.'s test for frame t: ``(h, w)`` bool, True where the flow from t to t-1 can be trusted.

    ``flow_back`` maps frame t to frame t-1 and ``flow_forward`` frame t-1 to frame t (both as
    ``compute_flow`` returns them). A pixel passes when the forward flow at its position in frame t-1 leads
    back to it, it is not on a motion boundary, and its flow stays inside the frame.
    """
    forward_there = warp(flow_forward, flow_back)
    round_trip = np.sum((flow_back + forward_there) ** 2, axis=-1)
    motion = np.sum(flow_back**2, axis=-1)
    motion_there = np.sum(forward_there**2, axis=-1)
    consistent = round_trip <= CONSISTENCY_RELATIVE * (motion + motion_there) + CONSISTENCY_ABSOLUTE
    # Forward differences with a zero last row/column, as in Ruder's and Lai's code.
    gradient = np.zeros(motion.shape, dtype=np.float32)
    gradient[:, :-1] += np.sum((flow_back[:, :-1] - flow_back[:, 1:]) ** 2, axis=-1)
    gradient[:-1, :] += np.sum((flow_back[:-1, :] - flow_back[1:, :]) ** 2, axis=-1)
    smooth = gradient <= BOUNDARY_RELATIVE * motion + BOUNDARY_ABSOLUTE
    return consistent & smooth & flow_inside(flow_back)


class WarpingError:
    """Streaming warping error over a film's frames in display order (see the module docstring).

    ``update(output, truth)`` per frame; ``cut()`` at a known shot boundary so that no pair spans it; ``value``
    is the mean over the scored pairs and ``pairs`` their number. One instance per film and thread.
    """

    def __init__(self, max_flow_side: int = MAX_FLOW_SIDE, preset: int = METRIC_FLOW_PRESET) -> None:
        if isinstance(max_flow_side, bool) or not isinstance(max_flow_side, int) or max_flow_side < 16:
            raise ValueError(f"max_flow_side must be an integer of at least 16 pixels, got {max_flow_side!r}")
        self.max_flow_side = max_flow_side
        self.preset = preset
        self._previous_output: np.ndarray | None = None
        self._previous_gray: np.ndarray | None = None
        self._errors: list[float] = []

    def update(self, output_rgb: np.ndarray, truth_rgb: np.ndarray) -> float | None:
        """Add the next frame: ``(H, W, 3)`` sRGB in [0, 1], the output and its ground truth.

        Returns this frame's error against the previous one, or None for the first frame of a shot (and for
        a pair in which no pixel passes the consistency test, which is then not scored).
        """
        output = self._check(output_rgb, "output_rgb")
        truth = self._check(truth_rgb, "truth_rgb")
        if output.shape != truth.shape:
            raise ValueError(f"output {output.shape} and truth {truth.shape} differ in shape")
        previous_output, previous_gray = self._previous_output, self._previous_gray
        if previous_output is not None and previous_output.shape != output.shape:
            raise ValueError(
                f"frame size changed from {previous_output.shape} to {output.shape}: call cut() between shots of "
                "different sizes"
            )
        gray = self._flow_gray(truth)
        # A copy: callers may decode the next frame into the same buffer.
        self._previous_output, self._previous_gray = output.copy(), gray
        if previous_output is None or previous_gray is None:
            return None
        flow, mask = self._flow_and_mask(previous_gray, gray, output.shape[:2])
        count = int(np.count_nonzero(mask))
        if count == 0:
            return None
        squared = np.sum((output - warp(previous_output, flow)) ** 2, axis=-1, dtype=np.float64)
        error = float(squared[mask].sum() / (3 * count))
        self._errors.append(error)
        return error

    def cut(self) -> None:
        """A shot boundary: the next frame starts afresh and is not compared with the previous one."""
        self._previous_output = None
        self._previous_gray = None

    @property
    def value(self) -> float:
        """Mean error over the scored frame pairs; NaN before any pair was scored."""
        return float(np.mean(self._errors)) if self._errors else math.nan

    @property
    def pairs(self) -> int:
        return len(self._errors)

    @property
    def frame_errors(self) -> list[float]:
        """Each scored pair's error, in order."""
        return list(self._errors)

    # --- helpers --------------------------------------------------------------------------------------

    def _flow_gray(self, truth: np.ndarray) -> np.ndarray:
        gray = truth_gray(truth)
        height, width = gray.shape
        scale = self.max_flow_side / max(height, width)
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        return gray

    def _flow_and_mask(
        self, previous_gray: np.ndarray, gray: np.ndarray, full_size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Flow from frame t to frame t-1 and the trusted-pixel mask, both at the frames' full resolution."""
        flow_back = compute_flow(gray, previous_gray, self.preset)
        flow_forward = compute_flow(previous_gray, gray, self.preset)
        mask = consistent_mask(flow_back, flow_forward)
        height, width = full_size
        if gray.shape == (height, width):
            return flow_back, mask
        flow_h, flow_w = gray.shape
        flow = cv2.resize(flow_back, (width, height), interpolation=cv2.INTER_LINEAR)
        flow *= np.array([width / flow_w, height / flow_h], dtype=np.float32)
        mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
        return flow, mask & flow_inside(flow)

    @staticmethod
    def _check(rgb: np.ndarray, name: str) -> np.ndarray:
        if not isinstance(rgb, np.ndarray):
            raise ValueError(f"{name} must be a numpy array, got {type(rgb).__name__}")
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise ValueError(f"{name} must be an (H, W, 3) sRGB image, got shape {rgb.shape}")
        if not np.issubdtype(rgb.dtype, np.floating):
            raise ValueError(f"{name} must be floats in [0, 1], got dtype {rgb.dtype}")
        low, high = float(rgb.min()), float(rgb.max())
        if not (math.isfinite(low) and math.isfinite(high)) or low < -RGB_TOLERANCE or high > 1 + RGB_TOLERANCE:
            raise ValueError(f"{name} must lie in [0, 1], got [{low:.3g}, {high:.3g}]")
        return np.ascontiguousarray(rgb, dtype=np.float32)


def score_sequence(
    outputs: Iterable[np.ndarray],
    truths: Iterable[np.ndarray],
    cuts: Iterable[int] = (),
    max_flow_side: int = MAX_FLOW_SIDE,
) -> WarpingError:
    """Score whole lists of frames: ``cuts`` are the indices of frames that start a new shot.

    Returns the accumulator, whose ``value``, ``pairs`` and ``frame_errors`` describe the sequence.
    """
    starts = set(cuts)
    metric = WarpingError(max_flow_side=max_flow_side)
    frames = 0
    for index, (output, truth) in enumerate(zip(outputs, truths, strict=True)):
        if index in starts:
            metric.cut()
        metric.update(output, truth)
        frames += 1
    if frames == 0:
        raise ValueError("no frames to score")
    return metric
