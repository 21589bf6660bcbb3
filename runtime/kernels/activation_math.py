"""The scalar math of the pointwise activations, written once as plain Python over one
value: the CPU kernels (activation.py) compile it with numba.njit, the CUDA kernels
(cuda/activation.py) as device functions. `kind` picks the function (the constants
below), `a` and `b` are its attributes (alpha, beta; ignored where unused). Each
function calls no other Python function, so both compilers take it as it is.

`value` is f(v) and `slope` f'(v), computed from the input alone, so backward needs only
the input kept (or, for the piecewise-linear ones, a 1-bit mask of `inside`).

`exp_split` is the float32 exp of the Swish and Sigmoid fast paths, shared the same way:
the CPU kernels assemble its 2^t from exponent bits (a loop LLVM vectorizes), the CUDA
ones with ldexp."""

from __future__ import annotations

import math

import numpy as np

SIGMOID, TANH, HARD_SIGMOID, HARD_SWISH, LEAKY_RELU, ELU, GELU, GELU_TANH, SWISH, ERF = range(10)
SQRT_2_OVER_PI = 0.7978845608028654
TWO_OVER_SQRT_PI = 1.1283791670955126
INV_SQRT2 = 0.7071067811865476


EXP_MIN, EXP_MAX = -87.0, 88.0  # where exp(u) is a normal float32
ROUNDER = np.float32(12582912.0)  # 1.5 * 2^23: x + it - it is x rounded to a whole number


def exp_split(u):
    """(t, p) with exp(u) = 2^t * p, for a float32 u in [EXP_MIN, EXP_MAX], all in
    float32: Cephes' expf (about 1 ulp), t = round(u / ln 2) as a float32 whole number,
    r = u - t ln 2 with ln 2 in two parts (exact), p = 1 + r + r^2 q(r). The rounding
    adds and takes away 1.5 * 2^23, which leaves a whole number (the CUDA target has no
    float32 floor; the kernels allow no reassociation, which would fold it away)."""
    t = (u * np.float32(1.44269504088896341) + ROUNDER) - ROUNDER
    r = u - t * np.float32(0.693359375) + t * np.float32(2.12194440e-4)
    q = np.float32(1.9875691500e-4)
    q = q * r + np.float32(1.3981999507e-3)
    q = q * r + np.float32(8.3334519073e-3)
    q = q * r + np.float32(4.1665795894e-2)
    q = q * r + np.float32(1.6666665459e-1)
    q = q * r + np.float32(5.0000001201e-1)
    return t, q * r * r + r + np.float32(1.0)


def value(v, kind, a, b):
    """f(v) of activation `kind` with attributes a (alpha), b (beta)."""
    if kind == SIGMOID:
        return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))
    if kind == TANH:
        return math.tanh(v)
    if kind == HARD_SIGMOID:
        return min(max(a * v + b, 0.0), 1.0)
    if kind == HARD_SWISH:
        return v * min(max(v / 6.0 + 0.5, 0.0), 1.0)
    if kind == LEAKY_RELU:
        return v if v > 0 else a * v
    if kind == ELU:
        return v if v > 0 else a * (math.exp(v) - 1.0)
    if kind == GELU:
        return 0.5 * v * (1.0 + math.erf(v * INV_SQRT2))
    if kind == GELU_TANH:
        return 0.5 * v * (1.0 + math.tanh(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)))
    if kind == SWISH:
        u = a * v
        return v / (1.0 + math.exp(-u)) if u >= 0 else v * math.exp(u) / (1.0 + math.exp(u))
    return math.erf(v)


def slope(v, kind, a, b):
    """f'(v) of activation `kind`."""
    if kind == SIGMOID:
        s = 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))
        return s * (1.0 - s)
    if kind == TANH:
        t = math.tanh(v)
        return 1.0 - t * t
    if kind == HARD_SIGMOID:
        u = a * v + b
        return a if 0.0 < u < 1.0 else 0.0
    if kind == HARD_SWISH:
        if v <= -3.0:
            return 0.0
        return 1.0 if v >= 3.0 else v / 3.0 + 0.5
    if kind == LEAKY_RELU:
        return 1.0 if v > 0 else a
    if kind == ELU:
        return 1.0 if v > 0 else a * math.exp(v)
    if kind == GELU:
        cdf = 0.5 * (1.0 + math.erf(v * INV_SQRT2))
        return cdf + v * 0.5 * TWO_OVER_SQRT_PI * INV_SQRT2 * math.exp(-0.5 * v * v)
    if kind == GELU_TANH:
        inner = SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)
        t = math.tanh(inner)
        d_inner = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v)
        return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * d_inner
    if kind == SWISH:
        u = a * v
        s = 1.0 / (1.0 + math.exp(-u)) if u >= 0 else math.exp(u) / (1.0 + math.exp(u))
        return s + a * v * s * (1.0 - s)
    return TWO_OVER_SQRT_PI * math.exp(-v * v)


def inside(v, kind, a, b):
    """Whether v lies where a piecewise-linear activation has its first slope (the bit of
    its 1-bit mask): LeakyRelu v > 0, HardSigmoid 0 < a*v + b < 1."""
    if kind == HARD_SIGMOID:
        u = a * v + b
        return 0.0 < u < 1.0
    return v > 0
