"""Self-describing checkpoints: one file holds the weights, the model's registry name and config,
the colour constants it was trained with, how to decode its output, and provenance (data, steps,
metrics, git commit). Export and serving rebuild everything from the file alone.

Layout: a ``torch.save`` dict whose ``weights`` entry is the serialized state_dict as bytes, with
its sha256 beside it, so corruption is caught before any tensor is trusted. Loading uses
``weights_only=True``: a checkpoint can never run code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.color import ColorConstants, HighlightRolloff
from models.files import atomic_output
from models.predictor import ABPredictor, DecodeOptions
from models.registry import build_config, model_from_config

FORMAT = "tinct-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_CHECKPOINT = WEIGHTS_DIR / "tinct-default.pt"
# Names of published models (``<store>/<name>.pt``): safe as one file name or object key on every backend.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_FILE_SUFFIXES = (".pt", ".onnx")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, of another format or incompatible. The message names the file."""


@dataclass
class Checkpoint:
    model_name: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    color: dict[str, Any]
    decode: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    path: Path | None = None

    def build_model(self) -> nn.Module:
        """The network with these weights, loaded strictly, in eval mode, float32."""
        model = model_from_config(self.model_name, self.config)
        try:
            model.load_state_dict(self.float_state(), strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{self.path}: weights do not fit model {self.model_name!r}: {exc}") from exc
        return model.eval()

    def float_state(self) -> dict[str, torch.Tensor]:
        """The weights in float32 (they may be stored in fp16); integer buffers as stored."""
        return {k: v.float() if v.is_floating_point() else v for k, v in self.state_dict.items()}

    def build_predictor(self, decode: DecodeOptions | None = None) -> ABPredictor:
        return ABPredictor(self.build_model(), decode or DecodeOptions(**self.decode)).eval()

    @property
    def label(self) -> str:
        """A short human-readable identity: name and weights hash prefix."""
        return f"{self.model_name}@{self.sha256[:12]}"


DEFAULT_RENDER_SIZE = 256  # for a model that records no render size of its own (see preferred_render_size)
# How a checkpoint is rendered, recorded in its provenance by ``tools promote`` and read by the preferred_* functions
# below: chosen together with its decoding, so a fine-tune inherits them with the decoding (tools.train).
RENDERING_KEYS = ("render_size", "min_render_size", "highlight_rolloff")


def preferred_render_size(provenance: dict) -> int:
    """The render size a checkpoint was tuned at (``provenance["render_size"]``, recorded by ``tools promote``),
    or DEFAULT_RENDER_SIZE. The scale the network sees changes its colours: the shipped model's decoding was
    chosen at its own size, so that is what a caller who names none gets."""
    size = provenance.get("render_size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else DEFAULT_RENDER_SIZE


def preferred_min_render_size(provenance: dict) -> int:
    """The size a checkpoint wants small photos enlarged to before the network sees them
    (``provenance["min_render_size"]``, recorded by ``tools promote``), or 0: never enlarged. A network trained on
    objects at the scale of a 224 px render misreads a 64 px photo shown at 64 px."""
    size = provenance.get("min_render_size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 0


def preferred_highlight_rolloff(provenance: dict) -> HighlightRolloff | None:
    """The highlight roll-off a checkpoint was chosen with (``provenance["highlight_rolloff"]``: start, end and kept
    by name, recorded by ``tools promote``; the 2026-12-04 candidate holds them as a bare list, in that order), or
    None: ab as the network gives it."""
    recorded = provenance.get("highlight_rolloff")
    if not recorded:
        return None
    return HighlightRolloff(**recorded) if isinstance(recorded, dict) else HighlightRolloff(*recorded)


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    provenance: dict[str, Any] | None = None,
    decode: DecodeOptions | None = None,
    half: bool = False,
) -> str:
    """Write atomically (temp file + rename); returns the weights' sha256. ``half`` stores fp16."""
    # Standard strides, whatever the model's memory format: a channels-last model's 1x1 and depthwise kernels count
    # as contiguous with other strides, which torch.save records, and the same weights would hash differently.
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone(
             memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    weights = buffer.getvalue()
    digest = hashlib.sha256(weights).hexdigest()
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.registry_name,
        "config": _plain(dataclasses.asdict(model.config)),
        "color": ColorConstants.current().to_dict(),
        "decode": (decode or DecodeOptions()).to_dict(),
        "provenance": _plain(provenance or {}),
        "weights_sha256": digest,
        # As a uint8 tensor, stored byte for byte; pickled ``bytes`` would become latin-1 text, 1.5x larger.
        "weights": torch.frombuffer(bytearray(weights), dtype=torch.uint8),
    }
    with atomic_output(path) as f:
        torch.save(payload, f)
    return digest


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for garbage input
        # torch's own words ("KeyError: 174812789") say little to a user: say what the file is not, then quote them
        raise CheckpointError(f"{path}: not a readable checkpoint: not a PyTorch file, or a truncated or damaged one "
                              f"({type(exc).__name__}: {_first_line(exc)})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a Tinct checkpoint (no '{FORMAT}' header)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {payload.get('format_version')} is not supported")
    missing = sorted({"model", "config", "color", "weights", "weights_sha256"} - set(payload))
    stored = payload.get("weights")
    if missing or not (isinstance(stored, torch.Tensor) and stored.dtype == torch.uint8 and stored.dim() == 1):
        raise CheckpointError(f"{path}: incomplete checkpoint (missing {', '.join(missing) or 'weights bytes'})")
    weights = stored.numpy().tobytes()
    digest = hashlib.sha256(weights).hexdigest()
    if digest != payload["weights_sha256"]:
        recorded = str(payload["weights_sha256"])[:12]
        raise CheckpointError(f"{path}: weights are corrupt (sha256 {digest[:12]} != recorded {recorded})")
    expected = ColorConstants.current().to_dict()
    color = payload["color"]
    mismatched = sorted(k for k in expected if _plain(color.get(k)) != _plain(expected[k]))
    if mismatched:
        raise CheckpointError(f"{path}: trained with other colour constants ({', '.join(mismatched)})")
    state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    return Checkpoint(
        model_name=payload["model"],
        config=_complete_config(payload["model"], payload["config"]),
        state_dict=state,
        color=color,
        decode=payload.get("decode", {}),
        provenance=payload.get("provenance", {}),
        sha256=digest,
        path=path,
    )


def is_model_name(text: str | os.PathLike | None) -> bool:
    """Whether ``text`` names a published model (``archive-1950s``) rather than a file: letters, digits, ``.``,
    ``_`` and ``-``, starting with a letter or digit, without a ``.pt``/``.onnx`` suffix. ``default`` is the shipped
    model, not a store name. Deciding by shape alone, never by what happens to exist in the working directory,
    keeps the same job option meaning the same thing on every worker."""
    if not isinstance(text, str) or text == "default" or not MODEL_NAME.fullmatch(text):
        return False
    return not text.lower().endswith(_FILE_SUFFIXES)


def resolve_checkpoint(name_or_path: str | os.PathLike | None, folders: Sequence[str | os.PathLike] = ()) -> Path:
    """``None`` or ``"default"`` -> the shipped model; a model name (:func:`is_model_name`) -> ``<folder>/<name>.pt``
    in the first of ``folders`` that has it; anything else is a checkpoint path.

    ``folders`` are local model stores the caller chose (``models`` reads no settings); stores in object storage
    are fetched to a local folder by ``worker.model_store`` first.
    """
    if name_or_path in (None, "default"):
        if not DEFAULT_CHECKPOINT.is_file():
            raise CheckpointError(f"{DEFAULT_CHECKPOINT}: the shipped default model is missing from this install")
        return DEFAULT_CHECKPOINT
    if is_model_name(name_or_path):
        for folder in folders:
            candidate = Path(folder) / f"{name_or_path}.pt"
            if candidate.is_file():
                return candidate
        where = ", ".join(os.fspath(f) for f in folders)
        raise CheckpointError(
            f"{name_or_path}: no model of that name in {where}" if where else
            f"{name_or_path}: a model name, but no model store is configured (or give a path to a .pt checkpoint)"
        )
    path = Path(name_or_path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (use 'default', a model name or a path to a .pt "
                              "checkpoint)")
    return path


def _complete_config(model_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """A saved config with every field of its architecture's config filled in: a checkpoint saved before a field was
    added (effnet_unet's ``encoder``) reads as one naming that field's default, so two checkpoints of one
    architecture have equal configs whenever they were saved. An unknown model or option is left as saved, for
    ``build_model`` to report."""
    try:
        return _plain(dataclasses.asdict(build_config(model_name, **config)))
    except (KeyError, TypeError, ValueError):
        return config


def _plain(value: Any) -> Any:
    """Tuples -> lists, numpy scalars -> Python numbers, paths -> str, recursively: saved configs compare
    equal after a round trip, and ``weights_only`` loading accepts everything a checkpoint holds."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()  # torch colours its messages
    return text[0][:200] if text else ""
