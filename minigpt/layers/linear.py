"""Affine map in GPT-2's ``x @ W`` layout (W is (in, out), as OpenAI's Conv1D stores it).

    y = x W + b                                                                  (eq. 3.1)

Every product is one 2-D matrix product over all B*T rows: ``x.reshape(-1, n_in) @ w``. A 3-D
``x @ w`` would make NumPy call BLAS once per sequence (B small products instead of one big one),
which is slower and, with a threaded BLAS, synchronises its threads B times as often.
(``kernels/linear.py`` is the same pair with each product split over threads by ``kernels.blas``.)
"""

from __future__ import annotations

import numpy as np

DW_SLAB = 1 << 22  # elements (16 MiB of float32) of dW computed per product


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None):
    """x (..., n_in), w (n_in, n_out), b (n_out,) or None -> out (..., n_out).

    Cache: ``(x, w, has_bias)``; the input is needed for dW (eq. 3.3), the weight for dx (eq. 3.2).
    """
    n_in, n_out = w.shape
    x2 = x.reshape(-1, n_in)                               # (N, n_in)
    out = x2 @ w                                           # (N, n_in) @ (n_in, n_out) -> (N, n_out)
    if b is not None:
        out += b
    return out.reshape(*x.shape[:-1], n_out), (x, w, b is not None)


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
    # dW in slabs of at most DW_SLAB elements, so the product's temporary stays small (the tied LM
    # head's (V, C) gradient would otherwise need a 154 MB temporary for GPT-2)
    if dw.flags.f_contiguous and not dw.flags.c_contiguous:
        dwT = dw.T                                         # (n_out, n_in) C-contiguous view
        step = max(1, DW_SLAB // n_in)
        for o in range(0, n_out, step):                    # rows o:o+step of dW^T
            dwT[o:o + step] += d2[:, o:o + step].T @ x2    # (s, N) @ (N, n_in) -> (s, n_in)
    else:
        step = max(1, DW_SLAB // n_out)
        for i in range(0, n_in, step):                     # rows i:i+step of dW
            dw[i:i + step] += x2[:, i:i + step].T @ d2     # (s, N) @ (N, n_out) -> (s, n_out)
    if has_bias:
        db += d2.sum(axis=0)                               # (N, n_out) -> (n_out,)
    dx = d2 @ w.T                                          # (N, n_out) @ (n_out, n_in) -> (N, n_in)
    return dx.reshape(*dout.shape[:-1], n_in)
