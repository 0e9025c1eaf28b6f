"""Multi-page TIFF documents (an album's pages, a print's front and back, a scanning batch kept as one file) are
coloured page by page into a TIFF of every page, end to end through ``tinct colorize`` with a real (tiny) model.

They had been refused whole ("3 frames/pages: only single still images are supported"). Sources are written by
tifffile as scanning software writes them; copies are read back by libtiff's tiffinfo and tifffile.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from worker.cli import main
from worker.errors import BadInputError, InputTooLargeError, UnsupportedMediaError
from worker.media.images import read_pages, read_photo

SIZES = [(120, 160), (90, 140), (150, 140)]  # (height, width) of each page, all different


def page(height: int, width: int, seed: int) -> np.ndarray:
    """A gray page with a ramp, stripes and a block: each page its own picture."""
    y, x = np.mgrid[0:height, 0:width]
    picture = 40 + 150 * x / width + 30 * np.sin(y / (5.0 + seed)) + np.random.default_rng(seed).normal(0, 3, x.shape)
    picture[height // 3: height // 2, width // 4: width // 2] = 200 - 40 * seed
    return np.clip(picture, 0, 255).round().astype(np.uint8)


def album(path: Path) -> list[np.ndarray]:
    """A 3-page document as archives scan them, each page coded differently: 8-bit gray at 300 dpi with a caption;
    16-bit RGB holding gray, stored turned (orientation 6) and deflate-compressed, its pixels 3:2 (a resolution
    without a unit); 8-bit gray in 64-pixel tiles, its resolution tifffile's unitless 1:1. Returns the pages as
    shown, upright."""
    pages = [page(*size, seed) for seed, size in enumerate(SIZES)]
    with tifffile.TiffWriter(path) as writer:
        writer.write(pages[0], photometric="minisblack", description="Album 7, page 1", resolution=(300, 300),
                     resolutionunit="INCH")
        turned = np.rot90(pages[1], 1)  # stored turned a quarter: orientation 6 turns it back
        writer.write(np.repeat(turned[..., None], 3, axis=2).astype(np.uint16) * 257, photometric="rgb",
                     compression="zlib", extratags=[(274, "H", 1, 6, True)], resolution=(3, 2),
                     resolutionunit="NONE")
        writer.write(pages[2], photometric="minisblack", tile=(64, 64))
    return pages


def mixed_album(path: Path, colour_pages: tuple[int, ...]) -> list[np.ndarray]:
    """A 3-page document whose ``colour_pages`` (from 0) are colour pictures (a colour cover among gray prints)
    and the others gray; returns its pages as stored."""
    pages = []
    with tifffile.TiffWriter(path) as writer:
        for number, size in enumerate(SIZES):
            gray = page(*size, number)
            shown = np.stack([gray, gray[:, ::-1], np.full_like(gray, 90)], -1) if number in colour_pages else gray
            writer.write(shown, photometric="rgb" if shown.ndim == 3 else "minisblack")
            pages.append(shown)
    return pages


def lightness(rgb: np.ndarray) -> np.ndarray:
    """CIE L* (0-255 for 0-100) of 8-bit sRGB, or of gray repeated into it."""
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2Lab)[..., 0].astype(float)


def model_args(checkpoint: Path) -> list[str]:
    return ["--model", str(checkpoint), "--engine", "torch", "--device", "cpu", "--render-size", "64",
            "--batch-size", "2"]


def test_every_page_of_a_document_is_coloured_into_a_tiff_of_every_page(tmp_path: Path, tiny_checkpoint: Path,
                                                                          capsys) -> None:
    """Each page comes back in colour, in its order and its own upright size, its lightness kept, coded as its source
    page was (16 bits, tiles) and numbered as a page of the document, with its own caption and resolution: what one
    page says is not said of the next (Pillow keeps a page's resolution in ``info`` for the pages after it, where
    they state one without a unit)."""
    source = tmp_path / "album.tif"
    pages = album(source)
    out = tmp_path / "colour" / "album.tif"
    assert main(["colorize", str(source), "-o", str(out), *model_args(tiny_checkpoint)]) == 0
    # The rate counts pictures: a document of 3 pages is 3 pictures' work.
    assert "colorized 1 (3 pictures, each page of 1 document one), skipped 0, failed 0" in capsys.readouterr().out

    with tifffile.TiffFile(out) as copy:
        assert len(copy.pages) == 3
        for number, (copied, gray) in enumerate(zip(copy.pages, pages, strict=True)):
            rgb = copied.asarray()
            assert rgb.shape == (*gray.shape, 3), number
            eight_bit = (rgb >> 8).astype(np.uint8) if rgb.dtype == np.uint16 else rgb
            assert np.abs(lightness(eight_bit) - lightness(gray)).mean() < 3, number  # this page's own picture
            assert np.abs(rgb.astype(int) - rgb.mean(axis=-1, keepdims=True)).mean() > 0.5, number  # in colour
            assert copied.tags["PageNumber"].value == (number, 3)
            assert copied.tags["NewSubfileType"].value == 2  # a page of a multi-page document
            assert "colorized by Tinct" in copied.tags["ImageDescription"].value
        first, turned, tiled = copy.pages
        assert first.tags["ImageDescription"].value.startswith("Album 7, page 1 [colorized by Tinct")
        assert first.tags["XResolution"].value == (300, 1) and first.tags["ResolutionUnit"].value == 2
        assert (turned.tags["XResolution"].value, turned.tags["YResolution"].value) == ((2, 1), (3, 1))  # upright
        assert turned.tags["ResolutionUnit"].value == tiled.tags["ResolutionUnit"].value == 1  # without a unit
        assert tiled.tags["XResolution"].value == (1, 1)
        assert turned.dtype == np.uint16 and first.dtype == np.uint8
        assert (tiled.tilewidth, tiled.tilelength) == (64, 64) and not first.is_tiled
    info = subprocess.run(["tiffinfo", str(out)], capture_output=True, text=True, check=True)
    assert info.stdout.count("multi-page document") == 3 and "Warning" not in info.stderr + info.stdout


def test_a_document_its_copy_would_cut_to_one_page_or_hinted_is_refused_whole(tmp_path: Path, tiny_checkpoint: Path,
                                                                               capsys) -> None:
    """A JPEG (or PNG...) copy would hold the first page alone: the document fails before any colouring, in one
    line naming it, and nothing is written. So does a hint file beside it whose points are one picture's (a
    document's are given page by page)."""
    scans = tmp_path / "scans"
    scans.mkdir()
    album(scans / "album.tif")
    out = tmp_path / "colour"
    assert main(["colorize", str(scans), "-o", str(out), "--format", "jpg", *model_args(tiny_checkpoint)]) == 1
    report = capsys.readouterr().out
    assert f"{scans / 'album.tif'}: a 3-page TIFF document, whose pages only a TIFF copy keeps: not copied as " \
           "album.jpg" in report
    assert not out.exists() or not any(out.rglob("*"))

    (scans / "album.tif.hints.json").write_text('{"points": [{"x": 10, "y": 10, "color": "#aa3322"}]}')
    assert main(["colorize", str(scans), "-o", str(out), *model_args(tiny_checkpoint)]) == 1
    assert f"{scans / 'album.tif.hints.json'}: colour hints place points on one picture, and its photo is a 3-page " \
           'document: give them page by page ({"pages": {"1": {"points": [...]}}})' in capsys.readouterr().out
    assert not any(out.rglob("*.tif"))


def test_a_documents_hints_are_given_page_by_page(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    """A document's hints are given page by page, each in its page's own upright pixels: the hinted page takes the
    hint's colour where it was placed and its description says so; the others are coloured exactly as without
    hints. A page the document does not have, or a point outside its page, fails the document before any colouring,
    in one line naming the field."""
    source = tmp_path / "album.tif"
    album(source)
    plain, hinted, hint_file = tmp_path / "plain.tif", tmp_path / "hinted.tif", tmp_path / "album.hints.json"
    assert main(["colorize", str(source), "-o", str(plain), *model_args(tiny_checkpoint)]) == 0
    blue = "#1f4fbf"
    hint_file.write_text(json.dumps({"pages": {"2": {"points": [{"x": 30, "y": 40, "color": blue, "radius": 6}]}}}))
    assert main(["colorize", str(source), "-o", str(hinted), "--hints", str(hint_file),
                 *model_args(tiny_checkpoint)]) == 0
    with tifffile.TiffFile(plain) as without, tifffile.TiffFile(hinted) as with_hints:
        for number in (0, 2):
            assert np.array_equal(without.pages[number].asarray(), with_hints.pages[number].asarray()), number
            assert "with" not in with_hints.pages[number].tags["ImageDescription"].value
        assert with_hints.pages[1].tags["ImageDescription"].value.endswith(", with 1 colour hint")
        pixels = [(copy.pages[1].asarray() >> 8).astype(np.uint8) for copy in (without, with_hints)]  # 16-bit, 90x140
    (_, b_without), (_, b_hinted) = (cv2.cvtColor(rgb[40:41, 30:31], cv2.COLOR_RGB2LAB)[0, 0, 1:].astype(int) - 128
                                     for rgb in pixels)
    assert b_hinted < -40 < b_without  # blue where the hint was put (-63 here, against +6 without it)

    for pages, error in [({"4": {"points": [{"x": 1, "y": 1, "color": blue}]}}, "pages.4: the document has 3 pages"),
                         ({"3": {"points": [{"x": 150, "y": 1, "color": blue}]}},
                          "pages.3.points[0].x: 150 is outside the page (140x150: x from 0 to 139)")]:
        hint_file.write_text(json.dumps({"pages": pages}))
        assert main(["colorize", str(source), "-o", str(tmp_path / "refused.tif"), "--hints", str(hint_file),
                     *model_args(tiny_checkpoint)]) == 1
        assert f"{hint_file}: {error}" in capsys.readouterr().out
        assert not (tmp_path / "refused.tif").exists()


def test_a_documents_colour_page_is_kept_as_it_is_and_a_colour_document_left_alone(tmp_path: Path,
                                                                                    tiny_checkpoint: Path,
                                                                                    capsys) -> None:
    """A colour cover among gray prints keeps its own colour, pixel for pixel, and the gray pages are coloured
    (``--recolor`` colours every page from its lightness); a document in colour throughout is left alone, as a
    colour photo is."""
    source, out = tmp_path / "album.tif", tmp_path / "album-colour.tif"
    pages = mixed_album(source, colour_pages=(1,))
    assert main(["colorize", str(source), "-o", str(out), *model_args(tiny_checkpoint)]) == 0
    captured = capsys.readouterr()
    assert "colorized 1 (2 pictures, each page of 1 document one), skipped 0" in captured.out
    assert "album.tif: page 2 of 3 already in colour, kept as it is" in captured.err
    with tifffile.TiffFile(out) as copy:
        copied = [copied_page.asarray() for copied_page in copy.pages]
    assert np.array_equal(copied[1], pages[1])  # the colour page, as it was
    for number in (0, 2):  # the gray ones coloured, their lightness kept
        assert np.abs(copied[number].astype(int) - copied[number].mean(axis=-1, keepdims=True)).mean() > 0.5
        assert np.abs(lightness(copied[number]) - lightness(pages[number])).mean() < 3

    assert main(["colorize", str(source), "-o", str(out), "--overwrite", "--recolor",
                 *model_args(tiny_checkpoint)]) == 0
    assert "colorized 1 (3 pictures" in capsys.readouterr().out
    with tifffile.TiffFile(out) as copy:
        assert not np.array_equal(copy.pages[1].asarray(), pages[1])  # coloured again from its lightness

    colour = tmp_path / "colour.tif"
    mixed_album(colour, colour_pages=(0, 1, 2))
    assert main(["colorize", str(colour), "-o", str(tmp_path / "colour-copy.tif"), *model_args(tiny_checkpoint)]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 (0 already done, 1 colour photo)" in captured.out
    assert "colour.tif: already a 3-page document in colour on every page (colour scores" in captured.err
    assert not (tmp_path / "colour-copy.tif").exists()


def test_a_document_with_a_page_over_the_limit_or_damaged_is_refused_naming_it_and_leaves_nothing(
        tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    """Pages are decoded, coloured and written one at a time, so the pixel limit holds for each page, as for a photo.
    A page that does not decode fails the document in one line naming the page, and the copy written so far is not
    left under its name; a file cut short after its first page says so (it had been "corrupt image data
    (TypeError: Missing dimensions)")."""
    source = tmp_path / "album.tif"
    album(source)
    largest = max(height * width for height, width in SIZES)
    assert [page.size for page in read_pages(source, max_pixels=largest)] == [(w, h) for h, w in SIZES]
    with pytest.raises(InputTooLargeError, match=r"album.tif: page 3 of 3 is 140x150, [0-9.]+ MP, over the limit"):
        read_photo(source, max_pixels=largest - 1)  # (refused before any page is decoded)

    with tifffile.TiffFile(source) as tif:
        offset, count = tif.pages[2].dataoffsets[0], tif.pages[2].databytecounts[0]
    broken = tmp_path / "scans" / "damaged.tif"
    broken.parent.mkdir()
    broken.write_bytes(source.read_bytes()[:offset + count // 2])  # cut inside page 3's first tile (its directory
    # lies before its tiles, as tifffile writes it: the file opens, and pages 1 and 2 decode)
    out = tmp_path / "colour"
    assert main(["colorize", str(broken.parent), "-o", str(out), *model_args(tiny_checkpoint)]) == 1
    report = capsys.readouterr().out
    assert f"{broken}: page 3 of 3: " in report and "failed 1" in report
    assert not [path for path in out.rglob("*") if path.is_file()]  # pages 1 and 2 were written, then taken back

    with tifffile.TiffFile(source) as tif:
        offset = tif.pages[1].dataoffsets[0]
    cut = tmp_path / "cut.tif"  # cut short in page 2's pixels, before the directories after them
    cut.write_bytes(source.read_bytes()[:offset + 10])
    with pytest.raises(BadInputError, match=r"cut.tif: damaged or cut short after its first picture: a further "
                                            r"page's directory cannot be read \(TypeError"):
        read_photo(cut)


def test_pages_that_mix_previews_and_pictures_are_refused_by_name(tmp_path: Path) -> None:
    """A document whose pages each bring a reduced-resolution preview: which page is whose is not sorted out."""
    gray = page(*SIZES[0], 0)
    mixed = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(mixed) as writer:
        writer.write(gray)
        writer.write(gray[::4, ::4], subfiletype=1)
        writer.write(page(*SIZES[1], 1))
    with pytest.raises(UnsupportedMediaError, match="mixed.tif: 3 pages, of which some are reduced-resolution copies"):
        read_photo(mixed)
