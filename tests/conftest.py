"""Shared fixtures: zoo models with non-trivial BatchNorm statistics, exported once."""

from __future__ import annotations

import os

import pytest

# Budgeted sessions in the suite may compile in-process (outside the tests of the first run,
# which ask for the default "refuse" or prepare first: tests/runtime/test_first_run.py).
os.environ.setdefault("FACTO_EDGE_COMPILE", "allow")

torch = pytest.importorskip("torch")

from bn_helpers import perturb_bn  # noqa: E402


def trained_like(name: str, seed: int = 0):
    from facto_edge import zoo

    return perturb_bn(zoo.build(name, seed=seed), seed)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(name, **export_kwargs) -> (torch model, model dir); cached per arguments."""
    from facto_edge import export

    cache: dict = {}

    def get(name: str, **kwargs):
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            model = trained_like(name)
            out = tmp_path_factory.mktemp(name) / "model.facto"
            export(model, out, input_shape=(3, 32, 32), **kwargs)
            cache[key] = (model, out)
        return cache[key]

    return get
