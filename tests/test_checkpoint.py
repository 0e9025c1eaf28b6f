"""Self-describing checkpoints: exact round trips, everything a reader needs preserved, and every way a file
can be broken refused with a CheckpointError that names the file (never a bare torch/pickle error)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.checkpoint import (
    DEFAULT_CHECKPOINT,
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from models.color import AB_NORM, ColorConstants, n_ab_bins
from models.predictor import ABPredictor, DecodeOptions
from models.registry import create_model

PROVENANCE = {
    "data": ["clothing/train", "flowers"],
    "steps": 1200,
    "metrics": {"psnr": 24.5, "colourfulness": 31.25},
    "git_commit": "0123456789abcdef",
}


def _trained_like(model: nn.Module) -> nn.Module:
    """Move BatchNorm running statistics off their initial values, so a round trip must carry them too."""
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(5)) * 100)
    return model.eval()


@pytest.fixture(scope="module")
def regression_model() -> nn.Module:
    torch.manual_seed(0)
    return _trained_like(create_model("unet", base_channels=4))


@pytest.fixture(scope="module")
def classification_model() -> nn.Module:
    torch.manual_seed(0)
    return _trained_like(create_model("eccv16", width_multiplier=1 / 16))


@pytest.fixture(scope="module")
def L() -> torch.Tensor:
    return torch.rand(2, 1, 32, 48, generator=torch.Generator().manual_seed(6)) * 100


@pytest.fixture
def saved(tmp_path: Path, regression_model: nn.Module) -> Path:
    path = tmp_path / "model.pt"
    save_checkpoint(path, regression_model, provenance=PROVENANCE)
    return path


# --- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["regression_model", "classification_model"])
def test_round_trip_gives_identical_outputs(tmp_path: Path, L: torch.Tensor, which: str, request) -> None:
    model = request.getfixturevalue(which)
    path = tmp_path / f"{which}.pt"
    digest = save_checkpoint(path, model)
    checkpoint = load_checkpoint(path)
    assert checkpoint.sha256 == digest and checkpoint.path == path
    rebuilt = checkpoint.build_model()
    assert type(rebuilt) is type(model) and not rebuilt.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value, rtol=0, atol=0, msg=key)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(L), model(L), rtol=0, atol=0)
        torch.testing.assert_close(checkpoint.build_predictor()(L), ABPredictor(model)(L), rtol=0, atol=0)


def test_fp16_storage_round_trip_is_close(tmp_path: Path, L: torch.Tensor, classification_model: nn.Module) -> None:
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    save_checkpoint(full, classification_model)
    save_checkpoint(half, classification_model, half=True)
    assert half.stat().st_size < 0.7 * full.stat().st_size
    checkpoint = load_checkpoint(half)
    floats = [v for v in checkpoint.state_dict.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert any(v.dtype == torch.int64 for v in checkpoint.state_dict.values()), "num_batches_tracked stays integer"
    rebuilt = checkpoint.build_model()
    assert all(p.dtype == torch.float32 for p in rebuilt.parameters()), "weights are widened back to fp32"
    with torch.no_grad():
        expected, got = ABPredictor(classification_model)(L), ABPredictor(rebuilt)(L)
    # ab in Lab units: fp16 weights move colours by far less than one ab bin.
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-2 * max(scale, 1.0))


def test_everything_a_reader_needs_is_preserved(tmp_path: Path, regression_model: nn.Module) -> None:
    path = tmp_path / "described.pt"
    decode = DecodeOptions(method="mode", temperature=0.5)
    save_checkpoint(path, regression_model, provenance=PROVENANCE, decode=decode)
    checkpoint = load_checkpoint(path)
    assert checkpoint.model_name == "unet"
    assert checkpoint.config == dataclasses.asdict(regression_model.config)
    assert checkpoint.provenance == PROVENANCE
    assert checkpoint.decode == decode.to_dict()
    assert DecodeOptions(**checkpoint.decode) == decode
    current = ColorConstants.current().to_dict()
    assert checkpoint.color["n_bins"] == n_ab_bins() and checkpoint.color["ab_norm"] == AB_NORM
    assert set(checkpoint.color) == set(current)
    assert checkpoint.label == f"unet@{checkpoint.sha256[:12]}"
    assert checkpoint.build_predictor().decode == decode


def test_tuple_configs_and_pretrained_flags_survive(tmp_path: Path) -> None:
    """Tuples come back as lists and still rebuild; pretrained is switched off when the checkpoint rebuilds."""
    torch.manual_seed(0)
    model = create_model("effnet_unet", pretrained=False, decoder_channels=(16, 12, 8)).eval()
    path = tmp_path / "effnet.pt"
    save_checkpoint(path, model)
    checkpoint = load_checkpoint(path)
    assert checkpoint.config["decoder_channels"] == [16, 12, 8]
    checkpoint.config["pretrained"] = True  # as a training run that started from ImageNet would have saved it
    rebuilt = checkpoint.build_model()
    assert rebuilt.config.pretrained is False and rebuilt.config.decoder_channels == (16, 12, 8)
    L = torch.rand(1, 1, 64, 64) * 100
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(L), model(L), rtol=0, atol=0)


def test_the_shared_fixtures_load(tiny_checkpoint: Path, tiny_regression_checkpoint: Path) -> None:
    for path, output in ((tiny_checkpoint, "logits"), (tiny_regression_checkpoint, "ab")):
        checkpoint = load_checkpoint(path)
        assert checkpoint.provenance == {"purpose": "tests"}
        assert checkpoint.build_model().output == output


# --- broken files ---------------------------------------------------------------------------------


def _assert_refused(path: Path, match: str | None = None) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value), "the message must name the file"
    if match:
        assert match in str(info.value)
    return info.value


def test_corrupt_bytes_are_refused(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    saved.write_bytes(bytes(data))
    _assert_refused(saved)


def test_truncated_file_is_refused(saved: Path) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) * 2 // 3])
    _assert_refused(saved, "not a readable checkpoint")


def test_zero_byte_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.touch()
    _assert_refused(path, "not a readable checkpoint")


def test_plain_torch_file_is_refused(tmp_path: Path, regression_model: nn.Module) -> None:
    tensor_file, state_dict_file = tmp_path / "tensor.pt", tmp_path / "state_dict.pt"
    torch.save(torch.randn(4, 4), tensor_file)
    torch.save(regression_model.state_dict(), state_dict_file)  # the commonest mistake: a bare state_dict
    _assert_refused(tensor_file, "not a Tinct checkpoint")
    _assert_refused(state_dict_file, "not a Tinct checkpoint")


def test_other_format_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"format": "someone-else", "model": "unet", "steps": 10}, path)
    _assert_refused(path, "not a Tinct checkpoint")


def test_future_format_version_is_refused(saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, saved)
    _assert_refused(saved, "format version")


def test_tampered_sha_is_refused(saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    payload["weights_sha256"] = "0" * 64
    torch.save(payload, saved)
    _assert_refused(saved, "corrupt")


def test_tampered_weights_are_refused(saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    state = torch.load(io.BytesIO(payload["weights"].numpy().tobytes()), weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 1
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload["weights"] = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)  # sha left as it was
    torch.save(payload, saved)
    _assert_refused(saved, "corrupt")


def test_other_colour_constants_are_refused(saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    payload["color"] = {**payload["color"], "n_bins": 313}  # Zhang et al.'s bin set, not Tinct's
    torch.save(payload, saved)
    _assert_refused(saved, "n_bins")


def test_header_with_missing_fields_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "headless.pt"
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "model": "unet"}, path)
    _assert_refused(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    _assert_refused(tmp_path / "nowhere.pt", "no such checkpoint")
    _assert_refused(tmp_path, "no such checkpoint")  # a directory is not a checkpoint either


# --- strict loading -------------------------------------------------------------------------------


def test_missing_key_is_refused_at_build(saved: Path) -> None:
    checkpoint = load_checkpoint(saved)
    del checkpoint.state_dict[next(iter(checkpoint.state_dict))]
    with pytest.raises(CheckpointError) as info:
        checkpoint.build_model()
    assert str(saved) in str(info.value) and "unet" in str(info.value)


def test_unexpected_key_and_wrong_shape_are_refused(saved: Path) -> None:
    checkpoint = load_checkpoint(saved)
    checkpoint.state_dict["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="extra.weight"):
        checkpoint.build_model()
    checkpoint = load_checkpoint(saved)
    checkpoint.config["base_channels"] = 8  # weights of a 4-wide U-Net do not fit an 8-wide one
    with pytest.raises(CheckpointError, match="do not fit"):
        checkpoint.build_model()


# --- atomic saving --------------------------------------------------------------------------------


def test_save_leaves_no_partial_file(tmp_path: Path, regression_model: nn.Module) -> None:
    path = tmp_path / "nested" / "dir" / "model.pt"
    save_checkpoint(path, regression_model)
    save_checkpoint(path, regression_model, half=True)  # overwriting is atomic too
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]
    assert load_checkpoint(path).state_dict  # the second save won, complete


def test_failed_save_keeps_the_old_file_and_no_partial(saved: Path, regression_model: nn.Module) -> None:
    before = saved.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda: whatever pickle raises
        save_checkpoint(saved, regression_model, provenance={"callback": lambda: None})
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def test_numpy_metrics_in_provenance_round_trip(tmp_path: Path, regression_model: nn.Module) -> None:
    path = tmp_path / "numpy.pt"
    save_checkpoint(path, regression_model, provenance={"psnr": np.float64(24.5), "data": Path("/data/flowers")})
    assert load_checkpoint(path).provenance == {"psnr": 24.5, "data": "/data/flowers"}


# --- resolving names ------------------------------------------------------------------------------


def test_resolve_checkpoint(saved: Path, tmp_path: Path) -> None:
    assert resolve_checkpoint(saved) == saved
    assert resolve_checkpoint(str(saved)) == saved
    with pytest.raises(CheckpointError, match="no such checkpoint") as info:
        resolve_checkpoint(tmp_path / "missing.pt")
    assert str(tmp_path / "missing.pt") in str(info.value)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_checkpoint(tmp_path)


def test_resolve_default() -> None:
    if DEFAULT_CHECKPOINT.is_file():
        assert resolve_checkpoint(None) == resolve_checkpoint("default") == DEFAULT_CHECKPOINT
    else:
        for name in (None, "default"):
            with pytest.raises(CheckpointError, match="missing from this install") as info:
                resolve_checkpoint(name)
            assert str(DEFAULT_CHECKPOINT) in str(info.value)


def test_the_weights_hash_does_not_depend_on_the_memory_format(tmp_path) -> None:
    from models.registry import create_model

    model = create_model("effnet_unet", pretrained=False, decoder_channels=[8, 8, 8])
    plain = save_checkpoint(tmp_path / "plain.pt", model, half=True)
    channels_last = save_checkpoint(tmp_path / "cl.pt", model.to(memory_format=torch.channels_last), half=True)
    assert plain == channels_last
