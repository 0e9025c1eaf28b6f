"""Image-quality metrics for colorization: PSNR, SSIM, colourfulness and CIEDE2000.

Every function takes sRGB images channels-last, one ``(H, W, 3)`` image or a same-size batch
``(B, H, W, 3)``, as numpy arrays or torch tensors; floats are in [0, 1] and ``uint8`` is read as
0..255. A single image gives a float, a batch gives a ``(B,)`` float64 array. Computation runs in
float64 so the figures do not depend on the caller's dtype.

Why these four, and why never one alone: PSNR and SSIM reward the safe, desaturated answer (the gray
image itself scores well on both: SSIM barely sees colour), colourfulness rewards vivid colour
whether or not it is right, and CIEDE2000 measures perceptual colour error per pixel. Evaluation
reports all of them beside the gray baseline (ab = 0) and ground truth's colourfulness.

scikit-image is a test-only dependency; the tests check these implementations against it.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from models.color import delta_e_ciede2000, rgb_to_lab

ArrayLike = np.ndarray | torch.Tensor

SSIM_SIGMA = 1.5  # Wang et al. (2004): an 11-tap Gaussian window of sigma 1.5 ...
SSIM_TRUNCATE = 3.5  # ... which is what scipy's gaussian_filter builds with truncate 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
COLOURFULNESS_MEAN_WEIGHT = 0.3  # Hasler & Suesstrunk (2003): M = sigma_rgyb + 0.3 mu_rgyb


def _as_batch(image: ArrayLike) -> tuple[torch.Tensor, bool]:
    """-> float64 tensor (B, H, W, 3) in [0, 1], and whether the input was a single image."""
    t = torch.from_numpy(np.asarray(image)) if not isinstance(image, torch.Tensor) else image.detach().cpu()
    integer = not (t.is_floating_point() or t.is_complex())
    t = t.to(torch.float64)
    if integer:
        t = t / 255.0
    if t.ndim == 3:
        return t.unsqueeze(0), True
    if t.ndim != 4:
        raise ValueError(f"expected an (H, W, C) image or a (B, H, W, C) batch, got shape {tuple(t.shape)}")
    return t, False


def _pair(pred: ArrayLike, truth: ArrayLike) -> tuple[torch.Tensor, torch.Tensor, bool]:
    p, single = _as_batch(pred)
    t, _ = _as_batch(truth)
    if p.shape != t.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and truth {tuple(t.shape)} differ in shape")
    return p, t, single


def _result(values: torch.Tensor, single: bool) -> float | np.ndarray:
    out = values.numpy().astype(np.float64)
    return float(out[0]) if single else out


def psnr(pred: ArrayLike, truth: ArrayLike, data_range: float = 1.0) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB over all pixels and channels; identical images give ``inf``.

    Images are compared as given (floats in [0, 1]); use ``psnr_8bit`` for the figure papers quote
    on saved 8-bit files.
    """
    p, t, single = _pair(pred, truth)
    mse = ((p - t) ** 2).flatten(1).mean(dim=1)
    return _result(10.0 * torch.log10(data_range**2 / mse), single)  # mse == 0 -> +inf (torch does not warn)


def psnr_8bit(pred: ArrayLike, truth: ArrayLike) -> float | np.ndarray:
    """PSNR after rounding both images to 8 bits, as they would be stored: small float differences that
    vanish in a saved file do not count, so a perfect colorization scores ``inf``."""
    p, t, single = _pair(pred, truth)
    p8 = (p.clamp(0, 1) * 255).round()
    t8 = (t.clamp(0, 1) * 255).round()
    mse = ((p8 - t8) ** 2).flatten(1).mean(dim=1)
    return _result(10.0 * torch.log10(255.0**2 / mse), single)


@lru_cache(maxsize=4)
def _gaussian_taps(sigma: float, truncate: float) -> torch.Tensor:
    # scipy.ndimage's kernel: radius int(truncate * sigma + 0.5), normalized exp(-x^2 / 2 sigma^2).
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def _filter_valid(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian over (..., H, W) keeping only the 'valid' region the window fits in.

    Written as a sum of shifted slices: for an 11-tap float64 kernel this is several times faster
    on CPU than ``conv2d`` with a 1 x 11 kernel, and exact to rounding.
    """
    k = len(taps)
    h, w = x.shape[-2:]
    rows = sum(taps[i] * x[..., :, i : w - k + 1 + i] for i in range(k))
    return sum(taps[i] * rows[..., i : h - k + 1 + i, :] for i in range(k))


def ssim(pred: ArrayLike, truth: ArrayLike, data_range: float = 1.0) -> float | np.ndarray:
    """Mean structural similarity, Gaussian window (11 taps, sigma 1.5), per RGB channel then averaged.

    Matches ``skimage.metrics.structural_similarity(data_range=1, channel_axis=-1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``: scikit-image filters the whole image and then crops the
    window's radius off every side, which is exactly the 'valid' convolution used here.
    """
    p, t, single = _pair(pred, truth)
    taps = _gaussian_taps(SSIM_SIGMA, SSIM_TRUNCATE)
    b, h, w, c = p.shape
    if min(h, w) < len(taps):
        raise ValueError(f"SSIM needs images of at least {len(taps)} x {len(taps)} pixels, got {h} x {w}")
    # Channels become batch entries: (B*C, 1, H, W); the five moments share one filter call.
    x = p.permute(0, 3, 1, 2).reshape(b * c, 1, h, w)
    y = t.permute(0, 3, 1, 2).reshape(b * c, 1, h, w)
    moments = _filter_valid(torch.cat((x, y, x * x, y * y, x * y)), taps).chunk(5)
    ux, uy, uxx, uyy, uxy = moments
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    # The valid region is the same for every channel, so the mean over (C, H', W') is the mean of means.
    return _result(s.reshape(b, -1).mean(dim=1), single)


def colourfulness(image: ArrayLike) -> float | np.ndarray:
    """Hasler & Suesstrunk (2003) colourfulness on 0..255 RGB: sigma_rgyb + 0.3 mu_rgyb.

    About 0 for a gray image, 15-35 for typical photos, over 100 for saturated primaries. It says
    how vivid an image is, not whether its colours are right; compare it with ground truth's.
    """
    x, single = _as_batch(image)
    x = x * 255.0
    r, g, b = x.unbind(-1)
    rg = (r - g).flatten(1)
    yb = (0.5 * (r + g) - b).flatten(1)
    sigma = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False))
    mu = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
    return _result(sigma + COLOURFULNESS_MEAN_WEIGHT * mu, single)


def delta_e_mean(pred: ArrayLike, truth: ArrayLike) -> float | np.ndarray:
    """Mean CIEDE2000 difference per image between two sRGB images (converted to Lab, D65)."""
    p, t, single = _pair(pred, truth)
    lab_p = rgb_to_lab(p.permute(0, 3, 1, 2))
    lab_t = rgb_to_lab(t.permute(0, 3, 1, 2))
    return _result(delta_e_ciede2000(lab_p, lab_t).flatten(1).mean(dim=1), single)


def finite_mean(values: list[float] | np.ndarray) -> float:
    """The mean of per-image figures for a table: ``inf`` entries (perfect PSNR) make the mean ``inf``
    rather than NaN, and an empty list gives NaN instead of a warning."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan
    if np.isposinf(arr).any():
        return math.inf
    return float(arr.mean())
