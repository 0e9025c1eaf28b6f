"""``tinct colorize`` end to end with a real (tiny) model: in-process through ``main`` and as a real subprocess, on a
folder tree of real files, good and bad; reruns resume, ``--overwrite`` redoes, interrupts leave no partial files."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from models.colorizer import Colorizer
from models.engines import create_engine
from models.files import PARTIAL_SUFFIX
from worker.cli import main
from worker.media.images import read_photo, read_provenance, tinct_version
from worker.photos import PhotoOptions, colorize_photos, plan_photos

REPO = Path(__file__).resolve().parents[1]
GOOD = ["a.jpg", "sub/b.png", "sub/deeper/c.tif", "sub/d.webp", "e.bmp", "sub/f.jp2"]
BAD = ["broken/truncated.jpg", "broken/empty.png", "broken/notes.jpg"]


def _gray(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = 40 + 150 * (x / width) + 30 * np.sin(y / 9.0) + rng.normal(0, 3, (height, width))
    img[height // 3 : height // 2, width // 4 : width // 2] = 220
    return np.clip(img, 0, 255).astype(np.uint8)


def _colour(height: int, width: int) -> np.ndarray:
    """A colour picture: every hue at every lightness, as in a real colour photo."""
    y, x = np.mgrid[0:height, 0:width]
    hue = 2 * np.pi * x / width
    rgb = 0.5 + 0.35 * np.stack([np.cos(hue), np.cos(hue - 2.1), np.cos(hue + 2.1)], axis=-1)
    return (255 * rgb * (0.4 + 0.6 * y / height)[..., None]).round().astype(np.uint8)


def make_tree(root: Path) -> Path:
    """A folder of photos as archives have them: nested folders, several formats, a colour photo, junk."""
    root.mkdir(parents=True)
    for sub in ("sub/deeper", "broken"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(_gray(40, 56, 1)).save(root / "a.jpg", quality=92)
    gray = _gray(36, 48, 2)
    Image.fromarray(np.dstack([gray, np.full_like(gray, 200)]), "LA").save(root / "sub/b.png")
    cv2.imwrite(str(root / "sub/deeper/c.tif"), _gray(30, 44, 3).astype(np.uint16) * 257)
    Image.fromarray(_gray(32, 32, 4)).save(root / "sub/d.webp", lossless=True)
    Image.fromarray(_gray(24, 40, 5)).save(root / "e.bmp")
    Image.fromarray(_gray(28, 36, 6)).save(root / "sub/f.jp2")  # a JPEG 2000 master, as archives keep them
    Image.fromarray(_colour(32, 48)).save(root / "colour.png")
    full = root / "a.jpg"
    (root / "broken/truncated.jpg").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    (root / "broken/empty.png").write_bytes(b"")
    (root / "broken/notes.jpg").write_text("not a photo, just notes\n")
    (root / "README.txt").write_text("scans of box 12\n")  # not an image extension: ignored
    (root / ".hidden.jpg").write_bytes(b"resource fork")  # hidden: ignored
    return root


def model_args(checkpoint: Path) -> list[str]:
    return ["--model", str(checkpoint), "--engine", "torch", "--device", "cpu", "--render-size", "64",
            "--batch-size", "4"]


def outputs(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def assert_no_partials(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(PARTIAL_SUFFIX) or p.name.startswith(".")]


def test_colorize_tree_rerun_and_overwrite(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    tree = make_tree(tmp_path / "scans")
    out = tmp_path / "colour"

    status = main(["colorize", str(tree), "-o", str(out), *model_args(tiny_checkpoint)])
    captured = capsys.readouterr()
    assert status == 1
    assert outputs(out) == sorted(GOOD)
    for name in GOOD:
        result = read_photo(out / name)
        assert result.size == read_photo(tree / name).size
        if not name.endswith(".bmp"):  # BMP has nowhere to keep a tag
            provenance = read_provenance(out / name)
            assert provenance is not None and provenance.version == tinct_version()
            assert provenance.model is not None and provenance.model.startswith("effnet_unet@")
    assert read_photo(out / "sub/deeper/c.tif").bit_depth == 16
    assert read_photo(out / "sub/b.png").alpha is not None
    report = captured.out
    assert "colorized 6, skipped 1 (0 already done, 1 colour photo), failed 3" in report
    assert "images/s" in report and "ignored 1 file " in report
    for name in BAD:  # each failure: one line naming the file, in the summary
        lines = [line for line in report.splitlines() if str(tree / name) in line]
        assert len(lines) == 1, (name, report)
    assert "colour.png: already a colour photo" in captured.err
    assert "Traceback" not in captured.out + captured.err
    assert_no_partials(out)

    # A rerun finds everything done; the three broken files still fail, so the status stays 1.
    stamps = {name: (out / name).stat().st_mtime_ns for name in GOOD}
    assert main(["colorize", str(tree), "-o", str(out), *model_args(tiny_checkpoint)]) == 1
    assert "colorized 0, skipped 7 (6 already done, 1 colour photo), failed 3" in capsys.readouterr().out
    assert stamps == {name: (out / name).stat().st_mtime_ns for name in GOOD}

    # Without the broken files the rerun is clean; --overwrite redoes everything; --recolor takes the colour photo.
    for name in BAD:
        (tree / name).unlink()
    assert main(["colorize", str(tree), "-o", str(out), "-q", *model_args(tiny_checkpoint)]) == 0
    assert capsys.readouterr().out == ""
    assert main(["colorize", str(tree), "-o", str(out), "--overwrite", "--recolor", *model_args(tiny_checkpoint)]) == 0
    assert "colorized 7, skipped 0, failed 0" in capsys.readouterr().out
    assert all((out / name).stat().st_mtime_ns != stamps[name] for name in GOOD)
    assert read_provenance(out / "colour.png") is not None
    assert_no_partials(out)


def test_a_rerun_redoes_a_photo_rescanned_or_re_hinted_since_its_copy(tmp_path: Path, tiny_checkpoint: Path,
                                                                       capsys) -> None:
    """A rerun skipped every photo whose copy existed: one rescanned since, or whose hints a restorer had edited,
    kept its stale copy without a word. Now, as make decides, a copy older than its photo or its hints is redone."""
    scans, out = tmp_path / "scans", tmp_path / "colour"
    scans.mkdir()
    for name in ("kept.png", "rescanned.png", "hinted.png"):
        Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))).save(scans / name)
    (scans / "hinted.png.hints.json").write_text('{"points": [{"x": 5, "y": 5, "color": "#2a3f8f"}]}')
    assert main(["colorize", str(scans), "-o", str(out), "-q", *model_args(tiny_checkpoint)]) == 0
    made = {name: (out / name).stat().st_mtime_ns for name in ("kept.png", "rescanned.png", "hinted.png")}
    later = max(made.values()) + 10**9
    os.utime(scans / "rescanned.png", ns=(later, later))
    (scans / "hinted.png.hints.json").write_text('{"points": [{"x": 5, "y": 5, "color": "#8f2a2a"}]}')
    os.utime(scans / "hinted.png.hints.json", ns=(later, later))
    capsys.readouterr()
    assert main(["colorize", str(scans), "-o", str(out), *model_args(tiny_checkpoint)]) == 0
    captured = capsys.readouterr()
    assert "colorized 2, skipped 1 (1 already done, 0 colour photos), failed 0" in captured.out
    assert f"{scans / 'rescanned.png'}: changed since {out / 'rescanned.png'} was made; colouring it again" \
        in captured.err
    assert (out / "kept.png").stat().st_mtime_ns == made["kept.png"]
    assert all((out / name).stat().st_mtime_ns != made[name] for name in ("rescanned.png", "hinted.png"))


def test_colorize_as_a_subprocess(tmp_path: Path, tiny_checkpoint: Path) -> None:
    tree = make_tree(tmp_path / "scans")
    out = tmp_path / "colour"
    command = [sys.executable, "-m", "worker.cli", "colorize", str(tree), "-o", str(out),
               *model_args(tiny_checkpoint)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 1, done.stderr
    assert outputs(out) == sorted(GOOD)
    assert "colorized 6, skipped 1 (0 already done, 1 colour photo), failed 3" in done.stdout
    for name in BAD:
        assert sum(str(tree / name) in line for line in done.stderr.splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert_no_partials(out)


def test_what_pillow_warns_of_in_a_damaged_photo_is_one_line_naming_it(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """A TIFF cut short in its directory makes Pillow warn of corrupt EXIF: Python printed that as two raw lines
    naming Pillow's source, beside the photo's one-line refusal."""
    good = io.BytesIO()
    Image.fromarray(_gray(64, 96, 7)).save(good, "TIFF", compression="tiff_lzw")
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "cut.tif").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    command = [sys.executable, "-m", "worker.cli", "colorize", str(tmp_path / "scans"), "-o", str(tmp_path / "out"),
               *model_args(tiny_checkpoint)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if "cut.tif" in line]
    assert lines[0].startswith(f"WARNING {tmp_path / 'scans' / 'cut.tif'}: Corrupt EXIF data"), done.stderr
    assert lines[1].startswith(f"ERROR {tmp_path / 'scans' / 'cut.tif'}: truncated: "), done.stderr
    assert "warnings.warn" not in done.stderr and "PIL" not in done.stderr


def test_single_file_to_an_exact_path(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    source = tmp_path / "photo.jpg"
    Image.fromarray(_gray(40, 60, 7)).save(source)
    target = tmp_path / "elsewhere" / "result.png"
    assert main(["colorize", str(source), "-o", str(target), *model_args(tiny_checkpoint)]) == 0
    assert outputs(tmp_path / "elsewhere") == ["result.png"]
    assert Image.open(target).format == "PNG"
    assert "colorized 1," in capsys.readouterr().out
    # --format converts every output in a folder run
    assert main(["colorize", str(source), "-o", str(tmp_path / "out"), "--format", "tif", "-q",
                 *model_args(tiny_checkpoint)]) == 0
    assert outputs(tmp_path / "out") == ["photo.tif"]


def test_a_gif_is_read_and_its_colour_copy_is_a_png(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    """Web-era collections kept their scans as GIFs, which Tinct had ignored in a folder ("not a supported image
    extension") and refused alone. A still GIF is read now, its lightness kept to the code and its comment carried;
    its copy is a PNG (a GIF holds 256 colours; its transparency the PNG's alpha), named so in a folder run, and a
    GIF named as the copy is refused before any work. An animated GIF fails alone, in one line, and one beside a PNG
    of its name leaves the name to the PNG's copy."""
    gray = _gray(40, 60, 3)
    (tmp_path / "in").mkdir()
    Image.fromarray(gray).save(tmp_path / "in" / "harbour.gif", comment=b"Harbour, 1931")
    Image.fromarray(_gray(40, 60, 4)).save(tmp_path / "in" / "pier.gif")
    Image.fromarray(_gray(40, 60, 5)).save(tmp_path / "in" / "pier.png")
    frames = [Image.fromarray(np.roll(gray, shift, axis=1)) for shift in (0, 5, 10)]
    frames[0].save(tmp_path / "in" / "waves.gif", save_all=True, append_images=frames[1:])
    cut_out = np.asarray(Image.fromarray(gray).convert("P")).copy()
    cut_out[:10] = 0  # a web GIF's transparent surround: palette entry 0 is transparent
    logo = Image.fromarray(cut_out, "P")
    logo.putpalette(Image.fromarray(gray).convert("P").getpalette())
    logo.save(tmp_path / "in" / "logo.gif", transparency=0)
    assert main(["colorize", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *model_args(tiny_checkpoint)]) == 1
    assert outputs(tmp_path / "out") == ["harbour.png", "logo.png", "pier.png"]
    alpha = np.asarray(Image.open(tmp_path / "out" / "logo.png").getchannel("A"))
    assert (alpha == np.where(cut_out == 0, 0, 255)).all()  # transparent where the GIF was, and only there
    assert read_provenance(tmp_path / "out" / "pier.png") is not None
    pier = cv2.cvtColor(np.asarray(Image.open(tmp_path / "out" / "pier.png").convert("RGB")), cv2.COLOR_RGB2LAB)
    assert np.abs(pier[..., 0].astype(int) - cv2.cvtColor(np.dstack([_gray(40, 60, 5)] * 3),
                                                          cv2.COLOR_RGB2LAB)[..., 0]).mean() < 1  # the PNG's
    copy = Image.open(tmp_path / "out" / "harbour.png")
    assert copy.format == "PNG" and copy.text["Comment"] == "Harbour, 1931"
    rgb = np.asarray(copy.convert("RGB"))
    assert np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).mean() > 0.5  # in colour
    lightness = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)[..., 0].astype(int)
    assert np.abs(lightness - cv2.cvtColor(np.dstack([gray] * 3), cv2.COLOR_RGB2LAB)[..., 0]).max() <= 2
    printed = capsys.readouterr()
    assert f"{tmp_path / 'in' / 'waves.gif'}: 3 frames: only single still images" in printed.out + printed.err
    assert f"{tmp_path / 'in' / 'pier.gif'}: output {tmp_path / 'out' / 'pier.png'} is also the output of " \
           f"{tmp_path / 'in' / 'pier.png'}" in printed.out + printed.err
    assert main(["colorize", str(tmp_path / "in" / "harbour.gif"), "-o", str(tmp_path / "copy.gif")]) == 2
    assert "copy.gif: Tinct reads GIF but does not write it (a GIF holds 256 colours); name the copy .png" in \
        capsys.readouterr().err
    assert not (tmp_path / "copy.gif").exists()


def test_model_that_cannot_load_is_one_line_and_status_2(tmp_path: Path, capsys) -> None:
    tree = make_tree(tmp_path / "scans")
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    for model in (str(tmp_path / "missing.pt"), str(garbage)):
        assert main(["colorize", str(tree), "-o", str(tmp_path / "out"), "--model", model]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if "error" in line]
        assert len(lines) == 1 and Path(model).name in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["colorize", "x.jpg"],  # no -o
        ["colorize", "x.jpg", "-o", "out", "--format", "gif"],
        ["colorize", "x.jpg", "-o", "out", "--batch-size", "0"],
        ["colorize", "x.jpg", "-o", "out", "--engine", "tensorflow"],
        ["jobs", "--limit", "0"],  # refused before any Redis is asked
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys) -> None:
    assert main(argv) == 2
    capsys.readouterr()


def test_an_output_that_cannot_be_made_is_refused_before_any_photo(tmp_path: Path, capsys) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for i in range(2):
        Image.fromarray(_gray(20, 20, i)).save(source / f"p{i}.png")
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder")
    for output in (in_the_way / "colour", in_the_way / "deeper" / "colour"):
        # the plan refuses it: no model is loaded, nothing is colorized only to fail at the write
        assert main(["colorize", str(source), "-o", str(output), "--model", str(tmp_path / "never-loaded.pt")]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"tinct colorize: error: {output}: cannot be written, {in_the_way} is a file, not a folder"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes everywhere")
def test_an_output_folder_without_write_permission_is_refused_before_any_photo(tmp_path: Path, capsys) -> None:
    source = tmp_path / "in.png"
    Image.fromarray(_gray(20, 20, 1)).save(source)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert main(["colorize", str(source), "-o", str(locked / "out")]) == 2
    assert f"cannot be written, {locked} is not writable" in capsys.readouterr().err


def test_contradicting_format_is_a_usage_error(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    source = tmp_path / "photo.jpg"
    Image.fromarray(_gray(20, 20, 1)).save(source)
    assert main(["colorize", str(source), "-o", str(tmp_path / "r.png"), "--format", "jpg"]) == 2
    assert "--format jpg contradicts the output file name r.png" in capsys.readouterr().err
    # Another extension of the format asked for is no contradiction.
    assert main(["colorize", str(source), "-o", str(tmp_path / "r.jpeg"), "--format", "jpg",
                 *model_args(tiny_checkpoint)]) == 0
    assert Image.open(tmp_path / "r.jpeg").format == "JPEG"


def test_version(capsys) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"tinct {tinct_version()}"


def test_plan_mirrors_skips_and_refuses_collisions(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "scans")
    Image.fromarray(_gray(8, 8, 1)).save(tree / "a.png")  # a.jpg and a.png both become a.png with --format png
    inside = tree / "colorized"  # an output folder inside the input is never read back as input
    inside.mkdir()
    Image.fromarray(_gray(8, 8, 1)).save(inside / "old-result.jpg")
    plan = plan_photos([tree], inside, "png")
    names = sorted(str(task.output.relative_to(inside)) for task in plan.tasks)
    assert "old-result.png" not in names and not any(n.startswith("colorized") for n in names)
    assert "sub/deeper/c.png" in names and "a.png" in names
    assert len([f for f in plan.failures if "is also the output of" in f.reason]) == 1
    assert plan.ignored == 1
    with pytest.raises(ValueError, match="unknown output format"):
        plan_photos([tree], inside, "gif")
    # outputs never replace their sources, even with --overwrite
    in_place = plan_photos([tree], tree)
    assert not in_place.tasks and all("would replace a source" in f.reason for f in in_place.failures)


class _InterruptingColorizer(Colorizer):
    """The real colorizer, interrupted (as by Ctrl-C) on its second batch."""

    calls = 0

    def colorize(self, lightness: list[np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return super().colorize(lightness)


def test_interrupt_in_process_keeps_only_complete_outputs(tmp_path: Path, tiny_checkpoint: Path) -> None:
    tree = tmp_path / "many"
    tree.mkdir()
    for i in range(8):
        Image.fromarray(_gray(48, 64, i)).save(tree / f"p{i}.png")
    out = tmp_path / "out"
    with create_engine(tiny_checkpoint, kind="torch", device="cpu") as engine:
        colorizer = _InterruptingColorizer(engine, render_size=64, batch_size=2)
        with pytest.raises(KeyboardInterrupt):
            colorize_photos(colorizer, plan_photos([tree], out), engine.checkpoint.label, PhotoOptions(batch_size=2))
    # The first batch was colorized before the interrupt: its photos are written in full; nothing else is.
    written = outputs(out)
    assert written == ["p0.png", "p1.png"]
    assert_no_partials(out)
    for name in written:
        assert read_provenance(out / name) is not None and read_photo(out / name).size == (64, 48)


@pytest.mark.skipif(os.name != "posix", reason="SIGINT delivery")
def test_ctrl_c_in_a_subprocess_leaves_no_partial_outputs(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    tree = tmp_path / "many"
    tree.mkdir()
    for i in range(12):
        Image.fromarray(_gray(480, 640, i)).save(tree / f"p{i:02d}.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "worker.cli", "colorize", str(tree), "-o", str(out), "--model",
               str(tiny_checkpoint), "--engine", "torch", "--device", "cpu", "--render-size", "64", "--batch-size", "1"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and not list(out.glob("*.png")):
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=240)
    written = outputs(out)
    if process.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert 0 < len(written) < 12
    assert_no_partials(out)
    for name in written:  # everything under a final name is a complete, tagged image
        assert read_photo(out / name).size == (640, 480)
        assert read_provenance(out / name) is not None
    assert main(command[3:]) == 0  # the rerun (in-process, to save a second start-up) completes the job
    assert f"({len(written)} already done, 0 colour photos)" in capsys.readouterr().out
    assert len(outputs(out)) == 12


def _env() -> dict[str, str]:
    # One torch thread per subprocess: the test machine is shared.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_models_lists_the_shipped_one_and_those_published_to_the_store(tmp_path: Path, monkeypatch, capsys) -> None:
    store = tmp_path / "store"
    (store / "old").mkdir(parents=True)
    for name in ("archive-1950s.pt", "faces.pt", "notes.txt", "old/archive-1940s.pt"):  # a sub-folder's is no name
        (store / name).write_bytes(b"x" * 1_500_000)
    monkeypatch.setenv("TINCT_MODEL_STORE", str(store))
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["default", "archive-1950s", "faces"]
    assert lines[1].startswith("archive-1950s  1.5 MB, published 20"), lines
    monkeypatch.delenv("TINCT_MODEL_STORE")
    assert main(["models"]) == 0
    shown = capsys.readouterr()
    assert shown.out == "default  the shipped model\n" and "set TINCT_MODEL_STORE" in shown.err
