"""The heads: what the model puts on top of its final hidden states (the output of ``ln_f``).

    LM head              x (B, T, C) -> logits (B, T, V)      logits = x W_head^T        (eq. 9.1)
    classification head  x (B, T, C) -> logits (B, n)         logits = pool(x) W + b     (eq. 11.5)

The LM head scores every vocabulary token at every position (pretraining, instruction tuning, DPO,
generation). The classification head (chapter 6) pools one vector per sequence
(``layers/pooling.py``) and applies a linear layer with a bias, ``out_head``: C -> n_classes.
Pooling *before* the linear layer gives the same logits as the book's ``model(x)[:, -1, :]`` (the
head at every position, then the last row) because the head acts on each position alone, and it
multiplies B rows instead of B*T.

Composition, not math: the ops are the layers' (through ``backend.ops()``, like the block); each
forward returns ``(out, cache)`` and each backward adds into the gradients it is given and returns
the gradient of ``x``.
"""

from __future__ import annotations

import numpy as np

from minigpt import backend


def lm_head_forward(x: np.ndarray, w_head: np.ndarray):
    """x (B, T, C), w_head (V, C) -> logits (B, T, V). ``w_head`` is stored (V, C) like ``wte``, so
    the head can be tied; it enters the linear layer as the (C, V) view ``w_head.T`` (eq. 9.1)."""
    return backend.ops().linear_forward(x, w_head.T, None)                 # (B, T, C) -> (B, T, V)


def lm_head_backward(dlogits: np.ndarray, cache, dw_head: np.ndarray) -> np.ndarray:
    """dlogits (B, T, V) -> dx (B, T, C); adds dW_head (V, C) into ``dw_head`` through its
    transposed view (eq. 9.1). When tied, ``dw_head`` is ``wte``'s gradient (eq. 9.2)."""
    return backend.ops().linear_backward(dlogits, cache, dw_head.T, None)  # (B, T, V) -> (B, T, C)


def classifier_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, pooling: str,
                       lengths: np.ndarray | None):
    """x (B, T, C), w (C, n), b (n,) -> logits (B, n). Cache: the pooling's and the linear layer's."""
    ops = backend.ops()
    pooled, c_pool = ops.pooling_forward(x, pooling, lengths)              # (B, T, C) -> (B, C)  eq. 11.1-11.2
    logits, c_lin = ops.linear_forward(pooled, w, b)                       # (B, C) -> (B, n)     eq. 11.5
    return logits, (c_pool, c_lin)


def classifier_backward(dlogits: np.ndarray, cache, dw: np.ndarray, db: np.ndarray) -> np.ndarray:
    """dlogits (B, n) -> dx (B, T, C); adds into ``dw`` (C, n) and ``db`` (n,) (eq. 11.6)."""
    ops = backend.ops()
    c_pool, c_lin = cache
    dpooled = ops.linear_backward(dlogits, c_lin, dw, db)                  # (B, n) -> (B, C)     eqs. 3.2-3.4
    return ops.pooling_backward(dpooled, c_pool)                           # (B, C) -> (B, T, C)  eqs. 11.3-11.4
