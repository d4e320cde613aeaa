"""Dense matrix product C = A @ B as a tiled Numba kernel, for teaching (the model uses BLAS).

Shapes: a (M, K), b (K, N) -> (M, N). The Numba kernel gives each parallel iteration a block of
rows of C (so writes never overlap), walks K in blocks so a panel of B stays in cache, and keeps
the innermost loop a contiguous axpy over a row of B that LLVM vectorises. It is a benchmark row
and an explanation, not the default path: ``minigpt bench`` measures it against NumPy's ``@``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def _check(a, b):
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: need (M, K) @ (K, N), got {a.shape} @ {b.shape}")
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float64):
        raise ValueError(f"matmul: a and b must share float32/float64, got {a.dtype}, {b.dtype}")


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _matmul_tiled(a, b, c, bm, bk, bn):
    M, K = a.shape
    N = b.shape[1]
    n_row_blocks = (M + bm - 1) // bm
    for rb in prange(n_row_blocks):
        i0 = rb * bm
        i1 = min(M, i0 + bm)
        for i in range(i0, i1):
            for j in range(N):
                c[i, j] = c.dtype.type(0.0)
        for j0 in range(0, N, bn):
            j1 = min(N, j0 + bn)
            for k0 in range(0, K, bk):
                k1 = min(K, k0 + bk)
                for i in range(i0, i1):
                    for k in range(k0, k1):
                        aik = a[i, k]
                        for j in range(j0, j1):
                            c[i, j] += aik * b[k, j]


def matmul(a, b):
    """a (M, K) @ b (K, N) -> (M, N), computed by the tiled Numba kernel."""
    _check(a, b)
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    c = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    _matmul_tiled(a, b, c, 32, 128, 256)
    return c
