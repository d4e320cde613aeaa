"""AdamW, the warmup + cosine schedule and gradient clipping (book-notes §8, appendix D)."""

import math

import numpy as np
import pytest

from minigpt.training import optim
from minigpt.training.optim import AdamW, clip_grad_norm_, grad_norm, lr_at


class FlatModel:
    """The part of GPTModel's interface the optimizer uses: named views into flat buffers."""

    def __init__(self, shapes, dtype=np.float64):
        n = sum(int(np.prod(s)) for s in shapes.values())
        self.flat_params = np.zeros(n, dtype)
        self.flat_grads = np.zeros(n, dtype)
        self.params, self.grads, o = {}, {}, 0
        for name, s in shapes.items():
            k = int(np.prod(s))
            self.params[name] = self.flat_params[o : o + k].reshape(s)
            self.grads[name] = self.flat_grads[o : o + k].reshape(s)
            o += k


def test_adamw_two_steps_by_hand():
    # p = [1, -2]; lr 0.1, wd 0.1, betas (0.9, 0.999), eps 1e-8.
    p = np.array([1.0, -2.0])
    opt = AdamW(p, lr=0.1, weight_decay=0.1)
    opt.step(np.array([0.5, 0.1]))
    # step 1: decay p *= 0.99; m = 0.1 g, v = 0.001 g^2, so m_hat = g, v_hat = g^2 and the update
    # is lr * g / (|g| + eps).
    expected1 = np.array([0.99 - 0.1 * 0.5 / (0.5 + 1e-8), -1.98 - 0.1 * 0.1 / (0.1 + 1e-8)])
    np.testing.assert_allclose(p, expected1, rtol=1e-14)
    assert p[0] == pytest.approx(0.890000002, abs=1e-9)
    opt.step(np.array([-0.5, 0.3]))
    # step 2, written out: m = 0.9 m1 + 0.1 g2, v = 0.999 v1 + 0.001 g2^2, bias corrections 0.19, 0.001999
    m = np.array([0.9 * 0.05 + 0.1 * -0.5, 0.9 * 0.01 + 0.1 * 0.3])  # [-0.005, 0.039]
    v = np.array([0.999 * 0.00025 + 0.001 * 0.25, 0.999 * 0.00001 + 0.001 * 0.09])
    expected2 = expected1 * 0.99 - (0.1 / 0.19) * m / (np.sqrt(v) / math.sqrt(0.001999) + 1e-8)
    np.testing.assert_allclose(p, expected2, rtol=1e-13)
    np.testing.assert_allclose(opt.m, m, rtol=1e-13)
    assert opt.t == 2


def test_adamw_float32_stays_float32_and_close_to_float64():
    rng = np.random.default_rng(0)
    p64 = rng.normal(size=3000)
    p32 = p64.astype(np.float32)
    o64, o32 = AdamW(p64, lr=1e-2, weight_decay=0.1), AdamW(p32, lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        g = rng.normal(size=3000)
        o64.step(g)
        o32.step(g.astype(np.float32))
    assert p32.dtype == np.float32 and o32.m.dtype == np.float32
    np.testing.assert_allclose(p32, p64, rtol=1e-5, atol=1e-6)


def test_chunked_pass_equals_one_pass(monkeypatch):
    rng = np.random.default_rng(1)
    p0, gs = rng.normal(size=1000), [rng.normal(size=1000) for _ in range(3)]
    results = []
    for chunk in (1000, 7):  # one chunk vs many ragged chunks
        monkeypatch.setattr(optim, "CHUNK", chunk)
        p = p0.copy()
        opt = AdamW(p, lr=3e-3, weight_decay=0.1)
        for g in gs:
            opt.step(g)
        results.append(p)
    np.testing.assert_array_equal(results[0], results[1])


def test_decay_only_matrices():
    model = FlatModel({"w": (2, 3), "b": (3,), "emb": (4, 2), "ln": (2,)})
    model.flat_params[:] = 1.0
    opt = AdamW(model, lr=0.5, weight_decay=0.1, decay="matrices")
    opt.step()  # zero gradients: only the decay moves the weights
    np.testing.assert_array_equal(model.params["w"], np.full((2, 3), 0.95))
    np.testing.assert_array_equal(model.params["emb"], np.full((4, 2), 0.95))
    np.testing.assert_array_equal(model.params["b"], np.ones(3))
    np.testing.assert_array_equal(model.params["ln"], np.ones(2))
    assert opt.decay_mask().sum() == 6 + 8
    # the default ("all", as the book) decays everything
    model.flat_params[:] = 1.0
    AdamW(model, lr=0.5, weight_decay=0.1).step()
    np.testing.assert_array_equal(model.flat_params, np.full(model.flat_params.size, 0.95))


def test_params_dict_and_grads_dict_are_resolved_to_flat_buffers():
    model = FlatModel({"w": (2, 2), "b": (2,)})
    model.flat_params[:] = [1, 2, 3, 4, 5, 6]
    model.flat_grads[:] = [1, -1, 1, -1, 1, -1]
    a = AdamW(model.params, lr=0.1, weight_decay=0.0)
    a.step(model.grads)
    np.testing.assert_allclose(model.flat_params, [0.9, 2.1, 2.9, 4.1, 4.9, 6.1], rtol=1e-7)


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(2)
    p0, gs = rng.normal(size=50), [rng.normal(size=50) for _ in range(6)]
    p_ref = p0.copy()
    ref = AdamW(p_ref, lr=1e-2, weight_decay=0.1)
    for g in gs:
        ref.step(g)
    p = p0.copy()
    first = AdamW(p, lr=1e-2, weight_decay=0.1)
    for g in gs[:3]:
        first.step(g)
    state = first.state_dict()
    second = AdamW(p, lr=1e-2, weight_decay=0.1)
    second.load_state_dict(state)
    for g in gs[3:]:
        second.step(g)
    np.testing.assert_array_equal(p, p_ref)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="decay"):
        AdamW(np.zeros(3), decay="biases")
    with pytest.raises(ValueError, match="lr"):
        AdamW(np.zeros(3), lr=-1)
    opt = AdamW(np.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        opt.step(np.zeros(4))
    with pytest.raises(ValueError, match="different model"):
        opt.load_state_dict({"m": np.zeros(4), "v": np.zeros(4), "t": 1})
    with pytest.raises(ValueError, match="one flat buffer"):
        AdamW({"a": np.zeros(2), "b": np.zeros(2)})


# --- schedule: appendix D, 15 epochs x 9 batches = 135 steps, warmup int(0.2 * 135) = 27 ----------
BOOK = {"peak_lr": 0.01, "total_steps": 135, "warmup_steps": 27, "initial_lr": 0.0001,
        "min_lr": 0.00001}


def test_schedule_boundaries_of_the_books_run():
    assert int(0.2 * 135) == 27
    assert lr_at(0, **BOOK) == pytest.approx(0.0001)  # warmup starts at initial_lr
    assert lr_at(1, **BOOK) == pytest.approx(0.0001 + 0.0099 / 27)
    assert lr_at(26, **BOOK) == pytest.approx(0.0001 + 26 * 0.0099 / 27)  # last warmup step
    assert lr_at(26, **BOOK) < 0.01
    assert lr_at(27, **BOOK) == pytest.approx(0.01)  # first cosine step: the peak
    mid = 27 + (135 - 27) // 2  # progress 0.5: halfway between peak and min
    assert lr_at(mid, **BOOK) == pytest.approx(0.00001 + 0.5 * (0.01 - 0.00001))
    # the last step the book's loop takes (134) is one step short of min_lr
    assert lr_at(134, **BOOK) == pytest.approx(0.00001 + 0.00999 * 0.5 * (1 + math.cos(math.pi * 107 / 108)))
    assert lr_at(135, **BOOK) == pytest.approx(0.00001)
    assert lr_at(10_000, **BOOK) == pytest.approx(0.00001)  # clamped past the end
    lrs = [lr_at(s, **BOOK) for s in range(135)]
    assert np.all(np.diff(lrs[:28]) > 0) and np.all(np.diff(lrs[27:]) < 0)


def test_schedule_constant_without_min_lr_and_without_warmup():
    assert [lr_at(s, peak_lr=4e-4, total_steps=90) for s in (0, 45, 89)] == [4e-4] * 3
    assert lr_at(3, peak_lr=1.0, total_steps=10, warmup_steps=4) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        lr_at(-1, peak_lr=1.0, total_steps=10)


# --- clipping ---------------------------------------------------------------------------------------
def test_clip_books_example():
    G = np.array([[1.0, 2.0], [2.0, 4.0]])  # ||G||_2 = sqrt(1 + 4 + 4 + 16) = 5
    g = G.ravel().copy()
    norm = clip_grad_norm_(g, max_norm=1.0)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(g, G.ravel() / 5.0, rtol=1e-6)
    assert grad_norm(g) == pytest.approx(1.0, rel=1e-6)


def test_clip_leaves_small_gradients_alone_and_reports_nonfinite():
    g = np.array([0.3, 0.4], dtype=np.float32)
    assert clip_grad_norm_(g, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(g, np.array([0.3, 0.4], dtype=np.float32))
    bad = np.array([1.0, np.nan])
    assert math.isnan(clip_grad_norm_(bad, 1.0))
    model = FlatModel({"w": (2, 2)})
    model.flat_grads[:] = [3, 0, 0, 4]
    assert clip_grad_norm_(model, 2.5) == pytest.approx(5.0)
    np.testing.assert_allclose(model.grads["w"], [[1.5, 0], [0, 2.0]], rtol=1e-6)


# --- frozen parameters: packed moments -----------------------------------------------------------
@pytest.mark.parametrize("kernels", ["numpy", "numba"])
def test_frozen_ranges_update_like_a_full_optimizer_on_the_rest(kernels):
    """With parameters frozen here and there, each trainable element follows exactly the path it
    would with nothing frozen (the moments are packed, not shifted), and frozen ones do not move."""
    from minigpt import backend
    from minigpt.config import GPTConfig
    from minigpt.model import GPTModel

    cfg = GPTConfig(vocab_size=11, context_length=4, emb_dim=6, n_heads=2, n_layers=2, qkv_bias=True)
    rng = np.random.default_rng(5)
    gs = [rng.normal(size=GPTModel(cfg, seed=None, init=None).num_params) for _ in range(3)]
    with backend.use(kernels):
        full, part = GPTModel(cfg, seed=1), GPTModel(cfg, seed=1)
        part.freeze(["wpe.weight", "h.0.ln_2.*", "h.1.mlp.c_fc.weight", "lm_head.weight"])
        start = part.flat_params.copy()
        o_full = AdamW(full, lr=1e-2, weight_decay=0.1, decay="matrices")
        o_part = AdamW(part, lr=1e-2, weight_decay=0.1, decay="matrices")
        assert o_part.m.size == part.num_trainable == full.num_params - sum(
            full.params[n].size for n in part.frozen_names())
        for g in gs:
            o_full.step(g)
            o_part.step(g)
    mask = np.zeros(full.num_params, bool)
    for a, b in part.trainable_ranges():
        mask[a:b] = True
    assert part.flat_params[mask].tobytes() == full.flat_params[mask].tobytes()
    assert part.flat_params[~mask].tobytes() == start[~mask].tobytes()
    assert o_part.m.tobytes() == o_full.m[mask].tobytes()
    # a state saved with other frozen parameters is refused
    state = o_part.state_dict()
    with pytest.raises(ValueError, match="frozen parameters differ"):
        AdamW(full, decay="matrices").load_state_dict(state)
