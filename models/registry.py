"""One registry and one factory for every architecture (after timm's ``create_model``).

Every registered model is a plain ``nn.Module`` built from a config dataclass and follows one
contract, so engines, training and export treat them alike:

* input: an L batch ``(B, 1, H, W)`` in Lab units [0, 100], with H and W multiples of
  ``model.stride``; the model normalizes L itself, so no caller can feed it the wrong scale;
* ``model.output`` says what ``forward`` returns: ``"ab"`` (regression: ab / AB_NORM, roughly
  [-1, 1]) or ``"logits"`` (classification over the ``n_ab_bins()`` ab bins) or ``"score"``
  (a discriminator's patch scores, for adversarial training only);
* the output may be smaller than the input by ``model.output_stride``; the colorizer upsamples ab
  to full resolution guided by L.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

_REGISTRY: dict[str, tuple[type[nn.Module], type]] = {}


def register_model(name: str, config_cls: type) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: ``@register_model("unet", UNetConfig)``."""

    def add(model_cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = (model_cls, config_cls)
        model_cls.registry_name = name
        return model_cls

    return add


def _load_architectures() -> None:
    # Importing the architecture modules registers them; done lazily so that `models.registry`
    # itself stays import-cycle free.
    from models import eccv16, effnet_unet, fusion, patchgan, regression, unet  # noqa: F401


def list_models() -> list[str]:
    _load_architectures()
    return sorted(_REGISTRY)


def config_class(name: str) -> type:
    _load_architectures()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name][1]


def build_config(name: str, **overrides: Any) -> Any:
    cls = config_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"model {name!r} has no option {', '.join(unknown)}; its options: {', '.join(sorted(fields))}")
    return cls(**overrides)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered architecture; ``overrides`` set fields of its config dataclass."""
    config = build_config(name, **overrides)
    return _REGISTRY[name][0](config)


def model_from_config(name: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from a saved config dict (as checkpoints store it). Pretrained-weight loading
    is switched off: the checkpoint's own weights follow."""
    config = dict(config)
    if "pretrained" in config:
        config["pretrained"] = False
    return create_model(name, **config)
