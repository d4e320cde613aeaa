"""Kernels with a serial twin for small inputs (layernorm, GELU and attention forward): both the
parallel and the serial driver are held to the NumPy reference, whichever size picks them."""

from __future__ import annotations

import numpy as np
import pytest

import kernels as K
import kernels.attention
import kernels.gelu
import kernels.layernorm

TOL = {np.float32: dict(rtol=2e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


@pytest.fixture(params=["parallel", "serial"])
def driver(request, monkeypatch):
    threshold = 0 if request.param == "parallel" else 1 << 62
    for mod in (kernels.attention, kernels.gelu, kernels.layernorm):
        monkeypatch.setattr(mod, "SERIAL_BELOW", threshold)
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_kernels_match_twins_on_both_drivers(driver, dtype):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 5, 37)).astype(dtype)
    w, b = rng.normal(size=37).astype(dtype), rng.normal(size=37).astype(dtype)
    for got, ref in zip(K.layernorm_forward_numba(x, w, b), K.layernorm_forward_numpy(x, w, b),
                        strict=True):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref, **TOL[dtype])
    for got, ref in zip(K.gelu_forward_numba(x), K.gelu_forward_numpy(x), strict=True):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref, **TOL[dtype])
    B, H, Tq, Tk, hs = 2, 3, 4, 9, 6                     # Tq < Tk: the KV-cache case
    qkv = rng.normal(size=(B, Tk, 3, H, hs)).astype(dtype)
    q = np.ascontiguousarray(qkv[:, Tk - Tq:, 0].transpose(0, 2, 1, 3))
    k, v = qkv[:, :, 1].transpose(0, 2, 1, 3), qkv[:, :, 2].transpose(0, 2, 1, 3)
    for got, ref in zip(K.attention_forward_numba(q, k, v), K.attention_forward_numpy(q, k, v),
                        strict=True):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref, **TOL[dtype])
