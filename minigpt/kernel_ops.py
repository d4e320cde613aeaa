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
