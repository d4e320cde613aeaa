"""Whole-model timings: a training step and KV-cached greedy decoding, minigpt vs the PyTorch peer.

``train_step`` and ``decode`` here run both in ONE process, interleaved step by step (minigpt, torch,
torch, minigpt, ...): that is ``minigpt bench --same-process``, kept for comparison only. It is
misleading: Numba's and PyTorch's thread pools interfere (on the 2-core bench machine PyTorch's
'small' step fell from ~5300 tok/s alone to ~600), so by default ``minigpt bench`` uses
``isolated.py`` (each implementation in its own fresh process, alternating), which reuses the
helpers below (``batch``, ``train_flops``, ``gemm_rate``, ``_add_mfu``). Here the figure is the
median over the repeated steps, with min..max. A step
is forward, loss, backward and AdamW (lr 4e-4, weight decay 0.1 on every parameter, as the book).
Before timing, the first losses of both are compared: they start from the same weights.

MFU ("model FLOP utilisation") divides the model's useful FLOPs per second by the rate NumPy's GEMM
reaches in the same run on the model's largest block shape, (B*T, C) @ (C, 4C), with the same
threads (the fastest call, before and after the steps) - so it says how close the step gets to
"all time in dense products at the best rate seen".
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from statistics import median

import numpy as np

from minigpt import backend
from minigpt.cli.bench.configs import CONFIGS
from minigpt.config import GPTConfig
from minigpt.model import GPTModel
from minigpt.training.optim import AdamW

LR, WD = 4e-4, 0.1


def batch(cfg: GPTConfig, B: int, T: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids and targets (B, T) int64 (speed does not depend on the values)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T)))


def train_flops(cfg: GPTConfig, B: int, T: int) -> float:
    """Useful FLOPs of one training step: 3x the forward's products (backward = 2x forward).

    Forward per token: 2 (12 L C^2 + C V) for the projections, MLP and head, plus the causal
    attention products q k^T and a v over the (t+1) visible keys: 2 * 2 C (t+1) per layer, which
    averages to 2 C (T+1) per token and layer.
    """
    L, C, V = cfg.n_layers, cfg.emb_dim, cfg.vocab_size
    per_token = 2 * (12 * L * C * C + C * V) + L * 2 * C * (T + 1)
    return 3.0 * per_token * B * T


def gemm_rate(cfg: GPTConfig, B: int, T: int, repeats: int = 7) -> float:
    """GFLOP/s of ``kernels.blas.gemm`` (NumPy's BLAS, this run's threads) on (B*T, C) @ (C, 4C):
    the fastest of ``repeats`` calls, i.e. the ceiling the machine allowed in this run."""
    from kernels.blas import gemm

    rng = np.random.default_rng(0)
    N, C = B * T, cfg.emb_dim
    a = rng.standard_normal((N, C), dtype=np.float32)
    b = rng.standard_normal((C, 4 * C), dtype=np.float32)
    out = np.empty((N, 4 * C), dtype=np.float32)
    gemm(a, b, out=out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gemm(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return 2.0 * N * C * 4 * C / min(times) / 1e9


def _summary(times: list[float], tokens: int) -> dict:
    med = median(times)
    return {"median_s": med, "min_s": min(times), "max_s": max(times),
            "tok_s": tokens / med, "tok_s_range": (tokens / max(times), tokens / min(times))}


def train_step(name: str, steps: int, threads: int, with_torch: bool = True) -> dict:
    """Time ``steps`` training steps of config ``name`` for minigpt and (when installed) PyTorch."""
    cfg, B, T = CONFIGS[name]
    model = GPTModel(cfg, seed=0, dtype=np.float32)
    opt = AdamW(model, lr=LR, weight_decay=WD)
    idx, targets = batch(cfg, B, T)

    def mg_step() -> float:
        loss, _ = model.loss_and_grads(idx, targets)
        opt.step()
        return loss

    res: dict = {"config": name, "B": B, "T": T, "tokens": B * T, "steps": steps}
    peer = None
    if with_torch:
        try:
            from minigpt.cli.bench import torch_peer
            net, torch = torch_peer.build(model, threads)
            peer = torch_peer.train_step_fn(net, torch, idx, targets, LR, WD)
        except ImportError:
            res["torch"] = "PyTorch not installed"
    rate_before = gemm_rate(cfg, B, T)
    l_mg = mg_step()                                     # warm-up (and first losses compared)
    if peer is not None:
        l_pt = peer()
        res["first_loss"] = (l_mg, l_pt)
    mg, pt = [], []
    for i in range(steps):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for who in order:
            if who == 0:
                t0 = time.perf_counter()
                mg_step()
                mg.append(time.perf_counter() - t0)
            elif peer is not None:
                t0 = time.perf_counter()
                peer()
                pt.append(time.perf_counter() - t0)
    res["minigpt"] = _summary(mg, B * T)
    if peer is not None:
        res["torch"] = _summary(pt, B * T)
        res["ratio"] = res["minigpt"]["tok_s"] / res["torch"]["tok_s"]
    res["gemm_gflops"] = max(rate_before, gemm_rate(cfg, B, T))   # measured before and after
    return _add_mfu(res, cfg, B, T)


def _add_mfu(res: dict, cfg, B: int, T: int) -> dict:
    """Model FLOP utilisation of each timed implementation: model FLOP/s over ``res['gemm_gflops']``."""
    flops = train_flops(cfg, B, T)
    res["flops"] = flops
    for who in ("minigpt", "torch"):
        if isinstance(res.get(who), dict):
            res[who]["mfu"] = flops / res[who]["median_s"] / 1e9 / res["gemm_gflops"]
    return res


def decode(name: str, n_new: int, repeats: int, threads: int, prompt_len: int = 16,
           with_torch: bool = True) -> dict:
    """Greedy decoding of ``n_new`` tokens after a ``prompt_len``-token prompt, batch 1, KV cache."""
    from minigpt.inference.generate import generate

    cfg = CONFIGS[name][0]
    n_new = min(n_new, cfg.context_length - prompt_len)
    model = GPTModel(cfg, seed=0, dtype=np.float32)
    prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, (1, prompt_len))
    res: dict = {"config": name, "n_new": n_new, "prompt": prompt_len, "repeats": repeats}
    peer = None
    if with_torch:
        try:
            from minigpt.cli.bench import torch_peer
            net, torch = torch_peer.build(model, threads)
            peer = lambda: torch_peer.greedy_decode(net, torch, prompt, n_new)  # noqa: E731
        except ImportError:
            res["torch"] = "PyTorch not installed"
    mg_run = lambda: generate(model, prompt, n_new, temperature=0.0, use_cache=True)  # noqa: E731
    ids_mg = mg_run()                                    # warm-up
    if peer is not None:
        ids_pt = peer()
        res["same_tokens"] = int((ids_mg == ids_pt).all(axis=0).sum()) - prompt_len
    mg, pt = [], []
    for i in range(repeats):
        for who in ((0, 1) if i % 2 == 0 else (1, 0)):
            if who == 0:
                t0 = time.perf_counter()
                mg_run()
                mg.append(time.perf_counter() - t0)
            elif peer is not None:
                t0 = time.perf_counter()
                peer()
                pt.append(time.perf_counter() - t0)
    res["minigpt"] = _summary(mg, n_new)
    if peer is not None:
        res["torch"] = _summary(pt, n_new)
        res["ratio"] = res["minigpt"]["tok_s"] / res["torch"]["tok_s"]
    return res


# --- per-phase profile of a minigpt training step -------------------------------------------------
_PHASES = {  # (calling module, op) -> phase
    ("minigpt.model", "embedding_forward"): "embedding",
    ("minigpt.model", "embedding_backward"): "embedding",
    ("minigpt.model", "dropout_forward"): "other",
    ("minigpt.model", "layernorm_forward"): "layernorm",
    ("minigpt.model", "layernorm_backward"): "layernorm",
    ("minigpt.model", "linear_forward"): "LM head matmuls",
    ("minigpt.model", "linear_backward"): "LM head matmuls",
    ("minigpt.model", "cross_entropy"): "cross-entropy (loss + grad)",
    ("minigpt.block", "layernorm_forward"): "layernorm",
    ("minigpt.block", "layernorm_backward"): "layernorm",
    ("minigpt.block", "linear_forward"): "block matmuls (qkv, proj, MLP)",
    ("minigpt.block", "linear_backward"): "block matmuls (qkv, proj, MLP)",
    ("minigpt.block", "attention_forward"): "attention",
    ("minigpt.block", "attention_backward"): "attention",
    ("minigpt.block", "gelu_forward"): "GELU",
    ("minigpt.block", "gelu_backward"): "GELU",
}


def phase_profile(name: str, steps: int) -> dict:
    """Wall time per phase of a minigpt training step (forward + backward of each layer kind, and
    AdamW), mean over ``steps`` after one warm-up step. Timers wrap the layer functions the model
    and block call, so 'other' is what lies between them (residual adds, Python, zeroing grads)."""
    cfg, B, T = CONFIGS[name]
    model = GPTModel(cfg, seed=0, dtype=np.float32)
    opt = AdamW(model, lr=LR, weight_decay=WD)
    idx, targets = batch(cfg, B, T)
    acc: dict[str, float] = defaultdict(float)
    ops = backend.ops()                  # the model and the block call these ops by name
    saved = []
    for fname in sorted({f for _, f in _PHASES}):
        f = getattr(ops, fname)
        saved.append((ops, fname, f))

        def timed(*a, _f=f, _name=fname, **k):
            caller = sys._getframe(1).f_globals.get("__name__")     # minigpt.model or minigpt.block
            t0 = time.perf_counter()
            r = _f(*a, **k)
            acc[_PHASES.get((caller, _name), "other")] += time.perf_counter() - t0
            return r

        setattr(ops, fname, timed)
    try:
        model.loss_and_grads(idx, targets)
        opt.step()
        acc.clear()
        total = 0.0
        for _ in range(steps):
            t0 = time.perf_counter()
            model.loss_and_grads(idx, targets)
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            acc["AdamW"] += t2 - t1
            total += t2 - t0
    finally:
        for mod, fname, f in saved:
            setattr(mod, fname, f)
    acc["other"] += total - sum(acc.values())
    return {"config": name, "steps": steps, "total_s": total / steps,
            "phases": {k: v / steps for k, v in sorted(acc.items(), key=lambda kv: -kv[1])}}
