"""Load the user's PyTorch model and check that facto-edge can export it."""

from __future__ import annotations

import json
import pickle
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

PICKLE_REFUSED = (
    "{path} is not a TorchScript archive, and torch's weights-only loader (which runs no "
    "code) cannot read it: a pickled nn.Module would run code from the file when loaded, "
    "so it is refused; save the model as TorchScript with "
    "torch.jit.save(torch.jit.script(model), 'model.pt'), or pass --trust-pickle if you "
    "trust the file"
)
STATE_DICT_HELP = (
    "{path} holds a state_dict (a dict of tensors), not a model; facto-edge needs the "
    "architecture too: save the model itself with "
    "torch.jit.save(torch.jit.script(model), 'model.pt')"
)


def _is_state_dict(obj: object) -> bool:
    if not isinstance(obj, dict) or not obj:
        return False
    return all(isinstance(v, torch.Tensor) for v in obj.values()) or "state_dict" in obj


def _load_weights_only(path: Path) -> tuple[bool, object]:
    """(True, object) when torch's weights-only unpickler, which runs no code, reads
    `path`; (False, None) when the file needs arbitrary objects (a pickled module)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return True, torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return False, None
    except Exception as e:  # noqa: BLE001 - any other failure means "not a model"
        raise ExportError(
            f"{path} is not a model: expected a TorchScript archive ({type(e).__name__})"
        ) from e


def _load_pickle(path: Path) -> object:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a model"
        raise ExportError(
            f"{path} is not a model: expected a TorchScript archive or a pickled nn.Module "
            f"({type(e).__name__})"
        ) from e


def load_model(path: str | Path, trust_pickle: bool = False) -> tuple[nn.Module, dict]:
    """Load a TorchScript archive (with its facto_edge.json, if any) or, with
    `trust_pickle`, a pickled nn.Module. Other files are told apart by torch's
    weights-only loader, which runs no code: a state_dict gets its own message, and a
    pickle that needs code is refused unless trusted."""
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
    plain, obj = _load_weights_only(path)
    if plain and _is_state_dict(obj):
        raise ExportError(STATE_DICT_HELP.format(path=path))
    if plain:
        raise ExportError(
            f"{path} is not a model: expected a TorchScript archive, found a {type(obj).__name__}"
        )
    if not trust_pickle:
        raise ExportError(PICKLE_REFUSED.format(path=path))
    obj = _load_pickle(path)
    if _is_state_dict(obj):
        raise ExportError(STATE_DICT_HELP.format(path=path))
    if not isinstance(obj, nn.Module):
        raise ExportError(
            f"{path} is not a model: expected a TorchScript archive or a pickled nn.Module, "
            f"found a {type(obj).__name__}"
        )
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
