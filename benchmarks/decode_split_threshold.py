"""KV-cached greedy decoding at two values of ``kernels.decode.MIN_STEP_SPLIT_MACS``: below it a
decode step (per block, 12 C^2 B multiply-adds) runs whole on the calling thread, from it on it
is shared by the threads.

    python benchmarks/decode_split_threshold.py [--config small] [--threads 2]

Per round and threshold: the best of 5 runs of 64 greedy tokens after a 16-token prompt, tokens/s;
3 rounds, alternating (one process: only minigpt is timed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kernels import decode
from minigpt import GPTModel, backend
from minigpt.cli.bench.configs import CONFIGS
from minigpt.inference.kv_cache import KVCache


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="small", choices=sorted(CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--values", default="18,21", help="log2 of the thresholds to compare")
    args = ap.parse_args(argv)
    backend.set_threads(args.threads)
    cfg, _, _ = CONFIGS[args.config]
    model = GPTModel(cfg, seed=0)

    def run() -> float:
        cache = KVCache(cfg, batch_size=1, max_len=128, dtype=np.float32)
        model.forward(np.arange(16)[None], kv_cache=cache)
        tok = np.array([[5]])
        t = time.perf_counter()
        for _ in range(64):
            tok = model.forward(tok, kv_cache=cache)[:, -1].argmax(-1)[:, None]
        return 64 / (time.perf_counter() - t)

    print(f"config {args.config}, {args.threads} thread(s), "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    old = decode.MIN_STEP_SPLIT_MACS
    try:
        for rnd in range(3):
            for p in (int(v) for v in args.values.split(",")):
                decode.MIN_STEP_SPLIT_MACS = 1 << p
                print(f"  round {rnd + 1}: MIN_STEP_SPLIT_MACS 2^{p}: "
                      f"{max(run() for _ in range(5)):,.0f} tokens/s")
    finally:
        decode.MIN_STEP_SPLIT_MACS = old
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
