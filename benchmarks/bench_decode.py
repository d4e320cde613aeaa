"""KV-cached greedy decoding, batch 1, minigpt vs PyTorch (its own simple KV cache), each in its own
fresh process, alternating; and the peak memory of each (one fresh process per measurement).

    python benchmarks/bench_decode.py --config gpt2 --tokens 64 [--repeats 3] [--threads 2]

Same code as ``minigpt bench --only decode,memory`` (minigpt/cli/bench/model_bench.py, memory.py).
"""

from __future__ import annotations

import argparse

from minigpt.cli.bench.report import run

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small", choices=["tiny", "small", "gpt2", "all"])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-memory", action="store_true")
    a = ap.parse_args()
    from kernels.blas import default_threads
    configs = ["small", "gpt2"] if a.config == "all" else [a.config]
    sections = {"decode"} if a.no_memory else {"decode", "memory"}
    run(configs, 2 * a.repeats, a.threads or default_threads(), a.tokens, sections)
