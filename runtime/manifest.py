"""The manifest of an exported model (`model.facto/manifest.json`), as dataclasses.

Pure Python: the runtime reads it without torch. The schema is documented in
docs/manifest.md; `FORMAT_VERSION` changes whenever a field changes meaning.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import FactoEdgeError

FORMAT_VERSION = 1
_REEXPORT = "re-export the model with `facto-edge export`"


def _positive_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def _numbers(x: object, n: int) -> bool:
    ok = isinstance(x, list) and len(x) in (1, n)
    return ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in x)


def _manifest_problems(d: dict) -> Iterator[tuple[str, str, object]]:
    """(field, what it must be, what it is) for every field of `d` that makes no model."""
    shape = d.get("input_shape")
    if not (isinstance(shape, list) and len(shape) in (2, 3) and all(map(_positive_int, shape))):
        yield "input_shape", "a list of 2 or 3 positive integers [C, L] or [C, H, W]", shape
    if not _positive_int(d.get("num_classes")):
        yield "num_classes", "a positive integer", d.get("num_classes")
    trainable = d.get("trainable")
    if not (isinstance(trainable, list) and all(isinstance(t, str) for t in trainable)):
        yield "trainable", "a list of initializer names", trainable
    if not isinstance(d.get("layers", []), list):
        yield "layers", "a list of layers", d.get("layers")
    norm = d.get("normalization")
    channels = shape[0] if isinstance(shape, list) and shape and _positive_int(shape[0]) else 1
    if norm is not None:
        if not (isinstance(norm, dict) and {"mean", "std"} <= norm.keys()):
            yield "normalization", "a mapping with mean and std", norm
        elif not (_numbers(norm["mean"], channels) and _numbers(norm["std"], channels)):
            yield "normalization", f"mean and std lists of 1 or {channels} numbers", norm
        elif min(norm["std"]) <= 0:
            yield "normalization std", "numbers > 0", norm["std"]


def check_manifest(d: object, version: bool = True) -> None:
    """Raise FactoEdgeError naming the first field of a manifest dict that is missing or
    of the wrong type or value, or (`version`) its format version if not FORMAT_VERSION;
    the one check every reader of manifest.json runs (an in-memory manifest may leave
    its version out)."""
    if not isinstance(d, dict):
        raise FactoEdgeError(f"manifest.json must hold a JSON object, found {d!r}; {_REEXPORT}")
    if version and d.get("format_version") != FORMAT_VERSION:
        raise FactoEdgeError(
            f"manifest format version {d.get('format_version')!r} is not supported; "
            f"expected {FORMAT_VERSION}: re-export the model with this facto-edge"
        )
    for field_name, expected, found in _manifest_problems(d):
        raise FactoEdgeError(
            f"manifest.json: {field_name} must be {expected}, found {found!r}; {_REEXPORT}"
        )


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
    # `--train delta`: factors["weight"] stays frozen and the factor chain, whose `last`
    # started at zero, adds a low-rank update to its output
    residual: bool = False


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
        check_manifest(d)
        d = dict(d)
        try:
            d["layers"] = [LayerInfo(**layer) for layer in d["layers"]]
            return cls(**d)
        except TypeError as e:
            raise FactoEdgeError(f"manifest.json does not fit the schema ({e}); {_REEXPORT}") from e

    @classmethod
    def in_memory(cls, d: dict) -> Manifest:
        """The manifest of a model built in memory (an (onnx.ModelProto, dict) source):
        `input_shape`, `num_classes` and `trainable` are required, the rest defaults."""
        missing = [k for k in ("input_shape", "num_classes", "trainable") if k not in d]
        if missing:
            raise FactoEdgeError(f"the manifest has no {missing[0]!r}; re-export the model")
        defaults = {
            "normalization": {"mean": [0.0], "std": [1.0]},
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
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError) as e:
            raise FactoEdgeError(f"{path} is corrupt ({e}); re-export the model") from e

    def totals(self) -> dict[str, int]:
        keys = ("params_before", "params_after", "flops_before", "flops_after")
        return {k: sum(getattr(layer, k) for layer in self.layers) for k in keys}
