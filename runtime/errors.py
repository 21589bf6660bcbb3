"""The named errors of facto-edge. Each message says what was expected, what was found,
and, where one exists, what to do. The CLI prints them as one line and exits non-zero."""


class FactoEdgeError(Exception):
    """Base class of every error facto-edge raises for a user mistake or a limit."""


class ExportError(FactoEdgeError):
    """The model could not be loaded or factorized."""


class UnsupportedOpError(FactoEdgeError):
    """A layer or ONNX op that facto-edge cannot export or run."""


class BudgetError(FactoEdgeError):
    """Nothing fits in the memory budget given."""


class DataError(FactoEdgeError):
    """Training or evaluation data is missing, malformed or does not match the model."""


class CheckpointError(FactoEdgeError):
    """A checkpoint or run directory is missing, corrupt or belongs to another run."""


class DeviceError(FactoEdgeError):
    """The requested device (e.g. CUDA) is not available."""


class NumericalError(FactoEdgeError, ValueError):
    """A tensor holds NaN/Inf or values a codec cannot represent (training diverged)."""
