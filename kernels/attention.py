"""Causal multi-head attention: the kernels of ``minigpt.layers.attention`` (same names, signatures
and caches: ``attention_forward``, ``attention_backward``, ``attention_step``).

Each takes the fused qkv (B, T, 3C) like the layer and picks one of two head-level kernels:
- for T >= ``BLAS_MIN_T`` (training shapes) ``kernels.attention_blas``: products in split BLAS,
  the causal softmax in Numba (measured faster at T = 128: BLAS does twice the multiply-adds of
  the causal half at several times the rate);
- below it, and for KV-cached decoding, the fused per-(b, h) Numba kernels of this file, which
  compute only the allowed (causal) half; tiny problems run their serial twin (no parallel launch).
``*_fused`` / ``*_blas`` force one of the two (the tests hold each to the layer; the bench times
both). The dropout mask is drawn exactly as ``minigpt.layers.dropout`` draws it, so both paths
see the same mask from the same Generator.

The head-level kernels (any strides: views of a fused ``qkv`` buffer work without copies):
    q: (B, H, Tq, hs)     k, v: (B, H, Tk, hs) with Tk >= Tq
    out: (B, H, Tq, hs)   att: (B, H, Tq, Tk) softmax probabilities, exactly 0 where masked
Query ``i`` sees keys ``j <= i + (Tk - Tq)`` (the usual lower triangle when Tq == Tk; with a
KV cache the new queries are the last Tq positions).

    s_ij = q_i . k_j / sqrt(hs)              (allowed j only; the masked half is never computed)
    p = causal_softmax(s);  w = p * drop_mask (optional dropout weights from NumPy)
    out_i = sum_j w_ij v_j
backward (dout -> dq, dk, dv):
    dv_j = sum_i w_ij dout_i;   dw_ij = dout_i . v_j;   dp = dw * drop_mask
    ds_ij = p_ij (dp_ij - sum_k p_ik dp_ik) / sqrt(hs)
    dq_i = sum_j ds_ij k_j;     dk_j = sum_i ds_ij q_i

The Numba kernels run one (b, h) pair per parallel iteration: every pair owns its slices of
out/dq/dk/dv, so there are no races, and (T, hs) tiles are copied to contiguous scratch first.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels import attention_blas
from kernels._fast32 import exp32

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
SERIAL_BELOW = 1 << 20   # multiply-adds: smaller problems run the serial twin (decoding)
BLAS_MIN_T = 32          # from this many positions on, training attention runs attention_blas


def _check_qkv(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be 4-D (B, H, T, hs); got {q.shape}, {k.shape}, {v.shape}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {q.shape} and k/v {k.shape}/{v.shape} disagree on B, H or hs")
    if k.shape[2] < q.shape[2]:
        raise ValueError(f"need Tk >= Tq for causal attention, got Tq={q.shape[2]} Tk={k.shape[2]}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (np.float32, np.float64):
        raise ValueError(f"q, k, v must share one float dtype (float32/float64), got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")


# ----------------------------------------------------------------------------- Numba kernels
# Strided operands (q, k, v, out, dout, dq, dk, dv) are passed as a 1-D array aliasing their memory
# plus their 4 strides in elements, so one compiled signature per dtype serves every layout (views of
# a fused qkv buffer, a KV cache slice, a contiguous array) and Numba's fast dispatch path is kept.
@njit(inline="always")
def _ix(s, b, h, t, d):
    return s[0] * b + s[1] * h + s[2] * t + s[3] * d


@njit(inline="always")
def _attn_fwd_bh(q, sq, k, sk, v, sv, out, so, mask, use_mask, att, fast, bh):
    """One (b, h) pair: scores of the allowed keys, softmax, weighted sum of values."""
    B, H, Tq, Tk = att.shape
    hs = sq[4]
    off = Tk - Tq
    dt = q.dtype.type
    scale = dt(1.0 / np.sqrt(hs))
    zero = dt(0.0)
    b = bh // H
    h = bh % H
    Q = np.empty((Tq, hs), dtype=q.dtype)
    K = np.empty((Tk, hs), dtype=q.dtype)
    V = np.empty((Tk, hs), dtype=q.dtype)
    for i in range(Tq):
        for d in range(hs):
            Q[i, d] = q[_ix(sq, b, h, i, d)] * scale
    for j in range(Tk):
        for d in range(hs):
            K[j, d] = k[_ix(sk, b, h, j, d)]
            V[j, d] = v[_ix(sv, b, h, j, d)]
    acc = np.empty(hs, dtype=q.dtype)
    for i in range(Tq):
        last = i + off
        a = att[b, h, i]
        m = zero
        for j in range(last + 1):
            s = zero
            for d in range(hs):
                s += Q[i, d] * K[j, d]
            a[j] = s
            if j == 0 or s > m:
                m = s
        tot = zero
        for j in range(last + 1):
            e = exp32(a[j] - m) if fast else np.exp(a[j] - m)
            a[j] = e
            tot += e
        inv = dt(1.0) / tot
        for d in range(hs):
            acc[d] = zero
        for j in range(last + 1):
            pj = a[j] * inv
            a[j] = pj
            wj = pj * mask[b, h, i, j] if use_mask else pj
            for d in range(hs):
                acc[d] += wj * V[j, d]
        for j in range(last + 1, Tk):
            a[j] = zero
        for d in range(hs):
            out[_ix(so, b, h, i, d)] = acc[d]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _attn_fwd(q, sq, k, sk, v, sv, out, so, mask, use_mask, att, fast):
    B, H = att.shape[0], att.shape[1]
    for bh in prange(B * H):
        _attn_fwd_bh(q, sq, k, sk, v, sv, out, so, mask, use_mask, att, fast, bh)


@njit(cache=True, fastmath=FASTMATH)
def _attn_fwd_serial(q, sq, k, sk, v, sv, out, so, mask, use_mask, att, fast):
    """Same pairs on the calling thread: decoding has a few, tiny ones."""
    B, H = att.shape[0], att.shape[1]
    for bh in range(B * H):
        _attn_fwd_bh(q, sq, k, sk, v, sv, out, so, mask, use_mask, att, fast, bh)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _attn_bwd(dout, sdo, q, sq, k, sk, v, sv, att, mask, use_mask, dq, sdq, dk, sdk, dv, sdv):
    B, H, Tq, Tk = att.shape
    hs = sq[4]
    off = Tk - Tq
    dt = q.dtype.type
    scale = dt(1.0 / np.sqrt(hs))
    zero = dt(0.0)
    for bh in prange(B * H):
        b = bh // H
        h = bh % H
        Q = np.empty((Tq, hs), dtype=q.dtype)
        dO = np.empty((Tq, hs), dtype=q.dtype)
        K = np.empty((Tk, hs), dtype=q.dtype)
        V = np.empty((Tk, hs), dtype=q.dtype)
        for i in range(Tq):
            for d in range(hs):
                Q[i, d] = q[_ix(sq, b, h, i, d)]
                dO[i, d] = dout[_ix(sdo, b, h, i, d)]
        for j in range(Tk):
            for d in range(hs):
                K[j, d] = k[_ix(sk, b, h, j, d)]
                V[j, d] = v[_ix(sv, b, h, j, d)]
        dQ = np.zeros((Tq, hs), dtype=q.dtype)
        dK = np.zeros((Tk, hs), dtype=q.dtype)
        dV = np.zeros((Tk, hs), dtype=q.dtype)
        dp = np.empty(Tk, dtype=q.dtype)
        for i in range(Tq):
            last = i + off
            a = att[b, h, i]
            inner = zero
            for j in range(last + 1):
                s = zero
                for d in range(hs):
                    s += dO[i, d] * V[j, d]
                pj = a[j]
                wj = pj
                if use_mask:
                    mj = mask[b, h, i, j]
                    s *= mj
                    wj = pj * mj
                for d in range(hs):
                    dV[j, d] += wj * dO[i, d]
                dp[j] = s
                inner += pj * s
            for j in range(last + 1):
                ds = a[j] * (dp[j] - inner) * scale
                for d in range(hs):
                    dQ[i, d] += ds * K[j, d]
                    dK[j, d] += ds * Q[i, d]
        for i in range(Tq):
            for d in range(hs):
                dq[_ix(sdq, b, h, i, d)] = dQ[i, d]
        for j in range(Tk):
            for d in range(hs):
                dk[_ix(sdk, b, h, j, d)] = dK[j, d]
                dv[_ix(sdv, b, h, j, d)] = dV[j, d]


def _strided(a: np.ndarray):
    """(B,H,T,hs) array -> (1-D array aliasing its memory from its first element,
    int64 [sB, sH, sT, sd, hs] strides in elements plus hs)."""
    item = a.itemsize
    if any(s < 0 or s % item for s in a.strides):
        raise ValueError("attention: operands need non-negative, element-aligned strides")
    st = [s // item for s in a.strides]
    span = 1 + sum((n - 1) * s for n, s in zip(a.shape, st, strict=True)) if a.size else 0
    root = a
    while isinstance(root.base, np.ndarray):
        root = root.base
    if root.flags.c_contiguous and root.dtype == a.dtype and a.flags.writeable:
        # fast path (decoding calls this 4x per layer and token): a slice of the owner's buffer
        start = (a.__array_interface__["data"][0] - root.__array_interface__["data"][0]) // item
        flat = root.reshape(-1)[start:start + span]
    else:
        flat = np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(item,),
                                               writeable=a.flags.writeable)
    return flat, np.array(st + [a.shape[3]], dtype=np.int64)


def _dummy_mask(dtype) -> np.ndarray:
    return np.ones((1, 1, 1, 1), dtype=dtype)


def heads_forward(q, k, v, out=None, drop_mask=None):
    """q (B,H,Tq,hs), k, v (B,H,Tk,hs) -> (out (B,H,Tq,hs), att (B,H,Tq,Tk)); ``out`` may be any
    (B,H,Tq,hs) view; ``drop_mask`` (B,H,Tq,Tk) multiplies att in the weighted sum if given."""
    _check_qkv(q, k, v)
    B, H, Tq, hs = q.shape
    Tk = k.shape[2]
    if out is None:
        out = np.empty((B, H, Tq, hs), dtype=q.dtype)
    att = np.empty((B, H, Tq, Tk), dtype=q.dtype)
    use_mask = drop_mask is not None
    mask = np.ascontiguousarray(drop_mask, dtype=q.dtype) if use_mask else _dummy_mask(q.dtype)
    kernel = _attn_fwd if B * H * Tq * Tk * hs >= SERIAL_BELOW else _attn_fwd_serial
    kernel(*_strided(q), *_strided(k), *_strided(v), *_strided(out), mask, use_mask, att,
           q.dtype == np.float32)
    return out, att


def heads_backward(dout, q, k, v, att, drop_mask=None, dq=None, dk=None, dv=None):
    """-> (dq, dk, dv), written into the given buffers when provided (views into one dqkv)."""
    _check_qkv(q, k, v)
    dq = np.empty(q.shape, dtype=q.dtype) if dq is None else dq
    dk = np.empty(k.shape, dtype=q.dtype) if dk is None else dk
    dv = np.empty(v.shape, dtype=q.dtype) if dv is None else dv
    use_mask = drop_mask is not None
    mask = np.ascontiguousarray(drop_mask, dtype=q.dtype) if use_mask else _dummy_mask(q.dtype)
    _attn_bwd(*_strided(np.asarray(dout, dtype=q.dtype)), *_strided(q), *_strided(k),
              *_strided(v), np.ascontiguousarray(att), mask, use_mask, *_strided(dq),
              *_strided(dk), *_strided(dv))
    return dq, dk, dv


# ----------------------------------------------------------------------------- the layer's functions
def _heads(qkv: np.ndarray, n_heads: int):
    """qkv (B, T, 3C) -> q, k, v (B, H, T, hs) views (the layer's ``split_heads``)."""
    if qkv.ndim != 3 or qkv.shape[-1] % (3 * n_heads):
        raise ValueError(f"attention: qkv must be (B, T, 3C) with C divisible by n_heads="
                         f"{n_heads}, got shape {qkv.shape}")
    B, T, C3 = qkv.shape
    heads = qkv.reshape(B, T, 3, n_heads, C3 // (3 * n_heads)).transpose(2, 0, 3, 1, 4)
    return heads[0], heads[1], heads[2]


def _forward(qkv, n_heads, drop_rate, rng, blas: bool, drop_mask=None):
    q, k, v = _heads(qkv, n_heads)                                    # (B, H, T, hs) views
    _check_qkv(q, k, v)
    B, H, T, hs = q.shape
    if drop_mask is not None:                                         # an earlier call's mask, again
        if drop_mask.shape != (B, H, T, T):
            raise ValueError(f"attention: drop_mask must be (B, H, T, T) = {(B, H, T, T)}, got "
                             f"{drop_mask.shape}; pass the mask of the same qkv's forward")
    elif rng is not None and drop_rate > 0.0:                         # dropout_forward's mask
        keep = rng.random((B, H, T, T)) >= drop_rate
        drop_mask = keep.astype(qkv.dtype) * qkv.dtype.type(1.0 / (1.0 - drop_rate))
    out = np.empty((B, T, H, hs), dtype=qkv.dtype)                    # written in place
    fwd = attention_blas.heads_forward if blas else heads_forward
    _, a = fwd(q, k, v, out=out.transpose(0, 2, 1, 3), drop_mask=drop_mask)
    scale = qkv.dtype.type(1.0 / np.sqrt(hs))
    return out.reshape(B, T, H * hs), (q, k, v, a, drop_mask, scale)


def _backward(dout, cache, blas: bool):
    q, k, v, a, drop_mask, _ = cache
    B, H, T, hs = q.shape
    _check_qkv(q, k, v)
    dqkv = np.empty((B, T, 3, H, hs), dtype=q.dtype)                  # dq, dk, dv written in place
    d = dqkv.transpose(2, 0, 3, 1, 4)                                 # (3, B, H, T, hs) views
    dy = dout.reshape(B, T, H, hs).transpose(0, 2, 1, 3)              # (B, H, T, hs)
    bwd = attention_blas.heads_backward if blas else heads_backward
    bwd(dy, q, k, v, a, drop_mask=drop_mask, dq=d[0], dk=d[1], dv=d[2])
    return dqkv.reshape(B, T, 3 * H * hs)


def attention_forward(qkv, n_heads, drop_rate=0.0, rng=None, drop_mask=None):
    """The layer's ``attention_forward``: qkv (B, T, 3C) -> (out (B, T, C), cache), same cache."""
    return _forward(qkv, n_heads, drop_rate, rng, blas=qkv.shape[1] >= BLAS_MIN_T, drop_mask=drop_mask)


def attention_backward(dout, cache):
    """The layer's ``attention_backward``: dout (B, T, C) -> dqkv (B, T, 3C)."""
    return _backward(dout, cache, blas=cache[0].shape[2] >= BLAS_MIN_T)


def attention_forward_fused(qkv, n_heads, drop_rate=0.0, rng=None, drop_mask=None):
    """``attention_forward`` on the fused head kernels whatever T."""
    return _forward(qkv, n_heads, drop_rate, rng, blas=False, drop_mask=drop_mask)


def attention_backward_fused(dout, cache):
    """``attention_backward`` on the fused head kernels whatever T."""
    return _backward(dout, cache, blas=False)


def attention_forward_blas(qkv, n_heads, drop_rate=0.0, rng=None, drop_mask=None):
    """``attention_forward`` on the BLAS head kernels whatever T."""
    return _forward(qkv, n_heads, drop_rate, rng, blas=True, drop_mask=drop_mask)


def attention_backward_blas(dout, cache):
    """``attention_backward`` on the BLAS head kernels whatever T."""
    return _backward(dout, cache, blas=True)


def attention_step(qkv, n_heads, k_cache, v_cache, t0):
    """The layer's ``attention_step`` (KV-cached inference): qkv (B, T, 3C) of the new positions
    t0 .. t0+T-1 -> (B, T, C); writes their keys and values into k_cache, v_cache at t0."""
    q, k_new, v_new = _heads(qkv, n_heads)                            # (B, H, T, hs)
    B, H, T, hs = q.shape
    k_cache[:, :, t0:t0 + T] = k_new
    v_cache[:, :, t0:t0 + T] = v_new
    out = np.empty((B, T, H, hs), dtype=qkv.dtype)
    heads_forward(q, k_cache[:, :, :t0 + T], v_cache[:, :, :t0 + T], out=out.transpose(0, 2, 1, 3))
    return out.reshape(B, T, H * hs)
