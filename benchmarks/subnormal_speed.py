"""A training step's forward and backward with GPT-2's initialisation and with PyTorch's (N(0, 1)
embeddings, tied to the head): the second spreads the logits by ~100, and the cross-entropy's
gradient then holds numbers below the smallest normal float32 unless they are flushed
(``kernels/cross_entropy.py``; docs/kernels.md, "Subnormal numbers").

    python benchmarks/subnormal_speed.py [--config small] [--threads 2]

Prints tokens/s (best of 4 after 2 warm-up steps) for init "gpt2" and "torch", twice, alternating.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from minigpt import GPTModel, backend
from minigpt.cli.bench.configs import CONFIGS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="small", choices=sorted(CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    backend.set_threads(args.threads)
    cfg, B, T = CONFIGS[args.config]
    rng = np.random.default_rng(0)
    idx, tgt = rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))
    print(f"config {args.config} (tied head), batch {B} x {T}, {args.threads} thread(s), "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for init in ("gpt2", "torch", "gpt2", "torch"):
        m = GPTModel(cfg, seed=0, init=init)
        for _ in range(2):
            m.loss_and_grads(idx, tgt)
        ts = []
        for _ in range(4):
            t = time.perf_counter()
            m.loss_and_grads(idx, tgt)
            ts.append(time.perf_counter() - t)
        print(f"  init={init:6s} {B * T / min(ts):8,.0f} tokens/s (forward + backward)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
