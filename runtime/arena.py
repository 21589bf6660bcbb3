"""The arena: one byte buffer allocated once, handed out as typed views at planned offsets.

Everything whose size depends on the model or the batch lives here (see DESIGN.md,
"Memory: one arena, planned ahead"). After construction, `view` never allocates tensor
memory: it returns numpy views into the one buffer (only the small view object itself is
created). The buffer's start is 64-byte aligned, so planner offsets (multiples of 64)
give 64-byte aligned views. An arena starts zeroed; a CPU arena's pages take resident
memory only once written.
"""

import math

import numpy as np

from .errors import DeviceError
from .planner import ALIGN


class Arena:
    """One preallocated, 64-byte aligned byte buffer of `nbytes` on `device` ("cpu"/"cuda")."""

    def __init__(self, nbytes: int, device: str = "cpu") -> None:
        if nbytes < 0:
            raise ValueError(f"arena size must be >= 0 bytes, got {nbytes}")
        self.nbytes = int(nbytes)
        self.device = device
        if device == "cpu":
            raw = np.zeros(self.nbytes + ALIGN, np.uint8)  # calloc: untouched pages cost nothing
            start = -raw.ctypes.data % ALIGN
        elif device == "cuda":
            raw, start = _cuda_buffer(self.nbytes + ALIGN), 0
        else:
            raise DeviceError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")
        self._buf = raw[start : start + self.nbytes]

    def view(self, offset: int, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """A C-contiguous array of `shape` and `dtype` over the arena bytes from `offset`.

        No copy: writes through the view land in the arena. `offset` must be a multiple of
        the dtype's size and the view must end inside the arena.
        """
        dtype = np.dtype(dtype)
        end = offset + math.prod(shape) * dtype.itemsize
        if offset < 0 or end > self.nbytes or offset % dtype.itemsize:
            raise ValueError(
                f"arena view [{offset}, {end}) of {dtype}{tuple(shape)} does not fit an "
                f"arena of {self.nbytes} bytes at an offset aligned to {dtype.itemsize}"
            )
        return self._buf[offset:end].view(dtype).reshape(shape)

    def __repr__(self) -> str:
        return f"Arena({self.nbytes}, device={self.device!r})"


def _cuda_buffer(nbytes: int):
    """A zeroed device byte array (numba.cuda); DeviceError when no GPU (or simulator) is
    there."""
    from numba import cuda

    from .kernels.cuda.elementwise import fill

    if not cuda.is_available():
        raise DeviceError(
            "device='cuda' asked for, but numba finds no CUDA GPU; use device='cpu' "
            "(or set NUMBA_ENABLE_CUDASIM=1 to test with the simulator)"
        )
    raw = cuda.device_array(nbytes, np.uint8)
    fill(raw, 0)  # as a CPU arena: the first binding sees zeroed buffers
    return raw
