"""The manifest of an exported model (`model.facto/manifest.json`), as dataclasses.

Pure Python: the runtime reads it without torch. The schema is documented in
docs/manifest.md; `FORMAT_VERSION` changes whenever a field changes meaning.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import FactoEdgeError

FORMAT_VERSION = 1


@dataclass
class LayerInfo:
    """One convolution or Linear layer of the original model and what became of it."""

    name: str
    op: str  # "Conv" or "Gemm"
    shape: list[int]  # original weight shape: [C_out, C_in/groups, kh, kw] or [out, in]
    method: str  # "tucker2", "svd" or "dense"
    ranks: list[int]  # [R_out, R_in] for tucker2, [R] for svd, [] for dense
    factors: dict[str, str]  # role ("first", "core", "last", "weight", "bias") -> initializer
    trainable: list[str]
    rel_error: float
    params_before: int
    params_after: int
    flops_before: int  # per sample, 2 * multiply-accumulates
    flops_after: int
    attrs: dict = field(default_factory=dict)  # stride, padding, dilation, groups
    bn: str = "none"  # "folded", "train" or "none"
    note: str = ""  # why a layer stayed dense


@dataclass
class Manifest:
    """What `facto-edge export` wrote, and what the runtime needs to train it."""

    input_shape: list[int]
    num_classes: int
    normalization: dict[str, list[float]]
    config: dict
    layers: list[LayerInfo]
    trainable: list[str]
    classes: list[str] | None = None
    ort: bool = False
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        if d.get("format_version") != FORMAT_VERSION:
            raise FactoEdgeError(
                f"manifest format version {d.get('format_version')!r} is not supported; "
                f"expected {FORMAT_VERSION}: re-export the model with this facto-edge"
            )
        d = dict(d)
        d["layers"] = [LayerInfo(**layer) for layer in d["layers"]]
        return cls(**d)

    @classmethod
    def in_memory(cls, d: dict) -> Manifest:
        """The manifest of a model built in memory (an (onnx.ModelProto, dict) source):
        `input_shape`, `num_classes` and `trainable` are required, the rest defaults."""
        missing = [k for k in ("input_shape", "num_classes", "trainable") if k not in d]
        if missing:
            raise FactoEdgeError(f"the manifest has no {missing[0]!r}; re-export the model")
        defaults = {
            "normalization": {},
            "config": {},
            "layers": [],
            "format_version": FORMAT_VERSION,
        }
        return cls.from_dict(defaults | dict(d))

    @classmethod
    def load(cls, model_dir: str | Path) -> Manifest:
        path = Path(model_dir) / "manifest.json"
        if not path.is_file():
            raise FactoEdgeError(
                f"{model_dir} is not an exported model: no manifest.json in it; "
                "create one with `facto-edge export model.pt -o model.facto`"
            )
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise FactoEdgeError(f"{path} is corrupt ({e}); re-export the model") from e

    def totals(self) -> dict[str, int]:
        keys = ("params_before", "params_after", "flops_before", "flops_after")
        return {k: sum(getattr(layer, k) for layer in self.layers) for k in keys}
