"""Runtime tests import their tiny graphs from tiny_graphs.py and the PyTorch reference
from tools/ (tools/torch_ref.py); the zoo's gradient and ONNX Runtime tests share their
rank-0.5 exports (`zoo_export`)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # the references' small forwards: threads only fight other processes


@pytest.fixture(scope="session")
def zoo_export(tmp_path_factory):
    """zoo_export(name, train, bn, ort=False) -> the zoo model (BatchNorm statistics as a
    trained model has them) exported at rank 0.5; exported once per session, an export
    with ort/ artifacts serving requests without."""
    from bn_helpers import perturb_bn
    from zoo_cases import RANK, input_shape

    from facto_edge import zoo
    from facto_edge.exporters.export import export

    cache: dict = {}

    def get(name: str, train: str, bn: str, ort: bool = False):
        hit = cache.get((name, train, bn))
        if hit is None or (ort and not hit[1]):
            out = tmp_path_factory.mktemp("zoo") / f"{name}-{train}-{bn}.facto"
            model = perturb_bn(zoo.build(name, seed=0))
            shape = input_shape(name)
            export(model, out, input_shape=shape, rank=RANK, train=train, bn=bn, ort=ort)
            cache[name, train, bn] = hit = (out, ort)
        return hit[0]

    return get
