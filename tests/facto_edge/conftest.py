"""Fixtures of the training tests: a pretrained simple_cnn on 1 x 16 x 16 digits, exported
once per session, and small .npz slices of scikit-learn's digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from train_helpers import INPUT_SHAPE, write_npz


@pytest.fixture(scope="session")
def pretrained_pt(tmp_path_factory) -> Path:
    """simple_cnn pretrained for two epochs on the quarter-turned digits, with a zeroed
    head, as a TorchScript archive (what a user brings to fine-tune)."""
    torch = pytest.importorskip("torch")
    from facto_edge import zoo
    from facto_edge.data import open_dataset
    from facto_edge.pretrain import quarter_turn, reset_classifier, train_torch

    torch.manual_seed(0)
    meta = zoo.metadata(INPUT_SHAPE, 10)
    norm = meta["normalization"]
    ds = open_dataset("digits:", INPUT_SHAPE, mean=norm["mean"], std=norm["std"])
    x, y = ds.get(np.arange(len(ds)))
    model = zoo.build("simple_cnn", seed=0, in_channels=1)
    train_torch(model, quarter_turn(x), y, epochs=2, batch_size=64, lr=0.05, seed=0)
    reset_classifier(model)
    out = tmp_path_factory.mktemp("pretrained") / "pretrained.pt"
    return zoo.save_torchscript(model, out, meta)


@pytest.fixture(scope="session")
def digits_model(pretrained_pt, tmp_path_factory) -> Path:
    """`pretrained_pt` exported at rank 0.25 (no ORT artifacts)."""
    from facto_edge import export

    out = tmp_path_factory.mktemp("model") / "model.facto"
    export(pretrained_pt, out, rank=0.25, ort=False)
    return out


@pytest.fixture(scope="session")
def small_npz(tmp_path_factory) -> Path:
    """200 training digits: 180 train and 20 validation images at val_split 0.1."""
    return write_npz(tmp_path_factory.mktemp("data") / "small.npz", 200)


@pytest.fixture(scope="session")
def trained_run(digits_model, small_npz, tmp_path_factory) -> Path:
    """A run directory after one epoch of training on `small_npz`."""
    from facto_edge.train import train

    out = tmp_path_factory.mktemp("trained") / "run"
    train(digits_model, str(small_npz), out, epochs=1, batch_size=20, lr=0.05, plot=False)
    return out
