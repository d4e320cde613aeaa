"""One GPT-2 transformer block, pre-LN (the book's ``TransformerBlock``):

    x = x + dropout(c_proj(attention(c_attn(ln_1(x)))))                        (eq. 8.1)
    x = x + dropout(mlp_proj(gelu(c_fc(ln_2(x)))))                              (eq. 8.2)

``p`` and ``g`` are the block's parameters and gradients keyed by their names inside the block
(``"ln_1.weight"``, ``"attn.c_attn.weight"``, ...); ``"attn.c_attn.bias"`` is absent without qkv bias.

Composition, not math: the layers it chains live in ``minigpt/layers``; it calls them through
``ops = backend.ops()`` (the layers, or the kernels under the same names), fetched once per call.
"""

from __future__ import annotations

import numpy as np

from minigpt import backend


def block_forward(x: np.ndarray, p: dict, n_heads: int, drop_rate: float = 0.0,
                  rng: np.random.Generator | None = None):
    """x (B, T, C) -> (B, T, C). Cache: the caches of its ten layers (dropouts included), in forward order."""
    ops = backend.ops()
    # attention branch (eq. 8.1)
    h, c_ln1 = ops.layernorm_forward(x, p["ln_1.weight"], p["ln_1.bias"])                  # (B, T, C)
    qkv, c_qkv = ops.linear_forward(h, p["attn.c_attn.weight"], p.get("attn.c_attn.bias"))  # (B, T, 3C)
    a, c_att = ops.attention_forward(qkv, n_heads, drop_rate, rng)                         # (B, T, C)
    a, c_proj = ops.linear_forward(a, p["attn.c_proj.weight"], p["attn.c_proj.bias"])     # (B, T, C)
    a, c_drop1 = ops.dropout_forward(a, drop_rate, rng)                                    # (B, T, C)
    x = x + a                                                                              # residual
    # MLP branch (eq. 8.2)
    h, c_ln2 = ops.layernorm_forward(x, p["ln_2.weight"], p["ln_2.bias"])                  # (B, T, C)
    h, c_fc = ops.linear_forward(h, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"])             # (B, T, 4C)
    h, c_gelu = ops.gelu_forward(h)                                                        # (B, T, 4C)
    h, c_mproj = ops.linear_forward(h, p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])      # (B, T, C)
    h, c_drop2 = ops.dropout_forward(h, drop_rate, rng)                                    # (B, T, C)
    x = x + h                                                                              # residual
    return x, (c_ln1, c_qkv, c_att, c_proj, c_drop1, c_ln2, c_fc, c_gelu, c_mproj, c_drop2)


def block_backward(dx: np.ndarray, cache, g: dict) -> np.ndarray:
    """dx (B, T, C) -> dx (B, T, C); adds every parameter gradient into ``g``.

    The residual x + f(x) has Jacobian I + f'(x) (eq. 8.3): the upstream gradient flows on unchanged
    *and* through the branch, so each branch's input gradient is added to dx.
    """
    ops = backend.ops()
    c_ln1, c_qkv, c_att, c_proj, c_drop1, c_ln2, c_fc, c_gelu, c_mproj, c_drop2 = cache
    # MLP branch, last layer first
    dh = ops.dropout_backward(dx, c_drop2)
    dh = ops.linear_backward(dh, c_mproj, g["mlp.c_proj.weight"], g["mlp.c_proj.bias"])
    dh = ops.gelu_backward(dh, c_gelu)
    dh = ops.linear_backward(dh, c_fc, g["mlp.c_fc.weight"], g["mlp.c_fc.bias"])
    dx = dx + ops.layernorm_backward(dh, c_ln2, g["ln_2.weight"], g["ln_2.bias"])   # eq. 8.3
    # attention branch
    da = ops.dropout_backward(dx, c_drop1)
    da = ops.linear_backward(da, c_proj, g["attn.c_proj.weight"], g["attn.c_proj.bias"])
    dqkv = ops.attention_backward(da, c_att)
    dh = ops.linear_backward(dqkv, c_qkv, g["attn.c_attn.weight"], g.get("attn.c_attn.bias"))
    dx = dx + ops.layernorm_backward(dh, c_ln1, g["ln_1.weight"], g["ln_1.bias"])   # eq. 8.3
    return dx


def block_step(x: np.ndarray, p: dict, n_heads: int, k_cache: np.ndarray, v_cache: np.ndarray,
               t0: int) -> np.ndarray:
    """Inference with a KV cache: x (B, T, C) for new positions t0..t0+T-1 -> (B, T, C). No dropout."""
    ops = backend.ops()
    h, _ = ops.layernorm_forward(x, p["ln_1.weight"], p["ln_1.bias"])
    qkv, _ = ops.linear_forward(h, p["attn.c_attn.weight"], p.get("attn.c_attn.bias"))
    a = ops.attention_step(qkv, n_heads, k_cache, v_cache, t0)
    a, _ = ops.linear_forward(a, p["attn.c_proj.weight"], p["attn.c_proj.bias"])
    x = x + a
    h, _ = ops.layernorm_forward(x, p["ln_2.weight"], p["ln_2.bias"])
    h, _ = ops.linear_forward(h, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"])
    h, _ = ops.gelu_forward(h)
    h, _ = ops.linear_forward(h, p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])
    return x + h
