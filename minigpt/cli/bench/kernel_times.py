"""Every Numba kernel against its NumPy twin: validated first, then timed cold and warm.

Shapes are those of a training step of a bench config (default "small": B=16, T=128, C=256, H=8,
V=4096), float32. Warm = median of repeated calls after one call. Cold = the first call in a fresh
process (``python -m minigpt.cli.bench.kernel_times``) minus its second call, once with an EMPTY Numba
cache (compilation) and once with the cache that run wrote (load from disk).
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


def cases(name: str = "small", dtype=np.float32) -> dict:
    """op name -> make(): returns (args, kwargs) freshly built (in-place ops mutate their args)."""
    cfg, B, T = CONFIGS[name]
    C, H, V = cfg.emb_dim, cfg.n_heads, cfg.vocab_size
    hs, N = C // H, B * T
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    qkv = f(B, T, 3 * C)
    heads = qkv.reshape(B, T, 3, H, hs).transpose(2, 0, 3, 1, 4)          # (3, B, H, T, hs) views
    q, k, v = heads[0], heads[1], heads[2]
    from kernels.attention import attention_forward_numpy
    _, att = attention_forward_numpy(q, k, v)
    dout4 = f(B, H, T, hs)
    s = f(B, H, T, T)
    from kernels.softmax import causal_softmax_forward_numpy
    p = causal_softmax_forward_numpy(s)
    x, w, b = f(N, C), f(C), f(C)
    xhat = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    rstd = np.ones((N, 1), dtype=dtype)
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
        "causal_softmax_forward": lambda: ((s,), {}),
        "causal_softmax_backward": lambda: ((f(B, H, T, T), p), {}),
        "attention_forward": lambda: ((q, k, v), {}),
        "attention_backward": lambda: ((dout4, q, k, v, att), {}),
        "layernorm_forward": lambda: ((x, w, b), {}),
        "layernorm_backward": lambda: ((x, xhat, w, rstd, np.zeros(C, dtype), np.zeros(C, dtype)), {}),
        "gelu_forward": lambda: ((h,), {}),
        "gelu_backward": lambda: ((h, h, th), {}),
        "cross_entropy": lambda: ((logits, targets), {}),
        "embedding_backward": lambda: ((x.reshape(B, T, C), ids, np.zeros((V, C), dtype),
                                        np.zeros((cfg.context_length, C), dtype)), {}),
        "adamw_step": lambda: ((P.copy(), G, np.zeros_like(P), np.zeros_like(P), 1e-3, 0.9, 0.999,
                                1e-8, 0.1, 1), {}),
        "sumsq": lambda: ((G,), {}),
        "matmul": lambda: ((a_mm, b_mm), {}),
    }


def _arrays(result, args) -> list[np.ndarray]:
    """What a call produced: its returned arrays/floats, plus its args (in-place ops)."""
    out: list[np.ndarray] = []
    for r in (result if isinstance(result, tuple) else (result,)):
        if r is not None:
            out.append(np.asarray(r, dtype=np.float64))
    out += [a for a in args if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
    return out


def validate(op: str, make, variant=None) -> float:
    """Run both twins (or the twin and ``variant``) on fresh identical inputs; return the max error
    relative to the output scale (raises AssertionError above 1e-3 for float32)."""
    import kernels
    ref_f, nb_f = kernels.PAIRS[op]
    nb_f = nb_f if variant is None else variant
    args1, kw = make()
    args2 = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args1)
    r1 = _arrays(ref_f(*args1, **kw), args1)
    r2 = _arrays(nb_f(*args2, **kw), args2)
    worst = 0.0
    for a, b in zip(r1, r2, strict=True):
        scale = float(np.max(np.abs(a))) or 1.0
        worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    if worst > 1e-3:
        raise AssertionError(f"{op}: Numba kernel differs from its NumPy twin by {worst:.2e}")
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
    """Per op: validation error, warm median seconds for the NumPy twin and the Numba kernel."""
    import kernels
    rows = []
    for op, make in cases(name).items():
        err = validate(op, make)
        row = {"op": op, "err": err}
        for label, fn in zip(("numpy", "numba"), kernels.PAIRS[op], strict=True):
            row[label] = _warm_median(fn, make, repeats)
        rows.append(row)
    # variants with the same contract (attention with its products in BLAS): twin vs variant
    c = cases(name)
    for op, variant in kernels.VARIANTS.items():
        err = validate(op, c[op], variant)
        row = {"op": op.replace("attention", "attn") + " (BLAS)", "err": err}
        for label, fn in (("numpy", kernels.PAIRS[op][0]), ("numba", variant)):
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
    import kernels
    out = {}
    for op, make in cases(name).items():
        fn = kernels.PAIRS[op][1]
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
