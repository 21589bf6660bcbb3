"""Codecs, masks and argmax packing: round trips, error bounds, layout and failure modes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facto_edge.errors import FactoEdgeError, NumericalError
from facto_edge.runtime import codecs as C
from facto_edge.runtime.kernels import codec_kernels as K

SHAPES = [(2, 3, 7, 9), (2, 3, 8, 8), (3, 70), (17,), (1, 2, 3, 4, 5), (2, 0, 4, 4)]
BLOCK = ["q8", "q4", "q2"]


def _data(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """ReLU-like activations with channel offsets, so blocks differ in min and range."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2.0 + rng.uniform(
        -3, 3, size=shape[:2] + (1,) * (len(shape) - 2)
    )
    return np.ascontiguousarray(np.where(rng.random(shape) < 0.3, 0.0, x), np.float32)


def _blocks(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-element (min, max) of its block, per the documented layout (rows x blocks)."""
    rows, length = C._rows(x.shape)
    r = x.reshape(rows, length).astype(np.float64)
    nblk = -(-length // group)
    pad = np.full((rows, nblk * group), np.nan)
    pad[:, :length] = r
    b = pad.reshape(rows, nblk, group)
    lo = np.repeat(np.nanmin(b, axis=2), group, axis=1)[:, :length]
    hi = np.repeat(np.nanmax(b, axis=2), group, axis=1)[:, :length]
    return lo.reshape(x.shape), hi.reshape(x.shape)


def _step_bound(lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """Largest stored scale a block [lo, hi] can get.

    The stored min is lo rounded down to fp16: it is below lo by less than one fp16 ulp,
    which is <= |lo| * 2**-10 for normal halves and 2**-24 for subnormal ones. The scale
    (hi - min16) / (2**b - 1) is then rounded up to fp16: at most a factor 1 + 2**-10
    more, or 2**-24 more if subnormal.
    """
    span = hi - lo + np.abs(lo) * 2.0**-10 + 2.0**-24
    return span / (2**bits - 1) * (1 + 2.0**-10) + 2.0**-24


def _f32_slack(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """float32 arithmetic in encode ((x - min) * 1/scale) and decode (min + q * scale):
    a few roundings of relative size 2**-24 on numbers no larger than |lo| + |hi|."""
    return 8 * 2.0**-24 * (np.abs(lo) + np.abs(hi)) + 1e-30


def _roundtrip(codec: C.Codec, x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    buf = np.zeros(codec.nbytes(x.shape), np.uint8)
    out = np.full(x.shape, np.nan, np.float32)
    codec.encode(x, buf, seed=seed)
    codec.decode(buf, out)
    return buf, out


@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_is_lossless(shape):
    x = _data(shape)
    buf, y = _roundtrip(C.get_codec("fp32"), x)
    assert buf.size == 4 * x.size
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("shape", SHAPES)
def test_fp16_matches_numpy_half(shape):
    x = _data(shape) * 100
    buf, y = _roundtrip(C.get_codec("fp16"), x)
    np.testing.assert_array_equal(buf.view(np.float16), x.astype(np.float16).reshape(-1))
    np.testing.assert_array_equal(y, x.astype(np.float16).astype(np.float32))


def test_fp16_rounding_edges_match_numpy():
    tiny, eps = 2.0**-24, 2.0**-11
    x = np.array(
        [
            tiny / 2,
            tiny * 0.5001,
            tiny * 1.5,
            tiny * 2.5,
            2.0**-14 * (1 - eps),
            1 + eps,
            1 + 3 * eps,
            -1 - eps,
            65519.99,
            -65504.0,
            0.0,
            1e-30,
            -1e-30,
        ],
        np.float32,
    )
    buf, y = _roundtrip(C.get_codec("fp16"), x)
    np.testing.assert_array_equal(buf.view(np.uint16), x.astype(np.float16).view(np.uint16))


def test_directed_fp16_rounding_brackets_the_value():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.standard_normal(3000) * 10.0 ** rng.integers(-9, 5, 3000), [0.0, 65504.0, 2**-24]]
    ).astype(np.float32)
    up16 = np.array([K.f64_to_f16_bits.py_func(float(v), 1) for v in x], np.uint16)
    down16 = np.array(
        [K.f32_bits_to_f16_bits.py_func(int(u), -1) for u in x.view(np.uint32)], np.uint16
    )
    up, down = (h.view(np.float16).astype(np.float64) for h in (up16, down16))
    assert np.all(down <= x) and np.all(x <= up)
    # tight: each is x itself or its neighbour on the right side
    exact = x.astype(np.float16).astype(np.float32) == x
    assert np.all(up[exact] == x[exact]) and np.all(down[exact] == x[exact])
    with np.errstate(over="ignore"):  # the neighbour of 65504 is inf
        step_up = np.nextafter(down16.view(np.float16), np.float16(np.inf)).astype(np.float64)
    assert np.all(up[~exact] == step_up[~exact])


@pytest.mark.parametrize("name", BLOCK)
@pytest.mark.parametrize("group", [1, 3, 7, 64, 100])
@pytest.mark.parametrize("shape", SHAPES)
def test_nearest_error_within_half_step(name, group, shape):
    bits = int(name[1:])
    x = _data(shape, seed=group)
    _, y = _roundtrip(C.get_codec(name, group=group), x)
    lo, hi = _blocks(x, group)
    err = np.abs(y.astype(np.float64) - x)
    assert np.all(err <= _step_bound(lo, hi, bits) / 2 + _f32_slack(lo, hi))


@pytest.mark.parametrize("name", BLOCK)
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (3, 70)])
def test_stochastic_error_below_one_step(name, shape):
    bits = int(name[1:])
    x = _data(shape)
    _, y = _roundtrip(C.get_codec(name, group=16, rounding="stochastic"), x, seed=7)
    lo, hi = _blocks(x, 16)
    assert np.all(
        np.abs(y.astype(np.float64) - x) <= _step_bound(lo, hi, bits) + _f32_slack(lo, hi)
    )


def test_stochastic_is_unbiased_and_seeded():
    x = _data((2, 4, 5, 6))
    codec = C.get_codec("q2", group=8, rounding="stochastic")
    seeds = 200
    ys = np.stack([_roundtrip(codec, x, seed=s)[1] for s in range(seeds)]).astype(np.float64)
    lo, hi = _blocks(x, 8)
    step = _step_bound(lo, hi, 2)
    # each decode has variance <= step**2 / 4: the mean of 200 is within 5 sigma of x
    assert np.all(np.abs(ys.mean(0) - x) <= 5 * step / 2 / np.sqrt(seeds) + 1e-6)
    # nearest rounding would be biased: it fails the same test on these values
    y_nearest = _roundtrip(C.get_codec("q2", group=8), x)[1]
    assert np.any(np.abs(y_nearest - x) > 5 * step / 2 / np.sqrt(seeds))
    same = [_roundtrip(codec, x, seed=3)[0] for _ in range(2)]
    np.testing.assert_array_equal(same[0], same[1])
    assert not np.array_equal(same[0], _roundtrip(codec, x, seed=4)[0])


def test_block_layout_and_size():
    # (2,3,7,9) with G=64, q4: rows along the first axis (a stored activation [C, N, H, W]
    # gives a row per channel over the batch): 2 rows of 189 values, blocks of 64, 64, 61
    # = 6 blocks; header 6*2 mins + 6*2 scales = 24 bytes; codes ceil(189*4/8) = 95 bytes
    # per row -> 24 + 190 = 214
    assert C.get_codec("q4").nbytes((2, 3, 7, 9)) == 214
    # (3, 70) with G=32, q2: 3 rows, 3 blocks each (32, 32, 6) -> 36 header + 3*18 codes
    assert C.get_codec("q2", group=32).nbytes((3, 70)) == 36 + 54
    x = _data((2, 3, 7, 9))
    buf, _ = _roundtrip(C.get_codec("q4"), x)
    rows = x.reshape(2, 189).astype(np.float64)
    blocks = [rows[p, j * 64 : (j + 1) * 64] for p in range(2) for j in range(3)]
    mins = buf[:12].view(np.float16).astype(np.float64)
    scales = buf[12:24].view(np.float16).astype(np.float64)
    assert np.all(mins <= [b.min() for b in blocks])
    assert np.all(mins + 15 * scales >= [b.max() for b in blocks])
    codes = np.unpackbits(buf[24:].reshape(2, 95), axis=1, bitorder="little")
    q = codes.reshape(2, 190, 4)[:, :189] @ (1 << np.arange(4))
    for k, block in enumerate(blocks):
        p, j = divmod(k, 3)
        got = mins[k] + q[p, j * 64 : j * 64 + block.size] * scales[k]
        np.testing.assert_allclose(got, block, atol=scales[k])


def test_constant_and_zero_blocks_are_exact():
    x = np.zeros((2, 2, 4, 4), np.float32)
    x[1] = 3.5
    for name in BLOCK:
        np.testing.assert_array_equal(_roundtrip(C.get_codec(name), x)[1], x)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from([8, 4, 2]),
    group=st.integers(1, 80),
    rows=st.integers(1, 4),
    length=st.integers(1, 150),
    center=st.sampled_from([0.0, 1.0, -1000.0, 3e4, 1e-6]),
    spread=st.sampled_from([0.0, 1e-7, 1e-3, 1.0, 100.0]),
    seed=st.integers(0, 2**31),
)
def test_nearest_bound_holds_for_any_scale(bits, group, rows, length, center, spread, seed):
    rng = np.random.default_rng(seed)
    x = (center + spread * rng.standard_normal((rows, length))).astype(np.float32)
    _, y = _roundtrip(C.get_codec(f"q{bits}", group=group), x)
    lo, hi = _blocks(x, group)
    assert np.all(
        np.abs(y.astype(np.float64) - x) <= _step_bound(lo, hi, bits) / 2 + _f32_slack(lo, hi)
    )


@pytest.mark.parametrize("name", ["fp32", "fp16", "q8", "q4", "q2"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_input_raises(name, bad):
    x = _data((2, 3, 5, 5))
    x[1, 2, 3, 4] = bad
    buf = np.zeros(C.get_codec(name).nbytes(x.shape), np.uint8)
    with pytest.raises(NumericalError, match="NaN/Inf in saved activation"):
        C.get_codec(name).encode(x, buf)
    assert issubclass(NumericalError, FactoEdgeError) and issubclass(NumericalError, ValueError)


@pytest.mark.parametrize("name", ["fp16", "q4"])
def test_values_beyond_fp16_range_raise(name):
    x = _data((2, 3, 5, 5))
    x[0, 0, 0, 0] = -7e4
    buf = np.zeros(C.get_codec(name).nbytes(x.shape), np.uint8)
    with pytest.raises(NumericalError, match="fp16 range"):
        C.get_codec(name).encode(x, buf)


def test_bad_arguments_are_rejected():
    q4 = C.get_codec("q4")
    x = _data((2, 3, 4, 4))
    with pytest.raises(ValueError, match="float32"):
        q4.encode(x.astype(np.float64), np.zeros(q4.nbytes(x.shape), np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        q4.encode(x.transpose(0, 1, 3, 2), np.zeros(q4.nbytes(x.shape), np.uint8))
    with pytest.raises(ValueError, match="needs"):
        q4.encode(x, np.zeros(q4.nbytes(x.shape) - 1, np.uint8))
    with pytest.raises(FactoEdgeError, match="unknown codec"):
        C.get_codec("q3")
    with pytest.raises(FactoEdgeError, match="rounding"):
        C.get_codec("q4", rounding="up")
    with pytest.raises(FactoEdgeError, match="group"):
        C.get_codec("q4", group=0)
    assert C.get_codec("q4") is C.CODECS["q4"]


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000])
def test_relu_mask_roundtrip_and_apply(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    buf = np.zeros(C.mask_nbytes(x.shape), np.uint8)
    C.mask_encode(x, buf)
    np.testing.assert_array_equal(buf, np.packbits((x > 0).reshape(-1), bitorder="little"))
    keep = np.zeros(x.shape, np.bool_)
    C.mask_decode(buf, keep)
    np.testing.assert_array_equal(keep, x > 0)
    g = rng.standard_normal(x.shape).astype(np.float32)
    out = np.empty_like(g)
    C.mask_apply(buf, g, out)
    np.testing.assert_array_equal(out, np.where(x > 0, g, 0))
    C.mask_apply(buf, g, g)
    np.testing.assert_array_equal(g, out)


def test_relu6_mask():
    x = np.array([-1, 0, 0.5, 5.9, 6, 7, np.nan, 3], np.float32)
    buf = np.zeros(1, np.uint8)
    C.mask_encode(x, buf, high=6.0)
    keep = np.zeros(8, np.uint8)
    C.mask_decode(buf, keep)
    np.testing.assert_array_equal(keep, [0, 0, 1, 1, 0, 0, 0, 1])


@pytest.mark.parametrize(
    ("kernel", "bits"), [(1, 1), (2, 2), ((2, 1), 1), (3, 4), (5, 8), (17, 16)]
)
def test_argmax_roundtrip(kernel, bits):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    assert C.argmax_bits(kernel) == bits
    shape = (2, 3, 5, 7)
    idx = np.random.default_rng(bits).integers(0, kh * kw, size=shape).astype(np.int32)
    buf = np.zeros(C.argmax_nbytes(shape, kernel), np.uint8)
    assert buf.size == -(-idx.size * bits // 8)
    C.argmax_encode(idx, buf, kernel)
    back = np.full(shape, -1, np.int64)
    C.argmax_decode(buf, back, kernel)
    np.testing.assert_array_equal(back, idx)


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_put_code_matches_pack_codes(bits):
    codes = np.random.default_rng(bits).integers(0, 1 << bits, size=37)
    packed = np.zeros(-(-37 * bits // 8), np.uint8)
    K.pack_codes(codes, packed, bits)
    one_by_one = np.full_like(packed, 0xA5)  # put_code must clear the old bits
    for i in range(37):
        K.put_code.py_func(one_by_one, i, int(codes[i]), bits)
    if bits < 8:  # bits past the last code are not written by put_code
        one_by_one[-1] &= (1 << (37 * bits % 8 or 8)) - 1
    np.testing.assert_array_equal(one_by_one, packed)
    assert [K.get_code.py_func(packed, i, bits) for i in range(37)] == codes.tolist()


def test_argmax_2x2_uses_two_bits():
    assert C.argmax_nbytes((32, 64, 16, 16), 2) == 32 * 64 * 16 * 16 // 4


_NOJIT_SCRIPT = """
import json, warnings
import numpy as np
warnings.simplefilter("ignore", RuntimeWarning)  # uint64 wraparound in the hash, as in jit
from facto_edge.runtime import codecs as C
from facto_edge.runtime.kernels import codec_kernels as K
x = np.linspace(-3, 5, 2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
x[0, 1, 2] = 0.0
res = {}
for name, rounding in [("q4", "nearest"), ("q2", "stochastic"), ("fp16", "nearest")]:
    c = C.get_codec(name, group=4, rounding=rounding)
    buf = np.zeros(c.nbytes(x.shape), np.uint8)
    c.encode(x, buf, seed=5)
    y = np.empty_like(x)
    c.decode(buf, y)
    res[name] = [buf.tolist(), float(np.abs(y - x).max())]
m = np.zeros(C.mask_nbytes(x.shape), np.uint8)
C.mask_encode(x, m)
res["mask"] = m.tolist()
print(json.dumps(res))
"""


def test_kernels_without_jit_match_jit():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    run = subprocess.run(
        [sys.executable, "-c", _NOJIT_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    nojit = json.loads(run.stdout)
    jit = subprocess.run(
        [sys.executable, "-c", _NOJIT_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert jit.returncode == 0, jit.stderr
    assert nojit == json.loads(jit.stdout)
    assert nojit["q4"][1] < 8 / 15
