"""ONNX export: dynamic shapes, self-describing metadata, the cache, atomic writes, the CLI."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.onnx_export import (
    EXPORT_VERSION,
    INPUT_NAME,
    OUTPUT_NAME,
    cached_onnx_path,
    ensure_onnx,
    read_onnx_metadata,
)
from models.predictor import DecodeOptions
from models.registry import create_model
from tools.export import main as export_main


@pytest.fixture(scope="module")
def exported(tiny_checkpoint) -> Path:
    return ensure_onnx(tiny_checkpoint)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    """Another architecture, small enough to export in a few seconds: the CLI and stale-cache tests."""
    torch.manual_seed(1)
    model = create_model("regression", base_width=8, n_dilated=1, out_stride=2, head="classification")
    path = tmp_path_factory.mktemp("small") / "small.pt"
    save_checkpoint(path, model, provenance={"purpose": "export tests"})
    return path


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_is_dynamic_in_batch_height_and_width(exported, tiny_checkpoint):
    graph_input = onnx.load(str(exported)).graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == INPUT_NAME
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # B, 1, H, W
    _assert_matches_torch(exported, tiny_checkpoint, ((1, 1, 64, 96), (3, 1, 32, 160)), seed=0)


@pytest.mark.parametrize("context_encoder", [False, True], ids=["own-head", "frozen-copy"])
def test_export_of_a_global_context_model_matches_torch_at_every_size(tmp_path, context_encoder):
    # The pooled embedding must be a mean over whatever size the picture has, not one traced size; both fusions
    # (strides 32 and 16) read it, made by the colour encoder's head or by a frozen ImageNet copy's.
    torch.manual_seed(2)
    model = create_model("effnet_unet", pretrained=True, global_context=True, decoder_context=True,
                         context_encoder=context_encoder, decoder_channels=(16, 12, 8))
    torch.nn.init.normal_(model.context.weight, 0, 0.5)
    torch.nn.init.normal_(model.context16.weight, 0, 0.5)
    path = tmp_path / "context.pt"
    save_checkpoint(path, model, provenance={"purpose": "export tests"})
    _assert_matches_torch(ensure_onnx(path), path, ((1, 1, 64, 96), (2, 1, 160, 64)), seed=1)


def _assert_matches_torch(onnx_path: Path, checkpoint: Path, shapes, seed: int) -> None:
    """The exported graph's ab at each (B, 1, H, W) shape: 1/4 of the input's size, within 1e-2 of PyTorch's."""
    predictor = load_checkpoint(checkpoint).build_predictor()
    session = _session(onnx_path)
    rng = np.random.default_rng(seed)
    for shape in shapes:
        L = (rng.random(shape) * 100).astype(np.float32)
        (ab,) = session.run([OUTPUT_NAME], {INPUT_NAME: L})
        with torch.inference_mode():
            expected = predictor(torch.from_numpy(L)).numpy()
        assert ab.shape == (shape[0], 2, shape[2] // 4, shape[3] // 4), shape
        assert np.abs(ab - expected).max() < 1e-2, shape


def test_export_carries_its_provenance(exported, tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    onnx.checker.check_model(str(exported))
    meta = read_onnx_metadata(exported)
    assert meta.checkpoint_sha256 == checkpoint.sha256
    assert (meta.model_name, meta.stride, meta.output_stride) == ("effnet_unet", 32, 4)
    assert meta.decode == DecodeOptions(**checkpoint.decode)
    assert meta.provenance == {"purpose": "tests"}
    assert meta.export_version == EXPORT_VERSION
    assert meta.to_checkpoint().label == checkpoint.label
    keys = {p.key for p in onnx.load(str(exported), load_external_data=False).metadata_props}
    assert {"tinct.checkpoint_sha256", "tinct.model_name", "tinct.stride", "tinct.decode"} <= keys


def test_export_is_one_file_written_atomically(exported):
    # Weights are inside the .onnx (no external-data side files) and no temporary file is left behind.
    assert [p.name for p in exported.parent.iterdir() if not p.name.endswith(".onnx")] == []
    assert exported.stat().st_size > 1_000_000
    assert exported.name.startswith(read_onnx_metadata(exported).checkpoint_sha256[:16])


def test_cache_is_reused_without_exporting_again(exported, tiny_checkpoint):
    before = exported.stat().st_mtime_ns
    again = ensure_onnx(load_checkpoint(tiny_checkpoint))
    assert again == exported
    assert again.stat().st_mtime_ns == before


def test_cli_export_and_stale_cache(small_checkpoint, tmp_path):
    out = tmp_path / "small-mode.onnx"
    assert export_main([str(small_checkpoint), "-o", str(out), "--decode-method", "mode"]) == 0
    meta = read_onnx_metadata(out)
    assert meta.decode.method == "mode" and meta.model_name == "regression"
    assert [p.name for p in tmp_path.iterdir()] == ["small-mode.onnx"]
    checkpoint = load_checkpoint(small_checkpoint)
    predictor = checkpoint.build_predictor(DecodeOptions(method="mode"))
    L = (np.random.default_rng(3).random((2, 1, 32, 48)) * 100).astype(np.float32)
    (ab,) = _session(out).run([OUTPUT_NAME], {INPUT_NAME: L})
    with torch.inference_mode():
        expected = predictor(torch.from_numpy(L)).numpy()
    # The mode is a bin centre: exact, except where two logits tie within float error.
    assert np.mean(np.abs(ab - expected) < 1e-3) > 0.99

    # A cached file recording another checkpoint under this checkpoint's name is exported again.
    cached = cached_onnx_path(checkpoint, DecodeOptions(method="mode"))
    cached.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(out))
    for prop in model.metadata_props:
        if prop.key == "tinct.checkpoint_sha256":
            prop.value = "0" * 64
    onnx.save(model, str(cached))
    os.utime(cached, ns=(0, 0))
    assert ensure_onnx(checkpoint, DecodeOptions(method="mode")) == cached
    assert cached.stat().st_mtime_ns > 0
    assert read_onnx_metadata(cached).checkpoint_sha256 == checkpoint.sha256


def test_cli_rejects_bad_arguments(tmp_path, tiny_checkpoint, capsys):
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.onnx")])
    assert "no such checkpoint" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        export_main([str(tiny_checkpoint), "-o", str(tmp_path / "a-file" / "x.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("python -m tools export: error: ") and "a-file" in err[0]
    with pytest.raises(SystemExit):
        export_main(["default", "-o", str(tmp_path / "x.txt")])
    assert "must end in .onnx" in capsys.readouterr().err


def test_reading_metadata_of_a_foreign_file_fails_clearly(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable ONNX file"):
        read_onnx_metadata(path)


def test_an_export_logs_its_own_line_and_none_of_the_exporters(small_checkpoint, tmp_path, caplog):
    """A first run exports once: the exporter's own narration (dozens of "Replaced initializer ..." and graph-pass
    lines from onnx_ir, onnxscript and torch.onnx) stays out of the user's terminal; errors would still show."""
    from models.onnx_export import export_onnx

    with caplog.at_level(logging.DEBUG):
        export_onnx(small_checkpoint, tmp_path / "small.onnx")
    foreign = [r for r in caplog.records if r.levelno >= logging.INFO and not r.name.startswith("models")]
    assert not foreign, [f"{r.name}: {r.getMessage()}" for r in foreign[:5]]
    assert any(r.name == "models.onnx_export" and "exported" in r.getMessage() for r in caplog.records)
    assert logging.getLogger("onnx_ir").level == logging.NOTSET  # the levels are put back afterwards
