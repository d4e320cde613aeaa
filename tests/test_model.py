"""GPTModel: the flat buffer and its views, dtypes, determinism, clear errors, KV cache."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minigpt
from minigpt import GPTConfig, GPTModel, KVCache

CFG = GPTConfig(vocab_size=257, context_length=40, emb_dim=48, n_heads=3, n_layers=2,
                drop_rate=0.1, qkv_bias=True, tie_weights=False)


def batch(cfg=CFG, B=2, T=17, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))


def test_params_are_views_into_one_buffer():
    m = GPTModel(CFG)
    assert m.flat_params.ndim == 1 and m.flat_params.size == CFG.n_params()
    for name, p in m.params.items():
        assert np.shares_memory(p, m.flat_params), name
        assert np.shares_memory(m.grads[name], m.flat_grads), name
        assert p.flags.c_contiguous
    m.flat_params[...] = 0.5
    assert all(np.all(p == 0.5) for p in m.params.values())


def test_hugging_face_names_and_layouts():
    m = GPTModel(CFG)
    C, V = CFG.emb_dim, CFG.vocab_size
    assert m.params["wte.weight"].shape == (V, C)
    assert m.params["wpe.weight"].shape == (CFG.context_length, C)
    assert m.params["h.1.attn.c_attn.weight"].shape == (C, 3 * C)
    assert m.params["h.1.attn.c_attn.bias"].shape == (3 * C,)
    assert m.params["h.0.mlp.c_fc.weight"].shape == (C, 4 * C)
    assert m.params["h.0.mlp.c_proj.weight"].shape == (4 * C, C)
    assert m.params["lm_head.weight"].shape == (V, C)
    assert "lm_head.weight" not in GPTModel(CFG.replace(tie_weights=True)).params
    assert "h.0.attn.c_attn.bias" not in GPTModel(CFG.replace(qkv_bias=False)).params


def test_init_statistics_and_seed():
    m = GPTModel(CFG.replace(emb_dim=96), seed=5)
    assert np.std(m.params["wte.weight"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(m.params["h.0.mlp.c_proj.weight"]) == pytest.approx(0.02 / np.sqrt(4), rel=0.05)
    assert np.all(m.params["h.0.ln_1.weight"] == 1) and np.all(m.params["h.0.mlp.c_fc.bias"] == 0)
    again = GPTModel(CFG.replace(emb_dim=96), seed=5)
    assert np.array_equal(m.flat_params, again.flat_params)
    other = GPTModel(CFG.replace(emb_dim=96), seed=6)
    assert not np.array_equal(m.flat_params, other.flat_params)
    m64 = GPTModel(CFG.replace(emb_dim=96), seed=5, dtype=np.float64)
    np.testing.assert_array_equal(m64.flat_params.astype(np.float32), m.flat_params)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept_through_forward_and_backward(dtype):
    m = GPTModel(CFG, dtype=dtype)
    idx, tgt = batch()
    assert m.forward(idx).dtype == dtype
    loss, grads = m.loss_and_grads(idx, tgt, rng=np.random.default_rng(0))
    assert isinstance(loss, float) and np.isfinite(loss)
    assert all(g.dtype == dtype for g in grads.values())
    assert abs(loss - np.log(CFG.vocab_size)) < 0.5      # a fresh model is near uniform


def test_float32_agrees_with_float64():
    m32, m64 = GPTModel(CFG, dtype=np.float32), GPTModel(CFG, dtype=np.float64)
    idx, tgt = batch()
    l32, g32 = m32.loss_and_grads(idx, tgt)
    g32 = m32.flat_grads.copy()
    l64, _ = m64.loss_and_grads(idx, tgt)
    assert l32 == pytest.approx(l64, rel=1e-5)
    np.testing.assert_allclose(g32, m64.flat_grads, atol=1e-6, rtol=1e-3)


def test_loss_equals_loss_and_grads_without_dropout():
    m = GPTModel(CFG, dtype=np.float64)
    idx, tgt = batch()
    assert m.loss(idx, tgt) == m.loss_and_grads(idx, tgt)[0]
    # and dropout, same seed, gives the same loss and gradients; another seed does not
    a, _ = m.loss_and_grads(idx, tgt, rng=np.random.default_rng(1))
    ga = m.flat_grads.copy()
    b, _ = m.loss_and_grads(idx, tgt, rng=np.random.default_rng(1))
    assert a == b and np.array_equal(ga, m.flat_grads)
    c, _ = m.loss_and_grads(idx, tgt, rng=np.random.default_rng(2))
    assert c != a


def test_tied_head_gradient_is_the_sum_of_both_uses():
    """wte is used twice when tied (lookup and head): its gradient must equal the untied model's
    wte gradient plus its lm_head gradient, for the same weights."""
    tied = GPTModel(CFG.replace(tie_weights=True, drop_rate=0.0), dtype=np.float64)
    untied = GPTModel(CFG.replace(drop_rate=0.0), dtype=np.float64)
    untied.load_state_dict(tied.state_dict() | {"lm_head.weight": tied.params["wte.weight"]})
    idx, tgt = batch()
    lt, gt = tied.loss_and_grads(idx, tgt)
    lu, gu = untied.loss_and_grads(idx, tgt)
    assert lt == pytest.approx(lu, rel=1e-12)
    np.testing.assert_allclose(gt["wte.weight"], gu["wte.weight"] + gu["lm_head.weight"], rtol=1e-10,
                               atol=1e-14)


def test_causal_and_ignored_targets_do_not_count():
    """Position t only sees tokens <= t, so ignoring every target from 10 on gives the loss of the
    first 10 tokens alone, and positions 10.. get exactly zero gradient."""
    m = GPTModel(CFG.replace(drop_rate=0.0), dtype=np.float64)
    idx, tgt = batch()
    tgt2 = tgt.copy()
    tgt2[:, 10:] = -100
    assert m.loss(idx, tgt2) == pytest.approx(m.loss(idx[:, :10], tgt[:, :10]), rel=1e-13)
    _, g = m.loss_and_grads(idx, tgt2)
    assert np.all(g["wpe.weight"][10:] == 0)
    assert np.all(g["wpe.weight"][:10] != 0)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 3), dtype=np.float32), "integer"),
    (np.zeros(5, dtype=np.int64), "shape"),
    (np.zeros((1, 2, 3), dtype=np.int64), "shape"),
    (np.full((1, 3), 257), "outside the vocabulary"),
    (np.full((1, 3), -1), "outside the vocabulary"),
    (np.zeros((1, 41), dtype=np.int64), "context_length"),
    (np.zeros((1, 0), dtype=np.int64), "empty"),
    (np.zeros((1, 3), dtype=bool), "integer"),
])
def test_bad_input_is_a_clear_value_error(bad, match):
    m = GPTModel(CFG)
    with pytest.raises(ValueError, match=match):
        m.forward(bad)


def test_bad_targets():
    m = GPTModel(CFG)
    idx, tgt = batch()
    with pytest.raises(ValueError, match="does not match"):
        m.loss_and_grads(idx, tgt[:, :-1])
    with pytest.raises(ValueError, match="ignore index"):
        m.loss_and_grads(idx, np.full_like(tgt, 300))
    with pytest.raises(ValueError, match="integer"):
        m.loss_and_grads(idx, tgt.astype(float))
    with pytest.raises(ValueError, match="ignore_index"):
        m.loss_and_grads(idx, np.full_like(tgt, -100))


def test_bad_config_and_dtype():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(emb_dim=10, n_heads=3)
    with pytest.raises(ValueError, match="positive"):
        GPTConfig(n_layers=0)
    with pytest.raises(ValueError, match="drop_rate"):
        GPTConfig(drop_rate=1.0)
    with pytest.raises(ValueError, match="unknown"):
        GPTConfig.from_dict({"emb_dim": 8, "n_head": 2})
    with pytest.raises(ValueError, match="float32 or float64"):
        GPTModel(CFG, dtype=np.float16)


def test_state_dict_round_trip_and_strictness():
    a, b = GPTModel(CFG, seed=1), GPTModel(CFG, seed=2)
    b.load_state_dict(a.state_dict())
    assert np.array_equal(a.flat_params, b.flat_params)
    with pytest.raises(ValueError, match="missing"):
        b.load_state_dict({"wte.weight": a.params["wte.weight"]})
    with pytest.raises(ValueError, match="shape"):
        b.load_state_dict(a.state_dict() | {"wpe.weight": np.zeros((3, 3))})


@settings(max_examples=15, deadline=None)
@given(splits=st.lists(st.integers(1, 6), min_size=1, max_size=6), tie=st.booleans(),
       seed=st.integers(0, 10_000))
def test_kv_cache_equals_full_forward(splits, tie, seed):
    """Feeding the tokens in chunks through the KV cache gives the full forward's logits."""
    cfg = CFG.replace(tie_weights=tie)
    m = GPTModel(cfg, seed=seed % 7, dtype=np.float64)
    T = sum(splits)
    idx = np.random.default_rng(seed).integers(0, cfg.vocab_size, (2, T))
    full = m.forward(idx)
    cache = KVCache(cfg, batch_size=2, dtype=np.float64)
    parts, t = [], 0
    for n in splits:
        parts.append(m.forward(idx[:, t:t + n], kv_cache=cache))
        t += n
    assert cache.pos == T
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-10, atol=1e-12)


def test_kv_cache_errors():
    m = GPTModel(CFG)
    cache = KVCache(CFG, batch_size=1, max_len=4)
    with pytest.raises(ValueError, match="batch size"):
        m.forward(np.zeros((2, 2), dtype=np.int64), kv_cache=cache)
    m.forward(np.zeros((1, 3), dtype=np.int64), kv_cache=cache)
    with pytest.raises(ValueError, match="full"):
        m.forward(np.zeros((1, 2), dtype=np.int64), kv_cache=cache)
    with pytest.raises(ValueError, match="dtype"):
        m.forward(np.zeros((1, 1), dtype=np.int64), kv_cache=KVCache(CFG, 1, dtype=np.float64))


def test_public_api_names():
    for name in ["GPTConfig", "GPTModel", "KVCache", "GPT_CONFIG_124M", "model_configs"]:
        assert hasattr(minigpt, name)


def test_copy_and_deepcopy_own_their_buffers():
    import copy

    from minigpt.lora import with_lora
    cfg = GPTConfig(vocab_size=13, context_length=8, emb_dim=8, n_heads=2, n_layers=2, num_classes=2)
    base = GPTModel(cfg, seed=3, dtype=np.float64)
    model = with_lora(base, rank=2, alpha=4)
    model.freeze(lambda name: ".lora_" not in name)
    for twin in (model.copy(), copy.deepcopy(model)):
        assert twin.frozen_names() == model.frozen_names()
        assert [s.name for s in twin.table] == [s.name for s in model.table]
        np.testing.assert_array_equal(twin.flat_params, model.flat_params)
        before = model.flat_params.copy()
        twin.flat_params += 1.0                     # the named views follow the copy's buffer ...
        name = twin.trainable_names()[0]
        np.testing.assert_array_equal(twin.params[name], model.params[name] + 1.0)
        np.testing.assert_array_equal(model.flat_params, before)   # ... and the original is untouched
    # negative control: a plain attribute-by-attribute copy shares the views (the bug this prevents)
    shallow = copy.copy(model)
    shallow.flat_params = model.flat_params.copy()
    shallow.flat_params += 1.0
    assert shallow.params[name] is model.params[name]
