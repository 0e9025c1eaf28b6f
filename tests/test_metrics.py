"""The metrics agree with scikit-image (the reference implementation, a test-only dependency)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from models.color import delta_e_ciede2000, delta_e_ciede2000_np, rgb_to_lab_np
from tests.conftest import gradient_image
from tools import metrics


def _noisy_pair(seed: int, shape: tuple[int, ...] = (2, 37, 53, 3)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.stack([gradient_image(*shape[1:3], seed=seed + i) for i in range(shape[0])]).astype(np.float64) / 255
    pred = np.clip(truth + rng.normal(0.0, 0.08, truth.shape), 0.0, 1.0)
    return pred, truth


def test_psnr_matches_skimage_per_image_in_a_batch() -> None:
    pred, truth = _noisy_pair(0)
    ours = metrics.psnr(pred, truth)
    assert ours.shape == (2,)
    for i in range(2):
        assert ours[i] == pytest.approx(peak_signal_noise_ratio(truth[i], pred[i], data_range=1.0), abs=1e-9)
    assert metrics.psnr(pred[0], truth[0]) == pytest.approx(ours[0])


def test_psnr_of_identical_images_is_infinite_and_8bit_ignores_sub_quantum_differences() -> None:
    _, truth = _noisy_pair(1)
    assert metrics.psnr(truth[0], truth[0]) == math.inf
    assert metrics.psnr_8bit(truth[0] + 1e-4, truth[0]) == math.inf
    as_bytes = (truth[0] * 255).round().astype(np.uint8)
    assert metrics.psnr_8bit(as_bytes, truth[0]) == math.inf
    assert metrics.finite_mean([30.0, math.inf]) == math.inf
    assert math.isnan(metrics.finite_mean([]))


def test_ssim_matches_skimage_gaussian_window() -> None:
    pred, truth = _noisy_pair(2, (2, 48, 71, 3))
    ours = metrics.ssim(pred, truth)
    for i in range(2):
        ref = structural_similarity(
            pred[i], truth[i], data_range=1, channel_axis=-1, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False,
        )
        assert ours[i] == pytest.approx(ref, abs=1e-4)
    assert metrics.ssim(truth[0], truth[0]) == pytest.approx(1.0)
    as_tensor = metrics.ssim(torch.from_numpy(pred[0]).float(), torch.from_numpy(truth[0]).float())
    assert as_tensor == pytest.approx(ours[0], abs=1e-4)


def test_ciede2000_matches_skimage_including_neutral_and_wrapping_hues() -> None:
    rng = np.random.default_rng(3)
    n = 5000
    lab1 = np.concatenate((rng.uniform(0, 100, (n, 1)), rng.uniform(-110, 110, (n, 2))), axis=1)
    lab2 = np.concatenate((rng.uniform(0, 100, (n, 1)), rng.uniform(-110, 110, (n, 2))), axis=1)
    lab2[:50] = lab1[:50]  # identical
    lab2[50:100, 1:] = 0.0  # one side neutral (no hue)
    lab1[100:150, 1:] = 0.0
    lab2[100:150, 1:] = 0.0  # both neutral
    lab2[150:300] = lab1[150:300] + rng.normal(0.0, 1.5, (150, 3))  # small differences
    np.testing.assert_allclose(delta_e_ciede2000_np(lab1, lab2), deltaE_ciede2000(lab1, lab2), atol=1e-4, rtol=0)
    # A pair from Sharma, Wu & Dalal's published test data.
    assert delta_e_ciede2000_np(np.array([50.0, 2.6772, -79.7751]), np.array([50.0, 0.0, -82.7485])) == pytest.approx(
        2.0425, abs=1e-4
    )
    # The torch form is channels-first and batched: (B, 3, H, W) -> (B, H, W).
    t1 = torch.from_numpy(lab1[:24].reshape(2, 3, 4, 3)).movedim(-1, 1)
    t2 = torch.from_numpy(lab2[:24].reshape(2, 3, 4, 3)).movedim(-1, 1)
    out = delta_e_ciede2000(t1, t2)
    assert out.shape == (2, 3, 4)
    np.testing.assert_allclose(out.reshape(-1).numpy(), deltaE_ciede2000(lab1[:24], lab2[:24]), atol=1e-4)


def test_delta_e_mean_on_images_matches_skimage() -> None:
    pred, truth = _noisy_pair(4)
    ours = metrics.delta_e_mean(pred, truth)
    for i in range(2):
        assert ours[i] == pytest.approx(deltaE_ciede2000(rgb2lab(pred[i]), rgb2lab(truth[i])).mean(), abs=1e-4)
    assert np.abs(rgb_to_lab_np(truth[0]) - rgb2lab(truth[0])).max() < 1e-3


def test_colourfulness_is_zero_for_gray_and_large_for_saturated_images() -> None:
    gray = np.repeat(np.linspace(0, 1, 64 * 48).reshape(64, 48, 1), 3, axis=-1)
    assert metrics.colourfulness(gray) == pytest.approx(0.0, abs=1e-9)
    saturated = np.zeros((64, 48, 3))
    saturated[:32, :, 0] = 1.0  # red top half
    saturated[32:, :, 2] = 1.0  # blue bottom half
    assert metrics.colourfulness(saturated) > 100
    # uint8 input is read as 0..255 and gives the same figure; a batch gives one value per image.
    natural = gradient_image(40, 30)
    batch = metrics.colourfulness(np.stack((natural, (gray[:40, :30] * 255).astype(np.uint8))))
    assert batch[0] == pytest.approx(metrics.colourfulness(natural.astype(np.float64) / 255))
    assert 5 < batch[0] and batch[1] == pytest.approx(0.0, abs=1e-9)


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
    with pytest.raises(ValueError, match="at least 11"):
        metrics.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
