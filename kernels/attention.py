"""Causal scaled dot-product attention over heads, forward and backward.

Shapes (any strides: views of a fused ``qkv`` buffer work without copies):
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

from kernels._fast32 import exp32

from kernels.softmax import causal_softmax_backward_numpy, causal_softmax_forward_numpy

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
SERIAL_BELOW = 1 << 20   # multiply-adds: smaller problems run the serial twin (decoding)


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


# ----------------------------------------------------------------------------- NumPy reference
def attention_forward_numpy(q, k, v, out=None, drop_mask=None):
    """-> (out (B,H,Tq,hs), att (B,H,Tq,Tk)). ``drop_mask`` (B,H,Tq,Tk) multiplies att if given."""
    _check_qkv(q, k, v)
    scale = q.dtype.type(1.0 / np.sqrt(q.shape[-1]))
    scores = (q @ k.swapaxes(-1, -2)) * scale                         # (B,H,Tq,Tk)
    att = causal_softmax_forward_numpy(scores)                        # (B,H,Tq,Tk)
    w = att if drop_mask is None else att * drop_mask
    res = w @ v                                                       # (B,H,Tq,hs)
    if out is None:
        return res, att
    out[...] = res
    return out, att


def attention_backward_numpy(dout, q, k, v, att, drop_mask=None, dq=None, dk=None, dv=None):
    """-> (dq, dk, dv), written into the given buffers when provided."""
    _check_qkv(q, k, v)
    scale = q.dtype.type(1.0 / np.sqrt(q.shape[-1]))
    w = att if drop_mask is None else att * drop_mask
    dw = dout @ v.swapaxes(-1, -2)                                    # (B,H,Tq,Tk)
    dv_ = w.swapaxes(-1, -2) @ dout                                   # (B,H,Tk,hs)
    datt = dw if drop_mask is None else dw * drop_mask
    ds = causal_softmax_backward_numpy(datt, att) * scale             # (B,H,Tq,Tk)
    dq_ = ds @ k                                                      # (B,H,Tq,hs)
    dk_ = ds.swapaxes(-1, -2) @ q                                     # (B,H,Tk,hs)
    res = []
    for buf, val in ((dq, dq_), (dk, dk_), (dv, dv_)):
        if buf is None:
            res.append(val)
        else:
            buf[...] = val
            res.append(buf)
    return tuple(res)


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


def attention_forward_numba(q, k, v, out=None, drop_mask=None):
    """Same contract as :func:`attention_forward_numpy`; ``out`` may be any (B,H,Tq,hs) view."""
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


def attention_backward_numba(dout, q, k, v, att, drop_mask=None, dq=None, dk=None, dv=None):
    """Same contract as :func:`attention_backward_numpy`; dq/dk/dv may be views into one dqkv."""
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
