"""Two Grids beside Flower's own.

- `InProcessGrid`: every node's ClientApp runs in this process, one message after
  another: the same ClientApp and ServerApp code as under Ray or a SuperLink, without
  their start-up cost (tests, and `fleet simulate --backend inprocess`). A ClientApp that
  raises gives an error reply, as Flower's runtimes do.
- `SampledGrid`: a view of a grid that shows only the nodes the server sampled, so that a
  Flower strategy's configure_train addresses exactly those.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

CLIENT_APP_RAISED = 2  # Flower's ErrorCode.CLIENT_APP_RAISED_EXCEPTION


class InProcessGrid(Grid):
    """Nodes 1..n, node i holding partition i - 1, all served by `client_app`."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_config: dict | None = None):
        self._app = client_app
        self._run = Run.create_empty(run_id=1)
        # Messages take their run and source from the process's task identity, as in
        # Flower's simulation (run_simulation sets the same)
        TaskIdentity.task_id, TaskIdentity.run_id = 1, 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._contexts = {
            i + 1: Context(
                run_id=1, node_id=i + 1, state=RecordDict(), run_config=dict(run_config or {}),
                node_config={"partition-id": i, "num-partitions": num_nodes},
            )
            for i in range(num_nodes)
        }  # fmt: skip
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            self._replies[msg.metadata.message_id] = self._serve(msg)
            ids.append(msg.metadata.message_id)
        return ids

    def _serve(self, msg: Message) -> Message:
        try:
            return self._app(msg, self._contexts[msg.metadata.dst_node_id])
        except Exception as e:
            reason = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
            return Message(Error(CLIENT_APP_RAISED, reason), reply_to=msg)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages, *, timeout=None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


class SampledGrid(Grid):
    """`grid`, showing only `node_ids`."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid, self._nodes = grid, list(node_ids)

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)
