"""Mean cross-entropy over the counted targets and its gradient, in one pass over the logits: the
kernel of ``minigpt.layers.loss.cross_entropy`` (same name, signature and result).

Shapes: logits (..., V) (leading dims flattened to N rows), targets (...) int; rows whose target equals
``ignore_index`` (-100) count neither in the loss nor in the mean, and get a zero gradient.
    M = number of counted rows (or ``count``, the counted rows of the batch a chunk belongs to)
    loss = (1/M) sum_n [ logsumexp(z_n) - z_n[t_n] ]
    dlogits_n = (softmax(z_n) - onehot(t_n)) / M      (0 for ignored rows)
If every row is ignored there is nothing to average: ValueError, as the layer raises (PyTorch
returns NaN, which an epoch mean would swallow silently).

Subnormal gradients are flushed to 0. A probability below about 1e-38 (exp32 stops at the smallest
normal float32) times 1/(s M) lands below float32's smallest normal number, and every product that
later reads a subnormal runs many times slower on x86 (each one takes a microcode assist): a tied
4-layer model of width 256 with PyTorch's N(0, 1) embeddings (``init="torch"``) trained at about
400 tokens/s instead of 5,800 (``benchmarks/subnormal_speed.py``; docs/kernels.md, "Subnormal
numbers"). Such a gradient is below 1e-38 in
absolute value: flushing it changes nothing a float32 sum of this row could hold.

``inplace=True`` (C-contiguous logits) writes the gradient over the logits, which for GPT-2's
50257-word head saves a (B*T, V) buffer. ``grad=False`` still runs the one-pass kernel (into a
scratch buffer, or over the logits with ``inplace``) and returns ``(loss, None)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels._fast32 import exp32

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def _check(logits: np.ndarray, targets: np.ndarray, ignore_index: int, count: int | None = None):
    if logits.ndim < 1 or logits.dtype not in (np.float32, np.float64):
        raise ValueError(f"cross_entropy: logits must be float32/float64 (..., V), got "
                         f"{logits.dtype} {logits.shape}")
    V = logits.shape[-1]
    z = logits.reshape(-1, V)                                         # (N, V)
    t = np.asarray(targets).reshape(-1)
    if t.shape[0] != z.shape[0] or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"cross_entropy: targets must be integers with shape {logits.shape[:-1]}, "
                         f"got {np.asarray(targets).dtype} {np.asarray(targets).shape}")
    counted = t != ignore_index
    if np.any((t[counted] < 0) | (t[counted] >= V)):
        raise ValueError(f"cross_entropy: target ids must be in [0, {V}) or {ignore_index}")
    M = int(counted.sum())
    if count is not None:                        # a chunk of a batch with `count` counted targets
        if int(count) != count or count < max(1, M):
            raise ValueError(f"count={count} must be a whole number >= 1 and >= the {M} counted "
                             "targets of these logits: it is the number of counted targets of the "
                             "whole batch these logits are a chunk of")
        M = int(count)
    if M == 0:
        raise ValueError(f"every target equals ignore_index={ignore_index}: there is no position to "
                         "average the loss over; give at least one real target id")
    return z, t.astype(np.int64, copy=False), M


# ----------------------------------------------------------------------------- Numba kernel
@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _ce(z, t, ignore_index, inv_m, out, row_loss, fast):
    N, V = z.shape
    dt = z.dtype.type
    for n in prange(N):
        tn = t[n]
        if tn == ignore_index:
            for j in range(V):
                out[n, j] = dt(0.0)
            row_loss[n] = 0.0
            continue
        zt = z[n, tn]
        m = z[n, 0]
        for j in range(1, V):
            if z[n, j] > m:
                m = z[n, j]
        s = dt(0.0)
        for j in range(V):
            e = exp32(z[n, j] - m) if fast else np.exp(z[n, j] - m)
            out[n, j] = e                    # may overwrite z[n, j] when out is z: read first
            s += e
        row_loss[n] = np.float64(m) + np.log(np.float64(s)) - np.float64(zt)
        scale = dt(inv_m) / s
        tiny = np.finfo(z.dtype).tiny
        for j in range(V):
            g = out[n, j] * scale
            out[n, j] = g if g >= tiny else dt(0.0)   # a subnormal gradient is flushed to 0
        out[n, tn] -= dt(inv_m)


def cross_entropy(logits, targets, ignore_index=-100, grad=True, inplace=False, count=None):
    """logits (..., V), targets (...) int -> (loss, dlogits (..., V) or None). ``count``: the M to
    divide by when the logits are one chunk of a batch (the layer's docstring)."""
    z, t, M = _check(logits, targets, ignore_index, count)
    if inplace and logits.flags.c_contiguous:
        d = z                                                         # (N, V) view of the logits
    else:
        z = np.ascontiguousarray(z)
        d = np.empty_like(z)
    row_loss = np.empty(z.shape[0], dtype=np.float64)
    _ce(z, t, ignore_index, 1.0 / M, d, row_loss, z.dtype == np.float32)
    loss = float(row_loss.sum()) / M
    return loss, (d.reshape(logits.shape) if grad else None)
