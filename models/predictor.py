"""Turn any registered colorization network into ``L -> ab`` in Lab units.

This is the graph every engine runs (and ONNX/TensorRT export): regression outputs are scaled
back by AB_NORM, classification logits are decoded (annealed mean by default) inside the graph, so
a backend never needs to know which head a model has.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from models.color import AB_NORM, ANNEAL_T_ZHANG, decode_ab, n_ab_bins, rebalance_weights


@dataclass(frozen=True)
class DecodeOptions:
    """How a classification head's bin distribution becomes ab.

    ``rebalance`` is class rebalancing applied when decoding rather than when training: the logits gain
    ``rebalance * log w``, with ``w`` Zhang et al.'s rebalancing weights computed from ``ab_prior`` (the
    training photos' ab distribution over the bins). A network trained without rebalancing predicts
    honest probabilities, which are dominated by the common, desaturated bins; this tilts them toward
    rare, saturated colours by a chosen amount (0 = off, 1 = the full weights), trading a little PSNR for
    the colourfulness users expect, without retraining.
    """

    method: str = "annealed_mean"  # mode | mean | annealed_mean (classification heads only)
    temperature: float = ANNEAL_T_ZHANG
    rebalance: float = 0.0
    ab_prior: tuple[float, ...] | None = None  # training data's bin probabilities, n_ab_bins() of them

    def __post_init__(self) -> None:
        if self.ab_prior is not None:
            prior = tuple(float(p) for p in self.ab_prior)  # JSON round trips hand back lists
            if len(prior) != n_ab_bins() or min(prior) < 0 or sum(prior) <= 0:
                raise ValueError(f"ab_prior must hold {n_ab_bins()} non-negative bin frequencies, got {len(prior)}")
            object.__setattr__(self, "ab_prior", prior)
        if self.rebalance < 0:
            raise ValueError(f"rebalance must be >= 0, got {self.rebalance}")
        if self.rebalance > 0 and self.ab_prior is None:
            raise ValueError("decode-time rebalancing needs the training data's ab prior, which this model lacks")

    def to_dict(self) -> dict:
        return asdict(self)

    def prior_bias(self) -> torch.Tensor | None:
        """The (Q,) vector added to the logits, or None when rebalancing is off."""
        if self.rebalance == 0 or self.ab_prior is None:
            return None
        weights = rebalance_weights(np.asarray(self.ab_prior, dtype=np.float64))
        return torch.from_numpy(self.rebalance * np.log(weights)).float()

    def prior_digest(self) -> str:
        """A short fingerprint of the prior, for cache file names."""
        if self.ab_prior is None:
            return "none"
        return hashlib.sha256(np.asarray(self.ab_prior, dtype=np.float64).tobytes()).hexdigest()[:8]


NETWORK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class CastNetwork(nn.Module):
    """A network whose weights and activations are ``dtype``; takes and returns float32.

    What a reduced-precision export runs: the ONNX graph then carries the precision itself, which is what
    TensorRT's strongly typed networks need (TensorRT 11 has no other way to ask for fp16), and the
    ab decoding that ``ABPredictor`` adds after it stays float32 (see ``models.engines.torch_engine`` for why).
    Keeps the network's ``output``/``stride``/``output_stride``, which the predictor reads.
    """

    def __init__(self, network: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.network = network.to(dtype)
        self.dtype = dtype
        self.output = network.output
        self.stride = network.stride
        self.output_stride = network.output_stride

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        return self.network(L.to(self.dtype)).float()


class ABPredictor(nn.Module):
    def __init__(self, model: nn.Module, decode: DecodeOptions | None = None) -> None:
        super().__init__()
        if model.output not in ("ab", "logits"):
            raise ValueError(f"{type(model).__name__} outputs {model.output!r}, not colour; it cannot colorize")
        self.model = model
        self.decode = decode or DecodeOptions()
        self.stride = model.stride
        self.output_stride = model.output_stride
        bias = self.decode.prior_bias() if model.output == "logits" else None
        # A buffer, so it follows the model to the GPU and is baked into ONNX exports as a constant.
        self.register_buffer("logit_bias", None if bias is None else bias.view(1, -1, 1, 1), persistent=False)

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        out = self.model(L)
        if self.model.output == "ab":
            return out.float() * AB_NORM
        logits = out.float() if self.logit_bias is None else out.float() + self.logit_bias
        return decode_ab(logits, self.decode.method, self.decode.temperature)
