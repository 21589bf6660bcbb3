"""Rewrite the ONNX graph of the original model into its factorized form.

Each Conv (and its following BatchNormalization), each Gemm and each MatMul by a constant
weight (a Linear applied to a 3-D or 4-D tensor, such as ConvNeXt's channels-last MLP) is
replaced by a chain of factor nodes as DESIGN.md says: Tucker-2 for k x k and k-wide 1-D
convs (any kernel shape and stride: the `core` carries them), SVD for 1x1 convs, Linear and
MatMul (two MatMuls over the channel axis), dense for grouped/depthwise (a grouped conv
stays whole: its groups would need a factorization each), small or no-gain layers and the
classifier. The result keeps
the original graph's inputs and outputs and gets the manifest's per-layer records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from facto_edge.errors import ExportError
from facto_edge.runtime.manifest import LayerInfo

from . import decompose as dec
from .to_onnx import module_path


@dataclass(frozen=True)
class FactorizeConfig:
    rank: float | None = 0.25
    energy: float | None = None
    min_channels: int = 8
    train: str = "last"  # last, first, core, all, a comma-separated mix, or delta
    bn: str = "fold"  # fold or train
    train_classifier: bool = True

    @property
    def delta(self) -> bool:
        """Whether each factorized layer keeps its dense weight frozen and trains a
        low-rank update beside it (`--train delta`)."""
        return train_parts(self.train) == ["delta"]


TRAIN_CHOICES = ("last", "first", "core", "all")


def train_parts(train: str) -> list[str]:
    """The factors `--train` names: one of TRAIN_CHOICES or a comma-separated mix
    ("core,last"), or `delta` alone; raises ExportError for anything else."""
    parts = [p.strip() for p in train.split(",")]
    if parts == ["delta"]:
        return parts
    if not parts or any(p not in TRAIN_CHOICES for p in parts):
        raise ExportError(
            f"--train must be last, first, core, all, a comma-separated mix such as "
            f"core,last, or delta (alone); found {train!r}"
        )
    return parts


class Graph:
    """A mutable view of an ONNX graph: nodes in order and initializers as numpy arrays."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
        self.nodes = list(model.graph.node)
        self.shapes = _value_shapes(model)
        self._materialize_identities()
        for i, node in enumerate(self.nodes):
            if not node.name:
                node.name = f"{node.op_type}_{i}"

    def _materialize_identities(self) -> None:
        """The exporter shares equal tensors through Identity nodes; give each its own copy."""
        kept = []
        for node in self.nodes:
            if node.op_type == "Identity" and node.input[0] in self.inits:
                self.inits[node.output[0]] = self.inits[node.input[0]].copy()
            else:
                kept.append(node)
        self.nodes = kept

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if name in n.input]

    def producer_index(self, node: onnx.NodeProto) -> int:
        return next(i for i, n in enumerate(self.nodes) if n is node)

    def to_model(self, opset: int = 17) -> onnx.ModelProto:
        used = {i for n in self.nodes for i in n.input}
        inits = [numpy_helper.from_array(a, name) for name, a in self.inits.items() if name in used]
        graph = helper.make_graph(
            self.nodes,
            "facto_edge",
            list(self.model.graph.input),
            list(self.model.graph.output),
            initializer=inits,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", opset)],
            producer_name="facto-edge",
        )
        model.ir_version = 10
        return model


def _value_shapes(model: onnx.ModelProto) -> dict[str, list]:
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _conv_node(name, x, w, b, out, *, kernel, stride=None, pads=None, dil=None):
    """A Conv node of any spatial rank; stride, pads and dilations default to plain."""
    n = len(kernel)
    inputs = [x, w] + ([b] if b else [])
    return helper.make_node(
        "Conv", inputs, [out], name=name, kernel_shape=list(kernel),
        strides=list(stride or [1] * n), pads=list(pads or [0] * 2 * n),
        dilations=list(dil or [1] * n), group=1,
    )  # fmt: skip


def _gemm_node(name, x, w, b, out):
    inputs = [x, w] + ([b] if b else [])
    return helper.make_node("Gemm", inputs, [out], name=name, transB=1, alpha=1.0, beta=1.0)


class Rewriter:
    """Factorizes every Conv and Gemm of `graph` in place and records a LayerInfo each."""

    def __init__(self, graph: Graph, cfg: FactorizeConfig) -> None:
        self.g, self.cfg = graph, cfg
        self.layers: list[LayerInfo] = []
        self.bn_train_nodes: list[str] = []
        self._bn_params: list[str] = []
        gemms = [n for n in graph.nodes if n.op_type == "Gemm"]
        self.classifier = gemms[-1].name if gemms else None

    def run(self) -> list[LayerInfo]:
        for node in list(self.g.nodes):
            if node.op_type == "Conv":
                self._conv(node)
            elif node.op_type == "Gemm":
                self._gemm(node)
            elif node.op_type == "MatMul" and node.input[1] in self.g.inits:
                self._matmul(node)
        return self.layers

    # -- helpers ------------------------------------------------------------------------
    def _layer_name(self, weight_name: str) -> str:
        return weight_name[: -len(".weight")] if weight_name.endswith(".weight") else weight_name

    def _unique(self, name: str) -> str:
        """`name`, or `name_2`, `name_3`... when a layer has it already (two MatMuls of
        one module, as ConvNeXt's pointwise Linears under the dynamo exporter's names)."""
        taken = {layer.name for layer in self.layers}
        candidate, k = name, 1
        while candidate in taken:
            k += 1
            candidate = f"{name}_{k}"
        return candidate

    def _replace(self, old: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
        i = self.g.producer_index(old)
        self.g.nodes[i : i + 1] = new

    def _trainable(self, roles: dict[str, str], method: str) -> list[str]:
        if method == "dense":
            return []
        choices = {
            "last": ["last", "bias"],
            "delta": ["last", "bias"],
            "first": ["first"],
            "core": ["core"] if "core" in roles else ["last", "bias"],
            "all": ["first", "core", "last", "bias"],
        }
        pick = {r for part in train_parts(self.cfg.train) for r in choices[part]}
        return [roles[r] for r in ("first", "core", "last", "bias") if r in pick and r in roles]

    def _ranks(self, w2: np.ndarray, modes, channels) -> list[int]:
        if self.cfg.energy is not None:
            return dec.choose_ranks(w2, modes, None, self.cfg.energy)
        return [dec.rank_by_fraction(c, self.cfg.rank) for c in channels]

    def _gain_required(self) -> bool:
        return self.cfg.energy is not None or (self.cfg.rank or 1.0) < 1.0

    # -- BatchNormalization ---------------------------------------------------------------
    def _following_bn(self, node: onnx.NodeProto) -> onnx.NodeProto | None:
        users = self.g.consumers(node.output[0])
        if len(users) == 1 and users[0].op_type == "BatchNormalization":
            bn = users[0]
            if all(i in self.g.inits for i in bn.input[1:5]):
                return bn
        return None

    def _fold_bn(self, node, w: np.ndarray, b: np.ndarray | None, keep: bool):
        """Fold the BN after `node` into (w, b) and drop it, the conv taking its output
        name; or, with `keep`, leave it in the graph with a trainable scale and bias."""
        bn = self._following_bn(node)
        if bn is None or keep:
            if bn is not None:
                self.bn_train_nodes.append(bn.name)
                self._bn_params = [bn.input[1], bn.input[2]]
            return w, b, node.output[0], ("train" if bn is not None else "none")
        gamma, beta, mean, var = (self.g.inits[i].astype(np.float64) for i in bn.input[1:5])
        eps = _attrs(bn).get("epsilon", 1e-5)
        scale = gamma / np.sqrt(var + eps)
        w = (w.astype(np.float64) * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        b0 = np.zeros_like(mean) if b is None else b.astype(np.float64)
        b = ((b0 - mean) * scale + beta).astype(np.float32)
        self.g.nodes.remove(bn)
        return w, b, bn.output[0], "folded"

    # -- Conv -----------------------------------------------------------------------------
    def _conv(self, node: onnx.NodeProto) -> None:
        a = _attrs(node)
        x, w_name = node.input[0], node.input[1]
        if w_name not in self.g.inits:
            raise ExportError(f"conv {node.name} has a computed weight; expected a constant")
        name = self._layer_name(w_name)
        w = self.g.inits[w_name]
        b = self.g.inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        out_shape = self.g.shapes.get(node.output[0]) or [None] * w.ndim
        in_shape = self.g.shapes.get(x) or [None] * w.ndim
        groups = int(a.get("group", 1))
        # --bn train keeps the BatchNormalization of a layer that trains (a factorized
        # one); a layer that stays dense stays frozen, its BN folded in: training that BN
        # would keep the layer's full-width output for backward, for no measured gain.
        bn_train = self.cfg.bn == "train"
        note = self._dense_note(w, groups) if bn_train else ""
        w, b, out, bn_mode = self._fold_bn(node, w, b, keep=bn_train and not note)
        if not bn_train:
            note = self._dense_note(w, groups)  # on the folded weight, as factorized
        c_out, c_in_g, kernel = w.shape[0], w.shape[1], tuple(w.shape[2:])
        nk = len(kernel)
        stride = tuple(a.get("strides", [1] * nk))
        pads = tuple(a.get("pads", [0] * 2 * nk))
        dil = tuple(a.get("dilations", [1] * nk))
        hw_out, hw_in = tuple(out_shape[2:]), tuple(in_shape[2:])
        info = LayerInfo(
            name=name, op="Conv", shape=list(w.shape), method="dense", ranks=[], factors={},
            trainable=[], rel_error=0.0, params_before=int(w.size + (0 if b is None else b.size)),
            params_after=0, flops_before=2 * dec.conv_macs(c_out, c_in_g, kernel, hw_out),
            flops_after=0, bn=bn_mode,
            attrs={"stride": list(stride), "pads": list(pads), "dilation": list(dil),
                   "groups": groups},
        )  # fmt: skip
        new = None
        if not note:
            chain_out = f"{name}.delta_out" if self.cfg.delta else out
            new = (self._svd_conv if set(kernel) == {1} else self._tucker_conv)(
                info, w, b, x, chain_out, stride, pads, dil, hw_in, hw_out
            )
            if new is None:
                note = "no gain at this rank"
            elif self.cfg.delta:
                dense = helper.make_node(
                    "Conv", [x, f"{name}.weight"], [f"{name}.dense_out"], name=f"{name}.dense"
                )
                dense.attribute.extend(node.attribute)
                new = self._residual(info, w, dense, new, out)
        if new is None:
            new = self._dense(info, node, w, b, x, out, note)
        self._replace(node, new)
        info.trainable = self._trainable(info.factors, info.method)
        if bn_mode == "train":
            info.trainable += self._bn_params
        self.layers.append(info)

    def _conv_dense_reason(self, groups: int, c_out: int, c_in: int) -> str:
        if groups != 1:
            return "depthwise" if c_in == 1 else "grouped"
        if min(c_out, c_in) < self.cfg.min_channels:
            return f"fewer than {self.cfg.min_channels} channels"
        return ""

    def _dense_note(self, w: np.ndarray, groups: int) -> str:
        """Why a conv with weight `w` stays dense ("" when it is factorized)."""
        c_out, c_in, ksize = w.shape[0], w.shape[1], int(np.prod(w.shape[2:]))
        note = self._conv_dense_reason(groups, c_out, c_in)
        if note or not self._gain_required():
            return note
        if ksize == 1:
            (r,) = self._ranks(w.reshape(c_out, c_in), (0,), (min(c_out, c_in),))
            params = r * (c_in + c_out)
        else:
            r_out, r_in = self._ranks(w, (0, 1), (c_out, c_in))
            params = r_in * c_in + r_out * r_in * ksize + c_out * r_out
        return "no gain at this rank" if params >= w.size else ""

    def _dense(self, info, node, w, b, x, out, note) -> list[onnx.NodeProto]:
        wn, bn_ = f"{info.name}.weight", f"{info.name}.bias"
        self.g.inits[wn] = w
        inputs = [x, wn]
        info.factors = {"weight": wn}
        if b is not None:
            self.g.inits[bn_] = b
            inputs.append(bn_)
            info.factors["bias"] = bn_
        new = helper.make_node(node.op_type, inputs, [out], name=info.name)
        new.attribute.extend(node.attribute)
        info.method, info.note = "dense", note
        info.params_after, info.flops_after = info.params_before, info.flops_before
        return [new]

    def _register(self, info: LayerInfo, tensors: dict[str, np.ndarray]) -> None:
        for role, arr in tensors.items():
            key = f"{info.name}.{role}.weight" if role != "bias" else f"{info.name}.last.bias"
            self.g.inits[key] = arr
            info.factors[role] = key
        info.params_after = int(sum(a.size for a in tensors.values()))

    def _residual(self, info: LayerInfo, w, dense: onnx.NodeProto, chain, out: str) -> list:
        """`--train delta`: the dense node (weight `w`, frozen, no bias) beside the factor
        chain, whose `last` starts at zero and carries the bias: out = dense(x) + chain(x),
        at export exactly the original layer (its BN folded in under --bn fold)."""
        last = info.factors["last"]
        self.g.inits[last] = np.zeros_like(self.g.inits[last])
        self.g.inits[dense.input[1]] = w
        info.factors["weight"] = dense.input[1]
        info.residual, info.rel_error = True, 0.0
        info.params_after += int(w.size)
        info.flops_after += info.flops_before
        add = helper.make_node(
            "Add", [dense.output[0], chain[-1].output[0]], [out], name=f"{info.name}.delta_add"
        )
        return [dense, *chain, add]

    def _tucker_conv(self, info, w, b, x, out, stride, pads, dil, hw_in, hw_out):
        c_out, c_in, kernel = w.shape[0], w.shape[1], tuple(w.shape[2:])
        ones = (1,) * len(kernel)
        r_out, r_in = self._ranks(w, (0, 1), (c_out, c_in))
        params = r_in * c_in + r_out * r_in * int(np.prod(kernel)) + c_out * r_out
        if self._gain_required() and params >= w.size:
            return None
        first, core, last = dec.tucker2(w, r_out, r_in)
        tensors = {"first": first, "core": core, "last": last}
        if b is not None:
            tensors["bias"] = b
        self._register(info, tensors)
        info.method, info.ranks = "tucker2", [r_out, r_in]
        info.rel_error = dec.relative_error(w, dec.tucker2_rebuild(first, core, last))
        macs = dec.conv_macs(r_in, c_in, ones, hw_in)
        macs += dec.conv_macs(r_out, r_in, kernel, hw_out)
        macs += dec.conv_macs(c_out, r_out, ones, hw_out)
        info.flops_after = 2 * macs
        f, n = info.factors, info.name
        return [
            _conv_node(f"{n}.first", x, f["first"], None, f"{n}.first_out", kernel=ones),
            _conv_node(f"{n}.core", f"{n}.first_out", f["core"], None, f"{n}.core_out",
                       kernel=kernel, stride=stride, pads=pads, dil=dil),
            _conv_node(f"{n}.last", f"{n}.core_out", f["last"], f.get("bias"), out, kernel=ones),
        ]  # fmt: skip

    def _svd_conv(self, info, w, b, x, out, stride, pads, dil, hw_in, hw_out):
        c_out, c_in = w.shape[:2]
        ones = (1,) * (w.ndim - 2)
        w2 = w.reshape(c_out, c_in)
        (r,) = self._ranks(w2, (0,), (min(c_out, c_in),))
        if self._gain_required() and r * (c_in + c_out) >= w.size:
            return None
        first, last = dec.svd2(w2, r)
        tensors = {"first": first.reshape(r, c_in, *ones), "last": last.reshape(c_out, r, *ones)}
        if b is not None:
            tensors["bias"] = b
        self._register(info, tensors)
        info.method, info.ranks = "svd", [r]
        info.rel_error = dec.relative_error(w2, last @ first)
        info.flops_after = 2 * (r * c_in + c_out * r) * int(np.prod(hw_out))
        f, n = info.factors, info.name
        return [
            _conv_node(f"{n}.first", x, f["first"], None, f"{n}.first_out", kernel=ones,
                       stride=stride, pads=pads),
            _conv_node(f"{n}.last", f"{n}.first_out", f["last"], f.get("bias"), out, kernel=ones),
        ]  # fmt: skip

    # -- Gemm -----------------------------------------------------------------------------
    def _gemm(self, node: onnx.NodeProto) -> None:
        a = _attrs(node)
        x, w_name = node.input[0], node.input[1]
        if w_name not in self.g.inits or a.get("transA", 0):
            raise ExportError(f"Gemm {node.name}: expected a constant weight and transA=0")
        w = self.g.inits[w_name]
        w = w if a.get("transB", 0) else w.T.copy()  # now [out, in]
        b = self.g.inits.get(node.input[2]) if len(node.input) > 2 else None
        if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise ExportError(f"Gemm {node.name}: alpha/beta other than 1 are not supported")
        name = self._layer_name(w_name)
        c_out, c_in = w.shape
        info = LayerInfo(
            name=name, op="Gemm", shape=[c_out, c_in], method="dense", ranks=[], factors={},
            trainable=[], rel_error=0.0, params_before=int(w.size + (0 if b is None else b.size)),
            params_after=0, flops_before=2 * c_out * c_in, flops_after=0,
        )  # fmt: skip
        new = None
        is_classifier = node.name == self.classifier
        note = "classifier" if is_classifier else self._conv_dense_reason(1, c_out, c_in)
        if not note:
            delta = self.cfg.delta
            new = self._svd_gemm(info, w, b, x, f"{name}.delta_out" if delta else node.output[0])
            note = "" if new else "no gain at this rank"
            if new and delta:
                dense = _gemm_node(f"{name}.dense", x, f"{name}.weight", "", f"{name}.dense_out")
                new = self._residual(info, w, dense, new, node.output[0])
        if new is None:
            new = [_gemm_node(name, x, f"{name}.weight", f"{name}.bias" if b is not None else "",
                              node.output[0])]  # fmt: skip
            self.g.inits[f"{name}.weight"] = w
            info.factors = {"weight": f"{name}.weight"}
            if b is not None:
                self.g.inits[f"{name}.bias"] = b
                info.factors["bias"] = f"{name}.bias"
            info.params_after, info.flops_after, info.note = (
                info.params_before,
                info.flops_before,
                note,
            )
        self._replace(node, new)
        if is_classifier and self.cfg.train_classifier:
            info.trainable = list(info.factors.values())
        else:
            info.trainable = self._trainable(info.factors, info.method)
        self.layers.append(info)

    def _svd_gemm(self, info, w, b, x, out):
        c_out, c_in = w.shape
        (r,) = self._ranks(w, (0,), (min(c_out, c_in),))
        if self._gain_required() and r * (c_in + c_out) >= w.size:
            return None
        first, last = dec.svd2(w, r)
        tensors = {"first": first, "last": last}
        if b is not None:
            tensors["bias"] = b
        self._register(info, tensors)
        info.method, info.ranks = "svd", [r]
        info.rel_error = dec.relative_error(w, last @ first)
        info.flops_after = 2 * r * (c_in + c_out)
        f, n = info.factors, info.name
        return [
            _gemm_node(f"{n}.first", x, f["first"], "", f"{n}.first_out"),
            _gemm_node(f"{n}.last", f"{n}.first_out", f["last"], f.get("bias", ""), out),
        ]

    # -- MatMul by a constant weight (Linear on a 3-D or 4-D tensor) ---------------------
    def _matmul_bias(self, node: onnx.NodeProto, c_out: int) -> onnx.NodeProto | None:
        """The Add right after `node` that adds a constant bias of shape [c_out], if any."""
        users = self.g.consumers(node.output[0])
        if len(users) != 1 or users[0].op_type != "Add":
            return None
        other = [i for i in users[0].input if i != node.output[0]]
        ok = len(other) == 1 and other[0] in self.g.inits
        return users[0] if ok and self.g.inits[other[0]].shape == (c_out,) else None

    def _matmul(self, node: onnx.NodeProto) -> None:
        """x [..., C_in] @ W [C_in, C_out] (+ b): SVD into x @ first^T @ last^T, the Add of
        the bias staying where it is (its tensor becomes `last.bias`)."""
        w = self.g.inits[node.input[1]]
        if w.ndim != 2:
            return
        x, out = node.input[0], node.output[0]
        name = self._unique(module_path(node.name) or self._layer_name(node.input[1]))
        c_in, c_out = w.shape
        rows = int(np.prod([d or 1 for d in (self.g.shapes.get(x) or [1, 1])[1:-1]]))
        add = self._matmul_bias(node, c_out)
        info = LayerInfo(
            name=name, op="MatMul", shape=[c_out, c_in], method="dense", ranks=[], factors={},
            trainable=[], rel_error=0.0, params_before=int(w.size), params_after=0,
            flops_before=2 * c_out * c_in * rows, flops_after=0,
        )  # fmt: skip
        note = self._conv_dense_reason(1, c_out, c_in)
        chain_out = f"{name}.delta_out" if self.cfg.delta else out
        new = None if note else self._svd_matmul(info, w.T, x, chain_out, rows)
        if new is not None and self.cfg.delta:
            dense = helper.make_node(
                "MatMul", [x, f"{name}.weight"], [f"{name}.dense_out"], name=f"{name}.dense"
            )
            new = self._residual(info, w, dense, new, out)
        elif new is None:
            self.g.inits[f"{name}.weight"] = w
            new = [helper.make_node("MatMul", [x, f"{name}.weight"], [out], name=name)]
            info.factors = {"weight": f"{name}.weight"}
            info.params_after, info.flops_after = info.params_before, info.flops_before
            info.note = note or "no gain at this rank"
        if add is not None:
            self._rename_bias(info, add, out)
        self._replace(node, new)
        info.trainable = self._trainable(info.factors, info.method)
        self.layers.append(info)

    def _rename_bias(self, info: LayerInfo, add: onnx.NodeProto, x: str) -> None:
        old = next(i for i in add.input if i != x)
        key = f"{info.name}.last.bias" if info.method != "dense" else f"{info.name}.bias"
        self.g.inits[key] = self.g.inits[old]
        add.input[list(add.input).index(old)] = key
        info.factors["bias"] = key
        info.params_before += int(self.g.inits[key].size)
        info.params_after += int(self.g.inits[key].size)

    def _svd_matmul(self, info, w, x, out, rows):
        c_out, c_in = w.shape
        (r,) = self._ranks(w, (0,), (min(c_out, c_in),))
        if self._gain_required() and r * (c_in + c_out) >= w.size:
            return None
        first, last = dec.svd2(w, r)
        self._register(info, {"first": first.T.copy(), "last": last.T.copy()})
        info.method, info.ranks = "svd", [r]
        info.rel_error = dec.relative_error(w, last @ first)
        info.flops_after = 2 * r * (c_in + c_out) * rows
        f, n = info.factors, info.name
        return [
            helper.make_node("MatMul", [x, f["first"]], [f"{n}.first_out"], name=f"{n}.first"),
            helper.make_node("MatMul", [f"{n}.first_out", f["last"]], [out], name=f"{n}.last"),
        ]
