"""Causal softmax over the last axis, skipping the masked (future) columns: the Numba kernel of
``minigpt.layers.attention.causal_softmax`` (same name, signature and result), and the row kernels
that ``kernels.attention_blas`` runs in place.

Shapes: ``s`` is ``(..., Tq, Tk)``. Query row ``i`` (at absolute position ``t0 + i``) may look at
key columns ``j <= t0 + i``. Masked entries of the output are exactly 0 and are never computed.

    forward:   p_ij = exp(s_ij - max_j s_ij) / sum_j exp(s_ij - max_j s_ij)   (allowed j only)
    backward:  ds_ij = p_ij * (dp_ij - sum_k p_ik dp_ik)                       (softmax Jacobian)

The reference is the layer (eqs. 6.2-6.3 and 6.6 of docs/derivations.md); the tests hold this
kernel to it. The backward row kernel has no public twin: it assumes the causal zeros of p (it
skips them), so only the attention kernels, whose p is causal by construction, call it.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels._fast32 import exp32

# The safe fastmath subset: no nnan/ninf, because the reference uses -inf masks.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


# ----------------------------------------------------------------------------- Numba kernels
@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _softmax_fwd(s, p, fast, off):
    """s, p: (N, Tq, Tk) C-contiguous; row i sees columns j <= i + off. Row-parallel over N*Tq."""
    N, Tq, Tk = s.shape
    zero = s.dtype.type(0.0)
    for r in prange(N * Tq):
        n = r // Tq
        i = r % Tq
        last = min(i + off, Tk - 1)         # last allowed column
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
def _softmax_bwd(dp, p, ds, off):
    N, Tq, Tk = p.shape
    zero = p.dtype.type(0.0)
    for r in prange(N * Tq):
        n = r // Tq
        i = r % Tq
        last = min(i + off, Tk - 1)
        inner = zero
        for j in range(last + 1):
            inner += p[n, i, j] * dp[n, i, j]
        for j in range(last + 1):
            ds[n, i, j] = p[n, i, j] * (dp[n, i, j] - inner)
        for j in range(last + 1, Tk):
            ds[n, i, j] = zero


def causal_softmax(s: np.ndarray, t0: int = 0) -> np.ndarray:
    """s (..., Tq, Tk) -> probabilities (..., Tq, Tk), exact zeros where j > t0 + i."""
    if s.ndim < 2 or s.dtype not in (np.float32, np.float64):
        raise ValueError(f"causal_softmax: s must be float32/float64 (..., Tq, Tk), got "
                         f"{s.dtype} {s.shape}")
    if t0 < 0:
        raise ValueError(f"causal_softmax: t0 is a position, >= 0; got {t0}")
    s3 = np.ascontiguousarray(s).reshape(-1, *s.shape[-2:])          # (N, Tq, Tk)
    p = np.empty_like(s3)
    _softmax_fwd(s3, p, s3.dtype == np.float32, t0)
    return p.reshape(s.shape)
