"""Colorizer: any sizes in one call, batching by shape, L kept, guided upsampling that respects edges."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import gradient_image

from models.color import lab_to_rgb_np, rgb_to_lab_np
from models.colorizer import Colorizer, guided_upsample_ab
from models.engines import TorchEngine


class CountingEngine(TorchEngine):
    """The real PyTorch engine, recording the batch shapes it was asked to run."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, ...]] = []

    def infer_tensor(self, L: np.ndarray) -> torch.Tensor:
        self.calls.append(L.shape)
        return super().infer_tensor(L)


@pytest.fixture(scope="module")
def engine(tiny_regression_checkpoint) -> CountingEngine:
    with CountingEngine(tiny_regression_checkpoint, device="cpu", precision="fp32") as engine:
        yield engine


def photo_l(height: int, width: int, seed: int = 0) -> np.ndarray:
    """The L channel of a generated colour picture, as the colorizer receives it."""
    rgb = gradient_image(height, width, seed).astype(np.float64) / 255.0
    return rgb_to_lab_np(rgb)[..., 0].astype(np.float32)


def in_gamut(L: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """Pixels whose Lab colour is strictly inside sRGB, where no clipping can move L."""
    rgb = lab_to_rgb_np(np.stack((L, ab[0], ab[1]), axis=-1).astype(np.float64), clip=False)
    return ((rgb > 1e-4) & (rgb < 1 - 1e-4)).all(axis=-1)


def test_mixed_and_odd_sizes_in_one_call(engine):
    sizes = [(37, 53), (17, 301), (1, 1), (300, 200), (256, 256)]
    L_list = [photo_l(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    colorizer = Colorizer(engine, render_size=256, batch_size=8)
    ab_list = colorizer.predict_ab(L_list)
    rgb_list = colorizer.colorize(L_list)
    for (h, w), ab, rgb in zip(sizes, ab_list, rgb_list, strict=True):
        assert ab.shape == (2, h, w) and ab.dtype == np.float32 and np.isfinite(ab).all()
        assert rgb.shape == (h, w, 3) and rgb.dtype == np.float32
        assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    # A call with one image gives the same colours as the same image inside a mixed call.
    alone = colorizer.predict_ab([L_list[1]])[0]
    np.testing.assert_allclose(alone, ab_list[1], atol=1e-3)


def test_images_are_batched_by_padded_shape(engine):
    colorizer = Colorizer(engine, render_size=64, batch_size=2)
    # Five 64x48 images pad to 64x64 (three chunks of at most 2); the 600x300 image renders to 64x32.
    L_list = [photo_l(64, 48, seed=i) for i in range(5)] + [photo_l(600, 300)]
    engine.calls.clear()
    colorizer.predict_ab(L_list)
    assert sorted(engine.calls) == sorted([(2, 1, 64, 64), (2, 1, 64, 64), (1, 1, 64, 64), (1, 1, 64, 32)])


def test_small_photos_are_enlarged_to_the_min_render_size(engine):
    colorizer = Colorizer(engine, render_size=128, batch_size=8, min_render_size=96)
    engine.calls.clear()
    L_small, L_large = photo_l(48, 32), photo_l(400, 300)
    ab_small, ab_large = colorizer.predict_ab([L_small, L_large])
    # 48x32 is enlarged to 96x64 (stride-aligned already); 400x300 is area-downscaled to 128x96 as before.
    assert sorted(engine.calls) == sorted([(1, 1, 96, 64), (1, 1, 128, 96)])
    assert ab_small.shape == (2, 48, 32) and ab_large.shape == (2, 400, 300)
    assert np.isfinite(ab_small).all()
    # A min render size above the render size is capped at it; 0 (the default here) never enlarges.
    assert Colorizer(engine, render_size=64, min_render_size=500).min_render_size == 64
    engine.calls.clear()
    Colorizer(engine, render_size=128, batch_size=8).predict_ab([L_small])
    assert engine.calls == [(1, 1, 64, 32)]
    with pytest.raises(ValueError, match="min_render_size"):
        Colorizer(engine, min_render_size=-1)


def test_output_keeps_the_input_lightness(engine):
    L = photo_l(120, 160)
    colorizer = Colorizer(engine)
    rgb = colorizer.colorize([L])[0]
    ab = colorizer.predict_ab([L])[0]
    lightness = rgb_to_lab_np(rgb.astype(np.float64))[..., 0]
    inside = in_gamut(L, ab)
    assert inside.mean() > 0.5  # the check below covers most of the picture
    # float32 colour maths: L survives to a few thousandths; only gamut clipping may move it.
    assert np.abs(lightness - L)[inside].max() < 2e-3


def test_row_tiles_do_not_change_the_result(engine):
    L = photo_l(90, 70)
    whole = Colorizer(engine).colorize([L])[0]
    tiled = Colorizer(engine, tile_pixels=500).colorize([L])[0]  # 7-row tiles
    np.testing.assert_allclose(whole, tiled, atol=1e-6)  # only float summation order may differ


def test_colour_does_not_bleed_across_an_edge():
    """A perfect network's ab on the output grid, upsampled 16x: guided vs plain bilinear."""
    height, width, render_scale, output_stride = 240, 320, 4, 4
    edge = 173  # not on the 16-pixel grid of output cells
    L = np.full((height, width), 30.0, np.float32)
    L[:, edge:] = 80.0
    truth = np.empty((2, height, width), np.float32)
    truth[:, :, :edge] = np.array([30.0, 20.0])[:, None, None]
    truth[:, :, edge:] = np.array([-20.0, -40.0])[:, None, None]
    cell = render_scale * output_stride
    L_cells = F.avg_pool2d(torch.from_numpy(L)[None, None], cell)[0, 0]
    ab_cells = F.avg_pool2d(torch.from_numpy(truth)[None], cell)[0]
    render_size = (height // render_scale, width // render_scale)
    guided = guided_upsample_ab(L, L_cells, ab_cells, render_size, output_stride).numpy()
    bilinear = F.interpolate(ab_cells[None], size=(height, width), mode="bilinear", align_corners=False)[0].numpy()

    def bleeding_columns(ab: np.ndarray) -> int:
        return int((np.abs(ab - truth).max(axis=(0, 1)) > 5.0).sum())

    assert bleeding_columns(bilinear) >= 16
    assert bleeding_columns(guided) <= bleeding_columns(bilinear) // 4
    # Away from the edge both are exact: flat colour stays flat.
    np.testing.assert_allclose(guided[:, :, :80], truth[:, :, :80], atol=1e-3)


def test_a_6000x4000_scan(engine):
    """Runs in about 5-10 s on 2 busy cores; the full-resolution work is row-tiled."""
    y = np.linspace(5.0, 95.0, 6000, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, 4000, dtype=np.float32)[None, :]
    L = np.ascontiguousarray(y * (0.8 + 0.2 * x), dtype=np.float32)
    started = time.perf_counter()
    rgb = Colorizer(engine).colorize([L])[0]
    elapsed = time.perf_counter() - started
    assert rgb.shape == (6000, 4000, 3) and rgb.dtype == np.float32
    assert 0.0 <= rgb.min() and rgb.max() <= 1.0
    rows = slice(0, 6000, 97)
    lightness = rgb_to_lab_np(rgb[rows, ::97].astype(np.float64))[..., 0]
    unclipped = ((rgb[rows, ::97] > 0.0) & (rgb[rows, ::97] < 1.0)).all(axis=-1)
    assert unclipped.mean() > 0.5
    assert np.abs(lightness - L[rows, ::97])[unclipped].max() < 2e-3
    assert elapsed < 120


@pytest.mark.parametrize(
    ("L_list", "message"),
    [
        ([], "empty"),
        (np.zeros((2, 8, 8), np.float32), "list of"),
        ([np.zeros((8, 8, 1), np.float32)], "2-D"),
        ([np.zeros((0, 5), np.float32)], "empty"),
        ([np.full((8, 8), np.nan, np.float32)], "NaN"),
        ([np.zeros((8, 8), np.float64)], "float32"),
        ([np.zeros((8, 8), np.uint8)], "float32"),
        ([np.full((8, 8), 255.0, np.float32)], r"\[0, 100\]"),
        ([np.zeros((8, 8), np.float32), "not an image"], "image 1"),
    ],
)
def test_bad_input_raises_value_error(engine, L_list, message):
    with pytest.raises(ValueError, match=message):
        Colorizer(engine).colorize(L_list)


def test_bad_settings_raise_value_error(engine):
    with pytest.raises(ValueError, match="smaller than the model stride"):
        Colorizer(engine, render_size=16)
    with pytest.raises(ValueError, match="batch_size"):
        Colorizer(engine, batch_size=0)
