"""Compute kernels for minigpt: for each hot op a readable NumPy reference (``*_numpy``) and a
Numba kernel (``*_numba``) with the same signature, float32 and float64, dtype-preserving.

No model knowledge lives here: the model's layers (``minigpt/layers``) call these through
``minigpt.backend`` when the Numba path is on (``MINIGPT_KERNELS=numba``, the default).

``PAIRS`` maps each op name to its (numpy, numba) pair; tests and benchmarks walk it.
Kernels compile lazily on first use (one specialisation per dtype/layout actually used) and
cache their machine code on disk (``cache=True``), so a second process loads instead of compiling.
Threads: see ``kernels.blas`` (products) and the threading-layer note below; docs/kernels.md.
"""

from __future__ import annotations

import os

from numba import config as _numba_config

# Threading layer: "workqueue" unless the user chose one (NUMBA_THREADING_LAYER). Its workers block
# instead of spinning; on this project's shared 2-core machine a parallel launch cost ~12 ms with
# "omp" (the default pick) and ~0.07 ms with workqueue, and a training step of the 'small' bench
# config went from 1.49 s to 0.87 s (``minigpt bench`` prints the layer in use). Workqueue must not
# be entered from two Python threads at once; minigpt calls kernels from one thread only. Set before
# any parallel kernel runs (the layer is fixed at the first parallel launch).
if "NUMBA_THREADING_LAYER" not in os.environ:
    _numba_config.THREADING_LAYER = "workqueue"

from kernels.adamw import adamw_step_numba, adamw_step_numpy, sumsq_numba, sumsq_numpy
from kernels.attention import (
    attention_backward_numba,
    attention_backward_numpy,
    attention_forward_numba,
    attention_forward_numpy,
)
from kernels.attention_blas import attention_backward_blas, attention_forward_blas
from kernels.cross_entropy import cross_entropy_numba, cross_entropy_numpy
from kernels.embedding import embedding_backward_numba, embedding_backward_numpy
from kernels.gelu import (
    gelu_backward_numba,
    gelu_backward_numpy,
    gelu_forward_numba,
    gelu_forward_numpy,
)
from kernels.layernorm import (
    layernorm_backward_numba,
    layernorm_backward_numpy,
    layernorm_forward_numba,
    layernorm_forward_numpy,
)
from kernels.matmul import matmul_numba, matmul_numpy
from kernels.softmax import (
    causal_softmax_backward_numba,
    causal_softmax_backward_numpy,
    causal_softmax_forward_numba,
    causal_softmax_forward_numpy,
)

PAIRS = {
    "causal_softmax_forward": (causal_softmax_forward_numpy, causal_softmax_forward_numba),
    "causal_softmax_backward": (causal_softmax_backward_numpy, causal_softmax_backward_numba),
    "attention_forward": (attention_forward_numpy, attention_forward_numba),
    "attention_backward": (attention_backward_numpy, attention_backward_numba),
    "layernorm_forward": (layernorm_forward_numpy, layernorm_forward_numba),
    "layernorm_backward": (layernorm_backward_numpy, layernorm_backward_numba),
    "gelu_forward": (gelu_forward_numpy, gelu_forward_numba),
    "gelu_backward": (gelu_backward_numpy, gelu_backward_numba),
    "cross_entropy": (cross_entropy_numpy, cross_entropy_numba),
    "embedding_backward": (embedding_backward_numpy, embedding_backward_numba),
    "adamw_step": (adamw_step_numpy, adamw_step_numba),
    "sumsq": (sumsq_numpy, sumsq_numba),
    "matmul": (matmul_numpy, matmul_numba),
}

# Same contracts as the attention pair, products in BLAS (faster at training shapes; see
# kernels/attention_blas.py). Held to the NumPy twins by tests/test_kernels_attention_blas.py.
VARIANTS = {
    "attention_forward": attention_forward_blas,
    "attention_backward": attention_backward_blas,
}

__all__ = ["PAIRS", "VARIANTS"] + [f.__name__ for pair in PAIRS.values() for f in pair] + [
    f.__name__ for f in VARIANTS.values()]
