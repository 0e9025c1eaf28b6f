"""``python -m tools adapt-encoder``: a real ImageNet encoder taught on generated colour photos, resumed, refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from models.checkpoint import load_checkpoint, save_checkpoint
from models.registry import create_model
from tests.conftest import gradient_image
from tools.adapt_encoder import main as adapt_main
from tools.train import main as train_main

SMALL = ["--batch-size", "4", "--crop", "64", "--min-object-side", "0", "--warmup-steps", "2", "--val-crops", "16",
         "--log-every", "5", "--threads", "1"]


@pytest.fixture(scope="module")
def colour_photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("colour")
    for i in range(24):
        Image.fromarray(gradient_image(72 + 4 * (i % 5), 80, seed=100 + i)).save(root / f"c{i}.png")
    return root


def imagenet_checkpoint(folder: Path, **options) -> Path:
    """A small colorizer on ImageNet's Lite0, the encoder adapt-encoder is for."""
    torch.manual_seed(0)
    model = create_model("effnet_unet", pretrained=True, decoder_channels=(32, 24, 16), **options)
    path = folder / "parent.pt"
    save_checkpoint(path, model, provenance={"purpose": "tests"}, half=True)
    return path


def states(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).float_state()


def test_adapting_brings_the_gray_view_towards_the_colour_view_and_moves_nothing_else(tmp_path, colour_photos):
    parent = imagenet_checkpoint(tmp_path)
    run = tmp_path / "run"
    assert adapt_main([str(parent), "--data", str(colour_photos), "--val-split", "0.3", "--steps", "30", "--lr",
                       "1e-4", "--eval-every", "15", "--run-dir", str(run), *SMALL]) == 0

    adapted = load_checkpoint(run / "model.pt")
    record = adapted.provenance["encoder_adaptations"][-1]
    assert adapted.provenance["purpose"] == "tests"  # the parent's provenance stays whole
    assert record["steps"] == 30 and record["final"] and record["levels"] == ["stride16", "stride32", "embedding"]
    assert record["from"]["checkpoint"] == str(parent) and record["teacher"] == "ImageNet EfficientNet-Lite0"
    line = record["held_out_distance"]
    assert [m["step"] for m in line] == [0, 15, 30]
    assert line[-1]["total"] < 0.75 * line[0]["total"], line  # the held-out photos, never trained on
    assert adapted.decode == load_checkpoint(parent).decode

    before, after = states(parent), states(run / "model.pt")
    assert before.keys() == after.keys()  # the borrowed classifier head is left behind
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all(k.startswith("encoder.") for k in moved)  # the decoder is untouched
    assert not [k for k in moved if "running_" in k or "num_batches" in k]  # ImageNet's statistics stay
    assert any(k.startswith("encoder._conv_stem") for k in moved) and any(k.startswith("encoder._blocks.15.")
                                                                          for k in moved)

    # The decoder then trains on the adapted encoder, which stays as adapted while frozen.
    trained = tmp_path / "decoder"
    assert train_main(["--init", str(run / "model.pt"), "--data", str(colour_photos), "--steps", "2",
                       "--freeze-encoder-steps", "2", "--batch-size", "2", "--crop", "64", "--run-dir",
                       str(trained)]) == 0
    decoder_run = states(trained / "model.pt")
    assert all(torch.equal(decoder_run[k], after[k]) for k in after if k.startswith("encoder."))
    assert any(not torch.equal(decoder_run[k], after[k]) for k in after if k.startswith("up"))


def test_a_stopped_adaptation_resumes_where_it_stopped_and_a_context_models_own_head_learns(tmp_path, colour_photos):
    parent = imagenet_checkpoint(tmp_path, global_context=True)
    run = tmp_path / "run"
    common = ["--val-split", "0.3", "--eval-every", "3", "--save-every", "3", "--run-dir", str(run), *SMALL]
    assert adapt_main([str(parent), "--data", str(colour_photos), "--steps", "3", *common]) == 0
    first = states(run / "model.pt")
    assert adapt_main(["--resume", "--steps", "6", *common]) == 0

    record = load_checkpoint(run / "model.pt").provenance["encoder_adaptations"]
    assert len(record) == 1 and record[0]["steps"] == 6
    assert [m["step"] for m in record[0]["held_out_distance"]] == [0, 3, 6]
    second = states(run / "model.pt")
    assert not torch.equal(first["encoder._conv_head.weight"], second["encoder._conv_head.weight"])
    assert torch.equal(first["encoder._bn1.running_var"], states(parent)["encoder._bn1.running_var"])

    # Adapting the adapted model again keeps the first adaptation's record beside the new one.
    again = tmp_path / "again"
    assert adapt_main([str(run / "model.pt"), "--data", str(colour_photos), "--steps", "1", "--run-dir", str(again),
                       *SMALL]) == 0
    records = load_checkpoint(again / "model.pt").provenance["encoder_adaptations"]
    assert [r["steps"] for r in records] == [6, 1] and records[1]["held_out_distance"] == []


def test_a_checkpoint_whose_encoder_is_still_imagenets_teaches_as_the_installed_weights_do(tmp_path, colour_photos):
    # A global-context model keeps its encoder's classifier head: with the encoder untrained, its checkpoint holds
    # ImageNet's teacher (stored in fp16 here, so the distances agree to rounding, not to the bit).
    parent = imagenet_checkpoint(tmp_path, global_context=True)
    distances = {}
    for teacher in ("imagenet", str(parent)):
        run = tmp_path / f"run-{len(distances)}"
        assert adapt_main([str(parent), "--data", str(colour_photos), "--val-split", "0.3", "--steps", "1",
                           "--teacher", teacher, "--run-dir", str(run), *SMALL]) == 0
        record = load_checkpoint(run / "model.pt").provenance["encoder_adaptations"][-1]
        distances[teacher] = record["held_out_distance"][0]
    assert record["teacher"] == f"the encoder of {load_checkpoint(parent).label} ({parent})"
    own, installed = distances[str(parent)], distances["imagenet"]
    assert 0 < own["total"] == pytest.approx(installed["total"], rel=0.02), (own, installed)


@pytest.mark.parametrize("args, reason", [
    (["--strides", "16", "7"], "--strides 16 7: choose among (2, 4, 8, 16, 32) (not 7)"),
    (["--resume"], "does not exist (nothing to continue)"),
    (["--teacher", "{parent}"], "its encoder has no classifier head (_bn1, _conv_head), which the embedding is read"),
])
def test_bad_settings_are_one_line_errors(tmp_path, colour_photos, capsys, args, reason):
    parent = imagenet_checkpoint(tmp_path)
    with pytest.raises(SystemExit) as stop:
        adapt_main([str(parent), "--data", str(colour_photos), "--run-dir", str(tmp_path / "run"),
                    *(a.format(parent=parent) for a in args)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_a_model_without_an_efficientnet_encoder_is_refused_naming_the_file(tmp_path, colour_photos, capsys):
    path = tmp_path / "unet.pt"
    save_checkpoint(path, create_model("unet"), provenance={})
    with pytest.raises(SystemExit) as stop:
        adapt_main([str(path), "--data", str(colour_photos), "--run-dir", str(tmp_path / "run")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert f"{path}: a 'unet' model has no EfficientNet-Lite encoder to teach" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


# The same distance kept as a term while `tools train` trains the encoder for colour (--encoder-distill-weight).

def _encoder_distance(checkpoint: Path, colour_photos: Path) -> float:
    """The held-out distance of a checkpoint's encoder from ImageNet's view of the colour crops (all three levels)."""
    from tools.adapt_encoder import build_student, held_out_distance
    from tools.encoder_distill import build_teacher
    from tools.train import validation_batches

    model = load_checkpoint(checkpoint).build_model()
    student = build_student(model.encoder, "lite0")
    teacher, _ = build_teacher("lite0", "imagenet", "")
    batches = validation_batches([str(colour_photos)], [], 0.3, 64, 0, 32, None)
    return held_out_distance(student, teacher, batches, (16, 32), torch.device("cpu"))["total"]


def test_the_distance_kept_while_the_encoder_trains_for_colour_keeps_it_near_imagenets_view(tmp_path, colour_photos):
    parent = imagenet_checkpoint(tmp_path)
    # A fast rate for the encoder, so that colour alone moves it far within a few steps.
    common = ["--init", str(parent), "--data", str(colour_photos), "--val-split", "0.3", "--steps", "12",
              "--lr", "3e-3", "--encoder-lr-scale", "1", "--batch-size", "4", "--crop", "64", "--warmup-steps", "1",
              "--threads", "1"]
    assert train_main([*common, "--run-dir", str(tmp_path / "plain")]) == 0
    assert train_main([*common, "--encoder-distill-weight", "20", "--run-dir", str(tmp_path / "kept")]) == 0

    start = _encoder_distance(parent, colour_photos)
    plain = _encoder_distance(tmp_path / "plain" / "model.pt", colour_photos)
    kept = _encoder_distance(tmp_path / "kept" / "model.pt", colour_photos)
    # Colour alone carries the encoder far from what it saw (measured 18x its starting distance); the kept
    # distance holds it at about half of that.
    assert plain > 5 * start and kept < 0.7 * plain, (start, plain, kept)
    provenance = load_checkpoint(tmp_path / "kept" / "model.pt").provenance
    assert provenance["encoder_distill_weight"] == 20
    assert provenance["encoder_distill_teacher"] == "ImageNet EfficientNet-Lite0"
    moved = states(tmp_path / "kept" / "model.pt")
    assert not torch.equal(moved["encoder._conv_stem.weight"], states(parent)["encoder._conv_stem.weight"])


def test_a_checkpoint_teaches_the_training_encoder_and_the_distance_is_logged(tmp_path, colour_photos, caplog):
    parent = imagenet_checkpoint(tmp_path, global_context=True)  # its encoder is ImageNet's, head included
    caplog.set_level("INFO", logger="tools.train")
    assert train_main(["--init", str(parent), "--data", str(colour_photos), "--steps", "4", "--log-every", "2",
                       "--freeze-encoder-steps", "2", "--encoder-distill-weight", "1", "--teacher", str(parent),
                       "--batch-size", "2", "--crop", "64", "--threads", "1", "--run-dir", str(tmp_path / "run")]) == 0
    lines = [r.getMessage() for r in caplog.records if "/4  loss" in r.getMessage()]
    assert len(lines) == 2 and "encoder distance" not in lines[0] and "encoder distance" in lines[1], lines
    provenance = load_checkpoint(tmp_path / "run" / "model.pt").provenance
    assert provenance["encoder_distill_teacher"] == f"the encoder of {load_checkpoint(parent).label} ({parent})"


@pytest.mark.parametrize("args, reason", [
    (["--freeze-encoder-steps", "3"], "encoder_distill_weight 1: the encoder never trains (freeze_encoder, or "
                                      "--freeze-encoder-steps 3 of --steps 3)"),
    (["--teacher", "{parent}"], "its encoder has no classifier head (_bn1, _conv_head), which the embedding is read"),
    (["--init", "{unet}"], "encoder_distill_weight 1: a 'unet' model has no EfficientNet-Lite encoder to teach"),
    (["--encoder-distill-weight", "0", "--teacher", "{parent}"], "a teacher is read only for --encoder-distill-weight"),
])
def test_training_refuses_an_encoder_distance_it_cannot_keep_in_one_line(tmp_path, colour_photos, capsys, args,
                                                                         reason):
    parent = imagenet_checkpoint(tmp_path)
    unet = tmp_path / "unet.pt"
    save_checkpoint(unet, create_model("unet"), provenance={})
    argv = ["--init", str(parent), "--data", str(colour_photos), "--steps", "3", "--encoder-distill-weight", "1",
            "--run-dir", str(tmp_path / "run"), *(a.format(parent=parent, unet=unet) for a in args)]
    with pytest.raises(SystemExit) as stop:
        train_main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and len(err.splitlines()) == 1, err
