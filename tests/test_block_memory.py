"""What a block's training cache keeps: the recomputed activations (GELU's output and tanh, the
layernorms' outputs and normalised inputs, the attention's weights and output, minigpt/block.py)
must not creep back into it.

The cache's distinct arrays (each underlying buffer once, parameter views left out) are counted
against the list the backward needs: the two layernorm inputs (B, T, C), GELU's input u (B, T, 4C)
and qkv (B, T, 3C). Dropout 0: no masks.
"""

from __future__ import annotations

import numpy as np
import pytest

from minigpt import backend
from minigpt.block import block_backward, block_forward
from minigpt.config import GPTConfig
from minigpt.model import GPTModel


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def cached_elements(cache, params: np.ndarray) -> int:
    seen, total = set(), 0

    def walk(o):
        nonlocal total
        if isinstance(o, np.ndarray):
            r = _root(o)
            if id(r) not in seen and not np.shares_memory(r, params):
                seen.add(id(r))
                total += r.size
        elif isinstance(o, (tuple, list)):
            for item in o:
                walk(item)

    walk(cache)
    return total


@pytest.mark.parametrize("name", ["numba", "numpy"])
def test_block_cache_holds_only_what_the_backward_cannot_recompute(name):
    B, T, C, H = 2, 33, 24, 3
    cfg = GPTConfig(vocab_size=11, context_length=T, emb_dim=C, n_heads=H, n_layers=1,
                    drop_rate=0.0, qkv_bias=True)
    model = GPTModel(cfg, seed=0, dtype=np.float64)
    p, g = model._block_params[0], model._blocks_g[0]
    x = np.random.default_rng(0).normal(size=(B, T, C))
    with backend.use(name):
        y, cache = block_forward(x, p, H)
        want = B * T * C * (1 + 1 + 4 + 3)
        assert cached_elements(cache, model.flat_params) == want
        # negative controls: the same count finds a (B, T, 4C) array put back into the cache, and
        # the attention weights (B, H, T, T) the block used to keep
        assert cached_elements((cache, np.tanh(cache[7])), model.flat_params) == want + B * T * 4 * C
        _, c_att = backend.ops().attention_forward(cache[2][0], H)
        assert cached_elements((cache, c_att[3]), model.flat_params) == want + B * H * T * T
        dx = block_backward(np.ones_like(y), cache, g)
    assert dx.shape == x.shape and np.isfinite(dx).all()


def _tiny_float32(B: int, T: int, C: int, H: int, n_layers: int):
    """A float32 model (vocabulary 11, width C, H heads, dropout 0.1), a block input x (B, T, C)
    and ids (B, T)."""
    cfg = GPTConfig(vocab_size=11, context_length=T, emb_dim=C, n_heads=H, n_layers=n_layers,
                    drop_rate=0.1, qkv_bias=True)
    model = GPTModel(cfg, seed=0, dtype=np.float32)
    x = np.random.default_rng(0).normal(size=(B, T, C)).astype(np.float32)
    idx = np.random.default_rng(1).integers(0, 11, (B, T))
    return model, x, idx


def _steps_with(model: GPTModel, idx: np.ndarray, attr: str, values) -> list:
    """(loss, a copy of the flat gradients) of one training step for each value of ``attr``."""
    runs = []
    for value in values:
        setattr(model, attr, value)
        loss, _ = model.loss_and_grads(idx, np.roll(idx, -1, 1), rng=np.random.default_rng(5))
        runs.append((loss, model.flat_grads.copy()))
    return runs


@pytest.mark.parametrize("name", ["numba", "numpy"])
def test_recompute_mlp_drops_u_and_gives_the_same_bits(name):
    """GPTModel.recompute_mlp: the block cache loses GELU's input u (B, T, 4C), and a training step
    gives the same loss and gradients to the last bit (the same op on the same input), float32,
    dropout on."""
    from minigpt.block import RecomputeU

    B, T, C, H = 2, 33, 24, 3
    model, x, idx = _tiny_float32(B, T, C, H, n_layers=2)
    p = model._block_params[0]
    with backend.use(name):
        _, kept = block_forward(x, p, H)
        _, dropped = block_forward(x, p, H, recompute_mlp=True)
        assert isinstance(dropped[7], RecomputeU)
        assert cached_elements(dropped, model.flat_params) == \
            cached_elements(kept, model.flat_params) - B * T * 4 * C
        runs = _steps_with(model, idx, "recompute_mlp", (False, True))
    assert runs[0][0] == runs[1][0] and np.array_equal(runs[0][1], runs[1][1])
    assert runs[0][1].any()


@pytest.mark.parametrize("name", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_masks_are_kept_as_bytes_and_rebuilt_to_the_same_bits(name, dtype):
    """With dropout, a block keeps its three masks (attention (B, H, T, T), two residual (B, T, C))
    as bool + scale (PackedMask); unpack_mask gives back the float mask the layer made, bit for
    bit. Control: a scale off by one ulp does not."""
    from minigpt.block import PackedMask, pack_mask, unpack_mask

    B, T, C, H = 2, 33, 24, 3
    cfg = GPTConfig(vocab_size=11, context_length=T, emb_dim=C, n_heads=H, n_layers=1,
                    drop_rate=0.3, qkv_bias=True)
    model = GPTModel(cfg, seed=0, dtype=dtype)
    x = np.random.default_rng(0).normal(size=(B, T, C)).astype(dtype)
    with backend.use(name):
        ops_layer = backend.ops()
        _, cache = block_forward(x, model._block_params[0], H, 0.3, np.random.default_rng(1))
        _, c_att = ops_layer.attention_forward(cache[2][0], H, 0.3, np.random.default_rng(7))
        _, c_drop = ops_layer.dropout_forward(x, 0.3, np.random.default_rng(8))
    packed = [cache[2][2], cache[4], cache[9]]
    assert all(isinstance(m, PackedMask) and m.keep.dtype == np.bool_ for m in packed)
    assert packed[0].keep.shape == (B, H, T, T) and packed[1].keep.shape == (B, T, C)
    for mask in (c_att[4], c_drop):                 # the masks the ops make, round trip
        again = unpack_mask(pack_mask(mask))
        assert again.dtype == mask.dtype and np.array_equal(again, mask)
        off = PackedMask(pack_mask(mask).keep, np.nextafter(pack_mask(mask).scale, dtype(2)))
        assert not np.array_equal(unpack_mask(off), mask)
    assert pack_mask(None) is None and unpack_mask(None) is None


def test_default_keeps_the_attention_where_its_weights_are_no_larger_than_u():
    from minigpt.block import recomputes_attention
    assert not recomputes_attention(12, 128, 768)         # GPT-2 124M, the bench's batch 4 x 128
    assert not recomputes_attention(12, 256, 768)         # 12 x 256 = 3072 = 4 C
    assert recomputes_attention(12, 257, 768)
    assert recomputes_attention(8, 1024, 256)             # the bench's 'long' config
    assert not recomputes_attention(8, 128, 256)          # 'small'


@pytest.mark.parametrize("name", ["numba", "numpy"])
@pytest.mark.parametrize("T", [7, 33])                     # the fused and the BLAS attention
def test_kept_attention_gives_the_same_bits_as_recomputed(name, T):
    """recompute_attention False / True / None: the block cache holds the attention's weights
    (B, H, T, T) and output (B, T, C) or not, and a training step with dropout gives the same loss
    and gradients to the last bit (the backward reads the same values either way), float32, with
    the caches in the gradient buffer where they fit (three blocks)."""
    from minigpt.block import KeptAttention

    B, C, H = 2, 24, 3
    model, x, idx = _tiny_float32(B, T, C, H, n_layers=3)
    p = model._block_params[0]
    with backend.use(name):
        _, kept = block_forward(x, p, H, 0.1, np.random.default_rng(2), recompute_attention=False)
        _, again = block_forward(x, p, H, 0.1, np.random.default_rng(2), recompute_attention=True)
        assert isinstance(kept[2], KeptAttention) and not isinstance(again[2], KeptAttention)
        assert cached_elements(kept, model.flat_params) == \
            cached_elements(again, model.flat_params) + B * H * T * T + B * T * C
        runs = _steps_with(model, idx, "recompute_attention", (False, True, None))
    for loss, grads in runs[1:]:
        assert loss == runs[0][0] and np.array_equal(grads, runs[0][1])
    assert runs[0][1].any()
