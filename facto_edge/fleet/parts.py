"""Each client's part of the data as its own small .npz, written by the server side.

A client that opens the data source itself loads every sample and, for `digits:`,
scikit-learn (about 70 MiB of resident memory, more than the client's model and data). So
the server side partitions once and writes `part-NNNNN.npz` per client into a directory
(`FleetConfig.parts`): the client's samples already converted to the model's input
(float32 NCHW, normalized) and their labels. A client then needs numpy alone to read its
part, and holds only its own samples.

    write_parts(cfg, "run/parts")          # the server side, before the first round
    ds = read_part("run/parts", 7)         # client 7: a Dataset for iterate_batches
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from facto_edge.data.convert import Conversion
from facto_edge.data.dataset import ArrayDataset
from facto_edge.errors import DataError


def part_path(directory: str | Path, partition: int) -> Path:
    return Path(directory) / f"part-{partition:05d}.npz"


def write_parts(cfg, directory: str | Path) -> Path:
    """Write every client's part of `cfg.data` (a FleetConfig) into `directory`."""
    from dataclasses import replace

    from facto_edge.fleet.data import client_data

    cfg = replace(cfg, parts="")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for p in range(cfg.clients):
        view = client_data(cfg, p)
        x, y = view.get(np.arange(len(view)))
        tmp = directory / f".part-{p:05d}.{os.getpid()}.npz"
        np.savez(tmp, x=x, y=y, num_classes=np.int64(view.num_classes))
        tmp.replace(part_path(directory, p))
    return directory


def read_part(directory: str | Path, partition: int) -> ArrayDataset:
    """Client `partition`'s samples from `directory`, as model-ready input (no conversion)."""
    path = part_path(directory, partition)
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y, k = npz["x"], npz["y"], int(npz["num_classes"])
    except (OSError, KeyError, ValueError) as e:
        raise DataError(
            f"cannot read client {partition}'s data {path} ({type(e).__name__}: {e}): "
            "expected a part written by the server side (fleet.parts.write_parts)"
        ) from e
    shape = tuple(x.shape[1:])
    c = shape[0]
    identity = Conversion("NCHW", 1.0, shape, shape, np.zeros((c, 1, 1), np.float32),
                          np.ones((c, 1, 1), np.float32))  # fmt: skip
    return ArrayDataset(x, name=str(path), split="train", classes=[str(i) for i in range(k)],
                        num_classes=k, labels=y.astype(np.int64), conversion=identity)  # fmt: skip
