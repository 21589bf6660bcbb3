"""Which layers to train under a limit on saved bytes: gradient importance per byte.

    from facto_edge.runtime.importance import select_layers
    choice = select_layers("model.facto", x, y, saved_limit=3 * 2**20, batch_size=32)
    TrainingSession("model.facto", batch_size=32, train_layers=choice.layers)

A sparse update in the manner of TinyTrain and PockEngine, at the granularity of the
manifest's layers:

- importance of a layer: the squared gradient of the mean loss summed over the layer's
  trainable tensors (factor, bias, BatchNorm scale and shift), averaged over the batches of
  (x, y) at the starting weights, after a few steps of the head alone: an empirical Fisher
  information of the layer, from one pass;
- cost of a layer: the saved bytes per step (the runtime plan at `batch_size` and
  `codec`) of training it with the head, less those of the head alone;
- the head (the tensors of the last Gemm, runtime/param_groups.py) always trains; the
  other layers are taken by importance per byte, the highest first, each one that keeps
  the sum of costs within `saved_limit`; the whole selection is then planned, and while
  its plan passes the limit (costs do not add up exactly) the last taken is dropped.

Frozen layers keep no saved tensors of their own: below the lowest trainable layer
nothing runs backward at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import FactoEdgeError
from .graph import ModelSource, load_graph
from .param_groups import param_groups


@dataclass(frozen=True)
class LayerScore:
    name: str
    importance: float  # mean over batches of the summed squared gradients
    cost: int  # saved bytes per step its training adds to the head's


@dataclass(frozen=True)
class Selection:
    layers: list[str]  # in the manifest's order, the head's included
    saved_bytes: int  # the plan's, of the selection
    all_saved_bytes: int  # the plan's with every layer training
    head: list[str]  # the head's layers (always trained)
    scores: list[LayerScore]  # every other layer, by importance per byte (highest first)

    def table(self) -> str:
        """One line per layer: chosen or not, importance, cost, importance per MiB."""
        from .budget import format_size

        lines = [f"{'layer':<28} {'train':<5} {'importance':>11} {'saved':>10}"]
        for s in self.scores:
            mark = "yes" if s.name in self.layers else "-"
            lines.append(f"{s.name:<28} {mark:<5} {s.importance:>11.3e} {format_size(s.cost):>10}")
        return "\n".join(lines)


def layer_importance(
    source: ModelSource, x: np.ndarray, y: np.ndarray, batch_size: int, *, codec: str = "fp32",
    seed: int = 0, threads: int | None = None, head_steps: int = 20, lr: float = 0.05,
) -> dict[str, float]:  # fmt: skip
    """{layer name: importance} (see the module's docstring) of every layer with a
    trainable tensor, from the batches of `batch_size` of (x, y). The head first trains
    alone for `head_steps` steps (SGD at `lr`, cycling over the batches): an exported
    classifier is often a fresh, zeroed one, through which no gradient reaches the body."""
    from .session import TrainingSession

    if len(x) == 0 or len(x) != len(y):
        raise FactoEdgeError(f"importance needs samples with labels, found {len(x)} and {len(y)}")
    starts = range(0, len(x), batch_size)
    options = {"batch_size": batch_size, "codec": codec, "seed": seed, "threads": threads}
    head = head_layers(source)
    trained = {}
    if head and head_steps:
        session = TrainingSession(source, lr=lr, train_layers=head, **options)
        try:
            for step in range(head_steps):
                i = starts[step % len(starts)]
                session.train_step(x[i : i + batch_size], y[i : i + batch_size])
            trained = {k: np.array(v) for k, v in session.parameters().items()}
        finally:
            session.close()
    session = TrainingSession(source, **options)
    totals: dict[str, float] = {}
    try:
        params = session.parameters()
        for name, value in trained.items():
            np.copyto(params[name], value)
        for i in starts:
            _, grads = session.compute_gradients(x[i : i + batch_size], y[i : i + batch_size])
            for name, g in grads.items():
                totals[name] = totals.get(name, 0.0) + float(np.square(g, dtype=np.float64).sum())
    finally:
        session.close()
    manifest = load_graph(source).manifest
    return {
        layer.name: sum(totals.get(t, 0.0) for t in layer.trainable) / len(starts)
        for layer in manifest.layers
        if layer.trainable
    }


def saved_bytes(
    source: ModelSource, layers: Sequence[str] | None, batch_size: int, codec: str
) -> int:
    """The runtime plan's saved bytes per step training `layers` (None: every layer)."""
    from .session import TrainingSession

    session = TrainingSession(source, batch_size=batch_size, codec=codec, train_layers=layers)
    try:
        return int(session.memory_report()["saved_bytes"])
    finally:
        session.close()


def head_layers(source: ModelSource) -> list[str]:
    """The layers holding the head's tensors (runtime/param_groups.py)."""
    graph = load_graph(source)
    groups = param_groups(graph)
    head = {t for t, group in groups.items() if group == "head"}
    return [layer.name for layer in graph.manifest.layers if head & set(layer.trainable)]


def select_layers(
    source: ModelSource, x: np.ndarray, y: np.ndarray, saved_limit: int, batch_size: int,
    *, codec: str = "q4", seed: int = 0, threads: int | None = None,
) -> Selection:  # fmt: skip
    """The layers to train so that the step saves at most `saved_limit` bytes (see the
    module's docstring); FactoEdgeError when even the head alone saves more."""
    from .budget import format_size

    importance = layer_importance(source, x, y, batch_size, codec=codec, seed=seed, threads=threads)
    order = list(importance)
    head = head_layers(source)
    base = saved_bytes(source, head or None, batch_size, codec) if head else 0
    if head and base > saved_limit:
        raise FactoEdgeError(
            f"training the head alone saves {format_size(base)} per step, more than the "
            f"{format_size(saved_limit)} asked for"
        )
    scores = [
        LayerScore(name, importance[name], saved_bytes(source, [*head, name], batch_size, codec)
                   - base)
        for name in order if name not in head
    ]  # fmt: skip
    scores.sort(key=lambda s: s.importance / max(s.cost, 1), reverse=True)
    chosen, planned = list(head), base
    for s in scores:  # each taken where the whole selection's plan stays within the limit
        trial = [n for n in order if n in chosen or n == s.name]
        found = saved_bytes(source, trial, batch_size, codec)
        if found <= saved_limit:
            chosen, planned = trial, found
    if not chosen:
        raise FactoEdgeError(
            f"no layer trains within {format_size(saved_limit)} of saved bytes per step; "
            f"the cheapest saves {format_size(min(s.cost for s in scores))}"
        )
    every = saved_bytes(source, None, batch_size, codec)
    return Selection(chosen, planned, every, head, scores)
