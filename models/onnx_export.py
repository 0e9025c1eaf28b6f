"""Export a checkpoint's ``L -> ab`` predictor to one self-describing ONNX file, and cache such files.

The exported graph is exactly ``Checkpoint.build_predictor()`` (network + ab decoding), so a runtime
never needs to know which head a model has. Batch, height and width are dynamic; height and width
are declared as multiples of the model's stride (``Dim("h_blocks") * stride``), which is the only
shape contract the architectures have, so the exporter cannot silently specialize on the sample size.

The file carries its own provenance in ``metadata_props`` (checkpoint sha256, model name and config,
strides, decode options, colour constants, provenance), so an ONNX file alone is enough to label
outputs and to decide whether a cached export still belongs to a checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint import Checkpoint, load_checkpoint
from models.files import atomic_path
from models.predictor import NETWORK_DTYPES, CastNetwork, DecodeOptions

log = logging.getLogger(__name__)

ONNX_OPSET = 18
INPUT_NAME = "L"
OUTPUT_NAME = "ab"
# Bumped when the exported graph or its metadata change meaning: cached files of another version are
# re-exported instead of trusted.
EXPORT_VERSION = 1
# Upper bounds the exporter needs for its symbolic shapes: 4096 images, 64 Ki pixels a side.
MAX_BATCH = 4096
MAX_SIDE = 65536
_META_PREFIX = "tinct."
# The network precisions an export can carry. Not bf16: the exporter's constant folding goes through numpy,
# which has no bfloat16, so folded weights come out float32 beside bfloat16 activations, and opset 18's Conv
# does not take bfloat16 at all. fp16 runs as fast on tensor cores (Volta and later) and the network's
# activations fit its range (fp16 parity with fp32 was measured on an H100, see the README).
EXPORT_PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported file says about itself (read back by ``read_onnx_metadata``)."""

    export_version: int
    checkpoint_sha256: str
    model_name: str
    config: dict[str, Any]
    color: dict[str, Any]
    provenance: dict[str, Any]
    decode: DecodeOptions
    stride: int
    output_stride: int
    opset: int
    # The network's arithmetic (weights and activations); inputs, outputs and the ab decoding are float32
    # whatever it is. Files written before it was recorded are float32.
    precision: str = "fp32"

    def to_props(self) -> dict[str, str]:
        fields = {
            "export_version": str(self.export_version),
            "checkpoint_sha256": self.checkpoint_sha256,
            "model_name": self.model_name,
            "config": json.dumps(self.config, sort_keys=True),
            "color": json.dumps(self.color, sort_keys=True),
            "provenance": json.dumps(self.provenance, sort_keys=True, default=str),
            "decode": json.dumps(self.decode.to_dict(), sort_keys=True),
            "stride": str(self.stride),
            "output_stride": str(self.output_stride),
            "opset": str(self.opset),
            "precision": self.precision,
        }
        return {_META_PREFIX + k: v for k, v in fields.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "ONNX file") -> OnnxMetadata:
        def get(key: str) -> str:
            try:
                return props[_META_PREFIX + key]
            except KeyError:
                raise ValueError(f"{source}: not a Tinct export (metadata '{_META_PREFIX}{key}' is missing)") from None

        return cls(
            export_version=int(get("export_version")),
            checkpoint_sha256=get("checkpoint_sha256"),
            model_name=get("model_name"),
            config=json.loads(get("config")),
            color=json.loads(get("color")),
            provenance=json.loads(get("provenance")),
            decode=DecodeOptions(**json.loads(get("decode"))),
            stride=int(get("stride")),
            output_stride=int(get("output_stride")),
            opset=int(get("opset")),
            precision=props.get(_META_PREFIX + "precision", "fp32"),
        )

    def to_checkpoint(self, path: Path | None = None) -> Checkpoint:
        """A weightless ``Checkpoint`` for provenance (``label``, ``provenance``, ``sha256``).

        An ONNX file holds its weights as graph initializers, not as a state_dict, so ``state_dict``
        is empty and ``build_model()`` on the result fails strictly instead of returning random weights.
        """
        return Checkpoint(
            model_name=self.model_name,
            config=self.config,
            state_dict={},
            color=self.color,
            decode=self.decode.to_dict(),
            provenance=self.provenance,
            sha256=self.checkpoint_sha256,
            path=path,
        )


def read_onnx_metadata(path: str | os.PathLike) -> OnnxMetadata:
    """The Tinct metadata of an exported file; ValueError when the file is not a Tinct export.

    Loads the graph without its tensors' bytes being parsed into numpy, so this is cheap enough to call
    before every cache hit.
    """
    import onnx  # a second and a half to import: only where an export is read or made, not in every command

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends for garbage
        raise ValueError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from exc
    return OnnxMetadata.from_props({p.key: p.value for p in model.metadata_props}, source=str(path))


def _as_checkpoint(checkpoint: str | os.PathLike | Checkpoint) -> Checkpoint:
    return checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)


def _effective_decode(checkpoint: Checkpoint, decode: DecodeOptions | None) -> DecodeOptions:
    return decode if decode is not None else DecodeOptions(**checkpoint.decode)


def export_onnx(
    checkpoint: str | os.PathLike | Checkpoint,
    out_path: str | os.PathLike,
    decode: DecodeOptions | None = None,
    opset: int = ONNX_OPSET,
    precision: str = "fp32",
) -> Path:
    """Export ``checkpoint.build_predictor(decode)`` to ``out_path`` as one file; returns the path.

    ``decode`` defaults to the options recorded in the checkpoint. ``precision`` ``"fp16"`` or ``"bf16"``
    stores the network's weights and runs its layers in that type (``models.predictor.CastNetwork``), with
    float32 input, output and ab decoding: the graph TensorRT builds reduced-precision engines from. The
    file appears atomically
    (written next to its destination, checked with ``onnx.checker``, then renamed), so a reader or a
    concurrent exporter never sees a half-written model.
    """
    import onnx  # (see read_onnx_metadata)

    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"unsupported export precision {precision!r}; valid choices: {', '.join(EXPORT_PRECISIONS)}")
    ckpt = _as_checkpoint(checkpoint)
    decode = _effective_decode(ckpt, decode)
    predictor = ckpt.build_predictor(decode).eval()
    if precision != "fp32":
        predictor.model = CastNetwork(predictor.model, NETWORK_DTYPES[precision])
    predictor = _with_clip_activations(predictor)
    stride = int(predictor.stride)
    output_stride = int(predictor.model.output_stride)
    meta = OnnxMetadata(
        export_version=EXPORT_VERSION,
        checkpoint_sha256=ckpt.sha256,
        model_name=ckpt.model_name,
        config=ckpt.config,
        color=ckpt.color,
        provenance=ckpt.provenance,
        decode=decode,
        stride=stride,
        output_stride=output_stride,
        opset=opset,
        precision=precision,
    )
    # Two blocks a side and a batch of 2: sample values of 1 would be specialized by torch.export.
    sample = torch.full((2, 1, 2 * stride, 2 * stride), 50.0)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    h_blocks = torch.export.Dim("h_blocks", min=1, max=MAX_SIDE // stride)
    w_blocks = torch.export.Dim("w_blocks", min=1, max=MAX_SIDE // stride)
    dynamic_shapes = {"L": {0: batch, 2: h_blocks * stride, 3: w_blocks * stride}}
    with warnings.catch_warnings(), _quiet_exporter():
        # The exporter warns about torch internals (deprecated pytree APIs, missing torchvision ops)
        # that say nothing about this model.
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(
            predictor,
            (sample,),
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    program.model.metadata_props.update(meta.to_props())
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        program.save(tmp, external_data=False)
        onnx.checker.check_model(str(tmp))
    log.info("exported %s (decode %s, %s) to %s", ckpt.label, decode_tag(decode), precision, out_path)
    return out_path


# The exporter's own loggers narrate its graph passes at INFO and WARNING ("Replaced initializer ...", "Removed 498
# unused nodes", "torchvision is not installed"): dozens of lines on a first run that describe torch's internals, not
# the user's work. Only their errors are let through while an export runs.
_EXPORTER_LOGGERS = {"torch.onnx": logging.ERROR, "onnxscript": logging.ERROR, "onnx_ir": logging.ERROR}


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    loggers = {name: logging.getLogger(name) for name in _EXPORTER_LOGGERS}
    previous = {name: logger.level for name, logger in loggers.items()}
    for name, logger in loggers.items():
        logger.setLevel(max(_EXPORTER_LOGGERS[name], logger.level))
    try:
        yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(previous[name])


class _Clip(nn.Module):
    """``clamp(x, low, high)``: the same function as ``nn.ReLU6`` (low=0, high=6), exported as one ONNX Clip."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, self.low, self.high)


def _with_clip_activations(module: nn.Module) -> nn.Module:
    """Replace every ``nn.ReLU6`` by the identical ``_Clip(0, 6)``, in place; returns ``module``.

    ReLU6 traces to ``aten.hardtanh_``, which the ONNX exporter decomposes with symbolic-shape reference
    code at about 0.2 s a call; EfficientNet-Lite has 92 of them, which made them 40 % of the export
    time (34 s -> 19 s for effnet_unet on a busy 2-core CPU). ``clamp`` maps straight to ONNX Clip.
    The result is numerically the same graph; the module is a throwaway built for this export.
    """
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, _Clip(0.0, 6.0))
    return module


def decode_tag(decode: DecodeOptions) -> str:
    """A file-name-safe name for decode options: ``annealed_mean-t0.38``, ``mean``, ``mode``, with
    ``-r<rebalance>-<prior digest>`` when decode-time rebalancing is on."""
    tag = f"annealed_mean-t{decode.temperature:g}" if decode.method == "annealed_mean" else decode.method
    if decode.rebalance > 0:
        tag += f"-r{decode.rebalance:g}-{decode.prior_digest()}"
    return tag


def default_cache_dir() -> Path:
    """Where exported engines are cached when the caller names no folder: ``~/.cache/tinct/onnx``.

    ``models`` reads no environment variables: the CLI and the workers pass ``Settings.cache_dir / "onnx"``
    (``TINCT_CACHE_DIR``), so a service can point every worker at a shared or pre-warmed cache.
    """
    return Path.home() / ".cache" / "tinct" / "onnx"


def cached_onnx_path(
    checkpoint: Checkpoint,
    decode: DecodeOptions | None = None,
    cache_dir: str | os.PathLike | None = None,
    precision: str = "fp32",
) -> Path:
    """The cache file name for a checkpoint, decode options and precision: ``<sha256[:16]>-<decode>.onnx``,
    with ``-fp16``/``-bf16`` before the suffix for a reduced-precision graph."""
    decode = _effective_decode(checkpoint, decode)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    suffix = "" if precision == "fp32" else f"-{precision}"
    return root / f"{checkpoint.sha256[:16]}-{decode_tag(decode)}{suffix}.onnx"


def ensure_onnx(
    checkpoint: str | os.PathLike | Checkpoint,
    decode: DecodeOptions | None = None,
    cache_dir: str | os.PathLike | None = None,
    precision: str = "fp32",
) -> Path:
    """An ONNX export of the checkpoint from the cache, exporting it first when missing or stale.

    A cached file is reused only when its recorded checkpoint sha256, decode options, precision and
    export version all match; anything else (a different checkpoint with the same hash prefix, an older
    exporter, a damaged file) is exported again over it.
    """
    ckpt = _as_checkpoint(checkpoint)
    decode = _effective_decode(ckpt, decode)
    path = cached_onnx_path(ckpt, decode, cache_dir, precision)
    if path.is_file():
        try:
            meta = read_onnx_metadata(path)
        except ValueError as exc:
            log.warning("re-exporting unusable cached ONNX file: %s", exc)
        else:
            found = (meta.checkpoint_sha256, meta.decode, meta.precision, meta.export_version)
            if found == (ckpt.sha256, decode, precision, EXPORT_VERSION):
                log.debug("reusing cached ONNX export %s", path)
                return path
            log.info("cached ONNX file %s belongs to another checkpoint or exporter; re-exporting", path)
    return export_onnx(ckpt, path, decode, precision=precision)
