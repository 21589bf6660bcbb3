"""Load the user's PyTorch model and check that facto-edge can export it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from facto_edge.errors import ExportError, UnsupportedOpError

# Layer types the exporter cannot factorize (ops of other layers are checked on the graph).
UNSUPPORTED_MODULES = {
    "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Conv3d",
    "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "MultiheadAttention",
    "Transformer", "TransformerEncoderLayer", "TransformerDecoderLayer", "Embedding",
    "EmbeddingBag",
}  # fmt: skip

PICKLE_WARNING = (
    "loading a pickled nn.Module runs code from the file; only export models you trust "
    "(a TorchScript archive is safer: torch.jit.save(torch.jit.script(model), path))"
)
STATE_DICT_HELP = (
    "{path} holds a state_dict (a dict of tensors), not a model; facto-edge needs the "
    "architecture too: save the model itself with "
    "torch.jit.save(torch.jit.script(model), 'model.pt') (or torch.save(model, 'model.pt'))"
)


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Load a TorchScript archive or a pickled nn.Module, with its facto_edge.json if any."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"model file not found: {path}")
    extra = {"facto_edge.json": ""}
    try:
        model = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        meta = json.loads(extra["facto_edge.json"]) if extra["facto_edge.json"] else {}
        return model.eval(), meta
    except (RuntimeError, ValueError):
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a model"
        raise ExportError(
            f"{path} is not a model: expected a TorchScript archive or a pickled nn.Module "
            f"({type(e).__name__})"
        ) from e
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ExportError(STATE_DICT_HELP.format(path=path))
    if isinstance(obj, dict) and "state_dict" in obj:
        raise ExportError(STATE_DICT_HELP.format(path=path))
    if not isinstance(obj, nn.Module):
        raise ExportError(
            f"{path} is not a model: expected a TorchScript archive or a pickled nn.Module, "
            f"found a {type(obj).__name__}"
        )
    warnings.warn(PICKLE_WARNING, UserWarning, stacklevel=2)
    return obj.eval(), {}


def module_type(module: nn.Module) -> str:
    """The class name of a module, also for TorchScript modules."""
    return getattr(module, "original_name", None) or type(module).__name__


def check_modules(model: nn.Module) -> None:
    """Reject layer types the exporter cannot handle, naming the first one found."""
    for name, module in model.named_modules():
        kind = module_type(module)
        if kind in UNSUPPORTED_MODULES:
            raise UnsupportedOpError(
                f"layer {name!r} is a {kind}, which facto-edge does not support; supported "
                "layers: Conv1d/Conv2d, Linear, BatchNorm, LayerNorm, activations, pooling, "
                "Flatten, Dropout"
            )


def check_input_shape(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Run the model once on zeros of `input_shape`; return its number of classes."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as e:  # noqa: BLE001 - the model's own error, summarized
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        shape = "x".join(map(str, input_shape))
        raise ExportError(
            f"the model rejects input shape {shape}: {first[:200]}; pass the shape it "
            "expects with --input-shape CxHxW (or CxL for a 1-D model)"
        ) from e
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ExportError(
            "expected the model to return logits of shape [N, classes], found "
            f"{getattr(out, 'shape', type(out).__name__)}"
        )
    return int(out.shape[1])
