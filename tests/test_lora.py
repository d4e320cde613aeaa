"""LoRA (the book's appendix E): the layer, its gradients on both kernel paths, the block and model
integration, merging, the PEFT adapter files (against a PEFT-written fixture), the book's counts."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from minigpt import backend
from minigpt import gradcheck as gc
from minigpt.config import GPT_CONFIG_124M, PRETRAINED_CONFIGS, GPTConfig
from minigpt.inference.kv_cache import KVCache
from minigpt.layers.lora import lora_backward, lora_forward, lora_linear_backward, lora_linear_forward
from minigpt.lora import (
    BOOK_TARGETS,
    PEFT_TARGETS,
    adapter_specs,
    adapters,
    lora_specs,
    merge_lora,
    unmerge_lora,
    with_lora,
)
from minigpt.model import GPTModel
from minigpt.params import count, uniform_fan_in
from minigpt.training.optim import AdamW
from minigpt.weights.adapter import load_adapter, save_adapter
from minigpt.weights.pretrained import from_pretrained

pytestmark = pytest.mark.usefixtures("one_numba_thread")

FIXTURE = Path(__file__).parent / "fixtures" / "lora_peft"
TINY = GPTConfig(vocab_size=13, context_length=8, emb_dim=8, n_heads=2, n_layers=2, drop_rate=0.0,
                 qkv_bias=True)
IDX = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]])
PATHS = ["numpy", "numba"]


def lora_model(targets=BOOK_TARGETS, rank=3, alpha=5.0, seed=1):
    """A float64 tiny model with LoRA whose B are nonzero (as after some training)."""
    base = GPTModel(TINY, seed=seed, dtype=np.float64)
    m = with_lora(base, rank, alpha, targets)
    rng = np.random.default_rng(seed)
    for a in adapters(m):
        m.params[a.b_name][...] = rng.standard_normal(m.shapes[a.b_name])
    return base, m


# --- the layer --------------------------------------------------------------------------------------
def test_lora_linear_shapes_and_value():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 5)), rng.standard_normal((5, 6)), rng.standard_normal(6)
    A, B = rng.standard_normal((5, 2)), rng.standard_normal((2, 6))
    out, cache = lora_linear_forward(x, w, b, A, B, 0.5)
    assert out.shape == (2, 3, 6)
    np.testing.assert_allclose(out, x @ w + b + 0.5 * (x @ A) @ B, rtol=1e-13)   # eq. 12.1
    dw, db, dA, dB = (np.zeros_like(t) for t in (w, b, A, B))
    dx = lora_linear_backward(np.ones_like(out), cache, dw, db, dA, dB)
    assert dx.shape == x.shape and dA.shape == A.shape and dB.shape == B.shape


def test_qkv_pairs_equal_one_block_diagonal_adapter():
    """Eq. 12.6: three pairs on c_attn's column blocks = one rank-3r pair with block-diagonal B."""
    rng = np.random.default_rng(1)
    C, r = 4, 2
    x, w = rng.standard_normal((3, C)), rng.standard_normal((C, 3 * C))
    As = tuple(rng.standard_normal((C, r)) for _ in range(3))
    Bs = tuple(rng.standard_normal((r, C)) for _ in range(3))
    B_bd = np.zeros((3 * r, 3 * C))
    for j in range(3):
        B_bd[j * r:(j + 1) * r, j * C:(j + 1) * C] = Bs[j]
    split, _ = lora_linear_forward(x, w, None, As, Bs, 0.7)
    fused, _ = lora_linear_forward(x, w, None, np.concatenate(As, axis=1), B_bd, 0.7)
    np.testing.assert_allclose(split, fused, rtol=1e-13)


def test_with_b_zero_the_gradient_of_a_is_exactly_zero():
    """Why the gradient checks draw B != 0: at B = 0, dA = s x^T dout B^T = 0 exactly (eq. 12.4)
    and a check of A would compare zeros with zeros. dB is not zero (eq. 12.3)."""
    rng = np.random.default_rng(2)
    x, A, B = rng.standard_normal((2, 3, 5)), rng.standard_normal((5, 4)), np.zeros((4, 6))
    out, cache = lora_forward(x, A, B, 2.0)
    assert not out.any()
    dA, dB = np.zeros_like(A), np.zeros_like(B)
    lora_backward(rng.standard_normal(out.shape), cache, dA, dB)
    assert np.array_equal(dA, np.zeros_like(A)) and np.abs(dB).min() > 0


def test_frozen_base_weight_skips_dw_and_changes_nothing_else():
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 3, 5)), rng.standard_normal((5, 6)), rng.standard_normal(6)
    A, B = rng.standard_normal((5, 2)), rng.standard_normal((2, 6))
    g = rng.standard_normal((2, 3, 6))
    _, cache = lora_linear_forward(x, w, b, A, B, 1.5)
    full = [np.zeros_like(t) for t in (w, b, A, B)]
    dx_full = lora_linear_backward(g, cache, *full)
    dA, dB = np.zeros_like(A), np.zeros_like(B)
    dx = lora_linear_backward(g, cache, None, None, dA, dB)
    assert np.array_equal(dx, dx_full) and np.array_equal(dA, full[2]) and np.array_equal(dB, full[3])


def test_bad_pairs_are_refused():
    x, w = np.zeros((2, 4)), np.zeros((4, 9))
    with pytest.raises(ValueError, match="column block"):
        lora_linear_forward(x, w, None, np.zeros((4, 2)), np.zeros((2, 8)), 1.0)
    with pytest.raises(ValueError, match="equal blocks"):
        lora_linear_forward(x, w, None, (np.zeros((4, 2)),) * 2, (np.zeros((2, 4)),) * 2, 1.0)


# --- gradient checks, both kernel paths -----------------------------------------------------------
def test_lora_gradient_checks_exist_and_draw_b_nonzero():
    """The LoRA linear (one pair and q / k / v pairs) and blocks with LoRA on all four linears are
    cases of gc.LAYER_CASES, so test_gradcheck (default path) and test_kernels_model (numba and
    numpy paths) check every element of every input against float64 central differences. Each
    draws B != 0 (with B = 0, dA = 0 and the check of A proves nothing) and a scale != 1."""
    cases = [n for n in gc.LAYER_CASES if "LoRA" in n]
    assert {"LoRA linear (B != 0)", "LoRA linear (q/k/v pairs)", "block (LoRA, q/k/v pairs)",
            "block (LoRA, fused c_attn)", f"block (LoRA, T={gc.T_LONG})"} == set(cases)
    assert gc.LORA_ALPHA / gc.LORA_R != 1
    for name in cases:
        _, _, inputs, _ = gc.LAYER_CASES[name](np.random.default_rng(0))
        bs = [v for k, v in inputs.items() if k.startswith("B") or k.endswith("lora_B")]
        assert bs and all(np.abs(b).min() > 0 for b in bs), name
        n_pairs = sum(k.startswith("A") or k.endswith("lora_A") for k in inputs)
        assert n_pairs == len(bs) == {"LoRA linear (B != 0)": 1, "LoRA linear (q/k/v pairs)": 3}.get(
            name, 6 if "fused" not in name else 4), name


@pytest.mark.parametrize("path", PATHS)
def test_lora_block_gradients_on_both_paths(path):
    """One of those cases run here too, on each path: the block with the book's adapters."""
    with backend.use(path):
        results = gc.check_layer("block (LoRA, q/k/v pairs)")
    assert len(results) == 1 + 12 + 12 and all(r.passed for r in results)


@pytest.mark.parametrize("path", PATHS)
def test_lora_backward_without_scale_is_caught(path):
    with backend.use(path):
        results = gc.NEGATIVE_CONTROLS["LoRA backward without its scale alpha / r"]()
    failed = {r.tensor for r in results if not r.passed}
    assert failed == {"A0", "B0"}


def test_lora_model_gradients_every_element():
    """The whole model with the book's adapters: every element of every parameter (base and A, B)."""
    cfg, targets = gc.LORA_MODEL_VARIANTS["LoRA, q/k/v pairs"]
    with backend.use("numpy"):
        results = gc.check_model(cfg, model_cls=gc.lora_model(targets), label="LoRA")
    names = [r.tensor for r in results]
    assert sum(".lora_" in n for n in names) == 2 * 6 * cfg.n_layers
    assert all(r.passed for r in results), [r for r in results if not r.passed]


# --- the model ----------------------------------------------------------------------------------------
def test_with_lora_starts_as_the_base_model_and_trains_only_the_adapters():
    base = GPTModel(TINY, seed=1, dtype=np.float64)
    m = with_lora(base, 4, 8)
    assert np.array_equal(m.forward(IDX), base.forward(IDX))          # B = 0
    assert all(".lora_" in n for n in m.trainable_names())
    assert m.num_trainable == count(lora_specs(m.cfg))
    for a in adapters(m):                                              # A ~ U(+-1/sqrt(r)), B = 0
        assert np.abs(m.params[a.a_name]).max() <= 1 / math.sqrt(4)
        assert not m.params[a.b_name].any()


def test_a_init_is_the_books_kaiming_uniform_bound():
    """kaiming_uniform_(a=sqrt(5)) on the book's (in_dim, rank) A: fan_in = size(1) = rank,
    gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / rank) = 1 / sqrt(rank)."""
    r = 16
    gain = math.sqrt(2.0 / (1 + 5))
    assert math.isclose(gain * math.sqrt(3.0 / r), 1 / math.sqrt(r)) and 1 / math.sqrt(r) == 0.25
    A, B = adapter_specs("h.0.mlp.c_fc", 768, 3072, r)
    assert A.init_gpt2 == A.init_torch == uniform_fan_in(r) and A.shape == (768, r)
    assert B.shape == (r, 3072) and B.init_gpt2.kind == "zeros"


def test_adamw_with_frozen_base_changes_only_a_and_b():
    _, m = lora_model()
    before = m.state_dict()
    opt = AdamW(m, lr=1e-2, weight_decay=0.1)
    targets = np.roll(IDX, -1, axis=1)
    for _ in range(2):
        m.loss_and_grads(IDX, targets)
        opt.step()
    for name, old in before.items():
        if ".lora_" in name:
            assert not np.array_equal(m.params[name], old), name
        else:
            assert np.array_equal(m.params[name], old), name     # bit-exact


def test_kv_cache_step_uses_the_adapters():
    _, m = lora_model()
    full = m.forward(IDX)
    cache = KVCache(m.cfg, batch_size=2, dtype=np.float64)
    step = np.concatenate([m.forward(IDX[:, :3], kv_cache=cache), m.forward(IDX[:, 3:], kv_cache=cache)],
                          axis=1)
    np.testing.assert_allclose(step, full, rtol=1e-12, atol=1e-12)


def test_adapters_without_a_scale_are_refused():
    cfg = TINY.replace(lora_rank=2, lora_alpha=2)
    m = GPTModel(TINY, dtype=np.float64, extra=lora_specs(cfg))     # cfg without lora fields
    with pytest.raises(ValueError, match="lora_scale"):
        m.forward(IDX)
    with pytest.raises(ValueError, match="lora_alpha"):
        TINY.replace(lora_rank=4)
    with pytest.raises(ValueError, match="lora_rank is 0"):
        lora_specs(TINY)
    with pytest.raises(ValueError, match="c_attn"):
        lora_specs(cfg, ("attn.c_attn.q", "attn.c_proj"))


@pytest.mark.parametrize("targets", [BOOK_TARGETS, PEFT_TARGETS])
def test_merge_and_unmerge(targets):
    _, m = lora_model(targets)
    logits, w0 = m.forward(IDX), m.flat_params.copy()
    c_attn = m.params["h.0.attn.c_attn.weight"].copy()
    merge_lora(m)
    np.testing.assert_allclose(m.forward(IDX), logits, rtol=0, atol=1e-12)
    assert not np.allclose(m.params["h.0.attn.c_attn.weight"], c_attn)     # W moved by s A B
    assert not any(m.params[a.b_name].any() for a in adapters(m))         # and B is zero
    with pytest.raises(ValueError, match="already merged"):
        merge_lora(m)
    unmerge_lora(m)
    np.testing.assert_allclose(m.flat_params, w0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.forward(IDX), logits, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="not merged"):
        unmerge_lora(m)


# --- the book's counts --------------------------------------------------------------------------------
def test_the_books_counts():
    """Appendix E: 124,441,346 trainable before freezing (GPT-2 124M, tied, qkv bias, plus the
    768 -> 2 head with bias), 2,666,528 LoRA parameters at r = 16 with the book's wrapping of every
    nn.Linear (W_query, W_key, W_value, out_proj, ff.0, ff.2 in 12 blocks, and out_head)."""
    cfg = PRETRAINED_CONFIGS["gpt2"].replace(lora_rank=16, lora_alpha=16)
    C = cfg.emb_dim
    assert cfg.n_params() + C * 2 + 2 == 124_441_346
    head = adapter_specs("out_head", C, 2, 16)
    assert count(lora_specs(cfg) + head) == 2_666_528
    # one pair on the fused c_attn has r (C + 3C) where the book's three have 3 r (C + C)
    assert count(lora_specs(cfg, PEFT_TARGETS) + head) == 2_666_528 - 12 * 16 * C * 2
    # chapter 7's exercise 7.4 on gpt2-medium, no head: 7,898,384
    medium = GPT_CONFIG_124M.replace(emb_dim=1024, n_layers=24, n_heads=16, lora_rank=16,
                                     lora_alpha=16)
    assert count(lora_specs(medium)) + 16 * (1024 + 50257) == 7_898_384


# --- PEFT's adapter files -----------------------------------------------------------------------------
@pytest.mark.parametrize("targets", [BOOK_TARGETS, PEFT_TARGETS])
def test_save_load_round_trip(tmp_path, targets):
    _, m = lora_model(targets)
    save_adapter(m, tmp_path, base_model_name_or_path="gpt2")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 3 and config["lora_alpha"] == 5
    assert config["fan_in_fan_out"] is True and config["bias"] == "none"
    assert sorted(config["target_modules"]) == ["c_attn", "c_fc", "c_proj"]
    assert config["rank_pattern"] == ({"c_attn": 9} if targets == BOOK_TARGETS else {})
    fresh = with_lora(GPTModel(TINY, seed=1, dtype=np.float64), 3, 5.0, targets, seed=77)
    load_adapter(fresh, tmp_path)
    assert np.array_equal(fresh.flat_params, m.flat_params)


def test_load_refuses_mismatches(tmp_path):
    _, m = lora_model(PEFT_TARGETS)
    save_adapter(m, tmp_path)
    base = GPTModel(TINY, seed=1, dtype=np.float64)
    with pytest.raises(ValueError, match="rank 3 and alpha 5"):
        load_adapter(with_lora(base, 2, 5.0, PEFT_TARGETS), tmp_path)            # rank
    with pytest.raises(ValueError, match="scale"):
        load_adapter(with_lora(base, 3, 6.0, PEFT_TARGETS), tmp_path)            # alpha
    with pytest.raises(ValueError, match="missing"):
        load_adapter(with_lora(base, 3, 5.0, ("attn.c_attn", "mlp.c_fc")), tmp_path)   # targets
    with pytest.raises(ValueError, match="not block-diagonal"):
        shutil.copy(tmp_path / "adapter_config.json", tmp_path / "cfg.json")
        cfg = json.loads((tmp_path / "cfg.json").read_text())
        cfg["rank_pattern"], cfg["alpha_pattern"], cfg["r"], cfg["lora_alpha"] = {}, {}, 9, 15
        (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
        big = with_lora(base, 9, 15.0, PEFT_TARGETS)
        rng = np.random.default_rng(0)
        for a in adapters(big):
            big.params[a.b_name][...] = rng.standard_normal(big.shapes[a.b_name])
        save_adapter(big, tmp_path)
        load_adapter(with_lora(base, 3, 5.0, BOOK_TARGETS), tmp_path)
    with pytest.raises(ValueError, match="has no adapter_config.json"):
        load_adapter(m, tmp_path / "nowhere")


def test_save_pretrained_refuses_unmerged_adapter_rows(tmp_path):
    from minigpt import save_pretrained

    _, m = lora_model()
    with pytest.raises(ValueError, match="no place in GPT-2's format"):
        save_pretrained(m, tmp_path, tokenizer=False)


@pytest.mark.parametrize("kind,targets", [("book", BOOK_TARGETS), ("peft", PEFT_TARGETS)])
def test_peft_written_adapter_gives_pefts_logits_and_gradients(kind, targets):
    """Adapters written by Hugging Face PEFT (benchmarks/check_peft_adapter.py; for the book's
    layout a rank-3r c_attn with block-diagonal lora_B), loaded by load_adapter onto the same base:
    logits, loss and every LoRA gradient equal PEFT's float64 autograd values."""
    from safetensors.numpy import load_file

    expected = load_file(str(FIXTURE / "expected.safetensors"))
    base = from_pretrained(FIXTURE / "base", dtype=np.float64)
    m = with_lora(base, 4, 6, targets, seed=5)
    load_adapter(m, FIXTURE / f"peft_{kind}")
    idx, targets_ = expected["idx"], expected["targets"]
    np.testing.assert_allclose(m.forward(idx), expected[f"{kind}.logits"], rtol=1e-10, atol=1e-12)
    loss, g = m.loss_and_grads(idx, targets_)
    assert abs(loss - float(expected[f"{kind}.loss"])) < 1e-12
    r, n = 4, 0
    for a in adapters(m):
        key = f"{kind}.grad.{a.layer}"
        j = a.lo // (a.hi - a.lo) if a.layer.endswith("c_attn") and kind == "book" else 0
        dA = expected[key + ".lora_A.weight"].T[:, j * r:(j + 1) * r]       # (in, r)
        dB = expected[key + ".lora_B.weight"].T[j * r:(j + 1) * r, a.lo:a.hi]
        np.testing.assert_allclose(g[a.a_name], dA, rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(g[a.b_name], dB, rtol=1e-9, atol=1e-13)
        n += 1
    assert n == (6 if kind == "book" else 4) * 2
