"""Shipping decisions a checkpoint carries: decode-time class rebalancing (options, the predictor's logit bias,
ONNX parity, training records the prior, promote sets it) and the model's own render size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import load_checkpoint, save_checkpoint
from models.color import ab_bins_np, n_ab_bins
from models.colorizer import DEFAULT_RENDER_SIZE, Colorizer
from models.engines import create_engine
from models.onnx_export import decode_tag
from models.predictor import ABPredictor, DecodeOptions
from models.registry import create_model
from tests.conftest import gradient_image
from tools.promote import main as promote_main
from tools.train import TrainConfig, train


def neutral_heavy_prior() -> tuple[float, ...]:
    """Most pixels near-gray, as in real photos: the bin nearest ab = 0 holds 60% of them."""
    bins = ab_bins_np()
    prior = np.full(n_ab_bins(), 0.4 / (n_ab_bins() - 1))
    prior[np.argmin((bins**2).sum(1))] = 0.6
    return tuple(prior)


def skewed_prior() -> tuple[float, ...]:
    """Reds (a > 0) common, greens rare: rebalancing must pull every prediction toward green."""
    prior = np.exp(ab_bins_np()[:, 0] / 20.0)
    return tuple(prior / prior.sum())


def test_options_validate_and_round_trip_through_json() -> None:
    with pytest.raises(ValueError, match="needs the training data's ab prior"):
        DecodeOptions(rebalance=0.5)
    with pytest.raises(ValueError, match="must hold"):
        DecodeOptions(ab_prior=(1.0, 2.0))
    with pytest.raises(ValueError, match=">= 0"):
        DecodeOptions(rebalance=-1, ab_prior=neutral_heavy_prior())
    options = DecodeOptions(rebalance=0.4, ab_prior=neutral_heavy_prior())
    assert DecodeOptions(**json.loads(json.dumps(options.to_dict()))) == options
    assert decode_tag(options).startswith("annealed_mean-t0.38-r0.4-")
    assert decode_tag(DecodeOptions(ab_prior=neutral_heavy_prior())) == "annealed_mean-t0.38"  # off: same as none


def test_rebalancing_moves_colour_away_from_the_common_bins() -> None:
    torch.manual_seed(0)
    model = create_model("regression", base_width=8, n_dilated=1, out_stride=2, head="classification").eval()
    L = torch.rand(2, 1, 32, 32) * 100
    prior = neutral_heavy_prior()
    with torch.inference_mode():
        plain = ABPredictor(model, DecodeOptions(ab_prior=prior))(L)
        unchanged = ABPredictor(model, DecodeOptions())(L)
        tilted = ABPredictor(model, DecodeOptions(rebalance=1.0, ab_prior=prior))(L)
    torch.testing.assert_close(plain, unchanged)  # a recorded prior alone changes nothing
    chroma = lambda ab: float(ab.norm(dim=1).mean())  # noqa: E731
    assert chroma(tilted) > chroma(plain) + 0.5


def test_onnx_export_carries_the_rebalancing(tmp_path: Path, onnx_cache: Path) -> None:
    torch.manual_seed(2)
    model = create_model("regression", base_width=8, n_dilated=1, out_stride=2, head="classification")
    path = tmp_path / "rebalanced.pt"
    save_checkpoint(path, model, decode=DecodeOptions(rebalance=0.7, ab_prior=skewed_prior()))
    L = np.random.default_rng(0).random((2, 1, 32, 48)).astype(np.float32) * 100
    with create_engine(path, kind="torch") as torch_engine, \
            create_engine(path, kind="onnxruntime", cache_dir=onnx_cache) as ort_engine:
        expected, got = torch_engine.infer(L), ort_engine.infer(L)
        assert ort_engine.decode.rebalance == 0.7
    np.testing.assert_allclose(got, expected, atol=1e-2)  # ab units; a just-noticeable difference is ~2.3
    with create_engine(path, kind="torch", decode=DecodeOptions()) as plain:
        assert (got[:, 0] < plain.infer(L)[:, 0] - 2.0).all()  # the bias is in the exported graph: greener


def test_training_records_the_prior_and_promote_turns_rebalancing_on(tmp_path: Path, capsys) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        Image.fromarray(gradient_image(48, 48, seed=i)).save(photos / f"p{i}.png")
    cfg = TrainConfig(model="regression", model_options={"base_width": 8, "n_dilated": 1, "out_stride": 2,
                                                        "head": "classification"},
                      data=[str(photos)], steps=2, batch_size=2, crop=32, warmup_steps=1, log_every=1)
    run = train(cfg, tmp_path / "run")
    prior = load_checkpoint(run).decode["ab_prior"]
    assert len(prior) == n_ab_bins() and abs(sum(prior) - 1) < 1e-6 and max(prior) < 1

    shipped = tmp_path / "shipped.pt"
    assert promote_main([str(run), "-o", str(shipped), "--rebalance", "0.35"]) == 0
    decode = load_checkpoint(shipped).decode
    assert decode["rebalance"] == 0.35 and decode["ab_prior"] == prior

    regression = tmp_path / "regression.pt"  # no prior recorded: rebalancing it is refused in one line
    save_checkpoint(regression, create_model("regression", base_width=8, n_dilated=1, head="classification"))
    with pytest.raises(SystemExit) as exited:
        promote_main([str(regression), "-o", str(tmp_path / "x.pt"), "--rebalance", "0.5"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "ab prior" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()
    # --ab-prior-from measures it from the training photos instead
    assert promote_main([str(regression), "-o", str(tmp_path / "x.pt"), "--rebalance", "0.5",
                         "--ab-prior-from", str(photos)]) == 0
    assert len(load_checkpoint(tmp_path / "x.pt").decode["ab_prior"]) == n_ab_bins()


def test_a_promoted_render_size_becomes_the_models_own(tiny_regression_checkpoint: Path, tmp_path: Path) -> None:
    promoted = tmp_path / "promoted.pt"
    assert promote_main([str(tiny_regression_checkpoint), "-o", str(promoted), "--render-size", "96"]) == 0
    assert load_checkpoint(promoted).provenance["render_size"] == 96
    L = np.full((300, 200), 50.0, np.float32)
    with create_engine(promoted, kind="torch", precision="fp32") as engine:
        own = Colorizer(engine)
        assert own.render_size == 96
        render = own.predict_grid([L])[0]
        assert (render.render_height, render.render_width) == (96, 64)  # the long side at the model's own size
        assert Colorizer(engine, render_size=128).render_size == 128  # asked for: asked wins
    with create_engine(tiny_regression_checkpoint, kind="torch", precision="fp32") as engine:
        assert Colorizer(engine).render_size == DEFAULT_RENDER_SIZE  # nothing recorded: 256
    with pytest.raises(SystemExit):
        promote_main([str(tiny_regression_checkpoint), "-o", str(tmp_path / "bad.pt"), "--render-size", "8"])
    assert not (tmp_path / "bad.pt").exists()
