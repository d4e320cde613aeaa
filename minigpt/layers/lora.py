"""LoRA: a linear layer plus a trainable low-rank update (the book's appendix E; Hu et al. 2021).

    y = x W + b + s (x A) B,        s = alpha / r                               (eq. 12.1)

W (n_in, n_out) and b are the (usually frozen) base layer, in GPT-2's ``x @ W`` layout; A (n_in, r)
and B (r, n_out) are the adapter, r much smaller than n_in and n_out. s = alpha / r is the book's
corrected scaling (rasbt/LLMs-from-scratch #821, PR #823; Hugging Face PEFT's ``lora_alpha / r``).
With B = 0 (its initial value) the layer is exactly the base layer.

``lora_forward`` / ``lora_backward`` are the adapter alone, s (x A) B: the book's ``LoRALayer``.
``lora_linear_forward`` / ``lora_linear_backward`` are base + adapter: the book's ``LinearWithLoRA``.

The book puts separate adapters on W_query, W_key and W_value, which minigpt (like GPT-2) fuses into
one ``c_attn`` (C, 3C). ``lora_linear_forward`` therefore also takes A and B as equal-length tuples
of k pairs: pair j adapts the j-th of k equal column blocks of W (k = 3 for q, k, v), eq. 12.6.
Every product is one 2-D matrix product over all N = B*T rows, as in ``linear.py``.
"""

from __future__ import annotations

import numpy as np

from minigpt.layers.linear import linear_backward, linear_forward


def lora_forward(x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float):
    """x (..., n_in), A (n_in, r), B (r, n_out) -> out (..., n_out) = scale * (x A) B  (eq. 12.1).

    Cache: ``(x, A, B, u, scale)`` with u = x A (N, r), which dB needs (eq. 12.3).
    """
    n_in, r = A.shape
    x2 = x.reshape(-1, n_in)                               # (N, n_in)
    u = x2 @ A                                             # (N, n_in) @ (n_in, r) -> (N, r)
    out = (scale * u) @ B                                  # (N, r) @ (r, n_out) -> (N, n_out)
    return out.reshape(*x.shape[:-1], B.shape[1]), (x, A, B, u, scale)


def lora_backward(dout: np.ndarray, cache, dA: np.ndarray, dB: np.ndarray) -> np.ndarray:
    """Add dL/dA into ``dA`` (n_in, r) and dL/dB into ``dB`` (r, n_out); return dL/dx (..., n_in).

    Eq. 12.2: du = s dout B^T.  Eq. 12.3: dB = s u^T dout.  Eq. 12.4: dA = x^T du.
    Eq. 12.5: dx = du A^T (the adapter's share; the base layer adds dout W^T).
    """
    x, A, B, u, scale = cache
    n_in, r = A.shape
    x2 = x.reshape(-1, n_in)                               # (N, n_in)
    d2 = dout.reshape(-1, B.shape[1])                      # (N, n_out)
    du = scale * (d2 @ B.T)                                # eq. 12.2: (N, n_out) @ (n_out, r) -> (N, r)
    dB += (scale * u).T @ d2                               # eq. 12.3: (r, N) @ (N, n_out) -> (r, n_out)
    dA += x2.T @ du                                        # eq. 12.4: (n_in, N) @ (N, r) -> (n_in, r)
    dx = du @ A.T                                          # eq. 12.5: (N, r) @ (r, n_in) -> (N, n_in)
    return dx.reshape(*dout.shape[:-1], n_in)


def _pairs(A, B, n_out: int):
    """A, B as lists of k pairs and the column block each pair adapts (eq. 12.6)."""
    As, Bs = (list(A), list(B)) if isinstance(A, (tuple, list)) else ([A], [B])
    k = len(As)
    if len(Bs) != k or n_out % k:
        raise ValueError(f"LoRA: {k} A matrices and {len(Bs)} B matrices for {n_out} output columns; "
                         "give one (A, B) pair, or k pairs that split the columns into k equal blocks")
    width = n_out // k
    for a, b in zip(As, Bs, strict=True):
        if a.shape[1] != b.shape[0] or b.shape[1] != width:
            raise ValueError(f"LoRA: A {a.shape} and B {b.shape} do not fit a ({a.shape[0]}, {width}) "
                             "column block: A is (n_in, r), B is (r, n_out / k)")
    return As, Bs, [(j * width, (j + 1) * width) for j in range(k)]


def lora_linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, A, B, scale: float,
                        base=linear_forward):
    """x (..., n_in), w (n_in, n_out), b (n_out,) or None, A (n_in, r), B (r, n_out), scale = alpha/r
    -> out (..., n_out) = x W + b + scale (x A) B  (eq. 12.1).

    ``base``: the function that computes x W + b; the block and the head pass the backend's own
    ``linear_forward``, so that with B = 0 the output is the plain layer's to the last bit.

    A and B may also be tuples of k pairs, pair j adding to output columns j*n_out/k:(j+1)*n_out/k
    (eq. 12.6; the book's separate W_query / W_key / W_value adapters on the fused c_attn).
    Cache: the base layer's cache, then one adapter cache and column block per pair.
    """
    out, c_base = base(x, w, b)                            # (..., n_out), eq. 3.1
    As, Bs, cols = _pairs(A, B, w.shape[1])
    c_lora = []
    for a, bb, (lo, hi) in zip(As, Bs, cols, strict=True):
        delta, c = lora_forward(x, a, bb, scale)           # (..., n_out / k)
        out[..., lo:hi] += delta
        c_lora.append((c, lo, hi))
    return out, (c_base, c_lora)


def lora_linear_backward(dout: np.ndarray, cache, dw: np.ndarray | None, db: np.ndarray | None,
                         dA, dB) -> np.ndarray:
    """Add the gradients into ``dw``, ``db``, ``dA``, ``dB`` (tuples when the forward had pairs);
    return dL/dx (..., n_in) = dout W^T + sum over pairs of du_j A_j^T (eqs. 3.2, 12.5).

    ``dw`` None: the base weight is frozen and dW = x^T dout (eq. 3.3), the one product as large as
    the base layer's, is not computed at all (with ``db`` None, nor is db): that is where LoRA saves
    time. The adapter's own products are r wide.
    """
    c_base, c_lora = cache
    x, w, has_bias = c_base
    if dw is not None:
        dx = linear_backward(dout, c_base, dw, db)         # eqs. 3.2-3.4
    else:
        d2 = dout.reshape(-1, w.shape[1])                  # (N, n_out)
        if has_bias and db is not None:
            db += d2.sum(axis=0)                           # eq. 3.4
        dx = (d2 @ w.T).reshape(*dout.shape[:-1], w.shape[0])   # eq. 3.2: (N, n_out) @ (n_out, n_in)
    dAs, dBs = (dA, dB) if isinstance(dA, (tuple, list)) else ((dA,), (dB,))
    for (c, lo, hi), da, dbb in zip(c_lora, dAs, dBs, strict=True):
        dx += lora_backward(dout[..., lo:hi], c, da, dbb)  # eq. 12.5, summed over pairs (12.6)
    return dx
