"""Work run in a child process that reports back through a multiprocessing queue."""

from __future__ import annotations

from queue import Empty

from facto_edge.errors import FactoEdgeError


def next_message(queue, proc, what: str) -> tuple:
    """The next message the child `proc` put on `queue`; FactoEdgeError naming `what`
    (e.g. "training process") if the child died without one."""
    while True:
        try:
            return queue.get(timeout=1.0)
        except Empty:
            if not proc.is_alive():
                raise FactoEdgeError(
                    f"the {what} ended unexpectedly (exit code {proc.exitcode})"
                ) from None
