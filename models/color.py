"""The only colour maths in Tinct: sRGB <-> CIE Lab (D65), ab-bin quantization, soft-encoding,
class rebalancing and bin decoding.

Conventions
-----------
* torch functions take channels-first batches ``(B, C, H, W)`` (or ``(C, H, W)``); the numpy
  wrappers (suffix ``_np``) take image-style channels-last arrays ``(..., H, W, C)`` and run the
  same torch code in float64, so there is exactly one implementation of each formula.
* sRGB values are floats in [0, 1]; L is in [0, 100]; a and b are in Lab units (about -110..110).
* The constants match scikit-image (``skimage.color.rgb2lab`` with illuminant D65, observer 2),
  so results agree with it to well under 1e-3.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# --- named constants (after richzhang/colorization's BaseColor) -----------------------------------
L_CENT = 50.0  # L is centred at 50 ...
L_NORM = 100.0  # ... and scaled by 100 before it reaches a network: (L - 50) / 100 in [-0.5, 0.5]
AB_NORM = 110.0  # ab regression targets are ab / 110, roughly [-1, 1]

D65_WHITE = (0.95047, 1.0, 1.08883)
XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)

AB_GRID = 10.0  # bin spacing in ab (Zhang et al. 2016)
AB_RANGE = 110.0  # bins are centred on multiples of AB_GRID inside [-110, 110]
SOFT_ENCODE_NEIGHBOURS = 5
SOFT_ENCODE_SIGMA = 5.0
REBALANCE_LAMBDA = 0.5
ANNEAL_T_ZHANG = 0.38  # the temperature Zhang et al. use
ANNEAL_T_SEED = 0.89  # the temperature the seed paper uses

# The classic rounded CIE constants, as scikit-image uses them (the exact ones, 216/24389 and
# 24389/27, move Lab by about 1.5e-4 and would break agreement with the reference).
_EPS_LAB = 0.008856
_SLOPE_LAB = 7.787


@dataclass(frozen=True)
class ColorConstants:
    """What a checkpoint records so that a reader can tell how its numbers map to colour."""

    l_cent: float = L_CENT
    l_norm: float = L_NORM
    ab_norm: float = AB_NORM
    ab_grid: float = AB_GRID
    n_bins: int = 0  # filled from ab_bins() by current()
    white: tuple[float, float, float] = D65_WHITE

    @classmethod
    def current(cls) -> ColorConstants:
        return cls(n_bins=len(ab_bins_np()))

    def to_dict(self) -> dict:
        return asdict(self)


# --- sRGB <-> linear <-> XYZ <-> Lab (torch, channels-first) --------------------------------------


def _matrix(like: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    m = torch.tensor(XYZ_FROM_RGB, dtype=torch.float64)
    if inverse:
        m = torch.linalg.inv(m)
    return m.to(device=like.device, dtype=like.dtype)


def _apply_matrix(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    # x: (..., 3, H, W); contract the channel axis with the 3x3 matrix.
    return torch.einsum("ij,...jhw->...ihw", m, x)


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    return torch.where(rgb > 0.04045, ((rgb.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4, rgb / 12.92)


def linear_to_srgb(lin: torch.Tensor) -> torch.Tensor:
    return torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=0.0031308) ** (1 / 2.4) - 0.055, lin * 12.92)


def linear_to_srgb_np(linear: np.ndarray) -> np.ndarray:
    """``linear_to_srgb`` of a float32 array of any shape."""
    return linear_to_srgb(torch.from_numpy(np.ascontiguousarray(linear, dtype=np.float32))).numpy()


def srgb_to_linear_np(rgb: np.ndarray) -> np.ndarray:
    """``srgb_to_linear`` of a float32 array of any shape."""
    return srgb_to_linear(torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32))).numpy()


# --- RGB primaries ------------------------------------------------------------------------------
# Red, green, blue and white as CIE xy: BT.709's (sRGB's), which OpenEXR takes where a file names none.
BT709_CHROMATICITIES = (0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290)
BT709_LUMINANCE = (0.2126, 0.7152, 0.0722)  # Y of linear R, G and B in BT.709 primaries
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])


def bradford_adaptation(source_white: np.ndarray, target_white: np.ndarray) -> np.ndarray:
    """The 3x3 matrix that adapts XYZ seen under ``source_white`` to ``target_white`` (both XYZ): Bradford's, the
    one ICC profiles and ACES are made with."""
    scale = (_BRADFORD @ np.asarray(target_white)) / (_BRADFORD @ np.asarray(source_white))
    return np.linalg.inv(_BRADFORD) @ np.diag(scale) @ _BRADFORD


def xyz_from_primaries(chromaticities) -> np.ndarray:
    """The 3x3 matrix from linear RGB of these primaries (red, green, blue and white as CIE xy, eight numbers) to
    XYZ, their white at Y = 1."""
    xy = np.asarray(chromaticities, dtype=np.float64).reshape(4, 2)
    xyz = np.stack([xy[:, 0] / xy[:, 1], np.ones(4), (1.0 - xy[:, 0] - xy[:, 1]) / xy[:, 1]], axis=1)
    primaries = xyz[:3].T  # a column per primary, each at Y = 1
    return primaries * np.linalg.solve(primaries, xyz[3])  # scaled so that R = G = B = 1 is the white


def bt709_from_primaries(chromaticities) -> np.ndarray:
    """The 3x3 matrix from linear RGB of these primaries (an ACES plate's, say) to linear BT.709 (sRGB's), their white
    adapted to D65: a neutral stays neutral, at its own luminance."""
    plate, bt709 = xyz_from_primaries(chromaticities), xyz_from_primaries(BT709_CHROMATICITIES)
    adapt = bradford_adaptation(plate @ np.ones(3), bt709 @ np.ones(3))
    return np.linalg.inv(bt709) @ adapt @ plate


BT2020_CHROMATICITIES = (0.708, 0.292, 0.170, 0.797, 0.131, 0.046, 0.3127, 0.3290)  # UHD and HDR video's


@lru_cache(maxsize=1)
def bt2020_from_bt709() -> np.ndarray:
    """The 3x3 matrix from linear BT.709 RGB to linear BT.2020 RGB (both D65): where a colour in sRGB's primaries
    lies among UHD video's wider ones."""
    return np.linalg.inv(bt709_from_primaries(BT2020_CHROMATICITIES))


def same_primaries(chromaticities, other, tolerance: float = 1e-3) -> bool:
    """Whether two sets of chromaticities are the same primaries and white, to the rounding files write them with."""
    return bool(np.abs(np.subtract(chromaticities, other)).max() <= tolerance)


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _EPS_LAB, t.clamp(min=_EPS_LAB) ** (1 / 3), _SLOPE_LAB * t + 16.0 / 116.0)


def _lab_f_inv(f: torch.Tensor) -> torch.Tensor:
    return torch.where(f > 0.2068966, f**3, (f - 16.0 / 116.0) / _SLOPE_LAB)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], shape (..., 3, H, W) -> Lab, same shape."""
    xyz = _apply_matrix(srgb_to_linear(rgb), _matrix(rgb))
    white = torch.tensor(D65_WHITE, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    fx, fy, fz = _lab_f(xyz / white).unbind(-3)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-3)


def lab_to_rgb(lab: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """Lab, shape (..., 3, H, W) -> sRGB in [0, 1] (clipped to the gamut unless ``clip=False``)."""
    L, a, b = lab.unbind(-3)
    fy = (L + 16.0) / 116.0
    f = torch.stack((fy + a / 500.0, fy, fy - b / 200.0), dim=-3)
    white = torch.tensor(D65_WHITE, dtype=lab.dtype, device=lab.device).view(3, 1, 1)
    xyz = _lab_f_inv(f) * white
    lin = _apply_matrix(xyz, _matrix(lab, inverse=True))
    rgb = linear_to_srgb(lin.clamp(min=0.0))
    return rgb.clamp(0.0, 1.0) if clip else rgb


def rgb_to_l(rgb: torch.Tensor) -> torch.Tensor:
    """Lightness only: (..., 3, H, W) -> (..., 1, H, W)."""
    return rgb_to_lab(rgb)[..., :1, :, :]


def luminance_to_l(Y: torch.Tensor) -> torch.Tensor:
    """Relative luminance (white = 1) -> L. Any shape."""
    return 116.0 * _lab_f(Y) - 16.0


def gray_to_l(gray: torch.Tensor) -> torch.Tensor:
    """A gray sRGB value in [0, 1] (R = G = B) -> L. Any channel shape; Y equals the linear value."""
    return luminance_to_l(srgb_to_linear(gray))


def l_to_gray(L: torch.Tensor) -> torch.Tensor:
    """The inverse of ``gray_to_l``: L -> the sRGB gray value with that lightness (a = b = 0)."""
    return linear_to_srgb(_lab_f_inv((L + 16.0) / 116.0)).clamp(0.0, 1.0)


def merge_l_ab(L: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) L and (B, 2, H, W) ab -> (B, 3, H, W) sRGB."""
    return lab_to_rgb(torch.cat((L, ab), dim=-3))


def normalize_l(L: torch.Tensor) -> torch.Tensor:
    return (L - L_CENT) / L_NORM


# --- numpy wrappers (channels-last, float64) ------------------------------------------------------


def _np_channels_last(fn, x: np.ndarray, **kwargs) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).movedim(-1, -3)
    return fn(t, **kwargs).movedim(-3, -1).numpy()


def rgb_to_lab_np(rgb: np.ndarray) -> np.ndarray:
    """sRGB floats in [0, 1], (..., H, W, 3) -> Lab (..., H, W, 3)."""
    return _np_channels_last(rgb_to_lab, rgb)


def lab_to_rgb_np(lab: np.ndarray, clip: bool = True) -> np.ndarray:
    return _np_channels_last(lab_to_rgb, lab, clip=clip)


def lab_to_rgb_fast_np(lab: np.ndarray) -> np.ndarray:
    """float32 Lab ``(H, W, 3)`` -> float32 sRGB in [0, 1], for the film path's per-frame colour.

    OpenCV's vectorised implementation of the same formulas (D65, sRGB transfer): 60x faster than the
    torch code on a 1080p frame on one core, which is the difference between a real-time film pipeline
    and one that is not. Its white point differs from ``D65_WHITE`` in the fifth digit; agreement with
    ``lab_to_rgb`` is tested (under 1e-3 on sRGB values), far below one 8- or 10-bit code value.
    """
    rgb = cv2.cvtColor(np.ascontiguousarray(lab, dtype=np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(rgb, 0.0, 1.0, out=rgb)


# --- Y'CbCr (video) ---------------------------------------------------------------------------------

# Luma weights (Kr, Kb) of the Y'CbCr matrices video uses; Kg = 1 - Kr - Kb.
YCBCR_WEIGHTS = {
    "bt601": (0.299, 0.114),  # SD (also what FFmpeg calls smpte170m / bt470bg)
    "bt709": (0.2126, 0.0722),  # HD
    "bt2020": (0.2627, 0.0593),  # UHD, non-constant luminance
}


def _code_range(bit_depth: int, full_range: bool) -> tuple[float, float, float, float]:
    """(luma offset, luma scale, chroma offset, chroma scale) in code values of ``bit_depth`` bits."""
    top = float((1 << bit_depth) - 1)
    if full_range:
        return 0.0, top, float(1 << (bit_depth - 1)), top
    step = float(1 << (bit_depth - 8))
    return 16.0 * step, 219.0 * step, 128.0 * step, 224.0 * step


def luma_to_l_table(bit_depth: int, full_range: bool, subdivisions: int = 1) -> np.ndarray:
    """L for luma code values in steps of ``1 / subdivisions``: ``table[round(Y * subdivisions)]`` is the
    lightness of the gray pixel with luma Y (Y may be an area average, hence the finer steps).

    A black-and-white frame is a gray sRGB image whose value is its normalized luma, so L follows from
    ``gray_to_l``; one lookup per pixel replaces a full colour conversion. Codes outside the nominal
    range (super-white, sub-black in limited-range video) clip to L = 100 and 0.
    """
    offset, scale, _, _ = _code_range(bit_depth, full_range)
    codes = torch.arange(((1 << bit_depth) - 1) * subdivisions + 1, dtype=torch.float64) / subdivisions
    gray = ((codes - offset) / scale).clamp(0.0, 1.0)
    return gray_to_l(gray).to(torch.float32).numpy()


# --- Cineon log (film scans for grading) -----------------------------------------------------------------

# Kodak's Cineon printing-density encoding, which log DPX scans use: 10-bit codes step 0.002 density, the negative's
# gamma is 0.6, reference white (a 90 % reflector) is code 685 and black code 95; codes above 685 keep highlights.
CINEON_WHITE = 685.0
CINEON_BLACK = 95.0
CINEON_DENSITY_PER_CODE = 0.002
CINEON_NEGATIVE_GAMMA = 0.6
_CINEON_OFFSET = 10.0 ** ((CINEON_BLACK - CINEON_WHITE) * CINEON_DENSITY_PER_CODE / CINEON_NEGATIVE_GAMMA)
# sRGB values between these steps are read from a table by ``srgb_to_cineon_np``: 1/4096 moves a 10-bit log code
# by at most a quarter of one, at black, where the encoding is steepest.
_CINEON_TABLE_STEPS = 4096


def cineon_to_linear(code: torch.Tensor, bit_depth: int = 10) -> torch.Tensor:
    """Log code values of ``bit_depth`` bits -> relative linear light (reference white 1, black 0, highlights
    above 1). Any shape."""
    code10 = code.to(torch.float64) * (1023.0 / ((1 << bit_depth) - 1))
    exponent = (code10 - CINEON_WHITE) * CINEON_DENSITY_PER_CODE / CINEON_NEGATIVE_GAMMA
    return ((10.0 ** exponent - _CINEON_OFFSET) / (1.0 - _CINEON_OFFSET)).clamp(min=0.0)


def linear_to_cineon(linear: torch.Tensor) -> torch.Tensor:
    """Relative linear light -> the log code as a fraction of full scale ([0, 1]; white 685/1023): the inverse of
    ``cineon_to_linear`` at any depth."""
    density = torch.log10(linear.clamp(min=0.0) * (1.0 - _CINEON_OFFSET) + _CINEON_OFFSET)
    return ((CINEON_WHITE + density * CINEON_NEGATIVE_GAMMA / CINEON_DENSITY_PER_CODE) / 1023.0).clamp(0.0, 1.0)


def srgb_to_cineon(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB values in [0, 1] -> Cineon log values in [0, 1]: a colour from ``lab_to_rgb`` as a log scan holds it,
    channel by channel (so a gray's code is the scan's own)."""
    return linear_to_cineon(srgb_to_linear(rgb))


@lru_cache(maxsize=1)
def _srgb_to_cineon_table() -> np.ndarray:
    steps = torch.arange(_CINEON_TABLE_STEPS + 1, dtype=torch.float64) / _CINEON_TABLE_STEPS
    return srgb_to_cineon(steps).to(torch.float32).numpy()


def srgb_to_cineon_np(rgb: np.ndarray) -> np.ndarray:
    """``srgb_to_cineon`` for the film path's float32 frames, by table (a 2K frame's colour in 30 ms, not 150)."""
    index = np.rint(np.clip(rgb, 0.0, 1.0) * _CINEON_TABLE_STEPS).astype(np.int32)
    return _srgb_to_cineon_table()[index]


@lru_cache(maxsize=1)
def cineon_display_table() -> np.ndarray:
    """8-bit sRGB for each 16-bit Cineon log code (``table[code]``): a log scan as a display shows it, light read
    through the log encoding, reference white as white (a preview, a contact sheet)."""
    light = cineon_to_linear(torch.arange(1 << 16, dtype=torch.float64), bit_depth=16).clamp(max=1.0)
    return torch.round(linear_to_srgb(light) * 255).to(torch.uint8).numpy()


def log_luma_to_l_table(bit_depth: int, subdivisions: int = 1) -> np.ndarray:
    """``luma_to_l_table`` for Cineon log codes (full range, as log DPX frames are): a gray code's lightness is
    that of the light it stands for, not of the flat picture the codes make shown as they are."""
    codes = torch.arange(((1 << bit_depth) - 1) * subdivisions + 1, dtype=torch.float64) / subdivisions
    return luminance_to_l(cineon_to_linear(codes, bit_depth).clamp(max=1.0)).to(torch.float32).numpy()


# --- HDR video (ITU-R BT.2100) ------------------------------------------------------------------------------------

# Light relative to HDR reference white, as BT.2408 places it (a white page, graphics white): 203 nits, which PQ codes
# absolutely and HLG at 75 % of its signal on a 1000-nit display. Lightness 100 is reference white, as it is the white
# of an SDR picture; highlights above it are brighter than white.
HDR_REFERENCE_WHITE_NITS = 203.0
_PQ_PEAK_NITS = 10000.0
_PQ_M1, _PQ_M2 = 2610.0 / 16384.0, 2523.0 / 4096.0 * 128.0
_PQ_C1, _PQ_C2, _PQ_C3 = 3424.0 / 4096.0, 2413.0 / 4096.0 * 32.0, 2392.0 / 4096.0 * 32.0
_HLG_A, _HLG_B, _HLG_C = 0.17883277, 0.28466892, 0.55991073
_HLG_PEAK_NITS, _HLG_SYSTEM_GAMMA = 1000.0, 1.2  # BT.2100's reference display, and its OOTF's gamma there


def pq_to_linear(signal: torch.Tensor) -> torch.Tensor:
    """PQ signal values (SMPTE ST 2084, [0, 1]) -> light relative to HDR reference white. Any shape, in its dtype."""
    power = signal.clamp(0.0, 1.0) ** (1.0 / _PQ_M2)
    nits = _PQ_PEAK_NITS * ((power - _PQ_C1).clamp(min=0.0) / (_PQ_C2 - _PQ_C3 * power)) ** (1.0 / _PQ_M1)
    return nits / HDR_REFERENCE_WHITE_NITS


def linear_to_pq(light: torch.Tensor) -> torch.Tensor:
    """Light relative to HDR reference white -> PQ signal values in [0, 1]: the inverse of ``pq_to_linear``."""
    y = (light * (HDR_REFERENCE_WHITE_NITS / _PQ_PEAK_NITS)).clamp(0.0, 1.0) ** _PQ_M1
    return ((_PQ_C1 + _PQ_C2 * y) / (1.0 + _PQ_C3 * y)) ** _PQ_M2


def _hlg_scene(signal: torch.Tensor) -> torch.Tensor:
    """HLG signal values -> scene light in [0, 1] (the inverse of HLG's OETF)."""
    signal = signal.clamp(0.0, 1.0)
    return torch.where(signal <= 0.5, signal ** 2 / 3.0,
                       (torch.exp((signal.clamp(min=0.5) - _HLG_C) / _HLG_A) + _HLG_B) / 12.0)


def _hlg_signal(scene: torch.Tensor) -> torch.Tensor:
    """Scene light in [0, 1] -> HLG signal values (HLG's OETF)."""
    scene = scene.clamp(0.0, 1.0)
    return torch.where(scene <= 1.0 / 12.0, torch.sqrt(3.0 * scene),
                       _HLG_A * torch.log((12.0 * scene).clamp(min=1.0) - _HLG_B) + _HLG_C)


def _bt2020_luminance(rgb: torch.Tensor, channels: int) -> torch.Tensor:
    """Y of BT.2020 RGB whose channels are on axis ``channels``, that axis kept (of size 1)."""
    kr, kb = YCBCR_WEIGHTS["bt2020"]
    weights = torch.tensor((kr, 1.0 - kr - kb, kb), dtype=rgb.dtype, device=rgb.device)
    shape = [1] * rgb.dim()
    shape[channels] = 3
    return (rgb * weights.reshape(shape)).sum(dim=channels, keepdim=True)


def hlg_to_linear(signal: torch.Tensor, channels: int = -3) -> torch.Tensor:
    """HLG signal values of BT.2020 R'G'B' (channels on axis ``channels``) -> their light on BT.2100's 1000-nit
    reference display, relative to HDR reference white: the OETF's inverse, then the OOTF, which scales each colour
    by a power of its scene luminance. The inverse of ``linear_to_hlg``."""
    scene = _hlg_scene(signal)
    luminance = _bt2020_luminance(scene, channels).clamp(min=1e-12)
    return scene * (_HLG_PEAK_NITS / HDR_REFERENCE_WHITE_NITS) * luminance ** (_HLG_SYSTEM_GAMMA - 1.0)


def hlg_gray_to_linear(signal: torch.Tensor) -> torch.Tensor:
    """HLG signal values of a gray (R = G = B) -> its light on BT.2100's 1000-nit reference display, relative to HDR
    reference white: the OOTF raises a neutral's scene light to the system gamma. Any shape."""
    return _HLG_PEAK_NITS * _hlg_scene(signal) ** _HLG_SYSTEM_GAMMA / HDR_REFERENCE_WHITE_NITS


def linear_to_hlg(rgb: torch.Tensor, channels: int = -3) -> torch.Tensor:
    """Display light of BT.2020 RGB (channels on axis ``channels``), relative to HDR reference white -> HLG signal
    values: the inverse of the reference display's OOTF, which scales each colour by a power of its luminance, then
    the OETF."""
    display = rgb.clamp(min=0.0) * (HDR_REFERENCE_WHITE_NITS / _HLG_PEAK_NITS)  # of the display's peak
    scene_luminance = _bt2020_luminance(display, channels).clamp(min=1e-12) ** (1.0 / _HLG_SYSTEM_GAMMA)
    return _hlg_signal(display / scene_luminance ** (_HLG_SYSTEM_GAMMA - 1.0))


def hdr_luma_to_l_table(transfer: str, bit_depth: int, full_range: bool, subdivisions: int = 1) -> np.ndarray:
    """``luma_to_l_table`` for HDR video of ``transfer`` ("pq" or "hlg"): a gray code's lightness is that of the light
    it stands for, reference white at 100 (highlights above it clip there), not that of the dark, flat picture its
    codes make on an SDR display."""
    offset, scale, _, _ = _code_range(bit_depth, full_range)
    codes = torch.arange(((1 << bit_depth) - 1) * subdivisions + 1, dtype=torch.float64) / subdivisions
    signal = ((codes - offset) / scale).clamp(0.0, 1.0)
    light = pq_to_linear(signal) if transfer == "pq" else hlg_gray_to_linear(signal)
    return luminance_to_l(light.clamp(max=1.0)).to(torch.float32).numpy()


def srgb_to_video_rgb(rgb: torch.Tensor, transfer: str | None, bt2020: bool, channels: int = -3) -> torch.Tensor:
    """sRGB in [0, 1] (a colour from ``lab_to_rgb``, white at reference white; channels on axis ``channels``) -> the
    R'G'B' signal values of video of ``transfer`` ("pq", "hlg", or None for SDR, whose curve is taken as sRGB's, as
    its luma is read) and of BT.2020's primaries where ``bt2020`` (else BT.709's): the colour as that video holds it,
    so a gray keeps its own code and a colour shows as the one chosen. In ``rgb``'s dtype."""
    if transfer is None and not bt2020:
        return rgb
    linear = srgb_to_linear(rgb)
    if bt2020:
        matrix = torch.from_numpy(bt2020_from_bt709()).to(device=linear.device, dtype=linear.dtype)
        linear = torch.movedim(torch.movedim(linear, channels, -1) @ matrix.T, -1, channels)
    if transfer == "pq":
        return linear_to_pq(linear)
    if transfer == "hlg":
        return linear_to_hlg(linear, channels)
    return linear_to_srgb(linear.clamp(0.0, 1.0))


def video_rgb_to_linear(signal: torch.Tensor, transfer: str | None, channels: int = -3) -> torch.Tensor:
    """R'G'B' signal values of video of ``transfer`` ("pq", "hlg", or None for SDR, read through sRGB's curve) ->
    light relative to reference white, in the video's own primaries: the inverse of ``srgb_to_video_rgb``'s curve."""
    if transfer == "pq":
        return pq_to_linear(signal)
    if transfer == "hlg":
        return hlg_to_linear(signal, channels)
    return srgb_to_linear(signal)


def srgb_to_video_rgb_np(rgb: np.ndarray, transfer: str | None, bt2020: bool) -> np.ndarray:
    """``srgb_to_video_rgb`` for the film path's float32 ``(H, W, 3)`` frames."""
    if transfer is None and not bt2020:
        return rgb
    pixels = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32))
    return srgb_to_video_rgb(pixels, transfer, bt2020, channels=-1).numpy()


def luma_code_table(bit_depth: int, full_range: bool, out_depth: int, out_full_range: bool) -> np.ndarray:
    """Luma code values of one depth and range as those of another: ``table[Y]``, rounded to the nearest code (full
    range to video range, as a codec that stores only video range needs). Codes outside the source's nominal range
    keep their distance from it where the output has room (super-white stays super-white), else clip."""
    offset, scale, _, _ = _code_range(bit_depth, full_range)
    out_offset, out_scale, _, _ = _code_range(out_depth, out_full_range)
    codes = np.arange(1 << bit_depth, dtype=np.float64)
    converted = np.rint(out_offset + (codes - offset) / scale * out_scale)
    return np.clip(converted, 0, (1 << out_depth) - 1).astype(code_dtype(out_depth))


def code_dtype(bit_depth: int) -> type[np.unsignedinteger]:
    """The numpy type of video code values of ``bit_depth`` bits: uint8 up to 8 bits, uint16 above."""
    return np.uint8 if bit_depth <= 8 else np.uint16


def rgb_to_chroma(
    rgb: torch.Tensor, matrix: str, bit_depth: int, full_range: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """sRGB float ``(..., 3, H, W)`` in [0, 1] -> the Cb and Cr planes ``(..., H, W)`` as integer code values of
    the Y'CbCr ``matrix`` (a key of ``YCBCR_WEIGHTS``): uint8 for 8-bit video, int32 otherwise (torch has no
    uint16 arithmetic; ``rgb_to_chroma_np`` hands out uint16). On the GPU in the film pipeline's GPU path, so
    only the code values cross the bus."""
    if matrix not in YCBCR_WEIGHTS:
        raise ValueError(f"unknown Y'CbCr matrix {matrix!r}; expected one of {sorted(YCBCR_WEIGHTS)}")
    kr, kb = YCBCR_WEIGHTS[matrix]
    r, g, b = rgb[..., 0, :, :], rgb[..., 1, :, :], rgb[..., 2, :, :]
    luma = kr * r + (1.0 - kr - kb) * g + kb * b
    _, _, offset, scale = _code_range(bit_depth, full_range)
    dtype = torch.uint8 if bit_depth <= 8 else torch.int32
    top = (1 << bit_depth) - 1
    planes = []
    for value, k in ((b, kb), (r, kr)):
        code = (value - luma) * (scale / (2.0 * (1.0 - k))) + offset
        planes.append(torch.round(code).clamp_(0, top).to(dtype))  # round half to even, as np.rint
    return planes[0], planes[1]


def rgb_to_chroma_np(
    rgb: np.ndarray, matrix: str, bit_depth: int, full_range: bool
) -> tuple[np.ndarray, np.ndarray]:
    """sRGB float ``(H, W, 3)`` in [0, 1] -> the Cb and Cr planes ``(H, W)`` as integer code values
    (uint8 for 8-bit, uint16 otherwise): ``rgb_to_chroma`` on the CPU."""
    cb, cr = rgb_to_chroma(torch.from_numpy(np.ascontiguousarray(rgb)).movedim(-1, -3), matrix, bit_depth, full_range)
    dtype = code_dtype(bit_depth)
    return cb.numpy().astype(dtype, copy=False), cr.numpy().astype(dtype, copy=False)


def ycbcr_to_rgb_np(
    y: np.ndarray, cb: np.ndarray, cr: np.ndarray, matrix: str, bit_depth: int, full_range: bool
) -> np.ndarray:
    """Code-value planes of one size -> sRGB float ``(H, W, 3)`` in [0, 1]; the inverse of the above with
    ``luma_to_l_table``'s view of Y (used to score films and to test the conversions)."""
    kr, kb = YCBCR_WEIGHTS[matrix]
    y_off, y_scale, c_off, c_scale = _code_range(bit_depth, full_range)
    # float32, written into the result plane by plane: a 4K scan's frame would take a gigabyte at float64 with
    # temporaries, and float32 holds a 16-bit code to within a hundredth.
    rgb = np.empty((*y.shape, 3), dtype=np.float32)
    luma = (y.astype(np.float32) - y_off) / np.float32(y_scale)
    chroma = (cr.astype(np.float32) - c_off) / np.float32(c_scale)
    np.add(luma, np.float32(2.0 * (1.0 - kr)) * chroma, out=rgb[..., 0])
    green = luma - np.float32(2.0 * (1.0 - kr) * kr / (1.0 - kr - kb)) * chroma
    chroma = (cb.astype(np.float32) - c_off) / np.float32(c_scale)
    np.add(luma, np.float32(2.0 * (1.0 - kb)) * chroma, out=rgb[..., 2])
    green -= np.float32(2.0 * (1.0 - kb) * kb / (1.0 - kr - kb)) * chroma
    rgb[..., 1] = green
    return np.clip(rgb, 0.0, 1.0, out=rgb)


# --- ab quantization into in-gamut bins ------------------------------------------------------------


@lru_cache(maxsize=1)
def ab_bins_np() -> np.ndarray:
    """The in-gamut ab bin centres on the grid-10 lattice, shape (Q, 2).

    A bin is in gamut when some sRGB colour quantizes into its cell; computed once by sampling the
    whole sRGB cube (nothing is downloaded). This exact sRGB gamut gives Q = 261. Zhang et al. (2016)
    report Q = 313 for their hull, which was taken from data and is looser than sRGB: the extra 52
    bins are colours no sRGB pixel can have (no training target falls in them; the network would
    only learn to avoid them), so Tinct keeps the exact gamut. ``n_ab_bins()`` is the one source of Q.
    """
    steps = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    r, g, b = torch.meshgrid(steps, steps, steps, indexing="ij")
    rgb = torch.stack((r, g, b)).reshape(3, -1, 1)
    ab = rgb_to_lab(rgb)[1:].reshape(2, -1).T
    cells = torch.round(ab / AB_GRID).to(torch.int64)
    # One integer key per cell: a 1-D unique is ten times faster than unique rows (startup time).
    side = 2 * round(AB_RANGE / AB_GRID) + 1
    offset = side // 2
    keys = torch.unique((cells[:, 0] + offset) * side + (cells[:, 1] + offset))
    centres = torch.stack((keys // side - offset, keys % side - offset), dim=1).to(torch.float64) * AB_GRID
    inside = (centres.abs() <= AB_RANGE).all(dim=1)
    return centres[inside].numpy().astype(np.float32)


def ab_bins(device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.from_numpy(ab_bins_np()).to(device=device, dtype=dtype)


def n_ab_bins() -> int:
    return len(ab_bins_np())


def _ab_to_points(ab: torch.Tensor) -> torch.Tensor:
    # (B, 2, H, W) -> (B*H*W, 2)
    return ab.movedim(1, -1).reshape(-1, 2)


def quantize_ab(ab: torch.Tensor) -> torch.Tensor:
    """Hard assignment: (B, 2, H, W) ab -> (B, H, W) index of the nearest bin."""
    bins = ab_bins(ab.device, ab.dtype)
    idx = torch.cdist(_ab_to_points(ab), bins).argmin(dim=1)
    b, _, h, w = ab.shape
    return idx.view(b, h, w)


def soft_encode_ab(
    ab: torch.Tensor, neighbours: int = SOFT_ENCODE_NEIGHBOURS, sigma: float = SOFT_ENCODE_SIGMA
) -> torch.Tensor:
    """Soft targets: (B, 2, H, W) ab -> (B, Q, H, W), Gaussian weights on the nearest bins, summing to 1."""
    bins = ab_bins(ab.device, ab.dtype)
    b, _, h, w = ab.shape
    dist = torch.cdist(_ab_to_points(ab), bins)
    near_d, near_i = dist.topk(neighbours, dim=1, largest=False)
    weight = torch.exp(-(near_d**2) / (2 * sigma**2))
    weight = weight / weight.sum(dim=1, keepdim=True)
    target = torch.zeros(dist.shape, dtype=ab.dtype, device=ab.device).scatter_(1, near_i, weight)
    return target.view(b, h, w, -1).movedim(-1, 1)


_CPU = torch.device("cpu")


@lru_cache(maxsize=4)
def _soft_encode_table(device: torch.device = _CPU) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-encoding of every ab on a 1-unit lattice over [-AB_RANGE, AB_RANGE]^2: (cells, K) bin indices, nearest
    first, and their Gaussian weights. Computed once per device (about 49k cells); training looks targets up in it."""
    if device.type != "cpu":
        return tuple(t.to(device) for t in _soft_encode_table())  # type: ignore[return-value]
    side = 2 * round(AB_RANGE) + 1
    axis = torch.arange(side, dtype=torch.float32) - round(AB_RANGE)
    a, b = torch.meshgrid(axis, axis, indexing="ij")
    dist = torch.cdist(torch.stack((a.reshape(-1), b.reshape(-1)), dim=1), ab_bins())
    near_d, near_i = dist.topk(SOFT_ENCODE_NEIGHBOURS, dim=1, largest=False)  # sorted: nearest bin first
    weight = torch.exp(-(near_d**2) / (2 * SOFT_ENCODE_SIGMA**2))
    return near_i, weight / weight.sum(dim=1, keepdim=True)


def soft_encode_ab_sparse(ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``soft_encode_ab``'s targets without the dense (B, Q, H, W) tensor: (B, K, H, W) bin indices (nearest
    first) and (B, K, H, W) weights, for ab rounded to whole units. Rounding moves a pixel by at most 0.7 ab units,
    far inside the encoding's sigma of 5; the lookup replaces a distance to every bin per pixel, which cost a
    fifth of a training step (``python -m tools bench --train``)."""
    indices, weights = _soft_encode_table(ab.device)
    side = 2 * round(AB_RANGE) + 1
    cells = (ab.detach().float().round().clamp(-AB_RANGE, AB_RANGE) + round(AB_RANGE)).long()
    flat = cells[:, 0] * side + cells[:, 1]  # (B, H, W)
    return indices[flat].movedim(-1, 1), weights.to(ab.dtype)[flat].movedim(-1, 1)


def ab_histogram(ab: torch.Tensor) -> torch.Tensor:
    """Counts of pixels per bin (nearest-bin assignment), shape (Q,). Accumulate over a dataset."""
    idx = quantize_ab(ab).reshape(-1)
    return torch.bincount(idx, minlength=n_ab_bins()).to(torch.float64)


def rebalance_weights(
    counts: np.ndarray | torch.Tensor, lam: float = REBALANCE_LAMBDA, sigma: float = SOFT_ENCODE_SIGMA
) -> np.ndarray:
    """Class-rebalancing weights from a dataset's ab histogram (Zhang et al. 2016, eq. 4).

    The empirical distribution is smoothed with a Gaussian of ``sigma`` in ab space (mass-preserving:
    each bin spreads its probability over its neighbours), mixed with the uniform distribution by
    ``lam``, inverted and normalized so that its expectation under the smoothed distribution is 1.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape != (n_ab_bins(),):
        raise ValueError(f"ab histogram has shape {counts.shape}, expected ({n_ab_bins()},)")
    if counts.sum() <= 0:
        raise ValueError("ab histogram is empty: no pixels were counted")
    p = counts / counts.sum()
    bins = ab_bins_np().astype(np.float64)
    d2 = ((bins[:, None, :] - bins[None, :, :]) ** 2).sum(-1)
    kernel = np.exp(-d2 / (2 * sigma**2))
    kernel /= kernel.sum(axis=0, keepdims=True)  # column j: where bin j's mass goes; sums to 1
    p_smooth = kernel @ p
    w = 1.0 / ((1 - lam) * p_smooth + lam / len(p))
    w /= (p_smooth * w).sum()
    return w.astype(np.float32)


def decode_ab(logits: torch.Tensor, method: str = "annealed_mean", temperature: float = ANNEAL_T_ZHANG) -> torch.Tensor:
    """A bin distribution as logits (B, Q, H, W) -> ab (B, 2, H, W).

    ``mode`` takes the most likely bin (vivid, but patchy), ``mean`` the expectation (smooth, but
    desaturated), and ``annealed_mean`` the expectation of the distribution sharpened by
    ``temperature`` (T -> 0 is the mode, T = 1 the mean).
    """
    bins = ab_bins(logits.device, logits.dtype)
    if method == "mode":
        return bins[logits.argmax(dim=1)].movedim(-1, 1)
    if method == "mean":
        temperature = 1.0
    elif method != "annealed_mean":
        raise ValueError(f"unknown ab decoding method {method!r}: use mode, mean or annealed_mean")
    if temperature <= 0:
        raise ValueError(f"annealing temperature must be > 0, got {temperature}")
    prob = F.softmax(logits / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", prob, bins)


@dataclass(frozen=True)
class HighlightRolloff:
    """Chroma kept in full up to lightness ``start``, falling linearly to ``kept`` of it at ``end`` and above.

    The colorizer's last step on full-resolution ab (``models.colorizer``), chosen per model on the validation
    split (``tools promote --highlight-rolloff``). Near white the network keeps the warm cast of the photos it
    learnt from (its whites are cream); a camera's tone curve rolls chroma off in the highlights the same way.
    """

    start: float
    end: float
    kept: float

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= 100 or not 0 <= self.kept <= 1:
            raise ValueError(f"highlight roll-off {self.start:g},{self.end:g},{self.kept:g}: expected START,END,KEPT "
                             "with 0 <= START < END <= 100 (lightness) and KEPT in [0, 1]")

    @property
    def is_identity(self) -> bool:
        """Whether it keeps all chroma everywhere (``kept`` 1), which is the same as having no roll-off."""
        return self.kept == 1.0

    @classmethod
    def parse(cls, text: str) -> HighlightRolloff:
        """``"80,95,0.4"`` -> HighlightRolloff(80, 95, 0.4); ``"off"`` -> one that keeps all chroma (no roll-off)."""
        if text.strip().lower() == "off":
            return cls(0.0, 100.0, 1.0)
        try:
            start, end, kept = (float(part) for part in text.split(","))
        except ValueError:
            raise ValueError(f"highlight roll-off {text!r}: expected START,END,KEPT (e.g. 80,95,0.4) or off") from None
        return cls(start, end, kept)

    def apply(self, ab: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
        """``ab`` (..., 2, H, W) scaled by the roll-off of ``L`` (..., H, W) on the same device."""
        past = ((L - self.start) / (self.end - self.start)).clamp(0.0, 1.0)
        return ab * (1.0 - (1.0 - self.kept) * past).unsqueeze(-3).to(ab.dtype)


# --- colour difference ----------------------------------------------------------------------------


def delta_e_ciede2000(lab1: torch.Tensor, lab2: torch.Tensor) -> torch.Tensor:
    """CIEDE2000 colour difference (kL = kC = kH = 1): Lab (..., 3, H, W) twice -> (..., H, W).

    The perceptual difference evaluation reports (Sharma, Wu & Dalal 2005), written after
    scikit-image's ``deltaE_ciede2000`` so the two agree to rounding: a ``ΔE00`` of about 1 is
    just noticeable, 2-10 perceptible at a glance.
    """
    L1, a1, b1 = lab1.unbind(-3)
    L2, a2, b2 = lab2.unbind(-3)
    two_pi = 2 * torch.pi
    c7_ref = 25.0**7

    # `a` is stretched by how unsaturated the pair is on average, then everything is in (L, C', h').
    c_bar = 0.5 * (torch.hypot(a1, b1) + torch.hypot(a2, b2))
    g = 0.5 * (1 - torch.sqrt(c_bar**7 / (c_bar**7 + c7_ref)))
    a1p, a2p = a1 * (1 + g), a2 * (1 + g)
    c1, c2 = torch.hypot(a1p, b1), torch.hypot(a2p, b2)
    h1 = torch.remainder(torch.atan2(b1, a1p), two_pi)
    h2 = torch.remainder(torch.atan2(b2, a2p), two_pi)

    l_bar_50 = (0.5 * (L1 + L2) - 50.0) ** 2
    s_l = 1 + 0.015 * l_bar_50 / torch.sqrt(20 + l_bar_50)
    l_term = (L2 - L1) / s_l

    c_bar_p = 0.5 * (c1 + c2)
    c_term = (c2 - c1) / (1 + 0.045 * c_bar_p)

    # Hue difference and mean hue go the short way round the circle; a neutral colour has no hue.
    cc = c1 * c2
    neutral = cc == 0
    h_diff = h2 - h1
    h_sum = h1 + h2
    dh = torch.where(h_diff > torch.pi, h_diff - two_pi, torch.where(h_diff < -torch.pi, h_diff + two_pi, h_diff))
    dh = torch.where(neutral, torch.zeros_like(dh), dh)
    dh_term = 2 * torch.sqrt(cc) * torch.sin(dh / 2)
    wrap = ~neutral & (h_diff.abs() > torch.pi)
    h_bar = torch.where(wrap, torch.where(h_sum < two_pi, h_sum + two_pi, h_sum - two_pi), h_sum)
    h_bar = 0.5 * torch.where(neutral, 2 * h_bar, h_bar)

    deg = torch.pi / 180
    t = (
        1
        - 0.17 * torch.cos(h_bar - 30 * deg)
        + 0.24 * torch.cos(2 * h_bar)
        + 0.32 * torch.cos(3 * h_bar + 6 * deg)
        - 0.20 * torch.cos(4 * h_bar - 63 * deg)
    )
    h_term = dh_term / (1 + 0.015 * c_bar_p * t)

    # The rotation term fixes the blue region, where hue and chroma differences interact.
    r_c = 2 * torch.sqrt(c_bar_p**7 / (c_bar_p**7 + c7_ref))
    d_theta = 30 * deg * torch.exp(-(((h_bar / deg - 275.0) / 25.0) ** 2))
    r_term = -torch.sin(2 * d_theta) * r_c * c_term * h_term

    return torch.sqrt((l_term**2 + c_term**2 + h_term**2 + r_term).clamp(min=0.0))


def delta_e_ciede2000_np(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 for channels-last Lab arrays (..., 3) -> (...), in float64 through the torch code."""
    lab1, lab2 = np.broadcast_arrays(np.asarray(lab1, dtype=np.float64), np.asarray(lab2, dtype=np.float64))
    shape = lab1.shape[:-1]
    # Any leading shape becomes a (N, 3, 1, 1) batch, so 1-D colours work as well as images.
    t1 = torch.from_numpy(np.ascontiguousarray(lab1.reshape(-1, 3)))[:, :, None, None]
    t2 = torch.from_numpy(np.ascontiguousarray(lab2.reshape(-1, 3)))[:, :, None, None]
    return delta_e_ciede2000(t1, t2).numpy().reshape(shape)
