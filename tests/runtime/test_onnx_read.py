"""model.onnx is read without importing onnx (runtime/onnx_read.py), into the values onnx's
own helpers give."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from facto_edge.runtime import onnx_read
from facto_edge.runtime.graph import load_graph

ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5,
    np.array([3, -2, 1 << 40], np.int64),
    np.array([[1, -7]], np.int32),
    np.array([0.5, -1e300], np.float64),
    np.array([1.5, -2.25, 65504], np.float16),
    np.array([True, False, True]),
    np.array([0, 255], np.uint8),
    np.array([-128, 5], np.int8),
    np.array(2.5, np.float32),  # rank 0
    np.zeros((0, 3), np.float32),
]


def same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("a", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_raw_and_typed_tensors_read_as_onnx_reads_them(a):
    raw = numpy_helper.from_array(a, "t")
    typed = helper.make_tensor("t", helper.np_dtype_to_tensor_dtype(a.dtype), a.shape, a.ravel())
    for t in (raw, typed):
        t = onnx_read.TensorProto.FromString(t.SerializeToString())
        same(onnx_read.to_array(t), numpy_helper.to_array(t))


def test_attributes_read_as_onnx_reads_them():
    t = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    attrs = [
        helper.make_attribute("alpha", 0.25), helper.make_attribute("axis", -1),
        helper.make_attribute("mode", "constant"), helper.make_attribute("pads", [0, 1, 1, 0]),
        helper.make_attribute("scales", [0.5, 2.0]), helper.make_attribute("names", ["a", "b"]),
        helper.make_attribute("value", t),
    ]  # fmt: skip
    for a in attrs:
        a = onnx_read.AttributeProto.FromString(a.SerializeToString())
        got, want = onnx_read.attribute_value(a), helper.get_attribute_value(a)
        if isinstance(want, TensorProto):
            assert got.SerializeToString() == want.SerializeToString()
        else:
            assert got == want and type(got) is type(want)


LOAD = """
import sys
from facto_edge.runtime.graph import load_graph
g = load_graph(sys.argv[1])
print(len(g.nodes), "onnx" in sys.modules, "ml_dtypes" in sys.modules)
"""


def test_a_model_loads_without_importing_onnx_into_the_graph_onnx_gives(exported, monkeypatch):
    _, model = exported("resnet18_cifar", rank=0.25)
    out = subprocess.run(
        [sys.executable, "-c", LOAD, str(model)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[1:] == ["False", "False"]
    import onnx

    ours = load_graph(model)
    monkeypatch.setattr("facto_edge.runtime.graph.load_model", onnx.load)
    monkeypatch.setattr("facto_edge.runtime.graph.to_array", numpy_helper.to_array)
    monkeypatch.setattr("facto_edge.runtime.graph.attribute_value", helper.get_attribute_value)
    theirs = load_graph(model)
    assert int(out[0]) == len(ours.nodes) == len(theirs.nodes)
    for a, b in zip(ours.nodes, theirs.nodes, strict=True):
        assert (a.op_type, a.name, a.inputs, a.outputs) == (b.op_type, b.name, b.inputs, b.outputs)
        assert a.attrs.keys() == b.attrs.keys()
        for k in a.attrs:
            np.testing.assert_array_equal(a.attrs[k], b.attrs[k])
    assert ours.initializers.keys() == theirs.initializers.keys()
    for k, v in ours.initializers.items():
        same(v, theirs.initializers[k])
