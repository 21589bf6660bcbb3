"""CUDA kernels of the activation codecs, ReLU masks and packed max-pool argmax, writing
the byte layouts of runtime/kernels/codec_kernels.py (see its docstring), so that a
buffer encoded on one backend decodes on the other.

Kernels never raise: encoders count bad values into `errors` (int64 [2]: NaN/Inf, then
values beyond the fp16 range) with atomics, for the wrappers to check. The block codec
encodes one block per thread when every block starts on a byte (group * bits % 8 == 0)
and one row per thread otherwise, so that no two threads share a code byte; decoding is
one element per thread.
"""

from __future__ import annotations

import math

from numba import cuda, float32, int64, uint64

from .. import codec_kernels as host
from ..codec_kernels import _KEY_HI, _KEY_LO, ROUND_DOWN, ROUND_NEAREST, ROUND_UP

NONFINITE, OUT_OF_RANGE = 0, 1


# integer-only conversions: the CPU kernels' own code, compiled for the device
f32_bits_to_f16_bits = cuda.jit(device=True)(host.f32_bits_to_f16_bits.py_func)
f16_bits_to_f32_bits = cuda.jit(device=True)(host.f16_bits_to_f32_bits.py_func)


@cuda.jit(device=True)
def f16_bits_to_f64(h):
    """The value of finite half bits h."""
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    v = (m + 1024) * 2.0 ** (e - 25) if e else m * 2.0**-24
    return -v if h & 0x8000 else v


@cuda.jit(device=True)
def f32_bits_to_f64(u):
    """The value of finite float32 bits u (a non-negative int)."""
    e = (u >> 23) & 0xFF
    m = u & 0x7FFFFF
    v = (m | 0x800000) * 2.0 ** (e - 150) if e else m * 2.0**-149
    return -v if u & 0x80000000 else v


@cuda.jit(device=True)
def f64_to_f16_bits(v, mode):
    """Half bits of v rounded nearest-even (0), up (1) or down (-1); v not NaN. Beyond
    the half range: +-inf, or +-65504 when rounding toward zero."""
    sign = 0x8000 if v < 0.0 else 0
    a = min(abs(v), 65536.0)
    e = 0  # the largest exponent field in [1, 30] with 2**(e-15) <= a, else 0
    step = 16
    while step > 0:
        if e + step <= 30 and a >= 2.0 ** (e + step - 15):
            e += step
        step >>= 1
    t = a * (2.0 ** (25 - e) if e else 2.0**24)
    away = (mode == ROUND_UP and sign == 0) or (mode == ROUND_DOWN and sign != 0)
    n = int64(math.floor(t))
    frac = t - n
    if mode == ROUND_NEAREST:
        n += 1 if frac > 0.5 or (frac == 0.5 and n % 2 == 1) else 0
    elif away:
        n += 1 if frac > 0.0 else 0
    h = (e << 10) + n - (1024 if e else 0)
    if h >= 0x7C00:
        h = 0x7C00 if mode == ROUND_NEAREST or away else 0x7BFF
    return sign | h


@cuda.jit(device=True, inline=True)
def _put_u16(buf, pos, v):
    buf[pos] = v & 0xFF
    buf[pos + 1] = v >> 8


@cuda.jit(device=True, inline=True)
def _get_u16(buf, pos):
    return int64(buf[pos]) | (int64(buf[pos + 1]) << 8)


@cuda.jit(device=True, inline=True)
def _uniform(seed_mix, i):
    """A uniform float32 in [0, 1) from (seed, i): splitmix64 of a counter, 24 bits."""
    z = seed_mix + uint64(i) * uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
    z = z ^ (z >> uint64(31))
    return float32(z >> uint64(40)) * float32(1.0 / 16777216.0)


@cuda.jit(cache=True)
def fp32_encode(x, out, errors):  # pragma: no cover - compiled
    """Copy float32 x (1-D) into out (a float32 view of the buffer); count non-finite."""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        out[i] = v
        if not math.isfinite(v):
            cuda.atomic.add(errors, NONFINITE, 1)


@cuda.jit(cache=True)
def fp16_encode(xbits, out, errors):  # pragma: no cover - compiled
    """Round float32 bits (uint32, 1-D) to halves in out (uint8, 2 per value)."""
    for i in range(cuda.grid(1), xbits.size, cuda.gridsize(1)):
        u = int64(xbits[i])
        h = f32_bits_to_f16_bits(u, ROUND_NEAREST)
        _put_u16(out, 2 * i, h)
        if (u & 0x7F800000) == 0x7F800000:
            cuda.atomic.add(errors, NONFINITE, 1)
        elif (h & 0x7C00) == 0x7C00:
            cuda.atomic.add(errors, OUT_OF_RANGE, 1)


@cuda.jit(cache=True)
def fp16_decode(buf, out_bits):  # pragma: no cover - compiled
    """Halves in buf (uint8, 2 per value) -> float32 bits in out_bits (uint32, 1-D)."""
    for i in range(cuda.grid(1), out_bits.size, cuda.gridsize(1)):
        out_bits[i] = f16_bits_to_f32_bits(_get_u16(buf, 2 * i))


@cuda.jit(device=True, inline=True)
def _key(xk, i):
    """int key of float32 bits xk[i] whose order is the float order."""
    u = int64(xk[i])
    return u ^ ((u >> 31) & 0x7FFFFFFF)


@cuda.jit(device=True, inline=True)
def _unkey(k):
    """float32 bits (non-negative int) of an order key."""
    return (k ^ ((k >> 31) & 0x7FFFFFFF)) & 0xFFFFFFFF


@cuda.jit(device=True)
def _encode_block(x, xk, out, start, stop, bitpos, row0, hdr, nblocks, bits, st, mix, errors):
    """Header entry `hdr` and codes of x[start:stop] from bit bitpos after byte row0."""
    lo, hi = int64(_KEY_HI), int64(_KEY_LO)
    bad = False
    for k in range(start, stop):
        key = _key(xk, k)
        lo, hi = min(lo, key), max(hi, key)
        if not math.isfinite(x[k]):
            bad = True
    if bad or lo < _KEY_LO or hi > _KEY_HI:
        cuda.atomic.add(errors, NONFINITE if bad else OUT_OF_RANGE, 1)
        return
    min_bits = f32_bits_to_f16_bits(_unkey(lo), ROUND_DOWN)
    min16 = f16_bits_to_f64(min_bits)
    levels = (1 << bits) - 1
    scale_bits = f64_to_f16_bits((f32_bits_to_f64(_unkey(hi)) - min16) / levels, ROUND_UP)
    _put_u16(out, 2 * hdr, min_bits)
    _put_u16(out, 2 * (nblocks + hdr), scale_bits)
    lo32, scale = float32(min16), float32(f16_bits_to_f64(scale_bits))
    inv = float32(1.0) / scale if scale > 0 else float32(0.0)
    top = float32(levels)
    for k in range(start, stop):
        v = (x[k] - lo32) * inv
        v += _uniform(mix, k) if st else float32(0.5)
        q = int64(v if v < top else top)
        b = row0 + (bitpos >> 3)
        shift = bitpos & 7
        out[b] = q if shift == 0 else out[b] | (q << shift)
        bitpos += bits


@cuda.jit(cache=True)
def block_encode(  # pragma: no cover - compiled
    x, xk, out, planes, plane, group, bits, st, mix, per_block, errors
):
    """Block-quantize float32 x (1-D, planes*plane values; xk its int32 view) into out.
    One thread per block (per_block) or per row."""
    nblk = (plane + group - 1) // group
    nblocks = planes * nblk
    row_bytes = (plane * bits + 7) // 8
    units = nblocks if per_block else planes
    for u in range(cuda.grid(1), units, cuda.gridsize(1)):
        p = u // nblk if per_block else u
        first = u % nblk if per_block else 0
        last = first + 1 if per_block else nblk
        row0 = 4 * nblocks + p * row_bytes
        for j in range(first, last):
            start = p * plane + j * group
            stop = min(start + group, (p + 1) * plane)
            bitpos, hdr = j * group * bits, p * nblk + j
            _encode_block(
                x, xk, out, start, stop, bitpos, row0, hdr, nblocks, bits, st, mix, errors
            )


@cuda.jit(cache=True)
def block_decode(buf, out, planes, plane, group, bits):  # pragma: no cover - compiled
    """Inverse of block_encode: codes in buf -> float32 out (1-D), one element a thread."""
    nblk = (plane + group - 1) // group
    nblocks = planes * nblk
    row_bytes = (plane * bits + 7) // 8
    mask = (1 << bits) - 1
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        p, k = e // plane, e % plane
        blk = p * nblk + k // group
        lo = float32(f16_bits_to_f64(_get_u16(buf, 2 * blk)))
        scale = float32(f16_bits_to_f64(_get_u16(buf, 2 * (nblocks + blk))))
        bitpos = k * bits
        q = (int64(buf[4 * nblocks + p * row_bytes + (bitpos >> 3)]) >> (bitpos & 7)) & mask
        out[e] = lo + float32(q) * scale


@cuda.jit(cache=True)
def mask_encode(x, out, low, high):  # pragma: no cover - compiled
    """Bit i of out = low < x[i] < high, for float32 x (1-D); 8 elements per byte."""
    n = x.size
    for b in range(cuda.grid(1), (n + 7) // 8, cuda.gridsize(1)):
        byte = 0
        for k in range(min(8, n - 8 * b)):
            v = x[8 * b + k]
            if v > low and v < high:
                byte |= 1 << k
        out[b] = byte


@cuda.jit(cache=True)
def mask_decode(buf, out):  # pragma: no cover - compiled
    """Unpack bit i of buf into out[i] (bool or uint8, 1-D)."""
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = (buf[i // 8] >> (i % 8)) & 1


@cuda.jit(cache=True)
def mask_apply(buf, grad_in, grad_out):  # pragma: no cover - compiled
    """grad_out[i] = grad_in[i] where bit i of buf is set, else 0 (in place allowed)."""
    for i in range(cuda.grid(1), grad_in.size, cuda.gridsize(1)):
        grad_out[i] = grad_in[i] if (buf[i // 8] >> (i % 8)) & 1 else float32(0.0)


@cuda.jit(cache=True)
def pack_codes(codes, out, bits):  # pragma: no cover - compiled
    """Pack integer codes (1-D, each < 2**bits) at `bits` each into out (uint8)."""
    n = codes.size
    if bits == 16:
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            _put_u16(out, 2 * i, int64(codes[i]) & 0xFFFF)
        return
    per = 8 // bits
    mask = (1 << bits) - 1
    for b in range(cuda.grid(1), (n + per - 1) // per, cuda.gridsize(1)):
        byte = 0
        for k in range(min(per, n - per * b)):
            byte |= (int64(codes[per * b + k]) & mask) << (k * bits)
        out[b] = byte


@cuda.jit(cache=True)
def unpack_codes(buf, out, bits):  # pragma: no cover - compiled
    """Inverse of pack_codes: `bits`-bit codes in buf -> integer out (1-D)."""
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        if bits == 16:
            out[i] = _get_u16(buf, 2 * i)
        else:
            per = 8 // bits
            out[i] = (int64(buf[i // per]) >> ((i % per) * bits)) & ((1 << bits) - 1)
