"""A whole training step (forward, loss, backward, AdamW), minigpt vs PyTorch eager, each in its own
fresh process, alternating; prints tokens/s, ratio, MFU and the per-phase profile of minigpt's step.

    python benchmarks/bench_train_step.py --config small --steps 10 [--threads 2] [--same-process]

Same code as ``minigpt bench --only train,profile`` (minigpt/cli/bench/model_bench.py).
"""

from __future__ import annotations

import argparse

from minigpt.cli.bench.report import run

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small", choices=["tiny", "small", "gpt2", "all"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--same-process", action="store_true",
                    help="both interleaved in one process (misleading: see docs/kernels.md)")
    a = ap.parse_args()
    from kernels.blas import default_threads
    configs = ["small", "gpt2"] if a.config == "all" else [a.config]
    run(configs, a.steps, a.threads or default_threads(), 64, {"train", "profile"},
        same_process=a.same_process)
