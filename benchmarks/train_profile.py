"""Where a training step's time goes, op by op: a finer profile than ``minigpt bench --only profile``.

    python benchmarks/train_profile.py                       # 'small' bench config, 2 threads
    python benchmarks/train_profile.py --config gpt2 --steps 3 --threads 1

Wraps every op of ``backend.ops()`` (and the block's residual adds are what is left between them)
with a timer keyed by (calling module, op), runs one warm-up step and ``--steps`` timed training
steps (forward, loss, backward, AdamW) of a bench config (``minigpt/cli/bench/configs.py``), and
prints per (caller, op): wall milliseconds per step, and CPU milliseconds per step of this process
(all its threads: ``time.process_time``), which a busy shared machine disturbs less than the wall
clock. "between the ops" is the step's time outside every wrapped op: the residual adds, Python,
zeroing the gradients.

Prints the medians over the steps. Uses the installed ``minigpt`` (run it with a venv's python to
profile that checkout).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from statistics import median

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="small", choices=("tiny", "small", "gpt2"))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=None,
                    help="override the config's drop_rate (the bench configs have 0.0)")
    args = ap.parse_args(argv)

    import minigpt
    from minigpt import backend
    from minigpt.cli.bench.configs import CONFIGS
    from minigpt.model import GPTModel
    from minigpt.training.optim import AdamW

    backend.set_threads(args.threads)
    cfg, B, T = CONFIGS[args.config]
    if args.dropout is not None:
        cfg = cfg.replace(drop_rate=args.dropout)
    model = GPTModel(cfg, seed=0, dtype=np.float32)
    opt = AdamW(model, lr=4e-4, weight_decay=0.1)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, cfg.vocab_size, (B, T))
    targets = rng.integers(0, cfg.vocab_size, (B, T))
    drop_rng = np.random.default_rng(1) if cfg.drop_rate > 0 else None

    ops = backend.ops()
    wall: dict[tuple[str, str], list[float]] = defaultdict(list)
    cpu: dict[tuple[str, str], list[float]] = defaultdict(list)
    cur_w: dict[tuple[str, str], float] = defaultdict(float)
    cur_c: dict[tuple[str, str], float] = defaultdict(float)
    depth = [0]
    saved = []
    for name in dir(ops):
        f = getattr(ops, name)
        if name.startswith("_") or not callable(f) or isinstance(f, type) or \
                getattr(f, "__module__", "").startswith("typing"):
            continue
        saved.append((name, f))

        def timed(*a, _f=f, _name=name, **k):
            if depth[0]:                      # an op calling another op: count the outer one only
                return _f(*a, **k)
            caller = sys._getframe(1).f_globals.get("__name__", "?")
            depth[0] += 1
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                return _f(*a, **k)
            finally:
                cur_w[(caller, _name)] += time.perf_counter() - w0
                cur_c[(caller, _name)] += time.process_time() - c0
                depth[0] -= 1

        setattr(ops, name, timed)

    def step():
        model.loss_and_grads(idx, targets, rng=drop_rng)
        opt.step()

    totals_w, totals_c = [], []
    try:
        step()
        for _ in range(args.steps):
            cur_w.clear()
            cur_c.clear()
            w0, c0 = time.perf_counter(), time.process_time()
            step()
            totals_w.append(time.perf_counter() - w0)
            totals_c.append(time.process_time() - c0)
            for key in set(wall) | set(cur_w):
                wall[key].append(cur_w.get(key, 0.0))
                cpu[key].append(cur_c.get(key, 0.0))
            wall[("", "between the ops")].append(totals_w[-1] - sum(cur_w.values()))
            cpu[("", "between the ops")].append(totals_c[-1] - sum(cur_c.values()))
    finally:
        for name, f in saved:
            setattr(ops, name, f)

    tw, tc = median(totals_w), median(totals_c)
    print(f"minigpt {minigpt.__version__} at {os.path.dirname(minigpt.__file__)}; config "
          f"{args.config} (B={B}, T={T}, C={cfg.emb_dim}, L={cfg.n_layers}, V={cfg.vocab_size}, "
          f"dropout {cfg.drop_rate}); {args.threads} thread(s); load {os.getloadavg()[0]:.2f}")
    print(f"step: wall {tw * 1e3:.0f} ms (min {min(totals_w) * 1e3:.0f}, max "
          f"{max(totals_w) * 1e3:.0f}; {B * T / tw:,.0f} tok/s), CPU {tc * 1e3:.0f} ms; "
          f"median of {args.steps}")
    print(f"  {'caller':22s} {'op':26s} {'wall ms':>8s} {'cpu ms':>8s} {'wall %':>7s}")
    rows = sorted(wall, key=lambda k: -median(wall[k]))
    for key in rows:
        w, c = median(wall[key]), median(cpu[key])
        print(f"  {key[0]:22s} {key[1]:26s} {w * 1e3:8.1f} {c * 1e3:8.1f} {w / tw:7.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
