"""Temporal smoothing (worker.smoothing) on a generated film whose cuts and true colours are known.

The film: three shots of a smooth random texture panning a few pixels a frame, each with a textured disc
moving across it, separated by hard cuts to a new texture. Its true colour is a smooth ab field that moves
with the scene (the disc has its own colour); the "network" predicts that field on the output grid plus
per-frame independent noise (a global colour flicker and a smooth local wobble), as a real network's
frame-to-frame jitter looks.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from models.color import lab_to_rgb_np
from tools.warping import score_sequence
from worker.smoothing import (
    MAX_HALF_LIFE_FRAMES,
    SmoothingOptions,
    TemporalSmoother,
    compute_flow,
    flow_inside,
    warp,
)

HEIGHT, WIDTH = 128, 192  # a padded render
STRIDE = 4  # output stride: the grid is 32x48
SHOT_LENGTHS = (12, 10, 10)
CUT_FRAMES = [12, 22]
# (pan velocity in px/frame, the shot's mean ab): each shot moves and is coloured differently.
SHOTS = (((2, 1), (30.0, 30.0)), ((-1, 2), (-30.0, -20.0)), ((3, 0), (10.0, 50.0)))
DISC_RADIUS = 22
DISC_VELOCITY = (-3, 2)
FLICKER_AB = 6.0  # std of the per-frame global colour offset
WOBBLE_AB = 12.0  # amplitude of the per-frame smooth local noise before blurring


@dataclass(frozen=True)
class Film:
    L: np.ndarray  # (T, H, W) float32 in [0, 100]
    clean: np.ndarray  # (T, 2, H / s, W / s) true ab on the output grid
    prediction: np.ndarray  # clean + per-frame noise


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float, low: float, high: float
) -> np.ndarray:
    field = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    field = (field - field.min()) / (field.max() - field.min())
    return (low + (high - low) * field).astype(np.float32)


def _shot(seed: int, frames: int, velocity: tuple[int, int], ab_mean: tuple[float, float]) -> tuple[np.ndarray, ...]:
    """One shot at render resolution: L (T, H, W) and ab (T, 2, H, W)."""
    rng = np.random.default_rng(seed)
    vx, vy = velocity
    margin = 4
    canvas = (HEIGHT + abs(vy) * frames + 2 * margin, WIDTH + abs(vx) * frames + 2 * margin)
    L_canvas = _smooth_field(rng, canvas, 3.0, 15, 75)
    a_canvas = _smooth_field(rng, canvas, 12.0, ab_mean[0] - 20, ab_mean[0] + 20)
    b_canvas = _smooth_field(rng, canvas, 12.0, ab_mean[1] - 20, ab_mean[1] + 20)
    disc_L = _smooth_field(rng, (HEIGHT, WIDTH), 2.0, 70, 95)
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH]
    Ls, abs_ = [], []
    for t in range(frames):
        y0 = margin + (vy * t if vy >= 0 else -vy * (frames - t))
        x0 = margin + (vx * t if vx >= 0 else -vx * (frames - t))
        window = np.s_[y0 : y0 + HEIGHT, x0 : x0 + WIDTH]
        L = L_canvas[window].copy()
        ab = np.stack((a_canvas[window], b_canvas[window]))
        cx, cy = WIDTH * 0.7 + DISC_VELOCITY[0] * t, HEIGHT * 0.3 + DISC_VELOCITY[1] * t
        disc = (columns - cx) ** 2 + (rows - cy) ** 2 <= DISC_RADIUS**2
        L[disc] = disc_L[disc]
        ab[0][disc], ab[1][disc] = -ab_mean[0], 0.5 * ab_mean[1]
        Ls.append(L)
        abs_.append(ab)
    return np.stack(Ls), np.stack(abs_)


def _to_grid(ab: np.ndarray) -> np.ndarray:
    frames = ab.shape[0]
    cells = ab.reshape(frames, 2, HEIGHT // STRIDE, STRIDE, WIDTH // STRIDE, STRIDE)
    return cells.mean(axis=(3, 5)).astype(np.float32)


def _make_film(seed: int = 0) -> Film:
    Ls, abs_ = [], []
    for k, (frames, (velocity, ab_mean)) in enumerate(zip(SHOT_LENGTHS, SHOTS, strict=True)):
        L, ab = _shot(10 * seed + k, frames, velocity, ab_mean)
        Ls.append(L)
        abs_.append(ab)
    L = np.concatenate(Ls).astype(np.float32)
    clean = _to_grid(np.concatenate(abs_))
    rng = np.random.default_rng(seed + 100)
    flicker = rng.normal(0.0, FLICKER_AB, (len(L), 2, 1, 1))
    wobble = [
        cv2.GaussianBlur(rng.standard_normal(clean.shape[2:] + (2,)).astype(np.float32), (0, 0), 2.0)
        for _ in range(len(L))
    ]
    noise = flicker + WOBBLE_AB * np.stack(wobble).transpose(0, 3, 1, 2)
    return Film(L, clean, (clean + noise).astype(np.float32))


@pytest.fixture(scope="module")
def film() -> Film:
    return _make_film()


def _rgb(L: np.ndarray, ab_grid: np.ndarray) -> list[np.ndarray]:
    """L + grid ab (bilinearly upsampled) -> sRGB frames, through models.color."""
    frames = []
    for L_frame, ab in zip(L, ab_grid, strict=True):
        ab_full = cv2.resize(ab.transpose(1, 2, 0), (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
        lab = np.concatenate((L_frame[..., None], ab_full), axis=-1)
        frames.append(lab_to_rgb_np(lab).astype(np.float32))
    return frames


def _smooth(film: Film, strength: float = 0.5, L: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    smoother = TemporalSmoother(SmoothingOptions(strength=strength), STRIDE)
    return smoother.smooth(film.L if L is None else L, film.prediction)


# --- lighting changes that are not cuts -------------------------------------------------------------


def _steady(L: np.ndarray) -> np.ndarray:
    return L


def _exposure_jitter(L: np.ndarray) -> np.ndarray:
    """Handheld auto-exposure: every frame's gain and offset jump at random (up to +-20 % and +-8 L)."""
    rng = np.random.default_rng(1)
    gain = rng.uniform(0.8, 1.2, (len(L), 1, 1))
    offset = rng.uniform(-8.0, 8.0, (len(L), 1, 1))
    return np.clip(L * gain + offset, 0, 100).astype(np.float32)


def _slow_fade(L: np.ndarray) -> np.ndarray:
    """The first shot fades to 30 % of its brightness (L within 5-25), the second fades in from there."""
    gain = np.ones(len(L), dtype=np.float32)
    gain[2:12] = np.linspace(1.0, 0.3, 10)
    gain[12:22] = np.linspace(0.3, 1.0, 10)
    return (L * gain[:, None, None]).astype(np.float32)


def _flashes(L: np.ndarray) -> np.ndarray:
    """Single-frame flashes (an explosion, a photographer's flash) that clip the highlights."""
    flashed = L.copy()
    for t in (6, 18, 27):
        flashed[t] = np.clip(L[t] * 1.4 + 20.0, 0, 100)
    return flashed


@pytest.mark.parametrize("lighting", [_steady, _exposure_jitter, _slow_fade, _flashes], ids=lambda f: f.__name__[1:])
def test_cuts_are_found_exactly_at_the_hard_cuts(film: Film, lighting) -> None:
    _, cuts = _smooth(film, L=lighting(film.L))
    assert np.flatnonzero(cuts).tolist() == CUT_FRAMES


def test_smoothing_lowers_the_warping_error_and_keeps_the_colours(film: Film) -> None:
    truth = _rgb(film.L, film.clean)
    floor = score_sequence(truth, truth, cuts=CUT_FRAMES).value
    raw, _ = _smooth(film, strength=0.0)
    smoothed, _ = _smooth(film, strength=0.5)
    raw_error = score_sequence(_rgb(film.L, raw), truth, cuts=CUT_FRAMES).value
    smoothed_error = score_sequence(_rgb(film.L, smoothed), truth, cuts=CUT_FRAMES).value
    # Measured: the truth's own error 0.30e-3, raw 3.0e-3, smoothed 0.46e-3.
    assert smoothed_error < raw_error / 3
    assert smoothed_error < floor * 2
    # Against the clean colours, averaging the noise helps (measured 5.3 -> 2.9 ab units) and must never hurt.
    assert np.abs(smoothed - film.clean).mean() <= np.abs(raw - film.clean).mean()
    strongest, _ = _smooth(film, strength=1.0)
    assert np.abs(strongest - film.clean).mean() <= np.abs(raw - film.clean).mean()


def test_strength_zero_returns_the_input_unchanged(film: Film) -> None:
    smoothed, cuts = _smooth(film, strength=0.0)
    assert np.array_equal(smoothed, film.prediction)
    assert smoothed.dtype == np.float32
    assert not cuts.any()


def test_no_colour_crosses_a_cut(film: Film) -> None:
    smoothed, cuts = _smooth(film)
    assert np.flatnonzero(cuts).tolist() == CUT_FRAMES
    for cut in CUT_FRAMES:
        # The cut frame is the network's own prediction ...
        assert np.array_equal(smoothed[cut], film.prediction[cut])
        # ... and everything after it is what a smoother that never saw the earlier shot produces.
        fresh = TemporalSmoother(SmoothingOptions(strength=0.5), STRIDE)
        after, after_cuts = fresh.smooth(film.L[cut:], film.prediction[cut:])
        assert np.array_equal(after, smoothed[cut:])
        assert np.array_equal(after_cuts[1:], cuts[cut + 1 :])


def test_any_batching_gives_the_same_result(film: Film) -> None:
    whole, whole_cuts = _smooth(film)
    for sizes in ([1] * len(film.L), [8, 8, 8, 8], [5, 27], [13, 1, 18]):
        smoother = TemporalSmoother(SmoothingOptions(strength=0.5), STRIDE)
        parts, part_cuts, start = [], [], 0
        for size in sizes:
            ab, cuts = smoother.smooth(film.L[start : start + size], film.prediction[start : start + size])
            parts.append(ab)
            part_cuts.append(cuts)
            start += size
        assert np.array_equal(np.concatenate(parts), whole), sizes
        assert np.array_equal(np.concatenate(part_cuts), whole_cuts), sizes


def test_the_same_input_gives_the_same_output(film: Film) -> None:
    first, first_cuts = _smooth(film, strength=0.8)
    second, second_cuts = _smooth(film, strength=0.8)
    assert np.array_equal(first, second)
    assert np.array_equal(first_cuts, second_cuts)
    assert first.shape == film.prediction.shape and first.dtype == np.float32
    # Segments of one film may be smoothed on machines with different core counts: OpenCV's threading must not
    # change the result.
    threads = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        single, _ = _smooth(film, strength=0.8)
    finally:
        cv2.setNumThreads(threads)
    assert np.array_equal(single, first)


def test_reset_starts_a_new_film(film: Film) -> None:
    smoother = TemporalSmoother(SmoothingOptions(strength=0.5), STRIDE)
    first, _ = smoother.smooth(film.L[:12], film.prediction[:12])
    # Without a reset, the next frame continues the film: frame 11 seen again is blended with its first pass.
    continued, _ = smoother.smooth(film.L[11:12], film.prediction[11:12])
    assert not np.array_equal(continued[0], film.prediction[11])
    smoother.reset()
    again, cuts = smoother.smooth(film.L[:12], film.prediction[:12])
    assert np.array_equal(again, first)
    assert not cuts[0]  # the first frame after reset() is not a cut
    # A new film may have another frame size once the smoother is reset, and not before.
    with pytest.raises(ValueError, match="reset"):
        smoother.smooth(film.L[:1, :64, :96], film.prediction[:1, :, :16, :24])
    smoother.reset()
    small, _ = smoother.smooth(film.L[:2, :64, :96], film.prediction[:2, :, :16, :24])
    assert small.shape == (2, 2, 16, 24)


def test_strength_maps_to_the_half_life_of_a_colour_error() -> None:
    assert SmoothingOptions(strength=0.0).alpha == 0.0
    alphas = [SmoothingOptions(strength=strength).alpha for strength in (0.1, 0.25, 0.5, 1.0)]
    for strength, alpha in zip((0.1, 0.25, 0.5, 1.0), alphas, strict=True):
        assert alpha ** (strength * MAX_HALF_LIFE_FRAMES) == pytest.approx(0.5)
    assert alphas == sorted(alphas) and alphas[-1] < 1.0


def test_a_static_scene_converges_to_the_mean_prediction() -> None:
    """Where every pixel is explained, each frame keeps alpha of the warped past: flicker shrinks to the
    steady-state std sqrt((1 - alpha) / (1 + alpha)) of a first-order recursive filter."""
    rng = np.random.default_rng(3)
    L = np.repeat(_smooth_field(rng, (HEIGHT, WIDTH), 3.0, 15, 75)[None], 200, axis=0)
    noise = rng.normal(0.0, 10.0, (200, 2, 1, 1)).astype(np.float32)
    prediction = np.broadcast_to(noise, (200, 2, HEIGHT // STRIDE, WIDTH // STRIDE)).astype(np.float32)
    options = SmoothingOptions(strength=1.0)
    smoothed, cuts = TemporalSmoother(options, STRIDE).smooth(L, prediction)
    assert not cuts.any()
    expected = 10.0 * np.sqrt((1 - options.alpha) / (1 + options.alpha))
    assert smoothed[50:, :, 10, 10].std() == pytest.approx(expected, rel=0.25)


def test_flow_and_warp_recover_a_translation() -> None:
    rng = np.random.default_rng(4)
    canvas = np.clip(_smooth_field(rng, (HEIGHT + 20, WIDTH + 20), 3.0, 0, 255), 0, 255).astype(np.uint8)
    reference, moving = canvas[5 : 5 + HEIGHT, 5 : 5 + WIDTH], canvas[8 : 8 + HEIGHT, 3 : 3 + WIDTH]
    flow = compute_flow(reference, moving)
    assert flow.shape == (HEIGHT, WIDTH, 2) and flow.dtype == np.float32
    inner = np.s_[10:-10, 10:-10]
    assert np.median(flow[inner][..., 0]) == pytest.approx(2.0, abs=0.1)  # reference(x) = moving(x + (2, -3))
    assert np.median(flow[inner][..., 1]) == pytest.approx(-3.0, abs=0.1)
    aligned = warp(moving.astype(np.float32), flow)
    assert np.abs(aligned[inner] - reference[inner]).mean() < 1.0
    inside = flow_inside(np.full((4, 4, 2), 2.0, dtype=np.float32))
    assert inside[:2, :2].all() and not inside[2:, :].any() and not inside[:, 2:].any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strength": -0.1}, r"\[0, 1\]"),
        ({"strength": 1.5}, r"\[0, 1\]"),
        ({"strength": float("nan")}, "finite"),
        ({"strength": "0.5"}, "number"),
        ({"explained_residual": 0.0}, "> 0"),
        ({"cut_histogram": -1.0}, "> 0"),
        ({"cut_unexplained": 1.2}, "fractions"),
        ({"cut_unexplained": 0.2, "cut_unexplained_with_histogram": 0.3}, "fractions"),
    ],
)
def test_bad_options_are_rejected_with_a_reason(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SmoothingOptions(**kwargs)


def test_bad_arrays_are_rejected_with_a_reason(film: Film) -> None:
    with pytest.raises(ValueError, match="output_stride"):
        TemporalSmoother(SmoothingOptions(), 0)
    with pytest.raises(ValueError, match="SmoothingOptions"):
        TemporalSmoother(0.5, STRIDE)  # type: ignore[arg-type]
    smoother = TemporalSmoother(SmoothingOptions(), STRIDE)
    L, ab = film.L[:2], film.prediction[:2]
    with pytest.raises(ValueError, match="float32"):
        smoother.smooth(L.astype(np.float64), ab)
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        smoother.smooth(L[0], ab)
    with pytest.raises(ValueError, match="expected"):
        smoother.smooth(L, ab[:1])
    with pytest.raises(ValueError, match="expected"):
        smoother.smooth(L, ab[:, :, :-1])
    with pytest.raises(ValueError, match="smaller than one output cell"):
        smoother.smooth(L[:, :2, :2], ab[:, :, :0, :0])
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        smoother.smooth(L * 2.55, ab)  # 0-255 gray values passed as L
    with pytest.raises(ValueError, match="numpy"):
        smoother.smooth(L.tolist(), ab)  # type: ignore[arg-type]
