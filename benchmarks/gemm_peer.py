"""The dense products of a training step, minigpt's way against PyTorch's, each in its own process.

    python benchmarks/gemm_peer.py split 2                       # kernels.blas.gemm (split OpenBLAS)
    /work/peer/bin/python benchmarks/gemm_peer.py torch 2        # torch.mm (MKL), never imports minigpt

Times the products of the 'small' bench config's step (2048 token rows) and two of GPT-2 124M's, each
with the operand layout the layer uses ("nt": the second operand is a transposed view, "tn": the
first), 3 warm-up calls then 15 timed ones, and prints the best rate in GF/s and the median time.
"""

from __future__ import annotations

import sys
import time

import numpy as np

# name, M, K, N, layout (t: that operand is the transpose of a row-major array)
SHAPES = [("qkv fwd", 2048, 256, 768, "nn"), ("fc fwd", 2048, 256, 1024, "nn"),
          ("mproj fwd", 2048, 1024, 256, "nn"), ("head fwd", 2048, 256, 4096, "nt"),
          ("dW fc x^T d", 256, 2048, 1024, "tn"), ("dx fc d W^T", 2048, 1024, 256, "nt"),
          ("dW head", 4096, 2048, 256, "tn"), ("gpt2 fc", 512, 768, 3072, "nn"),
          ("gpt2 head", 512, 768, 50257, "nt")]


def main(argv: list[str]) -> int:
    side, threads = argv[0], int(argv[1])
    if side == "torch":
        import torch
        torch.set_num_threads(threads)
        mm, conv = torch.mm, torch.from_numpy
    elif side == "split":
        from kernels import blas
        blas.set_threads(threads)
        mm, conv = blas.gemm, (lambda a: a)
    else:
        raise SystemExit("usage: gemm_peer.py split|torch THREADS")
    rng = np.random.default_rng(0)
    print(f"{side}, {threads} thread(s), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for name, M, K, N, layout in SHAPES:
        A = rng.standard_normal((K, M) if layout[0] == "t" else (M, K), dtype=np.float32)
        B = rng.standard_normal((N, K) if layout[1] == "t" else (K, N), dtype=np.float32)
        a, b = conv(A), conv(B)
        a = a.T if layout[0] == "t" else a
        b = b.T if layout[1] == "t" else b
        for _ in range(3):
            mm(a, b)
        ts = []
        for _ in range(15):
            t = time.perf_counter()
            mm(a, b)
            ts.append(time.perf_counter() - t)
        print(f"  {name:12s} {2 * M * K * N / min(ts) / 1e9:7.1f} GF/s best, "
              f"{np.median(ts) * 1e3:8.2f} ms median")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
