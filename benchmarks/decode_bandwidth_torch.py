"""The PyTorch side of ``decode_bandwidth.py``: the products of one GPT-2 decode step, alone.

A plain PyTorch process (it never imports minigpt, kernels or Numba; run it by path):

    python -P benchmarks/decode_bandwidth_torch.py --emb 768 --layers 12 --vocab 50257 --threads 2

For each layer the four weights of a block in ``nn.Linear``'s layout (out, in) -- qkv (3C, C), the
attention projection (C, C), the MLP's (4C, C) and (C, 4C) -- and a tied head (V, C), random, float32.
One "token" is x (1, in) @ W.T for every one of them in the model's order: what a KV-cached
step of batch 1 reads, without the attention, the layernorms or GELU. Prints the median time of
``--steps`` tokens (after one warm-up) and the GB/s of weights read, at ``--threads`` threads, and
the median of 3 runs of the same products for 16 rows at once (a 16-token prompt's products).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--emb", type=int, required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--steps", type=int, default=16)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    C = a.emb
    g = torch.Generator().manual_seed(0)
    shapes = [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C)]
    weights = [torch.randn(s, generator=g) for _ in range(a.layers) for s in shapes]
    weights.append(torch.randn(a.vocab, C, generator=g))
    x = torch.randn(1, 4 * C, generator=g)
    nbytes = sum(w.numel() * w.element_size() for w in weights)

    prompt = torch.randn(16, 4 * C, generator=g)

    def products(rows: torch.Tensor) -> None:
        for w in weights:
            rows[:, :w.shape[1]] @ w.T

    with torch.inference_mode():
        products(x)
        times = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            products(x)
            times.append(time.perf_counter() - t0)
        pre = []
        for _ in range(3):
            t0 = time.perf_counter()
            products(prompt)
            pre.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    print(f"  {a.threads} thread(s): PyTorch {torch.__version__}, the products alone, "
          f"{nbytes / 1e6:.0f} MB/token: {med * 1e3:7.2f} ms median ({nbytes / med / 1e9:5.1f} GB/s), "
          f"{nbytes / times[0] / 1e9:5.1f} best; 16 rows at once {sorted(pre)[1] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
