"""Generation speed with and without the KV cache (same tokens, checked).

    python benchmarks/bench_kv_cache.py                          # small model + 124M shape
    python benchmarks/bench_kv_cache.py --only small --repeats 7
    python benchmarks/bench_kv_cache.py --prompt 16 --new 64 --threads 2

For each model (random weights, float32, dropout off): greedy ``minigpt.inference.generate`` of ``--new``
tokens after a random ``--prompt``-token prompt, batch 1, with ``use_cache=True`` (prefill the prompt
once, then one token per step through the model) and ``use_cache=False`` (the book's loop: the whole
sequence through the model at every step). Each is timed ``--repeats`` times after a warm-up
(2 tokens: Numba compilation); the tokens/s reported count new tokens only, as median and min..max over the
repeats. The two token sequences are compared and must be equal.

Models: "small" is 4 layers, width 192, 6 heads, vocab 2,048 (the model ``minigpt train --quick``
trains, with context 256 instead of 64); "124M" is GPT-2 small's shape (12 layers, width 768, 12 heads, vocab 50,257,
context 1,024, qkv bias, tied head).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np


def timed(fn, n_new: int, repeats: int) -> tuple[list[float], np.ndarray]:
    """Seconds of ``repeats`` calls of ``fn(n_new)`` after a short warm-up call (compilation)."""
    fn(2)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(n_new)
        times.append(time.perf_counter() - t0)
    return times, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens (default: 16)")
    ap.add_argument("--new", type=int, default=64, help="new tokens (default: 64)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per case (default: 3)")
    ap.add_argument("--threads", type=int, default=2, help="BLAS + Numba threads (default: 2)")
    ap.add_argument("--only", choices=("small", "124M"), default=None, help="run one model only")
    args = ap.parse_args(argv)

    import numba

    import minigpt
    from minigpt import GPTConfig, GPTModel
    from minigpt.backend import numba_enabled
    from minigpt.inference.generate import generate
    from minigpt.training.loop import set_num_threads

    threads = set_num_threads(args.threads)
    print(f"minigpt {minigpt.__version__}, numpy {np.__version__}, numba {numba.__version__}, "
          f"python {platform.python_version()}, {platform.machine()}; threads {threads}; "
          f"kernels {'numba' if numba_enabled() else 'numpy'}")
    print(f"greedy, batch 1, prompt {args.prompt} + {args.new} new tokens, float32, random weights; "
          f"{args.repeats} timed runs after a 2-token warm-up\n")
    models = {
        "small": GPTConfig(vocab_size=2048, context_length=256, emb_dim=192, n_heads=6, n_layers=4,
                           drop_rate=0.0),
        "124M": GPTConfig(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12,
                          drop_rate=0.0, qkv_bias=True, tie_weights=True),
    }
    failed = False
    print(f"{'model':6s} {'params':>12s} {'cache':>6s} {'tokens/s (median)':>18s} {'min..max':>16s}"
          f" {'s per run':>10s}")
    for name, cfg in models.items():
        if args.only and name != args.only:
            continue
        if args.prompt + args.new > cfg.context_length:
            raise ValueError(f"prompt + new = {args.prompt + args.new} exceeds {name}'s context "
                             f"{cfg.context_length}")
        model = GPTModel(cfg, seed=123, dtype=np.float32)
        idx = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(1, args.prompt))
        results = {}
        for use_cache in (True, False):
            times, out = timed(lambda n, m=model, i=idx, uc=use_cache: generate(m, i, n, use_cache=uc),
                               args.new, args.repeats)
            tps = args.new / np.asarray(times)
            results[use_cache] = (float(np.median(tps)), out)
            print(f"{name:6s} {model.num_params:>12,d} {'on' if use_cache else 'off':>6s} "
                  f"{np.median(tps):>18,.1f} {tps.min():>7,.1f}..{tps.max():<8,.1f} "
                  f"{np.median(times):>10.2f}")
        same = np.array_equal(results[True][1], results[False][1])
        failed |= not same
        print(f"{name:6s} speed-up with the cache: {results[True][0] / results[False][0]:.1f}x; "
              f"tokens identical: {same}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
