"""worker.media.icc against LittleCMS (through Pillow's ImageCms), on profiles built by tests.icc_profiles."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms

from tests.icc_profiles import (
    ADOBE_RGB,
    PROPHOTO,
    SRGB,
    gamma_curve,
    matrix_trc_profile,
    srgb_parametric_curve,
    table_curve,
    twisted_lookup_table_profile,
)
from worker.media.icc import lookup_table_space, rgb_space

PROFILES = {
    "prophoto-gamma-1.8": matrix_trc_profile(PROPHOTO, gamma_curve(1.8)),
    "adobe-rgb-gamma-2.2": matrix_trc_profile(ADOBE_RGB, gamma_curve(563 / 256)),
    "adobe-rgb-table": matrix_trc_profile(ADOBE_RGB, table_curve(2.2)),
    "prophoto-parametric": matrix_trc_profile(PROPHOTO, srgb_parametric_curve()),
}


def _littlecms(pixels: np.ndarray, source, target) -> np.ndarray:
    image = Image.fromarray(pixels)
    converted = ImageCms.profileToProfile(image, source, target, outputMode="RGB",
                                          renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    return np.asarray(converted).astype(np.float64)


@pytest.mark.parametrize("name", PROFILES)
def test_colours_through_a_matrix_trc_profile_match_littlecms(name: str) -> None:
    profile = ImageCms.ImageCmsProfile(io.BytesIO(PROFILES[name]))
    srgb = ImageCms.createProfile("sRGB")
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    space = rgb_space(PROFILES[name])
    assert space is not None
    shown = space.to_srgb(pixels / 255.0) * 255.0
    assert np.abs(shown - _littlecms(pixels, profile, srgb)).max() <= 1.5  # LittleCMS rounds to 8 bits
    inside = np.abs(pixels.astype(int) - pixels.mean(axis=2, keepdims=True)).max(axis=2) < 60  # sRGB fits every space
    written = space.from_srgb(pixels / 255.0) * 255.0
    assert np.abs(written - _littlecms(pixels, srgb, profile))[inside].max() <= 1.5


@pytest.mark.parametrize("name", PROFILES)
def test_neutral_codes_survive_the_round_trip_exactly(name: str) -> None:
    # The colorized result of a gray scan is written back in its own space: its grays must not move a code.
    space = rgb_space(PROFILES[name])
    codes = np.arange(0, 65536, 7) / 65535.0
    gray = np.repeat(codes[:, None], 3, axis=1)
    back = space.from_srgb(space.to_srgb(gray))
    assert np.ptp(back, axis=1).max() * 65535 < 0.01  # they stay neutral
    assert back[0, 0] == 0 and abs(back[-1, 0] - gray[-1, 0]) * 65535 < 0.01  # black and white stay put
    if name == "adobe-rgb-table":
        # Where a 16-bit table repeats an entry (its darkest 1 %), the codes between show one colour: any of
        # them is right. Elsewhere each code comes back, to a tenth of a code (a hundredth for formula curves).
        assert np.abs(space.linear(back) - space.linear(gray)).max() < 2 / 65535
        assert np.abs(back - gray)[codes > 0.013].max() * 65535 < 0.1
    else:
        assert np.abs(back - gray).max() * 65535 < 0.01


def test_lightness_is_measured_in_the_colours_shown() -> None:
    space = rgb_space(PROFILES["prophoto-gamma-1.8"])
    gray = np.linspace(0, 1, 11)
    luminance = gray ** (round(1.8 * 256) / 256)  # ProPhoto's neutral: Y is the decoded code
    expected = np.where(luminance > 0.008856, 116 * np.cbrt(luminance) - 16, 903.3 * luminance)
    np.testing.assert_allclose(space.gray_lightness(gray), expected, atol=0.01)


def test_profiles_not_modelled_are_taken_as_srgb() -> None:
    assert rgb_space(None) is None and rgb_space(b"") is None and rgb_space(b"not a profile" * 20) is None
    assert rgb_space(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()) is None  # LittleCMS's sRGB
    assert rgb_space(matrix_trc_profile(SRGB, srgb_parametric_curve())) is None  # another maker's sRGB
    no_colorants = matrix_trc_profile(ADOBE_RGB, gamma_curve(2.2)).replace(b"rXYZ", b"zzzz")
    assert rgb_space(no_colorants) is None  # a malformed profile costs nothing but its colours
    lookup = matrix_trc_profile(ADOBE_RGB, gamma_curve(2.2), {b"A2B0": b"mft2" + bytes(60)})
    assert rgb_space(lookup) is None  # a CMM colours through the table
    # An extended-range encoding clips a quarter of its codes to black: not an RGB space of [0, 1].
    extended = np.clip(np.linspace(-0.5, 1.5, 1024), 0, 1) ** 2.2
    curve = b"curv\0\0\0\0" + struct.pack(">I", 1024) + np.round(extended * 65535).astype(">u2").tobytes()
    assert rgb_space(matrix_trc_profile(ADOBE_RGB, curve)) is None


@pytest.mark.parametrize("kind", [b"mft1", b"mft2", b"mAB "])
@pytest.mark.parametrize("connection_space", [b"XYZ ", b"Lab "])
def test_colours_through_a_profiles_look_up_tables_match_littlecms(kind: bytes, connection_space: bytes) -> None:
    # A scanner's tables, which no matrix could say: LittleCMS (its full evaluation, not the 8-bit shortcut it
    # builds by default, which clips out-of-gamut grid corners before interpolating) is the reference.
    icc = twisted_lookup_table_profile(kind, connection_space)
    grid = np.stack(np.meshgrid(*[np.arange(0, 256, 17)] * 3, indexing="ij"), axis=-1).reshape(64, -1, 3)
    pixels = np.concatenate([grid, np.random.default_rng(2).integers(0, 256, (64, 32, 3))], axis=1).astype(np.uint8)
    reference = ImageCms.profileToProfile(Image.fromarray(pixels), ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                          ImageCms.createProfile("sRGB"), outputMode="RGB",
                                          renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
                                          flags=ImageCms.Flags.NOOPTIMIZE)
    error = np.abs(lookup_table_space(icc).to_srgb(pixels / 255.0) * 255.0 - np.asarray(reference))
    assert error.max() <= 1.0 and error.mean() < 0.3  # LittleCMS rounds to 8 bits


def test_a_look_up_table_not_read_here_says_why() -> None:
    icc = twisted_lookup_table_profile(b"mft2", b"XYZ ")
    with pytest.raises(ValueError, match="a table of 4 inputs, 3 outputs and 9 grid points"):
        lookup_table_space(icc.replace(bytes([3, 3, 9, 0]), bytes([4, 3, 9, 0]), 1))
    with pytest.raises(ValueError, match="table of type b'mBA '"):
        lookup_table_space(icc.replace(b"mft2", b"mBA ", 1))
    with pytest.raises(ValueError):  # cut short
        lookup_table_space(icc[: len(icc) - 2000])
