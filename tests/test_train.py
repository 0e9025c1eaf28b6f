"""The training loop on tiny generated data: every loss kind runs, resume continues, outputs load."""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import (
    DEFAULT_RENDER_SIZE,
    load_checkpoint,
    preferred_highlight_rolloff,
    preferred_min_render_size,
    preferred_render_size,
    save_checkpoint,
)
from models.color import AB_NORM, HighlightRolloff, decode_ab
from models.efficientnet_lite import load_pretrained_state_dict
from models.predictor import DecodeOptions
from models.registry import create_model
from tests.conftest import gradient_image
from tools.datasets import (
    Augment,
    BatchSampler,
    PhotoBank,
    SamplerStream,
    SourceSpec,
    augment_crop,
    in_holdout,
    relative_name,
)
from tools.promote import main as promote_main
from tools.train import (
    STATE_FILE,
    StepLoss,
    TrainConfig,
    WeightAverage,
    colour_loss,
    grow_model,
    main,
    train,
    validation_scores,
)

TINY_EFFNET = {"pretrained": False, "decoder_channels": [16, 16, 16]}


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    for i in range(6):
        Image.fromarray(gradient_image(48 + 8 * i, 64, seed=i)).save(root / ("sub" if i % 2 else ".") / f"p{i}.png")
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(root / "gray.png")  # no colour: skipped
    (root / "broken.jpg").write_bytes(b"not a jpeg")  # unreadable: skipped with a warning
    return root


def test_photo_bank_reads_folders_and_zips(photo_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(photo_dir.rglob("*.png")):
            zf.write(path, path.relative_to(photo_dir).as_posix())
    folder = PhotoBank([SourceSpec(photo_dir)], short_side=40)
    zipped = PhotoBank([SourceSpec.parse(f"{archive}:2")], short_side=40)
    assert len(folder) == len(zipped) == 6  # the gray photo and the broken file are left out
    assert zipped.sampling_weights == [2.0] * 6
    assert all(min(im.shape[:2]) <= 40 for im in folder.images)


def test_a_collection_kept_as_jpeg2000_is_trained_on(tmp_path: Path) -> None:
    """An archive's colour collection in JPEG 2000 (as many keep masters) is fine-tuning data, as its JPEGs are."""
    colour = gradient_image(48, 64, seed=3)
    Image.fromarray(colour).save(tmp_path / "master.jp2", irreversible=False)
    Image.fromarray(gradient_image(48, 64, seed=4)).save(tmp_path / "print.png")
    bank = PhotoBank([SourceSpec(tmp_path)], short_side=48)
    assert sorted(Path(name).name for name in bank.names) == ["master.jp2", "print.png"]
    np.testing.assert_array_equal(bank.images[bank.names.index(str(tmp_path / "master.jp2"))], colour)


def test_a_damaged_zip_member_is_one_photo_fewer_and_a_file_not_a_zip_one_line(photo_dir: Path, tmp_path: Path,
                                                                              capsys) -> None:
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(photo_dir.rglob("*.png")):
            zf.write(path, path.relative_to(photo_dir).as_posix())
        damaged = next(info for info in zf.infolist() if info.filename != "gray.png")  # a colour photo
    data = bytearray(archive.read_bytes())
    data[damaged.header_offset + 30 + len(damaged.filename) + damaged.compress_size // 2] ^= 0xFF  # inside its bytes
    archive.write_bytes(bytes(data))
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() == damaged.filename  # the damage is where it was meant to be
    bank = PhotoBank([SourceSpec(archive)], short_side=40)
    assert len(bank) == 5  # the member whose CRC fails is skipped (with a warning); the other five are read

    not_a_zip = tmp_path / "scans.zip"
    not_a_zip.write_bytes(b"a text file named .zip")
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(not_a_zip), "--run-dir", str(tmp_path / "run"), "--steps", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"python -m tools train: error: {not_a_zip}: not a readable .zip "
                                            "(File is not a zip file)")


def test_source_spec_weights() -> None:
    assert SourceSpec.parse("data/a:3") == SourceSpec(Path("data/a"), 3.0)
    assert SourceSpec.parse("data/a") == SourceSpec(Path("data/a"), 1.0)


def test_augment_crop_shape_and_content() -> None:
    rgb = gradient_image(50, 70)
    rng = np.random.default_rng(0)
    crops = [augment_crop(rgb, Augment(crop=32), rng) for _ in range(20)]
    assert all(c.shape == (32, 32, 3) and c.dtype == np.uint8 for c in crops)
    assert len({c.tobytes() for c in crops}) == 20  # random: no two crops alike
    square = gradient_image(50, 50)  # no zoom, shear or flip, and no room to move: the crop is the photo
    plain = augment_crop(square, Augment(crop=50, zoom=(1.0, 1.0), shear=0.0, hflip=False), rng)
    np.testing.assert_array_equal(plain, square)


def test_sampler_yields_lab_batches(photo_dir: Path) -> None:
    sampler = BatchSampler(PhotoBank([SourceSpec(photo_dir)], short_side=40), 3, Augment(crop=32), seed=1)
    L, ab = next(sampler)
    assert L.shape == (3, 1, 32, 32) and ab.shape == (3, 2, 32, 32)
    assert 0 <= float(L.min()) and float(L.max()) <= 100
    assert float(ab.abs().mean()) > 5  # the photos are colourful


def test_classification_loss_prefers_the_truth() -> None:
    ab = torch.full((1, 2, 4, 4), 30.0)
    from models.color import soft_encode_ab

    right = torch.log(soft_encode_ab(ab) + 1e-6)
    wrong = torch.log(soft_encode_ab(-ab) + 1e-6)
    assert colour_loss(right, ab, "classification", None) < colour_loss(wrong, ab, "classification", None)


@pytest.mark.parametrize(
    ("options", "loss", "adversarial"),
    [
        ({"head": "classification"}, "auto", 0.0),
        ({"head": "regression"}, "huber", 0.0),
        ({"head": "regression"}, "l1", 0.05),
    ],
)
def test_training_runs_and_writes_a_loadable_checkpoint(photo_dir, tmp_path, options, loss, adversarial) -> None:
    cfg = TrainConfig(model_options=TINY_EFFNET | options, data=[str(photo_dir)], val=[str(photo_dir)],
                      steps=3, batch_size=2, crop=64, loss=loss, adversarial_weight=adversarial,
                      log_every=1, eval_every=3, save_every=3, warmup_steps=1)
    path = train(cfg, tmp_path / "run")
    ckpt = load_checkpoint(path)
    assert ckpt.provenance["steps"] == 3 and ckpt.provenance["final"] is True
    assert {"val_ab_rmse", "val_ab_rmse_gray"} <= set(ckpt.provenance["metrics"])
    model = ckpt.build_model()
    assert model.config.head == options["head"]


def test_a_step_loss_adds_the_adversarial_term_after_the_discriminator_has_stepped_on_the_batch() -> None:
    torch.manual_seed(0)
    model = create_model("effnet_unet", **TINY_EFFNET, head="regression")
    disc = create_model("patchgan")
    disc_opt = torch.optim.SGD(disc.parameters(), lr=0.1)
    cfg = TrainConfig(adversarial_weight=0.5, decode_temperature=0.38)
    off = torch.autocast("cpu", enabled=False)
    L, ab = torch.rand(2, 1, 32, 32) * 100, torch.randn(2, 2, 32, 32) * 20
    plain, plain_terms = StepLoss(model, cfg, "huber", None, off)(L, ab, step=0)
    before = [p.detach().clone() for p in disc.parameters()]
    loss, terms = StepLoss(model, cfg, "huber", None, off, disc=disc, disc_opt=disc_opt)(L, ab, step=0)
    assert plain_terms == terms == {}  # the GAN term is part of the loss, not a reported distance
    assert any(not torch.equal(b, p) for b, p in zip(before, disc.parameters(), strict=True))  # it took its step
    judged = disc(L, model(L).float() * AB_NORM)  # the stepped discriminator's view of the same colour
    expected = plain + 0.5 * torch.nn.functional.binary_cross_entropy_with_logits(judged, torch.ones_like(judged))
    assert torch.allclose(loss, expected, atol=1e-5), (float(loss), float(expected))
    assert all(p.grad is None for p in model.parameters())  # the generator's own step is left to the loop


def test_the_validation_line_scores_gray_and_the_truth_as_their_baselines() -> None:
    generator = torch.Generator().manual_seed(0)
    L = torch.rand(4, 1, 24, 24, generator=generator) * 60 + 20
    ab = torch.randn(4, 2, 24, 24, generator=generator) * 15 + torch.tensor([10.0, -8.0]).view(1, 2, 1, 1)
    batches = [(L[:2], ab[:2]), (L[2:], ab[2:])]
    gray = validation_scores(batches, [torch.zeros_like(b) for _, b in batches])
    assert gray["val_psnr"] == pytest.approx(gray["val_psnr_gray"])
    assert gray["val_ab_rmse"] == pytest.approx(gray["val_ab_rmse_gray"])
    assert gray["val_colourfulness"] < 0.5 < 10 < gray["val_colourfulness_truth"]
    truth = validation_scores(batches, [b.clone() for _, b in batches])
    assert truth["val_ab_rmse"] == 0 and truth["val_psnr"] == float("inf")
    assert truth["val_colourfulness"] == pytest.approx(truth["val_colourfulness_truth"])
    halfway = validation_scores(batches, [b / 2 for _, b in batches])
    assert truth["val_ab_rmse_gray"] / 2 == pytest.approx(halfway["val_ab_rmse"])
    assert gray["val_psnr_gray"] < halfway["val_psnr"] < float("inf")


def test_training_learns_a_constant_colour(tmp_path: Path) -> None:
    """On photos that are all one hue the loss must fall: the loop really optimizes."""
    root = tmp_path / "orange"
    root.mkdir()
    for i in range(4):
        img = np.zeros((64, 64, 3), np.uint8)
        img[...] = (200, 120, 40)
        img[:, : 16 + 8 * i] = (150, 90, 30)  # same hue, different lightness
        Image.fromarray(img).save(root / f"{i}.png")
    cfg = TrainConfig(model_options=TINY_EFFNET | {"head": "regression"}, data=[str(root)], val=[str(root)],
                      steps=40, batch_size=4, crop=64, lr=3e-3, loss="l2", log_every=40, eval_every=40,
                      save_every=40, warmup_steps=1)
    metrics = load_checkpoint(train(cfg, tmp_path / "run")).provenance["metrics"]
    assert metrics["val_ab_rmse"] < 0.5 * metrics["val_ab_rmse_gray"]


def test_resume_continues_from_the_saved_step(photo_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = TrainConfig(model_options=TINY_EFFNET, data=[str(photo_dir)], steps=2, batch_size=2, crop=64,
                      save_every=2, warmup_steps=1)
    train(cfg, run)
    first = torch.load(run / STATE_FILE, weights_only=True)
    train(TrainConfig(**(vars(cfg) | {"steps": 4})), run, resume=True)
    second = torch.load(run / STATE_FILE, weights_only=True)
    assert (first["step"], second["step"]) == (2, 4)
    assert second["sampler"] != first["sampler"]  # the sampler's RNG moved on instead of restarting
    assert load_checkpoint(run / "model.pt").provenance["steps"] == 4


def test_a_resumed_gan_run_continues_with_its_trained_discriminator(photo_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = TrainConfig(model_options=TINY_EFFNET, data=[str(photo_dir)], steps=2, batch_size=2, crop=64,
                      save_every=2, warmup_steps=1, adversarial_weight=0.1)
    train(cfg, run)
    trained = torch.load(run / STATE_FILE, weights_only=True)
    train(cfg, run, resume=True)  # nothing left to train: it saves what it restored
    restored = torch.load(run / STATE_FILE, weights_only=True)
    for name, tensor in trained["disc"].items():
        assert torch.equal(restored["disc"][name], tensor), name  # not a fresh discriminator's weights
    assert restored["disc_optimizer"]["state"].keys() == trained["disc_optimizer"]["state"].keys() != set()


def test_a_run_annealed_by_time_ends_finished_at_its_time_limit_with_the_rate_at_zero(photo_dir: Path,
                                                                                      tmp_path: Path,
                                                                                      caplog) -> None:
    common = dict(model_options=TINY_EFFNET, data=[str(photo_dir)], steps=1_000_000, batch_size=2, crop=64,
                  warmup_steps=2, save_every=1_000_000, eval_every=1_000_000, time_limit_min=0.04, log_every=2,
                  val=[str(photo_dir)], val_crops=16)
    rates = {}
    caplog.set_level(logging.INFO, logger="tools.train")
    for anneal in (False, True):
        run = tmp_path / f"anneal-{anneal}"
        train(TrainConfig(**common, anneal_by_time=anneal), run)
        state = torch.load(run / STATE_FILE, weights_only=True)
        rates[anneal] = state["optimizer"]["param_groups"][0]["lr"] / 1e-3  # the new run's peak rate
        provenance = load_checkpoint(run / "model.pt").provenance
        assert 2 < state["step"] < 1_000_000
        assert provenance["final"] is anneal and provenance["anneal_by_time"] is anneal
        # a finished run scores its last step; an interrupted one leaves that to the step it resumes to
        assert [m["step"] for m in state["history"]] == ([state["step"]] if anneal else [])
    assert rates[False] > 0.9 and rates[True] < 0.05, rates  # stopped at the peak, or annealed to its end
    # the progress line's ETA is the time limit's, not a million steps' at this rate
    etas = [float(m.group(1)) for m in re.finditer(r"eta (\S+) min", caplog.text)]
    assert etas and all(eta <= 0.04 for eta in etas), etas


def test_annealing_by_time_needs_a_time_limit(photo_dir: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(photo_dir), "--run-dir", str(tmp_path / "run"), "--anneal-by-time"])
    assert exc.value.code == 2
    assert "anneal_by_time anneals to the time limit: give --time-limit-min too" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything loads or is written


def test_an_unknown_encoder_batchnorm_is_refused(photo_dir: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(photo_dir), "--run-dir", str(tmp_path), "--encoder-batchnorm", "sometimes"])
    assert exc.value.code == 2 and "--encoder-batchnorm" in capsys.readouterr().err
    with pytest.raises(ValueError, match="encoder_batchnorm 'sometimes': fixed or batches"):  # the API's callers
        train(TrainConfig(model_options=TINY_EFFNET, data=[str(photo_dir)], encoder_batchnorm="sometimes"),
              tmp_path / "run")


def test_cli_rejects_unknown_model_options(photo_dir: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(photo_dir), "--run-dir", str(tmp_path), "--set", "colour=blue"])
    assert exc.value.code == 2
    assert "no option colour" in capsys.readouterr().err


def test_cli_requires_data_for_a_new_run(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--run-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert "--data is required" in capsys.readouterr().err


def test_fine_tuning_starts_from_a_checkpoint(photo_dir: Path, tmp_path: Path) -> None:
    parent_cfg = TrainConfig(model_options=TINY_EFFNET | {"head": "regression"}, data=[str(photo_dir)], steps=2,
                             batch_size=2, crop=64, warmup_steps=1)
    parent = load_checkpoint(train(parent_cfg, tmp_path / "parent"))
    child_cfg = TrainConfig(data=[str(photo_dir)], steps=1, batch_size=2, crop=64, lr=1e-9, warmup_steps=1,
                            init_from=str(parent.path))
    child = load_checkpoint(train(child_cfg, tmp_path / "child"))
    assert child.config == parent.config  # the parent's architecture, not the defaults
    assert child.provenance["init_from"]["label"] == parent.label
    assert child.provenance["init_from"]["steps"] == 2
    for name, tensor in parent.state_dict.items():  # a near-zero learning rate: weights barely move
        if tensor.is_floating_point() and "running" not in name:
            torch.testing.assert_close(child.state_dict[name], tensor, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="holds a 'effnet_unet' model"):
        train(TrainConfig(model="unet", data=[str(photo_dir)], init_from=str(parent.path)), tmp_path / "bad")


def test_cli_fine_tunes_with_the_parents_architecture_and_settings(photo_dir: Path, tmp_path: Path, capsys) -> None:
    parent_cfg = TrainConfig(model="unet", model_options={"base_channels": 4}, data=[str(photo_dir)], steps=1,
                             batch_size=2, crop=64, warmup_steps=1, decode_temperature=0.6)
    parent = load_checkpoint(train(parent_cfg, tmp_path / "parent"))
    common = ["--data", str(photo_dir), "--steps", "1", "--batch-size", "2", "--crop", "64", "--warmup-steps", "1"]
    # --init-from is the old spelling of --init; no --model: the parent's architecture, not effnet_unet's default.
    assert main(["--init-from", str(parent.path), "--run-dir", str(tmp_path / "child"), *common]) == 0
    child = load_checkpoint(tmp_path / "child" / "model.pt")
    assert (child.model_name, child.config) == (parent.model_name, parent.config)
    assert DecodeOptions(**child.decode) == DecodeOptions(**parent.decode) and child.provenance["lr"] == 3e-4
    assert child.provenance["init_from"]["checkpoint"] == str(parent.path)
    with pytest.raises(SystemExit) as exc:
        main(["--init", str(parent.path), "--model", "effnet_unet", "--run-dir", str(tmp_path / "bad"), *common])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("holds a 'unet' model, not 'effnet_unet' (a fine-tune keeps its parent's architecture: "
                            "leave out --model)")


def test_a_fine_tune_is_rendered_as_its_promoted_parent_is(photo_dir: Path, tmp_path: Path) -> None:
    common = dict(data=[str(photo_dir)], steps=1, batch_size=2, crop=64, warmup_steps=1)
    trained = train(TrainConfig(model_options=TINY_EFFNET | {"head": "regression"}, **common), tmp_path / "parent")
    parent = tmp_path / "parent.pt"
    assert promote_main([str(trained), "-o", str(parent), "--render-size", "200", "--min-render-size", "96",
                         "--highlight-rolloff", "80,95,0.4"]) == 0
    child = load_checkpoint(train(TrainConfig(init_from=str(parent), **common), tmp_path / "child"))
    # the rendering its decoding was chosen with comes along, as the decoding does; a plain run records none
    assert preferred_render_size(child.provenance) == 200 and preferred_min_render_size(child.provenance) == 96
    assert preferred_highlight_rolloff(child.provenance) == HighlightRolloff(80.0, 95.0, 0.4)
    assert preferred_render_size(load_checkpoint(trained).provenance) == DEFAULT_RENDER_SIZE
    assert preferred_highlight_rolloff(load_checkpoint(trained).provenance) is None


def test_cli_grows_a_parent_with_options_that_only_add_layers(photo_dir: Path, tmp_path: Path, capsys) -> None:
    parent_cfg = TrainConfig(model_options=TINY_EFFNET | {"head": "regression"}, data=[str(photo_dir)], steps=1,
                             batch_size=2, crop=64, warmup_steps=1)
    parent = load_checkpoint(train(parent_cfg, tmp_path / "parent"))
    common = ["--init", str(parent.path), "--data", str(photo_dir), "--steps", "1", "--batch-size", "2", "--crop",
              "64", "--warmup-steps", "1", "--lr", "1e-12"]
    assert main([*common, "--set", "global_context=true", "--run-dir", str(tmp_path / "child")]) == 0
    child = load_checkpoint(tmp_path / "child" / "model.pt")
    assert child.config == parent.config | {"global_context": True, "pretrained": True}
    assert {"context.weight", "encoder._conv_head.weight"} <= set(child.state_dict) - set(parent.state_dict)
    for name, tensor in parent.state_dict.items():  # every parent weight carried over (a near-zero rate)
        if tensor.is_floating_point() and "running" not in name:
            torch.testing.assert_close(child.state_dict[name], tensor, atol=1e-6, rtol=0, msg=name)
    L = torch.rand(2, 1, 64, 64) * 100
    with torch.no_grad():  # grown, before any step: the new layer at zero, so the parent's colour exactly
        grown = grow_model(parent, {"global_context": True}).eval()
        torch.testing.assert_close(grown(L), parent.build_model()(L), rtol=0, atol=0)
    for option, reason in (("head=classification", "changes layers that"), ("colour=blue", "colour")):
        with pytest.raises(SystemExit) as exc:
            main([*common, "--set", option, "--run-dir", str(tmp_path / "bad")])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) >= 1 and reason in err[-1] and str(parent.path) in err[-1], err
    assert not (tmp_path / "bad" / "model.pt").exists()


def test_a_fine_tune_can_start_from_the_imagenet_encoder(photo_dir: Path, tmp_path: Path, capsys) -> None:
    """--imagenet-encoder: the parent's decoder carries over and its encoder (an untrained one here) becomes
    ImageNet's, weights and BatchNorm statistics; without a parent the option is refused in one line."""
    parent = load_checkpoint(train(TrainConfig(model_options=TINY_EFFNET | {"global_context": True},
                                               data=[str(photo_dir)], steps=0, batch_size=2, crop=64),
                                   tmp_path / "parent"))
    common = ["--data", str(photo_dir), "--steps", "1", "--batch-size", "2", "--crop", "64", "--warmup-steps", "1",
              "--lr", "1e-12", "--freeze-encoder-steps", "1"]
    assert main(["--init", str(parent.path), "--imagenet-encoder", *common, "--run-dir", str(tmp_path / "child")]) == 0
    child = load_checkpoint(tmp_path / "child" / "model.pt")
    assert child.provenance["imagenet_encoder"] is True
    imagenet = load_pretrained_state_dict("lite0")
    encoder_names = [k for k in parent.state_dict if k.startswith("encoder.")]
    assert "encoder._conv_head.weight" in encoder_names and "encoder._bn1.running_var" in encoder_names
    for name in encoder_names:
        expected = imagenet[name[len("encoder."):]]
        torch.testing.assert_close(child.state_dict[name].to(expected.dtype), expected.half().to(expected.dtype),
                                   rtol=0, atol=0, msg=name)
        if expected.is_floating_point() and expected.numel() > 1:  # it was not ImageNet's before
            assert not torch.equal(parent.state_dict[name].float(), expected.half().float()), name
    for name, tensor in parent.state_dict.items():
        if not name.startswith("encoder.") and tensor.is_floating_point() and "running" not in name:
            torch.testing.assert_close(child.state_dict[name], tensor, atol=1e-6, rtol=0, msg=name)

    with pytest.raises(SystemExit) as exc:
        main([*common, "--imagenet-encoder", "--set", "pretrained=false", "--run-dir", str(tmp_path / "bad")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "imagenet_encoder restores a fine-tune's encoder (--init)" in err, err
    assert not (tmp_path / "bad" / "model.pt").exists()


def test_a_parent_decoder_moves_onto_another_encoder(photo_dir: Path, tmp_path: Path, capsys) -> None:
    """--set encoder=lite2 on a Lite0 parent: ImageNet's Lite2 encoder, and the parent's decoder wherever it reads the
    decoder's own features; whatever reads an encoder feature (the context layer, the first step's first
    convolution, every skip channel, even where the counts match) starts as constructed. A model without such a
    decoder refuses in one line."""
    parent = load_checkpoint(train(TrainConfig(model_options=TINY_EFFNET | {"global_context": True},
                                               data=[str(photo_dir)], steps=0, batch_size=2, crop=64),
                                   tmp_path / "parent"))
    common = ["--data", str(photo_dir), "--steps", "1", "--batch-size", "2", "--crop", "64", "--warmup-steps", "1",
              "--lr", "1e-12", "--freeze-encoder-steps", "1"]
    assert main(["--init", str(parent.path), "--set", "encoder=lite2", *common,
                 "--run-dir", str(tmp_path / "child")]) == 0
    child = load_checkpoint(tmp_path / "child" / "model.pt")
    assert child.config["encoder"] == "lite2" and child.config["global_context"] is True
    imagenet = load_pretrained_state_dict("lite2")
    for name, tensor in child.state_dict.items():
        if name.startswith("encoder."):
            expected = imagenet[name[len("encoder."):]]
            torch.testing.assert_close(tensor.to(expected.dtype), expected.half().to(expected.dtype), rtol=0, atol=0)
    same = lambda name: torch.allclose(child.state_dict[name].float(), parent.state_dict[name].float(),  # noqa: E731
                                       atol=1e-6, rtol=0)
    for name in ("up16.conv.1.0.weight", "up8.conv.1.0.weight", "up4.conv.0.1.weight", "refine.0.weight",
                 "head.weight"):
        assert same(name), name
    assert tuple(child.state_dict["context.weight"].shape) == (2 * 352, 1280)  # Lite2's stride-32 channels
    assert float(child.state_dict["context.weight"].float().abs().max()) < 1e-6  # at zero: the identity
    assert child.state_dict["up16.conv.0.0.weight"].shape != parent.state_dict["up16.conv.0.0.weight"].shape
    for step in ("up8", "up4"):  # 16 decoder channels in: carried; the skip channels (24 = 24 at stride 4): fresh
        name = f"{step}.conv.0.0.weight"
        theirs, ours = parent.state_dict[name].float(), child.state_dict[name].float()
        torch.testing.assert_close(ours[:, :16], theirs[:, :16], atol=1e-6, rtol=0, msg=name)
        assert not torch.allclose(ours[:, 16:theirs.shape[1]], theirs[:, 16:], atol=1e-3), name
    L = torch.rand(1, 1, 64, 64) * 100
    with torch.no_grad():  # the saved model rebuilds (strictly) into the same network
        assert child.build_model().eval()(L).shape[-2:] == (16, 16)

    regression = load_checkpoint(train(TrainConfig(model="unet", data=[str(photo_dir)], steps=0, batch_size=2,
                                                   crop=64), tmp_path / "unet"))
    with pytest.raises(SystemExit) as exc:
        main(["--init", str(regression.path), "--set", "encoder=lite2", *common, "--run-dir", str(tmp_path / "bad")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(regression.path) in err and "encoder" in err, err
    assert not (tmp_path / "bad" / "model.pt").exists()


def test_a_global_context_parent_grows_a_frozen_context_encoder_and_drops_the_head_it_no_longer_reads(
        photo_dir: Path, tmp_path: Path, capsys, caplog) -> None:
    parent = load_checkpoint(train(TrainConfig(model_options=TINY_EFFNET | {"global_context": True},
                                               data=[str(photo_dir)], steps=0, batch_size=2, crop=64),
                                   tmp_path / "parent"))
    common = ["--init", str(parent.path), "--data", str(photo_dir), "--steps", "1", "--batch-size", "2", "--crop",
              "64", "--warmup-steps", "1", "--set", "context_encoder=true"]
    with caplog.at_level(logging.INFO, logger="tools.train"):
        assert main([*common, "--lr", "1e-12", "--run-dir", str(tmp_path / "child")]) == 0
    assert ("245 new tensors (context_encoder), 6 tensors no longer read dropped (encoder._bn1, encoder._conv_head)"
            in caplog.text)
    child = load_checkpoint(tmp_path / "child" / "model.pt")
    assert child.config["context_encoder"] is True
    assert not any(k.startswith(("encoder._conv_head", "encoder._bn1")) for k in child.state_dict)
    imagenet = load_pretrained_state_dict("lite0")
    for name, tensor in child.state_dict.items():
        if name.startswith("context_encoder."):
            expected = imagenet[name[len("context_encoder."):]]
            torch.testing.assert_close(tensor.to(expected.dtype), expected.half().to(expected.dtype), rtol=0, atol=0)
    for name, tensor in parent.state_dict.items():  # the rest of the parent carried over (a near-zero rate)
        if not name.startswith(("encoder._conv_head", "encoder._bn1")) and tensor.is_floating_point() \
                and "running" not in name:
            torch.testing.assert_close(child.state_dict[name], tensor, atol=1e-6, rtol=0, msg=name)
    L = torch.rand(1, 1, 64, 64) * 100
    with torch.no_grad():  # the saved model rebuilds (strictly) into the same network
        assert child.build_model().eval()(L).shape[-2:] == (16, 16)

    with pytest.raises(SystemExit) as exc:
        main([*common, "--context-distill-weight", "1", "--run-dir", str(tmp_path / "bad")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "comes from a frozen ImageNet encoder (context_encoder), which nothing can teach" in err, err
    assert not (tmp_path / "bad" / "model.pt").exists()


def test_the_context_layer_learns_at_its_own_rate(photo_dir: Path, tmp_path: Path, capsys) -> None:
    """--context-lr-scale: with the decoder's rate near zero and the context layers' not, one step moves only the
    context layers (both fusions); a model without one refuses the option in one line."""
    common = ["--data", str(photo_dir), "--steps", "1", "--batch-size", "2", "--crop", "64", "--warmup-steps", "1",
              "--lr", "1e-12", "--set", "pretrained=false", "--set", "decoder_channels=[16,16,16]"]
    start = train(TrainConfig(model_options=TINY_EFFNET | {"global_context": True, "decoder_context": True},
                              data=[str(photo_dir)], steps=0, batch_size=2, crop=64), tmp_path / "start")
    assert main(["--init", str(start), "--context-lr-scale", "1e10", *common[:-4], "--run-dir",
                 str(tmp_path / "fast")]) == 0
    before, after = load_checkpoint(start).state_dict, load_checkpoint(tmp_path / "fast" / "model.pt").state_dict
    moved = {name for name, t in before.items() if t.is_floating_point() and "running" not in name
             and not torch.allclose(t.float(), after[name].float(), atol=1e-6, rtol=0)}
    assert moved == {"context.weight", "context.bias", "context16.weight", "context16.bias"}, moved
    assert load_checkpoint(tmp_path / "fast" / "model.pt").provenance["context_lr_scale"] == 1e10

    with pytest.raises(SystemExit) as exc:
        main([*common, "--context-lr-scale", "5", "--run-dir", str(tmp_path / "bad")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "context_lr_scale 5 needs a model with a global-context layer" in err, err
    assert not (tmp_path / "bad" / "model.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cli_asked_for_a_gpu_without_one_says_so_in_one_line(photo_dir: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(photo_dir), "--run-dir", str(tmp_path / "run"), "--device", "cuda", "--steps", "1",
              "--set", "pretrained=false"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "PyTorch sees no CUDA GPU" in err, err
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_trains_on_the_gpu_in_bf16_and_resumes_on_the_cpu(tmp_path: Path) -> None:
    data = _named_photos(tmp_path / "photos", 24)
    cfg = TrainConfig(model_options=TINY_EFFNET | {"global_context": True}, data=[str(data)], val_split=0.25,
                      val_crops=8, steps=4, batch_size=4, crop=64, loss="mix", ema_decay=0.5, feature_weight=1.0,
                      freeze_encoder_steps=2, eval_every=2, save_every=2, warmup_steps=1, device="cuda", bf16=True)
    run = tmp_path / "run"
    train(cfg, run)
    state = torch.load(run / STATE_FILE, map_location="cpu", weights_only=True)
    assert state["step"] == 4 and state["history"][-1]["val_psnr"] > 10
    train(dataclasses.replace(cfg, steps=6, device="cpu", bf16=False), run, resume=True)
    resumed = torch.load(run / STATE_FILE, weights_only=True)
    assert resumed["step"] == 6 and [m["step"] for m in resumed["history"]] == [2, 4, 6]
    assert load_checkpoint(run / "model.pt").build_model()(torch.rand(1, 1, 64, 64) * 100).shape[0] == 1


def test_training_on_local_photos_needs_no_boto(photo_dir: Path, tmp_path: Path) -> None:
    """A lent GPU machine has no botocore, and its 17 MB wheel would not fit what travels there: a run on local
    photos must not import it (worker.storage imports it on first S3 use)."""
    blocker = textwrap.dedent(f"""
        import importlib.abc, sys
        class NoBoto(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("boto3", "botocore", "s3transfer"):
                    raise ImportError("no " + name + " on this machine")
        sys.meta_path.insert(0, NoBoto())
        from tools.train import main
        sys.exit(main(["--data", {str(photo_dir)!r}, "--run-dir", {str(tmp_path / "run")!r}, "--steps", "1",
                       "--batch-size", "2", "--crop", "64", "--set", "pretrained=false",
                       "--set", "decoder_channels=[16,16,16]"]))
    """)
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "model.pt").exists()


def test_loader_processes_sample_the_batches_and_a_run_resumes_with_them(tmp_path: Path) -> None:
    data = _named_photos(tmp_path / "photos", 12)
    cfg = TrainConfig(model_options=TINY_EFFNET, data=[str(data)], steps=3, batch_size=2, crop=48, warmup_steps=1,
                      save_every=3, loader_workers=2, seed=3)
    run = tmp_path / "run"
    train(cfg, run)
    train(dataclasses.replace(cfg, steps=5), run, resume=True)
    assert torch.load(run / STATE_FILE, weights_only=True)["step"] == 5
    # Each worker draws its own batches: two workers' first batches differ, and a worker's are reproducible.
    stream = SamplerStream(PhotoBank.from_arrays([gradient_image(40, 40, seed=i) for i in range(12)]), 2,
                           Augment(crop=32), seed=[3, 0])
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2, multiprocessing_context="forkserver",
                                         timeout=300)
    batches = iter(loader)
    first, second = next(batches), next(batches)  # round robin: worker 0's first batch, then worker 1's
    assert not torch.equal(first[1], second[1])
    again = next(iter(loader))
    torch.testing.assert_close(again[1], first[1], rtol=0, atol=0)


# --- the validation split, the mix loss, EMA, the encoder schedule, scale augmentation -------------------------------


def _named_photos(root: Path, count: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(gradient_image(40, 40, seed=i)).save(root / f"photo_{i:03d}.png")
    return root


def test_validation_split_is_disjoint_deterministic_and_location_independent(tmp_path: Path) -> None:
    folder = _named_photos(tmp_path / "a" / "photos", 60)
    moved = tmp_path / "b" / "elsewhere"
    moved.parent.mkdir()
    folder.rename(moved)
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(moved.glob("*.png")):
            zf.write(path, path.name)

    def names(source: Path, split: str) -> set[str]:
        bank = PhotoBank([SourceSpec(source)], short_side=40, split=split, holdout=0.25)
        return {Path(n.split("!")[-1]).name for n in bank.names}

    train_names, val_names = names(moved, "train"), names(moved, "val")
    assert train_names.isdisjoint(val_names) and len(train_names | val_names) == 60
    assert 5 <= len(val_names) <= 25  # about a quarter
    assert names(archive, "val") == val_names  # a zip of the same photos splits the same way
    assert all(in_holdout(name, 0.25) for name in val_names)


def test_a_split_needs_a_holdout_fraction(photo_dir: Path) -> None:
    with pytest.raises(ValueError, match="holdout fraction"):
        PhotoBank([SourceSpec(photo_dir)], short_side=40, split="val", holdout=0.0)
    with pytest.raises(ValueError, match="split must be one of"):
        PhotoBank([SourceSpec(photo_dir)], short_side=40, split="test", holdout=0.1)


def test_relative_names() -> None:
    assert relative_name(Path("/d/zips/a.zip"), "/d/zips/a.zip!n01/x.webp") == "n01/x.webp"
    assert relative_name(Path("/d/flowers"), "/d/flowers/rose/1.jpg") == "rose/1.jpg"
    assert relative_name("s3://bucket/colour/", "s3://bucket/colour/1950/a.jpg") == "1950/a.jpg"


def test_min_object_side_enlarges_small_photos() -> None:
    rng = np.random.default_rng(0)
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, (np.arange(64) // 8) % 2 == 1] = (200, 30, 30)  # 8 px stripes: 7 edges across the photo
    aug = Augment(crop=64, zoom=(1.0, 1.0), shear=0.0, hflip=False)

    def edges_per_row(crop: np.ndarray) -> float:
        return float((np.abs(np.diff(crop[..., 0].astype(int), axis=1)) > 100).sum(axis=1).mean())

    assert edges_per_row(augment_crop(stripes, aug, rng)) == 7
    enlarged = augment_crop(stripes, dataclasses.replace(aug, min_object_side=256), rng)
    assert enlarged.shape == (64, 64, 3)
    assert edges_per_row(enlarged) <= 2  # 4x larger: a 64 px window spans two stripes at most


def test_mix_loss_adds_the_decoded_l1_term() -> None:
    from models.color import soft_encode_ab

    ab = torch.full((1, 2, 4, 4), 30.0)
    logits = torch.log(soft_encode_ab(-ab) + 1e-6)
    ce = colour_loss(logits, ab, "classification", None)
    mixed = colour_loss(logits, ab, "mix", None, l1_weight=2.0)
    decoded = decode_ab(logits, "annealed_mean", 0.38)
    expected_l1 = float((decoded - ab).abs().mean() / 110.0)
    assert float(mixed - ce) == pytest.approx(2.0 * expected_l1, rel=1e-4)


def test_weight_average_follows_the_model_slowly() -> None:
    model = torch.nn.Linear(2, 2)
    average = WeightAverage(model, decay=0.9)
    start = average.model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    for step in range(200):
        average.update(model, step)
    assert torch.allclose(average.model.weight, model.weight, atol=1e-3)
    fresh = WeightAverage(torch.nn.Linear(2, 2), decay=0.99)
    fresh.model.load_state_dict(model.state_dict())
    with torch.no_grad():
        model.weight.add_(1.0)
    fresh.update(model, step=10_000)  # one late step moves the average by 1 - decay only
    assert torch.allclose(fresh.model.weight - (model.weight - 1.0), torch.full((2, 2), 0.01), atol=1e-5)
    assert not torch.equal(start, average.model.weight)


def test_split_mix_ema_and_encoder_schedule_train_and_resume(tmp_path: Path) -> None:
    """A run with every new piece: the encoder stays untouched while frozen and then moves, validation reports
    PSNR and colourfulness beside their baselines, model.pt holds the EMA weights, and a resume keeps them."""
    data = _named_photos(tmp_path / "photos", 24)
    run = tmp_path / "run"
    cfg = TrainConfig(model_options=TINY_EFFNET, data=[str(data)], val_split=0.25, val_crops=8, steps=3,
                      batch_size=2, crop=64, loss="mix", l1_weight=5.0, ema_decay=0.5, freeze_encoder_steps=2,
                      log_every=1, eval_every=2, save_every=2, warmup_steps=1, min_object_side=80)
    start = load_checkpoint(train(TrainConfig(**(vars(cfg) | {"steps": 0})), tmp_path / "start")).build_model()
    frozen = load_checkpoint(train(TrainConfig(**(vars(cfg) | {"steps": 2, "ema_decay": 0.0})),
                                   tmp_path / "frozen")).build_model()
    for before, after in zip(start.encoder.state_dict().values(), frozen.encoder.state_dict().values(), strict=True):
        torch.testing.assert_close(before.float(), after.float(), atol=1e-3, rtol=0)  # fp16 storage
    decoder_moved = any(not torch.allclose(a.float(), b.float(), atol=1e-3)
                        for a, b in zip(start.head.state_dict().values(), frozen.head.state_dict().values(),
                                        strict=True))
    assert decoder_moved

    train(cfg, run)
    state = torch.load(run / STATE_FILE, weights_only=True)
    assert state["ema"] is not None and [m["step"] for m in state["history"]] == [2, 3]
    metrics = state["history"][-1]
    assert metrics["val_psnr_gray"] > 10 and metrics["val_colourfulness_truth"] > 5
    ckpt = load_checkpoint(run / "model.pt")
    assert ckpt.provenance["loss"] == "mix" and ckpt.provenance["val_split"] == 0.25
    shipped = ckpt.build_model().state_dict()
    for name, value in state["ema"].items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(shipped[name].float(), value.float(), atol=2e-3, rtol=1e-2)
    train(TrainConfig(**(vars(cfg) | {"steps": 4})), run, resume=True)
    resumed = torch.load(run / STATE_FILE, weights_only=True)
    assert resumed["step"] == 4 and [m["step"] for m in resumed["history"]] == [2, 3, 4]


def test_cli_refuses_a_validation_split_that_is_not_a_fraction(photo_dir: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(photo_dir), "--run-dir", str(tmp_path), "--val-split", "1.5"])
    assert exc.value.code == 2
    assert "--val-split: expected a fraction from 0 (no split) to below 1, got 1.5" in capsys.readouterr().err


def test_the_best_validation_weights_are_kept_beside_the_last(tmp_path: Path) -> None:
    """model-best.pt holds the weights model.pt had at the validation line's best PSNR, named by its step, and
    later, worse steps (in the same sitting or a resumed one) leave it alone."""
    data = _named_photos(tmp_path / "photos", 24)
    run = tmp_path / "run"
    # A random encoder's BatchNorm statistics are nothing to keep; learnt from the batches they make the line
    # wander, which this test needs.
    cfg = TrainConfig(model_options=TINY_EFFNET, data=[str(data)], val_split=0.25, val_crops=8, steps=1,
                      batch_size=2, crop=64, lr=3e-2, ema_decay=0.0, log_every=1, eval_every=1, save_every=1,
                      warmup_steps=1, encoder_batchnorm="batches")
    shipped_at: dict[int, dict] = {}
    for steps in range(1, 7):  # one step per sitting, so model.pt can be read at every step
        train(TrainConfig(**(vars(cfg) | {"steps": steps})), run, resume=steps > 1)
        shipped_at[steps] = load_checkpoint(run / "model.pt").build_model().state_dict()
    history = torch.load(run / STATE_FILE, weights_only=True)["history"]
    psnr = [m["val_psnr"] for m in history]
    best = history[psnr.index(max(psnr))]["step"]
    assert best != 6, f"at this rate the line should not end at its best: {psnr}"
    kept = load_checkpoint(run / "model-best.pt")
    assert kept.provenance["metrics"]["step"] == kept.provenance["steps"] == best
    assert kept.provenance["metrics"]["val_psnr"] == pytest.approx(max(psnr))
    for name, value in kept.build_model().state_dict().items():
        torch.testing.assert_close(value, shipped_at[best][name])


def test_a_resumed_run_keeps_a_better_model_best_that_its_saved_history_lacks(tmp_path: Path, caplog) -> None:
    """A run stopped between an evaluation and the next save leaves model-best.pt one evaluation ahead of the
    history in train_state.pt; the resumed run must not replace it with a worse step."""
    data = _named_photos(tmp_path / "photos", 24)
    run = tmp_path / "run"
    cfg = TrainConfig(model_options=TINY_EFFNET, data=[str(data)], val_split=0.25, val_crops=8, steps=1,
                      batch_size=2, crop=64, ema_decay=0.0, eval_every=1, save_every=1, warmup_steps=1)
    train(cfg, run)
    written = load_checkpoint(run / "model-best.pt")
    # What the stopped run had written at its step 2 (a validation PSNR no real step here reaches).
    ahead = written.provenance | {"steps": 2, "metrics": written.provenance["metrics"] | {"step": 2, "val_psnr": 99.0}}
    save_checkpoint(run / "model-best.pt", written.build_model(), provenance=ahead,
                    decode=DecodeOptions(**written.decode))
    # And a saved line that any later step beats, so that only the copy on disk can hold the bar.
    state = torch.load(run / STATE_FILE, weights_only=True)
    state["history"] = [m | {"val_psnr": 0.0} for m in state["history"]]
    torch.save(state, run / STATE_FILE)
    train(TrainConfig(**(vars(cfg) | {"steps": 3})), run, resume=True)
    assert [m["step"] for m in torch.load(run / STATE_FILE, weights_only=True)["history"]] == [1, 2, 3]
    assert load_checkpoint(run / "model-best.pt").provenance["metrics"] == ahead["metrics"]

    (run / "model-best.pt").write_bytes(b"half a file")  # unreadable: named in one warning, and the run goes on
    with caplog.at_level(logging.WARNING, logger="tools.train"):
        train(TrainConfig(**(vars(cfg) | {"steps": 4})), run, resume=True)
    assert load_checkpoint(run / "model.pt").provenance["steps"] == 4
    assert [r.getMessage() for r in caplog.records if "model-best.pt" in r.getMessage()][0].startswith(
        f"{run / 'model-best.pt'} not read")


@pytest.mark.parametrize("batchnorm", ["fixed", "batches"])
def test_a_training_encoder_keeps_its_batchnorm_statistics_unless_asked(tmp_path: Path, batchnorm: str) -> None:
    """Released from the start, the encoder's weights train either way; its BatchNorm statistics stay as they came
    by default (re-estimating them from gray crops knocked a trained colorizer under gray before a weight moved),
    and follow the batches with ``encoder_batchnorm="batches"``. The choice is kept in the provenance."""
    data = _named_photos(tmp_path / "photos", 12)
    parent_path = tmp_path / "parent.pt"
    save_checkpoint(parent_path, create_model("effnet_unet", **TINY_EFFNET))
    cfg = TrainConfig(data=[str(data)], init_from=str(parent_path), steps=3, batch_size=4, crop=64, lr=1e-2,
                      ema_decay=0.0, warmup_steps=1, freeze_encoder_steps=0, encoder_batchnorm=batchnorm,
                      half_weights=False)
    trained = load_checkpoint(train(cfg, tmp_path / "run"))
    before = load_checkpoint(parent_path).float_state()
    after = trained.float_state()
    statistics = [name for name in before if name.startswith("encoder.") and name.endswith(".running_mean")]
    weights = [name for name in before if name.startswith("encoder.") and name.endswith(".weight")]
    assert statistics and weights
    assert any(not torch.equal(before[name], after[name]) for name in weights)  # the encoder trained
    moved = [name for name in statistics if not torch.equal(before[name], after[name])]
    assert (moved == []) == (batchnorm == "fixed"), moved[:3]
    assert trained.provenance["encoder_batchnorm"] == batchnorm
