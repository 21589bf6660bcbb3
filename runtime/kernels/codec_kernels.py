"""Numba kernels of the activation codecs, ReLU masks and packed max-pool argmax.

Every kernel writes into the arrays it is given, never allocates and never raises;
the wrappers in `runtime/codecs.py` check shapes and dtypes. Kernels that can meet bad
input (NaN/Inf) return a count of bad elements (blocks, for q8/q4/q2) instead of raising.
The parallel ones are built serial and parallel (kernels/dispatch.py), so that a
session's lanes encode and decode on their own core, without a lock.

Layouts (all little-endian, all byte-addressed so no view needs alignment):

- fp32: the raw float32 bytes. fp16: IEEE half floats, 2 bytes each.
- block codec (q8/q4/q2): the tensor is seen as `planes` rows of `plane` elements
  (N*C rows of H*W for NCHW). Each row is cut into blocks of `group` consecutive
  elements (the last block of a row may be shorter). The buffer holds the fp16 minimum
  of every block, then the fp16 scale of every block (2 bytes each, block order), then
  the codes row by row, `bits` per element, element k of a row in bits
  [k*bits, (k+1)*bits) of that row's code bytes; each row starts on a fresh byte.
- bit masks and packed codes (argmax): element i in bits [i*bits, (i+1)*bits) of the
  buffer, the least significant bits first (`np.packbits(..., bitorder="little")`).
"""

import numpy as np
from numba import njit, prange

from .dispatch import kernel

FP16_MAX = 65504.0

ROUND_NEAREST = 0
ROUND_UP = 1
ROUND_DOWN = -1

# value = mantissa * scale[exponent field], for half and single floats (field 0: subnormal)
_F16_SCALE = np.array([2.0**-24] + [2.0 ** (e - 25) for e in range(1, 32)])
_F32_SCALE = np.array([2.0**-149] + [2.0 ** (e - 150) for e in range(1, 256)])
_F16_INV_QUANTUM = 1.0 / _F16_SCALE
_F16_BINADE = np.array([0.0] + [2.0 ** (e - 15) for e in range(1, 32)])


def _order_key(bits: int) -> int:
    """int32 key whose signed order is the float order of float32 `bits` (uint32)."""
    u = bits - (1 << 32) if bits >= 1 << 31 else bits
    return u ^ 0x7FFFFFFF if u < 0 else u


# keys of +-65504: a block whose key range leaves [_KEY_LO, _KEY_HI] holds NaN/Inf or
# values no fp16 minimum can represent
_KEY_LO = _order_key(0xC77FE000)
_KEY_HI = _order_key(0x477FE000)


@njit(cache=True, inline="always")
def f64_to_f16_bits(v: float, mode: int) -> int:
    """IEEE half bits of `v` rounded to nearest-even (mode 0), up (1) or down (-1).

    Values beyond the half range round to +-inf, or to +-65504 when the rounding
    direction is toward zero. `v` must not be NaN.
    """
    sign = 0x8000 if v < 0.0 else 0
    a = min(abs(v), 65536.0)
    e = 0  # binary search: the largest exponent field in [1, 30] with 2**(e-15) <= a
    step = 16
    while step > 0:
        if e + step <= 30 and a >= _F16_BINADE[e + step]:
            e += step
        step >>= 1
    t = a * _F16_INV_QUANTUM[e]
    away = (mode == ROUND_UP and sign == 0) or (mode == ROUND_DOWN and sign != 0)
    if mode == ROUND_NEAREST:
        n = int(np.rint(t))
    elif away:
        n = int(np.ceil(t))
    else:
        n = int(np.floor(t))
    h = (e << 10) + n - (1024 if e else 0)
    if h >= 0x7C00:
        h = 0x7C00 if mode == ROUND_NEAREST or away else 0x7BFF
    return sign | h


@njit(cache=True, inline="always")
def f16_bits_to_f64(h: int) -> float:
    """The value of IEEE half bits `h` (finite halves only)."""
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    v = (m + 1024 if e else m) * _F16_SCALE[e]
    return -v if h & 0x8000 else v


@njit(cache=True, inline="always")
def f32_bits_to_f64(u: int) -> float:
    """The value of float32 bits `u` (finite floats only, as a non-negative int)."""
    e = (u >> 23) & 0xFF
    m = u & 0x7FFFFF
    v = (m | 0x800000 if e else m) * _F32_SCALE[e]
    return -v if u & 0x80000000 else v


@njit(cache=True, inline="always")
def f32_bits_to_f16_bits(u: int, mode: int) -> int:
    """float32 bits -> half bits, rounded as in `f64_to_f16_bits`, by integer arithmetic."""
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    if a >= 0x7F800000:
        return sign | 0x7C00 | (0x200 if a > 0x7F800000 else 0)
    if a >= 0x38800000:
        h = (a - 0x38000000) >> 13
        rem = a & 0x1FFF
        half = 0x1000
    else:
        shift = 126 - (a >> 23)
        mant = (a & 0x7FFFFF) | 0x800000
        if shift > 24:
            h, rem, half = 0, 1, 2
        else:
            h = mant >> shift
            rem = mant & ((1 << shift) - 1)
            half = 1 << (shift - 1)
    away = (mode == ROUND_UP and sign == 0) or (mode == ROUND_DOWN and sign != 0)
    if mode == ROUND_NEAREST:
        h += 1 if rem > half or (rem == half and (h & 1) == 1) else 0
    elif away:
        h += 1 if rem != 0 else 0
    elif h >= 0x7C00:
        h = 0x7BFF
    return sign | min(h, 0x7C00)


@njit(cache=True, inline="always")
def f16_bits_to_f32_bits(h: int) -> int:
    """Half bits -> float32 bits (exact)."""
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 31:
        return sign | 0x7F800000 | (m << 13)
    if e == 0:
        if m == 0:
            return sign
        e = 1
        while (m & 0x400) == 0:
            m <<= 1
            e -= 1
        m &= 0x3FF
    return sign | ((e + 112) << 23) | (m << 13)


# Not inline="always": numba inlines its IR at each of the eight `_code` sites of
# `_put_codes`, which made block_encode the costliest kernel to compile (and its
# compiler's peak the preparation's); LLVM inlines it all the same (same encode speed).
@njit(cache=True)
def _uniform(seed_mix: np.uint64, i: int) -> np.float32:
    """A uniform float32 in [0, 1) from (seed, i): splitmix64 of a counter, 24 bits."""
    z = seed_mix + np.uint64(i) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.float32(z >> np.uint64(40)) * np.float32(1.0 / 16777216.0)


@kernel
def fp32_encode(x: np.ndarray, out: np.ndarray) -> int:
    """Copy float32 `x` (1-D) into `out` (float32 view of the buffer); count non-finite."""
    bad = 0
    for i in prange(x.size):
        v = x[i]
        out[i] = v
        if not (abs(v) < np.inf):
            bad += 1
    return bad


@kernel
def fp32_decode(buf: np.ndarray, out: np.ndarray) -> None:
    """Copy the float32 view `buf` into `out` (both 1-D)."""
    for i in prange(out.size):
        out[i] = buf[i]


@kernel
def fp16_encode(xbits: np.ndarray, out: np.ndarray) -> int:
    """Round float32 bits `xbits` (uint32, 1-D) to halves in `out` (uint8, 2 per value).

    Returns the number of values that are NaN, infinite or beyond the half range.
    """
    bad = 0
    for i in prange(xbits.size):
        u = np.int64(xbits[i])
        h = f32_bits_to_f16_bits(u, ROUND_NEAREST)
        out[2 * i] = h & 0xFF
        out[2 * i + 1] = h >> 8
        if (h & 0x7C00) == 0x7C00:
            bad += 1
    return bad


@kernel
def fp16_decode(buf: np.ndarray, out_bits: np.ndarray) -> None:
    """Halves in `buf` (uint8, 2 per value) -> float32 bits in `out_bits` (uint32, 1-D)."""
    for i in prange(out_bits.size):
        h = np.int64(buf[2 * i]) | (np.int64(buf[2 * i + 1]) << 8)
        out_bits[i] = f16_bits_to_f32_bits(h)


@njit(cache=True, inline="always")
def _put_u16(buf: np.ndarray, pos: int, v: int) -> None:
    buf[pos] = v & 0xFF
    buf[pos + 1] = v >> 8


@njit(cache=True, inline="always")
def _get_u16(buf: np.ndarray, pos: int) -> int:
    return np.int64(buf[pos]) | (np.int64(buf[pos + 1]) << 8)


@njit(cache=True, inline="always")
def _block_params(xk: np.ndarray, levels: int):
    """fp16 bits of (min rounded down, scale rounded up) of one block, their float32
    values, and a bad flag.

    Reads the float32 values through their int32 view `xk` and order keys, so that the
    min/max loop vectorizes and NaN/Inf/out-of-range values show up as out-of-range keys.
    The scale is computed against the rounded minimum, so min16 + levels * scale16 >= max.
    """
    lo = np.int64(_KEY_HI)
    hi = np.int64(_KEY_LO)
    for k in range(xk.size):
        u = np.int64(xk[k])
        key = u ^ ((u >> 31) & 0x7FFFFFFF)
        lo = key if key < lo else lo
        hi = key if key > hi else hi
    if lo < _KEY_LO or hi > _KEY_HI:
        return 0, 0, np.float32(0.0), np.float32(0.0), 1
    lo_bits = (lo ^ ((lo >> 31) & 0x7FFFFFFF)) & 0xFFFFFFFF
    hi_bits = (hi ^ ((hi >> 31) & 0x7FFFFFFF)) & 0xFFFFFFFF
    min_bits = f32_bits_to_f16_bits(lo_bits, ROUND_DOWN)
    min16 = f16_bits_to_f64(min_bits)
    scale_bits = f64_to_f16_bits((f32_bits_to_f64(hi_bits) - min16) / levels, ROUND_UP)
    return min_bits, scale_bits, np.float32(min16), np.float32(f16_bits_to_f64(scale_bits)), 0


@njit(cache=True, inline="always")
def _code(xs, k, lo, inv, top, stochastic, seed_mix, base):
    """The code of xs[k] (element base + k of the tensor), nearest or stochastic."""
    v = (xs[k] - lo) * inv
    v += _uniform(seed_mix, base + k) if stochastic else np.float32(0.5)
    return np.int64(v if v < top else top)


# The code and decode loops index zero-based slices: numba then needs no negative-index
# fix-up and LLVM vectorizes them (several times faster than indexing from an offset).


@njit(cache=True, inline="always")
def _put_codes(xs, out, base, bitpos, row0, bits, lo, inv, stochastic, seed_mix):
    """Write the codes of block `xs` (tensor elements from `base`) into `out`, from bit
    `bitpos` of the row whose codes start at byte `row0`."""
    top = np.float32((1 << bits) - 1)
    k0 = 0
    if bitpos % 8 == 0 and bits in (2, 4, 8):
        nfull = xs.size * bits // 8
        pos = row0 + bitpos // 8
        o = out[pos : pos + nfull]
        st, mix = stochastic, seed_mix
        if bits == 8:
            for b in range(nfull):
                o[b] = _code(xs, b, lo, inv, top, st, mix, base)
        elif bits == 4:
            for b in range(nfull):
                c0 = _code(xs, 2 * b, lo, inv, top, st, mix, base)
                c1 = _code(xs, 2 * b + 1, lo, inv, top, st, mix, base)
                o[b] = c0 | (c1 << 4)
        else:
            for b in range(nfull):
                c0 = _code(xs, 4 * b, lo, inv, top, st, mix, base)
                c1 = _code(xs, 4 * b + 1, lo, inv, top, st, mix, base)
                c2 = _code(xs, 4 * b + 2, lo, inv, top, st, mix, base)
                c3 = _code(xs, 4 * b + 3, lo, inv, top, st, mix, base)
                o[b] = c0 | (c1 << 2) | (c2 << 4) | (c3 << 6)
        k0 = nfull * 8 // bits
        bitpos += nfull * 8
    for k in range(k0, xs.size):
        q = _code(xs, k, lo, inv, top, stochastic, seed_mix, base)
        b = row0 + (bitpos >> 3)
        shift = bitpos & 7
        out[b] = q if shift == 0 else out[b] | (q << shift)
        bitpos += bits


@njit(cache=True, inline="always")
def _get_codes(buf, o, bitpos, row0, bits, lo, scale):
    """Decode block `o` from bit `bitpos` of the row whose codes start at byte `row0`."""
    k0 = 0
    if bitpos % 8 == 0 and bits in (2, 4, 8):
        nfull = o.size * bits // 8
        pos = row0 + bitpos // 8
        c = buf[pos : pos + nfull]
        if bits == 8:
            for b in range(nfull):
                o[b] = lo + np.float32(c[b]) * scale
        elif bits == 4:
            for b in range(nfull):
                o[2 * b] = lo + np.float32(c[b] & 15) * scale
                o[2 * b + 1] = lo + np.float32(c[b] >> 4) * scale
        else:
            for b in range(nfull):
                o[4 * b] = lo + np.float32(c[b] & 3) * scale
                o[4 * b + 1] = lo + np.float32((c[b] >> 2) & 3) * scale
                o[4 * b + 2] = lo + np.float32((c[b] >> 4) & 3) * scale
                o[4 * b + 3] = lo + np.float32(c[b] >> 6) * scale
        k0 = nfull * 8 // bits
        bitpos += nfull * 8
    mask = (1 << bits) - 1
    for k in range(k0, o.size):
        q = (np.int64(buf[row0 + (bitpos >> 3)]) >> (bitpos & 7)) & mask
        o[k] = lo + np.float32(q) * scale
        bitpos += bits


@njit(cache=True)
def _encode_row(x, xk, out, p, plane, group, bits, stochastic, seed_mix, nblocks, codes0):
    """Encode row `p` (blocks, header entries and codes); returns its bad block count."""
    nblk = (plane + group - 1) // group
    row0 = codes0 + p * ((plane * bits + 7) // 8)
    levels = (1 << bits) - 1
    bad = 0
    for j in range(nblk):
        start = p * plane + j * group
        stop = min(start + group, (p + 1) * plane)
        min_bits, scale_bits, lo, scale, nbad = _block_params(xk[start:stop], levels)
        bad += nbad
        blk = p * nblk + j
        _put_u16(out, 2 * blk, min_bits)
        _put_u16(out, 2 * (nblocks + blk), scale_bits)
        inv = np.float32(1.0) / scale if scale > 0 else np.float32(0.0)
        xs = x[start:stop]
        _put_codes(xs, out, start, j * group * bits, row0, bits, lo, inv, stochastic, seed_mix)
    return bad


@kernel
def block_encode(
    x: np.ndarray,
    xk: np.ndarray,
    out: np.ndarray,
    planes: int,
    plane: int,
    group: int,
    bits: int,
    stochastic: bool,
    seed_mix: np.uint64,
) -> int:
    """Block-quantize float32 `x` (1-D, planes*plane values; `xk` its int32 view) into
    `out` (uint8). Returns the number of blocks holding NaN, Inf or values beyond the
    fp16 range; the buffer content is then undefined."""
    nblocks = planes * ((plane + group - 1) // group)
    bad = 0
    for p in prange(planes):
        bad += _encode_row(
            x, xk, out, p, plane, group, bits, stochastic, seed_mix, nblocks, 4 * nblocks
        )
    return bad


@njit(cache=True)
def _decode_row(buf, out, p, plane, group, bits, nblocks, codes0):
    """Decode row `p` of a block-codec buffer."""
    nblk = (plane + group - 1) // group
    row0 = codes0 + p * ((plane * bits + 7) // 8)
    for j in range(nblk):
        start = p * plane + j * group
        stop = min(start + group, (p + 1) * plane)
        blk = p * nblk + j
        lo = np.float32(f16_bits_to_f64(_get_u16(buf, 2 * blk)))
        scale = np.float32(f16_bits_to_f64(_get_u16(buf, 2 * (nblocks + blk))))
        _get_codes(buf, out[start:stop], j * group * bits, row0, bits, lo, scale)


@kernel
def block_decode(
    buf: np.ndarray, out: np.ndarray, planes: int, plane: int, group: int, bits: int
) -> None:
    """Inverse of `block_encode`: codes in `buf` -> float32 `out` (1-D)."""
    nblocks = planes * ((plane + group - 1) // group)
    for p in prange(planes):
        _decode_row(buf, out, p, plane, group, bits, nblocks, 4 * nblocks)


@kernel
def mask_encode(x: np.ndarray, out: np.ndarray, low: float, high: float) -> None:
    """Bit i of `out` = low < x[i] < high, for float32 `x` (1-D); 8 elements per byte."""
    n = x.size
    for b in prange((n + 7) // 8):
        byte = 0
        for k in range(min(8, n - 8 * b)):
            v = x[8 * b + k]
            if v > low and v < high:
                byte |= 1 << k
        out[b] = byte


@kernel
def mask_decode(buf: np.ndarray, out: np.ndarray) -> None:
    """Unpack bit i of `buf` into out[i] (bool or uint8, 1-D)."""
    n = out.size
    for b in prange((n + 7) // 8):
        byte = buf[b]
        for k in range(min(8, n - 8 * b)):
            out[8 * b + k] = (byte >> k) & 1


@kernel
def mask_apply(buf: np.ndarray, grad_in: np.ndarray, grad_out: np.ndarray) -> None:
    """grad_out[i] = grad_in[i] where bit i of `buf` is set, else 0 (in place allowed)."""
    n = grad_in.size
    for b in prange((n + 7) // 8):
        byte = buf[b]
        for k in range(min(8, n - 8 * b)):
            i = 8 * b + k
            grad_out[i] = grad_in[i] if (byte >> k) & 1 else np.float32(0.0)


@njit(cache=True, inline="always")
def put_code(buf: np.ndarray, i: int, code: int, bits: int) -> None:
    """Write code `i` (`bits` in 1, 2, 4, 8 or 16) into `buf`, for kernels that pack
    while they compute. Codes sharing a byte must be written by one thread."""
    if bits == 16:
        buf[2 * i] = code & 0xFF
        buf[2 * i + 1] = (code >> 8) & 0xFF
        return
    per = 8 // bits
    shift = (i % per) * bits
    m = ((1 << bits) - 1) << shift
    pos = i // per
    buf[pos] = (np.int64(buf[pos]) & ~m) | ((code << shift) & m)


@njit(cache=True, inline="always")
def get_code(buf: np.ndarray, i: int, bits: int) -> int:
    """Read code `i` written by `put_code` or `pack_codes`."""
    if bits == 16:
        return np.int64(buf[2 * i]) | (np.int64(buf[2 * i + 1]) << 8)
    per = 8 // bits
    return (np.int64(buf[i // per]) >> ((i % per) * bits)) & ((1 << bits) - 1)


@kernel
def pack_codes(codes: np.ndarray, out: np.ndarray, bits: int) -> None:
    """Pack integer `codes` (1-D, each < 2**bits) at `bits` each into `out` (uint8)."""
    n = codes.size
    if bits == 16:
        for i in prange(n):
            out[2 * i] = codes[i] & 0xFF
            out[2 * i + 1] = (codes[i] >> 8) & 0xFF
        return
    per = 8 // bits
    mask = (1 << bits) - 1
    for b in prange((n + per - 1) // per):
        byte = 0
        for k in range(min(per, n - per * b)):
            byte |= (np.int64(codes[per * b + k]) & mask) << (k * bits)
        out[b] = byte


@kernel
def unpack_codes(buf: np.ndarray, out: np.ndarray, bits: int) -> None:
    """Inverse of `pack_codes`: `bits`-bit codes in `buf` -> integer `out` (1-D)."""
    n = out.size
    if bits == 16:
        for i in prange(n):
            out[i] = np.int64(buf[2 * i]) | (np.int64(buf[2 * i + 1]) << 8)
        return
    per = 8 // bits
    mask = (1 << bits) - 1
    for b in prange((n + per - 1) // per):
        byte = np.int64(buf[b])
        for k in range(min(per, n - per * b)):
            out[per * b + k] = (byte >> (k * bits)) & mask
