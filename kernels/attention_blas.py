"""Causal attention over heads with its four products in BLAS and the softmax in Numba: the variant
``kernels.attention`` picks for training shapes (T >= ``BLAS_MIN_T``).

Same contract as the fused head kernels of ``kernels.attention`` (q (B,H,Tq,hs), k, v (B,H,Tk,hs),
any strides; att (B,H,Tq,Tk) with exact zeros where masked), different split of the work:

    s   = q k^T            batched BLAS, all Tk columns (the masked half is computed, then ignored)
    att = causal_softmax(s * scale)     Numba, row-parallel, in place, masked columns set to 0
    out = (att * drop_mask) v           batched BLAS (masked weights are exact zeros)
backward:
    dw = dout v^T;  dv = w^T dout;  ds = softmax_backward(dw * drop_mask, att) * scale   (in place)
    dq = ds k;      dk = ds^T q

The fused per-(b, h) kernel skips the masked half but runs its inner products at scalar-loop speed;
BLAS does twice the multiply-adds at several times the rate, so for training shapes (T = 128) this
is the faster one (``minigpt bench``'s kernel table has both rows). Each batched product is split
over the batch axis into one block per thread by ``kernels.blas.bmm``. The callers in
``kernels.attention`` have checked the operands.
"""

from __future__ import annotations

import numpy as np

from kernels.blas import bmm
from kernels.softmax import _softmax_bwd, _softmax_fwd


def heads_forward(q, k, v, out=None, drop_mask=None):
    """-> (out (B,H,Tq,hs), att (B,H,Tq,Tk)); ``out`` may be any (B,H,Tq,hs) view."""
    B, H, Tq, hs = q.shape
    Tk = k.shape[2]
    s = bmm(q, k.swapaxes(-1, -2))                                    # (B,H,Tq,Tk) contiguous
    s *= q.dtype.type(1.0 / np.sqrt(hs))
    s3 = s.reshape(B * H, Tq, Tk)
    _softmax_fwd(s3, s3, q.dtype == np.float32, Tk - Tq)              # in place: s becomes att
    w = s if drop_mask is None else s * drop_mask
    if out is None:
        out = np.empty((B, H, Tq, hs), dtype=q.dtype)
    bmm(w, v, out=out)                                                # (B,H,Tq,hs)
    return out, s


def heads_backward(dout, q, k, v, att, drop_mask=None, dq=None, dk=None, dv=None):
    """-> (dq, dk, dv), written into the given (B,H,T,hs) views when provided."""
    B, H, Tq, hs = q.shape
    Tk = k.shape[2]
    dq = np.empty(q.shape, dtype=q.dtype) if dq is None else dq
    dk = np.empty(k.shape, dtype=q.dtype) if dk is None else dk
    dv = np.empty(v.shape, dtype=q.dtype) if dv is None else dv
    att = np.ascontiguousarray(att)
    w = att if drop_mask is None else att * drop_mask
    dw = bmm(dout, v.swapaxes(-1, -2))                                # (B,H,Tq,Tk)
    bmm(w.swapaxes(-1, -2), dout, out=dv)                             # (B,H,Tk,hs)
    if drop_mask is not None:
        dw *= drop_mask
    dw3 = dw.reshape(B * H, Tq, Tk)
    _softmax_bwd(dw3, att.reshape(B * H, Tq, Tk), dw3, Tk - Tq)       # in place: dw becomes ds
    dw *= q.dtype.type(1.0 / np.sqrt(hs))
    bmm(dw, k, out=dq)                                                # (B,H,Tq,hs)
    bmm(dw.swapaxes(-1, -2), q, out=dk)                               # (B,H,Tk,hs)
    return dq, dk, dv
