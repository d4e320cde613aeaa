"""The layers of GPT-2, each a forward/backward pair of plain functions (one file per layer).

Every ``*_forward`` returns ``(out, cache)``; every ``*_backward(dout, cache, *param_grads)`` adds
(``+=``) into the parameter gradients it is given and returns the gradient of its input. Each
backward's docstring names the equation of ``docs/derivations.md`` it implements.
"""

from minigpt.layers.attention import attention_backward, attention_forward, attention_step  # noqa: F401
from minigpt.layers.block import block_backward, block_forward, block_step  # noqa: F401
from minigpt.layers.dropout import dropout_backward, dropout_forward  # noqa: F401
from minigpt.layers.embedding import embedding_backward, embedding_forward  # noqa: F401
from minigpt.layers.gelu import gelu_backward, gelu_forward  # noqa: F401
from minigpt.layers.layernorm import layernorm_backward, layernorm_forward  # noqa: F401
from minigpt.layers.linear import linear_backward, linear_forward  # noqa: F401
from minigpt.layers.loss import cross_entropy  # noqa: F401
