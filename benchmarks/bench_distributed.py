"""Tokens per second of data-parallel training against threads alone, and the all-reduce's share.

    python benchmarks/bench_distributed.py --config small --threads 1          # 1 process x 1 thread
    python benchmarks/bench_distributed.py --config small --threads 2          # 1 process x 2 threads
    mpirun -n 2 --bind-to none python benchmarks/bench_distributed.py --config small --threads 1
                                                                               # 2 ranks x 1 thread

One optimizer step on a global batch of B windows as ``minigpt.training.loop`` does it (each rank
its B / N rows, the gradient all-reduced, AdamW), timed in three parts on rank 0: compute (forward +
backward of the shard), the all-reduce of the flat gradient buffer (timed after a barrier, so that
waiting for a slower rank is counted apart, as "wait"), and AdamW. The first ``--warmup`` steps
(kernel loading) are not counted. Prints one JSON line. Configs: "small" is ``minigpt train
--quick``'s model (V 2048, T 64, C 192, 4 layers, batch 16); "gpt2" is the book's GPT_CONFIG_124M
(untied head, 163M parameters) at T 256, batch 2.

    mpirun -n 2 --bind-to none python benchmarks/bench_distributed.py --allreduce-only

times the all-reduce alone on float32 buffers of 1 to 650 MB (the median of 5 after one warm-up)
and fits t = alpha + S / beta' by least squares, for the scaling model of docs/distributed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

CONFIGS = {
    "small": ({"vocab_size": 2048, "context_length": 64, "emb_dim": 192, "n_heads": 6,
               "n_layers": 4, "drop_rate": 0.0}, 16),
    "gpt2": ({}, 2),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="small")
    p.add_argument("--batch-size", type=int, default=None, help="global batch (default: the config's)")
    p.add_argument("--threads", type=int, default=1, help="threads per process")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--allreduce-only", action="store_true", help="time the all-reduce alone")
    args = p.parse_args()
    if args.allreduce_only:
        return allreduce_only()

    from minigpt.config import GPT_CONFIG_124M, GPTConfig
    from minigpt.model import GPTModel
    from minigpt.training.distributed import get_communicator, shard
    from minigpt.training.loop import set_num_threads
    from minigpt.training.optim import AdamW

    comm = get_communicator()
    set_num_threads(args.threads)
    fields, B = CONFIGS[args.config]
    B = args.batch_size or B
    cfg = GPTConfig.from_dict({**GPT_CONFIG_124M.to_dict(), "context_length": 256, **fields})
    model = GPTModel(cfg, seed=0)
    opt = AdamW(model, lr=1e-4, weight_decay=0.1)
    first, rows = shard(B, comm, 1)
    rng = np.random.default_rng(0)
    T = cfg.context_length
    parts = {"compute": [], "wait": [], "allreduce": [], "adamw": [], "step": []}
    barrier = getattr(getattr(comm, "comm", None), "Barrier", lambda: None)
    for i in range(args.warmup + args.steps):
        x = rng.integers(0, cfg.vocab_size, (B, T))                   # (B, T) the global batch
        y = rng.integers(0, cfg.vocab_size, (B, T))
        t0 = time.perf_counter()
        model.loss_and_grads(x[first:first + rows], y[first:first + rows])
        if comm.size > 1:
            model.flat_grads *= np.float32(1.0 / comm.size)
        t1 = time.perf_counter()
        barrier()
        t2 = time.perf_counter()
        comm.allreduce_sum_(model.flat_grads)
        t3 = time.perf_counter()
        opt.step(model.flat_grads)
        t4 = time.perf_counter()
        if i >= args.warmup:
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
                parts[k].append(v)
    med = {k: float(np.median(v)) for k, v in parts.items()}
    if comm.is_root:
        mb = model.flat_grads.nbytes / 1e6
        print(json.dumps({
            "config": args.config, "params": model.num_params, "grad_MB": round(mb, 1),
            "ranks": comm.size, "threads_per_rank": args.threads, "global_batch": B, "T": T,
            "tokens_per_s": round(B * T / med["step"], 1),
            **{f"{k}_s": round(v, 4) for k, v in med.items()},
            "allreduce_share": round(med["allreduce"] / med["step"], 3),
            "allreduce_GB_per_s_per_rank": round(2 * (comm.size - 1) / comm.size * mb / 1e3
                                                 / med["allreduce"], 2) if comm.size > 1 else None,
            "load_avg_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }))


def allreduce_only() -> None:
    from minigpt.training.distributed import get_communicator

    comm = get_communicator()
    if comm.size < 2:
        raise SystemExit("--allreduce-only needs mpirun -n 2 (or more)")
    barrier = comm.comm.Barrier
    rows = []
    for mb in (1, 10, 100, 650):
        buf = np.ones(int(mb * 1e6 / 4), dtype=np.float32)
        times = []
        for _ in range(6):
            barrier()
            t0 = time.perf_counter()
            comm.allreduce_sum_(buf)
            times.append(time.perf_counter() - t0)
        rows.append((mb, float(np.median(times[1:]))))
    if comm.is_root:
        S = np.array([r[0] for r in rows]) * 1e6
        t = np.array([r[1] for r in rows])
        (inv_beta, alpha), *_ = np.linalg.lstsq(np.stack([S, np.ones_like(S)], 1), t, rcond=None)
        print(json.dumps({"ranks": comm.size, "MB_and_seconds": rows, "fit_alpha_s": alpha,
                          "fit_beta_GB_per_s": 1 / inv_beta / 1e9,
                          "load_avg_1min": round(os.getloadavg()[0], 2),
                          "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}))


if __name__ == "__main__":
    main()
