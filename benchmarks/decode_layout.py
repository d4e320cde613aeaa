"""Decoding's one-row products from memory: splitting W's columns across the threads (what
``kernels.decode.gemv`` does for a single linear layer) against splitting its rows (each thread
streams a contiguous half and the two partial sums are added: what ``kernels.decode.step`` does at
2 threads), at 2 threads. Both hand one half to a pool thread from Python, once per product.

    python benchmarks/decode_layout.py --k 3072 --n 768      # GPT-2's mlp.c_proj
    python benchmarks/decode_layout.py --k 768 --n 3072      # mlp.c_fc
    python benchmarks/decode_layout.py --k 768 --n 768       # attn.c_proj

The weights are spread over enough matrices (600 MB in all) that every product reads its matrix
from memory, not from the cache, as a decode step does (GPT-2 124M reads 495 MB per token). Prints
each layout's time per product and the GB/s of weights it reads, twice each, alternating. A row
split gives different bits from a column split (the sum over k is cut in two); ``step`` keeps the
bits the same at every thread count by always cutting the rows in the same two halves.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numba import njit

from kernels import blas, decode


@njit(nogil=True, cache=True)
def _rows_part(x, w, k0, k1, acc):
    """acc (N,) = x[0, k0:k1] @ w[k0:k1]: rows of w streamed in order."""
    N = w.shape[1]
    acc[:] = 0
    for k in range(k0, k1):
        xk = x[0, k]
        wk = w[k]
        for j in range(N):
            acc[j] += xk * wk[j]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=3072)
    ap.add_argument("--n", type=int, default=768)
    ap.add_argument("--mb", type=float, default=600.0, help="weights in all, MB")
    args = ap.parse_args(argv)
    K, N = args.k, args.n
    blas.set_threads(2)
    pool, _ = blas.pool()
    rng = np.random.default_rng(0)
    mats = [rng.standard_normal((K, N), dtype=np.float32)
            for _ in range(int(args.mb * 1e6 // (K * N * 4)) + 1)]
    x = rng.standard_normal((1, K), dtype=np.float32)
    accs = [np.empty(N, np.float32) for _ in range(2)]

    def columns(w):
        return decode.gemv(x, w, None)                                  # kernels/decode.py

    def rows(w):
        h = K // 2
        f = pool.submit(_rows_part, x, w, h, K, accs[1])
        _rows_part(x, w, 0, h, accs[0])
        f.result()
        return accs[0] + accs[1]

    print(f"W ({K}, {N}) float32, {len(mats)} matrices ({len(mats) * K * N * 4 / 1e6:.0f} MB), "
          f"2 threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for name, f in (("columns", columns), ("rows", rows), ("columns", columns), ("rows", rows)):
        for w in mats[:4]:
            f(w)
        t = time.perf_counter()
        for _ in range(3):
            for w in mats:
                f(w)
        dt = (time.perf_counter() - t) / (3 * len(mats))
        print(f"  split by {name:8s} {dt * 1e6:6.0f} us per product, {K * N * 4 / dt / 1e9:5.1f} GB/s")
    err = np.abs(columns(mats[0]) - rows(mats[0])).max()
    print(f"  largest difference between the two: {err:.2e} (the sum over k in another order)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
