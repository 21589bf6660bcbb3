"""Codecs for the tensors backward keeps: one table, name -> Codec.

A codec turns a float32 tensor into bytes and back, in buffers the caller owns (arena
views); nothing here allocates on the hot path. Names:

- ``fp32``: lossless copy. ``fp16``: IEEE half, round to nearest even.
- ``q8``, ``q4``, ``q2``: the value-similarity block codec. A tensor of rank >= 3 is read
  as rows along its first axis: the runtime stores activations channel-major, [C, N, H,
  W] (bound.py), so a row is one channel over the whole batch, and blocks stay within a
  channel while small feature maps (4x4, 2x2) still fill whole blocks. A 2-D [N, F]
  tensor is N rows of F, a 1-D tensor one row. Each row is cut into blocks of ``group``
  consecutive values (the last block of a row may be shorter). A block stores its
  minimum rounded *down* to fp16 and its scale ``(max - min16) / (2**b - 1)`` rounded *up*
  to fp16, and each value as a b-bit code ``q`` computed against those stored numbers;
  decoding gives ``min16 + q * scale16``. Rounding is ``nearest`` (error <= scale16 / 2) or
  ``stochastic`` (unbiased, error < scale16; the random stream is a hash of ``seed`` and
  the element index, so it is deterministic and thread-count independent).

Every codec raises NumericalError on NaN/Inf input (and the fp16-based ones on values
beyond +-65504), found while encoding at no extra pass.

Also here: 1-bit masks for ReLU/ReLU6/Clip backward and packed max-pool argmax codes.

The layouts, their sizes and the checks are written here once, for every backend: a
backend supplies only its kernels (`kernels=`), an object with the attributes of
runtime/kernels/codec_kernels.py, the CPU's (the default), each taking the arrays of its
device as this module passes them (flat, viewed as the kernel's dtype). Encoders return
the number of bad values (blocks, for q8/q4/q2) met, which this module turns into
NumericalError; a backend that counts them elsewhere returns 0 and raises
`numerical_error(...)` when asked (CUDA counts on the device, and a step reads the count
once: runtime/kernels/cuda/codecs.py, `Backend.check_codec`).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .codec_names import CODEC_NAMES
from .errors import FactoEdgeError, NumericalError
from .kernels import codec_kernels as K

ROUNDINGS = ("nearest", "stochastic")
DEFAULT_GROUP = 64


@dataclass(frozen=True)
class Codec:
    """A codec: ``nbytes(shape)``, ``encode(x, out, seed=0)``, ``decode(buf, out)``, running
    the codec kernels `kernels` (its backend's)."""

    name: str
    nbytes: Callable[[tuple[int, ...]], int]
    encode: Callable[..., None]
    decode: Callable[[np.ndarray, np.ndarray], None]
    kernels: object = K


def _size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, row length) of the block layout: shape[0] x the rest (a stored activation
    [C, N, H, W]: C x N*H*W), N x F, or 1 x n."""
    if len(shape) >= 3:
        return shape[0], _size(shape[1:])
    if len(shape) == 2:
        return shape[0], shape[1]
    return 1, _size(shape)


def _check_encode(codec: str, x: np.ndarray, out: np.ndarray, nbytes: int) -> None:
    if x.dtype != np.float32 or not x.flags["C_CONTIGUOUS"]:
        raise ValueError(
            f"{codec}.encode: expected a C-contiguous float32 array, got {x.dtype}, "
            f"c_contiguous={x.flags['C_CONTIGUOUS']}"
        )
    _check_buffer(codec, out, nbytes)


def _check_decode(codec: str, buf: np.ndarray, out: np.ndarray, nbytes: int) -> None:
    _check_buffer(codec, buf, nbytes)
    if out.dtype != np.float32 or not out.flags["C_CONTIGUOUS"]:
        raise ValueError(
            f"{codec}.decode: expected a C-contiguous float32 output, got {out.dtype}, "
            f"c_contiguous={out.flags['C_CONTIGUOUS']}"
        )


def _check_buffer(codec: str, buf: np.ndarray, nbytes: int) -> None:
    if buf.dtype != np.uint8 or buf.ndim != 1 or not buf.flags["C_CONTIGUOUS"]:
        raise ValueError(
            f"{codec}: expected a contiguous 1-D uint8 buffer, got {buf.dtype} "
            f"with shape {buf.shape}"
        )
    if buf.size < nbytes:
        raise ValueError(f"{codec}: buffer holds {buf.size} bytes, the tensor needs {nbytes}")


def numerical_error(
    codec: str, nonfinite: int, beyond: int, unit: str = "value(s)", about: str = ""
) -> NumericalError:
    """The error of codec `codec` that met `nonfinite` NaN/Inf values and `beyond` values
    past the fp16 range (`unit`: what was counted) in a saved activation; `about`
    describes that activation."""
    if nonfinite:
        return NumericalError(
            f"{codec} codec: NaN/Inf in saved activation{about} ({nonfinite} {unit}); "
            f"training has diverged (try a lower learning rate)"
        )
    return NumericalError(
        f"{codec} codec: {beyond} {unit} of saved activation{about} exceed the fp16 range "
        f"+-{K.FP16_MAX:g}; use the fp32 codec or a lower learning rate"
    )


def _raise_bad(codec: str, x: np.ndarray, bad: int, unit: str) -> None:
    """Raise what an encoder of host array `x` met: `bad` bad `unit`."""
    nonfinite = int(np.count_nonzero(~np.isfinite(x)))
    if nonfinite:
        raise numerical_error(codec, nonfinite, 0, about=f" of shape {x.shape}")
    about = f" of shape {x.shape} (max |x| = {float(np.abs(x).max()):g})"
    raise numerical_error(codec, 0, bad, unit, about)


def _fp32(k) -> Codec:
    def nbytes(shape: tuple[int, ...]) -> int:
        return 4 * _size(shape)

    def encode(x: np.ndarray, out: np.ndarray, seed: int = 0) -> None:
        n = nbytes(x.shape)
        _check_encode("fp32", x, out, n)
        bad = k.fp32_encode(x.reshape(-1), out[:n].view(np.float32))
        if bad:
            _raise_bad("fp32", x, bad, "value(s)")

    def decode(buf: np.ndarray, out: np.ndarray) -> None:
        n = nbytes(out.shape)
        _check_decode("fp32", buf, out, n)
        k.fp32_decode(buf[:n].view(np.float32), out.reshape(-1))

    return Codec("fp32", nbytes, encode, decode, k)


def _fp16(k) -> Codec:
    def nbytes(shape: tuple[int, ...]) -> int:
        return 2 * _size(shape)

    def encode(x: np.ndarray, out: np.ndarray, seed: int = 0) -> None:
        _check_encode("fp16", x, out, nbytes(x.shape))
        bad = k.fp16_encode(x.reshape(-1).view(np.uint32), out)
        if bad:
            _raise_bad("fp16", x, bad, "value(s)")

    def decode(buf: np.ndarray, out: np.ndarray) -> None:
        _check_decode("fp16", buf, out, nbytes(out.shape))
        k.fp16_decode(buf, out.reshape(-1).view(np.uint32))

    return Codec("fp16", nbytes, encode, decode, k)


def _seed_mix(seed: int) -> np.uint64:
    """Spread `seed` over 64 bits (splitmix64 finalizer) so nearby seeds share no stream."""
    z = (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(z ^ (z >> 31))


def _block(bits: int, group: int, rounding: str, k) -> Codec:
    name = f"q{bits}"
    stochastic = rounding == "stochastic"

    def nbytes(shape: tuple[int, ...]) -> int:
        rows, length = _rows(shape)
        blocks = rows * (-(-length // group))
        return 4 * blocks + rows * (-(-length * bits // 8))

    def encode(x: np.ndarray, out: np.ndarray, seed: int = 0) -> None:
        _check_encode(name, x, out, nbytes(x.shape))
        rows, length = _rows(x.shape)
        mix = _seed_mix(seed)
        flat = x.reshape(-1)
        bad = k.block_encode(
            flat, flat.view(np.int32), out, rows, length, group, bits, stochastic, mix
        )
        if bad:
            _raise_bad(name, x, bad, "block(s)")

    def decode(buf: np.ndarray, out: np.ndarray) -> None:
        _check_decode(name, buf, out, nbytes(out.shape))
        rows, length = _rows(out.shape)
        k.block_decode(buf, out.reshape(-1), rows, length, group, bits)

    return Codec(name, nbytes, encode, decode, k)


def _make(name: str, group: int, rounding: str, k) -> Codec:
    if name == "fp32":
        return _fp32(k)
    if name == "fp16":
        return _fp16(k)
    return _block(int(name[1:]), group, rounding, k)


CODECS: dict[str, Codec] = {
    name: _make(name, DEFAULT_GROUP, "nearest", K) for name in CODEC_NAMES
}


@lru_cache(maxsize=64)
def get_codec(
    name: str, group: int = DEFAULT_GROUP, rounding: str = "nearest", kernels: object = K
) -> Codec:
    """The codec `name` (one of CODECS) running `kernels` (default the CPU's); `group`
    and `rounding` apply to q8/q4/q2 only."""
    if name not in CODECS:
        raise FactoEdgeError(f"unknown codec {name!r}; expected one of {', '.join(CODECS)}")
    if not isinstance(group, int) or group < 1:
        raise FactoEdgeError(f"codec group size must be a positive int, got {group!r}")
    if rounding not in ROUNDINGS:
        raise FactoEdgeError(f"codec rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if not name.startswith("q"):
        group, rounding = DEFAULT_GROUP, "nearest"
    if kernels is K and (group, rounding) == (DEFAULT_GROUP, "nearest"):
        return CODECS[name]
    return _make(name, group, rounding, kernels)


def _check_flat(what: str, a: np.ndarray, kinds: str) -> None:
    if a.dtype.kind not in kinds or not a.flags["C_CONTIGUOUS"]:
        raise ValueError(
            f"{what}: expected a C-contiguous array of kind {kinds!r}, got {a.dtype} "
            f"(c_contiguous={a.flags['C_CONTIGUOUS']})"
        )


def mask_nbytes(shape: tuple[int, ...]) -> int:
    """Bytes of a 1-bit-per-element mask of a tensor of `shape`."""
    return -(-_size(shape) // 8)


def mask_encode(
    x: np.ndarray, out: np.ndarray, low: float = 0.0, high: float = math.inf, kernels=K
) -> None:
    """Pack ``low < x < high`` into `out`: ReLU keeps x > 0, ReLU6 passes ``high=6.0``."""
    _check_flat("mask_encode", x, "f")
    _check_buffer("mask_encode", out, mask_nbytes(x.shape))
    kernels.mask_encode(x.reshape(-1), out, float(low), float(high))


def mask_decode(buf: np.ndarray, out: np.ndarray, kernels=K) -> None:
    """Unpack a mask into `out` (bool or uint8 array of the tensor's shape)."""
    _check_flat("mask_decode", out, "bu")
    _check_buffer("mask_decode", buf, mask_nbytes(out.shape))
    kernels.mask_decode(buf, out.reshape(-1))


def mask_apply(buf: np.ndarray, grad_in: np.ndarray, grad_out: np.ndarray, kernels=K) -> None:
    """``grad_out = grad_in * mask`` without unpacking the mask; grad_out may be grad_in."""
    _check_flat("mask_apply", grad_in, "f")
    _check_flat("mask_apply", grad_out, "f")
    if grad_in.shape != grad_out.shape or grad_in.dtype != grad_out.dtype:
        raise ValueError(
            f"mask_apply: grad_in {grad_in.dtype}{grad_in.shape} and grad_out "
            f"{grad_out.dtype}{grad_out.shape} differ"
        )
    _check_buffer("mask_apply", buf, mask_nbytes(grad_in.shape))
    kernels.mask_apply(buf, grad_in.reshape(-1), grad_out.reshape(-1))


def argmax_bits(kernel: int | tuple[int, int]) -> int:
    """Bits per max-pool output to store its argmax inside a window: 2 for 2x2, 4 for 3x3."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    positions = kh * kw
    for bits in (1, 2, 4, 8, 16):
        if positions <= 1 << bits:
            return bits
    raise FactoEdgeError(f"max-pool window {kh}x{kw} has more than 65536 positions")


def argmax_nbytes(out_shape: tuple[int, ...], kernel: int | tuple[int, int]) -> int:
    """Bytes of the packed argmax of a max-pool with output `out_shape` and `kernel`."""
    return -(-_size(out_shape) * argmax_bits(kernel) // 8)


def argmax_encode(
    idx: np.ndarray, out: np.ndarray, kernel: int | tuple[int, int], kernels=K
) -> None:
    """Pack window-local argmax indices `idx` (ints in [0, kh*kw)) into `out`."""
    _check_flat("argmax_encode", idx, "iu")
    _check_buffer("argmax_encode", out, argmax_nbytes(idx.shape, kernel))
    kernels.pack_codes(idx.reshape(-1), out, argmax_bits(kernel))


def argmax_decode(
    buf: np.ndarray, out: np.ndarray, kernel: int | tuple[int, int], kernels=K
) -> None:
    """Unpack argmax indices into the integer array `out` (the max-pool output's shape)."""
    _check_flat("argmax_decode", out, "iu")
    _check_buffer("argmax_decode", buf, argmax_nbytes(out.shape, kernel))
    kernels.unpack_codes(buf, out.reshape(-1), argmax_bits(kernel))


def warm_up(codec: str) -> None:
    """Run `codec`'s kernels once, both roundings, on a tiny tensor (compiles or loads).
    The masks' and argmax's kernels are left to the models that use them."""
    x = np.linspace(-2.0, 3.0, 2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5)
    y = np.empty_like(x)
    for rounding in ROUNDINGS:
        c = get_codec(codec, rounding=rounding)
        buf = np.empty(c.nbytes(x.shape), np.uint8)
        c.encode(x, buf, seed=1)
        c.decode(buf, y)
