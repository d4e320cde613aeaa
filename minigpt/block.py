"""One GPT-2 transformer block, pre-LN (the book's ``TransformerBlock``):

    x = x + dropout(c_proj(attention(c_attn(ln_1(x)))))                        (eq. 8.1)
    x = x + dropout(mlp_proj(gelu(c_fc(ln_2(x)))))                              (eq. 8.2)

``p`` and ``g`` are the block's parameters and gradients keyed by their names inside the block
(``"ln_1.weight"``, ``"attn.c_attn.weight"``, ...); ``"attn.c_attn.bias"`` is absent without qkv bias.

LoRA (appendix E, ``minigpt.lora``): a linear layer whose adapter is in ``p`` (``"<layer>.lora_A"``
and ``"<layer>.lora_B"``, or the book's three q / k / v pairs ``"attn.c_attn.{q,k,v}.lora_A"``)
runs as ``ops.lora_linear_forward`` scaled by ``p["lora_scale"]`` (alpha / r, which ``GPTModel``
puts there from its config); every other linear as ``ops.linear_forward``. ``_linear`` and
``_linear_backward`` make that choice, so the chain below reads the same either way.

Frozen weights: a linear's weight or bias missing from ``g`` is frozen and gets no gradient; its
layer's backward computes only dx (``minigpt/frozen.py``). ``GPTModel`` builds ``g`` that way.

Composition, not math: the layers it chains live in ``minigpt/layers``; it calls them through
``ops = backend.ops()`` (the layers, or the kernels under the same names), fetched once per call.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minigpt import backend
from minigpt.frozen import frozen_linear_backward

QKV = ("q", "k", "v")   # the book's W_query, W_key, W_value: c_attn's three column blocks


def _adapter(p: dict, name: str):
    """The LoRA adapter of linear layer ``name`` in ``p`` (A, B; tuples for the q / k / v pairs), or
    (None, None)."""
    if name + ".lora_A" in p:
        return p[name + ".lora_A"], p[name + ".lora_B"]
    if name + ".q.lora_A" in p:
        return (tuple(p[f"{name}.{j}.lora_A"] for j in QKV),
                tuple(p[f"{name}.{j}.lora_B"] for j in QKV))
    return None, None


def _linear(ops, p: dict, name: str, x: np.ndarray):
    """Linear layer ``name`` ("attn.c_attn", ...) on x: eq. 3.1, or eq. 12.1 with its adapter."""
    w, b = p[name + ".weight"], p.get(name + ".bias")
    A, B = _adapter(p, name)
    if A is None:
        return ops.linear_forward(x, w, b)
    if "lora_scale" not in p:
        raise ValueError(f"the block has a LoRA adapter on {name} but no 'lora_scale'; build the "
                         "model with GPTConfig(lora_rank=r, lora_alpha=alpha) (see minigpt.lora)")
    return ops.lora_linear_forward(x, w, b, A, B, p["lora_scale"], base=ops.linear_forward)


def _linear_backward(ops, g: dict, name: str, dout: np.ndarray, cache) -> np.ndarray:
    """The backward of ``_linear``: eqs. 3.2-3.4, plus 12.2-12.6 for an adapter. A weight (bias)
    absent from ``g`` is frozen: its gradient is not computed (``minigpt/frozen.py``)."""
    dw, db = g.get(name + ".weight"), g.get(name + ".bias")
    dA, dB = _adapter(g, name)
    if dA is not None:
        return ops.lora_linear_backward(dout, cache, dw, db, dA, dB)
    if dw is None:
        return frozen_linear_backward(dout, cache, db)
    return ops.linear_backward(dout, cache, dw, db)


def _forget_input(cache):
    """A plain linear layer's cache (x, w, has_bias) without x; a LoRA layer's is kept whole."""
    return (None, *cache[1:]) if len(cache) == 3 else cache


def _restore_input(cache, x: np.ndarray):
    """The cache ``_forget_input`` made, with its input x put back."""
    return (x, *cache[1:]) if cache[0] is None else cache


class RecomputeU(NamedTuple):
    """In a block's cache in place of GELU's input u: the backward recomputes u = c_fc(ln_2(x))
    from the block's parameters ``p`` (``block_forward(..., recompute_mlp=True)``)."""

    p: dict


class KeptAttention(NamedTuple):
    """In a block's cache when the attention is kept rather than recomputed (``block_forward``'s
    ``recompute_attention``): its output ``out`` (B, T, C), c_proj's input, and the layer's cache
    ``(q, k, v, weights (B, H, T, T), dropout mask as a PackedMask, scale)``."""

    out: np.ndarray
    cache: tuple


def recomputes_attention(n_heads: int, T: int, C: int) -> bool:
    """The default of ``block_forward``'s ``recompute_attention``: recompute the attention in the
    backward when its weights (B, H, T, T) would be larger than GELU's input u (B, T, 4C), which the
    cache keeps anyway: H T > 4 C. GPT-2 124M (H 12, C 768) keeps them up to T = 256; the bench's
    'long' config (H 8, C 256, T 1024) recomputes them (64 MiB per block at batch 2)."""
    return n_heads * T > 4 * C


class PackedMask(NamedTuple):
    """A dropout mask kept as one byte per element: the kept units (bool) and the scale
    1 / (1 - p) in the activations' dtype. ``unpack_mask`` rebuilds the float mask the dropout
    layer made, ``keep.astype(dtype) * scale``, the same expression, so the same bits."""

    keep: np.ndarray
    scale: np.floating


def pack_mask(mask: np.ndarray | None) -> PackedMask | None:
    """A dropout layer's float mask (0 or 1 / (1 - p) per element) -> a quarter of its bytes
    (float32; an eighth for float64). None (no dropout) stays None."""
    if mask is None:
        return None
    keep = mask != 0
    scale = mask.dtype.type(mask.max()) if keep.any() else mask.dtype.type(0)
    return PackedMask(keep, scale)


def _kept_mask(packed: PackedMask | None, keep) -> PackedMask | None:
    """``packed`` with its bytes put where ``keep`` puts a cache's arrays (``block_forward``)."""
    return None if packed is None else PackedMask(keep(packed.keep), packed.scale)


def unpack_mask(packed: PackedMask | None) -> np.ndarray | None:
    """The float mask again (see ``PackedMask``)."""
    if packed is None:
        return None
    return packed.keep.astype(packed.scale.dtype) * packed.scale


def block_forward(x: np.ndarray, p: dict, n_heads: int, drop_rate: float = 0.0,
                  rng: np.random.Generator | None = None, recompute_mlp: bool = False,
                  stash=None, recompute_attention: bool | None = None):
    """x (B, T, C) -> (B, T, C). Cache: what its layers' backwards need, in forward order.

    Memory (docs/kernels.md, "The training step's non-GEMM work"): three kinds of activation are not
    cached but recomputed by the backward, each by the same op on the same input, giving the same
    bits: the two layernorms' outputs and normalised inputs (the cache keeps each layernorm's input,
    one (B, T, C) array instead of two), GELU's output and tanh (the cache keeps GELU's input u, one
    (B, T, 4C) array instead of three), and, where they are large, the attention's weights
    (B, H, T, T) and output (B, T, C) (the cache keeps qkv, which it needs anyway, and the dropout
    mask, applied again). The dropout masks are kept as one byte per element (``PackedMask``) and
    rebuilt to the same bits. The linear layers reading them keep their caches without their input
    (``_forget_input``) and get it back in the backward.

    ``recompute_mlp``: GELU's input u (B, T, 4C), the largest array left in the cache, is not kept
    either; the backward recomputes it with one more product u = ln_2(x) W_fc + b_fc, the same op on
    the same input (the same bits). Less memory (GPT-2 124M, batch 4 x 128: 6 MiB per block) for
    about 5% more time per step (``GPTModel.recompute_mlp``, ``minigpt train --recompute-mlp``).

    ``recompute_attention``: True recomputes the attention in the backward (one more attention
    forward per block), False keeps its weights and output (``KeptAttention``); None (the default)
    recomputes it only when the weights are larger than u (``recomputes_attention``). The same bits
    either way.

    ``stash``: a ``minigpt.stash.Stash``; the arrays the cache keeps (x, qkv, the attention's
    weights and output when kept, ln_2's input, u) are copies in it, so that they live in a gradient
    slab the backward has not reached yet (the same values; ``GPTModel.loss_and_grads``).
    """
    ops = backend.ops()
    keep = stash.keep if stash is not None else (lambda a: a)
    # what the cache keeps is what the block computes on (no second copy stays alive), and each
    # layer's cache drops its input (and GELU's its tanh) as soon as the layer has run
    x = keep(x)
    ln_1 = (x, p["ln_1.weight"], p["ln_1.bias"])          # layernorm input and parameters, kept
    # attention branch (eq. 8.1)
    h = ops.layernorm_forward(*ln_1)[0]                                                    # (B, T, C)
    qkv, c_qkv = _linear(ops, p, "attn.c_attn", h)                                       # (B, T, 3C)
    c_qkv, qkv = _forget_input(c_qkv), keep(qkv)
    a, c_att = ops.attention_forward(qkv, n_heads, drop_rate, rng)                         # (B, T, C)
    if recompute_attention is None:
        recompute_attention = recomputes_attention(n_heads, qkv.shape[1], x.shape[2])
    if recompute_attention:               # what recomputes it: its input and its dropout mask
        att = (qkv, n_heads, _kept_mask(pack_mask(c_att[4]), keep))
    else:                                 # its output and cache, weights (B, H, T, T) included
        q, k, v, weights, mask, scale = c_att
        a = keep(a)
        att = KeptAttention(a, (q, k, v, keep(weights), _kept_mask(pack_mask(mask), keep), scale))
    del c_att
    a, c_proj = _linear(ops, p, "attn.c_proj", a)                                         # (B, T, C)
    c_proj = _forget_input(c_proj)
    a, c_drop1 = ops.dropout_forward(a, drop_rate, rng)                                    # (B, T, C)
    c_drop1 = _kept_mask(pack_mask(c_drop1), keep)
    x = keep(x + a)                                                                        # residual
    ln_2 = (x, p["ln_2.weight"], p["ln_2.bias"])
    # MLP branch (eq. 8.2)
    h = ops.layernorm_forward(*ln_2)[0]                                                    # (B, T, C)
    u, c_fc = _linear(ops, p, "mlp.c_fc", h)                                              # (B, T, 4C)
    c_fc, u = _forget_input(c_fc), keep(u)
    h = ops.gelu_forward(u)[0]                                                             # (B, T, 4C)
    h, c_mproj = _linear(ops, p, "mlp.c_proj", h)                                         # (B, T, C)
    c_mproj = _forget_input(c_mproj)
    h, c_drop2 = ops.dropout_forward(h, drop_rate, rng)                                    # (B, T, C)
    x = x + h                                                                              # residual
    return x, (ln_1, c_qkv, att, c_proj, c_drop1, ln_2, c_fc,
               RecomputeU(p) if recompute_mlp else u, c_mproj, _kept_mask(pack_mask(c_drop2), keep))


def _attention_again(ops, att):
    """The attention's output (B, T, C) and cache for the backward: kept by the forward
    (``KeptAttention``), or recomputed from its input qkv with the same dropout mask."""
    if isinstance(att, KeptAttention):
        q, k, v, weights, mask, scale = att.cache
        return att.out, (q, k, v, weights, unpack_mask(mask), scale)
    qkv, n_heads, drop_mask = att
    return ops.attention_forward(qkv, n_heads, drop_mask=unpack_mask(drop_mask))


def block_backward(dx: np.ndarray, cache, g: dict) -> np.ndarray:
    """dx (B, T, C) -> dx (B, T, C); adds every parameter gradient into ``g``.

    The residual x + f(x) has Jacobian I + f'(x) (eq. 8.3): the upstream gradient flows on unchanged
    *and* through the branch, so each branch's input gradient is added to dx.
    """
    ops = backend.ops()
    ln_1, c_qkv, att, c_proj, c_drop1, ln_2, c_fc, u, c_mproj, c_drop2 = cache
    # MLP branch, last layer first; the activations the forward did not keep are recomputed
    ln2_out = None
    if isinstance(u, RecomputeU):                    # u not kept: c_fc on ln_2's output again
        ln2_out = ops.layernorm_forward(*ln_2)       # ln_2's output (mlp.c_fc's input) and cache
        u, _ = _linear(ops, u.p, "mlp.c_fc", ln2_out[0])                                 # (B, T, 4C)
    h, c_gelu = ops.gelu_forward(u)                  # GELU's output (mlp.c_proj's input) and tanh
    del u
    dh = ops.dropout_backward(dx, unpack_mask(c_drop2))
    dh = _linear_backward(ops, g, "mlp.c_proj", dh, _restore_input(c_mproj, h))
    del h                                            # each freed as soon as it has served
    dh = ops.gelu_backward(dh, c_gelu)
    del c_gelu
    h, c_ln2 = ln2_out or ops.layernorm_forward(*ln_2)   # made here, after GELU's arrays are gone
    del ln2_out
    c_fc = _restore_input(c_fc, h)
    dh = _linear_backward(ops, g, "mlp.c_fc", dh, c_fc)
    del c_fc
    dx = dx + ops.layernorm_backward(dh, c_ln2, g["ln_2.weight"], g["ln_2.bias"])   # eq. 8.3
    del c_ln2
    # attention branch
    h, c_ln1 = ops.layernorm_forward(*ln_1)          # ln_1's output (attn.c_attn's input) and cache
    c_qkv = _restore_input(c_qkv, h)
    del h
    a, c_att = _attention_again(ops, att)            # its output and cache (weights, mask)
    da = ops.dropout_backward(dx, unpack_mask(c_drop1))
    da = _linear_backward(ops, g, "attn.c_proj", da, _restore_input(c_proj, a))
    del a
    dqkv = ops.attention_backward(da, c_att)
    del c_att
    dh = _linear_backward(ops, g, "attn.c_attn", dqkv, c_qkv)
    dx = dx + ops.layernorm_backward(dh, c_ln1, g["ln_1.weight"], g["ln_1.bias"])   # eq. 8.3
    return dx


def block_step(x: np.ndarray, p: dict, n_heads: int, k_cache: np.ndarray, v_cache: np.ndarray,
               t0: int) -> np.ndarray:
    """Inference with a KV cache: x (B, T, C) for new positions t0..t0+T-1 -> (B, T, C). No dropout."""
    ops = backend.ops()
    fused = getattr(ops, "decode_block_step", None)    # the Numba path: one call per thread for T = 1
    if fused is not None:                              # (kernels/decode.py); None: not applicable
        out = fused(x, p, n_heads, k_cache, v_cache, t0)
        if out is not None:
            return out
    h, _ = ops.layernorm_forward(x, p["ln_1.weight"], p["ln_1.bias"])
    qkv, _ = _linear(ops, p, "attn.c_attn", h)
    a = ops.attention_step(qkv, n_heads, k_cache, v_cache, t0)
    a, _ = _linear(ops, p, "attn.c_proj", a)
    x = x + a
    h, _ = ops.layernorm_forward(x, p["ln_2.weight"], p["ln_2.bias"])
    h, _ = _linear(ops, p, "mlp.c_fc", h)
    h, _ = ops.gelu_forward(h)
    h, _ = _linear(ops, p, "mlp.c_proj", h)
    return x + h
