"""What a node sees when it runs: its `Site` (shapes, constant inputs, which inputs need a
gradient), its `Bound` buffers, and what backward keeps (`Saved`).

Layout: a rank-4 activation (and its gradient) is stored channel-major, [C, N, H, W],
the NCHW tensor with its first two axes swapped, so that convolutions see the whole
batch as one matrix (see kernels/conv.py). Initializers keep their ONNX layout. Shapes
in a `Site` are the logical (ONNX) ones; `Bound.x`, `y`, `gx`, `gy` hold the stored
arrays, and `logical()` gives the ONNX view of one. The op glue hands kernels the stored
arrays with their channel-major flags (`Site.cm_in`, `cm_out`); each backend's kernels
view them as they need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph import Node
from .kernels.layout import logical as logical  # the ONNX view, for executor and device
from .shapes import Shape

F32, U8 = np.dtype(np.float32), np.dtype(np.uint8)
Workspace = dict[str, tuple[Shape, np.dtype]]


@dataclass(frozen=True)
class Saved:
    """One thing backward keeps: input `source` through the codec (key ``in{source}``),
    or `nbytes` raw bytes that the op writes itself."""

    key: str
    source: int | None = None
    nbytes: int = 0


def keep_input(i: int) -> Saved:
    """Keep input i for backward, through the codec."""
    return Saved(f"in{i}", source=i)


def channel_major(shape: Shape | None, persistent: bool = False) -> bool:
    """Whether a tensor of this logical shape is stored [C, N, H, W]: rank-4 activations."""
    return shape is not None and len(shape) == 4 and not persistent


def stored_shape(shape: Shape, persistent: bool = False) -> Shape:
    """The shape a tensor of this logical shape is stored with."""
    return (shape[1], shape[0], *shape[2:]) if channel_major(shape, persistent) else shape


@dataclass(frozen=True, eq=False)
class Site:
    """A node with its input/output shapes (None for absent inputs), the values of its
    initializer inputs (None elsewhere) and which inputs need a gradient."""

    node: Node
    ins: tuple[Shape | None, ...]
    outs: tuple[Shape, ...]
    consts: tuple[np.ndarray | None, ...]
    need: tuple[bool, ...]

    def cm_in(self, i: int) -> bool:
        """Whether input i is stored channel-major."""
        return channel_major(self.ins[i], i in self.node.persistent)

    def cm_out(self, i: int = 0) -> bool:
        """Whether output i is stored channel-major."""
        return channel_major(self.outs[i])


@dataclass(eq=False)
class Bound:
    """A node bound to its buffers: inputs x, outputs y, gradient targets gx (None where
    not needed), output gradient gy, saved tensors and workspace, by key."""

    site: Site
    x: list[np.ndarray | None]
    y: list[np.ndarray | None]
    gx: list[np.ndarray | None] = field(default_factory=list)
    gy: np.ndarray | None = None
    saved: dict[str, np.ndarray] = field(default_factory=dict)
    ws: dict[str, np.ndarray] = field(default_factory=dict)

    def input(self, i: int) -> np.ndarray | None:
        """Input i as forward saw it: its decoded copy when backward kept one."""
        return self.saved.get(f"in{i}", opt(self.x, i))


def opt(seq: list, i: int):
    return seq[i] if i < len(seq) else None
