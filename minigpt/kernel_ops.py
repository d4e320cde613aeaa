"""The kernels' namespace: every op of ``minigpt.layers`` under its own name, with the Numba kernel
where one exists and the layer function itself where none does. ``minigpt.backend.ops()`` returns
this module on the "numba" path and ``minigpt.layers`` on the "numpy" path; the block, the model,
generation and AdamW call ``ops.<name>(...)`` and never ask which one they have.

Why here and not in ``kernels/__init__.py``: the kernels package imports only NumPy, Numba and its
own modules, so it can be imported, tested and benchmarked without the model, and no import of
``kernels`` can run back into ``minigpt``. The one module that joins both sides lives on the model's
side, imports in one direction (minigpt -> kernels) and is imported by ``backend.ops()`` only when
first asked for, so ``import minigpt`` does not load Numba.

``PAIRS`` lists (layer function, kernel) for every op that has a kernel, derived from the shared
names: the tests hold each kernel to its layer and ``minigpt bench`` times both. ``VARIANTS`` are
kernels with the same signature that the default picks between by size (attention: the fused
kernel below ``kernels.attention.BLAS_MIN_T`` positions, the BLAS one from there on).
"""

from __future__ import annotations

import minigpt.layers as _layers
from kernels.adamw import adamw_step
from kernels.attention import (
    attention_backward,
    attention_backward_blas,
    attention_backward_fused,
    attention_forward,
    attention_forward_blas,
    attention_forward_fused,
    attention_step,
)
from kernels import decode as _decode
from kernels.cross_entropy import cross_entropy
from kernels.embedding import embedding_backward
from kernels.gelu import gelu_backward, gelu_forward
from kernels.layernorm import layernorm_backward, layernorm_forward
from kernels.linear import linear_backward, linear_forward
from kernels.softmax import causal_softmax
from minigpt.layers import (  # no kernel: the layer function is used as it is
    dropout_backward,
    dropout_forward,
    embedding_forward,
    pooling_backward,
    pooling_forward,
    lora_backward,
    lora_forward,
    lora_linear_backward,  # the adapter's products are r wide; the base product is NumPy's BLAS
    lora_linear_forward,
    softmax,
    softmax_backward,
)

# the names of minigpt.layers.__all__, every one (tests/test_kernels_ops.py checks)
__all__ = [
    "embedding_forward", "embedding_backward",
    "dropout_forward", "dropout_backward",
    "layernorm_forward", "layernorm_backward",
    "linear_forward", "linear_backward",
    "lora_forward", "lora_backward", "lora_linear_forward", "lora_linear_backward",
    "gelu_forward", "gelu_backward",
    "softmax", "softmax_backward", "causal_softmax",
    "attention_forward", "attention_backward", "attention_step",
    "cross_entropy",
    "adamw_step",
    "pooling_forward", "pooling_backward",
]

PAIRS = {name: (getattr(_layers, name), globals()[name]) for name in __all__
         if globals()[name] is not getattr(_layers, name)}

VARIANTS = {
    "attention_forward": {"fused": attention_forward_fused, "blas": attention_forward_blas},
    "attention_backward": {"fused": attention_backward_fused, "blas": attention_backward_blas},
}

__all__ += ["PAIRS", "VARIANTS"]


# --- decoding only (no layer of that name, so not in the list above) --------------------------------
def decode_block_step(x, p: dict, n_heads: int, k_cache, v_cache, t0: int):
    """``minigpt.block.block_step`` for ONE new position per row, as one call per thread
    (``kernels.decode.block_step``): x (B, 1, C) -> (B, 1, C). Returns None when that kernel does
    not apply (several new positions, more than ``kernels.decode.MAX_ROWS`` rows, a LoRA adapter,
    a block without its biases, mixed dtypes); the caller then runs the block op by op."""
    B, T, C = x.shape
    w = p["attn.c_attn.weight"]
    if (T != 1 or B > _decode.MAX_ROWS or k_cache.shape[1] != n_heads or x.dtype != w.dtype
            or k_cache.dtype != x.dtype or any(n.endswith("lora_A") for n in p)
            or any(p.get(n) is None for n in ("attn.c_proj.bias", "mlp.c_fc.bias",
                                              "mlp.c_proj.bias"))):
        return None
    out = _decode.block_step(
        x.reshape(B, C), p["ln_1.weight"], p["ln_1.bias"], w, p.get("attn.c_attn.bias"),
        p["attn.c_proj.weight"], p["attn.c_proj.bias"], p["ln_2.weight"], p["ln_2.bias"],
        p["mlp.c_fc.weight"], p["mlp.c_fc.bias"], p["mlp.c_proj.weight"], p["mlp.c_proj.bias"],
        k_cache, v_cache, t0)
    return out.reshape(B, 1, C)


def decode_step(x, block_params: list, n_heads: int, cache, lnf_w, lnf_b, w_head, plan: dict):
    """Every block, ln_f and the LM head for ONE new position per row, as one call per thread
    (``kernels.decode.step``): the embedded x (B, 1, C) -> logits (B, 1, V). Returns None when
    that kernel does not apply (several new positions, more than ``kernels.decode.MAX_ROWS`` rows,
    a LoRA adapter, a block without its biases, weights outside one buffer, mixed dtypes); the
    caller then runs block by block. ``plan``: a dict the caller keeps between steps (the weights'
    offsets, found once)."""
    B, T, C = x.shape
    if (T != 1 or B > _decode.MAX_ROWS or cache.k_all.shape[2] != n_heads
            or any(n.endswith("lora_A") for bp in block_params for n in bp)):
        return None
    layers = [tuple(bp.get(n) for n in _decode.WEIGHTS) for bp in block_params]
    key = tuple(id(w) for ws in layers for w in ws)     # the same arrays: the same offsets
    if plan.get("key") != key:
        buf = _decode.root(layers[0][0])
        plan.update(key=key, buf=buf, offs=_decode.weight_offsets(buf, layers))
    buf, offs = plan["buf"], plan["offs"]
    if offs is None or len({x.dtype, buf.dtype, cache.k_all.dtype, w_head.dtype}) != 1:
        return None
    logits = _decode.step(x.reshape(B, C), buf, offs, layers[0][8].shape[1], cache.k_all,
                          cache.v_all, cache.pos, lnf_w, lnf_b, w_head)
    return logits.reshape(B, 1, -1)
