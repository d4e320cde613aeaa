"""Every Numba kernel against the layer function of the same name: validated first, then timed cold
and warm.

Shapes are those of a training step of a bench config (default "small": B=16, T=128, C=256, H=8,
V=4096), float32. Warm = median of repeated calls after one call. Cold = the first call in a fresh
process (``python -m minigpt.cli.bench.kernel_times``) minus its second call, once with an EMPTY Numba
cache (compilation) and once with the cache that run wrote (load from disk).

The pairs come from ``minigpt.kernel_ops.PAIRS`` (every layer op that has a kernel, matched by
name) plus the two teaching kernels without a layer (``EXTRAS``: the tiled matmul against NumPy's
``@``, the float64 sum of squares against a dot product).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from statistics import median

import numpy as np

from minigpt.cli.bench.configs import CONFIGS


def _sumsq_reference(x) -> float:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    return float(np.dot(x, x))


def _pairs() -> dict:
    """op name -> (reference, kernel): the layer/kernel pairs and the teaching kernels."""
    import kernels.adamw
    import kernels.matmul
    from minigpt.kernel_ops import PAIRS

    return dict(PAIRS) | {"matmul": (np.matmul, kernels.matmul.matmul),
                          "sumsq": (_sumsq_reference, kernels.adamw.sumsq)}


def cases(name: str = "small", dtype=np.float32) -> dict:
    """op name -> make(): returns (args, kwargs) freshly built (in-place ops mutate their args)."""
    from minigpt import layers

    cfg, B, T = CONFIGS[name]
    C, H, V = cfg.emb_dim, cfg.n_heads, cfg.vocab_size
    hs, N = C // H, B * T
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    qkv = f(B, T, 3 * C)
    _, att_cache = layers.attention_forward(qkv, H)
    qkv1 = f(B, 1, 3 * C)                                                 # one decoded token
    kv_cache = f(B, H, T, hs)
    s = f(B, H, T, T)
    x, w, b = f(N, C), f(C), f(C)
    _, ln_cache = layers.layernorm_forward(x, w, b)
    W4, b4 = f(C, 4 * C) / np.sqrt(C), f(4 * C)
    h = f(N, 4 * C)
    th = np.tanh(h)
    logits = f(N, V)
    targets = rng.integers(0, V, N)
    ids = rng.integers(0, V, (B, T))
    n_par = cfg.n_params()
    P = f(n_par)
    G = f(n_par)
    a_mm, b_mm = f(N, C), f(C, 4 * C)
    return {
        "causal_softmax": lambda: ((s,), {}),
        "attention_forward": lambda: ((qkv, H), {}),
        "attention_backward": lambda: ((f(B, T, C), att_cache), {}),
        "attention_step": lambda: ((qkv1, H, kv_cache.copy(), kv_cache.copy(), T - 1), {}),
        "layernorm_forward": lambda: ((x, w, b), {}),
        "layernorm_backward": lambda: ((x, ln_cache, np.zeros(C, dtype), np.zeros(C, dtype)), {}),
        "linear_forward": lambda: ((x, W4, b4), {}),
        "linear_backward": lambda: ((h, (x, W4, True), np.zeros_like(W4), np.zeros_like(b4)), {}),
        "gelu_forward": lambda: ((h,), {}),
        "gelu_backward": lambda: ((h, (h, th)), {}),
        "cross_entropy": lambda: ((logits, targets), {}),
        "embedding_backward": lambda: ((x.reshape(B, T, C), (ids, 0), np.zeros((V, C), dtype),
                                        np.zeros((cfg.context_length, C), dtype)), {}),
        "adamw_step": lambda: ((P.copy(), G, np.zeros_like(P), np.zeros_like(P), 1e-3, 0.9, 0.999,
                                1e-8, 0.1, 1), {}),
        "sumsq": lambda: ((G,), {}),
        "matmul": lambda: ((a_mm, b_mm), {}),
    }


def _arrays(result, args) -> list[np.ndarray]:
    """What a call produced: its returned arrays/floats (caches included, flattened), plus its
    float array args (in-place ops)."""
    out: list[np.ndarray] = []

    def walk(r):
        if isinstance(r, tuple):
            for item in r:
                walk(item)
        elif isinstance(r, (float, np.floating)) or (isinstance(r, np.ndarray) and r.dtype.kind == "f"):
            out.append(np.asarray(r, dtype=np.float64))

    walk(result)
    walk(tuple(a for a in args if not isinstance(a, tuple)))
    return out


def validate(op: str, make, variant=None, pairs: dict | None = None) -> float:
    """Run the reference and the kernel (or ``variant``) on fresh identical inputs; return the max
    error relative to the output scale (raises AssertionError above 1e-3 for float32)."""
    ref_f, nb_f = (pairs or _pairs())[op]
    nb_f = nb_f if variant is None else variant
    args1, kw = make()
    args2 = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args1)
    r1 = _arrays(ref_f(*args1, **kw), args1)
    r2 = _arrays(nb_f(*args2, **kw), args2)
    if len(r1) != len(r2):
        raise AssertionError(f"{op}: the kernel returned {len(r2)} arrays, its layer {len(r1)}")
    worst = 0.0
    for a, b in zip(r1, r2, strict=True):
        scale = float(np.max(np.abs(a))) or 1.0
        worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    if worst > 1e-3:
        raise AssertionError(f"{op}: Numba kernel differs from its NumPy layer by {worst:.2e}")
    return worst


def _warm_median(fn, make, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` on fresh arguments from ``make``, after one
    untimed call (compile or cache load, first-touch of the buffers)."""
    args, kw = make()
    fn(*args, **kw)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args, **kw)
        ts.append(time.perf_counter() - t0)
    return median(ts)


def warm_times(name: str = "small", repeats: int = 5) -> list[dict]:
    """Per op: validation error, warm median seconds for the layer (NumPy) and the Numba kernel."""
    from minigpt.kernel_ops import VARIANTS

    pairs = _pairs()
    rows = []
    c = cases(name)
    for op, make in c.items():
        err = validate(op, make, pairs=pairs)
        row = {"op": op, "err": err}
        for label, fn in zip(("numpy", "numba"), pairs[op], strict=True):
            row[label] = _warm_median(fn, make, repeats)
        rows.append(row)
    # variants with the same signature that the kernel picks between by size: layer vs variant
    for op, variants in VARIANTS.items():
        for vname, variant in variants.items():
            err = validate(op, c[op], variant, pairs=pairs)
            row = {"op": f"{op.replace('attention', 'attn')} ({vname})", "err": err}
            for label, fn in (("numpy", pairs[op][0]), ("numba", variant)):
                row[label] = _warm_median(fn, c[op], repeats)
            rows.append(row)
    # the products the model actually uses: BLAS split by kernels.blas.gemm vs plain a @ b
    from kernels.blas import gemm
    a, b = cases(name)["matmul"]()[0]
    row = {"op": "gemm (model's products)", "err": float(np.max(np.abs(gemm(a, b) - a @ b)))
           / float(np.max(np.abs(a @ b)))}
    for label, fn in (("numpy", lambda: a @ b), ("numba", lambda: gemm(a, b))):
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        row[label] = median(ts)
    rows.append(row)
    return rows


def _child(name: str) -> dict:
    """In a fresh process: first-call minus second-call time of every Numba kernel."""
    pairs = _pairs()
    out = {}
    for op, make in cases(name).items():
        fn = pairs[op][1]
        args, kw = make()
        t0 = time.perf_counter()
        fn(*args, **kw)
        t1 = time.perf_counter()
        fn(*args, **kw)
        t2 = time.perf_counter()
        out[op] = max(0.0, (t1 - t0) - (t2 - t1))
    return out


def cold_times(name: str = "tiny") -> dict:
    """{"compile": {op: s}, "load": {op: s}}: fresh processes, empty then populated cache."""
    res: dict = {}
    with tempfile.TemporaryDirectory(prefix="minigpt-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("compile", "load"):
            proc = subprocess.run([sys.executable, "-m", "minigpt.cli.bench.kernel_times", name],
                                  env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                res[label] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
            else:
                res[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    return res


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1] if len(sys.argv) > 1 else "tiny")))
