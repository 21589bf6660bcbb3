"""Which samples each client holds: deterministic partitions of a labelled data set.

    parts = partition_indices(labels, 100, "dirichlet:0.5", seed=0)   # list of index arrays

- "iid": a random permutation cut into near-equal parts.
- "dirichlet:ALPHA": non-IID by label, as in Hsu et al. 2019 (arXiv:1909.06335): for
  each class, the shares of its samples among the clients are drawn from Dir(ALPHA);
  small ALPHA gives clients few classes. Every client then gets at least one sample
  (clients left empty take one from the largest part), since a client without data
  cannot train.

Pure numpy, from (seed, 3): every client and the server compute the same partition.
"""

from __future__ import annotations

import numpy as np

from facto_edge.errors import FactoEdgeError

_STREAM = 3  # apart from the data's (seed, epoch, ...) and the split's (seed, 0, 2)


def parse_partition(spec: str) -> tuple[str, float]:
    """("iid", 0.0) or ("dirichlet", alpha) from "iid" or "dirichlet:ALPHA"."""
    kind, _, arg = spec.partition(":")
    if kind == "iid" and not arg:
        return "iid", 0.0
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = -1.0
        if alpha > 0:
            return "dirichlet", alpha
    raise FactoEdgeError(
        f"--partition must be 'iid' or 'dirichlet:ALPHA' with ALPHA > 0, found {spec!r}"
    )


def partition_indices(labels: np.ndarray, clients: int, spec: str, seed: int) -> list[np.ndarray]:
    """Sorted sample indices of each of `clients` parts of the data with `labels`."""
    kind, alpha = parse_partition(spec)
    if clients > len(labels):
        raise FactoEdgeError(
            f"{clients} clients need at least one sample each, but the data has "
            f"{len(labels)}: use fewer clients or more data"
        )
    rng = np.random.default_rng([seed, _STREAM])
    if kind == "iid":
        parts = np.array_split(rng.permutation(len(labels)), clients)
    else:
        parts = _dirichlet(labels, clients, alpha, rng)
    return [np.sort(p).astype(np.intp) for p in _fill_empty(parts)]


def _dirichlet(labels: np.ndarray, clients: int, alpha: float, rng) -> list[np.ndarray]:
    owned: list[list[np.ndarray]] = [[] for _ in range(clients)]
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        shares = rng.dirichlet(np.full(clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for i, part in enumerate(np.split(members, cuts)):
            owned[i].append(part)
    return [np.concatenate(p) for p in owned]


def _fill_empty(parts: list[np.ndarray]) -> list[np.ndarray]:
    parts = list(parts)
    for i, p in enumerate(parts):
        if len(p) == 0:
            donor = max(range(len(parts)), key=lambda j: len(parts[j]))
            parts[i], parts[donor] = parts[donor][-1:], parts[donor][:-1]
    return parts
