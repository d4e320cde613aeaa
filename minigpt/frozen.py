"""Frozen weights: the backward of a linear layer without its weight gradient.

A frozen parameter is not updated, so its gradient is never needed. For a linear layer
y = x W + b (eq. 3.1) the backward has three products (eqs. 3.2-3.4):

    dx = dout W^T        needed: the layers below still learn (or the adapters beside W do)
    dW = x^T dout        as large as the forward's product: skipped when W is frozen
    db = sum of dout     cheap: computed only when b trains

This is where LoRA and the book's "last block only" finetuning save time: with W frozen the
backward of each frozen linear costs one product instead of two. The block (``minigpt/block.py``),
the heads (``minigpt/heads.py``) and the LoRA linear (``minigpt/layers/lora.py``) call the
skipping path when they are handed ``None`` for dW; the model (``GPTModel._active_grads``) hands
``None`` for every frozen weight, so a frozen parameter's gradient buffer is never written.
"""

from __future__ import annotations

import numpy as np

from minigpt import backend


def frozen_linear_backward(dout: np.ndarray, cache, db: np.ndarray | None) -> np.ndarray:
    """dout (..., n_out) -> dx (..., n_in) = dout W^T (eq. 3.2); adds the rows of dout into ``db``
    (eq. 3.4) when it is given and the layer has a bias. dW (eq. 3.3) is not computed.

    ``cache`` is ``linear_forward``'s ``(x, w, has_bias)``. dx is the forward's product with W^T in
    place of W, so it runs on the backend's matrix product (``ops.linear_forward``, its thread split
    included) and ``w`` may be a transposed view (the LM head's)."""
    _, w, has_bias = cache
    n_out = w.shape[1]
    if has_bias and db is not None:
        db += dout.reshape(-1, n_out).sum(axis=0)                          # eq. 3.4: (N, n_out) -> (n_out,)
    dx, _ = backend.ops().linear_forward(dout, w.T, None)                  # eq. 3.2: (..., n_out) -> (..., n_in)
    return dx
