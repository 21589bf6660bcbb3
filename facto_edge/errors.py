"""The named errors of facto-edge, defined by the runtime (facto_edge/runtime/errors.py)
and re-exported here for the application and its users."""

from facto_edge.runtime.errors import (
    BudgetError,
    CheckpointError,
    DataError,
    DeviceError,
    ExportError,
    FactoEdgeError,
    NumericalError,
    UnsupportedOpError,
)

__all__ = [
    "BudgetError",
    "CheckpointError",
    "DataError",
    "DeviceError",
    "ExportError",
    "FactoEdgeError",
    "NumericalError",
    "UnsupportedOpError",
]
