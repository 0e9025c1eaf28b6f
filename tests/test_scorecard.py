"""``tools scorecard`` end to end on generated dev sets, a generated labelled folder, a generated colour clip and a
generated black-and-white film, with tiny real checkpoints (no mocks, nothing from ../shared)."""

from __future__ import annotations

import csv
import gzip
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED_JUDGE, gradient_image, needs_shared_judge
from tests.media import decode_rgb, gray_frames, moving_scene, write_clip
from tools import metrics, scorecard
from tools.datasets import in_holdout
from tools.evaluate import GRAY_LABEL, TRUTH_LABEL, iter_truth_photos
from tools.evaluate_video import _gray_of
from tools.judge import ImageNetJudge, LabelledPhoto, as_uint8, judge_models
from tools.scorecard import GRAY, TRUTH, ModelSpec, PhotoSet, ScorecardOptions, run_scorecard, verdict

OPTIONS = ScorecardOptions(frames=6, bw_frames=2, sheet_count=2, cell_height=48, render_size=64, engine_kind="torch",
                           precision="fp32", batch_size=3)


def _photos(folder: Path, count: int, size: tuple[int, int], seed: int) -> list[str]:
    folder.mkdir(parents=True)
    names = []
    for i in range(count):
        name = f"p{i:02d}.png"
        Image.fromarray(gradient_image(size[1], size[0], seed=seed + i)).save(folder / name)
        names.append(name)
    return names


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The layout of ../shared/data/eval in miniature: four dev sets (the first labelled for the judge, with one
    gray photo that evaluation skips), a colour clip with a cut and a black-and-white film."""
    root = tmp_path_factory.mktemp("eval")
    for k, name in enumerate(scorecard.DEV_SETS):
        names = _photos(root / name, 5, (40 + 8 * k, 32), seed=10 * k)
        if name == "tiny_imagenet_val":
            Image.fromarray(gradient_image(32, 32, seed=99)[..., 0]).save(root / name / "gray.png")
            with (root / name / "labels.csv").open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["file", "wnid", "judge_index", "judge_label", "words"])
                for i, n in enumerate([*names, "gray.png"]):
                    writer.writerow([n, f"n{i:08d}", 1 + i % 3, "label", "label"])
    (root / "video").mkdir()
    write_clip(root / "video" / "pan.mkv", moving_scene(8, 64, 48, cuts_at=(4,)), codec="ffv1", pix_fmt="yuv444p")
    (root / "bw").mkdir()
    write_clip(root / "bw" / "film.mkv", gray_frames(moving_scene(6, 64, 48, seed=3)), codec="ffv1", pix_fmt="gray")
    return root


@pytest.fixture(scope="module")
def card(eval_root: Path, tiny_checkpoint: Path, tiny_regression_checkpoint: Path,
         tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("card")
    models = [ModelSpec.parse(f"cls={tiny_checkpoint}"), ModelSpec.parse(f"reg={tiny_regression_checkpoint}")]
    extra = [PhotoSet.parse(f"val_split={eval_root / 'faces_utk_val'}")]
    result = run_scorecard(models, out, eval_root, extra_sets=extra, options=OPTIONS,
                           judge_dir=eval_root / "no-judge")
    return out, result.data


def test_every_set_scored_with_gray_and_truth_beside_the_models(card: tuple[Path, dict]) -> None:
    out, data = card
    assert [s["name"] for s in data["sets"]] == [*scorecard.DEV_SETS, "val_split"]
    assert [m["label"] for m in data["models"]] == ["cls", "reg"]
    assert all(m["engine"].startswith("torch") and m["render_size"] == 64 for m in data["models"])
    for s in data["sets"]:
        assert s["images"] == 5, s["name"]
        assert list(s["rows"]) == [GRAY, "cls", "reg", TRUTH]
        gray, truth = s["rows"][GRAY], s["rows"][TRUTH]
        assert gray["colourfulness"] < 0.5 and gray["colourfulness_ratio"] < 0.02
        assert truth["colourfulness"] > 5 and truth["colourfulness_ratio"] == 1.0
        for label in ("cls", "reg"):
            row = s["rows"][label]
            assert 5 < row["psnr"] < 60 and row["delta_e"] > 0
            assert row["colourfulness_ratio"] == pytest.approx(row["colourfulness"] / truth["colourfulness"])
        assert len(s["per_image"]) == 5 and set(s["per_image"][0]) >= {"name", GRAY, "cls", "reg"}
    tiny = data["sets"][0]
    assert tiny["skipped"] == 1  # the gray photo: nothing to compare colour with
    # The labelled set says plainly why its judge did not run, rather than dropping the row.
    assert "no-judge" in tiny["judge_skipped"] and "judge_skipped" not in data["sets"][1]
    assert json.loads((out / "scorecard.json").read_text()) == data


def test_best_and_worst_sheets_are_ranked_by_gain_over_gray(card: tuple[Path, dict]) -> None:
    out, data = card
    for s in data["sets"]:
        gains = {}
        for entry in s["per_image"]:
            gains[entry["name"]] = np.mean([entry[GRAY]["delta_e"] - entry[m]["delta_e"] for m in ("cls", "reg")])
        best, worst = s["sheets"]["best"]["photos"], s["sheets"]["worst"]["photos"]
        assert len(best) == len(worst) == 2 and not set(best) & set(worst)
        ordered = sorted(gains, key=lambda n: -gains[n])
        assert best == ordered[:2] and worst == ordered[::-1][:2]  # each sheet starts with its extreme
        for kind in ("best", "worst"):
            path = out / s["sheets"][kind]["path"]
            assert path.stat().st_size < scorecard.SHEET_BYTES
            with Image.open(path) as sheet:
                assert sheet.format == "JPEG"
                # gray | cls | reg | truth: four cells and five paddings across, two rows of 48 px under a header.
                assert sheet.height == 20 + 2 * (48 + 4) + 4 and (sheet.width - 5 * 4) % 4 == 0


def test_films_and_black_and_white_sheet(card: tuple[Path, dict], eval_root: Path) -> None:
    out, data = card
    films = data["films"]
    (clip,) = films["clips"]
    assert clip["clip"] == "pan.mkv" and clip["frames"] == 6 and films["frames_per_clip"] == 6
    assert clip["cuts"] == [4]
    assert list(clip["rows"]) == [GRAY, "cls", "reg", TRUTH]
    for key, row in clip["rows"].items():
        assert row["frames"] == 6 and math.isfinite(row["warping_error"]), key
    assert clip["rows"][GRAY]["colourfulness"] == 0 and clip["rows"][TRUTH]["colourfulness"] > 10
    assert films["mean"]["cls"]["psnr"] == pytest.approx(clip["rows"]["cls"]["psnr"])
    # The films' CIEDE2000, on one pixel in 2x2: gray's is the whole frames' (the truth against its own lightness)
    # to within the lattice's sampling, and each model's is a colour difference of its own.
    assert films["delta_e_stride"] == 2
    truths = [frame.astype(np.float64) / 255 for frame in decode_rgb(eval_root / "video" / "pan.mkv")[:6]]
    whole = np.mean([metrics.delta_e_mean(np.repeat(_gray_of(t)[..., None], 3, axis=2), t) for t in truths])
    assert clip["rows"][GRAY]["delta_e"] == pytest.approx(whole, rel=0.1) and whole > 5
    assert all(0 < clip["rows"][key]["delta_e"] < 100 for key in ("cls", "reg"))
    assert films["mean"]["reg"]["delta_e"] == pytest.approx(clip["rows"]["reg"]["delta_e"])
    assert "CIEDE2000: gray" in (out / "scorecard.md").read_text()
    bw = data["bw"]
    assert bw["films"] == [{"film": "film.mkv", "frames": [1, 4]}]  # the middles of two equal stretches
    with Image.open(out / bw["sheet"]) as sheet:
        assert sheet.height == 20 + 2 * (48 + 4) + 4  # two frames; columns: the film, cls, reg (no truth)


def test_markdown_and_verdict(card: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, data = card
    table = (out / "scorecard.md").read_text()
    for text in ("## Summary", "### tiny_imagenet_val", "### val_split", "gray (ab = 0)", "| truth |",
                 "### Film clips (1 clips, first 6 frames a clip", "## Verdict against release 4's targets",
                 "- films: first 6 frames a clip; release 4's film target is on the whole clips (`--frames all`)",
                 "ImageNet judge not run", "sheets/bsds500_val_worst.jpg", "sheets/bw_films.jpg"):
        assert text in table, text
    # A limit that every clip ended before scored the whole clips: no caveat (a card of one clip 6 frames long).
    ended = json.loads(json.dumps(data))
    ended["films"]["frames_per_clip"] = 7
    ended["verdict"] = verdict(ended)
    assert ended["verdict"]["films_scope"] == "whole clips"
    whole = scorecard.scorecard_markdown(ended)
    assert "### Film clips (1 clips, whole clips" in whole and "film target is on" not in whole
    checks = data["verdict"]["checks"]
    # Per model: PSNR and colourfulness on five photo sets, and the films' PSNR and warping error.
    assert sum(1 for c in checks if c["model"] == "cls") == 5 * 2 + 2
    assert data["verdict"]["not_scored"] == ["ImageNet judge"]
    # --tables-only rebuilds the same tables from the JSON without scoring anything.
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "scorecard.json").write_text((out / "scorecard.json").read_text())
    assert scorecard.main(["--tables-only", "--out", str(copy)]) == 0
    assert (copy / "scorecard.md").read_text() == table
    # ... and from the compressed JSON the repository keeps in docs/.
    (copy / "scorecard.json").unlink()
    (copy / "scorecard.md").unlink()
    with gzip.open(copy / "scorecard.json.gz", "wt") as f:
        f.write((out / "scorecard.json").read_text())
    assert scorecard.main(["--tables-only", "--out", str(copy)]) == 0
    assert (copy / "scorecard.md").read_text() == table
    capsys.readouterr()


def _result(psnr: float, ratio: float, judge: float, film_psnr: float, warping: float) -> dict:
    """A card's figures, hand-made so each target can be met or missed by a hair."""
    judge_rows = {GRAY: {"top1": 0.10}, "m": {"top1": 0.10 + judge / 100}, TRUTH: {"top1": 0.2}}
    rows = {GRAY: {"psnr": 22.0}, "m": {"psnr": 22.0 + psnr, "colourfulness_ratio": ratio}}
    return {
        "models": [{"label": "m"}],
        "sets": [{"name": name, "rows": rows, **({"judge": judge_rows} if name == "tiny_imagenet_val" else {})}
                 for name in scorecard.DEV_SETS],
        "films": {"mean": {GRAY: {"psnr": 30.0}, "m": {"psnr": 30.0 + film_psnr, "warping_error": warping},
                           TRUTH: {"warping_error": 1.0}}},
    }


def test_verdict_thresholds() -> None:
    passing = verdict(_result(0.5, 0.7, 3.0, -2.5, 1.1))
    assert passing["misses"] == {"m": 0} and passing["not_scored"] == []
    assert len(passing["checks"]) == 4 * 2 + 1 + 2
    assert verdict(_result(0.5, 1.15, 3.0, -2.5, 1.1))["misses"] == {"m": 0}
    failing = verdict(_result(0.49, 1.16, 2.9, -2.6, 1.11))
    assert failing["misses"] == {"m": 11} and not any(c["passed"] for c in failing["checks"])
    assert verdict(_result(1.0, 0.69, 5.0, 0.0, 1.0))["misses"] == {"m": 4}  # too pale on every set
    nan = verdict(_result(math.nan, 1.0, 5.0, 0.0, 1.0))  # a figure that could not be measured never passes
    assert nan["misses"] == {"m": 4}


def _photo(truth: float, gray: float, model: float, colour: float) -> dict:
    return {"name": "p", "truth_colourfulness": truth, GRAY: {"psnr": gray},
            "m": {"psnr": model, "colourfulness": colour}}


def test_muted_photos_are_those_whose_truth_is_barely_colourful() -> None:
    sets = [{"name": "a", "per_image": [_photo(10.0, 30.0, 27.0, 25.0), _photo(scorecard.MUTED_BELOW, 30.0, 31.0, 5.0),
                                        _photo(50.0, 20.0, 22.0, 40.0)]},
            {"name": "b", "per_image": [_photo(14.0, 34.0, 33.0, 10.0)]},
            {"name": "c", "per_image": [_photo(40.0, 20.0, 21.0, 30.0)]}]
    muted = scorecard.muted_figures(sets, ["m"])
    assert muted is not None and muted["of_photos"] == 5
    assert list(muted["sets"]) == ["a", "b"]  # a set with no muted photo has no line; 20 itself is not muted
    assert muted["sets"]["a"]["photos"] == 1 and muted["sets"]["a"]["m"]["psnr_gain"] == pytest.approx(-3.0)
    assert muted["sets"]["a"]["m"]["colourfulness_ratio"] == pytest.approx(2.5)
    pooled = muted["pooled"]
    assert pooled["photos"] == 2 and pooled["gray_psnr"] == pytest.approx(32.0)
    assert pooled["m"]["psnr_gain"] == pytest.approx(-2.0)  # the mean of -3 and -1
    assert pooled["m"]["colourfulness_ratio"] == pytest.approx(17.5 / 12.0)  # a ratio of means
    assert scorecard.muted_figures([{"name": "c", "per_image": [_photo(40.0, 20.0, 21.0, 30.0)]}], ["m"]) is None


def test_the_card_shows_its_muted_photos(card: tuple[Path, dict]) -> None:
    _, data = card
    data = json.loads(json.dumps(data))  # the fixture is shared
    for s in data["sets"]:
        for i, photo in enumerate(s["per_image"]):
            photo["truth_colourfulness"] = 5.0 if i == 0 else 60.0
    table = scorecard.scorecard_markdown(data)
    muted = f"those whose truth's colourfulness is under {scorecard.MUTED_BELOW:g} ({len(data['sets'])} of "
    assert muted in table
    assert f"| **all sets** | {len(data['sets'])} |" in table
    for s in data["sets"]:
        s["per_image"] = [p for p in s["per_image"] if p["truth_colourfulness"] > 20]
    assert "Muted photos" not in scorecard.scorecard_markdown(data)


def test_cli_picks_sets_limits_photos_and_skips_films(eval_root: Path, tiny_checkpoint: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "card"
    code = scorecard.main([f"tiny={tiny_checkpoint}", "--eval-root", str(eval_root), "--sets", "bsds500_val",
                           "--data", f"extra={eval_root / 'scenes_intel_val'}", "--limit", "3", "--no-video",
                           "--no-bw", "--sheet-count", "1", "--cell-height", "32", "--render-size", "64",
                           "--engine", "torch", "--out", str(out)])
    assert code == 0
    assert "### bsds500_val (3 photos" in capsys.readouterr().out
    data = json.loads((out / "scorecard.json").read_text())
    assert [(s["name"], s["images"]) for s in data["sets"]] == [("bsds500_val", 3), ("extra", 3)]
    assert "films" not in data and "bw" not in data
    assert data["verdict"]["not_scored"] == ["tiny_imagenet_val", "faces_utk_val", "scenes_intel_val", "films",
                                             "ImageNet judge"]
    assert sorted(p.name for p in (out / "sheets").iterdir()) == [
        "bsds500_val_best.jpg", "bsds500_val_worst.jpg", "extra_best.jpg", "extra_worst.jpg"]


def test_each_model_is_loaded_once_for_every_set_and_film(eval_root: Path, tiny_checkpoint: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The figures, the sheets and the films come from the one engine each model is opened with (a grid of large
    decodings would otherwise hold two engines apiece and reload one per set)."""
    import tools.evaluate
    import worker.photos

    opened: list[str] = []
    for module in (worker.photos, tools.evaluate):
        real = module.create_engine

        def counting(*args, _real=real, **kwargs):  # type: ignore[no-untyped-def]
            opened.append(str(kwargs.get("model")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, "create_engine", counting)
    run_scorecard([ModelSpec.parse(f"tiny={tiny_checkpoint}")], tmp_path / "card", eval_root,
                  sets=["bsds500_val", "scenes_intel_val"], bw=False, options=OPTIONS,
                  judge_dir=eval_root / "no-judge")
    assert opened == [str(tiny_checkpoint)]


def test_a_card_with_nothing_to_check_says_so_rather_than_passing(card: tuple[Path, dict]) -> None:
    """The black-and-white films' sheet alone has no figure with a target: its verdict must not read as a pass."""
    _, data = card
    sheet_only = {**data, "sets": [], "films": None}
    sheet_only["verdict"] = verdict(sheet_only)
    assert sheet_only["verdict"]["checks"] == []
    verdict_part = scorecard.scorecard_markdown(sheet_only).split("## Verdict against release 4's targets")[1]
    assert "no model is judged by this card" in verdict_part
    assert "meets every target" not in verdict_part
    assert "not scored, so not checked: tiny_imagenet_val, faces_utk_val, scenes_intel_val, bsds500_val, films" \
        in verdict_part


def test_one_line_errors(eval_root: Path, tiny_checkpoint: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="unknown dev sets nope"):
        scorecard.main([str(tiny_checkpoint), "--eval-root", str(eval_root), "--sets", "nope", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="missing_dir/tiny_imagenet_val: not found"):
        scorecard.main([str(tiny_checkpoint), "--eval-root", str(tmp_path / "missing_dir"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="two models labelled tiny"):
        scorecard.main([str(tiny_checkpoint), str(tiny_checkpoint), "--eval-root", str(eval_root), "--out",
                        str(tmp_path)])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="cannot load model .*junk.pt: not a readable checkpoint"):
        scorecard.main([str(junk), "--eval-root", str(eval_root), "--sets", "bsds500_val", "--no-video", "--no-bw",
                        "--out", str(tmp_path / "junk-card")])
    assert not (tmp_path / "junk-card" / "scorecard.json").exists()
    with pytest.raises(SystemExit, match="--data mine=s3://photos/mine/: the scorecard reads local folders and .zip"):
        scorecard.main([str(tiny_checkpoint), "--sets", "none", "--no-video", "--no-bw", "--data",
                        "mine=s3://photos/mine/", "--out", str(tmp_path / "s3-card")])
    for frames in ("0", "-3", "ten"):
        with pytest.raises(SystemExit):
            scorecard.main([str(tiny_checkpoint), "--frames", frames, "--out", str(tmp_path)])
        assert (f"argument --frames: expected a positive number of frames or 'all', got '{frames}'"
                in capsys.readouterr().err)
    with pytest.raises(ValueError, match="name the baseline rows"):
        ModelSpec.parse("gray=default")
    assert ModelSpec.parse("default") == ModelSpec("default", "default")
    assert ModelSpec.parse("/x/release1.pt") == ModelSpec("release1", "/x/release1.pt")
    with pytest.raises(ValueError, match="NAME=PATH"):
        PhotoSet.parse("no-name")


def test_judge_sees_the_same_photos_as_the_other_figures(card: tuple[Path, dict], eval_root: Path) -> None:
    """labels.csv names six photos; the gray one is skipped by evaluation and so by the judge too. Without a judge
    model the card says why, and how many photos it would have judged."""
    tiny = card[1]["sets"][0]
    assert tiny["name"] == "tiny_imagenet_val" and tiny["images"] == 5 and tiny["judge_images"] == 5
    assert "no-judge" in tiny["judge_skipped"]
    label_of = scorecard._photo_labels(PhotoSet("tiny", str(eval_root / "tiny_imagenet_val")), None)
    assert [label_of(e["name"]) for e in tiny["per_image"]] == [1, 2, 3, 1, 2]


def test_a_training_archive_filed_by_class_is_labelled_through_the_class_table(eval_root: Path, tmp_path: Path) -> None:
    """Tiny-ImageNet's training zip files photos under <wnid>/: with --judge-classes (a table with wnid and
    judge_index, like tiny_imagenet_val's labels.csv) its validation split can be judged; photos in folders the table
    does not know, or at the archive's top, are left out, and a set of faces gets no judge row at all."""
    archive = tmp_path / "train.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, folder in enumerate(["n00000001", "n00000002", "n09999999", "."] * 8):
            photo = tmp_path / "photo.png"
            Image.fromarray(gradient_image(32, 40, seed=i)).save(photo)
            zf.write(photo, f"{folder}/p{i:02d}.png" if folder != "." else f"top{i:02d}.png")
    table = eval_root / "tiny_imagenet_val" / "labels.csv"  # n00000001 -> 2, n00000002 -> 3 (the fixture's rows)
    split = PhotoSet("tiny_imagenet", str(archive), val_split=0.5)
    label_of = scorecard._photo_labels(split, str(table))
    scored = [p.name for p in iter_truth_photos(split.path, None, keep=split.keep())]
    labelled = {n.partition("!")[2]: label_of(n) for n in scored if label_of(n) is not None}
    held_out = [n for i, n in enumerate([f"n0000000{k}/p{i:02d}.png" for i, k in enumerate([1, 2, 0, 0] * 8)])
                if n[8] in "12" and in_holdout(n, 0.5)]
    assert sorted(labelled) == sorted(held_out) and len(held_out) >= 3
    assert all(label == (2 if name.startswith("n00000001/") else 3) for name, label in labelled.items())
    assert scorecard._photo_labels(split, None) is None  # no table: no labels, no judge
    faces = PhotoSet("faces", str(eval_root / "faces_utk_val"))
    faces_judge = scorecard._SetJudge(scorecard._photo_labels(faces, str(table)), [], eval_root / "no-judge", "faces")
    for photo in iter_truth_photos(faces.path, None):
        faces_judge.see(photo.name, [])
    assert faces_judge.result() == {}
    (tmp_path / "clash.csv").write_text("wnid,judge_index\nn1,4\nn1,5\n")
    with pytest.raises(ValueError, match="clash.csv: n1 is given judge indices 4 and 5"):
        scorecard.read_class_table(tmp_path / "clash.csv")
    (tmp_path / "bare.csv").write_text("file,judge_index\na.png,1\n")
    with pytest.raises(ValueError, match="bare.csv: needs the columns wnid and judge_index"):
        scorecard.read_class_table(tmp_path / "bare.csv")


@needs_shared_judge
def test_judge_row_with_the_real_judge(eval_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The judge reads the pictures the evaluation made, and scores them as judging them apart would."""
    photo_set = PhotoSet("tiny_imagenet_val", str(eval_root / "tiny_imagenet_val"))
    models = [ModelSpec("cls", str(tiny_checkpoint))]
    with scorecard._colorizers(models, OPTIONS) as colorizers:
        result = scorecard.score_photo_set(photo_set, models, colorizers, tmp_path, SHARED_JUDGE, OPTIONS)
    assert result["judge_images"] == 5
    assert list(result["judge"]) == [GRAY, TRUTH, "cls"]
    label_of = scorecard._photo_labels(photo_set, None)
    photos = [LabelledPhoto(p.name, as_uint8(p.rgb), frozenset({label_of(p.name)}))
              for p in iter_truth_photos(photo_set.path, None)]
    apart = judge_models(ImageNetJudge(SHARED_JUDGE), photos, [("cls", str(tiny_checkpoint))],
                         render_size=OPTIONS.render_size, engine_kind="torch", precision="fp32", batch_size=3)
    for key, row in result["judge"].items():
        assert row == apart[{GRAY: GRAY_LABEL, TRUTH: TRUTH_LABEL}.get(key, key)], key


def test_val_split_scores_the_photos_training_held_out(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """``--val-split F`` on a folder and on a zip of the same photos scores exactly the photos that
    ``tools.datasets``' hash split holds out of training, named as training names them."""
    folder = tmp_path / "source"
    names = _photos(folder / "sub", 40, (24, 20), seed=200)
    archive = tmp_path / "source.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in names:
            zf.write(folder / "sub" / name, f"sub/{name}")
    held_out = sorted(f"sub/{n}" for n in names if in_holdout(f"sub/{n}", 0.25))
    assert 0 < len(held_out) < 40  # a real split: some photos in, most out
    out = tmp_path / "card"
    assert scorecard.main([f"tiny={tiny_checkpoint}", "--sets", "none", "--no-video", "--no-bw", "--eval-root",
                           str(tmp_path / "unused"), "--data", f"folder={folder}", "--data", f"zip={archive}",
                           "--val-split", "0.25", "--sheet-count", "1", "--cell-height", "24", "--render-size", "64",
                           "--engine", "torch", "--out", str(out)]) == 0
    data = json.loads((out / "scorecard.json").read_text())
    folder_set, zip_set = data["sets"]
    assert folder_set["val_split"] == zip_set["val_split"] == 0.25
    assert sorted(Path(e["name"]).relative_to(folder).as_posix() for e in folder_set["per_image"]) == held_out
    assert sorted(e["name"].partition("!")[2] for e in zip_set["per_image"]) == held_out
    assert "validation split 0.25" in (out / "scorecard.md").read_text()


def test_parts_scored_apart_merge_into_one_card(eval_root: Path, tiny_checkpoint: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Photo sets in one run, films and the black-and-white sheet in another (side by side on a busy machine):
    the merged card holds both, its sheets and one verdict over everything."""
    common = [f"tiny={tiny_checkpoint}", "--eval-root", str(eval_root), "--frames", "4", "--bw-frames", "1",
              "--sheet-count", "1", "--cell-height", "32", "--render-size", "64", "--engine", "torch"]
    photos, films, merged = tmp_path / "photos", tmp_path / "films", tmp_path / "merged"
    assert scorecard.main([*common, "--sets", "bsds500_val,faces_utk_val", "--no-video", "--no-bw",
                           "--out", str(photos)]) == 0
    assert scorecard.main([*common, "--sets", "none", "--frames", "all", "--out", str(films)]) == 0
    assert scorecard.main(["--merge", str(photos), str(films), "--out", str(merged)]) == 0
    assert "Merged from parts scored side by side: bsds500_val, faces_utk_val" in capsys.readouterr().out
    data = json.loads((merged / "scorecard.json").read_text())
    assert [s["name"] for s in data["sets"]] == ["bsds500_val", "faces_utk_val"]
    # --frames all: every frame of the 8-frame clip, as release 4's target reads the films, so no caveat.
    assert data["films"]["frames_per_clip"] == 0 and data["bw"]["films"][0]["film"] == "film.mkv"
    (clip,) = data["films"]["clips"]
    assert clip["frames"] == 8 and all(row["frames"] == 8 for row in clip["rows"].values())
    table = (merged / "scorecard.md").read_text()
    assert "### Film clips (1 clips, whole clips, smoothing" in table and "films, bw (whole clips" in table
    assert "release 4's film target" not in table
    assert {c["check"] for c in data["verdict"]["checks"]} >= {"films: mean PSNR - gray's",
                                                               "bsds500_val: PSNR - gray's"}
    assert data["verdict"]["not_scored"] == ["tiny_imagenet_val", "scenes_intel_val", "ImageNet judge"]
    for s in data["sets"]:
        assert (merged / s["sheets"]["best"]["path"]).is_file()
    assert (merged / data["bw"]["sheet"]).is_file()
    assert data["finished_at"] is not None and [p["scored"] for p in data["parts"]] == [
        ["bsds500_val", "faces_utk_val"], ["films", "bw"]]

    with pytest.raises(SystemExit, match="scored by two of the parts"):
        scorecard.main(["--merge", str(photos), str(photos), "--out", str(tmp_path / "twice")])
    other = tmp_path / "other"
    assert scorecard.main([f"other={tiny_checkpoint}", "--eval-root", str(eval_root), "--sets", "scenes_intel_val",
                           "--no-video", "--no-bw", "--limit", "2", "--render-size", "64", "--engine", "torch",
                           "--out", str(other)]) == 0
    with pytest.raises(SystemExit, match="only cards of the same models merge"):
        scorecard.main(["--merge", str(photos), str(other), "--out", str(tmp_path / "mixed")])


def test_film_clips_scored_by_different_parts_merge(card: tuple[Path, dict]) -> None:
    _, data = card
    films = data["films"]
    labels = ["cls", "reg"]
    (clip,) = films["clips"]
    shifted = {key: {**row, "psnr": row["psnr"] + 2} if key != TRUTH else row for key, row in clip["rows"].items()}
    other = {**films, "data": "elsewhere", "clips": [{**clip, "clip": "another.mkv", "rows": shifted}]}
    merged = scorecard._merge_films(films, other, labels)
    assert [c["clip"] for c in merged["clips"]] == ["another.mkv", "pan.mkv"]
    assert merged["mean"]["cls"]["psnr"] == pytest.approx(clip["rows"]["cls"]["psnr"] + 1)  # each clip counts once
    assert merged["mean"]["cls"]["warping_error"] == pytest.approx(clip["rows"]["cls"]["warping_error"])
    with pytest.raises(ValueError, match="scored by two of the parts: pan.mkv"):
        scorecard._merge_films(films, films, labels)
    with pytest.raises(ValueError, match="differ in frames_per_clip"):
        scorecard._merge_films(films, {**other, "frames_per_clip": 99}, labels)
    with pytest.raises(ValueError, match="differ in delta_e_stride"):
        scorecard._merge_films(films, {**other, "delta_e_stride": 1}, labels)


def test_a_film_card_from_before_the_films_colour_difference_still_reads(card: tuple[Path, dict]) -> None:
    """Cards made before the films' CIEDE2000 was scored have no such figure: their table shows "-" and says so."""
    _, data = card
    films = {key: value for key, value in data["films"].items() if key != "delta_e_stride"}
    films["clips"] = [{**clip, "rows": {key: {m: v for m, v in row.items() if m != "delta_e"}
                                        for key, row in clip["rows"].items()}} for clip in films["clips"]]
    films["mean"] = scorecard.films_mean(films["clips"], ["cls", "reg"])
    assert math.isnan(films["mean"]["cls"]["delta_e"]) and math.isfinite(films["mean"]["cls"]["psnr"])
    table = "\n".join(scorecard._films_table(films, ["cls", "reg"]))
    assert "no CIEDE2000" in table and "| - | - | - |" in table
