"""Layer normalisation over the channel axis, as GPT-2 uses it (eps 1e-5, biased variance).

    mu   = mean_c x_c                     sigma^2 = mean_c (x_c - mu)^2         (eq. 2.1)
    xhat = (x - mu) * rstd,  rstd = 1 / sqrt(sigma^2 + eps)                      (eq. 2.2)
    y    = xhat * w + b                                                          (eq. 2.3)
"""

from __future__ import annotations

import numpy as np


def layernorm_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5):
    """x (..., C), w (C,), b (C,) -> out (..., C).

    Cache: ``(xhat, w, rstd)``; the normalised input (..., C) and the reciprocal standard deviation
    (..., 1) are exactly the two quantities the backward of eq. 2.6 needs, so nothing is recomputed.
    """
    mean = x.mean(axis=-1, keepdims=True)                  # (..., C) -> (..., 1)
    xc = x - mean                                          # (..., C)
    var = (xc * xc).mean(axis=-1, keepdims=True)           # (..., 1)   biased: divide by C
    rstd = 1.0 / np.sqrt(var + x.dtype.type(eps))          # (..., 1)
    xhat = xc * rstd                                       # (..., C)
    out = xhat * w + b                                     # (..., C)
    return out, (xhat, w, rstd)


def layernorm_backward(dout: np.ndarray, cache, dw: np.ndarray, db: np.ndarray) -> np.ndarray:
    """Add dL/dw, dL/db into ``dw``, ``db`` (C,) and return dL/dx (..., C).

    Eq. 2.4: dw = sum over rows of dout * xhat;  eq. 2.5: db = sum over rows of dout.
    Eq. 2.6: with g = dout * w,
        dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))
    The two mean terms come from mu and sigma depending on every x_c; dropping either one is the
    classic layernorm bug (a negative control in the tests).
    """
    xhat, w, rstd = cache
    C = xhat.shape[-1]
    dw += (dout * xhat).reshape(-1, C).sum(axis=0)         # (..., C) -> (C,)
    db += dout.reshape(-1, C).sum(axis=0)                  # (..., C) -> (C,)
    g = dout * w                                           # (..., C)   dL/dxhat
    g_mean = g.mean(axis=-1, keepdims=True)                # (..., 1)
    gx_mean = (g * xhat).mean(axis=-1, keepdims=True)      # (..., 1)
    dx = rstd * (g - g_mean - xhat * gx_mean)              # (..., C)
    return dx
