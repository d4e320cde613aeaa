"""Numba kernels for minigpt, each module mirroring a layer of ``minigpt/layers``: the same function
names, signatures and caches, float32 and float64, dtype-preserving.

    kernels/layernorm.py      layernorm_forward, layernorm_backward
    kernels/gelu.py           gelu_forward, gelu_backward
    kernels/linear.py         linear_forward, linear_backward        (products split by kernels.blas)
    kernels/attention.py      attention_forward, attention_backward, attention_step
                              (+ kernels/attention_blas.py, the BLAS variant for T >= BLAS_MIN_T)
    kernels/softmax.py        causal_softmax
    kernels/cross_entropy.py  cross_entropy
    kernels/embedding.py      embedding_backward
    kernels/adamw.py          adamw_step
    kernels/matmul.py         matmul (teaching kernel and bench row; the model uses BLAS)

There is no NumPy copy here: the reference of each kernel is the layer function of the same name,
and the tests hold every kernel to it. The ops that have no kernel (``embedding_forward``, the
dropout pair, ``softmax``, ``softmax_backward``) are re-exported from the layers by
``minigpt/kernel_ops.py``, the namespace ``minigpt.backend.ops()`` returns on the "numba" path.
This package imports only NumPy, Numba and its own modules (never ``minigpt``), so importing it
can never cycle back into the model.

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
