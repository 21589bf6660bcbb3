"""`facto-edge train --train-layers`: train every layer, some named ones, or the layers
that matter most within a limit on saved bytes (`auto:SIZE`, runtime/importance.py).

The automatic choice looks at the first SELECT_BATCHES batches of the training split (a
seeded draw, no augmentation). With a budget it runs in a child process: its sessions
(every layer trainable, unbudgeted) would otherwise raise the training process's peak.
A resumed run keeps the layers its run chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facto_edge.child import run_in_child
from facto_edge.errors import FactoEdgeError
from facto_edge.runtime.budget import parse_size

SELECT_BATCHES = 4


@dataclass(frozen=True)
class AutoLayers:
    """`auto:SIZE`: the most important layers within `saved_limit` saved bytes per step."""

    saved_limit: int


def parse_train_layers(value: str | None) -> list[str] | AutoLayers | None:
    """--train-layers: None or "all" (every layer), "auto:SIZE", or comma-separated names."""
    if value is None or value.strip() == "all":
        return None
    if value.startswith("auto:"):
        try:
            return AutoLayers(parse_size(value[5:]))
        except FactoEdgeError:
            raise FactoEdgeError(
                f"--train-layers auto: takes the saved bytes per step, e.g. auto:3MB; "
                f"found {value!r}"
            ) from None
    names = [n.strip() for n in value.split(",")]
    if not all(names):
        raise FactoEdgeError(
            f"--train-layers must be all, auto:SIZE or layer names; found {value!r}"
        )
    return names


def _samples(train_ds, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(train_ds), SELECT_BATCHES * batch_size)
    order = np.random.default_rng(seed).permutation(len(train_ds))[:n]
    return train_ds.get(np.sort(order))


def _select(model_dir: str, x, y, limit: int, batch_size: int, codec: str, seed: int):
    from facto_edge.runtime.importance import select_layers

    return select_layers(model_dir, x, y, limit, batch_size, codec=codec, seed=seed)


def _select_process(queue, *args) -> None:
    try:
        queue.put(("done", _select(*args)))
    except FactoEdgeError as e:
        queue.put(("error", e))


def choose_layers(
    model_dir: str | Path, train_ds, auto: AutoLayers, batch_size: int, codec: str, seed: int,
    *, in_child: bool,
):  # fmt: skip
    """The runtime's Selection (runtime/importance.py) for `auto` on `train_ds`."""
    x, y = _samples(train_ds, batch_size, seed)
    args = (str(model_dir), x, y, auto.saved_limit, batch_size, codec, seed)
    if not in_child:
        return _select(*args)
    from facto_edge.runtime.preload import release_compiler_pages

    release_compiler_pages()  # LLVM pages held here would stay resident in the child
    return run_in_child(_select_process, args, "layer selection process")[1]
