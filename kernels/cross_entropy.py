"""Mean cross-entropy over the counted targets and its gradient, in one pass over the logits.

Shapes: logits (N, V) (leading dims flattened), targets (N,) int; rows whose target equals
``ignore_index`` (-100) count neither in the loss nor in the mean, and get a zero gradient.
    M = number of counted rows
    loss = (1/M) sum_n [ logsumexp(z_n) - z_n[t_n] ]
    dlogits_n = (softmax(z_n) - onehot(t_n)) / M      (0 for ignored rows)
If every row is ignored the loss is NaN (as in PyTorch) and the gradient is zero.

``out`` may be the logits array itself: the gradient then overwrites the logits in place, which
for GPT-2's 50257-word head saves a (B*T, V) buffer.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels._fast32 import exp32

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def _check(logits: np.ndarray, targets: np.ndarray, ignore_index: int):
    if logits.ndim < 1 or logits.dtype not in (np.float32, np.float64):
        raise ValueError(f"cross_entropy: logits must be float32/float64 (..., V), got "
                         f"{logits.dtype} {logits.shape}")
    V = logits.shape[-1]
    z = logits.reshape(-1, V)                                         # (N, V)
    t = np.asarray(targets).reshape(-1)
    if t.shape[0] != z.shape[0] or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"cross_entropy: targets must be integers with shape {logits.shape[:-1]}, "
                         f"got {np.asarray(targets).dtype} {np.asarray(targets).shape}")
    counted = t != ignore_index
    if np.any((t[counted] < 0) | (t[counted] >= V)):
        raise ValueError(f"cross_entropy: target ids must be in [0, {V}) or {ignore_index}")
    return z, t.astype(np.int64, copy=False), int(counted.sum())


# ----------------------------------------------------------------------------- NumPy reference
def cross_entropy_numpy(logits, targets, ignore_index=-100, out=None):
    """-> (loss: float, dlogits with logits' shape and dtype)."""
    z, t, M = _check(logits, targets, ignore_index)
    counted = t != ignore_index                                       # (N,)
    zmax = z.max(axis=-1, keepdims=True)                              # (N, 1)
    e = np.exp(z - zmax)                                              # (N, V)
    s = e.sum(axis=-1, keepdims=True)                                 # (N, 1)
    rows = np.nonzero(counted)[0]
    lse = (np.log(s[:, 0]) + zmax[:, 0]).astype(np.float64)           # (N,)
    loss = float(np.sum(lse[rows] - z[rows, t[rows]])) / M if M else float("nan")
    d = e / s                                                         # (N, V) softmax
    d[rows, t[rows]] -= 1.0
    d *= z.dtype.type(1.0 / M) if M else z.dtype.type(0.0)
    d[~counted] = 0.0
    if out is None:
        return loss, d.reshape(logits.shape)
    out.reshape(d.shape)[...] = d
    return loss, out


# ----------------------------------------------------------------------------- Numba kernel
@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _ce(z, t, ignore_index, inv_m, out, row_loss, fast):
    N, V = z.shape
    dt = z.dtype.type
    for n in prange(N):
        tn = t[n]
        if tn == ignore_index:
            for j in range(V):
                out[n, j] = dt(0.0)
            row_loss[n] = 0.0
            continue
        zt = z[n, tn]
        m = z[n, 0]
        for j in range(1, V):
            if z[n, j] > m:
                m = z[n, j]
        s = dt(0.0)
        for j in range(V):
            e = exp32(z[n, j] - m) if fast else np.exp(z[n, j] - m)
            out[n, j] = e                    # may overwrite z[n, j] when out is z: read first
            s += e
        row_loss[n] = np.float64(m) + np.log(np.float64(s)) - np.float64(zt)
        scale = dt(inv_m) / s
        for j in range(V):
            out[n, j] *= scale
        out[n, tn] -= dt(inv_m)


def cross_entropy_numba(logits, targets, ignore_index=-100, out=None):
    """Same contract as :func:`cross_entropy_numpy`; ``out=logits`` computes in place."""
    z, t, M = _check(logits, targets, ignore_index)
    z = np.ascontiguousarray(z)
    if out is None:
        d = np.empty_like(z)
    else:
        if not out.flags.c_contiguous or out.shape != logits.shape or out.dtype != z.dtype:
            raise ValueError("cross_entropy: out must be C-contiguous with logits' shape and dtype")
        d = out.reshape(z.shape)
    row_loss = np.empty(z.shape[0], dtype=np.float64)
    _ce(z, t, ignore_index, 1.0 / M if M else 0.0, d, row_loss, z.dtype == np.float32)
    loss = float(row_loss.sum()) / M if M else float("nan")
    return loss, (d.reshape(logits.shape) if out is None else out)
