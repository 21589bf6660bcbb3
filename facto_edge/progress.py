"""The CLI's view of a training run: a tqdm bar per epoch, fed by the loop's callbacks.

The bar shows the epoch's running mean loss, images per second and the session's buffer
(arena) size; when the epoch ends its postfix gains the validation loss and accuracy.
"""

from __future__ import annotations

from collections.abc import Callable

from tqdm import tqdm

from facto_edge.runtime.budget import format_size
from facto_edge.train import Callback, RunInfo, StepInfo

Echo = Callable[[str], None]


class TqdmProgress(Callback):
    """Progress bars on stderr; `echo` prints the run's header and warnings."""

    def __init__(self, echo: Echo, warn: Echo, file=None) -> None:
        self.echo, self.warn, self.file = echo, warn, file
        self.bar: tqdm | None = None
        self.epochs = 0
        self.arena_mb = 0.0
        self.start_batch = 0
        self.loss_sum, self.losses = 0.0, 0

    def on_start(self, info: RunInfo) -> None:
        self.epochs = info.epochs
        self.arena_mb = info.memory["arena_bytes"] / 2**20
        self.start_batch = info.start.batch
        verb = f"resuming at epoch {info.start.epoch + 1}" if info.resumed else "training"
        self.echo(
            f"{verb}: {info.train_samples} images ({info.val_samples} held out), "
            f"batch {info.config['batch_size']}, {info.batches_per_epoch} steps per epoch, "
            f"codec {info.config['codec']}, arena {format_size(info.memory['arena_bytes'])} "
            f"-> {info.run_dir}"
        )
        if info.fit:
            f = info.fit
            micro = (
                f", as {f.accumulate} micro-batches of {f.micro_batch}" if f.accumulate > 1 else ""
            )  # noqa: E501
            self.echo(
                f"budget {format_size(f.budget)}: runtime {format_size(f.fixed_cost)} + arena "
                f"{format_size(f.arena_bytes)} + margin {format_size(f.margin)}, peak "
                f"{format_size(f.estimated_peak)} expected{micro}"
            )

    def on_selection(self, selection) -> None:
        self.echo(
            f"training {len(selection.layers)} of {len(selection.scores) + len(selection.head)} "
            f"layers, chosen by gradient importance per saved byte: saved "
            f"{format_size(selection.saved_bytes)} per step (every layer: "
            f"{format_size(selection.all_saved_bytes)})"
        )
        self.echo(selection.table())

    def on_epoch_start(self, epoch: int, batches: int) -> None:
        self.bar = tqdm(
            total=batches, initial=self.start_batch, desc=f"epoch {epoch + 1}/{self.epochs}",
            unit="step", file=self.file, leave=True, dynamic_ncols=True,
        )  # fmt: skip
        self.start_batch = 0
        self.loss_sum, self.losses = 0.0, 0

    def on_step(self, step: StepInfo) -> None:
        self.loss_sum += step.loss
        self.losses += 1
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(step), refresh=False)
            self.bar.update(1)

    def _postfix(self, step: StepInfo) -> str:
        return (
            f"loss {self.loss_sum / self.losses:.4f}, {step.images_per_s:.0f} img/s, "
            f"arena {self.arena_mb:.1f} MB"
        )

    def on_epoch_end(self, metrics: dict) -> None:
        if self.bar is None:
            return
        acc = metrics.get("accuracy")
        val = ""
        if acc is not None:
            val = f", val_loss {metrics['val_loss']:.4f}, acc {100 * acc:.1f}%"
        self.bar.set_postfix_str(f"loss {metrics['loss']:.4f}{val}, arena {self.arena_mb:.1f} MB")
        self.close()

    def on_warning(self, message: str) -> None:
        self.warn(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
