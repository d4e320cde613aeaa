"""AdamW over one flat parameter buffer (PyTorch ``torch.optim.AdamW`` semantics): the kernel of
``minigpt.layers.adamw.adamw_step`` (same name and signature), one fused pass over the four
buffers instead of the reference's chunked NumPy passes. Also ``sumsq``, a parallel float64 sum
of squares (a teaching kernel and bench row; clipping uses NumPy's dot).

For step t >= 1, gradient g scaled by ``grad_scale`` (the clip factor, 1.0 for no clipping):
    p <- p - lr * wd * p                      (decoupled weight decay)
    m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
    mhat = m / (1 - b1^t);    vhat = v / (1 - b2^t)
    p <- p - lr * mhat / (sqrt(vhat) + eps)
All four arrays are 1-D, same length and dtype, updated in place (m and v must start at 0).
Parameters that must not decay are handled by calling the update on their slice with wd=0.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def _check(p, g, m, v, step):
    for name, a in (("p", p), ("g", g), ("m", m), ("v", v)):
        if a.ndim != 1 or a.shape != p.shape or a.dtype != p.dtype:
            raise ValueError(f"adamw: {name} must be 1-D like p {p.shape} {p.dtype}, "
                             f"got {a.shape} {a.dtype}")
    if step < 1:
        raise ValueError(f"adamw: step counts from 1, got {step}")


# ----------------------------------------------------------------------------- Numba kernels
@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _adamw(p, g, m, v, lr, beta1, beta2, eps, wd, bc1, bc2, gscale):
    dt = p.dtype.type
    decay = dt(1.0 - lr * wd)
    b1 = dt(beta1)
    b2 = dt(beta2)
    c1 = dt(1.0 - beta1)
    c2 = dt(1.0 - beta2)
    step = dt(lr / bc1)
    isq = dt(1.0 / math.sqrt(bc2))
    e = dt(eps)
    gs = dt(gscale)
    for i in prange(p.shape[0]):
        gi = g[i] * gs
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay - step * mi / (np.sqrt(vi) * isq + e)


@njit(parallel=True, cache=True)
def _sumsq(x):
    acc = 0.0
    for i in prange(x.shape[0]):
        xi = np.float64(x[i])
        acc += xi * xi
    return acc


def adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, grad_scale=1.0) -> None:
    """In-place AdamW update of p, m, v (see the module docstring): one fused pass."""
    _check(p, g, m, v, step)
    _adamw(p, g, m, v, float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
           1.0 - beta1 ** step, 1.0 - beta2 ** step, float(grad_scale))


def sumsq(x) -> float:
    """sum(x**2) accumulated in float64 (parallel reduction)."""
    return float(_sumsq(np.ascontiguousarray(x).reshape(-1)))
