"""What a node sees when it runs: its `Site` (shapes, constant inputs, which inputs need a
gradient), its `Bound` buffers, and what backward keeps (`Saved`).

Layout: a rank-4 activation (and its gradient) is stored channel-major, [C, N, H, W],
the NCHW tensor with its first two axes swapped, so that convolutions see the whole
batch as one matrix (see kernels/conv.py). Initializers keep their ONNX layout. Shapes
in a `Site` are the logical (ONNX) ones; `Bound.x`, `y`, `gx`, `gy` hold the stored
arrays, and `logical()` gives the ONNX view of one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph import Node
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


def logical(a: np.ndarray, stored_channel_major: bool) -> np.ndarray:
    """The ONNX (NCHW) view of a stored array."""
    return a.swapaxes(0, 1) if stored_channel_major else a


def _as_channel_major(a: np.ndarray, stored_channel_major: bool) -> np.ndarray:
    """A view of `a` to combine elementwise with rank-4 channel-major arrays: lower ranks
    are broadcast up to 4 (numpy rules) and their first two axes swapped."""
    if stored_channel_major:
        return a
    return a.reshape((1,) * (4 - a.ndim) + a.shape).swapaxes(0, 1)


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

    def lx(self, i: int) -> np.ndarray:
        """Logical (ONNX) view of input i."""
        return logical(self.x[i], self.site.cm_in(i))

    def ly(self, i: int = 0) -> np.ndarray:
        """Logical view of output i."""
        return logical(self.y[i], self.site.cm_out(i))

    def lgx(self, i: int) -> np.ndarray:
        """Logical view of the gradient of input i."""
        return logical(self.gx[i], self.site.cm_in(i))

    def lgy(self) -> np.ndarray:
        """Logical view of the gradient of output 0."""
        return logical(self.gy, self.site.cm_out(0))

    def like_output(self, i: int, a: np.ndarray) -> np.ndarray:
        """`a`, input i or its gradient, viewed to combine elementwise with output 0."""
        if len(self.site.outs[0]) != 4:
            return a
        return _as_channel_major(a, self.site.cm_in(i))


Workspace = dict[str, tuple[Shape, np.dtype]]


def opt(seq: list, i: int):
    return seq[i] if i < len(seq) else None
