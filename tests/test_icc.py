"""worker.icc against LittleCMS (through Pillow's ImageCms), on profiles built by tests.icc_profiles."""

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
)
from worker.icc import rgb_space

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
