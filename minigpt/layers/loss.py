"""Cross-entropy from logits: the negative log probability of the right next token.

    L = -(1/N) sum over counted positions n of log softmax(z_n)[y_n]            (eq. 7.1)

Positions whose target is ``ignore_index`` (-100, as PyTorch) are not counted: they add nothing to
the sum and do not enter N. The log-softmax is computed as z - max(z) - log(sum(exp(z - max(z))))
(eq. 7.2), never as log(softmax(z)): a probability that underflows to 0 would give log(0) = -inf.
"""

from __future__ import annotations

import numpy as np


def check_count(counted: int, count: int | None) -> int:
    """The N to divide by: ``count`` when given (it must cover this chunk's counted targets), else
    the counted targets themselves."""
    if count is None:
        return counted
    if int(count) != count or count < max(1, counted):
        raise ValueError(f"count={count} must be a whole number >= 1 and >= the {counted} counted "
                         "targets of these logits: it is the number of counted targets of the "
                         "whole batch these logits are a chunk of")
    return int(count)


def cross_entropy(logits: np.ndarray, targets: np.ndarray, ignore_index: int = -100,
                  grad: bool = True, inplace: bool = False, count: int | None = None):
    """logits (..., V), targets (...) int -> (loss, dlogits (..., V) or None).

    One pass over the logits computes the loss and, when ``grad``, its gradient (eq. 7.3):

        dL/dz_n = (softmax(z_n) - onehot(y_n)) / N   for counted n,   0 for ignored n.

    ``inplace=True`` allows the gradient to overwrite ``logits`` (the model no longer needs them):
    the kernel (``kernels/cross_entropy.py``) then saves one (B*T, V) buffer, 103 MB for GPT-2 at
    batch 4 x 128. This reference ignores it and returns a new array.

    ``count``: the N of eq. 7.1 when these logits are one chunk of a larger batch (the LM head's
    loss in row chunks, ``minigpt/heads.py``): the loss returned is the chunk's sum divided by
    ``count``, the gradient is divided by ``count``, and the chunks' losses add up to the batch's.
    A chunk may then hold no counted target at all.

    Raises ValueError when every target is ignored: there is nothing to average (PyTorch returns
    NaN; a NaN loss would be averaged into an epoch's loss silently). The kernel raises the same.
    """
    V = logits.shape[-1]
    z = logits.reshape(-1, V)                              # (N_all, V)
    y = targets.reshape(-1)                                # (N_all,)
    counted = y != ignore_index                            # (N_all,) bool
    n = check_count(int(counted.sum()), count)
    if n == 0:
        raise ValueError(f"every target equals ignore_index={ignore_index}: there is no position to "
                         "average the loss over; give at least one real target id")
    rows = np.arange(z.shape[0])
    y_safe = np.where(counted, y, 0)                       # any valid index for ignored rows
    e = z - z.max(axis=1, keepdims=True)                   # (N_all, V)  shifted logits, max is 0
    z_y = e[rows, y_safe].copy()                           # (N_all,)    shifted logit of the target
    np.exp(e, out=e)                                       # (N_all, V)  in place: exp(z - max)
    sum_e = e.sum(axis=1)                                  # (N_all,)
    logp_y = z_y - np.log(sum_e)                           # (N_all,)    eq. 7.2
    loss = -float(logp_y[counted].sum(dtype=np.float64)) / n
    if not grad:
        return loss, None
    e /= sum_e[:, None]                                    # (N_all, V)  softmax probabilities
    e[rows[counted], y[counted]] -= 1                      # p - onehot(y)
    e[~counted] = 0
    e *= logits.dtype.type(1.0 / n)                        # eq. 7.3
    return loss, e.reshape(logits.shape)
