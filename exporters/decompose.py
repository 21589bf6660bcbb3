"""Low-rank decompositions of weight tensors: Tucker-2 for k x k convolutions, truncated
SVD for 1x1 convolutions and Linear layers, and the rank choices (fraction or energy).
Functions take and return numpy arrays; tensorly does the Tucker decomposition."""

from __future__ import annotations

import math

import numpy as np
import tensorly as tl
from tensorly.decomposition import partial_tucker

HOOI_ITERATIONS = 5


def rank_by_fraction(channels: int, fraction: float) -> int:
    """The rank keeping `fraction` of `channels`, at least 1."""
    return max(1, min(channels, math.ceil(fraction * channels - 1e-9)))


def rank_by_energy(matrix: np.ndarray, energy: float) -> int:
    """The smallest rank whose singular values keep `energy` of the squared sum."""
    s = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
    share = np.cumsum(s**2) / max(float(np.sum(s**2)), 1e-300)
    return int(min(len(s), np.searchsorted(share, energy - 1e-12) + 1))


def unfold(w: np.ndarray, mode: int) -> np.ndarray:
    return np.moveaxis(w, mode, 0).reshape(w.shape[mode], -1)


def choose_ranks(w: np.ndarray, modes: tuple[int, ...], rank: float | None, energy: float | None):
    """Ranks for the given modes of `w`, by channel fraction or by kept energy."""
    if energy is not None:
        return [rank_by_energy(unfold(w, m), energy) for m in modes]
    return [rank_by_fraction(w.shape[m], rank) for m in modes]


def relative_error(w: np.ndarray, rebuilt: np.ndarray) -> float:
    norm = float(np.linalg.norm(w.astype(np.float64)))
    return float(np.linalg.norm((w - rebuilt).astype(np.float64)) / max(norm, 1e-30))


def tucker2(w: np.ndarray, r_out: int, r_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tucker-2 of a conv weight [C_out, C_in, *kernel] (1-D or 2-D) over its channel modes.

    Returns (first [R_in, C_in, 1, ...], core [R_out, R_in, *kernel], last [C_out, R_out, 1,
    ...]), the weights of the three convolutions first -> core -> last.
    """
    tensor = tl.tensor(w.astype(np.float64))
    # HOSVD init plus a few HOOI sweeps: most of the gain, a fraction of the time.
    (core, factors), _ = partial_tucker(
        tensor, rank=[r_out, r_in], modes=[0, 1], init="svd", n_iter_max=HOOI_ITERATIONS
    )
    u_out, u_in = (np.asarray(f) for f in factors)
    ones = (1,) * (w.ndim - 2)
    first = u_in.T.reshape(r_in, -1, *ones)
    last = u_out.reshape(-1, r_out, *ones)
    return first.astype(np.float32), np.asarray(core).astype(np.float32), last.astype(np.float32)


def tucker2_rebuild(first: np.ndarray, core: np.ndarray, last: np.ndarray) -> np.ndarray:
    """The conv weight the three Tucker-2 factors compute together."""
    f, lst = first.reshape(first.shape[:2]), last.reshape(last.shape[:2])
    inner = np.tensordot(core, f, axes=([1], [0]))  # [R_out, *kernel, C_in]
    return np.moveaxis(np.tensordot(lst, inner, axes=([1], [0])), -1, 1)


def svd2(w: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Truncated SVD of a matrix [out, in]: returns (first [R, in], last [out, R])."""
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    return vt[:r].astype(np.float32), (u[:, :r] * s[:r]).astype(np.float32)


def conv_macs(c_out: int, c_in_per_group: int, kernel: tuple[int, ...], out: tuple[int, ...]):
    """Multiply-adds of a convolution with output spatial size `out` (1-D or 2-D)."""
    return c_out * c_in_per_group * math.prod(kernel) * math.prod(out)
