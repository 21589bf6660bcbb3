"""Evaluation of a run or an exported model: accuracy, loss, confusion matrix, plot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facto_edge.data import open_for_model
from facto_edge.errors import CheckpointError
from facto_edge.evaluate import cross_entropy, evaluate, format_eval, trained_session


def test_metrics_match_the_runtimes_predictions(trained_run):
    result = evaluate(trained_run, "digits:", batch_size=50)
    session, manifest = trained_session(trained_run, 64)
    ds = open_for_model("digits:", manifest, split="test")
    x, y = ds.get(np.arange(len(ds)))
    logits = session.predict(x)
    pred = logits.argmax(1)
    assert result.samples == len(y) == 359
    assert result.accuracy == pytest.approx((pred == y).mean())
    torch = pytest.importorskip("torch")
    ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y))
    assert result.loss == pytest.approx(ref.item(), rel=1e-5)
    assert result.confusion.sum() == 359
    assert np.array_equal(result.confusion.sum(axis=1), np.bincount(y, minlength=10))
    assert np.array_equal(result.confusion.sum(axis=0), np.bincount(pred, minlength=10))
    assert result.per_class_accuracy() == pytest.approx(np.diag(result.confusion) / np.bincount(y))


def test_exported_model_with_a_fresh_head_is_at_chance(digits_model):
    result = evaluate(digits_model, "digits:")
    assert result.loss == pytest.approx(math.log(10), rel=1e-6)  # zeroed head: equal logits
    assert result.confusion[:, 1:].sum() == 0  # ties go to class 0


def test_plot_and_text(trained_run, tmp_path):
    result = evaluate(trained_run, "digits:", plot=tmp_path / "cm.png")
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = format_eval(result)
    assert f"accuracy {100 * result.accuracy:.2f}%" in text
    assert len(text.splitlines()) == 3 + 10


def test_cross_entropy_is_stable_for_large_logits():
    logits = np.array([[1000.0, 0.0], [0.0, -1000.0]], np.float32)
    assert cross_entropy(logits, np.array([0, 1])) == pytest.approx([0.0, 1000.0])


def test_neither_run_nor_model(tmp_path):
    with pytest.raises(CheckpointError, match="neither a run directory"):
        evaluate(tmp_path, "digits:")
