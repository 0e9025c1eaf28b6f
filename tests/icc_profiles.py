"""ICC profiles built byte by byte, as archives' scans carry them (Adobe RGB, ProPhoto), so that no test depends on
profiles installed on the machine. LittleCMS (Pillow's ImageCms) reads them, which the tests use as the reference.

Import it in tests as ``from tests.icc_profiles import ...``.
"""

from __future__ import annotations

import struct

import numpy as np

# Colorants (columns R, G, B) adapted to D50, as the published profiles state them.
PROPHOTO = np.array([[0.7977, 0.1352, 0.0313], [0.2880, 0.7119, 0.0001], [0.0, 0.0, 0.8249]])
ADOBE_RGB = np.array([[0.6097, 0.2053, 0.1492], [0.3111, 0.6257, 0.0632], [0.0195, 0.0609, 0.7446]])
SRGB = np.array([[0.4361, 0.3851, 0.1431], [0.2225, 0.7169, 0.0606], [0.0139, 0.0971, 0.7141]])


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(values) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in values)


def gamma_curve(gamma: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"


def table_curve(gamma: float, entries: int = 1024) -> bytes:
    table = np.round(np.linspace(0, 1, entries) ** gamma * 65535).astype(">u2")
    return b"curv\0\0\0\0" + struct.pack(">I", entries) + table.tobytes()


def srgb_parametric_curve() -> bytes:
    params = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
    return b"para\0\0\0\0" + struct.pack(">H", 3) + b"\0\0" + b"".join(_s15(p) for p in params)


def matrix_trc_profile(colorants: np.ndarray, curve: bytes, extra_tags: dict[bytes, bytes] | None = None) -> bytes:
    """An RGB display profile: three colorants (``colorants``' columns) and one curve for all channels."""
    return _profile(b"RGB ", {
        b"rXYZ": _xyz(colorants[:, 0]), b"gXYZ": _xyz(colorants[:, 1]), b"bXYZ": _xyz(colorants[:, 2]),
        b"rTRC": curve, b"gTRC": curve, b"bTRC": curve, **(extra_tags or {}),
    })


def gray_profile(gamma: float) -> bytes:
    """A gray display profile with a pure gamma tone curve."""
    return _profile(b"GRAY", {b"kTRC": gamma_curve(gamma), b"cprt": b"text\0\0\0\0public domain\0"})


def _profile(colour_space: bytes, tags: dict[bytes, bytes], connection_space: bytes = b"XYZ ",
             version: int = 2) -> bytes:
    """An ICC v2.1 (or v4.0) display profile: a description and the D50 white point, then ``tags``."""
    description = b"a test profile\0"
    tags = {
        b"desc": b"desc\0\0\0\0" + struct.pack(">I", len(description)) + description + b"\0" * 8 + b"\0" * 70,
        b"wtpt": _xyz((0.9642, 1.0, 0.8249)), **tags,
    }
    table_end = 128 + 4 + 12 * len(tags)
    entries, body = b"", b""
    for signature, data in tags.items():
        entries += struct.pack(">4sII", signature, table_end + len(body), len(data))
        body += data + b"\0" * (-len(data) % 4)
    header = bytearray(128)
    header[4:8] = b"lcms"
    header[8:12] = bytes([2, 0x10, 0, 0]) if version == 2 else bytes([4, 0, 0, 0])
    header[12:24] = b"mntr" + colour_space + connection_space
    header[36:40] = b"acsp"
    header[68:80] = _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    profile = bytes(header) + struct.pack(">I", len(tags)) + entries + body
    return struct.pack(">I", len(profile)) + profile[4:]


def lookup_table_profile(colorants: np.ndarray, gamma: float) -> bytes:
    """An RGB input profile that says its colours only through a lookup table (A2B0, lut16Type), as profiles made by
    calibrating a scanner on a target do: here the table of the matrix/TRC space of ``colorants`` and a pure
    ``gamma``, exactly (each channel's curve in its input tables, then a 2-point grid of the colorants' sums, whose
    trilinear interpolation of a linear map is the map itself)."""
    entries = 256
    curve = np.round(np.linspace(0, 1, entries) ** gamma * 65535).astype(">u2").tobytes()
    corners = [colorants @ np.array([r, g, b]) for r in (0, 1) for g in (0, 1) for b in (0, 1)]
    # lut16 encodes PCS XYZ with 1.0 at 0x8000.
    grid = np.round(np.clip(np.array(corners) * 32768, 0, 65535)).astype(">u2").tobytes()
    identity = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    table = (b"mft2\0\0\0\0" + bytes([3, 3, 2, 0]) + identity + struct.pack(">HH", entries, 2) + curve * 3 + grid
             + struct.pack(">HH", 0, 65535) * 3)
    profile = _profile(b"RGB ", {b"A2B0": table})
    return profile[:12] + b"scnr" + profile[16:]  # an input (scanner) profile: a device class with no matrix tags


def twisted_lookup_table_profile(kind: bytes, connection_space: bytes, points: int = 9) -> bytes:
    """A scanner's profile of look-up tables that no matrix could say: ProPhoto's colorants and a gamma of 1.8 with
    its hues twisted by the pixel's own values, tabulated on a grid of ``points`` per input, as a lut8 (``mft1``),
    lut16 (``mft2``) or lutAtoB (``mAB ``, in a v4 profile) table into PCS XYZ or Lab (``connection_space``)."""
    axis = np.linspace(0, 1, points)
    rgb = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)  # red varies slowest
    twisted = np.clip(rgb + 0.08 * np.sin(np.pi * rgb[:, [1, 2, 0]]) * (1 - rgb), 0, 1)
    xyz = twisted @ PROPHOTO.T  # of linear values: the gamma goes in the input curves
    if connection_space == b"XYZ ":
        encoded = xyz * 32768 / 65535  # u1Fixed15, as fractions of the table's full scale
    else:
        t = xyz / np.array([0.9642, 1.0, 0.8249])
        f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16 / 116)
        lab = np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=-1)
        encoded = np.stack([lab[:, 0] / 100, (lab[:, 1] + 128) / 255, (lab[:, 2] + 128) / 255], axis=-1)
        if kind == b"mft2":
            encoded = encoded * 65280 / 65535  # lut16's legacy Lab: 100 L at 0xFF00
    encoded = np.clip(encoded, 0, 1)
    identity_matrix = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    if kind == b"mft1":
        curve = np.round(np.linspace(0, 1, 256) ** 1.8 * 255).astype(np.uint8).tobytes()
        grid = np.round(encoded * 255).astype(np.uint8).tobytes()
        table = (b"mft1\0\0\0\0" + bytes([3, 3, points, 0]) + identity_matrix + curve * 3 + grid
                 + np.arange(256, dtype=np.uint8).tobytes() * 3)
    elif kind == b"mft2":
        curve = np.round(np.linspace(0, 1, 1024) ** 1.8 * 65535).astype(">u2").tobytes()
        grid = np.round(encoded * 65535).astype(">u2").tobytes()
        table = (b"mft2\0\0\0\0" + bytes([3, 3, points, 0]) + identity_matrix + struct.pack(">HH", 1024, 2)
                 + curve * 3 + grid + struct.pack(">HH", 0, 65535) * 3)
    else:  # lutAtoB: A curves (parametric gamma), the grid, M curves and a matrix (identity), B curves (identity)
        a_curves = (b"para\0\0\0\0" + struct.pack(">H", 0) + b"\0\0" + _s15(1.8)) * 3
        grid = (bytes([points] * 3 + [0] * 13) + bytes([2, 0, 0, 0])
                + np.round(encoded * 65535).astype(">u2").tobytes())
        grid += b"\0" * (-len(grid) % 4)
        identity_curves = b"curv\0\0\0\0" + struct.pack(">I", 0)
        matrix = identity_matrix + _s15(0) * 3
        a_at = 32
        grid_at = a_at + len(a_curves)
        m_at = grid_at + len(grid)
        matrix_at = m_at + len(identity_curves) * 3
        b_at = matrix_at + len(matrix)
        table = (b"mAB \0\0\0\0" + bytes([3, 3, 0, 0]) + struct.pack(">5I", b_at, matrix_at, m_at, grid_at, a_at)
                 + a_curves + grid + identity_curves * 3 + matrix + identity_curves * 3)
    profile = _profile(b"RGB ", {b"A2B0": table}, connection_space, version=4 if kind == b"mAB " else 2)
    return profile[:12] + b"scnr" + profile[16:]


def with_colorimetric_table(perceptual: bytes, colorimetric: bytes) -> bytes:
    """A scanner's profile with two tables: ``perceptual``'s A2B0, and ``colorimetric``'s A2B0 as its A2B1."""
    def table(profile: bytes) -> bytes:
        count = struct.unpack(">I", profile[128:132])[0]
        for i in range(count):
            signature, offset, size = struct.unpack(">4sII", profile[132 + 12 * i: 144 + 12 * i])
            if signature == b"A2B0":
                return profile[offset: offset + size]
        raise ValueError("no A2B0 table")

    profile = _profile(b"RGB ", {b"A2B0": table(perceptual), b"A2B1": table(colorimetric)}, perceptual[20:24])
    return profile[:12] + b"scnr" + profile[16:]
