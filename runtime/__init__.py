"""The embeddable facto-edge runtime: train an exported model with numpy, Numba and onnx
only (no torch, tensorly or onnxruntime).

    from facto_edge.runtime import TrainingSession
"""

from .session import TrainingSession

__all__ = ["TrainingSession"]
