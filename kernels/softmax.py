"""Causal softmax over the last axis, skipping the masked (future) columns.

Shapes: ``scores`` is ``(..., Tq, Tk)`` with ``Tk >= Tq``. Query row ``i`` may look at key
columns ``j <= i + (Tk - Tq)`` (with a KV cache the new queries sit at the end of the key
sequence; without one ``Tq == Tk`` and this is the usual lower triangle). Masked entries of the
output are exactly 0 and are never computed.

    forward:   p_ij = exp(s_ij - max_j s_ij) / sum_j exp(s_ij - max_j s_ij)   (allowed j only)
    backward:  ds_ij = p_ij * (dp_ij - sum_k p_ik dp_ik)                       (softmax Jacobian)

``*_numpy`` is the readable reference, ``*_numba`` the row-parallel kernel; same signature.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels._fast32 import exp32

# The safe fastmath subset: no nnan/ninf, because the reference uses -inf masks.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def _check_scores(scores: np.ndarray, name: str = "scores") -> None:
    if scores.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dims (..., Tq, Tk), got shape {scores.shape}")
    if scores.shape[-1] < scores.shape[-2]:
        raise ValueError(f"{name} needs Tk >= Tq for a causal mask, got shape {scores.shape}")
    if scores.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name} must be float32 or float64, got {scores.dtype}")


def causal_mask(Tq: int, Tk: int) -> np.ndarray:
    """(Tq, Tk) bool, True where query i may NOT look at key j (j > i + Tk - Tq)."""
    return np.triu(np.ones((Tq, Tk), dtype=bool), k=1 + Tk - Tq)


# ----------------------------------------------------------------------------- NumPy reference
def causal_softmax_forward_numpy(scores: np.ndarray) -> np.ndarray:
    """(..., Tq, Tk) -> (..., Tq, Tk) probabilities, zeros in the masked columns."""
    _check_scores(scores)
    Tq, Tk = scores.shape[-2:]
    masked = causal_mask(Tq, Tk)                                      # (Tq, Tk)
    s = np.where(masked, -np.inf, scores)                             # (..., Tq, Tk)
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)                                                     # exp(-inf) = 0
    return (e / e.sum(axis=-1, keepdims=True)).astype(scores.dtype, copy=False)


def causal_softmax_backward_numpy(dprobs: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Softmax Jacobian-vector product: (..., Tq, Tk) x2 -> dscores (..., Tq, Tk)."""
    _check_scores(probs, "probs")
    if dprobs.shape != probs.shape:
        raise ValueError(f"dprobs shape {dprobs.shape} != probs shape {probs.shape}")
    inner = (probs * dprobs).sum(axis=-1, keepdims=True)              # (..., Tq, 1)
    return probs * (dprobs - inner)                                   # masked p = 0 -> 0


# ----------------------------------------------------------------------------- Numba kernels
@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _softmax_fwd(s, p, fast):
    """s, p: (N, Tq, Tk) C-contiguous. Row-parallel over the N*Tq rows."""
    N, Tq, Tk = s.shape
    off = Tk - Tq
    zero = s.dtype.type(0.0)
    for r in prange(N * Tq):
        n = r // Tq
        i = r % Tq
        last = i + off                      # last allowed column
        m = s[n, i, 0]
        for j in range(1, last + 1):
            if s[n, i, j] > m:
                m = s[n, i, j]
        tot = zero
        for j in range(last + 1):
            e = exp32(s[n, i, j] - m) if fast else np.exp(s[n, i, j] - m)
            p[n, i, j] = e
            tot += e
        inv = s.dtype.type(1.0) / tot
        for j in range(last + 1):
            p[n, i, j] *= inv
        for j in range(last + 1, Tk):
            p[n, i, j] = zero


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _softmax_bwd(dp, p, ds):
    N, Tq, Tk = p.shape
    off = Tk - Tq
    zero = p.dtype.type(0.0)
    for r in prange(N * Tq):
        n = r // Tq
        i = r % Tq
        last = i + off
        inner = zero
        for j in range(last + 1):
            inner += p[n, i, j] * dp[n, i, j]
        for j in range(last + 1):
            ds[n, i, j] = p[n, i, j] * (dp[n, i, j] - inner)
        for j in range(last + 1, Tk):
            ds[n, i, j] = zero


def causal_softmax_forward_numba(scores: np.ndarray) -> np.ndarray:
    """Same contract as :func:`causal_softmax_forward_numpy`; masked columns are never touched."""
    _check_scores(scores)
    s = np.ascontiguousarray(scores).reshape(-1, *scores.shape[-2:])  # (N, Tq, Tk)
    p = np.empty_like(s)
    _softmax_fwd(s, p, s.dtype == np.float32)
    return p.reshape(scores.shape)


def causal_softmax_backward_numba(dprobs: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Same contract as :func:`causal_softmax_backward_numpy`."""
    _check_scores(probs, "probs")
    if dprobs.shape != probs.shape:
        raise ValueError(f"dprobs shape {dprobs.shape} != probs shape {probs.shape}")
    p = np.ascontiguousarray(probs).reshape(-1, *probs.shape[-2:])    # (N, Tq, Tk)
    dp = np.ascontiguousarray(dprobs, dtype=probs.dtype).reshape(p.shape)
    ds = np.empty_like(p)
    _softmax_bwd(dp, p, ds)
    return ds.reshape(probs.shape)
