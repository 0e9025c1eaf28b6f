"""``tools promote --choose``: a grid of decodings scored on the photos a run held out, the campaign's rule applied,
and the winner shipped with the figures that chose it; on generated photos in a folder and in moto's S3."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import load_checkpoint, save_checkpoint
from models.color import HighlightRolloff
from models.predictor import DecodeOptions
from models.registry import create_model
from tests.conftest import SHARED_JUDGE, gradient_image, needs_shared_judge
from tests.services import env_for_workers, get_object, put_object
from tests.test_finetune import png, run_tool, train_command, use_env
from tools import promote
from tools.ab_prior import measure_ab_prior
from tools.choose_decoding import GridAxis, apply_rule, grid, held_out_sets
from tools.datasets import in_holdout
from tools.scorecard import ModelSpec, PhotoSet, ScorecardOptions, Targets, run_scorecard

SPLIT = 0.5


def photo_names(count: int) -> list[str]:
    return [f"p{i:02d}.png" for i in range(count)]


@pytest.fixture
def run_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny classification model saved as a training run with half of its folder held out, and that folder."""
    photos = tmp_path / "collection"
    photos.mkdir()
    for i, name in enumerate(photo_names(12)):
        Image.fromarray(gradient_image(96, 128, seed=i)).save(photos / name)
    torch.manual_seed(0)
    model = create_model("effnet_unet", pretrained=False, decoder_channels=(32, 24, 16))
    path = tmp_path / "run" / "model.pt"
    prior = measure_ab_prior([str(photos)], crop=64, batches=2, batch_size=4)  # decode-time rebalancing needs it
    save_checkpoint(path, model, provenance={"data": [str(photos)], "val_split": SPLIT},
                    decode=DecodeOptions(ab_prior=prior))
    return path, photos


def rule_by_hand(card: dict, labels: list[str], min_gain: float, low: float, high: float) -> str:
    """The rule as docs/training.md states it, computed from the card's rows without tools.choose_decoding: the most
    checks met, then the highest mean PSNR gain."""
    rows = [s["rows"] for s in card["sets"]]
    ranked = []
    for i, label in enumerate(labels):
        gains = [r[label]["psnr"] - r["gray"]["psnr"] for r in rows]
        met = sum(g >= min_gain for g in gains) + sum(low <= r[label]["colourfulness_ratio"] <= high for r in rows)
        ranked.append((met, float(np.mean(gains)), -i))  # ties: the earlier in the grid
    return labels[-max(ranked)[2]]


# --- the grid and the rule --------------------------------------------------------------------------------------


def test_a_grid_is_every_combination_in_order():
    decodings = grid([GridAxis.parse("temperature=0.3,0.5"), GridAxis.parse("render_size=96,128,96")])
    assert [d.label for d in decodings] == ["temperature 0.3, render-size 96", "temperature 0.3, render-size 128",
                                            "temperature 0.5, render-size 96", "temperature 0.5, render-size 128"]
    assert decodings[3].rendering() == {"render_size": 128}
    assert decodings[3].to_dict() == {"temperature": 0.5, "render_size": 128}
    (small,) = grid([GridAxis.parse("min-render-size=192"), GridAxis.parse("method=mode")])
    assert small.rendering() == {"min_render_size": 192} and small.label == "min-render-size 192, method mode"
    off, soft = grid([GridAxis.parse("highlight-rolloff=off,80/95/0.4")])
    assert (off.label, soft.label) == ("highlight-rolloff off", "highlight-rolloff 80/95/0.4")
    assert soft.rendering() == {"highlight_rolloff": HighlightRolloff(80, 95, 0.4)}
    assert off.to_dict() == {"highlight_rolloff": "off"} and off.rendering()["highlight_rolloff"].is_identity


@pytest.mark.parametrize(("texts", "message"), [
    (["temperature=0,0.5"], "'0' is not a temperature"),
    (["colour=1,2"], "AXIS one of temperature, rebalance, method, render-size, min-render-size, highlight"),
    (["method=mode,median"], "'median' is not a method"),
    (["render-size=16"], "at least 32"),
    (["min-render-size=-1"], "'-1' is not a min-render-size"),
    (["highlight-rolloff=80,95,0.4"], "'80' is not a highlight-rolloff"),
    (["rebalance="], "no values to try"),
    (["rebalance=0.2", "rebalance=0.4"], "names rebalance twice"),
])
def test_a_bad_grid_is_one_line_naming_the_axis(texts, message):
    with pytest.raises(ValueError, match=message) as exc:
        grid([GridAxis.parse(text) for text in texts])
    assert "\n" not in str(exc.value)


def card_of(sets: dict[str, dict[str, tuple[float, float]]], judge: dict[str, float] | None = None) -> dict:
    """A scorecard's set rows: per set, per label, (PSNR gain over a 20 dB gray, colour ratio); ``judge``, each
    label's top-1 on every set (gray's 0.1, the truth's 0.2)."""
    return {"sets": [{"name": name, "val_split": 0.02, "images": 10, "per_image": [],
                      "rows": {"gray": {"psnr": 20.0}, "truth": {"colourfulness": 30.0},
                               **{label: {"psnr": 20.0 + gain, "colourfulness_ratio": ratio}
                                  for label, (gain, ratio) in rows.items()}}}
                     | ({"judge": {"gray": {"top1": 0.1}, "truth": {"top1": 0.2},
                                   **{label: {"top1": top1} for label, top1 in judge.items()}}} if judge else {})
                     for name, rows in sets.items()]}


def test_the_rule_takes_the_most_checks_then_the_best_mean_gain():
    decodings = grid([GridAxis.parse("rebalance=0,0.3,0.6,0.9")])
    a, b, c, d = (x.label for x in decodings)
    card = card_of({
        "scenes": {a: (2.0, 0.50), b: (1.5, 0.72), c: (1.0, 0.80), d: (3.0, 1.30)},  # a pale, d garish
        "faces": {a: (4.0, 0.60), b: (0.6, 0.90), c: (1.2, 1.00), d: (3.0, 1.10)},
    })
    choice = apply_rule(card, decodings)
    # b and c meet all four checks; c has the higher mean gain (1.1 against 1.05) though b wins on scenes. a and d,
    # with the highest gains, miss colour checks.
    assert [row["checks_met"] for row in choice.rows] == [2, 4, 4, 3]
    assert choice.decoding_label == c and choice.misses() == []
    assert choice.rows[2]["mean_psnr_gain"] == pytest.approx(1.1)
    assert f"**{c}** (chosen)" in choice.table() and "4 of 4" in choice.table()
    # Equal checks and means: the earlier decoding of the grid.
    tied = card_of({"scenes": {a: (1.0, 0.8), b: (1.0, 0.8), c: (0.5, 0.8), d: (0.0, 0.8)}})
    assert apply_rule(tied, decodings).decoding_label == a
    # Nothing meets every check: the most met still chooses, and what it misses is said.
    strict = apply_rule(card, decodings, Targets(psnr_over_gray_db=1.2, colourfulness_ratio=(0.7, 1.15)))
    assert strict.decoding_label == d  # 3 checks (both PSNR, faces' colour) against b's 2 and c's 3 at a lower gain
    assert strict.misses() == ["scenes colour 1.300 (within 0.7-1.15)"]


def test_the_judge_is_reported_beside_the_rule_and_does_not_change_it():
    decodings = grid([GridAxis.parse("temperature=0.4,0.6")])
    low_t, high_t = (d.label for d in decodings)
    card = card_of({"tiny": {low_t: (1.0, 0.8), high_t: (0.8, 0.9)}}, judge={low_t: 0.11, high_t: 0.15})
    choice = apply_rule(card, decodings)
    assert choice.decoding_label == low_t  # the higher gain, though the judge prefers the other
    assert choice.rows[1]["sets"]["tiny"]["judge_top1"] == 0.15 and choice.sets[0]["judge_gray_top1"] == 0.1
    assert "tiny: judge (gray 10.0%)" in choice.table() and "| 15.0% |" in choice.table()


# --- which photos choose ----------------------------------------------------------------------------------------


def test_the_runs_own_held_out_split_chooses_and_nothing_it_trained_on():
    run = {"data": ["data/scenes.zip:2", "data/faces"], "val_split": 0.02}
    assert held_out_sets(run) == [PhotoSet("scenes", "data/scenes.zip", 0.02),
                                  PhotoSet("faces", "data/faces", 0.02)]
    assert held_out_sets(run, val_split=0.01)[0].val_split == 0.01
    assert held_out_sets(run, ["mine=other/photos"]) == [PhotoSet("mine", "other/photos", 0.0)]
    for provenance, extra, split, message in [
        ({"data": ["data/faces"], "val_split": 0.0}, [], None, "held no photos out"),
        ({}, [], None, "records no training data"),
        (run, [], 0.05, "a larger split holds photos it trained on"),
        (run, ["faces=data/faces"], None, "the run trained on these photos; choose on its held-out split"),
    ]:
        with pytest.raises(ValueError, match=message):
            held_out_sets(provenance, extra, split)


# --- end to end --------------------------------------------------------------------------------------------------


def test_promote_chooses_on_the_held_out_photos_and_ships_what_it_scored(run_checkpoint, tmp_path, capsys):
    checkpoint, photos = run_checkpoint
    shipped, card_dir = tmp_path / "shipped.pt", tmp_path / "card"
    assert promote.main([str(checkpoint), "-o", str(shipped), "--choose", "rebalance=0,1.5",
                         "--choose", "render-size=64,96", "--colour-range", "0.2,2", "--choice-card", str(card_dir),
                         "--precision", "fp32"]) == 0
    card = json.loads((card_dir / "scorecard.json").read_text())
    held = sorted(name for name in photo_names(12) if in_holdout(name, SPLIT))
    assert 0 < len(held) < 12
    assert [s["images"] for s in card["sets"]] == [len(held)]  # the held-out half, nothing the run trained on
    labels = [m["label"] for m in card["models"]]
    assert len(labels) == 4
    assert card["models"][0]["model"] == f"{checkpoint}, {labels[0]}"  # not the scratch file it was scored from
    assert "tinct-choose-" not in (card_dir / "scorecard.md").read_text()

    result = load_checkpoint(shipped)
    record = result.provenance["decoding_choice"]
    assert record["chosen"] == rule_by_hand(card, labels, 0.5, 0.2, 2)
    assert record["sets"][0] | {"name": "collection", "source": str(photos), "val_split": SPLIT} == record["sets"][0]
    assert [row["label"] for row in record["grid"]] == labels and record["engine"] == "torch cpu fp32"
    chosen = next(row for row in record["grid"] if row["label"] == record["chosen"])
    assert result.decode["rebalance"] == chosen["settings"]["rebalance"]
    ratios = [row["sets"]["collection"]["colourfulness_ratio"] for row in record["grid"]]
    assert min(ratios[2:]) > 1.5 * max(ratios[:2])  # rebalancing colours this model: the grid's rows do differ
    # Only the rebalanced rows pass the colour check: the rule takes one although it loses more PSNR.
    assert chosen["settings"]["rebalance"] == 1.5 and chosen["checks_met"] == 1
    assert result.provenance["render_size"] == chosen["settings"]["render_size"]
    assert f"chosen: {record['chosen']}" in capsys.readouterr().out

    # What shipped scores what was chosen: the written checkpoint alone, on the same split, gives the same figures.
    again = run_scorecard([ModelSpec("shipped", str(shipped))], tmp_path / "again", eval_root=None, sets=(),
                          extra_sets=[PhotoSet("collection", str(photos), SPLIT)], video=False, bw=False,
                          options=ScorecardOptions(engine_kind="torch", precision="fp32"))
    rows = again.data["sets"][0]["rows"]
    assert rows["shipped"]["psnr"] - rows["gray"]["psnr"] == pytest.approx(chosen["sets"]["collection"]["psnr_gain"])

    # Re-promoting with another decoding drops the record: it would describe what no longer ships.
    assert promote.main([str(shipped), "-o", str(tmp_path / "other.pt"), "--temperature", "0.5"]) == 0
    assert "decoding_choice" not in load_checkpoint(tmp_path / "other.pt").provenance
    assert promote.main([str(shipped), "-o", str(tmp_path / "same.pt")]) == 0
    assert load_checkpoint(tmp_path / "same.pt").provenance["decoding_choice"] == record


def test_a_choice_that_misses_checks_says_which(run_checkpoint, tmp_path, capsys):
    checkpoint, _ = run_checkpoint
    assert promote.main([str(checkpoint), "-o", str(tmp_path / "out.pt"), "--choose", "method=mode,mean",
                         "--choose-val-split", "0.25", "--colour-range", "50,60", "--min-psnr-gain", "-100",
                         "--render-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 checks; it misses collection colour" in out and "(within 50-60)" in out
    assert load_checkpoint(tmp_path / "out.pt").provenance["decoding_choice"]["psnr_over_gray_db"] == -100


@pytest.mark.parametrize(("args", "message"), [
    (["--choose", "temperature=0.3,0.5", "--temperature", "0.4"], "--temperature and --choose temperature=..."),
    (["--choose-on", "x=y"], "need a grid"),
    (["--choose", "temperature=0.3", "--colour-range", "1"], "--colour-range 1: expected LOW,HIGH"),
])
def test_conflicting_choosing_options_are_one_line(run_checkpoint, tmp_path, capsys, args, message):
    checkpoint, _ = run_checkpoint
    with pytest.raises(SystemExit):
        promote.main([str(checkpoint), "-o", str(tmp_path / "out.pt"), *args])
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.pt").exists()


def test_a_tune_on_s3_photos_chooses_on_its_held_out_objects_only(tmp_path, s3_server, monkeypatch):
    """The README's recipe: tune the shipped model on an S3 prefix holding half out, then choose and publish."""
    for bucket in ("photos", "models"):
        s3_server.make_bucket(bucket)
    names = photo_names(10)
    for i, name in enumerate(names):
        put_object(s3_server, f"s3://photos/colour-1950s/{name}", png(gradient_image(96, 96, seed=i)))
    run_dir = tmp_path / "run"
    done = run_tool(train_command("--init", "default", "--data", "s3://photos/colour-1950s/", "--val-split",
                                  str(SPLIT), "--run-dir", str(run_dir)),
                    env_for_workers(s3_server=s3_server, base=os.environ, cache_dir=tmp_path / "tool-cache"))
    assert done.returncode == 0, done.stderr[-2000:]
    checkpoint = run_dir / "model.pt"
    use_env(monkeypatch, env_for_workers(s3_server=s3_server))
    assert promote.main([str(checkpoint), "-o", "s3://models/store/archive-1950s.pt", "--choose",
                         "temperature=0.3,0.6", "--render-size", "64",
                         "--choice-card", str(tmp_path / "card")]) == 0
    published = tmp_path / "published.pt"
    published.write_bytes(get_object(s3_server, "s3://models/store/archive-1950s.pt"))
    record = load_checkpoint(published).provenance["decoding_choice"]
    held = [name for name in names if in_holdout(name, SPLIT)]
    assert record["sets"][0]["photos"] == len(held) and record["sets"][0]["source"] == "s3://photos/colour-1950s/"
    card = json.loads((tmp_path / "card" / "scorecard.json").read_text())
    scored = sorted(Path(p["name"]).name for p in card["sets"][0]["per_image"])
    assert scored == sorted(held)


@needs_shared_judge
def test_the_real_judge_scores_each_decoding_on_photos_filed_by_class(tmp_path: Path, capsys):
    photos = tmp_path / "classes"
    for i in range(12):
        folder = photos / ("n01443537" if i % 2 else "n01629819")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gradient_image(64, 64, seed=i)).save(folder / f"p{i:02d}.png")
    table = tmp_path / "classes.csv"
    table.write_text("wnid,judge_index\nn01443537,1\nn01629819,2\n")
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, create_model("effnet_unet", pretrained=False, decoder_channels=(32, 24, 16)),
                    provenance={"data": [str(photos)], "val_split": SPLIT})
    assert promote.main([str(checkpoint), "-o", str(tmp_path / "out.pt"), "--choose", "temperature=0.3,0.6",
                         "--render-size", "64", "--judge-model", str(SHARED_JUDGE), "--judge-classes", str(table)]) == 0
    record = load_checkpoint(tmp_path / "out.pt").provenance["decoding_choice"]
    assert 0 <= record["sets"][0]["judge_gray_top1"] <= 1
    assert all(0 <= row["sets"]["classes"]["judge_top1"] <= 1 for row in record["grid"])
    assert "classes: judge (gray " in capsys.readouterr().out
