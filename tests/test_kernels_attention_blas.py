"""The BLAS + Numba-softmax attention (``kernels.attention_blas``) against the NumPy twins, and the
model with its training attention forced onto each path against the NumPy backend."""

from __future__ import annotations

import numpy as np
import pytest

import kernels as K
import minigpt.layers.attention as layer_attention
from minigpt import backend
from minigpt.config import GPTConfig
from minigpt.model import GPTModel

TOL = {np.float32: dict(rtol=2e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def heads_view(x, B, T, H, hs, which, n):
    return x.reshape(B, T, n, H, hs)[:, :, which].transpose(0, 2, 1, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,H,Tq,Tk,hs", [(2, 3, 11, 11, 16), (1, 2, 3, 10, 8), (3, 1, 1, 1, 5),
                                          (1, 4, 33, 33, 7)])
@pytest.mark.parametrize("masked", [False, True])
def test_blas_attention_matches_twins(dtype, B, H, Tq, Tk, hs, masked):
    rng = np.random.default_rng(3)
    C = H * hs
    qbuf = rng.normal(size=(B, Tq, C)).astype(dtype)
    kvbuf = rng.normal(size=(B, Tk, 2 * C)).astype(dtype)
    q = heads_view(qbuf, B, Tq, H, hs, 0, 1)
    k, v = heads_view(kvbuf, B, Tk, H, hs, 0, 2), heads_view(kvbuf, B, Tk, H, hs, 1, 2)
    mask = ((rng.random((B, H, Tq, Tk)) >= 0.25) / 0.75).astype(dtype) if masked else None
    out_ref, att_ref = K.attention_forward_numpy(q, k, v, drop_mask=mask)
    out_buf = np.empty((B, Tq, H, hs), dtype=dtype)
    out, att = K.attention_forward_blas(q, k, v, out=out_buf.transpose(0, 2, 1, 3), drop_mask=mask)
    assert out.dtype == dtype and att.dtype == dtype and np.shares_memory(out, out_buf)
    np.testing.assert_allclose(out, out_ref, **TOL[dtype])
    np.testing.assert_allclose(att, att_ref, **TOL[dtype])
    off = Tk - Tq
    for i in range(Tq):                                   # masked columns exactly zero
        assert np.all(att[..., i, i + off + 1:] == 0)
    dout = rng.normal(size=out.shape).astype(dtype)
    ref = K.attention_backward_numpy(dout, q, k, v, att_ref, drop_mask=mask)
    dkv = np.empty((B, Tk, 2 * C), dtype=dtype)
    got = K.attention_backward_blas(dout, q, k, v, att, drop_mask=mask,
                                    dk=heads_view(dkv, B, Tk, H, hs, 0, 2),
                                    dv=heads_view(dkv, B, Tk, H, hs, 1, 2))
    for g, r in zip(got, ref, strict=True):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, r, **TOL[dtype])
    assert np.shares_memory(got[1], dkv) and np.shares_memory(got[2], dkv)


@pytest.mark.parametrize("min_t", [1, 10**9])          # BLAS path for every T / fused kernel only
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-9), (np.float32, 2e-3)])
def test_model_on_each_attention_path_agrees_with_numpy_backend(monkeypatch, min_t, dtype, rtol):
    monkeypatch.setattr(layer_attention, "BLAS_MIN_T", min_t)
    cfg = GPTConfig(vocab_size=50, context_length=12, emb_dim=12, n_heads=3, n_layers=2,
                    drop_rate=0.1, qkv_bias=True, tie_weights=True)
    rng = np.random.default_rng(0)
    idx, tgt = rng.integers(0, 50, (2, 12)), rng.integers(0, 50, (2, 12))
    res = {}
    for name in ("numba", "numpy"):
        model = GPTModel(cfg, seed=1, dtype=dtype)
        with backend.use(name):
            loss, _ = model.loss_and_grads(idx, tgt, rng=np.random.default_rng(4))
        res[name] = (loss, model.flat_grads.copy())
    np.testing.assert_allclose(res["numba"][0], res["numpy"][0], rtol=rtol)
    g = res["numpy"][1]
    np.testing.assert_allclose(res["numba"][1], g, rtol=rtol, atol=rtol * np.abs(g).max())
