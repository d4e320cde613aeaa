"""The layers of GPT-2, each a forward/backward pair of plain NumPy functions (one file per layer).

Every ``*_forward`` returns ``(out, cache)``; every ``*_backward(dout, cache, *param_grads)`` adds
(``+=``) into the parameter gradients it is given and returns the gradient of its input. Each
backward's docstring names the equation of ``docs/derivations.md`` it implements.

These functions are the reference: they never ask which backend runs. This package is also the
namespace ``minigpt.backend.ops()`` returns on the "numpy" path; on the "numba" path it returns
``minigpt.kernel_ops``, which has every name listed in ``__all__`` below (a test checks), with a
kernel where one exists and this very function where none does.
"""

from minigpt.layers.adamw import adamw_step
from minigpt.layers.attention import (
    attention_backward,
    attention_forward,
    attention_step,
    causal_softmax,
    softmax,
    softmax_backward,
)
from minigpt.layers.dropout import dropout_backward, dropout_forward
from minigpt.layers.embedding import embedding_backward, embedding_forward
from minigpt.layers.gelu import gelu_backward, gelu_forward
from minigpt.layers.layernorm import layernorm_backward, layernorm_forward
from minigpt.layers.linear import linear_backward, linear_forward
from minigpt.layers.lora import (
    lora_backward,
    lora_forward,
    lora_linear_backward,
    lora_linear_forward,
)
from minigpt.layers.loss import cross_entropy
from minigpt.layers.pooling import pooling_backward, pooling_forward

# The ops the block, the model, generation and the optimizer call through ``backend.ops()``.
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
