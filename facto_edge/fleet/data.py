"""The fleet's data: each client's part of the training split, and the server's held-out
set. Opened once per process (cached), since every client message and round asks again."""

from __future__ import annotations

import functools

import numpy as np

from facto_edge.data import open_for_model, split_validation
from facto_edge.data.dataset import Dataset, DatasetView
from facto_edge.fleet.partition import partition_indices
from facto_edge.runtime.manifest import Manifest

HOLD_OUT = 0.2  # share held out for evaluation where the data has no test split


@functools.lru_cache(maxsize=4)
def _open(model: str, data: str, seed: int) -> tuple[Dataset, Dataset]:
    """(training set, held-out set): the data's train and test splits, or, for a source
    without them, a stratified HOLD_OUT share of it held out."""
    manifest = Manifest.load(model)
    train = open_for_model(data, manifest, split="train")
    if train.split != "all":
        return train, open_for_model(data, manifest, split="test")
    return split_validation(train, HOLD_OUT, seed)


@functools.lru_cache(maxsize=4)
def _parts(model: str, data: str, clients: int, spec: str, seed: int) -> tuple[np.ndarray, ...]:
    train, _ = _open(model, data, seed)
    return tuple(partition_indices(train.labels, clients, spec, seed))


def client_data(cfg, partition: int) -> Dataset:
    """Client `partition`'s part of the training set under `cfg` (a FleetConfig): read
    from cfg.parts where the server side wrote the parts (parts.py), else cut here."""
    if cfg.parts:
        from facto_edge.fleet.parts import read_part

        return read_part(cfg.parts, partition)
    train, _ = _open(cfg.model, cfg.data, cfg.seed)
    parts = _parts(cfg.model, cfg.data, cfg.clients, cfg.partition, cfg.seed)
    return DatasetView(train, parts[partition])


def held_out(cfg) -> tuple[np.ndarray, np.ndarray]:
    """The server's evaluation set under `cfg`, as (x, y) arrays."""
    _, test = _open(cfg.model, cfg.data, cfg.seed)
    return test.get(np.arange(len(test)))


def pooled(cfg) -> Dataset:
    """Every client's data together: the training set (the centralized baseline's)."""
    return _open(cfg.model, cfg.data, cfg.seed)[0]


def label_counts(cfg) -> list[list[int]]:
    """Per client, its number of samples of each class."""
    train, _ = _open(cfg.model, cfg.data, cfg.seed)
    parts = _parts(cfg.model, cfg.data, cfg.clients, cfg.partition, cfg.seed)
    k = train.num_classes
    return [np.bincount(train.labels[p], minlength=k).tolist() for p in parts]
