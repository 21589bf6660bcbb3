"""PyTorch -> ONNX: torch.onnx's TorchScript-based exporter, and its dynamo exporter for
nn.Modules the older one cannot export; a failure of both is one line naming the PyTorch
op and the module it came from.

Node names follow the TorchScript exporter's "/module/path/Op" form on both paths (the
dynamo exporter's are renamed from its name scopes), so `module_path(node)` answers for
any node, also after normalization.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings

import onnx
import torch
from torch import nn

from facto_edge.errors import ExportError

OPSET = 17
DYNAMO_OPSET = 18  # the oldest opset the dynamo exporter writes; normalize brings it to 17


def to_onnx(model: nn.Module, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    """The model as ONNX (dynamic batch "N", input `input`, output `logits`, eval mode,
    BatchNormalization kept as nodes), before normalization."""
    with one_torch_thread():
        return _either_exporter(model, input_shape)


@contextlib.contextmanager
def one_torch_thread():
    """Run torch with one intra-op thread: the exporter's forwards (a trace, a shape
    check) are tiny work, and torch's threads made them seven times slower where other
    processes held the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _either_exporter(model: nn.Module, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    try:
        return _torchscript(model, input_shape)
    except ExportError as first:
        if isinstance(model, torch.jit.ScriptModule):
            raise ExportError(
                f"{first}; a TorchScript archive can only take torch.onnx's TorchScript "
                "exporter: make that size a constant, or save the nn.Module itself "
                "(torch.save(model, path)) so that the dynamo exporter can try"
            ) from None
        try:
            return _dynamo(model, input_shape)
        except Exception as e:  # noqa: BLE001 - any dynamo failure: report the first one
            raise ExportError(
                f"{first}; torch.onnx's dynamo exporter failed too ({_first_line(e)}); "
                "write that op another way (e.g. a constant kernel size)"
            ) from None


def _torchscript(model: nn.Module, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings(), _captured_stdout() as log:
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model, (torch.zeros(1, *input_shape),), buf, dynamo=False,
                opset_version=OPSET, input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL,
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 - torch.onnx raises many kinds
            failure = e
        else:
            failure = None
    if failure is not None:
        raise ExportError(_describe_failure(failure, log.getvalue())) from None
    return onnx.load_from_string(buf.getvalue())


def _dynamo(model: nn.Module, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    batch = torch.export.Dim("N")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quiet = logging.getLogger("torch.onnx")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                model, (torch.zeros(2, *input_shape),), dynamo=True,
                opset_version=DYNAMO_OPSET, input_names=["input"], output_names=["logits"],
                dynamic_shapes=({0: batch},), optimize=False, verbose=False, report=False,
            )  # fmt: skip
        finally:
            quiet.setLevel(level)
    proto = program.model_proto
    _name_by_scope(proto)
    return proto


def _name_by_scope(model: onnx.ModelProto) -> None:
    """Rename the dynamo exporter's nodes "/module/path/Op_i" from their name scopes."""
    for i, node in enumerate(model.graph.node):
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        path = scopes[-2] if len(scopes) >= 2 else ""
        node.name = f"/{path.replace('.', '/')}/{node.op_type}_{i}".replace("//", "/")


def module_path(node_name: str) -> str:
    """The PyTorch module a node came from ("" for the top-level module). Scripted models
    name nodes "/features/0/2/Op", traced ones "/features/features.0/features.0.2/Op"."""
    parts = [p for p in node_name.split("/") if p][:-1]
    if parts and "." in parts[-1]:
        return parts[-1]
    return ".".join(parts)


@contextlib.contextmanager
def _captured_stdout():
    """Capture file descriptor 1: the TorchScript exporter's C++ code prints the whole
    graph there when it fails; we read the failing op from it instead of showing it."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        log = io.StringIO()
        try:
            yield log
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            log.write(tmp.read().decode(errors="replace"))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


_CAUSE = re.compile(r"Caused by the value '(\w+) defined")
_OPERATOR = re.compile(r"export of operator (\w+)")
_LOCATION = re.compile(r'File "([^"]+)", line (\d+)|# (\S+?):(\d+):\d+')
_ATEN = re.compile(r"= (aten::\w+)\(([^)]*)\)(?:, scope: ([^\s#]+))?(?: # (\S+?):(\d+):)?")


def _describe_failure(e: BaseException, log: str) -> str:
    """ "torch.onnx cannot export aten::OP in module 'PATH': REASON" from the exception and
    the graph the exporter printed: the op the message names, else the op that takes the
    value it blames, else the last op on the source line it points at."""
    text = str(e)
    reason = _first_line(e).split("  [Caused by")[0].split(". ")[0].rstrip(". ")
    if "because it is not constant" in text or "Expected node type 'onnx::Constant'" in text:
        reason = "an argument it needs as a constant (a kernel size?) is computed from a shape"
    ops = _ATEN.findall(log)
    named = _OPERATOR.search(text)
    cause = _CAUSE.search(text)
    lines = {(m[0] or m[2], m[1] or m[3]) for m in _LOCATION.findall(text)}
    picks = [o for o in ops if named and o[0] == f"aten::{named.group(1)}"]
    picks = picks or [o for o in ops if cause and re.search(rf"%{cause.group(1)}\b", o[1])]
    picks = picks or [o for o in ops if (o[3], o[4]) in lines][-1:]
    if picks:
        op, _, scope, _, _ = picks[0]
        return f"torch.onnx cannot export {op} in {_scope_path(scope)}: {reason}"
    if named:
        return f"torch.onnx cannot export aten::{named.group(1)}: {reason}"
    return f"torch.onnx cannot export the model: {reason}"


def _scope_path(scope: str) -> str:
    """'m.Net::/torch.nn.modules.container.Sequential::blocks/m.Block::6' -> "module
    'blocks.6'"; 'm.Net::' -> 'the top-level module (Net)'."""
    parts = scope.split("/")
    names = [part.rpartition("::")[2] for part in parts[1:]]
    if any(names):
        return f"module {'.'.join(n for n in names if n)!r}"
    root = parts[0].rpartition("::")[0].rpartition(".")[2]
    return f"the top-level module ({root})" if root else "the top-level module"
