"""ONNX Runtime training on the export's ort/ artifacts (onnxruntime.training.api), with
the SGD optimizer graph the exporter writes (ORT's SGD has no momentum). ORT does not
expose what it keeps for backward, so its saved-activation bytes are not measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facto_edge.bench.systems import Trainer, WorkerArgs
from facto_edge.errors import FactoEdgeError


def build(args: WorkerArgs) -> Trainer:
    """A Module and an SGD Optimizer over ort/{training_model,eval_model,checkpoint}."""
    import onnxruntime
    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    ort = Path(args.model_dir) / "ort"
    if not (ort / "training_model.onnx").is_file():
        raise FactoEdgeError(f"{args.model_dir} has no ort/ artifacts; export it with ort=True")
    onnxruntime.set_default_logger_severity(3)
    options = onnxruntime.SessionOptions()
    if args.threads:
        options.intra_op_num_threads = args.threads
    state = CheckpointState.load_checkpoint(str(ort / "checkpoint"))
    module = Module(str(ort / "training_model.onnx"), state, str(ort / "eval_model.onnx"),
                    device="cpu", session_options=options)  # fmt: skip
    opt = Optimizer(str(ort / "optimizer_sgd.onnx"), module)
    opt.set_learning_rate(args.lr)
    module.train()

    def step(x: np.ndarray, y: np.ndarray) -> float:
        loss = module(x, y)
        opt.step()
        module.lazy_reset_grad()
        return float(loss)

    def info() -> dict:
        return {"threads": args.threads or "default", "optimizer": "SGD (no momentum)"}

    return Trainer(step, lambda x, y: (step(x, y), None), info)
