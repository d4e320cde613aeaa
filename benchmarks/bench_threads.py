"""Why minigpt pins BLAS to one thread and uses Numba's workqueue layer: the measurements.

    python benchmarks/bench_threads.py [--threads 2] [--repeats 7]

1. The training step's product shapes ('small' config, N = B*T = 2048, C = 256) three ways:
   NumPy's OpenBLAS with its own N threads; pinned to one thread; pinned to one thread and split
   into N blocks on minigpt's pool (``kernels.blas.gemm``). Median ms of ``--repeats`` calls each,
   interleaved.
2. The cost of one parallel Numba launch (a layernorm over 64 x 64) under each threading layer, in
   a fresh process per layer (the layer is fixed at the first launch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from statistics import median

import numpy as np


def products(threads: int, repeats: int) -> None:
    import kernels.blas as kb

    kb.set_threads(threads)
    lib = kb._openblas()
    if lib is None:
        print("NumPy's BLAS is not OpenBLAS: nothing to compare")
        return
    rng = np.random.default_rng(0)
    N, C, V = 2048, 256, 4096
    f = lambda *s: rng.standard_normal(s, dtype=np.float32)  # noqa: E731
    x, d3, d1, w3, h, w4, wte, dl = f(N, C), f(N, 3 * C), f(N, C), f(C, 3 * C), f(N, 4 * C), \
        f(4 * C, C), f(V, C), f(N, V)
    shapes = {
        "qkv  x @ W (2048x256 @ 256x768)": (x, w3),
        "mlp  h @ W (2048x1024 @ 1024x256)": (h, w4),
        "head x @ wte^T (2048x256 @ 256x4096)": (x, wte.T),
        "dW   x^T @ d (256x2048 @ 2048x768)": (x.T, d3),
        "dW   x^T @ d (256x2048 @ 2048x256)": (x.T, d1),
        "head dW d^T @ x (4096x2048 @ 2048x256)": (dl.T, x),
    }
    print(f"products, median ms of {repeats} (OpenBLAS {threads} threads | 1 thread | "
          f"1 thread split {threads} ways)")
    for name, (a, b) in shapes.items():
        t: dict[str, list[float]] = {"own": [], "one": [], "split": []}
        for _ in range(repeats):
            for mode in t:
                lib["set"](threads if mode == "own" else 1)
                t0 = time.perf_counter()
                if mode == "split":
                    kb.gemm(a, b)
                else:
                    np.matmul(a, b)
                t[mode].append(time.perf_counter() - t0)
        lib["set"](1)
        print(f"  {name:40s} " + "  ".join(f"{median(v) * 1e3:8.2f}" for v in t.values()))


def _launch_child() -> dict:
    import numba

    import kernels
    x = np.ones((64, 64), dtype=np.float32)
    w = np.ones(64, dtype=np.float32)
    out = {}
    for n in (numba.config.NUMBA_NUM_THREADS, 1):
        numba.set_num_threads(n)
        kernels.layernorm._ln_fwd(x, w, w, 1e-5, np.empty_like(x), np.empty_like(x),
                                  np.empty(64, np.float32))
        ts = []
        for _ in range(30):
            t0 = time.perf_counter()
            kernels.layernorm._ln_fwd(x, w, w, 1e-5, np.empty_like(x), np.empty_like(x),
                                      np.empty(64, np.float32))
            ts.append(time.perf_counter() - t0)
        out[str(n)] = median(ts)
    out["layer"] = numba.threading_layer()
    return out


def launches(threads: int) -> None:
    print(f"one parallel Numba launch (layernorm 64x64), median of 30, NUMBA_NUM_THREADS={threads}")
    for layer in ("omp", "workqueue"):
        env = dict(os.environ, NUMBA_THREADING_LAYER=layer, NUMBA_NUM_THREADS=str(threads))
        proc = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            print(f"  {layer:10s} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {r['layer']:10s} {threads} threads {r[str(threads)] * 1e3:8.3f} ms   "
              f"1 thread {r['1'] * 1e3:8.3f} ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_launch_child()))
    else:
        print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        products(a.threads, a.repeats)
        launches(a.threads)
