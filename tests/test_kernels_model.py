"""The kernel switch end to end: the model's float64 gradient check passes on both backends, the
layer checks of ``minigpt gradcheck`` really run the kernels on the numba path, the two backends
agree, and their caches compose (forward on one, backward on the other)."""

from __future__ import annotations

import numpy as np
import pytest

import kernels.attention
import kernels.layernorm
from minigpt import backend
from minigpt import gradcheck as gc
from minigpt.config import GPTConfig
from minigpt.gradcheck import TINY, check_model
from minigpt.inference.kv_cache import KVCache
from minigpt.model import GPTModel


@pytest.mark.parametrize("name", ["numba", "numpy"])
@pytest.mark.parametrize("cfg", [TINY, TINY.replace(tie_weights=True, drop_rate=0.2)],
                         ids=["untied", "tied-dropout"])
def test_model_gradcheck_on_both_backends(name, cfg):
    # tests/test_gradcheck.py checks every element on the default backend (numba); here the
    # NumPy path gets every element too and the kernel path 6 sampled coordinates per tensor
    # (each tiny parallel kernel call costs ~50 us of thread wake-up, x 2 x n_params forwards).
    with backend.use(name):
        results = check_model(cfg, seed=3, max_per_tensor=6 if name == "numba" else None)
    bad = [r for r in results if not r.passed]
    assert not bad, bad


@pytest.mark.parametrize("name", ["numba", "numpy"])
@pytest.mark.parametrize("case", list(gc.LAYER_CASES))
def test_layer_gradchecks_on_both_backends(name, case):
    with backend.use(name):
        results = gc.check_layer(case)
    assert results and all(r.passed for r in results), [r for r in results if not r.passed]


def _grads(name, dtype, rng_seed=None):
    cfg = GPTConfig(vocab_size=37, context_length=12, emb_dim=24, n_heads=3, n_layers=2,
                    drop_rate=0.1 if rng_seed is not None else 0.0, qkv_bias=True, tie_weights=True)
    model = GPTModel(cfg, seed=1, dtype=dtype)
    data = np.random.default_rng(0)
    idx = data.integers(0, 37, (3, 11))
    tgt = data.integers(0, 37, (3, 11))
    tgt[0, :3] = -100
    rng = None if rng_seed is None else np.random.default_rng(rng_seed)
    with backend.use(name):
        loss, grads = model.loss_and_grads(idx, tgt, rng=rng)
        logits = model.forward(idx)
    return loss, model.flat_grads.copy(), logits


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-9), (np.float32, 2e-3)])
@pytest.mark.parametrize("rng_seed", [None, 5])
def test_backends_agree(dtype, rtol, rng_seed):
    l_nb, g_nb, z_nb = _grads("numba", dtype, rng_seed)
    l_np, g_np, z_np = _grads("numpy", dtype, rng_seed)
    assert g_nb.dtype == dtype and z_nb.dtype == dtype
    np.testing.assert_allclose(l_nb, l_np, rtol=rtol)
    np.testing.assert_allclose(z_nb, z_np, rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(g_nb, g_np, rtol=rtol, atol=rtol * np.abs(g_np).max())


def test_caches_compose_across_backends():
    rng = np.random.default_rng(2)
    B, T, H, hs = 2, 7, 3, 4
    C = H * hs
    x = rng.normal(size=(B, T, C))
    w, b = rng.normal(size=C), rng.normal(size=C)
    qkv = rng.normal(size=(B, T, 3 * C))
    with backend.use("numpy"):
        L = backend.ops()
    with backend.use("numba"):
        K = backend.ops()
    assert L is not K
    for fwd, bwd in ((K, L), (L, K)):
        _, c_ln = fwd.layernorm_forward(x, w, b)
        _, c_g = fwd.gelu_forward(x)
        _, c_a = fwd.attention_forward(qkv, H, 0.3, np.random.default_rng(1))
        dw, db = np.zeros(C), np.zeros(C)
        dx_ln = bwd.layernorm_backward(x, c_ln, dw, db)
        dx_g = bwd.gelu_backward(x, c_g)
        dqkv = bwd.attention_backward(x, c_a)
        _, c_ln_ref = L.layernorm_forward(x, w, b)
        dw_ref, db_ref = np.zeros(C), np.zeros(C)
        np.testing.assert_allclose(dx_ln, L.layernorm_backward(x, c_ln_ref, dw_ref, db_ref),
                                   rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-10)
        np.testing.assert_allclose(dx_g, L.gelu_backward(x, L.gelu_forward(x)[1]), rtol=1e-10)
        ref = L.attention_backward(x, L.attention_forward(qkv, H, 0.3, np.random.default_rng(1))[1])
        np.testing.assert_allclose(dqkv, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case,module,kernel", [
    ("layernorm", kernels.layernorm, "_ln_bwd"),
    ("attention", kernels.attention, "_attn_bwd"),
    ("block", kernels.layernorm, "_ln_bwd"),
])
def test_gradcheck_on_numba_runs_the_kernels(monkeypatch, case, module, kernel):
    """A Numba backward made wrong by 1% fails the layer check on the numba path and leaves the
    numpy path passing: ``minigpt gradcheck --kernels numba`` checks kernel code, not NumPy twice."""
    real = getattr(module, kernel)
    out_arg = {"_ln_bwd": 4, "_attn_bwd": 11}[kernel]          # the dx (dq) buffer it writes

    def wrong(*args):
        real(*args)
        args[out_arg][...] *= 1.01

    for name in ("numpy", "numba"):
        with backend.use(name):
            assert all(r.passed for r in gc.check_layer(case)), name
    monkeypatch.setattr(module, kernel, wrong)
    with backend.use("numpy"):
        assert all(r.passed for r in gc.check_layer(case))
    with backend.use("numba"):
        assert not all(r.passed for r in gc.check_layer(case))


def test_kv_cached_decode_matches_full_forward_with_kernels():
    cfg = GPTConfig(vocab_size=29, context_length=9, emb_dim=16, n_heads=2, n_layers=2,
                    drop_rate=0.0, qkv_bias=True, tie_weights=True)
    model = GPTModel(cfg, seed=4, dtype=np.float64)
    idx = np.random.default_rng(1).integers(0, 29, (2, 9))
    with backend.use("numba"):
        full = model.forward(idx)
        cache = KVCache(cfg, batch_size=2, dtype=np.float64)
        parts = [model.forward(idx[:, :4], kv_cache=cache)]
        parts += [model.forward(idx[:, t:t + 1], kv_cache=cache) for t in range(4, 9)]  # fills it
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-9, atol=1e-12)


def test_switch_validates_names(monkeypatch):
    with pytest.raises(ValueError, match="numba"):
        backend.set_backend("cuda")
    with backend.use("numpy"):
        assert not backend.numba_enabled()
    assert backend.get_backend() in backend.BACKENDS
