"""Read model.onnx without importing the onnx package.

Importing `onnx` imports ml_dtypes, which registers its dtypes with numpy: over a second
on a small CPU, half the start-up of a budgeted training process (docs/first_run.md).
A training run only parses the protobuf and turns tensors and attributes into numpy
values, so this module loads onnx's generated protobuf module (`onnx/onnx_ml_pb2.py`,
which needs only google.protobuf) under its own name, `onnx.onnx_ml_pb2`: a later
`import onnx` reuses it, and the messages are onnx's own classes.

`to_array` and `attribute_value` cover what an exported model holds (tensors of numeric
dtypes, in raw_data or typed fields; scalar, list, string and tensor attributes); anything
else (external data, strings, 4-bit dtypes, graph attributes) is handed to onnx's own
`numpy_helper` and `helper`, importing onnx then.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import numpy as np

_PB2 = "onnx.onnx_ml_pb2"


def _load_pb2():
    if _PB2 in sys.modules:
        return sys.modules[_PB2]
    spec = importlib.util.find_spec("onnx")  # a top-level package: found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the onnx package is not installed; pip install onnx")
    path = f"{list(spec.submodule_search_locations)[0]}/onnx_ml_pb2.py"
    module_spec = importlib.util.spec_from_file_location(_PB2, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[_PB2] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_PB2]
        raise
    return module


pb = _load_pb2()
ModelProto, NodeProto, TensorProto = pb.ModelProto, pb.NodeProto, pb.TensorProto
AttributeProto = pb.AttributeProto

# ONNX element type -> numpy dtype, for the types read here without onnx
_DTYPES = {
    TensorProto.FLOAT: np.float32,
    TensorProto.UINT8: np.uint8,
    TensorProto.INT8: np.int8,
    TensorProto.UINT16: np.uint16,
    TensorProto.INT16: np.int16,
    TensorProto.INT32: np.int32,
    TensorProto.INT64: np.int64,
    TensorProto.BOOL: np.bool_,
    TensorProto.FLOAT16: np.float16,
    TensorProto.DOUBLE: np.float64,
    TensorProto.UINT32: np.uint32,
    TensorProto.UINT64: np.uint64,
}
# typed (not raw) storage read here: element type -> the field holding the values
_FIELDS = {
    TensorProto.FLOAT: "float_data",
    TensorProto.INT32: "int32_data",
    TensorProto.INT64: "int64_data",
    TensorProto.DOUBLE: "double_data",
}
_ATTRS = {
    AttributeProto.FLOAT: "f",
    AttributeProto.INT: "i",
    AttributeProto.STRING: "s",
    AttributeProto.TENSOR: "t",
    AttributeProto.FLOATS: "floats",
    AttributeProto.INTS: "ints",
    AttributeProto.STRINGS: "strings",
}


def load_model(path: str) -> ModelProto:
    """The ModelProto in the file `path`, as onnx.load gives it (external data loaded
    by onnx). Raises google.protobuf's DecodeError for a corrupt file, OSError."""
    with open(path, "rb") as f:
        proto = ModelProto.FromString(f.read())
    if any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer):
        import onnx

        return onnx.load(path)
    return proto


def to_array(t: TensorProto) -> np.ndarray:
    """The values of tensor `t`, as onnx.numpy_helper.to_array gives them."""
    dtype = _DTYPES.get(t.data_type)
    simple = dtype is not None and not t.HasField("segment") and sys.byteorder == "little"
    if simple and t.data_location != TensorProto.EXTERNAL:
        if t.HasField("raw_data"):
            return np.frombuffer(t.raw_data, dtype=dtype).reshape(t.dims)
        if t.data_type in _FIELDS:
            return np.asarray(getattr(t, _FIELDS[t.data_type]), dtype=dtype).reshape(t.dims)
    from onnx import numpy_helper

    return numpy_helper.to_array(t)


def attribute_value(a: AttributeProto) -> Any:
    """The value of attribute `a`, as onnx.helper.get_attribute_value gives it."""
    field = _ATTRS.get(a.type)
    if field is None:
        from onnx import helper

        return helper.get_attribute_value(a)
    value = getattr(a, field)
    return list(value) if a.type in (a.FLOATS, a.INTS, a.STRINGS) else value
