"""The demo's pieces: the dense saved-activation count and the digits archive."""

from __future__ import annotations

import numpy as np
import pytest

from facto_edge.demo import dense_saved_bytes, write_digits_npz

torch = pytest.importorskip("torch")


def test_dense_saved_bytes_counts_what_autograd_keeps():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),  # keeps its input: n x 1 x 16 x 16
        torch.nn.ReLU(),  # keeps its output: n x 4 x 16 x 16
        torch.nn.Flatten(),  # a view: nothing new
        torch.nn.Linear(4 * 16 * 16, 10),  # keeps its input, the ReLU output's storage
    )
    n = 3
    assert dense_saved_bytes(model, n) == 4 * n * (1 * 16 * 16 + 4 * 16 * 16)


def test_digits_archive_holds_both_splits(tmp_path):
    with np.load(write_digits_npz(tmp_path / "d.npz")) as d:
        assert d["x"].shape == (1438, 8, 8) and d["x_test"].shape == (359, 8, 8)
        assert 0 <= d["x"].min() and d["x"].max() <= 1
        assert set(np.unique(d["y_test"])) == set(range(10))
