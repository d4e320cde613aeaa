"""Every Numba kernel against the layer function of the same name, float32 and float64, odd shapes.

The layer (``minigpt.layers``) is the reference; ``minigpt.kernel_ops`` holds the kernels under the
same names. Tolerances: float64 differs only by summation order (parallel/vectorised reductions and
the reassociation the fastmath subset allows), so rtol 1e-10; float32 kernels hold to rtol 2e-4
with an absolute floor of 1e-5 x the output scale (reductions over up to a few hundred terms with
float32 rounding ~6e-8 per term). Each float32 kernel must also return float32, and its cache
must be the layer's: same structure, same arrays (compared), and accepted by the other backward.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import kernels.adamw
import kernels.matmul
import minigpt.kernel_ops as K
import minigpt.layers as L
from minigpt import backend

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def close(a, b, dtype, scale=1.0):
    tol = TOL[dtype]
    np.testing.assert_allclose(a, b, rtol=tol["rtol"], atol=tol["atol"] * scale)


def same_dtype(*arrays, dtype):
    for a in arrays:
        assert a.dtype == dtype, f"kernel returned {a.dtype}, expected {dtype}"


def assert_same_cache(got, ref, dtype, scale=1.0):
    """Same structure; arrays equal to tolerance and of the same dtype; other items identical."""
    assert type(got) is type(ref) and len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        if isinstance(r, np.ndarray):
            assert isinstance(g, np.ndarray) and g.shape == r.shape
            same_dtype(g, dtype=r.dtype)
            close(g, r, dtype, scale)
        else:                                              # scale, None (no dropout), flags
            assert type(g) is type(r) and g == r


# --- the switch and the namespaces ------------------------------------------------------------------
def test_both_namespaces_have_every_op_and_the_switch_picks_one():
    assert set(K.__all__) - {"PAIRS", "VARIANTS"} == set(L.__all__)
    for name in L.__all__:
        assert callable(getattr(K, name)) and callable(getattr(L, name))
    with backend.use("numpy"):
        assert backend.ops() is L
    with backend.use("numba"):
        assert backend.ops() is K
    # the pairs are derived from the names: every op whose kernel is not the layer function itself
    assert set(K.PAIRS) == {n for n in L.__all__ if getattr(K, n) is not getattr(L, n)}
    assert {"layernorm_forward", "attention_backward", "cross_entropy", "adamw_step"} <= set(K.PAIRS)
    for name, (ref, ker) in K.PAIRS.items():
        assert ref.__name__ == ker.__name__ == name
        assert ref.__module__.startswith("minigpt.layers.") and ker.__module__.startswith("kernels.")


def test_layer_files_hold_only_math():
    """No layer imports the switch or the kernels: the layers never ask which backend runs."""
    layer_dir = pathlib.Path(L.__file__).parent
    for path in layer_dir.glob("*.py"):
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import ", "from ")):
                assert "backend" not in s and "kernels" not in s, f"{path.name}: {s}"


def test_kernel_modules_do_not_import_minigpt():
    kernel_dir = pathlib.Path(kernels.adamw.__file__).parent
    for path in kernel_dir.glob("*.py"):
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import ", "from ")):
                assert "minigpt" not in s, f"{path.name}: {s}"


# --- each kernel held to its layer ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Tq,Tk,t0", [(13, 13, 0), (5, 17, 12), (1, 9, 8), (4, 9, 2)])
def test_causal_softmax(dtype, Tq, Tk, t0):
    rng = np.random.default_rng(0)
    s = rng.normal(0, 3, (2, 3, Tq, Tk)).astype(dtype)
    p_ref = L.causal_softmax(s, t0)
    p = K.causal_softmax(s, t0)
    same_dtype(p, p_ref, dtype=dtype)
    close(p, p_ref, dtype)
    for i in range(Tq):  # masked columns exactly zero, rows sum to one
        assert np.all(p[..., i, t0 + i + 1:] == 0)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_causal_softmax_matches_explicit_formula():
    # Independent of both implementations: the row-by-row definition.
    s = np.random.default_rng(1).normal(size=(4, 7))
    for p in (K.causal_softmax(s, 3), L.causal_softmax(s, 3)):
        for i in range(4):
            row = s[i, : i + 4]
            e = np.exp(row - row.max())
            np.testing.assert_allclose(p[i, : i + 4], e / e.sum(), rtol=1e-12)


ATTENTION_SHAPES = [(2, 3, 11, 16), (1, 2, 3, 8), (3, 1, 1, 5), (1, 4, 33, 7)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,T,hs", ATTENTION_SHAPES)
@pytest.mark.parametrize("drop_rate", [0.0, 0.25])
@pytest.mark.parametrize("variant", ["default", "fused", "blas"])
def test_attention(dtype, B, H, T, hs, drop_rate, variant):
    """The default (which picks by T), and each head kernel forced, against the layer."""
    fwd = {"default": K.attention_forward, **{k: f for k, f in
                                            K.VARIANTS["attention_forward"].items()}}[variant]
    bwd = {"default": K.attention_backward, **{k: f for k, f in
                                             K.VARIANTS["attention_backward"].items()}}[variant]
    rng = np.random.default_rng(2)
    qkv = rng.normal(size=(B, T, 3 * H * hs)).astype(dtype)
    out_ref, c_ref = L.attention_forward(qkv, H, drop_rate, np.random.default_rng(5))
    out, c = fwd(qkv, H, drop_rate, np.random.default_rng(5))
    same_dtype(out, dtype=dtype)
    close(out, out_ref, dtype)
    assert_same_cache(c, c_ref, dtype)                     # (q, k, v, a, drop mask, scale)
    dout = rng.normal(size=out.shape).astype(dtype)
    ref = L.attention_backward(dout, c_ref)
    got = bwd(dout, c)
    same_dtype(got, dtype=dtype)
    close(got, ref, dtype)
    close(L.attention_backward(dout, c), ref, dtype)       # the layer accepts the kernel's cache
    close(bwd(dout, c_ref), ref, dtype)                    # and the kernel the layer's


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t0,T", [(0, 5), (4, 1), (6, 3)])
def test_attention_step(dtype, t0, T):
    rng = np.random.default_rng(3)
    B, H, hs, T_max = 2, 3, 4, 10
    qkv = rng.normal(size=(B, T, 3 * H * hs)).astype(dtype)
    caches = [rng.normal(size=(B, H, T_max, hs)).astype(dtype) for _ in range(2)]
    kc_ref, vc_ref = (c.copy() for c in caches)
    kc, vc = (c.copy() for c in caches)
    ref = L.attention_step(qkv, H, kc_ref, vc_ref, t0)
    got = K.attention_step(qkv, H, kc, vc, t0)
    same_dtype(got, dtype=dtype)
    close(got, ref, dtype)
    np.testing.assert_array_equal(kc, kc_ref)
    np.testing.assert_array_equal(vc, vc_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 7, 33), (1, 1, 5), (2, 129, 16)])
def test_layernorm(dtype, shape):
    rng = np.random.default_rng(4)
    C = shape[-1]
    x = (rng.normal(size=shape) * 2 + 0.5).astype(dtype)
    w = rng.normal(size=C).astype(dtype)
    b = rng.normal(size=C).astype(dtype)
    out_ref, c_ref = L.layernorm_forward(x, w, b)
    out, c = K.layernorm_forward(x, w, b)
    same_dtype(out, dtype=dtype)
    close(out, out_ref, dtype)
    assert_same_cache(c, c_ref, dtype)                     # (xhat, w, rstd)
    dout = rng.normal(size=shape).astype(dtype)
    dw_ref, db_ref = np.full(C, 0.5, dtype), np.full(C, -0.25, dtype)  # backward ADDs
    dw, db = dw_ref.copy(), db_ref.copy()
    dx_ref = L.layernorm_backward(dout, c_ref, dw_ref, db_ref)
    dx = K.layernorm_backward(dout, c, dw, db)
    same_dtype(dx, dw, db, dtype=dtype)
    close(dx, dx_ref, dtype)
    close(dw, dw_ref, dtype, scale=10)
    close(db, db_ref, dtype, scale=10)
    close(K.layernorm_backward(dout, c_ref, np.zeros(C, dtype), np.zeros(C, dtype)), dx_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("head", [False, True])
@pytest.mark.parametrize("acc", ["cblas", "slabs"])
def test_linear(dtype, bias, head, acc, monkeypatch):
    """Both products split by kernels.blas; ``head``: dw a transposed view, as the LM head's.
    ``acc``: dW added by BLAS itself (cblas gemm, beta = 1), or, as without a reachable OpenBLAS,
    by temporary products in several slabs."""
    import kernels.blas
    monkeypatch.setattr(kernels.blas, "MIN_SPLIT_MACS", 0)     # split even these small products
    kernels.blas.pool()                                        # configured: _state["lib"] is final
    lib = kernels.blas._state["lib"]
    if acc == "slabs":
        monkeypatch.setattr(kernels.blas, "SLAB", 64)          # cut dW into several slabs
        if lib is not None:
            monkeypatch.setitem(kernels.blas._state, "lib",
                                {k: f for k, f in lib.items() if k not in ("sgemm", "dgemm")})
    elif lib is None or "sgemm" not in lib:
        pytest.skip("NumPy's OpenBLAS with cblas_sgemm is not reachable here")
    rng = np.random.default_rng(5)
    n_in, n_out = 9, 37
    x = rng.normal(size=(3, 7, n_in)).astype(dtype)
    w_store = rng.normal(size=(n_out, n_in) if head else (n_in, n_out)).astype(dtype)
    w = w_store.T if head else w_store
    b = rng.normal(size=n_out).astype(dtype) if bias else None
    out_ref, c_ref = L.linear_forward(x, w, b)
    out, c = K.linear_forward(x, w, b)
    same_dtype(out, dtype=dtype)
    close(out, out_ref, dtype, scale=3)
    assert c[0] is x and c[1] is w and c[2] == c_ref[2] == bias
    dout = rng.normal(size=out.shape).astype(dtype)
    grads = {}
    for name, fn in (("layer", L.linear_backward), ("kernel", K.linear_backward)):
        dw_store = np.ones_like(w_store)
        dw = dw_store.T if head else dw_store
        db = np.ones(n_out, dtype) if bias else None
        dx = fn(dout, c, dw, db)
        same_dtype(dx, dw, dtype=dtype)
        grads[name] = (dx, dw_store, db)
    for g, r in zip(grads["kernel"], grads["layer"], strict=True):
        if r is not None:
            close(g, r, dtype, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu(dtype):
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(3, 7, 19)) * 3).astype(dtype)
    y_ref, c_ref = L.gelu_forward(x)
    y, c = K.gelu_forward(x)
    same_dtype(y, dtype=dtype)
    close(y, y_ref, dtype)
    assert c[0] is x
    assert_same_cache(c[1:], c_ref[1:], dtype)             # tanh(u)
    dout = rng.normal(size=x.shape).astype(dtype)
    dx = K.gelu_backward(dout, c)
    same_dtype(dx, dtype=dtype)
    close(dx, L.gelu_backward(dout, c_ref), dtype)
    close(L.gelu_backward(dout, c), L.gelu_backward(dout, c_ref), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,V", [(13, 257), (1, 2), (6, 1001)])
def test_cross_entropy(dtype, N, V):
    rng = np.random.default_rng(6)
    z = (rng.normal(size=(2, N, V)) * 4).astype(dtype)
    t = rng.integers(0, V, size=(2, N))
    t[0, ::3] = -100
    loss_ref, d_ref = L.cross_entropy(z, t)
    loss, d = K.cross_entropy(z, t)
    same_dtype(d, d_ref, dtype=dtype)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5 if dtype == np.float32 else 1e-12)
    close(d, d_ref, dtype, scale=0.1)
    assert np.all(d[t == -100] == 0)
    loss_ng, none = K.cross_entropy(z, t, grad=False)      # loss only, as the layer's grad=False
    assert none is None and loss_ng == loss
    assert L.cross_entropy(z, t, grad=False) == (loss_ref, None)
    # in place: dlogits overwrite the logits buffer
    z2 = z.copy()
    loss2, d2 = K.cross_entropy(z2, t, inplace=True)
    assert np.shares_memory(d2, z2) and loss2 == loss
    np.testing.assert_array_equal(d2, d)


@pytest.mark.parametrize("ce", [L.cross_entropy, K.cross_entropy], ids=["layer", "kernel"])
def test_cross_entropy_known_value_and_errors(ce):
    # logits [0, ln 3] over 2 classes, target 1: p = 3/4, loss = ln(4/3)
    z = np.array([[0.0, np.log(3.0)]])
    loss, d = ce(z, np.array([1]))
    assert abs(loss - np.log(4 / 3)) < 1e-12
    np.testing.assert_allclose(d, [[0.25, -0.25]], atol=1e-12)
    # every target ignored: both raise the same documented error (no NaN loss, no zero gradient)
    with pytest.raises(ValueError, match="every target equals ignore_index=-100"):
        ce(z, np.array([-100]))
    with pytest.raises(ValueError, match="every target equals ignore_index=-100"):
        ce(z, np.array([-100]), grad=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t0", [0, 2])
def test_embedding(dtype, t0):
    rng = np.random.default_rng(7)
    B, T, C, V = 3, 11, 70, 13  # C > one column block of the kernel
    idx = rng.integers(0, 4, size=(B, T))  # many repeats
    wte, wpe = rng.normal(size=(V, C)).astype(dtype), rng.normal(size=(T + 2, C)).astype(dtype)
    assert K.embedding_forward is L.embedding_forward      # no kernel: the layer function
    _, cache = L.embedding_forward(idx, wte, wpe, t0)
    dout = rng.normal(size=(B, T, C)).astype(dtype)
    dwte_ref, dwpe_ref = np.ones((V, C), dtype), np.ones((T + 2, C), dtype)
    dwte, dwpe = dwte_ref.copy(), dwpe_ref.copy()
    L.embedding_backward(dout, cache, dwte_ref, dwpe_ref)
    K.embedding_backward(dout, cache, dwte, dwpe)
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
        L.adamw_step(bufs["np"][0], g, bufs["np"][1], bufs["np"][2], **kw)
        K.adamw_step(bufs["nb"][0], g, bufs["nb"][1], bufs["nb"][2], **kw)
    for a, b in zip(bufs["nb"], bufs["np"], strict=True):
        same_dtype(a, dtype=dtype)
        close(a, b, dtype)
    # first step from m = v = 0 moves every weight by lr*(1 + small) against the gradient sign
    for fn in (L.adamw_step, K.adamw_step):
        p, m, v = p0.astype(np.float64), np.zeros(n), np.zeros(n)
        g = rng.normal(size=n)
        fn(p, g, m, v, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
        np.testing.assert_allclose(p0 - p, 1e-3 * np.sign(g) * np.abs(g) / (np.abs(g) + 1e-8),
                                   rtol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sumsq(dtype):
    x = np.random.default_rng(9).normal(size=10_007).astype(dtype)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(kernels.adamw.sumsq(x), x64 @ x64, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,Kd,N", [(37, 300, 129), (1, 5, 3), (65, 17, 513)])
def test_matmul(dtype, M, Kd, N):
    rng = np.random.default_rng(10)
    a = rng.normal(size=(M, Kd)).astype(dtype)
    b = rng.normal(size=(Kd, N)).astype(dtype)
    c = kernels.matmul.matmul(a, b)
    same_dtype(c, dtype=dtype)
    close(c, a @ b, dtype, scale=np.sqrt(Kd))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="t0"):
        K.causal_softmax(np.zeros((4, 3)), -1)
    with pytest.raises(ValueError, match="n_heads=2"):
        K.attention_forward(np.zeros((1, 2, 9)), 2)
    with pytest.raises(ValueError, match="float32"):
        K.attention_forward(np.zeros((1, 2, 12), dtype=np.int64), 2)
    with pytest.raises(ValueError, match="layernorm"):
        K.layernorm_forward(np.zeros((2, 3)), np.ones(4), np.zeros(4))
    with pytest.raises(ValueError, match="int"):
        K.cross_entropy(np.zeros((2, 3), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="target ids"):
        K.cross_entropy(np.zeros((1, 2)), np.array([2]))
    with pytest.raises(ValueError, match="token ids"):
        K.embedding_backward(np.zeros((1, 2, 3)), (np.array([[0, 9]]), 0), np.zeros((4, 3)),
                             np.zeros((2, 3)))
    for fn in (K.adamw_step, L.adamw_step):
        with pytest.raises(ValueError, match="step"):
            z = np.zeros(3)
            fn(z, z, z, z, 1e-3, 0.9, 0.999, 1e-8, 0.0, step=0)
        with pytest.raises(ValueError, match="1-D like p"):
            fn(np.zeros(3), np.zeros(2), np.zeros(3), np.zeros(3), 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    with pytest.raises(ValueError, match="matmul"):
        kernels.matmul.matmul(np.zeros((2, 3)), np.zeros((4, 2)))


# --- anchored to the math, not only to each other ---------------------------------------------------
def _fd(f, arrays, up, eps=1e-6):
    """Central differences of sum(f() * up) with respect to every element of every array."""
    out = []
    for arr in arrays:
        num = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + eps
            fp = np.sum(f() * up)
            arr[i] = old - eps
            fm = np.sum(f() * up)
            arr[i] = old
            num[i] = (fp - fm) / (2 * eps)
        out.append(num)
    return out


def test_attention_kernels_against_finite_differences():
    rng = np.random.default_rng(3)
    qkv = rng.normal(size=(1, 5, 24))
    up = rng.normal(size=(1, 5, 8))
    for fwd, bwd in ((K.attention_forward, K.attention_backward),
                     tuple(K.VARIANTS[f"attention_{d}"]["blas"] for d in ("forward", "backward"))):
        dqkv = bwd(up, fwd(qkv, 2)[1])
        (num,) = _fd(lambda fwd=fwd: fwd(qkv, 2)[0], [qkv], up)
        np.testing.assert_allclose(dqkv, num, rtol=1e-6, atol=1e-8)


def test_layernorm_kernel_against_finite_differences():
    rng = np.random.default_rng(11)
    x, w, b = rng.normal(size=(3, 6)), rng.normal(size=6), rng.normal(size=6)
    up = rng.normal(size=(3, 6))
    dw, db = np.zeros(6), np.zeros(6)
    dx = K.layernorm_backward(up, K.layernorm_forward(x, w, b)[1], dw, db)
    nums = _fd(lambda: K.layernorm_forward(x, w, b)[0], [x, w, b], up)
    for grad, num in zip((dx, dw, db), nums, strict=True):
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


def test_gelu_kernel_derivative_by_finite_differences():
    x = np.linspace(-5, 5, 41)
    num = (K.gelu_forward(x + 1e-6)[0] - K.gelu_forward(x - 1e-6)[0]) / 2e-6
    dx = K.gelu_backward(np.ones_like(x), K.gelu_forward(x)[1])
    np.testing.assert_allclose(dx, num, atol=1e-8)


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


def test_cross_entropy_gradient_has_no_subnormals():
    """Logits spread by ~100 (a tied model with N(0, 1) embeddings) give probabilities near the
    smallest normal float32; times 1/(s M) the layer's gradient holds subnormal numbers (the
    control: the case reaches them), which slow every later product; the kernel flushes them to
    0 and stays within the layer's tolerance."""
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(64, 4096)) * 25).astype(np.float32)
    t = rng.integers(0, 4096, 64)
    _, d_ref = L.cross_entropy(z, t)
    _, d = K.cross_entropy(z, t)
    tiny = np.finfo(np.float32).tiny

    def subnormal(a):
        return int(np.count_nonzero((a != 0) & (np.abs(a) < tiny)))

    assert subnormal(d_ref) > 100
    assert subnormal(d) == 0
    np.testing.assert_allclose(d, d_ref, rtol=1e-4, atol=1e-9)
