"""GELU, tanh approximation (GPT-2's), elementwise: the kernels of ``minigpt.layers.gelu`` (same
names, signatures and cache ``(x, tanh(u))``).

    u = sqrt(2/pi) * (x + 0.044715 x^3);   th = tanh(u);   gelu(x) = 0.5 x (1 + th)
    d gelu/dx = 0.5 (1 + th) + 0.5 x (1 - th^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)

Keeping th in the cache spares the backward a transcendental; either backward can consume either
forward.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from kernels._fast32 import tanh32

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
SERIAL_BELOW = 1 << 15   # elements: smaller inputs run the serial twin (no parallel launch, ~50 us)
_S2PI = math.sqrt(2.0 / math.pi)


def _check(x: np.ndarray) -> None:
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"gelu: x must be float32 or float64, got {x.dtype}")


# ----------------------------------------------------------------------------- Numba kernels
@njit(inline="always")
def _gelu_at(x, out, th, fast, i):
    dt = x.dtype.type
    xi = x[i]
    u = dt(_S2PI) * (xi + dt(0.044715) * xi * xi * xi)
    t = tanh32(u) if fast else np.tanh(u)   # float32: vectorisable rational tanh
    th[i] = t
    out[i] = dt(0.5) * xi * (dt(1.0) + t)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _gelu_fwd(x, out, th, fast):
    for i in prange(x.shape[0]):
        _gelu_at(x, out, th, fast, i)


@njit(cache=True, fastmath=FASTMATH)
def _gelu_fwd_serial(x, out, th, fast):
    """Same, on the calling thread (small inputs: decoding)."""
    for i in range(x.shape[0]):
        _gelu_at(x, out, th, fast, i)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _gelu_bwd(dout, x, th, dx):
    dt = x.dtype.type
    s2pi = dt(_S2PI)
    c3 = dt(3 * 0.044715)
    half = dt(0.5)
    one = dt(1.0)
    for i in prange(x.shape[0]):
        xi = x[i]
        t = th[i]
        du = s2pi * (one + c3 * xi * xi)
        dx[i] = dout[i] * (half * (one + t) + half * xi * (one - t * t) * du)


def gelu_forward(x):
    """x (...) -> (out (...), cache (x, th)), same dtype."""
    _check(x)
    xf = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(xf)
    th = np.empty_like(xf)
    kernel = _gelu_fwd if xf.size >= SERIAL_BELOW else _gelu_fwd_serial
    kernel(xf, out, th, x.dtype == np.float32)
    return out.reshape(x.shape), (x, th.reshape(x.shape))


def gelu_backward(dout, cache):
    """dout (...) -> dx (...)."""
    x, th = cache
    _check(x)
    xf = np.ascontiguousarray(x).reshape(-1)
    df = np.ascontiguousarray(dout, dtype=x.dtype).reshape(-1)
    tf = np.ascontiguousarray(th, dtype=x.dtype).reshape(-1)
    dx = np.empty_like(xf)
    _gelu_bwd(df, xf, tf, dx)
    return dx.reshape(x.shape)
