"""Layer normalisation over the last axis, forward and backward.

Shapes: x (N, C) (any leading dims are flattened into N), w, b (C,).
    mean = sum_c x / C;  rstd = 1 / sqrt(var + eps) (biased variance);  xhat = (x - mean) * rstd
    out = xhat * w + b
backward (adds into dw, db; returns dx):
    db += sum_n dout;   dw += sum_n dout * xhat
    g = dout * w;   dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))

The Numba backward splits the N rows into fixed chunks: each parallel iteration owns one chunk's
dx rows and its own partial (dw, db) row; the partials are summed afterwards, so no two
iterations ever write the same element.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def _check(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> None:
    if x.ndim < 1 or w.shape != (x.shape[-1],) or (b is not None and b.shape != w.shape):
        raise ValueError(f"layernorm: x (..., C) with w, b (C,) expected; got x {x.shape}, "
                         f"w {w.shape}, b {None if b is None else b.shape}")
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"layernorm: x must be float32 or float64, got {x.dtype}")


# ----------------------------------------------------------------------------- NumPy reference
def layernorm_forward_numpy(x, w, b, eps=1e-5):
    """x (..., C) -> (out (..., C), mean (N,), rstd (N,)) with N = prod(leading dims)."""
    _check(x, w, b)
    x2 = x.reshape(-1, x.shape[-1])                                   # (N, C)
    mean = x2.mean(axis=-1)                                           # (N,)
    xc = x2 - mean[:, None]                                           # (N, C)
    var = (xc * xc).mean(axis=-1)                                     # (N,)
    rstd = (1.0 / np.sqrt(var + eps)).astype(x.dtype)                 # (N,)
    out = xc * rstd[:, None] * w + b                                  # (N, C)
    return out.reshape(x.shape), mean, rstd


def layernorm_backward_numpy(dout, x, w, mean, rstd, dw, db):
    """Adds dL/dw into dw and dL/db into db; returns dx with x's shape."""
    _check(x, w)
    C = x.shape[-1]
    x2 = x.reshape(-1, C)                                             # (N, C)
    d2 = dout.reshape(-1, C)                                          # (N, C)
    xhat = (x2 - mean[:, None]) * rstd[:, None]                       # (N, C)
    db += d2.sum(axis=0)
    dw += (d2 * xhat).sum(axis=0)
    g = d2 * w                                                        # (N, C)
    dx = rstd[:, None] * (g - g.mean(axis=-1, keepdims=True)
                          - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx.reshape(x.shape)


# ----------------------------------------------------------------------------- Numba kernels
@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _ln_fwd(x, w, b, eps, out, mean, rstd):
    N, C = x.shape
    dt = x.dtype.type
    invC = dt(1.0 / C)
    for n in prange(N):
        m = dt(0.0)
        for c in range(C):
            m += x[n, c]
        m *= invC
        v = dt(0.0)
        for c in range(C):
            t = x[n, c] - m
            v += t * t
        v *= invC
        r = dt(1.0) / np.sqrt(v + dt(eps))
        for c in range(C):
            out[n, c] = (x[n, c] - m) * r * w[c] + b[c]
        mean[n] = m
        rstd[n] = r


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _ln_bwd(dout, x, w, mean, rstd, dx, dw_part, db_part, rows_per_chunk):
    N, C = x.shape
    dt = x.dtype.type
    invC = dt(1.0 / C)
    n_chunks = dw_part.shape[0]
    for ch in prange(n_chunks):
        pw = dw_part[ch]
        pb = db_part[ch]
        for c in range(C):
            pw[c] = dt(0.0)
            pb[c] = dt(0.0)
        start = ch * rows_per_chunk
        stop = min(N, start + rows_per_chunk)
        for n in range(start, stop):
            m = mean[n]
            r = rstd[n]
            sg = dt(0.0)
            sgx = dt(0.0)
            for c in range(C):
                xh = (x[n, c] - m) * r
                g = dout[n, c] * w[c]
                sg += g
                sgx += g * xh
                pb[c] += dout[n, c]
                pw[c] += dout[n, c] * xh
            sg *= invC
            sgx *= invC
            for c in range(C):
                xh = (x[n, c] - m) * r
                dx[n, c] = r * (dout[n, c] * w[c] - sg - xh * sgx)


def layernorm_forward_numba(x, w, b, eps=1e-5):
    """Same contract as :func:`layernorm_forward_numpy`."""
    _check(x, w, b)
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)                       # (N, C)
    N = x2.shape[0]
    out = np.empty_like(x2)
    mean = np.empty(N, dtype=x.dtype)
    rstd = np.empty(N, dtype=x.dtype)
    _ln_fwd(x2, np.ascontiguousarray(w), np.ascontiguousarray(b), eps, out, mean, rstd)
    return out.reshape(x.shape), mean, rstd


def layernorm_backward_numba(dout, x, w, mean, rstd, dw, db):
    """Same contract as :func:`layernorm_backward_numpy` (race-free chunked dw/db partials)."""
    _check(x, w)
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)                       # (N, C)
    d2 = np.ascontiguousarray(dout, dtype=x.dtype).reshape(-1, C)     # (N, C)
    N = x2.shape[0]
    rows_per_chunk = max(16, -(-N // 64))
    n_chunks = -(-N // rows_per_chunk)
    dw_part = np.empty((n_chunks, C), dtype=x.dtype)
    db_part = np.empty((n_chunks, C), dtype=x.dtype)
    dx = np.empty_like(x2)
    _ln_bwd(d2, x2, np.ascontiguousarray(w), mean, rstd, dx, dw_part, db_part, rows_per_chunk)
    dw += dw_part.sum(axis=0)
    db += db_part.sum(axis=0)
    return dx.reshape(x.shape)
