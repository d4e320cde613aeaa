"""Training step and decode timings with each implementation in its OWN fresh process, alternating.

Why: minigpt (Numba's thread pool + split BLAS calls) and PyTorch (its OpenMP pool) timed in one
process share their thread pools and minigpt's thread/malloc settings (docs/kernels.md, "Why not in
one process"). So the parent here only writes the minigpt model's weights and the inputs to
temporary safetensors files and starts children, alternating minigpt, PyTorch, minigpt, PyTorch
(``rounds`` rounds, each child timing ``steps`` steps after its warm-up), so slow spells of a noisy
machine hit both.

- The minigpt child is ``python -m minigpt.cli.bench.isolated spec.json`` (``_child`` below).
- The PyTorch child is ``torch_child.py``, run BY PATH with ``-P`` (no script directory on
  ``sys.path``): a plain PyTorch process that never imports minigpt, kernels or Numba, with
  PyTorch's defaults apart from ``torch.set_num_threads``. It reports the modules it loaded and the
  parent refuses its result if any is minigpt, kernels or numba. Its interpreter is this one, or
  ``MINIGPT_BENCH_TORCH_PYTHON`` (e.g. a venv with torch but without minigpt).

Each child gives one rate (tokens / median of its timed steps); ``spread.py`` turns the rates of
each side into a median with its slowest..fastest process, and flags a ratio whose spread is wider
than its distance from 1. Every child also reports its peak memory (``ru_maxrss``). The first losses
(train) and the greedy tokens (decode) of both sides are compared. MFU uses the GEMM rate measured
in the PARENT (fastest call, before and after the children).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np

from minigpt.cli.bench import spread
from minigpt.cli.bench.configs import CONFIGS, config_dict

TRAIN_WARMUP = 2        # untimed steps at the start of each child (the first loss is the 1st one's)
DECODE_WARMUP = 1       # untimed decodes (its tokens are the ones compared)
TORCH_CHILD = Path(__file__).with_name("torch_child.py")
TORCH_PYTHON_ENV = "MINIGPT_BENCH_TORCH_PYTHON"


def torch_python() -> str:
    """The interpreter of the PyTorch child: ``MINIGPT_BENCH_TORCH_PYTHON``, else this one."""
    return os.environ.get(TORCH_PYTHON_ENV) or sys.executable


def write_files(name: str, inputs: dict[str, np.ndarray], tmp: str) -> tuple[str, str]:
    """The seed-0 minigpt model of config ``name`` and ``inputs`` as safetensors files in ``tmp``."""
    from safetensors.numpy import save_file

    from minigpt.model import GPTModel

    model = GPTModel(CONFIGS[name][0], seed=0, dtype=np.float32)
    weights, inp = os.path.join(tmp, "weights.safetensors"), os.path.join(tmp, "inputs.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in model.params.items()}, weights)
    save_file({k: np.ascontiguousarray(v) for k, v in inputs.items()}, inp)
    return weights, inp


# --- the minigpt child: one task, then exit ---------------------------------------------------------
def _child(spec: dict) -> dict:
    from safetensors.numpy import load_file

    from minigpt import backend
    from minigpt.model import GPTModel

    cfg = CONFIGS[spec["config"]][0]
    inputs = load_file(spec["inputs"])
    backend.set_threads(spec["threads"])
    model = GPTModel(cfg, seed=0, dtype=np.float32)
    model.load_state_dict(load_file(spec["weights"]))
    if spec["task"] == "train":
        from minigpt.training.optim import AdamW
        opt = AdamW(model, lr=spec["lr"], weight_decay=spec["wd"])
        idx, targets = inputs["idx"], inputs["targets"]

        def step() -> float:
            loss, _ = model.loss_and_grads(idx, targets)
            opt.step()
            return float(loss)
    else:
        from minigpt.inference.generate import generate
        step = lambda: generate(model, inputs["prompt"], spec["n_new"], temperature=0.0,  # noqa: E731
                                use_cache=True)
    out: dict = {"impl": "minigpt"}
    first = None
    for i in range(spec["warmup"]):
        r = step()
        if i == 0:
            first = r
    out["first"] = first if spec["task"] == "train" else np.asarray(first).tolist()
    times = []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    out["times"] = times
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    return out


def _run(cmd: list[str], what: str, env: dict | None = None) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env or dict(os.environ))
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{what} child failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_minigpt_child(spec: dict, tmp: str) -> dict:
    path = os.path.join(tmp, "spec-minigpt.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    return _run([sys.executable, "-m", "minigpt.cli.bench.isolated", path],
                f"minigpt ({spec['task']}, {spec['config']})")


def run_torch_child(spec: dict, tmp: str, python: str | None = None, env_add: dict | None = None,
                    prefix: list[str] | tuple = ()) -> dict:
    """Run ``torch_child.py`` by path on ``spec`` (written to ``tmp``); refuse a result whose process
    loaded minigpt, kernels or numba."""
    path = os.path.join(tmp, "spec-torch.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    env = {**os.environ, **(env_add or {})}
    res = _run([*prefix, python or torch_python(), "-P", str(TORCH_CHILD), path],
               f"PyTorch ({spec['task']})", env)
    if res.get("foreign_modules"):
        raise RuntimeError("the PyTorch child loaded " + ", ".join(res["foreign_modules"][:5])
                           + ": it is not a plain PyTorch process")
    return res


def torch_info() -> dict | None:
    """Probe the PyTorch child's interpreter: {"torch": version, ...}, or None without torch."""
    python = torch_python()
    if not os.path.exists(python):
        raise ValueError(f"{TORCH_PYTHON_ENV}={python}: no such interpreter; point it at the python "
                         "of a venv with torch, numpy and safetensors, or unset it")
    with tempfile.TemporaryDirectory(prefix="minigpt-bench-") as tmp:
        try:
            return run_torch_child({"task": "info", "threads": 1}, tmp)
        except RuntimeError as e:
            if "No module named 'torch'" in str(e):
                return None
            raise RuntimeError(f"the PyTorch child cannot start under {python}: {e}") from None


# --- the parent --------------------------------------------------------------------------------------
def _alternate(task: str, name: str, threads: int, steps: int, rounds: int, with_torch: bool,
               inputs: dict[str, np.ndarray], extra: dict) -> dict:
    """Write weights and inputs, run ``rounds`` rounds of children alternately ->
    {"minigpt": [...], "torch": [...]} with every child's result dict, in order."""
    if rounds < 1 or steps < 1:
        raise ValueError(f"rounds and steps must be >= 1, got {rounds} and {steps}")
    cfg = CONFIGS[name][0]
    runs: dict[str, list[dict]] = {"minigpt": [], "torch": []}
    with tempfile.TemporaryDirectory(prefix="minigpt-bench-") as tmp:
        weights, inp = write_files(name, inputs, tmp)
        common = {"task": task, "threads": threads, "weights": weights, "inputs": inp,
                  "steps": steps, **extra}
        for _ in range(rounds):
            runs["minigpt"].append(run_minigpt_child({**common, "config": name}, tmp))
            if with_torch:
                runs["torch"].append(run_torch_child({**common, "config": config_dict(cfg)}, tmp))
    return runs


def summarise(runs: list[dict], tokens: int) -> dict:
    """One side's children -> ``spread.side`` of their rates, plus median_s and the peak memory."""
    s = spread.side([tokens / median(r["times"]) for r in runs])
    s["median_s"] = tokens / s["tok_s"]
    s["peak_mb"] = max(r["maxrss_mb"] for r in runs)
    return s


def _compare(res: dict, runs: dict, tokens: int, with_torch: bool) -> dict:
    res["rounds"] = len(runs["minigpt"])
    res["minigpt"] = summarise(runs["minigpt"], tokens)
    if with_torch:
        res["torch"] = summarise(runs["torch"], tokens)
        res.update(spread.ratio(res["minigpt"], res["torch"]))
    return res


def train_step(name: str, steps: int, threads: int, with_torch: bool = True,
               rounds: int = 5) -> dict:
    """``rounds`` minigpt and PyTorch processes, alternating, each timing ``steps`` steps."""
    from minigpt.cli.bench.model_bench import LR, WD, _add_mfu, batch, gemm_rate

    cfg, B, T = CONFIGS[name]
    idx, targets = batch(cfg, B, T)
    res: dict = {"config": name, "B": B, "T": T, "tokens": B * T, "steps": steps, "isolated": True}
    if not with_torch:
        res["torch"] = "PyTorch not installed"
    rate_before = gemm_rate(cfg, B, T)
    runs = _alternate("train", name, threads, steps, rounds, with_torch,
                      {"idx": idx, "targets": targets},
                      {"warmup": TRAIN_WARMUP, "lr": LR, "wd": WD})
    res["gemm_gflops"] = max(rate_before, gemm_rate(cfg, B, T))   # parent, before and after
    _compare(res, runs, B * T, with_torch)
    if with_torch:
        res["first_loss"] = (runs["minigpt"][0]["first"], runs["torch"][0]["first"])
    return _add_mfu(res, cfg, B, T)


def decode(name: str, n_new: int, repeats: int, threads: int, prompt_len: int = 16,
           with_torch: bool = True, rounds: int = 5) -> dict:
    """``rounds`` minigpt and PyTorch processes, alternating, each timing ``repeats`` decodes."""
    cfg = CONFIGS[name][0]
    n_new = min(n_new, cfg.context_length - prompt_len)
    prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, (1, prompt_len))
    res: dict = {"config": name, "n_new": n_new, "prompt": prompt_len, "repeats": repeats,
                 "isolated": True}
    if not with_torch:
        res["torch"] = "PyTorch not installed"
    runs = _alternate("decode", name, threads, repeats, rounds, with_torch, {"prompt": prompt},
                      {"warmup": DECODE_WARMUP, "n_new": n_new})
    _compare(res, runs, n_new, with_torch)
    if with_torch:
        ids_mg, ids_pt = np.array(runs["minigpt"][0]["first"]), np.array(runs["torch"][0]["first"])
        res["same_tokens"] = int((ids_mg == ids_pt).all(axis=0).sum()) - prompt_len
    return res


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(_child(json.load(f))))
