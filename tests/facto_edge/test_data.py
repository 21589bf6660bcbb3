"""Data loading: every format built in tmp_path, conversion, batching, and bad input."""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facto_edge.data import (
    detect_format,
    epoch_order,
    iterate_batches,
    open_dataset,
    open_for_model,
    split_validation,
)
from facto_edge.data.batches import PAD
from facto_edge.errors import DataError

Image = pytest.importorskip("PIL.Image")

RNG = np.random.default_rng(1234)


# ---------------------------------------------------------------- builders


def write_image(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def solid(value: int | tuple[int, ...], h: int = 8, w: int = 8) -> np.ndarray:
    v = np.asarray(value, dtype=np.uint8)
    return np.broadcast_to(v, (h, w, *v.shape)).copy()


def image_folder(root: Path, classes: dict[str, list[int]]) -> Path:
    """Class folders of solid RGB 8x8 PNGs; pixel value = the listed grey levels."""
    for name, values in classes.items():
        for k, v in enumerate(values):
            write_image(root / name / f"{k}.png", solid((v, v, v)))
    return root


def write_idx(path: Path, arr: np.ndarray) -> Path:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">f4"): 0x0D}
    head = bytes([0, 0, codes[arr.dtype], arr.ndim])
    head += np.asarray(arr.shape, dtype=">u4").tobytes()
    data = head + arr.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_cifar_batch(path: Path, x: np.ndarray, y: np.ndarray, key: bytes = b"labels"):
    with path.open("wb") as f:
        pickle.dump({b"data": x.reshape(len(x), -1), key: y.tolist()}, f)


def cifar_images(n: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def assert_one_line_error(exc: pytest.ExceptionInfo, *words: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    for word in words:
        assert word in msg, f"{word!r} not in {msg!r}"


# ---------------------------------------------------------------- image folders


def test_image_folder_labels_classes_and_normalization(tmp_path):
    root = image_folder(tmp_path / "d", {"b_dog": [200], "a_cat": [10, 20]})
    ds = open_dataset(str(root), (3, 8, 8), mean=[0.5, 0.4, 0.3], std=[0.5, 0.25, 0.2])
    assert detect_format(str(root)) == "imagefolder"
    assert (ds.classes, ds.num_classes, ds.split, len(ds)) == (["a_cat", "b_dog"], 2, "all", 3)
    x, y = ds.get([2, 0, 1])
    assert x.shape == (3, 3, 8, 8) and x.dtype == np.float32
    assert y.tolist() == [1, 0, 0] and y.dtype == np.int64
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.5, 0.25, 0.2])
    for xi, grey in zip(x, [200, 10, 20], strict=True):
        want = (grey / 255 - mean) / std
        np.testing.assert_allclose(xi.mean(axis=(1, 2)), want, rtol=1e-5)
        assert np.ptp(xi, axis=(1, 2)).max() == 0


def test_image_folder_train_test_share_class_indices(tmp_path):
    image_folder(tmp_path / "train", {"a": [1], "b": [2, 3]})
    image_folder(tmp_path / "val", {"a": [4], "c": [5]})
    train = open_dataset(str(tmp_path), (1, 8, 8), split="train")
    test = open_dataset(str(tmp_path), (1, 8, 8), split="test")
    assert train.classes == test.classes == ["a", "b", "c"]
    assert (train.split, test.split) == ("train", "test")
    assert train.labels.tolist() == [0, 1, 1] and test.labels.tolist() == [0, 2]
    x, _ = test.get([1])
    np.testing.assert_allclose(x, 5 / 255, rtol=1e-5)


def test_image_folder_converts_channels_and_size(tmp_path):
    rgb = RNG.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    write_image(tmp_path / "c" / "rgb.png", rgb)
    write_image(tmp_path / "c" / "grey.jpg", solid(77, 6, 6))
    write_image(tmp_path / "c" / "rgba.PNG", np.dstack([rgb, rgb[..., :1]]))
    grey_model = open_dataset(str(tmp_path), (1, 12, 10))
    x, _ = grey_model.get(range(3))
    assert x.shape == (3, 1, 12, 10)
    pil_luma = np.asarray(Image.fromarray(rgb).convert("L")) / 255
    np.testing.assert_allclose(x[1, 0], pil_luma, atol=1e-6)  # files sorted: grey, rgb, rgba
    np.testing.assert_allclose(x[2], x[1])
    rgb_model = open_dataset(str(tmp_path), (3, 8, 8))
    x, _ = rgb_model.get([0])
    assert x.shape == (1, 3, 8, 8)
    assert np.array_equal(x[0, 0], x[0, 2])
    assert abs(float(x.mean()) - 77 / 255) < 2 / 255  # JPEG is lossy


def test_image_folder_reads_pixels_lazily_per_batch(tmp_path):
    root = image_folder(tmp_path, {"a": [10, 20], "b": [30]})
    ds = open_dataset(str(root), (1, 8, 8), on_corrupt="fail")
    assert not hasattr(ds, "raw")
    write_image(root / "a" / "1.png", solid((99, 99, 99)))  # changed after opening
    x, _ = ds.get([1])
    np.testing.assert_allclose(x, 99 / 255, rtol=1e-5)
    os.remove(root / "b" / "0.png")
    with pytest.raises(DataError) as exc:
        ds.get([2])
    assert_one_line_error(exc, "0.png", "skip")


def test_image_folder_corrupt_files_skip_or_fail(tmp_path):
    root = image_folder(tmp_path, {"a": [10, 20], "b": [30, 40]})
    (root / "a" / "garbage.png").write_bytes(b"not an image at all")
    noisy = write_image(root / "b" / "1.png", RNG.integers(0, 256, (64, 64, 3), np.uint8))
    noisy.write_bytes(noisy.read_bytes()[:2000])  # header fine, pixel data cut short
    with pytest.raises(DataError) as exc:
        open_dataset(str(root), (1, 8, 8), on_corrupt="fail")
    assert_one_line_error(exc, "garbage.png", "cannot read")

    ds = open_dataset(str(root), (1, 8, 8), on_corrupt="skip")
    assert len(ds) == 4 and ds.skipped == [str(root / "a" / "garbage.png")]
    x, y = ds.get(range(4))
    assert len(x) == len(y) == 3 and y.tolist() == [0, 0, 1]
    assert ds.skipped[-1] == str(root / "b" / "1.png") and len(ds.skipped) == 2
    batches = list(iterate_batches(ds, 2, shuffle=False, seed=0, epoch=0))
    assert [len(b[1]) for b in batches] == [2, 1] and len(ds.skipped) == 2


# ---------------------------------------------------------------- CIFAR


def test_cifar10_batches_meta_and_splits(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x1, x2, xt = cifar_images(5), cifar_images(3), cifar_images(4)
    write_cifar_batch(folder / "data_batch_1", x1, np.arange(5) % 10)
    write_cifar_batch(folder / "data_batch_2", x2, np.array([9, 8, 7]))
    write_cifar_batch(folder / "test_batch", xt, np.array([1, 2, 3, 4]))
    names = [f"class{i}".encode() for i in range(10)]
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": names}, f, protocol=2)
    train = open_dataset(str(tmp_path), (3, 32, 32), num_classes=10)
    assert detect_format(str(tmp_path)) == "cifar"
    assert len(train) == 8 and train.classes[3] == "class3" and train.num_classes == 10
    x, y = train.get([6, 0])
    np.testing.assert_allclose(x, np.stack([x2[1], x1[0]]) / 255, rtol=1e-6)
    assert y.tolist() == [8, 0]
    test = open_dataset(str(folder), (1, 16, 16), split="test")
    assert test.get([3])[0].shape == (1, 1, 16, 16) and test.labels.tolist() == [1, 2, 3, 4]


def test_cifar100_fine_labels(tmp_path):
    x, xt = cifar_images(6), cifar_images(2)
    write_cifar_batch(tmp_path / "train", x, np.array([0, 99, 5, 5, 1, 2]), b"fine_labels")
    write_cifar_batch(tmp_path / "test", xt, np.array([42, 7]), b"fine_labels")
    with (tmp_path / "meta").open("wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    ds = open_dataset(str(tmp_path), (3, 32, 32), num_classes=100)
    assert ds.labels.tolist() == [0, 99, 5, 5, 1, 2] and ds.classes[99] == "c99"
    assert open_dataset(str(tmp_path), (3, 32, 32), split="test").labels.tolist() == [42, 7]


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def test_cifar_pickle_cannot_run_code(tmp_path):
    target = tmp_path / "pwned"
    with (tmp_path / "data_batch_1").open("wb") as f:
        pickle.dump({b"data": _Exploit(target), b"labels": [0]}, f)
    with pytest.raises(DataError) as exc:
        open_dataset(str(tmp_path), (3, 32, 32))
    assert_one_line_error(exc, "data_batch_1", "mkdir is not allowed")
    assert not target.exists()


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_raw_and_gzipped(tmp_path, suffix):
    images = RNG.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5, 9], dtype=np.uint8)
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images[:2])
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels[:2])
    assert detect_format(str(tmp_path)) == "idx"
    ds = open_dataset(str(tmp_path), (1, 28, 28), mean=0.1307, std=0.3081, num_classes=10)
    assert isinstance(ds.raw, np.memmap) == (suffix == "")
    x, y = ds.get([6, 2])
    np.testing.assert_allclose(x[:, 0], (images[[6, 2]] / 255 - 0.1307) / 0.3081, rtol=1e-5)
    assert y.tolist() == [9, 2] and ds.classes == [str(i) for i in range(10)]
    assert len(open_dataset(str(tmp_path), (3, 32, 32), split="test")) == 2


def test_idx_truncated_and_bad_magic(tmp_path):
    images = np.zeros((4, 5, 5), np.uint8)
    path = write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError) as exc:
        open_dataset(str(tmp_path), (1, 5, 5))
    assert_one_line_error(exc, "train-images-idx3-ubyte", "truncated", "re-download")
    path.write_bytes(b"\x12\x34" + path.read_bytes()[2:])
    with pytest.raises(DataError) as exc:
        open_dataset(str(tmp_path), (1, 5, 5))
    assert_one_line_error(exc, "not an IDX file", "1234")


# ---------------------------------------------------------------- npz


def test_npz_layouts_give_the_same_input(tmp_path):
    nhwc = RNG.integers(0, 256, size=(5, 6, 6, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 1, 0])
    nchw = nhwc.transpose(0, 3, 1, 2).astype(np.float32) / 255
    outs = []
    for name, x in {"nhwc": nhwc, "nchw": nchw, "nchw64": nchw.astype(np.float64)}.items():
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
        ds = open_dataset(str(tmp_path / f"{name}.npz"), (3, 6, 6), mean=0.5, std=0.2)
        assert (ds.split, ds.num_classes) == ("all", 3)
        outs.append(ds.get(range(5))[0])
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
    np.testing.assert_allclose(outs[0], outs[2], atol=1e-6)
    np.testing.assert_allclose(outs[0], (nchw - 0.5) / 0.2, atol=1e-5)


def test_npz_nhw_and_test_arrays(tmp_path):
    x = RNG.random((4, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=[1, 0, 1, 0], x_test=x[:1], y_test=[3])
    train = open_dataset(str(tmp_path / "d.npz"), (3, 8, 8), num_classes=4)
    test = open_dataset(str(tmp_path / "d.npz"), (3, 8, 8), split="test", num_classes=4)
    assert (train.split, len(train), test.split, len(test)) == ("train", 4, "test", 1)
    xt, yt = test.get([0])
    assert yt.tolist() == [3] and np.array_equal(xt[0, 0], xt[0, 2])
    np.testing.assert_allclose(xt[0, 1], x[0], rtol=1e-6)


# ---------------------------------------------------------------- digits


def test_digits_builtin_split_and_values():
    from sklearn.datasets import load_digits

    digits = load_digits()
    train = open_dataset("digits:", (1, 8, 8))
    test = open_dataset("builtin:digits", (1, 8, 8), split="test")
    assert (train.num_classes, len(train.classes), train.name) == (10, 10, "digits")
    assert len(train) + len(test) == 1797 and 350 <= len(test) <= 370
    counts = np.bincount(test.labels, minlength=10) / np.bincount(digits.target)
    assert np.all(np.abs(counts - 0.2) < 0.02)
    x, y = test.get(range(len(test)))
    flat = x.reshape(len(x), -1)
    for i in (0, 100, len(test) - 1):  # each test image is a digit with its own label
        j = int(np.argmin(np.abs(digits.data / 16 - flat[i]).sum(1)))
        assert np.allclose(digits.data[j] / 16, flat[i]) and digits.target[j] == y[i]
    again = open_dataset("digits:", (1, 8, 8), split="test")
    assert np.array_equal(again.labels, test.labels)


def test_digits_upscale_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    small = open_dataset("digits:", (1, 8, 8), split="test")
    big = open_dataset("digits:", (3, 20, 13), split="test", mean=0.5, std=0.25)
    x8, _ = small.get(range(16))
    x, _ = big.get(range(16))
    assert x.shape == (16, 3, 20, 13)
    want = torch.nn.functional.interpolate(
        torch.from_numpy(x8), size=(20, 13), mode="bilinear", align_corners=False
    ).numpy()
    for c in range(3):
        np.testing.assert_allclose(x[:, c], (want[:, 0] - 0.5) / 0.25, atol=1e-5)


# ---------------------------------------------------------------- batches


def indexed_dataset(tmp_path: Path, n: int = 23, hw: int = 10):
    """An npz whose every pixel of image i holds i/255, so x tells which sample it is."""
    x = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, hw, hw, 3))
    np.savez(tmp_path / "ix.npz", x=x, y=np.arange(n) % 5)
    return open_dataset(str(tmp_path / "ix.npz"), (3, hw, hw))


def sample_ids(x: np.ndarray) -> list[int]:
    return np.round(x[:, 0, 0, 0] * 255).astype(int).tolist()


def collect(ds, **kw) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.copy(), y.copy()) for x, y in iterate_batches(ds, **kw)]


def test_batches_are_a_permutation_fixed_by_seed_and_epoch(tmp_path):
    ds = indexed_dataset(tmp_path)
    kw = dict(batch_size=5, shuffle=True, seed=7)
    first = collect(ds, epoch=3, **kw)
    ids = [i for x, _ in first for i in sample_ids(x)]
    assert sorted(ids) == list(range(23)) and ids != list(range(23))
    assert [len(y) for _, y in first] == [5, 5, 5, 5, 3]
    assert all(np.array_equal(y, np.asarray(sample_ids(x)) % 5) for x, y in first)
    again = collect(ds, epoch=3, **kw)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    other = [i for x, _ in collect(ds, epoch=4, **kw) for i in sample_ids(x)]
    assert other != ids
    plain = collect(ds, batch_size=5, shuffle=False, seed=7, epoch=3, drop_last=True)
    assert [sample_ids(x) for x, _ in plain] == [list(range(k, k + 5)) for k in (0, 5, 10, 15)]


def test_resumed_epoch_reproduces_batches_with_augmentation(tmp_path):
    kw = dict(batch_size=4, shuffle=True, seed=3, augment=True)
    ds = indexed_dataset(tmp_path)
    run = {e: collect(ds, epoch=e, **kw) for e in range(3)}
    resumed = collect(indexed_dataset(tmp_path), epoch=2, **kw)
    for (xa, ya), (xb, yb) in zip(run[2], resumed, strict=True):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(run[1], run[2], strict=True))
    reused = [(x.copy(), y.copy()) for x, y in iterate_batches(ds, epoch=2, reuse=True, **kw)]
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(run[2], reused, strict=True))


def test_augmentation_is_a_padded_crop_and_flip(tmp_path):
    x = RNG.integers(0, 256, size=(12, 6, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x=x, y=np.zeros(12, int))
    ds = open_dataset(str(tmp_path / "a.npz"), (3, 6, 7), mean=[0.2, 0.4, 0.6], std=0.5)
    plain = collect(ds, batch_size=12, shuffle=False, seed=0, epoch=0)[0][0]
    aug = collect(ds, batch_size=12, shuffle=False, seed=0, epoch=0, augment=True)[0][0]
    black = (0 - np.array([0.2, 0.4, 0.6], np.float32)) / 0.5
    padded = np.empty((12, 3, 6 + 2 * PAD, 7 + 2 * PAD), np.float32)
    padded[...] = black[:, None, None]
    padded[:, :, PAD:-PAD, PAD:-PAD] = plain
    flips = 0
    for i in range(12):
        crops = [
            (padded[i, :, dy : dy + 6, dx : dx + 7], f)
            for dy in range(2 * PAD + 1)
            for dx in range(2 * PAD + 1)
            for f in (False, True)
        ]
        hits = [f for c, f in crops if np.array_equal(c[..., ::-1] if f else c, aug[i])]
        assert hits, f"augmented image {i} is no padded crop of the original"
        flips += hits[0]
    assert 0 < flips < 12 and not np.array_equal(plain, aug)


def test_reuse_writes_into_one_buffer(tmp_path):
    ds = indexed_dataset(tmp_path)
    kw = dict(batch_size=8, shuffle=True, seed=1, epoch=0)
    fresh = collect(ds, **kw)
    reused = list(iterate_batches(ds, reuse=True, **kw))
    assert np.shares_memory(reused[0][0], reused[1][0])
    assert not np.shares_memory(fresh[0][0], fresh[1][0])
    for (xa, _), (xb, _) in zip(fresh, collect(ds, reuse=True, **kw), strict=True):
        assert np.array_equal(xa, xb)


def test_epoch_order_without_shuffle_is_identity():
    assert epoch_order(4, shuffle=False, seed=9, epoch=9).tolist() == [0, 1, 2, 3]


def test_split_validation_is_stratified_disjoint_and_fixed(tmp_path):
    ds = indexed_dataset(tmp_path, n=50)
    train, val = split_validation(ds, 0.2, seed=5)
    train2, val2 = split_validation(ds, 0.2, seed=5)
    assert np.array_equal(val.indices, val2.indices)
    assert np.array_equal(train.indices, train2.indices)
    assert sorted([*train.indices, *val.indices]) == list(range(50))
    assert np.bincount(val.labels).tolist() == [2] * 5
    x, y = val.get([0, 1])
    assert sample_ids(x) == val.indices[:2].tolist() and np.array_equal(y, val.labels[:2])
    assert not np.array_equal(split_validation(ds, 0.2, seed=6)[1].indices, val.indices)
    with pytest.raises(DataError) as exc:
        split_validation(indexed_dataset(tmp_path, n=2), 0.2, seed=0)
    assert_one_line_error(exc, "2 samples", "validation")


# ---------------------------------------------------------------- bad input


def test_missing_path_empty_folder_and_unknown_format(tmp_path):
    with pytest.raises(DataError) as exc:
        open_dataset(str(tmp_path / "nope"), (3, 8, 8))
    assert_one_line_error(exc, "nope", "does not exist", ".npz", "digits:")
    with pytest.raises(DataError) as exc:
        open_dataset(str(tmp_path), (3, 8, 8))
    assert_one_line_error(exc, "is empty", "class folders")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError) as exc:
        open_dataset(str(tmp_path / "notes.txt"), (3, 8, 8))
    assert_one_line_error(exc, "notes.txt", "CIFAR", "IDX", ".npz", "digits:")
    with pytest.raises(DataError) as exc:
        open_dataset(str(tmp_path), (3, 8, 8))
    assert_one_line_error(exc, "no class folders or known data files", "CIFAR")
    with pytest.raises(DataError) as exc:
        open_dataset("builtin:imagenet", (3, 8, 8))
    assert_one_line_error(exc, "imagenet", "digits:")


def test_folders_without_images_or_test_split(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("x")
    with pytest.raises(DataError) as exc:
        open_dataset(str(tmp_path), (3, 8, 8))
    assert_one_line_error(exc, "no images", ".png")
    image_folder(tmp_path / "split" / "train", {"a": [1]})
    with pytest.raises(DataError) as exc:
        open_dataset(str(tmp_path / "split"), (3, 8, 8), split="test")
    assert_one_line_error(exc, "train/", "test or val", "test split")
    idx = tmp_path / "idx"
    idx.mkdir()
    write_idx(idx / "train-images-idx3-ubyte", np.zeros((2, 4, 4), np.uint8))
    write_idx(idx / "train-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(DataError) as exc:
        open_dataset(str(idx), (1, 4, 4), split="test")
    assert_one_line_error(exc, "t10k-images-idx3-ubyte", "test split")


def npz_error(tmp_path: Path, shape=(3, 8, 8), num_classes=None, **arrays) -> str:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as exc:
        open_dataset(str(path), shape, num_classes=num_classes)
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_bad_arrays(tmp_path):
    u8 = np.zeros((4, 8, 8, 3), np.uint8)
    msg = npz_error(tmp_path, x=u8[:0], y=np.zeros(0, int))
    assert "no samples" in msg
    msg = npz_error(tmp_path, x=u8, y=[0, 1, 12, 3], num_classes=10)
    assert "label 12" in msg and "10 classes" in msg and "index 2" in msg
    msg = npz_error(tmp_path, x=u8, y=[0, -1, 1, 1])
    assert "label -1" in msg and "negative" in msg
    msg = npz_error(tmp_path, x=np.zeros((4, 64), np.float32), y=[0, 1, 1, 0])
    assert "rank" in msg and "(4, 64)" in msg
    msg = npz_error(tmp_path, x=np.zeros((4, 2, 8, 8), np.float32), y=[0, 1, 1, 0])
    assert "2 channels" in msg and "expects 3" in msg
    msg = npz_error(tmp_path, x=u8, y=[0, 1, 1])
    assert "4 images but 3 labels" in msg
    msg = npz_error(tmp_path, x=u8, y=np.eye(4))
    assert "argmax" in msg
    msg = npz_error(tmp_path, x=u8.astype(np.int64), y=[0, 1, 1, 0])
    assert "int64" in msg and "uint8" in msg
    msg = npz_error(tmp_path, images=u8, y=[0, 1, 1, 0])
    assert "['images', 'y']" in msg and "expected x" in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_names_the_dataset_and_first_index(tmp_path, bad):
    x = np.zeros((6, 3, 8, 8), np.float32)
    x[3, 1, 2, 2] = x[5, 0, 0, 0] = bad
    msg = npz_error(tmp_path, x=x, y=np.zeros(6, int))
    assert "bad.npz" in msg and "NaN or Inf" in msg and "index 3" in msg


def test_normalization_values_are_checked(tmp_path):
    with pytest.raises(DataError) as exc:
        open_dataset("digits:", (3, 8, 8), mean=[0.1, 0.2])
    assert_one_line_error(exc, "mean", "1 or 3")
    with pytest.raises(DataError) as exc:
        open_dataset("digits:", (3, 8, 8), std=0.0)
    assert_one_line_error(exc, "std", "> 0")


def test_missing_optional_packages_give_data_errors(tmp_path, monkeypatch):
    root = image_folder(tmp_path, {"a": [1]})
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError) as exc:
        open_dataset(str(root), (3, 8, 8))
    assert_one_line_error(exc, "pillow", "pip install")
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError) as exc:
        open_dataset("digits:", (3, 8, 8))
    assert_one_line_error(exc, "scikit-learn", "pip install")


def test_importing_data_loads_no_torch_pillow_or_sklearn():
    code = (
        "import sys, facto_edge.data as d; "
        "d.open_dataset; print(sorted(m for m in ('torch', 'PIL', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_open_for_model_uses_the_manifest_unless_overridden(tmp_path):
    from facto_edge.runtime.manifest import Manifest

    norm = {"mean": [0.5], "std": [0.25]}
    manifest = Manifest(
        input_shape=[1, 8, 8],
        num_classes=10,
        normalization=norm,
        config={},
        layers=[],
        trainable=[],
    )
    ds = open_for_model("digits:", manifest, split="test")
    x, _ = ds.get([0])
    ref = open_dataset("digits:", (1, 8, 8), split="test", mean=0.5, std=0.25).get([0])[0]
    np.testing.assert_array_equal(x, ref)
    raw = open_for_model("digits:", manifest, split="test", mean=0.0, std=1.0).get([0])[0]
    np.testing.assert_allclose(x, (raw - 0.5) / 0.25, atol=1e-6)
    manifest.num_classes = 5
    with pytest.raises(DataError) as exc:
        open_for_model("digits:", manifest)
    assert_one_line_error(exc, "5 classes")


def test_corrupt_array_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"garbage" * 10)
    with pytest.raises(DataError) as exc:
        open_dataset(str(tmp_path / "junk.npz"), (3, 8, 8))
    assert_one_line_error(exc, "junk.npz", "not an .npz", "np.savez")
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    (cifar / "data_batch_1").write_bytes(pickle.dumps({b"data": 1})[:-4])
    with pytest.raises(DataError) as exc:
        open_dataset(str(cifar), (3, 32, 32))
    assert_one_line_error(exc, "data_batch_1", "cannot read CIFAR batch", "re-download")
