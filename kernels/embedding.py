"""Embedding backward: the kernel of ``minigpt.layers.embedding.embedding_backward`` (same name,
signature and cache ``(idx, t0)``); the forward, a gather, has no kernel.

Shapes: dout (B, T, C), idx (B, T) int, dwte (V, C), dwpe (T_max, C) with t0 + T <= T_max.
    dwte[v] += sum over (b, t) with idx[b, t] == v of dout[b, t]     (repeated ids accumulate)
    dwpe[t0 + t] += sum_b dout[b, t]
A plain ``dwte[idx] += dout`` would keep only one of the repeated ids (a classic bug); the layer
uses ``np.add.at``. The Numba kernel gives each parallel iteration its own block of columns of
dwte (and its own rows of dwpe), so repeated ids never race.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def _check(dout, idx, dwte, dwpe):
    if dout.ndim != 3 or idx.shape != dout.shape[:2]:
        raise ValueError(f"embedding_backward: dout (B,T,C) and idx (B,T) expected, got "
                         f"{dout.shape} and {idx.shape}")
    C = dout.shape[2]
    if dwte.ndim != 2 or dwte.shape[1] != C or dwpe.ndim != 2 or dwpe.shape[1] != C:
        raise ValueError(f"embedding_backward: dwte (V,{C}) and dwpe (T_max,{C}) expected, got "
                         f"{dwte.shape} and {dwpe.shape}")
    if dout.shape[1] > dwpe.shape[0]:
        raise ValueError(f"embedding_backward: T={dout.shape[1]} exceeds {dwpe.shape[0]} positions")
    if idx.size and (idx.min() < 0 or idx.max() >= dwte.shape[0]):
        raise ValueError(f"embedding_backward: token ids must be in [0, {dwte.shape[0]})")
    if not (dwte.flags.c_contiguous and dwpe.flags.c_contiguous):
        raise ValueError("embedding_backward: dwte and dwpe must be C-contiguous")


# ----------------------------------------------------------------------------- Numba kernels
@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _emb_bwd(d, ids, dwte, dwpe, T, col_block):
    N, C = d.shape
    n_blocks = (C + col_block - 1) // col_block
    for blk in prange(n_blocks):             # each iteration owns columns [c0, c1) of dwte
        c0 = blk * col_block
        c1 = min(C, c0 + col_block)
        for n in range(N):
            row = ids[n]
            for c in range(c0, c1):
                dwte[row, c] += d[n, c]
    B = N // T
    for t in prange(T):                      # each iteration owns row t of dwpe
        for b in range(B):
            n = b * T + t
            for c in range(C):
                dwpe[t, c] += d[n, c]


def embedding_backward(dout, cache, dwte, dwpe) -> None:
    """Adds into dwte (V, C) and dwpe (T_max, C) in place (race-free column-block scatter)."""
    idx, t0 = cache
    dwpe = dwpe[t0:]                                                  # rows t0.. (contiguous)
    _check(dout, idx, dwte, dwpe)
    B, T, C = dout.shape
    d = np.ascontiguousarray(dout, dtype=dwte.dtype).reshape(B * T, C)  # (N, C)
    ids = np.ascontiguousarray(idx, dtype=np.int64).reshape(-1)
    _emb_bwd(d, ids, dwte, dwpe, T, 64)
