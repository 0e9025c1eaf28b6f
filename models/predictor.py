"""Turn any registered colorization network into ``L -> ab`` in Lab units.

This is the graph every engine runs (and ONNX/TensorRT export): regression outputs are scaled
back by AB_NORM, classification logits are decoded (annealed mean by default) inside the graph, so
a backend never needs to know which head a model has.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.color import AB_NORM, ANNEAL_T_ZHANG, decode_ab


@dataclass(frozen=True)
class DecodeOptions:
    method: str = "annealed_mean"  # mode | mean | annealed_mean (classification heads only)
    temperature: float = ANNEAL_T_ZHANG

    def to_dict(self) -> dict:
        return asdict(self)


class ABPredictor(nn.Module):
    def __init__(self, model: nn.Module, decode: DecodeOptions | None = None) -> None:
        super().__init__()
        if model.output not in ("ab", "logits"):
            raise ValueError(f"{type(model).__name__} outputs {model.output!r}, not colour; it cannot colorize")
        self.model = model
        self.decode = decode or DecodeOptions()
        self.stride = model.stride
        self.output_stride = model.output_stride

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        out = self.model(L)
        if self.model.output == "ab":
            return out.float() * AB_NORM
        return decode_ab(out.float(), self.decode.method, self.decode.temperature)
