"""Folders of class folders holding PNG or JPEG images, read lazily with pillow.

Layout: ROOT/<class>/*.png|jpg|jpeg, or ROOT/train/<class>/... beside ROOT/test/ (or
ROOT/val/). Classes are the class folder names, sorted, taken over every split so that a
label means the same class in each. Opening indexes file paths and reads each image's
header (so unreadable files are found, and counted, before training); pixels are decoded
only in `get`, one batch at a time, so a large folder is never held in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from facto_edge.data.dataset import DataRequest, Dataset, as_indices, resolve_num_classes
from facto_edge.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TEST_DIRS = ("test", "val")
_MODES = {1: "L", 3: "RGB"}


def pil_image() -> ModuleType:
    """PIL.Image, or a DataError saying how to install pillow."""
    try:
        from PIL import Image
    except ImportError as e:
        raise DataError(
            "reading image folders needs pillow, which is not installed: "
            "pip install 'facto-edge[data]' (or pillow)"
        ) from e
    return Image


def _image_errors(image: ModuleType) -> tuple[type[BaseException], ...]:
    return (OSError, ValueError, SyntaxError, image.DecompressionBombError)


def is_image_folder(path: Path) -> bool:
    """Whether `path` holds class folders (or a train/ folder of them)."""
    return any(_subdirs(path))


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_dirs(root: Path) -> dict[str, Path]:
    """The folder of class folders for each split the root has ("all" when flat)."""
    if not (root / "train").is_dir():
        return {"all": root}
    dirs = {"train": root / "train"}
    test = next((root / d for d in TEST_DIRS if (root / d).is_dir()), None)
    if test is not None:
        dirs["test"] = test
    return dirs


def _images_of(class_dir: Path) -> list[Path]:
    return sorted(
        p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def _index(split_dir: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        found = _images_of(class_dir) if class_dir.is_dir() else []
        paths += found
        labels += [label] * len(found)
    return paths, np.asarray(labels, dtype=np.int64)


def open_image_folder(root: Path, req: DataRequest) -> ImageFolderDataset:
    """Index an image folder for the requested split (see the module docstring)."""
    dirs = _split_dirs(root)
    split = req.split if req.split in dirs else "all"
    if split == "all" and "all" not in dirs:
        raise DataError(
            f"{root} has a train/ folder but no {' or '.join(TEST_DIRS)}/ folder for the "
            f"{req.split} split: add one, or pass the test folder itself as the data path"
        )
    classes = sorted({d.name for split_dir in dirs.values() for d in _subdirs(split_dir)})
    if not classes:
        raise DataError(
            f"{dirs[split]} holds no class folders: expected <class>/*.png|jpg|jpeg inside"
        )
    paths, labels = _index(dirs[split], classes)
    if not paths:
        raise DataError(
            f"no images in the class folders of {dirs[split]}: expected files ending in "
            f"{', '.join(IMAGE_SUFFIXES)}"
        )
    num_classes = resolve_num_classes(labels, req.num_classes, str(dirs[split]))
    return ImageFolderDataset(paths, labels, classes, num_classes, split, req, str(root))


class ImageFolderDataset(Dataset):
    """Images indexed by path, decoded, converted and resized one batch at a time."""

    def __init__(
        self,
        paths: list[Path],
        labels: np.ndarray,
        classes: list[str],
        num_classes: int,
        split: str,
        req: DataRequest,
        name: str,
    ) -> None:
        c, h, w = req.input_shape
        if c not in _MODES:
            raise DataError(
                f"the model expects {c} input channels: image folders can feed models "
                "with 1 or 3 channels; convert the images to an .npz instead"
            )
        self._image = pil_image()
        self._errors = _image_errors(self._image)
        self.on_corrupt = req.on_corrupt
        self._bad: set[str] = set()
        super().__init__(
            name=name,
            split=split,
            classes=classes,
            num_classes=num_classes,
            labels=labels,
            conversion=req.conversion("NHWC", 1 / 255, (c, h, w)),
        )
        keep = [self._readable_header(p) for p in paths]
        self.paths = [str(p) for p, k in zip(paths, keep, strict=True) if k]
        self.labels = labels[np.asarray(keep, dtype=bool)]
        if not self.paths:
            raise DataError(
                f"none of the {len(paths)} images in {name} could be read (first: "
                f"{self.skipped[0]}): expected PNG or JPEG files; fix or replace them"
            )

    def _corrupt(self, path: Path | str, exc: BaseException) -> None:
        if self.on_corrupt == "fail":
            raise DataError(
                f"cannot read image {path} ({exc}): fix or delete it, or pass "
                'on_corrupt="skip" to leave unreadable images out'
            ) from exc
        if str(path) not in self._bad:
            self._bad.add(str(path))
            self.skipped.append(str(path))

    def _readable_header(self, path: Path) -> bool:
        try:
            self._image.open(path).close()
        except self._errors as exc:
            self._corrupt(path, exc)
            return False
        return True

    def _decode(self, path: str) -> np.ndarray | None:
        c, h, w = self.input_shape
        try:
            with self._image.open(path) as im:
                img = im.convert(_MODES[c])
            if img.size != (w, h):
                img = img.resize((w, h), self._image.BILINEAR)
            return np.asarray(img).reshape(h, w, c)
        except self._errors as exc:
            self._corrupt(path, exc)
            return None

    def get(
        self, indices: Sequence[int] | np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        idx = as_indices(indices, len(self))
        pixels = np.empty((len(idx), *self.input_shape[1:], self.input_shape[0]), np.uint8)
        kept = np.zeros(len(idx), dtype=bool)
        for k, i in enumerate(idx):
            if self.paths[i] in self._bad:
                continue
            img = self._decode(self.paths[i])
            if img is not None:
                pixels[k], kept[k] = img, True
        return self.conversion.apply(pixels[kept], out), self.labels[idx[kept]]
