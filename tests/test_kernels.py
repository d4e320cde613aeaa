"""Every Numba kernel against its NumPy twin, float32 and float64, on odd shapes.

Tolerances: float64 differs only by summation order (parallel/vectorised reductions and the
reassociation the fastmath subset allows), so rtol 1e-10; float32 kernels hold to rtol 2e-4 with
an absolute floor of 1e-5 x the output scale (reductions over up to a few hundred terms with
float32 rounding ~6e-8 per term). Each float32 kernel must also return float32.
"""

from __future__ import annotations

import numpy as np
import pytest

import kernels as K

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def close(a, b, dtype, scale=1.0):
    tol = TOL[dtype]
    np.testing.assert_allclose(a, b, rtol=tol["rtol"], atol=tol["atol"] * scale)


def same_dtype(*arrays, dtype):
    for a in arrays:
        assert a.dtype == dtype, f"kernel returned {a.dtype}, expected {dtype}"


def heads_view(x, B, T, H, hs, which, n=3):
    """(B,T,n*C) buffer -> (B,H,T,hs) strided view of part ``which`` (like a fused qkv)."""
    return x.reshape(B, T, n, H, hs)[:, :, which].transpose(0, 2, 1, 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Tq,Tk", [(13, 13), (5, 17), (1, 9)])
def test_causal_softmax(dtype, Tq, Tk):
    rng = np.random.default_rng(0)
    s = rng.normal(0, 3, (2, 3, Tq, Tk)).astype(dtype)
    p_ref = K.causal_softmax_forward_numpy(s)
    p = K.causal_softmax_forward_numba(s)
    same_dtype(p, p_ref, dtype=dtype)
    close(p, p_ref, dtype)
    off = Tk - Tq
    for i in range(Tq):  # masked columns exactly zero, rows sum to one
        assert np.all(p[..., i, i + off + 1:] == 0)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5 if dtype == np.float32 else 1e-12)
    dp = rng.normal(size=s.shape).astype(dtype)
    ds_ref = K.causal_softmax_backward_numpy(dp, p_ref)
    ds = K.causal_softmax_backward_numba(dp, p)
    same_dtype(ds, dtype=dtype)
    close(ds, ds_ref, dtype)


def test_causal_softmax_matches_explicit_formula():
    # Independent of both implementations: the row-by-row definition.
    rng = np.random.default_rng(1)
    s = rng.normal(size=(4, 7))
    p = K.causal_softmax_forward_numba(s)
    for i in range(4):
        row = s[i, : i + 4]
        e = np.exp(row - row.max())
        np.testing.assert_allclose(p[i, : i + 4], e / e.sum(), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,Tq,Tk,hs", [(2, 3, 11, 11, 16), (1, 2, 3, 10, 8), (3, 1, 1, 1, 5)])
@pytest.mark.parametrize("masked", [False, True])
def test_attention(dtype, B, H, Tq, Tk, hs, masked):
    rng = np.random.default_rng(2)
    C = H * hs
    qbuf = rng.normal(size=(B, Tq, C)).astype(dtype)
    kvbuf = rng.normal(size=(B, Tk, 2 * C)).astype(dtype)
    q = heads_view(qbuf, B, Tq, H, hs, 0, n=1)
    k = heads_view(kvbuf, B, Tk, H, hs, 0, n=2)
    v = heads_view(kvbuf, B, Tk, H, hs, 1, n=2)
    mask = None
    if masked:  # dropout weights come from NumPy: 0 or 1/(1-p)
        mask = ((rng.random((B, H, Tq, Tk)) >= 0.25) / 0.75).astype(dtype)
    out_ref, att_ref = K.attention_forward_numpy(q, k, v, drop_mask=mask)
    out_buf = np.empty((B, Tq, H, hs), dtype=dtype)      # write straight into (B,T,H,hs) layout
    out, att = K.attention_forward_numba(q, k, v, out=out_buf.transpose(0, 2, 1, 3),
                                         drop_mask=mask)
    same_dtype(out, att, dtype=dtype)
    close(out, out_ref, dtype)
    close(att, att_ref, dtype)
    assert np.shares_memory(out, out_buf)
    dout = rng.normal(size=out.shape).astype(dtype)
    grads_ref = K.attention_backward_numpy(dout, q, k, v, att_ref, drop_mask=mask)
    dkv = np.empty((B, Tk, 2 * C), dtype=dtype)
    dk, dv = heads_view(dkv, B, Tk, H, hs, 0, n=2), heads_view(dkv, B, Tk, H, hs, 1, n=2)
    grads = K.attention_backward_numba(dout, q, k, v, att, drop_mask=mask, dk=dk, dv=dv)
    for g, gr in zip(grads, grads_ref, strict=True):
        same_dtype(g, dtype=dtype)
        close(g, gr, dtype)
    assert np.shares_memory(grads[1], dkv) and np.shares_memory(grads[2], dkv)


def test_attention_against_finite_differences():
    # The NumPy twin's backward, checked by central differences in float64 (so the pair is
    # anchored to the math, not only to each other).
    rng = np.random.default_rng(3)
    B, H, T, hs = 1, 2, 5, 4
    q, k, v = (rng.normal(size=(B, H, T, hs)) for _ in range(3))
    up = rng.normal(size=(B, H, T, hs))
    _, att = K.attention_forward_numba(q, k, v)
    dq, dk, dv = K.attention_backward_numba(up, q, k, v, att)
    for x, dx in ((q, dq), (k, dk), (v, dv)):
        num = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            old = x[i]
            x[i] = old + 1e-6
            fp = np.sum(K.attention_forward_numba(q, k, v)[0] * up)
            x[i] = old - 1e-6
            fm = np.sum(K.attention_forward_numba(q, k, v)[0] * up)
            x[i] = old
            num[i] = (fp - fm) / 2e-6
        np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 7, 33), (1, 1, 5), (2, 129, 16)])
def test_layernorm(dtype, shape):
    rng = np.random.default_rng(4)
    C = shape[-1]
    x = (rng.normal(size=shape) * 2 + 0.5).astype(dtype)
    w = rng.normal(size=C).astype(dtype)
    b = rng.normal(size=C).astype(dtype)
    ref = K.layernorm_forward_numpy(x, w, b)
    got = K.layernorm_forward_numba(x, w, b)
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape
        same_dtype(g, dtype=dtype)
        close(g, r, dtype)
    dout = rng.normal(size=shape).astype(dtype)
    dw_ref, db_ref = np.full(C, 0.5, dtype), np.full(C, -0.25, dtype)  # backward ADDs
    dw, db = dw_ref.copy(), db_ref.copy()
    dx_ref = K.layernorm_backward_numpy(dout, ref[1], w, ref[2], dw_ref, db_ref)
    dx = K.layernorm_backward_numba(dout, got[1], w, got[2], dw, db)
    same_dtype(dx, dw, db, dtype=dtype)
    close(dx, dx_ref, dtype)
    close(dw, dw_ref, dtype, scale=10)
    close(db, db_ref, dtype, scale=10)


def test_layernorm_backward_by_finite_differences():
    rng = np.random.default_rng(11)
    x, w, b = rng.normal(size=(3, 6)), rng.normal(size=6), rng.normal(size=6)
    up = rng.normal(size=(3, 6))
    _, xhat, rstd = K.layernorm_forward_numba(x, w, b)
    dw, db = np.zeros(6), np.zeros(6)
    dx = K.layernorm_backward_numba(up, xhat, w, rstd, dw, db)
    for arr, grad in ((x, dx), (w, dw), (b, db)):
        num = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + 1e-6
            fp = np.sum(K.layernorm_forward_numba(x, w, b)[0] * up)
            arr[i] = old - 1e-6
            fm = np.sum(K.layernorm_forward_numba(x, w, b)[0] * up)
            arr[i] = old
            num[i] = (fp - fm) / 2e-6
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu(dtype):
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(3, 7, 19)) * 3).astype(dtype)
    y, th = K.gelu_forward_numba(x)
    y_ref, th_ref = K.gelu_forward_numpy(x)
    same_dtype(y, th, dtype=dtype)
    close(y, y_ref, dtype)
    close(th, th_ref, dtype)
    dout = rng.normal(size=x.shape).astype(dtype)
    dx = K.gelu_backward_numba(dout, x, th)
    same_dtype(dx, dtype=dtype)
    close(dx, K.gelu_backward_numpy(dout, x, th_ref), dtype)


def test_gelu_derivative_by_finite_differences():
    x = np.linspace(-5, 5, 41)
    num = (K.gelu_forward_numba(x + 1e-6)[0] - K.gelu_forward_numba(x - 1e-6)[0]) / 2e-6
    dx = K.gelu_backward_numba(np.ones_like(x), x, K.gelu_forward_numba(x)[1])
    np.testing.assert_allclose(dx, num, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,V", [(13, 257), (1, 2), (6, 1001)])
def test_cross_entropy(dtype, N, V):
    rng = np.random.default_rng(6)
    z = (rng.normal(size=(N, V)) * 4).astype(dtype)
    t = rng.integers(0, V, size=N)
    if N > 2:
        t[::3] = -100
    loss_ref, d_ref = K.cross_entropy_numpy(z, t)
    loss, d = K.cross_entropy_numba(z, t)
    same_dtype(d, d_ref, dtype=dtype)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5 if dtype == np.float32 else 1e-12)
    close(d, d_ref, dtype, scale=0.1)
    assert np.all(d[t == -100] == 0)
    # in place: dlogits overwrite the logits buffer
    z2 = z.copy()
    loss2, d2 = K.cross_entropy_numba(z2, t, out=z2)
    assert d2 is z2 and loss2 == loss
    np.testing.assert_array_equal(d2, d)


def test_cross_entropy_known_value_and_errors():
    # logits [0, ln 3] over 2 classes, target 1: p = 3/4, loss = ln(4/3)
    z = np.array([[0.0, np.log(3.0)]])
    loss, d = K.cross_entropy_numba(z, np.array([1]))
    assert abs(loss - np.log(4 / 3)) < 1e-12
    np.testing.assert_allclose(d, [[0.25, -0.25]], atol=1e-12)
    with pytest.raises(ValueError, match="target ids"):
        K.cross_entropy_numba(z, np.array([2]))
    loss, d = K.cross_entropy_numba(z, np.array([-100]))
    assert np.isnan(loss) and np.all(d == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_backward_repeated_ids(dtype):
    rng = np.random.default_rng(7)
    B, T, C, V = 3, 11, 70, 13  # C > one column block of the kernel
    idx = rng.integers(0, 4, size=(B, T))  # many repeats
    dout = rng.normal(size=(B, T, C)).astype(dtype)
    dwte_ref, dwpe_ref = np.ones((V, C), dtype), np.ones((T + 2, C), dtype)
    dwte, dwpe = dwte_ref.copy(), dwpe_ref.copy()
    K.embedding_backward_numpy(dout, idx, dwte_ref, dwpe_ref)
    K.embedding_backward_numba(dout, idx, dwte, dwpe)
    same_dtype(dwte, dwpe, dtype=dtype)
    close(dwte, dwte_ref, dtype, scale=10)
    close(dwpe, dwpe_ref, dtype, scale=10)
    # independent check of one repeated row
    v = idx[0, 0]
    np.testing.assert_allclose(dwte[v] - 1, dout[idx == v].sum(0), rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grad_scale", [1.0, 0.3])
def test_adamw(dtype, grad_scale):
    rng = np.random.default_rng(8)
    n = 1001
    p0 = rng.normal(size=n).astype(dtype)
    bufs = {name: [p0.copy(), np.zeros(n, dtype), np.zeros(n, dtype)] for name in ("np", "nb")}
    for step in range(1, 4):
        g = rng.normal(size=n).astype(dtype)
        kw = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, step=step,
                  grad_scale=grad_scale)
        K.adamw_step_numpy(bufs["np"][0], g, bufs["np"][1], bufs["np"][2], **kw)
        K.adamw_step_numba(bufs["nb"][0], g, bufs["nb"][1], bufs["nb"][2], **kw)
    for a, b in zip(bufs["nb"], bufs["np"], strict=True):
        same_dtype(a, dtype=dtype)
        close(a, b, dtype)
    # first step from m = v = 0 moves every weight by lr*(1 + small) against the gradient sign
    p, m, v = p0.astype(np.float64), np.zeros(n), np.zeros(n)
    g = rng.normal(size=n)
    K.adamw_step_numba(p, g, m, v, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                       weight_decay=0.0, step=1)
    np.testing.assert_allclose(p0 - p, 1e-3 * np.sign(g) * np.abs(g) / (np.abs(g) + 1e-8),
                               rtol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sumsq(dtype):
    x = np.random.default_rng(9).normal(size=10_007).astype(dtype)
    np.testing.assert_allclose(K.sumsq_numba(x), K.sumsq_numpy(x), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,Kd,N", [(37, 300, 129), (1, 5, 3), (65, 17, 513)])
def test_matmul(dtype, M, Kd, N):
    rng = np.random.default_rng(10)
    a = rng.normal(size=(M, Kd)).astype(dtype)
    b = rng.normal(size=(Kd, N)).astype(dtype)
    c = K.matmul_numba(a, b)
    same_dtype(c, dtype=dtype)
    close(c, K.matmul_numpy(a, b), dtype, scale=np.sqrt(Kd))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="Tk >= Tq"):
        K.causal_softmax_forward_numba(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="disagree"):
        K.attention_forward_numba(np.zeros((1, 1, 2, 4)), np.zeros((1, 1, 2, 3)),
                                  np.zeros((1, 1, 2, 3)))
    with pytest.raises(ValueError, match="layernorm"):
        K.layernorm_forward_numba(np.zeros((2, 3)), np.ones(4), np.zeros(4))
    with pytest.raises(ValueError, match="int"):
        K.cross_entropy_numba(np.zeros((2, 3), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="token ids"):
        K.embedding_backward_numba(np.zeros((1, 2, 3)), np.array([[0, 9]]), np.zeros((4, 3)),
                                   np.zeros((2, 3)))
    with pytest.raises(ValueError, match="step"):
        z = np.zeros(3)
        K.adamw_step_numba(z, z, z, z, 1e-3, 0.9, 0.999, 1e-8, 0.0, step=0)
    with pytest.raises(ValueError, match="matmul"):
        K.matmul_numba(np.zeros((2, 3)), np.zeros((4, 2)))


def test_fast_float32_exp_and_tanh_accuracy():
    from numba import njit

    from kernels._fast32 import exp32, tanh32

    @njit
    def apply(x, out_e, out_t):
        for i in range(x.shape[0]):
            out_e[i] = exp32(x[i])
            out_t[i] = tanh32(x[i])

    x = np.linspace(-87, 88, 200_001).astype(np.float32)
    e, t = np.empty_like(x), np.empty_like(x)
    apply(x, e, t)
    same_dtype(e, t, dtype=np.float32)
    x64 = x.astype(np.float64)
    assert np.max(np.abs(e - np.exp(x64)) / np.exp(x64)) < 1e-6        # a few float32 ulp
    assert np.max(np.abs(t - np.tanh(x64))) < 1e-6
    assert np.all(t[np.abs(x) > 8] == np.sign(x[np.abs(x) > 8]))       # saturates exactly
