"""Count the bytes PyTorch autograd keeps from forward for backward.

Every tensor autograd saves passes through the pack hook of
`torch.autograd.graph.saved_tensors_hooks`. The counter records the storage behind each
one, once per storage (views and tensors saved twice share it), and leaves out the
storages of the tensors it is told to exclude: the model's parameters and buffers, which
are kept whether or not anything trains.

    with SavedTensorCounter(exclude=model.parameters()) as counter:
        loss = loss_fn(model(x), y)
    loss.backward()
    counter.nbytes      # saved-activation bytes of that step
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class SavedTensorCounter:
    """A context manager that sums the unique storages saved for backward inside it."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self._seen: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def __enter__(self) -> SavedTensorCounter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr and ptr not in self._excluded:
            self._seen[ptr] = storage.nbytes()
        return tensor

    @property
    def nbytes(self) -> int:
        """Bytes of the unique, non-excluded storages saved so far."""
        return sum(self._seen.values())

    @property
    def count(self) -> int:
        """How many unique storages were saved."""
        return len(self._seen)


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor
