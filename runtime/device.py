"""Device selection: `resolve_device("cpu" | "cuda") -> Backend`, resolved once when a
session binds, so that nothing in a step asks which device it runs on.

A Backend is a table: the kernel module of each family (a `Kernels` table, which the one
op table of runtime/ops.py calls: adding a backend is one kernels package and one entry
here), the op types its kernels lack if any, the codec and optimizer factories, and the
few array primitives the executor and session need beside the ops (zero-fill, gradient
accumulation, copies to and from the host).

Asking for CUDA where it cannot run raises DeviceError naming what is missing: numba's
CUDA target (the numba-cuda package, `pip install 'facto-edge[cuda]'`), the NVIDIA
driver, or a GPU. The CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set before numba.cuda is
first imported) counts as a device, for tests.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, partial
from types import MappingProxyType, ModuleType

import numpy as np

from .bound import logical
from .errors import DeviceError
from .graph import Node
from .kernels import Kernels
from .ops import OPS, OpDef, lookup

DEVICES = ("cpu", "cuda")
KERNEL_FAMILIES = (
    "conv", "gemm", "pool", "elementwise", "activation", "movement", "bn", "norm", "loss",
)  # fmt: skip
FAMILIES = (*KERNEL_FAMILIES, "codecs", "optimizers")
INSTALL_HINT = "install it with: pip install 'facto-edge[cuda]'"


@dataclass(frozen=True)
class Backend:
    """The kernels and primitives of one device. `kernels` maps op families (FAMILIES)
    to kernel modules, which the op glue calls (`k.conv.conv2d_fwd(...)`); `lacks`
    names the op types those kernels cannot run. The functions work on that device's
    arrays (numpy for cpu, numba device arrays for cuda)."""

    name: str
    kernels: Kernels
    get_codec: Callable  # get_codec(name, group, rounding) -> a codec of this device
    check_codec: Callable[[object], None]  # raise what a step's encoding met, if anything
    make_optimizer: Callable
    fill: Callable[[object, float], None]  # a[...] = value
    accumulate: Callable[[object, object], None]  # g += scratch
    copy: Callable[[object, object], None]  # copy(src, dst), same size
    put: Callable[..., None]  # put(array, host, channel_major=False): host -> array
    get: Callable[[object], np.ndarray]  # a host copy
    scalar: Callable[[object], float]  # the value of a one-element array
    zeros: Callable[[int], object]  # a zeroed uint8 buffer of n bytes
    simulated: bool = False
    lacks: frozenset[str] = frozenset()  # op types of OPS that its kernels cannot run

    @property
    def ops(self) -> Mapping[str, OpDef]:
        """The op table (runtime/ops.py's OPS) less the op types this device lacks."""
        return MappingProxyType({t: op for t, op in OPS.items() if t not in self.lacks})

    def lookup(self, node: Node) -> OpDef:
        """The OpDef of a node, or UnsupportedOpError naming its op type and name."""
        return lookup(node, self.lacks, self.name)


@cache
def resolve_device(name: str) -> Backend:
    """The Backend of device `name` ("cpu" or "cuda"), or DeviceError saying what is
    missing (nothing is cached then, so a later call checks again)."""
    if name == "cpu":
        return _cpu()
    if name == "cuda":
        return _cuda()
    raise DeviceError(f"unknown device {name!r}; expected one of {', '.join(DEVICES)}")


def _modules(package: str, families: tuple[str, ...]) -> dict[str, ModuleType]:
    """The kernel module of each family, named as the family, from `package`."""
    return {family: importlib.import_module(f"{package}.{family}") for family in families}


def _cpu() -> Backend:
    from . import codecs, optimizers

    kernels = _modules(__package__ + ".kernels", KERNEL_FAMILIES)
    kernels.update(codecs=codecs, optimizers=optimizers)
    elementwise = kernels["elementwise"]
    return Backend(
        name="cpu",
        kernels=Kernels(kernels),
        get_codec=codecs.get_codec,
        check_codec=lambda codec: None,  # CPU codecs raise while encoding
        make_optimizer=optimizers.make_optimizer,
        fill=elementwise.fill,
        accumulate=lambda g, scratch: np.add(g, scratch, out=g),
        copy=elementwise.copy,
        put=_put_host,
        get=np.array,
        scalar=float,
        zeros=lambda n: np.zeros(n, np.uint8),
    )


def _put_host(a: np.ndarray, host: np.ndarray, channel_major: bool = False) -> None:
    np.copyto(logical(a, channel_major), host, casting="unsafe")


def _cuda() -> Backend:
    simulated = check_cuda()
    from numba import cuda

    from .kernels.cuda import codecs, elementwise, optimizers
    from .optimizers import make_optimizer

    def zeros(n: int):
        a = cuda.device_array(max(n, 1), np.uint8)
        elementwise.fill(a, 0)
        return a[:n]

    return Backend(
        name="cuda",
        kernels=Kernels(_modules(__package__ + ".kernels.cuda", FAMILIES)),
        get_codec=codecs.get_codec,  # counts bad input on the device, for check_codec
        check_codec=lambda codec: codec.kernels.check(codec.name),
        make_optimizer=partial(make_optimizer, kernels=optimizers),
        fill=elementwise.fill,
        accumulate=elementwise.add_into,
        copy=elementwise.copy,
        put=_Staging(cuda).put,
        get=lambda a: a.copy_to_host(),
        scalar=lambda a: float(a.copy_to_host().reshape(-1)[0]),
        zeros=zeros,
        simulated=simulated,
    )


class _Staging:
    """Copies host arrays to the device through one pinned host buffer per shape and
    dtype, made on first use, so that feeding a batch allocates nothing afterwards; the
    buffer also turns an NCHW batch channel-major."""

    def __init__(self, cuda: ModuleType) -> None:
        self._cuda = cuda
        self._buffers: dict[tuple, np.ndarray] = {}

    def put(self, a, host: np.ndarray, channel_major: bool = False) -> None:
        """a (a device array) = host, given in a's logical layout."""
        key = (tuple(a.shape), np.dtype(a.dtype).str)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = self._cuda.pinned_array(a.shape, a.dtype)
        np.copyto(logical(buf, channel_major), host, casting="unsafe")
        a.copy_to_device(buf)


def check_cuda() -> bool:
    """Raise DeviceError unless CUDA can run here; True under the CUDA simulator."""
    try:
        from numba import cuda
    except ImportError as e:
        raise DeviceError(f"device='cuda' needs numba's CUDA target ({e}); {INSTALL_HINT}") from e
    import numba

    if numba.config.ENABLE_CUDASIM:
        return True
    if importlib.util.find_spec("numba_cuda") is None:
        raise DeviceError(
            "device='cuda' needs the numba-cuda package (numba's maintained CUDA target), "
            f"which is not installed; {INSTALL_HINT}"
        )
    _check_driver_and_gpu(cuda)
    return False


def _check_driver_and_gpu(cuda: ModuleType) -> None:
    from numba.cuda.cudadrv.error import CudaSupportError

    try:
        available = cuda.is_available()
        count = len(cuda.gpus) if available else 0
    except CudaSupportError as e:
        available, count, reason = False, 0, str(e)
    else:
        reason = _driver_error()
    if available and count:
        return
    if not available and "NO_DEVICE" not in reason:
        raise DeviceError(
            "device='cuda' needs an NVIDIA driver, and numba found none that works "
            f"({' '.join(reason.split()) or 'driver initialization failed'}); install the driver "
            "(on Jetson: JetPack) or use device='cpu'"
        )
    raise DeviceError(
        "device='cuda' needs an NVIDIA GPU, and the driver reports none; use device='cpu'"
    )


def _driver_error() -> str:
    """numba's reason for failing to initialize the CUDA driver, or ''."""
    from numba.cuda.cudadrv.driver import driver

    return str(driver.initialization_error or "")
