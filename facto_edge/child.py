"""Work run in a child process that reports back through a multiprocessing queue."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
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


def run_in_child(target: Callable, args: tuple, what: str, callbacks: Sequence = ()) -> tuple:
    """Run `target(queue, *args)` in a new interpreter (spawned: it imports only what the
    work needs) and return its ("done", ...) message. Its ("error", exception) message is
    raised here; any other message (name, *args) is a callback event, relayed to every
    one of `callbacks`. FactoEdgeError naming `what` if the child dies without a word."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(queue, *args))
    proc.start()
    try:
        while True:
            message = next_message(queue, proc, what)
            if message[0] == "done":
                return message
            if message[0] == "error":
                raise message[1]
            for cb in callbacks:
                getattr(cb, message[0])(*message[1:])
    finally:
        proc.join()
