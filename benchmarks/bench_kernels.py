"""Every Numba kernel against its NumPy twin (validated first), warm and cold (compile with an empty
Numba cache; load from the cache it wrote), plus the model's products (split BLAS vs a @ b), and the
start-up compile time of a fresh process.

    python benchmarks/bench_kernels.py [--config small] [--threads 2]

Same code as ``minigpt bench --only kernels,startup`` (minigpt/cli/bench/kernel_times.py, startup.py).
"""

from __future__ import annotations

import argparse

from minigpt.cli.bench.report import run

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small", choices=["tiny", "small", "gpt2"])
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    from kernels.blas import default_threads
    run([a.config], 1, a.threads or default_threads(), 1, {"kernels", "startup"},
        kernel_config=a.config)
