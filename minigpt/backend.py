"""The kernel switch, the one place that chooses between the Numba kernels (default) and the NumPy
reference code of the layers.

    MINIGPT_KERNELS=numba   (default) ``ops()`` is ``minigpt.kernel_ops``: the kernels of the
                            top-level ``kernels`` package, each under its layer's name
    MINIGPT_KERNELS=numpy   ``ops()`` is ``minigpt.layers``: every op runs its readable NumPy code

The block, the model, generation and AdamW fetch ``ops = backend.ops()`` once per call and then call
``ops.layernorm_forward(...)`` etc.; the layers themselves never ask. The environment variable sets
the starting value; in code use the context manager::

    with minigpt.backend.use("numpy"):
        loss, grads = model.loss_and_grads(idx, targets)

Both namespaces produce the same caches, so a forward on one and a backward on the other compose.
Dense products (the projections and the LM head) are NumPy's BLAS on both paths: it is faster
than the tiled Numba matmul (see ``minigpt bench`` and docs/kernels.md). On the Numba path they go
through ``kernels.blas.gemm`` (``kernels/linear.py``): BLAS pinned to one thread, each large product
split into one block per thread (no spinning BLAS threads competing with Numba's; see that module).

Threads: ``set_threads(n)`` sets both Numba's count and the product split. Unset, the first product
uses ``OMP_NUM_THREADS`` when set, else Numba's count (``NUMBA_NUM_THREADS``, default all cores).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

ENV_VAR = "MINIGPT_KERNELS"
BACKENDS = ("numba", "numpy")


def _validate(name: str, source: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"{source}={name!r} is not a kernel backend; use one of {BACKENDS}")
    return name


_current = _validate(os.environ.get(ENV_VAR, "numba"), ENV_VAR)


def get_backend() -> str:
    """The active backend: "numba" or "numpy"."""
    return _current


def set_backend(name: str) -> None:
    """Switch the backend for the whole process ("numba" or "numpy")."""
    global _current
    _current = _validate(name, "backend")


def numba_enabled() -> bool:
    """True on the "numba" path (``ops()`` returns the kernels)."""
    return _current == "numba"


def ops() -> ModuleType:
    """The active namespace of ops: ``minigpt.kernel_ops`` on "numba", ``minigpt.layers`` on
    "numpy". Both have every name of ``minigpt.layers.__all__`` with the same signatures."""
    if _current == "numba":
        import minigpt.kernel_ops

        return minigpt.kernel_ops
    import minigpt.layers

    return minigpt.layers


def set_threads(n: int) -> int:
    """Use ``n`` threads in the Numba kernels and the split BLAS products; returns the count set
    (capped at ``NUMBA_NUM_THREADS``, the most Numba can start)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be an integer >= 1, got {n!r}")
    import numba

    import kernels.blas

    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    kernels.blas.set_threads(n)
    return n


def get_threads() -> int:
    """The thread count the kernels and products use now."""
    import numba

    return numba.get_num_threads()


@contextmanager
def use(name: str) -> Iterator[None]:
    """Run a block of code on one backend, restoring the previous one afterwards."""
    global _current
    previous = _current
    _current = _validate(name, "backend")
    try:
        yield
    finally:
        _current = previous
