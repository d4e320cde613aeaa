"""KV-cached decoding kernels (``kernels/decode.py``) against the layers' NumPy, at 1, 2, 3 threads.

- ``gemv`` (a few rows times a row-major w, or times ``wt.T`` as the LM head) is within the
  rounding bound of a float64 product, and gives the same bits at every thread count.
- ``block_step`` (one block, one new position per row) equals the layers' block op by op
  (``minigpt.block.block_step`` on the "numpy" backend): output and the keys/values it writes.
- The model's KV-cached logits on the "numba" path equal its uncached forward on the "numpy" path.

``MIN_SPLIT_MACS`` and ``MIN_STEP_SPLIT_MACS`` are set to 0 so that these tiny, odd shapes really
are split (the split is by ``kernels.blas``'s pool, whose count ``kernels.blas.set_threads`` sets;
no Numba threads needed).
"""

from __future__ import annotations

import numpy as np
import pytest

import kernels.blas as kb
from kernels import decode
from minigpt import GPTConfig, GPTModel, KVCache, backend
from minigpt.block import block_step

U = {np.float32: 2.0 ** -24, np.float64: 2.0 ** -53}
THREADS = (1, 2, 3)


@pytest.fixture
def split_everything(monkeypatch):
    """Split every product (threshold 0); restore the product thread count afterwards."""
    monkeypatch.setattr(decode, "MIN_SPLIT_MACS", 0)
    monkeypatch.setattr(decode, "MIN_STEP_SPLIT_MACS", 0)
    before = kb.get_threads()
    yield kb.set_threads
    kb.set_threads(before)


def _bound(x, w, dtype):
    """|error| <= K u (|x| @ |w|) (plus a tiny absolute floor), the classic dot-product bound."""
    return x.shape[1] * U[dtype] * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64)) + 1e-30


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, K, N", [(1, 37, 53), (3, 70, 130), (8, 5, 3)])
def test_gemv_matches_numpy_at_every_thread_count(split_everything, dtype, M, K, N):
    rng = np.random.default_rng(M * 1000 + K)
    x = rng.standard_normal((M, K)).astype(dtype)
    w = rng.standard_normal((K, N)).astype(dtype)
    b = rng.standard_normal(N).astype(dtype)
    wt = np.ascontiguousarray(w.T)                               # (N, K): the LM head's layout
    ref = x.astype(np.float64) @ w.astype(np.float64)
    bound = _bound(x, w, dtype)
    first = {}
    for n in THREADS:
        split_everything(n)
        for name, got in [("rows", decode.gemv(x, w)), ("bias", decode.gemv(x, w, b) - b),
                          ("head", decode.gemv(x, wt.T))]:
            assert got.dtype == dtype and got.shape == (M, N)
            assert np.all(np.abs(got - ref) <= 2 * bound + 4 * U[dtype] * np.abs(ref)), (n, name)
            first.setdefault(name, got)
            np.testing.assert_array_equal(got, first[name], err_msg=f"{name} differs at {n} threads")


def test_gemv_negative_controls(split_everything):
    """The bound catches one wrong output column, and a dropped block leaves its columns unwritten."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 40)), rng.standard_normal((40, 50))
    split_everything(2)
    got = decode.gemv(x, w)
    w2 = w.copy()
    w2[7, 33] += 1e-9                                            # one weight off by 1e-9
    assert not np.all(np.abs(decode.gemv(x, w2) - x @ w) <= 2 * _bound(x, w, np.float64))
    assert np.allclose(got, x @ w)

    class Wrong:                                    # the pool runs its blocks on x = 0 instead
        submitted = 0

        def submit(self, fn, x, *args):
            Wrong.submitted += 1
            fn(np.zeros_like(x), *args)
            return _Done()

    real = kb.pool
    try:
        kb.pool = lambda: (Wrong(), 2)
        wrong = decode.gemv(x, w)
    finally:
        kb.pool = real
    assert Wrong.submitted == 1                     # the second block of columns went to the pool
    np.testing.assert_array_equal(wrong[:, :32], got[:, :32])   # the first: the calling thread
    assert np.all(wrong[:, 32:] == 0) and not np.allclose(got[:, 32:], 0)


class _Done:
    def result(self):
        return None


def test_gemv_refuses_what_it_cannot_do():
    x = np.zeros((decode.MAX_ROWS + 1, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="rows"):
        decode.gemv(x, np.zeros((4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="chain"):
        decode.gemv(x[:1], np.zeros((5, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="dtype"):
        decode.gemv(x[:1], np.zeros((4, 3), dtype=np.float64))


def _block(C, H, qkv_bias, dtype, seed):
    cfg = GPTConfig(vocab_size=11, context_length=12, emb_dim=C, n_heads=H, n_layers=1,
                    drop_rate=0.0, qkv_bias=qkv_bias)
    m = GPTModel(cfg, seed=seed, dtype=dtype)
    m.flat_params[...] = np.random.default_rng(seed).standard_normal(m.num_params) * 0.3
    return cfg, m._block_params[0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B, C, H, qkv_bias, t0", [(1, 15, 3, True, 0), (3, 24, 4, False, 7),
                                                   (2, 12, 1, True, 11)])
def test_block_step_matches_the_layers(split_everything, dtype, B, C, H, qkv_bias, t0):
    """The fused step against the block op by op on the NumPy layers, same cache before; then the
    same bits at 1, 2 and 3 threads."""
    cfg, p = _block(C, H, qkv_bias, dtype, seed=B + C)
    rng = np.random.default_rng(t0)
    x = rng.standard_normal((B, 1, C)).astype(dtype)
    cache = KVCache(cfg, B, dtype=dtype)
    cache.k[0][:, :, :t0] = rng.standard_normal(cache.k[0][:, :, :t0].shape)
    cache.v[0][:, :, :t0] = rng.standard_normal(cache.v[0][:, :, :t0].shape)
    k_ref, v_ref = cache.k[0].copy(), cache.v[0].copy()
    with backend.use("numpy"):
        ref = block_step(x, p, H, k_ref, v_ref, t0)
    tol = {np.float64: 1e-12, np.float32: 1e-4}[dtype]
    first = None
    for n in THREADS:
        split_everything(n)
        k, v = cache.k[0].copy(), cache.v[0].copy()
        with backend.use("numba"):
            got = block_step(x, p, H, k, v, t0)
        assert got.shape == (B, 1, C) and got.dtype == dtype
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
        np.testing.assert_allclose(k, k_ref, rtol=tol, atol=tol)
        np.testing.assert_allclose(v, v_ref, rtol=tol, atol=tol)
        first = got if first is None else first
        np.testing.assert_array_equal(got, first, err_msg=f"bits differ at {n} threads")


def test_block_step_reads_the_cache_negative_control(split_everything):
    """Another key at an earlier position changes the output (the attention really reads the
    cache); a cache left unfilled at t0 - 1 is no longer equal to the reference."""
    cfg, p = _block(12, 2, True, np.float64, seed=3)
    x = np.random.default_rng(1).standard_normal((1, 1, 12))
    cache = KVCache(cfg, 1, dtype=np.float64)
    cache.k[0][:, :, :4] = np.random.default_rng(2).standard_normal((1, 2, 4, 6))
    split_everything(2)
    with backend.use("numba"):
        a = block_step(x, p, 2, cache.k[0].copy(), cache.v[0].copy(), 4)
        k2 = cache.k[0].copy()
        k2[0, 1, 2] += 0.5
        b = block_step(x, p, 2, k2, cache.v[0].copy(), 4)
    assert not np.allclose(a, b)


def test_block_step_refuses_a_position_outside_the_cache():
    cfg, p = _block(12, 2, True, np.float64, seed=3)
    cache = KVCache(cfg, 1, dtype=np.float64)
    args = [p[n] for n in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                           "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                           "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
                           "mlp.c_proj.bias")]
    with pytest.raises(ValueError, match="outside the cache"):
        decode.block_step(np.zeros((1, 12)), *args, cache.k[0], cache.v[0], cfg.context_length)


@pytest.mark.parametrize("B", [1, 3])
def test_cached_decode_logits_equal_the_uncached_forward(split_everything, B):
    """Prefill 3 tokens, then one token per step on the numba path (the fused block and the split
    LM head) at 2 threads: every step's logits equal the uncached forward on the NumPy layers."""
    cfg = GPTConfig(vocab_size=37, context_length=10, emb_dim=16, n_heads=4, n_layers=2,
                    drop_rate=0.0, qkv_bias=True)
    m = GPTModel(cfg, seed=5, dtype=np.float64)
    idx = np.random.default_rng(B).integers(0, 37, (B, 9))
    with backend.use("numpy"):
        ref = m.forward(idx)
    split_everything(2)
    cache = KVCache(cfg, B, dtype=np.float64)
    with backend.use("numba"):
        parts = [m.forward(idx[:, :3], kv_cache=cache)]
        parts += [m.forward(idx[:, t:t + 1], kv_cache=cache) for t in range(3, 9)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), ref, rtol=1e-10, atol=1e-10)


# --- the whole step (kernels.decode.step, kernels.spin) ---------------------------------------------
def _spy_step(monkeypatch):
    """Count the calls of kernels.decode.step (so a silent fallback cannot pass for it)."""
    calls = []
    real = decode.step

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(decode, "step", spy)
    return calls


def _decode_all(m, idx, threads):
    """Prefill 3 tokens, then one token per step on the numba path at ``threads`` threads."""
    kb.set_threads(threads)
    cache = KVCache(m.cfg, idx.shape[0], dtype=m.dtype)
    with backend.use("numba"):
        parts = [m.forward(idx[:, :3], kv_cache=cache)]
        parts += [m.forward(idx[:, t:t + 1], kv_cache=cache) for t in range(3, idx.shape[1])]
    return np.concatenate(parts, axis=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("qkv_bias, tied", [(True, True), (False, False)])
def test_step_gives_the_same_bits_at_every_thread_count(split_everything, monkeypatch, dtype,
                                                        qkv_bias, tied):
    """The whole-step kernel, its threads meeting by spinning after every stage: the same logits,
    bit for bit, at 1, 2 and 3 threads (each output column sums in one order whatever its block),
    and within rounding of the uncached forward on the NumPy layers."""
    calls = _spy_step(monkeypatch)
    cfg = GPTConfig(vocab_size=53, context_length=12, emb_dim=24, n_heads=3, n_layers=3,
                    drop_rate=0.0, qkv_bias=qkv_bias, tie_weights=tied)
    m = GPTModel(cfg, seed=7, dtype=dtype)
    idx = np.random.default_rng(2).integers(0, 53, (2, 10))
    with backend.use("numpy"):
        ref = m.forward(idx)
    out = {t: _decode_all(m, idx, t) for t in THREADS}
    assert len(calls) == 7 * len(THREADS)                      # every one-token step took the kernel
    for t in THREADS[1:]:
        assert np.array_equal(out[t], out[1]), f"{t} threads differ from 1"
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(out[1], ref, rtol=tol, atol=tol)


def test_step_negative_control(split_everything, monkeypatch):
    """The comparison above catches a step that reads the wrong weights: every layer given layer
    0's offsets."""
    cfg = GPTConfig(vocab_size=53, context_length=12, emb_dim=24, n_heads=3, n_layers=3,
                    drop_rate=0.0, qkv_bias=True)
    m = GPTModel(cfg, seed=7, dtype=np.float64)
    idx = np.random.default_rng(2).integers(0, 53, (1, 8))
    with backend.use("numpy"):
        ref = m.forward(idx)
    real = decode.step

    def wrong(x, buf, offs, *rest):
        return real(x, buf, np.repeat(offs[:1], len(offs), axis=0), *rest)
    monkeypatch.setattr(decode, "step", wrong)
    out = _decode_all(m, idx, 2)
    assert not np.allclose(out[:, 3:], ref[:, 3:], rtol=1e-4, atol=1e-4)


def test_step_falls_back_when_weights_are_not_in_one_buffer(split_everything, monkeypatch):
    """A block weight that is not a view of the flat buffer: ``weight_offsets`` says None, the model
    runs block by block, and the logits are still right."""
    calls = _spy_step(monkeypatch)
    cfg = GPTConfig(vocab_size=37, context_length=10, emb_dim=16, n_heads=4, n_layers=2,
                    drop_rate=0.0, qkv_bias=True)
    m = GPTModel(cfg, seed=5, dtype=np.float64)
    idx = np.random.default_rng(0).integers(0, 37, (1, 7))
    with backend.use("numpy"):
        ref = m.forward(idx)
    m._block_params[1]["mlp.c_fc.weight"] = m._block_params[1]["mlp.c_fc.weight"].copy()
    out = _decode_all(m, idx, 2)
    assert calls == []
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10)
    bps = m._block_params
    layers = [tuple(bp.get(n) for n in decode.WEIGHTS) for bp in bps]
    assert decode.weight_offsets(m.flat_params, layers) is None
    bps[1]["mlp.c_fc.weight"] = m.params["h.1.mlp.c_fc.weight"]
    layers = [tuple(bp.get(n) for n in decode.WEIGHTS) for bp in bps]
    offs = decode.weight_offsets(m.flat_params, layers)
    assert offs is not None and offs[1, 8] == m.ranges["h.1.mlp.c_fc.weight"][0]


def test_spin_barrier_gives_up_instead_of_hanging():
    """A barrier for two threads entered by one returns -1 after its poll limit (step then raises)
    rather than spinning for ever; with every thread there it passes."""
    from kernels import spin
    sync = np.zeros(1, dtype=np.int64)
    assert spin.barrier(sync, 2, 0, 10_000) == -1
    sync[:] = 0
    assert spin.barrier(sync, 1, 0, 10_000) == 1 and spin.barrier(sync, 1, 1, 10_000) == 2
