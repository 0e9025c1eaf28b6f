"""python -m tools bench --train: every stage of a real training step is timed, in every setup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tools.bench import main
from tools.bench_train import STAGES, generated_photo_bank, time_training_step

TINY = {"pretrained": False, "decoder_channels": [8, 8, 8]}


@pytest.mark.parametrize("setup", ["baseline", "channels_last", "frozen_encoder"])
def test_each_setup_times_every_stage(setup: str) -> None:
    timing = time_training_step(setup, crop=32, batch_size=2, steps=2, warmup=1, model_options=TINY,
                                bank=generated_photo_bank(count=4, side=48))
    assert timing.steps == 2 and set(timing.seconds) == set(STAGES)
    assert all(timing.seconds[stage] > 0 for stage in ("sample", "forward", "loss", "backward", "step"))
    assert (timing.seconds["ema"] > 0) == (setup != "baseline")
    assert timing.crops_per_s > 0
    assert sum(timing.share(stage) for stage in STAGES) == pytest.approx(1.0)


def test_the_baseline_loss_is_the_training_loss_at_the_old_cost() -> None:
    from models.color import n_ab_bins
    from tools.bench_train import dense_classification_loss
    from tools.train import colour_loss

    ab = torch.round(torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0)) * 30)
    out = torch.randn(2, n_ab_bins(), 8, 8, generator=torch.Generator().manual_seed(1))
    weights = torch.rand(n_ab_bins(), generator=torch.Generator().manual_seed(2)) + 0.5
    # On whole ab units the two agree but for ties between equidistant bins' rebalancing weights.
    assert float(dense_classification_loss(out, ab, weights)) == pytest.approx(
        float(colour_loss(out, ab, "classification", weights)), rel=0.05)


def test_generated_photos_are_colourful() -> None:
    bank = generated_photo_bank(count=3, side=40)
    assert len(bank) == 3 and bank.images[0].shape == (40, 40, 3)
    assert float(torch.from_numpy(bank.images[0]).float().std()) > 5


def test_cli_writes_a_table_and_json(tmp_path: Path, capsys, monkeypatch) -> None:
    # The CLI benches the real default architecture; keep it to one small crop and one timed step.
    out = tmp_path / "train.json"
    assert main(["--train", "--train-crops", "32", "--train-steps", "1", "--train-setups", "frozen_encoder",
                 "--train-rounds", "1",
                 "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| 32 | 16 | frozen_encoder |" in table
    rows = json.loads(out.read_text())
    assert rows[0]["setup"] == "frozen_encoder" and rows[0]["crops_per_s"] > 0


def test_cli_rejects_an_unknown_setup(capsys) -> None:
    assert main(["--train", "--train-setups", "turbo"]) == 2
    assert "unknown setup turbo" in capsys.readouterr().err
