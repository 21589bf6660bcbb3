"""MNIST-style IDX files: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-...

Each file may be raw or gzipped (`.gz`); a `.` may stand for the `-` before "idx" (as
some mirrors name them). Raw image files are memory-mapped; gzipped ones are
decompressed into memory once. Header: two zero bytes, a type code, the number of
dimensions, then each dimension as a big-endian uint32; the values follow, big-endian.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

import numpy as np

from facto_edge.data.dataset import ArrayDataset, DataRequest, array_dataset
from facto_edge.errors import DataError

_NAME = re.compile(r"^(train|t10k)-(images|labels)[-.]idx[13]-ubyte(\.gz)?$")
_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_PARTS = {"train": "train", "test": "t10k"}


def find_idx(folder: Path) -> dict[tuple[str, str], Path]:
    """IDX files in `folder` by (prefix, kind), e.g. ("t10k", "labels"); raw before gz."""
    found: dict[tuple[str, str], Path] = {}
    for p in sorted(folder.iterdir(), key=lambda p: p.name.endswith(".gz")):
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.setdefault((m.group(1), m.group(2)), p)
    return found


def _parse_header(head: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _TYPES:
        raise DataError(
            f"{path} is not an IDX file (first bytes {head[:4].hex()}): expected 0000 then "
            "a type code such as 08 (uint8); re-download it"
        )
    ndim = head[3]
    end = 4 + 4 * ndim
    if len(head) < end:
        raise DataError(f"{path} is truncated inside its header: re-download it")
    shape = tuple(int(d) for d in np.frombuffer(head[4:end], dtype=">u4"))
    return np.dtype(_TYPES[head[2]]), shape, end


def _check_size(path: Path, dtype: np.dtype, shape: tuple[int, ...], n_bytes: int) -> None:
    if n_bytes != dtype.itemsize * int(np.prod(shape)):
        raise DataError(
            f"{path} has {n_bytes} bytes of data but its header says {shape} of "
            f"{dtype.name}: the file is truncated or corrupt; re-download it"
        )


def read_idx(path: Path) -> np.ndarray:
    """An IDX file as an array: memory-mapped if raw, decompressed if gzipped."""
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                data = f.read()
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"cannot decompress {path} ({e}): re-download it") from e
        dtype, shape, start = _parse_header(data[:1028], path)
        _check_size(path, dtype, shape, len(data) - start)
        return np.frombuffer(data, dtype=dtype, offset=start).reshape(shape)
    with path.open("rb") as f:
        dtype, shape, start = _parse_header(f.read(1028), path)
    _check_size(path, dtype, shape, path.stat().st_size - start)
    return np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape)


def open_idx(folder: Path, files: dict[tuple[str, str], Path], req: DataRequest) -> ArrayDataset:
    """The requested split of an IDX folder (train-* for train, t10k-* for test)."""
    prefix = _PARTS[req.split]
    missing = [k for k in ("images", "labels") if (prefix, k) not in files]
    if missing:
        raise DataError(
            f"{folder} has no {prefix}-{missing[0]}-idx{1 if missing[0] == 'labels' else 3}"
            f"-ubyte[.gz] for the {req.split} split: add it or use another data path"
        )
    x = read_idx(files[(prefix, "images")])
    y = read_idx(files[(prefix, "labels")])
    return array_dataset(x, np.asarray(y), req, name=str(folder), split=req.split)
