"""Affine map y = x W + b: the kernels of ``minigpt.layers.linear`` (same names, signatures and cache
``(x, w, has_bias)``), with every product run by ``kernels.blas.gemm``.

The layer's products are NumPy's ``@``, and OpenBLAS's own threads spin-wait inside every product;
``gemm`` pins BLAS to one thread and splits each large product into one block per thread instead
(see ``kernels/blas.py`` for why and what it measured). The math and the transposed ``dw`` view of
the LM head are the layer's (eqs. 3.1-3.4 of docs/derivations.md); where the layer adds dW in slabs
of 16 MiB, the kernel has BLAS add the product into ``dw`` itself (``gemm_acc``, beta = 1): no
temporary, one pass.
"""

from __future__ import annotations

import numpy as np

from kernels import decode
from kernels.blas import gemm, gemm_acc


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None):
    """x (..., n_in), w (n_in, n_out), b (n_out,) or None -> (out (..., n_out), cache)."""
    n_in, n_out = w.shape
    x2 = x.reshape(-1, n_in)                                          # (N, n_in)
    if decode.applies(x2, w, b):                                      # a few rows (decoding):
        out = decode.gemv(x2, w, b)                                   # split by output columns
        return out.reshape(*x.shape[:-1], n_out), (x, w, b is not None)
    out = gemm(x2, w)                                                 # (N, n_out)
    if b is not None:
        out += b
    return out.reshape(*x.shape[:-1], n_out), (x, w, b is not None)


def linear_backward(dout: np.ndarray, cache, dw: np.ndarray, db: np.ndarray | None) -> np.ndarray:
    """Adds dL/dW into ``dw`` (may be a transposed view) and dL/db into ``db``; returns dx."""
    x, w, has_bias = cache
    n_in, n_out = w.shape
    x2 = x.reshape(-1, n_in)                                          # (N, n_in)
    d2 = dout.reshape(-1, n_out)                                      # (N, n_out)
    if dw.flags.f_contiguous and not dw.flags.c_contiguous:
        gemm_acc(d2.T, x2, dw.T)                                      # dW^T (n_out, n_in) += dout^T x
    else:
        gemm_acc(x2.T, d2, dw)                                        # dW (n_in, n_out) += x^T dout
    if has_bias:
        db += d2.sum(axis=0)                                          # (n_out,)
    dx = gemm(d2, w.T)                                                # (N, n_in)
    return dx.reshape(*dout.shape[:-1], n_in)
