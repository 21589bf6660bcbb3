"""The activation codecs on CUDA, mirroring runtime/codecs.py: the same names, byte
layouts and `nbytes`, with `encode(x, out, seed=0)` and `decode(buf, out)` over device
arrays; plus 1-bit masks and packed max-pool argmax codes.

Bad input (NaN/Inf, or values beyond the fp16 range for the fp16-based codecs) is counted
on the device into the codec's `errors`. An eager codec (the default) reads that count
after each encode and raises NumericalError, as the CPU codecs do; a `deferred` codec
leaves the read to `errors.check()`, which a training step calls once, so that a step
copies nothing back but its loss and that count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import cuda

from ... import codecs as host
from ...codecs import DEFAULT_GROUP, argmax_bits, argmax_nbytes, mask_nbytes
from ...errors import FactoEdgeError, NumericalError
from . import codec_kernels as K
from .elementwise import copy, fill
from .launch import THREADS, blocks

__all__ = [
    "CodecErrors",
    "CudaCodec",
    "argmax_bits",
    "argmax_decode",
    "argmax_encode",
    "argmax_nbytes",
    "get_codec",
    "mask_apply",
    "mask_decode",
    "mask_encode",
    "mask_nbytes",
]


class CodecErrors:
    """Device counters of bad values met while encoding: [NaN/Inf, beyond fp16 range]."""

    def __init__(self, counts=None) -> None:
        self.counts = cuda.device_array(2, np.int64) if counts is None else counts
        fill(self.counts, 0)

    def check(self, codec: str) -> None:
        """Raise NumericalError (and reset) if any bad value was counted since the last
        check; one 16-byte copy from the device."""
        nonfinite, out_of_range = (int(v) for v in self.counts.copy_to_host())
        if not (nonfinite or out_of_range):
            return
        fill(self.counts, 0)
        if nonfinite:
            raise NumericalError(
                f"{codec} codec: NaN/Inf in saved activations ({nonfinite} value(s) or "
                f"block(s)); training has diverged (try a lower learning rate)"
            )
        raise NumericalError(
            f"{codec} codec: {out_of_range} value(s) or block(s) of saved activations "
            f"exceed the fp16 range +-65504; use the fp32 codec or a lower learning rate"
        )


@dataclass(frozen=True)
class CudaCodec:
    """A codec on device arrays: ``nbytes(shape)``, ``encode(x, out, seed=0)``,
    ``decode(buf, out)``; bad input is counted into ``errors``."""

    name: str
    nbytes: Callable[[tuple[int, ...]], int]
    encode: Callable[..., None]
    decode: Callable
    errors: CodecErrors


def _check_array(what: str, a, dtype, ndim: int | None = None) -> None:
    if a.dtype != np.dtype(dtype) or not a.is_c_contiguous() or (ndim and a.ndim != ndim):
        raise ValueError(
            f"{what}: expected a C-contiguous {np.dtype(dtype)} device array"
            f"{f' of rank {ndim}' if ndim else ''}, got {a.dtype} with shape {a.shape}"
        )


def _check_buffer(what: str, buf, nbytes: int) -> None:
    _check_array(what, buf, np.uint8, 1)
    if buf.size < nbytes:
        raise ValueError(f"{what}: buffer holds {buf.size} bytes, the tensor needs {nbytes}")


def _launch(kernel, n: int, *args) -> None:
    kernel[blocks(n), THREADS](*args)


def _codec(name: str, nbytes, encode_fn, decode_fn, errors: CodecErrors, deferred: bool):
    """Wrap kernel launchers with the checks of the CPU codecs."""

    def encode(x, out, seed: int = 0) -> None:
        _check_array(f"{name}.encode", x, np.float32)
        _check_buffer(f"{name}.encode", out, nbytes(x.shape))
        encode_fn(x.reshape(-1), out, x.shape, seed)
        if not deferred:
            errors.check(name)

    def decode(buf, out) -> None:
        _check_buffer(f"{name}.decode", buf, nbytes(out.shape))
        _check_array(f"{name}.decode", out, np.float32)
        decode_fn(buf, out.reshape(-1), out.shape)

    return CudaCodec(name, nbytes, encode, decode, errors)


def _fp32(errors: CodecErrors, deferred: bool) -> CudaCodec:
    def enc(x, out, shape, seed):
        _launch(K.fp32_encode, x.size, x, out[: 4 * x.size].view(np.float32), errors.counts)

    def dec(buf, out, shape):
        copy(buf[: 4 * out.size].view(np.float32), out)

    return _codec("fp32", host.CODECS["fp32"].nbytes, enc, dec, errors, deferred)


def _fp16(errors: CodecErrors, deferred: bool) -> CudaCodec:
    def enc(x, out, shape, seed):
        _launch(K.fp16_encode, x.size, x.view(np.uint32), out, errors.counts)

    def dec(buf, out, shape):
        _launch(K.fp16_decode, out.size, buf, out.view(np.uint32))

    return _codec("fp16", host.CODECS["fp16"].nbytes, enc, dec, errors, deferred)


def _block(name: str, group: int, rounding: str, errors: CodecErrors, deferred: bool):
    bits, stochastic = int(name[1:]), rounding == "stochastic"
    per_block = group * bits % 8 == 0

    def enc(x, out, shape, seed):
        rows, length = host._rows(shape)
        units = rows * -(-length // group) if per_block else rows
        mix = host._seed_mix(seed)
        args = (rows, length, group, bits, stochastic, mix, per_block, errors.counts)
        _launch(K.block_encode, units, x, x.view(np.int32), out, *args)

    def dec(buf, out, shape):
        rows, length = host._rows(shape)
        _launch(K.block_decode, out.size, buf, out, rows, length, group, bits)

    nbytes = host.get_codec(name, group, rounding).nbytes
    return _codec(name, nbytes, enc, dec, errors, deferred)


def get_codec(
    name: str,
    group: int = DEFAULT_GROUP,
    rounding: str = "nearest",
    *,
    deferred: bool = False,
    errors: CodecErrors | None = None,
) -> CudaCodec:
    """The codec `name` (one of runtime.codecs.CODECS) on device arrays; `group` and
    `rounding` apply to q8/q4/q2 only. `deferred` leaves error checks to
    `codec.errors.check(name)`; `errors` may share one counter between codecs."""
    host.get_codec(name, group, rounding)  # validates the arguments
    errors = CodecErrors() if errors is None else errors
    if name == "fp32":
        return _fp32(errors, deferred)
    if name == "fp16":
        return _fp16(errors, deferred)
    if name in ("q8", "q4", "q2"):
        return _block(name, group, rounding, errors, deferred)
    raise FactoEdgeError(f"codec {name!r} has no CUDA implementation")


def mask_encode(x, out, low: float = 0.0, high: float = float("inf")) -> None:
    """Pack ``low < x < high`` into `out`: ReLU keeps x > 0, ReLU6 passes ``high=6.0``."""
    _check_array("mask_encode", x, np.float32)
    _check_buffer("mask_encode", out, mask_nbytes(x.shape))
    flat = x.reshape(-1)
    _launch(K.mask_encode, (flat.size + 7) // 8, flat, out, float(low), float(high))


def mask_decode(buf, out) -> None:
    """Unpack a mask into `out` (bool or uint8 device array of the tensor's shape)."""
    if out.dtype.kind not in "bu" or not out.is_c_contiguous():
        raise ValueError(f"mask_decode: expected a contiguous bool/uint8 output, got {out.dtype}")
    _check_buffer("mask_decode", buf, mask_nbytes(out.shape))
    flat = out.reshape(-1)
    _launch(K.mask_decode, flat.size, buf, flat)


def mask_apply(buf, grad_in, grad_out) -> None:
    """``grad_out = grad_in * mask`` without unpacking the mask; grad_out may be grad_in."""
    _check_array("mask_apply", grad_in, np.float32)
    _check_array("mask_apply", grad_out, np.float32)
    if grad_in.shape != grad_out.shape:
        raise ValueError(f"mask_apply: grad_in {grad_in.shape} and grad_out {grad_out.shape}")
    _check_buffer("mask_apply", buf, mask_nbytes(grad_in.shape))
    flat = grad_in.reshape(-1)
    _launch(K.mask_apply, flat.size, buf, flat, grad_out.reshape(-1))


def _check_codes(what: str, a) -> None:
    if a.dtype.kind not in "iu" or not a.is_c_contiguous():
        raise ValueError(f"{what}: expected a contiguous integer device array, got {a.dtype}")


def argmax_encode(idx, out, kernel: int | tuple[int, int]) -> None:
    """Pack window-local argmax indices `idx` (ints in [0, kh*kw)) into `out`."""
    _check_codes("argmax_encode", idx)
    _check_buffer("argmax_encode", out, argmax_nbytes(idx.shape, kernel))
    bits, flat = argmax_bits(kernel), idx.reshape(-1)
    per = max(1, 8 // bits)
    _launch(K.pack_codes, (flat.size + per - 1) // per, flat, out, bits)


def argmax_decode(buf, out, kernel: int | tuple[int, int]) -> None:
    """Unpack argmax indices into the integer device array `out` (the pool output's shape)."""
    _check_codes("argmax_decode", out)
    _check_buffer("argmax_decode", buf, argmax_nbytes(out.shape, kernel))
    flat = out.reshape(-1)
    _launch(K.unpack_codes, flat.size, buf, flat, argmax_bits(kernel))
