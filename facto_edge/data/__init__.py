"""Training and evaluation data for `facto-edge train` and `facto-edge eval`.

    ds = open_dataset("data/", (3, 32, 32), split="train", mean=m, std=s, num_classes=10)
    train, val = split_validation(ds, 0.1, seed=0)
    for x, y in iterate_batches(train, 64, shuffle=True, seed=0, epoch=3, augment=True):
        ...  # x: float32 NCHW normalized, y: int64

Formats, one module each: image folders (imagefolder.py, read lazily with pillow),
CIFAR-10/100 python batches (cifar.py), MNIST IDX files (idx.py), .npz archives
(npz.py) and the built-in `digits:` (digits.py, needs scikit-learn). Neither torch nor
pillow nor scikit-learn is imported unless the format in use needs it.
"""

from facto_edge.data.batches import epoch_order, iterate_batches, random_crop_flip
from facto_edge.data.dataset import Dataset, DatasetView
from facto_edge.data.open import SUPPORTED, detect_format, open_dataset, open_for_model
from facto_edge.data.split import split_validation

__all__ = [
    "SUPPORTED",
    "Dataset",
    "DatasetView",
    "detect_format",
    "epoch_order",
    "iterate_batches",
    "open_dataset",
    "open_for_model",
    "random_crop_flip",
    "split_validation",
]
