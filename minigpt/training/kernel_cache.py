"""Run the kernels' cached machine code in every process, so that a resumed run is bit-identical.

The problem. Numba compiles a parallel (``prange``) kernel in two pieces: the loop body becomes a
separate "gufunc", and the kernel schedules it over the threads. In the process that compiles, the
calls go to the gufunc as it was optimised on its own. The on-disk cache (``cache=True``) stores the
two linked and optimised together, and under the kernels' fastmath flags (which let LLVM reorder a
sum to vectorise it) that second copy can add in a different order. Measured on this project: a
cross-entropy gradient differs by ~1e-10 between a process that compiled the kernel and one that
loaded it; after a few AdamW steps the weights differ by ~1e-6. So a run killed and resumed in a
new process (which loads the cache) would not end bit-identical to one that ran uninterrupted in
the process that compiled - although every process that loads the cache agrees with every other
to the last bit. (With ``parallel=False``, or without fastmath, the two copies agree.)

The fix. :func:`warm_kernel_cache` runs the kernels the model uses once in a child process (which
compiles them and writes the cache) before this process calls any of them; this process then loads
every kernel from the cache, like every other training process. The first run pays the compile time
in the child instead of in-process; later runs pay ~1-2 s to start the child. The training loop
calls it before its first step. ``MINIGPT_WARM_CACHE=0`` turns it off.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

ENV_VAR = "MINIGPT_WARM_CACHE"
_warmed: set[str] = set()  # dtypes whose kernels this process will load from the cache


def _kernel_dispatchers() -> list:
    """Every Numba dispatcher of the top-level ``kernels`` package (imported, not compiled)."""
    import importlib
    import pkgutil

    import kernels
    from numba.core.dispatcher import Dispatcher

    found = []
    for info in pkgutil.iter_modules(kernels.__path__):
        mod = importlib.import_module(f"kernels.{info.name}")
        for obj in vars(mod).values():
            if isinstance(obj, Dispatcher) and obj not in found:
                found.append(obj)
    return found


def compiled_in_process() -> list[str]:
    """Names of the kernels this process compiled itself (instead of loading from the cache)."""
    return [d.py_func.__qualname__ for d in _kernel_dispatchers() if sum(d.stats.cache_misses.values())]


def exercise_kernels(dtype: type = np.float32) -> None:
    """Call every kernel a training run calls, in every variant the kernels pick by size: a step
    with dropout and one without, gradient clipping, AdamW, an evaluation and a KV-cached
    generation, on a tiny model (the serial kernels, the fused attention for T < BLAS_MIN_T) and on
    one just large enough for the parallel kernels and the BLAS attention (T >= BLAS_MIN_T)."""
    import kernels.attention
    import kernels.gelu
    import kernels.layernorm
    from minigpt.config import GPTConfig
    from minigpt.inference.generate import generate
    from minigpt.model import GPTModel
    from minigpt.training.optim import AdamW, clip_grad_norm_

    rng = np.random.default_rng(0)
    tiny = GPTConfig(vocab_size=64, context_length=8, emb_dim=16, n_heads=2, n_layers=1,
                     drop_rate=0.1, qkv_bias=True)
    C, H, T = 64, 2, kernels.attention.BLAS_MIN_T
    # rows so that layernorm, GELU and the fused attention at T - 1 all reach their parallel kernels
    rows = max(kernels.layernorm.SERIAL_BELOW, kernels.gelu.SERIAL_BELOW) // (C * (T - 1)) + 1
    B = max(rows, kernels.attention.SERIAL_BELOW // (H * (T - 1) ** 2 * (C // H)) + 1)
    large = tiny.replace(context_length=T, emb_dim=C, n_heads=H)
    for cfg, shapes in ((tiny, [(2, 8)]), (large, [(B, T - 1), (B, T)])):
        model = GPTModel(cfg, seed=0, dtype=dtype)
        opt = AdamW(model, lr=1e-3, weight_decay=0.1)
        for b, t in shapes:
            idx = rng.integers(0, cfg.vocab_size, (b, t))                  # (B, T)
            targets = rng.integers(0, cfg.vocab_size, (b, t))              # (B, T)
            for drop_rng in (rng, None):
                model.loss_and_grads(idx, targets, rng=drop_rng)
                clip_grad_norm_(model, 1.0)
                opt.step()
            model.loss(idx, targets)
        generate(model, idx[:2, :3], max_new_tokens=3, temperature=1.0, top_k=5, seed=0)


def warm_kernel_cache(dtype: type = np.float32, print_fn=None) -> bool:
    """Compile the kernels in a child process so that this process loads them from the cache.

    Returns True when this process will run cached code; False when it cannot (the backend is
    NumPy, the switch is off, or this process already compiled a kernel itself - then a warning
    says that resuming in a new process may differ in the last bits).
    """
    from minigpt import backend

    if os.environ.get(ENV_VAR, "1") == "0" or not backend.numba_enabled():
        return False
    name = np.dtype(dtype).name
    if name in _warmed:
        return True
    fresh = compiled_in_process()
    if fresh:
        (print_fn or print)(f"note: this process compiled {len(fresh)} Numba kernel(s) itself "
                            f"({', '.join(fresh[:3])}{', ...' if len(fresh) > 3 else ''}); their "
                            "results can differ in the last bits from cached code, so a run resumed "
                            "in a new process may not be bit-identical")
        return False
    env = dict(os.environ, MINIGPT_WARM_CACHE="0")
    code = f"import numpy; from minigpt.training.kernel_cache import exercise_kernels; exercise_kernels(numpy.{name})"
    proc = subprocess.run([sys.executable, "-c", code],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling the Numba kernels in a child process failed:\n{proc.stderr}")
    _warmed.add(name)
    return True


def assume_warm(dtype: type = np.float32) -> bool:
    """For a process started after another one on the same machine warmed the cache (the MPI ranks
    after each machine's first): load every kernel from the cache without starting a child.
    Returns what ``warm_kernel_cache`` would."""
    from minigpt import backend

    if os.environ.get(ENV_VAR, "1") == "0" or not backend.numba_enabled() or compiled_in_process():
        return False
    _warmed.add(np.dtype(dtype).name)
    return True


def check_still_cached(print_fn=None) -> bool:
    """After training: True if this process still ran no kernel it compiled itself; otherwise a
    note names them (a kernel variant the warm-up did not reach, e.g. after a change to the layers)."""
    fresh = compiled_in_process()
    if fresh:
        (print_fn or print)(f"note: kernels compiled in this process during training: {', '.join(fresh)}; "
                            "a run resumed in a new process may differ from this one in the last bits "
                            "(minigpt/training/kernel_cache.py: add them to exercise_kernels)")
    return not fresh
