"""facto-edge: train factorized CNNs on small devices.

Importing this package is light: the exporter (torch, tensorly) loads only when
`facto_edge.export` is first used, so the runtime stays embeddable.
"""

from facto_edge.runtime.errors import (
    BudgetError,
    CheckpointError,
    DataError,
    DeviceError,
    ExportError,
    FactoEdgeError,
    UnsupportedOpError,
)

__version__ = "0.1.0"

__all__ = [
    "BudgetError",
    "CheckpointError",
    "DataError",
    "DeviceError",
    "ExportError",
    "FactoEdgeError",
    "UnsupportedOpError",
    "export",
]


def __getattr__(name: str):
    if name == "export":
        from facto_edge.exporters.export import export

        return export
    raise AttributeError(f"module 'facto_edge' has no attribute {name!r}")
