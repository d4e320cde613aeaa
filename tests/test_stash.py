"""minigpt/stash.py: a training step whose block caches live in the gradient buffer gives the
same bits as one whose caches live on the heap, leaves no activation behind in the gradients
(frozen blocks, an error mid-step), and really stashes. A control shows the comparison can fail: a
stash that is not zeroed after use is caught."""

from __future__ import annotations

import numpy as np
import pytest

from minigpt import GPTConfig, GPTModel, backend, heads
from minigpt.stash import Stash, block_slabs

# 16 tokens per step, width 32: a block's cache (9 x 16 x 32 elements) fits in the slab of the
# block below (12 x 32^2 + biases); 3 blocks, so blocks 1 and 2 stash
CFG = GPTConfig(vocab_size=50, context_length=8, emb_dim=32, n_heads=4, n_layers=3,
                drop_rate=0.1, qkv_bias=True, tie_weights=True)


def test_stash_copies_what_fits_and_clear_zeroes_it():
    buf = np.zeros(24, np.float32)                         # 96 bytes
    s = Stash(buf)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    k = s.keep(a)
    assert k.shape == (2, 3) and np.shares_memory(k, buf) and (k == a).all()
    assert s.keep(k) is k and s.used == 24                 # kept already: not copied again
    big = np.ones(9, np.float32)                           # bytes 64..100: beyond the slab
    assert s.keep(big) is big                              # does not fit: left where it is
    s.clear()
    assert not buf.any() and s.used == 0
    mask = np.array([True, False, True])                   # any dtype: the slab is bytes
    k = s.keep(mask)
    assert k.dtype == bool and np.shares_memory(k, buf) and (k == mask).all()
    assert s.keep(np.ones(2, np.float64)).dtype == np.float64
    s.clear()
    assert not buf.any()


def test_block_slabs_are_the_blocks_runs_of_the_buffer():
    model = GPTModel(CFG, seed=0)
    slabs = block_slabs(model.ranges, CFG.n_layers)
    for i, (lo, hi) in enumerate(slabs):
        names = [n for n in model.ranges if n.startswith(f"h.{i}.")]
        assert hi - lo == sum(model.grads[n].size for n in names)
    # a block whose parameters are not one run gets no slab
    ranges = {"h.0.a": (0, 4), "h.0.b": (8, 12), "h.1.a": (4, 8)}
    assert block_slabs(ranges, 2) == [None, (4, 8)]


def _steps(model: GPTModel, seeds=(0, 1)):
    out = []
    for s in seeds:
        rng = np.random.default_rng(s)
        idx = rng.integers(0, CFG.vocab_size, (2, 8))
        loss, _ = model.loss_and_grads(idx, np.roll(idx, -1, 1), rng=np.random.default_rng(s + 7))
        out.append((loss, model.flat_grads.copy()))
    return out


def _no_stash(monkeypatch):
    monkeypatch.setattr(GPTModel, "_stashes", lambda self: [None] * self.cfg.n_layers)


@pytest.mark.parametrize("name", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("recompute_mlp", [False, True])
def test_a_step_gives_the_same_bits_with_the_caches_stashed(name, dtype, recompute_mlp,
                                                           monkeypatch):
    kept = []
    real_keep = Stash.keep
    monkeypatch.setattr(Stash, "keep", lambda self, a: kept.append(a.size) or real_keep(self, a))
    with backend.use(name):
        on = GPTModel(CFG, seed=3, dtype=dtype)
        on.recompute_mlp = recompute_mlp
        on.flat_grads[...] = np.nan                    # zero_grad must clear the last step's
        got = _steps(on)
        assert kept                                    # the caches really went to the slabs
        with monkeypatch.context() as m:
            _no_stash(m)
            off = GPTModel(CFG, seed=3, dtype=dtype)
            off.recompute_mlp = recompute_mlp
            want = _steps(off)
    for (l1, g1), (l2, g2) in zip(got, want, strict=True):
        assert l1 == l2
        np.testing.assert_array_equal(g1, g2)


def test_control_a_stash_left_unzeroed_is_caught(monkeypatch):
    """The comparison above finds a slab that is not zeroed after its block's backward."""
    monkeypatch.setattr(Stash, "clear", lambda self: setattr(self, "used", 0))
    bad = _steps(GPTModel(CFG, seed=3))
    monkeypatch.undo()
    _no_stash(monkeypatch)
    good = _steps(GPTModel(CFG, seed=3))
    assert not np.array_equal(bad[0][1], good[0][1])


def test_frozen_blocks_keep_zero_gradients():
    """Blocks 0 and 1 frozen: the backward stops at block 2, so block 1's stash (in block 0's
    slab) is never reached by a block's backward; it must still be zeroed."""
    model = GPTModel(CFG, seed=3)
    model.freeze(lambda n: n.startswith(("h.0.", "h.1.")) or n in ("wte.weight", "wpe.weight"))
    assert model._grad_floor == 2
    _steps(model)
    for n in model.frozen_names():
        assert not model.grads[n].any(), n


def test_an_error_mid_step_leaves_no_activation_in_the_gradients(monkeypatch):
    model = GPTModel(CFG, seed=3)

    def fail(*a, **k):
        raise RuntimeError("head")

    monkeypatch.setattr(heads, "lm_head_loss", fail)
    with pytest.raises(RuntimeError, match="head"):
        _steps(model, seeds=(0,))
    assert not model.flat_grads.any()
