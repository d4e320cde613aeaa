"""Cross-check minigpt against an independent PyTorch float64 implementation (autograd as the oracle).

Not a test (PyTorch is never a test dependency): run it where torch is installed,

    python benchmarks/check_torch_reference.py

It builds GPT-2 in PyTorch from ``torch.nn.functional`` primitives (its own code, written from the
architecture description, not from minigpt), copies minigpt's random weights into it by name, and
compares logits, loss and every gradient on several odd shapes, tied and untied, with and without
qkv bias, with -100 targets. Dropout is off (PyTorch's masks come from its own RNG). Prints the
largest relative error per quantity; exits 1 if any exceeds 1e-9.
"""

from __future__ import annotations

import math
import sys

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    sys.exit("torch is not installed: pip install torch==2.13.0 (a benchmark/cross-check only)")

import minigpt

SHAPES = [
    dict(vocab_size=257, context_length=40, emb_dim=48, n_heads=3, n_layers=2, qkv_bias=True, tie_weights=True),
    dict(vocab_size=257, context_length=40, emb_dim=48, n_heads=3, n_layers=2, qkv_bias=False, tie_weights=False),
    dict(vocab_size=101, context_length=33, emb_dim=20, n_heads=5, n_layers=3, qkv_bias=True, tie_weights=False),
    dict(vocab_size=19, context_length=7, emb_dim=12, n_heads=1, n_layers=1, qkv_bias=False, tie_weights=True),
]


def torch_gpt2(p: dict, idx: torch.Tensor, cfg) -> torch.Tensor:
    """GPT-2 forward with HF names and (in, out) weights, straight from the paper's equations."""
    B, T = idx.shape
    C, H = cfg.emb_dim, cfg.n_heads
    x = p["wte.weight"][idx] + p["wpe.weight"][:T]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for i in range(cfg.n_layers):
        h = F.layer_norm(x, (C,), p[f"h.{i}.ln_1.weight"], p[f"h.{i}.ln_1.bias"], eps=1e-5)
        qkv = h @ p[f"h.{i}.attn.c_attn.weight"]
        if cfg.qkv_bias:
            qkv = qkv + p[f"h.{i}.attn.c_attn.bias"]
        q, k, v = qkv.split(C, dim=-1)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
        att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ p[f"h.{i}.attn.c_proj.weight"] + p[f"h.{i}.attn.c_proj.bias"]
        h = F.layer_norm(x, (C,), p[f"h.{i}.ln_2.weight"], p[f"h.{i}.ln_2.bias"], eps=1e-5)
        h = F.gelu(h @ p[f"h.{i}.mlp.c_fc.weight"] + p[f"h.{i}.mlp.c_fc.bias"], approximate="tanh")
        x = x + h @ p[f"h.{i}.mlp.c_proj.weight"] + p[f"h.{i}.mlp.c_proj.bias"]
    x = F.layer_norm(x, (C,), p["ln_f.weight"], p["ln_f.bias"], eps=1e-5)
    head = p["wte.weight"] if cfg.tie_weights else p["lm_head.weight"]
    return x @ head.T


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def main() -> int:
    worst = 0.0
    for i, shape in enumerate(SHAPES):
        cfg = minigpt.GPTConfig(drop_rate=0.0, **shape)
        model = minigpt.GPTModel(cfg, seed=i, dtype=np.float64)
        rng = np.random.default_rng(100 + i)
        for name, arr in model.params.items():           # random, non-trivial weights
            arr[...] = rng.standard_normal(arr.shape) * (0.3 if arr.ndim == 2 else 0.5) + (
                1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0)
        B, T = 3, cfg.context_length
        idx = rng.integers(0, cfg.vocab_size, (B, T))
        targets = rng.integers(0, cfg.vocab_size, (B, T))
        targets[0, :3] = -100
        logits = model.forward(idx)
        loss, grads = model.loss_and_grads(idx, targets)

        p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in model.params.items()}
        t_logits = torch_gpt2(p, torch.tensor(idx), cfg)
        t_loss = F.cross_entropy(t_logits.reshape(-1, cfg.vocab_size), torch.tensor(targets).reshape(-1),
                                 ignore_index=-100)
        t_loss.backward()
        errs = {"logits": rel(logits, t_logits.detach().numpy()),
                "loss": abs(loss - t_loss.item()) / abs(t_loss.item())}
        errs["grads"] = max(rel(grads[k], p[k].grad.numpy()) for k in grads)
        worst = max(worst, *errs.values())
        print(f"shape {i}: {shape}\n    " + ", ".join(f"{k} rel err {v:.2e}" for k, v in errs.items()))
    print(f"worst relative error {worst:.2e} ({'ok' if worst < 1e-9 else 'TOO LARGE'})")
    return 0 if worst < 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
