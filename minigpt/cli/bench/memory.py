"""Peak resident memory of a training step and of decoding, each in its own fresh process.

A peak is a high-water mark, so every measurement runs in a new child: minigpt's is
``python -m minigpt.cli.bench.memory``, PyTorch's is the plain ``torch_child.py`` run by path (it
never imports minigpt, kernels or Numba; see ``isolated.py``), never mixed. The child imports what it
needs, reads ``VmRSS`` (the "after imports" baseline: NumPy+Numba vs torch), then runs two training
steps (or one decode) and reads ``VmHWM`` (the process's peak RSS) from /proc/self/status. Both
build the model with their own initialisation (no copy of the other's weights in memory) and take
the same token ids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

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


def _child(task: str, name: str, threads: int, n_new: int) -> dict:
    """minigpt's side (PyTorch's is ``torch_child.py``, tasks memory-train and memory-decode)."""
    from minigpt import backend
    from minigpt.cli.bench.configs import CONFIGS
    from minigpt.cli.bench.model_bench import LR, WD, batch
    from minigpt.model import GPTModel

    backend.set_threads(threads)
    cfg, B, T = CONFIGS[name]
    import kernels  # noqa: F401  (imported before the baseline, as torch is in the PyTorch child)
    base = status_mb("VmRSS")
    idx, targets = batch(cfg, B, T)
    model = GPTModel(cfg, seed=0, dtype=np.float32)
    if task == "train":
        from minigpt.training.optim import AdamW
        opt = AdamW(model, lr=LR, weight_decay=WD)
        for _ in range(2):
            model.loss_and_grads(idx, targets)
            opt.step()
    else:
        from minigpt.inference.generate import generate
        generate(model, idx[:1, :16], n_new, temperature=0.0, use_cache=True)
    return {"impl": "minigpt", "task": task, "config": name, "base_mb": base,
            "peak_mb": status_mb("VmHWM")}


def _torch(task: str, name: str, threads: int, n_new: int) -> dict:
    from safetensors.numpy import save_file

    from minigpt.cli.bench import isolated
    from minigpt.cli.bench.configs import CONFIGS, config_dict
    from minigpt.cli.bench.model_bench import LR, WD, batch

    cfg, B, T = CONFIGS[name]
    idx, targets = batch(cfg, B, T)
    with tempfile.TemporaryDirectory(prefix="minigpt-bench-") as tmp:
        inputs = os.path.join(tmp, "inputs.safetensors")
        save_file({"idx": idx, "targets": targets, "prompt": np.ascontiguousarray(idx[:1, :16])},
                  inputs)
        spec = {"task": "memory-" + task, "config": config_dict(cfg), "threads": threads,
                "inputs": inputs, "warmup": 2 if task == "train" else 1, "steps": 0,
                "lr": LR, "wd": WD, "n_new": n_new}
        res = isolated.run_torch_child(spec, tmp)
    return {"impl": "torch", "task": task, "config": name, "base_mb": res["base_mb"],
            "peak_mb": res["peak_mb"]}


def measure(impl: str, task: str, name: str, threads: int, n_new: int = 32) -> dict:
    """Run one measurement in a fresh child process; returns its dict (or {"error": ...})."""
    from minigpt.cli.bench.configs import CONFIGS

    n_new = min(n_new, CONFIGS[name][0].context_length - 16)     # the 16-token prompt + n_new fit
    if impl == "torch":
        try:
            return _torch(task, name, threads, n_new)
        except RuntimeError as e:
            return {"impl": impl, "task": task, "config": name, "error": str(e)}
    cmd = [sys.executable, "-m", "minigpt.cli.bench.memory", task, name, str(threads), str(n_new)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"impl": impl, "task": task, "config": name, "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    task, name, threads, n_new = sys.argv[1:5]
    print(json.dumps(_child(task, name, int(threads), int(n_new))))
