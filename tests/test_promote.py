"""``tools promote``: a run's checkpoint becomes a shippable one with its decoding and evaluation recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import load_checkpoint, preferred_highlight_rolloff
from models.color import HighlightRolloff
from models.engines import create_engine
from tests.conftest import gradient_image
from tools import evaluate, promote


@pytest.fixture
def evaluation(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray(gradient_image(48, 64, seed=i)).save(data / f"{i}.png")
    report = tmp_path / "eval.json"
    assert evaluate.main(["--model", str(tiny_checkpoint), "--data", str(data), "--render-size", "64",
                          "--engine", "torch", "--json", str(report)]) == 0
    return report


def test_promote_records_decoding_and_evaluation(tiny_checkpoint: Path, evaluation: Path, tmp_path: Path) -> None:
    shipped = tmp_path / "weights" / "shipped.pt"
    assert promote.main([str(tiny_checkpoint), "-o", str(shipped), "--temperature", "0.7",
                         "--evaluation", str(evaluation)]) == 0
    source, result = load_checkpoint(tiny_checkpoint), load_checkpoint(shipped)
    assert (result.decode["method"], result.decode["temperature"]) == ("annealed_mean", 0.7)
    assert result.provenance["promoted_from"] == source.label
    assert result.provenance["purpose"] == "tests"  # the run's own provenance is kept
    recorded = result.provenance["evaluation"]
    assert recorded["image_count"] == 2 and set(recorded["models"]) == {source.label}
    assert recorded["gray_baseline"]["psnr"] > 0 and recorded["truth"]["colourfulness"] > 0
    assert {t.dtype for t in result.state_dict.values() if t.is_floating_point()} == {torch.float16}

    # The engine reads the temperature from the file: same weights, a different decoding than the source's.
    L = np.random.default_rng(0).uniform(0, 100, (1, 1, 64, 64)).astype(np.float32)
    with create_engine(str(tiny_checkpoint), kind="torch") as a, create_engine(str(shipped), kind="torch") as b:
        assert b.decode.temperature == 0.7 and a.decode.temperature != 0.7
        assert not np.allclose(a.infer(L), b.infer(L))


def test_promote_reports_a_bad_checkpoint_in_one_line(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"garbage")
    with pytest.raises(SystemExit) as exc:
        promote.main([str(broken), "-o", str(tmp_path / "out.pt")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert str(broken) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.pt").exists()


def test_promote_records_render_sizes_that_the_colorizer_uses(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from models.colorizer import Colorizer

    shipped = tmp_path / "shipped.pt"
    assert promote.main([str(tiny_checkpoint), "-o", str(shipped), "--render-size", "128",
                         "--min-render-size", "96"]) == 0
    with create_engine(str(shipped), kind="torch") as engine:
        colorizer = Colorizer(engine)
        assert (colorizer.render_size, colorizer.min_render_size) == (128, 96)
        assert (colorizer.render(np.zeros((40, 30), np.float32)).render_height, colorizer.render_size) == (96, 128)
    with pytest.raises(SystemExit):
        promote.main([str(tiny_checkpoint), "-o", str(tmp_path / "bad.pt"), "--min-render-size", "-5"])
    assert not (tmp_path / "bad.pt").exists()


def test_promote_averages_weights_with_another_checkpoint(tiny_checkpoint: Path, tiny_regression_checkpoint: Path,
                                                          tmp_path: Path, capsys) -> None:
    from models.checkpoint import save_checkpoint
    from models.registry import create_model

    torch.manual_seed(1)  # a second run of the same architecture, other weights
    other = tmp_path / "other.pt"
    save_checkpoint(other, create_model("effnet_unet", pretrained=False, decoder_channels=(32, 24, 16)))
    souped = tmp_path / "soup.pt"
    assert promote.main([str(tiny_checkpoint), "-o", str(souped), "--average-with", f"{other}:0.25", "--fp32"]) == 0

    a, b, result = load_checkpoint(tiny_checkpoint), load_checkpoint(other), load_checkpoint(souped)
    for name, tensor in result.state_dict.items():
        if tensor.is_floating_point():
            expected = 0.75 * a.state_dict[name].float() + 0.25 * b.state_dict[name].float()
            assert torch.allclose(tensor, expected, atol=1e-6), name
    assert result.provenance["weight_average"] == [{"model": a.label, "share": 0.75},
                                                   {"model": b.label, "share": 0.25}]

    # A checkpoint saved before effnet_unet's config named its encoder is the same (Lite0) architecture.
    saved = torch.load(other, weights_only=True)
    del saved["config"]["encoder"]
    older = tmp_path / "older.pt"
    torch.save(saved, older)
    assert promote.main([str(tiny_checkpoint), "-o", str(tmp_path / "soup2.pt"), "--average-with", f"{older}:0.25",
                         "--fp32"]) == 0
    souped_again = load_checkpoint(tmp_path / "soup2.pt").state_dict
    assert torch.equal(souped_again["head.weight"], result.state_dict["head.weight"])

    # Another architecture, or shares that leave the run nothing, are refused in one line with nothing written.
    for bad in (f"{tiny_regression_checkpoint}:0.5", f"{other}:1.0", f"{other}", f"{other}:half"):
        with pytest.raises(SystemExit) as exc:
            promote.main([str(tiny_checkpoint), "-o", str(tmp_path / "bad.pt"), "--average-with", bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert "average-with" in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "bad.pt").exists()


def test_promote_records_a_highlight_rolloff_that_the_colorizer_applies(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Chroma is kept below START, scaled by KEPT from END up, linearly between; hints keep their exact colour."""
    from models.colorizer import Colorizer
    from models.hints import ColourHints, ColourPoint

    shipped = tmp_path / "shipped.pt"
    assert promote.main([str(tiny_checkpoint), "-o", str(shipped), "--highlight-rolloff", "60,90,0.25", "--fp32"]) == 0
    L = np.tile(np.linspace(0, 100, 101, dtype=np.float32), (24, 1))  # every lightness, left to right
    with (create_engine(str(tiny_checkpoint), kind="torch") as plain,
          create_engine(str(shipped), kind="torch") as rolled):
        before = Colorizer(plain, render_size=64).predict_ab([L])[0]
        colorizer = Colorizer(rolled, render_size=64)
        after = colorizer.predict_ab([L])[0]
        hint = ColourPoint(95, 12, (-20.0, 30.0), radius=1.5)
        hinted = colorizer.predict_ab([L], hints=[ColourHints(points=(hint,))])[0]
    assert np.abs(before).max() > 1.0  # the tiny model does colour: the test would see a roll-off
    np.testing.assert_allclose(after[:, :, :61], before[:, :, :61], atol=1e-4)
    np.testing.assert_allclose(after[:, :, 90:], 0.25 * before[:, :, 90:], atol=1e-4)
    np.testing.assert_allclose(after[:, :, 75], 0.625 * before[:, :, 75], atol=1e-4)
    np.testing.assert_allclose(hinted[:, 12, 95], (-20.0, 30.0), atol=0.5)  # a restorer's colour is not rolled off
    assert load_checkpoint(shipped).provenance["highlight_rolloff"] == {"start": 60.0, "end": 90.0, "kept": 0.25}

    # "off" takes it away again: nothing recorded, and the colours are the plain model's.
    unrolled = tmp_path / "unrolled.pt"
    assert promote.main([str(shipped), "-o", str(unrolled), "--highlight-rolloff", "off", "--fp32"]) == 0
    assert "highlight_rolloff" not in load_checkpoint(unrolled).provenance
    with create_engine(str(unrolled), kind="torch") as engine:
        np.testing.assert_allclose(Colorizer(engine, render_size=64).predict_ab([L])[0], before, atol=1e-4)


def test_a_highlight_rolloff_recorded_as_a_bare_list_still_reads() -> None:
    """The 2026-12-04 candidate's provenance holds its roll-off as [start, end, kept], before they were named."""
    named = preferred_highlight_rolloff({"highlight_rolloff": {"start": 80.0, "end": 95.0, "kept": 0.4}})
    legacy = preferred_highlight_rolloff({"highlight_rolloff": [80.0, 95.0, 0.4]})
    assert named == legacy == HighlightRolloff(80, 95, 0.4)
    assert preferred_highlight_rolloff({}) is None


@pytest.mark.parametrize("text", ["80,95", "90,80,0.4", "80,95,1.5", "a,b,c"])
def test_a_bad_highlight_rolloff_is_one_line_and_writes_nothing(tiny_checkpoint: Path, tmp_path: Path, text: str,
                                                               capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        promote.main([str(tiny_checkpoint), "-o", str(tmp_path / "out.pt"), "--highlight-rolloff", text])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "highlight roll-off" in err and text in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.pt").exists()
