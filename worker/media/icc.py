"""The colours an embedded RGB ICC profile gives a photo's pixels, for profiles of the matrix/TRC kind.

Archive scans and camera files often carry a wide-gamut working space: Adobe RGB (1998), ProPhoto/ROMM RGB,
Display P3. Their pixel values mean other colours than the same values in sRGB, the space the colorizer works in:
written unconverted under such a profile, the colorizer's colours would show 15-25 % more saturated in Adobe RGB
and 40-70 % in ProPhoto. :func:`rgb_space` reads such a profile's three transfer curves and primaries, so that a
photo's lightness is measured in the colours it shows (:meth:`RgbSpace.lightness`), and the colorized result is
written back in its own space, under its own profile (:meth:`RgbSpace.from_srgb`). A neutral pixel stays neutral
and keeps its exact value through the round trip, so the photo's tones are untouched (where a tabulated curve
repeats an entry, in its darkest 1 % or so, a code may move to another of the codes the profile shows alike).
Cameras set to Adobe RGB declare it in EXIF alone, with no profile: :func:`dcf_adobe_rgb_space` is that space. A PNG
may declare its encoding in gAMA and cHRM chunks alone: :func:`png_declared_space`.

Profiles this does not model exactly (colour look-up tables, Lab connection space) and sRGB profiles themselves
give None. A profile that says its colours through look-up tables (:func:`has_lookup_tables`: a scanner calibrated
on a target has one) is left to a CMM: ``worker.media.images`` converts such a photo to sRGB through LittleCMS, and a
16-bit one, which LittleCMS through Pillow cannot convert, through :func:`lookup_table_space` (lut8, lut16 and
lutAtoB tables, as LittleCMS evaluates them, to its rounding).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

from models import color

logger = logging.getLogger(__name__)

#: XYZ of the ICC profile connection space's white (D50), as profiles' colorants are adapted to it.
D50_WHITE = np.array([0.9642, 1.0, 0.8249])
#: Samples of each transfer curve (and of its inverse): at this spacing linear interpolation of a gamma curve is
#: exact to 1e-9, far under a 16-bit code.
_CURVE_SAMPLES = 65537
#: How far a profile's colorants (XYZ) and curves may be from sRGB's and the profile still count as sRGB:
#: the sRGB profiles in circulation differ from each other by less than this.
_SRGB_TOLERANCE = 2e-3
#: The share of a curve's codes that may sit at black or at white: a gamma curve tabulated in 16 bits starts with
#: under 1 % of zeros; an extended-range encoding clips a quarter of its codes.
_MAX_FLAT_END = 0.05
_LOOKUP_TABLE_TAGS = (b"A2B0", b"A2B1", b"A2B2", b"B2A0", b"B2A1", b"B2A2")
#: The tables a scan is read through: the colorimetric one (relative colorimetric intent, the colours the scanner
#: measured on its target), else the perceptual one, as a CMM falls back to it.
_READING_TABLES = (b"A2B1", b"A2B0")
#: Pixels converted through a look-up table at a time: bounds the memory of a 100-megapixel scan's conversion.
_LOOKUP_CHUNK = 1 << 18


#: Linear sRGB -> XYZ under D50, the profile connection space.
SRGB_TO_PCS = color.bradford_adaptation(np.array(color.D65_WHITE), D50_WHITE) @ np.array(color.XYZ_FROM_RGB)
_PCS_TO_SRGB = np.linalg.inv(SRGB_TO_PCS)
#: One step of a look-up-table transform: (pixels, channels) values in, (pixels, channels) out.
Stage = Callable[[np.ndarray], np.ndarray]


class RgbSpace:
    """An RGB profile's colour space: three transfer curves, and its primaries as a matrix to linear sRGB.

    Pixel codes go through tables (every 8 and 16-bit code's linear value), and linear values back to codes through
    an inverse table spaced evenly in their cube root (where the curves are smooth): both without a search, so a
    20-megapixel result converts in about 2 s on a 2-core CPU.
    """

    def __init__(self, to_srgb_linear: np.ndarray, curves: np.ndarray) -> None:
        self.to_srgb_linear = to_srgb_linear  # (3, 3) linear profile RGB -> linear sRGB; rows sum to 1
        self.curves = curves  # (3, _CURVE_SAMPLES) each channel's linear value at codes 0 .. 1, increasing
        self._code_tables = {  # the linear value of every code, by the codes' largest value
            top: np.stack([sample_curve(curve, np.arange(top + 1) / top) for curve in curves]) for top in (255, 65535)
        }
        samples = np.linspace(0.0, 1.0, _CURVE_SAMPLES)
        self._inverse = np.stack([np.interp(samples**3, curve, samples) for curve in curves])  # code at (i/N)^3

    def linear(self, codes: np.ndarray) -> np.ndarray:
        """Codes, (..., 3) uint8/uint16 or float in [0, 1] -> the profile's linear RGB (float64)."""
        if codes.dtype in (np.uint8, np.uint16):
            tables = self._code_tables[np.iinfo(codes.dtype).max]
            return np.stack([tables[i][codes[..., i]] for i in range(3)], axis=-1)
        return np.stack([sample_curve(self.curves[i], codes[..., i]) for i in range(3)], axis=-1)

    def to_srgb(self, codes: np.ndarray) -> np.ndarray:
        """Codes (see :meth:`linear`) -> sRGB in [0, 1] showing the same colours (clipped to sRGB's gamut)."""
        lin = np.clip(self.linear(codes) @ self.to_srgb_linear.T, 0.0, 1.0)
        return color.linear_to_srgb(torch.from_numpy(lin)).numpy()

    def from_srgb(self, rgb: np.ndarray) -> np.ndarray:
        """sRGB in [0, 1], (..., 3) -> this space's codes in [0, 1] showing the same colours."""
        shape = np.shape(rgb)
        # float32 keeps codes to a few thousandths of a 16-bit step, and halves the time of the power law
        lin = color.srgb_to_linear(torch.from_numpy(np.asarray(rgb, dtype=np.float32).reshape(-1, 3))).numpy()
        position = np.linalg.inv(self.to_srgb_linear) @ lin.T.astype(np.float64)  # (3, pixels), channels contiguous
        np.clip(position, 0.0, 1.0, out=position)
        np.cbrt(position, out=position)
        position *= _CURVE_SAMPLES - 1
        below = np.minimum(position.astype(np.int32), _CURVE_SAMPLES - 2)
        position -= below  # now the weight of the entry above
        codes = np.empty_like(position)
        for channel, table in enumerate(self._inverse):
            low = table.take(below[channel])
            codes[channel] = low + (table.take(below[channel] + 1) - low) * position[channel]
        return codes.T.reshape(shape)

    def lightness(self, codes: np.ndarray) -> np.ndarray:
        """Codes (see :meth:`linear`) -> Lab L of the colour shown (the colorizer's Lab, sRGB's white)."""
        luminance = self.linear(codes) @ (np.array(color.XYZ_FROM_RGB[1]) @ self.to_srgb_linear)
        return color.luminance_to_l(torch.from_numpy(luminance)).numpy()

    def gray_lightness(self, levels: np.ndarray) -> np.ndarray:
        """Gray codes (R = G = B) in [0, 1] -> L; for a table over every code of a neutral photo."""
        return self.lightness(np.repeat(np.asarray(levels, dtype=np.float64)[..., None], 3, axis=-1))


@lru_cache(maxsize=16)
def rgb_space(icc: bytes | None) -> RgbSpace | None:
    """The colour space of an RGB matrix/TRC profile; None for no profile, an sRGB one, or a kind not modelled."""
    if not icc:
        return None
    try:
        space = _parse(icc)
    except (struct.error, KeyError, ValueError, IndexError, ZeroDivisionError, np.linalg.LinAlgError) as exc:
        logger.debug("ICC profile not read as matrix/TRC (%s: %s); its pixels are taken as sRGB",
                     type(exc).__name__, exc)
        return None
    if space is None or _is_srgb(space):
        return None
    return space


def _parse(icc: bytes) -> RgbSpace | None:
    if len(icc) < 132 or icc[36:40] != b"acsp" or icc[16:20] != b"RGB " or icc[20:24] != b"XYZ ":
        return None
    tags = _tags(icc)
    if any(name in tags for name in _LOOKUP_TABLE_TAGS):
        return None  # a CMM colours through the table, which this does not model
    colorants = np.array([_xyz(tags[name]) for name in (b"rXYZ", b"gXYZ", b"bXYZ")]).T  # columns: R, G, B
    curves = np.stack([_curve(tags[name]) for name in (b"rTRC", b"gTRC", b"bTRC")])
    if ((curves <= 0.0).mean(axis=1) > _MAX_FLAT_END).any() or ((curves >= 1.0).mean(axis=1) > _MAX_FLAT_END).any():
        return None  # an extended-range encoding (e-sRGB, scRGB): black and white are not its codes' ends
    return _matrix_space(colorants, curves)


def _matrix_space(colorants: np.ndarray, curves: np.ndarray) -> RgbSpace:
    """The space of colorants (columns R, G, B: XYZ under D50) and sampled curves (see _curve)."""
    to_srgb = np.linalg.inv(SRGB_TO_PCS) @ colorants
    # The colorants' s15Fixed16 rounding leaves white a few 1e-5 off; white must map to white exactly, or every
    # neutral pixel would gain a tint of several 16-bit codes.
    to_srgb = to_srgb / to_srgb.sum(axis=1, keepdims=True)
    return RgbSpace(to_srgb_linear=to_srgb, curves=curves)


def has_lookup_tables(icc: bytes | None) -> bool:
    """Whether an RGB profile gives its colours through look-up tables (A2B0 and kin), which only a CMM applies."""
    if not icc or len(icc) < 132 or icc[36:40] != b"acsp" or icc[16:20] != b"RGB ":
        return False
    try:
        return any(name in _tags(icc) for name in _LOOKUP_TABLE_TAGS)
    except (struct.error, ValueError, IndexError):
        return False


class LookupTableSpace:
    """An RGB profile's look-up-table transform into the profile connection space (PCS), then to sRGB: curves per
    channel, a grid of colours interpolated tetrahedrally (as LittleCMS does), curves again, and for lutAtoB a matrix
    and more curves between (ICC.1:2010 10.10-10.12). ``stages`` are functions of (pixels, channels) arrays in [0, 1],
    the last giving the connection space's encoded values, which ``_pcs_xyz`` reads as XYZ (D50)."""

    def __init__(self, stages: list[Stage], pcs_is_lab: bool, lab_scale: float) -> None:
        self.stages = stages
        self.pcs_is_lab = pcs_is_lab
        self.lab_scale = lab_scale  # lut16's legacy Lab encoding puts 100 L at 0xFF00, not 0xFFFF

    def to_srgb(self, codes: np.ndarray) -> np.ndarray:
        """Codes in [0, 1], (..., 3) -> sRGB in [0, 1] showing the colours the tables give them (clipped to sRGB's
        gamut, with no rendering of its own: relative colorimetric)."""
        flat = np.asarray(codes, dtype=np.float64).reshape(-1, 3)
        out = np.empty_like(flat)
        for start in range(0, len(flat), _LOOKUP_CHUNK):
            values = flat[start:start + _LOOKUP_CHUNK]
            for stage in self.stages:
                values = stage(values)
            linear = np.clip(self._pcs_xyz(values) @ _PCS_TO_SRGB.T, 0.0, 1.0)
            out[start:start + _LOOKUP_CHUNK] = color.linear_to_srgb(torch.from_numpy(linear)).numpy()
        return out.reshape(np.shape(codes))

    def _pcs_xyz(self, values: np.ndarray) -> np.ndarray:
        if not self.pcs_is_lab:
            return values * (65535.0 / 32768.0)  # u1Fixed15: 1.0 at 0x8000
        scaled = values * self.lab_scale
        L, a, b = scaled[:, 0] * 100.0, scaled[:, 1] * 255.0 - 128.0, scaled[:, 2] * 255.0 - 128.0
        fy = (L + 16.0) / 116.0
        f = np.stack([fy + a / 500.0, fy, fy - b / 200.0], axis=-1)
        xyz = np.where(f > 6.0 / 29.0, f**3, (f - 4.0 / 29.0) * (3.0 * (6.0 / 29.0) ** 2))
        return xyz * D50_WHITE


@lru_cache(maxsize=16)
def lookup_table_space(icc: bytes) -> LookupTableSpace:
    """The transform of an RGB profile's colorimetric (else perceptual) look-up table (see ``has_lookup_tables``);
    ValueError, saying why, for a table of a kind or shape not read here, or a damaged one."""
    try:
        tags = _tags(icc)
        table = next((tags[name] for name in _READING_TABLES if name in tags), None)
        if table is None:
            raise ValueError("no A2B0 or A2B1 table (device to PCS)")
        pcs = icc[20:24]
        if pcs not in (b"XYZ ", b"Lab "):
            raise ValueError(f"connection space {pcs!r}")
        kind = table[:4]
        if kind in (b"mft1", b"mft2"):
            stages = _lut_stages(table)
            lab_scale = 65535.0 / 65280.0 if kind == b"mft2" else 1.0
        elif kind == b"mAB ":
            stages, lab_scale = _lut_a_to_b_stages(table), 1.0
        else:
            raise ValueError(f"table of type {kind!r}")
    except (struct.error, KeyError, IndexError) as exc:
        raise ValueError(f"a damaged table: {type(exc).__name__}: {exc}") from None
    return LookupTableSpace(stages, pcs == b"Lab ", lab_scale)


def _lut_stages(table: bytes) -> list[Stage]:
    """lut8Type (mft1) and lut16Type (mft2): input curves, grid, output curves (the matrix applies to XYZ input
    only)."""
    inputs, outputs, points = table[8], table[9], table[10]
    if (inputs, outputs) != (3, 3) or points < 2:
        raise ValueError(f"a table of {inputs} inputs, {outputs} outputs and {points} grid points")
    if table[:4] == b"mft1":
        dtype, top, offset, in_entries, out_entries = np.uint8, 255.0, 48, 256, 256
    else:
        dtype, top, offset = ">u2", 65535.0, 52
        in_entries, out_entries = struct.unpack(">HH", table[48:52])
    size = np.dtype(dtype).itemsize
    sizes = (3 * in_entries, points**3 * 3, 3 * out_entries)
    arrays = []
    for count in sizes:
        arrays.append(np.frombuffer(table, dtype=dtype, count=count, offset=offset) / top)
        offset += count * size
    input_curves, grid, output_curves = arrays
    return [_tabulated_curves(input_curves.reshape(3, in_entries)), _grid((points,) * 3, grid.reshape(-1, 3)),
            _tabulated_curves(output_curves.reshape(3, out_entries))]


def _lut_a_to_b_stages(table: bytes) -> list[Stage]:
    """lutAtoBType (mAB): A curves, grid, M curves, matrix, B curves, each where the table has it."""
    if (table[8], table[9]) != (3, 3):
        raise ValueError(f"a table of {table[8]} inputs and {table[9]} outputs")
    b_at, matrix_at, m_at, grid_at, a_at = struct.unpack(">5I", table[12:32])
    stages = []
    if a_at:
        stages.append(_curve_stage(table, a_at))
    if grid_at:
        points = tuple(table[grid_at:grid_at + 3])
        precision = table[grid_at + 16]
        if min(points) < 2 or precision not in (1, 2):
            raise ValueError(f"a grid of {points} points at {precision}-byte precision")
        dtype, top = (np.uint8, 255.0) if precision == 1 else (">u2", 65535.0)
        values = np.frombuffer(table, dtype=dtype, count=int(np.prod(points)) * 3, offset=grid_at + 20) / top
        stages.append(_grid(points, values.reshape(-1, 3)))
    if m_at:
        stages.append(_curve_stage(table, m_at))
    if matrix_at:
        numbers = np.array(struct.unpack(">12i", table[matrix_at:matrix_at + 48])) / 65536.0
        matrix, offset = numbers[:9].reshape(3, 3), numbers[9:]
        stages.append(lambda values: values @ matrix.T + offset)
    if b_at:
        stages.append(_curve_stage(table, b_at))
    return stages


def _curve_stage(table: bytes, at: int) -> Stage:
    """Three curves ('curv' or 'para') one after another from ``at``, each padded to 4 bytes."""
    curves = []
    for _ in range(3):
        data = table[at:]
        if data[:4] == b"curv":
            length = 12 + 2 * struct.unpack(">I", data[8:12])[0]
        elif data[:4] == b"para":
            length = 12 + 4 * {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}[struct.unpack(">H", data[8:10])[0]]
        else:
            raise ValueError(f"curve of type {data[:4]!r}")
        curves.append(_curve_values(data[:length]))
        at += length + (-length % 4)
    return _tabulated_curves(np.stack(curves))


def _tabulated_curves(tables: np.ndarray) -> Stage:
    """Each channel through its own table of evenly spaced entries, linearly interpolated (found by position, not by
    a search: the entries are evenly spaced)."""
    last = tables.shape[1] - 1
    rises = np.diff(tables, axis=1)

    def stage(values: np.ndarray) -> np.ndarray:
        position = np.clip(values, 0.0, 1.0) * last
        below = np.minimum(position.astype(np.int64), last - 1)
        channels = np.arange(3)
        return tables[channels, below] + rises[channels, below] * (position - below)

    return stage


def _grid(points: tuple[int, ...], entries: np.ndarray) -> Stage:
    """A 3-input grid of colours (the first input varying slowest), interpolated tetrahedrally: each cell cut into
    six tetrahedra along its diagonal. The one a pixel falls in is the path from the cell's first corner to its last
    that steps along the inputs in the order of the pixel's fractions, largest first; its four corners are weighed
    by the differences of those fractions."""
    strides = np.array([points[1] * points[2], points[2], 1])
    top = np.array(points) - 1

    def stage(values: np.ndarray) -> np.ndarray:
        position = np.clip(values, 0.0, 1.0) * top
        cell = np.minimum(position.astype(np.int64), top - 1)
        fractions = position - cell
        order = np.argsort(-fractions, axis=1)
        first, second, third = np.take_along_axis(fractions, order, axis=1).T
        steps = strides[order]
        corner = cell @ strides
        result = entries[corner] * (1.0 - first)[:, None]
        for weight, step in ((first - second, steps[:, 0]), (second - third, steps[:, 1]), (third, steps[:, 2])):
            corner = corner + step
            result += entries[corner] * weight[:, None]
        return result

    return stage


@lru_cache(maxsize=16)
def gray_luminance(icc: bytes | None) -> np.ndarray | None:
    """A gray profile's tone curve (kTRC), the luminance of each code, sampled at _CURVE_SAMPLES codes in [0, 1];
    None where the profile is not a gray one of that kind. A gray profile's colour is its white times that curve,
    so lightness follows from it exactly, at any bit depth (LittleCMS through Pillow converts 8-bit data only)."""
    if not icc or len(icc) < 132 or icc[36:40] != b"acsp" or icc[16:20] != b"GRAY" or icc[20:24] != b"XYZ ":
        return None
    try:
        tags = _tags(icc)
        if any(name in tags for name in _LOOKUP_TABLE_TAGS):
            return None
        return _curve(tags[b"kTRC"])
    except (struct.error, KeyError, ValueError, IndexError, ZeroDivisionError) as exc:
        logger.debug("gray ICC profile not read as a tone curve (%s: %s)", type(exc).__name__, exc)
        return None


def sample_curve(curve: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """A curve sampled as _curve samples it, at ``codes`` in [0, 1]."""
    return np.interp(codes, np.linspace(0.0, 1.0, _CURVE_SAMPLES), curve)


def _tags(icc: bytes) -> dict[bytes, bytes]:
    """A profile's tags by signature."""
    count = struct.unpack(">I", icc[128:132])[0]
    tags = {}
    for i in range(count):
        signature, offset, size = struct.unpack(">4sII", icc[132 + 12 * i : 144 + 12 * i])
        tags[signature] = icc[offset : offset + size]
    return tags


@lru_cache(maxsize=1)
def dcf_adobe_rgb_space() -> RgbSpace:
    """Adobe RGB (1998), which a camera's EXIF declares with no ICC profile (DCF's option file, index R03): its
    D50 colorants and its gamma of 563/256, as Adobe's profile states them."""
    colorants = np.array([[0.60974, 0.20528, 0.14919], [0.31111, 0.62567, 0.06322], [0.01947, 0.06087, 0.74457]])
    curve = _increasing(np.linspace(0.0, 1.0, _CURVE_SAMPLES) ** (563 / 256))
    return _matrix_space(colorants, np.stack([curve] * 3))


#: libpng's PNG_GAMMA_THRESHOLD: a gAMA within 5 % of sRGB's 1/2.2 is taken as sRGB's encoding.
_PNG_GAMMA_THRESHOLD = 0.05


@lru_cache(maxsize=16)
def png_declared_space(gamma: float | None, chromaticity: tuple[float, ...] | None) -> RgbSpace | None:
    """The encoding a PNG with neither an sRGB nor an iCCP chunk declares in its gAMA chunk (``gamma``: samples are
    light to that power) and cHRM chunk (Pillow's order: white, red, green, blue as xy), as browsers show it: a
    scientific scan stored linear (gAMA 1.0) shows its mid-gray code 128 at half the light of white, not a fifth.
    None where that is sRGB: no gAMA, or one within libpng's threshold of 1/2.2 and no other primaries."""
    if not gamma or gamma <= 0:
        return None
    primaries = None
    if chromaticity is not None and len(chromaticity) == 8:
        primaries = (*chromaticity[2:], *chromaticity[:2])
        if color.same_primaries(primaries, color.BT709_CHROMATICITIES):
            primaries = None
    if primaries is None and abs(gamma * 2.2 - 1.0) < _PNG_GAMMA_THRESHOLD:
        return None
    to_srgb = np.eye(3)
    if primaries is not None:
        try:
            with np.errstate(divide="raise", invalid="raise", over="raise"):  # a cHRM of zeros: no primaries
                to_srgb = color.bt709_from_primaries(primaries)
        except (np.linalg.LinAlgError, FloatingPointError) as exc:
            logger.debug("cHRM chromaticities %s not usable (%s); taken as sRGB's", chromaticity, exc)
    curve = _increasing(np.linspace(0.0, 1.0, _CURVE_SAMPLES) ** (1.0 / gamma))
    return RgbSpace(to_srgb_linear=to_srgb, curves=np.stack([curve] * 3))


def _xyz(data: bytes) -> tuple[float, float, float]:
    if data[:4] != b"XYZ ":
        raise ValueError(f"colorant of type {data[:4]!r}")
    return tuple(v / 65536.0 for v in struct.unpack(">3i", data[8:20]))  # type: ignore[return-value]


def _curve(data: bytes) -> np.ndarray:
    """A transfer curve ('curv' or 'para') sampled at _CURVE_SAMPLES codes in [0, 1], made increasing."""
    return _increasing(_curve_values(data))


def _curve_values(data: bytes) -> np.ndarray:
    """A curve ('curv' or 'para') sampled at _CURVE_SAMPLES codes in [0, 1], its values clipped to [0, 1]."""
    x = np.linspace(0.0, 1.0, _CURVE_SAMPLES)
    kind = data[:4]
    if kind == b"curv":
        count = struct.unpack(">I", data[8:12])[0]
        if count == 0:
            y = x
        elif count == 1:
            y = x ** (struct.unpack(">H", data[12:14])[0] / 256.0)
        else:
            table = np.frombuffer(data[12 : 12 + 2 * count], dtype=">u2") / 65535.0
            y = np.interp(x, np.linspace(0.0, 1.0, count), table)
    elif kind == b"para":
        function = struct.unpack(">H", data[8:10])[0]
        n = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}[function]
        y = _parametric(function, [v / 65536.0 for v in struct.unpack(f">{n}i", data[12 : 12 + 4 * n])], x)
    else:
        raise ValueError(f"transfer curve of type {kind!r}")
    return np.clip(y, 0.0, 1.0)


def _increasing(curve: np.ndarray) -> np.ndarray:
    """A sampled curve made strictly increasing, so that it can be inverted: a table's runs of equal entries (its dark
    end, where codes round to the same 16-bit value) rise by a hair, which keeps black at code 0."""
    return np.maximum.accumulate(curve) + np.linspace(0.0, 1e-9, len(curve))


def _parametric(function: int, p: list[float], x: np.ndarray) -> np.ndarray:
    """ICC parametricCurveType functions 0-4 (ICC.1:2010, table 65)."""
    g = p[0]
    if function == 0:
        return x**g
    a, b = p[1], p[2]
    above = np.maximum(a * x + b, 0.0) ** g
    if function == 1:
        return np.where(x >= -b / a, above, 0.0)
    if function == 2:
        return np.where(x >= -b / a, above + p[3], p[3])
    c, d = p[3], p[4]
    e, f = (p[5], p[6]) if function == 4 else (0.0, 0.0)
    return np.where(x >= d, above + e, c * x + f)


def _is_srgb(space: RgbSpace) -> bool:
    x = np.linspace(0.0, 1.0, _CURVE_SAMPLES)
    srgb_curve = color.srgb_to_linear(torch.from_numpy(x)).numpy()
    return bool(np.abs(space.to_srgb_linear - np.eye(3)).max() < _SRGB_TOLERANCE
                and np.abs(space.curves - srgb_curve).max() < _SRGB_TOLERANCE)
