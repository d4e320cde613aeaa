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
from minigpt.frozen import frozen_linear_backward


def lm_head_forward(x: np.ndarray, w_head: np.ndarray):
    """x (B, T, C), w_head (V, C) -> logits (B, T, V). ``w_head`` is stored (V, C) like ``wte``, so
    the head can be tied; it enters the linear layer as the (C, V) view ``w_head.T`` (eq. 9.1)."""
    return backend.ops().linear_forward(x, w_head.T, None)                 # (B, T, C) -> (B, T, V)


def lm_head_backward(dlogits: np.ndarray, cache, dw_head: np.ndarray | None) -> np.ndarray:
    """dlogits (B, T, V) -> dx (B, T, C); adds dW_head (V, C) into ``dw_head`` through its
    transposed view (eq. 9.1). When tied, ``dw_head`` is ``wte``'s gradient (eq. 9.2).
    ``dw_head`` None: the head is frozen, and only dx = dlogits W_head (eq. 3.2) is computed."""
    if dw_head is None:
        return frozen_linear_backward(dlogits, cache, None)                 # (B, T, V) -> (B, T, C)
    return backend.ops().linear_backward(dlogits, cache, dw_head.T, None)  # (B, T, V) -> (B, T, C)


def classifier_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, pooling: str,
                       lengths: np.ndarray | None, lora=None):
    """x (B, T, C), w (C, n), b (n,) -> logits (B, n). Cache: the pooling's and the linear layer's.

    ``lora``: None, or ``(A, B, scale)``, the head's LoRA adapter (A (C, r), B (r, n)): the book's
    ``replace_linear_with_lora`` wraps the new head too, logits = p W + b + s (p A) B (eq. 12.1).
    """
    ops = backend.ops()
    pooled, c_pool = ops.pooling_forward(x, pooling, lengths)              # (B, T, C) -> (B, C)  eq. 11.1-11.2
    if lora is None:
        logits, c_lin = ops.linear_forward(pooled, w, b)                   # (B, C) -> (B, n)     eq. 11.5
    else:
        logits, c_lin = ops.lora_linear_forward(pooled, w, b, *lora,       # (B, C) -> (B, n)     eq. 12.1
                                                base=ops.linear_forward)
    return logits, (c_pool, c_lin, lora is not None)


def classifier_backward(dlogits: np.ndarray, cache, dw: np.ndarray | None, db: np.ndarray | None,
                        dA: np.ndarray | None = None, dB: np.ndarray | None = None) -> np.ndarray:
    """dlogits (B, n) -> dx (B, T, C); adds into ``dw`` (C, n) and ``db`` (n,) (eq. 11.6), and into
    the adapter's ``dA``, ``dB`` when the forward had one (eqs. 12.2-12.5). ``dw`` / ``db`` None:
    frozen, not computed."""
    ops = backend.ops()
    c_pool, c_lin, has_lora = cache
    if has_lora:
        dpooled = ops.lora_linear_backward(dlogits, c_lin, dw, db, dA, dB)  # (B, n) -> (B, C)    eqs. 12.2-12.5
    elif dw is None:
        dpooled = frozen_linear_backward(dlogits, c_lin, db)               # (B, n) -> (B, C)     eqs. 3.2, 3.4
    else:
        dpooled = ops.linear_backward(dlogits, c_lin, dw, db)              # (B, n) -> (B, C)     eqs. 3.2-3.4
    return ops.pooling_backward(dpooled, c_pool)                           # (B, C) -> (B, T, C)  eqs. 11.3-11.4
