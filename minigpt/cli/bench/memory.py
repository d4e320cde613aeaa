"""Peak resident memory of a training step and of decoding, each in its own fresh process.

A peak is a high-water mark, so every measurement runs in a new ``python -m minigpt.cli.bench.memory``
child: one for minigpt, one for PyTorch, never mixed. The child imports what it needs, reads
``VmRSS`` (the "after imports" baseline: NumPy+Numba vs torch), then runs two training steps (or
one decode) and reads ``VmHWM`` (the process's peak RSS) from /proc/self/status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np


def status_mb(field: str) -> float:
    """A ``VmHWM``/``VmRSS`` line of /proc/self/status in MiB (Linux only; nan elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _child(impl: str, task: str, name: str, threads: int, n_new: int) -> dict:
    from minigpt import backend
    from minigpt.cli.bench.configs import CONFIGS
    from minigpt.cli.bench.model_bench import LR, WD, batch
    from minigpt.model import GPTModel

    if impl != "torch":
        backend.set_threads(threads)      # minigpt's thread and malloc settings stay out of torch's row
    cfg, B, T = CONFIGS[name]
    if impl == "torch":
        import torch  # noqa: F401  (imported before the baseline, like numba for minigpt)
    import kernels  # noqa: F401
    base = status_mb("VmRSS")
    idx, targets = batch(cfg, B, T)
    prompt = idx[:1, :16]
    if impl == "torch":
        from minigpt.cli.bench import torch_peer
        net, torch = torch_peer.build(cfg, threads)      # its own init: no minigpt copy in memory
        if task == "train":
            step = torch_peer.train_step_fn(net, torch, idx, targets, LR, WD)
            step()
            step()
        else:
            torch_peer.greedy_decode(net, torch, prompt, n_new)
    else:
        model = GPTModel(cfg, seed=0, dtype=np.float32)
        if task == "train":
            from minigpt.training.optim import AdamW
            opt = AdamW(model, lr=LR, weight_decay=WD)
            for _ in range(2):
                model.loss_and_grads(idx, targets)
                opt.step()
        else:
            from minigpt.inference.generate import generate
            generate(model, prompt, n_new, temperature=0.0, use_cache=True)
    return {"impl": impl, "task": task, "config": name, "base_mb": base, "peak_mb": status_mb("VmHWM")}


def measure(impl: str, task: str, name: str, threads: int, n_new: int = 32) -> dict:
    """Run one measurement in a fresh child process; returns its dict (or {"error": ...})."""
    cmd = [sys.executable, "-m", "minigpt.cli.bench.memory", impl, task, name, str(threads), str(n_new)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"impl": impl, "task": task, "config": name, "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    impl, task, name, threads, n_new = sys.argv[1:6]
    print(json.dumps(_child(impl, task, name, int(threads), int(n_new))))
