"""``tools pack-data`` on generated photos: the budget holds, the validation split travels whole under its own
names, large photos are downscaled, and tools train reads the pack."""

from __future__ import annotations

import io
import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import gradient_image
from tools.datasets import PhotoBank, SourceSpec, in_holdout, relative_name
from tools.pack_data import ROOM_MARGIN, checkout_bytes, main, pack, travel_size
from tools.train import TrainConfig, train

SPLIT = 0.25


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, Path]:
    """A folder of 40 large JPEGs in two subfolders and a zip of 30 small PNGs (noise, so sizes vary)."""
    root = tmp_path_factory.mktemp("sources")
    big = root / "scenes"
    for i in range(40):
        folder = big / ("street" if i % 2 else "field")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gradient_image(200, 260, seed=i)).save(folder / f"s{i:02d}.jpg", quality=95)
    small = root / "tiny.zip"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(small, "w") as zf:
        for i in range(30):
            noise = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
            path = root / "t.png"
            Image.fromarray(noise).save(path)
            zf.write(path, f"class{i % 3}/t{i:02d}.png")
    return big, small


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_the_pack_keeps_the_split_and_the_names_within_its_budget(sources, tmp_path: Path) -> None:
    big, small = sources
    everything = pack([str(big), str(small)], tmp_path / "all", budget_mb=100, short_side=64, val_split=SPLIT)
    assert [s["train_fraction"] for s in everything["sources"]] == [1.0, 1.0]
    full_bytes = everything["bytes"]

    out = tmp_path / "pack"
    manifest = pack([str(big), str(small)], out, budget_mb=full_bytes / 2 / 2**20, short_side=64, val_split=SPLIT)
    on_disk = (out / "scenes.zip").stat().st_size + (out / "tiny.zip").stat().st_size
    assert on_disk == manifest["bytes"] <= full_bytes / 2  # the budget is what the zips take on disk
    scenes, tiny = _members(out / "scenes.zip"), _members(out / "tiny.zip")
    # Names as inside the sources, so the split hashes the same photos; every split photo is there.
    original_scenes = {p.relative_to(big).as_posix() for p in big.rglob("*.jpg")}
    with zipfile.ZipFile(small) as zf:
        original_tiny = {name: zf.read(name) for name in zf.namelist()}
    assert set(scenes) <= original_scenes and set(tiny) <= set(original_tiny)
    assert {n for n in original_scenes if in_holdout(n, SPLIT)} <= set(scenes)
    assert {n for n in original_tiny if in_holdout(n, SPLIT)} <= set(tiny)
    # About the same fraction of each source's training photos: the mix is kept.
    fractions = [s["train_fraction"] for s in manifest["sources"]]
    assert 0 < min(fractions) and max(fractions) < 1 and max(fractions) - min(fractions) < 0.35, fractions
    # Large photos are downscaled to the short side (and stay JPEGs); small ones travel byte for byte.
    for data in scenes.values():
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG" and min(im.size) == 64
    assert all(tiny[name] == original_tiny[name] for name in tiny)
    written = json.loads((out / "pack.json").read_text())
    assert written["sources"][0]["zip"] == "scenes.zip" and written["val_split"] == SPLIT

    # The validation split read from the pack is the split read from the originals, photo for photo.
    for source, packed in ((big, out / "scenes.zip"), (small, out / "tiny.zip")):
        on_pack = PhotoBank([SourceSpec(packed)], short_side=64, split="val", holdout=SPLIT)
        original = PhotoBank([SourceSpec(source)], short_side=64, split="val", holdout=SPLIT)
        assert len(original) > 0
        assert [relative_name(packed, n) for n in on_pack.names] == [relative_name(source, n) for n in original.names]
    # And tools train takes the pack as it takes the originals.
    cfg = TrainConfig(model_options={"pretrained": False, "decoder_channels": [16, 16, 16]},
                      data=[str(out / "scenes.zip"), str(out / "tiny.zip") + ":2"], val_split=SPLIT, val_crops=4,
                      steps=1, batch_size=2, crop=48, warmup_steps=1)
    assert train(cfg, tmp_path / "run").exists()


def test_cli_refuses_a_budget_below_the_split_and_a_missing_source(sources, tmp_path: Path, capsys) -> None:
    big, _ = sources
    not_a_zip = tmp_path / "scans.zip"
    not_a_zip.write_bytes(b"a text file named .zip")
    for args, reason in (
        (["--data", str(big), "--budget-mb", "0.001", "--val-split", "0.5"], "the validation split alone is"),
        (["--data", str(tmp_path / "nowhere"), "--budget-mb", "5"], "nowhere"),
        (["--data", str(big), "--data", str(big), "--budget-mb", "5"], "two sources would both be packed as"),
        (["--data", str(not_a_zip), "--budget-mb", "5"], "scans.zip: not a readable .zip (File is not a zip file)"),
    ):
        with pytest.raises(SystemExit) as exc:
            main([*args, "-o", str(tmp_path / "out")])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and reason in err[0], err
    assert not (tmp_path / "out" / "scenes.zip").exists()
    assert main(["--data", str(big), "--budget-mb", "5", "--short-side", "64", "-o", str(tmp_path / "ok")]) == 0
    assert "MB in 1 zips" in capsys.readouterr().out


def test_a_room_budget_fills_what_the_checkout_leaves_of_the_travel_limit(sources, tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    """--budget-mb room: the limit less the checkout (tracked files, untracked ones git does not ignore and a shared/
    folder at the top, ignored or not; not the other ignored ones, not the pack's own folder) less a margin; refused
    in one line when the checkout alone fills it, or outside a git checkout."""
    big, small = sources
    full_bytes = pack([str(big), str(small)], tmp_path / "all", budget_mb=100, short_side=64,
                      val_split=SPLIT)["bytes"]
    repo = tmp_path / "repo"
    (repo / "pack").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("/pack/\n/build/\n/shared/\n")
    (repo / "weights.bin").write_bytes(b"w" * 300_000)
    (repo / "notes.txt").write_bytes(b"n" * 100_000)  # untracked, not ignored: it travels too
    (repo / "build").mkdir()
    (repo / "build" / "big.bin").write_bytes(b"b" * 2_000_000)  # ignored: it stays behind
    (repo / "pack" / "stale.zip").write_bytes(b"s" * 500_000)  # the pack's folder: replaced, not counted twice
    (repo / "shared" / "data").mkdir(parents=True)
    (repo / "shared" / "data" / "set.bin").write_bytes(b"d" * 50_000)  # ignored, but the device takes shared/
    subprocess.run(["git", "-C", str(repo), "add", ".gitignore", "weights.bin"], check=True)
    # each file counts in whole 4 KiB blocks, as the device counts them
    beside = sum(-(-n // 4096) * 4096 for n in (300_000, 100_000, 50_000, len((repo / ".gitignore").read_bytes())))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.chdir(repo)
    assert checkout_bytes(repo / "pack") == beside

    travel_mib = (beside + ROOM_MARGIN + full_bytes // 2) / 2**20
    (repo / "pack" / "stale.zip").unlink()
    common = ["--data", str(big), "--data", str(small), "--short-side", "64", "--val-split", str(SPLIT), "-o", "pack"]
    assert main([*common, "--budget-mb", "room", "--travel-mib", f"{travel_mib:.6f}"]) == 0
    manifest = json.loads((repo / "pack" / "pack.json").read_text())
    assert full_bytes // 3 < manifest["bytes"] <= full_bytes // 2 + 1  # the room (to the byte), not the whole sources
    assert all(0 < s["train_fraction"] < 1 for s in manifest["sources"])
    assert beside + sum(travel_size(f) for f in (repo / "pack").iterdir()) <= travel_mib * 2**20
    assert "MiB, within the" in capsys.readouterr().out

    for args, directory, reason in (
        (["--budget-mb", "room", "--travel-mib", "0.3"], repo, "the checkout alone is 0.4 MiB of the 0.3 that travel"),
        (["--budget-mb", "room"], tmp_path / "all", "not in a git checkout"),
    ):
        monkeypatch.chdir(directory)
        with pytest.raises(SystemExit) as exc:
            main([*common[:-1], str(tmp_path / "refused"), *args])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and reason in err[0], err
    assert not (tmp_path / "refused").exists()
