"""Training step and decode timings with each implementation in its OWN fresh process, alternating.

Why: minigpt (Numba's thread pool + split BLAS calls) and PyTorch (its OpenMP pool) timed in one
process share their thread pools and minigpt's thread/malloc settings. Measured on the 2-core bench
machine while it was busy, 'small' config, 2 threads: one process gave minigpt 3566 tok/s vs
PyTorch 593 (ratio 6.0), but each alone in its own process 6750 vs 5303 (1.27). So the parent here only writes the minigpt model's weights and the inputs to
temporary safetensors files and starts ``python -m minigpt.cli.bench.isolated`` children, alternating
minigpt, PyTorch, minigpt, PyTorch (``rounds`` rounds of about steps/rounds timed steps each, after
warm-up), so slow spells of a noisy machine hit both. The PyTorch child never runs a minigpt Numba
kernel nor calls ``minigpt.backend.set_threads``: it loads the same weights into the torch peer and
sets ``torch.set_num_threads``; the minigpt child sets minigpt's threads to the same count.

The first losses (train) and the greedy tokens (decode) of both children are compared, as in one
process. MFU uses the GEMM rate measured in the PARENT (fastest call, before and after the children).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from minigpt.cli.bench.configs import CONFIGS

TRAIN_WARMUP = 2        # untimed steps at the start of each child (the first loss is the 1st one's)
DECODE_WARMUP = 1       # untimed decodes (its tokens are the ones compared)


def _split(n: int, rounds: int) -> list[int]:
    """n timed steps over at most ``rounds`` rounds, none empty: 6, 2 -> [3, 3]; 5, 2 -> [3, 2]."""
    rounds = max(1, min(rounds, n))
    return [n // rounds + (1 if i < n % rounds else 0) for i in range(rounds)]


# --- the child: one implementation, one task, then exit --------------------------------------------
def _child(spec: dict) -> dict:
    from safetensors.numpy import load_file

    cfg = CONFIGS[spec["config"]][0]
    params = load_file(spec["weights"])
    inputs = load_file(spec["inputs"])
    threads, impl, task = spec["threads"], spec["impl"], spec["task"]
    if impl == "torch":
        from types import SimpleNamespace

        from minigpt.cli.bench import torch_peer
        net, torch = torch_peer.build(SimpleNamespace(cfg=cfg, params=params), threads)
        if task == "train":
            step = torch_peer.train_step_fn(net, torch, inputs["idx"], inputs["targets"],
                                            spec["lr"], spec["wd"])
        else:
            step = lambda: torch_peer.greedy_decode(net, torch, inputs["prompt"], spec["n_new"])  # noqa: E731
    else:
        from minigpt import backend
        from minigpt.model import GPTModel
        backend.set_threads(threads)
        model = GPTModel(cfg, seed=0, dtype=np.float32)
        model.load_state_dict(params)
        if task == "train":
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
    out: dict = {"impl": impl}
    first = None
    for i in range(spec["warmup"]):
        r = step()
        if i == 0:
            first = r
    out["first"] = first if task == "train" else np.asarray(first).tolist()
    times = []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    out["times"] = times
    if impl == "torch":                         # proof that no minigpt Numba kernel ran in this child
        from numba.np.ufunc import parallel
        out["numba_pool_started"] = bool(getattr(parallel, "_is_initialized", False))
    return out


def _run_child(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "minigpt.cli.bench.isolated", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{spec['impl']} child ({spec['task']}, {spec['config']}) failed: {tail[0]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res.get("numba_pool_started"):
        raise RuntimeError("the PyTorch child started Numba's thread pool; its timing is not isolated")
    return res


# --- the parent --------------------------------------------------------------------------------------
def _alternate(task: str, name: str, threads: int, n_timed: int, rounds: int, with_torch: bool,
               inputs: dict[str, np.ndarray], extra: dict) -> dict:
    """Write weights and inputs, run the children alternately -> {"minigpt": [...], "torch": [...]}
    with every child's result dict, in order."""
    from safetensors.numpy import save_file

    from minigpt.model import GPTModel

    cfg = CONFIGS[name][0]
    model = GPTModel(cfg, seed=0, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="minigpt-bench-") as tmp:
        weights, inp = os.path.join(tmp, "weights.safetensors"), os.path.join(tmp, "inputs.safetensors")
        save_file({k: np.ascontiguousarray(v) for k, v in model.params.items()}, weights)
        del model
        save_file({k: np.ascontiguousarray(v) for k, v in inputs.items()}, inp)
        runs: dict[str, list[dict]] = {"minigpt": [], "torch": []}
        for n in _split(n_timed, rounds):
            for impl in ("minigpt", "torch") if with_torch else ("minigpt",):
                spec = {"impl": impl, "task": task, "config": name, "threads": threads,
                        "weights": weights, "inputs": inp, "steps": n, **extra}
                runs[impl].append(_run_child(spec))
    return runs


def train_step(name: str, steps: int, threads: int, with_torch: bool = True, rounds: int = 2) -> dict:
    """Like ``model_bench.train_step`` (same result keys), each implementation in its own processes."""
    from minigpt.cli.bench.model_bench import LR, WD, _add_mfu, _summary, batch, gemm_rate

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
    res["rounds"] = len(runs["minigpt"])
    res["minigpt"] = _summary([t for r in runs["minigpt"] for t in r["times"]], B * T)
    if with_torch:
        res["torch"] = _summary([t for r in runs["torch"] for t in r["times"]], B * T)
        res["ratio"] = res["minigpt"]["tok_s"] / res["torch"]["tok_s"]
        res["first_loss"] = (runs["minigpt"][0]["first"], runs["torch"][0]["first"])
    return _add_mfu(res, cfg, B, T)


def decode(name: str, n_new: int, repeats: int, threads: int, prompt_len: int = 16,
           with_torch: bool = True, rounds: int = 2) -> dict:
    """Like ``model_bench.decode`` (same result keys), each implementation in its own processes."""
    from minigpt.cli.bench.model_bench import _summary

    cfg = CONFIGS[name][0]
    n_new = min(n_new, cfg.context_length - prompt_len)
    prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, (1, prompt_len))
    res: dict = {"config": name, "n_new": n_new, "prompt": prompt_len, "repeats": repeats,
                 "isolated": True}
    if not with_torch:
        res["torch"] = "PyTorch not installed"
    runs = _alternate("decode", name, threads, repeats, rounds, with_torch, {"prompt": prompt},
                      {"warmup": DECODE_WARMUP, "n_new": n_new})
    res["rounds"] = len(runs["minigpt"])
    res["minigpt"] = _summary([t for r in runs["minigpt"] for t in r["times"]], n_new)
    if with_torch:
        res["torch"] = _summary([t for r in runs["torch"] for t in r["times"]], n_new)
        res["ratio"] = res["minigpt"]["tok_s"] / res["torch"]["tok_s"]
        ids_mg, ids_pt = np.array(runs["minigpt"][0]["first"]), np.array(runs["torch"][0]["first"])
        res["same_tokens"] = int((ids_mg == ids_pt).all(axis=0).sum()) - prompt_len
    return res


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
