"""Causal multi-head self-attention (the part between the two projections).

The block computes ``qkv = ln_1(x) @ W_attn + b_attn`` (a linear layer) and hands qkv (B, T, 3C) here:

    q, k, v  = split(qkv) into H heads of size hs = C / H         (B, H, T, hs) each
    s        = q k^T / sqrt(hs)                                      (eq. 6.1)
    s[i, j]  = -inf  for j > i (a query never sees the future)       (eq. 6.2)
    a        = softmax_j(s)                                          (eq. 6.3)
    a'       = dropout(a)                                            (eq. 5.1)
    y        = a' v,  heads merged back to (B, T, C)                 (eq. 6.4)

The output projection after it is again a linear layer, called by the block.
"""

from __future__ import annotations

import math

import numpy as np

from minigpt.layers.dropout import dropout_backward, dropout_forward


def split_heads(x: np.ndarray, n_heads: int) -> np.ndarray:
    """(B, T, C) -> (B, H, T, hs)."""
    B, T, C = x.shape
    return x.reshape(B, T, n_heads, C // n_heads).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(B, H, T, hs) -> (B, T, C)."""
    B, H, T, hs = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * hs)


def softmax(s: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (eq. 6.3), shifted by the row max so exp never overflows;
    entries equal to -inf get weight exactly 0."""
    e = np.exp(s - s.max(axis=-1, keepdims=True))          # (..., N)
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(da: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Gradient through a = softmax(s): ds = a * (da - sum_j(da * a)) (eq. 6.6).

    The Jacobian is diag(a) - a a^T; the second term is why a softmax backward is not just da * a
    (forgetting it is the most common from-scratch bug; a negative control in the tests).
    """
    return a * (da - (da * a).sum(axis=-1, keepdims=True))


def causal_softmax(s: np.ndarray, t0: int = 0) -> np.ndarray:
    """Row softmax of scores s (..., Tq, Tk) where query i (at absolute position t0 + i) may only see
    keys j <= t0 + i (eqs. 6.2-6.3). Masked entries are set to -inf *before* the softmax, so they get
    exactly zero weight; the row max is taken over the allowed entries (the diagonal is always
    allowed), so exp never overflows.
    """
    Tq, Tk = s.shape[-2:]
    future = np.arange(Tk)[None, :] > (t0 + np.arange(Tq))[:, None]   # (Tq, Tk) bool
    return softmax(np.where(future, -np.inf, s))           # (..., Tq, Tk)


def attention_forward(qkv: np.ndarray, n_heads: int, drop_rate: float = 0.0,
                      rng: np.random.Generator | None = None, drop_mask: np.ndarray | None = None):
    """qkv (B, T, 3C) -> out (B, T, C). Dropout on the attention weights when rng is given.

    ``drop_mask``: a dropout mask of an earlier call (its cache's fifth entry) to apply again
    instead of drawing one, so that a recomputation repeats the forward exactly (the block's
    backward recomputes the weights, ``minigpt/block.py``); ``drop_rate`` and ``rng`` are then
    not used.

    Cache: ``(q, k, v, a, drop_cache, scale)``: the per-head q, k, v (B, H, T, hs) and the softmax
    weights a (B, H, T, T). ``a`` is the largest tensor of a block (it grows with T^2); the backward
    needs it for the softmax Jacobian (eq. 6.6), and recomputing it would cost another q k^T.
    """
    C = qkv.shape[-1] // 3
    q = split_heads(qkv[..., :C], n_heads)                 # (B, T, C) -> (B, H, T, hs)
    k = split_heads(qkv[..., C:2 * C], n_heads)            # (B, H, T, hs)
    v = split_heads(qkv[..., 2 * C:], n_heads)             # (B, H, T, hs)
    scale = qkv.dtype.type(1.0 / math.sqrt(C // n_heads))
    s = (q @ k.transpose(0, 1, 3, 2)) * scale              # (B, H, T, hs) @ (B, H, hs, T) -> (B, H, T, T)
    a = causal_softmax(s)                                  # (B, H, T, T), rows sum to 1
    if drop_mask is None:
        a_drop, drop_cache = dropout_forward(a, drop_rate, rng)
    else:
        a_drop, drop_cache = a * drop_mask, drop_mask      # the same mask again (eq. 5.1)
    y = a_drop @ v                                         # (B, H, T, T) @ (B, H, T, hs) -> (B, H, T, hs)
    out = merge_heads(y)                                   # (B, T, C)
    return out, (q, k, v, a, drop_cache, scale)


def attention_backward(dout: np.ndarray, cache) -> np.ndarray:
    """dout (B, T, C) -> dqkv (B, T, 3C).

    In the forward pass this was y = a' v, so now (eq. 6.5)  da' = dy v^T  and  dv = a'^T dy.
    Dropout passes da' back through its mask (eq. 5.2) to da.
    Softmax Jacobian (eq. 6.6):  ds = a * (da - sum_j(da * a)); masked entries have a = 0, so
    they get ds = 0 and the -inf never enters the backward.
    Then s = q k^T * scale (eq. 6.7):  dq = ds k * scale,  dk = ds^T q * scale.
    """
    q, k, v, a, drop_cache, scale = cache
    H = q.shape[1]
    dy = split_heads(dout, H)                              # (B, T, C) -> (B, H, T, hs)
    a_drop = a if drop_cache is None else a * drop_cache   # the weights the forward really used
    da = dy @ v.transpose(0, 1, 3, 2)                      # (B, H, T, hs) @ (B, H, hs, T) -> (B, H, T, T)
    dv = a_drop.transpose(0, 1, 3, 2) @ dy                 # (B, H, T, T) @ (B, H, T, hs) -> (B, H, T, hs)
    da = dropout_backward(da, drop_cache)                  # (B, H, T, T)
    ds = softmax_backward(da, a) * scale                   # (B, H, T, T)   eq. 6.6, then 6.7
    dq = ds @ k                                            # (B, H, T, T) @ (B, H, T, hs) -> (B, H, T, hs)
    dk = ds.transpose(0, 1, 3, 2) @ q                      # (B, H, T, hs)
    return np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)  # (B, T, 3C)


def attention_step(qkv: np.ndarray, n_heads: int, k_cache: np.ndarray, v_cache: np.ndarray,
                   t0: int) -> np.ndarray:
    """Inference with a KV cache: qkv (B, T, 3C) for T new tokens at positions t0 .. t0+T-1.

    Writes the new keys and values into k_cache, v_cache (B, H, T_max, hs) at t0 and attends over all
    t0 + T cached positions with the same causal rule (query t0 + i sees keys <= t0 + i). No dropout
    and no backward: this path only generates.
    """
    T, C = qkv.shape[1], qkv.shape[-1] // 3
    q = split_heads(qkv[..., :C], n_heads)                 # (B, H, T, hs)
    k_cache[:, :, t0:t0 + T] = split_heads(qkv[..., C:2 * C], n_heads)
    v_cache[:, :, t0:t0 + T] = split_heads(qkv[..., 2 * C:], n_heads)
    k = k_cache[:, :, :t0 + T]                             # (B, H, t0+T, hs)
    v = v_cache[:, :, :t0 + T]
    scale = qkv.dtype.type(1.0 / math.sqrt(C // n_heads))
    s = (q @ k.transpose(0, 1, 3, 2)) * scale              # (B, H, T, t0+T)
    a = causal_softmax(s, t0)                              # (B, H, T, t0+T)
    return merge_heads(a @ v)                              # (B, H, T, hs) -> (B, T, C)
