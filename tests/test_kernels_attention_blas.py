"""The model with its training attention forced onto each head kernel (BLAS for every T, or the
fused kernel only) against the NumPy backend; the kernels themselves are held to the layer in
tests/test_kernels.py (``test_attention``, every variant)."""

from __future__ import annotations

import numpy as np
import pytest

import kernels.attention
from minigpt import backend
from minigpt.config import GPTConfig
from minigpt.model import GPTModel


@pytest.mark.parametrize("min_t", [1, 10**9])          # BLAS path for every T / fused kernel only
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-9), (np.float32, 2e-3)])
def test_model_on_each_attention_path_agrees_with_numpy_backend(monkeypatch, min_t, dtype, rtol):
    monkeypatch.setattr(kernels.attention, "BLAS_MIN_T", min_t)
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
