"""The warping error of Lai et al. (tools.warping) on generated clips whose answer is known."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from tools.warping import WarpingError, consistent_mask, score_sequence, truth_gray
from worker.smoothing import compute_flow, warp

HEIGHT, WIDTH = 96, 128
MARGIN = 40  # canvas pixels around the frame, so that translated frames never wrap around


def _texture(seed: int, height: int = HEIGHT + 2 * MARGIN, width: int = WIDTH + 2 * MARGIN) -> np.ndarray:
    """A smooth random sRGB picture in [0.15, 0.85] (no clipping when a test shifts its colours by 0.05)."""
    rng = np.random.default_rng(seed)
    channels = []
    for _ in range(3):
        field = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 2.5)
        field = (field - field.min()) / (field.max() - field.min())
        channels.append(0.15 + 0.7 * field)
    return np.stack(channels, axis=-1)


def _crop(canvas: np.ndarray, dx: int, dy: int) -> np.ndarray:
    return np.ascontiguousarray(canvas[MARGIN + dy : MARGIN + dy + HEIGHT, MARGIN + dx : MARGIN + dx + WIDTH])


def _translated_clip(frames: int = 5, velocity: tuple[int, int] = (3, -2), seed: int = 0) -> list[np.ndarray]:
    canvas = _texture(seed)
    return [_crop(canvas, velocity[0] * t, velocity[1] * t) for t in range(frames)]


def _moving_square_clip(frames: int = 4, speed: int = 8) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A textured square sliding right over a static background; also returns, per frame, the background the
    square uncovered since the previous frame (the region that appears)."""
    background = _crop(_texture(1), 0, 0)
    square = _texture(2, size := 36, size)
    clip, uncovered = [], []
    top, left = 30, 20
    for t in range(frames):
        frame = background.copy()
        x0 = left + speed * t
        frame[top : top + size, x0 : x0 + size] = square
        clip.append(frame)
        appeared = np.zeros((HEIGHT, WIDTH), dtype=bool)
        if t:
            appeared[top : top + size, x0 - speed : x0] = True
        uncovered.append(appeared)
    return clip, uncovered


def test_a_static_clip_has_zero_error() -> None:
    clip = [_crop(_texture(0), 0, 0)] * 4
    metric = score_sequence(clip, clip)
    assert metric.pairs == 3
    assert metric.value < 1e-8


def test_a_translated_clip_has_zero_error_away_from_the_borders() -> None:
    clip = _translated_clip()
    metric = score_sequence(clip, clip)
    assert metric.pairs == len(clip) - 1
    # Flicker of one 8-bit level in one channel would give (1/255)^2 / 3 = 5e-6.
    assert metric.value < 1e-6


def test_flicker_is_measured_as_the_squared_colour_change() -> None:
    truth = _translated_clip()
    # Every frame's colour moves by 0.05 per channel, alternately up and down: consecutive frames differ by 0.1
    # in each channel, so the per-channel mean squared difference is 0.01.
    output = [frame + (0.05 if t % 2 else -0.05) for t, frame in enumerate(truth)]
    metric = score_sequence(output, truth)
    assert metric.value == pytest.approx(0.01, rel=0.02)
    assert all(error == pytest.approx(0.01, rel=0.02) for error in metric.frame_errors)


def test_the_flow_comes_from_the_truth_not_the_output() -> None:
    truth = _translated_clip()
    # A static output over moving truth flickers (each frame disagrees with its predecessor moved by the truth's
    # motion); if the flow were computed on the output, it would score zero.
    static = [truth[0]] * len(truth)
    assert score_sequence(static, truth).value > 1e-3


def test_the_mask_excludes_the_region_that_appears() -> None:
    clip, uncovered = _moving_square_clip()
    preset = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
    below_the_square = np.zeros((HEIGHT, WIDTH), dtype=bool)
    below_the_square[75:, :] = True
    unmasked = []
    for t in range(1, len(clip)):
        previous, current = truth_gray(clip[t - 1]), truth_gray(clip[t])
        flow = compute_flow(current, previous, preset)
        mask = consistent_mask(flow, compute_flow(previous, current, preset))
        # DIS smooths flow over a few pixels across the square's edge, so a sliver of the 8-pixel strip passes.
        assert mask[uncovered[t]].mean() < 0.2
        assert mask[below_the_square].mean() > 0.95
        unmasked.append(float(np.mean((clip[t] - warp(clip[t - 1], flow)) ** 2)))
    # Scored against itself, the clip keeps a small floor, far below the error of the same pairs unmasked, where
    # the square, carried into the strip that appeared, disagrees with the background there.
    assert score_sequence(clip, clip).value < np.mean(unmasked) / 10


def test_no_pair_is_scored_across_a_cut() -> None:
    first, second = _translated_clip(4, seed=0), _translated_clip(4, seed=7)
    clip = first + second
    across = score_sequence(clip, clip)
    assert across.pairs == 7
    assert max(across.frame_errors) > 1e-3  # the pair across the cut compares unrelated pictures

    with_cut = score_sequence(clip, clip, cuts=[4])
    assert with_cut.pairs == 6
    assert with_cut.value < 1e-6

    metric = WarpingError()
    for frame in first:
        metric.update(frame, frame)
    metric.cut()
    assert metric.update(second[0], second[0]) is None
    assert metric.pairs == 3


def test_large_frames_take_their_flow_downscaled() -> None:
    clip = _translated_clip()
    full = score_sequence(clip, clip).value
    downscaled = score_sequence(clip, clip, max_flow_side=64)
    assert downscaled.pairs == len(clip) - 1
    assert downscaled.value < 1e-4
    flicker = [frame + (0.05 if t % 2 else -0.05) for t, frame in enumerate(clip)]
    assert score_sequence(flicker, clip, max_flow_side=64).value == pytest.approx(0.01, rel=0.05)
    assert full <= downscaled.value + 1e-6


def test_update_returns_each_pairs_error() -> None:
    clip = _translated_clip(3)
    metric = WarpingError()
    assert metric.update(clip[0], clip[0]) is None
    assert math.isnan(metric.value)
    errors = [metric.update(frame, frame) for frame in clip[1:]]
    assert all(error is not None and error < 1e-6 for error in errors)
    assert metric.frame_errors == errors
    assert metric.value == pytest.approx(np.mean(errors))


def test_bad_input_is_rejected_with_a_reason() -> None:
    frame = _crop(_texture(0), 0, 0)
    metric = WarpingError()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric.update(frame * 255, frame)
    with pytest.raises(ValueError, match="floats"):
        metric.update((frame * 255).astype(np.uint8), frame)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        metric.update(frame[..., 0], frame[..., 0])
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(frame, frame[:-1])
    metric.update(frame, frame)
    with pytest.raises(ValueError, match="cut()"):
        metric.update(frame[:-8], frame[:-8])
    with pytest.raises(ValueError, match="max_flow_side"):
        WarpingError(max_flow_side=0)
    with pytest.raises(ValueError, match="no frames"):
        score_sequence([], [])
