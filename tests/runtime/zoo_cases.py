"""The zoo models' test cases at rank 0.5, shared by test_zoo_gradients.py and
test_ort_reference.py (their exports too: the `zoo_export` fixture in conftest.py).

The three models with 512-channel layers take minutes to export on a busy machine (their
Tucker-2s): they run only with FACTO_EDGE_BIG_ZOO=1.
"""

from __future__ import annotations

import os

import pytest

from facto_edge import zoo

RANK = 0.5
BIG = {"vgg11_bn_cifar", "resnet18_cifar", "resnet18_imagenet"}
_big = pytest.mark.skipif(
    not os.environ.get("FACTO_EDGE_BIG_ZOO"),
    reason="512-channel Tucker-2 exports take minutes; FACTO_EDGE_BIG_ZOO=1 runs them",
)


def input_shape(name: str) -> tuple[int, ...]:
    """CIFAR-size input for the image models, the model's own otherwise (MFCC frames).
    ResNet-18 for ImageNet gets 64x64: its stem and max-pool leave 1x1 maps of a 32x32
    input by the last stage, where batch statistics of two samples are degenerate (every
    normalized value is +-1) and no two fp32 implementations agree."""
    shape = tuple(zoo.entry(name).input_shape)
    if name == "resnet18_imagenet":
        return (3, 64, 64)
    return (3, 32, 32) if shape[0] == 3 else shape


def cases(combos: list[tuple[str, str]], skip: set[str] = frozenset()) -> list:
    """pytest params (name, train, bn) for every zoo model not in `skip` and each combo."""
    return [
        pytest.param(name, train, bn, marks=[pytest.mark.slow, _big] if name in BIG else [])
        for name in zoo.ZOO
        if name not in skip
        for train, bn in combos
    ]
