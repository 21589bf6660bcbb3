"""The codec kernels on CUDA: `CudaCodecKernels` launches the kernels of codec_kernels.py
with the signatures of runtime/kernels/codec_kernels.py, so that runtime/codecs.py (the
layouts, sizes and checks, written once) runs them over device arrays:

    codecs.get_codec("q4", kernels=CudaCodecKernels())

Bad input (NaN/Inf, or values beyond the fp16 range for the fp16-based codecs) is counted
on the device into the kernels' `errors` instead of being returned, so that an encode
copies nothing back; `check(codec)` reads the count once (a training step calls it, as
`Backend.check_codec`) and raises what runtime/codecs.py says.

The masks and argmax packing of runtime/codecs.py over device arrays are here under their
own names (mask_encode, ..., argmax_decode), for the CUDA op table.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from numba import cuda

from ... import codecs
from . import codec_kernels as K
from .elementwise import copy, fill
from .launch import THREADS, blocks


def _launch(kernel, n: int, *args) -> None:
    kernel[blocks(n), THREADS](*args)


class CudaKernels:
    """The kernels that meet no bad input (decoders, masks, argmax) on device arrays."""

    def fp32_decode(self, buf, out) -> None:
        copy(buf, out)

    def fp16_decode(self, buf, out_bits) -> None:
        _launch(K.fp16_decode, out_bits.size, buf, out_bits)

    def block_decode(self, buf, out, rows, length, group, bits) -> None:
        _launch(K.block_decode, out.size, buf, out, rows, length, group, bits)

    def mask_encode(self, x, out, low, high) -> None:
        _launch(K.mask_encode, (x.size + 7) // 8, x, out, low, high)

    def mask_decode(self, buf, out) -> None:
        _launch(K.mask_decode, out.size, buf, out)

    def mask_apply(self, buf, grad_in, grad_out) -> None:
        _launch(K.mask_apply, grad_in.size, buf, grad_in, grad_out)

    def pack_codes(self, codes, out, bits) -> None:
        per = max(1, 8 // bits)
        _launch(K.pack_codes, (codes.size + per - 1) // per, codes, out, bits)

    def unpack_codes(self, buf, out, bits) -> None:
        _launch(K.unpack_codes, out.size, buf, out, bits)


class CudaCodecKernels(CudaKernels):
    """All the codec kernels on device arrays, the encoders counting the bad values they
    meet into `errors` (int64 [2]: NaN/Inf, beyond the fp16 range) on the device."""

    def __init__(self) -> None:
        self.errors = cuda.device_array(2, np.int64)
        fill(self.errors, 0)

    def check(self, codec: str) -> None:
        """Raise NumericalError (and reset) if an encode counted a bad value since the
        last check; one 16-byte copy from the device."""
        nonfinite, beyond = (int(v) for v in self.errors.copy_to_host())
        if nonfinite or beyond:
            fill(self.errors, 0)
            raise codecs.numerical_error(codec, nonfinite, beyond, "value(s) or block(s)", "s")

    def fp32_encode(self, x, out) -> int:
        _launch(K.fp32_encode, x.size, x, out, self.errors)
        return 0

    def fp16_encode(self, xbits, out) -> int:
        _launch(K.fp16_encode, xbits.size, xbits, out, self.errors)
        return 0

    def block_encode(self, x, xk, out, rows, length, group, bits, stochastic, mix) -> int:
        """One thread per block where every block starts on a byte, else per row."""
        per_block = group * bits % 8 == 0
        units = rows * -(-length // group) if per_block else rows
        args = (rows, length, group, bits, stochastic, mix, per_block, self.errors)
        _launch(K.block_encode, units, x, xk, out, *args)
        return 0


_KERNELS = CudaKernels()
mask_encode = partial(codecs.mask_encode, kernels=_KERNELS)
mask_decode = partial(codecs.mask_decode, kernels=_KERNELS)
mask_apply = partial(codecs.mask_apply, kernels=_KERNELS)
argmax_encode = partial(codecs.argmax_encode, kernels=_KERNELS)
argmax_decode = partial(codecs.argmax_decode, kernels=_KERNELS)


def get_codec(name: str, group: int = codecs.DEFAULT_GROUP, rounding: str = "nearest"):
    """The codec `name` of runtime/codecs.py on device arrays, with its own error count
    (`codec.kernels.check(name)`)."""
    return codecs.get_codec(name, group, rounding, kernels=CudaCodecKernels())
