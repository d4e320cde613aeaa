"""Token + position embedding: the first layer of GPT-2.

    x[b, t, :] = wte[idx[b, t], :] + wpe[t0 + t, :]                           (derivations eq. 1.1)

``t0`` is the position of the first token (0 in training; the number of tokens already cached when
generating with a KV cache).
"""

from __future__ import annotations

import numpy as np


def embedding_forward(idx: np.ndarray, wte: np.ndarray, wpe: np.ndarray, t0: int = 0):
    """idx (B, T) int, wte (V, C), wpe (T_max, C) -> out (B, T, C).

    Cache: ``(idx, t0)``; the ids are all the backward needs: the embedding is a lookup, linear in
    the tables, so its Jacobian is a selection and no activation has to be kept.
    """
    T = idx.shape[1]
    tok = wte[idx]                           # (B, T) -> (B, T, C)   gather rows of wte
    pos = wpe[t0:t0 + T]                     # (T, C)
    out = tok + pos                          # (B, T, C) + (T, C) -> (B, T, C)
    return out, (idx, t0)


def embedding_backward(dout: np.ndarray, cache, dwte: np.ndarray, dwpe: np.ndarray) -> None:
    """Add the gradients of ``wte`` and ``wpe`` into ``dwte`` (V, C) and ``dwpe`` (T_max, C).

    Implements eq. 1.2: dwte[v] = sum over all (b, t) with idx[b, t] == v of dout[b, t]; a token that
    appears twice receives both contributions. ``dwte[idx] += dout`` would be wrong: fancy-index
    assignment writes each repeated row once (only one occurrence survives; NumPy does not say
    which). ``np.add.at`` is the
    unbuffered scatter-add that accumulates every occurrence.
    Eq. 1.3: dwpe[t0 + t] = sum over b of dout[b, t] (each position is used once per sequence).
    """
    idx, t0 = cache
    B, T, C = dout.shape
    np.add.at(dwte, idx.reshape(-1), dout.reshape(B * T, C))   # (B*T, C) scattered into (V, C)
    dwpe[t0:t0 + T] += dout.sum(axis=0)                        # (B, T, C) -> (T, C)
