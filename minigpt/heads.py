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


LOSS_CHUNK_BYTES = 1 << 25   # 32 MiB: the most logits one row chunk of ``lm_head_loss`` holds


def loss_chunk_rows(n_rows: int, vocab_size: int, itemsize: int) -> int:
    """Rows per chunk of ``lm_head_loss``: chunks of at most LOSS_CHUNK_BYTES of logits, as even as
    they can be (GPT-2, batch 4 x 128: 4 chunks of 128 rows, 25 MiB each, for one of 98 MiB)."""
    most = max(1, LOSS_CHUNK_BYTES // (vocab_size * itemsize))
    n_chunks = -(-n_rows // most)
    return max(1, -(-n_rows // n_chunks))


def lm_head_loss(x: np.ndarray, w_head: np.ndarray, targets: np.ndarray,
                 dw_head: np.ndarray | None = None, grad: bool = True,
                 chunk_rows: int | None = None):
    """The LM head and its cross-entropy, in row chunks, with the head's backward folded in:
    x (B, T, C), targets (B, T) (-100: not counted) -> (loss, dx (B, T, C) or None).

    The logits (B, T, V) are the largest array of a training step (98 MiB for GPT-2 at batch
    4 x 128), and nothing needs them whole: the loss is a sum over positions (eq. 7.1) and each
    row's gradient needs only its own row (eq. 7.3). So the rows go through in chunks, and each
    chunk's logits are freed before the next chunk's are made:

        logits_c = x_c W_head^T                                   (eq. 9.1)
        loss    += sum over the chunk's counted rows / N          (eqs. 7.1-7.2; N: the whole batch's)
        dlogits_c = (softmax(logits_c) - onehot) / N, over logits_c   (eq. 7.3)
        dx_c     = dlogits_c W_head;   dW_head += dlogits_c^T x_c     (eqs. 3.2, 9.1)

    The dW_head terms of the chunks add up to the one product dlogits^T x over all rows. One
    chunk (``chunk_rows`` >= B*T) is the unchunked computation, step for step; with several, the
    products are summed in another order, so the bits can differ in the last place.

    ``grad`` False: the loss only (evaluation). ``dw_head`` None with ``grad``: a frozen head,
    dx only. ``chunk_rows``: rows per chunk (default ``loss_chunk_rows``). ``dw_head`` is added to,
    not overwritten: the caller zeroes it (when tied, it is wte's gradient, eq. 9.2).
    """
    ops = backend.ops()
    C = x.shape[-1]
    x2 = x.reshape(-1, C)                                                  # (N_all, C)
    t = targets.reshape(-1)                                                # (N_all,)
    n = int(np.count_nonzero(t != -100))                                   # N of eq. 7.1
    if n == 0:
        raise ValueError("every target equals ignore_index=-100: there is no position to average "
                         "the loss over; give at least one real target id")
    rows = chunk_rows or loss_chunk_rows(x2.shape[0], w_head.shape[0], x2.itemsize)
    dx = np.empty_like(x2) if grad else None                               # (N_all, C)
    loss = 0.0
    for r0 in range(0, x2.shape[0], rows):
        r1 = min(r0 + rows, x2.shape[0])
        logits, cache = lm_head_forward(x2[r0:r1], w_head)                 # (n_c, C) -> (n_c, V)
        part, dlogits = ops.cross_entropy(logits, t[r0:r1], grad=grad, inplace=True, count=n)
        loss += part
        if grad:
            dx[r0:r1] = lm_head_backward(dlogits, cache, dw_head)         # (n_c, V) -> (n_c, C)
        del logits, dlogits, cache
    return loss, (dx.reshape(x.shape) if grad else None)


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
