"""Layer normalisation over the last axis: the kernels of ``minigpt.layers.layernorm`` (same names,
signatures and cache ``(xhat, w, rstd)``, so either backward consumes either forward).

Shapes: x (..., C), w, b (C,); N = prod(leading dims).
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
SERIAL_BELOW = 1 << 15   # elements: smaller inputs run the serial twin (no parallel launch, ~50 us)


def _check(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> None:
    if x.ndim < 1 or w.shape != (x.shape[-1],) or (b is not None and b.shape != w.shape):
        raise ValueError(f"layernorm: x (..., C) with w, b (C,) expected; got x {x.shape}, "
                         f"w {w.shape}, b {None if b is None else b.shape}")
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"layernorm: x must be float32 or float64, got {x.dtype}")


# ----------------------------------------------------------------------------- Numba kernels
@njit(inline="always")
def _ln_row(x, w, b, eps, out, xhat, rstd, n):
    """Normalise row n of x into out/xhat/rstd (the body both drivers below share)."""
    C = x.shape[1]
    dt = x.dtype.type
    invC = dt(1.0 / C)
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
        xh = (x[n, c] - m) * r
        xhat[n, c] = xh
        out[n, c] = xh * w[c] + b[c]
    rstd[n] = r


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _ln_fwd(x, w, b, eps, out, xhat, rstd):
    for n in prange(x.shape[0]):
        _ln_row(x, w, b, eps, out, xhat, rstd, n)


@njit(cache=True, fastmath=FASTMATH)
def _ln_fwd_serial(x, w, b, eps, out, xhat, rstd):
    """The same rows on the calling thread: for a few rows (decoding) a parallel launch costs more
    than the work."""
    for n in range(x.shape[0]):
        _ln_row(x, w, b, eps, out, xhat, rstd, n)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _ln_bwd(dout, xhat, w, rstd, dx, dw_part, db_part, rows_per_chunk):
    N, C = xhat.shape
    dt = xhat.dtype.type
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
            sg = dt(0.0)
            sgx = dt(0.0)
            for c in range(C):
                d = dout[n, c]
                xh = xhat[n, c]
                g = d * w[c]
                sg += g
                sgx += g * xh
                pb[c] += d
                pw[c] += d * xh
            sg *= invC
            sgx *= invC
            r = rstd[n]
            for c in range(C):
                dx[n, c] = r * (dout[n, c] * w[c] - sg - xhat[n, c] * sgx)


def layernorm_forward(x, w, b, eps=1e-5):
    """x (..., C), w, b (C,) -> (out (..., C), cache (xhat (..., C), w, rstd (..., 1)))."""
    _check(x, w, b)
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)                       # (N, C)
    out = np.empty_like(x2)
    xhat = np.empty_like(x2)
    rstd = np.empty(x2.shape[0], dtype=x.dtype)
    kernel = _ln_fwd if x2.size >= SERIAL_BELOW else _ln_fwd_serial
    kernel(x2, np.ascontiguousarray(w), np.ascontiguousarray(b), eps, out, xhat, rstd)
    return out.reshape(x.shape), (xhat.reshape(x.shape), w, rstd.reshape(*x.shape[:-1], 1))


def layernorm_backward(dout, cache, dw, db):
    """Adds dL/dw, dL/db into dw, db (C,); returns dx (..., C) (race-free chunked dw/db partials)."""
    xhat, w, rstd = cache
    _check(xhat, w)
    C = xhat.shape[-1]
    xh = np.ascontiguousarray(xhat).reshape(-1, C)                    # (N, C)
    d2 = np.ascontiguousarray(dout, dtype=xhat.dtype).reshape(-1, C)  # (N, C)
    N = xh.shape[0]
    rows_per_chunk = max(16, -(-N // 64))
    n_chunks = -(-N // rows_per_chunk)
    dw_part = np.empty((n_chunks, C), dtype=xhat.dtype)
    db_part = np.empty((n_chunks, C), dtype=xhat.dtype)
    dx = np.empty_like(xh)
    r = np.ascontiguousarray(rstd, dtype=xhat.dtype).reshape(-1)      # (N,)
    _ln_bwd(d2, xh, np.ascontiguousarray(w), r, dx, dw_part, db_part, rows_per_chunk)
    dw += dw_part.sum(axis=0)
    db += db_part.sum(axis=0)
    return dx.reshape(xhat.shape)
