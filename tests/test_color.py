"""models.color against scikit-image (the reference Lab implementation) and against its own contracts:
the bins, soft-encoding, rebalancing and decoding that the classification heads are trained and read with."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import color as skcolor

from models.color import (
    AB_GRID,
    AB_RANGE,
    CINEON_BLACK,
    CINEON_WHITE,
    SOFT_ENCODE_NEIGHBOURS,
    SOFT_ENCODE_SIGMA,
    ColorConstants,
    ab_bins,
    ab_bins_np,
    ab_histogram,
    bt2020_from_bt709,
    cineon_to_linear,
    decode_ab,
    gray_to_l,
    hlg_gray_to_linear,
    hlg_to_linear,
    l_to_gray,
    lab_to_rgb,
    lab_to_rgb_fast_np,
    lab_to_rgb_np,
    linear_to_cineon,
    linear_to_hlg,
    linear_to_pq,
    log_luma_to_l_table,
    luma_code_table,
    luma_to_l_table,
    merge_l_ab,
    n_ab_bins,
    normalize_l,
    pq_to_linear,
    quantize_ab,
    rebalance_weights,
    rgb_to_chroma_np,
    rgb_to_l,
    rgb_to_lab,
    rgb_to_lab_np,
    soft_encode_ab,
    soft_encode_ab_sparse,
    srgb_to_cineon_np,
    ycbcr_to_rgb_np,
)

LAB_TOL = 1e-3  # agreement with scikit-image, in Lab units
EXPECTED_BINS = 261  # Tinct's exact sRGB gamut on the grid-10 lattice (Zhang et al.'s data hull gave 313)
HALF_CELL_DIAGONAL = 0.5 * AB_GRID * math.sqrt(2)


@pytest.fixture(scope="module")
def rgb_batch() -> np.ndarray:
    """Random sRGB pixels plus the cube's corners (the gamut's extremes), channels-last (N, H, W, 3)."""
    rng = np.random.default_rng(1)
    rgb = rng.random((3, 9, 11, 3))
    corners = np.array([[r, g, b] for r in (0, 1) for g in (0, 1) for b in (0, 1)], dtype=np.float64)
    rgb[0, 0, :8] = corners
    return rgb


@pytest.fixture(scope="module")
def lab_points() -> np.ndarray:
    """ab of random sRGB colours, (N, 2), computed by the reference implementation."""
    rng = np.random.default_rng(2)
    return skcolor.rgb2lab(rng.random((20000, 1, 3)))[:, 0, 1:]


def _ab_image(points: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(N, 2) ab points -> a (1, 2, 1, N) batch."""
    return torch.from_numpy(points).to(dtype).T[None, :, None, :]


# --- Lab conversions ------------------------------------------------------------------------------


def test_rgb_to_lab_numpy_matches_skimage(rgb_batch: np.ndarray) -> None:
    ours = rgb_to_lab_np(rgb_batch)
    assert ours.shape == rgb_batch.shape
    np.testing.assert_allclose(ours, skcolor.rgb2lab(rgb_batch), rtol=0, atol=LAB_TOL)


def test_lab_to_rgb_numpy_matches_skimage(rgb_batch: np.ndarray) -> None:
    lab = skcolor.rgb2lab(rgb_batch)
    ours = lab_to_rgb_np(lab)
    np.testing.assert_allclose(ours, skcolor.lab2rgb(lab), rtol=0, atol=1e-5)
    # ... and in Lab, the unit the tolerance is stated in:
    np.testing.assert_allclose(skcolor.rgb2lab(ours), lab, rtol=0, atol=LAB_TOL)


def test_rgb_to_lab_torch_float32_matches_skimage(rgb_batch: np.ndarray) -> None:
    rgb = torch.from_numpy(rgb_batch).float().permute(0, 3, 1, 2)  # (B, 3, H, W)
    lab = rgb_to_lab(rgb)
    assert lab.dtype == torch.float32 and lab.shape == rgb.shape
    np.testing.assert_allclose(lab.permute(0, 2, 3, 1).double().numpy(), skcolor.rgb2lab(rgb_batch), atol=LAB_TOL)


def test_lab_to_rgb_torch_float32_matches_skimage(rgb_batch: np.ndarray) -> None:
    lab = skcolor.rgb2lab(rgb_batch)
    rgb = lab_to_rgb(torch.from_numpy(lab).float().permute(0, 3, 1, 2))
    assert rgb.dtype == torch.float32
    np.testing.assert_allclose(rgb.permute(0, 2, 3, 1).double().numpy(), skcolor.lab2rgb(lab), atol=1e-4)


def test_single_image_without_batch_axis(rgb_batch: np.ndarray) -> None:
    one = torch.from_numpy(rgb_batch[1]).permute(2, 0, 1)  # (3, H, W)
    np.testing.assert_allclose(rgb_to_lab(one).permute(1, 2, 0).numpy(), skcolor.rgb2lab(rgb_batch[1]), atol=LAB_TOL)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_rgb_lab_rgb_round_trip(rgb_batch: np.ndarray, dtype: torch.dtype, atol: float) -> None:
    rgb = torch.from_numpy(rgb_batch).to(dtype).permute(0, 3, 1, 2)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, rtol=0, atol=atol)


def test_lab_rgb_lab_round_trip_in_gamut(rgb_batch: np.ndarray) -> None:
    lab = skcolor.rgb2lab(rgb_batch)
    np.testing.assert_allclose(rgb_to_lab_np(lab_to_rgb_np(lab)), lab, rtol=0, atol=1e-6)


def test_lab_to_rgb_clips_out_of_gamut_unless_asked() -> None:
    lab = torch.tensor([50.0, 100.0, -100.0], dtype=torch.float64).view(1, 3, 1, 1)  # far outside sRGB
    clipped = lab_to_rgb(lab)
    assert clipped.min() >= 0 and clipped.max() <= 1
    raw = lab_to_rgb(lab, clip=False)
    assert raw.max() > 1 or raw.min() < 0


def test_merge_l_ab_and_rgb_to_l(rgb_batch: np.ndarray) -> None:
    rgb = torch.from_numpy(rgb_batch).permute(0, 3, 1, 2)
    lab = rgb_to_lab(rgb)
    assert rgb_to_l(rgb).shape == (3, 1, 9, 11)
    torch.testing.assert_close(rgb_to_l(rgb), lab[:, :1])
    torch.testing.assert_close(merge_l_ab(lab[:, :1], lab[:, 1:]), rgb, rtol=0, atol=1e-9)


def test_gray_to_l_and_l_to_gray_are_inverse() -> None:
    gray = torch.linspace(0, 1, 1001, dtype=torch.float64)
    L = gray_to_l(gray)
    assert L[0] == pytest.approx(0.0, abs=1e-9) and L[-1] == pytest.approx(100.0, abs=1e-9)
    assert torch.all(L[1:] > L[:-1]), "lightness must increase with gray"
    torch.testing.assert_close(l_to_gray(L), gray, rtol=0, atol=1e-9)
    L_grid = torch.linspace(0, 100, 1001, dtype=torch.float64)
    # 1e-4, not 1e-9: the classic rounded CIE constants leave a tiny gap at the knee of f (L near 8).
    torch.testing.assert_close(gray_to_l(l_to_gray(L_grid)), L_grid, rtol=0, atol=1e-4)


def test_gray_to_l_matches_lab_of_gray_pixels() -> None:
    gray = np.linspace(0, 1, 64)
    rgb = np.repeat(gray[None, :, None], 3, axis=-1)  # (1, 64, 3), R = G = B
    lab = skcolor.rgb2lab(rgb)
    np.testing.assert_allclose(gray_to_l(torch.from_numpy(gray)).numpy(), lab[0, :, 0], atol=LAB_TOL)
    # Grays are (almost) achromatic; not exactly, as the D65 white and the matrix are both rounded.
    np.testing.assert_allclose(rgb_to_lab_np(rgb)[..., 1:], 0, atol=1e-2)


def test_normalize_l_range() -> None:
    L = torch.tensor([0.0, 50.0, 100.0])
    torch.testing.assert_close(normalize_l(L), torch.tensor([-0.5, 0.0, 0.5]))


# --- ab bins --------------------------------------------------------------------------------------


def test_ab_bins_lie_on_the_grid_inside_the_range() -> None:
    bins = ab_bins_np()
    assert bins.ndim == 2 and bins.shape[1] == 2
    assert len(bins) == n_ab_bins() == EXPECTED_BINS
    np.testing.assert_array_equal(bins, np.round(bins / AB_GRID) * AB_GRID)
    assert np.abs(bins).max() <= AB_RANGE
    assert len(np.unique(bins, axis=0)) == len(bins), "bins must be distinct"
    torch.testing.assert_close(ab_bins(dtype=torch.float64).float(), torch.from_numpy(bins))
    assert ColorConstants.current().n_bins == EXPECTED_BINS


def test_every_bin_is_reachable_from_srgb() -> None:
    """The set of grid cells hit by the sRGB cube (per scikit-image) is exactly the bin set."""
    steps = np.linspace(0.0, 1.0, 101)
    cube = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(-1, 1, 3)
    cells = np.round(skcolor.rgb2lab(cube)[:, 0, 1:] / AB_GRID).astype(np.int64)
    reached = {tuple(c) for c in np.unique(cells, axis=0)}
    bins = {tuple(c) for c in np.round(ab_bins_np() / AB_GRID).astype(np.int64)}
    assert bins == reached


def test_every_srgb_colour_has_a_bin_within_half_a_cell(lab_points: np.ndarray) -> None:
    d = torch.cdist(torch.from_numpy(lab_points), ab_bins(dtype=torch.float64)).min(dim=1).values
    assert d.max().item() <= HALF_CELL_DIAGONAL + 1e-9


def test_quantize_ab_picks_the_nearest_bin(lab_points: np.ndarray) -> None:
    ab = _ab_image(lab_points[:500])
    idx = quantize_ab(ab)
    assert idx.shape == (1, 1, 500) and idx.dtype == torch.int64
    expected = torch.cdist(torch.from_numpy(lab_points[:500]), ab_bins(dtype=torch.float64)).argmin(dim=1)
    torch.testing.assert_close(idx.view(-1), expected)
    counts = ab_histogram(ab)
    assert counts.shape == (n_ab_bins(),) and counts.sum() == 500


# --- soft-encoding --------------------------------------------------------------------------------


def test_soft_encode_ab(lab_points: np.ndarray) -> None:
    ab = torch.from_numpy(lab_points[:800]).float().view(2, 20, 20, 2).permute(0, 3, 1, 2).contiguous()
    target = soft_encode_ab(ab)
    assert target.shape == (2, n_ab_bins(), 20, 20)
    torch.testing.assert_close(target.sum(dim=1), torch.ones(2, 20, 20), rtol=0, atol=1e-5)
    assert torch.all((target > 0).sum(dim=1) == SOFT_ENCODE_NEIGHBOURS)
    assert torch.all(target >= 0)
    torch.testing.assert_close(target.argmax(dim=1), quantize_ab(ab))


def test_soft_encode_weights_are_gaussian_in_distance() -> None:
    bins = ab_bins(dtype=torch.float64)
    ab = bins[40].view(1, 2, 1, 1) + torch.tensor([3.0, -1.0], dtype=torch.float64).view(1, 2, 1, 1)
    target = soft_encode_ab(ab)[0, :, 0, 0]
    nz = target.nonzero().view(-1)
    d = torch.linalg.norm(bins[nz] - ab.view(1, 2), dim=1)
    expected = torch.exp(-(d**2) / (2 * SOFT_ENCODE_SIGMA**2))
    torch.testing.assert_close(target[nz], expected / expected.sum())


def test_sparse_soft_encoding_matches_the_dense_one(lab_points: np.ndarray) -> None:
    whole = torch.round(torch.from_numpy(lab_points[:800]).float()).view(2, 20, 20, 2).permute(0, 3, 1, 2)
    bins, weights = soft_encode_ab_sparse(whole)
    assert bins.shape == weights.shape == (2, SOFT_ENCODE_NEIGHBOURS, 20, 20)
    dense = torch.zeros(2, n_ab_bins(), 20, 20).scatter_(1, bins, weights)
    # On whole ab units the lookup is the dense encoding itself; its first bin is the nearest one.
    torch.testing.assert_close(dense, soft_encode_ab(whole.contiguous()), rtol=0, atol=1e-5)
    centres = ab_bins()
    nearest = (centres[bins[:, 0]].movedim(-1, 1) - whole).norm(dim=1)  # ties between two bins may go either way
    torch.testing.assert_close(nearest, (centres[quantize_ab(whole.contiguous())].movedim(-1, 1) - whole).norm(dim=1))
    # Between units it differs by the rounding only: the cross-entropy of any prediction barely moves.
    ab = torch.from_numpy(lab_points[:800]).float().view(2, 20, 20, 2).permute(0, 3, 1, 2).contiguous()
    log_prob = torch.log_softmax(torch.randn(2, n_ab_bins(), 20, 20, generator=torch.Generator().manual_seed(0)), 1)
    bins, weights = soft_encode_ab_sparse(ab)
    sparse_ce = -(weights * log_prob.gather(1, bins)).sum(1).mean()
    dense_ce = -(soft_encode_ab(ab) * log_prob).sum(1).mean()
    assert abs(float(sparse_ce - dense_ce)) < 0.02 * abs(float(dense_ce))


# --- class rebalancing ----------------------------------------------------------------------------


def _smoothed_distribution(counts: np.ndarray) -> np.ndarray:
    """The empirical bin distribution blurred by a Gaussian of SOFT_ENCODE_SIGMA in ab, mass-conserving."""
    bins = ab_bins_np().astype(np.float64)
    d2 = ((bins[:, None, :] - bins[None, :, :]) ** 2).sum(-1)
    spread = np.exp(-d2 / (2 * SOFT_ENCODE_SIGMA**2))
    spread /= spread.sum(axis=0, keepdims=True)  # column j: where bin j's mass goes; sums to 1
    p = counts / counts.sum()
    return spread @ p


@pytest.fixture(scope="module")
def skewed_counts() -> np.ndarray:
    """A histogram like real photos': a few near-gray bins hold most pixels."""
    bins = ab_bins_np().astype(np.float64)
    chroma = np.linalg.norm(bins, axis=1)
    return 1e6 * np.exp(-chroma / 8.0) + 1.0


def test_rebalance_weights_expectation_is_one(skewed_counts: np.ndarray) -> None:
    w = rebalance_weights(skewed_counts)
    assert w.shape == (n_ab_bins(),) and w.dtype == np.float32
    assert np.all(w > 0)
    assert float((_smoothed_distribution(skewed_counts) * w).sum()) == pytest.approx(1.0, abs=1e-2)


def test_rebalance_smoothing_conserves_mass(skewed_counts: np.ndarray) -> None:
    w = rebalance_weights(skewed_counts)
    assert float((_smoothed_distribution(skewed_counts) * w).sum()) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(rebalance_weights(skewed_counts, lam=1.0), 1.0, atol=1e-5)


def test_rebalance_weights_favour_rare_bins(skewed_counts: np.ndarray) -> None:
    w = rebalance_weights(skewed_counts)
    common, rare = skewed_counts.argmax(), skewed_counts.argmin()
    assert w[rare] > 1.0 > w[common]
    order = np.argsort(skewed_counts)
    assert w[order[0]] >= w[order[-1]] * 5, "the rarest bin should weigh several times the most common"


def test_rebalance_lambda_one_is_uniform(skewed_counts: np.ndarray) -> None:
    w = rebalance_weights(skewed_counts, lam=1.0)
    np.testing.assert_allclose(w, w[0], rtol=1e-6)
    assert w[0] == pytest.approx(1.0, abs=1e-2)


def test_rebalance_weights_reject_bad_histograms() -> None:
    with pytest.raises(ValueError, match="shape"):
        rebalance_weights(np.ones(10))
    with pytest.raises(ValueError, match="empty"):
        rebalance_weights(np.zeros(n_ab_bins()))


# --- decoding -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logits() -> torch.Tensor:
    return torch.randn(2, n_ab_bins(), 3, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3


def test_decode_mode_returns_the_argmax_bin(logits: torch.Tensor) -> None:
    ab = decode_ab(logits, "mode")
    assert ab.shape == (2, 2, 3, 4)
    torch.testing.assert_close(ab, ab_bins(dtype=torch.float64)[logits.argmax(dim=1)].permute(0, 3, 1, 2))


def test_decode_small_temperature_approaches_mode(logits: torch.Tensor) -> None:
    torch.testing.assert_close(decode_ab(logits, "annealed_mean", 1e-3), decode_ab(logits, "mode"), rtol=0, atol=1e-3)


def test_decode_temperature_one_is_the_mean(logits: torch.Tensor) -> None:
    mean = decode_ab(logits, "mean")
    torch.testing.assert_close(decode_ab(logits, "annealed_mean", 1.0), mean)
    expected = torch.einsum("bqhw,qc->bchw", torch.softmax(logits, dim=1), ab_bins(dtype=torch.float64))
    torch.testing.assert_close(mean, expected)


def test_annealing_saturates_between_mean_and_mode(logits: torch.Tensor) -> None:
    chroma = {t: decode_ab(logits, "annealed_mean", t).norm(dim=1).mean().item() for t in (1.0, 0.38, 0.1)}
    assert chroma[1.0] < chroma[0.38] < chroma[0.1], "lower temperature must give more saturated colour"


def test_annealed_mean_of_a_peaked_distribution_is_that_bin() -> None:
    bins = ab_bins(dtype=torch.float64)
    logits = torch.zeros(1, n_ab_bins(), 1, 2, dtype=torch.float64)
    logits[0, 17, 0, 0] = 50.0
    logits[0, 200, 0, 1] = 50.0
    ab = decode_ab(logits)
    torch.testing.assert_close(ab[0, :, 0, 0], bins[17], rtol=0, atol=1e-3)
    torch.testing.assert_close(ab[0, :, 0, 1], bins[200], rtol=0, atol=1e-3)


def test_decode_rejects_bad_arguments(logits: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="unknown ab decoding method"):
        decode_ab(logits, "median")
    for t in (0.0, -0.5):
        with pytest.raises(ValueError, match="temperature"):
            decode_ab(logits, "annealed_mean", t)


# --- the film path's conversions ------------------------------------------------------------------


def test_fast_lab_to_rgb_matches_the_reference(rgb_batch: np.ndarray) -> None:
    lab = rgb_to_lab_np(rgb_batch)[0].astype(np.float32)
    lab[..., 1:] *= 1.5  # push some colours out of gamut: both must clip them the same way
    fast = lab_to_rgb_fast_np(lab)
    assert fast.dtype == np.float32 and fast.min() >= 0.0 and fast.max() <= 1.0
    np.testing.assert_allclose(fast, lab_to_rgb_np(lab.astype(np.float64)), rtol=0, atol=1e-3)


@pytest.mark.parametrize("bit_depth, full_range", [(8, False), (8, True), (10, False), (10, True)])
def test_luma_table_is_gray_to_l_of_the_normalized_code(bit_depth: int, full_range: bool) -> None:
    table = luma_to_l_table(bit_depth, full_range, subdivisions=4)
    top = (1 << bit_depth) - 1
    assert table.shape == (top * 4 + 1,) and np.all(np.diff(table) >= 0)
    low, high = (0, top) if full_range else (16 << (bit_depth - 8), 235 << (bit_depth - 8))
    assert table[low * 4] == pytest.approx(0.0, abs=1e-4) and table[high * 4] == pytest.approx(100.0, abs=1e-4)
    code = (low + high) // 2
    gray = (code - low) / (high - low)
    assert table[code * 4] == pytest.approx(float(gray_to_l(torch.tensor(gray, dtype=torch.float64))), abs=1e-4)


@pytest.mark.parametrize("matrix", ["bt601", "bt709", "bt2020"])
@pytest.mark.parametrize("bit_depth, full_range", [(8, False), (10, True)])
def test_chroma_round_trips_through_ycbcr(rgb_batch: np.ndarray, matrix: str, bit_depth: int,
                                          full_range: bool) -> None:
    rgb = rgb_batch[0]
    kr, kb = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593)}[matrix]
    luma = kr * rgb[..., 0] + (1 - kr - kb) * rgb[..., 1] + kb * rgb[..., 2]
    top = (1 << bit_depth) - 1
    step = 1 << (bit_depth - 8)
    y = np.rint(luma * top if full_range else 16 * step + luma * 219 * step).astype(np.uint16)
    cb, cr = rgb_to_chroma_np(rgb, matrix, bit_depth, full_range)
    assert cb.dtype == (np.uint8 if bit_depth == 8 else np.uint16)
    back = ycbcr_to_rgb_np(y, cb, cr, matrix, bit_depth, full_range)
    # One code value of quantization on each plane, amplified by the inverse matrix (about 1.9 for blue).
    np.testing.assert_allclose(back, rgb, rtol=0, atol=2.5 * 1.9 / (219 * step if not full_range else top))
    gray = np.full((4, 4, 3), 0.5)
    cb, cr = rgb_to_chroma_np(gray, matrix, bit_depth, full_range)
    assert np.all(cb == 1 << (bit_depth - 1)) and np.all(cr == 1 << (bit_depth - 1))  # neutral stays neutral
    with pytest.raises(ValueError, match="unknown Y'CbCr matrix"):
        rgb_to_chroma_np(gray, "bt470m", 8, False)


# --- CUDA -----------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_cuda_matches_cpu(rgb_batch: np.ndarray, logits: torch.Tensor) -> None:
    rgb = torch.from_numpy(rgb_batch).float().permute(0, 3, 1, 2)
    lab_gpu = rgb_to_lab(rgb.cuda())
    assert lab_gpu.is_cuda
    torch.testing.assert_close(lab_gpu.cpu(), rgb_to_lab(rgb), rtol=0, atol=LAB_TOL)
    torch.testing.assert_close(lab_to_rgb(lab_gpu).cpu(), rgb, rtol=0, atol=1e-4)
    ab = lab_gpu[:, 1:].contiguous()
    torch.testing.assert_close(quantize_ab(ab).cpu(), quantize_ab(ab.cpu()))
    torch.testing.assert_close(soft_encode_ab(ab).cpu(), soft_encode_ab(ab.cpu()), rtol=0, atol=1e-5)
    decoded = decode_ab(logits.float().cuda())
    torch.testing.assert_close(decoded.cpu(), decode_ab(logits.float()), rtol=0, atol=1e-3)


def test_luma_codes_recode_from_full_to_video_range_at_any_depth():
    table = luma_code_table(8, True, 10, False)  # a full-range 8-bit master into a 10-bit video-range codec
    assert (table[0], table[255]) == (64, 940) and table.dtype == np.uint16
    assert np.all(np.diff(table.astype(int)) >= 3)  # every code stays apart from its neighbours
    exact = (64 + np.arange(256) / 255 * 876)
    assert np.abs(table - exact).max() <= 0.5
    np.testing.assert_array_equal(luma_code_table(10, False, 10, False), np.arange(1024))


def test_cineon_log_codes_round_trip_and_the_film_paths_table_keeps_a_gray_its_own_code():
    codes = torch.arange(1024, dtype=torch.float64)
    light = cineon_to_linear(codes)
    assert light[int(CINEON_BLACK)] == 0.0 and abs(light[int(CINEON_WHITE)] - 1.0) < 1e-12 and light[1023] > 13
    kept = slice(int(CINEON_BLACK), 1024)  # below black, every code is no light
    torch.testing.assert_close(linear_to_cineon(light)[kept] * 1023, codes[kept])
    # Deeper scans hold the same fractions of full scale: the same light.
    torch.testing.assert_close(cineon_to_linear(codes * (65535 / 1023), bit_depth=16), light)
    # A gray's lightness, shown as sRGB and written back through the table, is its own code to a quarter of one.
    gray = l_to_gray(torch.from_numpy(log_luma_to_l_table(10)).double()).numpy().astype(np.float32)
    written = srgb_to_cineon_np(gray) * 1023
    assert np.abs(written[95:686] - np.arange(95, 686)).max() < 0.25



def test_hdr_transfers_place_reference_white_where_bt2408_does_and_invert_exactly():
    """PQ codes light absolutely: HDR reference white, 203 nits, is its 58 % signal; HLG places it at 75 % on the
    1000-nit reference display. Each curve inverts its inverse, HLG's colour by colour through its OOTF."""
    assert float(linear_to_pq(torch.tensor(1.0))) == pytest.approx(0.5807, abs=1e-4)
    assert float(pq_to_linear(torch.tensor(1.0))) == pytest.approx(10000 / 203)  # PQ's peak, 10,000 nits
    assert float(hlg_gray_to_linear(torch.tensor(0.75))) == pytest.approx(1.0, abs=2e-3)
    light = torch.rand(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2  # 406 nits
    torch.testing.assert_close(pq_to_linear(linear_to_pq(light)), light)
    torch.testing.assert_close(hlg_to_linear(linear_to_hlg(light)), light)
    gray = torch.full((3, 1, 1), 0.3, dtype=torch.float64)
    torch.testing.assert_close(hlg_gray_to_linear(linear_to_hlg(gray)), gray)
    # BT.2087's matrix from BT.709 to BT.2020, as published.
    published = np.array([[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114], [0.0164, 0.0880, 0.8956]])
    np.testing.assert_allclose(bt2020_from_bt709(), published, atol=1e-4)
