"""Where, inside one training step, the arrays NumPy holds peak: tracemalloc around every op.

    python benchmarks/train_peak_trace.py [--config gpt2] [--recompute-mlp]

Builds the bench config's model (tied head, dropout 0), runs one warm-up ``loss_and_grads``, then
one more with every op of ``backend.ops()`` wrapped: per op, the traced memory before it and the
peak during it, in MiB above the state at the start of the step (parameters and gradients are
allocated before and not counted). Prints the forward's peak, the ops of the head's loss, the
first block's backward, and the step's peak. NumPy reports its array allocations to tracemalloc;
Numba's compiled code, the interpreter and the allocator's slack are not in these figures.
"""

from __future__ import annotations

import argparse
import tracemalloc

import numpy as np

from minigpt import GPTModel, backend
from minigpt.cli.bench.configs import CONFIGS

MiB = 1 << 20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="gpt2", choices=sorted(CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recompute-mlp", action="store_true")
    args = ap.parse_args(argv)
    backend.set_threads(args.threads)
    cfg, B, T = CONFIGS[args.config]
    model = GPTModel(cfg, seed=0)
    model.recompute_mlp = args.recompute_mlp
    rng = np.random.default_rng(0)
    idx, tgt = rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))
    model.loss_and_grads(idx, tgt)                                    # warm-up: kernels compiled

    ops, log = backend.ops(), []

    class Traced:
        def __getattr__(self, name):
            fn = getattr(ops, name)
            if not callable(fn):
                return fn

            def traced(*a, **k):
                before = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                out = fn(*a, **k)
                log.append((name, before / MiB, tracemalloc.get_traced_memory()[1] / MiB))
                return out
            return traced

    real = backend.ops
    backend.ops = lambda: Traced()
    tracemalloc.start()
    try:
        model.loss_and_grads(idx, tgt)
    finally:
        tracemalloc.stop()
        backend.ops = real
    ce = [i for i, r in enumerate(log) if r[0] == "cross_entropy"]
    first, last = ce[0], ce[-1]
    print(f"config {args.config}, batch {B} x {T}, recompute_mlp {args.recompute_mlp}: MiB above "
          "the step's start")
    print(f"  forward (ops before the head): peak {max(r[2] for r in log[:first - 1]):7.1f}")
    for name, before, peak in log[first - 1:last + 2]:
        print(f"  head   {name:22s} before {before:7.1f}  peak {peak:7.1f}")
    for name, before, peak in log[last + 2:last + 2 + 16]:
        print(f"  bwd    {name:22s} before {before:7.1f}  peak {peak:7.1f}")
    print(f"  the step's peak (the largest of the ops'): {max(r[2] for r in log):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
