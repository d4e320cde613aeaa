"""Start-up cost of the kernels: a fresh process doing one training step of a tiny model, first with
an empty Numba cache (everything compiles) and then again with the cache it wrote (loads).

Each run is a child ``python -m minigpt.cli.bench.startup`` with ``NUMBA_CACHE_DIR`` pointing at one new
temporary directory; it reports the first step (compile or cache load +
run) and a second step (run only). "compile/load" = first step - second step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time


def _child() -> dict:
    import numpy as np

    from minigpt.cli.bench.configs import CONFIGS
    from minigpt.model import GPTModel
    from minigpt.training.optim import AdamW
    cfg, B, T = CONFIGS["tiny"]
    model = GPTModel(cfg, seed=0, dtype=np.float32)
    opt = AdamW(model, lr=1e-3)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, cfg.vocab_size, (2, B, T))
    times = []
    for _ in range(2):
        t = time.perf_counter()
        model.loss_and_grads(idx, targets)
        opt.step()
        times.append(time.perf_counter() - t)
    return {"first_step_s": times[0], "second_step_s": times[1],
            "compile_s": times[0] - times[1]}


def measure() -> dict:
    """-> {"cold": {...}, "warm": {...}, "process_s": (cold, warm)}; cold = empty cache."""
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="minigpt-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, MINIGPT_WARM_CACHE="0")
        for label in ("cold", "warm"):
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "minigpt.cli.bench.startup"], env=env,
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                out[label] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
                continue
            out[label] = json.loads(proc.stdout.strip().splitlines()[-1])
            out[label]["process_s"] = wall
    return out


if __name__ == "__main__":
    print(json.dumps(_child()))
