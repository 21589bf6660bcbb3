"""The built-in `digits:` dataset: scikit-learn's 1797 8 x 8 handwritten digits.

Pixel values 0..16 are scaled to [0, 1]; `get` upscales them bilinearly to the model's
H x W and replicates the one channel to C. The test split is a fixed 20 % of each class,
drawn with seed 0, so every run and machine sees the same split.
"""

from __future__ import annotations

import numpy as np

from facto_edge.data.dataset import ArrayDataset, DataRequest, array_dataset
from facto_edge.data.split import stratified_split
from facto_edge.errors import DataError

NAMES = ("digits:", "builtin:digits")
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def open_digits(req: DataRequest) -> ArrayDataset:
    """The train or test part of the built-in digits dataset."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError(
            "the built-in digits dataset needs scikit-learn, which is not installed: "
            "pip install 'facto-edge[data]' (or scikit-learn)"
        ) from e
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    train, test = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    idx = train if req.split == "train" else test
    classes = [str(i) for i in range(10)]
    return array_dataset(
        images[idx], labels[idx], req, name="digits", split=req.split, classes=classes
    )
