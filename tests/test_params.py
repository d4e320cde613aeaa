"""The parameter table (minigpt.params) and frozen parameters.

The table is the one place GPT-2's parameters are listed; these tests hold it to listings written
independently (the initialisation walkers the code had before the table, the book's and OpenAI's
names, the book's counts) and show what freezing does: AdamW neither updates nor decays a frozen
parameter and keeps no moments for it, clipping leaves it out, the backward stops below the lowest
trainable layer, and checkpoints keep the flags.
"""

import math

import numpy as np
import pytest

from minigpt import backend
from minigpt.config import GPT_CONFIG_124M, GPTConfig
from minigpt.model import GPTModel
from minigpt.params import (
    ONES,
    ZEROS,
    ParamSpec,
    format_table,
    param_table,
    uniform_fan_in,
)
from minigpt.training.checkpoint import load_checkpoint, save_checkpoint
from minigpt.training.loop import init_like_torch
from minigpt.training.optim import AdamW, clip_grad_norm_, grad_norm

CFG = GPTConfig(vocab_size=37, context_length=9, emb_dim=12, n_heads=3, n_layers=3, drop_rate=0.0,
                qkv_bias=True, tie_weights=False)
VARIANTS = [dict(tie_weights=t, qkv_bias=b) for t in (False, True) for b in (False, True)]


def batch(cfg=CFG, B=2, T=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))


# --- the walkers the table replaced, kept here as an independent reference ----------------------
def _old_gpt2_init(model, seed):
    """GPTModel._init_weights before the table (name-suffix rules), verbatim in substance."""
    rng = np.random.default_rng(seed)
    proj_std = 0.02 / math.sqrt(2 * model.cfg.n_layers)
    for name, p in model.params.items():
        if name.endswith(("ln_1.weight", "ln_2.weight")) or name == "ln_f.weight":
            p[...] = 1.0
        elif name.endswith(".bias"):
            p[...] = 0.0
        else:
            std = proj_std if name.endswith("c_proj.weight") else 0.02
            p[...] = rng.normal(0.0, std, size=p.shape)


def _old_torch_init(model, seed):
    """training.loop.init_like_torch before the table."""
    rng = np.random.default_rng(seed)
    params = model.params
    for name, p in params.items():
        if name in ("wte.weight", "wpe.weight"):
            p[...] = rng.normal(0.0, 1.0, size=p.shape)
        elif name.endswith(("ln_1.weight", "ln_2.weight")) or name == "ln_f.weight":
            p[...] = 1.0
        elif name.endswith(("ln_1.bias", "ln_2.bias")) or name == "ln_f.bias":
            p[...] = 0.0
        elif name == "lm_head.weight":
            bound = 1.0 / math.sqrt(p.shape[1])
            p[...] = rng.uniform(-bound, bound, size=p.shape)
        elif name.endswith(".weight"):
            bound = 1.0 / math.sqrt(p.shape[0])
            p[...] = rng.uniform(-bound, bound, size=p.shape)
        else:
            bound = 1.0 / math.sqrt(params[name[: -len("bias")] + "weight"].shape[0])
            p[...] = rng.uniform(-bound, bound, size=p.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", VARIANTS)
def test_both_initialisations_are_bit_identical_to_the_old_walkers(variant, dtype):
    cfg = CFG.replace(**variant)
    model = GPTModel(cfg, seed=123, dtype=dtype)
    ref = GPTModel(cfg, seed=None, dtype=dtype, init=None)
    assert not ref.flat_params.any()                         # init=None leaves zeros
    _old_gpt2_init(ref, 123)
    assert model.flat_params.tobytes() == ref.flat_params.tobytes()
    init_like_torch(model, 123)
    _old_torch_init(ref, 123)
    assert model.flat_params.tobytes() == ref.flat_params.tobytes()
    torch_built = GPTModel(cfg, seed=123, dtype=dtype, init="torch")   # the constructor switch
    assert torch_built.flat_params.tobytes() == ref.flat_params.tobytes()
    # negative control: another seed is another model
    _old_torch_init(ref, 124)
    assert model.flat_params.tobytes() != ref.flat_params.tobytes()


def test_bad_init_and_bad_extra_rows_are_refused():
    with pytest.raises(ValueError, match="init must be one of"):
        GPTModel(CFG, init="xavier")
    dup = ParamSpec("ln_f.weight", (3,), ZEROS, ZEROS, False)
    with pytest.raises(ValueError, match="already in the table"):
        param_table(CFG, extra=[dup])
    with pytest.raises(ValueError, match="shape"):
        param_table(CFG, extra=[ParamSpec("x", (0, 2), ZEROS, ZEROS, False)])


# --- the table against outside listings ----------------------------------------------------------
def test_counts_are_the_books():
    """Book chapter 4 / exercise 4.1: 2,360,064 attention + 4,722,432 feed-forward parameters per
    block (+ two layernorms), 163,009,536 in all (untied, no qkv bias)."""
    rows = dict(GPT_CONFIG_124M.param_counts(include_head=True))
    assert rows["blocks (12 x 7085568)"] == 12 * (2_360_064 + 4_722_432 + 2 * 2 * 768)
    assert sum(s.size for s in param_table(GPT_CONFIG_124M)) == 163_009_536
    for variant in VARIANTS:
        cfg = CFG.replace(**variant)
        model = GPTModel(cfg, seed=None, init=None)
        assert model.num_params == cfg.n_params() == sum(s.size for s in model.table)
        assert model.num_trainable == model.num_params


def test_table_views_and_hugging_face_round_trip(tmp_path):
    from minigpt.weights.pretrained import from_pretrained, hf_state, save_pretrained

    for variant in VARIANTS:
        cfg = CFG.replace(**variant)
        model = GPTModel(cfg, seed=5, dtype=np.float64)
        pos = 0
        for spec in model.table:                                  # views in table order, no gaps
            view = model.params[spec.name]
            assert view.shape == spec.shape and np.shares_memory(view, model.flat_params)
            assert model.ranges[spec.name] == (pos, pos + spec.size)
            assert view.__array_interface__["data"][0] == (
                model.flat_params.__array_interface__["data"][0] + pos * 8)
            pos += spec.size
        assert pos == model.flat_params.size
        keys = set(hf_state(model))
        want = {s.hf_name for s in model.table}
        if not cfg.qkv_bias:  # GPT-2's format has no switch: zeros are written
            want |= {f"transformer.h.{i}.attn.c_attn.bias" for i in range(cfg.n_layers)}
        assert keys == want
        assert ("lm_head.weight" in keys) != cfg.tie_weights
        out = save_pretrained(model, tmp_path / str(len(list(tmp_path.iterdir()))), tokenizer=False)
        back = from_pretrained(out, dtype=np.float64)
        assert [s.name for s in back.table] == [s.name for s in model.table]
        assert back.flat_params.tobytes() == model.flat_params.tobytes()


def test_book_and_openai_names():
    """The book's GPTModel state-dict keys (ch04 gpt.py) and OpenAI's TF variables, listed here by
    hand for one block."""
    cfg = CFG.replace(n_layers=1)
    book = {p.key: (p.transpose, p.cols) for s in param_table(cfg) for p in s.book}
    C = cfg.emb_dim
    assert set(book) == {
        "tok_emb.weight", "pos_emb.weight", "final_norm.scale", "final_norm.shift", "out_head.weight",
        "trf_blocks.0.norm1.scale", "trf_blocks.0.norm1.shift", "trf_blocks.0.norm2.scale",
        "trf_blocks.0.norm2.shift", "trf_blocks.0.att.out_proj.weight", "trf_blocks.0.att.out_proj.bias",
        "trf_blocks.0.ff.layers.0.weight", "trf_blocks.0.ff.layers.0.bias",
        "trf_blocks.0.ff.layers.2.weight", "trf_blocks.0.ff.layers.2.bias",
        *(f"trf_blocks.0.att.W_{w}.{k}" for w in ("query", "key", "value") for k in ("weight", "bias")),
    }
    assert book["trf_blocks.0.att.W_key.weight"] == (True, (C, 2 * C))     # nn.Linear: (out, in)
    assert book["out_head.weight"] == (False, None)                        # (V, C) like minigpt's
    tf = {s.tf_name for s in param_table(cfg.replace(tie_weights=True)) if s.tf_name}
    assert tf == {"model/wte", "model/wpe", "model/ln_f/g", "model/ln_f/b",
                  *(f"model/h0/{m}/{k}" for m in ("ln_1", "ln_2") for k in ("g", "b")),
                  *(f"model/h0/{m}/{k}" for m in ("attn/c_attn", "attn/c_proj", "mlp/c_fc",
                                                  "mlp/c_proj") for k in ("w", "b"))}
    assert "lm_head.weight" in format_table(param_table(cfg))


def test_decay_group_is_the_matrices():
    model = GPTModel(CFG, seed=None, init=None)
    assert {s.name for s in model.table if s.decay} == {n for n, p in model.params.items() if p.ndim == 2}


# --- frozen parameters ----------------------------------------------------------------------------
def _train(model, opt, steps, clip=None, seed=0):
    for k in range(steps):
        x, y = batch(model.cfg, seed=seed + k)
        model.loss_and_grads(x, y)
        if clip is not None:
            clip_grad_norm_(model, clip)
        opt.step()


@pytest.mark.parametrize("kernels", ["numpy", "numba"])
def test_freeze_all_but_ln_f_and_train(kernels):
    with backend.use(kernels):
        model = GPTModel(CFG, seed=1)
        assert model.freeze() == [s.name for s in model.table]
        assert model.unfreeze("ln_f.*") == ["ln_f.weight", "ln_f.bias"]
        before = model.flat_params.copy()
        opt = AdamW(model, lr=1e-2, weight_decay=0.1, decay="all")
        assert opt.m.size == opt.v.size == model.num_trainable == 2 * CFG.emb_dim
        _train(model, opt, 4, clip=1e-3)
        a, b = model.ranges["ln_f.weight"][0], model.ranges["ln_f.bias"][1]
        assert np.array_equal(model.flat_params[:a], before[:a])          # bit-identical
        assert np.array_equal(model.flat_params[b:], before[b:])
        assert np.all(model.flat_params[a:b] != before[a:b])              # every ln_f element moved
        assert model.trainable_names() == ["ln_f.weight", "ln_f.bias"]
        # the backward stopped above the blocks: their gradients were never computed
        assert not model.flat_grads[: model.ranges["ln_f.weight"][0]].any()


def test_decay_leaves_a_frozen_weight_alone():
    """A frozen wte with weight_decay > 0 and a zero gradient stays bit-identical; the negative
    control (an optimizer that ignores the flag) shrinks it."""

    class IgnoresFlags:   # the model, but reporting everything trainable
        def __init__(self, m):
            self.m = m

        def __getattr__(self, k):
            return getattr(self.m, k)

        def trainable_ranges(self):
            return ((0, self.m.num_params),)

    for ignore in (False, True):
        model = GPTModel(CFG, seed=2)
        model.freeze("wte.weight")
        wte = model.params["wte.weight"].copy()
        opt = AdamW(IgnoresFlags(model) if ignore else model, lr=0.1, weight_decay=0.5)
        opt.step(np.zeros_like(model.flat_grads))
        assert np.array_equal(model.params["wte.weight"], wte) != ignore
        assert opt.decay_mask()[: wte.size].any() == ignore


def test_backward_skips_only_what_is_below_the_lowest_trainable_layer():
    cfg = CFG   # untied: a tied head would write its gradient into the frozen wte's
    x, y = batch(cfg)
    full = GPTModel(cfg, seed=3, dtype=np.float64)
    full.loss_and_grads(x, y)
    model = GPTModel(cfg, seed=3, dtype=np.float64)
    model.freeze(["wte.weight", "wpe.weight", "h.0.*", "h.1.mlp.*"])
    assert model._lowest_trainable_layer() == 1
    model.loss_and_grads(x, y)
    a = model.ranges["h.1.ln_1.weight"][0]
    assert not model.flat_grads[:a].any()                 # embeddings and block 0: skipped
    for name in model.params:                             # above: frozen h.1.mlp.* not computed,
        if name in model.frozen_names():                  # the trainable ones as before
            assert not model.grads[name].any(), name
        else:
            assert model.grads[name].tobytes() == full.grads[name].tobytes(), name
    model.unfreeze()
    assert model._lowest_trainable_layer() == -1
    model.loss_and_grads(x, y)
    assert model.flat_grads.tobytes() == full.flat_grads.tobytes()


def test_clipping_counts_trainable_gradients_only():
    model = GPTModel(CFG, seed=4)
    model.freeze("h.*")
    model.loss_and_grads(*batch())
    model.flat_grads[model.ranges["h.0.ln_1.weight"][0]] = 1e6   # a frozen gradient: ignored
    g = model.flat_grads.astype(np.float64)
    want = math.sqrt(sum(float(g[a:b] @ g[a:b]) for a, b in model.trainable_ranges()))
    assert grad_norm(model) == pytest.approx(want, rel=1e-12)
    assert grad_norm(model.flat_grads) > 1e5                       # the whole buffer counts it
    clip_grad_norm_(model, want / 2)
    assert model.flat_grads[model.ranges["h.0.ln_1.weight"][0]] == 1e6   # not scaled
    assert grad_norm(model) == pytest.approx(want / 2, rel=1e-5)


def test_freeze_after_building_the_optimizer_is_refused_and_bad_names_are_clear():
    model = GPTModel(CFG, seed=None, init=None)
    opt = AdamW(model)
    model.freeze(lambda n: n.startswith("h.2."))
    with pytest.raises(ValueError, match="build a new AdamW"):
        opt.step()
    with pytest.raises(ValueError, match="names no parameter"):
        model.freeze("h.9.*")
    with pytest.raises(ValueError, match="names no parameter"):
        model.unfreeze(["ln_f.weight", "ln_f.gain"])


def test_checkpoint_keeps_the_flags_and_the_small_state_and_resumes_bit_identically(tmp_path):
    def frozen_model():
        m = GPTModel(CFG, seed=6)
        m.freeze(["wte.weight", "wpe.weight", "h.0.*", "lm_head.weight"])
        return m

    ref = frozen_model()
    ref_opt = AdamW(ref, lr=3e-3, weight_decay=0.1, decay="matrices")
    _train(ref, ref_opt, 3)
    save_checkpoint(tmp_path, ref, ref_opt, step=3)
    _train(ref, ref_opt, 3, seed=3)

    resumed = GPTModel(CFG, seed=99)                  # fresh: all trainable, other weights
    opt = AdamW(resumed, lr=3e-3, weight_decay=0.1, decay="matrices")
    load_checkpoint(tmp_path, resumed, opt)
    assert resumed.frozen_names() == ref.frozen_names()
    assert opt.m.size == resumed.num_trainable < resumed.num_params
    _train(resumed, opt, 3, seed=3)
    assert resumed.flat_params.tobytes() == ref.flat_params.tobytes()
    assert opt.m.tobytes() == ref_opt.m.tobytes() and opt.t == ref_opt.t == 6


def test_extra_rows_are_adapters_in_the_same_flat_buffer():
    """A LoRA pair (the book's appendix E) appended to the table: views, init, flags, moments."""
    C, r = CFG.emb_dim, 2
    lora = [ParamSpec("h.1.attn.c_attn.lora_A", (C, r), uniform_fan_in(r), uniform_fan_in(r), False),
            ParamSpec("h.1.attn.c_attn.lora_B", (r, 3 * C), ZEROS, ZEROS, False)]
    base = GPTModel(CFG, seed=7)
    model = GPTModel(CFG, seed=7, extra=lora)
    n = base.num_params
    assert model.num_params == n + C * r + r * 3 * C
    assert model.flat_params[:n].tobytes() == base.flat_params.tobytes()   # GPT-2's draws first
    A = model.params["h.1.attn.c_attn.lora_A"]
    assert np.shares_memory(A, model.flat_params) and 0 < np.abs(A).max() <= 1 / math.sqrt(r)
    assert not model.params["h.1.attn.c_attn.lora_B"].any()
    model.freeze()
    model.unfreeze("*.lora_*")
    assert model._lowest_trainable_layer() == 1
    opt = AdamW(model, lr=1e-2)
    assert opt.m.size == C * r + r * 3 * C
    assert model.table[2].init_gpt2 == ONES and model.table[-1].init_gpt2 == ZEROS
