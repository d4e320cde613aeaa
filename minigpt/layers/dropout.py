"""Inverted dropout: zero each element with probability p, scale the survivors by 1/(1-p).

    y = x * m,   m_i = [u_i >= p] / (1 - p),   u_i ~ U[0, 1) from an explicit Generator   (eq. 5.1)

The mask comes from the caller's ``np.random.Generator`` (never global state), so the same seed
gives the same masks, on every platform; a gradient check re-creates the Generator from its seed for
every evaluation and so sees one fixed mask.
"""

from __future__ import annotations

import numpy as np


def dropout_forward(x: np.ndarray, p: float, rng: np.random.Generator | None):
    """x (...) -> out (...). Identity (cache None) when p == 0 or rng is None (evaluation).

    Cache: the scaled mask m (...), in x's dtype; the backward is a multiplication by it (eq. 5.2).
    """
    if rng is None or p == 0.0:
        return x, None
    keep = rng.random(x.shape) >= p                        # (...) bool, P(keep) = 1 - p
    mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))
    return x * mask, mask


def dropout_backward(dout: np.ndarray, cache) -> np.ndarray:
    """Return dL/dx = dout * m (eq. 5.2): dropped elements get no gradient."""
    mask = cache
    if mask is None:
        return dout
    return dout * mask
