"""GELU, tanh approximation (GPT-2's), forward and backward, elementwise.

    u = sqrt(2/pi) * (x + 0.044715 x^3);   gelu(x) = 0.5 x (1 + tanh u)
    d gelu/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)

The cache is the input x; the backward recomputes tanh (one pass, no stored intermediates).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
_S2PI = math.sqrt(2.0 / math.pi)


def _check(x: np.ndarray) -> None:
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"gelu: x must be float32 or float64, got {x.dtype}")


# ----------------------------------------------------------------------------- NumPy reference
def gelu_forward_numpy(x, out=None):
    """x (...) -> gelu(x) (...), same dtype; written into ``out`` when given."""
    _check(x)
    dt = x.dtype.type
    u = dt(_S2PI) * (x + dt(0.044715) * x ** 3)
    res = dt(0.5) * x * (dt(1.0) + np.tanh(u))
    if out is None:
        return res
    out[...] = res
    return out


def gelu_backward_numpy(dout, x, out=None):
    """dout, x (...) -> dx (...); written into ``out`` when given."""
    _check(x)
    dt = x.dtype.type
    u = dt(_S2PI) * (x + dt(0.044715) * x ** 3)
    t = np.tanh(u)
    du = dt(_S2PI) * (dt(1.0) + dt(3 * 0.044715) * x * x)
    res = dout * (dt(0.5) * (dt(1.0) + t) + dt(0.5) * x * (dt(1.0) - t * t) * du)
    if out is None:
        return res
    out[...] = res
    return out


# ----------------------------------------------------------------------------- Numba kernels
@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _gelu_fwd(x, out):
    dt = x.dtype.type
    s2pi = dt(_S2PI)
    c = dt(0.044715)
    half = dt(0.5)
    one = dt(1.0)
    for i in prange(x.shape[0]):
        xi = x[i]
        u = s2pi * (xi + c * xi * xi * xi)
        out[i] = half * xi * (one + np.tanh(u))


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _gelu_bwd(dout, x, dx):
    dt = x.dtype.type
    s2pi = dt(_S2PI)
    c = dt(0.044715)
    c3 = dt(3 * 0.044715)
    half = dt(0.5)
    one = dt(1.0)
    for i in prange(x.shape[0]):
        xi = x[i]
        t = np.tanh(s2pi * (xi + c * xi * xi * xi))
        du = s2pi * (one + c3 * xi * xi)
        dx[i] = dout[i] * (half * (one + t) + half * xi * (one - t * t) * du)


def gelu_forward_numba(x, out=None):
    """Same contract as :func:`gelu_forward_numpy`; ``out`` may be x itself (in place)."""
    _check(x)
    xf = np.ascontiguousarray(x).reshape(-1)
    if out is None:
        out = np.empty_like(xf)
    _gelu_fwd(xf, out.reshape(-1))
    return out.reshape(x.shape)


def gelu_backward_numba(dout, x, out=None):
    """Same contract as :func:`gelu_backward_numpy`; ``out`` may be dout itself (in place)."""
    _check(x)
    xf = np.ascontiguousarray(x).reshape(-1)
    df = np.ascontiguousarray(dout, dtype=x.dtype).reshape(-1)
    if out is None:
        out = np.empty_like(xf)
    _gelu_bwd(df, xf, out.reshape(-1))
    return out.reshape(x.shape)
