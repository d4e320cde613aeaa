"""Affine map in GPT-2's ``x @ W`` layout (W is (in, out), as OpenAI's Conv1D stores it).

    y = x W + b                                                                  (eq. 3.1)
"""

from __future__ import annotations

import numpy as np


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None):
    """x (..., n_in), w (n_in, n_out), b (n_out,) or None -> out (..., n_out).

    Cache: ``(x, w, has_bias)``; the input is needed for dW (eq. 3.3), the weight for dx (eq. 3.2).
    """
    out = x @ w                                            # (..., n_in) @ (n_in, n_out) -> (..., n_out)
    if b is not None:
        out += b
    return out, (x, w, b is not None)


def linear_backward(dout: np.ndarray, cache, dw: np.ndarray, db: np.ndarray | None) -> np.ndarray:
    """Add dL/dW into ``dw`` (n_in, n_out) and dL/db into ``db``; return dL/dx (..., n_in).

    Eq. 3.2: dx = dout W^T.  Eq. 3.3: dW = sum over rows of x^T dout.  Eq. 3.4: db = sum of dout rows.
    ``dw`` may be a transposed view (the LM head stores its weight (V, C) and calls this with W^T);
    the in-place ``+=`` writes through the view, so a tied head accumulates into ``wte``'s gradient.
    """
    x, w, has_bias = cache
    n_in, n_out = w.shape
    x2 = x.reshape(-1, n_in)                               # (N, n_in)
    d2 = dout.reshape(-1, n_out)                           # (N, n_out)
    dw += x2.T @ d2                                        # (n_in, N) @ (N, n_out) -> (n_in, n_out)
    if has_bias:
        db += d2.sum(axis=0)                               # (N, n_out) -> (n_out,)
    dx = dout @ w.T                                        # (..., n_out) @ (n_out, n_in) -> (..., n_in)
    return dx
