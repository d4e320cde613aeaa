"""Kernels with a serial twin for small inputs (layernorm, GELU and attention forward, the KV-cached
step included): both the parallel and the serial driver are held to the layer function of the same
name, whichever size picks them."""

from __future__ import annotations

import numpy as np
import pytest

import kernels.attention
import kernels.gelu
import kernels.layernorm
import minigpt.kernel_ops as K
import minigpt.layers as L

TOL = {np.float32: dict(rtol=2e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


@pytest.fixture(params=["parallel", "serial"])
def driver(request, monkeypatch):
    threshold = 0 if request.param == "parallel" else 1 << 62
    for mod in (kernels.attention, kernels.gelu, kernels.layernorm):
        monkeypatch.setattr(mod, "SERIAL_BELOW", threshold)
    return request.param


def check(got, ref, dtype):
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_kernels_match_layers_on_both_drivers(driver, dtype):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 5, 36)).astype(dtype)
    w, b = rng.normal(size=36).astype(dtype), rng.normal(size=36).astype(dtype)
    (out, (xhat, _, rstd)), (out_r, (xhat_r, _, rstd_r)) = (K.layernorm_forward(x, w, b),
                                                           L.layernorm_forward(x, w, b))
    for got, ref in ((out, out_r), (xhat, xhat_r), (rstd, rstd_r)):
        check(got, ref, dtype)
    (y, (_, th)), (y_r, (_, th_r)) = K.gelu_forward(x), L.gelu_forward(x)
    check(y, y_r, dtype)
    check(th, th_r, dtype)
    # attention below BLAS_MIN_T runs the fused kernel; the KV-cached step always does
    out, (*_, a, _, _) = K.attention_forward(x, 3)
    out_r, (*_, a_r, _, _) = L.attention_forward(x, 3)
    check(out, out_r, dtype)
    check(a, a_r, dtype)
    B, H, hs, t0, T = 3, 3, 4, 6, 2
    qkv = rng.normal(size=(B, T, 3 * H * hs)).astype(dtype)
    cache = rng.normal(size=(2, B, H, 9, hs)).astype(dtype)
    kc, vc, kc_r, vc_r = cache[0].copy(), cache[1].copy(), cache[0].copy(), cache[1].copy()
    check(K.attention_step(qkv, H, kc, vc, t0), L.attention_step(qkv, H, kc_r, vc_r, t0), dtype)
