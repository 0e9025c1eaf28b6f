"""TIFF copies are coded as their sources were (worker.media.tiff): tiles, compression, a pyramid's levels.

Sources are written by libtiff's own tools (tiffcp: tiles, LZW, PackBits, JPEG, as archives' scanning and image
server workflows make them) and tifffile; copies are read back by libtiff (through OpenCV and Pillow) and tifffile.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from worker.media import tiff
from worker.media.images import read_pages, read_photo, write_photo

LABEL = "effnet_unet@0123456789ab"
H, W = 200, 280  # several 64x48 tiles, the edge ones partly outside the picture


def gray_scan(height: int = H, width: int = W) -> np.ndarray:
    """A gray picture with detail at every scale (JPEG sizes depend on it): a ramp, rings and noise."""
    y, x = np.mgrid[0:height, 0:width]
    rings = 40 * np.sin(np.hypot(y - height / 2, x - width / 3) / 3.0)
    noise = np.random.default_rng(7).normal(0, 6, (height, width))
    return np.clip(70 + 100 * x / width + rings + noise, 0, 255).round().astype(np.uint8)


def tinted(gray: np.ndarray) -> np.ndarray:
    """A colour result for ``gray`` (float sRGB): warm where light, blue where dark, as a colorizer's might be."""
    g = gray.astype(np.float64) / 255
    return np.clip(np.stack([g * 1.1, g, 0.25 + g * 0.6], axis=-1), 0, 1)


def tiffcp(source: Path, target: Path, *options: str) -> Path:
    subprocess.run(["tiffcp", *options, str(source), str(target)], check=True, capture_output=True)
    return target


def exiftool_tags(path: Path, *names: str) -> dict:
    return json.loads(subprocess.run(["exiftool", "-json", "-a", "-G1", *names, str(path)], check=True,
                                     capture_output=True, text=True).stdout)[0]


def colorize(source: Path, out: Path) -> np.ndarray:
    """Write the copy of ``source`` at ``out`` as Tinct does; return the 8-bit pixels of the colour result it was
    given, as a lossless PNG copy holds them."""
    photo = read_photo(source)
    rgb = tinted(np.asarray(Image.open(source).convert("L")))
    write_photo(out, rgb, photo, LABEL)
    write_photo(out.with_suffix(".png"), rgb, photo, LABEL)
    return np.asarray(Image.open(out.with_suffix(".png")).convert("RGB"))


@pytest.mark.parametrize("compression", ["none", "lzw", "packbits", "zip"])
def test_a_tiled_tiffs_copy_keeps_its_tiles_and_lossless_compression(tmp_path: Path, compression: str) -> None:
    """An image server reads a large TIFF tile by tile: its copy had been written in strips, Adobe deflate, which
    the server reads whole for every view and a baseline ingest profile refuses. Now the copy has the source's tile
    size and compression (PackBits had become deflate too), and its pixels are the colour result exactly."""
    strips = tmp_path / "strips.tif"
    Image.fromarray(gray_scan()).save(strips)
    source = tiffcp(strips, tmp_path / "tiled.tif", "-t", "-w", "64", "-l", "48", "-c", compression)
    out = tmp_path / "copy.tif"
    expected = colorize(source, out)
    page = tifffile.TiffFile(out).pages[0]
    assert (page.tilewidth, page.tilelength) == (64, 48)
    assert page.compression == {"none": 1, "lzw": 5, "packbits": 32773, "zip": 8}[compression]
    libtiff = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert np.array_equal(libtiff, expected)
    assert np.array_equal(np.asarray(Image.open(out)), expected)


def test_a_turned_tiled_tiffs_copy_has_its_tiles_turned(tmp_path: Path) -> None:
    """The copy is upright: a source stored on its side (orientation 6) has tall tiles where the copy's are wide."""
    source = tmp_path / "sideways.tif"
    tifffile.imwrite(source, np.ascontiguousarray(gray_scan().T[:, ::-1]), tile=(64, 32),
                     extratags=[(274, 3, 1, 6, False)])  # stored 32 wide, 64 tall
    out = tmp_path / "copy.tif"
    colorize(source, out)
    page = tifffile.TiffFile(out).pages[0]
    assert page.shape[:2] == (H, W) and (page.tilewidth, page.tilelength) == (64, 32)


@pytest.mark.parametrize("layout", ["strips", "tiles"])
def test_a_jpeg_compressed_tiffs_copy_is_jpeg_at_its_sources_quantization(tmp_path: Path, layout: str) -> None:
    """A JPEG-compressed TIFF (as image servers' pyramids and some scanners' access copies are) had a lossless
    deflate copy three to four times its size. The copy is JPEG in Y'CbCr, coded with the source's lightness table
    (libjpeg's at quality 60 here) and decoding to the colour result."""
    strips = tmp_path / "strips.tif"
    Image.fromarray(gray_scan()).save(strips)
    tiles = ["-t", "-w", "64", "-l", "48"] if layout == "tiles" else ["-r", "32"]
    source = tiffcp(strips, tmp_path / "jpeg.tif", *tiles, "-c", "jpeg:60")
    out = tmp_path / "copy.tif"
    expected = colorize(source, out)
    copy = tifffile.TiffFile(out)
    page = copy.pages[0]
    assert page.compression == 7 and page.photometric == 6  # JPEG, Y'CbCr
    assert page.is_tiled == (layout == "tiles")
    with open(out, "rb") as f:
        f.seek(page.dataoffsets[0])
        first = Image.open(io.BytesIO(f.read(page.databytecounts[0])))
        luma_table = list(first.quantization[0])
    libjpeg = io.BytesIO()
    Image.fromarray(gray_scan()).save(libjpeg, "JPEG", quality=60)
    assert luma_table == list(Image.open(libjpeg).quantization[0])
    read_back = cv2.imread(str(out))[..., ::-1].astype(float)  # libtiff and libjpeg: the copy decodes as RGB
    assert np.abs(read_back - expected).mean() < 4


@pytest.mark.parametrize("big", [False, True], ids=["tiff", "bigtiff"])
def test_a_pyramids_copy_has_every_level_in_colour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   big: bool) -> None:
    """An image server zooms through a pyramidal TIFF's levels (the picture at half, a quarter... of its size,
    each a page flagged reduced-resolution). The copy had been the first page alone, in strips: the server had no
    levels to serve. Now every level is there, tiled and JPEG as the source's, made from the colour result; the
    metadata stays on the first page. (A BigTIFF links its pages with wider offsets.)"""
    if big:
        monkeypatch.setattr(tiff, "BIGTIFF_FROM", 0)
    levels = tmp_path / "levels.tif"
    full = gray_scan(256, 384)
    with tifffile.TiffWriter(levels) as writer:
        writer.write(full, tile=(64, 64), resolution=(300, 300), resolutionunit="INCH",
                     extratags=[(315, 2, 0, "A. Photographer", False)])
        for factor in (2, 4, 8):
            writer.write(cv2.resize(full, (384 // factor, 256 // factor), interpolation=cv2.INTER_AREA),
                         tile=(64, 64), subfiletype=1)
    source = tiffcp(levels, tmp_path / "pyramid.tif", "-c", "jpeg:80")
    out = tmp_path / "copy.tif"
    expected = colorize(source, out)
    pages = tifffile.TiffFile(out).pages
    assert [p.shape[:2] for p in pages] == [(256, 384), (128, 192), (64, 96), (32, 48)]
    assert [p.tags["NewSubfileType"].value if "NewSubfileType" in p.tags else 0 for p in pages] == [0, 1, 1, 1]
    assert all(p.compression == 7 and (p.tilewidth, p.tilelength) == (64, 64) for p in pages)
    assert [p.tags["XResolution"].value for p in pages] == [(300, 1), (150, 1), (75, 1), (75, 2)]
    ok, read_back = cv2.imreadmulti(str(out))  # libtiff: every page, each decoded as RGB
    assert ok and len(read_back) == 4
    for level, picture in enumerate(read_back):  # each is the colour result averaged down, give or take JPEG's loss
        factor = 2 ** level
        averaged = expected.astype(float).reshape(256 // factor, factor, 384 // factor, factor, 3).mean(axis=(1, 3))
        difference = picture[..., ::-1] - averaged
        assert np.abs(difference.mean(axis=(0, 1))).max() < 1 and np.abs(difference).mean() < 6, level
        assert np.corrcoef(picture.mean(axis=2).ravel(), averaged.mean(axis=2).ravel())[0, 1] > 0.95, level
    assert exiftool_tags(out, "-Artist")["IFD0:Artist"] == "A. Photographer"
    assert "IFD1:Artist" not in exiftool_tags(out, "-Artist")
    assert read_photo(out).size == (384, 256)  # the copy is a picture Tinct reads again, as the source was


def test_pyramids_whose_levels_are_flagged_as_pages_and_scanners_previews_are_kept(tmp_path: Path) -> None:
    """ImageMagick 6 flags a pyramid's levels as pages, not as reduced-resolution: pages halving from the first
    are taken for a pyramid (they had been refused as a multi-page document), and the copy's levels are flagged
    as they should be. A scanner's preview page (flagged, of any size) gets a colour page of its size. Pages that
    are neither (a second picture) make a document, whose every page is coloured (``tests/test_documents.py``)."""
    full = gray_scan()
    magick = tmp_path / "magick.tif"
    with tifffile.TiffWriter(magick) as writer:
        for factor in (1, 2, 4):
            writer.write(full[::factor, ::factor], subfiletype=2)
    out = tmp_path / "copy.tif"
    colorize(magick, out)
    pages = tifffile.TiffFile(out).pages
    assert [p.shape[:2] for p in pages] == [(200, 280), (100, 140), (50, 70)]
    assert [p.tags["NewSubfileType"].value for p in pages[1:]] == [1, 1]

    preview = tmp_path / "scan-with-preview.tif"
    with tifffile.TiffWriter(preview) as writer:
        writer.write(full, compression="zlib")
        writer.write(full[::7, ::7], subfiletype=1)
    colorize(preview, out)
    pages = tifffile.TiffFile(out).pages
    assert [p.shape for p in pages] == [(200, 280, 3), (29, 40, 3)]
    assert np.ptp(pages[1].asarray().astype(int)[..., 2] - pages[1].asarray()[..., 0]) > 0  # in colour

    two_pictures = tmp_path / "two-pictures.tif"
    with tifffile.TiffWriter(two_pictures) as writer:
        writer.write(full)
        writer.write(full[:120, :150])  # not half of it
    assert [page.size for page in read_pages(two_pictures)] == [(280, 200), (150, 120)]


def test_a_transparent_copy_of_a_jpeg_tiff_is_deflate(tmp_path: Path) -> None:
    """JPEG codes 8-bit Y'CbCr only: where the copy has alpha, it is lossless deflate instead, alpha kept."""
    strips = tmp_path / "strips.tif"
    Image.fromarray(gray_scan()).save(strips)
    source = tiffcp(strips, tmp_path / "jpeg.tif", "-r", "32", "-c", "jpeg:70")
    photo = read_photo(source)
    alpha = np.full((H, W), 200, np.uint8)
    out = tmp_path / "copy.tif"
    write_photo(out, tinted(gray_scan()), photo, LABEL, alpha=alpha)
    page = tifffile.TiffFile(out).pages[0]
    assert page.compression == 8 and page.shape == (H, W, 4)
    assert np.array_equal(page.asarray()[..., 3], alpha)


def test_a_pyramid_kept_in_sub_images_is_said_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """libvips (--subifd) and OME-TIFF keep a pyramid's levels as sub-images of the first page (SubIFDs), which
    the copy does not have: it says so, naming the copy, where it had lost them without a word."""
    source = tmp_path / "sub-images.tif"
    full = gray_scan(256, 384)
    with tifffile.TiffWriter(source) as writer:
        writer.write(full, tile=(64, 64), subifds=2)
        writer.write(full[::2, ::2], tile=(64, 64), subfiletype=1)
        writer.write(full[::4, ::4], tile=(64, 64), subfiletype=1)
    out = tmp_path / "copy.tif"
    with caplog.at_level("WARNING", logger="worker.media.images"):
        colorize(source, out)
    assert any(f"{out}: its source's pyramid of 2 sub-images (SubIFDs" in r.getMessage() for r in caplog.records)
    assert len(tifffile.TiffFile(out).pages) == 1


@pytest.mark.parametrize("writer", ["tifffile", "imagej", "ome"])
def test_a_description_that_records_the_sources_pixels_gives_way_to_the_provenance(tmp_path: Path, writer: str) -> None:
    """tifffile writes its record of the array (JSON with its shape) into every TIFF it makes, ImageJ its hyperstack
    header and OME-TIFF its XML: each says of a gray scan that it has one channel, and is how those readers read the
    pixels. Copies had kept it with the provenance after it, and tifffile refused to read them ("invalid image
    description"). The copy's description is the provenance alone; a caption is still kept (see the documents')."""
    source = tmp_path / "scan.tif"
    tifffile.imwrite(source, gray_scan(), **{"tifffile": {}, "imagej": {"imagej": True}, "ome": {"ome": True}}[writer])
    out = tmp_path / "copy.tif"
    expected = colorize(source, out)
    assert np.array_equal(tifffile.imread(out), expected)
    with tifffile.TiffFile(out) as copy:
        assert copy.pages[0].description.startswith("colorized by Tinct ")
        assert not (copy.is_imagej or copy.is_ome or copy.is_shaped)
